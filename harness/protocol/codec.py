"""Sans-IO encoder and decoder for every NBD message, both directions.

Two levels:

* framing: :func:`encode` turns any message of :mod:`.messages` into bytes;
  the ``decode_*`` functions cut one message off the front of a buffer and
  return ``(message, bytes_consumed)``, or ``None`` when the buffer does not
  hold the whole message yet.  What comes next on a stream depends on the
  negotiation (the state machine in :mod:`.connection` knows which decoder
  to call).
* payloads: ``encode_*_payload`` / ``decode_*_payload`` translate the data of
  options, option replies, ``NBD_REP_INFO`` items, chunks and block-status
  request payloads to and from the typed values of :mod:`.messages`.

Decoding arbitrary bytes raises :class:`CodecError` and nothing else.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from . import constants as c
from .errors import CodecError
from .messages import (
    BlockStatusRequestPayload,
    ChunkBlockStatus,
    ChunkError,
    ChunkErrorOffset,
    ChunkNone,
    ChunkOffsetData,
    ChunkOffsetHole,
    ChunkPayload,
    ChunkUnknown,
    ClientFlags,
    EmptyPayload,
    ErrorReplyPayload,
    Event,
    ExportNamePayload,
    ExportNameReply,
    Extent,
    InfoBlockSize,
    InfoDescription,
    InfoExport,
    InfoInitState,
    InfoName,
    InfoPayload,
    InfoRequestPayload,
    InfoUnknown,
    MetaContextPayload,
    MetaContextReplyPayload,
    NewstyleGreeting,
    OldstyleGreeting,
    OptionReply,
    OptionRequest,
    RawPayload,
    ReplyChunk,
    Request,
    ServerPayload,
    SimpleReply,
)

Buffer = bytes | bytearray | memoryview
Decoded = tuple[Event, int] | None

_OLDSTYLE = struct.Struct(">QQQI124x")
_NEWSTYLE = struct.Struct(">QQH")
_CLIENT_FLAGS = struct.Struct(">I")
_OPTION = struct.Struct(">QII")
_OPTION_REPLY = struct.Struct(">QIII")
_EXPORT_NAME_REPLY = struct.Struct(">QH")
_REQUEST = struct.Struct(">IHHQQI")
_EXT_REQUEST = struct.Struct(">IHHQQQ")
_SIMPLE_REPLY = struct.Struct(">IIQ")
_STRUCTURED = struct.Struct(">IHHQI")
_EXTENDED = struct.Struct(">IHHQQQ")

MAX_OPTION_DATA = c.MAX_OPTION_LEN
MAX_REPLY_DATA = c.MAX_OPTION_LEN
# A reply chunk or request payload may not exceed a 32-bit length in
# practice (section "Extended reply chunk message"); we refuse more rather than
# buffer unbounded memory.
MAX_WIRE_PAYLOAD = 0xFFFFFFFF

# The rules (ids of harness.protocol.rules) a malformed field breaks, where that depends
# on who sent it or on its type.
_CLIENT_UTF8 = "client.string-utf8"
_SERVER_UTF8 = "server.string-utf8"
_INFO_LENGTH_RULE = {
    c.Info.EXPORT: "server.info-export-length",
    c.Info.BLOCK_SIZE: "server.info-block-size-length",
}
_ERROR_LENGTH_RULE = {False: "server.error-length", True: "server.error-offset-length"}


def _status_length_rule(data: bytes, header: int) -> str:
    """A status chunk of the wrong length: no descriptor at all, or a partial one."""
    if len(data) == header:
        return "server.status-at-least-one-descriptor"
    return "server.status-chunk-length" if header == 4 else "server.status-ext-chunk-length"


def _text(raw: Buffer, what: str, rule: str) -> str:
    """``raw`` as a string; ``rule`` is the rule (the sender's) invalid UTF-8 breaks."""
    try:
        return bytes(raw).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CodecError(
            f"{what} is not valid UTF-8 ({exc.reason} at byte {exc.start})", rule=rule
        ) from None


def _u(fmt: str, raw: Buffer, offset: int, what: str, rule: str = "") -> tuple[int, ...]:
    """Fields ``fmt`` at ``offset``; ``rule`` is the rule a too-short message breaks."""
    size = struct.calcsize(fmt)
    if len(raw) < offset + size:
        raise CodecError(
            f"{what}: need {size} bytes at offset {offset}, have {len(raw) - offset}", rule=rule
        )
    return struct.unpack_from(fmt, raw, offset)


# --- encoding: framing --------------------------------------------------------


def encode(event: Event) -> bytes:
    """Encode one framing message to its exact wire bytes."""
    match event:
        case OldstyleGreeting(size=size, flags=flags):
            return _OLDSTYLE.pack(c.NBDMAGIC, c.CLISERV_MAGIC, size, flags)
        case NewstyleGreeting(handshake_flags=flags):
            return _NEWSTYLE.pack(c.NBDMAGIC, c.IHAVEOPT, flags)
        case ClientFlags(flags=flags):
            return _CLIENT_FLAGS.pack(flags)
        case OptionRequest(option=option, data=data):
            return _OPTION.pack(c.IHAVEOPT, option, len(data)) + bytes(data)
        case OptionReply(option=option, reply_type=reply_type, data=data):
            return _OPTION_REPLY.pack(c.OPTION_REPLY_MAGIC, option, reply_type, len(data)) + bytes(
                data
            )
        case ExportNameReply(size=size, transmission_flags=flags, zeroes=zeroes):
            body = _EXPORT_NAME_REPLY.pack(size, flags)
            return body + bytes(c.EXPORT_NAME_REPLY_ZEROES) if zeroes else body
        case Request(extended=False) as req:
            return (
                _REQUEST.pack(
                    c.REQUEST_MAGIC, req.flags, req.type, req.cookie, req.offset, req.length
                )
                + req.payload
            )
        case Request(extended=True) as req:
            return (
                _EXT_REQUEST.pack(
                    c.EXTENDED_REQUEST_MAGIC,
                    req.flags,
                    req.type,
                    req.cookie,
                    req.offset,
                    req.length,
                )
                + req.payload
            )
        case SimpleReply(cookie=cookie, error=error, data=data):
            return _SIMPLE_REPLY.pack(c.SIMPLE_REPLY_MAGIC, error, cookie) + data
        case ReplyChunk(extended=False) as chunk:
            return (
                _STRUCTURED.pack(
                    c.STRUCTURED_REPLY_MAGIC,
                    chunk.flags,
                    chunk.type,
                    chunk.cookie,
                    len(chunk.payload),
                )
                + chunk.payload
            )
        case ReplyChunk(extended=True) as chunk:
            return (
                _EXTENDED.pack(
                    c.EXTENDED_REPLY_MAGIC,
                    chunk.flags,
                    chunk.type,
                    chunk.cookie,
                    chunk.offset or 0,
                    len(chunk.payload),
                )
                + chunk.payload
            )
    raise TypeError(f"cannot encode {event!r}")


# --- decoding: framing --------------------------------------------------------


def decode_greeting(buf: Buffer) -> Decoded:
    """Oldstyle (152 bytes) or newstyle (18 bytes) greeting, told apart by magic."""
    if len(buf) < 16:
        _check_prefix(buf, c.NBDMAGIC.to_bytes(8, "big"), "greeting magic")
        return None
    magic, second = struct.unpack_from(">QQ", buf)
    if magic != c.NBDMAGIC:
        raise CodecError(
            f"greeting starts with {magic:#018x}, not NBDMAGIC",
            rule="server.greeting-magic",
        )
    if second == c.CLISERV_MAGIC:
        if len(buf) < _OLDSTYLE.size:
            return None
        _, _, size, flags = _OLDSTYLE.unpack_from(buf)
        return OldstyleGreeting(size=size, flags=flags), _OLDSTYLE.size
    if second == c.IHAVEOPT:
        if len(buf) < _NEWSTYLE.size:
            return None
        _, _, flags = _NEWSTYLE.unpack_from(buf)
        return NewstyleGreeting(handshake_flags=flags), _NEWSTYLE.size
    raise CodecError(
        f"greeting's second magic {second:#x} is neither cliserv_magic nor IHAVEOPT",
        rule="server.greeting-magic",
    )


def _check_prefix(buf: Buffer, magic: bytes, what: str) -> None:
    head = bytes(buf[: len(magic)])
    if head != magic[: len(head)]:
        raise CodecError(f"{what}: got {head.hex()}, expected {magic[: len(head)].hex()}")


def decode_client_flags(buf: Buffer) -> Decoded:
    if len(buf) < 4:
        return None
    return ClientFlags(_CLIENT_FLAGS.unpack_from(buf)[0]), 4


def decode_option_request(buf: Buffer, max_data: int = MAX_OPTION_DATA) -> Decoded:
    if len(buf) < _OPTION.size:
        _check_prefix(buf, c.IHAVEOPT.to_bytes(8, "big"), "option magic")
        return None
    magic, option, length = _OPTION.unpack_from(buf)
    if magic != c.IHAVEOPT:
        raise CodecError(
            f"option request magic is {magic:#018x}, not IHAVEOPT",
            rule="client.option-magic",
        )
    if length > max_data:
        raise CodecError(
            f"option {c.name_of(c.Opt, option)} claims {length} bytes of data (limit {max_data})",
        )
    end = _OPTION.size + length
    if len(buf) < end:
        return None
    return OptionRequest(option, bytes(buf[_OPTION.size : end])), end


def decode_option_reply(buf: Buffer, max_data: int = MAX_REPLY_DATA) -> Decoded:
    if len(buf) < _OPTION_REPLY.size:
        _check_prefix(buf, c.OPTION_REPLY_MAGIC.to_bytes(8, "big"), "option reply magic")
        return None
    magic, option, reply_type, length = _OPTION_REPLY.unpack_from(buf)
    if magic != c.OPTION_REPLY_MAGIC:
        raise CodecError(
            f"option reply magic is {magic:#x}, not {c.OPTION_REPLY_MAGIC:#x}",
            rule="server.option-reply-magic",
        )
    if length > max_data:
        raise CodecError(f"option reply claims {length} bytes of data (limit {max_data})")
    end = _OPTION_REPLY.size + length
    if len(buf) < end:
        return None
    return OptionReply(option, reply_type, bytes(buf[_OPTION_REPLY.size : end])), end


def decode_export_name_reply(buf: Buffer, zeroes: bool) -> Decoded:
    need = _EXPORT_NAME_REPLY.size + (c.EXPORT_NAME_REPLY_ZEROES if zeroes else 0)
    if len(buf) < need:
        return None
    size, flags = _EXPORT_NAME_REPLY.unpack_from(buf)
    if zeroes and any(buf[_EXPORT_NAME_REPLY.size : need]):
        raise CodecError(
            "the 124 reserved bytes after the export-name reply are not zero",
            rule="server.export-name-reply-zeroes",
        )
    return ExportNameReply(size, flags, zeroes), need


def decode_request(buf: Buffer, max_payload: int = MAX_WIRE_PAYLOAD) -> Decoded:
    """A compact or extended request (told apart by magic) with its payload.

    A compact request carries a payload only for ``NBD_CMD_WRITE``; an
    extended request only when it sets ``NBD_CMD_FLAG_PAYLOAD_LEN``.
    """
    if len(buf) < 4:
        return None
    (magic,) = struct.unpack_from(">I", buf)
    if magic == c.REQUEST_MAGIC:
        if len(buf) < _REQUEST.size:
            return None
        _, flags, cmd, cookie, offset, length = _REQUEST.unpack_from(buf)
        payload_len = length if cmd == c.Cmd.WRITE else 0
        header, extended = _REQUEST.size, False
    elif magic == c.EXTENDED_REQUEST_MAGIC:
        if len(buf) < _EXT_REQUEST.size:
            return None
        _, flags, cmd, cookie, offset, length = _EXT_REQUEST.unpack_from(buf)
        # A write always carries its data: "NBD_CMD_WRITE MUST use the flag
        # NBD_CMD_FLAG_PAYLOAD_LEN in this mode", but qemu's client (10.0, 11.1) omits the
        # flag and sends the data anyway, and qemu-nbd reads it.  Reading it too keeps the
        # stream in sync; the state machine still reports the missing flag.
        payload_len = length if flags & c.CmdFlag.PAYLOAD_LEN or cmd == c.Cmd.WRITE else 0
        header, extended = _EXT_REQUEST.size, True
    else:
        raise CodecError(
            f"request magic is {magic:#010x}, expected {c.REQUEST_MAGIC:#010x} "
            f"or {c.EXTENDED_REQUEST_MAGIC:#010x}",
            rule="client.request-magic",
        )
    if payload_len > max_payload:
        raise CodecError(
            f"request payload of {payload_len} bytes exceeds {max_payload}",
            rule="client.request-max-payload",
        )
    end = header + payload_len
    if len(buf) < end:
        return None
    request = Request(
        type=cmd,
        offset=offset,
        length=length,
        cookie=cookie,
        flags=flags,
        payload=bytes(buf[header:end]),
        extended=extended,
    )
    return request, end


def decode_reply(
    buf: Buffer, read_length: Callable[[int], int | None], max_payload: int = MAX_WIRE_PAYLOAD
) -> Decoded:
    """A simple reply, structured chunk or extended chunk (told apart by magic).

    ``read_length(cookie)`` gives the length of the read request a simple
    reply answers (None when the cookie is not an outstanding read): a
    simple reply cannot be cut out of the stream without it.
    """
    if len(buf) < 4:
        return None
    (magic,) = struct.unpack_from(">I", buf)
    if magic == c.SIMPLE_REPLY_MAGIC:
        if len(buf) < _SIMPLE_REPLY.size:
            return None
        _, error, cookie = _SIMPLE_REPLY.unpack_from(buf)
        data_len = 0
        if error == 0:
            data_len = read_length(cookie) or 0
        end = _SIMPLE_REPLY.size + data_len
        if len(buf) < end:
            return None
        return SimpleReply(cookie, error, bytes(buf[_SIMPLE_REPLY.size : end])), end
    if magic == c.STRUCTURED_REPLY_MAGIC:
        if len(buf) < _STRUCTURED.size:
            return None
        _, flags, rtype, cookie, length = _STRUCTURED.unpack_from(buf)
        header, extended, offset = _STRUCTURED.size, False, None
    elif magic == c.EXTENDED_REPLY_MAGIC:
        if len(buf) < _EXTENDED.size:
            return None
        _, flags, rtype, cookie, offset, length = _EXTENDED.unpack_from(buf)
        header, extended = _EXTENDED.size, True
    else:
        raise CodecError(
            f"reply magic is {magic:#010x}, not a simple, structured or extended reply magic",
            rule="server.reply-magic",
        )
    if length > max_payload:
        raise CodecError(
            f"reply chunk claims {length} bytes of payload (limit {max_payload})",
            rule="server.chunk-payload-max",
        )
    end = header + length
    if len(buf) < end:
        return None
    return ReplyChunk(
        cookie=cookie,
        type=rtype,
        flags=flags,
        payload=bytes(buf[header:end]),
        extended=extended,
        offset=offset,
    ), end


# --- option payloads ----------------------------------------------------------


def _string32(text: str) -> bytes:
    raw = text.encode()
    return struct.pack(">I", len(raw)) + raw


def encode_option_payload(payload: object) -> bytes:
    """Bytes of a typed option payload."""
    match payload:
        case ExportNamePayload(name=name):
            return name.encode()
        case InfoRequestPayload(name=name, info_requests=infos):
            return _string32(name) + struct.pack(f">H{len(infos)}H", len(infos), *infos)
        case MetaContextPayload(name=name, queries=queries):
            return (
                _string32(name)
                + struct.pack(">I", len(queries))
                + b"".join(_string32(q) for q in queries)
            )
        case EmptyPayload():
            return b""
        case RawPayload(data=data):
            return data
    raise TypeError(f"not an option payload: {payload!r}")


def decode_option_payload(option: int, data: Buffer) -> object:
    """The typed payload of option ``option``; unknown options give :class:`RawPayload`."""
    data = bytes(data)
    if option == c.Opt.EXPORT_NAME:
        return ExportNamePayload(_text(data, "export name", _CLIENT_UTF8))
    if option in (c.Opt.INFO, c.Opt.GO):
        name, pos = _read_string32(data, 0, "export name", slack=2, rule="client.info-name-length")
        (count,) = _u(">H", data, pos, "number of information requests")
        pos += 2
        if len(data) != pos + 2 * count:
            raise CodecError(
                f"{c.name_of(c.Opt, option)} lists {count} information requests "
                f"in {len(data) - pos} bytes",
            )
        infos = struct.unpack_from(f">{count}H", data, pos)
        return InfoRequestPayload(name, tuple(infos))
    if option in (c.Opt.LIST_META_CONTEXT, c.Opt.SET_META_CONTEXT):
        name, pos = _read_string32(data, 0, "export name", slack=4)
        (count,) = _u(">I", data, pos, "number of queries")
        pos += 4
        queries = []
        for index in range(count):
            query, pos = _read_string32(data, pos, f"query {index + 1}")
            queries.append(query)
        if pos != len(data):
            raise CodecError(
                f"{len(data) - pos} bytes follow the last query",
            )
        return MetaContextPayload(name, tuple(queries))
    if option == c.Opt.ABORT:
        # "The client SHOULD NOT send any additional data with the option; however, a
        # server SHOULD ignore any data sent by the client".
        return RawPayload(data) if data else EmptyPayload()
    if option in c.NO_DATA_OPTIONS:
        if data:
            raise CodecError(
                f"{c.name_of(c.Opt, option)} carries {len(data)} bytes of data; it takes none",
                rule="client.no-data-with-option",
            )
        return EmptyPayload()
    return RawPayload(data)


def _read_string32(
    data: bytes, pos: int, what: str, slack: int = 0, rule: str = ""
) -> tuple[str, int]:
    """A 32-bit length and that many bytes of UTF-8 in option data; ``rule`` is the one
    a string running past the data breaks."""
    (length,) = _u(">I", data, pos, f"length of {what}", rule)
    pos += 4
    if length > c.MAX_STRING_LEN:
        raise CodecError(
            f"{what} is {length} bytes, more than the {c.MAX_STRING_LEN}-byte limit",
            rule="client.string-max-length",
        )
    if pos + length + slack > len(data):
        raise CodecError(
            f"{what} length {length} runs past the option data",
            rule=rule,
        )
    return _text(data[pos : pos + length], what, _CLIENT_UTF8), pos + length


# --- option reply payloads ----------------------------------------------------


def encode_info(info: InfoPayload) -> bytes:
    """Bytes of an ``NBD_REP_INFO`` payload (type included)."""
    match info:
        case InfoExport(size=size, transmission_flags=flags):
            return struct.pack(">HQH", c.Info.EXPORT, size, flags)
        case InfoName(name=name):
            return struct.pack(">H", c.Info.NAME) + name.encode()
        case InfoDescription(description=text):
            return struct.pack(">H", c.Info.DESCRIPTION) + text.encode()
        case InfoBlockSize(minimum=lo, preferred=pref, maximum=hi):
            return struct.pack(">HIII", c.Info.BLOCK_SIZE, lo, pref, hi)
        case InfoInitState(flags=flags):
            return struct.pack(">HH", c.Info.INIT_STATE, flags)
        case InfoUnknown(info_type=info_type, data=data):
            return struct.pack(">H", info_type) + data
    raise TypeError(f"not an info payload: {info!r}")


def decode_info(data: Buffer) -> InfoPayload:
    data = bytes(data)
    (info_type,) = _u(">H", data, 0, "information type", "server.info-length-at-least-2")
    expected = c.INFO_FIXED_LENGTH.get(info_type)
    if expected is not None and len(data) != expected:
        raise CodecError(
            f"{c.name_of(c.Info, info_type)} has length {len(data)}, MUST be {expected}",
            section="Option reply types",
            rule=_INFO_LENGTH_RULE.get(info_type, ""),
        )
    if info_type == c.Info.EXPORT:
        _, size, flags = struct.unpack(">HQH", data)
        return InfoExport(size, flags)
    if info_type == c.Info.NAME:
        return InfoName(_text(data[2:], "NBD_INFO_NAME", _SERVER_UTF8))
    if info_type == c.Info.DESCRIPTION:
        return InfoDescription(_text(data[2:], "NBD_INFO_DESCRIPTION", _SERVER_UTF8))
    if info_type == c.Info.BLOCK_SIZE:
        _, lo, pref, hi = struct.unpack(">HIII", data)
        return InfoBlockSize(lo, pref, hi)
    if info_type == c.Info.INIT_STATE:
        _, flags = struct.unpack(">HH", data)
        return InfoInitState(flags)
    return InfoUnknown(info_type, data[2:])


def encode_reply_payload(payload: object) -> bytes:
    match payload:
        case ServerPayload(name=name, details=details):
            return _string32(name) + details.encode()
        case MetaContextReplyPayload(context_id=cid, name=name):
            return struct.pack(">I", cid) + name.encode()
        case ErrorReplyPayload(message=message):
            return message.encode()
        case EmptyPayload():
            return b""
        case RawPayload(data=data):
            return data
    if isinstance(
        payload,
        InfoExport | InfoName | InfoDescription | InfoBlockSize | InfoInitState | InfoUnknown,
    ):
        return encode_info(payload)
    raise TypeError(f"not an option reply payload: {payload!r}")


def decode_reply_payload(reply_type: int, data: Buffer) -> object:
    """The typed payload of an option reply of type ``reply_type``."""
    data = bytes(data)
    if c.is_rep_error(reply_type):
        return ErrorReplyPayload(_text(data, "error message", _SERVER_UTF8))
    if reply_type == c.Rep.ACK:
        if data:
            raise CodecError(
                f"NBD_REP_ACK carries {len(data)} bytes; it has no data",
            )
        return EmptyPayload()
    if reply_type == c.Rep.SERVER:
        (length,) = _u(">I", data, 0, "length of export name", "server.rep-server-name-length")
        if length > len(data) - 4:
            raise CodecError(
                f"NBD_REP_SERVER name length {length} exceeds the reply's {len(data) - 4} bytes",
                rule="server.rep-server-name-length",
            )
        return ServerPayload(
            _text(data[4 : 4 + length], "export name", _SERVER_UTF8),
            _text(data[4 + length :], "export details", _SERVER_UTF8),
        )
    if reply_type == c.Rep.INFO:
        return decode_info(data)
    if reply_type == c.Rep.META_CONTEXT:
        (cid,) = _u(">I", data, 0, "metadata context id")
        return MetaContextReplyPayload(
            cid, _text(data[4:], "metadata context name", "server.meta-context-name-utf8")
        )
    return RawPayload(data)


# --- chunk payloads -------------------------------------------------------------


def encode_chunk_payload(payload: ChunkPayload) -> bytes:
    match payload:
        case ChunkNone():
            return b""
        case ChunkOffsetData(offset=offset, data=data):
            return struct.pack(">Q", offset) + data
        case ChunkOffsetHole(offset=offset, length=length):
            return struct.pack(">QI", offset, length)
        case ChunkBlockStatus(context_id=cid, extents=extents, wide=False):
            return struct.pack(">I", cid) + b"".join(
                struct.pack(">II", e.length, e.flags) for e in extents
            )
        case ChunkBlockStatus(context_id=cid, extents=extents, wide=True):
            return struct.pack(">II", cid, len(extents)) + b"".join(
                struct.pack(">QQ", e.length, e.flags) for e in extents
            )
        case ChunkError(error=error, message=message, trailing=trailing):
            raw = message.encode()
            return struct.pack(">IH", error, len(raw)) + raw + trailing
        case ChunkErrorOffset(error=error, offset=offset, message=message):
            raw = message.encode()
            return struct.pack(">IH", error, len(raw)) + raw + struct.pack(">Q", offset)
        case ChunkUnknown(data=data):
            return data
    raise TypeError(f"not a chunk payload: {payload!r}")


def chunk_type_of(payload: ChunkPayload) -> int:
    """The reply type that carries ``payload``."""
    match payload:
        case ChunkNone():
            return c.ReplyType.NONE
        case ChunkOffsetData():
            return c.ReplyType.OFFSET_DATA
        case ChunkOffsetHole():
            return c.ReplyType.OFFSET_HOLE
        case ChunkBlockStatus(wide=wide):
            return c.ReplyType.BLOCK_STATUS_EXT if wide else c.ReplyType.BLOCK_STATUS
        case ChunkError():
            return c.ReplyType.ERROR
        case ChunkErrorOffset():
            return c.ReplyType.ERROR_OFFSET
        case ChunkUnknown(chunk_type=chunk_type):
            return chunk_type
    raise TypeError(f"not a chunk payload: {payload!r}")


def decode_chunk_payload(chunk_type: int, data: Buffer) -> ChunkPayload:
    """The typed payload of a chunk; length rules of "Structured reply types" enforced."""
    data = bytes(data)
    if chunk_type == c.ReplyType.NONE:
        if data:
            raise CodecError(
                "NBD_REPLY_TYPE_NONE has a payload; length MUST be 0",
                rule="server.none-chunk-length",
            )
        return ChunkNone()
    if chunk_type == c.ReplyType.OFFSET_DATA:
        if len(data) < 9:
            raise CodecError(
                f"NBD_REPLY_TYPE_OFFSET_DATA length {len(data)}; MUST be at least 9",
                rule="server.offset-data-length",
            )
        return ChunkOffsetData(struct.unpack_from(">Q", data)[0], data[8:])
    if chunk_type == c.ReplyType.OFFSET_HOLE:
        if len(data) != 12:
            raise CodecError(
                f"NBD_REPLY_TYPE_OFFSET_HOLE length {len(data)}; MUST be 12",
                rule="server.offset-hole-length",
            )
        offset, length = struct.unpack(">QI", data)
        return ChunkOffsetHole(offset, length)
    if chunk_type == c.ReplyType.BLOCK_STATUS:
        if len(data) < 12 or (len(data) - 4) % 8:
            raise CodecError(
                f"NBD_REPLY_TYPE_BLOCK_STATUS length {len(data)}; MUST be 4 + a "
                "positive multiple of 8",
                rule=_status_length_rule(data, 4),
            )
        (cid,) = struct.unpack_from(">I", data)
        pairs = struct.iter_unpack(">II", data[4:])
        return ChunkBlockStatus(cid, tuple(Extent(n, f) for n, f in pairs))
    if chunk_type == c.ReplyType.BLOCK_STATUS_EXT:
        if len(data) < 24 or (len(data) - 8) % 16:
            raise CodecError(
                f"NBD_REPLY_TYPE_BLOCK_STATUS_EXT length {len(data)}; MUST be 8 + a "
                "positive multiple of 16",
                rule=_status_length_rule(data, 8),
            )
        cid, count = struct.unpack_from(">II", data)
        if count * 16 + 8 != len(data):
            raise CodecError(
                f"BLOCK_STATUS_EXT descriptor count {count} does not match length {len(data)}",
                rule="server.status-ext-count",
            )
        pairs = struct.iter_unpack(">QQ", data[8:])
        return ChunkBlockStatus(cid, tuple(Extent(n, f) for n, f in pairs), wide=True)
    if c.is_error_chunk(chunk_type):
        minimum = 14 if chunk_type == c.ReplyType.ERROR_OFFSET else 6
        if len(data) < minimum:
            raise CodecError(
                f"{c.name_of(c.ReplyType, chunk_type)} length {len(data)}; MUST be "
                f"at least {minimum}",
                rule=_ERROR_LENGTH_RULE[chunk_type == c.ReplyType.ERROR_OFFSET],
            )
        error, msg_len = struct.unpack_from(">IH", data)
        if msg_len > len(data) - minimum:
            raise CodecError(
                f"error message length {msg_len} does not fit in the chunk's {len(data)} bytes",
                rule="server.error-message-fits",
            )
        message = _text(data[6 : 6 + msg_len], "error message", _SERVER_UTF8)
        if chunk_type == c.ReplyType.ERROR_OFFSET:
            if len(data) != 14 + msg_len:
                raise CodecError(
                    "NBD_REPLY_TYPE_ERROR_OFFSET has bytes after its offset",
                    rule="server.error-offset-length",
                )
            (offset,) = struct.unpack_from(">Q", data, 6 + msg_len)
            return ChunkErrorOffset(error, offset, message)
        trailing = data[6 + msg_len :]
        if chunk_type == c.ReplyType.ERROR and trailing:
            raise CodecError(
                "NBD_REPLY_TYPE_ERROR has bytes after its message",
                rule="server.error-length",
            )
        return ChunkError(error, message, trailing)
    return ChunkUnknown(chunk_type, data)


# --- block status request payload ------------------------------------------------


def encode_block_status_payload(payload: BlockStatusRequestPayload) -> bytes:
    ids = payload.context_ids
    return struct.pack(f">Q{len(ids)}I", payload.effect_length, *ids)


def decode_block_status_payload(data: Buffer) -> BlockStatusRequestPayload:
    data = bytes(data)
    if len(data) < 8 or (len(data) - 8) % 4:
        raise CodecError(
            f"block status payload of {len(data)} bytes; MUST be 8 + n*4",
            rule="client.block-status-payload-size",
        )
    (effect,) = struct.unpack_from(">Q", data)
    ids = struct.unpack_from(f">{(len(data) - 8) // 4}I", data, 8)
    return BlockStatusRequestPayload(effect, tuple(ids))


# --- convenience constructors -------------------------------------------------


def option(opt: int, payload: object = None) -> OptionRequest:
    """An option request carrying a typed payload (``None`` = no data)."""
    data = b"" if payload is None else encode_option_payload(payload)
    return OptionRequest(opt, data)


def option_reply(opt: int, reply_type: int, payload: object = None) -> OptionReply:
    data = b"" if payload is None else encode_reply_payload(payload)
    return OptionReply(opt, reply_type, data)


def chunk(
    cookie: int,
    payload: ChunkPayload,
    *,
    done: bool = False,
    extended: bool = False,
    offset: int = 0,
) -> ReplyChunk:
    """A reply chunk for ``payload``; ``offset`` is the extended header's request offset."""
    return ReplyChunk(
        cookie=cookie,
        type=chunk_type_of(payload),
        flags=c.ReplyFlag.DONE if done else 0,
        payload=encode_chunk_payload(payload),
        extended=extended,
        offset=offset if extended else None,
    )
