"""The rules one session must follow, as pure functions over its state.

Each ``check_*`` returns the list of :class:`Violation` an event commits at
this point of the session, without changing anything; the connection applies
the event afterwards.  The file does not know which side it plays for, so the
same rules judge what we send and what the peer sends.

The checks are tables of small functions (per option, per command, per chunk
type) applied in order by a short loop.  A violation names the rule it breaks
by its id in :mod:`.rules`, the same id the conformance rule that reads the
same sentence reports.  Only rules the spec states with MUST / MUST NOT live
here (and the one SHOULD NOT a server needs to answer ``NBD_EINVAL``:
``client.block-status-payload-needs-flag``); SHOULD-level advice belongs to the
conformance rules.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass

from . import constants as c
from .codec import decode_block_status_payload, decode_chunk_payload
from .errors import CodecError
from .messages import (
    ChunkBlockStatus,
    ChunkError,
    ChunkErrorOffset,
    ChunkNone,
    ChunkOffsetData,
    ChunkOffsetHole,
    ChunkUnknown,
    ClientFlags,
    InfoBlockSize,
    InfoExport,
    InfoRequestPayload,
    MetaContextPayload,
    OptionReply,
    ReplyChunk,
    Request,
    SimpleReply,
)
from .rules import cite
from .state import InFlight, Negotiated, PendingOption, Violation

TF = c.TransmissionFlag


def _v(rule: str, message: str, errno: int = c.Errno.EINVAL) -> Violation:
    """Rule ``rule`` (an id of :mod:`.rules`) broken, as ``message`` says."""
    return Violation(message, cite(rule).section, rule, errno)


def _malformed(error: CodecError, message: str) -> Violation:
    """A field that does not decode, under the rule the codec named for it (none where no
    single sentence of the spec covers the field's layout)."""
    return Violation(message, error.section, error.rule)


_EXPOSED_BY_FLAG = "client.fua-needs-send-fua"
"""The rule whose sentence is general: "The client MUST NOT use a feature documented as
'exposed' by a flag unless that flag was set"."""
_COMMAND_ADVERTISED_RULE = {
    c.Cmd.FLUSH: "client.flush-needs-send-flush",
    c.Cmd.TRIM: "client.trim-needs-send-trim",
    c.Cmd.WRITE_ZEROES: "client.write-zeroes-needs-send-write-zeroes",
}
_FLAG_ADVERTISED_RULE = {
    c.CmdFlag.DF: "client.df-needs-send-df",
    c.CmdFlag.FAST_ZERO: "client.fast-zero-needs-send-fast-zero",
}
_REPLY_TYPES_RULE = {
    c.Opt.ABORT: "server.abort-ack",
    c.Opt.LIST: "server.list-replies",
    c.Opt.STARTTLS: "server.starttls-reply",
    c.Opt.INFO: "server.info-go-replies",
    c.Opt.GO: "server.info-go-replies",
    c.Opt.STRUCTURED_REPLY: "server.no-data-option-replies",
    c.Opt.LIST_META_CONTEXT: "server.meta-context-replies",
    c.Opt.SET_META_CONTEXT: "server.meta-context-replies",
    c.Opt.EXTENDED_HEADERS: "server.no-data-option-replies",
}
"""Per option, the rule that lists the replies it may get."""


def _reply_types_rule(option: int) -> str:
    """The rule an option reply of the wrong type breaks (unknown options: ERR_UNSUP)."""
    return _REPLY_TYPES_RULE.get(option, "server.unsupported-option-err-unsup")


# --- handshake ------------------------------------------------------------------


def zeroes_violation(zeroes: bool) -> Violation:
    """The export-name reply's 124 zero bytes disagree with ``NBD_FLAG_C_NO_ZEROES``."""
    if zeroes:
        return _v(
            "server.no-zeroes-honoured",
            "export-name reply has the 124 zero bytes although the client set NBD_FLAG_C_NO_ZEROES",
        )
    return _v(
        "server.export-name-reply-zeroes",
        "export-name reply lacks the 124 zero bytes although the client did not set "
        "NBD_FLAG_C_NO_ZEROES",
    )


def check_client_flags(event: ClientFlags, neg: Negotiated) -> list[Violation]:
    out = []
    if event.flags & ~c.KNOWN_CLIENT_FLAGS:
        out.append(
            _v(
                "client.client-flags-known",
                f"client flags {event.flags:#x} hold bits the spec does not define; the "
                "server MUST close the connection",
            )
        )
    if event.flags & c.ClientFlag.C_NO_ZEROES and not (
        neg.handshake_flags & c.HandshakeFlag.NO_ZEROES
    ):
        out.append(
            _v(
                "client.no-zeroes-only-if-offered",
                "client set NBD_FLAG_C_NO_ZEROES but the server did not offer NBD_FLAG_NO_ZEROES",
            )
        )
    return out


def check_option(
    option: int, payload: object, decode_error: CodecError | None, neg: Negotiated
) -> list[Violation]:
    out = []
    if not neg.fixed_newstyle and option != c.Opt.EXPORT_NAME:
        out.append(
            _v(
                "client.export-name-only-in-nonfixed",
                f"{c.name_of(c.Opt, option)} sent in non-fixed newstyle negotiation, where "
                "NBD_OPT_EXPORT_NAME is the only valid option",
            )
        )
    if decode_error is not None:
        out.append(
            _malformed(
                decode_error, f"malformed {c.name_of(c.Opt, option)}: {decode_error.message}"
            )
        )
    if option == c.Opt.EXPORT_NAME and neg.extended_headers:
        out.append(
            _v(
                "client.no-export-name-after-extended",
                "NBD_OPT_EXPORT_NAME after extended headers were negotiated",
            )
        )
    if option == c.Opt.SET_META_CONTEXT and not (neg.structured_replies or neg.extended_headers):
        out.append(
            _v(
                "client.set-meta-context-needs-structured",
                "NBD_OPT_SET_META_CONTEXT before structured replies or extended headers "
                "were negotiated",
            )
        )
    if isinstance(payload, InfoRequestPayload) and len(set(payload.info_requests)) != len(
        payload.info_requests
    ):
        out.append(
            _v("client.info-request-once", "an information request is listed more than once")
        )
    return out


def check_transmission_flags(flags: int, neg: Negotiated, where: str) -> list[Violation]:
    out = []
    if not flags & TF.HAS_FLAGS:
        out.append(
            _v("server.has-flags", f"{where}: NBD_FLAG_HAS_FLAGS is clear; it MUST always be 1")
        )
    if flags & TF.SEND_DF and not (neg.structured_replies or neg.extended_headers):
        out.append(
            _v(
                "server.df-needs-structured",
                f"{where}: NBD_FLAG_SEND_DF set without structured replies or extended headers",
            )
        )
    if flags & TF.SEND_FAST_ZERO and not flags & TF.SEND_WRITE_ZEROES:
        out.append(
            _v(
                "server.fast-zero-needs-write-zeroes",
                f"{where}: NBD_FLAG_SEND_FAST_ZERO set without NBD_FLAG_SEND_WRITE_ZEROES",
            )
        )
    if flags & TF.BLOCK_STATUS_PAYLOAD and not neg.extended_headers:
        out.append(
            _v(
                "server.block-status-payload-needs-extended",
                f"{where}: NBD_FLAG_BLOCK_STATUS_PAYLOAD without extended headers",
            )
        )
    return out


def check_block_size(info: InfoBlockSize) -> list[Violation]:
    out = []
    if not c.is_power_of_two(info.minimum) or info.minimum > c.MAX_MIN_BLOCK_SIZE:
        out.append(
            _v(
                "server.block-size-minimum",
                f"minimum block size {info.minimum} is not a power of 2 no larger than 65536",
            )
        )
    if not c.is_power_of_two(info.preferred) or info.preferred < max(info.minimum, 512):
        out.append(
            _v(
                "server.block-size-preferred",
                f"preferred block size {info.preferred} is not a power of 2 at least "
                f"max(minimum, 512)",
            )
        )
    if info.maximum < info.preferred:
        out.append(
            _v(
                "server.block-size-maximum",
                f"maximum payload {info.maximum} is smaller than the preferred block size "
                f"{info.preferred}",
            )
        )
    return out


@dataclass(frozen=True)
class _Answer:
    """One option reply, with what the checks of option replies read."""

    reply: OptionReply
    payload: object
    decode_error: CodecError | None
    pending: PendingOption
    neg: Negotiated

    @property
    def option_name(self) -> str:
        return c.name_of(c.Opt, self.pending.option)


AnswerCheck = Callable[[_Answer], Iterable[Violation]]


def _reply_names_option(a: _Answer) -> Iterator[Violation]:
    if a.reply.option != a.pending.option:
        yield _v(
            "server.option-reply-answers-option",
            f"option reply names {c.name_of(c.Opt, a.reply.option)} but answers {a.option_name}",
        )


def _reply_decodes(a: _Answer) -> Iterator[Violation]:
    if a.decode_error is not None:
        yield _malformed(
            a.decode_error,
            f"malformed {c.name_of(c.Rep, a.reply.reply_type)}: {a.decode_error.message}",
        )


def _reply_type_fits(a: _Answer) -> Iterator[Violation]:
    rtype = a.reply.reply_type
    if c.is_rep_error(rtype):
        return
    if rtype in c.OPTIONS_ANSWERED_WITH and a.pending.option not in c.OPTIONS_ANSWERED_WITH[rtype]:
        yield _v(
            _reply_types_rule(a.pending.option),
            f"{c.name_of(c.Rep, rtype)} is not a valid reply to {a.option_name}",
        )
    elif rtype not in c.OPTIONS_ANSWERED_WITH and rtype != c.Rep.ACK:
        yield _v(_reply_types_rule(a.pending.option), f"unknown option reply type {rtype:#x}")


def _info_export_flags(a: _Answer) -> list[Violation]:
    if isinstance(a.payload, InfoExport):
        return check_transmission_flags(a.payload.transmission_flags, a.neg, "NBD_INFO_EXPORT")
    return []


def _info_block_size(a: _Answer) -> list[Violation]:
    return check_block_size(a.payload) if isinstance(a.payload, InfoBlockSize) else []


def _ack_after_info_export(a: _Answer) -> Iterator[Violation]:
    if a.reply.reply_type == c.Rep.ACK and c.Info.EXPORT not in a.pending.infos:
        yield _v(
            "server.info-export-before-ack", f"{a.option_name} succeeded without an NBD_INFO_EXPORT"
        )


def _go_not_unsup_after_extended(a: _Answer) -> Iterator[Violation]:
    if a.reply.reply_type == c.Rep.ERR_UNSUP and a.neg.extended_headers:
        yield _v(
            "server.go-not-unsup-after-extended",
            "NBD_OPT_GO failed with NBD_REP_ERR_UNSUP after extended headers were acknowledged",
        )


def _block_size_reqd_unless_requested(a: _Answer) -> Iterator[Violation]:
    asked = a.pending.payload
    if (
        a.reply.reply_type == c.Rep.ERR_BLOCK_SIZE_REQD
        and isinstance(asked, InfoRequestPayload)
        and c.Info.BLOCK_SIZE in asked.info_requests
    ):
        yield _v(
            "server.block-size-reqd-not-if-requested",
            "NBD_REP_ERR_BLOCK_SIZE_REQD although the client requested NBD_INFO_BLOCK_SIZE",
        )


def _ext_header_reqd_not_for_base(a: _Answer) -> Iterator[Violation]:
    asked = a.pending.payload
    if (
        a.reply.reply_type == c.Rep.ERR_EXT_HEADER_REQD
        and isinstance(asked, MetaContextPayload)
        and asked.queries
        and all(q.startswith("base:") for q in asked.queries)
    ):
        yield _v(
            "server.list-ext-header-reqd-not-for-base",
            "NBD_REP_ERR_EXT_HEADER_REQD for a query limited to the base: namespace",
        )


def _meta_context_ids_unique(a: _Answer) -> Iterator[Violation]:
    if (
        a.reply.reply_type == c.Rep.META_CONTEXT
        and hasattr(a.payload, "context_id")
        and a.payload.context_id in a.pending.contexts
    ):
        yield _v(
            "server.meta-context-ids-unique",
            f"metadata context id {a.payload.context_id} given twice",
        )


ANY = None
"""In the check tables: the check applies whatever the option, command or chunk."""

OPTION_REPLY_CHECKS: tuple[tuple[frozenset[int] | None, AnswerCheck], ...] = (
    (ANY, _reply_names_option),
    (ANY, _reply_decodes),
    (ANY, _reply_type_fits),
    (ANY, _info_export_flags),
    (ANY, _info_block_size),
    (frozenset({c.Opt.INFO, c.Opt.GO}), _ack_after_info_export),
    (frozenset({c.Opt.GO}), _go_not_unsup_after_extended),
    (ANY, _block_size_reqd_unless_requested),
    (frozenset({c.Opt.LIST_META_CONTEXT}), _ext_header_reqd_not_for_base),
    (frozenset({c.Opt.SET_META_CONTEXT}), _meta_context_ids_unique),
)
"""The rules an option reply follows, in order, each with the options it concerns."""


def check_option_reply(
    reply: OptionReply,
    payload: object,
    decode_error: CodecError | None,
    pending: PendingOption,
    neg: Negotiated,
) -> list[Violation]:
    """Rules an option reply breaks, given the option it answers."""
    answer = _Answer(reply, payload, decode_error, pending, neg)
    return [
        violation
        for options, check in OPTION_REPLY_CHECKS
        if options is ANY or pending.option in options
        for violation in check(answer)
    ]


# --- transmission: requests -------------------------------------------------------


def effect_of(request: Request) -> tuple[int, tuple[int, ...] | None, CodecError | None]:
    """Effect length of a request and, for the block-status payload form, its ids."""
    if request.type == c.Cmd.WRITE:
        return len(request.payload), None, None
    if request.extended and request.flags & c.CmdFlag.PAYLOAD_LEN:
        if request.type == c.Cmd.BLOCK_STATUS:
            try:
                payload = decode_block_status_payload(request.payload)
            except CodecError as exc:
                return 0, None, exc
            return payload.effect_length, payload.context_ids, None
        return 0, None, None
    return request.length, None, None


@dataclass(frozen=True)
class _Asked:
    """One request, with what the checks of requests read."""

    req: Request
    neg: Negotiated
    name: str
    effect: int
    """The length of the export the request touches (its payload's, for the payload form)."""
    context_ids: tuple[int, ...] | None
    payload_error: CodecError | None


RequestCheck = Callable[[_Asked], Iterable[Violation]]


def _header_style(r: _Asked) -> Iterator[Violation]:
    if r.req.extended != r.neg.extended_headers:
        yield _v(
            "client.compact-request-unless-negotiated"
            if r.req.extended
            else "client.extended-request-when-negotiated",
            f"{'extended' if r.req.extended else 'compact'} request header, but extended "
            f"headers were {'' if r.neg.extended_headers else 'not '}negotiated",
        )


def _command_advertised(r: _Asked) -> Iterator[Violation]:
    needed = c.CMD_REQUIRES_TFLAG[r.req.type]
    if not r.neg.has(needed):
        yield _v(
            _COMMAND_ADVERTISED_RULE.get(r.req.type, _EXPOSED_BY_FLAG),
            f"{r.name} sent although {c.spec_name(needed)} was not advertised",
        )


def _flags_documented(r: _Asked) -> Iterator[Violation]:
    extra = r.req.flags & ~int(c.CMD_ALLOWED_FLAGS.get(r.req.type, c.CmdFlag(0)))
    if extra:
        yield _v(
            "client.command-flag-documented",
            f"{r.name} with flag(s) {c.spec_name(c.CmdFlag(extra))} not documented for it",
        )


def _flags_advertised(r: _Asked) -> Iterator[Violation]:
    for flag, tflag in c.FLAG_REQUIRES_TFLAG.items():
        if r.req.flags & flag and not r.neg.has(tflag):
            yield _v(
                _FLAG_ADVERTISED_RULE.get(flag, _EXPOSED_BY_FLAG),
                f"{c.spec_name(c.CmdFlag(flag))} set although {c.spec_name(tflag)} was "
                "not advertised",
            )


def _payload_len_form(r: _Asked) -> Iterator[Violation]:
    if not r.req.flags & c.CmdFlag.PAYLOAD_LEN:
        return
    if not r.req.extended:
        yield _v("client.compact-no-payload-len", "NBD_CMD_FLAG_PAYLOAD_LEN in a compact request")
    elif r.req.type == c.Cmd.BLOCK_STATUS and not r.neg.has(TF.BLOCK_STATUS_PAYLOAD):
        yield _v(
            "client.block-status-payload-needs-flag",
            "block status payload form without NBD_FLAG_BLOCK_STATUS_PAYLOAD",
        )


def _extended_write_payload_len(r: _Asked) -> Iterator[Violation]:
    if r.req.extended and not r.req.flags & c.CmdFlag.PAYLOAD_LEN:
        yield _v(
            "client.extended-write-payload-len",
            "NBD_CMD_WRITE with extended headers lacks NBD_CMD_FLAG_PAYLOAD_LEN",
        )


def _has_payload(req: Request) -> bool:
    """Whether the request carries a payload: a write, or the extended payload form."""
    return req.type == c.Cmd.WRITE or bool(req.extended and req.flags & c.CmdFlag.PAYLOAD_LEN)


def _payload_only_where_allowed(r: _Asked) -> Iterator[Violation]:
    if r.req.payload and not _has_payload(r.req):
        yield _v(
            "client.extended-write-payload-len"
            if r.req.extended
            else "client.compact-no-payload-len",
            f"{r.name} carries {len(r.req.payload)} bytes of payload; only a write, or an "
            "extended request with NBD_CMD_FLAG_PAYLOAD_LEN, has a payload",
        )


def _payload_matches_length(r: _Asked) -> Iterator[Violation]:
    req = r.req
    if (req.type == c.Cmd.WRITE or req.flags & c.CmdFlag.PAYLOAD_LEN) and req.length != len(
        req.payload
    ):
        yield _v(
            "client.extended-write-payload-len",
            f"{r.name} header length {req.length} but {len(req.payload)} bytes of payload",
        )


def _payload_decodes(r: _Asked) -> Iterator[Violation]:
    if r.payload_error is not None:
        yield _malformed(r.payload_error, r.payload_error.message)


def _status_needs_contexts(r: _Asked) -> Iterator[Violation]:
    if not r.neg.meta_contexts or r.neg.meta_context_export != r.neg.export_name:
        yield _v(
            "client.block-status-needs-contexts",
            "NBD_CMD_BLOCK_STATUS without metadata contexts negotiated for this export",
        )


def _status_payload_ids(r: _Asked) -> Iterator[Violation]:
    ids = r.context_ids
    if ids is not None and (len(set(ids)) != len(ids) or not set(ids) <= set(r.neg.meta_contexts)):
        yield _v(
            "server.block-status-payload-bad-ids",
            f"block status payload names unknown or duplicate context ids {ids}",
        )


def _within_export(r: _Asked) -> Iterator[Violation]:
    req, size = r.req, r.neg.export_size
    if size is not None and req.offset + r.effect > size:
        errno = c.Errno.ENOSPC if req.type in (c.Cmd.WRITE, c.Cmd.WRITE_ZEROES) else c.Errno.EINVAL
        yield _v(
            "client.request-within-export",
            f"{r.name} of {r.effect} bytes at offset {req.offset} goes past the end "
            f"of the {size}-byte export",
            errno,
        )


def _aligned(r: _Asked) -> Iterator[Violation]:
    min_block = r.neg.min_block
    if (
        r.neg.export_size is not None
        and min_block > 1
        and (r.req.offset % min_block or r.effect % min_block)
    ):
        yield _v(
            "client.request-alignment",
            f"{r.name} at offset {r.req.offset} length {r.effect} is not aligned to "
            f"the minimum block size {min_block}",
        )


def _within_max_payload(r: _Asked) -> Iterator[Violation]:
    req, neg = r.req, r.neg
    if (req.type == c.Cmd.WRITE and len(req.payload) > neg.max_payload) or (
        req.type == c.Cmd.READ
        and not (neg.structured_replies or neg.extended_headers)
        and req.length > neg.max_payload
    ):
        yield _v(
            "client.request-max-payload",
            f"{r.name} of {r.effect} bytes exceeds the maximum payload {neg.max_payload}",
            c.Errno.EOVERFLOW if req.type == c.Cmd.READ else c.Errno.EINVAL,
        )


def _not_on_read_only(r: _Asked) -> Iterator[Violation]:
    if r.neg.has(TF.READ_ONLY):
        yield _v("server.read-only-write-errors", f"{r.name} on a read-only export", c.Errno.EPERM)


# CACHE is advertised by SEND_CACHE but "server implementations exist which support the
# command without advertising this bit": no MUST to enforce there.
_ADVERTISED_COMMANDS = frozenset(c.CMD_REQUIRES_TFLAG) - {c.Cmd.CACHE}

REQUEST_CHECKS: tuple[tuple[frozenset[int] | None, RequestCheck], ...] = (
    (ANY, _header_style),
    (_ADVERTISED_COMMANDS, _command_advertised),
    (ANY, _flags_documented),
    (ANY, _flags_advertised),
    (ANY, _payload_len_form),
    (frozenset({c.Cmd.WRITE}), _extended_write_payload_len),
    (ANY, _payload_only_where_allowed),
    (ANY, _payload_matches_length),
    (ANY, _payload_decodes),
    (frozenset({c.Cmd.BLOCK_STATUS}), _status_needs_contexts),
    (frozenset({c.Cmd.BLOCK_STATUS}), _status_payload_ids),
    (c.RANGE_COMMANDS, _within_export),
    (c.RANGE_COMMANDS, _aligned),
    (frozenset({c.Cmd.READ, c.Cmd.WRITE}), _within_max_payload),
    (c.WRITE_COMMANDS, _not_on_read_only),
)
"""The rules a request follows, in order, each with the commands it concerns."""


def check_request(req: Request, neg: Negotiated) -> list[Violation]:
    """Rules a client request breaks; ``errno`` is the error a server answers with."""
    try:
        name = c.spec_name(c.Cmd(req.type))
    except ValueError:
        return [_v("client.no-unknown-commands", f"unknown command type {req.type}")]
    asked = _Asked(req, neg, name, *effect_of(req))
    return [
        violation
        for commands, check in REQUEST_CHECKS
        if commands is ANY or req.type in commands
        for violation in check(asked)
    ]


# --- transmission: replies ------------------------------------------------------


def check_simple_reply(
    reply: SimpleReply, neg: Negotiated, in_flight: dict[int, InFlight]
) -> list[Violation]:
    flight = in_flight.get(reply.cookie)
    if flight is None:
        return [
            _v(
                "server.reply-cookie-matches",
                f"simple reply for cookie {reply.cookie:#x}, which is not in flight",
            )
        ]
    out = []
    if neg.extended_headers:
        out.append(
            _v(
                "server.simple-reply-with-extended",
                "simple reply although extended headers were negotiated",
            )
        )
    elif neg.structured_replies and flight.request.type == c.Cmd.READ:
        out.append(
            _v(
                "server.no-simple-reply-to-read",
                "simple reply to NBD_CMD_READ although structured replies were negotiated",
            )
        )
    if flight.chunks:
        out.append(
            _v("server.done-last", "simple reply after structured chunks for the same cookie")
        )
    return out


CONTENT_TYPES = (ChunkOffsetData, ChunkOffsetHole)


def decode_chunk(chunk: ReplyChunk) -> tuple[object, CodecError | None]:
    try:
        return decode_chunk_payload(chunk.type, chunk.payload), None
    except CodecError as exc:
        return ChunkUnknown(chunk.type, chunk.payload), exc


@dataclass(frozen=True)
class _Chunk:
    """One reply chunk, with what the checks of chunks read."""

    chunk: ReplyChunk
    payload: object
    flight: InFlight
    neg: Negotiated

    @property
    def req(self) -> Request:
        return self.flight.request

    @property
    def request_end(self) -> int:
        return self.flight.request.offset + self.flight.effect_length


ChunkCheck = Callable[[_Chunk], Iterable[Violation]]


def _chunk_header_style(k: _Chunk) -> Iterator[Violation]:
    if k.chunk.extended != k.neg.extended_headers:
        yield _v(
            "server.extended-needs-negotiation"
            if k.chunk.extended
            else "server.extended-reply-when-negotiated",
            f"{'extended' if k.chunk.extended else 'structured'} chunk header, but "
            f"extended headers were {'' if k.neg.extended_headers else 'not '}negotiated",
        )


def _extended_offset_matches(k: _Chunk) -> Iterator[Violation]:
    if k.chunk.extended and k.chunk.offset != k.req.offset:
        yield _v(
            "server.extended-reply-offset",
            f"extended reply offset {k.chunk.offset} does not match the request offset "
            f"{k.req.offset}",
        )


def _reply_flags_known(k: _Chunk) -> Iterator[Violation]:
    if k.chunk.flags & ~int(c.ReplyFlag.DONE):
        yield _v(
            "server.reply-flags-known", f"reply flags {k.chunk.flags:#x} hold bits not negotiated"
        )


def _none_is_done(k: _Chunk) -> Iterator[Violation]:
    if not k.chunk.done:
        yield _v("server.none-chunk-done", "NBD_REPLY_TYPE_NONE without NBD_REPLY_FLAG_DONE")


def _content_span(payload: ChunkOffsetData | ChunkOffsetHole) -> tuple[int, int]:
    """The range of the export a content chunk describes."""
    length = len(payload.data) if isinstance(payload, ChunkOffsetData) else payload.length
    return payload.offset, payload.offset + length


def _content_only_for_read(k: _Chunk) -> Iterator[Violation]:
    if k.req.type != c.Cmd.READ:
        yield _v(
            "server.content-only-for-read",
            f"content chunk in reply to {c.name_of(c.Cmd, k.req.type)}",
        )


def _hole_nonzero(k: _Chunk) -> Iterator[Violation]:
    if k.payload.length == 0:
        yield _v("server.hole-size-nonzero", "NBD_REPLY_TYPE_OFFSET_HOLE of size 0")


def _content_within_request(k: _Chunk) -> Iterator[Violation]:
    start, end = _content_span(k.payload)
    if start < k.req.offset or end > k.request_end:
        yield _v(
            "server.content-within-request",
            f"content chunk [{start}, {end}) lies outside the request "
            f"[{k.req.offset}, {k.request_end})",
        )


def _content_no_overlap(k: _Chunk) -> Iterator[Violation]:
    start, end = _content_span(k.payload)
    if any(start < e and s < end for s, e in k.flight.covered):
        yield _v(
            "server.content-no-overlap", f"content chunk [{start}, {end}) overlaps an earlier chunk"
        )


def _df_single_content_chunk(k: _Chunk) -> Iterator[Violation]:
    if k.req.flags & c.CmdFlag.DF and k.flight.data_chunks:
        yield _v(
            "server.df-single-content-chunk",
            "more than one content chunk for a read with NBD_CMD_FLAG_DF",
        )


def _error_nonzero(k: _Chunk) -> Iterator[Violation]:
    if k.payload.error == 0:
        yield _v("server.error-chunk-nonzero", "error chunk with error value 0")


def _error_offset_valid_for(k: _Chunk) -> Iterator[Violation]:
    if k.req.type not in c.ERROR_OFFSET_COMMANDS:
        yield _v(
            "server.error-offset-valid-for",
            f"NBD_REPLY_TYPE_ERROR_OFFSET in reply to {c.name_of(c.Cmd, k.req.type)}",
        )


def _error_offset_within_request(k: _Chunk) -> Iterator[Violation]:
    if not k.req.offset <= k.payload.offset < max(k.request_end, k.req.offset + 1):
        yield _v(
            "server.error-offset-within-request",
            f"error offset {k.payload.offset} lies outside the request",
        )


def _chunk_type_known(k: _Chunk) -> Iterator[Violation]:
    yield _v(
        "client.disconnect-on-unknown-chunk",
        f"unknown chunk type {k.chunk.type}; the client MUST disconnect",
    )


def _status_type_matches_headers(k: _Chunk) -> Iterator[Violation]:
    if k.payload.wide != k.neg.extended_headers:
        yield _v(
            "server.status-chunk-type",
            f"{c.name_of(c.ReplyType, k.chunk.type)} used "
            f"{'without' if k.payload.wide else 'with'} extended headers",
        )


def _status_context_selected(k: _Chunk) -> Iterator[Violation]:
    if k.payload.context_id not in k.flight.context_ids:
        yield _v(
            "server.status-selected-contexts-only",
            f"block status for context id {k.payload.context_id}, which was not selected "
            "for this request",
        )


def _status_one_chunk_per_context(k: _Chunk) -> Iterator[Violation]:
    if k.payload.context_id in k.flight.status_contexts:
        yield _v(
            "server.status-one-chunk-per-context",
            f"second status chunk for context id {k.payload.context_id}",
        )


def _status_extents_nonzero(k: _Chunk) -> Iterator[Violation]:
    if any(e.length == 0 for e in k.payload.extents):
        yield _v("server.status-descriptor-nonzero", "block status descriptor of length 0")


def _status_extent_count(k: _Chunk) -> Iterator[Violation]:
    extents, length = k.payload.extents, k.flight.effect_length
    if k.req.flags & c.CmdFlag.REQ_ONE:
        if len(extents) != 1:
            yield _v(
                "server.req-one-single-descriptor",
                f"{len(extents)} descriptors despite NBD_CMD_FLAG_REQ_ONE",
            )
        elif extents[0].length > length:
            yield _v(
                "server.req-one-length",
                f"descriptor length {extents[0].length} exceeds the request length "
                f"{length} with NBD_CMD_FLAG_REQ_ONE",
            )
    elif sum(e.length for e in extents[:-1]) >= max(length, 1) and len(extents) > 1:
        yield _v(
            "server.status-sum-below-length",
            "the descriptors before the last already cover the requested length",
        )


def _status_extents_aligned(k: _Chunk) -> Iterator[Violation]:
    min_block = k.neg.min_block
    if min_block > 1 and any(e.length % min_block for e in k.payload.extents):
        yield _v(
            "server.status-descriptor-min-block",
            f"descriptor length not a multiple of the minimum block size {min_block}",
        )


def _status_base_32bit(k: _Chunk) -> Iterator[Violation]:
    name = k.neg.meta_contexts.get(k.payload.context_id, "")
    if (
        k.payload.wide
        and name.startswith("base:")
        and any(e.flags >> 32 for e in k.payload.extents)
    ):
        yield _v("server.status-upper-bits-zero", "base: context status with upper 32 bits set")


_STATUS_CHECKS: tuple[ChunkCheck, ...] = (
    _status_type_matches_headers,
    _status_context_selected,
    _status_one_chunk_per_context,
    _status_extents_nonzero,
    _status_extent_count,
    _status_extents_aligned,
    _status_base_32bit,
)


def _status_chunk(k: _Chunk) -> list[Violation]:
    """A status chunk answers only a block status request; then its own rules apply."""
    if k.req.type != c.Cmd.BLOCK_STATUS:
        return [
            _v(
                "server.status-selected-contexts-only",
                f"block status chunk in reply to {c.name_of(c.Cmd, k.req.type)}",
            )
        ]
    return [violation for check in _STATUS_CHECKS for violation in check(k)]


_CONTENT_CHECKS: tuple[ChunkCheck, ...] = (
    _content_only_for_read,
    _content_within_request,
    _content_no_overlap,
    _df_single_content_chunk,
)

CHUNK_CHECKS: dict[type, tuple[ChunkCheck, ...]] = {
    ChunkNone: (_none_is_done,),
    ChunkOffsetData: _CONTENT_CHECKS,
    ChunkOffsetHole: (_content_only_for_read, _hole_nonzero, *_CONTENT_CHECKS[1:]),
    ChunkBlockStatus: (_status_chunk,),
    ChunkError: (_error_nonzero,),
    ChunkErrorOffset: (_error_nonzero, _error_offset_valid_for, _error_offset_within_request),
    ChunkUnknown: (_chunk_type_known,),
}
"""The rules a decoded chunk follows, by chunk type, in order."""


def check_chunk(
    chunk: ReplyChunk,
    payload: object,
    decode_error: CodecError | None,
    neg: Negotiated,
    in_flight: dict[int, InFlight],
    answered: Collection[int] = (),
) -> list[Violation]:
    """Rules a reply chunk breaks, given the request it answers and the chunks before it;
    ``answered`` holds the cookies whose reply is complete."""
    if not (neg.structured_replies or neg.extended_headers):
        return [
            _v(
                "server.structured-needs-negotiation",
                "reply chunk although neither structured replies nor extended headers were "
                "negotiated",
            )
        ]
    flight = in_flight.get(chunk.cookie)
    if flight is None:
        return [
            _v(
                "server.done-last" if chunk.cookie in answered else "server.reply-cookie-matches",
                f"reply chunk for cookie {chunk.cookie:#x}, which is not in flight",
            )
        ]
    k = _Chunk(chunk, payload, flight, neg)
    out = [*_chunk_header_style(k), *_extended_offset_matches(k)]
    if decode_error is not None:
        out.append(_malformed(decode_error, decode_error.message))
        return out
    out += _reply_flags_known(k)
    for check in CHUNK_CHECKS[type(payload)]:
        out += check(k)
    if chunk.done and not flight.errored and not isinstance(payload, ChunkError | ChunkErrorOffset):
        out += _check_complete(chunk, payload, flight, neg)
    return out


def _union_length(spans: list[tuple[int, int]], start: int, end: int) -> int:
    """How many bytes of [start, end) the half-open ``spans`` cover together."""
    covered, reach = 0, start
    for s, e in sorted((max(s, start), min(e, end)) for s, e in spans):
        if e > reach:
            covered += e - max(s, reach)
            reach = e
    return covered


def _check_complete(
    chunk: ReplyChunk, payload: object, flight: InFlight, neg: Negotiated
) -> list[Violation]:
    """On the final chunk of a successful reply: was everything answered?"""
    req = flight.request
    out = []
    if req.type == c.Cmd.READ:
        spans = list(flight.covered)
        if isinstance(payload, CONTENT_TYPES):
            spans.append(_content_span(payload))
        # Chunks outside the request or overlapping others break rules of their own;
        # this one asks only whether every byte of the request was sent.
        covered = _union_length(spans, req.offset, req.offset + flight.effect_length)
        if covered < flight.effect_length:
            out.append(
                _v(
                    "server.read-full-coverage",
                    f"successful read reply covers {covered} of {flight.effect_length} bytes",
                )
            )
    if req.type == c.Cmd.BLOCK_STATUS:
        seen = set(flight.status_contexts)
        if isinstance(payload, ChunkBlockStatus):
            seen.add(payload.context_id)
        missing = set(flight.context_ids) - seen
        if missing:
            out.append(
                _v(
                    "server.status-one-chunk-per-context",
                    f"successful block status reply lacks contexts {sorted(missing)}",
                )
            )
    return out
