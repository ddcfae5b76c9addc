"""Fault profiles of the reference server: each breaks one sentence of the spec on demand.

``nbd-harness serve --fault NAME`` (repeatable, or ``fault = [...]`` in the
``[server]`` table) makes the server misbehave in exactly the way :data:`FAULTS`
describes, so that decoders and rules can be tested against a broken server
made here.  ``serve --list-faults`` prints the table; ``docs/faults.md`` is
generated from it.

The session calls into :class:`ServerFaults` at four boundaries, and only when a
fault is set (a healthy server pays one ``None`` check per message): the
greeting's flags, after the client flags, each option, each transmission
request.  A hook returns None (or False) to let the healthy code run.  With a
fault set the session's state machine stops refusing what the server sends
(``strict_local=False``), so a fault can send what the spec forbids through it
and the session keeps its bearings; bytes no message can express (a wrong
magic, a wrong length, garbage) are written raw.
"""

from __future__ import annotations

import struct
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING

from harness.faults import Fault, select_faults
from harness.protocol import Phase
from harness.protocol import constants as c
from harness.protocol.codec import encode, option_reply
from harness.protocol.messages import (
    ErrorReplyPayload,
    InfoExport,
    OptionReply,
    OptionRequest,
    ReplyChunk,
    Request,
    SimpleReply,
)

from ._options import OptionOutcome, answer_option

if TYPE_CHECKING:
    from ._commands import Executor
    from .server import Session

BASELINE = "Baseline"
BASELINE_SENTENCE = (
    "The following MUST be implemented by all implementations, and should be considered a "
    "baseline:"
)
OPTION_HARD_DISCONNECT = (
    "A party MUST NOT initiate a hard disconnect save where set out in this section."
)
TERMINATION_OPTIONS = "Termination of the session during option haggling"
SIMPLE_REPLY_TO_ALL = (
    "The simple reply message MUST be sent by the server in response to all requests if "
    "structured replies have not been negotiated using `NBD_OPT_STRUCTURED_REPLY`."
)
PHANTOM_COOKIE = 0xBAD0C0FFEE
"""The cookie of the READ request a client hides in a write's data for
``write-payload-not-consumed`` (any cookie the client never used would do)."""
BAD_REPLY_MAGIC = 0x0BADBEEF
GARBAGE = bytes([0xA5]) * 16
UNDEFINED_ERRNO = 0x7F

FAULTS: tuple[Fault, ...] = (
    Fault("reply-bad-magic", "server", "misframing",
          "every reply to NBD_CMD_READ starts with 0x0BADBEEF instead of a reply magic",
          "Transmission", "MUST",
          "There are two general message types in the transmission phase: the request (simple "
          "or extended), and the reply (simple, structured, or extended).",
          "server.reply-magic", "any read (qemu-io -c 'read 0 4k')"),
    Fault("hole-chunk-length-long", "server", "misframing",
          "NBD_REPLY_TYPE_OFFSET_HOLE chunks say length 16 but carry the usual 12 bytes, so "
          "the next message's first 4 bytes are read as part of the chunk",
          "Structured reply types", "MUST", "*length* MUST be exactly 12.",
          "server.offset-hole-length", "a structured read of an unwritten range"),
    Fault("hole-chunk-length-short", "server", "misframing",
          "NBD_REPLY_TYPE_OFFSET_HOLE chunks say length 8 but carry 12 bytes, leaving 4 bytes "
          "where the next message should start",
          "Structured reply types", "MUST", "*length* MUST be exactly 12.",
          "server.offset-hole-length", "a structured read of an unwritten range"),
    Fault("read-reply-long", "server", "misframing",
          "simple replies to NBD_CMD_READ carry 512 bytes more data than the request's length",
          "Request types", "MUST",
          "If structured replies were not negotiated, then a read request MUST always be "
          "answered by a simple reply, as documented above",
          "server.simple-read-data-length",
          "a read without structured replies (nbdsh, set_request_structured_replies(False))"),
    Fault("garbage-between-replies", "server", "misframing",
          "16 bytes of 0xA5 follow every reply to NBD_CMD_READ",
          "Transmission", "MUST",
          "There are two general message types in the transmission phase: the request (simple "
          "or extended), and the reply (simple, structured, or extended).",
          "server.reply-magic", "a read followed by another command"),
    Fault("read-reply-short", "server", "short-reply",
          "simple replies to NBD_CMD_READ carry half the data asked for; the connection stays "
          "open",
          "Request types", "MUST",
          "If structured replies were not negotiated, then a read request MUST always be "
          "answered by a simple reply, as documented above",
          "server.simple-read-data-length",
          "a read without structured replies (nbdsh, set_request_structured_replies(False))"),
    Fault("option-unanswered", "server", "no-answer",
          "NBD_OPT_SET_META_CONTEXT never gets a reply; the server waits for the next option",
          "Option types", "MUST",
          "Otherwise the server MUST reply with a number of `NBD_REP_META_CONTEXT` replies, one "
          "for each selected metadata context, each with a unique metadata context ID, followed "
          "by `NBD_REP_ACK`.",
          "server.meta-context-replies", "nbdinfo --map"),
    Fault("read-unanswered", "server", "no-answer",
          "NBD_CMD_READ never gets a reply; later requests are answered",
          "Request types", "MUST",
          "The server MUST reply with either a simple reply or a structured reply, according "
          "to whether the structured replies have been negotiated using "
          "`NBD_OPT_STRUCTURED_REPLY`.",
          "server.read-answered", "any read (qemu-io -c 'read 0 4k')"),
    Fault("disconnect-after-client-flags", "server", "hard-disconnect",
          "closes the connection right after valid client flags",
          TERMINATION_OPTIONS, "MUST NOT", OPTION_HARD_DISCONNECT,
          "server.no-hard-disconnect-in-options", "any client"),
    Fault("disconnect-on-starttls", "server", "hard-disconnect",
          "closes the connection on NBD_OPT_STARTTLS instead of answering it",
          "Option types", "MUST",
          "The server MUST either reply with `NBD_REP_ACK` after which point the connection is "
          "upgraded to TLS, or an error reply explicitly permitted by this document",
          "server.starttls-reply", "a client asking for TLS (nbdinfo nbds://...)"),
    Fault("disconnect-on-read", "server", "hard-disconnect",
          "closes the connection on a valid NBD_CMD_READ instead of answering it",
          "Terminating the transmission phase", "MUST NOT",
          "The client and the server MUST NOT initiate any form of disconnect other than in one "
          "of the above circumstances.",
          "server.no-hard-disconnect-in-transmission", "any read (qemu-io -c 'read 0 4k')"),
    Fault("disconnect-on-read-past-end", "server", "hard-disconnect",
          "closes the connection on a read past the end of the export (allowed: the client "
          "broke a MUST NOT first, so this is a no-deviation case)",
          "Terminating the transmission phase", "MAY",
          "Either side MAY initiate a hard disconnect if it detects a violation by the other "
          "party of a mandatory condition within this document.",
          "", "a read past the end (nbdsh with strict mode off)", deviation=False),
    Fault("disconnect-on-unknown-command", "server", "hard-disconnect",
          "closes the connection on an unknown command type (allowed: the client broke a MUST "
          "first, so this is a no-deviation case)",
          "Terminating the transmission phase", "MAY",
          "Either side MAY initiate a hard disconnect if it detects a violation by the other "
          "party of a mandatory condition within this document.",
          "", "an unknown command (nbd-harness info --fault unknown-command)", deviation=False),
    Fault("write-payload-not-consumed", "server", "misparse",
          "after NBD_CMD_WRITE's reply, reads the write's data as the next requests (a client "
          "writing a request header as data gets a reply to a cookie it never sent)",
          "Transmission", "MUST",
          "the server MUST use the same value for cookie as was sent by the client in the "
          "corresponding request",
          "server.reply-cookie-matches", "a write whose data is a READ request header (nbdsh)"),
    Fault("trim-length-as-payload", "server", "misparse",
          "reads NBD_CMD_TRIM's length as payload: swallows that many bytes of later requests "
          "before answering",
          "Simple reply message", "MUST", SIMPLE_REPLY_TO_ALL,
          "server.simple-reply-to-all", "a trim without structured replies (nbdsh)"),
    Fault("no-fixed-newstyle", "server", "baseline",
          "the greeting lacks NBD_FLAG_FIXED_NEWSTYLE", BASELINE, "MUST", BASELINE_SENTENCE,
          "server.baseline-fixed-newstyle", "any client"),
    Fault("no-opt-go", "server", "baseline",
          "NBD_OPT_INFO and NBD_OPT_GO get NBD_REP_ERR_UNSUP", BASELINE, "MUST",
          BASELINE_SENTENCE, "server.baseline-info-go", "nbdinfo (falls back to EXPORT_NAME)"),
    Fault("no-opt-list", "server", "baseline",
          "NBD_OPT_LIST gets NBD_REP_ERR_UNSUP", BASELINE, "MUST", BASELINE_SENTENCE,
          "server.baseline-list", "nbdinfo --list"),
    Fault("go-without-info-export", "server", "baseline",
          "NBD_OPT_INFO and NBD_OPT_GO end in NBD_REP_ACK without any NBD_INFO_EXPORT",
          "Option reply types", "MUST",
          "The server MUST send an `NBD_INFO_EXPORT` information type at some point before "
          "sending an `NBD_REP_ACK`",
          "server.info-export-before-ack", "any client"),
    Fault("eio-read-past-end", "server", "wrong-error",
          "a read past the end of the export fails with NBD_EIO instead of NBD_EINVAL",
          "Error values", "SHOULD",
          "It SHOULD return `NBD_EINVAL` if it receives a read or trim request including one or "
          "more sectors beyond the size of the device, or if a read or write request is not "
          "aligned to advertised minimum block sizes.",
          "server.einval-beyond-end-or-unaligned", "a read past the end (nbdsh, strict mode off)"),
    Fault("eio-block-status-no-context", "server", "wrong-error",
          "NBD_CMD_BLOCK_STATUS without a selected metadata context fails with NBD_EIO instead "
          "of NBD_EINVAL",
          "Metadata querying", "SHOULD",
          "Servers SHOULD reply with `NBD_EINVAL` to clients sending `NBD_CMD_BLOCK_STATUS` "
          "without selecting at least one metadata context.",
          "server.block-status-einval-without-context",
          "block status without SET_META_CONTEXT (nbd-harness info --fault "
          "block-status-without-context)"),
    Fault("undefined-errno", "server", "wrong-error",
          f"every error reply carries the undefined error value {UNDEFINED_ERRNO}",
          "Error values", "MUST",
          "Therefore, the allowed values for the error field have been restricted to set of "
          "possibilities.",
          "server.error-values-defined", "any failing command (a read past the end)"),
    Fault("enotsup-write-zeroes", "server", "wrong-error",
          "NBD_CMD_WRITE_ZEROES (advertised, with SEND_FAST_ZERO) fails with NBD_ENOTSUP "
          "without NBD_CMD_FLAG_FAST_ZERO: an advertised command treated as unsupported",
          "Request types", "MUST NOT",
          "If the server advertised `NBD_FLAG_SEND_FAST_ZERO` but `NBD_CMD_FLAG_FAST_ZERO` is "
          "not set, then the server MUST NOT fail with `NBD_ENOTSUP`",
          "server.no-enotsup-without-fast-zero", "qemu-io -c 'write -z 0 4k'"),
    Fault("cache-changes-data", "server", "semantic",
          "NBD_CMD_CACHE zeroes the range it should only prefetch",
          "Request types", "MUST NOT",
          "other than any difference in performance, there MUST NOT be any difference in "
          "semantics compared to if the client had not used this command",
          "server.cache-keeps-data", "write, cache, read back (nbdsh)"),
    Fault("read-only-write-accepted", "server", "semantic",
          "NBD_CMD_WRITE on a READ_ONLY export gets a success reply (the data is not written)",
          "Transmission flags", "MUST",
          "If this flag is set, the server MUST error subsequent write operations to the export.",
          "server.read-only-write-errors", "a write to a read-only export (nbdsh, strict off)"),
    Fault("write-zeroes-not-zeroing", "server", "semantic",
          "NBD_CMD_WRITE_ZEROES succeeds but leaves the data as it was",
          "Request types", "MUST",
          "The server MUST zero out the data on disk, and then send the reply message.",
          "server.write-zeroes-zeroes",
          "qemu-io -c 'write -P 0x55 0 4k' -c 'write -z 0 4k' -c 'read -P 0 0 4k'"),
    Fault("info-go-disagree", "server", "negotiation",
          "NBD_OPT_GO reports half the export size NBD_OPT_INFO reported just before",
          "Option types", "MUST",
          "then the server MUST reply with the same set of information, such as transmission "
          "flags in the `NBD_INFO_EXPORT` reply",
          "server.go-consistent-with-info", "NBD_OPT_INFO then NBD_OPT_GO (nbdsh opt mode)"),
    Fault("export-name-option-reply", "server", "negotiation",
          "NBD_OPT_EXPORT_NAME gets an NBD_REP_ERR_UNKNOWN option reply and the server waits "
          "for more options",
          "Newstyle negotiation", "MUST",
          "If the server is unwilling to allow the export, it MUST terminate the session.",
          "server.export-name-no-option-reply",
          "NBD_OPT_EXPORT_NAME (nbd-harness info --fault ... or a client without GO)"),
)
"""Every server fault: what it does, the sentence it breaks and the rule that means it."""


# --- behaviours ---------------------------------------------------------------------------
# Each behaviour is a coroutine called at one boundary; it returns None/False to let the
# healthy server go on, or takes over (an OptionOutcome for options, True for requests).

OptionHook = Callable[["Session", OptionRequest], Awaitable[OptionOutcome | None]]
RequestHook = Callable[["Session", Request, "Executor"], Awaitable[bool]]


def _ended(message: str) -> Exception:
    from .server import SessionEnded  # server imports this module: import when used

    return SessionEnded(f"fault: {message}")


def _healthy_answer(session: Session, request: OptionRequest) -> OptionOutcome:
    return answer_option(session._option_context(), request, session.conn.last_violations)


def _write_raw(session: Session, data: bytes) -> None:
    session.stream.write(data)


async def _answer_bytes(session: Session, replies: Iterable[SimpleReply | ReplyChunk],
                        mangle: Callable[[SimpleReply | ReplyChunk, bytes], bytes]) -> None:
    """Send ``replies`` through the state machine, each encoding passed through ``mangle``."""
    for reply in replies:
        _write_raw(session, mangle(reply, session.conn.send(reply)))
    await session._drain()


async def _mangle_reads(session: Session, req: Request, executor: Executor,
                        mangle: Callable[[SimpleReply | ReplyChunk, bytes], bytes]) -> bool:
    if req.type != c.Cmd.READ:
        return False
    await _answer_bytes(session, executor.execute(req, session.conn.last_violations), mangle)
    return True


async def _bad_magic(session: Session, req: Request, executor: Executor) -> bool:
    return await _mangle_reads(session, req, executor,
                               lambda _reply, data: struct.pack(">I", BAD_REPLY_MAGIC) + data[4:])


def _hole_length(length: int) -> RequestHook:
    """OFFSET_HOLE chunks with ``length`` in the header instead of 12 (payload unchanged)."""

    def mangle(reply: SimpleReply | ReplyChunk, data: bytes) -> bytes:
        if not isinstance(reply, ReplyChunk) or reply.type != c.ReplyType.OFFSET_HOLE:
            return data
        if reply.extended:  # 64-bit length at offset 24 of the 32-byte extended header
            return data[:24] + struct.pack(">Q", length) + data[32:]
        return data[:16] + struct.pack(">I", length) + data[20:]

    async def hook(session: Session, req: Request, executor: Executor) -> bool:
        return await _mangle_reads(session, req, executor, mangle)

    return hook


async def _read_long(session: Session, req: Request, executor: Executor) -> bool:
    return await _mangle_reads(session, req, executor, lambda _reply, data: data + bytes(512))


async def _read_short(session: Session, req: Request, executor: Executor) -> bool:
    def mangle(reply: SimpleReply | ReplyChunk, data: bytes) -> bytes:
        if isinstance(reply, SimpleReply) and reply.data:
            return data[: len(data) - len(reply.data) // 2]
        return data

    return await _mangle_reads(session, req, executor, mangle)


async def _garbage(session: Session, req: Request, executor: Executor) -> bool:
    return await _mangle_reads(session, req, executor, lambda _reply, data: data + GARBAGE)


async def _ignore_reads(session: Session, req: Request, executor: Executor) -> bool:
    return req.type == c.Cmd.READ


async def _close_on_read(session: Session, req: Request, executor: Executor) -> bool:
    if req.type == c.Cmd.READ:
        raise _ended("closed on NBD_CMD_READ")
    return False


async def _close_on_read_past_end(session: Session, req: Request, executor: Executor) -> bool:
    if req.type == c.Cmd.READ and req.offset + req.length > executor.backend.size:
        raise _ended("closed on a read past the end")
    return False


async def _close_on_unknown_command(session: Session, req: Request, executor: Executor) -> bool:
    if req.type not in c.Cmd.__members__.values():
        raise _ended(f"closed on unknown command {req.type}")
    return False


async def _write_data_as_requests(session: Session, req: Request, executor: Executor) -> bool:
    if req.type != c.Cmd.WRITE:
        return False
    await session._send(*executor.success(req))
    # The data goes back in front of the decoder's buffer, as if it followed the header
    # on the wire: the emulated server never took it off the stream.
    session.conn._buffer[0:0] = bytes(req.payload)
    return True


async def _trim_swallows(session: Session, req: Request, executor: Executor) -> bool:
    if req.type != c.Cmd.TRIM:
        return False
    conn = session.conn
    while conn.buffered < req.length:
        try:
            data = await session.stream.read_some(60)
        except TimeoutError:
            raise _ended("waited 60 s for a TRIM's 'payload'") from None
        if not data:
            raise _ended("client closed while the TRIM's 'payload' was read")
        conn.receive_data(data)
    del conn._buffer[: req.length]  # the requests it swallowed never reach the decoder
    await session._send(*executor.execute(req, conn.last_violations))
    return True


def _errno_reply(errno: int) -> Callable[[Request, Executor], list[SimpleReply | ReplyChunk]]:
    def reply(req: Request, executor: Executor) -> list[SimpleReply | ReplyChunk]:
        return executor.failure(req, errno, "fault: wrong error value")

    return reply


async def _eio_read_past_end(session: Session, req: Request, executor: Executor) -> bool:
    if req.type != c.Cmd.READ or req.offset + req.length <= executor.backend.size:
        return False
    await session._send(*_errno_reply(c.Errno.EIO)(req, executor))
    return True


async def _eio_block_status(session: Session, req: Request, executor: Executor) -> bool:
    if req.type != c.Cmd.BLOCK_STATUS or session.conn.negotiated.meta_contexts:
        return False
    await session._send(*_errno_reply(c.Errno.EIO)(req, executor))
    return True


async def _undefined_errno(session: Session, req: Request, executor: Executor) -> bool:
    replies = executor.execute(req, session.conn.last_violations)
    failed = [r for r in replies if (isinstance(r, SimpleReply) and r.error)
              or (isinstance(r, ReplyChunk) and c.is_error_chunk(r.type))]
    if not failed:
        return False
    await session._send(*_errno_reply(UNDEFINED_ERRNO)(req, executor))
    return True


async def _enotsup_write_zeroes(session: Session, req: Request, executor: Executor) -> bool:
    if req.type != c.Cmd.WRITE_ZEROES:
        return False
    await session._send(*_errno_reply(c.Errno.ENOTSUP)(req, executor))
    return True


async def _cache_zeroes(session: Session, req: Request, executor: Executor) -> bool:
    if req.type != c.Cmd.CACHE:
        return False
    replies = executor.execute(req, session.conn.last_violations)
    executor.backend.write(req.offset, bytes(min(req.length, executor.backend.size - req.offset)))
    await session._send(*replies)
    return True


async def _accept_read_only_write(session: Session, req: Request, executor: Executor) -> bool:
    if req.type != c.Cmd.WRITE or not executor.export.read_only:
        return False
    await session._send(*executor.success(req))
    return True


async def _zeroes_do_nothing(session: Session, req: Request, executor: Executor) -> bool:
    if req.type != c.Cmd.WRITE_ZEROES:
        return False
    await session._send(*executor.success(req))
    return True


async def _option_unanswered(session: Session, request: OptionRequest) -> OptionOutcome | None:
    if request.option != c.Opt.SET_META_CONTEXT:
        return None
    return OptionOutcome([])  # nothing sent; the session waits for the next option


async def _close_on_starttls(session: Session, request: OptionRequest) -> OptionOutcome | None:
    if request.option == c.Opt.STARTTLS:
        raise _ended("closed on NBD_OPT_STARTTLS")
    return None


def _unsupported(*options: int) -> OptionHook:
    async def hook(session: Session, request: OptionRequest) -> OptionOutcome | None:
        if request.option not in options:
            return None
        return OptionOutcome([option_reply(request.option, c.Rep.ERR_UNSUP,
                                           ErrorReplyPayload("fault: not implemented"))])

    return hook


async def _no_info_export(session: Session, request: OptionRequest) -> OptionOutcome | None:
    if request.option not in (c.Opt.INFO, c.Opt.GO):
        return None
    outcome = _healthy_answer(session, request)
    outcome.replies = [r for r in outcome.replies if not _is_info_export(r)]
    return outcome


def _is_info_export(reply: OptionReply) -> bool:
    return (reply.reply_type == c.Rep.INFO and len(reply.data) >= 2
            and int.from_bytes(reply.data[:2], "big") == c.Info.EXPORT)


async def _go_halves_size(session: Session, request: OptionRequest) -> OptionOutcome | None:
    if request.option != c.Opt.GO:
        return None
    outcome = _healthy_answer(session, request)
    for index, reply in enumerate(outcome.replies):
        if _is_info_export(reply):
            size, flags = struct.unpack(">QH", reply.data[2:12])
            outcome.replies[index] = option_reply(c.Opt.GO, c.Rep.INFO,
                                                  InfoExport(size // 2, flags))
    return outcome


async def _export_name_refused(session: Session, request: OptionRequest) -> OptionOutcome | None:
    if request.option != c.Opt.EXPORT_NAME:
        return None
    reply = option_reply(c.Opt.EXPORT_NAME, c.Rep.ERR_UNKNOWN,
                         ErrorReplyPayload("fault: refused by an option reply"))
    _write_raw(session, encode(reply))
    # The emulated server goes on negotiating, as if EXPORT_NAME could fail like GO.
    session.conn.phase = Phase.OPTIONS
    return OptionOutcome([])


OPTION_HOOKS: dict[str, OptionHook] = {
    "option-unanswered": _option_unanswered,
    "disconnect-on-starttls": _close_on_starttls,
    "no-opt-go": _unsupported(c.Opt.INFO, c.Opt.GO),
    "no-opt-list": _unsupported(c.Opt.LIST),
    "go-without-info-export": _no_info_export,
    "info-go-disagree": _go_halves_size,
    "export-name-option-reply": _export_name_refused,
}
REQUEST_HOOKS: dict[str, RequestHook] = {
    "reply-bad-magic": _bad_magic,
    "hole-chunk-length-long": _hole_length(16),
    "hole-chunk-length-short": _hole_length(8),
    "read-reply-long": _read_long,
    "read-reply-short": _read_short,
    "garbage-between-replies": _garbage,
    "read-unanswered": _ignore_reads,
    "disconnect-on-read": _close_on_read,
    "disconnect-on-read-past-end": _close_on_read_past_end,
    "disconnect-on-unknown-command": _close_on_unknown_command,
    "write-payload-not-consumed": _write_data_as_requests,
    "trim-length-as-payload": _trim_swallows,
    "eio-read-past-end": _eio_read_past_end,
    "eio-block-status-no-context": _eio_block_status,
    "undefined-errno": _undefined_errno,
    "enotsup-write-zeroes": _enotsup_write_zeroes,
    "cache-changes-data": _cache_zeroes,
    "read-only-write-accepted": _accept_read_only_write,
    "write-zeroes-not-zeroing": _zeroes_do_nothing,
}
HANDSHAKE_FAULTS = frozenset({"no-fixed-newstyle", "disconnect-after-client-flags"})


class ServerFaults:
    """The faults one server applies, called by its sessions at their boundaries."""

    def __init__(self, names: Iterable[str]) -> None:
        self.faults = select_faults(names, FAULTS, "server")
        self.names = frozenset(fault.name for fault in self.faults)
        self._option_hooks = [OPTION_HOOKS[n] for n in OPTION_HOOKS if n in self.names]
        self._request_hooks = [REQUEST_HOOKS[n] for n in REQUEST_HOOKS if n in self.names]

    @classmethod
    def from_names(cls, names: Iterable[str]) -> ServerFaults | None:
        """The faults named, or None for none (the healthy server's fast path)."""
        names = list(names)
        return cls(names) if names else None

    def greeting_flags(self, flags: c.HandshakeFlag) -> c.HandshakeFlag:
        """The newstyle greeting's handshake flags."""
        if "no-fixed-newstyle" in self.names:
            return flags & ~c.HandshakeFlag.FIXED_NEWSTYLE
        return flags

    def after_client_flags(self) -> None:
        """Called once valid client flags arrived; may end the session."""
        if "disconnect-after-client-flags" in self.names:
            raise _ended("closed after the client flags")

    async def on_option(self, session: Session, request: OptionRequest) -> OptionOutcome | None:
        """The answer to an option in place of the healthy one, or None."""
        for hook in self._option_hooks:
            outcome = await hook(session, request)
            if outcome is not None:
                return outcome
        return None

    async def on_request(self, session: Session, request: Request, executor: Executor) -> bool:
        """True when a fault answered (or swallowed) the request."""
        for hook in self._request_hooks:
            if await hook(session, request, executor):
                return True
        return False


def _check_tables() -> None:
    hooked = set(OPTION_HOOKS) | set(REQUEST_HOOKS) | HANDSHAKE_FAULTS
    named = {fault.name for fault in FAULTS}
    if hooked != named:
        raise AssertionError(f"faults without behaviour or entry: {sorted(hooked ^ named)}")


_check_tables()

__all__ = ["FAULTS", "PHANTOM_COOKIE", "ServerFaults"]
