"""Cross-version interop: every packaged nbdkit and libnbd with our server and client, and
every version profile against the packaged program it stands for.

1. Each Debian suite's nbdkit (1.24 bullseye, 1.32 bookworm = this machine, 1.42 trixie,
   1.48 sid) serves the reference client: patterns written and read back, zeroing,
   trimming, ``base:allocation`` exactly, flush and FUA. Each suite's libnbd (1.6, 1.14,
   1.22, 1.24) reads, writes, maps and copies a layered export with a dirty bitmap on the
   reference server; the server's session records say what each negotiated (extended
   headers from libnbd 1.18 on, structured replies before).
2. Each packaged qemu-nbd, nbdkit and nbd-server, and the reference server with that
   version's profile serving an equivalent export, look the same to ``nbdinfo --json``
   (sid's 1.24, which shows extended headers, and the suite's own), field by field,
   normalised as tests/test_profiles.py does.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _fixtures_interop import (
    HOST_SUITE,
    SUITES,
    PackagedServer,
    SparseModel,
    client,
    endpoint,
    layered_server,
    nbdkit_pattern,
    packaged_servers,
    peer,
    reference_thread,
    renamed,
    sessions,
    suite_version,
)
from _fixtures_peers import CHAIN, QEMU_CONTEXTS, READS, check_maps, check_reads, expected_map
from test_profiles import protocol_view

from harness.client import Client, NbdCommandError
from harness.peerdata import default_peerdata, parse_version, version_matches
from harness.peers import (
    BitmapSpec,
    DataRange,
    Endpoint,
    ExportSpec,
    NbdkitOptions,
    NbdServerOptions,
    QemuNbdOptions,
    RunningServer,
    ServerPeer,
)
from harness.peers.nbdcopy import Nbdcopy
from harness.peers.nbdinfo import Nbdinfo
from harness.protocol import constants as c
from reference_server.profiles import profile
from reference_server.runner import ServerThread

pytestmark = [pytest.mark.peers, pytest.mark.slow]

KiB = 1024
MiB = 1024 * KiB
DATA = default_peerdata()
LIBNBD = DATA.program("libnbd")
ALL_CONTEXTS = (c.BASE_ALLOCATION, *QEMU_CONTEXTS)
HOLE = c.StateFlag.HOLE | c.StateFlag.ZERO
DATA_EXTENT = 0
DIRTY = c.DirtyFlag.DIRTY
WRITE_AT = DataRange(832 * KiB, 64 * KiB, seed=21)
"""What each suite's nbdsh writes into its layered export: above a hole of every layer."""


def speaks_extended_headers(suite: str) -> bool:
    """Does this suite's libnbd negotiate extended headers (matrix data: libnbd 1.18+)?"""
    return LIBNBD.has("extended-headers", suite_version(suite, "libnbd"), "client")


def assert_negotiated(records: list[dict], suite: str) -> None:
    """Every session of ``suite``'s libnbd used extended headers when that libnbd speaks them,
    structured replies otherwise."""
    assert records, f"no session of {suite}'s libnbd was recorded"
    extended = speaks_extended_headers(suite)
    for record in records:
        assert record["extended_headers"] is extended, record
        if not extended:
            assert record["structured_replies"] is True, record
        assert record["client_violations"] == [], record
        assert record["end"] == "client sent NBD_CMD_DISC", record


# --- 1a: each suite's nbdkit serving the reference client ----------------------------------


def nbdkit_serving(suite: str, export: ExportSpec, workdir: Path, plugin: str) -> RunningServer:
    nbdkit = peer(suite, "nbdkit")
    assert isinstance(nbdkit, ServerPeer)
    return nbdkit.start(export, workdir, options=NbdkitOptions(plugin=plugin))


@pytest.mark.parametrize("suite", SUITES)
def test_nbdkit_memory_plugin_with_the_reference_client(suite: str, tmp_path: Path) -> None:
    export = ExportSpec(size=1 * MiB, image_format="raw")
    model = SparseModel(export.size)
    with nbdkit_serving(suite, export, tmp_path, "memory") as server:
        with Client.connect(server.uri) as nbd:
            # nbdkit has structured replies in every packaged version, never extended headers.
            assert nbd.negotiation.structured_replies and not nbd.negotiation.extended_headers
            assert set(nbd.contexts) == {c.BASE_ALLOCATION}
            for flag in ("SEND_FLUSH", "SEND_FUA", "SEND_TRIM", "SEND_WRITE_ZEROES"):
                assert nbd.can(c.TransmissionFlag[flag]), flag
            assert nbd.map() == model.base_allocation() == [(0, export.size, HOLE)]
            writes = [DataRange(64 * KiB, 192 * KiB, 11), DataRange(512 * KiB, 64 * KiB, 12),
                      DataRange(960 * KiB, 64 * KiB, 13)]
            for number, data in enumerate(writes):
                nbd.write(data.offset, data.data(), fua=number == 1)
                model.write(data.offset, data.data())
            nbd.flush()
            assert nbd.read(0, export.size) == model.image
            assert nbd.map() == model.base_allocation()
            # Zeroing and trimming whole pages give them back: holes that read as zeroes.
            nbd.write_zeroes(128 * KiB, 64 * KiB)
            model.zero(128 * KiB, 64 * KiB)
            nbd.trim(512 * KiB, 64 * KiB, fua=True)
            model.zero(512 * KiB, 64 * KiB)
            nbd.write_zeroes(960 * KiB, 64 * KiB, fua=True)
            model.zero(960 * KiB, 64 * KiB)
            nbd.flush()
            assert nbd.read(0, export.size) == model.image
            assert nbd.map() == model.base_allocation()
        # A second connection sees what the first one left.
        with Client.connect(server.uri) as nbd:
            assert nbd.read(0, export.size) == model.image
            assert nbd.map(offset=64 * KiB, length=192 * KiB) == [
                (64 * KiB, 64 * KiB, DATA_EXTENT), (128 * KiB, 64 * KiB, HOLE),
                (192 * KiB, 64 * KiB, DATA_EXTENT)]


@pytest.mark.parametrize("suite", SUITES)
def test_nbdkit_data_plugin_serves_the_chain_to_the_reference_client(suite: str,
                                                                     tmp_path: Path) -> None:
    with nbdkit_serving(suite, CHAIN, tmp_path, "data") as server, \
            Client.connect(server.uri) as nbd:
        for offset, length in READS:
            assert nbd.read(offset, length) == CHAIN.read(offset, length), (offset, length)
        assert nbd.map() == CHAIN.base_allocation()
        # The data plugin is writable: a write lands over the chain's hole.
        nbd.write(WRITE_AT.offset, WRITE_AT.data(), fua=True)
        assert nbd.read(WRITE_AT.offset - 64 * KiB, 192 * KiB) == (
            bytes(64 * KiB) + WRITE_AT.data() + bytes(64 * KiB))
        expected = SparseModel(CHAIN.size)
        for data in [*CHAIN.flattened_ranges(), WRITE_AT]:
            expected.write(data.offset, data.data())
        assert nbd.map() == expected.base_allocation()


@pytest.mark.parametrize("suite", SUITES)
def test_nbdkit_pattern_plugin_with_the_reference_client(suite: str, tmp_path: Path) -> None:
    export = ExportSpec(size=1 * MiB, image_format="raw")
    with nbdkit_serving(suite, export, tmp_path, "pattern") as server, \
            Client.connect(server.uri) as nbd:
        for offset, length in ((0, 4096), (4093, 4099), (1 * MiB - 12, 12), (0, 1 * MiB)):
            assert nbd.read(offset, length) == nbdkit_pattern(offset, length), (offset, length)
        # No extents callback: nbdkit reports the whole export as data.
        assert nbd.map() == [(0, export.size, DATA_EXTENT)]
        # nbdkit-pattern-plugin(1) 1.48, "Writes and testing copying": writes are accepted
        # when they match the pattern, EIO otherwise. Up to 1.42 (trixie) the plugin is
        # read-only (the release in between was not checked).
        if parse_version(suite_version(suite, "nbdkit")) < (1, 48):
            assert nbd.can(c.TransmissionFlag.READ_ONLY)
            return
        assert not nbd.can(c.TransmissionFlag.READ_ONLY)
        nbd.write(8 * KiB, nbdkit_pattern(8 * KiB, 8 * KiB))
        with pytest.raises(NbdCommandError) as refused:
            nbd.write(8 * KiB, bytes(512))
        assert refused.value.errno == c.Errno.EIO
        assert nbd.read(0, 64 * KiB) == nbdkit_pattern(0, 64 * KiB)


# --- 1b: each suite's libnbd against the reference server ---------------------------------


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    """One reference server for the module: per suite, a layered export with a dirty bitmap
    for each test (maps only, nbdsh writes, nbdcopy), so no test sees another's writes."""
    specs = [renamed(CHAIN, f"{purpose}-{suite}")
             for suite in SUITES for purpose in ("map", "write", "copy")]
    with layered_server(specs, tmp_path_factory.mktemp("interop-reference")) as thread:
        yield thread


@pytest.mark.parametrize("suite", SUITES)
def test_libnbd_nbdinfo_maps_every_context_of_the_reference_server(
        suite: str, reference: ServerThread, tmp_path: Path) -> None:
    spec = renamed(CHAIN, f"map-{suite}")
    where = endpoint(reference, spec.name)
    nbdinfo = client(suite, "nbdinfo", tmp_path)
    assert isinstance(nbdinfo, Nbdinfo)
    document = nbdinfo.info(where)
    (export,) = document["exports"]
    assert export["export-name"] == spec.name and export["export-size"] == spec.size
    assert set(export["contexts"]) == set(ALL_CONTEXTS)
    # nbdinfo prints "structured" from 1.14 (not 1.6) and "extended" from 1.22 (1.18 not seen).
    assert document.get("structured", True) is True
    assert document.get("extended", False) is speaks_extended_headers(suite)
    check_maps(nbdinfo, where, ALL_CONTEXTS, spec)
    assert nbdinfo.size(where) == spec.size
    # nbdinfo --json, a --map per context, --size: one connection each.
    assert_negotiated(sessions(reference, spec.name, at_least=2 + len(ALL_CONTEXTS)), suite)


@pytest.mark.parametrize("suite", SUITES)
def test_libnbd_nbdsh_writes_into_the_layered_export(suite: str, reference: ServerThread,
                                                     tmp_path: Path) -> None:
    spec = renamed(CHAIN, f"write-{suite}")
    where = endpoint(reference, spec.name)
    nbdsh = client(suite, "nbdsh", tmp_path)
    check_reads(nbdsh, where, spec)
    nbdsh.write(where, WRITE_AT.offset, WRITE_AT.data())
    # Written after the bitmap: the top layer now holds it and the bitmap marks it dirty.
    after = dataclasses.replace(spec, writes_after_bitmaps=(*spec.writes_after_bitmaps, WRITE_AT))
    assert nbdsh.read(where, WRITE_AT.offset, WRITE_AT.length) == WRITE_AT.data()
    check_reads(nbdsh, where, after)
    check_maps(nbdsh, where, ALL_CONTEXTS, after)
    check_maps(client(suite, "nbdinfo", tmp_path), where, ALL_CONTEXTS, after)
    assert expected_map(after, "qemu:dirty-bitmap:b0") == [
        (0, 256 * KiB, 0), (256 * KiB, 64 * KiB, DIRTY), (320 * KiB, 512 * KiB, 0),
        (832 * KiB, 64 * KiB, DIRTY), (896 * KiB, 128 * KiB, 0)]
    # One connection per read (twice READS, and WRITE_AT), the write, and each map of each tool.
    records = sessions(reference, spec.name, at_least=2 * len(READS) + 2 + 2 * len(ALL_CONTEXTS))
    assert_negotiated(records, suite)
    assert sum(r["commands"].get("NBD_CMD_WRITE", 0) for r in records) >= 1
    # What the server stored, read from its backend (no client in between).
    backend = reference.server.registry.backend(spec.name)
    assert backend.read(0, spec.size) == after.content()


@pytest.mark.parametrize("suite", SUITES)
def test_libnbd_nbdcopy_out_of_and_into_the_layered_export(suite: str, reference: ServerThread,
                                                          tmp_path: Path) -> None:
    spec = renamed(CHAIN, f"copy-{suite}")
    where = endpoint(reference, spec.name)
    nbdcopy = client(suite, "nbdcopy", tmp_path)
    assert isinstance(nbdcopy, Nbdcopy)
    out = tmp_path / "out.raw"
    nbdcopy.copy_from(where, out)
    assert out.read_bytes() == spec.content()
    # A source with holes: nbdcopy zeroes those ranges, over data of the lower layers too.
    source = tmp_path / "in.raw"
    content = bytearray(spec.size)
    with open(source, "wb") as image:
        image.truncate(spec.size)
        for data in (DataRange(0, 256 * KiB, 31), DataRange(640 * KiB, 384 * KiB, 32)):
            os.pwrite(image.fileno(), data.data(), data.offset)
            content[data.offset : data.end] = data.data()
    nbdcopy.copy_to(where, source)
    back = tmp_path / "back.raw"
    nbdcopy.copy_from(where, back)
    assert back.read_bytes() == bytes(content)
    assert_negotiated(sessions(reference, spec.name, at_least=3), suite)
    backend = reference.server.registry.backend(spec.name)
    assert backend.read(0, spec.size) == bytes(content)
    # However nbdcopy changed a granule (write, zero or trim), the dirty bitmap saw it.
    granule = spec.bitmaps[0].granularity
    before = spec.content()
    changed = {offset for offset in range(0, spec.size, granule)
               if before[offset : offset + granule] != content[offset : offset + granule]}
    dirty = dirty_granules(backend, spec.size, granule)
    assert changed and changed <= dirty, sorted(changed - dirty)


def dirty_granules(backend: Any, size: int, granule: int) -> set[int]:
    """Offsets of the granules the server's own ``qemu:dirty-bitmap:b0`` marks dirty."""
    dirty, offset = set(), 0
    for extent in backend.block_status("qemu:dirty-bitmap:b0", 0, size):
        if extent.flags & DIRTY:
            dirty.update(range(offset, offset + extent.length, granule))
        offset += extent.length
    return dirty


# --- 2: every profile against the packaged program it stands for ---------------------------

NBDKIT_MEMORY_BLOCK_SIZES = {"min_block_size": 1, "preferred_block_size": 32 * KiB,
                             "max_payload_size": 0xFFFFFFFF}
"""What nbdkit's memory plugin states from 1.38 (the memory-plugin-no-block-size quirk): block
sizes are export configuration for the reference server, not part of a profile."""

QEMU_VARIANTS: dict[str, tuple[QemuNbdOptions, bool]] = {
    # qemu-nbd switches, read-only. Every image has bitmap b0; only -B exports it.
    "bitmap-and-depth": (QemuNbdOptions(allocation_depth=True, bitmaps=True), False),
    "shared-writable": (QemuNbdOptions(allocation_depth=False, bitmaps=False, shared=2), False),
    "shared-read-only": (QemuNbdOptions(allocation_depth=True, bitmaps=False, shared=2), True),
    "unshared-read-only": (QemuNbdOptions(allocation_depth=False, bitmaps=False), True),
}
PLAIN_VARIANTS = {"writable": False, "read-only": True}


def export_name(server: PackagedServer) -> str:
    """nbdkit's plugins serve one default export, ``""``: that is what ``--list`` shows
    whatever ``--exportname`` says (observed on 1.24 to 1.48), so the reference serves ``""``
    too. qemu-nbd and nbd-server serve the export by its name."""
    return "" if server.family == "nbdkit" else "disk"


def cases() -> list[Any]:
    found = []
    for server in packaged_servers():
        variants = QEMU_VARIANTS if server.family == "qemu" else PLAIN_VARIANTS
        found += [pytest.param(server, variant, id=f"{server.id}-{variant}")
                  for variant in variants]
    return found


def start_real(server: PackagedServer, variant: str, workdir: Path) -> RunningServer:
    """The packaged program serving a 1 MiB export the ``variant`` way."""
    program = peer(server.suite, server.program)
    assert isinstance(program, ServerPeer)
    version = program.version().version
    assert version_matches(version, server.version), (server, version)
    if server.family == "qemu":
        options, read_only = QEMU_VARIANTS[variant]
        export = ExportSpec(size=1 * MiB, bitmaps=(BitmapSpec("b0"),), read_only=read_only)
        return program.start(export, workdir, options=options)
    export = ExportSpec(size=1 * MiB, image_format="raw", read_only=PLAIN_VARIANTS[variant],
                        name=export_name(server))
    if server.family == "nbdkit":
        return program.start(export, workdir, options=NbdkitOptions(plugin="memory"))
    return program.start(export, workdir, options=NbdServerOptions())


def equivalent_export(server: PackagedServer, variant: str) -> dict[str, object]:
    """The reference server's export that the real program's export amounts to."""
    export: dict[str, object] = {"name": export_name(server), "size": "1M"}
    quirks = {q.id for q in DATA.program(server.family).quirks(server.version)}
    if server.family == "qemu":
        options, read_only = QEMU_VARIANTS[variant]
        shared = (options.shared or 1) > 1
        # From 7.1 qemu-nbd needs --shared > 1 for multi-conn; before, the profile decides.
        multi_conn = shared if "multi-conn-needs-shared" in quirks else True
        export.update(read_only=read_only, multi_conn=multi_conn,
                      allocation_depth=options.allocation_depth,
                      bitmaps=["b0"] if options.bitmaps else [])
        return export
    export.update(read_only=PLAIN_VARIANTS[variant], multi_conn=True)
    if server.family == "nbdkit" and "memory-plugin-no-block-size" not in quirks:
        export.update(NBDKIT_MEMORY_BLOCK_SIZES)
    return export


def views(suites: tuple[str, ...], where: Endpoint, log_dir: Path) -> dict[str, list[dict]]:
    """What each suite's nbdinfo says about the export and the export list."""
    seen = {}
    for suite in suites:
        nbdinfo = client(suite, "nbdinfo", log_dir)
        assert isinstance(nbdinfo, Nbdinfo)
        seen[suite] = [protocol_view(nbdinfo.info(where)),
                       protocol_view(nbdinfo.list_exports(where))]
    return seen


def flatten(value: object, prefix: str = "") -> dict[str, object]:
    """``{"exports[0].can_fua": True, ...}``: one entry per leaf, for a readable diff."""
    if isinstance(value, dict):
        out: dict[str, object] = {}
        for key, item in value.items():
            out.update(flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return out
    if isinstance(value, list) and value and isinstance(value[0], dict):
        out = {}
        for index, item in enumerate(value):
            out.update(flatten(item, f"{prefix}[{index}]"))
        return out
    return {prefix: value}


def differences(real: object, ours: object) -> dict[str, tuple[object, object]]:
    """Fields where the reference server differs from the real program: (real, ours)."""
    flat_real, flat_ours = flatten(real), flatten(ours)
    missing = object()
    return {key: (flat_real.get(key, "<absent>"), flat_ours.get(key, "<absent>"))
            for key in sorted(set(flat_real) | set(flat_ours))
            if flat_real.get(key, missing) != flat_ours.get(key, missing)}


@pytest.mark.parametrize(("server", "variant"), cases())
def test_profile_looks_like_the_packaged_server(server: PackagedServer, variant: str,
                                                tmp_path: Path) -> None:
    suites = server.client_suites()
    with start_real(server, variant, tmp_path / "real") as running:
        real = views(suites, running.endpoint, tmp_path)
    features = profile(server.profile_name)
    with reference_thread(equivalent_export(server, variant), features) as thread:
        ours = views(suites, endpoint(thread, export_name(server)), tmp_path)
    for suite in suites:
        info = f"nbdinfo {suite_version(suite, 'libnbd')} ({suite})"
        assert differences(real[suite][0], ours[suite][0]) == {}, f"{info}: export"
        assert differences(real[suite][1], ours[suite][1]) == {}, f"{info}: --list"


def test_every_packaged_server_version_is_compared() -> None:
    """matrix/peers and matrix/suites.toml agree on what each suite carries, and that is
    every server version the profile comparison above runs against."""
    for server in packaged_servers():
        assert suite_version(server.suite, server.family) == server.version, server
    compared = {(s.family, s.version, s.suite) for s in packaged_servers()}
    assert compared == {
        ("qemu", "5.2", "bullseye"), ("qemu", "7.2", HOST_SUITE),
        ("qemu", "10.0", "bookworm-backports"), ("qemu", "10.0", "trixie"),
        ("qemu", "11.1", "sid"),
        ("nbdkit", "1.24", "bullseye"), ("nbdkit", "1.32", HOST_SUITE),
        ("nbdkit", "1.42", "trixie"), ("nbdkit", "1.48", "sid"),
        ("nbd-server", "3.21", "bullseye"), ("nbd-server", "3.24", HOST_SUITE),
        ("nbd-server", "3.26", "trixie"), ("nbd-server", "3.27", "sid"),
    }
