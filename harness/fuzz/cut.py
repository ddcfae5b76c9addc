"""A relay that cuts, stalls or corrupts one side's byte stream at a chosen offset.

It stands between a client and a (healthy) server: bytes of the other stream go
through untouched; bytes of the cut stream (``Cut.stream``: the server's by
default, the client's to drop a client at a point) go through until ``Cut.at``
bytes have passed, then the cut happens: ``close`` ends both
connections (a hard disconnect at that byte, as qemu's iotest 083 does),
``stall`` stops forwarding and keeps the connections open (the client must
time out by itself), ``flip`` inverts that one byte and goes on.  Each accepted
connection is cut the same way (a client that reconnects meets the same fault).
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import Literal

from harness.address import Address
from harness.loopthread import ServerLoopThread

CutAction = Literal["close", "stall", "flip"]
CutStream = Literal["server", "client"]
CHUNK = 64 * 1024


@dataclass(frozen=True)
class Cut:
    """Where and how a stream is broken."""

    at: int
    action: CutAction = "close"
    stream: CutStream = "server"
    """Whose bytes are cut: the server's (a client under test) or the client's."""

    def describe(self) -> str:
        return f"{self.action} at {self.stream} byte {self.at}"


class CutRelay:
    """The asyncio relay; :class:`CutRelayThread` runs it for synchronous callers."""

    def __init__(self, upstream: Address, cut: Cut | None) -> None:
        self.upstream = upstream
        self.cut = cut
        self.address: Address | None = None
        self.server_bytes = 0
        """Bytes of the cut stream on the last connection (all of them, forwarded or not)."""
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.address = Address.tcp("127.0.0.1", port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.gather(*self._tasks, return_exceptions=True), 5)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            if self.upstream.kind == "unix":
                up_reader, up_writer = await asyncio.open_unix_connection(self.upstream.path)
            else:
                up_reader, up_writer = await asyncio.open_connection(self.upstream.host,
                                                                     self.upstream.port)
        except OSError:
            writer.close()
            self._tasks.discard(task)
            return
        self.server_bytes = 0
        stop = asyncio.Event()
        cuts_client = self.cut is not None and self.cut.stream == "client"
        to_server = asyncio.ensure_future(
            (self._cutting_pump if cuts_client else self._pump)(reader, up_writer, stop))
        to_client = asyncio.ensure_future(
            (self._pump if cuts_client else self._cutting_pump)(up_reader, writer, stop))
        try:
            await stop.wait()
        finally:
            for pump in (to_server, to_client):
                pump.cancel()
            for end in (writer, up_writer):
                with contextlib.suppress(Exception):
                    end.transport.abort()
            self._tasks.discard(task)

    @staticmethod
    async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    stop: asyncio.Event) -> None:
        try:
            while data := await reader.read(CHUNK):
                writer.write(data)
                await writer.drain()
            with contextlib.suppress(OSError):
                writer.write_eof()
            await asyncio.sleep(3600)  # the other direction decides when we are done
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            stop.set()

    async def _cutting_pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                            stop: asyncio.Event) -> None:
        cut = self.cut
        try:
            while data := await reader.read(CHUNK):
                start = self.server_bytes
                self.server_bytes += len(data)
                if cut is not None and start <= cut.at < self.server_bytes:
                    inside = cut.at - start
                    if cut.action == "flip":
                        data = data[:inside] + bytes([data[inside] ^ 0xFF]) + data[inside + 1:]
                    else:
                        writer.write(data[:inside])
                        await writer.drain()
                        if cut.action == "stall":
                            await asyncio.sleep(3600)  # keep both sides open, send nothing
                        return
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            stop.set()


class CutRelayThread(ServerLoopThread):
    """A :class:`CutRelay` served from a background thread."""

    def __init__(self, upstream: Address, cut: Cut | None) -> None:
        self.relay = CutRelay(upstream, cut)
        super().__init__(self.relay, "nbd-harness-cut-relay")

    @property
    def address(self) -> Address:
        assert self.relay.address is not None
        return self.relay.address


__all__ = ["Cut", "CutAction", "CutRelay", "CutRelayThread", "CutStream"]
