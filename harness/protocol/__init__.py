"""The NBD protocol without I/O: constants, codec, and the session state machine.

Everything above (reference server and client, proxy, fuzzers) is thin I/O
around this package; the scapy dissectors are a second, independent reading
of the wire that shares only :mod:`.constants`.
"""

from . import constants
from .codec import encode
from .connection import NEED_DATA, TURNS, Connection
from .errors import CodecError, LocalProtocolError, ProtocolError, RemoteProtocolError
from .state import InFlight, Negotiated, Phase, Role, Violation

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
