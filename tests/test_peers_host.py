"""Every host driver against real programs (Debian bookworm packages).

Servers serve a qcow2 backing chain with a dirty bitmap (nbdkit and nbd-server
serve it flattened); clients read it back byte for byte and map it exactly.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from _fixtures_peers import CHAIN, QEMU_CONTEXTS, check_maps, check_reads, expected_map

from harness.cli import main
from harness.client import Client, ConnectOptions, NbdClientError, NbdCommandError
from harness.peers import (
    Catalog,
    ClientPeer,
    ExportSpec,
    LiveBitmap,
    NbdkitOptions,
    QemuStorageDaemonOptions,
    RunningServer,
    ServerPeer,
    pattern,
)
from harness.peers.suites import load_suites
from harness.process import PeerError
from harness.protocol import RemoteProtocolError
from harness.protocol.constants import Cmd, Rep, TransmissionFlag, is_error_chunk
from harness.protocol.messages import Request
from harness.tls import TestPKI

pytestmark = pytest.mark.peers

KiB = 1024
SERVERS = ("qemu-nbd", "qemu-storage-daemon", "nbdkit", "nbd-server", "reference-server")
QEMU_SERVERS = ("qemu-nbd", "qemu-storage-daemon", "reference-server")
CLIENTS = ("reference-client", "nbdinfo", "nbdsh", "libnbd", "nbdcopy", "qemu-img", "qemu-io")


@pytest.fixture(scope="module")
def host() -> Catalog:
    return Catalog.load(kinds=("host",))


def server_peer(host: Catalog, program: str) -> ServerPeer:
    peer = host.resolve(program)
    assert isinstance(peer, ServerPeer)
    return peer


def client_peer(host: Catalog, program: str, log_dir: Path | None = None) -> ClientPeer:
    peer = host.resolve(program, log_dir=log_dir)
    assert isinstance(peer, ClientPeer)
    return peer


def reference_map(server: RunningServer, context: str) -> list[tuple[int, int, int]]:
    with Client.connect(server.uri, options=ConnectOptions(meta_contexts=(context,))) as nbd:
        return nbd.map(context)


def reply_error(reply: object) -> int:
    """The NBD error of a simple reply or of a structured error chunk (0: success)."""
    chunk_type = getattr(reply, "type", None)
    if chunk_type is not None:
        payload = getattr(reply, "payload", b"")
        return int.from_bytes(payload[:4], "big") if is_error_chunk(chunk_type) else 0
    return int(getattr(reply, "error", 0))


# --- servers ------------------------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["tcp", "unix"])
@pytest.mark.parametrize("program", SERVERS)
def test_server_serves_the_chain(host: Catalog, program: str, transport: str,
                                 tmp_path: Path) -> None:
    peer = server_peer(host, program)
    reference = client_peer(host, "reference-client")
    with peer.start(CHAIN, tmp_path / program, transport=transport) as server:  # type: ignore[arg-type]
        assert server.address.kind == transport
        check_reads(reference, server.endpoint)
        if program == "nbd-server":
            # No block status in any nbd-server: no metadata context at all.
            with Client.connect(server.uri,
                                options=ConnectOptions(meta_contexts=("base:allocation",))) as nbd:
                assert nbd.contexts == {}
        else:
            check_maps(reference, server.endpoint, ("base:allocation",))
        if program in QEMU_SERVERS:
            check_maps(reference, server.endpoint, QEMU_CONTEXTS)
        # A write lands, reads back, and (qemu) dirties its granule in the bitmap.
        new = pattern(768 * KiB, 64 * KiB, seed=7)
        reference.write(server.endpoint, 768 * KiB, new)
        assert reference.read(server.endpoint, 768 * KiB, 64 * KiB) == new
        if program in QEMU_SERVERS:
            dirty = reference_map(server, "qemu:dirty-bitmap:b0")
            assert (768 * KiB, 64 * KiB, 1) in dirty
    assert not server.is_running()
    assert server.log_path.exists()


def test_read_only_export_refuses_writes(host: Catalog, tmp_path: Path) -> None:
    export = ExportSpec(size=CHAIN.size, layers=CHAIN.layers, read_only=True)
    for program in ("qemu-nbd", "nbdkit", "nbd-server"):
        with server_peer(host, program).start(export, tmp_path / program) as server, \
                Client.connect(server.uri) as nbd:
            assert nbd.can(TransmissionFlag.READ_ONLY), program
            # Sent regardless of the flag (strict=False): the server itself must refuse it.
            nbd.send_request(Request(Cmd.WRITE, 0, 512, cookie=77, payload=b"x" * 512),
                             strict=False)
            reply = nbd.recv_event(timeout=10)
            assert getattr(reply, "cookie", None) == 77, (program, reply)
            assert reply_error(reply) != 0, (program, reply)


def test_qemu_storage_daemon_adds_bitmaps_live(host: Catalog, tmp_path: Path) -> None:
    peer = server_peer(host, "qemu-storage-daemon")
    options = QemuStorageDaemonOptions(live_bitmaps=(LiveBitmap("live", 64 * KiB),))
    with peer.start(CHAIN, tmp_path, options=options) as server:
        assert reference_map(server, "qemu:dirty-bitmap:live") == [(0, CHAIN.size, 0)]
        # The persistent bitmap made before the last write is exported beside it.
        assert reference_map(server, "qemu:dirty-bitmap:b0") == CHAIN.dirty_extents("b0")
        with Client.connect(server.uri) as nbd:
            nbd.write(128 * KiB + 100, b"z" * 10)
            assert nbd.read(128 * KiB + 100, 10) == b"z" * 10
        assert reference_map(server, "qemu:dirty-bitmap:live") == [
            (0, 128 * KiB, 0), (128 * KiB, 64 * KiB, 1), (192 * KiB, CHAIN.size - 192 * KiB, 0)
        ]


@pytest.mark.parametrize(
    ("profile", "structured", "contexts"),
    [
        ("qemu-2.10", False, set()),
        # qemu-nbd exports dirty bitmaps from 4.0 (--bitmap): matrix/peers/qemu.toml.
        ("qemu-3.0", True, {"base:allocation"}),
        ("qemu-4.2", True, {"base:allocation", "qemu:dirty-bitmap:b0"}),
        ("qemu-7.2", True, {"base:allocation", *QEMU_CONTEXTS}),
    ],
)
def test_reference_server_plays_a_version_profile(host: Catalog, tmp_path: Path, profile: str,
                                                  structured: bool, contexts: set) -> None:
    peer = server_peer(host, f"reference-server@{profile}")
    wanted = ("base:allocation", *QEMU_CONTEXTS)
    with peer.start(CHAIN, tmp_path) as server, \
            Client.connect(server.uri, options=ConnectOptions(meta_contexts=wanted)) as nbd:
        assert nbd.negotiation.structured_replies is structured
        assert set(nbd.contexts) == contexts
        assert nbd.read(0, CHAIN.size) == CHAIN.content()
        for context in contexts:
            assert nbd.map(context) == expected_map(CHAIN, context)


# --- TLS --------------------------------------------------------------------------------------


@pytest.mark.parametrize("program", SERVERS)
def test_server_requires_tls_with_the_test_pki(host: Catalog, program: str, pki: TestPKI,
                                               tmp_path: Path) -> None:
    export = ExportSpec(size=CHAIN.size, layers=CHAIN.layers, tls_dir=pki.directory)
    with server_peer(host, program).start(export, tmp_path / "server") as server:
        assert server.uri.startswith("nbds://")
        reference = client_peer(host, "reference-client")
        check_reads(reference, server.endpoint, export)
        assert client_peer(host, "nbdinfo").size(server.endpoint) == export.size
        # Without TLS the server refuses to serve the export.
        plain = server.uri.replace("nbds://", "nbd://").split("?")[0]
        with pytest.raises((NbdClientError, RemoteProtocolError)), \
                Client.connect(plain, options=ConnectOptions(timeout=10)) as nbd:
            nbd.read(0, 512)


def test_qemu_clients_use_tls(host: Catalog, pki: TestPKI, tmp_path: Path) -> None:
    export = ExportSpec(size=CHAIN.size, layers=CHAIN.layers, tls_dir=pki.directory)
    with server_peer(host, "qemu-nbd").start(export, tmp_path / "server") as server:
        for program in ("qemu-img", "qemu-io", "nbdsh"):
            check_reads(client_peer(host, program), server.endpoint, export)


# --- clients ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chain_server(host: Catalog,
                 tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """One read-only qemu-nbd serving the chain to every client test of this module."""
    export = ExportSpec(size=CHAIN.size, layers=CHAIN.layers, bitmaps=CHAIN.bitmaps,
                        writes_after_bitmaps=CHAIN.writes_after_bitmaps, read_only=True)
    server = server_peer(host, "qemu-nbd").start(export, tmp_path_factory.mktemp("chain"))
    assert server.process is not None
    server.process.shared = True  # serves several tests: the leak check skips it
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.parametrize("program", CLIENTS)
def test_client_reads_and_maps_the_chain(host: Catalog, program: str,
                                         chain_server: RunningServer, tmp_path: Path) -> None:
    client = client_peer(host, program, log_dir=tmp_path)
    endpoint = chain_server.endpoint
    if client.can("read"):
        check_reads(client, endpoint)
    if client.can("map"):
        check_maps(client, endpoint, ("base:allocation",))
    if client.can("map-contexts"):
        check_maps(client, endpoint, QEMU_CONTEXTS)
    if client.can("size"):
        assert client.size(endpoint) == CHAIN.size
    assert client.capabilities & {"read", "map"}, f"{program} can neither read nor map"


@pytest.mark.parametrize("program", [p for p in CLIENTS if p != "reference-client"])
def test_client_reports_its_version(host: Catalog, program: str) -> None:
    version = client_peer(host, program).version()
    family = load_suites().family_of(program)
    expected = load_suites().suite("bookworm").versions[family]  # type: ignore[index]
    assert version.version.startswith(expected + "."), version


@pytest.mark.parametrize("program", ["reference-client", "nbdsh", "libnbd", "qemu-io"])
def test_client_writes_are_read_back(host: Catalog, program: str, tmp_path: Path) -> None:
    client = client_peer(host, program, log_dir=tmp_path)
    assert client.can("write")
    with server_peer(host, "qemu-nbd").start(CHAIN, tmp_path / "server") as server:
        data = pattern(700 * KiB, 100 * KiB, seed=11)
        client.write(server.endpoint, 700 * KiB, data)
        reference = client_peer(host, "reference-client")
        assert reference.read(server.endpoint, 700 * KiB, 100 * KiB) == data
        # The rest is untouched.
        assert reference.read(server.endpoint, 0, 256 * KiB) == CHAIN.read(0, 256 * KiB)
        dirty = reference_map(server, "qemu:dirty-bitmap:b0")
        assert (640 * KiB, 192 * KiB, 1) in dirty


def test_nbdcopy_copies_whole_exports_both_ways(host: Catalog, tmp_path: Path) -> None:
    nbdcopy = client_peer(host, "nbdcopy")
    with server_peer(host, "nbdkit").start(
        ExportSpec(size=CHAIN.size, image_format="raw"), tmp_path / "server",
        options=NbdkitOptions(plugin="memory"),
    ) as server:
        source = tmp_path / "source.raw"
        source.write_bytes(CHAIN.content())
        nbdcopy.copy_to(server.endpoint, source)
        assert client_peer(host, "reference-client").read(server.endpoint, 0, CHAIN.size) == \
            CHAIN.content()
        copy = tmp_path / "copy.raw"
        nbdcopy.copy_from(server.endpoint, copy)
        assert copy.read_bytes() == CHAIN.content()


def test_nbdinfo_details_and_listing(host: Catalog, chain_server: RunningServer) -> None:
    nbdinfo = client_peer(host, "nbdinfo")
    info = nbdinfo.info(chain_server.endpoint)  # type: ignore[attr-defined]
    export = info["exports"][0]
    assert export["export-size"] == CHAIN.size
    assert export["is_read_only"] is True
    assert set(export["contexts"]) == {"base:allocation", *QEMU_CONTEXTS}
    listing = nbdinfo.list_exports(chain_server.endpoint)  # type: ignore[attr-defined]
    assert [e["export-name"] for e in listing["exports"]] == ["disk"]


# --- nbdkit: plugins, filters and handshake switches ---------------------------------------------


def nbdkit(host: Catalog) -> ServerPeer:
    return server_peer(host, "nbdkit")


def test_nbdkit_plugins_hold_the_expected_content(host: Catalog, tmp_path: Path) -> None:
    flat = ExportSpec(size=CHAIN.size, image_format="raw", layers=CHAIN.layers)
    reference = client_peer(host, "reference-client")
    with nbdkit(host).start(flat, tmp_path / "data", options=NbdkitOptions(plugin="data")) as s:
        check_reads(reference, s.endpoint, flat)
        assert reference.map(s.endpoint) == expected_map(flat, "base:allocation")
    empty = ExportSpec(size=CHAIN.size, image_format="raw")
    with nbdkit(host).start(empty, tmp_path / "pattern",
                            options=NbdkitOptions(plugin="pattern")) as s:
        # nbdkit's pattern: each 8-byte word is its own offset, big-endian.
        data = reference.read(s.endpoint, 4096, 64)
        assert data == b"".join((4096 + 8 * i).to_bytes(8, "big") for i in range(8))
    # Each word is one key=script argument (no shell quoting: argv goes to nbdkit as is).
    eval_args = ("get_size=echo 65536",
                 "pread=dd if=/dev/zero bs=1 count=$3 2>/dev/null | tr '\\000' x")
    with nbdkit(host).start(ExportSpec(size=64 * KiB, image_format="raw"), tmp_path / "eval",
                            options=NbdkitOptions(plugin="eval", plugin_args=eval_args)) as s:
        assert reference.size(s.endpoint) == 64 * KiB
        assert reference.read(s.endpoint, 100, 20) == b"x" * 20
    # The sh plugin runs a script file: it lives in the work directory, which every provider
    # shows to the program at the same path.
    workdir = tmp_path / "sh"
    workdir.mkdir()
    script = workdir / "plugin.sh"
    script.write_text('#!/bin/sh\ncase "$1" in\n  get_size) echo 8192 ;;\n'
                      '  pread) dd if=/dev/zero bs=1 count=$3 2>/dev/null | tr \'\\000\' s ;;\n'
                      '  *) exit 2 ;;\nesac\n')
    script.chmod(0o755)
    with nbdkit(host).start(ExportSpec(size=8192, image_format="raw", cluster_size=4096),
                            workdir, options=NbdkitOptions(plugin="sh",
                                                           plugin_args=(str(script),))) as s:
        assert reference.size(s.endpoint) == 8192
        assert reference.read(s.endpoint, 0, 16) == b"s" * 16


def test_nbdkit_error_filter_injects_eio(host: Catalog, tmp_path: Path) -> None:
    trigger = tmp_path / "fail-now"
    options = NbdkitOptions(plugin="memory").with_errors(1.0, "EIO", trigger_file=trigger)
    with nbdkit(host).start(ExportSpec(size=CHAIN.size, image_format="raw"), tmp_path / "s",
                            options=options) as server, Client.connect(server.uri) as nbd:
        nbd.write(0, b"a" * 4096)
        assert nbd.read(0, 4096) == b"a" * 4096
        trigger.touch()
        with pytest.raises(NbdCommandError) as failure:
            nbd.read(0, 4096)
        assert "EIO" in str(failure.value)
        trigger.unlink()
        assert nbd.read(0, 4096) == b"a" * 4096


def test_nbdkit_delay_filter_still_serves(host: Catalog, tmp_path: Path) -> None:
    options = NbdkitOptions(plugin="memory").with_delay(read="10ms", write="10ms")
    with nbdkit(host).start(ExportSpec(size=CHAIN.size, image_format="raw"), tmp_path / "s",
                            options=options) as server, Client.connect(server.uri) as nbd:
        nbd.write(4096, b"d" * 4096)
        assert nbd.read(4096, 4096) == b"d" * 4096


@pytest.mark.parametrize(
    ("options", "style", "structured"),
    [
        (NbdkitOptions(plugin="memory"), "fixed-newstyle", True),
        (NbdkitOptions(plugin="memory", no_sr=True), "fixed-newstyle", False),
        (NbdkitOptions(plugin="memory", mask_handshake=0), "newstyle", False),
        (NbdkitOptions(plugin="memory", oldstyle=True), "oldstyle", False),
    ],
)
def test_nbdkit_handshake_switches(host: Catalog, tmp_path: Path, options: NbdkitOptions,
                                   style: str, structured: bool) -> None:
    with nbdkit(host).start(ExportSpec(size=CHAIN.size, image_format="raw"), tmp_path / "s",
                            options=options) as server, Client.connect(server.uri) as nbd:
        assert nbd.negotiation.style == style
        assert nbd.negotiation.structured_replies is structured
        nbd.write(0, b"h" * 512)
        assert nbd.read(0, 512) == b"h" * 512


def test_nbdkit_serves_a_named_described_export_by_default(host: Catalog,
                                                         tmp_path: Path) -> None:
    """By default nbdkit serves the way matrix/peers/nbdkit.toml describes it: the data plugin
    (the memory plugin's flags: fast zero) and a named export (the exportname filter):
    listed by name, described, other names refused."""
    flat = ExportSpec(size=CHAIN.size, image_format="raw", layers=CHAIN.layers,
                      description="scratch disk")
    with nbdkit(host).start(flat, tmp_path / "s") as server:
        with Client.connect(server.uri, options=ConnectOptions(enter_transmission=False)) as nbd:
            assert [entry.name for entry in nbd.list_exports()] == ["disk"]
            info = nbd.info("disk")
            assert (info.size, info.description) == (CHAIN.size, "scratch disk")
            with pytest.raises(NbdClientError) as refused:
                nbd.info("not-this-one")
            assert getattr(refused.value, "reply_type", None) == Rep.ERR_UNKNOWN
        with Client.connect(server.uri) as nbd:
            assert nbd.can(TransmissionFlag.SEND_FAST_ZERO)
        check_reads(client_peer(host, "reference-client"), server.endpoint, flat)


def test_nbdkit_without_no_mc_says_so(host: Catalog, tmp_path: Path) -> None:
    # --no-mc came after nbdkit 1.32 (bookworm): a clear refusal, not a failed start.
    # (test_peers_rootfs checks that sid's nbdkit hides its contexts with it.)
    options = NbdkitOptions(plugin="memory", no_mc=True)
    with pytest.raises(PeerError, match=r"nbdkit \(host\) has no --no-mc option"):
        nbdkit(host).start(ExportSpec(size=CHAIN.size, image_format="raw"), tmp_path / "s",
                           options=options)


# --- nbd-server: a daemon, stopped with everything it forked -------------------------------------


def test_nbd_server_serves_clients_in_turn_and_together(host: Catalog, tmp_path: Path) -> None:
    with server_peer(host, "nbd-server").start(CHAIN, tmp_path) as server:
        for _ in range(3):
            with Client.connect(server.uri) as nbd:
                assert nbd.read(64 * KiB, 4096) == CHAIN.read(64 * KiB, 4096)
        with Client.connect(server.uri) as first, Client.connect(server.uri) as second:
            first.write(900 * KiB, b"1" * 512)
            assert second.read(900 * KiB, 512) == b"1" * 512
        assert server.process is not None
        pids = server.process.tree_pids()
        assert len(pids) >= 3  # bwrap, its init, the supervising shell, the daemon
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text()


def test_nbd_server_version_comes_from_its_package(host: Catalog) -> None:
    version = server_peer(host, "nbd-server").version()
    assert version.version == version.package
    assert version.version.startswith("3.24")


# --- peers doctor --------------------------------------------------------------------------------


def test_doctor_finds_no_mismatch_on_host_peers(capsys) -> None:
    code = main(["peers", "doctor", "--provider", "host", "--json"])
    report = json.loads(capsys.readouterr().out)
    problems = {c["peer"]: c["mismatches"] or c["error"] for c in report["checks"] if not c["ok"]}
    assert problems == {}
    assert code == 0
    checked = {c["peer"] for c in report["checks"]}
    assert checked >= {"qemu-nbd", "qemu-storage-daemon", "nbdkit", "nbd-server", "nbdinfo",
                       "nbdsh", "nbdcopy", "libnbd", "qemu-img", "qemu-io"}
    qemu = next(c for c in report["checks"] if c["peer"] == "qemu-nbd")
    assert {"base-allocation", "allocation-depth", "dirty-bitmap"} <= set(qemu["features"])
