"""``nbd-harness replay FILE --against URI``: recorded sessions played to live servers.

Sessions are recorded with the capture proxy between real clients and real
servers (and the reference client and server for the quick cases), then
replayed against a fresh instance of a server on the same image: the same
server gives no difference at all; another one (a version profile, qemu-nbd
5.2 for a qemu-nbd 11.1 session, a read-only export, other content) gives
exactly the differences it really has, each named by aspect.  The replay's
own traffic is recorded too, to check that it sends what the recorded client
sent (same bytes when the negotiation is the same, pipelined the same way).

The checked-in captures of ``tests/data/captures`` replay against the peers
that made them; a pcap file, several sessions per file, ``--session`` and
``--stream`` (checked against tshark's ``tcp.stream``), a TLS session, a
truncated capture, a server that dies and one that stops answering are
covered too.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import struct
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from _fixtures_client import pattern, start_nbdkit
from _fixtures_interop import layered_export_table, mark_bitmaps, peer
from _fixtures_peers import CHAIN, expected_map

from harness.address import Address
from harness.capture import ProxyThread
from harness.cli import main
from harness.client import Client, ConnectOptions, NbdClient
from harness.dissect import CLIENT, SERVER, decode_capture
from harness.peers import DRIVERS, Endpoint, ExportSpec, NbdServerOptions, RunningServer
from harness.process import run_command
from harness.protocol import constants as c
from harness.protocol.extents import merge_descriptors
from harness.replay import ReplayReport, load_sessions
from harness.replay._compare import ReplyView, compare_replies
from harness.replay.against import replay_against
from reference_server.config import config_from_dict
from reference_server.features import FULL, ServerFeatures
from reference_server.profiles import profile
from reference_server.runner import ServerThread

KiB = 1024
MiB = 1024 * KiB
CAPTURES = Path(__file__).parent / "data" / "captures"
WAIT = 30.0
LOCALHOST = Address.tcp("127.0.0.1", 0)
DATA = pattern(64 * KiB, 16 * KiB, seed=7)


# --- helpers ----------------------------------------------------------------------------


@contextlib.contextmanager
def recording(upstream: Address, path: Path, export: str = "disk") -> Iterator[Endpoint]:
    """The capture proxy in front of ``upstream``; on the way out it waits until every
    connection it accepted has finished, so the file holds every byte."""
    with ProxyThread(LOCALHOST, upstream, path) as proxy:
        yield Endpoint(Address.tcp("127.0.0.1", proxy.address.port), export)
        proxy.wait_closed(proxy.stats.accepted, WAIT)
        assert proxy.errors == []


def uri_of(address: Address, export: str = "") -> str:
    if address.kind == "unix":
        return f"nbd+unix:///{export}?socket={address.path}"
    return f"nbd://127.0.0.1:{address.port}/{export}"


def replay(path: Path, address: Address, sessions: tuple[int, ...] = (), **options: object
           ) -> list[ReplayReport]:
    return replay_against(load_sessions(path, sessions), uri_of(address), timeout=WAIT,
                          **options)  # type: ignore[arg-type]


def aspects(report: ReplayReport) -> list[tuple[str, str]]:
    return [(d.message, d.aspect) for d in report.differences]


def assert_same(reports: list[ReplayReport], path: Path) -> None:
    """Every session replayed whole, with nothing different and nothing adapted."""
    capture = decode_capture(path)
    assert [r.session for r in reports] == [s.index for s in capture.sessions]
    for report, session in zip(reports, capture.sessions, strict=True):
        assert report.same, report.render()
        assert report.notes == [], report.render()
        assert report.replayed == len(session.messages), report.render()


def reference(exports: list[dict[str, object]], features: ServerFeatures = FULL,
              **server: object) -> ServerThread:
    document: dict[str, object] = {"export": exports}
    if server:
        document["server"] = server
    return ServerThread(config_from_dict(document), features)


MEMORY_EXPORT = {"name": "disk", "size": "1M"}


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["replay", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# --- sessions of the reference client ------------------------------------------------------


def reference_client_sessions(endpoint: Endpoint) -> None:
    """Session 1 writes, reads back, maps, flushes, trims, zeroes, caches; session 2 lists
    the exports, asks for information, then reads with two requests in flight at once."""
    uri = endpoint.uri()
    with Client.connect(uri) as nbd:
        nbd.write(64 * KiB, DATA)
        assert nbd.read(64 * KiB, len(DATA)) == DATA
        assert nbd.map() == [(0, 64 * KiB, 3), (64 * KiB, 16 * KiB, 0), (80 * KiB, 944 * KiB, 3)]
        nbd.flush()
        nbd.trim(68 * KiB, 4 * KiB)
        nbd.write_zeroes(72 * KiB, 4 * KiB)
        nbd.cache(0, 64 * KiB)
        expected = DATA[:4 * KiB] + bytes(8 * KiB) + DATA[12 * KiB:]
        assert nbd.read(64 * KiB, len(DATA)) == expected

    async def pipelined() -> None:
        options = ConnectOptions(enter_transmission=False)
        client = await NbdClient.connect(uri, options=options)
        try:
            assert [e.name for e in await client.list_exports()] == ["disk"]
            await client.info("disk")
            await client.enter_transmission("disk")
            first, second = await asyncio.gather(client.read(64 * KiB, 4 * KiB),
                                                 client.read(76 * KiB, 4 * KiB))
            assert (first, second) == (DATA[:4 * KiB], DATA[12 * KiB:])
            await client.disconnect()
        finally:
            await client.close()

    asyncio.run(asyncio.wait_for(pipelined(), WAIT))


@pytest.fixture(scope="module")
def reference_capture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two sessions of the reference client with the reference server (memory export)."""
    path = tmp_path_factory.mktemp("reference") / "reference.pcapng"
    with reference([MEMORY_EXPORT]) as server, recording(server.address, path) as endpoint:
        reference_client_sessions(endpoint)
    return path


def test_replay_against_the_same_server_finds_no_difference(reference_capture: Path,
                                                             tmp_path: Path) -> None:
    with reference([MEMORY_EXPORT]) as server:
        again = tmp_path / "replayed.pcapng"
        with recording(server.address, again) as endpoint:
            reports = replay(reference_capture, endpoint.address)
    assert_same(reports, reference_capture)
    # What went to the live server is what the recorded client sent, byte for byte
    # (the same negotiation needs no adaptation), in the same order.
    recorded, replayed = decode_capture(reference_capture), decode_capture(again)
    for old, new in zip(recorded.sessions, replayed.sessions, strict=True):
        assert [m.wire for m in new.messages if m.direction == CLIENT] == [
            m.wire for m in old.messages if m.direction == CLIENT]
        assert [m.wire for m in new.messages if m.direction == SERVER] == [
            m.wire for m in old.messages if m.direction == SERVER]


def test_cli_exit_status_text_and_json(reference_capture: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    with reference([MEMORY_EXPORT]) as server:
        code, out, err = cli(capsys, str(reference_capture), "--against", uri_of(server.address))
        assert (code, err) == (0, "")
        assert out.splitlines()[-1] == (f"2 session(s) replayed against {uri_of(server.address)}:"
                                        " no differences")
        code, out, _ = cli(capsys, str(reference_capture), "--against", uri_of(server.address),
                           "--session", "2", "--json")
    assert code == 0
    document = json.loads(out)
    assert (document["same"], document["mode"], document["skipped"]) == (True, "against", [])
    [session] = document["sessions"]
    assert (session["session"], session["same"], session["differences"]) == (2, True, [])


def test_a_read_only_export_fails_the_writes(reference_capture: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    read_only = {**MEMORY_EXPORT, "read_only": True}
    with reference([read_only]) as server:
        [report] = replay(reference_capture, server.address, sessions=(1,))
        code, out, _ = cli(capsys, str(reference_capture), "--against", uri_of(server.address),
                           "--session", "1")
    assert code == 1 and "1 with differences, 0 stopped early" in out
    assert report.error == ""
    go = "NBD_OPT_GO"
    assert aspects(report) == [
        (go, "transmission flags"),
        ("NBD_CMD_WRITE cookie 0x1", "error"),
        ("NBD_CMD_READ cookie 0x2", "data"),
        ("NBD_CMD_BLOCK_STATUS cookie 0x3", "extents of base:allocation"),
        ("NBD_CMD_TRIM cookie 0x5", "error"),
        ("NBD_CMD_WRITE_ZEROES cookie 0x6", "error"),
        ("NBD_CMD_READ cookie 0x8", "data"),
    ]
    flags, write, read, extents = report.differences[:4]
    assert (flags.recorded, flags.live) == ("without NBD_FLAG_READ_ONLY", "with NBD_FLAG_READ_ONLY")
    assert flags.sections == ("Option types", "Option reply types", "Transmission flags")
    assert (write.recorded, write.sections) == ("success", ("Error values", "Request types"))
    assert write.live.startswith("NBD_EPERM (")
    # The export stays zero: the data read differs wherever the pattern is not zero.
    differing = [i for i in range(len(DATA)) if DATA[i]]
    first, last = 64 * KiB + differing[0], 64 * KiB + differing[-1]
    assert read.recorded == f"{16 * KiB} bytes at offset {64 * KiB}"
    assert read.live.startswith(f"differs at offsets {first}..{last} ({len(differing)} bytes in ")
    assert (extents.recorded, extents.live) == (
        "3 extents over 1048576 bytes; at offset 0: 65536 bytes HOLE|ZERO",
        "1 extent over 1048576 bytes; at offset 0: 1048576 bytes HOLE|ZERO")
    assert extents.sections == ("Metadata querying", "Structured reply types")


def test_data_differences_are_given_as_offset_ranges(reference_capture: Path,
                                                     tmp_path: Path) -> None:
    # The live export holds other bytes where the recorded session read: two ranges differ
    # (the written pattern is then read back equal).
    image = tmp_path / "other.raw"
    with open(image, "wb") as file:
        file.truncate(1 * MiB)
        os.pwrite(file.fileno(), b"\xff" * 100, 100)
        os.pwrite(file.fileno(), b"\x01", 5000)
    read_first = tmp_path / "read-first.pcapng"
    with (reference([MEMORY_EXPORT]) as server,
          recording(server.address, read_first) as endpoint,
          Client.connect(endpoint.uri()) as nbd):
        assert nbd.read(0, 8 * KiB) == bytes(8 * KiB)
    with reference([{"name": "disk", "backend": "file", "path": str(image)}]) as server:
        [report] = replay(read_first, server.address)
    [difference] = report.differences
    assert (difference.message, difference.aspect) == ("NBD_CMD_READ cookie 0x1", "data")
    assert difference.live == "differs at offsets 100..199, 5000..5000 (101 bytes)"
    assert difference.sections == ("Request types", "Structured reply types")
    assert difference.frame is not None and report.error == ""


def test_a_server_without_extended_headers_gets_the_fallback(reference_capture: Path) -> None:
    # qemu 7.2 as a profile: no NBD_OPT_EXTENDED_HEADERS (then structured replies), no
    # NBD_FLAG_BLOCK_STATUS_PAYLOAD; the writes and extents are the same, and the data but
    # for the trimmed range: qemu-nbd ignores NBD_CMD_TRIM (quirk trim-ignored).
    with reference([MEMORY_EXPORT], profile("qemu-7.2")) as server:
        first, second = replay(reference_capture, server.address)
    headers = "NBD_OPT_EXTENDED_HEADERS"
    assert aspects(first) == [
        (headers, "reply type"),
        (headers, "fallback"),
        ("NBD_OPT_GO", "transmission flags"),
        ("NBD_CMD_READ cookie 0x8", "data"),
    ]
    refused, fallback, flags, trimmed = first.differences
    assert trimmed.live.startswith("differs at offsets")
    assert refused.recorded == "NBD_REP_ACK" and refused.live.startswith("NBD_REP_ERR_UNSUP")
    assert fallback.live == ("NBD_OPT_STRUCTURED_REPLY sent instead: NBD_REP_ACK, structured "
                             "replies with compact headers")
    assert (flags.recorded, flags.live) == ("with NBD_FLAG_BLOCK_STATUS_PAYLOAD",
                                            "without NBD_FLAG_BLOCK_STATUS_PAYLOAD")
    assert first.notes == [
        "requests sent with compact headers, as the live negotiation requires",
        "replies are compared by meaning, not form: the live negotiation has structured "
        "replies, the recorded one extended headers",
    ]
    assert aspects(second) == [
        (headers, "reply type"),
        (headers, "fallback"),
        ("NBD_OPT_GO", "transmission flags"),
    ]
    assert first.replayed == len(decode_capture(reference_capture).sessions[0].messages)


def test_an_old_server_without_opt_go_gets_export_name(reference_capture: Path) -> None:
    # qemu 2.6: oldest newstyle qemu; no NO_ZEROES, no GO/INFO, no structured replies.
    with reference([MEMORY_EXPORT], profile("qemu-2.6")) as server:
        [report] = replay(reference_capture, server.address, sessions=(1,))
    headers, go = "NBD_OPT_EXTENDED_HEADERS", "NBD_OPT_GO"
    assert aspects(report) == [
        ("newstyle greeting", "handshake flags"),
        (headers, "reply type"),
        (headers, "fallback"),
        ("NBD_OPT_SET_META_CONTEXT", "skipped"),
        (go, "reply type"),
        (go, "fallback"),
        (go, "transmission flags"),
        ("NBD_CMD_BLOCK_STATUS cookie 0x3", "skipped"),
        ("NBD_CMD_WRITE_ZEROES cookie 0x6", "skipped"),
        ("NBD_CMD_CACHE cookie 0x7", "skipped"),
        # The zeroing was skipped: the last read sees the pattern where it had zeroes.
        ("NBD_CMD_READ cookie 0x8", "data"),
    ]
    assert report.differences[2].live == ("NBD_OPT_STRUCTURED_REPLY sent instead: "
                                          "NBD_REP_ERR_UNSUP, simple replies with compact headers")
    assert report.differences[5].live.endswith("NBD_OPT_EXPORT_NAME 'disk' sent instead")
    assert report.differences[7].live == "not sent: no metadata context was selected live"
    assert report.differences[8].live == ("not sent: the live server does not offer "
                                          "NBD_FLAG_SEND_WRITE_ZEROES")
    zeroed = [i for i in range(8 * KiB, 12 * KiB) if DATA[i]]
    assert report.differences[10].live.startswith(
        f"differs at offsets {64 * KiB + zeroed[0]}..{64 * KiB + zeroed[-1]} ({len(zeroed)} "
        "bytes in ")
    assert "client flag NBD_FLAG_C_NO_ZEROES not sent: the live server does not offer " \
        "NBD_FLAG_NO_ZEROES" in report.notes
    assert report.error == ""


def test_an_oldstyle_server_stops_a_newstyle_replay(reference_capture: Path) -> None:
    with reference([MEMORY_EXPORT], handshake="oldstyle") as server:
        first, second = replay(reference_capture, server.address)
    for report in (first, second):  # each session on its own connection
        assert aspects(report) == [("newstyle greeting", "greeting style")]
        assert (report.differences[0].recorded, report.differences[0].live) == (
            "newstyle negotiation", "oldstyle negotiation")
        assert report.error == ("the live server speaks oldstyle negotiation and the recorded "
                                "session newstyle: the rest cannot be replayed")
        assert report.replayed == 0 and not report.same


def test_a_server_without_fixed_newstyle_gets_export_name_only(reference_capture: Path) -> None:
    with reference([MEMORY_EXPORT], handshake="newstyle") as server:
        _, report = replay(reference_capture, server.address)  # session 1 writes what 2 reads
    not_fixed = ("not sent: the live server is not fixed-newstyle: NBD_OPT_EXPORT_NAME is the "
                 "only option it knows")
    assert [(d.message, d.aspect, d.live) for d in report.differences[1:5]] == [
        (name, "skipped", not_fixed) for name in (
            "NBD_OPT_EXTENDED_HEADERS", "NBD_OPT_LIST", "NBD_OPT_INFO",
            "NBD_OPT_SET_META_CONTEXT")]
    assert aspects(report)[:1] + aspects(report)[5:] == [
        ("newstyle greeting", "handshake flags"),
        ("NBD_OPT_GO", "fallback"),
        ("NBD_OPT_GO", "transmission flags"),
    ]
    assert report.differences[1].sections == ("Newstyle negotiation",
                                              "Fixed newstyle negotiation")
    assert report.differences[5].live == f"{not_fixed}; NBD_OPT_EXPORT_NAME 'disk' sent instead"
    assert report.notes[0] == ("client flag NBD_FLAG_C_FIXED_NEWSTYLE not sent: the live server "
                               "does not offer NBD_FLAG_FIXED_NEWSTYLE")
    assert report.error == ""  # the two reads were compared, and agree


def test_the_export_name_adapts_only_when_asked(reference_capture: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    scratch = {"name": "scratch", "size": "1M"}
    with reference([scratch]) as server:
        [refused] = replay(reference_capture, server.address, sessions=(1,))
        [renamed] = replay(reference_capture, server.address, sessions=(1,),
                           export_name="scratch")
        uri = uri_of(server.address, "scratch")
        code, out, _ = cli(capsys, str(reference_capture), "--against", uri, "--session", "1")
        both = cli(capsys, str(reference_capture), "--against", uri, "--export", "other")
    assert aspects(refused) == [("NBD_OPT_SET_META_CONTEXT", "reply type"),
                                ("NBD_OPT_GO", "reply type")]
    assert refused.differences[1].live.startswith("NBD_REP_ERR_UNKNOWN")
    assert refused.error == ("the live server refused NBD_OPT_GO (" + refused.differences[1].live
                             + "): there is no transmission phase to replay")
    assert renamed.same and renamed.notes == ["export 'disk' replaced by 'scratch', as asked"]
    assert code == 0 and "no differences" in out  # the URI's export replaces it too
    assert both[0] == 2 and "the URI names export 'scratch' and --export names 'other'" in both[2]


def test_context_ids_map_by_name(tmp_path: Path) -> None:
    # qemu-nbd 11.1 numbers its contexts from 0, the reference server from 1: the
    # recorded block status payload naming the bitmap is sent with the live id.
    table = {**layered_export_table(CHAIN, tmp_path / "chain"),
             "description": CHAIN.description, "multi_conn": False}
    capture = CAPTURES / "qemu-nbd11-libnbd124-extended.pcapng"
    with ServerThread(config_from_dict({"export": [table]})) as server:
        mark_bitmaps(server, CHAIN)
        reports = replay(capture, server.address)
    # Nothing else differs, but for one thing: qemu-nbd sends NBD_INFO_DESCRIPTION unasked
    # (the spec allows it), the reference server only when asked.
    for report in reports:
        assert {d.aspect for d in report.differences} == {"information"}, report.render()
        assert {(d.recorded, d.live) for d in report.differences} == {
            ("NBD_INFO_DESCRIPTION", "no NBD_INFO_DESCRIPTION")}
        assert report.error == ""
    assert [r.notes for r in reports] == [
        [], [], [], ["context id 2 (qemu:dirty-bitmap:b0) sent as the live id 3"]]


# --- captures that cannot, or can only partly, be replayed --------------------------------------


def test_a_tls_session_is_refused_with_a_clear_message(tmp_path: Path, pki,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "tls.pcapng"
    server = reference([MEMORY_EXPORT], tls="required", tls_certificates=str(pki.directory))
    with server, recording(server.address, path) as endpoint:
        uri = f"nbds://127.0.0.1:{endpoint.address.port}/disk?tls-certificates={pki.directory}"
        with Client.connect(uri) as nbd:
            nbd.write(0, DATA)
            assert nbd.read(0, len(DATA)) == DATA
    code, out, err = cli(capsys, str(path), "--against", "nbd://127.0.0.1:9/")
    assert (code, out) == (2, "")
    assert err.startswith(f"nbd-harness replay: error: {path}: no session to replay (session 1: "
                          "it switched to TLS (NBD_OPT_STARTTLS at frame ")
    assert "record the session without TLS" in err and len(err.splitlines()) == 1


def test_usage_errors_are_one_line(reference_capture: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    file = str(reference_capture)
    cases = {
        ("--session", "3"): f"{file} has no session 3 (it has 2 session(s)",
        ("--stream", "5"): f"{file} has no TCP stream 5 (it has 2 TCP connection(s): "
                           "streams 0 to 1)",
        ("--session", "0"): "--session numbers start at 1",
        ("--timeout", "0"): "--timeout must be a positive number of seconds",
    }
    for extra, message in cases.items():
        code, out, err = cli(capsys, file, "--against", "nbd://127.0.0.1:9/", *extra)
        assert (code, out) == (2, "") and message in err and len(err.splitlines()) == 1, err
    code, _, err = cli(capsys, file, "--against", "nbds://127.0.0.1:9/")
    assert code == 2 and "does not do TLS; give an nbd:// or nbd+unix:// URI" in err
    code, _, err = cli(capsys, str(reference_capture.parent / "missing.pcap"), "--against",
                       "nbd://127.0.0.1:9/")
    assert code == 2 and "missing.pcap: no such file" in err
    with pytest.raises(SystemExit) as exit_info:
        main(["replay", file])  # neither --against nor --serve
    assert exit_info.value.code == 2
    capsys.readouterr()


def test_an_unreachable_server_is_reported_per_session(reference_capture: Path,
                                                       tmp_path: Path) -> None:
    missing = Address.unix(os.fspath(tmp_path / "nobody.sock"))
    first, second = replay(reference_capture, missing)
    for report in (first, second):
        assert report.error.startswith("cannot connect to unix:") and report.replayed == 0


def test_a_truncated_capture_replays_what_it_holds(reference_capture: Path,
                                                   tmp_path: Path) -> None:
    # Cut the file inside the frame that carries the second session's last READ reply.
    capture = decode_capture(reference_capture)
    last_reply = [m for m in capture.sessions[1].messages if m.kind == "chunk"][-1]
    cut = _offset_of_frame(reference_capture, last_reply.frame) + 40
    unanswered = [(step, m) for step, m in enumerate(capture.sessions[1].messages, start=1)
                  if m.kind == "request" and m.name == "NBD_CMD_READ"
                  and all(r.frame >= last_reply.frame for r in capture.sessions[1].messages
                          if r.request is m)]
    assert unanswered
    truncated = tmp_path / "truncated.pcapng"
    truncated.write_bytes(reference_capture.read_bytes()[:cut])
    with reference([MEMORY_EXPORT]) as server:
        first, second = replay(truncated, server.address)
    assert first.same and first.notes == []
    assert second.same, second.render()
    assert second.notes[0] == ("the capture file ends part-way through this session: replayed "
                               "what it holds")
    assert second.notes[1:] == [
        f"#{step} NBD_CMD_READ cookie {m.fields['cookie']:#x}: the capture holds no complete "
        "reply; the live one is not compared" for step, m in unanswered]


def _offset_of_frame(path: Path, frame: int) -> int:
    """Byte offset in a pcapng file of the Enhanced Packet Block of ``frame`` (1-based)."""
    data = path.read_bytes()
    offset, seen = 0, 0
    while offset < len(data):
        block_type, length = struct.unpack_from("<II", data, offset)
        if block_type == 6:
            seen += 1
            if seen == frame:
                return offset
        offset += length
    raise AssertionError(f"no frame {frame}")


# --- the comparison itself ------------------------------------------------------------------


def test_extents_split_differently_are_told_apart_from_real_changes() -> None:
    recorded = ReplyView("structured", True, extents=(
        ("base:allocation", ((4096, 0), (4096, 0), (8192, 3))),))
    split = ReplyView("structured", True, extents=(("base:allocation", ((8192, 0), (8192, 3))),))
    changed = ReplyView("structured", True, extents=(
        ("base:allocation", ((4096, 0), (12288, 3))),))
    [same_after_merge] = compare_replies(c.Cmd.BLOCK_STATUS, 0, 16384, recorded, split)
    assert same_after_merge.aspect == "extents of base:allocation"
    assert same_after_merge.recorded == "3 extents over 16384 bytes; at offset 0: 4096 bytes " \
        "allocated"
    assert same_after_merge.live == ("2 extents over 16384 bytes; at offset 0: 8192 bytes "
                                     "allocated; the same after merging adjacent extents of "
                                     "equal status (split differently)")
    [real] = compare_replies(c.Cmd.BLOCK_STATUS, 0, 16384, recorded, changed)
    assert real.recorded == "3 extents over 16384 bytes; at offset 4096: 4096 bytes allocated"
    assert real.live == "2 extents over 16384 bytes; at offset 4096: 12288 bytes HOLE|ZERO"
    assert merge_descriptors([(1, 0), (2, 0), (3, 1)]) == [(3, 0), (3, 1)]


def test_holes_read_as_zeroes_and_errors_by_name() -> None:
    data = ReplyView("structured", True, data=((0, bytes(4096)),))
    hole = ReplyView("structured", True, holes=((0, 4096),))
    assert compare_replies(c.Cmd.READ, 0, 4096, data, hole) == []
    simple = ReplyView("simple", True, data=((0, bytes(4096)),))
    [form] = compare_replies(c.Cmd.READ, 0, 4096, data, simple)
    assert (form.aspect, form.recorded, form.live) == ("reply form", "structured reply",
                                                       "simple reply")
    assert compare_replies(c.Cmd.READ, 0, 4096, data, simple, forms_comparable=False) == []
    failed = ReplyView("simple", True, errors=((c.Errno.EIO, ""),))
    [error] = compare_replies(c.Cmd.READ, 0, 4096, simple, failed)
    assert (error.aspect, error.recorded, error.live) == ("error", "success", "NBD_EIO")


# --- real peers -------------------------------------------------------------------------------

SCRIPT = """
import hashlib, json
data = bytes((i * 7 + 3) % 251 for i in range(16384))
for context in {contexts!r}:
    h.add_meta_context(context)
h.connect_uri({uri!r})
chain = hashlib.sha256(h.pread(64 * 1024, 0)).hexdigest()
h.pwrite(data, {offset})
assert h.pread(len(data), {offset}) == data
h.flush()
seen = []
def collect(context, offset, entries, error):
    seen.append(context)
    return 0
if {contexts!r}:
    h.block_status({size}, 0, collect)
h.shutdown()
print(json.dumps({{"chain": chain, "contexts": seen}}))
"""
"""An nbdsh session: read what the chain holds, write and read back, flush, block status."""

HOST_SERVERS = {
    "qemu-nbd": ("base:allocation", "qemu:allocation-depth"),
    "nbdkit": ("base:allocation",),
    "nbd-server": (),
}


def nbdsh_session(suite: str, endpoint: Endpoint, contexts: tuple[str, ...], work: Path) -> None:
    script = SCRIPT.format(contexts=contexts, uri=endpoint.uri(), offset=WRITE_AT,
                           size=CHAIN.size)
    result = DRIVERS["nbdsh"](peer(suite, "nbdsh").provider, log_dir=work).run(["-c", script])
    seen = json.loads(str(result.stdout))
    assert seen == {"chain": hashlib.sha256(CHAIN.read(0, 64 * KiB)).hexdigest(),
                    "contexts": list(contexts)}, seen


WRITE_AT = 256 * KiB


def start(suite: str, program: str, workdir: Path, **options: object) -> RunningServer:
    server = peer(suite, program)
    return server.start(CHAIN, workdir, **options)  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def host_captures(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """For each bookworm server: nbdinfo --map (qemu-nbd: each context) and an nbdsh
    session, recorded through the proxy."""
    found = {}
    for program, contexts in HOST_SERVERS.items():
        work = tmp_path_factory.mktemp(program)
        path = work / f"{program}.pcapng"
        with start("bookworm", program, work / "server") as server, \
                recording(server.address, path) as endpoint:
            nbdinfo = DRIVERS["nbdinfo"](peer("bookworm", "nbdinfo").provider, log_dir=work)
            for context in contexts:
                assert nbdinfo.map(endpoint, context) == expected_map(CHAIN, context)
            nbdsh_session("bookworm", endpoint, contexts, work)
        found[program] = path
    return found


@pytest.mark.peers
@pytest.mark.slow
@pytest.mark.parametrize("program", list(HOST_SERVERS))
def test_real_sessions_replay_against_the_same_server(program: str,
                                                      host_captures: dict[str, Path],
                                                      tmp_path: Path) -> None:
    path = host_captures[program]
    with start("bookworm", program, tmp_path) as server:
        reports = replay(path, server.address)
    assert_same(reports, path)
    assert len(reports) == len(HOST_SERVERS[program]) + 1


@pytest.fixture(scope="module")
def sid_capture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """qemu-nbd 11.1 and libnbd 1.24 (sid): extended headers, two contexts, a write, reads,
    block status, and a filtered block status (the payload form)."""
    work = tmp_path_factory.mktemp("sid")
    path = work / "qemu-nbd11.pcapng"
    contexts = ("base:allocation", "qemu:allocation-depth")
    with start("sid", "qemu-nbd", work / "server") as server, \
            recording(server.address, path) as endpoint:
        nbdsh_session("sid", endpoint, contexts, work)
        script = ("h.add_meta_context('base:allocation'); "
                  "h.add_meta_context('qemu:allocation-depth'); "
                  f"h.connect_uri({endpoint.uri()!r}); "
                  "h.block_status_filter(1 << 20, 0, ['qemu:allocation-depth'], "
                  "lambda *a: 0); h.shutdown()")
        DRIVERS["nbdsh"](peer("sid", "nbdsh").provider, log_dir=work).run(["-c", script])
    session = decode_capture(path).sessions[0]
    assert session.state.extended_headers
    return path


@pytest.mark.peers
@pytest.mark.slow
def test_qemu_nbd_11_sessions_replay_against_qemu_nbd_11(sid_capture: Path,
                                                         tmp_path: Path) -> None:
    with start("sid", "qemu-nbd", tmp_path) as server:
        reports = replay(sid_capture, server.address)
    assert_same(reports, sid_capture)


@pytest.mark.peers
@pytest.mark.slow
def test_qemu_nbd_11_sessions_against_qemu_nbd_5_2(sid_capture: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    headers, go = "NBD_OPT_EXTENDED_HEADERS", "NBD_OPT_GO"
    expected_first = [
        (headers, "reply type"),
        (headers, "fallback"),
        (go, "transmission flags"),
    ]
    with start("bullseye", "qemu-nbd", tmp_path) as server:
        first, second = replay(sid_capture, server.address)
        code, out, _ = cli(capsys, str(sid_capture), "--against", uri_of(server.address),
                           "--stream", "1", "--json")
    assert aspects(first) == expected_first, first.render()
    assert aspects(second) == [*expected_first,
                               ("NBD_CMD_BLOCK_STATUS cookie 0x1", "skipped")], second.render()
    refused, fallback, flags = first.differences
    assert refused.live.startswith("NBD_REP_ERR_UNSUP")
    assert fallback.live == ("NBD_OPT_STRUCTURED_REPLY sent instead: NBD_REP_ACK, structured "
                             "replies with compact headers")
    assert (flags.recorded, flags.live) == ("with NBD_FLAG_BLOCK_STATUS_PAYLOAD",
                                            "without NBD_FLAG_BLOCK_STATUS_PAYLOAD")
    assert second.differences[-1].live == ("not sent: it asks for chosen metadata contexts "
                                           "(NBD_CMD_FLAG_PAYLOAD_LEN), which needs extended "
                                           "headers")
    sessions = decode_capture(sid_capture).sessions
    # Every other message was replayed and compared (data, extents of both contexts,
    # block sizes, description...) and agrees; only the skipped request and its reply not.
    assert (first.replayed, second.replayed) == (len(sessions[0].messages),
                                                 len(sessions[1].messages) - 2)
    for report in (first, second):
        assert report.error == ""
        assert "requests sent with compact headers, as the live negotiation requires" \
            in report.notes
    document = json.loads(out)
    assert code == 1 and [s["session"] for s in document["sessions"]] == [2]
    assert [d["aspect"] for d in document["sessions"][0]["differences"]] == [
        a for _, a in aspects(second)]


@pytest.mark.peers
@pytest.mark.slow
@pytest.mark.parametrize(("suite", "expected"), [
    ("sid", [("NBD_OPT_STRUCTURED_REPLY", "reply type"), ("NBD_OPT_GO", "transmission flags")]),
    ("bullseye", []),
])
def test_nbd_server_3_24_sessions_against_other_versions(suite: str,
                                                         expected: list[tuple[str, str]],
                                                         host_captures: dict[str, Path],
                                                         tmp_path: Path) -> None:
    # nbd-server has structured replies from 3.26 (sid: 3.27), 3.21 (bullseye) as 3.24 not.
    path = host_captures["nbd-server"]
    with start(suite, "nbd-server", tmp_path) as server:
        [report] = replay(path, server.address)
    assert aspects(report) == expected, report.render()
    if expected:
        refused, flags = report.differences
        assert refused.recorded.startswith("NBD_REP_ERR_UNSUP") and refused.live == "NBD_REP_ACK"
        assert (flags.recorded, flags.live) == ("without NBD_FLAG_SEND_DF",
                                                "with NBD_FLAG_SEND_DF")
        assert report.notes == ["replies are compared by meaning, not form: the live "
                                "negotiation has structured replies, the recorded one simple "
                                "replies"]
    assert report.error == ""
    assert report.replayed == len(decode_capture(path).sessions[0].messages)


CHECKED_IN = {
    "nbdkit-oldstyle-write-read.pcapng": "nbdkit-oldstyle",
    "nbdkit-list-qemu-io-convert.pcap": "nbdkit-memory",
    "nbd-server-write-read.pcapng": "nbd-server",
    "qemu-nbd-contexts-write-read.pcapng": "qemu-nbd",
    "qemu-nbd11-libnbd124-extended.pcapng": "sid-qemu-nbd",
    "qemu-nbd11-qemu-io11-extended.pcapng": "sid-qemu-nbd",
}
"""Each checked-in capture and the server that made it (see tests/data/captures/README.md)."""


def serve_like_the_recording(kind: str, work: Path) -> contextlib.AbstractContextManager:
    """The server of a checked-in capture, on the same content, on a fresh port."""
    if kind == "sid-qemu-nbd":
        return start("sid", "qemu-nbd", work)
    if kind == "qemu-nbd":
        image = work / "disk.qcow2"
        for argv in (["qemu-img", "create", "-f", "qcow2", str(image), "1M"],
                     ["qemu-img", "bitmap", "--add", str(image), "b0"],
                     ["qemu-io", "-f", "qcow2", "-c", "write -P 0x11 0 64k", str(image)]):
            run_command(argv, timeout=WAIT, check=True)
        return _process(work, lambda port: ["qemu-nbd", "-t", "--bind", "127.0.0.1", "--port",
                                            str(port), "-f", "qcow2", "-A", "-B", "b0",
                                            str(image)])
    if kind == "nbd-server":
        # The recording's nbd-server.conf named no flush, fua or trim: they default to off.
        return peer("bookworm", "nbd-server").start(  # type: ignore[attr-defined]
            ExportSpec(size=1 * MiB, image_format="raw"), work,
            options=NbdServerOptions(flush=False, fua=False, trim=False))
    oldstyle = kind == "nbdkit-oldstyle"
    return _process(work, lambda port: ["nbdkit", "-f", *(["-o"] if oldstyle else []), "-i",
                                        "127.0.0.1", "-p", str(port), "memory", "1M"])


@contextlib.contextmanager
def _process(work: Path, argv: Callable[[int], list[str]]) -> Iterator[RunningServer]:
    from harness.process import pick_port_and_start

    process, port = pick_port_and_start(argv, log_path=work / "server.log")
    with process:
        yield RunningServer("server", Endpoint(Address.tcp("127.0.0.1", port)),
                            work / "server.log", process)


@pytest.mark.peers
@pytest.mark.slow
@pytest.mark.parametrize("name", list(CHECKED_IN))
def test_checked_in_captures_replay_against_their_peers(name: str, tmp_path: Path) -> None:
    path = CAPTURES / name
    with serve_like_the_recording(CHECKED_IN[name], tmp_path) as server:
        reports = replay(path, server.address)
    assert_same(reports, path)


@pytest.mark.peers
def test_streams_are_wiresharks_tcp_streams(capsys: pytest.CaptureFixture[str],
                                            tmp_path: Path) -> None:
    path = CAPTURES / "nbdkit-list-qemu-io-convert.pcap"
    fields = run_command(["tshark", "-r", str(path), "-Y", "tcp", "-T", "fields", "-e",
                          "tcp.stream", "-e", "frame.number"], timeout=WAIT, check=True)
    first_frames: dict[int, int] = {}
    for line in str(fields.stdout).splitlines():
        stream, frame = (int(word) for word in line.split())
        first_frames.setdefault(stream, frame)
    from harness.commands.replay import session_of_stream

    capture = decode_capture(path)
    assert len(first_frames) == len(capture.sessions) == 4
    for stream, frame in first_frames.items():
        index = session_of_stream(capture, stream)
        assert capture.sessions[index - 1].first_frame == frame
    with serve_like_the_recording("nbdkit-memory", tmp_path) as server:
        code, out, _ = cli(capsys, str(path), "--against", uri_of(server.address),
                           "--stream", "3", "--session", "1", "--json")
    assert code == 0
    assert [s["session"] for s in json.loads(out)["sessions"]] == [1, 4]


# --- servers that break off ---------------------------------------------------------------


@pytest.mark.peers
def test_a_server_that_dies_mid_replay_is_reported(reference_capture: Path,
                                                   tmp_path: Path) -> None:
    # nbdkit whose read callback kills nbdkit itself: the replay is in transmission.
    process, port = start_nbdkit(
        tmp_path, "eval", "get_size=echo 1048576", "pwrite=exit 0",
        "pread=kill -KILL $PPID; exit 1")
    with process:
        first, second = replay(reference_capture, Address.tcp("127.0.0.1", port))
    assert first.error == ("the live server closed the connection while the replay waited for "
                           "the reply to NBD_CMD_READ cookie 0x2")
    assert aspects(first)[-1] == ("NBD_CMD_READ cookie 0x2", "missing reply")
    assert first.differences[-1].live == "the server closed the connection"
    # The next session gets a connection of its own, and finds nobody (the kernel may still
    # complete the handshake of a listener whose process is being torn down).
    assert second.error.startswith("cannot connect to tcp://127.0.0.1:") or \
        second.error == "the live server closed the connection before its greeting"
    assert second.replayed == 0


@pytest.mark.peers
def test_a_server_that_stops_answering_times_out(reference_capture: Path,
                                                 tmp_path: Path) -> None:
    process, port = start_nbdkit(tmp_path, "--filter=delay", "memory", "1M", "delay-read=20")
    with process:
        reports = replay_against(load_sessions(reference_capture, (1,)),
                                 f"nbd://127.0.0.1:{port}/", timeout=1)
    [report] = reports
    assert report.error == ("the live server sent nothing for 1 s (waiting for the reply to "
                            "NBD_CMD_READ cookie 0x2)")
    assert aspects(report)[-1] == ("NBD_CMD_READ cookie 0x2", "missing reply")
    assert report.differences[-1].live == "nothing within 1 s"


@pytest.mark.peers
def test_pipelined_requests_are_pipelined_again(tmp_path: Path) -> None:
    # nbdkit delays every read by half a second: a client that sends two reads before the
    # first reply shows it on the wire, and so must the replay.
    process, port = start_nbdkit(tmp_path, "--filter=delay", "memory", "1M", "delay-read=500ms")
    recorded, replayed = tmp_path / "pipelined.pcapng", tmp_path / "replayed.pcapng"
    with process:
        upstream = Address.tcp("127.0.0.1", port)
        with recording(upstream, recorded, export="") as endpoint:
            asyncio.run(asyncio.wait_for(two_reads_at_once(endpoint.uri()), WAIT))
        with recording(upstream, replayed, export="") as endpoint:
            reports = replay(recorded, endpoint.address)
    assert_same(reports, recorded)
    for path in (recorded, replayed):
        [session] = decode_capture(path).sessions
        tail = [(m.name, m.direction) for m in session.messages
                if m.kind in ("request", "simple-reply", "chunk")]
        assert tail[:2] == [("NBD_CMD_READ", CLIENT), ("NBD_CMD_READ", CLIENT)], tail


async def two_reads_at_once(uri: str) -> None:
    client = await NbdClient.connect(uri, options=ConnectOptions(meta_contexts=()))
    try:
        first, second = await asyncio.gather(client.read(0, 4096), client.read(8192, 4096))
        assert first == second == bytes(4096)
        await client.disconnect()
    finally:
        await client.close()


def test_no_process_or_thread_is_left(reference_capture: Path) -> None:
    import threading

    before = {t.name for t in threading.enumerate()}
    with reference([MEMORY_EXPORT]) as server:
        replay(reference_capture, server.address)
    assert {t.name for t in threading.enumerate()} - before == set()

