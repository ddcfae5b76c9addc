"""The reference client against scripted servers that misbehave on purpose.

Each test's server is a short coroutine over a server-role ``Connection`` that
is allowed to send anything (``strict_local=False``): replies out of order,
error chunks, chunks outside the request, silence.  The client must
reassemble what is valid, raise the state machine's RemoteProtocolError (rule
and section named) on what is not, and hard-close the connection then.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from _fixtures_client import arun, pattern

from harness.address import Address
from harness.client import (
    ConnectOptions,
    NbdClient,
    NbdCommandError,
    NbdConnectionError,
    NbdTimeoutError,
    NegotiationError,
    TlsError,
)
from harness.protocol import NEED_DATA, Connection, RemoteProtocolError, Role
from harness.protocol import constants as c
from harness.protocol.codec import chunk, option_reply
from harness.protocol.messages import (
    ChunkError,
    ChunkErrorOffset,
    ChunkNone,
    ChunkOffsetData,
    ChunkOffsetHole,
    ClientFlags,
    ConnectionClosed,
    Event,
    ExportNameReply,
    InfoExport,
    MetaContextReplyPayload,
    NewstyleGreeting,
    OptionRequest,
    Request,
    SimpleReply,
)

TF = c.TransmissionFlag
FLAGS = TF.HAS_FLAGS | TF.SEND_FLUSH | TF.SEND_FUA | TF.SEND_TRIM | TF.SEND_WRITE_ZEROES
SIZE = 1 << 20


class Peer:
    """The scripted server's end of one connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.conn = Connection(Role.SERVER, strict_remote=False, strict_local=False)

    async def recv(self) -> Event:
        while True:
            event = self.conn.next_event()
            if event is not NEED_DATA:
                return event  # type: ignore[return-value]
            self.conn.receive_data(await asyncio.wait_for(self.reader.read(65536), 10))

    async def send(self, *events: Event) -> None:
        for event in events:
            self.writer.write(self.conn.send(event))
        await self.writer.drain()

    async def handshake(self, *, extended: bool = False, structured: bool = True) -> None:
        """A well-behaved fixed-newstyle handshake up to transmission."""
        await self.send(
            NewstyleGreeting(c.HandshakeFlag.FIXED_NEWSTYLE | c.HandshakeFlag.NO_ZEROES)
        )
        assert isinstance(await self.recv(), ClientFlags)
        while True:
            request = await self.recv()
            assert isinstance(request, OptionRequest)
            opt = request.option
            if opt == c.Opt.EXTENDED_HEADERS:
                await self.send(option_reply(opt, c.Rep.ACK if extended else c.Rep.ERR_UNSUP))
            elif opt == c.Opt.STRUCTURED_REPLY:
                await self.send(option_reply(opt, c.Rep.ACK if structured else c.Rep.ERR_UNSUP))
            elif opt == c.Opt.SET_META_CONTEXT:
                await self.send(
                    option_reply(
                        opt, c.Rep.META_CONTEXT, MetaContextReplyPayload(1, "base:allocation")
                    ),
                    option_reply(opt, c.Rep.ACK),
                )
            elif opt == c.Opt.GO:
                await self.send(
                    option_reply(opt, c.Rep.INFO, InfoExport(SIZE, FLAGS)),
                    option_reply(opt, c.Rep.ACK),
                )
                return
            else:
                await self.send(option_reply(opt, c.Rep.ERR_UNSUP))


Script = Callable[[Peer], Awaitable[None]]


@contextlib.asynccontextmanager
async def scripted(script: Script) -> AsyncIterator[Address]:
    """Serve ``script`` to each connection on 127.0.0.1; re-raise its failures at the end."""
    failures: list[BaseException] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await script(Peer(reader, writer))
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except BaseException as exc:  # surfaced by the test
            failures.append(exc)
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield Address.tcp("127.0.0.1", server.sockets[0].getsockname()[1])
    finally:
        server.close()
        await server.wait_closed()
    if failures:
        raise failures[0]


async def until_closed(peer: Peer) -> None:
    """Let the client talk until it closes; answer NBD_CMD_DISC by closing."""
    while True:
        event = await peer.recv()
        if isinstance(event, ConnectionClosed) or (
            isinstance(event, Request) and event.type == c.Cmd.DISC
        ):
            return


# --- reassembly -------------------------------------------------------------------------


def test_out_of_order_chunks_and_holes_are_reassembled():
    async def script(peer: Peer) -> None:
        await peer.handshake()
        first, second = await peer.recv(), await peer.recv()
        assert isinstance(first, Request) and isinstance(second, Request)
        # Answer the second read first, in three chunks out of offset order.
        await peer.send(
            chunk(second.cookie, ChunkOffsetData(8192 + 1024, pattern(8192 + 1024, 3072))),
            chunk(second.cookie, ChunkOffsetHole(8192, 1024)),
            chunk(first.cookie, ChunkOffsetData(0, pattern(0, 4096)), done=True),
            chunk(second.cookie, ChunkNone(), done=True),
        )
        await until_closed(peer)

    async def session() -> None:
        async with scripted(script) as address, await NbdClient.connect(address) as client:
            one, two = await asyncio.gather(client.read(0, 4096), client.read(8192, 4096))
            assert one == pattern(0, 4096)
            assert two == bytes(1024) + pattern(8192 + 1024, 3072)

    arun(session())


def test_error_chunk_raises_with_the_servers_message_and_the_session_goes_on():
    async def script(peer: Peer) -> None:
        await peer.handshake()
        read = await peer.recv()
        await peer.send(
            chunk(read.cookie, ChunkOffsetData(0, b"a" * 512)),
            chunk(read.cookie, ChunkErrorOffset(c.Errno.EIO, 512, "bad sector"), done=True),
        )
        flush = await peer.recv()
        await peer.send(chunk(flush.cookie, ChunkError(c.Errno.ENOSPC, "disk full"), done=True))
        trim = await peer.recv()
        await peer.send(SimpleReply(trim.cookie, c.Errno.EPERM))
        read = await peer.recv()
        await peer.send(chunk(read.cookie, ChunkOffsetData(0, b"b" * 512), done=True))
        await until_closed(peer)

    async def session() -> None:
        async with scripted(script) as address, await NbdClient.connect(address) as client:
            with pytest.raises(NbdCommandError) as info:
                await client.read(0, 1024)
            assert info.value.errno == c.Errno.EIO and info.value.offset == 512
            assert info.value.server_message == "bad sector"
            assert "NBD_CMD_READ failed with NBD_EIO at offset 512: bad sector" in str(info.value)
            with pytest.raises(NbdCommandError) as info:
                await client.flush()
            assert info.value.errno_name == "NBD_ENOSPC"
            with pytest.raises(NbdCommandError) as info:
                await client.trim(0, 512)
            assert info.value.errno == c.Errno.EPERM and info.value.command == c.Cmd.TRIM
            assert await client.read(0, 512) == b"b" * 512

    arun(session())


# --- violations and silence ---------------------------------------------------------------


def test_chunk_outside_the_request_is_a_remote_protocol_error_and_closes():
    async def script(peer: Peer) -> None:
        await peer.handshake()
        read = await peer.recv()
        await peer.send(chunk(read.cookie, ChunkOffsetData(4096, b"x" * 512), done=True))
        await until_closed(peer)

    async def session() -> None:
        async with scripted(script) as address:
            client = await NbdClient.connect(address)
            try:
                with pytest.raises(RemoteProtocolError) as info:
                    await client.read(0, 512)
                assert info.value.rule == "server.content-within-request"
                assert info.value.section == "Request types"  # cited for the rule
                assert client.closed
                with pytest.raises(NbdConnectionError):
                    await client.read(0, 512)
            finally:
                await client.disconnect()

    arun(session())


def test_lenient_client_records_violations_instead():
    async def script(peer: Peer) -> None:
        await peer.handshake()
        read = await peer.recv()
        # Structured replies were negotiated: a simple reply to a read breaks a MUST.
        await peer.send(SimpleReply(read.cookie, 0, b"s" * 512))
        await until_closed(peer)

    async def session() -> None:
        async with scripted(script) as address:
            options = ConnectOptions(strict_remote=False)
            async with await NbdClient.connect(address, options=options) as client:
                assert await client.read(0, 512) == b"s" * 512
                rules = [v.rule for _, v in client.connection.violations]
                assert rules == ["server.no-simple-reply-to-read"]

    arun(session())


def test_silent_server_times_out_and_the_client_hangs_up():
    async def script(peer: Peer) -> None:
        await peer.handshake()
        await peer.recv()  # the read, never answered
        await until_closed(peer)

    async def session() -> None:
        async with scripted(script) as address:
            client = await NbdClient.connect(address, options=ConnectOptions(timeout=1.0))
            try:
                with pytest.raises(NbdTimeoutError, match="no reply to NBD_CMD_READ"):
                    await client.read(0, 512)
                assert client.closed
            finally:
                await client.close()

    arun(session())


def test_go_without_export_info_is_refused():
    async def script(peer: Peer) -> None:
        await peer.send(NewstyleGreeting(c.HandshakeFlag.FIXED_NEWSTYLE))
        await peer.recv()
        while True:
            request = await peer.recv()
            if request.option == c.Opt.GO:
                await peer.send(option_reply(c.Opt.GO, c.Rep.ACK))
                await until_closed(peer)
                return
            await peer.send(option_reply(request.option, c.Rep.ERR_UNSUP))

    async def session() -> None:
        async with scripted(script) as address:
            with pytest.raises(RemoteProtocolError) as info:
                await NbdClient.connect(address)
            assert info.value.rule == "server.info-export-before-ack"

    arun(session())


def test_go_unsupported_after_extended_headers_is_a_violation():
    async def script(peer: Peer) -> None:
        await peer.send(NewstyleGreeting(c.HandshakeFlag.FIXED_NEWSTYLE))
        await peer.recv()
        while True:
            request = await peer.recv()
            if isinstance(request, ConnectionClosed):
                return
            ack = request.option in (c.Opt.EXTENDED_HEADERS, c.Opt.SET_META_CONTEXT)
            await peer.send(option_reply(request.option, c.Rep.ACK if ack else c.Rep.ERR_UNSUP))

    async def session() -> None:
        async with scripted(script) as address:
            with pytest.raises(RemoteProtocolError) as info:
                await NbdClient.connect(address)
            assert info.value.rule == "server.go-not-unsup-after-extended"

    arun(session())


def test_tls_required_reply_without_tls_is_a_tls_error():
    async def script(peer: Peer) -> None:
        await peer.send(NewstyleGreeting(c.HandshakeFlag.FIXED_NEWSTYLE))
        await peer.recv()
        while True:
            request = await peer.recv()
            if isinstance(request, ConnectionClosed):
                return
            reply = c.Rep.ACK if request.option == c.Opt.ABORT else c.Rep.ERR_TLS_REQD
            await peer.send(option_reply(request.option, reply))

    async def session() -> None:
        async with scripted(script) as address:
            with pytest.raises(TlsError) as info:
                await NbdClient.connect(address)
            assert info.value.option == c.Opt.EXTENDED_HEADERS
            assert info.value.reply_type == c.Rep.ERR_TLS_REQD
            assert "nbds://" in str(info.value)

    arun(session())


def test_server_closing_after_export_name_is_a_negotiation_error():
    async def script(peer: Peer) -> None:
        await peer.send(NewstyleGreeting(0))
        await peer.recv()
        await peer.recv()  # NBD_OPT_EXPORT_NAME: unknown, so hang up

    async def session() -> None:
        async with scripted(script) as address:
            with pytest.raises(NegotiationError, match="closed the connection after"):
                await NbdClient.connect(address)

    arun(session())


def test_export_name_reply_with_zeroes_is_read_when_no_zeroes_not_offered():
    async def script(peer: Peer) -> None:
        await peer.send(NewstyleGreeting(c.HandshakeFlag.FIXED_NEWSTYLE))
        flags = await peer.recv()
        assert flags == ClientFlags(c.ClientFlag.C_FIXED_NEWSTYLE)
        while True:
            request = await peer.recv()
            if request.option == c.Opt.EXPORT_NAME:
                await peer.send(ExportNameReply(SIZE, FLAGS, zeroes=True))
                break
            await peer.send(option_reply(request.option, c.Rep.ERR_UNSUP))
        read = await peer.recv()
        await peer.send(SimpleReply(read.cookie, 0, pattern(0, 512)))
        await until_closed(peer)

    async def session() -> None:
        async with scripted(script) as address, await NbdClient.connect(address) as client:
            assert client.negotiation.selected_with == "NBD_OPT_EXPORT_NAME"
            assert await client.read(0, 512) == pattern(0, 512)

    arun(session())
