"""The recording proxy in front of the reference server when a real client is under test.

:func:`recording_proxy` is the ``listen_wrapper`` the runner gives
:func:`harness.client_role.run_client_scenario`: a
:class:`~harness.capture.ProxyThread` writing the case's capture sits in front
of the server, and the program is given the proxy's address, so its whole
conversation is recorded while the checks read the server's own session
records and storage.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

from harness.address import LOOPBACK, Address
from harness.capture import ProxyThread
from harness.client_role import ListenWrapper


def recording_proxy(capture: Path,
                    on_start: Callable[[Callable[[], object]], object] | None = None,
                    ) -> ListenWrapper:
    """A listen wrapper that records every connection into ``capture`` (pcapng).

    ``on_start`` receives the proxy's ``stop`` as soon as the proxy runs (a
    watchdog stops it to end a run that hangs); the proxy stops with the run.
    """

    @contextlib.contextmanager
    def wrapper(upstream: Address) -> Iterator[Address]:
        proxy = ProxyThread(LOOPBACK, upstream, capture).start()
        try:
            if on_start is not None:
                on_start(proxy.stop)
            yield proxy.address
        finally:
            proxy.stop()

    return wrapper


__all__ = ["recording_proxy"]
