"""The NBD protocol without I/O: constants, codec, and the session state machine.

Everything above (reference server and client, proxy, fuzzers) is thin I/O
around this package; the scapy dissectors are a second, independent reading
of the wire that shares only :mod:`.constants`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from harness.lazyexports import lazy_exports

from . import constants

if TYPE_CHECKING:
    from .codec import encode
    from .connection import NEED_DATA, TURNS, Connection
    from .errors import CodecError, LocalProtocolError, ProtocolError, RemoteProtocolError
    from .state import InFlight, Negotiated, Phase, Role, Violation

_HOMES = {
    "encode": ".codec",
    "NEED_DATA": ".connection",
    "TURNS": ".connection",
    "Connection": ".connection",
    "CodecError": ".errors",
    "LocalProtocolError": ".errors",
    "ProtocolError": ".errors",
    "RemoteProtocolError": ".errors",
    "InFlight": ".state",
    "Negotiated": ".state",
    "Phase": ".state",
    "Role": ".state",
    "Violation": ".state",
}
"""Where each public name lives, imported on first use: the constants alone (what the
dissector and most commands need) do not load the codec and the state machine."""


__getattr__ = lazy_exports(__name__, _HOMES)

__all__ = [
    "NEED_DATA",
    "TURNS",
    "CodecError",
    "Connection",
    "InFlight",
    "LocalProtocolError",
    "Negotiated",
    "Phase",
    "ProtocolError",
    "RemoteProtocolError",
    "Role",
    "Violation",
    "constants",
    "encode",
]
