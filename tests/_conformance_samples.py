"""Hand-made NBD conversations for the conformance tests: clean ones and one breach per rule.

Messages are built with plain ``struct.pack`` (not the reference codec, not the
dissector's layers), one TCP segment each, and written as a pcapng TCP
conversation by :class:`harness.capture.PcapngWriter`.  A :class:`Conv` records
which segment carries the breach (``mark()`` before adding it) so a test can
check that the finding names that frame.

``SAMPLES`` maps every rule id to a function returning a :class:`Sample`: a
conversation that breaks that rule, and (rarely, when a breach cannot happen
alone) the other rules it necessarily breaks too.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from harness.capture import PcapngWriter
from harness.protocol import constants as c

KiB = 1024
MiB = 1024 * KiB

TF = c.TransmissionFlag
CF = c.CmdFlag
RT = c.ReplyType
DONE = int(c.ReplyFlag.DONE)

SIZE = 1 * MiB
FLAGS = int(
    TF.HAS_FLAGS
    | TF.SEND_FLUSH
    | TF.SEND_FUA
    | TF.SEND_TRIM
    | TF.SEND_WRITE_ZEROES
    | TF.SEND_DF
    | TF.CAN_MULTI_CONN
    | TF.SEND_CACHE
    | TF.SEND_FAST_ZERO
)
BLOCK = (1, 4096, 32 * MiB)
CLIENT, SERVER = "client", "server"
# (Conv's methods ``c`` and ``s`` hide the module ``c`` in its default arguments.)
INFO_BLOCK_SIZE = int(c.Info.BLOCK_SIZE)
OPT_GO = int(c.Opt.GO)


# --- wire encoding (struct.pack only) ------------------------------------------------


def greeting(handshake_flags: int = 3) -> bytes:
    return struct.pack(">QQH", c.NBDMAGIC, c.IHAVEOPT, handshake_flags)


def client_flags_of(flags: int = 3) -> bytes:
    return struct.pack(">I", flags)


def option(code: int, data: bytes = b"") -> bytes:
    return struct.pack(">QII", c.IHAVEOPT, code, len(data)) + data


def reply(code: int, rep: int, data: bytes = b"") -> bytes:
    return struct.pack(">QIII", c.OPTION_REPLY_MAGIC, code, rep, len(data)) + data


def name_and_infos(name: bytes, infos: Iterable[int] = ()) -> bytes:
    infos = list(infos)
    return struct.pack(">I", len(name)) + name + struct.pack(f">H{len(infos)}H", len(infos), *infos)


def name_and_queries(name: bytes, queries: Iterable[bytes]) -> bytes:
    queries = list(queries)
    out = struct.pack(">I", len(name)) + name + struct.pack(">I", len(queries))
    for query in queries:
        out += struct.pack(">I", len(query)) + query
    return out


def info_export(size: int = SIZE, flags: int = FLAGS) -> bytes:
    return struct.pack(">HQH", c.Info.EXPORT, size, flags)


def info_block(minimum: int, preferred: int, maximum: int) -> bytes:
    return struct.pack(">HIII", c.Info.BLOCK_SIZE, minimum, preferred, maximum)


def meta_context(context_id: int, name: bytes) -> bytes:
    return struct.pack(">I", context_id) + name


def request(
    cmd: int, cookie: int, offset: int = 0, length: int = 0, flags: int = 0, data: bytes = b""
) -> bytes:
    return struct.pack(">IHHQQI", c.REQUEST_MAGIC, flags, cmd, cookie, offset, length) + data


def ext_request(
    cmd: int, cookie: int, offset: int = 0, length: int = 0, flags: int = 0, data: bytes = b""
) -> bytes:
    header = struct.pack(">IHHQQQ", c.EXTENDED_REQUEST_MAGIC, flags, cmd, cookie, offset, length)
    return header + data


def simple(cookie: int, error: int = 0, data: bytes = b"") -> bytes:
    return struct.pack(">IIQ", c.SIMPLE_REPLY_MAGIC, error, cookie) + data


def chunk(
    cookie: int, kind: int, data: bytes = b"", flags: int = DONE, length: int | None = None
) -> bytes:
    size = len(data) if length is None else length
    return struct.pack(">IHHQI", c.STRUCTURED_REPLY_MAGIC, flags, kind, cookie, size) + data


def ext_chunk(cookie: int, offset: int, kind: int, data: bytes = b"", flags: int = DONE) -> bytes:
    return (
        struct.pack(">IHHQQQ", c.EXTENDED_REPLY_MAGIC, flags, kind, cookie, offset, len(data))
        + data
    )


def offset_data(offset: int, data: bytes) -> bytes:
    return struct.pack(">Q", offset) + data


def offset_hole(offset: int, size: int) -> bytes:
    return struct.pack(">QI", offset, size)


def status(context_id: int, *extents: tuple[int, int]) -> bytes:
    return struct.pack(">I", context_id) + b"".join(struct.pack(">II", *e) for e in extents)


def ext_status(context_id: int, *extents: tuple[int, int], count: int | None = None) -> bytes:
    number = len(extents) if count is None else count
    return struct.pack(">II", context_id, number) + b"".join(
        struct.pack(">QQ", *e) for e in extents
    )


def error_payload(error: int, message: bytes = b"", offset: int | None = None) -> bytes:
    out = struct.pack(">IH", error, len(message)) + message
    return out if offset is None else out + struct.pack(">Q", offset)


def pattern(length: int, seed: int = 1) -> bytes:
    return bytes((i * 7 + seed) & 0xFF for i in range(length))


# --- conversations -----------------------------------------------------------------------


@dataclass
class Conv:
    """One NBD session as a list of (direction, bytes) segments, with negotiated state."""

    segments: list[tuple[str, bytes]] = field(default_factory=list)
    marked: int | None = None
    structured: bool = False
    extended: bool = False
    contexts: dict[int, bytes] = field(default_factory=dict)
    closer: str | None = None
    """Who closes the connection after the last segment (``disc()`` makes it the client);
    None: the capture stops with the connection open, which proves nothing about how the
    session ended."""
    fins: set[int] = field(default_factory=set)
    """Indexes of the segments that are a FIN of their direction (see :meth:`fin`)."""
    pauses: dict[int, float] = field(default_factory=dict)
    """Seconds of silence before a segment (see :meth:`wait`)."""

    def c(self, data: bytes) -> Conv:
        self.segments.append((CLIENT, data))
        return self

    def s(self, data: bytes) -> Conv:
        self.segments.append((SERVER, data))
        return self

    def fin(self, direction: str) -> Conv:
        """``direction`` closes its side of the connection here (a FIN segment)."""
        self.fins.add(len(self.segments))
        self.segments.append((direction, b""))
        return self

    def wait(self, seconds: float) -> Conv:
        """The next segment comes ``seconds`` later."""
        self.pauses[len(self.segments)] = seconds
        return self

    def mark(self) -> Conv:
        """The next segment added is the one that breaks the rule."""
        self.marked = len(self.segments)
        return self

    # -- handshake building blocks --

    def newstyle(self, handshake_flags: int = 3, client_flags: int = 3) -> Conv:
        return self.s(greeting(handshake_flags)).c(client_flags_of(client_flags))

    def sr(self) -> Conv:
        self.structured = True
        return self.c(option(c.Opt.STRUCTURED_REPLY)).s(reply(c.Opt.STRUCTURED_REPLY, c.Rep.ACK))

    def eh(self) -> Conv:
        self.extended = True
        return self.c(option(c.Opt.EXTENDED_HEADERS)).s(reply(c.Opt.EXTENDED_HEADERS, c.Rep.ACK))

    def meta(self, *names: bytes, export: bytes = b"disk", first_id: int = 1) -> Conv:
        self.c(option(c.Opt.SET_META_CONTEXT, name_and_queries(export, names)))
        self.contexts = {}
        for number, name in enumerate(names, start=first_id):
            self.s(reply(c.Opt.SET_META_CONTEXT, c.Rep.META_CONTEXT, meta_context(number, name)))
            self.contexts[number] = name
        return self.s(reply(c.Opt.SET_META_CONTEXT, c.Rep.ACK))

    def default_flags(self) -> int:
        flags = FLAGS
        if not (self.structured or self.extended):
            flags &= ~int(TF.SEND_DF)
        return flags

    def go(
        self,
        export: bytes = b"disk",
        infos: Iterable[int] = (INFO_BLOCK_SIZE,),
        size: int = SIZE,
        flags: int | None = None,
        block: tuple[int, int, int] | None = BLOCK,
        code: int = OPT_GO,
        mark: str = "",
    ) -> Conv:
        """The option, NBD_INFO_EXPORT, NBD_INFO_BLOCK_SIZE (unless ``block`` is None), ACK;
        ``mark`` ("info", "block" or "ack") marks one of the replies."""
        infos = list(infos)
        self.c(option(code, name_and_infos(export, infos)))
        if mark == "info":
            self.mark()
        self.s(
            reply(
                code,
                c.Rep.INFO,
                info_export(size, self.default_flags() if flags is None else flags),
            )
        )
        if block is not None:
            if mark == "block":
                self.mark()
            self.s(reply(code, c.Rep.INFO, info_block(*block)))
        if mark == "ack":
            self.mark()
        return self.s(reply(code, c.Rep.ACK))

    def ready(self, *contexts: bytes, **go: object) -> Conv:
        """Fixed newstyle, structured replies, contexts (default base:allocation), GO."""
        self.newstyle().sr().meta(*(contexts or (c.BASE_ALLOCATION.encode(),)))
        return self.go(**go)  # type: ignore[arg-type]

    def ready_extended(self, *contexts: bytes, **go: object) -> Conv:
        """Fixed newstyle, extended headers, contexts, GO (with BLOCK_STATUS_PAYLOAD)."""
        self.newstyle().eh().meta(*(contexts or (c.BASE_ALLOCATION.encode(),)))
        go.setdefault("flags", FLAGS | TF.BLOCK_STATUS_PAYLOAD)
        return self.go(**go)  # type: ignore[arg-type]

    def disc(self, cookie: int = 99) -> Conv:
        self.closer = CLIENT
        if self.extended:
            return self.c(ext_request(c.Cmd.DISC, cookie))
        return self.c(request(c.Cmd.DISC, cookie))

    # -- writing --

    def write(self, path: Path) -> list[int]:
        """Write the conversation as pcapng; return the first frame of each segment."""
        frames = []
        with PcapngWriter(path) as writer:
            start = 1_700_000_000.0
            stream = writer.open_stream(timestamp=start)
            paused = 0.0
            first_fin: str | None = None
            for number, (direction, data) in enumerate(self.segments):
                paused += self.pauses.get(number, 0.0)
                when = start + paused + number / 1000
                frames.append(writer.packets + 1)
                if number in self.fins:
                    stream.fin(direction, timestamp=when)  # type: ignore[arg-type]
                    first_fin = first_fin or direction
                else:
                    stream.record(direction, data, timestamp=when)  # type: ignore[arg-type]
            closer = first_fin or self.closer
            if closer is not None:
                stream.close(closer, timestamp=start + paused + 1.0)  # type: ignore[arg-type]
        return frames


@dataclass(frozen=True)
class Sample:
    """A conversation that breaks one rule (at its marked segment)."""

    conv: Conv
    also: frozenset[str] = frozenset()
    """Other rules this breach necessarily breaks too (anywhere)."""


SAMPLES: dict[str, Callable[[], Sample]] = {}


def sample(
    rule_id: str, also: Iterable[str] = ()
) -> Callable[[Callable[[], Conv]], Callable[[], Conv]]:
    """Register a function building a conversation that breaks ``rule_id``."""

    def register(build: Callable[[], Conv]) -> Callable[[], Conv]:
        assert rule_id not in SAMPLES, f"two samples for {rule_id}"
        SAMPLES[rule_id] = lambda: Sample(build(), frozenset(also))
        return build

    return register


# --- clean conversations -------------------------------------------------------------------


def clean_structured() -> Conv:
    """Every common command, structured replies, base:allocation: breaks nothing."""
    data = pattern(8192)
    conv = Conv().ready()
    conv.c(request(c.Cmd.WRITE, 1, 0, len(data), data=data)).s(simple(1))
    conv.c(request(c.Cmd.WRITE, 2, 65536, 4096, flags=CF.FUA, data=pattern(4096, 2))).s(simple(2))
    conv.c(request(c.Cmd.READ, 3, 0, 8192))
    conv.s(chunk(3, RT.OFFSET_DATA, offset_data(4096, data[4096:]), flags=0))
    conv.s(chunk(3, RT.OFFSET_DATA, offset_data(0, data[:4096]), flags=0))
    conv.s(chunk(3, RT.NONE))
    conv.c(request(c.Cmd.READ, 4, 16384, 4096, flags=CF.DF))
    conv.s(chunk(4, RT.OFFSET_HOLE, offset_hole(16384, 4096)))
    conv.c(request(c.Cmd.BLOCK_STATUS, 5, 0, SIZE))
    # NBD_STATE_ZERO only where nothing was written (the write at 65536 is data).
    extents = ((8192, 0), (65536 - 8192, 3), (4096, 0), (SIZE - 69632, 3))
    conv.s(chunk(5, RT.BLOCK_STATUS, status(1, *extents)))
    conv.c(request(c.Cmd.BLOCK_STATUS, 6, 0, 4096, flags=CF.REQ_ONE))
    conv.s(chunk(6, RT.BLOCK_STATUS, status(1, (4096, 0))))
    conv.c(request(c.Cmd.WRITE_ZEROES, 7, 8192, 8192, flags=CF.NO_HOLE)).s(simple(7))
    conv.c(request(c.Cmd.WRITE_ZEROES, 8, 8192, 8192, flags=CF.FAST_ZERO))
    conv.s(chunk(8, RT.ERROR, error_payload(c.Errno.ENOTSUP, b"not fast")))
    conv.c(request(c.Cmd.TRIM, 9, 65536, 4096)).s(simple(9))
    conv.c(request(c.Cmd.CACHE, 10, 0, 4096)).s(simple(10))
    conv.c(request(c.Cmd.READ, 11, SIZE - 512, 512))
    conv.s(
        chunk(11, RT.ERROR_OFFSET, error_payload(c.Errno.EIO, b"bad sector", SIZE - 512), flags=0)
    )
    conv.s(chunk(11, RT.NONE))
    conv.c(request(c.Cmd.FLUSH, 12)).s(simple(12))
    return conv.disc()


def clean_extended() -> Conv:
    """Extended headers, two contexts, the block status payload form: breaks nothing."""
    conv = Conv().ready_extended(b"base:allocation", b"qemu:dirty-bitmap:b0")
    data = pattern(4096)
    conv.c(ext_request(c.Cmd.WRITE, 1, 4096, len(data), flags=CF.PAYLOAD_LEN, data=data))
    conv.s(ext_chunk(1, 4096, RT.NONE))
    conv.c(ext_request(c.Cmd.READ, 2, 4096, 4096))
    conv.s(ext_chunk(2, 4096, RT.OFFSET_DATA, offset_data(4096, data)))
    conv.c(ext_request(c.Cmd.BLOCK_STATUS, 3, 0, SIZE))
    conv.s(ext_chunk(3, 0, RT.BLOCK_STATUS_EXT, ext_status(2, (SIZE, 0)), flags=0))
    conv.s(ext_chunk(3, 0, RT.BLOCK_STATUS_EXT, ext_status(1, (4096, 3), (SIZE - 4096, 0))))
    payload = struct.pack(">QI", SIZE, 2)
    conv.c(ext_request(c.Cmd.BLOCK_STATUS, 4, 0, len(payload), flags=CF.PAYLOAD_LEN, data=payload))
    conv.s(ext_chunk(4, 0, RT.BLOCK_STATUS_EXT, ext_status(2, (SIZE, 1))))
    conv.c(ext_request(c.Cmd.TRIM, 5, 0, 4096)).s(ext_chunk(5, 0, RT.NONE))
    return conv.disc()


def clean_simple_export_name() -> Conv:
    """Fixed newstyle without NO_ZEROES, NBD_OPT_LIST, NBD_OPT_INFO, then EXPORT_NAME."""
    conv = Conv().newstyle(handshake_flags=1, client_flags=1)
    conv.c(option(c.Opt.LIST))
    conv.s(reply(c.Opt.LIST, c.Rep.SERVER, struct.pack(">I", 4) + b"disk" + b"a scratch disk"))
    conv.s(reply(c.Opt.LIST, c.Rep.ACK))
    conv.go(code=c.Opt.INFO, infos=(), block=None)
    conv.c(option(c.Opt.STRUCTURED_REPLY)).s(reply(c.Opt.STRUCTURED_REPLY, c.Rep.ERR_UNSUP))
    conv.c(option(c.Opt.EXPORT_NAME, b"disk"))
    conv.s(struct.pack(">QH", SIZE, conv.default_flags()) + bytes(124))
    conv.c(request(c.Cmd.READ, 1, 0, 512)).s(simple(1, data=pattern(512)))
    conv.c(request(c.Cmd.READ, 2, 4096, 512)).s(simple(2, error=c.Errno.EIO))
    return conv.disc()


def clean_tls() -> Conv:
    """FORCEDTLS: an option refused with TLS_REQD, STARTTLS acknowledged, then TLS records."""
    conv = Conv().newstyle()
    conv.c(option(c.Opt.LIST)).s(reply(c.Opt.LIST, c.Rep.ERR_TLS_REQD))
    conv.c(option(c.Opt.STARTTLS)).s(reply(c.Opt.STARTTLS, c.Rep.ACK))
    conv.c(bytes.fromhex("160301002a") + bytes(42))  # ClientHello-ish record
    return conv.s(bytes.fromhex("160303002a") + bytes(42))


def clean_oldstyle() -> Conv:
    conv = Conv()
    conv.s(
        struct.pack(">QQQHH", c.NBDMAGIC, c.CLISERV_MAGIC, SIZE, 0, TF.HAS_FLAGS | TF.SEND_FLUSH)
        + bytes(124)
    )
    conv.c(request(c.Cmd.READ, 1, 0, 512)).s(simple(1, data=pattern(512)))
    return conv.disc()


def clean_early_reply() -> Conv:
    """A server that answers an option before all of its data arrived (nbdkit does, in
    FORCEDTLS mode): the reply is recorded between two segments of the option."""
    conv = Conv().newstyle()
    info = option(c.Opt.INFO, name_and_infos(b"disk", [c.Info.BLOCK_SIZE, c.Info.NAME]))
    conv.c(info[:22]).s(reply(c.Opt.INFO, c.Rep.ERR_TLS_REQD)).c(info[22:])
    go = option(c.Opt.GO, name_and_infos(b"disk", [c.Info.BLOCK_SIZE, c.Info.NAME]))
    conv.c(go[:22]).s(reply(c.Opt.GO, c.Rep.ERR_TLS_REQD)).c(go[22:])
    return conv.c(option(c.Opt.ABORT)).s(reply(c.Opt.ABORT, c.Rep.ACK))


CLEAN: dict[str, Callable[[], Conv]] = {
    "early-reply": clean_early_reply,
    "structured": clean_structured,
    "extended": clean_extended,
    "export-name": clean_simple_export_name,
    "tls": clean_tls,
    "oldstyle": clean_oldstyle,
}
