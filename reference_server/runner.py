"""Run a :class:`ReferenceServer` on its own event loop in a background thread.

For synchronous callers (tests, the matrix runner) that need a live server
beside real peer programs: ``with ServerThread(config) as server:
server.address``.  Start and stop are bounded by timeouts and the thread is
always joined.
"""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import Future

from harness.address import Address

from .config import ServerConfig
from .features import FULL, ServerFeatures
from .server import ReferenceServer

START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0


class ServerThread:
    """A reference server serving from a daemon thread until :meth:`stop`."""

    def __init__(self, config: ServerConfig, features: ServerFeatures = FULL) -> None:
        self.server = ReferenceServer(config, features)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="nbd-reference-server",
                                        daemon=True)
        self._started: Future[None] = Future()
        self._stop_event: asyncio.Event | None = None

    @property
    def address(self) -> Address:
        return self.server.address

    def wait_for_records(self, count: int, timeout: float = 5.0) -> list:
        """The server's session records once at least ``count`` sessions have ended.

        A client can finish before the server has noticed the connection closing;
        waiting here avoids reading the records too early.
        """
        deadline = time.monotonic() + timeout
        while len(self.server.records) < count and time.monotonic() < deadline:
            time.sleep(0.01)
        if len(self.server.records) < count:
            raise TimeoutError(f"only {len(self.server.records)} of {count} sessions ended "
                               f"within {timeout:g} s")
        return list(self.server.records)

    def start(self) -> ServerThread:
        self._thread.start()
        self._started.result(timeout=START_TIMEOUT)  # re-raises a start failure here
        return self

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._main())
        finally:
            self._loop.close()

    async def _main(self) -> None:
        self._stop_event = asyncio.Event()
        try:
            await self.server.start()
        except BaseException as exc:
            self._started.set_exception(exc)
            return
        self._started.set_result(None)
        try:
            await self._stop_event.wait()
        finally:
            await self.server.stop()

    def stop(self) -> None:
        if self._thread.is_alive() and self._stop_event is not None:
            self._loop.call_soon_threadsafe(self._stop_event.set)
        if self._thread.ident is not None:
            self._thread.join(STOP_TIMEOUT)

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
