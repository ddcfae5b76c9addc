"""An asyncio server on its own event loop in a background thread, for synchronous callers.

The reference server (:class:`reference_server.runner.ServerThread`) and the
replay server (:class:`harness.replay.serve.ReplayServerThread`) both serve
from a thread while tests and commands drive real peers: start and stop are
bounded by timeouts, a start failure is raised in the caller, and the thread is
always joined.
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import Future
from typing import Any, Protocol, Self

START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0


class AsyncServer(Protocol):
    async def start(self) -> Any: ...

    async def stop(self) -> Any: ...


class ServerLoopThread:
    """Serves ``server`` from a daemon thread named ``name`` until :meth:`stop`."""

    def __init__(self, server: AsyncServer, name: str) -> None:
        self._server = server
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._started: Future[None] = Future()
        self._stop_event: asyncio.Event | None = None

    @property
    def running(self) -> bool:
        """True from :meth:`start` until the server has stopped."""
        return self._thread.is_alive()

    def start(self) -> Self:
        self._thread.start()
        try:
            self._started.result(timeout=START_TIMEOUT)  # re-raises a start failure here
        except BaseException:
            self.stop()
            raise
        return self

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._main())
        finally:
            self._loop.run_until_complete(self._loop.shutdown_asyncgens())
            self._loop.close()

    async def _main(self) -> None:
        self._stop_event = asyncio.Event()
        try:
            await self._server.start()
        except BaseException as exc:
            self._started.set_exception(exc)
            return
        self._started.set_result(None)
        watcher = self._serving()
        try:
            await self._stop_event.wait()
        finally:
            if watcher is not None:
                watcher.cancel()
            await self._server.stop()

    def _serving(self) -> asyncio.Future[Any] | None:
        """Hook run on the loop once the server is up: a task to cancel at stop, or None."""
        return None

    def stop(self) -> None:
        """Stop serving and join the thread (idempotent)."""
        if self._thread.is_alive() and self._stop_event is not None:
            self._loop.call_soon_threadsafe(self._stop_event.set)
        if self._thread.ident is not None:
            self._thread.join(STOP_TIMEOUT)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


__all__ = ["START_TIMEOUT", "STOP_TIMEOUT", "ServerLoopThread"]
