"""The reference NBD server: asyncio I/O around the sans-IO protocol package.

``ReferenceServer(config)`` listens where the config says (TCP with a
kernel-chosen port by default, or a unix socket) and runs one
:class:`Session` per connection.  Each session drives a server-role
:class:`~harness.protocol.Connection`, which judges everything the client
sends; the answers come from :mod:`._options` and :mod:`._commands`.  In
transmission, reads and writes that break no rule take :mod:`._fastpath`
(same rules, no message objects, no extra copies); everything else goes
through the state machine.  Bytes move through :mod:`._stream`.

Every resource a client can make the server hold is bounded by
``config.limits`` (:class:`~.config.ServerLimits`, docs/server-limits.md):
connections, the handshake's total time, option length and queries (refused
with ``NBD_REP_ERR_TOO_BIG`` before the data is buffered), request payloads,
and the data buffered across all connections (:mod:`._budget`).  Large
options are judged off the event loop, and every session yields to the others
between options and every few requests, so one client cannot stall the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
import struct
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from harness.protocol import NEED_DATA, Connection, Phase, Role
from harness.protocol import constants as c
from harness.protocol.errors import ProtocolError
from harness.protocol.messages import (
    ClientFlags,
    ConnectionClosed,
    Event,
    ExportNameReply,
    NewstyleGreeting,
    OldstyleGreeting,
    OptionRequest,
    Request,
)
from harness.protocol.state import Negotiated

from ._budget import MemoryBudget
from ._commands import Executor
from ._fastpath import READ, WRITE, FastPath
from ._options import (
    OptionContext,
    OptionOutcome,
    answer_option,
    error,
    export_needs_tls,
    transmission_flags,
)
from ._stream import Stream, StreamClosed, StreamTimeout
from .config import ExportConfig, ServerConfig, ServerLimits
from .faults import ServerFaults
from .features import FULL, ServerFeatures
from .storage import ExportRegistry

log = logging.getLogger("nbd-harness.server")

SEND_CHUNK = 1 << 20
"""A reply larger than this goes out in pieces of this size, each waiting until the
client has read enough, so the transport never holds a second copy of a large reply."""
OFFLOAD_OPTION = 16 * 1024
"""Options with more data than this are decoded and answered in a worker thread."""
YIELD_EVERY = 32
"""Requests a session serves from already-buffered bytes before letting others run."""
MAX_KEPT_VIOLATIONS = 100
"""Client violations a session keeps for its record (a fuzzing client breaks millions)."""
MAX_ANSWERED = 4096
"""Answered cookies the state machine remembers (only to word a message better)."""
_OPTION_HEADER = struct.Struct(">QII")


@dataclass
class SessionRecord:
    """What one client did on one connection, as the server saw it."""

    peer: str
    options: list[str] = field(default_factory=list)  # "NBD_OPT_GO -> NBD_REP_ACK"
    commands: Counter[str] = field(default_factory=Counter)
    negotiated: Negotiated | None = None
    client_violations: list[str] = field(default_factory=list)
    export: str | None = None
    end: str = ""
    fast_path: int = 0
    """Requests served by :mod:`._fastpath` (the rest went through the state machine)."""

    def summary(self) -> dict:
        neg = self.negotiated or Negotiated()
        return {
            "peer": self.peer,
            "style": neg.style,
            "tls": neg.tls,
            "structured_replies": neg.structured_replies,
            "extended_headers": neg.extended_headers,
            "no_zeroes": neg.no_zeroes,
            "export": self.export,
            "meta_contexts": sorted(neg.meta_contexts.values()),
            "block_size_requested": neg.block_size_requested,
            "options": list(self.options),
            "commands": dict(self.commands),
            "client_violations": list(self.client_violations),
            "end": self.end,
        }


class SessionEnded(Exception):
    """The session is over (peer closed, timeout, or we decided to close)."""


def server_ssl_context(config: ServerConfig) -> ssl.SSLContext | None:
    """A TLS context from the config's certificate directory (GnuTLS/qemu layout)."""
    if config.tls == "off" or config.tls_certificates is None:
        return None
    directory = Path(config.tls_certificates)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    # The spec (section "TLS versions") requires TLS 1.2 or later.
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(directory / "server-cert.pem", directory / "server-key.pem")
    ca = directory / "ca-cert.pem"
    if ca.exists():
        context.load_verify_locations(ca)
    context.verify_mode = ssl.CERT_REQUIRED if config.tls_verify_peer else ssl.CERT_OPTIONAL
    return context


class Session:
    """One client connection, from greeting to close."""

    def __init__(self, server: ReferenceServer, stream: Stream) -> None:
        self.server = server
        self.stream = stream
        # A request payload above limits.max_request_payload ends the session (hard
        # disconnect) instead of being buffered: a hostile client cannot make us hold 4 GiB.
        self.faults = server.faults  # None unless `serve --fault`: then we may send what is wrong
        self.limits: ServerLimits = server.config.limits
        self.conn = Connection(Role.SERVER, strict_remote=False, strict_local=self.faults is None,
                               max_payload=self.limits.max_request_payload)
        self._loop = asyncio.get_running_loop()
        self.handshake_deadline = self._loop.time() + self.limits.handshake_timeout
        """Negotiation must end by then, however slowly the client trickles its bytes."""
        self._oversized_option = 0  # data length of the option being refused unread
        peer = stream.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else "unix"
        self.record = SessionRecord(self.peer, negotiated=self.conn.negotiated)

    async def run(self) -> None:
        try:
            export = await self._handshake()
            if export is not None:
                self.record.export = export.name
                await self._transmission(export)
        except SessionEnded as exc:
            self.record.end = str(exc)
            log.debug("session %s ended: %s", self.peer, exc)
        except ProtocolError as exc:
            self.record.end = f"client broke the protocol: {exc}"
            log.info("session %s: client broke the protocol: %s", self.peer, exc)
        except StreamClosed as exc:
            self.record.end = f"client broke the protocol: {exc} in the middle of a request"
            log.info("session %s: %s in the middle of a request", self.peer, exc)
        except (ConnectionError, ssl.SSLError, OSError) as exc:
            self.record.end = f"connection error: {exc}"
            log.info("session %s: connection error: %s", self.peer, exc)
        finally:
            self.record.client_violations = [
                f"{v.rule}: {v.message}" for role, v in self.conn.violations if role is Role.CLIENT
            ]
            if self.server.keep_records:
                self.server.records.append(self.record)
            self.stream.close()
            try:
                await asyncio.wait_for(self.stream.wait_closed(), 5)
            except Exception:
                # A client that reads nothing keeps a closing transport (and its fd and
                # buffered replies) forever: drop it.
                self.stream.abort()

    # --- I/O -------------------------------------------------------------------------

    async def _next(self, timeout: float | None = None) -> Event:
        """The next message the state machine cuts from the stream.

        ``timeout`` bounds each wait; None: the handshake's remaining time, or the
        idle timeout in transmission.
        """
        while True:
            event = self.conn.next_event()
            if event is not NEED_DATA:
                if isinstance(event, ConnectionClosed):
                    raise SessionEnded("client closed the connection")
                return event  # type: ignore[return-value]
            try:
                data = await self.stream.read_some(self._timeout(timeout))
            except StreamTimeout:
                raise self._timed_out() from None
            self.conn.receive_data(data)

    def _timeout(self, timeout: float | None = None) -> float:
        """Seconds the next wait for the client may last."""
        if timeout is not None:
            return timeout
        if self.conn.phase is Phase.TRANSMISSION:
            return self.limits.idle_timeout
        left = self.handshake_deadline - self._loop.time()
        if left <= 0:
            raise self._timed_out()
        return left

    def _timed_out(self) -> SessionEnded:
        if self.conn.phase is Phase.TRANSMISSION:
            return SessionEnded(f"client idle for {self.limits.idle_timeout:g} s")
        return SessionEnded(f"handshake not finished within {self.limits.handshake_timeout:g} s "
                            "(limits.handshake_timeout)")

    async def _send(self, *events: Event) -> None:
        for event in events:
            await self._write(self.conn.send(event))
        await self._drain()

    async def _write(self, data: bytes | bytearray | memoryview) -> None:
        """Queue ``data``; a large reply goes in pieces, each once the client read enough."""
        if len(data) <= SEND_CHUNK:
            self.stream.write(data)
            return
        view = memoryview(data)
        for start in range(0, len(view), SEND_CHUNK):
            self.stream.write(view[start : start + SEND_CHUNK])
            await self._drain()

    async def _drain(self) -> None:
        timeout = self.limits.reply_timeout
        if self.conn.phase is not Phase.TRANSMISSION:
            timeout = min(timeout, self._timeout())
        try:
            await self.stream.drain(timeout)
        except StreamTimeout:
            if self.conn.phase is not Phase.TRANSMISSION:
                raise self._timed_out() from None
            raise SessionEnded(f"client read no reply for {timeout:g} s "
                               "(limits.reply_timeout)") from None

    def _budget(self, count: int) -> contextlib.AbstractAsyncContextManager[None]:
        """Hold ``count`` bytes of the server's in-flight budget for a request."""
        return self.server.budget.hold(count, self.limits.reply_timeout)

    # --- handshake -------------------------------------------------------------------

    def _option_context(self) -> OptionContext:
        return OptionContext(self.server.config, self.server.features, self.server.registry,
                             self.conn.negotiated, self.server.ssl_context is not None)

    async def _handshake(self) -> ExportConfig | None:
        config, features = self.server.config, self.server.features
        if config.handshake == "oldstyle":
            export = config.default
            if export is None:
                raise SessionEnded("no export to serve in oldstyle")
            backend = self.server.registry.backend(export)
            flags = transmission_flags(self._option_context(), export)
            await self._send(OldstyleGreeting(backend.size, flags))
            return export
        flags = c.HandshakeFlag(0)
        if config.handshake == "fixed-newstyle":
            flags |= c.HandshakeFlag.FIXED_NEWSTYLE
        if features.no_zeroes:
            flags |= c.HandshakeFlag.NO_ZEROES
        if self.faults is not None:
            flags = self.faults.greeting_flags(flags)
        await self._send(NewstyleGreeting(int(flags)))
        if await self._fill(4):
            self.conn.receive_data(self.stream.take(4))  # exactly: options are read one by one
        client_flags = await self._next()
        assert isinstance(client_flags, ClientFlags)
        if self.conn.last_violations:
            # "the server MUST close the TCP connection if it does not recognize the
            # client's flags".
            raise SessionEnded(self.conn.last_violations[0].message)
        if self.faults is not None:
            self.faults.after_client_flags()
        while True:
            await asyncio.sleep(0)  # a client pipelining options lets the others run between
            event = await self._next_option()
            if self._oversized_option:
                outcome = self._refuse_oversized(event)
            else:
                outcome = None if self.faults is None else await self.faults.on_option(self, event)
            if outcome is None and event.option == c.Opt.EXPORT_NAME:
                return await self._export_name()
            if outcome is None:
                outcome = await self._answer(event)
            final = outcome.replies[-1] if outcome.replies else None
            self.record.options.append(
                f"{c.name_of(c.Opt, event.option)} -> "
                + (c.name_of(c.Rep, final.reply_type) if final else "close"))
            await self._send(*outcome.replies)
            if outcome.close:
                raise SessionEnded("client aborted negotiation")
            if outcome.start_tls:
                await self._start_tls()
            if outcome.enter_transmission is not None:
                return outcome.enter_transmission

    async def _next_option(self) -> OptionRequest:
        """The next option, read exactly, its data bounded before it is buffered.

        An option longer than ``limits.max_option_length`` is discarded as it
        arrives and handed to the state machine without its data;
        :attr:`_oversized_option` says so.  Large options are judged in a thread.
        """
        self._oversized_option = 0
        stream, conn = self.stream, self.conn
        if not conn.buffered and await self._fill(_OPTION_HEADER.size):
            magic, option, length = stream.peek(_OPTION_HEADER)
            if magic == c.IHAVEOPT and length > self.limits.max_option_length:
                stream.consume(_OPTION_HEADER.size)
                await self._skip(length)
                self._oversized_option = length
                kept = len(conn.violations)
                conn.receive_data(_OPTION_HEADER.pack(magic, option, 0))
                event = conn.next_event()
                del conn.violations[kept:]  # the empty stand-in's faults are not the client's
                conn.last_violations = []
                assert isinstance(event, OptionRequest)
                return event
            if magic == c.IHAVEOPT:
                conn.receive_data(stream.take(_OPTION_HEADER.size))
                if length:  # (receive_data(b"") would mean the end of the stream)
                    data = bytearray(length)
                    await self._read_into(memoryview(data))
                    conn.receive_data(data)
                if length > OFFLOAD_OPTION:
                    event = await asyncio.to_thread(conn.next_event)
                    assert isinstance(event, OptionRequest)
                    return event
        event = await self._next()
        assert isinstance(event, OptionRequest)
        return event

    def _refuse_oversized(self, event: OptionRequest) -> OptionOutcome:
        """The answer to an option whose data was too long to read."""
        length, limit = self._oversized_option, self.limits.max_option_length
        name = c.name_of(c.Opt, event.option)
        if event.option in (c.Opt.EXPORT_NAME, c.Opt.ABORT):
            # EXPORT_NAME cannot be answered with an error, ABORT wants the end anyway.
            raise SessionEnded(f"{name} with {length} bytes of data (limits.max_option_length "
                               f"is {limit})")
        return OptionOutcome([error(event.option, c.Rep.ERR_TOO_BIG,
                                    f"{name} carries {length} bytes of data; this server takes "
                                    f"at most {limit}")])

    async def _answer(self, event: OptionRequest) -> OptionOutcome:
        """:func:`answer_option`, in a worker thread when the option is large."""
        ctx, violations = self._option_context(), self.conn.last_violations
        if len(event.data) > OFFLOAD_OPTION:
            return await asyncio.to_thread(answer_option, ctx, event, violations)
        return answer_option(ctx, event, violations)

    async def _skip(self, count: int) -> None:
        """Read and drop ``count`` bytes, holding no more than a small scratch buffer."""
        scratch = memoryview(bytearray(min(count, 64 * 1024)))
        while count:
            piece = min(count, len(scratch))
            await self._read_into(scratch[:piece])
            count -= piece

    async def _export_name(self) -> ExportConfig | None:
        self.record.options.append("NBD_OPT_EXPORT_NAME")
        ctx = self._option_context()
        neg = self.conn.negotiated
        name = neg.export_name or ""
        export = self.server.config.export(name)
        if self.conn.last_violations or export is None or export_needs_tls(ctx, export):
            # EXPORT_NAME cannot fail gracefully: "the server MUST terminate the session".
            raise SessionEnded(f"NBD_OPT_EXPORT_NAME for {name!r} refused")
        backend = self.server.registry.backend(export)
        await self._send(ExportNameReply(backend.size, transmission_flags(ctx, export),
                                         zeroes=not neg.no_zeroes))
        return export

    async def _start_tls(self) -> None:
        context = self.server.ssl_context
        assert context is not None
        try:
            await asyncio.wait_for(self.stream.start_tls(context), self._timeout())
        except (ssl.SSLError, TimeoutError, ConnectionError) as exc:
            # "If the handshake is unsuccessful ... the server MUST terminate the session".
            raise SessionEnded(f"TLS handshake failed: {exc}") from None
        self.conn.start_tls_done()

    # --- transmission ------------------------------------------------------------------

    async def _transmission(self, export: ExportConfig) -> None:
        neg = self.conn.negotiated
        backend = self.server.registry.backend(export)
        executor = Executor(neg, export, backend, self.server.features.quirks)
        fast = FastPath(neg, backend, executor, self.limits.max_request_payload)
        served = 0
        while True:
            served += 1
            if served % YIELD_EVERY == 0:
                await asyncio.sleep(0)  # bytes keep arriving: let the other sessions run too
            if self.faults is None and await self._serve_fast(fast):
                continue
            async with contextlib.AsyncExitStack() as holds:
                event = await self._next_request(holds)
                assert isinstance(event, Request)
                self.record.commands[c.name_of(c.Cmd, event.type)] += 1
                if event.type == c.Cmd.DISC:
                    backend.flush()
                    raise SessionEnded("client sent NBD_CMD_DISC")
                if self.faults is not None and await self.faults.on_request(self, event,
                                                                            executor):
                    continue
                replies = executor.execute(event, self.conn.last_violations)
                await self._send(*replies)
            self._forget_old_state()
            if self.conn.phase is Phase.CLOSED:
                return

    def _forget_old_state(self) -> None:
        """Bound what the state machine accumulates over a long session of bad requests."""
        conn = self.conn
        if len(conn.violations) > MAX_KEPT_VIOLATIONS:
            del conn.violations[MAX_KEPT_VIOLATIONS:]
        if len(conn.answered) > MAX_ANSWERED:
            conn.answered.clear()

    async def _serve_fast(self, fast: FastPath) -> bool:
        """Serve the next request if :class:`FastPath` accepts its header.

        False (nothing consumed) when the state machine must judge it: another
        magic, another command, any rule broken, the client closed, or bytes the
        state machine already holds.
        """
        stream = self.stream
        if self.conn.buffered or not await self._fill(4) or stream.peek_u32() != fast.magic:
            return False
        if not await self._fill(fast.header.size):
            return False
        _, flags, cmd, cookie, offset, length = stream.peek(fast.header)
        if not fast.accepts(flags, cmd, offset, length):
            return False
        stream.consume(fast.header.size)
        self.record.fast_path += 1
        async with self._budget(length):
            if cmd == WRITE:
                self.record.commands[_WRITE_NAME] += 1
                payload = fast.payload_buffer(length)
                await self._read_into(payload)
                stream.hold(fast.write(flags, cookie, offset, payload))
                if stream.available >= fast.header.size:
                    return True  # the next request is here: its reply can join this one
            else:
                self.record.commands[_READ_NAME] += 1
                await self._write(fast.read(flags, cookie, offset, length))
            await self._drain()
        return True

    async def _next_request(self, holds: contextlib.AsyncExitStack) -> Event:
        """The next request, judged by the state machine.

        It is fed exactly the request's bytes (the header, then the payload if the
        state machine asks for one: ``length`` bytes in both header styles), so the
        request after a bad one can take the fast path again.  An unknown magic or
        the end of the stream: everything goes to the state machine, which says so.
        The budget for its payload or read data is taken into ``holds``.
        """
        stream = self.stream
        if not self.conn.buffered and await self._fill(4):
            layout = _HEADERS.get(stream.peek_u32())
            if layout is not None and await self._fill(layout.size):
                cmd, length = stream.peek(layout)[2], stream.peek(layout)[-1]
                self.conn.receive_data(stream.take(layout.size))
                event = self.conn.next_event()
                if cmd == READ and length <= self.conn.negotiated.max_payload:
                    # A valid read: its reply will hold ``length`` bytes (a longer one is
                    # answered with an error and holds nothing).
                    if length > self.limits.max_request_payload:
                        # "MAY initiate a hard disconnect if a payload length of either a
                        # request or a reply would be large enough to be deemed a denial of
                        # service attack" (section "Size constraints").
                        raise SessionEnded(f"NBD_CMD_READ of {length} bytes is above "
                                           "limits.max_request_payload")
                    await holds.enter_async_context(self._budget(length))
                if event is not NEED_DATA:
                    return event
                # The state machine bounded the payload by limits.max_request_payload.
                await holds.enter_async_context(self._budget(length))
                payload = bytearray(length)
                await self._read_into(memoryview(payload))
                self.conn.receive_data(payload)
        return await self._next()

    async def _fill(self, count: int) -> bool:
        try:
            return await self.stream.fill(count, self._timeout())
        except StreamTimeout:
            raise self._timed_out() from None

    async def _read_into(self, target: memoryview) -> None:
        try:
            await self.stream.read_into(target, self._timeout())
        except StreamTimeout:
            raise self._timed_out() from None


_READ_NAME = c.name_of(c.Cmd, READ)
_WRITE_NAME = c.name_of(c.Cmd, WRITE)
_HEADERS = {c.REQUEST_MAGIC: struct.Struct(">IHHQQI"),
            c.EXTENDED_REQUEST_MAGIC: struct.Struct(">IHHQQQ")}
"""Request header layouts by magic (section "Request message")."""


class ReferenceServer:
    """The server: listens, and runs a :class:`Session` per connection."""

    def __init__(self, config: ServerConfig, features: ServerFeatures = FULL,
                 faults: ServerFaults | None = None, keep_records: bool = True) -> None:
        self.config = config
        self.features = features
        self.faults = faults
        """Deliberate breaches of the spec (``serve --fault``); None for the healthy server."""
        self.registry = ExportRegistry(config.exports)
        self.ssl_context = server_ssl_context(config)
        self._server: asyncio.AbstractServer | None = None
        self._sessions: set[asyncio.Task[None]] = set()
        self.address = config.listen
        self.records: list[SessionRecord] = []
        """One record per finished connection, in the order they ended."""
        self.keep_records = keep_records
        """False for a long-running server (``serve``): records would grow without bound."""
        self.budget = MemoryBudget(config.limits.max_inflight_bytes)
        self.refused = 0
        """Connections closed at once because ``limits.max_connections`` were open."""

    async def start(self) -> None:
        """Open the exports and start listening; :attr:`address` has the real port."""
        for export in self.config.exports:
            self.registry.backend(export)  # open now: configuration errors surface at start
        listen = self.config.listen
        backlog = self.config.limits.listen_backlog
        loop = asyncio.get_running_loop()

        def protocol() -> Stream:
            return Stream(self._accept)

        if listen.kind == "unix":
            with contextlib.suppress(FileNotFoundError):
                os.unlink(listen.path)
            self._server = await loop.create_unix_server(protocol, listen.path, backlog=backlog)
        else:
            self._server = await loop.create_server(protocol, listen.host, listen.port,
                                                    backlog=backlog)
            port = self._server.sockets[0].getsockname()[1]
            self.address = listen.with_port(port)
        if self.config.port_file is not None and self.address.kind == "tcp":
            tmp = Path(f"{self.config.port_file}.tmp")
            tmp.write_text(f"{self.address.port}\n")
            tmp.replace(self.config.port_file)  # atomic: a watcher never reads half a number

    def _accept(self, stream: Stream) -> None:
        limit = self.config.limits.max_connections
        if len(self._sessions) >= limit:
            # A clean refusal: closed before the greeting, nothing else held.  A client
            # sees the connection end at once instead of waiting in a queue.
            self.refused += 1
            log.warning("refused a connection: %d connections open (limits.max_connections)",
                        limit)
            stream.close()
            return
        task = asyncio.get_running_loop().create_task(Session(self, stream).run())
        self._sessions.add(task)
        task.add_done_callback(self._sessions.discard)

    async def serve_forever(self) -> None:
        assert self._server is not None
        await self._server.serve_forever()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._sessions):
            task.cancel()
        if self._sessions:
            await asyncio.wait(list(self._sessions), timeout=5)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)
        if self.config.listen.kind == "unix":
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.config.listen.path)
        self.registry.close()

    async def __aenter__(self) -> ReferenceServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()
