"""The NBD protocol without I/O: constants, codec, and the session state machine.

Everything above (reference server and client, proxy, fuzzers) is thin I/O
around this package; the scapy dissectors are a second, independent reading
of the wire that shares only :mod:`.constants`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

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


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(home, __name__), name)
    globals()[name] = value
    return value

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
