"""The replay's socket: the reference client's :class:`~harness.client._wire.Wire`, lenient.

The state machine encodes what the replay sends (in the form the live
negotiation requires) and decodes what the live server answers.  It is
lenient both ways: the replay sends what the recorded client sent, even where
that client broke a rule, and keeps reading a live server that breaks one (the
rule is kept in :attr:`LiveServer.violations` for the report).  Every wait is
bounded (the wire's timeout).
"""

from __future__ import annotations

from harness.address import Address
from harness.client import Wire
from harness.client.errors import NbdConnectionError, NbdTimeoutError
from harness.protocol import Violation
from harness.protocol.messages import ConnectionClosed, Event


class LiveTimeout(Exception):
    """The live server said nothing (or took nothing) within the timeout."""


class LiveServer:
    """One connection to the live server."""

    def __init__(self, wire: Wire) -> None:
        self.wire = wire
        self.conn = wire.conn
        self.timeout = wire.timeout
        self.violations: list[Violation] = []
        """Rules the live server broke, in order."""

    @classmethod
    async def connect(cls, address: Address, timeout: float) -> LiveServer:
        """Connect within ``timeout`` seconds: :class:`TimeoutError` or :class:`OSError`
        (the client's own, which subclass them) when that fails."""
        wire = await Wire.open(address, connect_timeout=timeout, timeout=timeout,
                               strict_remote=False)
        wire.conn.strict_local = False  # the recorded client's own breaches are replayed
        return cls(wire)

    @property
    def closed(self) -> bool:
        return self.wire.closed

    def send(self, event: Event) -> None:
        """Encode ``event`` through the state machine and queue it (no waiting)."""
        self.wire.write_event(event, strict=False)

    async def flush(self) -> None:
        """Hand what is queued to the kernel; a server that stopped reading times out."""
        try:
            await self.wire.drain()
        except NbdTimeoutError:
            raise LiveTimeout(f"the live server took none of our data for {self.timeout:g} s") \
                from None
        except NbdConnectionError:
            pass  # the reader sees the end of the stream and says so

    async def next_event(self) -> Event:
        """The next message from the live server, or ``ConnectionClosed``.

        Raises :class:`LiveTimeout` after ``timeout`` seconds of silence and
        :class:`~harness.protocol.RemoteProtocolError` when the bytes cannot be framed.
        """
        try:
            event = await self.wire.next_event(self.timeout)
        except NbdTimeoutError:
            raise LiveTimeout(f"the live server sent nothing for {self.timeout:g} s") from None
        if not isinstance(event, ConnectionClosed):
            self.violations += self.conn.last_violations
        return event

    async def close(self) -> None:
        """Close the socket: politely when possible, bounded in time."""
        await self.wire.close()


__all__ = ["LiveServer", "LiveTimeout"]
