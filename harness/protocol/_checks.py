"""The rules one session must follow, as pure functions over its state.

Each ``check_*`` returns the list of :class:`Violation` an event commits at
this point of the session, without changing anything; the connection applies
the event afterwards.  The file does not know which side it plays for, so the
same rules judge what we send and what the peer sends.
Only rules the spec states with MUST / MUST NOT live here; SHOULD-level
advice belongs to the conformance rules.
"""

from __future__ import annotations

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

KNOWN_CLIENT_FLAGS = c.ClientFlag.C_FIXED_NEWSTYLE | c.ClientFlag.C_NO_ZEROES


def _v(message: str, section: str, rule: str, errno: int = c.Errno.EINVAL) -> Violation:
    return Violation(message, section, rule, errno)


def _power_of_two(value: int) -> bool:
    return value > 0 and value & (value - 1) == 0


# --- handshake ------------------------------------------------------------------


def check_client_flags(event: ClientFlags, neg: Negotiated) -> list[Violation]:
    out = []
    if event.flags & ~int(KNOWN_CLIENT_FLAGS):
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


ALLOWED_REPLY_FOR = {
    c.Rep.SERVER: {c.Opt.LIST},
    c.Rep.INFO: {c.Opt.INFO, c.Opt.GO},
    c.Rep.META_CONTEXT: {c.Opt.LIST_META_CONTEXT, c.Opt.SET_META_CONTEXT},
}


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
    if not _power_of_two(info.minimum) or info.minimum > c.MAX_MIN_BLOCK_SIZE:
        out.append(
            _v(
                f"minimum block size {info.minimum} is not a power of 2 no larger than 65536",
                section,
                "block-size-minimum",
            )
        )
    if not _power_of_two(info.preferred) or info.preferred < max(info.minimum, 512):
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


def check_option_reply(
    reply: OptionReply,
    payload: object,
    decode_error: CodecError | None,
    pending: PendingOption,
    neg: Negotiated,
) -> list[Violation]:
    out = []
    section = "Option reply types"
    opt_name = c.name_of(c.Opt, pending.option)
    if reply.option != pending.option:
        out.append(
            _v(
                f"option reply names {c.name_of(c.Opt, reply.option)} but answers {opt_name}",
                "Fixed newstyle negotiation",
                "reply-option-mismatch",
            )
        )
    if decode_error is not None:
        out.append(
            _v(
                f"malformed {c.name_of(c.Rep, reply.reply_type)}: {decode_error.message}",
                decode_error.section or section,
                decode_error.rule or "reply-data",
            )
        )
    rtype = reply.reply_type
    if not c.is_rep_error(rtype):
        if rtype in ALLOWED_REPLY_FOR and pending.option not in ALLOWED_REPLY_FOR[rtype]:
            out.append(
                _v(
                    f"{c.name_of(c.Rep, rtype)} is not a valid reply to {opt_name}",
                    section,
                    "reply-type-for-option",
                )
            )
        elif rtype not in ALLOWED_REPLY_FOR and rtype != c.Rep.ACK:
            out.append(_v(f"unknown option reply type {rtype:#x}", section, "reply-type-unknown"))
    if isinstance(payload, InfoExport):
        out += check_transmission_flags(payload.transmission_flags, neg, "NBD_INFO_EXPORT")
    if isinstance(payload, InfoBlockSize):
        out += check_block_size(payload)
    if (
        rtype == c.Rep.ACK
        and pending.option in (c.Opt.INFO, c.Opt.GO)
        and (c.Info.EXPORT not in pending.infos)
    ):
        out.append(
            _v(f"{opt_name} succeeded without an NBD_INFO_EXPORT", section, "info-export-required")
        )
    if rtype == c.Rep.ERR_UNSUP and pending.option == c.Opt.GO and neg.extended_headers:
        out.append(
            _v(
                "NBD_OPT_GO failed with NBD_REP_ERR_UNSUP after extended headers were acknowledged",
                "Option types",
                "go-unsup-after-extended",
            )
        )
    if (
        rtype == c.Rep.ERR_BLOCK_SIZE_REQD
        and isinstance(pending.payload, InfoRequestPayload)
        and (c.Info.BLOCK_SIZE in pending.payload.info_requests)
    ):
        out.append(
            _v(
                "NBD_REP_ERR_BLOCK_SIZE_REQD although the client requested NBD_INFO_BLOCK_SIZE",
                "Option types",
                "block-size-reqd-when-requested",
            )
        )
    if (
        rtype == c.Rep.ERR_EXT_HEADER_REQD
        and pending.option == c.Opt.LIST_META_CONTEXT
        and isinstance(pending.payload, MetaContextPayload)
        and pending.payload.queries
        and all(q.startswith("base:") for q in pending.payload.queries)
    ):
        out.append(
            _v(
                "NBD_REP_ERR_EXT_HEADER_REQD for a query limited to the base: namespace",
                "Option types",
                "ext-header-reqd-for-base",
            )
        )
    if (
        rtype == c.Rep.META_CONTEXT
        and pending.option == c.Opt.SET_META_CONTEXT
        and hasattr(payload, "context_id")
        and payload.context_id in pending.contexts
    ):
        out.append(
            _v(
                f"metadata context id {payload.context_id} given twice",
                "Option types",
                "meta-context-id-unique",
            )
        )
    return out


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


def check_request(req: Request, neg: Negotiated) -> list[Violation]:
    """Rules a client request breaks; ``errno`` is the error a server answers with."""
    out: list[Violation] = []
    section = "Request types"
    try:
        cmd_name = c.spec_name(c.Cmd(req.type))
    except ValueError:
        return [_v(f"unknown command type {req.type}", section, "command-unknown")]
    if req.extended != neg.extended_headers:
        out.append(
            _v(
                f"{'extended' if req.extended else 'compact'} request header, but extended "
                f"headers were {'' if neg.extended_headers else 'not '}negotiated",
                "Request message",
                "request-header-style",
            )
        )
    needed = c.CMD_REQUIRES_TFLAG.get(req.type)
    # CACHE is advertised by SEND_CACHE but "server implementations exist which support the
    # command without advertising this bit": no MUST to enforce there.
    if needed is not None and req.type != c.Cmd.CACHE and not neg.has(needed):
        out.append(
            _v(
                f"{cmd_name} sent although {c.spec_name(needed)} was not advertised",
                section,
                "command-not-advertised",
            )
        )
    allowed = c.CMD_ALLOWED_FLAGS.get(req.type, c.CmdFlag(0))
    extra = req.flags & ~int(allowed)
    if extra:
        out.append(
            _v(
                f"{cmd_name} with flag(s) {c.spec_name(c.CmdFlag(extra))} not documented for it",
                "Command flags",
                "command-flag-invalid",
            )
        )
    for flag, tflag in c.FLAG_REQUIRES_TFLAG.items():
        if req.flags & flag and not neg.has(tflag):
            out.append(
                _v(
                    f"{c.spec_name(c.CmdFlag(flag))} set although {c.spec_name(tflag)} was "
                    "not advertised",
                    "Command flags",
                    "command-flag-not-advertised",
                )
            )
    if req.flags & c.CmdFlag.PAYLOAD_LEN:
        if not req.extended:
            out.append(
                _v(
                    "NBD_CMD_FLAG_PAYLOAD_LEN in a compact request",
                    "Command flags",
                    "payload-len-needs-extended",
                )
            )
        elif req.type == c.Cmd.BLOCK_STATUS and not neg.has(TF.BLOCK_STATUS_PAYLOAD):
            out.append(
                _v(
                    "block status payload form without NBD_FLAG_BLOCK_STATUS_PAYLOAD",
                    section,
                    "block-status-payload-unadvertised",
                )
            )
    if req.extended and req.type == c.Cmd.WRITE and not req.flags & c.CmdFlag.PAYLOAD_LEN:
        out.append(
            _v(
                "NBD_CMD_WRITE with extended headers lacks NBD_CMD_FLAG_PAYLOAD_LEN",
                "Command flags",
                "write-needs-payload-len",
            )
        )
    if req.payload and not (
        req.type == c.Cmd.WRITE or (req.extended and req.flags & c.CmdFlag.PAYLOAD_LEN)
    ):
        out.append(
            _v(
                f"{cmd_name} carries {len(req.payload)} bytes of payload; only a write, or an "
                "extended request with NBD_CMD_FLAG_PAYLOAD_LEN, has a payload",
                "Request message",
                "request-unexpected-payload",
            )
        )
    if (req.type == c.Cmd.WRITE or req.flags & c.CmdFlag.PAYLOAD_LEN) and req.length != len(
        req.payload
    ):
        out.append(
            _v(
                f"{cmd_name} header length {req.length} but {len(req.payload)} bytes of payload",
                "Request message",
                "request-length-mismatch",
            )
        )
    effect, ids, payload_error = effect_of(req)
    if payload_error is not None:
        out.append(_v(payload_error.message, section, payload_error.rule))
    if req.type == c.Cmd.BLOCK_STATUS:
        if not neg.meta_contexts or neg.meta_context_export != neg.export_name:
            out.append(
                _v(
                    "NBD_CMD_BLOCK_STATUS without metadata contexts negotiated for this export",
                    section,
                    "block-status-needs-contexts",
                )
            )
        if ids is not None and (
            len(set(ids)) != len(ids) or not set(ids) <= set(neg.meta_contexts)
        ):
            out.append(
                _v(
                    f"block status payload names unknown or duplicate context ids {ids}",
                    section,
                    "block-status-payload-ids",
                )
            )
    if req.type in c.RANGE_COMMANDS and neg.export_size is not None:
        if req.offset + effect > neg.export_size:
            errno = (
                c.Errno.ENOSPC
                if req.type in (c.Cmd.WRITE, c.Cmd.WRITE_ZEROES)
                else (c.Errno.EINVAL)
            )
            out.append(
                _v(
                    f"{cmd_name} of {effect} bytes at offset {req.offset} goes past the end "
                    f"of the {neg.export_size}-byte export",
                    "Size constraints",
                    "request-past-end",
                    errno,
                )
            )
        min_block = neg.min_block
        if min_block > 1 and (req.offset % min_block or effect % min_block):
            out.append(
                _v(
                    f"{cmd_name} at offset {req.offset} length {effect} is not aligned to "
                    f"the minimum block size {min_block}",
                    "Size constraints",
                    "request-alignment",
                )
            )
    if (req.type == c.Cmd.WRITE and len(req.payload) > neg.max_payload) or (
        req.type == c.Cmd.READ
        and not (neg.structured_replies or neg.extended_headers)
        and req.length > neg.max_payload
    ):
        out.append(
            _v(
                f"{cmd_name} of {effect} bytes exceeds the maximum payload {neg.max_payload}",
                "Size constraints",
                "request-over-max-payload",
                c.Errno.EOVERFLOW if req.type == c.Cmd.READ else c.Errno.EINVAL,
            )
        )
    if req.type in c.WRITE_COMMANDS and neg.has(TF.READ_ONLY):
        out.append(
            _v(
                f"{cmd_name} on a read-only export",
                "Error values",
                "write-read-only",
                c.Errno.EPERM,
            )
        )
    return out


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


def check_chunk(
    chunk: ReplyChunk,
    payload: object,
    decode_error: CodecError | None,
    neg: Negotiated,
    in_flight: dict[int, InFlight],
) -> list[Violation]:
    section = "Structured reply types"
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
                section,
                "reply-unknown-cookie",
            )
        ]
    out = []
    req = flight.request
    if chunk.extended != neg.extended_headers:
        out.append(
            _v(
                f"{'extended' if chunk.extended else 'structured'} chunk header, but "
                f"extended headers were {'' if neg.extended_headers else 'not '}negotiated",
                "Extended reply chunk message",
                "chunk-header-style",
            )
        )
    if chunk.extended and chunk.offset != req.offset:
        out.append(
            _v(
                f"extended reply offset {chunk.offset} does not match the request offset "
                f"{req.offset}",
                "Extended reply chunk message",
                "extended-reply-offset",
            )
        )
    if decode_error is not None:
        out.append(
            _v(
                decode_error.message,
                decode_error.section or section,
                decode_error.rule or "chunk-payload",
            )
        )
        return out
    if chunk.flags & ~int(c.ReplyFlag.DONE):
        out.append(
            _v(
                f"reply flags {chunk.flags:#x} hold bits not negotiated",
                "Structured and extended header reply flags",
                "reply-flags-unknown",
            )
        )
    cmd_name = c.name_of(c.Cmd, req.type)
    end = req.offset + flight.effect_length
    match payload:
        case ChunkNone():
            if not chunk.done:
                out.append(
                    _v(
                        "NBD_REPLY_TYPE_NONE without NBD_REPLY_FLAG_DONE",
                        section,
                        "none-needs-done",
                    )
                )
        case ChunkOffsetData() | ChunkOffsetHole():
            if req.type != c.Cmd.READ:
                out.append(
                    _v(f"content chunk in reply to {cmd_name}", section, "content-only-for-read")
                )
            start = payload.offset
            length = len(payload.data) if isinstance(payload, ChunkOffsetData) else payload.length
            if isinstance(payload, ChunkOffsetHole) and length == 0:
                out.append(_v("NBD_REPLY_TYPE_OFFSET_HOLE of size 0", section, "hole-size-zero"))
            if start < req.offset or start + length > end:
                out.append(
                    _v(
                        f"content chunk [{start}, {start + length}) lies outside the request "
                        f"[{req.offset}, {end})",
                        section,
                        "chunk-outside-request",
                    )
                )
            if any(start < e and s < start + length for s, e in flight.covered):
                out.append(
                    _v(
                        f"content chunk [{start}, {start + length}) overlaps an earlier chunk",
                        section,
                        "chunk-overlap",
                    )
                )
            if req.flags & c.CmdFlag.DF and flight.data_chunks:
                out.append(
                    _v(
                        "more than one content chunk for a read with NBD_CMD_FLAG_DF",
                        "Command flags",
                        "df-one-chunk",
                    )
                )
        case ChunkBlockStatus():
            out += _check_status_chunk(chunk, payload, flight, neg)
        case ChunkErrorOffset() | ChunkError():
            if payload.error == 0:
                out.append(_v("error chunk with error value 0", section, "error-nonzero"))
            if isinstance(payload, ChunkErrorOffset):
                if req.type not in ERROR_OFFSET_VALID_FOR:
                    out.append(
                        _v(
                            f"NBD_REPLY_TYPE_ERROR_OFFSET in reply to {cmd_name}",
                            section,
                            "error-offset-valid-for",
                        )
                    )
                if not req.offset <= payload.offset < max(end, req.offset + 1):
                    out.append(
                        _v(
                            f"error offset {payload.offset} lies outside the request",
                            section,
                            "error-offset-range",
                        )
                    )
        case ChunkUnknown():
            out.append(
                _v(
                    f"unknown chunk type {chunk.type}; the client MUST disconnect",
                    section,
                    "chunk-type-unknown",
                )
            )
    if chunk.done and not flight.errored and not isinstance(payload, ChunkError | ChunkErrorOffset):
        out += _check_complete(chunk, payload, flight, neg)
    return out


def _check_status_chunk(
    chunk: ReplyChunk, payload: ChunkBlockStatus, flight: InFlight, neg: Negotiated
) -> list[Violation]:
    section = "Structured reply types"
    req = flight.request
    out = []
    if req.type != c.Cmd.BLOCK_STATUS:
        out.append(
            _v(
                f"block status chunk in reply to {c.name_of(c.Cmd, req.type)}",
                section,
                "status-only-for-block-status",
            )
        )
        return out
    if payload.wide != neg.extended_headers:
        out.append(
            _v(
                f"{c.name_of(c.ReplyType, chunk.type)} used "
                f"{'without' if payload.wide else 'with'} extended headers",
                section,
                "status-chunk-type",
            )
        )
    if payload.context_id not in flight.context_ids:
        out.append(
            _v(
                f"block status for context id {payload.context_id}, which was not selected "
                "for this request",
                "Request types",
                "status-context-unknown",
            )
        )
    if payload.context_id in flight.status_contexts:
        out.append(
            _v(
                f"second status chunk for context id {payload.context_id}",
                section,
                "status-one-chunk-per-context",
            )
        )
    extents = payload.extents
    if any(e.length == 0 for e in extents):
        out.append(_v("block status descriptor of length 0", section, "status-extent-nonzero"))
    if req.flags & c.CmdFlag.REQ_ONE:
        if len(extents) != 1:
            out.append(
                _v(
                    f"{len(extents)} descriptors despite NBD_CMD_FLAG_REQ_ONE",
                    "Command flags",
                    "req-one-single-extent",
                )
            )
        elif extents[0].length > flight.effect_length:
            out.append(
                _v(
                    f"descriptor length {extents[0].length} exceeds the request length "
                    f"{flight.effect_length} with NBD_CMD_FLAG_REQ_ONE",
                    "Request types",
                    "req-one-length",
                )
            )
    elif sum(e.length for e in extents[:-1]) >= max(flight.effect_length, 1) and len(extents) > 1:
        out.append(
            _v(
                "the descriptors before the last already cover the requested length",
                section,
                "status-extent-sum",
            )
        )
    min_block = neg.min_block
    if min_block > 1 and any(e.length % min_block for e in extents):
        out.append(
            _v(
                f"descriptor length not a multiple of the minimum block size {min_block}",
                "Request types",
                "status-extent-alignment",
            )
        )
    name = neg.meta_contexts.get(payload.context_id, "")
    if payload.wide and name.startswith("base:") and any(e.flags >> 32 for e in extents):
        out.append(
            _v("base: context status with upper 32 bits set", section, "status-ext-base-32bit")
        )
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
