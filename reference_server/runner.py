"""Run a :class:`ReferenceServer` on its own event loop in a background thread.

For synchronous callers (tests, the matrix runner) that need a live server
beside real peer programs: ``with ServerThread(config) as server:
server.address``.  Start and stop are bounded by timeouts and the thread is
always joined.
"""

from __future__ import annotations

import time

from harness.address import Address
from harness.loopthread import START_TIMEOUT, STOP_TIMEOUT, ServerLoopThread

from .config import ServerConfig
from .features import FULL, ServerFeatures
from .server import ReferenceServer


class ServerThread(ServerLoopThread):
    """A reference server serving from a daemon thread until :meth:`stop`."""

    def __init__(self, config: ServerConfig, features: ServerFeatures = FULL) -> None:
        self.server = ReferenceServer(config, features)
        super().__init__(self.server, "nbd-reference-server")

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


__all__ = ["START_TIMEOUT", "STOP_TIMEOUT", "ServerThread"]
