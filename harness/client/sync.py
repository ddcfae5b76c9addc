"""Blocking facade over :class:`~harness.client.NbdClient`.

    with Client.connect("nbd://127.0.0.1:10809/disk") as nbd:
        nbd.write(0, b"x" * 512)
        assert nbd.read(0, 512) == b"x" * 512

Each :class:`Client` runs a private event loop in a background thread; every
method submits the matching coroutine to it and waits.  Leaving the ``with``
block (or :meth:`Client.close`) disconnects politely, stops the loop and
joins the thread, so no thread or socket outlives the client.  A method
called after close raises :class:`NbdConnectionError`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import Coroutine, Iterable
from types import TracebackType
from typing import Any, TypeVar

from harness.protocol import Connection, Phase
from harness.protocol import constants as c
from harness.protocol.messages import Event, Extent, OptionRequest, Request

from ._session import NbdClient, Target
from .errors import NbdConnectionError
from .options import ConnectOptions
from .records import ExportEntry, ExportInfo, Negotiation

T = TypeVar("T")

# Joining the loop thread after it was told to stop; it only has to leave run_forever().
_JOIN_TIMEOUT = 10.0


class _LoopThread:
    """An event loop running forever in a daemon thread, until :meth:`stop`."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, name="nbd-client-loop", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        if not self.thread.is_alive():
            coro.close()
            raise NbdConnectionError("the client is closed")
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result()
        except KeyboardInterrupt:
            future.cancel()
            raise
        except concurrent.futures.CancelledError:
            raise NbdConnectionError("the call was cancelled") from None

    def stop(self) -> None:
        if not self.thread.is_alive():
            return

        async def cancel_rest() -> None:
            me = asyncio.current_task()
            tasks = [t for t in asyncio.all_tasks() if t is not me]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.loop.shutdown_asyncgens()
            # getaddrinfo() ran in the default executor: its worker threads go too.
            await self.loop.shutdown_default_executor()

        with contextlib.suppress(concurrent.futures.TimeoutError, RuntimeError):
            asyncio.run_coroutine_threadsafe(cancel_rest(), self.loop).result(_JOIN_TIMEOUT)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(_JOIN_TIMEOUT)
        if not self.thread.is_alive():
            self.loop.close()


class Client:
    """A blocking NBD client; the methods are :class:`NbdClient`'s, minus ``await``."""

    def __init__(self, runner: _LoopThread, client: NbdClient) -> None:
        self._runner = runner
        self._client = client

    @classmethod
    def connect(cls, target: Target, *, options: ConnectOptions | None = None) -> Client:
        """Connect and negotiate (see :meth:`NbdClient.connect`)."""
        runner = _LoopThread()
        try:
            client = runner.run(NbdClient.connect(target, options=options))
        except BaseException:
            runner.stop()
            raise
        return cls(runner, client)

    # --- state ----------------------------------------------------------------------------

    @property
    def negotiation(self) -> Negotiation:
        return self._client.negotiation

    @property
    def connection(self) -> Connection:
        return self._client.connection

    @property
    def phase(self) -> Phase:
        return self._client.phase

    @property
    def export_size(self) -> int:
        return self._client.export_size

    @property
    def contexts(self) -> dict[str, int]:
        return self._client.contexts

    @property
    def max_piece(self) -> int:
        return self._client.max_piece

    @property
    def tls_version(self) -> str | None:
        return self._client.tls_version

    def can(self, flag: c.TransmissionFlag) -> bool:
        return self._client.can(flag)

    # --- option phase -----------------------------------------------------------------------

    def enter_transmission(self, export: str | None = None) -> None:
        self._runner.run(self._client.enter_transmission(export))

    def list_exports(self) -> list[ExportEntry]:
        return self._runner.run(self._client.list_exports())

    def list_meta_contexts(
        self, export: str | None = None, queries: Iterable[str] = ()
    ) -> list[str]:
        return self._runner.run(self._client.list_meta_contexts(export, tuple(queries)))

    def info(
        self, export: str | None = None, info_requests: Iterable[int] | None = None
    ) -> ExportInfo:
        requests = None if info_requests is None else tuple(info_requests)
        return self._runner.run(self._client.info(export, requests))

    # --- transmission -------------------------------------------------------------------------

    def read(self, offset: int, length: int, *, flags: int = 0) -> bytes:
        return self._runner.run(self._client.read(offset, length, flags=flags))

    def write(self, offset: int, data: bytes, *, fua: bool = False) -> None:
        self._runner.run(self._client.write(offset, data, fua=fua))

    def flush(self) -> None:
        self._runner.run(self._client.flush())

    def trim(self, offset: int, length: int, *, fua: bool = False) -> None:
        self._runner.run(self._client.trim(offset, length, fua=fua))

    def cache(self, offset: int, length: int) -> None:
        self._runner.run(self._client.cache(offset, length))

    def write_zeroes(
        self,
        offset: int,
        length: int,
        *,
        no_hole: bool = False,
        fast_zero: bool = False,
        fua: bool = False,
    ) -> None:
        self._runner.run(
            self._client.write_zeroes(offset, length, no_hole=no_hole, fast_zero=fast_zero, fua=fua)
        )

    def block_status(
        self,
        offset: int,
        length: int,
        *,
        req_one: bool = False,
        context_ids: Iterable[int] | None = None,
    ) -> dict[str, list[Extent]]:
        ids = None if context_ids is None else tuple(context_ids)
        return self._runner.run(
            self._client.block_status(offset, length, req_one=req_one, context_ids=ids)
        )

    def map(
        self, context: str = c.BASE_ALLOCATION, offset: int = 0, length: int | None = None
    ) -> list[tuple[int, int, int]]:
        return self._runner.run(self._client.map(context, offset, length))

    # --- below the happy path ---------------------------------------------------------------

    def send_raw(self, data: bytes) -> None:
        self._runner.run(self._client.send_raw(data))

    def send_option(self, request: OptionRequest, *, strict: bool = True) -> None:
        self._runner.run(self._client.send_option(request, strict=strict))

    def send_request(self, request: Request, *, strict: bool = True) -> None:
        self._runner.run(self._client.send_request(request, strict=strict))

    def recv_event(self, timeout: float | None = None) -> Event:
        return self._runner.run(self._client.recv_event(timeout))

    # --- closing ------------------------------------------------------------------------------

    def disconnect(self) -> None:
        """Polite disconnect (``NBD_CMD_DISC`` / ``NBD_OPT_ABORT``), then stop the thread."""
        try:
            if self._runner.thread.is_alive():
                self._runner.run(self._client.disconnect())
        finally:
            self._runner.stop()

    def close(self) -> None:
        """Close the socket at once and stop the thread."""
        try:
            if self._runner.thread.is_alive():
                self._runner.run(self._client.close())
        finally:
            self._runner.stop()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.disconnect()


__all__ = ["Client"]
