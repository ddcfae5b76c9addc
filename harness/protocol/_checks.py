"""The rules one session must follow, as pure functions over its state.

Each ``check_*`` returns the list of :class:`Violation` an event commits at
this point of the session, without changing anything; the connection applies
the event afterwards.  The file does not know which side it plays for, so the
same rules judge what we send and what the peer sends.
Only rules the spec states with MUST / MUST NOT live here; SHOULD-level
advice belongs to the conformance rules.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
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
from .state import InFlight, Negotiated, PendingOption, Violation

TF = c.TransmissionFlag


def _v(message: str, section: str, rule: str, errno: int = c.Errno.EINVAL) -> Violation:
    return Violation(message, section, rule, errno)


# --- handshake ------------------------------------------------------------------


def check_client_flags(event: ClientFlags, neg: Negotiated) -> list[Violation]:
    out = []
    if event.flags & ~c.KNOWN_CLIENT_FLAGS:
        out.append(
            _v(
                f"client flags {event.flags:#x} hold bits the spec does not define; the "
                "server MUST close the connection",
                "Newstyle negotiation",
                "client-flags-unknown",
            )
        )
    if event.flags & c.ClientFlag.C_NO_ZEROES and not (
        neg.handshake_flags & c.HandshakeFlag.NO_ZEROES
    ):
        out.append(
            _v(
                "client set NBD_FLAG_C_NO_ZEROES but the server did not offer NBD_FLAG_NO_ZEROES",
                "Client flags",
                "no-zeroes-unoffered",
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
                f"{c.name_of(c.Opt, option)} sent in non-fixed newstyle negotiation, where "
                "NBD_OPT_EXPORT_NAME is the only valid option",
                "Option types",
                "nonfixed-only-export-name",
            )
        )
    if decode_error is not None:
        out.append(
            _v(
                f"malformed {c.name_of(c.Opt, option)}: {decode_error.message}",
                decode_error.section or "Option types",
                decode_error.rule or "option-data",
            )
        )
    if option == c.Opt.EXPORT_NAME and neg.extended_headers:
        out.append(
            _v(
                "NBD_OPT_EXPORT_NAME after extended headers were negotiated",
                "Option types",
                "export-name-after-extended-headers",
            )
        )
    if option == c.Opt.SET_META_CONTEXT and not (neg.structured_replies or neg.extended_headers):
        out.append(
            _v(
                "NBD_OPT_SET_META_CONTEXT before structured replies or extended headers "
                "were negotiated",
                "Option types",
                "set-meta-context-needs-structured",
            )
        )
    if isinstance(payload, InfoRequestPayload) and len(set(payload.info_requests)) != len(
        payload.info_requests
    ):
        out.append(
            _v(
                "an information request is listed more than once",
                "Option types",
                "info-request-duplicate",
            )
        )
    return out


def check_transmission_flags(flags: int, neg: Negotiated, where: str) -> list[Violation]:
    out = []
    section = "Transmission flags"
    if not flags & TF.HAS_FLAGS:
        out.append(
            _v(f"{where}: NBD_FLAG_HAS_FLAGS is clear; it MUST always be 1", section, "has-flags")
        )
    if flags & TF.SEND_DF and not (neg.structured_replies or neg.extended_headers):
        out.append(
            _v(
                f"{where}: NBD_FLAG_SEND_DF set without structured replies or extended headers",
                section,
                "df-needs-structured",
            )
        )
    if flags & TF.SEND_FAST_ZERO and not flags & TF.SEND_WRITE_ZEROES:
        out.append(
            _v(
                f"{where}: NBD_FLAG_SEND_FAST_ZERO set without NBD_FLAG_SEND_WRITE_ZEROES",
                section,
                "fast-zero-needs-write-zeroes",
            )
        )
    if flags & TF.BLOCK_STATUS_PAYLOAD and not neg.extended_headers:
        out.append(
            _v(
                f"{where}: NBD_FLAG_BLOCK_STATUS_PAYLOAD without extended headers",
                section,
                "block-status-payload-needs-extended",
            )
        )
    return out


def check_block_size(info: InfoBlockSize) -> list[Violation]:
    out = []
    section = "Size constraints"
    if not c.is_power_of_two(info.minimum) or info.minimum > c.MAX_MIN_BLOCK_SIZE:
        out.append(
            _v(
                f"minimum block size {info.minimum} is not a power of 2 no larger than 65536",
                section,
                "block-size-minimum",
            )
        )
    if not c.is_power_of_two(info.preferred) or info.preferred < max(info.minimum, 512):
        out.append(
            _v(
                f"preferred block size {info.preferred} is not a power of 2 at least "
                f"max(minimum, 512)",
                section,
                "block-size-preferred",
            )
        )
    if info.maximum < info.preferred:
        out.append(
            _v(
                f"maximum payload {info.maximum} is smaller than the preferred block size "
                f"{info.preferred}",
                section,
                "block-size-maximum",
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
_REPLY_SECTION = "Option reply types"


def _reply_names_option(a: _Answer) -> Iterator[Violation]:
    if a.reply.option != a.pending.option:
        yield _v(
            f"option reply names {c.name_of(c.Opt, a.reply.option)} but answers {a.option_name}",
            "Fixed newstyle negotiation",
            "reply-option-mismatch",
        )


def _reply_decodes(a: _Answer) -> Iterator[Violation]:
    if a.decode_error is not None:
        yield _v(
            f"malformed {c.name_of(c.Rep, a.reply.reply_type)}: {a.decode_error.message}",
            a.decode_error.section or _REPLY_SECTION,
            a.decode_error.rule or "reply-data",
        )


def _reply_type_fits(a: _Answer) -> Iterator[Violation]:
    rtype = a.reply.reply_type
    if c.is_rep_error(rtype):
        return
    if rtype in c.OPTIONS_ANSWERED_WITH and a.pending.option not in c.OPTIONS_ANSWERED_WITH[rtype]:
        yield _v(
            f"{c.name_of(c.Rep, rtype)} is not a valid reply to {a.option_name}",
            _REPLY_SECTION,
            "reply-type-for-option",
        )
    elif rtype not in c.OPTIONS_ANSWERED_WITH and rtype != c.Rep.ACK:
        yield _v(f"unknown option reply type {rtype:#x}", _REPLY_SECTION, "reply-type-unknown")


def _info_export_flags(a: _Answer) -> list[Violation]:
    if isinstance(a.payload, InfoExport):
        return check_transmission_flags(a.payload.transmission_flags, a.neg, "NBD_INFO_EXPORT")
    return []


def _info_block_size(a: _Answer) -> list[Violation]:
    return check_block_size(a.payload) if isinstance(a.payload, InfoBlockSize) else []


def _ack_after_info_export(a: _Answer) -> Iterator[Violation]:
    if a.reply.reply_type == c.Rep.ACK and c.Info.EXPORT not in a.pending.infos:
        yield _v(
            f"{a.option_name} succeeded without an NBD_INFO_EXPORT",
            _REPLY_SECTION,
            "info-export-required",
        )


def _go_not_unsup_after_extended(a: _Answer) -> Iterator[Violation]:
    if a.reply.reply_type == c.Rep.ERR_UNSUP and a.neg.extended_headers:
        yield _v(
            "NBD_OPT_GO failed with NBD_REP_ERR_UNSUP after extended headers were acknowledged",
            "Option types",
            "go-unsup-after-extended",
        )


def _block_size_reqd_unless_requested(a: _Answer) -> Iterator[Violation]:
    asked = a.pending.payload
    if (
        a.reply.reply_type == c.Rep.ERR_BLOCK_SIZE_REQD
        and isinstance(asked, InfoRequestPayload)
        and c.Info.BLOCK_SIZE in asked.info_requests
    ):
        yield _v(
            "NBD_REP_ERR_BLOCK_SIZE_REQD although the client requested NBD_INFO_BLOCK_SIZE",
            "Option types",
            "block-size-reqd-when-requested",
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
            "NBD_REP_ERR_EXT_HEADER_REQD for a query limited to the base: namespace",
            "Option types",
            "ext-header-reqd-for-base",
        )


def _meta_context_ids_unique(a: _Answer) -> Iterator[Violation]:
    if (
        a.reply.reply_type == c.Rep.META_CONTEXT
        and hasattr(a.payload, "context_id")
        and a.payload.context_id in a.pending.contexts
    ):
        yield _v(
            f"metadata context id {a.payload.context_id} given twice",
            "Option types",
            "meta-context-id-unique",
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
_REQUEST_SECTION = "Request types"


def _header_style(r: _Asked) -> Iterator[Violation]:
    if r.req.extended != r.neg.extended_headers:
        yield _v(
            f"{'extended' if r.req.extended else 'compact'} request header, but extended "
            f"headers were {'' if r.neg.extended_headers else 'not '}negotiated",
            "Request message",
            "request-header-style",
        )


def _command_advertised(r: _Asked) -> Iterator[Violation]:
    needed = c.CMD_REQUIRES_TFLAG[r.req.type]
    if not r.neg.has(needed):
        yield _v(
            f"{r.name} sent although {c.spec_name(needed)} was not advertised",
            _REQUEST_SECTION,
            "command-not-advertised",
        )


def _flags_documented(r: _Asked) -> Iterator[Violation]:
    extra = r.req.flags & ~int(c.CMD_ALLOWED_FLAGS.get(r.req.type, c.CmdFlag(0)))
    if extra:
        yield _v(
            f"{r.name} with flag(s) {c.spec_name(c.CmdFlag(extra))} not documented for it",
            "Command flags",
            "command-flag-invalid",
        )


def _flags_advertised(r: _Asked) -> Iterator[Violation]:
    for flag, tflag in c.FLAG_REQUIRES_TFLAG.items():
        if r.req.flags & flag and not r.neg.has(tflag):
            yield _v(
                f"{c.spec_name(c.CmdFlag(flag))} set although {c.spec_name(tflag)} was "
                "not advertised",
                "Command flags",
                "command-flag-not-advertised",
            )


def _payload_len_form(r: _Asked) -> Iterator[Violation]:
    if not r.req.flags & c.CmdFlag.PAYLOAD_LEN:
        return
    if not r.req.extended:
        yield _v(
            "NBD_CMD_FLAG_PAYLOAD_LEN in a compact request",
            "Command flags",
            "payload-len-needs-extended",
        )
    elif r.req.type == c.Cmd.BLOCK_STATUS and not r.neg.has(TF.BLOCK_STATUS_PAYLOAD):
        yield _v(
            "block status payload form without NBD_FLAG_BLOCK_STATUS_PAYLOAD",
            _REQUEST_SECTION,
            "block-status-payload-unadvertised",
        )


def _extended_write_payload_len(r: _Asked) -> Iterator[Violation]:
    if r.req.extended and not r.req.flags & c.CmdFlag.PAYLOAD_LEN:
        yield _v(
            "NBD_CMD_WRITE with extended headers lacks NBD_CMD_FLAG_PAYLOAD_LEN",
            "Command flags",
            "write-needs-payload-len",
        )


def _has_payload(req: Request) -> bool:
    """Whether the request carries a payload: a write, or the extended payload form."""
    return req.type == c.Cmd.WRITE or bool(req.extended and req.flags & c.CmdFlag.PAYLOAD_LEN)


def _payload_only_where_allowed(r: _Asked) -> Iterator[Violation]:
    if r.req.payload and not _has_payload(r.req):
        yield _v(
            f"{r.name} carries {len(r.req.payload)} bytes of payload; only a write, or an "
            "extended request with NBD_CMD_FLAG_PAYLOAD_LEN, has a payload",
            "Request message",
            "request-unexpected-payload",
        )


def _payload_matches_length(r: _Asked) -> Iterator[Violation]:
    req = r.req
    if (req.type == c.Cmd.WRITE or req.flags & c.CmdFlag.PAYLOAD_LEN) and req.length != len(
        req.payload
    ):
        yield _v(
            f"{r.name} header length {req.length} but {len(req.payload)} bytes of payload",
            "Request message",
            "request-length-mismatch",
        )


def _payload_decodes(r: _Asked) -> Iterator[Violation]:
    if r.payload_error is not None:
        yield _v(r.payload_error.message, _REQUEST_SECTION, r.payload_error.rule)


def _status_needs_contexts(r: _Asked) -> Iterator[Violation]:
    if not r.neg.meta_contexts or r.neg.meta_context_export != r.neg.export_name:
        yield _v(
            "NBD_CMD_BLOCK_STATUS without metadata contexts negotiated for this export",
            _REQUEST_SECTION,
            "block-status-needs-contexts",
        )


def _status_payload_ids(r: _Asked) -> Iterator[Violation]:
    ids = r.context_ids
    if ids is not None and (len(set(ids)) != len(ids) or not set(ids) <= set(r.neg.meta_contexts)):
        yield _v(
            f"block status payload names unknown or duplicate context ids {ids}",
            _REQUEST_SECTION,
            "block-status-payload-ids",
        )


def _within_export(r: _Asked) -> Iterator[Violation]:
    req, size = r.req, r.neg.export_size
    if size is not None and req.offset + r.effect > size:
        errno = c.Errno.ENOSPC if req.type in (c.Cmd.WRITE, c.Cmd.WRITE_ZEROES) else c.Errno.EINVAL
        yield _v(
            f"{r.name} of {r.effect} bytes at offset {req.offset} goes past the end "
            f"of the {size}-byte export",
            "Size constraints",
            "request-past-end",
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
            f"{r.name} at offset {r.req.offset} length {r.effect} is not aligned to "
            f"the minimum block size {min_block}",
            "Size constraints",
            "request-alignment",
        )


def _within_max_payload(r: _Asked) -> Iterator[Violation]:
    req, neg = r.req, r.neg
    if (req.type == c.Cmd.WRITE and len(req.payload) > neg.max_payload) or (
        req.type == c.Cmd.READ
        and not (neg.structured_replies or neg.extended_headers)
        and req.length > neg.max_payload
    ):
        yield _v(
            f"{r.name} of {r.effect} bytes exceeds the maximum payload {neg.max_payload}",
            "Size constraints",
            "request-over-max-payload",
            c.Errno.EOVERFLOW if req.type == c.Cmd.READ else c.Errno.EINVAL,
        )


def _not_on_read_only(r: _Asked) -> Iterator[Violation]:
    if r.neg.has(TF.READ_ONLY):
        yield _v(
            f"{r.name} on a read-only export", "Error values", "write-read-only", c.Errno.EPERM
        )


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
        return [_v(f"unknown command type {req.type}", _REQUEST_SECTION, "command-unknown")]
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
    section = "Simple reply message"
    flight = in_flight.get(reply.cookie)
    if flight is None:
        return [
            _v(
                f"simple reply for cookie {reply.cookie:#x}, which is not in flight",
                section,
                "reply-unknown-cookie",
            )
        ]
    out = []
    if neg.extended_headers:
        out.append(
            _v(
                "simple reply although extended headers were negotiated",
                section,
                "simple-reply-with-extended",
            )
        )
    elif neg.structured_replies and flight.request.type == c.Cmd.READ:
        out.append(
            _v(
                "simple reply to NBD_CMD_READ although structured replies were negotiated",
                "Structured reply chunk message",
                "simple-reply-to-read",
            )
        )
    if flight.chunks:
        out.append(
            _v(
                "simple reply after structured chunks for the same cookie",
                section,
                "simple-after-chunks",
            )
        )
    return out


CONTENT_TYPES = (ChunkOffsetData, ChunkOffsetHole)
ERROR_OFFSET_VALID_FOR = {
    c.Cmd.READ,
    c.Cmd.WRITE,
    c.Cmd.TRIM,
    c.Cmd.CACHE,
    c.Cmd.WRITE_ZEROES,
    c.Cmd.BLOCK_STATUS,
}


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
_CHUNK_SECTION = "Structured reply types"


def _chunk_header_style(k: _Chunk) -> Iterator[Violation]:
    if k.chunk.extended != k.neg.extended_headers:
        yield _v(
            f"{'extended' if k.chunk.extended else 'structured'} chunk header, but "
            f"extended headers were {'' if k.neg.extended_headers else 'not '}negotiated",
            "Extended reply chunk message",
            "chunk-header-style",
        )


def _extended_offset_matches(k: _Chunk) -> Iterator[Violation]:
    if k.chunk.extended and k.chunk.offset != k.req.offset:
        yield _v(
            f"extended reply offset {k.chunk.offset} does not match the request offset "
            f"{k.req.offset}",
            "Extended reply chunk message",
            "extended-reply-offset",
        )


def _reply_flags_known(k: _Chunk) -> Iterator[Violation]:
    if k.chunk.flags & ~int(c.ReplyFlag.DONE):
        yield _v(
            f"reply flags {k.chunk.flags:#x} hold bits not negotiated",
            "Structured and extended header reply flags",
            "reply-flags-unknown",
        )


def _none_is_done(k: _Chunk) -> Iterator[Violation]:
    if not k.chunk.done:
        yield _v(
            "NBD_REPLY_TYPE_NONE without NBD_REPLY_FLAG_DONE", _CHUNK_SECTION, "none-needs-done"
        )


def _content_span(payload: ChunkOffsetData | ChunkOffsetHole) -> tuple[int, int]:
    """The range of the export a content chunk describes."""
    length = len(payload.data) if isinstance(payload, ChunkOffsetData) else payload.length
    return payload.offset, payload.offset + length


def _content_only_for_read(k: _Chunk) -> Iterator[Violation]:
    if k.req.type != c.Cmd.READ:
        yield _v(
            f"content chunk in reply to {c.name_of(c.Cmd, k.req.type)}",
            _CHUNK_SECTION,
            "content-only-for-read",
        )


def _hole_nonzero(k: _Chunk) -> Iterator[Violation]:
    if k.payload.length == 0:
        yield _v("NBD_REPLY_TYPE_OFFSET_HOLE of size 0", _CHUNK_SECTION, "hole-size-zero")


def _content_within_request(k: _Chunk) -> Iterator[Violation]:
    start, end = _content_span(k.payload)
    if start < k.req.offset or end > k.request_end:
        yield _v(
            f"content chunk [{start}, {end}) lies outside the request "
            f"[{k.req.offset}, {k.request_end})",
            _CHUNK_SECTION,
            "chunk-outside-request",
        )


def _content_no_overlap(k: _Chunk) -> Iterator[Violation]:
    start, end = _content_span(k.payload)
    if any(start < e and s < end for s, e in k.flight.covered):
        yield _v(
            f"content chunk [{start}, {end}) overlaps an earlier chunk",
            _CHUNK_SECTION,
            "chunk-overlap",
        )


def _df_single_content_chunk(k: _Chunk) -> Iterator[Violation]:
    if k.req.flags & c.CmdFlag.DF and k.flight.data_chunks:
        yield _v(
            "more than one content chunk for a read with NBD_CMD_FLAG_DF",
            "Command flags",
            "df-one-chunk",
        )


def _error_nonzero(k: _Chunk) -> Iterator[Violation]:
    if k.payload.error == 0:
        yield _v("error chunk with error value 0", _CHUNK_SECTION, "error-nonzero")


def _error_offset_valid_for(k: _Chunk) -> Iterator[Violation]:
    if k.req.type not in ERROR_OFFSET_VALID_FOR:
        yield _v(
            f"NBD_REPLY_TYPE_ERROR_OFFSET in reply to {c.name_of(c.Cmd, k.req.type)}",
            _CHUNK_SECTION,
            "error-offset-valid-for",
        )


def _error_offset_within_request(k: _Chunk) -> Iterator[Violation]:
    if not k.req.offset <= k.payload.offset < max(k.request_end, k.req.offset + 1):
        yield _v(
            f"error offset {k.payload.offset} lies outside the request",
            _CHUNK_SECTION,
            "error-offset-range",
        )


def _chunk_type_known(k: _Chunk) -> Iterator[Violation]:
    yield _v(
        f"unknown chunk type {k.chunk.type}; the client MUST disconnect",
        _CHUNK_SECTION,
        "chunk-type-unknown",
    )


def _status_type_matches_headers(k: _Chunk) -> Iterator[Violation]:
    if k.payload.wide != k.neg.extended_headers:
        yield _v(
            f"{c.name_of(c.ReplyType, k.chunk.type)} used "
            f"{'without' if k.payload.wide else 'with'} extended headers",
            _CHUNK_SECTION,
            "status-chunk-type",
        )


def _status_context_selected(k: _Chunk) -> Iterator[Violation]:
    if k.payload.context_id not in k.flight.context_ids:
        yield _v(
            f"block status for context id {k.payload.context_id}, which was not selected "
            "for this request",
            _REQUEST_SECTION,
            "status-context-unknown",
        )


def _status_one_chunk_per_context(k: _Chunk) -> Iterator[Violation]:
    if k.payload.context_id in k.flight.status_contexts:
        yield _v(
            f"second status chunk for context id {k.payload.context_id}",
            _CHUNK_SECTION,
            "status-one-chunk-per-context",
        )


def _status_extents_nonzero(k: _Chunk) -> Iterator[Violation]:
    if any(e.length == 0 for e in k.payload.extents):
        yield _v("block status descriptor of length 0", _CHUNK_SECTION, "status-extent-nonzero")


def _status_extent_count(k: _Chunk) -> Iterator[Violation]:
    extents, length = k.payload.extents, k.flight.effect_length
    if k.req.flags & c.CmdFlag.REQ_ONE:
        if len(extents) != 1:
            yield _v(
                f"{len(extents)} descriptors despite NBD_CMD_FLAG_REQ_ONE",
                "Command flags",
                "req-one-single-extent",
            )
        elif extents[0].length > length:
            yield _v(
                f"descriptor length {extents[0].length} exceeds the request length "
                f"{length} with NBD_CMD_FLAG_REQ_ONE",
                _REQUEST_SECTION,
                "req-one-length",
            )
    elif sum(e.length for e in extents[:-1]) >= max(length, 1) and len(extents) > 1:
        yield _v(
            "the descriptors before the last already cover the requested length",
            _CHUNK_SECTION,
            "status-extent-sum",
        )


def _status_extents_aligned(k: _Chunk) -> Iterator[Violation]:
    min_block = k.neg.min_block
    if min_block > 1 and any(e.length % min_block for e in k.payload.extents):
        yield _v(
            f"descriptor length not a multiple of the minimum block size {min_block}",
            _REQUEST_SECTION,
            "status-extent-alignment",
        )


def _status_base_32bit(k: _Chunk) -> Iterator[Violation]:
    name = k.neg.meta_contexts.get(k.payload.context_id, "")
    if (
        k.payload.wide
        and name.startswith("base:")
        and any(e.flags >> 32 for e in k.payload.extents)
    ):
        yield _v(
            "base: context status with upper 32 bits set", _CHUNK_SECTION, "status-ext-base-32bit"
        )


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
                f"block status chunk in reply to {c.name_of(c.Cmd, k.req.type)}",
                _CHUNK_SECTION,
                "status-only-for-block-status",
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
) -> list[Violation]:
    """Rules a reply chunk breaks, given the request it answers and the chunks before it."""
    if not (neg.structured_replies or neg.extended_headers):
        return [
            _v(
                "reply chunk although neither structured replies nor extended headers were "
                "negotiated",
                "Structured reply chunk message",
                "chunk-not-negotiated",
            )
        ]
    flight = in_flight.get(chunk.cookie)
    if flight is None:
        return [
            _v(
                f"reply chunk for cookie {chunk.cookie:#x}, which is not in flight",
                _CHUNK_SECTION,
                "reply-unknown-cookie",
            )
        ]
    k = _Chunk(chunk, payload, flight, neg)
    out = [*_chunk_header_style(k), *_extended_offset_matches(k)]
    if decode_error is not None:
        out.append(
            _v(
                decode_error.message,
                decode_error.section or _CHUNK_SECTION,
                decode_error.rule or "chunk-payload",
            )
        )
        return out
    out += _reply_flags_known(k)
    for check in CHUNK_CHECKS[type(payload)]:
        out += check(k)
    if chunk.done and not flight.errored and not isinstance(payload, ChunkError | ChunkErrorOffset):
        out += _check_complete(chunk, payload, flight, neg)
    return out


def _check_complete(
    chunk: ReplyChunk, payload: object, flight: InFlight, neg: Negotiated
) -> list[Violation]:
    """On the final chunk of a successful reply: was everything answered?"""
    req = flight.request
    out = []
    if req.type == c.Cmd.READ:
        covered = list(flight.covered)
        if isinstance(payload, CONTENT_TYPES):
            length = len(payload.data) if isinstance(payload, ChunkOffsetData) else payload.length
            covered.append((payload.offset, payload.offset + length))
        if sum(e - s for s, e in covered) != flight.effect_length:
            out.append(
                _v(
                    f"successful read reply covers {sum(e - s for s, e in covered)} of "
                    f"{flight.effect_length} bytes",
                    "Request types",
                    "read-coverage",
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
                    f"successful block status reply lacks contexts {sorted(missing)}",
                    "Structured reply types",
                    "status-chunk-per-context",
                )
            )
    return out
