"""The server-wide cap on buffered request and reply data (``limits.max_inflight_bytes``).

A session takes a share of the budget before it allocates a large payload
buffer or reply, and gives it back once the reply has left for the client.
When the budget is spent, the next large request waits, and while it waits the
session reads nothing more from its client, so the kernel's flow control
pushes back on that client alone.  A client that stops reading its replies
holds its share only until ``reply_timeout`` ends its session.

Small requests (up to :data:`UNBUDGETED` bytes) never wait: what one connection
can hold of them is bounded by its own buffers, so a well-behaved client with
small reads is served even while hostile clients hold the whole budget.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator

UNBUDGETED = 1 << 20
"""Requests and replies of at most this many bytes do not take from the budget."""


class MemoryBudget:
    """Bytes that may be held at once, handed out first come, first served."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.used = 0
        self.peak = 0
        """The most ever held at once (for tests and benchmarks)."""
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()

    @contextlib.asynccontextmanager
    async def hold(self, count: int, timeout: float) -> AsyncIterator[None]:
        """Hold ``count`` bytes (no more than the total) for the ``async with`` block.

        Raises :class:`TimeoutError` when they are not free within ``timeout``.
        """
        if count <= UNBUDGETED:
            yield
            return
        count = min(count, self.total)
        await self._acquire(count, timeout)
        try:
            yield
        finally:
            self._release(count)

    async def _acquire(self, count: int, timeout: float) -> None:
        if not self._waiters and self.used + count <= self.total:
            self._take(count)
            return
        waiter = asyncio.get_running_loop().create_future()
        entry = (count, waiter)
        self._waiters.append(entry)
        try:
            await asyncio.wait_for(asyncio.shield(waiter), timeout)
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self._release(count)  # granted just as we gave up: give it back
            else:
                waiter.cancel()
                with contextlib.suppress(ValueError):
                    self._waiters.remove(entry)
                self._grant()  # a large waiter leaving may let smaller ones in
            raise

    def _take(self, count: int) -> None:
        self.used += count
        self.peak = max(self.peak, self.used)

    def _release(self, count: int) -> None:
        self.used -= count
        self._grant()

    def _grant(self) -> None:
        """Wake waiters in order while the one at the head fits."""
        while self._waiters:
            count, waiter = self._waiters[0]
            if waiter.done():
                self._waiters.popleft()
                continue
            if self.used + count > self.total:
                return
            self._waiters.popleft()
            self._take(count)
            waiter.set_result(None)
