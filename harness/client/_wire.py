"""The client's socket: asyncio streams around one sans-IO :class:`Connection`.

Everything that touches bytes goes through :class:`Wire`: the state machine
encodes what we send and judges and decodes what arrives.  A protocol
violation by the server, or a wait that runs out of time, ends the
connection at once (hard disconnect) before the error reaches the caller.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl

from harness.address import Address
from harness.protocol import NEED_DATA, Connection, ProtocolError, Role
from harness.protocol.messages import ConnectionClosed, Event

from .errors import NbdConnectionError, NbdTimeoutError, TlsError

_READ_SIZE = 256 * 1024
# Closing politely may wait this long for buffered bytes to leave.
_CLOSE_TIMEOUT = 5.0


class Wire:
    """One open connection: a stream pair and the client's state machine."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        conn: Connection,
        timeout: float,
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.conn = conn
        self.timeout = timeout
        self.closed = False
        self.close_reason: BaseException | None = None

    @classmethod
    async def open(
        cls, address: Address, *, connect_timeout: float, timeout: float, strict_remote: bool
    ) -> Wire:
        """Connect to ``address`` (TCP or unix) within ``connect_timeout`` seconds."""
        try:
            async with asyncio.timeout(connect_timeout):
                if address.kind == "unix":
                    reader, writer = await asyncio.open_unix_connection(address.path)
                else:
                    reader, writer = await asyncio.open_connection(address.host, address.port)
        except TimeoutError:
            raise NbdTimeoutError(
                f"could not connect to {address} within {connect_timeout:g} s"
            ) from None
        except OSError as exc:
            raise NbdConnectionError(
                f"cannot connect to {address}: {exc.strerror or exc}"
            ) from None
        conn = Connection(Role.CLIENT, strict_remote=strict_remote)
        return cls(reader, writer, conn, timeout)

    # --- sending ---------------------------------------------------------------------

    def _check_open(self) -> None:
        if self.closed:
            reason = f" ({self.close_reason})" if self.close_reason else ""
            raise NbdConnectionError(f"the connection is closed{reason}")

    def write_event(self, event: Event, *, strict: bool = True) -> None:
        """Encode ``event`` through the state machine and queue its bytes (no waiting).

        ``strict=False`` lets a test send what the spec forbids at this point.
        Raises :class:`~harness.protocol.LocalProtocolError` (nothing is sent) when
        the event breaks a rule and ``strict`` is set.
        """
        self._check_open()
        saved = self.conn.strict_local
        self.conn.strict_local = strict and saved
        try:
            data = self.conn.send(event)
        finally:
            self.conn.strict_local = saved
        self.writer.write(data)

    def write_raw(self, data: bytes) -> None:
        """Queue bytes the state machine never sees."""
        self._check_open()
        self.writer.write(data)

    async def drain(self) -> None:
        """Wait until the queued bytes are handed to the kernel (bounded by the timeout)."""
        try:
            async with asyncio.timeout(self.timeout):
                await self.writer.drain()
        except TimeoutError:
            self.abort(NbdTimeoutError("sending stalled"))
            raise NbdTimeoutError(
                f"the server did not take our data within {self.timeout:g} s"
            ) from None
        except (ConnectionError, OSError) as exc:
            self.abort(exc)
            raise NbdConnectionError(f"connection lost while sending: {exc}") from None

    async def send(self, event: Event, *, strict: bool = True) -> None:
        self.write_event(event, strict=strict)
        await self.drain()

    # --- receiving -------------------------------------------------------------------

    async def next_event(self, timeout: float | None) -> Event:
        """The next message from the server (``ConnectionClosed`` at end of stream).

        ``timeout`` None waits as long as it takes (only the transmission reader
        does that; callers then bound their own waits).  A violation raises
        :class:`~harness.protocol.RemoteProtocolError` after closing the socket.
        """
        while True:
            try:
                event = self.conn.next_event()
            except ProtocolError as exc:
                self.abort(exc)
                raise
            if event is not NEED_DATA:
                return event  # type: ignore[return-value]
            if self.closed:
                return ConnectionClosed()
            try:
                async with asyncio.timeout(timeout):
                    data = await self.reader.read(_READ_SIZE)
            except TimeoutError:
                self.abort(NbdTimeoutError("no reply"))
                raise NbdTimeoutError(
                    f"no answer from the server within {timeout:g} s "
                    f"(waiting: {self.conn.phase.value})"
                ) from None
            except (ConnectionError, OSError) as exc:
                # A reset is the end of the stream, as far as the protocol goes.
                self.abort(exc)
                data = b""
            self.conn.receive_data(data)

    # --- TLS -------------------------------------------------------------------------

    async def start_tls(self, context: ssl.SSLContext, server_hostname: str | None) -> None:
        """Upgrade the socket after ``NBD_REP_ACK`` to ``NBD_OPT_STARTTLS``."""
        if self.conn.buffered:
            # Anything the server sent after its ACK would be read in the clear.
            exc = TlsError(
                f"the server sent {self.conn.buffered} bytes after acknowledging "
                "NBD_OPT_STARTTLS, before the TLS handshake"
            )
            self.abort(exc)
            raise exc
        try:
            await self.writer.start_tls(
                context,
                server_hostname=server_hostname,
                ssl_handshake_timeout=self.timeout,
            )
        except TimeoutError:
            self.abort(NbdTimeoutError("TLS handshake"))
            raise TlsError(f"TLS handshake did not finish within {self.timeout:g} s") from None
        except (ssl.SSLError, ConnectionError, OSError, ValueError) as exc:
            self.abort(exc)
            reason = getattr(exc, "reason", None) or str(exc) or type(exc).__name__
            raise TlsError(f"TLS handshake failed: {reason}") from None
        self.conn.start_tls_done()

    @property
    def tls_version(self) -> str | None:
        ssl_object = self.writer.get_extra_info("ssl_object")
        return ssl_object.version() if ssl_object is not None else None

    # --- closing ---------------------------------------------------------------------

    def abort(self, reason: BaseException | None = None) -> None:
        """Hard disconnect: drop the socket now, without flushing."""
        if not self.closed:
            self.closed = True
            self.close_reason = reason
        self.writer.transport.abort()

    def write_eof(self) -> None:
        """Close our sending side (a TCP half-close) where the transport can; TLS cannot."""
        if not self.closed and self.writer.can_write_eof():
            with contextlib.suppress(OSError, RuntimeError):
                self.writer.write_eof()

    async def close(self) -> None:
        """Flush what is queued (bounded) and close the socket."""
        if self.closed:
            self.writer.transport.abort()
            return
        self.closed = True
        self.writer.close()
        try:
            async with asyncio.timeout(_CLOSE_TIMEOUT):
                await self.writer.wait_closed()
        except (TimeoutError, ConnectionError, OSError, ssl.SSLError):
            self.writer.transport.abort()
        with contextlib.suppress(Exception):
            self.writer.transport.abort()
