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
