"""The recording proxy: forwards connections byte-exact and records them as pcapng.

``RecordingProxy`` listens on a TCP or unix address, connects every accepted client
to the upstream (TCP or unix), forwards bytes in both directions exactly as they
arrive and writes each forwarded chunk into a pcapng file (see
:mod:`harness.capture.pcapng`).  An end-of-file from one side is passed on as a
half-close (``write_eof``) so protocols that rely on EOF behave as without the
proxy.  ``ProxyThread`` runs the same proxy on its own event loop in a background
thread for synchronous callers such as the test runner.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import os
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TypeVar

from harness.address import Address
from harness.capture.pcapng import PcapngWriter, Side, TcpStream

_T = TypeVar("_T")

# Bytes asked for per read; a chunk larger than one TCP segment is split by the writer.
_READ_SIZE = 256 * 1024
_STREAM_LIMIT = 1024 * 1024
# How long closing a connection may take to flush what is still buffered for a peer.
_CLOSE_TIMEOUT = 5.0


@dataclass
class ConnectionStats:
    """What happened on one proxied connection (updated while it runs)."""

    number: int  # 1-based, in accept order
    peer: str  # the real client, e.g. "127.0.0.1:53124" or "unix pid 4242"
    capture_port: int | None = None  # its synthetic client port in the pcapng
    client_to_server: int = 0  # bytes forwarded
    server_to_client: int = 0
    closed_by: Literal["client", "server", "proxy"] | None = None
    reset: bool = False  # ended by a connection reset rather than EOF
    failed: bool = False  # upstream connect failed
    done: bool = False


@dataclass
class ProxyStats:
    """Totals over all connections; ``connections`` holds the per-connection detail."""

    accepted: int = 0
    closed: int = 0  # connections finished, including failed ones
    failed: int = 0  # upstream connect failures
    client_to_server: int = 0
    server_to_client: int = 0
    connections: list[ConnectionStats] = field(default_factory=list)


class _PeerReset(Exception):
    """One side of a connection broke (reset, broken pipe) rather than closing."""

    def __init__(self, side: Side, cause: BaseException) -> None:
        super().__init__(f"{side}: {cause}")
        self.side: Side = side


class RecordingProxy:
    """An asyncio TCP/unix proxy in front of ``upstream`` that records into ``pcapng_path``.

    ``await start()`` binds (then :attr:`address` holds the real address, with the
    kernel-chosen port); ``await stop()`` closes the listener, every connection and
    the file.  Also an async context manager.  Upstream connect failures close the
    client connection and are listed in :attr:`errors` (and passed to ``on_error``
    as they happen, if given).
    """

    def __init__(
        self,
        listen: Address,
        upstream: Address,
        pcapng_path: Path | str,
        *,
        connect_timeout: float = 10.0,
        on_error: Callable[[str], None] | None = None,
    ) -> None:
        self.listen = listen
        self.upstream = upstream
        self.pcapng_path = Path(pcapng_path)
        self.connect_timeout = connect_timeout
        self._on_error = on_error
        self.stats = ProxyStats()
        #: One line per failure, e.g. "connection 2: upstream tcp://...: Connection refused".
        self.errors: list[str] = []
        self._address: Address | None = None
        self._server: asyncio.AbstractServer | None = None
        self._writer: PcapngWriter | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed_changed: asyncio.Condition | None = None
        self._stopping = False

    @property
    def address(self) -> Address:
        """Where clients connect (after :meth:`start`): the real port, not 0."""
        if self._address is None:
            raise RuntimeError("the proxy is not started")
        return self._address

    async def start(self) -> None:
        """Bind the listening socket, open the pcapng file, then start accepting."""
        self._closed_changed = asyncio.Condition()
        if self.listen.kind == "unix":
            server = await asyncio.start_unix_server(
                self._handle, path=self.listen.path, limit=_STREAM_LIMIT, start_serving=False
            )
            address = self.listen
        else:
            server = await asyncio.start_server(
                self._handle,
                self.listen.host,
                self.listen.port,
                limit=_STREAM_LIMIT,
                start_serving=False,
            )
            # A name that resolves to several addresses binds several sockets; with
            # port 0 each gets its own port, and the first one is the one we report.
            address = self.listen.with_port(server.sockets[0].getsockname()[1])
        try:
            self._writer = PcapngWriter(
                self.pcapng_path,
                interface_comment=f"nbd-harness recording proxy: clients connect to "
                f"{address}, forwarded to upstream {self.upstream}",
            )
        except OSError:
            server.close()
            if self.listen.kind == "unix":
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.listen.path)
            raise
        self._server, self._address, self._stopping = server, address, False
        await server.start_serving()

    async def stop(self) -> None:
        """Close the listener and every connection, then the file; idempotent."""
        self._stopping = True
        server, self._server = self._server, None
        if server is not None:
            server.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if server is not None:
            await server.wait_closed()
        if self._writer is not None:
            self._writer.close()
        if self.listen.kind == "unix" and self._address is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.listen.path)
        self._address = None

    async def wait_closed(self, count: int) -> None:
        """Wait until ``count`` connections (failed ones included) have finished."""
        assert self._closed_changed is not None, "start() first"
        async with self._closed_changed:
            await self._closed_changed.wait_for(lambda: self.stats.closed >= count)

    async def __aenter__(self) -> RecordingProxy:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # -- one connection -----------------------------------------------------------------

    async def _handle(
        self, client_reader: asyncio.StreamReader, client: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None and self._writer is not None
        if self._stopping:
            client.transport.abort()
            return
        self._tasks.add(task)
        self.stats.accepted += 1
        conn = ConnectionStats(number=self.stats.accepted, peer=_describe_peer(client))
        self.stats.connections.append(conn)
        try:
            await self._proxy_connection(conn, client_reader, client)
        finally:
            if not client.transport.is_closing():  # e.g. stopped while connecting upstream
                client.transport.abort()
            conn.done = True
            self.stats.closed += 1
            self._tasks.discard(task)
            await self._notify_closed()

    async def _proxy_connection(
        self,
        conn: ConnectionStats,
        client_reader: asyncio.StreamReader,
        client: asyncio.StreamWriter,
    ) -> None:
        assert self._writer is not None
        comment = (
            f"connection {conn.number}: client {conn.peer} -> proxy {self._address} "
            f"-> upstream {self.upstream}"
        )
        try:
            upstream_reader, upstream = await asyncio.wait_for(
                self._connect_upstream(), self.connect_timeout
            )
        except (OSError, TimeoutError) as exc:
            if isinstance(exc, TimeoutError):
                reason = f"no answer within {self.connect_timeout:g} s"
            elif exc.errno:  # asyncio's own text ("Connect call failed") hides the reason
                reason = os.strerror(exc.errno)
            else:
                reason = str(exc) or type(exc).__name__
            self._error(
                f"connection {conn.number} from {conn.peer}: "
                f"cannot connect to upstream {self.upstream}: {reason}"
            )
            conn.failed = True
            conn.closed_by = "proxy"
            self.stats.failed += 1
            self._writer.record_refused(f"{comment}: upstream connect failed: {reason}")
            client.transport.abort()
            return

        stream = self._writer.open_stream(comment)
        conn.capture_port = stream.client_port
        pumps = [
            asyncio.ensure_future(self._pump(conn, stream, "client", client_reader, upstream)),
            asyncio.ensure_future(self._pump(conn, stream, "server", upstream_reader, client)),
        ]
        try:
            pending = set(pumps)
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    exc = task.exception()
                    if isinstance(exc, _PeerReset):
                        conn.closed_by, conn.reset = exc.side, True
                        stream.close(exc.side, reset=True)
                        return
                    if exc is not None:
                        raise exc
                    # Otherwise that side reached EOF, passed on as a half-close.
            # Both pumps recorded their FIN; the stream knows which came first.
            conn.closed_by = stream.first_fin
            stream.close(stream.first_fin or "client")
        except Exception as exc:
            # A bug or an unexpected error: end this connection, keep the proxy serving.
            self._error(f"connection {conn.number} from {conn.peer}: proxy error: {exc!r}")
            conn.closed_by, conn.reset = "proxy", True
            stream.close("server", reset=True)
        except asyncio.CancelledError:
            # stop() while the connection is alive: the proxy ends it, towards both ends.
            if not stream.closed:
                conn.closed_by = "proxy"
                stream.close("server")
            raise
        finally:
            for task in pumps:
                task.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
            await _close_both(client, upstream, abort=conn.reset)

    async def _pump(
        self,
        conn: ConnectionStats,
        stream: TcpStream,
        source: Side,
        reader: asyncio.StreamReader,
        destination: asyncio.StreamWriter,
    ) -> None:
        """Forward ``source``'s bytes until EOF, then half-close the destination."""
        target: Side = "server" if source == "client" else "client"
        while True:
            try:
                data = await reader.read(_READ_SIZE)
            except OSError as exc:  # ConnectionResetError and friends
                raise _PeerReset(source, exc) from exc
            if not data:
                break
            stream.record(source, data, time.time())
            if source == "client":
                conn.client_to_server += len(data)
                self.stats.client_to_server += len(data)
            else:
                conn.server_to_client += len(data)
                self.stats.server_to_client += len(data)
            try:
                destination.write(data)
                await destination.drain()
            except OSError as exc:
                raise _PeerReset(target, exc) from exc
        stream.fin(source, time.time())
        try:
            if destination.can_write_eof():
                destination.write_eof()
            else:
                destination.close()
        except OSError as exc:
            raise _PeerReset(target, exc) from exc

    async def _connect_upstream(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self.upstream.kind == "unix":
            return await asyncio.open_unix_connection(self.upstream.path, limit=_STREAM_LIMIT)
        return await asyncio.open_connection(
            self.upstream.host, self.upstream.port, limit=_STREAM_LIMIT
        )

    def _error(self, message: str) -> None:
        self.errors.append(message)
        if self._on_error is not None:
            self._on_error(message)

    async def _notify_closed(self) -> None:
        if self._closed_changed is not None:
            async with self._closed_changed:
                self._closed_changed.notify_all()


async def _close_both(*writers: asyncio.StreamWriter, abort: bool) -> None:
    """Close (flushing what is buffered) or abort both ends, in bounded time."""
    for writer in writers:
        if abort:
            writer.transport.abort()
        else:
            writer.close()
    for writer in writers:
        try:
            # A peer that stopped reading would keep a graceful close flushing forever.
            await asyncio.wait_for(writer.wait_closed(), _CLOSE_TIMEOUT)
        except (OSError, TimeoutError):
            writer.transport.abort()


def _describe_peer(writer: asyncio.StreamWriter) -> str:
    """A readable name for the client: "HOST:PORT", or the unix peer's pid."""
    sock = writer.get_extra_info("socket")
    peer = writer.get_extra_info("peername")
    if sock is not None and sock.family == socket.AF_UNIX:
        with contextlib.suppress(OSError, AttributeError):
            creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
            pid, uid, _gid = struct.unpack("3i", creds)
            return f"unix pid {pid} uid {uid}"
        return "unix client"
    if isinstance(peer, tuple) and len(peer) >= 2:
        host = f"[{peer[0]}]" if ":" in peer[0] else peer[0]
        return f"{host}:{peer[1]}"
    return str(peer)


class ProxyThread:
    """A :class:`RecordingProxy` on its own event loop in a background thread.

    For synchronous callers::

        with ProxyThread(listen, upstream, path) as proxy:
            run_client(proxy.address)
        proxy.stats, proxy.errors

    :meth:`start` and :meth:`stop` wait at most ``timeout`` seconds each; after
    :meth:`stop` no thread is left behind.
    """

    def __init__(
        self,
        listen: Address,
        upstream: Address,
        pcapng_path: Path | str,
        *,
        timeout: float = 10.0,
        connect_timeout: float = 10.0,
    ) -> None:
        self.proxy = RecordingProxy(listen, upstream, pcapng_path, connect_timeout=connect_timeout)
        self.timeout = timeout
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._address: Address | None = None

    @property
    def address(self) -> Address:
        """Where clients connect (the real port, not 0)."""
        if self._address is None:
            raise RuntimeError("the proxy thread is not started")
        return self._address

    @property
    def stats(self) -> ProxyStats:
        """A consistent snapshot of the proxy's counters."""
        return self._call(self._snapshot, self.proxy.stats)

    @property
    def errors(self) -> list[str]:
        """A copy of the proxy's error lines (see :attr:`RecordingProxy.errors`)."""
        return self._call(self._snapshot, self.proxy.errors)

    def start(self) -> ProxyThread:
        """Start the thread and bind; raise what binding raised, or TimeoutError."""
        if self._thread is not None:
            raise RuntimeError("the proxy thread is already started")
        loop = asyncio.new_event_loop()
        ready = threading.Event()
        self._loop = loop
        self._thread = threading.Thread(
            target=self._run_loop, args=(loop, ready), name="nbd-harness-proxy", daemon=True
        )
        self._thread.start()
        ready.wait(self.timeout)
        future = asyncio.run_coroutine_threadsafe(self.proxy.start(), loop)
        try:
            future.result(self.timeout)
        except BaseException:
            future.cancel()
            self._shutdown_loop()
            raise
        self._address = self.proxy.address
        return self

    def stop(self) -> None:
        """Stop the proxy, its loop and its thread (each bounded by ``timeout``); idempotent."""
        if self._loop is None:
            return
        try:
            if self._loop.is_running():
                future = asyncio.run_coroutine_threadsafe(self.proxy.stop(), self._loop)
                future.result(self.timeout)
        finally:
            self._shutdown_loop()

    def wait_closed(self, count: int, timeout: float) -> None:
        """Block until ``count`` connections have finished; raise TimeoutError after ``timeout``."""
        if self._loop is None:
            raise RuntimeError("the proxy thread is not started")
        future = asyncio.run_coroutine_threadsafe(
            asyncio.wait_for(self.proxy.wait_closed(count), timeout), self._loop
        )
        future.result(timeout + 1)

    def __enter__(self) -> ProxyThread:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- internals ---------------------------------------------------------------

    @staticmethod
    def _run_loop(loop: asyncio.AbstractEventLoop, ready: threading.Event) -> None:
        asyncio.set_event_loop(loop)
        loop.call_soon(ready.set)
        try:
            loop.run_forever()
        finally:
            # Cancel whatever is left (only after a failed or timed-out stop) and close.
            leftovers = asyncio.all_tasks(loop)
            for task in leftovers:
                task.cancel()
            if leftovers:
                loop.run_until_complete(asyncio.gather(*leftovers, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    def _shutdown_loop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        if not loop.is_closed():
            loop.call_soon_threadsafe(loop.stop)
        thread.join(self.timeout)
        if thread.is_alive():
            raise TimeoutError(f"proxy thread did not stop within {self.timeout:g} s")
        self._loop = self._thread = None
        # The writer is closed by proxy.stop(); make sure even after a failed stop.
        if self.proxy._writer is not None:
            self.proxy._writer.close()

    def _call(self, function: Callable[..., _T], *args: object) -> _T:
        """Run ``function`` on the proxy's loop if it runs, else here (it has stopped)."""
        loop = self._loop
        if loop is None or not loop.is_running():
            return function(*args)
        future = asyncio.run_coroutine_threadsafe(_as_coroutine(function, *args), loop)
        return future.result(self.timeout)

    @staticmethod
    def _snapshot(value: _T) -> _T:
        return copy.deepcopy(value)


async def _as_coroutine(function: Callable[..., _T], *args: object) -> _T:
    return function(*args)
