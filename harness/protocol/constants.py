"""Every constant of the NBD protocol, in one module.

Sources: ``proto.md`` (master), its ``extension-ext-header`` branch
(``proto-extended-headers.md``), qemu's ``nbd.rst`` for the ``qemu:``
namespace, and the 2020 ``NBD_INFO_INIT_STATE`` proposal (experimental,
opt-in).  Codec, reference server, reference client, dissectors and
conformance rules all import their numbers from here and nowhere else.

Names drop the ``NBD_`` prefix and the category prefix that the class name
already says (``Opt.GO`` is ``NBD_OPT_GO``); :func:`spec_name` gives the
spec's spelling back for messages and reports.
"""

from __future__ import annotations

import enum
import functools

# --- magic numbers (section "Handshake", "Transmission") ---------------------

NBDMAGIC = 0x4E42444D41474943
"""``NBDMAGIC``, first 8 bytes of every greeting (also ``INIT_PASSWD``)."""
CLISERV_MAGIC = 0x00420281861253
"""Second field of the oldstyle greeting (``cliserv_magic``)."""
IHAVEOPT = 0x49484156454F5054
"""``IHAVEOPT``: newstyle greeting and every option request."""
OPTION_REPLY_MAGIC = 0x3E889045565A9
"""Magic of every fixed-newstyle option reply."""
REQUEST_MAGIC = 0x25609513
EXTENDED_REQUEST_MAGIC = 0x21E41C71
SIMPLE_REPLY_MAGIC = 0x67446698
STRUCTURED_REPLY_MAGIC = 0x668E33EF
EXTENDED_REPLY_MAGIC = 0x6E8A278C


class Magic(enum.IntEnum):
    """Every magic value, for display (``Reserved Magic values`` included)."""

    NBDMAGIC = NBDMAGIC
    CLISERV_MAGIC = CLISERV_MAGIC
    IHAVEOPT = IHAVEOPT
    OPTION_REPLY_MAGIC = OPTION_REPLY_MAGIC
    REQUEST_MAGIC = REQUEST_MAGIC
    EXTENDED_REQUEST_MAGIC = EXTENDED_REQUEST_MAGIC
    SIMPLE_REPLY_MAGIC = SIMPLE_REPLY_MAGIC
    STRUCTURED_REPLY_MAGIC = STRUCTURED_REPLY_MAGIC
    EXTENDED_REPLY_MAGIC = EXTENDED_REPLY_MAGIC


RESERVED_MAGICS = frozenset({0x12560953, 0x96744668, 0x25609514})
"""Section "Reserved Magic values": historic values never valid on the wire."""


NBD_PORT = 10809
"""The IANA-reserved NBD port (section "Newstyle negotiation"); nbd:// URIs default to it."""

# --- sizes and limits ---------------------------------------------------------

OLDSTYLE_GREETING_LEN = 152  # 8 + 8 + 8 + 4 + 124
NEWSTYLE_GREETING_LEN = 18  # 8 + 8 + 2
EXPORT_NAME_REPLY_ZEROES = 124
OPTION_HEADER_LEN = 16  # IHAVEOPT + option + length
OPTION_REPLY_HEADER_LEN = 20  # magic + option + type + length
REQUEST_LEN = 28
EXTENDED_REQUEST_LEN = 32
SIMPLE_REPLY_LEN = 16
STRUCTURED_REPLY_HEADER_LEN = 20
EXTENDED_REPLY_HEADER_LEN = 32

MAX_STRING_LEN = 4096
"""Section "Option types": strings (export names, queries, messages) MUST NOT
exceed 4096 bytes."""
DEFAULT_MIN_BLOCK = 1
DEFAULT_PREFERRED_BLOCK = 4096
DEFAULT_MAX_PAYLOAD = 32 * 1024 * 1024
"""Section "Size constraints": default maximum payload when none advertised."""
MAX_MIN_BLOCK_SIZE = 64 * 1024
"""The minimum block size MUST NOT exceed 64 KiB (section "Size constraints")."""
MAX_EXTENTS_PER_CHUNK = 1 << 20
"""Servers SHOULD NOT send more than 2^20 extents in one status chunk."""
MAX_OPTION_LEN = 64 * 1024 * 1024
"""Our own bound on an option's data length (the spec sets none; servers may
refuse larger with ERR_TOO_BIG)."""


def is_power_of_two(value: int) -> bool:
    """True for 1, 2, 4, ...: what the block size constraints must be."""
    return value > 0 and value & (value - 1) == 0


# --- handshake phase: flag fields --------------------------------------------


class HandshakeFlag(enum.IntFlag):
    """Server handshake flags (16 bits, section "Handshake flags")."""

    FIXED_NEWSTYLE = 1 << 0
    NO_ZEROES = 1 << 1


class ClientFlag(enum.IntFlag):
    """Client flags (32 bits, section "Client flags")."""

    C_FIXED_NEWSTYLE = 1 << 0
    C_NO_ZEROES = 1 << 1


KNOWN_HANDSHAKE_FLAGS = int(HandshakeFlag.FIXED_NEWSTYLE | HandshakeFlag.NO_ZEROES)
"""Every handshake flag the spec defines ("The server MUST NOT set any other flags")."""
KNOWN_CLIENT_FLAGS = int(ClientFlag.C_FIXED_NEWSTYLE | ClientFlag.C_NO_ZEROES)
"""Every client flag the spec defines ("Clients MUST NOT set any other flags")."""


class TransmissionFlag(enum.IntFlag):
    """Transmission flags (16 bits, section "Transmission flags")."""

    HAS_FLAGS = 1 << 0
    READ_ONLY = 1 << 1
    SEND_FLUSH = 1 << 2
    SEND_FUA = 1 << 3
    ROTATIONAL = 1 << 4
    SEND_TRIM = 1 << 5
    SEND_WRITE_ZEROES = 1 << 6
    SEND_DF = 1 << 7
    CAN_MULTI_CONN = 1 << 8
    SEND_RESIZE = 1 << 9
    SEND_CACHE = 1 << 10
    SEND_FAST_ZERO = 1 << 11
    BLOCK_STATUS_PAYLOAD = 1 << 12


# --- handshake phase: options -------------------------------------------------


class Opt(enum.IntEnum):
    """Option types (section "Option types")."""

    EXPORT_NAME = 1
    ABORT = 2
    LIST = 3
    PEEK_EXPORT = 4  # withdrawn; must not be used
    STARTTLS = 5
    INFO = 6
    GO = 7
    STRUCTURED_REPLY = 8
    LIST_META_CONTEXT = 9
    SET_META_CONTEXT = 10
    EXTENDED_HEADERS = 11


NO_DATA_OPTIONS = frozenset({Opt.LIST, Opt.STARTTLS, Opt.STRUCTURED_REPLY, Opt.EXTENDED_HEADERS})
"""Options with which "the client MUST NOT send any additional data"."""


REP_ERROR_BIT = 1 << 31


class Rep(enum.IntEnum):
    """Option reply types (section "Option reply types"); errors have bit 31."""

    ACK = 1
    SERVER = 2
    INFO = 3
    META_CONTEXT = 4
    ERR_UNSUP = REP_ERROR_BIT + 1
    ERR_POLICY = REP_ERROR_BIT + 2
    ERR_INVALID = REP_ERROR_BIT + 3
    ERR_PLATFORM = REP_ERROR_BIT + 4
    ERR_TLS_REQD = REP_ERROR_BIT + 5
    ERR_UNKNOWN = REP_ERROR_BIT + 6
    ERR_SHUTDOWN = REP_ERROR_BIT + 7
    ERR_BLOCK_SIZE_REQD = REP_ERROR_BIT + 8
    ERR_TOO_BIG = REP_ERROR_BIT + 9
    ERR_EXT_HEADER_REQD = REP_ERROR_BIT + 10


OPTIONS_ANSWERED_WITH: dict[int, frozenset[int]] = {
    Rep.SERVER: frozenset({Opt.LIST}),
    Rep.INFO: frozenset({Opt.INFO, Opt.GO}),
    Rep.META_CONTEXT: frozenset({Opt.LIST_META_CONTEXT, Opt.SET_META_CONTEXT}),
}
"""The options each informational (neither ACK nor error) reply type answers."""


def is_rep_error(reply_type: int) -> bool:
    """True when an option reply type is an error (bit 31 set)."""
    return bool(reply_type & REP_ERROR_BIT)


class Info(enum.IntEnum):
    """``NBD_INFO_*`` types carried by ``NBD_REP_INFO``."""

    EXPORT = 0
    NAME = 1
    DESCRIPTION = 2
    BLOCK_SIZE = 3
    INIT_STATE = 4  # experimental: the 2020 NBD_INFO_INIT_STATE proposal


class InitFlag(enum.IntFlag):
    """Bits of the experimental ``NBD_INFO_INIT_STATE`` (16 bits)."""

    SPARSE = 1 << 0  # the image has at least one hole
    ZERO = 1 << 1  # the image reads entirely as zeroes


INFO_FIXED_LENGTH: dict[int, int] = {
    Info.EXPORT: 12,
    Info.BLOCK_SIZE: 14,
    Info.INIT_STATE: 4,
}
"""Exact ``NBD_REP_INFO`` lengths (type included) the spec mandates."""


# --- transmission phase -------------------------------------------------------


class CmdFlag(enum.IntFlag):
    """Command flags (16 bits, section "Command flags")."""

    FUA = 1 << 0
    NO_HOLE = 1 << 1
    DF = 1 << 2
    REQ_ONE = 1 << 3
    FAST_ZERO = 1 << 4
    PAYLOAD_LEN = 1 << 5


class ReplyFlag(enum.IntFlag):
    """Structured/extended reply flags (16 bits)."""

    DONE = 1 << 0


REPLY_TYPE_ERROR_BIT = 1 << 15


class ReplyType(enum.IntEnum):
    """Structured reply chunk types (section "Structured reply types")."""

    NONE = 0
    OFFSET_DATA = 1
    OFFSET_HOLE = 2
    BLOCK_STATUS = 5
    BLOCK_STATUS_EXT = 6
    ERROR = REPLY_TYPE_ERROR_BIT + 1
    ERROR_OFFSET = REPLY_TYPE_ERROR_BIT + 2


def is_error_chunk(chunk_type: int) -> bool:
    """True for error chunk types (bit 15 set), known or not."""
    return bool(chunk_type & REPLY_TYPE_ERROR_BIT)


class Cmd(enum.IntEnum):
    """Request types (section "Request types")."""

    READ = 0
    WRITE = 1
    DISC = 2
    FLUSH = 3
    TRIM = 4
    CACHE = 5
    WRITE_ZEROES = 6
    BLOCK_STATUS = 7
    RESIZE = 8  # experimental RESIZE extension


class Errno(enum.IntEnum):
    """Error values (section "Error values")."""

    OK = 0
    EPERM = 1
    EIO = 5
    ENOMEM = 12
    EINVAL = 22
    ENOSPC = 28
    EOVERFLOW = 75
    ENOTSUP = 95
    ESHUTDOWN = 108


# Which command flag each command accepts, and which transmission flag a
# command or flag needs before a client may use it ("Command flags",
# "Transmission flags").
CMD_REQUIRES_TFLAG: dict[int, TransmissionFlag] = {
    Cmd.FLUSH: TransmissionFlag.SEND_FLUSH,
    Cmd.TRIM: TransmissionFlag.SEND_TRIM,
    Cmd.WRITE_ZEROES: TransmissionFlag.SEND_WRITE_ZEROES,
    Cmd.CACHE: TransmissionFlag.SEND_CACHE,
    Cmd.RESIZE: TransmissionFlag.SEND_RESIZE,
}
FLAG_REQUIRES_TFLAG: dict[int, TransmissionFlag] = {
    CmdFlag.FUA: TransmissionFlag.SEND_FUA,
    CmdFlag.DF: TransmissionFlag.SEND_DF,
    CmdFlag.FAST_ZERO: TransmissionFlag.SEND_FAST_ZERO,
}
# FUA "is valid for all commands, provided NBD_FLAG_SEND_FUA has been negotiated".
CMD_ALLOWED_FLAGS: dict[int, CmdFlag] = {
    Cmd.READ: CmdFlag.FUA | CmdFlag.DF,
    Cmd.WRITE: CmdFlag.FUA | CmdFlag.PAYLOAD_LEN,
    Cmd.DISC: CmdFlag.FUA,
    Cmd.FLUSH: CmdFlag.FUA,
    Cmd.TRIM: CmdFlag.FUA,
    Cmd.CACHE: CmdFlag.FUA,
    Cmd.WRITE_ZEROES: CmdFlag.FUA | CmdFlag.NO_HOLE | CmdFlag.FAST_ZERO,
    Cmd.BLOCK_STATUS: CmdFlag.FUA | CmdFlag.REQ_ONE | CmdFlag.PAYLOAD_LEN,
    Cmd.RESIZE: CmdFlag.FUA,
}
WRITE_COMMANDS = frozenset({Cmd.WRITE, Cmd.TRIM, Cmd.WRITE_ZEROES, Cmd.RESIZE})
"""Commands a server MUST fail with EPERM on a read-only export."""
RANGE_COMMANDS = frozenset(
    {Cmd.READ, Cmd.WRITE, Cmd.TRIM, Cmd.CACHE, Cmd.WRITE_ZEROES, Cmd.BLOCK_STATUS}
)
"""Commands whose offset and length describe a range of the export."""
ERROR_OFFSET_COMMANDS = frozenset(
    {Cmd.READ, Cmd.WRITE, Cmd.TRIM, Cmd.CACHE, Cmd.WRITE_ZEROES, Cmd.BLOCK_STATUS}
)
"""The commands ``NBD_REPLY_TYPE_ERROR_OFFSET`` is "Valid as a reply to"."""


# --- metadata contexts --------------------------------------------------------

BASE_ALLOCATION = "base:allocation"
QEMU_ALLOCATION_DEPTH = "qemu:allocation-depth"
QEMU_DIRTY_BITMAP_PREFIX = "qemu:dirty-bitmap:"


class StateFlag(enum.IntFlag):
    """``base:allocation`` status bits."""

    HOLE = 1 << 0
    ZERO = 1 << 1


class DirtyFlag(enum.IntFlag):
    """``qemu:dirty-bitmap:NAME`` status bits."""

    DIRTY = 1 << 0


# --- spelling -----------------------------------------------------------------

_SPEC_PREFIX: dict[type, str] = {
    HandshakeFlag: "NBD_FLAG_",
    ClientFlag: "NBD_FLAG_",
    TransmissionFlag: "NBD_FLAG_",
    Opt: "NBD_OPT_",
    Rep: "NBD_REP_",
    Info: "NBD_INFO_",
    InitFlag: "NBD_INIT_",
    CmdFlag: "NBD_CMD_FLAG_",
    ReplyFlag: "NBD_REPLY_FLAG_",
    ReplyType: "NBD_REPLY_TYPE_",
    Cmd: "NBD_CMD_",
    Errno: "NBD_",
    StateFlag: "NBD_STATE_",
    DirtyFlag: "NBD_STATE_",
}


def spec_name(value: enum.Enum) -> str:
    """The spec's spelling of a constant: ``spec_name(Opt.GO) == "NBD_OPT_GO"``.

    Flag combinations are joined with ``|``; unknown values print as numbers.
    """
    prefix = _SPEC_PREFIX.get(type(value), "")
    if isinstance(value, enum.Flag):
        members = [m for m in type(value) if m.value and (m.value & value.value) == m.value]
        rest = value.value
        parts = []
        for member in members:
            parts.append(prefix + str(member.name))
            rest &= ~member.value
        if rest:
            parts.append(hex(rest))
        return "|".join(parts) if parts else "0"
    return prefix + str(value.name)


@functools.lru_cache(maxsize=4096)  # asked once per decoded message: few distinct answers
def name_of(enum_type: type[enum.IntEnum], value: int) -> str:
    """Spec name of ``value`` in ``enum_type``, or a hex number when unknown."""
    try:
        return spec_name(enum_type(value))
    except ValueError:
        return f"{_SPEC_PREFIX.get(enum_type, '')}?{value:#x}"
