"""The replay's socket: asyncio streams around one client-side :class:`Connection`.

The state machine encodes what the replay sends (in the form the live
negotiation requires) and decodes what the live server answers.  It is
lenient both ways: the replay sends what the recorded client sent, even where
that client broke a rule, and keeps reading a live server that breaks one (the
rule is kept in :attr:`LiveServer.violations` for the report).  Every wait is
bounded; :meth:`LiveServer.close` never blocks for long.
"""

from __future__ import annotations

import asyncio
import contextlib

from harness.address import Address
from harness.protocol import NEED_DATA, Connection, Role, Violation
from harness.protocol.messages import ConnectionClosed, Event

_READ_SIZE = 256 * 1024
_CLOSE_TIMEOUT = 2.0


class LiveTimeout(Exception):
    """The live server said nothing within the timeout."""


class LiveServer:
    """One connection to the live server."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 timeout: float) -> None:
        self.reader = reader
        self.writer = writer
        self.timeout = timeout
        self.conn = Connection(Role.CLIENT, strict_remote=False, strict_local=False)
        self.violations: list[Violation] = []
        """Rules the live server broke, in order."""
        self.closed = False

    @classmethod
    async def connect(cls, address: Address, timeout: float) -> LiveServer:
        """Connect within ``timeout`` seconds; OSError and TimeoutError pass through."""
        async with asyncio.timeout(timeout):
            if address.kind == "unix":
                reader, writer = await asyncio.open_unix_connection(address.path)
            else:
                reader, writer = await asyncio.open_connection(address.host, address.port)
        return cls(reader, writer, timeout)

    def send(self, event: Event) -> None:
        """Encode ``event`` through the state machine and queue it (no waiting)."""
        self.writer.write(self.conn.send(event))

    async def flush(self) -> None:
        """Hand what is queued to the kernel; a server that stopped reading times out."""
        try:
            async with asyncio.timeout(self.timeout):
                await self.writer.drain()
        except TimeoutError:
            raise LiveTimeout(f"the live server took none of our data for {self.timeout:g} s") \
                from None
        except (ConnectionError, OSError):
            pass  # the reader sees the end of the stream and says so

    async def next_event(self) -> Event:
        """The next message from the live server, or ``ConnectionClosed``.

        Raises :class:`LiveTimeout` after ``timeout`` seconds of silence and
        :class:`~harness.protocol.RemoteProtocolError` when the bytes cannot be framed.
        """
        while True:
            event = self.conn.next_event()
            if event is not NEED_DATA:
                if not isinstance(event, ConnectionClosed):
                    self.violations += self.conn.last_violations
                return event  # type: ignore[return-value]
            if self.closed:
                return ConnectionClosed()
            try:
                async with asyncio.timeout(self.timeout):
                    data = await self.reader.read(_READ_SIZE)
            except TimeoutError:
                raise LiveTimeout(f"the live server sent nothing for {self.timeout:g} s") \
                    from None
            except (ConnectionError, OSError):
                data = b""  # a reset ends the stream as far as NBD goes
            if not data:
                self.closed = True
            self.conn.receive_data(data)

    async def close(self) -> None:
        """Close the socket: politely when possible, bounded in time."""
        self.closed = True
        with contextlib.suppress(Exception):
            self.writer.close()
            async with asyncio.timeout(_CLOSE_TIMEOUT):
                await self.writer.wait_closed()
        with contextlib.suppress(Exception):
            self.writer.transport.abort()


__all__ = ["LiveServer", "LiveTimeout"]
