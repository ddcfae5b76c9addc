"""The second, independent reading of the wire: scapy layers and a stream decoder.

``decode_capture(path)`` reads a pcap/pcapng file, reassembles every TCP
connection and decodes the NBD in it statefully (handshake style, options and
their replies, negotiated structured replies / extended headers / metadata
contexts, requests paired with their replies by cookie).  The result is a
:class:`Capture` of :class:`Session` objects holding :class:`WireMessage` and
:class:`Undecoded` records that account for every captured byte.

Only :mod:`harness.protocol.constants` is shared with the reference codec, and
the plain record of what a handshake settled
(:class:`harness.protocol.state.Negotiated`), which the decoder fills in.

Bulk data (WRITE payloads, READ data) stays in the capture file until used: in
``WireMessage.fields`` it is a :class:`CapturedData`, which behaves as the bytes.
"""

from harness.dissect._bytes import CapturedData
from harness.dissect.contexts import describe_status
from harness.dissect.decoder import decode_capture, decode_streams
from harness.dissect.errors import CaptureError
from harness.dissect.layers import fields_of
from harness.dissect.model import (
    CLIENT,
    EXPECTED,
    KINDS,
    PHASES,
    SERVER,
    UNDECODED_KINDS,
    Capture,
    Session,
    StreamEnd,
    Undecoded,
    WireMessage,
)
from harness.dissect.render import (
    iter_json,
    render_capture,
    render_capture_indexed,
    render_json,
)

__all__ = [
    "CLIENT",
    "EXPECTED",
    "KINDS",
    "PHASES",
    "SERVER",
    "UNDECODED_KINDS",
    "Capture",
    "CaptureError",
    "CapturedData",
    "Session",
    "StreamEnd",
    "Undecoded",
    "WireMessage",
    "decode_capture",
    "decode_streams",
    "describe_status",
    "fields_of",
    "iter_json",
    "render_capture",
    "render_capture_indexed",
    "render_json",
]
