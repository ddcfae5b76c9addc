"""The fields of the transmission phase's fixed-layout messages, read without scapy.

A capture of a real workload is almost all requests, simple replies and data chunks,
each a fixed header and perhaps bulk data.  The scapy layers (:mod:`.layers`) stay the
definition of every message; for these few shapes this module reads the header with one
``struct`` call into exactly the dict :func:`~harness.dissect.layers.fields_of` gives
for the scapy packet (same names, same order, same values; ``tests/test_dissect_fast.py``
holds the two equal on generated messages), with the bulk data left in the capture
(:class:`~harness.dissect._bytes.CapturedData`).  Anything else, or anything odd (a
header whose lengths do not match the message, a status payload, an error chunk), is
``None``: the caller dissects it with scapy.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

from scapy.packet import Packet

from harness.dissect import layers as L
from harness.dissect._bytes import StreamBytes
from harness.protocol import constants as c

_REQUEST = struct.Struct(">IHHQQI")
_EXTENDED_REQUEST = struct.Struct(">IHHQQQ")
_SIMPLE_REPLY = struct.Struct(">IIQ")
_CHUNK = struct.Struct(">IHHQI")
_EXTENDED_CHUNK = struct.Struct(">IHHQQQ")
_OFFSET = struct.Struct(">Q")
_HOLE = struct.Struct(">QI")

Fields = dict[str, Any]
"""A message's decoded fields (see ``WireMessage.fields``)."""


def _request(stream: StreamBytes, at: int, length: int) -> Fields | None:
    magic, flags, kind, cookie, offset, size = _REQUEST.unpack(stream.read(at, at + 28))
    fields: Fields = {"magic": magic, "flags": flags, "type": kind, "cookie": cookie,
                      "offset": offset, "length": size}
    if kind == c.Cmd.WRITE:
        if length != 28 + size:
            return None
        fields["data"] = _data(stream, at + 28, at + length)
    elif length != 28:
        return None
    return fields


def _extended_request(stream: StreamBytes, at: int, length: int, unflagged: bool) -> Fields | None:
    magic, flags, kind, cookie, offset, size = _EXTENDED_REQUEST.unpack(stream.read(at, at + 32))
    fields: Fields = {"magic": magic, "flags": flags, "type": kind, "cookie": cookie,
                      "offset": offset, "length": size}
    if unflagged or flags & c.CmdFlag.PAYLOAD_LEN:
        if kind == c.Cmd.BLOCK_STATUS or length != 32 + size:
            return None  # a status payload's effect length and context ids: scapy reads them
        fields["data"] = _data(stream, at + 32, at + length)
    elif length != 32:
        return None
    return fields


def _simple_reply(stream: StreamBytes, at: int, length: int) -> Fields | None:
    magic, error, cookie = _SIMPLE_REPLY.unpack(stream.read(at, at + 16))
    return {"magic": magic, "error": error, "cookie": cookie,
            "data": _data(stream, at + 16, at + length)}


def _chunk(stream: StreamBytes, at: int, length: int, extended: bool) -> Fields | None:
    if extended:
        header = 32
        magic, flags, kind, cookie, offset, size = _EXTENDED_CHUNK.unpack(
            stream.read(at, at + header)
        )
        fields: Fields = {"magic": magic, "flags": flags, "type": kind, "cookie": cookie,
                          "offset": offset, "length": size}
    else:
        header = 20
        magic, flags, kind, cookie, size = _CHUNK.unpack(stream.read(at, at + header))
        fields = {"magic": magic, "flags": flags, "type": kind, "cookie": cookie, "length": size}
    if length != header + size:
        return None
    body = at + header
    if kind == c.ReplyType.NONE and size == 0:
        return fields
    if kind == c.ReplyType.OFFSET_DATA and size >= 8:
        (fields["data_offset"],) = _OFFSET.unpack(stream.read(body, body + 8))
        fields["data"] = _data(stream, body + 8, at + length)
        return fields
    if kind == c.ReplyType.OFFSET_HOLE and size == 12:
        fields["hole_offset"], fields["hole_size"] = _HOLE.unpack(stream.read(body, body + 12))
        return fields
    return None


def _data(stream: StreamBytes, start: int, end: int) -> object:
    """Bulk data left in the capture; an empty field is plain ``b""`` as scapy has it."""
    return stream.data(start, end) if end > start else b""


_Reader = Callable[[StreamBytes, int, int], "Fields | None"]

_READERS: dict[type[Packet], _Reader] = {
    L.NBDRequest: _request,
    L.NBDExtendedRequest: lambda s, a, n: _extended_request(s, a, n, False),
    L.NBDExtendedWriteUnflagged: lambda s, a, n: _extended_request(s, a, n, True),
    L.NBDSimpleReply: _simple_reply,
    L.NBDStructuredReply: lambda s, a, n: _chunk(s, a, n, False),
    L.NBDExtendedReply: lambda s, a, n: _chunk(s, a, n, True),
}


def fast_fields(layer: type[Packet], stream: StreamBytes, at: int, length: int) -> Fields | None:
    """The fields of the whole message ``[at, at + length)`` of ``stream`` if it is one of
    the fixed-layout shapes read here, else ``None`` (dissect it with scapy)."""
    reader = _READERS.get(layer)
    return None if reader is None else reader(stream, at, length)
