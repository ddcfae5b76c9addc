"""The reference server's resource limits (``[limits]``, docs/server-limits.md).

Each limit is reached by a hostile client, and the test checks what the spec
or the docs say happens: the right error or refusal, the session ended with a
reason, nothing leaked, and a well-behaved client served meanwhile.  Waits are
bounded generously; no test passes or fails on how fast something was.
"""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import time
from collections.abc import Iterator
from contextlib import ExitStack

import pytest
from _raw_client import RawClient
from test_server_negative import FIXED, ask, connect, go

from harness.protocol import constants as c
from harness.protocol.codec import decode_chunk_payload, option
from harness.protocol.messages import (
    ChunkOffsetData,
    ClientFlags,
    EmptyPayload,
    MetaContextPayload,
    NewstyleGreeting,
    OptionRequest,
    ReplyChunk,
    Request,
    SimpleReply,
)
from reference_server._budget import UNBUDGETED, MemoryBudget
from reference_server.config import config_from_dict
from reference_server.runner import ServerThread

MiB = 1 << 20
WAIT = 20.0
"""Generous bound on any wait for the server to act."""


def serve(limits: dict, **export: object) -> ServerThread:
    config = config_from_dict({"limits": limits,
                               "export": [{"name": "disk", "size": "64M", **export}]})
    return ServerThread(config)


@pytest.fixture
def limited() -> Iterator[ServerThread]:
    with serve({"max_option_length": "64k", "max_meta_context_queries": 8,
                "max_connections": 4, "handshake_timeout": 2, "reply_timeout": 2,
                "max_request_payload": "32M", "max_inflight_bytes": "64M"}) as thread:
        yield thread


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def wait_until(predicate, timeout: float = WAIT) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def read_back(server: ServerThread, length: int = 4096) -> bytes:
    """A well-behaved client: negotiate, write a pattern, read it back."""
    with connect(server) as client:
        go(client)
        pattern = bytes(range(256)) * (length // 256)
        client.send(Request(type=c.Cmd.WRITE, offset=0, length=length, cookie=1,
                            payload=pattern))
        written = client.recv()
        assert isinstance(written, SimpleReply) and written.error == 0, written
        client.send(Request(type=c.Cmd.READ, offset=0, length=length, cookie=2))
        reply = client.recv()
        assert isinstance(reply, ReplyChunk)
        data = decode_chunk_payload(reply.type, reply.payload)
        assert isinstance(data, ChunkOffsetData) and data.data == pattern
        return data.data


def header(opt: int, length: int) -> bytes:
    return struct.pack(">QII", c.IHAVEOPT, opt, length)


# --- options --------------------------------------------------------------------------


def test_an_option_over_the_limit_gets_too_big_unread_and_the_session_goes_on(limited):
    with connect(limited) as client:
        client.send_raw(header(c.Opt.LIST, 1 * MiB) + b"\0" * MiB)
        client.conn.send(OptionRequest(c.Opt.LIST, b""))  # what the client's machine expects
        replies = []
        reply = client.recv()
        replies.append(reply)
        assert reply.reply_type == c.Rep.ERR_TOO_BIG, reply
        assert b"65536" in reply.data  # the message names the limit
        go(client)  # still in sync: the 1 MiB was skipped, not taken for options
    (record,) = limited.wait_for_records(1)
    assert record.options[0] == "NBD_OPT_LIST -> NBD_REP_ERR_TOO_BIG"
    assert record.client_violations == []  # a long option breaks no rule of the spec


def test_export_name_over_the_limit_ends_the_session(limited):
    with connect(limited) as client:
        client.send_raw(header(c.Opt.EXPORT_NAME, 100_000) + b"d" * 100_000)
        assert client.closed_by_peer()
    (record,) = limited.wait_for_records(1)
    assert "limits.max_option_length" in record.end


def test_too_many_meta_context_queries_get_too_big(limited):
    with connect(limited) as client:
        ask(client, option(c.Opt.STRUCTURED_REPLY, EmptyPayload()))
        for opt in (c.Opt.LIST_META_CONTEXT, c.Opt.SET_META_CONTEXT):
            queries = tuple(f"base:x{i}" for i in range(9))
            replies = ask(client, option(opt, MetaContextPayload("disk", queries)))
            assert [r.reply_type for r in replies] == [c.Rep.ERR_TOO_BIG]
        replies = ask(client, option(c.Opt.SET_META_CONTEXT,
                                     MetaContextPayload("disk", ("base:allocation",) * 8)))
        assert [r.reply_type for r in replies] == [c.Rep.META_CONTEXT, c.Rep.ACK]


def test_many_duplicate_queries_select_one_context_each():
    # Large enough to be judged off the event loop (and to have been quadratic).
    with serve({"max_meta_context_queries": 5000}) as server, connect(server) as client:
        ask(client, option(c.Opt.STRUCTURED_REPLY, EmptyPayload()))
        queries = ("base:allocation", "qemu:allocation-depth") * 1400  # 61 KiB
        for opt in (c.Opt.SET_META_CONTEXT, c.Opt.LIST_META_CONTEXT):
            replies = ask(client, option(opt, MetaContextPayload("disk", queries)))
            assert [r.reply_type for r in replies] == [c.Rep.META_CONTEXT] * 2 + [c.Rep.ACK]
        go(client, structured=False)


# --- time -----------------------------------------------------------------------------


def test_the_handshake_deadline_counts_total_time_not_silence(limited):
    """One byte every 0.3 s never leaves the connection idle for long, yet it ends."""
    started = time.monotonic()
    with connect(limited) as client:
        trickle = header(c.Opt.GO, 4096)
        closed = False
        for byte in trickle * 10:
            try:
                client.send_raw(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
            if time.monotonic() - started > WAIT:
                break
            client.sock.settimeout(0.3)
            try:
                if client.sock.recv(1) == b"":
                    closed = True
                    break
            except TimeoutError:
                pass
        assert closed, "the trickling client was never cut off"
    (record,) = limited.wait_for_records(1)
    assert "handshake not finished within 2 s" in record.end


def test_a_client_that_reads_no_replies_is_cut_off_and_frees_its_budget(limited):
    hostile = connect(limited)
    go(hostile, structured=False)  # simple replies: the data goes out even for a hole
    hostile.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    for cookie in range(3):
        hostile.send(Request(type=c.Cmd.READ, offset=0, length=32 * MiB, cookie=cookie))
    try:
        assert read_back(limited)  # served while the hostile client holds its share
        records = limited.wait_for_records(2, timeout=WAIT)
        ended = [r.end for r in records if r.commands.get("NBD_CMD_READ") == 1]
        assert any("limits.reply_timeout" in end for end in ended), [r.end for r in records]
        assert limited.server.budget.peak <= 64 * MiB
        assert wait_until(lambda: limited.server.budget.used == 0)
    finally:
        hostile.close()


# --- connections ------------------------------------------------------------------------


def test_connections_over_the_limit_are_refused_cleanly_and_the_limit_frees_up(limited):
    with ExitStack() as stack:
        held = [stack.enter_context(connect(limited)) for _ in range(4)]
        with RawClient("127.0.0.1", limited.address.port) as refused:
            assert refused.closed_by_peer()  # no greeting: closed at once, not queued
        assert limited.server.refused == 1
        held[0].close()
        assert wait_until(lambda: len(limited.server.records) == 1)
        with connect(limited) as client:  # a slot is free again
            client.send(option(c.Opt.ABORT, EmptyPayload()))


def test_a_burst_of_connections_is_taken_by_the_backlog():
    """300 connects at once all complete (the listen backlog holds them until accepted)."""
    with serve({"max_connections": 1000, "listen_backlog": 512}) as server:
        sockets = []
        try:
            for _ in range(300):
                sock = socket.socket()
                sock.setblocking(False)
                sock.connect_ex(("127.0.0.1", server.address.port))
                sockets.append(sock)
            for sock in sockets:
                sock.settimeout(WAIT)
                greeting = sock.recv(18)
                assert len(greeting) >= 8 and greeting[:8] == b"NBDMAGIC"
            assert server.server.refused == 0
        finally:
            for sock in sockets:
                sock.close()


def test_hostile_clients_leak_no_file_descriptors_and_a_client_is_served_meanwhile():
    # The limits of `limited`, with a handshake deadline a loaded machine cannot reach while
    # the test opens its connections (the deadline has its own test).
    with serve({"max_option_length": "64k", "max_meta_context_queries": 8,
                "max_connections": 4, "handshake_timeout": 60, "reply_timeout": 2,
                "max_request_payload": "32M", "max_inflight_bytes": "64M"}) as limited:
        _hostile_clients_leak_nothing(limited)


def _hostile_clients_leak_nothing(limited: ServerThread) -> None:
    read_back(limited)  # the first session opens what the server keeps open
    limited.wait_for_records(1)
    before = open_fds()
    with ExitStack() as stack:
        # A slow option, an oversized one, a half-sent request, and one too many.
        slow = stack.enter_context(connect(limited))
        slow.send_raw(header(c.Opt.GO, 64)[:9])
        big = stack.enter_context(connect(limited))
        big.send_raw(header(c.Opt.INFO, 10 * MiB) + b"\0" * 4096)
        half = stack.enter_context(connect(limited))
        go(half)
        half.send_raw(struct.pack(">IHHQQI", c.REQUEST_MAGIC, 0, c.Cmd.WRITE, 1, 0, 4096)
                      + b"\1" * 100)
        assert read_back(limited)  # the fourth connection: a well-behaved client
        # Once its session has ended (two records: both read-backs), a fourth connection
        # held open fills the limit whatever the machine's load.
        assert wait_until(lambda: len(limited.server.records) == 2)
        held = stack.enter_context(connect(limited))
        go(held)
        with RawClient("127.0.0.1", limited.address.port) as refused:
            assert refused.closed_by_peer()
    assert wait_until(lambda: len(limited.server.records) == 6)
    assert wait_until(lambda: open_fds() <= before), (open_fds(), before)


def test_serve_keeps_no_session_records_when_told():
    config = config_from_dict({"export": [{"name": "disk", "size": "1M"}]})
    from reference_server.server import ReferenceServer

    async def one_session() -> int:
        server = ReferenceServer(config, keep_records=False)
        async with server:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.address.port)
            await reader.readexactly(18)
            writer.close()
            await asyncio.sleep(0.2)
        return len(server.records)

    assert asyncio.run(one_session()) == 0


def test_a_read_above_the_hard_payload_limit_ends_the_session():
    with serve({"max_request_payload": "32M"}, max_payload_size=0xFFFFFFFF) as server:
        with connect(server) as client:
            go(client)
            client.send(Request(type=c.Cmd.READ, offset=0, length=48 * MiB, cookie=1))
            assert client.closed_by_peer()
        (record,) = server.wait_for_records(1)
        assert "limits.max_request_payload" in record.end


def test_the_client_flags_alone_are_taken_and_pipelined_options_stay_in_order(limited):
    with RawClient("127.0.0.1", limited.address.port) as client:
        assert isinstance(client.recv(), NewstyleGreeting)
        client.send(ClientFlags(FIXED), option(c.Opt.LIST, EmptyPayload()))
        replies = [client.recv() for _ in range(2)]
        assert [r.reply_type for r in replies] == [c.Rep.SERVER, c.Rep.ACK]


# --- the budget itself -------------------------------------------------------------------


def test_budget_grants_in_order_and_a_timed_out_waiter_lets_the_next_in():
    async def scenario() -> list[str]:
        budget = MemoryBudget(10 * MiB)
        order: list[str] = []
        big, small = 8 * MiB, 2 * MiB + 1

        async def user(name: str, count: int, hold: float, timeout: float = WAIT) -> None:
            try:
                async with budget.hold(count, timeout):
                    order.append(name)
                    await asyncio.sleep(hold)
            except TimeoutError:
                order.append(f"{name} timed out")

        first = asyncio.create_task(user("first", big, 0.3))
        await asyncio.sleep(0.01)
        impatient = asyncio.create_task(user("impatient", big, 0, timeout=0.05))
        await asyncio.sleep(0.01)
        second = asyncio.create_task(user("second", small, 0))
        async with budget.hold(UNBUDGETED, 0.01):  # small requests never wait
            order.append("small")
        await asyncio.gather(first, impatient, second)
        assert budget.used == 0 and budget.peak <= budget.total
        return order

    assert asyncio.run(scenario()) == ["first", "small", "impatient timed out", "second"]


# --- the stream's waits count total time -------------------------------------------------------


@pytest.mark.parametrize("wait", ["fill", "read_into"])
def test_a_stream_wait_is_bounded_in_total_however_the_bytes_trickle(wait):
    """A byte every 50 ms would satisfy a per-byte timeout of 300 ms forever."""
    from reference_server._stream import Stream, StreamTimeout

    async def scenario() -> None:
        stream = Stream(lambda _: None)

        async def trickle() -> None:
            while True:
                await asyncio.sleep(0.05)
                stream.get_buffer(-1)[0] = 0
                stream.buffer_updated(1)

        feeder = asyncio.create_task(trickle())
        try:
            with pytest.raises(StreamTimeout):
                if wait == "fill":
                    await stream.fill(16, 0.3)
                else:
                    await stream.read_into(memoryview(bytearray(16)), 0.3)
        finally:
            feeder.cancel()

    asyncio.run(scenario())
