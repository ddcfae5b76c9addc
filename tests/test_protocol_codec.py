"""Property tests of the sans-IO codec: every message round-trips, and
arbitrary bytes never raise anything but CodecError."""

from __future__ import annotations

import contextlib
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.protocol import codec
from harness.protocol import constants as c
from harness.protocol.errors import CodecError
from harness.protocol.messages import (
    BlockStatusRequestPayload,
    ChunkBlockStatus,
    ChunkError,
    ChunkErrorOffset,
    ChunkNone,
    ChunkOffsetData,
    ChunkOffsetHole,
    ChunkUnknown,
    ClientFlags,
    EmptyPayload,
    ErrorReplyPayload,
    ExportNamePayload,
    ExportNameReply,
    Extent,
    InfoBlockSize,
    InfoDescription,
    InfoExport,
    InfoInitState,
    InfoName,
    InfoRequestPayload,
    InfoUnknown,
    MetaContextPayload,
    MetaContextReplyPayload,
    NewstyleGreeting,
    OldstyleGreeting,
    OptionReply,
    OptionRequest,
    ReplyChunk,
    Request,
    ServerPayload,
    SimpleReply,
)

u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)
u64 = st.integers(0, 2**64 - 1)
name = st.text(max_size=40)
small = st.binary(max_size=64)

# --- framing round trips ----------------------------------------------------------

greetings = st.one_of(
    st.builds(OldstyleGreeting, size=u64, flags=u32),
    st.builds(NewstyleGreeting, handshake_flags=u16),
)


@given(greetings)
def test_greeting_round_trip(msg):
    raw = codec.encode(msg)
    assert codec.decode_greeting(raw) == (msg, len(raw))
    assert codec.decode_greeting(raw[:-1]) is None


@given(st.builds(ClientFlags, flags=u32))
def test_client_flags_round_trip(msg):
    assert codec.decode_client_flags(codec.encode(msg)) == (msg, 4)


@given(st.builds(OptionRequest, option=u32, data=small))
def test_option_request_round_trip(msg):
    raw = codec.encode(msg)
    assert codec.decode_option_request(raw + b"extra") == (msg, len(raw))
    assert codec.decode_option_request(raw[:-1]) is None


@given(st.builds(OptionReply, option=u32, reply_type=u32, data=small))
def test_option_reply_round_trip(msg):
    raw = codec.encode(msg)
    assert codec.decode_option_reply(raw) == (msg, len(raw))


@given(st.builds(ExportNameReply, size=u64, transmission_flags=u16, zeroes=st.booleans()))
def test_export_name_reply_round_trip(msg):
    raw = codec.encode(msg)
    assert len(raw) == (134 if msg.zeroes else 10)
    assert codec.decode_export_name_reply(raw, msg.zeroes) == (msg, len(raw))


@st.composite
def requests(draw):
    extended = draw(st.booleans())
    cmd = draw(st.sampled_from(list(c.Cmd)) | u16)
    flags = draw(u16)
    payload = b""
    if extended:
        # A write's data follows it even without NBD_CMD_FLAG_PAYLOAD_LEN (qemu's clients omit
        # the flag and the codec reads the data anyway to stay in sync).
        carries = flags & c.CmdFlag.PAYLOAD_LEN or cmd == c.Cmd.WRITE
        if carries:
            payload = draw(small)
        length = len(payload) if carries else draw(u64)
    elif cmd == c.Cmd.WRITE:
        payload = draw(small)
        length = len(payload)
    else:
        length = draw(u32)
    return Request(
        type=cmd,
        offset=draw(u64),
        length=length,
        cookie=draw(u64),
        flags=flags,
        payload=payload,
        extended=extended,
    )


@given(requests())
def test_request_round_trip(msg):
    raw = codec.encode(msg)
    assert codec.decode_request(raw) == (msg, len(raw))
    assert codec.decode_request(raw[:-1]) is None


@given(u64, u32, small)
def test_simple_reply_uses_read_length(cookie, error, data):
    msg = SimpleReply(cookie, error, data if error == 0 else b"")
    raw = codec.encode(msg)
    lengths = {cookie: len(msg.data)}
    assert codec.decode_reply(raw, lengths.get) == (msg, len(raw))


@given(
    st.builds(
        ReplyChunk,
        cookie=u64,
        type=u16,
        flags=u16,
        payload=small,
        extended=st.booleans(),
        offset=u64,
    )
)
def test_chunk_round_trip(msg):
    if not msg.extended:
        msg = ReplyChunk(msg.cookie, msg.type, msg.flags, msg.payload, False, None)
    raw = codec.encode(msg)
    assert codec.decode_reply(raw, lambda _: None) == (msg, len(raw))


# --- payload round trips ----------------------------------------------------------

option_payloads = st.one_of(
    st.tuples(st.just(c.Opt.EXPORT_NAME), st.builds(ExportNamePayload, name)),
    st.tuples(
        st.sampled_from([c.Opt.INFO, c.Opt.GO]),
        st.builds(InfoRequestPayload, name, st.lists(u16, max_size=5).map(tuple)),
    ),
    st.tuples(
        st.sampled_from([c.Opt.LIST_META_CONTEXT, c.Opt.SET_META_CONTEXT]),
        st.builds(MetaContextPayload, name, st.lists(name, max_size=5).map(tuple)),
    ),
    st.tuples(
        st.sampled_from(
            [
                c.Opt.ABORT,
                c.Opt.LIST,
                c.Opt.STARTTLS,
                c.Opt.STRUCTURED_REPLY,
                c.Opt.EXTENDED_HEADERS,
            ]
        ),
        st.just(EmptyPayload()),
    ),
)


@given(option_payloads)
def test_option_payload_round_trip(pair):
    option, payload = pair
    assert codec.decode_option_payload(option, codec.encode_option_payload(payload)) == payload


infos = st.one_of(
    st.builds(InfoExport, u64, u16),
    st.builds(InfoName, name),
    st.builds(InfoDescription, name),
    st.builds(InfoBlockSize, u32, u32, u32),
    st.builds(InfoInitState, u16),
    st.builds(InfoUnknown, st.integers(5, 0xFFFF), small),
)
reply_payloads = st.one_of(
    st.tuples(st.just(c.Rep.SERVER), st.builds(ServerPayload, name, name)),
    st.tuples(st.just(c.Rep.INFO), infos),
    st.tuples(st.just(c.Rep.META_CONTEXT), st.builds(MetaContextReplyPayload, u32, name)),
    st.tuples(
        st.sampled_from([r for r in c.Rep if c.is_rep_error(r)]), st.builds(ErrorReplyPayload, name)
    ),
    st.tuples(st.just(c.Rep.ACK), st.just(EmptyPayload())),
)


@given(reply_payloads)
def test_reply_payload_round_trip(pair):
    rtype, payload = pair
    assert codec.decode_reply_payload(rtype, codec.encode_reply_payload(payload)) == payload


extents32 = st.lists(st.builds(Extent, u32, u32), min_size=1, max_size=6).map(tuple)
extents64 = st.lists(st.builds(Extent, u64, u64), min_size=1, max_size=6).map(tuple)
chunk_payloads = st.one_of(
    st.just(ChunkNone()),
    st.builds(ChunkOffsetData, u64, st.binary(min_size=1, max_size=64)),
    st.builds(ChunkOffsetHole, u64, u32),
    st.builds(ChunkBlockStatus, u32, extents32, st.just(False)),
    st.builds(ChunkBlockStatus, u32, extents64, st.just(True)),
    st.builds(ChunkError, u32, name),
    st.builds(ChunkErrorOffset, u32, u64, name),
    st.builds(ChunkUnknown, st.integers(7, 0x7FFF), small),
)


@given(chunk_payloads, u64, st.booleans(), st.booleans(), u64)
def test_chunk_payload_round_trip(payload, cookie, done, extended, offset):
    chunk = codec.chunk(cookie, payload, done=done, extended=extended, offset=offset)
    raw = codec.encode(chunk)
    decoded, used = codec.decode_reply(raw, lambda _: None)
    assert used == len(raw)
    assert decoded == chunk
    assert codec.decode_chunk_payload(decoded.type, decoded.payload) == payload


@given(st.builds(BlockStatusRequestPayload, u64, st.lists(u32, max_size=8).map(tuple)))
def test_block_status_payload_round_trip(payload):
    raw = codec.encode_block_status_payload(payload)
    assert codec.decode_block_status_payload(raw) == payload


# --- arbitrary bytes: only CodecError ------------------------------------------------

DECODERS = [
    codec.decode_greeting,
    codec.decode_client_flags,
    codec.decode_option_request,
    codec.decode_option_reply,
    lambda b: codec.decode_export_name_reply(b, True),
    lambda b: codec.decode_export_name_reply(b, False),
    codec.decode_request,
    lambda b: codec.decode_reply(b, lambda cookie: cookie % 100),
    codec.decode_info,
    codec.decode_block_status_payload,
]


@pytest.mark.parametrize("decoder", DECODERS)
@settings(max_examples=300)
@given(st.binary(max_size=200))
def test_framing_decoders_raise_only_codec_error(decoder, data):
    with contextlib.suppress(CodecError):
        decoder(data)


@settings(max_examples=500)
@given(u32, st.binary(max_size=120))
def test_payload_decoders_raise_only_codec_error(kind, data):
    for decode in (codec.decode_option_payload, codec.decode_reply_payload):
        with contextlib.suppress(CodecError):
            decode(kind, data)
    with contextlib.suppress(CodecError):
        codec.decode_chunk_payload(kind & 0xFFFF, data)


@settings(max_examples=300)
@given(st.sampled_from(list(c.Opt)), st.binary(max_size=80))
def test_known_option_payloads_raise_only_codec_error(option, data):
    with contextlib.suppress(CodecError):
        codec.decode_option_payload(option, data)


# --- exact layouts from the spec ---------------------------------------------------


def test_wire_layouts_match_the_spec():
    assert codec.encode(NewstyleGreeting(3)) == b"NBDMAGICIHAVEOPT\x00\x03"
    oldstyle = codec.encode(OldstyleGreeting(1024, 1))
    assert len(oldstyle) == 152 and oldstyle[:8] == b"NBDMAGIC"
    assert oldstyle[8:16] == bytes.fromhex("0000420281861253")
    req = codec.encode(Request(type=c.Cmd.READ, offset=512, length=4096, cookie=7))
    assert req == struct.pack(">IHHQQI", 0x25609513, 0, 0, 7, 512, 4096)
    ext = codec.encode(Request(type=c.Cmd.READ, offset=512, length=4096, cookie=7, extended=True))
    assert ext == struct.pack(">IHHQQQ", 0x21E41C71, 0, 0, 7, 512, 4096)
    go = codec.option(c.Opt.GO, InfoRequestPayload("disk", (c.Info.BLOCK_SIZE,)))
    assert codec.encode(go) == (
        b"IHAVEOPT" + struct.pack(">II", 7, 12) + b"\x00\x00\x00\x04disk" + b"\x00\x01\x00\x03"
    )
    hole = codec.chunk(9, ChunkOffsetHole(0, 512), done=True)
    assert codec.encode(hole) == struct.pack(">IHHQIQI", 0x668E33EF, 1, 2, 9, 12, 0, 512)


@pytest.mark.parametrize(
    ("rtype", "data", "rule"),
    [
        (c.ReplyType.NONE, b"x", "server.none-chunk-length"),
        (c.ReplyType.OFFSET_DATA, b"\x00" * 8, "server.offset-data-length"),
        (c.ReplyType.OFFSET_HOLE, b"\x00" * 11, "server.offset-hole-length"),
        (c.ReplyType.BLOCK_STATUS, b"\x00" * 8, "server.status-chunk-length"),
        (
            c.ReplyType.BLOCK_STATUS_EXT,
            struct.pack(">IIQQ", 1, 2, 512, 0),
            "server.status-ext-count",
        ),
        (c.ReplyType.ERROR, struct.pack(">IH", 5, 10) + b"abc", "server.error-message-fits"),
        (c.ReplyType.ERROR_OFFSET, struct.pack(">IH", 5, 0), "server.error-offset-length"),
    ],
)
def test_chunk_length_rules(rtype, data, rule):
    with pytest.raises(CodecError) as info:
        codec.decode_chunk_payload(rtype, data)
    assert info.value.rule == rule
    assert info.value.section


def test_info_lengths_are_enforced():
    with pytest.raises(CodecError, match="MUST be 12"):
        codec.decode_info(struct.pack(">HQ", c.Info.EXPORT, 5))
    with pytest.raises(CodecError, match="MUST be 14"):
        codec.decode_info(struct.pack(">HII", c.Info.BLOCK_SIZE, 1, 2))


def test_string_limit_and_utf8():
    too_long = struct.pack(">I", 4097) + b"a" * 4097 + b"\x00\x00"
    with pytest.raises(CodecError, match="4096"):
        codec.decode_option_payload(c.Opt.GO, too_long)
    with pytest.raises(CodecError, match="UTF-8"):
        codec.decode_option_payload(c.Opt.EXPORT_NAME, b"\xff\xfe")
