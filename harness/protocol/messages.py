"""Messages of the NBD protocol as small immutable values.

Framing messages (what :mod:`harness.protocol.codec` cuts out of a byte stream)
carry their payload as bytes; the typed payloads below describe what those
bytes mean for each option, option reply, info type and reply chunk type.
Keeping the two apart lets a server answer a malformed option payload with
``NBD_REP_ERR_INVALID`` and stay in sync, as the spec asks, and lets a test
send any bytes at all.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# --- handshake ---------------------------------------------------------------


@dataclass(frozen=True)
class OldstyleGreeting:
    """Oldstyle negotiation: the whole handshake, sent by the server."""

    size: int
    flags: int  # 32 bits; transmission flags in the low 16


@dataclass(frozen=True)
class NewstyleGreeting:
    """``NBDMAGIC``, ``IHAVEOPT``, handshake flags."""

    handshake_flags: int


@dataclass(frozen=True)
class ClientFlags:
    """The client's 32-bit flags, answering the newstyle greeting."""

    flags: int


@dataclass(frozen=True)
class OptionRequest:
    """``IHAVEOPT``, option, length, data."""

    option: int
    data: bytes = b""


@dataclass(frozen=True)
class OptionReply:
    """Option reply magic, option answered, reply type, length, data."""

    option: int
    reply_type: int
    data: bytes = b""


@dataclass(frozen=True)
class ExportNameReply:
    """The server's answer to ``NBD_OPT_EXPORT_NAME``.

    ``zeroes`` says whether the 124 reserved zero bytes follow (they do unless
    the client set ``NBD_FLAG_C_NO_ZEROES``).
    """

    size: int
    transmission_flags: int
    zeroes: bool = True


# --- transmission --------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    """A compact (28-byte header) or extended (32-byte header) request.

    ``length`` is the header's length field; ``payload`` the bytes that follow
    the header (a write's data, or a block-status payload with
    ``NBD_CMD_FLAG_PAYLOAD_LEN``).
    """

    type: int
    offset: int = 0
    length: int = 0
    cookie: int = 0
    flags: int = 0
    payload: bytes = b""
    extended: bool = False


@dataclass(frozen=True)
class SimpleReply:
    """Simple reply: error, cookie, and a successful read's data."""

    cookie: int
    error: int = 0
    data: bytes = b""


@dataclass(frozen=True)
class ReplyChunk:
    """A structured (20-byte header) or extended (32-byte header) reply chunk.

    ``offset`` is the extended header's offset field (None for structured
    chunks); ``payload`` is the chunk's raw payload.
    """

    cookie: int
    type: int
    flags: int = 0
    payload: bytes = b""
    extended: bool = False
    offset: int | None = None

    @property
    def done(self) -> bool:
        return bool(self.flags & 1)


@dataclass(frozen=True)
class ConnectionClosed:
    """The peer closed its side of the connection."""


# --- typed option payloads ----------------------------------------------------


@dataclass(frozen=True)
class ExportNamePayload:
    """``NBD_OPT_EXPORT_NAME``: the name is the whole option data."""

    name: str


@dataclass(frozen=True)
class InfoRequestPayload:
    """``NBD_OPT_INFO`` / ``NBD_OPT_GO``: export name and the info types asked for."""

    name: str
    info_requests: tuple[int, ...] = ()


@dataclass(frozen=True)
class MetaContextPayload:
    """``NBD_OPT_LIST_META_CONTEXT`` / ``NBD_OPT_SET_META_CONTEXT``."""

    name: str
    queries: tuple[str, ...] = ()


@dataclass(frozen=True)
class EmptyPayload:
    """Options that carry no data (ABORT, LIST, STARTTLS, STRUCTURED_REPLY, ...)."""


@dataclass(frozen=True)
class RawPayload:
    """Data of an option or reply whose type we do not know."""

    data: bytes = b""


# --- typed option reply payloads -------------------------------------------------


@dataclass(frozen=True)
class ServerPayload:
    """``NBD_REP_SERVER``: an export name and optional human-readable details."""

    name: str
    details: str = ""


@dataclass(frozen=True)
class InfoExport:
    """``NBD_INFO_EXPORT``: size and transmission flags."""

    size: int
    transmission_flags: int


@dataclass(frozen=True)
class InfoName:
    """``NBD_INFO_NAME``: the canonical export name."""

    name: str


@dataclass(frozen=True)
class InfoDescription:
    """``NBD_INFO_DESCRIPTION``."""

    description: str


@dataclass(frozen=True)
class InfoBlockSize:
    """``NBD_INFO_BLOCK_SIZE``: minimum, preferred, maximum payload."""

    minimum: int
    preferred: int
    maximum: int


@dataclass(frozen=True)
class InfoInitState:
    """Experimental ``NBD_INFO_INIT_STATE``: ``NBD_INIT_SPARSE``/``NBD_INIT_ZERO`` bits."""

    flags: int


@dataclass(frozen=True)
class InfoUnknown:
    """An ``NBD_REP_INFO`` of a type we do not know (clients MUST ignore it)."""

    info_type: int
    data: bytes = b""


InfoPayload = InfoExport | InfoName | InfoDescription | InfoBlockSize | InfoInitState | InfoUnknown


@dataclass(frozen=True)
class MetaContextReplyPayload:
    """``NBD_REP_META_CONTEXT``: context id and name."""

    context_id: int
    name: str


@dataclass(frozen=True)
class ErrorReplyPayload:
    """Any ``NBD_REP_ERR_*``: an optional message for a human."""

    message: str = ""


# --- typed chunk payloads -----------------------------------------------------


@dataclass(frozen=True)
class ChunkNone:
    """``NBD_REPLY_TYPE_NONE``."""


@dataclass(frozen=True)
class ChunkOffsetData:
    """``NBD_REPLY_TYPE_OFFSET_DATA``."""

    offset: int
    data: bytes


@dataclass(frozen=True)
class ChunkOffsetHole:
    """``NBD_REPLY_TYPE_OFFSET_HOLE``."""

    offset: int
    length: int


@dataclass(frozen=True)
class Extent:
    """One block status descriptor: a length and the context's status value."""

    length: int
    flags: int


@dataclass(frozen=True)
class ChunkBlockStatus:
    """``NBD_REPLY_TYPE_BLOCK_STATUS`` (32-bit) or ``BLOCK_STATUS_EXT`` (64-bit)."""

    context_id: int
    extents: tuple[Extent, ...] = field(default_factory=tuple)
    wide: bool = False  # True for BLOCK_STATUS_EXT


@dataclass(frozen=True)
class ChunkError:
    """``NBD_REPLY_TYPE_ERROR``, or an unknown error chunk type (bit 15 set)."""

    error: int
    message: str = ""
    trailing: bytes = b""  # unknown error types may carry more fields


@dataclass(frozen=True)
class ChunkErrorOffset:
    """``NBD_REPLY_TYPE_ERROR_OFFSET``."""

    error: int
    offset: int
    message: str = ""


@dataclass(frozen=True)
class ChunkUnknown:
    """A chunk type we do not know and that is not an error chunk."""

    chunk_type: int
    data: bytes = b""


ChunkPayload = (
    ChunkNone
    | ChunkOffsetData
    | ChunkOffsetHole
    | ChunkBlockStatus
    | ChunkError
    | ChunkErrorOffset
    | ChunkUnknown
)


@dataclass(frozen=True)
class BlockStatusRequestPayload:
    """The extended-headers block-status payload: effect length, context ids."""

    effect_length: int
    context_ids: tuple[int, ...] = ()


Event = (
    OldstyleGreeting
    | NewstyleGreeting
    | ClientFlags
    | OptionRequest
    | OptionReply
    | ExportNameReply
    | Request
    | SimpleReply
    | ReplyChunk
    | ConnectionClosed
)
