"""The asyncio reference client: :class:`NbdClient`.

Thin I/O around ``Connection(Role.CLIENT)``: the handshake is
:mod:`harness.client.negotiate`; in transmission, one reader task takes every
reply off the socket and hands it, by cookie, to the future of the command
that waits for it, so any number of commands may be in flight at once
(``asyncio.gather(c.read(0, n), c.write(n, data))`` pipelines them).

Reads and writes larger than the maximum payload are split; every piece is
sent before any reply is awaited.  An error reply raises
:class:`NbdCommandError`; a reply that breaks the protocol raises the state
machine's :class:`~harness.protocol.RemoteProtocolError` and hard-closes the
connection; so does a reply that does not come within the timeout.

Below the happy path, for negative tests: :meth:`NbdClient.send_raw` writes
bytes the state machine never sees; :meth:`NbdClient.send_option` and
:meth:`NbdClient.send_request` with ``strict=False`` send what our own rules
forbid; :meth:`NbdClient.recv_event` returns the next decoded message that no
command of this client claims.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from types import TracebackType

from harness.address import Address, parse_address
from harness.protocol import Connection, Phase, ProtocolError
from harness.protocol import constants as c
from harness.protocol.codec import decode_chunk_payload, encode_block_status_payload
from harness.protocol.errors import CodecError
from harness.protocol.messages import (
    BlockStatusRequestPayload,
    ChunkBlockStatus,
    ChunkError,
    ChunkErrorOffset,
    ChunkOffsetData,
    ConnectionClosed,
    Event,
    Extent,
    OptionRequest,
    ReplyChunk,
    Request,
    SimpleReply,
)

from . import negotiate
from ._wire import Wire
from .errors import NbdClientError, NbdCommandError, NbdConnectionError, NbdTimeoutError
from .options import ConnectOptions, TlsMode, tls_context_for
from .records import ExportEntry, ExportInfo, Negotiation
from .uri import NbdUri, parse_uri

Target = str | NbdUri | Address

# Largest piece of a split read or write; the server's maximum payload can only lower it.
_MAX_PIECE = 32 * 1024 * 1024
# Largest effect length of one TRIM/WRITE_ZEROES/CACHE/BLOCK_STATUS request (fits 32 bits).
_MAX_RANGE = 1 << 30
# Pieces of one split call in flight at once.
_WINDOW = 8
# How long a polite disconnect waits for the server to close after NBD_CMD_DISC.
_DISC_TIMEOUT = 5.0


@dataclass
class _Pending:
    """A command awaiting its reply, and what its chunks said so far."""

    request: Request
    future: asyncio.Future[object]
    data: bytearray | None = None
    statuses: dict[int, tuple[Extent, ...]] = field(default_factory=dict)
    error: NbdCommandError | None = None


def _resolve_target(target: Target) -> tuple[Address, NbdUri | None]:
    if isinstance(target, NbdUri):
        return target.address, target
    if isinstance(target, Address):
        return target, None
    if target.startswith(("tcp://", "unix:")):
        return parse_address(target), None
    uri = parse_uri(target)
    return uri.address, uri


class NbdClient:
    """One NBD connection, negotiated by :meth:`connect`."""

    def __init__(
        self, wire: Wire, options: ConnectOptions, record: Negotiation, uri: NbdUri | None
    ) -> None:
        self._wire = wire
        self.options = options
        self.negotiation = record
        """Everything offered and negotiated (kept up to date by later options)."""
        self.uri = uri
        self._pending: dict[int, _Pending] = {}
        self._unclaimed: asyncio.Queue[Event | BaseException] = asyncio.Queue()
        self._reader: asyncio.Task[None] | None = None
        self._next_cookie = 1
        self._failure: BaseException | None = None

    # --- connecting --------------------------------------------------------------------

    @classmethod
    async def connect(cls, target: Target, *, options: ConnectOptions | None = None) -> NbdClient:
        """Connect to an NBD URI or a ``tcp://``/``unix:`` address and negotiate.

        With ``options.enter_transmission`` (the default) the client is in
        transmission when this returns; otherwise it stops in the option phase
        (see :meth:`enter_transmission`).  Raises :class:`NegotiationError` /
        :class:`TlsError` when the server refuses what is needed,
        :class:`~harness.protocol.RemoteProtocolError` when it breaks the
        protocol, :class:`NbdConnectionError` / :class:`NbdTimeoutError`.
        """
        options = options or ConnectOptions()
        address, uri = _resolve_target(target)
        tls_mode: TlsMode = options.tls or ("require" if uri and uri.tls_required else "off")
        if uri is not None and uri.tls_required and tls_mode != "require":
            raise NbdClientError(f"{uri.scheme}:// requires TLS, but tls={tls_mode!r} was asked")
        tls_context = options.tls_context
        if tls_mode != "off" and tls_context is None:
            tls_context = tls_context_for(uri)
        server_hostname = options.tls_hostname or (uri.server_hostname if uri else None)
        if server_hostname is None and address.kind == "tcp":
            server_hostname = address.host
        export = options.export_name
        if export is None:
            export = uri.export if uri else ""
        wire = await Wire.open(
            address,
            connect_timeout=options.connect_timeout,
            timeout=options.timeout,
            strict_remote=options.strict_remote,
        )
        client = cls(wire, options, Negotiation(export_name=export), uri)
        try:
            await negotiate.handshake(
                wire,
                options,
                client.negotiation,
                tls_mode=tls_mode,
                tls_context=tls_context,
                server_hostname=server_hostname,
            )
            if options.enter_transmission or wire.conn.phase is Phase.TRANSMISSION:
                await client.enter_transmission(export)
        except BaseException:
            await client._close_after_failure()
            raise
        return client

    async def enter_transmission(self, export: str | None = None) -> None:
        """Select ``export`` (default: the one asked for at connect) and start transmission.

        Sends ``NBD_OPT_SET_META_CONTEXT`` for ``options.meta_contexts`` and then
        ``NBD_OPT_GO`` (or ``NBD_OPT_EXPORT_NAME``), with the fallbacks of
        :mod:`harness.client.negotiate`.
        """
        if export is None:
            export = self.negotiation.export_name
        await negotiate.select_export(self._wire, self.options, self.negotiation, export)
        self._start_reader()

    def _start_reader(self) -> None:
        if self._reader is None and self._wire.conn.phase is Phase.TRANSMISSION:
            self._reader = asyncio.get_running_loop().create_task(
                self._read_loop(), name="nbd-client-reader"
            )

    # --- the option phase ----------------------------------------------------------------

    async def list_exports(self) -> list[ExportEntry]:
        """``NBD_OPT_LIST`` (option phase only): export names and descriptions."""
        return await negotiate.list_exports(self._wire, self.negotiation)

    async def list_meta_contexts(
        self, export: str | None = None, queries: Iterable[str] = ()
    ) -> list[str]:
        """``NBD_OPT_LIST_META_CONTEXT`` (option phase only); no queries lists them all."""
        name = self.negotiation.export_name if export is None else export
        return await negotiate.list_meta_contexts(
            self._wire, self.negotiation, name, tuple(queries)
        )

    async def info(
        self, export: str | None = None, info_requests: Iterable[int] | None = None
    ) -> ExportInfo:
        """``NBD_OPT_INFO`` (option phase only) for ``export`` (default: the connect one)."""
        name = self.negotiation.export_name if export is None else export
        wanted = self.options.go_info_requests() if info_requests is None else tuple(info_requests)
        return await negotiate.export_info(self._wire, self.negotiation, name, wanted)

    # --- state ----------------------------------------------------------------------------

    @property
    def connection(self) -> Connection:
        """The sans-IO state machine (its ``negotiated``, ``violations``, ``phase``)."""
        return self._wire.conn

    @property
    def phase(self) -> Phase:
        return self._wire.conn.phase

    @property
    def closed(self) -> bool:
        return self._wire.closed

    @property
    def export_size(self) -> int:
        size = self._wire.conn.negotiated.export_size
        if size is None:
            raise NbdClientError("no export selected yet")
        return size

    @property
    def contexts(self) -> dict[str, int]:
        """Selected metadata contexts, name -> id."""
        return {name: cid for cid, name in self._wire.conn.negotiated.meta_contexts.items()}

    @property
    def max_piece(self) -> int:
        """Largest read/write request this client sends (the server's maximum payload)."""
        neg = self._wire.conn.negotiated
        limit = min(neg.max_payload, _MAX_PIECE)
        return max(limit - limit % neg.min_block, neg.min_block)

    def can(self, flag: c.TransmissionFlag) -> bool:
        """Whether the server advertised transmission flag ``flag``."""
        return self._wire.conn.negotiated.has(flag)

    # --- transmission: the reader -------------------------------------------------------

    async def _read_loop(self) -> None:
        try:
            while True:
                event = await self._wire.next_event(None)
                if isinstance(event, ConnectionClosed):
                    self._fail_all(NbdConnectionError("the server closed the connection"))
                    self._unclaimed.put_nowait(event)
                    return
                if not self._dispatch(event):
                    self._unclaimed.put_nowait(event)
        except asyncio.CancelledError:
            self._fail_all(NbdConnectionError("the connection was closed"))
            raise
        except BaseException as exc:  # a protocol violation, or the socket failed
            self._wire.abort(exc)
            self._fail_all(exc)
            self._unclaimed.put_nowait(exc)

    def _fail_all(self, exc: BaseException) -> None:
        if self._failure is None:
            self._failure = exc
        for pending in self._pending.values():
            if not pending.future.done():
                pending.future.set_exception(exc)
        self._pending.clear()

    def _dispatch(self, event: Event) -> bool:
        """Give a reply to the command waiting for it; False when none is."""
        if not isinstance(event, SimpleReply | ReplyChunk):
            return False
        pending = self._pending.get(event.cookie)
        if pending is None:
            return False
        req = pending.request
        if isinstance(event, SimpleReply):
            del self._pending[event.cookie]
            if event.error:
                pending.future.set_exception(NbdCommandError(req.type, event.error))
            else:
                pending.future.set_result(event.data if req.type == c.Cmd.READ else None)
            return True
        try:
            payload = decode_chunk_payload(event.type, event.payload)
        except CodecError as exc:  # only reachable with strict_remote=False
            payload = None
            pending.error = pending.error or NbdCommandError(req.type, c.Errno.EIO, str(exc))
        match payload:
            case ChunkOffsetData(offset=offset, data=data) if pending.data is not None:
                start = offset - req.offset
                pending.data[start : start + len(data)] = data
            case ChunkBlockStatus(context_id=cid, extents=extents):
                pending.statuses[cid] = extents
            case ChunkError(error=errno, message=message):
                pending.error = pending.error or NbdCommandError(req.type, errno, message)
            case ChunkErrorOffset(error=errno, message=message, offset=offset):
                pending.error = pending.error or NbdCommandError(req.type, errno, message, offset)
            # OFFSET_HOLE: the buffer already holds zeroes.
        if event.done:
            del self._pending[event.cookie]
            if pending.error is not None:
                pending.future.set_exception(pending.error)
            elif req.type == c.Cmd.READ:
                pending.future.set_result(bytes(pending.data or b""))
            elif req.type == c.Cmd.BLOCK_STATUS:
                pending.future.set_result(dict(pending.statuses))
            else:
                pending.future.set_result(None)
        return True

    # --- transmission: issuing commands -------------------------------------------------

    def _cookie(self) -> int:
        while True:
            cookie = self._next_cookie
            self._next_cookie = (self._next_cookie + 1) & 0xFFFFFFFFFFFFFFFF or 1
            if cookie not in self._pending and cookie not in self._wire.conn.in_flight:
                return cookie

    def _check_usable(self) -> None:
        if self._failure is not None:
            raise NbdConnectionError(f"the connection has failed: {self._failure}")
        if self._reader is None:
            raise NbdClientError(
                f"not in transmission ({self._wire.conn.phase.value}): call enter_transmission()"
            )

    def _issue(
        self,
        cmd: int,
        offset: int = 0,
        length: int = 0,
        flags: int = 0,
        payload: bytes = b"",
    ) -> _Pending:
        """Send one request now (no await between state machine and socket)."""
        self._check_usable()
        extended = self._wire.conn.negotiated.extended_headers
        # Only a compact WRITE carries a payload without the flag; anything else with a
        # payload says so, and the state machine refuses it without extended headers.
        if payload and (extended or cmd != c.Cmd.WRITE):
            flags |= c.CmdFlag.PAYLOAD_LEN
        request = Request(
            type=cmd,
            offset=offset,
            length=len(payload) if payload else length,
            cookie=self._cookie(),
            flags=flags,
            payload=payload,
            extended=extended,
        )
        future: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        pending = _Pending(request, future)
        if cmd == c.Cmd.READ:
            pending.data = bytearray(length)
        self._wire.write_event(request)  # raises LocalProtocolError: nothing sent
        self._pending[request.cookie] = pending
        return pending

    async def _await(self, pendings: list[_Pending]) -> list[object]:
        """Wait for every reply; the first failure is raised once all have settled."""
        if not pendings:
            return []
        await self._wire.drain()
        futures = [p.future for p in pendings]
        try:
            async with asyncio.timeout(self._wire.timeout):
                results = await asyncio.gather(*futures, return_exceptions=True)
        except TimeoutError:
            error = NbdTimeoutError(
                f"no reply to {c.name_of(c.Cmd, pendings[0].request.type)} within "
                f"{self._wire.timeout:g} s; connection closed"
            )
            self._wire.abort(error)
            self._fail_all(error)
            for future in futures:
                if future.done() and not future.cancelled():
                    future.exception()  # retrieved: no "never retrieved" warning
            raise error from None
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return results

    async def _pieces(self, specs: list[tuple[int, int, int, bytes]], cmd: int) -> list[object]:
        """Issue ``(offset, length, flags, payload)`` requests, ``_WINDOW`` at a time."""
        results: list[object] = []
        for start in range(0, len(specs), _WINDOW):
            batch: list[_Pending] = []
            try:
                for offset, length, flags, payload in specs[start : start + _WINDOW]:
                    batch.append(self._issue(cmd, offset, length, flags, payload))
            except BaseException:
                # A piece broke a local rule: let those already sent finish first.
                with contextlib.suppress(Exception):
                    await self._await(batch)
                raise
            results += await self._await(batch)
        return results

    @staticmethod
    def _split(offset: int, length: int, piece: int) -> list[tuple[int, int]]:
        out = []
        end = offset + length
        while offset < end:
            size = min(piece, end - offset)
            out.append((offset, size))
            offset += size
        return out

    def _range_piece(self) -> int:
        min_block = self._wire.conn.negotiated.min_block
        return _MAX_RANGE - _MAX_RANGE % min_block

    async def read(self, offset: int, length: int, *, flags: int = 0) -> bytes:
        """``NBD_CMD_READ``: ``length`` bytes at ``offset`` (holes read as zeroes)."""
        if length == 0:
            return b""
        specs = [(o, n, flags, b"") for o, n in self._split(offset, length, self.max_piece)]
        parts = await self._pieces(specs, c.Cmd.READ)
        return b"".join(p for p in parts if isinstance(p, bytes))

    async def write(self, offset: int, data: bytes, *, fua: bool = False) -> None:
        """``NBD_CMD_WRITE`` of ``data`` at ``offset`` (split at the maximum payload)."""
        flags = c.CmdFlag.FUA if fua else 0
        view = memoryview(data)
        specs = [
            (o, n, flags, bytes(view[o - offset : o - offset + n]))
            for o, n in self._split(offset, len(data), self.max_piece)
        ]
        await self._pieces(specs, c.Cmd.WRITE)

    async def flush(self) -> None:
        """``NBD_CMD_FLUSH``."""
        await self._await([self._issue(c.Cmd.FLUSH)])

    async def trim(self, offset: int, length: int, *, fua: bool = False) -> None:
        """``NBD_CMD_TRIM``."""
        flags = c.CmdFlag.FUA if fua else 0
        specs = [(o, n, flags, b"") for o, n in self._split(offset, length, self._range_piece())]
        await self._pieces(specs, c.Cmd.TRIM)

    async def cache(self, offset: int, length: int) -> None:
        """``NBD_CMD_CACHE``."""
        specs = [(o, n, 0, b"") for o, n in self._split(offset, length, self._range_piece())]
        await self._pieces(specs, c.Cmd.CACHE)

    async def write_zeroes(
        self,
        offset: int,
        length: int,
        *,
        no_hole: bool = False,
        fast_zero: bool = False,
        fua: bool = False,
    ) -> None:
        """``NBD_CMD_WRITE_ZEROES`` with ``NBD_CMD_FLAG_NO_HOLE``/``FAST_ZERO``/``FUA``."""
        flags = (
            (c.CmdFlag.NO_HOLE if no_hole else 0)
            | (c.CmdFlag.FAST_ZERO if fast_zero else 0)
            | (c.CmdFlag.FUA if fua else 0)
        )
        specs = [(o, n, flags, b"") for o, n in self._split(offset, length, self._range_piece())]
        await self._pieces(specs, c.Cmd.WRITE_ZEROES)

    async def block_status(
        self,
        offset: int,
        length: int,
        *,
        req_one: bool = False,
        context_ids: Iterable[int] | None = None,
    ) -> dict[str, list[Extent]]:
        """``NBD_CMD_BLOCK_STATUS``: context name -> extents from ``offset``.

        ``context_ids`` selects contexts with the extended-headers payload form
        (needs ``NBD_FLAG_BLOCK_STATUS_PAYLOAD``).  The server may describe less
        than ``length`` (or, without ``req_one``, a little more).
        """
        flags = c.CmdFlag.REQ_ONE if req_one else 0
        payload = b""
        if context_ids is not None:
            payload = encode_block_status_payload(
                BlockStatusRequestPayload(length, tuple(context_ids))
            )
        (result,) = await self._await(
            [self._issue(c.Cmd.BLOCK_STATUS, offset, length, flags, payload)]
        )
        assert isinstance(result, dict)
        names = self._wire.conn.negotiated.meta_contexts
        return {names.get(cid, str(cid)): list(extents) for cid, extents in result.items()}

    async def map(
        self, context: str = c.BASE_ALLOCATION, offset: int = 0, length: int | None = None
    ) -> list[tuple[int, int, int]]:
        """``(offset, length, flags)`` of ``context`` over a range, like ``nbdinfo --map``.

        Walks the range with repeated block status requests, clips the last
        extent to the range and merges neighbours with equal flags.
        """
        if context not in self.contexts:
            selected = ", ".join(self.contexts) or "none"
            raise NbdClientError(
                f"metadata context {context!r} was not negotiated (selected: {selected})"
            )
        end = self.export_size if length is None else offset + length
        out: list[tuple[int, int, int]] = []
        pos = offset
        while pos < end:
            status = await self.block_status(pos, min(end - pos, self._range_piece()))
            extents = status.get(context)
            if not extents:
                raise NbdClientError(f"block status at {pos} returned no extents for {context}")
            for extent in extents:
                size = min(extent.length, end - pos)
                if size <= 0:  # only a lenient (strict_remote=False) client gets here
                    raise NbdClientError(f"block status at {pos}: extent of length 0")
                if out and out[-1][2] == extent.flags and out[-1][0] + out[-1][1] == pos:
                    out[-1] = (out[-1][0], out[-1][1] + size, extent.flags)
                else:
                    out.append((pos, size, extent.flags))
                pos += size
                if pos >= end:
                    break
        return out

    # --- below the happy path -----------------------------------------------------------

    async def send_raw(self, data: bytes) -> None:
        """Write bytes straight to the socket; the state machine never sees them."""
        self._wire.write_raw(data)
        await self._wire.drain()

    async def send_option(self, request: OptionRequest, *, strict: bool = True) -> None:
        """Send an option through the state machine (``strict=False``: even a forbidden one).

        Read the replies with :meth:`recv_event`.
        """
        await self._wire.send(request, strict=strict)

    async def send_request(self, request: Request, *, strict: bool = True) -> None:
        """Send a request as given (cookie included); read its replies with :meth:`recv_event`."""
        await self._wire.send(request, strict=strict)

    async def recv_event(self, timeout: float | None = None) -> Event:
        """The next decoded message from the server that no command of ours claimed.

        In the option phase this reads the socket; in transmission it takes the
        next reply the reader task could not match to a command.  A protocol
        violation raises :class:`~harness.protocol.RemoteProtocolError`.
        """
        timeout = self._wire.timeout if timeout is None else timeout
        if self._reader is None:
            event = await self._wire.next_event(timeout)
            self._start_reader()
            return event
        try:
            async with asyncio.timeout(timeout):
                item = await self._unclaimed.get()
        except TimeoutError:
            raise NbdTimeoutError(f"no message from the server within {timeout:g} s") from None
        if isinstance(item, BaseException):
            self._unclaimed.put_nowait(item)  # every later call fails the same way
            raise item
        return item

    # --- closing ----------------------------------------------------------------------------

    async def disconnect(self) -> None:
        """End the session politely, then close the socket.

        In transmission: wait for outstanding commands, send ``NBD_CMD_DISC``
        and wait (briefly) for the server to close.  In the option phase: send
        ``NBD_OPT_ABORT``.  Otherwise, or after a failure: just close.
        """
        wire = self._wire
        try:
            if wire.closed or self._failure is not None:
                return
            if wire.conn.phase is Phase.OPTIONS:
                await negotiate.abort(wire, self.negotiation)
            elif wire.conn.phase is Phase.TRANSMISSION and self._reader is not None:
                outstanding = [p.future for p in self._pending.values()]
                if outstanding:
                    with contextlib.suppress(TimeoutError, Exception):
                        async with asyncio.timeout(wire.timeout):
                            await asyncio.gather(*outstanding, return_exceptions=True)
                extended = wire.conn.negotiated.extended_headers
                with contextlib.suppress(ProtocolError, NbdClientError, OSError):
                    await wire.send(
                        Request(type=c.Cmd.DISC, cookie=self._cookie(), extended=extended)
                    )
                    # Half-close as libnbd does: some servers (nbdkit 1.42+) keep the
                    # connection until the client's side ends, instead of closing first.
                    wire.write_eof()
                    async with asyncio.timeout(min(wire.timeout, _DISC_TIMEOUT)):
                        await asyncio.shield(self._reader)
        except (TimeoutError, ProtocolError, NbdClientError, OSError):
            pass
        finally:
            await self.close()

    async def close(self) -> None:
        """Close the socket now (no ``NBD_CMD_DISC``) and stop the reader."""
        if self._reader is not None and not self._reader.done():
            self._reader.cancel()
            with contextlib.suppress(BaseException):
                await self._reader
        await self._wire.close()
        self._fail_all(NbdConnectionError("the connection was closed"))

    async def _close_after_failure(self) -> None:
        if not self._wire.closed and self._wire.conn.phase is Phase.OPTIONS:
            with contextlib.suppress(Exception):
                await negotiate.abort(self._wire, self.negotiation)
        await self.close()

    async def __aenter__(self) -> NbdClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.disconnect()

    @property
    def tls_version(self) -> str | None:
        """The TLS version in use (``TLSv1.3``), or None in the clear."""
        return self._wire.tls_version


__all__ = ["NbdClient", "Target"]
