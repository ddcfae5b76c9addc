"""Peers of other Debian suites, from root filesystems run with bubblewrap.

The suites are built with mmdebstrap on first use (about 20 s each) and cached
outside the repository (``$NBD_HARNESS_CACHE``, default ``~/.cache/nbd-harness``),
so later runs on the same machine only unpack nothing. Every packaged qemu-nbd
serves a qcow2 backing chain that both the reference client and that suite's
own nbdinfo read correctly: data, allocation depth, dirty bitmap.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from pathlib import Path

import pytest
from _fixtures_peers import CHAIN, QEMU_CONTEXTS, check_maps, check_reads

from harness.cli import main
from harness.client import Client, ConnectOptions
from harness.peers import (
    DRIVERS,
    Catalog,
    ClientPeer,
    ExportSpec,
    LiveBitmap,
    NbdkitOptions,
    QemuStorageDaemonOptions,
    ServerPeer,
    pattern,
)
from harness.peers.rootfs import RootfsProvider
from harness.peers.suites import load_suites

pytestmark = [pytest.mark.peers, pytest.mark.slow]

KiB = 1024
SUITES = ("bullseye", "bookworm-backports", "trixie", "sid")
PROGRAMS = ("qemu-nbd", "qemu-storage-daemon", "qemu-img", "qemu-io", "nbdkit", "nbd-server",
            "nbdinfo", "nbdsh", "nbdcopy", "libnbd")


@pytest.fixture(scope="session")
def provided() -> dict[str, RootfsProvider]:
    """Every suite's root filesystem, built once per machine (a lock serialises workers)."""
    providers = {}
    for name in SUITES:
        provider = RootfsProvider(load_suites().suite(name))
        report = provider.provision(lambda line: None)
        assert provider.ready(), report
        providers[name] = provider
    return providers


def peer(provider: RootfsProvider, program: str, log_dir: Path | None = None):
    from harness.peers import DRIVERS

    driver = DRIVERS[program](provider, log_dir=log_dir)
    assert driver.available(), f"{program} missing from {provider.name}"
    return driver


@pytest.mark.parametrize("suite", SUITES)
def test_packaged_qemu_nbd_serves_a_chain_its_own_nbdinfo_reads(
    provided: dict[str, RootfsProvider], suite: str, tmp_path: Path
) -> None:
    provider = provided[suite]
    qemu_nbd: ServerPeer = peer(provider, "qemu-nbd")
    nbdinfo: ClientPeer = peer(provider, "nbdinfo", tmp_path)
    nbdsh: ClientPeer = peer(provider, "nbdsh", tmp_path)
    reference: ClientPeer = peer(Catalog.load(kinds=()).resolve("reference-client").provider,
                                 "reference-client")
    with qemu_nbd.start(CHAIN, tmp_path / "server") as server:
        check_reads(reference, server.endpoint)
        check_maps(reference, server.endpoint, ("base:allocation", *QEMU_CONTEXTS))
        # The suite's own libnbd: nbdinfo maps every context, nbdsh reads the data.
        check_maps(nbdinfo, server.endpoint, ("base:allocation", *QEMU_CONTEXTS))
        assert nbdinfo.size(server.endpoint) == CHAIN.size
        check_reads(nbdsh, server.endpoint)
    assert not server.is_running()
    assert "qemu-nbd" in server.log_path.name


def test_a_peer_runs_in_a_directory_outside_tmp(provided: dict[str, RootfsProvider]) -> None:
    """A run's evidence directory may be anywhere (`run --out /srv/runs/x`): bwrap must be
    able to make its mount point, which it cannot inside a root bound read-only at /."""
    from harness.peers.rootfs import cache_dir

    outside = Path(tempfile.mkdtemp(prefix="outside-tmp-", dir=cache_dir()))
    try:
        assert not outside.is_relative_to("/tmp")
        with peer(provided["sid"], "nbdkit").start(CHAIN, outside / "server") as server:
            check_reads(peer(provided["sid"], "nbdsh", outside), server.endpoint)
    finally:
        shutil.rmtree(outside)


@pytest.mark.parametrize("suite", ["bullseye", "sid"])
def test_packaged_qemu_nbd_on_a_unix_socket(provided: dict[str, RootfsProvider], suite: str,
                                            tmp_path: Path) -> None:
    provider = provided[suite]
    with peer(provider, "qemu-nbd").start(CHAIN, tmp_path, transport="unix") as server:
        assert server.uri.startswith("nbd+unix:///disk?socket=")
        check_maps(peer(provider, "nbdinfo"), server.endpoint, QEMU_CONTEXTS)
        libnbd = peer(provider, "libnbd")
        data = pattern(832 * KiB, 64 * KiB, seed=5)
        libnbd.write(server.endpoint, 832 * KiB, data)
        assert libnbd.read(server.endpoint, 832 * KiB, 64 * KiB) == data
        dirty = peer(provider, "nbdinfo").map(server.endpoint, "qemu:dirty-bitmap:b0")
        assert (832 * KiB, 64 * KiB, 1) in dirty


@pytest.mark.parametrize("suite", ["bullseye", "sid"])
def test_packaged_qemu_storage_daemon_over_qmp(provided: dict[str, RootfsProvider], suite: str,
                                               tmp_path: Path) -> None:
    daemon = peer(provided[suite], "qemu-storage-daemon")
    options = QemuStorageDaemonOptions(live_bitmaps=(LiveBitmap("live"),))
    with daemon.start(CHAIN, tmp_path, options=options) as server:
        reference = peer(Catalog.load(kinds=()).resolve("reference-client").provider,
                         "reference-client")
        check_reads(reference, server.endpoint)
        check_maps(reference, server.endpoint, QEMU_CONTEXTS)
        reference.write(server.endpoint, 960 * KiB, b"q" * 4096)
        assert (960 * KiB, 64 * KiB, 1) in reference.map(server.endpoint,
                                                          "qemu:dirty-bitmap:live")


@pytest.mark.parametrize("suite", SUITES)
def test_every_program_reports_the_suites_version(provided: dict[str, RootfsProvider],
                                                  suite: str) -> None:
    provider = provided[suite]
    data = load_suites()
    for program in PROGRAMS:
        version = peer(provider, program).version()
        expected = data.suite(suite).versions[data.family_of(program)]  # type: ignore[index]
        assert version.version == expected or version.version.startswith(expected + "."), (
            program, version)
    # nbd-server misreports itself in bullseye (3.21 says 3.18) and sid (3.27 says 3.26.1).
    server = peer(provider, "nbd-server").version()
    if suite in ("bullseye", "sid"):
        assert server.reported != server.version and server.note


def test_sid_nbdkit_no_mc_hides_metadata_contexts(provided: dict[str, RootfsProvider],
                                                  tmp_path: Path) -> None:
    nbdkit = peer(provided["sid"], "nbdkit")
    export = ExportSpec(size=CHAIN.size, image_format="raw")
    for no_mc, contexts in ((False, {"base:allocation"}), (True, set())):
        with nbdkit.start(export, tmp_path / str(no_mc),
                          options=NbdkitOptions(plugin="memory", no_mc=no_mc)) as server, \
                Client.connect(server.uri) as nbd:
            assert set(nbd.contexts) == contexts
            assert nbd.negotiation.structured_replies


@pytest.mark.parametrize("suite", ["bullseye", "trixie"])
def test_packaged_nbd_server_serves_the_flattened_chain(provided: dict[str, RootfsProvider],
                                                        suite: str, tmp_path: Path) -> None:
    with peer(provided[suite], "nbd-server").start(CHAIN, tmp_path) as server:
        for _ in range(2):
            with Client.connect(server.uri, options=ConnectOptions(timeout=20)) as nbd:
                assert nbd.read(0, 256 * KiB) == CHAIN.read(0, 256 * KiB)
                # Structured replies arrived in nbd-server 3.26 (trixie).
                assert nbd.negotiation.structured_replies is (suite == "trixie")


def test_doctor_on_sid_finds_no_mismatch(provided: dict[str, RootfsProvider], capsys) -> None:
    code = main(["peers", "doctor", "--provider", "rootfs:sid", "--json"])
    report = json.loads(capsys.readouterr().out)
    problems = {c["peer"]: c["mismatches"] or c["error"] for c in report["checks"] if not c["ok"]}
    assert problems == {}
    assert code == 0
    # Every driver of a real program is checked (the ones named here, and any added since).
    checked = [c["peer"] for c in report["checks"]]
    real = {program for program, driver in DRIVERS.items() if not driver.builtin}
    assert sorted(checked) == sorted(real) and real >= set(PROGRAMS)


def test_install_reports_time_and_disk_used(provided: dict[str, RootfsProvider], capsys) -> None:
    assert main(["peers", "install", "sid"]) == 0
    captured = capsys.readouterr()
    line = captured.out.strip().splitlines()[-1]
    assert re.fullmatch(r"rootfs:sid: cached in \d+\.\d s, \d+\.\d MiB on disk", line), line
    assert "already installed" in captured.err
