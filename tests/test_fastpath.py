"""The reference server's fast path judges like the state machine and answers like the executor.

:class:`reference_server._fastpath.FastPath` serves reads and writes without
the protocol package's message objects.  It may only take a request the state
machine finds no fault with, and must answer it with exactly the bytes the
:class:`~reference_server._commands.Executor` would.  Both are checked here
over every combination of command flags, header style, negotiated reply form,
advertised transmission flags and block-size constraints, with ranges at the
edges (zero length, past the end, misaligned, over the maximum payload).
"""

from __future__ import annotations

import itertools
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from _raw_client import RawClient
from test_server_negative import connect, go

from harness.protocol import NEED_DATA, Connection, Phase, Role
from harness.protocol import constants as c
from harness.protocol.codec import decode_chunk_payload, encode
from harness.protocol.messages import (
    ChunkError,
    ChunkOffsetData,
    ChunkOffsetHole,
    InfoBlockSize,
    ReplyChunk,
    Request,
    SimpleReply,
)
from harness.protocol.state import Negotiated
from reference_server._backend import HOLE_ZERO
from reference_server._commands import Executor
from reference_server._fastpath import FastPath
from reference_server.config import ExportConfig, config_from_dict
from reference_server.runner import ServerThread
from reference_server.storage import Extent, MemoryBackend

KiB = 1024
SIZE = 1024 * KiB
MAX_REQUEST = 64 * 1024 * KiB
TF = c.TransmissionFlag
ALL_FLAG_SETS = [
    sum(bits) for n in range(7) for bits in itertools.combinations([1, 2, 4, 8, 16, 32], n)
] + [0x40, 0x8000, 0x8001]
RANGES = [
    (0, 4 * KiB),
    (0, 0),
    (SIZE - 4 * KiB, 4 * KiB),
    (SIZE - 4 * KiB, 8 * KiB),
    (1, 4 * KiB),
    (4 * KiB, 4 * KiB + 1),
    (0, SIZE),
    (3 * KiB, 700 * KiB),
]
COMMANDS = [int(cmd) for cmd in c.Cmd] + [9, 200]
PATTERN = bytes(range(251)) * (SIZE // 251 + 2)
"""Patterned bytes: a 251-byte period never lines up with a block, so misplaced data shows."""


@dataclass(frozen=True)
class Setup:
    """One negotiated state of a session in transmission."""

    extended: bool
    structured: bool
    tflags: int
    block: InfoBlockSize | None

    def negotiated(self) -> Negotiated:
        return Negotiated(
            style="fixed-newstyle",
            structured_replies=self.structured,
            extended_headers=self.extended,
            export_name="disk",
            export_size=SIZE,
            transmission_flags=int(TF.HAS_FLAGS) | self.tflags,
            block_size=self.block,
        )


SETUPS = [
    Setup(extended, structured, tflags, block)
    for extended, structured in [(False, False), (False, True), (True, True)]
    for tflags in [
        0,
        int(TF.SEND_FUA | TF.SEND_DF | TF.SEND_FLUSH),
        int(TF.SEND_FUA),
        int(TF.READ_ONLY | TF.SEND_FUA | TF.SEND_DF),
    ]
    for block in [None, InfoBlockSize(512, 4 * KiB, 256 * KiB)]
]


def judge(neg: Negotiated, request: Request) -> list:
    """What the protocol state machine says about ``request`` in this session."""
    conn = Connection(Role.SERVER, strict_remote=False, max_payload=MAX_REQUEST)
    conn.negotiated = neg
    conn.phase = Phase.TRANSMISSION
    conn.receive_data(encode(request))
    event = conn.next_event()
    assert event is not NEED_DATA and event == request
    return list(conn.last_violations)


def make_request(setup: Setup, extended: bool, cmd: int, flags: int, offset: int,
                 length: int) -> Request:
    with_payload = cmd == c.Cmd.WRITE or (extended and flags & c.CmdFlag.PAYLOAD_LEN)
    start = offset % 251
    payload = PATTERN[start : start + length] if with_payload else b""
    return Request(type=cmd, offset=offset, length=length, cookie=0x1234, flags=flags,
                   payload=payload, extended=extended)


def fast_path(setup: Setup, backend: MemoryBackend) -> tuple[FastPath, Executor]:
    neg = setup.negotiated()
    executor = Executor(neg, ExportConfig(name="disk", size=SIZE), backend)
    return FastPath(neg, backend, executor, MAX_REQUEST), executor


def accepted(fast: FastPath, extended: bool, cmd: int, flags: int, offset: int,
             length: int) -> bool:
    """What the session does: the magic first, then :meth:`FastPath.accepts`."""
    return extended == fast.extended and fast.accepts(flags, cmd, offset, length)


def test_accepted_requests_break_no_rule() -> None:
    """Over every combination: accepted by the fast path => no violation from the state machine."""
    taken = 0
    for setup in SETUPS:
        fast, _ = fast_path(setup, MemoryBackend(SIZE))
        neg = setup.negotiated()
        for extended, cmd, flags, (offset, length) in itertools.product(
            (False, True), COMMANDS, ALL_FLAG_SETS, RANGES
        ):
            if not accepted(fast, extended, cmd, flags, offset, length):
                continue
            taken += 1
            request = make_request(setup, extended, cmd, flags, offset, length)
            assert judge(neg, request) == [], (setup, request)
            assert cmd in (c.Cmd.READ, c.Cmd.WRITE) and length > 0
    assert taken > 300  # the fast path is not vacuous


def test_common_requests_take_the_fast_path() -> None:
    for setup in SETUPS:
        fast, _ = fast_path(setup, MemoryBackend(SIZE))
        fua = int(c.CmdFlag.FUA) if setup.tflags & TF.SEND_FUA else 0
        write_flags = int(c.CmdFlag.PAYLOAD_LEN) if setup.extended else 0
        assert fast.accepts(fua, c.Cmd.READ, 0, 64 * KiB)
        assert fast.accepts(0, c.Cmd.READ, SIZE - 4 * KiB, 4 * KiB)
        writable = not setup.tflags & TF.READ_ONLY
        assert fast.accepts(write_flags | fua, c.Cmd.WRITE, 4 * KiB, 256 * KiB) == writable
        assert not fast.accepts(0, c.Cmd.FLUSH, 0, 0)
        # The other header style, or a write without PAYLOAD_LEN under extended headers,
        # goes to the state machine.
        assert not fast.accepts(int(c.CmdFlag.PAYLOAD_LEN) - write_flags, c.Cmd.WRITE, 0, 4096)


def test_rejected_reads_and_writes_break_a_rule_or_need_the_executor() -> None:
    """The converse for reads and writes in the negotiated header style: what the fast path
    leaves to the state machine is faulted there, or is a zero-length request or a read
    above the maximum payload (which the executor answers itself)."""
    for setup in SETUPS:
        fast, _ = fast_path(setup, MemoryBackend(SIZE))
        neg = setup.negotiated()
        for cmd, flags, (offset, length) in itertools.product(
            (c.Cmd.READ, c.Cmd.WRITE), ALL_FLAG_SETS, RANGES
        ):
            if fast.accepts(flags, cmd, offset, length):
                continue
            request = make_request(setup, setup.extended, cmd, flags, offset, length)
            over_max = length > neg.max_payload
            assert judge(neg, request) or length == 0 or over_max, (setup, request)


def filled_backend() -> MemoryBackend:
    """Data, a hole and allocated zeroes: reads see every kind of segment."""
    backend = MemoryBackend(SIZE)
    backend.write(0, PATTERN[3 : 3 + SIZE])
    backend.trim(256 * KiB, 64 * KiB)
    backend.write_zeroes(512 * KiB, 4 * KiB, may_trim=False)
    return backend


@pytest.mark.parametrize("setup", SETUPS, ids=repr)
def test_fast_replies_are_the_executors_bytes(setup: Setup) -> None:
    fast_backend, slow_backend = filled_backend(), filled_backend()
    fast, _ = fast_path(setup, fast_backend)
    _, executor = fast_path(setup, slow_backend)
    checked = 0
    ranges = [*RANGES, (250 * KiB, 20 * KiB), (500 * KiB, 16 * KiB)]
    for flags, (offset, length) in itertools.product(ALL_FLAG_SETS, ranges):
        for cmd in (c.Cmd.READ, c.Cmd.WRITE):
            if not fast.accepts(flags, cmd, offset, length):
                continue
            request = make_request(setup, setup.extended, cmd, flags, offset, length)
            expected = b"".join(encode(r) for r in executor.execute(request, []))
            if cmd == c.Cmd.READ:
                got = bytes(fast.read(flags, request.cookie, offset, length))
            else:
                payload = fast.payload_buffer(length)
                payload[:] = request.payload
                got = bytes(fast.write(flags, request.cookie, offset, payload))
            assert got == expected, (request.type, flags, offset, length)
            checked += 1
    assert checked
    assert fast_backend.read(0, SIZE) == slow_backend.read(0, SIZE)
    assert fast_backend.allocation(0, SIZE) == slow_backend.allocation(0, SIZE)


@pytest.mark.parametrize("extended", [False, True])
def test_backend_errors_answer_like_the_executor(extended: bool) -> None:
    """A backend that fails an accepted request: the executor's error reply, same bytes."""
    setup = Setup(extended, True, int(TF.SEND_FUA), None)
    backend = MemoryBackend(SIZE, read_only=True)  # refuses writes the export did not flag
    fast, executor = fast_path(setup, backend)
    flags = int(c.CmdFlag.PAYLOAD_LEN) if extended else 0
    request = make_request(setup, extended, c.Cmd.WRITE, flags, 0, 4 * KiB)
    payload = fast.payload_buffer(4 * KiB)
    payload[:] = request.payload
    got = fast.write(flags, request.cookie, 0, payload)
    assert got == b"".join(encode(r) for r in executor.execute(request, []))
    assert c.Errno.EPERM.to_bytes(4, "big") in got


# --- a live server: fast and judged requests pipelined on one connection ----------------------


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerThread]:
    document = {"export": [{"name": "disk", "size": "1M", "min_block_size": 512}]}
    with ServerThread(config_from_dict(document, base_dir=tmp_path)) as thread:
        yield thread


def collect(client: RawClient, cookies: set[int]) -> dict[int, tuple[int, bytes]]:
    """``cookie -> (error, data read)`` for every cookie, replies judged by a strict client."""
    results: dict[int, tuple[int, bytes]] = {}
    pending: dict[int, dict[int, bytes]] = {}
    while len(results) < len(cookies):
        reply = client.recv()
        if isinstance(reply, SimpleReply):
            results[reply.cookie] = (reply.error, reply.data)
            continue
        assert isinstance(reply, ReplyChunk)
        pieces = pending.setdefault(reply.cookie, {})
        payload = decode_chunk_payload(reply.type, reply.payload)
        error = 0
        if isinstance(payload, ChunkOffsetData):
            pieces[payload.offset] = payload.data
        elif isinstance(payload, ChunkOffsetHole):
            pieces[payload.offset] = bytes(payload.length)
        elif isinstance(payload, ChunkError):
            error = payload.error
        if reply.done:
            results[reply.cookie] = (error, b"".join(pieces[k] for k in sorted(pieces)))
    assert set(results) == cookies
    return results


@pytest.mark.parametrize("structured", [False, True], ids=["simple", "structured"])
def test_pipelined_fast_and_judged_requests_stay_in_order_and_in_sync(
    server: ServerThread, structured: bool
) -> None:
    """One burst of requests: good ones take the fast path, bad ones the state machine.

    Each bad request gets the error the spec names; every good one its exact
    data; the strict client judging the replies finds no fault.
    """
    size = 1024 * KiB
    model = bytearray(size)
    requests: list[Request] = []
    expected: dict[int, tuple[int, bytes | None]] = {}

    def write(offset: int, length: int, flags: int = 0, errno: int = 0) -> None:
        cookie = len(requests) + 1
        start = (offset + cookie) % 251
        payload = PATTERN[start : start + length]
        requests.append(Request(type=c.Cmd.WRITE, offset=offset, length=length, cookie=cookie,
                                flags=flags, payload=payload))
        if not errno:
            model[offset : offset + length] = payload
        expected[cookie] = (errno, b"")

    def read(offset: int, length: int, errno: int = 0) -> None:
        cookie = len(requests) + 1
        requests.append(Request(type=c.Cmd.READ, offset=offset, length=length, cookie=cookie))
        expected[cookie] = (errno, None if errno else bytes(model[offset : offset + length]))

    write(0, 64 * KiB)
    read(size, 512, errno=c.Errno.EINVAL)  # past the end
    read(0, 64 * KiB)
    write(1536, 1024, flags=0x40, errno=c.Errno.EINVAL)  # undocumented flag
    read(1, 512, errno=c.Errno.EINVAL)  # not aligned to the minimum block
    write(size - 512, 1024, errno=c.Errno.ENOSPC)  # past the end
    for index in range(40):
        offset = (index * 37 * 512) % (size - 128 * KiB)
        if index % 3:
            write(offset, 512 * (1 + index * 7 % 200))
        read(offset // 2 // 512 * 512, 512 * (1 + index * 11 % 250))
    read(512 * 1000, 512 * 24)  # a range never written: holes in structured replies
    with connect(server) as client:
        go(client, structured=structured)
        client.send_raw(b"".join(client.conn.send(request) for request in requests))
        results = collect(client, set(expected))
    for cookie, (errno, data) in expected.items():
        got_errno, got_data = results[cookie]
        assert got_errno == errno, requests[cookie - 1]
        if data is not None:
            assert got_data == data, requests[cookie - 1]
    records = server.wait_for_records(1)
    reads = sum(request.type == c.Cmd.READ for request in requests)
    assert records[0].commands == {"NBD_CMD_READ": reads, "NBD_CMD_WRITE": len(requests) - reads}
    assert len(records[0].client_violations) == 4
    # Only the four bad requests went through the state machine: after each, the fast
    # path took over again.
    assert records[0].fast_path == len(requests) - 4


def test_replies_still_go_out_after_the_client_shuts_its_sending_side(
    server: ServerThread,
) -> None:
    data = PATTERN[:8 * KiB]
    requests = [
        Request(type=c.Cmd.WRITE, offset=4 * KiB, length=len(data), cookie=1, payload=data),
        Request(type=c.Cmd.READ, offset=4 * KiB, length=len(data), cookie=2),
        Request(type=c.Cmd.READ, offset=1, length=512, cookie=3),  # misaligned: judged
    ]
    with connect(server) as client:
        go(client, structured=False)
        client.send_raw(b"".join(client.conn.send(request) for request in requests))
        client.sock.shutdown(socket.SHUT_WR)
        results = collect(client, {1, 2, 3})
        assert client.closed_by_peer()
    assert results == {1: (0, b""), 2: (0, data), 3: (c.Errno.EINVAL, b"")}


def test_a_client_gone_in_the_middle_of_a_write_leaves_the_export_alone(
    server: ServerThread,
) -> None:
    with connect(server) as client:
        go(client, structured=False)
        header = encode(Request(type=c.Cmd.WRITE, offset=0, length=64 * KiB, cookie=1,
                                payload=PATTERN[: 64 * KiB]))
        client.send_raw(header[: 28 + KiB])  # the header and 1 KiB of the 64 KiB promised
    (record,) = server.wait_for_records(1)
    assert "in the middle of a request" in record.end
    backend = server.server.registry.backend("disk")
    assert backend.allocation(0, 1024 * KiB) == [Extent(1024 * KiB, HOLE_ZERO)]
