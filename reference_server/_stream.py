"""One connection's bytes, without needless copies: an asyncio ``BufferedProtocol``.

asyncio's ``StreamReader`` copies every byte three times (``recv`` into a new
``bytes``, that into its buffer, a slice out of it).  :class:`Stream` lets the
transport receive straight into memory we own: small messages (headers,
options) land in one preallocated staging buffer, and a request payload can be
received directly into the caller's buffer (:meth:`Stream.read_into`).  Writes
go to the transport, which sends at once and copies only what the socket did
not take, so a caller may reuse its buffer as soon as :meth:`Stream.write`
returns.

Reading is flow-controlled: when the staging buffer is full of unread bytes
(a client pipelining faster than we answer), the transport stops reading until
the session consumes some.  Every wait has a timeout.
"""

from __future__ import annotations

import asyncio
import struct
from asyncio import selector_events
from collections.abc import Callable
from typing import Any

STAGING = 1 << 20
"""Largest staging buffer: many pipelined request headers, or a few small writes."""
FIRST_STAGING = 64 * 1024
"""The staging buffer a connection starts with: it grows (doubling, up to
:data:`STAGING`) only when the client sends faster than the session consumes, so
a thousand idle or handshaking connections hold little memory."""
WRITE_HIGH_WATER = 1 << 20
"""Unsent reply bytes the transport may hold before :meth:`Stream.drain` waits."""
HOLD_LIMIT = 4096
"""Bytes of small replies :meth:`Stream.hold` keeps back at most."""


class StreamClosed(Exception):
    """The peer closed the connection (or it broke) before the bytes we need arrived."""


class StreamTimeout(TimeoutError):
    """No bytes arrived within the timeout."""


class Stream(asyncio.BufferedProtocol):
    """The protocol of one connection; ``on_connect(stream)`` starts its session."""

    def __init__(self, on_connect: Callable[[Stream], Any]) -> None:
        self._on_connect = on_connect
        self.transport: asyncio.Transport | None = None
        self._loop = asyncio.get_running_loop()
        self._staging = bytearray(FIRST_STAGING)
        self._view = memoryview(self._staging)
        self._start = 0  # unread bytes are staging[_start:_end]
        self._end = 0
        self._target: memoryview | None = None  # receive straight into this, when set
        self._target_filled = 0
        self._eof = False
        self._lost: BaseException | None = None
        self._reading_paused = False
        self._waiter: asyncio.Future[None] | None = None
        self._writing_paused = False
        self._drain_waiter: asyncio.Future[None] | None = None
        self._owns_writes = False  # see copies_on_write()
        self._held: list[bytes] = []
        self._held_bytes = 0
        self._closed = self._loop.create_future()

    # --- asyncio protocol callbacks ------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass
        self._owns_writes = copies_on_write(transport)
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
        self._on_connect(self)

    def get_buffer(self, sizehint: int) -> memoryview:
        if self._target is not None:
            return self._target[self._target_filled :]
        if len(self._staging) - self._end < self._min_free:
            self._compact()
        return self._view[self._end :]

    @property
    def _min_free(self) -> int:
        """Below this much free staging space the buffer grows, or reading pauses."""
        return len(self._staging) // 16

    def buffer_updated(self, nbytes: int) -> None:
        if self._target is not None:
            self._target_filled += nbytes
            if self._target_filled < len(self._target):
                return
            self._target = None
        else:
            self._end += nbytes
            if len(self._staging) - (self._end - self._start) < self._min_free:
                if len(self._staging) < STAGING:
                    self._grow()
                else:
                    self._pause_reading()
        self._wake()

    def eof_received(self) -> bool:
        self._eof = True
        self._wake()
        # Keep a plain socket half-open: the replies to requests sent before the client's
        # shutdown(SHUT_WR) still go out.  A TLS transport cannot stay half-open.
        return self.get_extra_info("sslcontext") is None

    def connection_lost(self, exc: Exception | None) -> None:
        self._eof = True
        self._lost = exc
        self._wake()
        if self._drain_waiter is not None and not self._drain_waiter.done():
            self._drain_waiter.set_result(None)
        if not self._closed.done():
            self._closed.set_result(None)

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        if self._drain_waiter is not None and not self._drain_waiter.done():
            self._drain_waiter.set_result(None)

    # --- reading ----------------------------------------------------------------------

    @property
    def available(self) -> int:
        """Bytes received and not yet consumed."""
        return self._end - self._start

    async def fill(self, count: int, timeout: float) -> bool:
        """Wait until ``count`` unread bytes are buffered; False if the peer closed first.

        ``count`` is small (a header): it always fits in the staging buffer.
        ``timeout`` bounds the whole wait, not the silence between two bytes.
        """
        deadline = None
        while self._end - self._start < count:
            if self._eof:
                return False
            if len(self._staging) - self._start < count:
                self._compact()
            if deadline is None:
                deadline = self._loop.time() + timeout
            await self._wait(deadline - self._loop.time())
        return True

    def peek_u32(self) -> int:
        """The big-endian 32-bit number at the front of the unread bytes (4 buffered)."""
        return _U32.unpack_from(self._staging, self._start)[0]

    def peek(self, layout: struct.Struct) -> tuple[Any, ...]:
        """The fields of the next ``layout.size`` buffered bytes, without consuming them."""
        return layout.unpack_from(self._staging, self._start)

    def take(self, count: int) -> bytes:
        """A copy of the next ``count`` buffered bytes, consumed."""
        data = bytes(self._view[self._start : self._start + count])
        self.consume(count)
        return data

    async def read_some(self, timeout: float) -> bytes:
        """Everything buffered (at least one byte), or ``b""`` once the peer has closed."""
        if self._end == self._start:
            if self._eof:
                return b""
            await self._wait(timeout)
            if self._end == self._start:
                return b""
        data = bytes(self._view[self._start : self._end])
        self.consume(self._end - self._start)
        return data

    async def read_into(self, target: memoryview, timeout: float) -> None:
        """Fill all of ``target`` with the next bytes of the stream, within ``timeout`` in all."""
        buffered = min(self._end - self._start, len(target))
        if buffered:
            target[:buffered] = self._view[self._start : self._start + buffered]
            self.consume(buffered)
        if buffered == len(target):
            return
        if self._eof:
            raise StreamClosed(self._closed_message())
        # The staging buffer is empty now: the transport receives into target directly.
        self._target = target[buffered:]
        self._target_filled = 0
        self._resume_reading()
        deadline = self._loop.time() + timeout
        try:
            while self._target is not None:
                if self._eof:
                    raise StreamClosed(self._closed_message())
                await self._wait(deadline - self._loop.time())
        finally:
            self._target = None

    def consume(self, count: int) -> None:
        """Drop ``count`` buffered bytes (already read with :meth:`peek`)."""
        self._start += count
        if self._start == self._end:
            self._start = self._end = 0
        if (self._reading_paused
                and len(self._staging) - (self._end - self._start) >= self._min_free):
            self._resume_reading()

    def _grow(self) -> None:
        """Double the staging buffer, keeping the unread bytes (moved to its start)."""
        unread = self._end - self._start
        grown = bytearray(min(2 * len(self._staging), STAGING))
        grown[:unread] = self._view[self._start : self._end]
        self._staging, self._view = grown, memoryview(grown)
        self._start, self._end = 0, unread

    def _compact(self) -> None:
        unread = self._end - self._start
        if self._start:
            self._staging[:unread] = self._view[self._start : self._end]
            self._start, self._end = 0, unread

    def _closed_message(self) -> str:
        if self._lost is not None:
            return f"connection lost: {self._lost}"
        return "client closed the connection"

    async def _wait(self, timeout: float) -> None:
        if timeout <= 0:
            raise StreamTimeout()
        self.flush()  # never keep replies back while waiting for the client
        self._resume_reading()
        waiter = self._waiter = self._loop.create_future()
        timer = self._loop.call_later(timeout, _time_out, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiter = None

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _pause_reading(self) -> None:
        if not self._reading_paused and self.transport is not None:
            self._reading_paused = True
            self.transport.pause_reading()

    def _resume_reading(self) -> None:
        if self._reading_paused and self.transport is not None:
            self._reading_paused = False
            self.transport.resume_reading()

    # --- writing ----------------------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Queue ``data``; the caller may reuse its buffer once this returns."""
        assert self.transport is not None
        if self._held:
            self.flush()
        # A transport that may keep a reference to ``data`` gets a copy: the caller reuses it.
        self.transport.write(data if self._owns_writes else bytes(data))

    def hold(self, reply: bytes) -> None:
        """Keep a small reply back, to go out with the next ones in one send.

        For pipelined writes: their 16-byte replies would otherwise cost a
        system call (and a TCP segment) each.  :meth:`write`, :meth:`flush`,
        :meth:`drain`, :meth:`close` and any wait for the client send what is
        held, in order.
        """
        self._held.append(reply)
        self._held_bytes += len(reply)
        if self._held_bytes >= HOLD_LIMIT:
            self.flush()

    def flush(self) -> None:
        """Send the replies :meth:`hold` kept back."""
        if self._held:
            assert self.transport is not None
            held, self._held, self._held_bytes = self._held, [], 0
            self.transport.write(b"".join(held))

    async def drain(self, timeout: float) -> None:
        """Send what is held; wait while the transport holds more than its high-water mark."""
        self.flush()
        if self._writing_paused and not self._eof:
            waiter = self._drain_waiter = self._loop.create_future()
            timer = self._loop.call_later(timeout, _time_out, waiter)
            try:
                await waiter
            finally:
                timer.cancel()
                self._drain_waiter = None
        if self._lost is not None:
            raise ConnectionResetError(str(self._lost))

    # --- life cycle -------------------------------------------------------------------

    def get_extra_info(self, name: str) -> Any:
        assert self.transport is not None
        return self.transport.get_extra_info(name)

    async def start_tls(self, context: Any) -> None:
        """Upgrade to TLS as the server (after ``NBD_OPT_STARTTLS``)."""
        assert self.transport is not None
        self.transport = await self._loop.start_tls(
            self.transport, self, context, server_side=True
        )
        self._owns_writes = copies_on_write(self.transport)

    def close(self) -> None:
        """Send what is held, then close (the transport sends what it buffered first)."""
        if self.transport is not None and not self.transport.is_closing():
            self.flush()
            self.transport.close()

    def abort(self) -> None:
        """Close at once, dropping what the transport has not sent."""
        if self.transport is not None:
            self.transport.abort()

    async def wait_closed(self) -> None:
        await self._closed


_U32 = struct.Struct(">I")


def copies_on_write(transport: object) -> bool:
    """True when ``transport.write(data)`` never keeps a reference to ``data``.

    asyncio's own plain socket transport sends at once and copies the rest into
    its buffer.  Its TLS transport keeps the object in a backlog until the TLS
    layer takes it, and uvloop queues it until the loop iteration ends: for
    those, :meth:`Stream.write` passes a copy.
    """
    return type(transport) is selector_events._SelectorSocketTransport


def _time_out(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(StreamTimeout())
