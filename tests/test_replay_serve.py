"""``replay FILE --serve``: the recorded server played to live clients.

Real clients only.  Sessions come from the checked-in captures (see
``tests/data/captures/README.md``) and from captures recorded here through the
recording proxy between real clients and real servers (bookworm's qemu-nbd 7.2 and
nbdkit 1.32 on the host; sid's qemu-nbd 11.1 with libnbd 1.24, extended headers).
The same client against the replay server gets what it got from the real server
(data, maps, errors) and the report has no differences; a client that behaves
otherwise gets exactly the differences it causes, and still completes, served
from the recorded answers that fit and from the image reconstructed from the
recording.  Garbage, silence and early disconnects end a connection with a
difference, never a traceback, and nothing outlives ``stop()``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from _fixtures_interop import client, peer
from _fixtures_peers import CHAIN, expected_map
from _raw_client import RawClient

from harness.address import Address
from harness.capture import PcapngWriter, ProxyThread
from harness.dissect import Session, decode_capture
from harness.peers import Endpoint, ExportSpec, NbdkitOptions
from harness.process import ManagedProcess, run_command
from harness.protocol import constants as c
from harness.protocol.messages import ClientFlags, NewstyleGreeting, OptionRequest
from harness.replay import ReplayError, ReplayReport, load_sessions
from harness.replay.serve import ReplayServerThread, parse_listen, serve_replay
from harness.tls import TestPKI

CAPTURES = Path(__file__).parent / "data" / "captures"
NBD_SERVER = CAPTURES / "nbd-server-write-read.pcapng"
NBDKIT = CAPTURES / "nbdkit-list-qemu-io-convert.pcap"
OLDSTYLE = CAPTURES / "nbdkit-oldstyle-write-read.pcapng"
QEMU_CONTEXTS = CAPTURES / "qemu-nbd-contexts-write-read.pcapng"
LIBNBD_EXTENDED = CAPTURES / "qemu-nbd11-libnbd124-extended.pcapng"
QEMU_EXTENDED = CAPTURES / "qemu-nbd11-qemu-io11-extended.pcapng"

# What the checked-in captures' nbdsh sessions wrote, then read back (see their README).
PATTERN = bytes((i * 7 + 3) % 251 for i in range(8192))
CONTEXTS = ("base:allocation", "qemu:allocation-depth", "qemu:dirty-bitmap:b0")
WAIT = 20.0
"""Seconds any one wait may take (a replayed connection ending, a client...)."""
REPLAY_TIMEOUT = 10.0
"""The replay server's own wait for a client's next message."""

NBDSH_WRITE_READ = """
data = bytes((i * 7 + 3) % 251 for i in range(8192))
{setup}h.connect_uri({uri!r})
h.pwrite(data, {offset})
assert h.pread(len(data), {offset}) == data
h.shutdown()
print("ok")
"""

# libnbd 1.24 (sid): the three contexts, a write read back, block status filtered to the
# bitmap (the payload form of extended headers) and for every context.
LIBNBD_SCRIPT = """
import json
data = bytes((i * 7 + 3) % 251 for i in range(8192))
for context in {contexts!r}:
    h.add_meta_context(context)
h.connect_uri({uri!r})
h.pwrite(data, {offset})
assert h.pread(len(data), {offset}) == data
seen = []
def collect(context, offset, entries, error):
    seen.append((context, offset, [list(entry) for entry in entries]))
    return 0
h.block_status_filter({size}, 0, ["qemu:dirty-bitmap:b0"], collect)
h.block_status_64({size}, 0, collect)
h.shutdown()
print(json.dumps(seen))
"""

# A write and a read whose errors are printed, not raised: libnbd's strict mode would
# refuse the write to a read-only export itself instead of sending it.
ERRORS_SCRIPT = """
import json, nbd
h.set_strict_mode(0)
h.connect_uri({uri!r})
seen = {{}}
for name, call in (("write", lambda: h.pwrite(b"x" * 4096, 0)),
                   ("read", lambda: h.pread(4096, 65536).hex())):
    try:
        seen[name] = call() or "ok"
    except nbd.Error as exc:
        seen[name] = exc.errno
h.shutdown()
print(json.dumps(seen))
"""


# --- helpers ---------------------------------------------------------------------------------


@contextlib.contextmanager
def replaying(capture: Path, sessions: tuple[int, ...] = (),
              **options: object) -> Iterator[tuple[ReplayServerThread, Endpoint]]:
    """A replay server for ``capture`` (the given sessions, else all); yields it and the
    endpoint a client uses."""
    selection = load_sessions(capture, sessions)
    options.setdefault("timeout", REPLAY_TIMEOUT)
    with ReplayServerThread(selection, **options) as server:  # type: ignore[arg-type]
        yield server, Endpoint(server.address, server.server.export_name)


@contextlib.contextmanager
def recording(server_address: Address, path: Path) -> Iterator[Endpoint]:
    """The recording proxy in front of a server; every connection finished on the way out."""
    with ProxyThread(Address.tcp("127.0.0.1", 0), server_address, path) as proxy:
        yield Endpoint(Address.tcp("127.0.0.1", proxy.address.port), CHAIN.name)
        proxy.wait_closed(proxy.stats.accepted, WAIT)
        assert proxy.errors == []


def differences(report: ReplayReport) -> list[tuple[str, str]]:
    """The report's differences as (recorded message, aspect), in recorded order."""
    return [(d.message, d.aspect) for d in report.differences]


def no_differences(reports: list[ReplayReport], count: int) -> None:
    assert len(reports) == count
    for report in reports:
        assert report.same, report.render()
        assert report.replayed > 0


def nbdsh(suite: str, script: str) -> str:
    return str(client(suite, "nbdsh").run(["-c", script]).stdout)


def client_messages(session: Session) -> list[str]:
    return [m.name for m in session.messages if m.direction == "client"]


def recorded_map(session: Session, context: str) -> list[tuple[int, int, int]]:
    """The merged extents of ``context`` the session's last block status reply reported."""
    chunks = [m for m in session.messages
              if m.kind == "chunk" and m.fields.get("context_name") == context]
    assert chunks, f"session {session.index} has no {context} extents"
    last = chunks[-1]
    extents: list[tuple[int, int, int]] = []
    offset = last.request.fields["offset"] if last.request is not None else 0
    for descriptor in last.fields["descriptors"]:
        length, status = descriptor["length"], descriptor["status"]
        if extents and extents[-1][2] == status:
            extents[-1] = (extents[-1][0], extents[-1][1] + length, status)
        else:
            extents.append((offset, length, status))
        offset += length
    return extents


# --- no peers: addresses, garbage, silence, early disconnect, stop ------------------------


def test_listens_on_loopback_or_a_unix_socket_only(tmp_path: Path) -> None:
    assert parse_listen("127.0.0.1:0") == Address.tcp("127.0.0.1", 0)
    assert parse_listen("tcp://127.0.0.1:10999") == Address.tcp("127.0.0.1", 10999)
    assert parse_listen(f"unix:{tmp_path}/s.sock") == Address.unix(f"{tmp_path}/s.sock")
    for refused in ("0.0.0.0:0", "192.168.1.1:10809", "tcp://[::1]:0", "localhost:0"):
        with pytest.raises(ReplayError, match=r"listens on 127\.0\.0\.1 or a unix socket only"):
            parse_listen(refused)
    with pytest.raises(ReplayError, match=r"expected 127\.0\.0\.1:PORT or unix:PATH"):
        parse_listen("127.0.0.1:port")


def test_garbage_from_the_client_ends_its_connection_with_a_difference() -> None:
    with replaying(NBD_SERVER) as (server, _endpoint):
        with RawClient("127.0.0.1", server.address.port) as raw:
            assert raw.recv() == NewstyleGreeting(3)
            raw.send(ClientFlags(3))
            raw.send_raw(b"\x00" * 16)  # where an option's IHAVEOPT magic belongs
            assert raw.closed_by_peer()
        [report] = server.wait_reports(1, WAIT)
    # The garbage stands where the recorded client sent NBD_OPT_STRUCTURED_REPLY; what the
    # recorded client sent after it never comes.
    assert differences(report) == [
        ("NBD_OPT_STRUCTURED_REPLY", "malformed message"),
        ("NBD_OPT_GO", "missing message"),
        ("NBD_CMD_WRITE 12288+8192", "missing message"),
        ("NBD_CMD_READ 12288+8192", "missing message"),
        ("NBD_CMD_DISC", "missing message"),
    ]
    difference = report.differences[0]
    assert difference.step == 3
    assert difference.live == "option request magic is 0x0000000000000000, not IHAVEOPT"
    assert difference.sections == ("Newstyle negotiation",)
    assert report.error.startswith("the client broke the protocol:")


def test_a_silent_client_times_out_and_is_disconnected() -> None:
    with replaying(NBD_SERVER, timeout=0.3) as (server, _endpoint):
        with RawClient("127.0.0.1", server.address.port) as raw:
            assert raw.recv() == NewstyleGreeting(3)
            raw.send(ClientFlags(3))
            assert raw.closed_by_peer()
        [report] = server.wait_reports(1, WAIT)
    assert report.error == "the client sent nothing for 0.3 s (waiting for an option)"
    # Everything the recorded client sent after its flags never came.
    assert differences(report) == [
        ("NBD_OPT_STRUCTURED_REPLY", "missing message"),
        ("NBD_OPT_GO", "missing message"),
        ("NBD_CMD_WRITE 12288+8192", "missing message"),
        ("NBD_CMD_READ 12288+8192", "missing message"),
        ("NBD_CMD_DISC", "missing message"),
    ]
    assert report.differences[-1].sections == ("Terminating the transmission phase",
                                               "Request types")


def test_an_early_disconnect_misses_every_recorded_client_message() -> None:
    with replaying(NBDKIT, (4,)) as (server, _endpoint):
        with RawClient("127.0.0.1", server.address.port) as raw:
            assert raw.recv() == NewstyleGreeting(3)
        [report] = server.wait_reports(1, WAIT)
    session = load_sessions(NBDKIT, (4,)).sessions[0]
    recorded = client_messages(session)
    assert recorded == ["client flags", "NBD_OPT_EXPORT_NAME", "NBD_CMD_WRITE",
                        "NBD_CMD_READ", "NBD_CMD_DISC"]
    assert [d.message.split(" ")[0] for d in report.differences] == [
        "client", "NBD_OPT_EXPORT_NAME", "NBD_CMD_WRITE", "NBD_CMD_READ", "NBD_CMD_DISC"]
    assert {d.aspect for d in report.differences} == {"missing message"}
    assert report.error == "" and report.replayed == 1  # the greeting


def test_an_option_the_recording_lacks_gets_the_recorded_servers_honest_answer() -> None:
    # nbdkit's recorded sessions never sent NBD_OPT_EXTENDED_HEADERS: nothing says the
    # recorded server had it, so the answer is NBD_REP_ERR_UNSUP; then the recorded
    # session goes on (nbdinfo --list's options), and ABORT closes it as recorded.
    with replaying(NBDKIT, (1,)) as (server, _endpoint):
        with RawClient("127.0.0.1", server.address.port) as raw:
            raw.recv()
            raw.send(ClientFlags(1), OptionRequest(c.Opt.EXTENDED_HEADERS))
            refusal = raw.recv()
            assert (refusal.option, refusal.reply_type) == (c.Opt.EXTENDED_HEADERS,
                                                            c.Rep.ERR_UNSUP)
            raw.send(OptionRequest(c.Opt.ABORT))
            assert raw.recv().reply_type == c.Rep.ACK
            assert raw.closed_by_peer()
        [report] = server.wait_reports(1, WAIT)
    assert differences(report) == [
        ("client flags", "flags"),
        ("NBD_OPT_STRUCTURED_REPLY", "option"),
        ("NBD_OPT_LIST", "missing message"),
        ("NBD_OPT_INFO", "missing message"),
        ("NBD_OPT_LIST_META_CONTEXT", "missing message"),
    ]
    flags = report.differences[0]
    assert (flags.recorded, flags.live) == ("NBD_FLAG_C_FIXED_NEWSTYLE|NBD_FLAG_C_NO_ZEROES",
                                            "NBD_FLAG_C_FIXED_NEWSTYLE")
    option = report.differences[1]
    assert (option.recorded, option.live) == ("NBD_OPT_STRUCTURED_REPLY",
                                              "NBD_OPT_EXTENDED_HEADERS")


def test_stop_ends_connections_and_leaves_no_thread_or_socket() -> None:
    selection = load_sessions(NBD_SERVER)
    server = ReplayServerThread(selection, timeout=60).start()
    port = server.address.port
    raw = RawClient("127.0.0.1", port)
    try:
        raw.recv()
        server.stop()
        assert raw.closed_by_peer()
    finally:
        raw.close()
    assert not [t for t in threading.enumerate() if t.name == "nbd-replay-server"]
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    [report] = server.reports()
    assert (report.session, report.replayed) == (1, 1)  # the greeting
    assert report.error == "the replay server stopped"
    server.stop()  # idempotent


# --- the checked-in captures, host clients (bookworm: libnbd 1.14, qemu 7.2) ------------------


@pytest.mark.peers
def test_the_recorded_clients_get_the_recorded_answers() -> None:
    # Every checked-in capture of bookworm's clients, played back to the same clients.
    with replaying(NBD_SERVER) as (server, endpoint):
        script = NBDSH_WRITE_READ.format(setup="", uri=endpoint.uri(), offset=12288)
        assert nbdsh("bookworm", script).strip() == "ok"
        no_differences(server.wait_reports(1, WAIT), 1)
    with replaying(OLDSTYLE) as (server, endpoint):
        assert endpoint.uri().endswith("/")
        script = NBDSH_WRITE_READ.format(setup="", uri=endpoint.uri(), offset=8192)
        assert nbdsh("bookworm", script).strip() == "ok"
        no_differences(server.wait_reports(1, WAIT), 1)
    sessions = decode_capture(QEMU_CONTEXTS).sessions
    with replaying(QEMU_CONTEXTS) as (server, endpoint):
        nbdinfo = client("bookworm", "nbdinfo")
        for session, context in zip(sessions, CONTEXTS, strict=False):
            assert nbdinfo.map(endpoint, context) == recorded_map(session, context)
        script = NBDSH_WRITE_READ.format(setup="", uri=endpoint.uri(), offset=131072)
        assert nbdsh("bookworm", script).strip() == "ok"
        no_differences(server.wait_reports(4, WAIT), 4)


@pytest.mark.peers
def test_the_recorded_nbdkit_clients_get_the_recorded_answers(tmp_path: Path) -> None:
    # nbdinfo --list, qemu-io writing and reading back, qemu-img convert, nbdsh without
    # fixed newstyle (NBD_OPT_EXPORT_NAME): each connection plays the next session.
    sessions = decode_capture(NBDKIT).sessions
    with replaying(NBDKIT) as (server, endpoint):
        listed = client("bookworm", "nbdinfo").list_exports(endpoint)
        assert [e["export-name"] for e in listed["exports"]] == [""]
        assert listed["exports"][0]["export-size"] == 1 << 20
        qemu_io = client("bookworm", "qemu-io")
        result = qemu_io.run(["-f", "raw", "-c", "write -P 0x5a 4096 4096", "-c",
                              "read -P 0x5a 4096 4096", endpoint.uri()])
        assert "read 4096/4096 bytes" in str(result.stdout)
        copy = tmp_path / "copy.raw"
        client("bookworm", "qemu-img").run(["convert", "-O", "raw", endpoint.uri(), str(copy)])
        image = copy.read_bytes()
        # Everything the recorded server ever held: qemu-io's 0x5a block and nbdsh's
        # pattern (at 64 KiB, read and written in session 4, after the convert).
        assert image[4096:8192] == b"\x5a" * 4096
        assert image.count(0) == len(image) - 4096
        script = NBDSH_WRITE_READ.format(setup="h.set_handshake_flags(0)\n",
                                         uri=endpoint.uri(), offset=65536)
        assert nbdsh("bookworm", script).strip() == "ok"
        no_differences(server.wait_reports(4, WAIT), 4)
    assert [len(client_messages(s)) for s in sessions] == [6, 8, 10, 5]


@pytest.mark.peers
def test_a_client_doing_otherwise_gets_exactly_its_differences() -> None:
    # qemu-io reading 0+8192 where the recorded qemu-io wrote then read 4096+4096.
    with replaying(NBDKIT, (2,)) as (server, endpoint):
        data = client("bookworm", "qemu-io").read(endpoint, 0, 8192)
        assert data == bytes(4096) + b"\x5a" * 4096  # from the reconstructed image
        [report] = server.wait_reports(1, WAIT)
    assert differences(report) == [
        ("NBD_CMD_WRITE 4096+4096", "missing message"),
        ("NBD_CMD_READ 4096+4096", "offset"),
        ("NBD_CMD_READ 4096+4096", "length"),
        ("NBD_CMD_FLUSH", "missing message"),
    ]
    assert "NBD_CMD_READ 0+8192 was served from the image reconstructed from the recording" in (
        report.notes)
    # nbdinfo mapping qemu:allocation-depth where the recorded one mapped base:allocation:
    # the recorded server's other sessions reported that context, the image has it.
    sessions = decode_capture(QEMU_CONTEXTS).sessions
    with replaying(QEMU_CONTEXTS, (1,)) as (server, endpoint):
        depth = client("bookworm", "nbdinfo").map(endpoint, "qemu:allocation-depth")
        [report] = server.wait_reports(1, WAIT)
    # Session 2's recorded depth, with what session 4 wrote at 128 KiB since.
    recorded_depth = recorded_map(sessions[1], "qemu:allocation-depth")
    assert recorded_depth == [(0, 65536, 1), (65536, 983040, 0)]
    assert depth == [(0, 65536, 1), (65536, 65536, 0), (131072, 8192, 1), (139264, 909312, 0)]
    assert differences(report) == [("NBD_OPT_SET_META_CONTEXT", "queries")]
    assert report.differences[0].live == "queries [qemu:allocation-depth]"


@pytest.mark.peers
def test_a_server_that_went_silent_goes_silent_again(tmp_path: Path) -> None:
    # The nbd-server session, cut after the READ request: its server never answered.
    session = decode_capture(NBD_SERVER).sessions[0]
    read = next(m for m in session.messages if m.name == "NBD_CMD_READ")
    cut = tmp_path / "cut.pcapng"
    with PcapngWriter(cut) as writer:
        stream = writer.open_stream()
        for message in session.messages[: session.messages.index(read) + 1]:
            stream.record(message.direction, message.wire)
        stream.close("server")
    with replaying(cut) as (server, endpoint):
        script = NBDSH_WRITE_READ.format(setup="", uri=endpoint.uri(), offset=12288)
        result = client("bookworm", "nbdsh").run(["-c", script], check=False)
        [report] = server.wait_reports(1, WAIT)
    assert result.returncode != 0 and "nbd_pread" in str(result.stderr)
    assert report.same, report.render()
    assert report.notes == ["the recorded server sent nothing more after NBD_CMD_READ "
                            "12288+8192 (step 10): the replay closes the connection there"]


@pytest.mark.peers
def test_export_rename_and_unix_socket(tmp_path: Path) -> None:
    listen = f"unix:{tmp_path}/replay.sock"
    with replaying(NBD_SERVER, export_name="renamed", listen=listen) as (server, endpoint):
        assert server.uri == f"nbd+unix:///renamed?socket={tmp_path}/replay.sock"
        script = NBDSH_WRITE_READ.format(setup="", uri=endpoint.uri(), offset=12288)
        assert nbdsh("bookworm", script).strip() == "ok"
        # The recorded name is no longer served: the honest answer is NBD_REP_ERR_UNKNOWN.
        old = dataclasses.replace(endpoint, export="disk")
        result = client("bookworm", "nbdsh").run(
            ["-c", f"h.connect_uri({old.uri()!r})"], check=False)
        assert result.returncode != 0
        assert "server has no export named 'disk'" in str(result.stderr)
        first, second = server.wait_reports(2, WAIT)
    no_differences([first], 1)
    assert differences(second) == [
        ("NBD_OPT_GO", "export name"),
        ("NBD_OPT_ABORT (not recorded)", "extra message"),  # libnbd gives up
        ("NBD_CMD_WRITE 12288+8192", "missing message"),
        ("NBD_CMD_READ 12288+8192", "missing message"),
        ("NBD_CMD_DISC", "missing message"),
    ]
    assert (second.differences[0].recorded, second.differences[0].live) == ("'renamed'",
                                                                            "'disk'")
    assert not (tmp_path / "replay.sock").exists()


# --- extended headers (checked-in captures of sid's qemu-nbd 11.1) ----------------------------


@pytest.mark.peers
@pytest.mark.slow
def test_extended_sessions_to_the_recorded_sid_clients() -> None:
    with replaying(LIBNBD_EXTENDED) as (server, endpoint):
        nbdinfo = client("sid", "nbdinfo")
        for context in CONTEXTS:
            assert nbdinfo.map(endpoint, context) == expected_map(CHAIN, context)
        script = LIBNBD_SCRIPT.format(contexts=CONTEXTS, uri=endpoint.uri(), offset=131072,
                                      size=CHAIN.size)
        seen = json.loads(nbdsh("sid", script))
        no_differences(server.wait_reports(4, WAIT), 4)
    assert [(context, offset) for context, offset, _ in seen] == [
        ("qemu:dirty-bitmap:b0", 0), *((context, 0) for context in CONTEXTS)]
    with replaying(QEMU_EXTENDED) as (server, endpoint):
        qemu_io = client("sid", "qemu-io")
        qemu_io.write(endpoint, 131072, PATTERN)
        assert qemu_io.read(endpoint, 131072, len(PATTERN)) == PATTERN
        assert client("sid", "qemu-img").map(endpoint) == expected_map(CHAIN,
                                                                       "base:allocation")
        no_differences(server.wait_reports(3, WAIT), 3)


@pytest.mark.peers
def test_older_clients_fall_back_from_a_recorded_extended_session() -> None:
    # qemu 7.2 and libnbd 1.14 know no extended headers: they ask for structured replies,
    # which a server with extended headers has, and get the recorded answers re-encoded.
    with replaying(QEMU_EXTENDED) as (server, endpoint):
        qemu_io = client("bookworm", "qemu-io")
        qemu_io.write(endpoint, 131072, PATTERN)
        assert qemu_io.read(endpoint, 131072, len(PATTERN)) == PATTERN
        assert client("bookworm", "qemu-img").map(endpoint) == expected_map(
            CHAIN, "base:allocation")
        reports = server.wait_reports(3, WAIT)
    for report in reports:
        assert differences(report) == [("NBD_OPT_EXTENDED_HEADERS", "option")]
        option = report.differences[0]
        assert (option.recorded, option.live) == ("NBD_OPT_EXTENDED_HEADERS",
                                                  "NBD_OPT_STRUCTURED_REPLY")
        assert ("the recorded session negotiated extended replies, the live client structured "
                "replies: recorded replies are re-encoded so") in report.notes
    with replaying(LIBNBD_EXTENDED, (1, 2, 3)) as (server, endpoint):
        nbdinfo = client("bookworm", "nbdinfo")
        for context in CONTEXTS:
            assert nbdinfo.map(endpoint, context) == expected_map(CHAIN, context)
        reports = server.wait_reports(3, WAIT)
    for report in reports:
        # nbdinfo 1.24 also asked NBD_OPT_INFO and set its context again before GO.
        assert differences(report) == [
            ("NBD_OPT_EXTENDED_HEADERS", "option"),
            ("NBD_OPT_INFO", "missing message"),
            ("NBD_OPT_SET_META_CONTEXT", "missing message"),
        ]


# --- recorded here, through the recording proxy ------------------------------------------------


@pytest.mark.peers
@pytest.mark.slow
def test_qemu_nbd_72_sessions_replayed_to_the_same_clients(tmp_path: Path) -> None:
    capture = tmp_path / "qemu-nbd.pcapng"
    nbdinfo, qemu_io, qemu_img = (client("bookworm", p) for p in ("nbdinfo", "qemu-io",
                                                                    "qemu-img"))

    def session(endpoint: Endpoint) -> tuple[object, ...]:
        maps = [nbdinfo.map(endpoint, context) for context in CONTEXTS]
        qemu_io.write(endpoint, 192 * 1024, PATTERN)
        data = qemu_io.read(endpoint, 128 * 1024, 128 * 1024)
        # qemu-img convert: block status, then reads of what is allocated, in parallel.
        return (*maps, data, qemu_img.map(endpoint), qemu_img.read(endpoint, 0, CHAIN.size))

    with (peer("bookworm", "qemu-nbd").start(CHAIN, tmp_path / "server") as server,
          recording(server.address, capture) as endpoint):
        real = session(endpoint)
    assert real[:3] == tuple(expected_map(CHAIN, context) for context in CONTEXTS)
    assert real[5] == CHAIN.read(0, 192 * 1024) + PATTERN + CHAIN.read(200 * 1024, 824 * 1024)
    with replaying(capture) as (replay, endpoint):
        assert session(endpoint) == real
        no_differences(replay.wait_reports(7, WAIT), 7)


@pytest.mark.peers
@pytest.mark.parametrize("server_program", ["qemu-nbd", "nbdkit"])
def test_recorded_errors_reach_the_live_client(server_program: str, tmp_path: Path) -> None:
    # qemu-nbd -r answers a write NBD_EINVAL (7.2); nbdkit --readonly NBD_EPERM, and its
    # error filter fails every read with NBD_EIO.
    capture = tmp_path / "errors.pcapng"
    export = dataclasses.replace(CHAIN, read_only=True, bitmaps=(), writes_after_bitmaps=())
    options = (NbdkitOptions(filters=("error",), filter_args=("error=EIO",
                                                              "error-pread-rate=1"))
               if server_program == "nbdkit" else None)
    with (peer("bookworm", server_program).start(export, tmp_path / "server",
                                                 options=options) as server,
          recording(server.address, capture) as endpoint):
        real = json.loads(nbdsh("bookworm", ERRORS_SCRIPT.format(uri=endpoint.uri())))
    expected = ({"write": "EINVAL", "read": export.read(65536, 4096).hex()}
                if server_program == "qemu-nbd" else {"write": "EPERM", "read": "EIO"})
    assert real == expected
    with replaying(capture) as (replay, endpoint):
        assert json.loads(nbdsh("bookworm", ERRORS_SCRIPT.format(uri=endpoint.uri()))) == real
        no_differences(replay.wait_reports(1, WAIT), 1)


@pytest.mark.peers
@pytest.mark.slow
def test_qemu_nbd_11_extended_session_recorded_and_replayed(tmp_path: Path) -> None:
    capture = tmp_path / "extended.pcapng"
    script = LIBNBD_SCRIPT.format(contexts=CONTEXTS, uri="{uri}", offset=131072,
                                  size=CHAIN.size)
    with (peer("sid", "qemu-nbd").start(CHAIN, tmp_path / "server") as server,
          recording(server.address, capture) as endpoint):
        real_map = client("sid", "nbdinfo").map(endpoint, "qemu:dirty-bitmap:b0")
        real_status = nbdsh("sid", script.replace("{uri}", endpoint.uri()))
    assert all(s.state.extended_headers for s in decode_capture(capture).sessions)
    with replaying(capture) as (replay, endpoint):
        assert client("sid", "nbdinfo").map(endpoint, "qemu:dirty-bitmap:b0") == real_map
        assert nbdsh("sid", script.replace("{uri}", endpoint.uri())) == real_status
        no_differences(replay.wait_reports(2, WAIT), 2)
    # libnbd 1.14 against the recorded libnbd 1.24 session: structured replies, the same map.
    with replaying(capture, (1,)) as (replay, endpoint):
        assert client("bookworm", "nbdinfo").map(endpoint, "qemu:dirty-bitmap:b0") == real_map
        [report] = replay.wait_reports(1, WAIT)
    assert differences(report) == [
        ("NBD_OPT_EXTENDED_HEADERS", "option"),
        ("NBD_OPT_INFO", "missing message"),
        ("NBD_OPT_SET_META_CONTEXT", "missing message"),
    ]


# --- the command ---------------------------------------------------------------------------


def test_serve_replay_once_returns_a_report_per_session(tmp_path: Path) -> None:
    port_file = tmp_path / "port"
    selection = load_sessions(NBD_SERVER)
    out: list[str] = []
    result: list[list[ReplayReport]] = []

    class Lines:
        def write(self, text: str) -> None:
            out.append(text)

        def flush(self) -> None:
            return

    worker = threading.Thread(target=lambda: result.append(serve_replay(
        selection, port_file=port_file, timeout=5, once=True, out=Lines())))  # type: ignore
    worker.start()
    try:
        deadline = time.monotonic() + WAIT
        while not port_file.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        port = int(port_file.read_text())
        with RawClient("127.0.0.1", port) as raw:
            raw.recv()
            raw.send(ClientFlags(3), OptionRequest(c.Opt.ABORT))
            raw.closed_by_peer()
    finally:
        worker.join(WAIT)
    assert not worker.is_alive()
    assert "".join(out) == f"listening on nbd://127.0.0.1:{port}/disk\n"
    [[report]] = result
    assert ("NBD_OPT_STRUCTURED_REPLY", "option") in differences(report)


@pytest.mark.peers
def test_command_serves_once_then_exits(tmp_path: Path) -> None:
    port_file = tmp_path / "port"
    argv = [sys.executable, "-m", "harness.cli", "replay", os.fspath(NBD_SERVER), "--serve",
            "--once", "--port-file", os.fspath(port_file), "--timeout", "10"]
    process = ManagedProcess.start(argv, log_path=tmp_path / "replay.log")
    try:
        process.wait_ready(port_file.exists, WAIT, "the replay server's port file")
        port = int(port_file.read_text())
        script = NBDSH_WRITE_READ.format(setup="", uri=f"nbd://127.0.0.1:{port}/disk",
                                         offset=12288)
        assert nbdsh("bookworm", script).strip() == "ok"
        assert process.wait(WAIT) == 0, process.log_text()
    finally:
        process.stop()
    log = process.log_text()
    assert f"listening on nbd://127.0.0.1:{port}/disk" in log
    assert "session 1 (serve 127.0.0.1:" in log and "no differences" in log


@pytest.mark.peers
def test_command_refuses_a_tls_session(pki: TestPKI, tmp_path: Path) -> None:
    capture = tmp_path / "tls.pcapng"
    export = ExportSpec(size=1 << 20, image_format="raw", tls_dir=pki.directory)
    with (peer("bookworm", "nbdkit").start(export, tmp_path / "server") as server,
          recording(server.address, capture) as endpoint):
        tls = dataclasses.replace(endpoint, export=export.name, tls_dir=pki.directory)
        assert client("bookworm", "nbdinfo").size(tls) == export.size
    result = run_command([sys.executable, "-m", "harness.cli", "replay", os.fspath(capture),
                          "--serve", "--once"], timeout=WAIT, check=False)
    assert result.returncode == 2
    assert result.stdout == ""
    message = str(result.stderr).strip()
    assert "\n" not in message and "switched to TLS (NBD_OPT_STARTTLS at frame" in message, message


@pytest.mark.peers
def test_command_stops_on_sigterm_and_reports(tmp_path: Path) -> None:
    port_file = tmp_path / "port"
    argv = [sys.executable, "-m", "harness.cli", "replay", os.fspath(NBD_SERVER), "--serve",
            "--port-file", os.fspath(port_file)]
    process = ManagedProcess.start(argv, log_path=tmp_path / "replay.log")
    try:
        process.wait_ready(port_file.exists, WAIT, "the replay server's port file")
        port = int(port_file.read_text())
        for offset in (12288, 12288):  # every connection plays the one session
            script = NBDSH_WRITE_READ.format(setup="", uri=f"nbd://127.0.0.1:{port}/disk",
                                             offset=offset)
            assert nbdsh("bookworm", script).strip() == "ok"
        os.killpg(process.pid, signal.SIGTERM)
        assert process.wait(WAIT) == 0, process.log_text()
    finally:
        process.stop()
    assert process.log_text().count("12 messages replayed, no differences") == 2
