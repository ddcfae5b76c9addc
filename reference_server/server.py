"""The reference NBD server: asyncio I/O around the sans-IO protocol package.

``ReferenceServer(config)`` listens where the config says (TCP with a
kernel-chosen port by default, or a unix socket) and runs one
:class:`Session` per connection.  Each session drives a server-role
:class:`~harness.protocol.Connection`, which judges everything the client
sends; the answers come from :mod:`._options` and :mod:`._commands`.  In
transmission, reads and writes that break no rule take :mod:`._fastpath`
(same rules, no message objects, no extra copies); everything else goes
through the state machine.  Bytes move through :mod:`._stream`.
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

from ._commands import Executor
from ._fastpath import READ, WRITE, FastPath
from ._options import OptionContext, answer_option, export_needs_tls, transmission_flags
from ._stream import Stream, StreamClosed, StreamTimeout
from .config import ExportConfig, ServerConfig
from .faults import ServerFaults
from .features import FULL, ServerFeatures
from .storage import ExportRegistry

log = logging.getLogger("nbd-harness.server")

HANDSHAKE_TIMEOUT = 60.0
IDLE_TIMEOUT = 3600.0
MAX_REQUEST_PAYLOAD = 64 << 20
"""Twice the 2^25 bytes the spec says no one should treat as a denial of service."""


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
        # A request payload above MAX_REQUEST_PAYLOAD ends the session (hard disconnect)
        # instead of being buffered: a hostile client cannot make us hold 4 GiB.
        self.faults = server.faults  # None unless `serve --fault`: then we may send what is wrong
        self.conn = Connection(Role.SERVER, strict_remote=False, strict_local=self.faults is None,
                               max_payload=MAX_REQUEST_PAYLOAD)
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
            self.server.records.append(self.record)
            self.stream.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.stream.wait_closed(), 5)

    # --- I/O -------------------------------------------------------------------------

    async def _next(self, timeout: float) -> Event:
        while True:
            event = self.conn.next_event()
            if event is not NEED_DATA:
                if isinstance(event, ConnectionClosed):
                    raise SessionEnded("client closed the connection")
                return event  # type: ignore[return-value]
            try:
                data = await self.stream.read_some(timeout)
            except StreamTimeout:
                raise SessionEnded(f"client idle for {timeout:.0f} s") from None
            self.conn.receive_data(data)

    async def _send(self, *events: Event) -> None:
        for event in events:
            self.stream.write(self.conn.send(event))
        await self._drain()

    async def _drain(self) -> None:
        try:
            await self.stream.drain(IDLE_TIMEOUT)
        except StreamTimeout:
            raise SessionEnded(f"client read no reply for {IDLE_TIMEOUT:.0f} s") from None

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
        client_flags = await self._next(HANDSHAKE_TIMEOUT)
        assert isinstance(client_flags, ClientFlags)
        if self.conn.last_violations:
            # "the server MUST close the TCP connection if it does not recognize the
            # client's flags".
            raise SessionEnded(self.conn.last_violations[0].message)
        if self.faults is not None:
            self.faults.after_client_flags()
        while True:
            event = await self._next(HANDSHAKE_TIMEOUT)
            assert isinstance(event, OptionRequest)
            outcome = None if self.faults is None else await self.faults.on_option(self, event)
            if outcome is None and event.option == c.Opt.EXPORT_NAME:
                return await self._export_name()
            if outcome is None:
                outcome = answer_option(self._option_context(), event, self.conn.last_violations)
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
            await asyncio.wait_for(self.stream.start_tls(context), HANDSHAKE_TIMEOUT)
        except (ssl.SSLError, TimeoutError, ConnectionError) as exc:
            # "If the handshake is unsuccessful ... the server MUST terminate the session".
            raise SessionEnded(f"TLS handshake failed: {exc}") from None
        self.conn.start_tls_done()

    # --- transmission ------------------------------------------------------------------

    async def _transmission(self, export: ExportConfig) -> None:
        neg = self.conn.negotiated
        backend = self.server.registry.backend(export)
        executor = Executor(neg, export, backend, self.server.features.quirks)
        fast = FastPath(neg, backend, executor, MAX_REQUEST_PAYLOAD)
        while True:
            if self.faults is None and await self._serve_fast(fast):
                continue
            event = await self._next_request()
            assert isinstance(event, Request)
            self.record.commands[c.name_of(c.Cmd, event.type)] += 1
            if event.type == c.Cmd.DISC:
                backend.flush()
                raise SessionEnded("client sent NBD_CMD_DISC")
            if self.faults is not None and await self.faults.on_request(self, event, executor):
                continue
            replies = executor.execute(event, self.conn.last_violations)
            await self._send(*replies)
            if self.conn.phase is Phase.CLOSED:
                return

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
        if cmd == WRITE:
            self.record.commands[_WRITE_NAME] += 1
            payload = fast.payload_buffer(length)
            await self._read_into(payload)
            stream.hold(fast.write(flags, cookie, offset, payload))
            if stream.available >= fast.header.size:
                return True  # the next request is here: its reply can join this one
        else:
            self.record.commands[_READ_NAME] += 1
            stream.write(fast.read(flags, cookie, offset, length))
        await self._drain()
        return True

    async def _next_request(self) -> Event:
        """The next request, judged by the state machine.

        It is fed exactly the request's bytes (the header, then the payload if the
        state machine asks for one: ``length`` bytes in both header styles), so the
        request after a bad one can take the fast path again.  An unknown magic or
        the end of the stream: everything goes to the state machine, which says so.
        """
        stream = self.stream
        if not self.conn.buffered and await self._fill(4):
            layout = _HEADERS.get(stream.peek_u32())
            if layout is not None and await self._fill(layout.size):
                length = stream.peek(layout)[-1]
                self.conn.receive_data(stream.take(layout.size))
                event = self.conn.next_event()
                if event is not NEED_DATA:
                    return event
                payload = bytearray(length)  # the state machine bounded it: MAX_REQUEST_PAYLOAD
                await self._read_into(memoryview(payload))
                self.conn.receive_data(payload)
        return await self._next(IDLE_TIMEOUT)

    async def _fill(self, count: int) -> bool:
        try:
            return await self.stream.fill(count, IDLE_TIMEOUT)
        except StreamTimeout:
            raise SessionEnded(f"client idle for {IDLE_TIMEOUT:.0f} s") from None

    async def _read_into(self, target: memoryview) -> None:
        try:
            await self.stream.read_into(target, IDLE_TIMEOUT)
        except StreamTimeout:
            raise SessionEnded(f"client idle for {IDLE_TIMEOUT:.0f} s") from None


_READ_NAME = c.name_of(c.Cmd, READ)
_WRITE_NAME = c.name_of(c.Cmd, WRITE)
_HEADERS = {c.REQUEST_MAGIC: struct.Struct(">IHHQQI"),
            c.EXTENDED_REQUEST_MAGIC: struct.Struct(">IHHQQQ")}
"""Request header layouts by magic (section "Request message")."""


class ReferenceServer:
    """The server: listens, and runs a :class:`Session` per connection."""

    def __init__(self, config: ServerConfig, features: ServerFeatures = FULL,
                 faults: ServerFaults | None = None) -> None:
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

    async def start(self) -> None:
        """Open the exports and start listening; :attr:`address` has the real port."""
        for export in self.config.exports:
            self.registry.backend(export)  # open now: configuration errors surface at start
        listen = self.config.listen
        loop = asyncio.get_running_loop()

        def protocol() -> Stream:
            return Stream(self._accept)

        if listen.kind == "unix":
            with contextlib.suppress(FileNotFoundError):
                os.unlink(listen.path)
            self._server = await loop.create_unix_server(protocol, listen.path)
        else:
            self._server = await loop.create_server(protocol, listen.host, listen.port)
            port = self._server.sockets[0].getsockname()[1]
            self.address = listen.with_port(port)
        if self.config.port_file is not None and self.address.kind == "tcp":
            tmp = Path(f"{self.config.port_file}.tmp")
            tmp.write_text(f"{self.address.port}\n")
            tmp.replace(self.config.port_file)  # atomic: a watcher never reads half a number

    def _accept(self, stream: Stream) -> None:
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
