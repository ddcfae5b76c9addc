"""scapy layers for every NBD message: reading a class is reading the wire layout.

One ``Packet`` subclass per message of ``proto-extended-headers.md``; field names
follow the spec's wording (``name_length``, ``transmission_flags``, ``cookie``).
Enums and flags print with their spec names because each field gets its name
table from :mod:`harness.protocol.constants` (built once below).

The layers know nothing about session state.  Where the wire format depends on
earlier messages (the data after a simple reply, the 124 zeroes of an export-name
reply) the stream decoder cuts the message to the right length and the last
field of the layer takes whatever is left.  Header layers with a length field cut
their payload at that length (``extract_padding``) and pick the payload layer
from their type field (``guess_payload_class``), so ``NBDOptionReply(raw)`` gives
``NBDOptionReply / NBDRepInfo / NBDInfoExport``.

Building works too: ``bytes(NBDOption(option=Opt.GO) / NBDOptInfoGo(name="x"))``
fills in every length and count.
"""

from __future__ import annotations

import enum
from typing import Any

from scapy.fields import (
    ConditionalField,
    Field,
    FieldLenField,
    FieldListField,
    FlagsField,
    IntEnumField,
    IntField,
    LongField,
    PacketListField,
    ShortEnumField,
    StrField,
    StrFixedLenField,
    StrLenField,
    XIntField,
    XLongField,
    XShortField,
)
from scapy.packet import NoPayload, Packet, Padding, Raw

from harness.protocol import constants as c

# --- name tables, built once from the constants module -------------------------


def _enum_names(enum_type: type[enum.IntEnum]) -> dict[int, str]:
    """``{7: "NBD_OPT_GO", ...}`` for an IntEnum."""
    return {int(member): c.spec_name(member) for member in enum_type}


def _flag_names(flag_type: type[enum.IntFlag]) -> dict[int, str]:
    """``{1: "HAS_FLAGS", ...}`` for an IntFlag (short names: they print joined)."""
    return {int(member): str(member.name) for member in flag_type if member.value}


OPT_NAMES = _enum_names(c.Opt)
REP_NAMES = _enum_names(c.Rep)
INFO_NAMES = _enum_names(c.Info)
CMD_NAMES = _enum_names(c.Cmd)
REPLY_TYPE_NAMES = _enum_names(c.ReplyType)
ERRNO_NAMES = _enum_names(c.Errno)
MAGIC_NAMES = {int(member): str(member.name) for member in c.Magic}

HANDSHAKE_FLAG_NAMES = _flag_names(c.HandshakeFlag)
CLIENT_FLAG_NAMES = _flag_names(c.ClientFlag)
TRANSMISSION_FLAG_NAMES = _flag_names(c.TransmissionFlag)
CMD_FLAG_NAMES = _flag_names(c.CmdFlag)
REPLY_FLAG_NAMES = _flag_names(c.ReplyFlag)
INIT_FLAG_NAMES = _flag_names(c.InitFlag)


# --- field helpers ------------------------------------------------------------


class TextField(StrField):
    """A string of the spec (UTF-8 text): an export name, a message, a query.

    Values stay ``bytes`` inside the packet (the wire is what it is, valid UTF-8
    or not); :func:`harness.dissect.fields_of` turns them into ``str``.
    """


class TextLenField(StrLenField):
    """A length-prefixed string of the spec; see :class:`TextField`."""


def _fix_length(packet: bytes, payload: bytes, offset: int, size: int) -> bytes:
    """Write ``len(payload)`` big-endian into ``packet[offset:offset+size]``."""
    return packet[:offset] + len(payload).to_bytes(size, "big") + packet[offset + size :]


class _Element(Packet):
    """An element of a list (query, descriptor): never has a payload."""

    def extract_padding(self, s: bytes) -> tuple[bytes, bytes]:
        return b"", s


class _WholeElements(PacketListField):
    """A list of fixed-size elements (block descriptors) up to the end of the message.

    Only whole elements are read: bytes too few for one more stay after the list (and
    show as ``trailing``), instead of a half element hiding the whole payload.
    """

    __slots__ = ["element_size"]  # scapy fields have slots

    def __init__(self, name: str, cls: type[Packet], size: int) -> None:
        super().__init__(name, [], cls)
        self.element_size = size

    def getfield(self, pkt: Packet, s: bytes) -> tuple[bytes, list[Packet]]:
        usable = len(s) - len(s) % self.element_size
        rest, elements = super().getfield(pkt, s[:usable])
        return rest + s[usable:], elements


class _EmptyTextPayload(Packet):
    """A header whose payload may be one text field only, and that text may be empty.

    scapy dissects no payload from zero bytes, which would drop the field: an empty
    export name or error message is on the wire all the same, so it is kept as ``""``.
    A payload too short for its layer keeps the fields that are whole (see
    :func:`dissect_prefix`) instead of turning all of it into raw bytes, so that the
    rules read a malformed payload's fields from the decode.
    """

    def do_dissect_payload(self, s: bytes) -> None:
        if not s:
            cls = self.guess_payload_class(s)
            if cls in _TEXT_ONLY_PAYLOADS:
                self.add_payload(cls(s, _internal=1, _underlayer=self))
            return
        cls = self.guess_payload_class(s)
        try:
            payload = cls(s, _internal=1, _underlayer=self)
        except Exception:  # too short for a fixed field: keep the fields that are whole
            payload = dissect_prefix(cls, s)
        self.add_payload(payload)


class _LengthCut(_EmptyTextPayload):
    """A header whose ``length`` field says how many payload bytes follow."""

    #: byte offset and size of the length field, for ``post_build``
    length_at: tuple[int, int] = (0, 0)
    payload_classes: dict[int, type[Packet]] = {}
    type_field = "type"

    def extract_padding(self, s: bytes) -> tuple[bytes, bytes]:
        length = self.length or 0
        return s[:length], s[length:]

    def post_build(self, pkt: bytes, pay: bytes) -> bytes:
        if self.length is None:
            offset, size = self.length_at
            pkt = _fix_length(pkt, pay, offset, size)
        return pkt + pay

    def guess_payload_class(self, payload: bytes) -> type[Packet]:
        return self.payload_classes.get(int(getattr(self, self.type_field)), Raw)


# --- handshake: greetings and client flags -------------------------------------


class NBDOldstyleGreeting(Packet):
    """Section "Oldstyle negotiation": the whole handshake, sent by the server."""

    name = "NBD oldstyle greeting"
    fields_desc = [
        XLongField("magic", c.NBDMAGIC),
        XLongField("cliserv_magic", c.CLISERV_MAGIC),
        LongField("size", 0),
        # 32 bits of flags: the high 16 bits are zero, the low 16 are the
        # transmission flags (as the newstyle export-name reply sends them).
        XShortField("flags_high", 0),
        FlagsField("transmission_flags", 0, 16, TRANSMISSION_FLAG_NAMES),
        StrFixedLenField("zeroes", b"\0" * 124, 124),
    ]


class NBDNewstyleGreeting(Packet):
    """Section "Newstyle negotiation": NBDMAGIC, IHAVEOPT, handshake flags."""

    name = "NBD newstyle greeting"
    fields_desc = [
        XLongField("magic", c.NBDMAGIC),
        XLongField("option_magic", c.IHAVEOPT),
        FlagsField("handshake_flags", 0, 16, HANDSHAKE_FLAG_NAMES),
    ]


class NBDClientFlags(Packet):
    """Section "Newstyle negotiation": the client's 32 bits of flags."""

    name = "NBD client flags"
    fields_desc = [FlagsField("client_flags", 0, 32, CLIENT_FLAG_NAMES)]


# --- handshake: option requests ------------------------------------------------


class NBDOptExportName(Packet):
    """``NBD_OPT_EXPORT_NAME`` data: the name, as long as the option data."""

    name = "NBD_OPT_EXPORT_NAME data"
    fields_desc = [TextField("export_name", b"")]


class NBDOptInfoGo(Packet):
    """``NBD_OPT_INFO`` / ``NBD_OPT_GO`` data: name and information requests."""

    name = "NBD_OPT_INFO/GO data"
    fields_desc = [
        FieldLenField("name_length", None, length_of="export_name", fmt="!I"),
        TextLenField("export_name", b"", length_from=lambda p: p.name_length),
        FieldLenField("info_count", None, count_of="info_requests", fmt="!H"),
        FieldListField(
            "info_requests",
            [],
            ShortEnumField("info", 0, INFO_NAMES),
            count_from=lambda p: p.info_count,
        ),
    ]


class NBDMetaContextQuery(_Element):
    """One query of ``NBD_OPT_LIST_META_CONTEXT`` / ``NBD_OPT_SET_META_CONTEXT``."""

    name = "NBD metadata context query"
    fields_desc = [
        FieldLenField("query_length", None, length_of="query", fmt="!I"),
        TextLenField("query", b"", length_from=lambda p: p.query_length),
    ]


class NBDOptMetaContext(Packet):
    """``NBD_OPT_LIST_META_CONTEXT`` / ``NBD_OPT_SET_META_CONTEXT`` data."""

    name = "NBD_OPT_*_META_CONTEXT data"
    fields_desc = [
        FieldLenField("name_length", None, length_of="export_name", fmt="!I"),
        TextLenField("export_name", b"", length_from=lambda p: p.name_length),
        FieldLenField("query_count", None, count_of="queries", fmt="!I"),
        PacketListField("queries", [], NBDMetaContextQuery, count_from=lambda p: p.query_count),
    ]


class NBDOption(_LengthCut):
    """Option request header (section "Newstyle negotiation"); data is the payload.

    Options the spec gives no data (LIST, ABORT, STARTTLS, STRUCTURED_REPLY,
    EXTENDED_HEADERS) have none; data sent anyway, and the data of unknown
    options, shows as ``Raw``.
    """

    name = "NBD option"
    fields_desc = [
        XLongField("magic", c.IHAVEOPT),
        IntEnumField("option", c.Opt.EXPORT_NAME, OPT_NAMES),
        IntField("length", None),
    ]
    length_at = (12, 4)
    type_field = "option"
    payload_classes = {
        c.Opt.EXPORT_NAME: NBDOptExportName,
        c.Opt.INFO: NBDOptInfoGo,
        c.Opt.GO: NBDOptInfoGo,
        c.Opt.LIST_META_CONTEXT: NBDOptMetaContext,
        c.Opt.SET_META_CONTEXT: NBDOptMetaContext,
    }


# --- handshake: option replies -------------------------------------------------


class NBDRepServer(Packet):
    """``NBD_REP_SERVER``: an export name and optional human-readable details."""

    name = "NBD_REP_SERVER data"
    fields_desc = [
        FieldLenField("name_length", None, length_of="export_name", fmt="!I"),
        TextLenField("export_name", b"", length_from=lambda p: p.name_length),
        TextField("details", b""),
    ]


class NBDInfoExport(Packet):
    """``NBD_INFO_EXPORT``: export size and transmission flags (length 12)."""

    name = "NBD_INFO_EXPORT"
    fields_desc = [
        LongField("size", 0),
        FlagsField("transmission_flags", 0, 16, TRANSMISSION_FLAG_NAMES),
    ]


class NBDInfoName(Packet):
    """``NBD_INFO_NAME``: the server's canonical export name."""

    name = "NBD_INFO_NAME"
    fields_desc = [TextField("export_name", b"")]


class NBDInfoDescription(Packet):
    """``NBD_INFO_DESCRIPTION``: a description for humans."""

    name = "NBD_INFO_DESCRIPTION"
    fields_desc = [TextField("description", b"")]


class NBDInfoBlockSize(Packet):
    """``NBD_INFO_BLOCK_SIZE``: size constraints (length 14)."""

    name = "NBD_INFO_BLOCK_SIZE"
    fields_desc = [
        IntField("minimum_block_size", c.DEFAULT_MIN_BLOCK),
        IntField("preferred_block_size", c.DEFAULT_PREFERRED_BLOCK),
        IntField("maximum_payload_size", c.DEFAULT_MAX_PAYLOAD),
    ]


class NBDInfoInitState(Packet):
    """``NBD_INFO_INIT_STATE`` (experimental, 2020 proposal): 16 bits of flags."""

    name = "NBD_INFO_INIT_STATE"
    fields_desc = [FlagsField("init_flags", 0, 16, INIT_FLAG_NAMES)]


class NBDRepInfo(_EmptyTextPayload):
    """``NBD_REP_INFO``: 16-bit information type, then the type's payload."""

    name = "NBD_REP_INFO data"
    fields_desc = [ShortEnumField("info_type", c.Info.EXPORT, INFO_NAMES)]
    payload_classes: dict[int, type[Packet]] = {
        c.Info.EXPORT: NBDInfoExport,
        c.Info.NAME: NBDInfoName,
        c.Info.DESCRIPTION: NBDInfoDescription,
        c.Info.BLOCK_SIZE: NBDInfoBlockSize,
        c.Info.INIT_STATE: NBDInfoInitState,
    }

    def guess_payload_class(self, payload: bytes) -> type[Packet]:
        return self.payload_classes.get(int(self.info_type), Raw)


class NBDRepMetaContext(Packet):
    """``NBD_REP_META_CONTEXT``: context id and context name."""

    name = "NBD_REP_META_CONTEXT data"
    fields_desc = [
        IntField("context_id", 0),
        TextField("context_name", b""),
    ]


class NBDRepError(Packet):
    """Any ``NBD_REP_ERR_*`` (bit 31 set): an optional message for humans."""

    name = "NBD_REP_ERR_* data"
    fields_desc = [TextField("message", b"")]


class NBDOptionReply(_LengthCut):
    """Option reply header (section "Fixed newstyle negotiation")."""

    name = "NBD option reply"
    fields_desc = [
        XLongField("magic", c.OPTION_REPLY_MAGIC),
        IntEnumField("option", c.Opt.GO, OPT_NAMES),
        IntEnumField("reply_type", c.Rep.ACK, REP_NAMES),
        IntField("length", None),
    ]
    length_at = (16, 4)
    type_field = "reply_type"
    payload_classes = {
        c.Rep.SERVER: NBDRepServer,
        c.Rep.INFO: NBDRepInfo,
        c.Rep.META_CONTEXT: NBDRepMetaContext,
    }

    def guess_payload_class(self, payload: bytes) -> type[Packet]:
        if c.is_rep_error(int(self.reply_type)):
            return NBDRepError
        return super().guess_payload_class(payload)


_TEXT_ONLY_PAYLOADS: tuple[type[Packet], ...] = (
    NBDOptExportName,
    NBDInfoName,
    NBDInfoDescription,
    NBDRepError,
)


class NBDExportNameReply(Packet):
    """Reply to ``NBD_OPT_EXPORT_NAME``: size, flags, 124 zeroes unless NO_ZEROES.

    ``zeroes`` takes whatever the decoder cut (124 bytes, or none when the client
    negotiated ``NBD_FLAG_C_NO_ZEROES``); build with ``zeroes=b""`` for the latter.
    """

    name = "NBD export name reply"
    fields_desc = [
        LongField("size", 0),
        FlagsField("transmission_flags", 0, 16, TRANSMISSION_FLAG_NAMES),
        StrField("zeroes", b"\0" * c.EXPORT_NAME_REPLY_ZEROES),
    ]


# --- transmission: requests ---------------------------------------------------


def _has_payload_len(p: Packet) -> bool:
    return bool(int(p.flags) & c.CmdFlag.PAYLOAD_LEN)


def _status_payload_fits(length: int) -> bool:
    """A BLOCK_STATUS payload of ``length`` bytes reads as an effect length and context ids."""
    return length >= 8 and (length - 8) % 4 == 0


def _has_status_payload(p: Packet) -> bool:
    """A BLOCK_STATUS payload: effect length and context ids (any other length: shown as data)."""
    length = p.length
    return (
        _has_payload_len(p)
        and p.type == c.Cmd.BLOCK_STATUS
        and (length is None or _status_payload_fits(length))
    )


class NBDRequest(Packet):
    """Compact request (section "Request message"); WRITE carries ``length`` bytes."""

    name = "NBD request"
    fields_desc = [
        XIntField("magic", c.REQUEST_MAGIC),
        FlagsField("flags", 0, 16, CMD_FLAG_NAMES),
        ShortEnumField("type", c.Cmd.READ, CMD_NAMES),
        XLongField("cookie", 0),
        LongField("offset", 0),
        IntField("length", None),
        ConditionalField(
            StrLenField("data", b"", length_from=lambda p: p.length),
            lambda p: p.type == c.Cmd.WRITE,
        ),
    ]

    def post_build(self, pkt: bytes, pay: bytes) -> bytes:
        if self.length is None:
            data = self.data if self.type == c.Cmd.WRITE else b""
            pkt = _fix_length(pkt, data or b"", 24, 4)
        return pkt + pay


class NBDExtendedRequest(Packet):
    """Extended request (``NBD_OPT_EXTENDED_HEADERS``): 64-bit length.

    With ``NBD_CMD_FLAG_PAYLOAD_LEN`` the length counts payload bytes: WRITE data,
    or for BLOCK_STATUS an effect length and the context ids to report on (a
    BLOCK_STATUS payload of another length than 8 plus a multiple of 4 shows as
    ``data``).
    """

    name = "NBD extended request"
    fields_desc = [
        XIntField("magic", c.EXTENDED_REQUEST_MAGIC),
        FlagsField("flags", 0, 16, CMD_FLAG_NAMES),
        ShortEnumField("type", c.Cmd.READ, CMD_NAMES),
        XLongField("cookie", 0),
        LongField("offset", 0),
        LongField("length", None),
        ConditionalField(
            StrLenField("data", b"", length_from=lambda p: p.length),
            lambda p: _has_payload_len(p) and not _has_status_payload(p),
        ),
        ConditionalField(LongField("effect_length", 0), _has_status_payload),
        ConditionalField(
            FieldListField(
                "context_ids", [], IntField("context_id", 0), length_from=lambda p: p.length - 8
            ),
            _has_status_payload,
        ),
    ]

    def post_build(self, pkt: bytes, pay: bytes) -> bytes:
        if self.length is None and _has_payload_len(self):
            pkt = _fix_length(pkt, pkt[32:], 24, 8)
        return pkt + pay


class NBDExtendedWriteUnflagged(NBDExtendedRequest):
    """An extended ``NBD_CMD_WRITE`` without ``NBD_CMD_FLAG_PAYLOAD_LEN`` whose data follows.

    The spec makes the flag a MUST for writes (without it the length is an effect
    length and nothing follows), but qemu's client omits it and sends the data
    anyway; the decoder picks this layer only when the bytes show the data is there.
    """

    name = "NBD extended request (WRITE data without PAYLOAD_LEN)"
    fields_desc = [
        *NBDExtendedRequest.fields_desc[:6],
        StrLenField("data", b"", length_from=lambda p: p.length),
    ]

    def post_build(self, pkt: bytes, pay: bytes) -> bytes:
        if self.length is None:
            pkt = _fix_length(pkt, pkt[32:], 24, 8)
        return pkt + pay


# --- transmission: replies ----------------------------------------------------


class NBDSimpleReply(Packet):
    """Simple reply (section "Simple reply message").

    ``data`` is present only after a successful READ, which the reply itself
    cannot tell: the decoder cuts the message using the paired request.
    """

    name = "NBD simple reply"
    fields_desc = [
        XIntField("magic", c.SIMPLE_REPLY_MAGIC),
        IntEnumField("error", 0, ERRNO_NAMES),
        XLongField("cookie", 0),
        StrField("data", b""),
    ]


class NBDChunkOffsetData(Packet):
    """``NBD_REPLY_TYPE_OFFSET_DATA``: offset then data."""

    name = "NBD_REPLY_TYPE_OFFSET_DATA"
    fields_desc = [LongField("data_offset", 0), StrField("data", b"")]


class NBDChunkOffsetHole(Packet):
    """``NBD_REPLY_TYPE_OFFSET_HOLE``: offset and hole size (reads as zeroes)."""

    name = "NBD_REPLY_TYPE_OFFSET_HOLE"
    fields_desc = [LongField("hole_offset", 0), IntField("hole_size", 0)]


class NBDBlockDescriptor(_Element):
    """One ``NBD_REPLY_TYPE_BLOCK_STATUS`` descriptor: 32-bit length and status."""

    name = "NBD block descriptor"
    fields_desc = [IntField("length", 0), XIntField("status", 0)]


class NBDBlockDescriptorExt(_Element):
    """One ``NBD_REPLY_TYPE_BLOCK_STATUS_EXT`` descriptor: 64-bit length and status."""

    name = "NBD extended block descriptor"
    fields_desc = [LongField("length", 0), XLongField("status", 0)]


class NBDChunkBlockStatus(Packet):
    """``NBD_REPLY_TYPE_BLOCK_STATUS``: context id then descriptors to the end."""

    name = "NBD_REPLY_TYPE_BLOCK_STATUS"
    fields_desc = [
        IntField("context_id", 0),
        _WholeElements("descriptors", NBDBlockDescriptor, 8),
    ]


class NBDChunkBlockStatusExt(Packet):
    """``NBD_REPLY_TYPE_BLOCK_STATUS_EXT``: context id, count, descriptors.

    The descriptors are read up to the end of the chunk, whatever ``count``
    says, so that a wrong count shows as such instead of hiding descriptors.
    """

    name = "NBD_REPLY_TYPE_BLOCK_STATUS_EXT"
    fields_desc = [
        IntField("context_id", 0),
        FieldLenField("count", None, count_of="descriptors", fmt="!I"),
        _WholeElements("descriptors", NBDBlockDescriptorExt, 16),
    ]


class NBDChunkError(Packet):
    """``NBD_REPLY_TYPE_ERROR`` (and the common start of every error chunk)."""

    name = "NBD_REPLY_TYPE_ERROR"
    fields_desc = [
        IntEnumField("error", c.Errno.EIO, ERRNO_NAMES),
        FieldLenField("message_length", None, length_of="message", fmt="!H"),
        TextLenField("message", b"", length_from=lambda p: p.message_length),
    ]


class NBDChunkErrorOffset(Packet):
    """``NBD_REPLY_TYPE_ERROR_OFFSET``: error, message, then the failing offset."""

    name = "NBD_REPLY_TYPE_ERROR_OFFSET"
    fields_desc = [
        IntEnumField("error", c.Errno.EIO, ERRNO_NAMES),
        FieldLenField("message_length", None, length_of="message", fmt="!H"),
        TextLenField("message", b"", length_from=lambda p: p.message_length),
        LongField("error_offset", 0),
    ]


_CHUNK_PAYLOADS: dict[int, type[Packet]] = {
    c.ReplyType.OFFSET_DATA: NBDChunkOffsetData,
    c.ReplyType.OFFSET_HOLE: NBDChunkOffsetHole,
    c.ReplyType.BLOCK_STATUS: NBDChunkBlockStatus,
    c.ReplyType.BLOCK_STATUS_EXT: NBDChunkBlockStatusExt,
    c.ReplyType.ERROR: NBDChunkError,
    c.ReplyType.ERROR_OFFSET: NBDChunkErrorOffset,
}


class _ChunkHeader(_LengthCut):
    payload_classes = _CHUNK_PAYLOADS

    def guess_payload_class(self, payload: bytes) -> type[Packet]:
        chunk_type = int(self.type)
        if chunk_type not in _CHUNK_PAYLOADS and c.is_error_chunk(chunk_type):
            # Unknown error chunks still start like NBD_REPLY_TYPE_ERROR
            # (section "Structured reply types"); the rest shows as Raw.
            return NBDChunkError
        return super().guess_payload_class(payload)


class NBDStructuredReply(_ChunkHeader):
    """Structured reply chunk header (32-bit length); the chunk type's payload follows."""

    name = "NBD structured reply chunk"
    fields_desc = [
        XIntField("magic", c.STRUCTURED_REPLY_MAGIC),
        FlagsField("flags", 0, 16, REPLY_FLAG_NAMES),
        ShortEnumField("type", c.ReplyType.NONE, REPLY_TYPE_NAMES),
        XLongField("cookie", 0),
        IntField("length", None),
    ]
    length_at = (16, 4)


class NBDExtendedReply(_ChunkHeader):
    """Extended reply chunk header: adds the request's offset, 64-bit length."""

    name = "NBD extended reply chunk"
    fields_desc = [
        XIntField("magic", c.EXTENDED_REPLY_MAGIC),
        FlagsField("flags", 0, 16, REPLY_FLAG_NAMES),
        ShortEnumField("type", c.ReplyType.NONE, REPLY_TYPE_NAMES),
        XLongField("cookie", 0),
        LongField("offset", 0),
        LongField("length", None),
    ]
    length_at = (24, 8)


class NBDOpaque(Packet):
    """Bytes the decoder does not read: the TLS stream after ``NBD_OPT_STARTTLS``."""

    name = "NBD opaque (TLS)"
    fields_desc = [StrField("data", b"")]


# --- reading the decoded values back ------------------------------------------

ALL_LAYERS: tuple[type[Packet], ...] = (
    NBDOldstyleGreeting,
    NBDNewstyleGreeting,
    NBDClientFlags,
    NBDOption,
    NBDOptExportName,
    NBDOptInfoGo,
    NBDMetaContextQuery,
    NBDOptMetaContext,
    NBDOptionReply,
    NBDRepServer,
    NBDRepInfo,
    NBDInfoExport,
    NBDInfoName,
    NBDInfoDescription,
    NBDInfoBlockSize,
    NBDInfoInitState,
    NBDRepMetaContext,
    NBDRepError,
    NBDExportNameReply,
    NBDRequest,
    NBDExtendedRequest,
    NBDExtendedWriteUnflagged,
    NBDSimpleReply,
    NBDStructuredReply,
    NBDExtendedReply,
    NBDChunkOffsetData,
    NBDChunkOffsetHole,
    NBDBlockDescriptor,
    NBDBlockDescriptorExt,
    NBDChunkBlockStatus,
    NBDChunkBlockStatusExt,
    NBDChunkError,
    NBDChunkErrorOffset,
    NBDOpaque,
)


def _plain(field: Field[Any, Any], value: Any) -> Any:
    """A field value as a plain Python value: int, str, bytes, list or dict."""
    if isinstance(field, PacketListField):
        return [fields_of(element) for element in value or []]
    if isinstance(field, FieldListField):
        return [int(item) for item in value or []]
    if isinstance(field, TextField | TextLenField):
        return (value or b"").decode("utf-8", errors="replace")
    if isinstance(value, bytes):
        return value
    if isinstance(value, memoryview):  # bulk data dissected from a view of the stream
        return bytes(value)
    if value is None:
        return None
    return int(value)


def dissect_prefix(layer: type[Packet], raw: bytes) -> Packet:
    """A message cut short inside its fixed fields: as many whole fields as ``raw`` holds.

    Fields the bytes do not reach are absent (:func:`fields_of` leaves them out rather
    than show their defaults); the bytes of a field cut in the middle stay as ``Raw``.
    """
    packet = layer()
    if layer is Raw:
        packet.load = raw
        return packet
    rest = raw
    for field in packet.fields_desc:
        if not rest:
            break
        try:
            remaining, value = field.getfield(packet, rest)
        except Exception:  # a field cut in the middle: struct cannot read it
            break
        packet.fields[field.name] = value
        rest = remaining
    if rest:
        packet.add_payload(Raw(rest))
    packet.original = raw
    packet.cut_short = True
    return packet


_BULK_LAYERS = frozenset({NBDRequest, NBDSimpleReply})
"""Layers whose only variable part is opaque data: safe to dissect from a memoryview."""


def dissect(layer: type[Packet], raw: bytes, cut_short: bool = False) -> tuple[Packet, list[str]]:
    """``raw`` dissected by ``layer``, and what went wrong (never raises).

    A message cut short inside its header gets the fields that arrived
    (:func:`dissect_prefix`); one scapy cannot read at all is ``Raw``, with a note why.
    """
    bulk = layer in _BULK_LAYERS and not cut_short
    # scapy slices the rest of the message at each header field: give bulk data as a
    # view, not a copy, then own the one field that holds it.
    source: bytes = memoryview(raw) if bulk else raw  # type: ignore[assignment]
    notes: list[str] = []
    try:
        packet: Packet = layer(source)
    except Exception as exc:  # scapy may choke on nonsense; report, never raise
        if cut_short:  # cut short inside its header: the fields that did arrive
            return dissect_prefix(layer, raw), notes
        notes.append(f"the {layer.__name__} layer could not dissect it: {exc}")
        return Raw(raw), notes
    if bulk:
        data = packet.fields.get("data")
        if isinstance(data, memoryview):
            packet.fields["data"] = bytes(data)
        packet.raw_packet_cache = None
        packet.raw_packet_cache_fields = None
        packet.original = raw
    return packet, notes


def fields_of(packet: Packet) -> dict[str, Any]:
    """Every field of every layer of ``packet``, by name, as plain values.

    Fields absent on the wire (a ``ConditionalField`` whose condition is false)
    are left out.  Bytes left over after the last layer (``Raw`` or ``Padding``)
    appear as ``trailing``, so that nothing on the wire is hidden.
    """
    result: dict[str, Any] = {}
    layer: Packet | None = packet
    while layer is not None and not isinstance(layer, NoPayload):
        if isinstance(layer, Raw | Padding):
            result["trailing"] = result.get("trailing", b"") + bytes(layer.load)
        else:
            cut_short = getattr(layer, "cut_short", False)
            for field in layer.fields_desc:
                if cut_short and field.name not in layer.fields:
                    continue  # the bytes never reached it
                if isinstance(field, ConditionalField):
                    if not field._evalcond(layer):
                        continue
                    field = field.fld
                result[field.name] = _plain(field, layer.getfieldval(field.name))
        layer = layer.payload
    return result
