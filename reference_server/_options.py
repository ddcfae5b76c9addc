"""Answers to option requests, as lists of events (no I/O here).

The session feeds each option to :func:`answer_option` and sends back what it
returns.  TLS policy, export lookup and metadata-context matching follow the
spec sections cited next to each branch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from harness.protocol import constants as c
from harness.protocol.codec import decode_option_payload, option_reply
from harness.protocol.messages import (
    ErrorReplyPayload,
    InfoBlockSize,
    InfoDescription,
    InfoExport,
    InfoInitState,
    InfoName,
    InfoRequestPayload,
    MetaContextPayload,
    MetaContextReplyPayload,
    OptionReply,
    OptionRequest,
    ServerPayload,
)
from harness.protocol.state import Negotiated, Violation

from .config import ExportConfig, ServerConfig
from .features import ServerFeatures
from .storage import ExportRegistry

TF = c.TransmissionFlag
SECTOR = 512
"""qemu's BDRV_SECTOR_SIZE: the minimum block size qemu 2.10-3.1 advertise when asked."""


@dataclass
class OptionOutcome:
    """What to send, and what to do next."""

    replies: list[OptionReply] = field(default_factory=list)
    close: bool = False  # terminate the session after sending the replies
    start_tls: bool = False
    enter_transmission: ExportConfig | None = None


def error(opt: int, rep: int, message: str) -> OptionReply:
    return option_reply(opt, rep, ErrorReplyPayload(message))


@dataclass
class OptionContext:
    """The pieces of the server an option answer may consult."""

    config: ServerConfig
    features: ServerFeatures
    registry: ExportRegistry
    negotiated: Negotiated
    tls_available: bool


def tls_mode(ctx: OptionContext) -> str:
    """"off" (NOTLS), "required" (FORCEDTLS) or "optional" (SELECTIVETLS).

    "The server MUST operate in NOTLS mode unless the server set
    NBD_FLAG_FIXED_NEWSTYLE and the client replied with
    NBD_FLAG_C_FIXED_NEWSTYLE" (section "Server-side requirements").
    """
    neg = ctx.negotiated
    if not ctx.tls_available or not (
        neg.fixed_newstyle and neg.client_flags & c.ClientFlag.C_FIXED_NEWSTYLE
    ):
        return "off"
    return ctx.config.tls


def export_needs_tls(ctx: OptionContext, export: ExportConfig) -> bool:
    mode = tls_mode(ctx)
    if ctx.negotiated.tls or mode == "off":
        return False
    return mode == "required" or export.tls == "required"


def transmission_flags(ctx: OptionContext, export: ExportConfig, for_info: bool = False) -> int:
    """The transmission flags for ``export`` given what is negotiated so far.

    ``for_info``: the flags answer NBD_OPT_INFO (not GO), which a quirk may treat differently.
    """
    features, neg = ctx.features, ctx.negotiated
    flags = TF.HAS_FLAGS
    # Profile quirks: some servers do not advertise write-only commands on read-only exports.
    writes = not (export.read_only and "read-only-hides-write-flags" in features.quirks)
    fua = not (export.read_only and "read-only-hides-fua" in features.quirks)
    if export.read_only:
        flags |= TF.READ_ONLY
    if features.flush:
        flags |= TF.SEND_FLUSH
    if features.fua and fua:
        flags |= TF.SEND_FUA
    if export.rotational:
        flags |= TF.ROTATIONAL
    if features.trim and writes:
        flags |= TF.SEND_TRIM
    if features.write_zeroes and writes:
        flags |= TF.SEND_WRITE_ZEROES
        if features.fast_zero and export.fast_zero:
            flags |= TF.SEND_FAST_ZERO
    if features.df and (neg.structured_replies or neg.extended_headers):
        flags |= TF.SEND_DF
    if features.cache:
        flags |= TF.SEND_CACHE
    multi = export.multi_conn and (
        features.multi_conn == "always"
        or (features.multi_conn == "read-only" and export.read_only)
    )
    if multi:
        # One shared backend per export (ExportRegistry): a flush on any
        # connection covers writes made through all of them.
        flags |= TF.CAN_MULTI_CONN
    # "SHOULD NOT advertise this bit in response to NBD_OPT_GO if the client does not
    # negotiate metacontexts"; the spec is silent on INFO, where qemu always advertises it.
    contexts_ready = bool(neg.meta_contexts) and neg.meta_context_export == export.name
    if (
        features.block_status_payload
        and neg.extended_headers
        and (contexts_ready or (for_info and "info-block-status-payload" in features.quirks))
    ):
        flags |= TF.BLOCK_STATUS_PAYLOAD
    return int(flags)


def answer_option(ctx: OptionContext, request: OptionRequest,
                  violations: list[Violation]) -> OptionOutcome:
    """The server's reply to one option (other than EXPORT_NAME)."""
    opt = request.option
    neg = ctx.negotiated
    mode = tls_mode(ctx)
    if not ctx.features.offers(opt) or opt == c.Opt.PEEK_EXPORT:
        if mode == "required" and not neg.tls:
            # FORCEDTLS: "any other option, including ... unsupported options" gets TLS_REQD.
            return OptionOutcome([error(opt, c.Rep.ERR_TLS_REQD, "TLS is required")])
        return OptionOutcome([error(opt, c.Rep.ERR_UNSUP,
                                    f"option {c.name_of(c.Opt, opt)} is not supported")])
    if violations:
        return OptionOutcome([error(opt, c.Rep.ERR_INVALID, violations[0].message)])
    if opt == c.Opt.ABORT:
        if mode == "required" and not neg.tls and "abort-before-tls-refused" in ctx.features.quirks:
            return OptionOutcome([error(opt, c.Rep.ERR_TLS_REQD,
                                        "Option 0x2 not permitted before TLS")])
        if "abort-without-ack" in ctx.features.quirks:
            return OptionOutcome([], close=True)
        return OptionOutcome([option_reply(opt, c.Rep.ACK)], close=True)
    if opt == c.Opt.STARTTLS:
        return _starttls(ctx, mode)
    if mode == "required" and not neg.tls:
        return OptionOutcome([error(opt, c.Rep.ERR_TLS_REQD, "TLS is required: send "
                                    "NBD_OPT_STARTTLS first")])
    payload = decode_option_payload(opt, request.data)
    match opt:
        case c.Opt.LIST:
            return _list(ctx)
        case c.Opt.INFO | c.Opt.GO:
            assert isinstance(payload, InfoRequestPayload)
            return _info_or_go(ctx, opt, payload)
        case c.Opt.STRUCTURED_REPLY:
            if neg.extended_headers:
                return OptionOutcome([error(opt, c.Rep.ERR_EXT_HEADER_REQD,
                                            "extended headers are already negotiated")])
            if neg.structured_replies:
                return OptionOutcome([error(opt, c.Rep.ERR_INVALID,
                                            "structured replies are already negotiated")])
            return OptionOutcome([option_reply(opt, c.Rep.ACK)])
        case c.Opt.EXTENDED_HEADERS:
            if neg.extended_headers:
                return OptionOutcome([error(opt, c.Rep.ERR_INVALID,
                                            "extended headers are already negotiated")])
            return OptionOutcome([option_reply(opt, c.Rep.ACK)])
        case c.Opt.LIST_META_CONTEXT | c.Opt.SET_META_CONTEXT:
            assert isinstance(payload, MetaContextPayload)
            return _meta_context(ctx, opt, payload)
    return OptionOutcome([error(opt, c.Rep.ERR_UNSUP, "unsupported option")])


def _starttls(ctx: OptionContext, mode: str) -> OptionOutcome:
    opt = c.Opt.STARTTLS
    if mode == "off":
        # NOTLS: "MUST respond with NBD_REP_ERR_POLICY ... NBD_REP_ERR_UNSUP".
        return OptionOutcome([error(opt, c.Rep.ERR_POLICY, "this server does not offer TLS")])
    if ctx.negotiated.tls:
        return OptionOutcome([error(opt, c.Rep.ERR_INVALID, "TLS is already negotiated")])
    return OptionOutcome([option_reply(opt, c.Rep.ACK)], start_tls=True)


def _visible_exports(ctx: OptionContext) -> list[ExportConfig]:
    # SELECTIVETLS "MAY omit exports that are TLS-only from NBD_OPT_LIST": we list them, since
    # hiding them would make LIST disagree with INFO's TLS_REQD answers.
    return list(ctx.config.exports)


def _list(ctx: OptionContext) -> OptionOutcome:
    opt = c.Opt.LIST
    if not ctx.config.list_exports:
        return OptionOutcome([error(opt, c.Rep.ERR_POLICY, "export listing is disabled")])
    replies = [option_reply(opt, c.Rep.SERVER, ServerPayload(e.name, e.description))
               for e in _visible_exports(ctx)]
    return OptionOutcome([*replies, option_reply(opt, c.Rep.ACK)])


def _info_or_go(ctx: OptionContext, opt: int, payload: InfoRequestPayload) -> OptionOutcome:
    export = ctx.config.export(payload.name)
    if export is None:
        return OptionOutcome([error(opt, c.Rep.ERR_UNKNOWN,
                                    f"no export named {payload.name!r}")])
    if export_needs_tls(ctx, export):
        return OptionOutcome([error(opt, c.Rep.ERR_TLS_REQD,
                                    f"export {export.name!r} requires TLS")])
    backend = ctx.registry.backend(export)
    requested = set(payload.info_requests)
    replies: list[OptionReply] = []
    quirks = ctx.features.quirks
    block_info = InfoBlockSize(export.min_block_size, export.preferred_block_size,
                               export.max_payload_size)
    sector_minimum = "sector-min-block" in quirks and export.has_default_block_sizes
    if sector_minimum and (opt == c.Opt.INFO or c.Info.BLOCK_SIZE in requested):
        block_info = InfoBlockSize(SECTOR, max(SECTOR, export.preferred_block_size),
                                   export.max_payload_size)
    send_block = ctx.features.info_block_size and (
        c.Info.BLOCK_SIZE in requested or not export.has_default_block_sizes
        or "block-size-unasked" in quirks
    )
    if (opt == c.Opt.GO and export.block_size_required and c.Info.BLOCK_SIZE not in requested
            and ctx.features.info_block_size):
        # "SHOULD ensure it first sends an NBD_INFO_BLOCK_SIZE information reply".
        return OptionOutcome([
            option_reply(opt, c.Rep.INFO, block_info),
            error(opt, c.Rep.ERR_BLOCK_SIZE_REQD, "this export requires the client to accept "
                  "its block size constraints (request NBD_INFO_BLOCK_SIZE)"),
        ])
    size = backend.size
    if opt == c.Opt.INFO and "info-size-zero" in ctx.features.quirks:
        size = 0
    flags = transmission_flags(ctx, export, for_info=opt == c.Opt.INFO)
    replies.append(option_reply(opt, c.Rep.INFO, InfoExport(size, flags)))
    if c.Info.NAME in requested:
        name = "" if "info-name-empty" in quirks else export.name
        replies.append(option_reply(opt, c.Rep.INFO, InfoName(name)))
    unasked = "description-unasked" in ctx.features.quirks
    if (c.Info.DESCRIPTION in requested or unasked) and export.description:
        replies.append(option_reply(opt, c.Rep.INFO, InfoDescription(export.description)))
    if send_block:
        replies.append(option_reply(opt, c.Rep.INFO, block_info))
    if export.init_state and ctx.features.init_state:
        replies.append(option_reply(opt, c.Rep.INFO, InfoInitState(int(backend.init_state()))))
    if sector_minimum and opt == c.Opt.INFO and c.Info.BLOCK_SIZE not in requested:
        # qemu 2.10-3.1: "If the client is just asking for NBD_OPT_INFO, but forgot to request
        # block sizes, return an error" (after the information; the spec allows the refusal).
        replies.append(error(opt, c.Rep.ERR_BLOCK_SIZE_REQD,
                             "request NBD_INFO_BLOCK_SIZE to use this export"))
        return OptionOutcome(replies)
    replies.append(option_reply(opt, c.Rep.ACK))
    return OptionOutcome(replies, enter_transmission=export if opt == c.Opt.GO else None)


def available_contexts(ctx: OptionContext, export: ExportConfig) -> list[str]:
    """Contexts this export offers under the server's features and the export's settings."""
    backend = ctx.registry.backend(export)
    return [
        name
        for name in backend.metadata_contexts()
        if ctx.features.offers_context(name)
        and (export.allocation_depth or name != c.QEMU_ALLOCATION_DEPTH)
    ]


def match_list_query(query: str, available: list[str]) -> list[str]:
    """Contexts a LIST query names: exact names, ``base:``, ``qemu:``, ``qemu:dirty-bitmap:``.

    qemu's ``nbd.rst``: "qemu:" lists the whole namespace, "qemu:dirty-bitmap:"
    every bitmap; the spec lets an empty leaf name wildcard a namespace.
    """
    if query in ("base:", "qemu:", c.QEMU_DIRTY_BITMAP_PREFIX):
        return [name for name in available if name.startswith(query)]
    return [name for name in available if name == query]


def _meta_context(ctx: OptionContext, opt: int, payload: MetaContextPayload) -> OptionOutcome:
    neg = ctx.negotiated
    quirks = ctx.features.quirks
    listing_early = opt == c.Opt.LIST_META_CONTEXT and "list-meta-without-structured" in quirks
    if not (neg.structured_replies or neg.extended_headers or listing_early):
        return OptionOutcome([error(opt, c.Rep.ERR_INVALID, "negotiate structured replies or "
                                    "extended headers first")])
    export = ctx.config.export(payload.name)
    if export is None:
        return OptionOutcome([error(opt, c.Rep.ERR_UNKNOWN, f"no export named {payload.name!r}")])
    if export_needs_tls(ctx, export):
        # TLS_REQD is reserved for INFO/GO/EXPORT_NAME in SELECTIVETLS, so refuse by policy.
        return OptionOutcome([error(opt, c.Rep.ERR_POLICY,
                                    f"export {export.name!r} requires TLS")])
    limit = ctx.config.limits.max_meta_context_queries
    if len(payload.queries) > limit:
        # LIST "MAY fail with NBD_REP_ERR_TOO_BIG if too many queries are requested";
        # SET "MAY return NBD_REP_ERR_TOO_BIG if a request seeks to select too many".
        return OptionOutcome([error(opt, c.Rep.ERR_TOO_BIG,
                                    f"{len(payload.queries)} queries; this server takes at "
                                    f"most {limit} (limits.max_meta_context_queries)")])
    for query in payload.queries:
        if ":" not in query and "meta-query-no-colon-ignored" not in quirks:
            return OptionOutcome([error(opt, c.Rep.ERR_INVALID,
                                        f"query {query!r} lacks a namespace and colon")])
    available = available_contexts(ctx, export)
    if opt == c.Opt.LIST_META_CONTEXT:
        if payload.queries:
            matched: dict[str, None] = {}  # ordered and unique: linear in the queries
            for query in dict.fromkeys(payload.queries):
                matched.update(dict.fromkeys(match_list_query(query, available)))
            names = list(matched)
        else:
            names = available
        replies = [option_reply(opt, c.Rep.META_CONTEXT, MetaContextReplyPayload(0, n))
                   for n in names]
        return OptionOutcome([*replies, option_reply(opt, c.Rep.ACK)])
    # SET: exact names only; "MAY ignore queries that do not select a single context".
    offered = set(available)
    selected = [q for q in dict.fromkeys(payload.queries) if q in offered]
    replies = [option_reply(opt, c.Rep.META_CONTEXT, MetaContextReplyPayload(i, name))
               for i, name in enumerate(selected, start=1)]
    return OptionOutcome([*replies, option_reply(opt, c.Rep.ACK)])
