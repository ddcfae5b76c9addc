"""The reference NBD client: strict, complete, scriptable.

Thin asyncio I/O around ``harness.protocol.Connection(Role.CLIENT)``: it never
encodes or parses bytes itself and never re-implements a rule of the state
machine.  :class:`NbdClient` is the asyncio API, :class:`~harness.client.sync.Client`
its blocking facade; :func:`parse_uri` reads ``nbd://``-style URIs.

    client = await NbdClient.connect("nbd://127.0.0.1:10809/disk")
    data = await client.read(0, 4096)
    extents = await client.map("base:allocation")
    await client.disconnect()
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from harness.lazyexports import lazy_exports

if TYPE_CHECKING:
    from ._session import NbdClient, Target
    from ._wire import Wire
    from .errors import (
        NbdClientError,
        NbdCommandError,
        NbdConnectionError,
        NbdTimeoutError,
        NegotiationError,
        TlsError,
    )
    from .options import ConnectOptions, TlsMode, tls_context_for
    from .records import ExportEntry, ExportInfo, Fallback, Negotiation
    from .sync import Client
    from .uri import DEFAULT_PORT, NbdUri, UriError, parse_uri

_HOMES = {
    "NbdClient": "._session",
    "Target": "._session",
    "Wire": "._wire",
    "NbdClientError": ".errors",
    "NbdCommandError": ".errors",
    "NbdConnectionError": ".errors",
    "NbdTimeoutError": ".errors",
    "NegotiationError": ".errors",
    "TlsError": ".errors",
    "ConnectOptions": ".options",
    "TlsMode": ".options",
    "tls_context_for": ".options",
    "ExportEntry": ".records",
    "ExportInfo": ".records",
    "Fallback": ".records",
    "Negotiation": ".records",
    "Client": ".sync",
    "DEFAULT_PORT": ".uri",
    "NbdUri": ".uri",
    "UriError": ".uri",
    "parse_uri": ".uri",
}
"""Where each public name lives: the package imports a module when a name of it is first
used, so that importing a light part (``harness.client.options``) does not load the
asyncio client and the protocol state machine (every command's start-up paid for them)."""


__getattr__ = lazy_exports(__name__, _HOMES)


__all__ = [
    "DEFAULT_PORT",
    "Client",
    "ConnectOptions",
    "ExportEntry",
    "ExportInfo",
    "Fallback",
    "NbdClient",
    "NbdClientError",
    "NbdCommandError",
    "NbdConnectionError",
    "NbdTimeoutError",
    "NbdUri",
    "Negotiation",
    "NegotiationError",
    "Target",
    "TlsError",
    "TlsMode",
    "UriError",
    "Wire",
    "parse_uri",
    "tls_context_for",
]
