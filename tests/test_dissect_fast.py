"""The decoder's scapy-free reading of requests, replies and data chunks, held to scapy.

``harness.dissect._fast`` reads the transmission phase's fixed-layout messages with one
``struct`` call; the scapy layers stay their definition.  For every generated message
of those shapes the fast fields must equal ``fields_of`` of the scapy packet (names,
order, values, bulk data), and whatever the fast reader declines must be a shape scapy
reads differently (a status payload, an error chunk, lengths that disagree).  The
lazily dissected packet of a decoded message must be the packet the decoder used to
build eagerly.
"""

from __future__ import annotations

import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from harness.dissect import decode_streams, fields_of
from harness.dissect import layers as L
from harness.dissect._bytes import CapturedData, StreamBytes
from harness.dissect._fast import fast_fields
from harness.protocol import constants as c

_u16 = st.integers(0, 0xFFFF)
_u32 = st.integers(0, 0xFFFFFFFF)
_u64 = st.integers(0, (1 << 64) - 1)
_commands = st.one_of(st.sampled_from([int(x) for x in c.Cmd]), _u16)
_chunk_types = st.one_of(st.sampled_from([int(x) for x in c.ReplyType]), _u16)
_payload = st.binary(max_size=300)


def _plain(fields: dict) -> list[tuple[str, object]]:
    """Fields in order, bulk data as bytes: what the two readings must agree on."""
    return [(k, bytes(v) if isinstance(v, CapturedData) else v) for k, v in fields.items()]


def _agree(layer: type, message: bytes, prefix: bytes = b"") -> None:
    """Fast fields (if any) equal scapy's, read from the middle of a stream."""
    stream = StreamBytes.of(prefix + message)
    fast = fast_fields(layer, stream, len(prefix), len(message))
    if fast is not None:
        assert _plain(fast) == _plain(fields_of(layer(message)))
        for value in fast.values():
            if isinstance(value, CapturedData):
                assert len(value) > 0  # empty data is plain b"", as scapy has it


@settings(max_examples=300, deadline=None)
@given(flags=_u16, kind=_commands, cookie=_u64, offset=_u64, payload=_payload, pad=_payload)
def test_compact_requests(flags: int, kind: int, cookie: int, offset: int, payload: bytes,
                          pad: bytes) -> None:
    data = payload if kind == c.Cmd.WRITE else b""
    header = struct.pack(">IHHQQI", c.REQUEST_MAGIC, flags, kind, cookie, offset, len(payload))
    _agree(L.NBDRequest, header + data, pad)


@settings(max_examples=300, deadline=None)
@given(flags=_u16, kind=_commands, cookie=_u64, offset=_u64, payload=_payload,
       unflagged=st.booleans())
def test_extended_requests(flags: int, kind: int, cookie: int, offset: int, payload: bytes,
                           unflagged: bool) -> None:
    layer = L.NBDExtendedWriteUnflagged if unflagged else L.NBDExtendedRequest
    carries = unflagged or flags & c.CmdFlag.PAYLOAD_LEN
    data = payload if carries else b""
    header = struct.pack(">IHHQQQ", c.EXTENDED_REQUEST_MAGIC, flags, kind, cookie, offset,
                         len(payload))
    _agree(layer, header + data)


@settings(max_examples=200, deadline=None)
@given(error=st.one_of(st.sampled_from([0, 5, 22, 28, 95]), _u32), cookie=_u64,
       payload=_payload)
def test_simple_replies(error: int, cookie: int, payload: bytes) -> None:
    message = struct.pack(">IIQ", c.SIMPLE_REPLY_MAGIC, error, cookie) + payload
    stream = StreamBytes.of(message)
    fast = fast_fields(L.NBDSimpleReply, stream, 0, len(message))
    assert fast is not None  # every whole simple reply is read without scapy
    assert _plain(fast) == _plain(fields_of(L.NBDSimpleReply(message)))


@settings(max_examples=400, deadline=None)
@given(flags=_u16, kind=_chunk_types, cookie=_u64, offset=_u64, body=_payload,
       extended=st.booleans())
def test_chunks(flags: int, kind: int, cookie: int, offset: int, body: bytes,
                extended: bool) -> None:
    if extended:
        header = struct.pack(">IHHQQQ", c.EXTENDED_REPLY_MAGIC, flags, kind, cookie, offset,
                             len(body))
        layer = L.NBDExtendedReply
    else:
        header = struct.pack(">IHHQI", c.STRUCTURED_REPLY_MAGIC, flags, kind, cookie, len(body))
        layer = L.NBDStructuredReply
    _agree(layer, header + body)


def test_data_chunk_and_hole_are_read_fast() -> None:
    """The shapes of a real workload do take the fast path (the tests above are not
    vacuous): a data chunk, a hole, a final NONE chunk, a WRITE."""
    data = struct.pack(">IHHQI", c.STRUCTURED_REPLY_MAGIC, 0, c.ReplyType.OFFSET_DATA, 7, 12)
    data += struct.pack(">Q", 4096) + b"abcd"
    hole = struct.pack(">IHHQI", c.STRUCTURED_REPLY_MAGIC, 0, c.ReplyType.OFFSET_HOLE, 7, 12)
    hole += struct.pack(">QI", 0, 512)
    done = struct.pack(">IHHQI", c.STRUCTURED_REPLY_MAGIC, 1, c.ReplyType.NONE, 7, 0)
    write = struct.pack(">IHHQQI", c.REQUEST_MAGIC, 0, c.Cmd.WRITE, 9, 0, 3) + b"xyz"
    for layer, message in ((L.NBDStructuredReply, data), (L.NBDStructuredReply, hole),
                           (L.NBDStructuredReply, done), (L.NBDRequest, write)):
        fast = fast_fields(layer, StreamBytes.of(message), 0, len(message))
        assert fast is not None
        assert _plain(fast) == _plain(fields_of(layer(message)))
    fast = fast_fields(L.NBDRequest, StreamBytes.of(write), 0, len(write))
    assert isinstance(fast["data"], CapturedData) and fast["data"] == b"xyz"


def test_decoded_message_packet_is_dissected_on_demand() -> None:
    """A WRITE and its reply decoded from streams: fields read fast, bulk data left in the
    stream, the scapy packet built on first use and equal to a direct dissection."""
    greeting = struct.pack(">QQH", c.NBDMAGIC, c.IHAVEOPT, 3)
    name = b"disk"
    go = struct.pack(">QII", c.IHAVEOPT, c.Opt.GO, 6 + len(name)) + struct.pack(">I", len(name))
    go += name + struct.pack(">H", 0)
    info = struct.pack(">QIII", c.OPTION_REPLY_MAGIC, c.Opt.GO, c.Rep.INFO, 12)
    info += struct.pack(">HQH", c.Info.EXPORT, 1 << 20, 1)
    ack = struct.pack(">QIII", c.OPTION_REPLY_MAGIC, c.Opt.GO, c.Rep.ACK, 0)
    payload = bytes(range(256)) * 16
    write = struct.pack(">IHHQQI", c.REQUEST_MAGIC, 0, c.Cmd.WRITE, 1, 0, len(payload))
    reply = struct.pack(">IIQ", c.SIMPLE_REPLY_MAGIC, 0, 1)
    client = struct.pack(">I", 3) + go + write + payload
    session = decode_streams(client, greeting + info + ack + reply)
    request = next(m for m in session.messages if m.name == "NBD_CMD_WRITE")
    assert request.dissected is None  # not dissected by the decoder
    assert isinstance(request.fields["data"], CapturedData)
    assert bytes(request.fields["data"]) == payload
    packet = request.packet
    assert packet is request.packet  # dissected once, then kept (it is small)
    assert bytes(packet) == write + payload == request.wire
    assert fields_of(packet) == {**request.fields, "data": payload}
