"""Version profiles of the reference server: generated from matrix/, and on the
wire the same as the real programs where those are installed (Debian bookworm:
qemu-nbd 7.2, nbdkit 1.32, nbd-server 3.24), as nbdinfo and a raw client see it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from _raw_client import RawClient

from harness.paths import REPO
from harness.peerdata import default_peerdata, version_matches
from harness.process import ManagedProcess, pick_port_and_start, run_command
from harness.protocol import constants as c
from harness.protocol.codec import decode_reply_payload, option
from harness.protocol.messages import (
    ClientFlags,
    EmptyPayload,
    InfoDescription,
    InfoExport,
    InfoRequestPayload,
    NewstyleGreeting,
    OptionReply,
)
from reference_server.config import config_from_dict
from reference_server.features import FULL, KNOWN_QUIRKS, ServerFeatures
from reference_server.profiles import (
    FEATURE_GRANTS,
    QUIRK_EFFECTS,
    ProfileError,
    list_profiles,
    profile,
)
from reference_server.runner import ServerThread

MiB = 1024 * 1024
# Debian's python3 first: nbdsh runs `python3` from PATH and needs Debian's `nbd` module.
ENV = {**os.environ, "PATH": "/usr/bin:/bin:" + os.environ.get("PATH", ""), "LIBNBD_DEBUG": "0"}
DATA = default_peerdata()
QEMU = DATA.program("qemu")
QEMU_VERSIONS = [info.version for info in QEMU.versions]

# nbdinfo --json fields that are not protocol features, left out of comparisons.
NOT_PROTOCOL = {
    "uri",  # carries the port number
    "content",  # file(1)'s guess at the export's bytes, not something negotiated
    "export-size-str",  # a rendering of export-size, which is compared
}


# --- helpers -------------------------------------------------------------------------------


def nbdinfo(uri: str, *options: str) -> dict:
    result = subprocess.run(["nbdinfo", "--json", *options, uri], capture_output=True, text=True,
                            timeout=60, env=ENV)
    if result.returncode:
        raise AssertionError(f"nbdinfo {' '.join(options)} {uri} failed:\n{result.stderr}")
    return json.loads(result.stdout)


def protocol_view(document: dict) -> dict:
    """What nbdinfo saw that the protocol decides: everything but :data:`NOT_PROTOCOL`."""
    exports = sorted(
        ({k: v for k, v in export.items() if k not in NOT_PROTOCOL}
         for export in document["exports"]),
        key=lambda export: export["export-name"],
    )
    return {**{k: v for k, v in document.items() if k != "exports"}, "exports": exports}


@contextmanager
def reference(exports: list[dict], features: ServerFeatures) -> Iterator[int]:
    """A reference server with ``exports`` and ``features``; yields its port."""
    with ServerThread(config_from_dict({"export": exports}), features) as server:
        yield server.address.port


@contextmanager
def managed(started: tuple[ManagedProcess, int]) -> Iterator[int]:
    process, port = started
    try:
        yield port
    finally:
        process.stop()


def require_version(program: str, argv: list[str], listed: str) -> None:
    """Fail (never skip) when the installed program is not the version the test is about."""
    output = run_command(argv, timeout=30).stdout
    words = [w for w in output.replace("(", " ").split() if w[:1].isdigit()]
    if not words or not version_matches(words[0], listed):
        pytest.fail(f"{program} {listed} expected, found: {output.strip()!r} "
                    "(run scripts/bootstrap on Debian bookworm)", pytrace=False)


def raw_connect(port: int) -> RawClient:
    client = RawClient("127.0.0.1", port)
    greeting = client.recv()
    assert isinstance(greeting, NewstyleGreeting)
    # Answer only with flags the server offered: it must close on any other (qemu 2.6 has
    # no NO_ZEROES).
    flags = c.ClientFlag.C_FIXED_NEWSTYLE
    if greeting.handshake_flags & c.HandshakeFlag.NO_ZEROES:
        flags |= c.ClientFlag.C_NO_ZEROES
    client.send(ClientFlags(flags))
    return client


def ask(client: RawClient, opt: int, payload: object = None) -> list[OptionReply]:
    client.send(option(opt, payload))
    replies = []
    while True:
        reply = client.recv()
        assert isinstance(reply, OptionReply), reply
        replies.append(reply)
        if reply.reply_type == c.Rep.ACK or c.is_rep_error(reply.reply_type):
            return replies


def final_reply(port: int, opt: int, payload: object = None) -> int:
    with raw_connect(port) as client:
        return ask(client, opt, payload)[-1].reply_type


# --- profiles as data ----------------------------------------------------------------------


def test_every_listed_server_version_has_a_profile():
    names = list_profiles()
    assert names[0] == "reference"
    for program in ("qemu", "nbdkit", "nbd-server"):
        for info in DATA.program(program).versions:
            assert f"{program}-{info.version}" in names
    assert not any(name.startswith("libnbd") for name in names)  # a client only
    for name in names:
        assert profile(name).name == name


def test_reference_is_the_full_protocol_and_releases_resolve_to_their_version():
    assert profile("reference") is FULL
    assert profile("qemu-10.0.2") == profile("qemu-10.0")


def test_unknown_profile_names_the_known_ones():
    with pytest.raises(ProfileError, match=r"unknown profile 'qemu-9.9' \(known profiles: "
                       r"reference, qemu-2.6, .*nbd-server-3.27\)"):
        profile("qemu-9.9")


def test_mapping_tables_cover_the_vocabulary_and_every_quirk():
    assert set(FEATURE_GRANTS) == set(DATA.features)
    quirk_ids = {q.id for p in DATA.programs.values() for q in p.quirk_list}
    assert quirk_ids <= set(QUIRK_EFFECTS)
    assert {e.quirk for e in QUIRK_EFFECTS.values() if e.quirk} <= set(KNOWN_QUIRKS)


def test_profiles_follow_the_data():
    q210, q211, q26 = profile("qemu-2.10"), profile("qemu-2.11"), profile("qemu-2.6")
    assert q210.offers(c.Opt.GO) and not q210.offers(c.Opt.STRUCTURED_REPLY)
    assert not q210.context_kinds and not q210.offers(c.Opt.SET_META_CONTEXT)
    assert q211.offers(c.Opt.STRUCTURED_REPLY) and not q211.offers(c.Opt.SET_META_CONTEXT)
    assert not q26.offers(c.Opt.GO) and not q26.offers(c.Opt.INFO) and not q26.no_zeroes
    assert profile("qemu-4.2").multi_conn == "read-only"
    assert profile("qemu-7.1").multi_conn == "always"
    assert not profile("nbdkit-1.32").info_block_size  # the memory plugin's quirk
    assert profile("nbdkit-1.42").info_block_size
    assert profile("nbd-server-3.24").quirks == {"info-size-zero", "abort-without-ack"}
    assert profile("nbd-server-3.21").quirks == {"info-size-zero", "abort-without-ack"}
    # What every qemu from 5.2 does as the real releases showed (`peers compare`).
    qemu_since_52 = {"read-only-hides-write-flags", "description-unasked", "block-size-unasked",
                     "abort-before-tls-refused", "trim-ignored", "zero-length-read-ok",
                     "request-errors-einval", "meta-query-no-colon-ignored",
                     "flat-image-depth-one"}
    assert profile("qemu-5.2").quirks == qemu_since_52 | {"flat-image-no-hole-bit"}
    assert profile("qemu-8.2").quirks == qemu_since_52 | {
        "info-block-status-payload", "list-meta-without-structured", "unflagged-extended-write"}
    assert "description-unasked" in profile("qemu-2.10").quirks
    assert not profile("nbdkit-1.48").quirks & {"description-unasked"}


def test_profile_docs_are_up_to_date():
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "gen-profile-docs"),
                             "--check"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


# --- every qemu version, as nbdinfo sees it ------------------------------------------------


@pytest.mark.peers
@pytest.mark.parametrize("version", QEMU_VERSIONS)
def test_nbdinfo_shows_what_the_data_says_for_every_qemu_version(version, require_programs):
    require_programs("nbdinfo")
    has = QEMU.features(version, "server").__contains__
    exports = [{"name": "disk", "size": "8M", "bitmaps": ["b0"], "multi_conn": True},
               {"name": "ro", "size": "1M", "read_only": True, "multi_conn": True}]
    with reference(exports, profile(f"qemu-{version}")) as port:
        disk_doc = nbdinfo(f"nbd://127.0.0.1:{port}/disk")
        ro_doc = nbdinfo(f"nbd://127.0.0.1:{port}/ro")
        listing = nbdinfo(f"nbd://127.0.0.1:{port}", "--list") if has("opt-go") else None
        with raw_connect(port) as client:
            listed = ask(client, c.Opt.LIST, EmptyPayload())
    structured = has("structured-replies")
    assert disk_doc["protocol"] == "newstyle-fixed" and disk_doc["TLS"] is False
    assert disk_doc["structured"] is structured
    disk, ro = disk_doc["exports"][0], ro_doc["exports"][0]
    expected_contexts = {name for feature, name in [
        ("base-allocation", "base:allocation"),
        ("dirty-bitmap", "qemu:dirty-bitmap:b0"),
        ("allocation-depth", "qemu:allocation-depth"),
    ] if has(feature)}
    assert set(disk.get("contexts", [])) == expected_contexts
    assert disk["can_zero"] is has("write-zeroes")
    assert disk["can_fast_zero"] is has("fast-zero")
    assert disk["can_cache"] is has("cache")
    assert disk["can_df"] is (has("df") and structured)
    assert (disk["can_trim"], disk["can_flush"], disk["can_fua"]) == (True, True, True)
    assert disk["can_multi_conn"] is has("multi-conn-writable")
    assert ro["is_read_only"] is True
    assert ro["can_multi_conn"] is (has("multi-conn-read-only") or has("multi-conn-writable"))
    hides = "read-only-hides-write-flags" in {q.id for q in QEMU.quirks(version)}
    assert (ro["can_trim"], ro["can_zero"]) == (not hides, has("write-zeroes") and not hides)
    block_sizes = (disk.get("block_size_minimum"), disk.get("block_size_preferred"),
                   disk.get("block_size_maximum"))
    # nbdinfo asks for block sizes: qemu 2.10-3.x then advertise 512 (quirk sector-min-block).
    minimum = 512 if "sector-min-block" in {q.id for q in QEMU.quirks(version)} else 1
    assert block_sizes == ((minimum, 4096, 32 * MiB) if has("info-block-size") else (None,) * 3)
    # Without NBD_OPT_GO nbdinfo falls back to NBD_OPT_EXPORT_NAME: the size is still right.
    assert disk["export-size"] == 8 * MiB
    # nbdinfo 1.14 --list needs NBD_OPT_INFO for a second export; without it, ask directly.
    if listing is not None:
        # nbdinfo names each export by its NBD_INFO_NAME: empty from qemu 2.10-2.11.
        empty = "info-name-empty" in {q.id for q in QEMU.quirks(version)}
        assert {e["export-name"] for e in listing["exports"]} == ({""} if empty
                                                                  else {"disk", "ro"})
    if has("list-exports"):
        assert [r.reply_type for r in listed] == [c.Rep.SERVER, c.Rep.SERVER, c.Rep.ACK]
    else:
        assert [r.reply_type for r in listed] == [c.Rep.ERR_UNSUP]


@pytest.mark.parametrize("version", QEMU_VERSIONS)
def test_extended_headers_are_offered_from_qemu_8_2(version):
    expected = c.Rep.ACK if QEMU.has("extended-headers", version, "server") else c.Rep.ERR_UNSUP
    with reference([{"name": "disk", "size": "1M"}], profile(f"qemu-{version}")) as port:
        assert final_reply(port, c.Opt.EXTENDED_HEADERS) == expected
        go = final_reply(port, c.Opt.GO, InfoRequestPayload("disk", ()))
        assert go == (c.Rep.ACK if QEMU.has("opt-go", version, "server") else c.Rep.ERR_UNSUP)


# --- serve --profile ---------------------------------------------------------------------


@pytest.mark.peers
def test_serve_with_profile_qemu_2_10_end_to_end(tmp_path, require_programs):
    require_programs("nbdinfo", "nbdsh")
    port_file = tmp_path / "port"
    process = ManagedProcess.start(
        [sys.executable, "-m", "harness.cli", "serve", "--profile", "qemu-2.10",
         "--export", "disk=memory:8M", "--port-file", str(port_file)],
        log_path=tmp_path / "serve.log", cwd=REPO)
    try:
        process.wait_ready(port_file.exists, 30, "the port file")
        uri = f"nbd://127.0.0.1:{int(port_file.read_text())}/disk"
        document = nbdinfo(uri)
        export = document["exports"][0]
        assert document["structured"] is False and "contexts" not in export
        assert export["block_size_preferred"] == 4096 and export["can_zero"] is True
        assert export["can_cache"] is False and export["can_fast_zero"] is False
        script = ("d = bytes(range(256)) * 512; h.pwrite(d, 1048576); "
                  "assert h.pread(len(d), 1048576) == d; h.zero(65536, 1048576 + 4096); "
                  "assert h.pread(8192, 1048576) == d[:4096] + bytes(4096); h.flush()")
        result = subprocess.run(["nbdsh", "-u", uri, "-c", script], capture_output=True,
                                text=True, timeout=60, env=ENV)
        assert result.returncode == 0, result.stderr
        assert "profile: qemu-2.10" in process.log_text()
    finally:
        assert process.stop() == 0, process.log_tail()


def test_serve_with_unknown_profile_is_a_one_line_error():
    result = run_command([sys.executable, "-m", "harness.cli", "serve", "--profile", "qemu-0.1",
                          "--export", "d=memory:1M"], timeout=60, cwd=REPO)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "unknown profile 'qemu-0.1'" in result.stderr


def test_serve_list_profiles_prints_every_name():
    result = run_command([sys.executable, "-m", "harness.cli", "serve", "--list-profiles"],
                         timeout=60, cwd=REPO, check=True)
    assert result.stdout.split() == list_profiles()


# --- profile vs real program --------------------------------------------------------------


def start_qemu_nbd(tmp_path: Path, image: Path, *options: str) -> tuple[ManagedProcess, int]:
    return pick_port_and_start(
        lambda port: ["qemu-nbd", "-t", "--bind", "127.0.0.1", "--port", str(port), "-x", "disk",
                      "-f", "qcow2", *options, str(image)],
        log_path=tmp_path / "qemu-nbd.log")


QEMU_CASES = {
    # qemu-nbd options, the equivalent reference export, does qemu-nbd offer allocation depth
    "bitmap-and-depth": (["-B", "b0", "-A"], {"bitmaps": ["b0"]}, True),
    "plain": ([], {}, False),
    "shared-writable": (["-e", "2"], {"multi_conn": True}, False),
    "shared-read-only": (["-r", "-e", "2", "-A"], {"multi_conn": True, "read_only": True}, True),
    "unshared-read-only": (["-r"], {"read_only": True}, False),
}


@pytest.mark.peers
@pytest.mark.parametrize("case", list(QEMU_CASES))
def test_profile_qemu_7_2_looks_like_qemu_nbd_7_2(case, tmp_path, require_programs):
    require_programs("qemu-nbd", "qemu-img", "nbdinfo")
    require_version("qemu-nbd", ["qemu-nbd", "--version"], "7.2")
    options, export_settings, allocation_depth = QEMU_CASES[case]
    image = tmp_path / "disk.qcow2"
    run_command(["qemu-img", "create", "-f", "qcow2", str(image), "8M"], timeout=30, check=True)
    run_command(["qemu-img", "bitmap", "--add", str(image), "b0"], timeout=30, check=True)
    features = profile("qemu-7.2")
    if not allocation_depth:
        # qemu-nbd offers qemu:allocation-depth only with -A, an export option; the profile
        # says what qemu 7.2 can offer, so the export without -A drops that context.
        features = features.without(
            context_kinds=features.context_kinds - {c.QEMU_ALLOCATION_DEPTH})
    # qemu-nbd's export is shareable (multi_conn) only with -e 2: the default is unshared.
    export = {"name": "disk", "size": "8M", "multi_conn": False, **export_settings}
    views = []
    with managed(start_qemu_nbd(tmp_path, image, *options)) as port:
        views.append([protocol_view(nbdinfo(f"nbd://127.0.0.1:{port}/disk")),
                      protocol_view(nbdinfo(f"nbd://127.0.0.1:{port}", "--list")),
                      final_reply(port, c.Opt.EXTENDED_HEADERS)])
    with reference([export], features) as port:
        views.append([protocol_view(nbdinfo(f"nbd://127.0.0.1:{port}/disk")),
                      protocol_view(nbdinfo(f"nbd://127.0.0.1:{port}", "--list")),
                      final_reply(port, c.Opt.EXTENDED_HEADERS)])
    real, ours = views
    assert ours[0] == real[0]
    assert ours == real
    assert real[2] == c.Rep.ERR_UNSUP  # qemu 7.2 has no extended headers


@pytest.mark.peers
@pytest.mark.parametrize("read_only", [False, True], ids=["writable", "read-only"])
def test_profile_nbdkit_1_32_looks_like_nbdkit_memory_1_32(read_only, tmp_path,
                                                            require_programs):
    require_programs("nbdkit", "nbdinfo")
    require_version("nbdkit", ["nbdkit", "--version"], "1.32")
    options = ["-r"] if read_only else []
    started = pick_port_and_start(
        lambda port: ["nbdkit", "-f", *options, "-p", str(port), "--ip-addr", "127.0.0.1",
                      "memory", "8M"],
        log_path=tmp_path / "nbdkit.log")
    views = []
    with managed(started) as port:
        views.append([protocol_view(nbdinfo(f"nbd://127.0.0.1:{port}/")),
                      protocol_view(nbdinfo(f"nbd://127.0.0.1:{port}", "--list")),
                      final_reply(port, c.Opt.EXTENDED_HEADERS)])
    # nbdkit serves its default export "" and advertises multi-conn for the memory plugin.
    export = {"name": "", "size": "8M", "multi_conn": True, "read_only": read_only}
    with reference([export], profile("nbdkit-1.32")) as port:
        views.append([protocol_view(nbdinfo(f"nbd://127.0.0.1:{port}/")),
                      protocol_view(nbdinfo(f"nbd://127.0.0.1:{port}", "--list")),
                      final_reply(port, c.Opt.EXTENDED_HEADERS)])
    real, ours = views
    assert ours == real
    assert real[2] == c.Rep.ERR_UNSUP  # nbdkit never negotiates extended headers


def start_nbd_server(tmp_path: Path, image: Path, attempt: str) -> tuple[ManagedProcess, int]:
    """One nbd-server -d: it serves a single client, then exits."""
    config = tmp_path / f"nbd-server-{attempt}.conf"

    def argv(port: int) -> list[str]:
        config.write_text(
            f"[generic]\n  listenaddr = 127.0.0.1\n  port = {port}\n  allowlist = true\n"
            f"[disk]\n  exportname = {image}\n  flush = true\n  fua = true\n  trim = true\n")
        return ["nbd-server", "-C", str(config), "-d"]

    return pick_port_and_start(argv, log_path=tmp_path / f"nbd-server-{attempt}.log")


@pytest.mark.peers
def test_profile_nbd_server_3_24_looks_like_nbd_server_3_24(tmp_path, require_programs):
    require_programs("nbd-server", "nbdinfo")
    require_version("nbd-server", ["nbd-server", "--version"], "3.24")
    image = tmp_path / "disk.raw"
    with open(image, "wb") as stream:
        stream.truncate(8 * MiB)
    real = []
    with managed(start_nbd_server(tmp_path, image, "info")) as port:
        real.append(protocol_view(nbdinfo(f"nbd://127.0.0.1:{port}/disk")))
    with managed(start_nbd_server(tmp_path, image, "list")) as port:
        real.append(protocol_view(nbdinfo(f"nbd://127.0.0.1:{port}", "--list")))
    with managed(start_nbd_server(tmp_path, image, "abort")) as port:
        real.append(abort_is_answered(port))
    with reference([{"name": "disk", "size": "8M", "multi_conn": True}],
                   profile("nbd-server-3.24")) as port:
        ours = [protocol_view(nbdinfo(f"nbd://127.0.0.1:{port}/disk")),
                protocol_view(nbdinfo(f"nbd://127.0.0.1:{port}", "--list")),
                abort_is_answered(port)]
    assert ours == real
    assert real[0]["exports"][0]["export-size"] == 0  # the info-size-zero quirk, in both
    assert real[2] is False  # the abort-without-ack quirk, in both


def abort_is_answered(port: int) -> bool:
    """Send NBD_OPT_ABORT: True when the server answers NBD_REP_ACK before closing."""
    with raw_connect(port) as client:
        client.send(option(c.Opt.ABORT, EmptyPayload()))
        # The raw client's socket timeout bounds the wait.
        return not client.closed_by_peer()


def test_reference_answers_abort_and_the_nbd_server_profile_does_not():
    with reference([{"name": "disk", "size": "1M"}], FULL) as port:
        assert abort_is_answered(port) is True
    with reference([{"name": "disk", "size": "1M"}], profile("nbd-server-3.27")) as port:
        assert abort_is_answered(port) is False


def info_and_go_flags(port: int) -> tuple[int, int]:
    """Transmission flags from NBD_OPT_INFO, then NBD_OPT_GO, after extended headers and
    without NBD_OPT_SET_META_CONTEXT."""
    flags = []
    with raw_connect(port) as client:
        assert ask(client, c.Opt.EXTENDED_HEADERS, EmptyPayload())[-1].reply_type == c.Rep.ACK
        for opt in (c.Opt.INFO, c.Opt.GO):
            replies = ask(client, opt, InfoRequestPayload("disk", ()))
            exports = [decode_reply_payload(r.reply_type, r.data) for r in replies
                       if r.reply_type == c.Rep.INFO]
            flags += [e.transmission_flags for e in exports if isinstance(e, InfoExport)]
    return flags[0], flags[1]


def test_qemu_advertises_block_status_payload_on_info_before_contexts():
    bsp = c.TransmissionFlag.BLOCK_STATUS_PAYLOAD
    with reference([{"name": "disk", "size": "1M"}], profile("qemu-8.2")) as port:
        info, go = info_and_go_flags(port)
    assert info & bsp and not go & bsp  # as qemu 11.1 does (info-block-status-payload quirk)
    with reference([{"name": "disk", "size": "1M"}], FULL) as port:
        info, go = info_and_go_flags(port)
    assert not info & bsp and not go & bsp


def descriptions_unasked(port: int) -> list[str]:
    """The NBD_INFO_DESCRIPTION replies to NBD_OPT_INFO and NBD_OPT_GO asking for no
    information at all."""
    found = []
    with raw_connect(port) as client:
        for opt in (c.Opt.INFO, c.Opt.GO):
            replies = ask(client, opt, InfoRequestPayload("disk", ()))
            infos = [decode_reply_payload(r.reply_type, r.data) for r in replies
                     if r.reply_type == c.Rep.INFO]
            found += [i.description for i in infos if isinstance(i, InfoDescription)]
    return found


@pytest.mark.peers
def test_qemu_sends_the_description_unasked_and_so_does_its_profile(tmp_path, require_programs):
    require_programs("qemu-nbd", "qemu-img")
    require_version("qemu-nbd", ["qemu-nbd", "--version"], "7.2")
    image = tmp_path / "disk.qcow2"
    run_command(["qemu-img", "create", "-f", "qcow2", str(image), "1M"], timeout=30, check=True)
    with managed(start_qemu_nbd(tmp_path, image, "-D", "a described disk")) as port:
        assert descriptions_unasked(port) == ["a described disk"] * 2
    export = {"name": "disk", "size": "1M", "description": "a described disk"}
    with reference([export], profile("qemu-7.2")) as port:
        assert descriptions_unasked(port) == ["a described disk"] * 2
    with reference([export], FULL) as port:  # the reference server answers what is asked
        assert descriptions_unasked(port) == []
