"""The handshake, step by step, with the fallbacks the spec asks clients to take.

Each step sends one option through the state machine, reads its replies and
writes what happened into the :class:`~harness.client.records.Negotiation`.
The order and fallbacks follow proto.md (extended-headers branch):

1. greeting: oldstyle servers go straight to transmission; a server without
   ``NBD_FLAG_FIXED_NEWSTYLE`` (or ``fixed_newstyle=False``) allows only
   ``NBD_OPT_EXPORT_NAME``;
2. ``NBD_OPT_STARTTLS`` first when TLS is wanted ("Client-side requirements":
   a client that prefers TLS SHOULD send it as the first option; one that
   requires TLS terminates when it is refused);
3. ``NBD_OPT_EXTENDED_HEADERS``; when refused, ``NBD_OPT_STRUCTURED_REPLY``;
   when that is refused too, no metadata contexts;
4. ``NBD_OPT_SET_META_CONTEXT``; an error means no contexts (the option
   "replaces all previously-set metadata contexts (including when this
   command fails)");
5. ``NBD_OPT_GO`` (asking for ``NBD_INFO_BLOCK_SIZE`` and retrying with it
   after ``NBD_REP_ERR_BLOCK_SIZE_REQD``); on ``NBD_REP_ERR_UNSUP``,
   ``NBD_OPT_EXPORT_NAME``.

``NBD_REP_ERR_TLS_REQD`` to any option ends the handshake with a
:class:`~harness.client.errors.TlsError` saying to use ``nbds://``.
Rules are not checked here: the state machine refuses what we may not send
and raises on what the server may not send.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl

from harness.protocol import Phase
from harness.protocol import constants as c
from harness.protocol.codec import decode_reply_payload, option
from harness.protocol.errors import CodecError, ProtocolError
from harness.protocol.messages import (
    ClientFlags,
    ConnectionClosed,
    EmptyPayload,
    ErrorReplyPayload,
    ExportNamePayload,
    ExportNameReply,
    InfoBlockSize,
    InfoDescription,
    InfoExport,
    InfoInitState,
    InfoName,
    InfoRequestPayload,
    InfoUnknown,
    MetaContextPayload,
    MetaContextReplyPayload,
    NewstyleGreeting,
    OldstyleGreeting,
    OptionReply,
    OptionRequest,
    RawPayload,
    ServerPayload,
)
from harness.protocol.state import OptionExchange

from ._wire import Wire
from .errors import NbdConnectionError, NegotiationError, TlsError
from .options import ConnectOptions, TlsMode
from .records import ExportEntry, ExportInfo, Fallback, Negotiation

Reply = tuple[OptionReply, object]

# How long a polite NBD_OPT_ABORT waits for the server's ACK before closing anyway.
_ABORT_TIMEOUT = 2.0


def _rep(reply_type: int) -> str:
    return c.name_of(c.Rep, reply_type)


def _opt(opt: int) -> str:
    return c.name_of(c.Opt, opt)


async def exchange(
    wire: Wire,
    record: Negotiation,
    request: OptionRequest,
    *,
    argument: str = "",
    strict: bool = True,
) -> list[Reply]:
    """Send one option and read its replies up to the final ACK or error.

    Returns every reply with its typed payload; the exchange is appended to
    ``record.options``.  The server closing the connection instead raises
    :class:`NegotiationError`.
    """
    await wire.send(request, strict=strict)
    replies: list[Reply] = []
    while True:
        event = await wire.next_event(wire.timeout)
        if isinstance(event, ConnectionClosed):
            record.options.append(
                OptionExchange(
                    request.option,
                    tuple(r.reply_type for r, _ in replies),
                    argument,
                    outcome="server closed the connection",
                )
            )
            raise NegotiationError(
                f"the server closed the connection instead of answering {_opt(request.option)}",
                option=request.option,
            )
        assert isinstance(event, OptionReply)  # the only thing a server may send now
        try:
            payload = decode_reply_payload(event.reply_type, event.data)
        except CodecError:  # only reachable with strict_remote=False
            payload = RawPayload(event.data)
        replies.append((event, payload))
        if event.reply_type == c.Rep.ACK or c.is_rep_error(event.reply_type):
            break
    message = payload.message if isinstance(payload, ErrorReplyPayload) else ""
    record.options.append(
        OptionExchange(
            request.option, tuple(r.reply_type for r, _ in replies), argument, message=message
        )
    )
    return replies


def _final(replies: list[Reply]) -> tuple[int, str]:
    """Final reply type and the error message it carried."""
    reply, payload = replies[-1]
    message = payload.message if isinstance(payload, ErrorReplyPayload) else ""
    return reply.reply_type, message


def _refusal(opt: int, reply_type: int, message: str, what: str) -> NegotiationError:
    text = f"{what}: the server answered {_opt(opt)} with {_rep(reply_type)}"
    if message:
        text += f" ({message})"
    error_type = TlsError if reply_type == c.Rep.ERR_TLS_REQD else NegotiationError
    if reply_type == c.Rep.ERR_TLS_REQD:
        text += "; the server requires TLS: connect with nbds:// (and tls-certificates=DIR)"
    return error_type(text, option=opt, reply_type=reply_type, server_message=message)


def _stop_if_tls_required(opt: int, reply_type: int, message: str, record: Negotiation) -> None:
    """``NBD_REP_ERR_TLS_REQD`` without TLS: no option will succeed ("Client-side requirements")."""
    if reply_type == c.Rep.ERR_TLS_REQD and not record.tls:
        raise _refusal(opt, reply_type, message, "TLS required")


# --- greeting, TLS, reply formats ----------------------------------------------------------


async def handshake(
    wire: Wire,
    options: ConnectOptions,
    record: Negotiation,
    *,
    tls_mode: TlsMode,
    tls_context: ssl.SSLContext | None,
    server_hostname: str | None,
) -> None:
    """From the greeting to the end of reply-format negotiation (steps 1 to 3)."""
    greeting = await wire.next_event(wire.timeout)
    if isinstance(greeting, ConnectionClosed):
        raise NbdConnectionError("the server closed the connection before sending its greeting")
    if isinstance(greeting, OldstyleGreeting):
        record.style = "oldstyle"
        record.export_size = wire.conn.negotiated.export_size
        record.transmission_flags = wire.conn.negotiated.transmission_flags
        record.selected_with = "oldstyle greeting"
        if tls_mode == "require":
            raise TlsError(
                "the server speaks oldstyle negotiation, which has no TLS; refusing "
                "to continue in the clear (TLS is required)"
            )
        record.fallbacks.append(
            Fallback("options", "oldstyle server: no options, no TLS, simple replies only")
        )
        return
    assert isinstance(greeting, NewstyleGreeting)
    record.style = wire.conn.negotiated.style
    record.handshake_flags = greeting.handshake_flags
    server_fixed = bool(greeting.handshake_flags & c.HandshakeFlag.FIXED_NEWSTYLE)
    fixed = server_fixed and options.fixed_newstyle
    flags = c.ClientFlag(0)
    if fixed:
        flags |= c.ClientFlag.C_FIXED_NEWSTYLE
    if options.no_zeroes and greeting.handshake_flags & c.HandshakeFlag.NO_ZEROES:
        flags |= c.ClientFlag.C_NO_ZEROES
    await wire.send(ClientFlags(int(flags)))
    record.client_flags = int(flags)
    if not fixed:
        if tls_mode == "require":
            raise TlsError(
                "the server is not fixed-newstyle, so NBD_OPT_STARTTLS is impossible; refusing "
                "to continue in the clear (TLS is required)"
            )
        why = "server lacks NBD_FLAG_FIXED_NEWSTYLE" if not server_fixed else "fixed newstyle off"
        record.fallbacks.append(Fallback("options", f"{why}: NBD_OPT_EXPORT_NAME only"))
        return
    if tls_mode in ("on", "require"):
        await starttls(wire, record, tls_mode, tls_context, server_hostname)
    if options.extended_headers:
        replies = await exchange(wire, record, option(c.Opt.EXTENDED_HEADERS, EmptyPayload()))
        final, message = _final(replies)
        if final == c.Rep.ACK:
            record.extended_headers = True
        else:
            _stop_if_tls_required(c.Opt.EXTENDED_HEADERS, final, message, record)
            record.fallbacks.append(
                Fallback(
                    "extended-headers",
                    f"NBD_OPT_EXTENDED_HEADERS refused ({_rep(final)}): compact headers",
                )
            )
    if options.structured_replies and not record.extended_headers:
        replies = await exchange(wire, record, option(c.Opt.STRUCTURED_REPLY, EmptyPayload()))
        final, message = _final(replies)
        if final == c.Rep.ACK:
            record.structured_replies = True
        else:
            _stop_if_tls_required(c.Opt.STRUCTURED_REPLY, final, message, record)
            record.fallbacks.append(
                Fallback(
                    "structured-replies",
                    f"NBD_OPT_STRUCTURED_REPLY refused "
                    f"({_rep(final)}): simple replies, no metadata contexts",
                )
            )


async def starttls(
    wire: Wire,
    record: Negotiation,
    tls_mode: TlsMode,
    tls_context: ssl.SSLContext | None,
    server_hostname: str | None,
) -> None:
    """``NBD_OPT_STARTTLS`` and the TLS handshake on the same socket."""
    replies = await exchange(wire, record, option(c.Opt.STARTTLS, EmptyPayload()))
    final, message = _final(replies)
    if final != c.Rep.ACK:
        if tls_mode == "require":
            raise TlsError(
                f"the server refused NBD_OPT_STARTTLS with {_rep(final)}"
                + (f" ({message})" if message else "")
                + "; refusing to continue in the clear (TLS is required)",
                option=c.Opt.STARTTLS,
                reply_type=final,
                server_message=message,
            )
        record.fallbacks.append(
            Fallback("starttls", f"NBD_OPT_STARTTLS refused ({_rep(final)}): no TLS")
        )
        return
    assert tls_context is not None
    await wire.start_tls(tls_context, server_hostname)
    record.tls = True


# --- selecting the export ---------------------------------------------------------------


async def select_export(
    wire: Wire, options: ConnectOptions, record: Negotiation, export: str
) -> None:
    """Steps 4 and 5: metadata contexts, then ``NBD_OPT_GO`` or ``NBD_OPT_EXPORT_NAME``."""
    if wire.conn.phase is Phase.TRANSMISSION:  # oldstyle: nothing to select
        return
    record.export_name = export
    if record.client_flags & c.ClientFlag.C_FIXED_NEWSTYLE:
        await set_meta_contexts(wire, options, record, export)
        if options.use_go and await _go(wire, options, record, export):
            return
    elif options.meta_contexts:
        record.fallbacks.append(
            Fallback("meta-contexts", "no fixed newstyle: no metadata contexts")
        )
    await _export_name(wire, record, export)


async def set_meta_contexts(
    wire: Wire, options: ConnectOptions, record: Negotiation, export: str
) -> None:
    """``NBD_OPT_SET_META_CONTEXT`` for ``options.meta_contexts`` (nothing when empty)."""
    queries = tuple(options.meta_contexts)
    if not queries:
        return
    if not (record.structured_replies or record.extended_headers):
        record.fallbacks.append(
            Fallback(
                "meta-contexts",
                "no structured replies or extended headers: no metadata "
                "contexts, no NBD_CMD_BLOCK_STATUS",
            )
        )
        return
    replies = await exchange(
        wire,
        record,
        option(c.Opt.SET_META_CONTEXT, MetaContextPayload(export, queries)),
        argument=f"{export!r}: {', '.join(queries)}",
    )
    final, message = _final(replies)
    record.meta_contexts = dict(wire.conn.negotiated.meta_contexts)
    if final != c.Rep.ACK:
        _stop_if_tls_required(c.Opt.SET_META_CONTEXT, final, message, record)
        record.fallbacks.append(
            Fallback(
                "meta-contexts",
                f"NBD_OPT_SET_META_CONTEXT failed ({_rep(final)}): no metadata contexts",
            )
        )
        return
    missing = [q for q in queries if q not in record.meta_contexts.values()]
    if missing:
        record.fallbacks.append(
            Fallback("meta-contexts", f"the server did not select {', '.join(missing)}")
        )


def _apply_infos(record: Negotiation, replies: list[Reply]) -> None:
    record.infos = []
    for reply, payload in replies:
        if reply.reply_type != c.Rep.INFO:
            continue
        match payload:
            case InfoDescription(description=text):
                record.description = text
            case InfoName(name=name):
                record.canonical_name = name
            case InfoUnknown(info_type=info_type):
                record.infos.append(info_type)
                continue
        record.infos.append(_INFO_TYPE.get(type(payload), -1))


_INFO_TYPE: dict[type, int] = {
    InfoExport: c.Info.EXPORT,
    InfoName: c.Info.NAME,
    InfoDescription: c.Info.DESCRIPTION,
    InfoBlockSize: c.Info.BLOCK_SIZE,
    InfoInitState: c.Info.INIT_STATE,
}


async def _go(wire: Wire, options: ConnectOptions, record: Negotiation, export: str) -> bool:
    """``NBD_OPT_GO``; False when the server does not know it (fall back to EXPORT_NAME)."""
    infos = options.go_info_requests()
    while True:
        replies = await exchange(
            wire,
            record,
            option(c.Opt.GO, InfoRequestPayload(export, infos)),
            argument=repr(export),
        )
        final, message = _final(replies)
        if final == c.Rep.ACK:
            neg = wire.conn.negotiated
            record.export_size = neg.export_size
            record.transmission_flags = neg.transmission_flags
            record.block_size = neg.block_size
            record.init_state = neg.init_state
            _apply_infos(record, replies)
            record.selected_with = "NBD_OPT_GO"
            return True
        if final == c.Rep.ERR_UNSUP:
            record.fallbacks.append(
                Fallback("go", "NBD_OPT_GO unsupported (NBD_REP_ERR_UNSUP): NBD_OPT_EXPORT_NAME")
            )
            return False
        if final == c.Rep.ERR_BLOCK_SIZE_REQD and c.Info.BLOCK_SIZE not in infos:
            infos = (*infos, c.Info.BLOCK_SIZE)
            record.fallbacks.append(
                Fallback(
                    "block-size",
                    "NBD_REP_ERR_BLOCK_SIZE_REQD: asked again with NBD_INFO_BLOCK_SIZE",
                )
            )
            continue
        if final == c.Rep.ERR_UNKNOWN:
            raise _refusal(c.Opt.GO, final, message, f"no export named {export!r}")
        if final == c.Rep.ERR_TLS_REQD:
            raise _refusal(
                c.Opt.GO, final, message, f"export {export!r} requires TLS or does not exist"
            )
        raise _refusal(c.Opt.GO, final, message, f"cannot use export {export!r}")


async def _export_name(wire: Wire, record: Negotiation, export: str) -> None:
    await wire.send(option(c.Opt.EXPORT_NAME, ExportNamePayload(export)))
    event = await wire.next_event(wire.timeout)
    if isinstance(event, ConnectionClosed):
        record.options.append(
            OptionExchange(
                c.Opt.EXPORT_NAME, (), repr(export), outcome="server closed the connection"
            )
        )
        raise NegotiationError(
            f"the server closed the connection after NBD_OPT_EXPORT_NAME {export!r}: no such "
            "export, or it refused us (TLS required?)",
            option=c.Opt.EXPORT_NAME,
        )
    assert isinstance(event, ExportNameReply)
    record.options.append(
        OptionExchange(c.Opt.EXPORT_NAME, (), repr(export), outcome=f"size {event.size}")
    )
    record.export_size = event.size
    record.transmission_flags = event.transmission_flags
    record.selected_with = "NBD_OPT_EXPORT_NAME"


# --- queries before transmission ----------------------------------------------------------


async def list_exports(wire: Wire, record: Negotiation) -> list[ExportEntry]:
    """``NBD_OPT_LIST``: every export the server names, with its details text."""
    replies = await exchange(wire, record, option(c.Opt.LIST, EmptyPayload()))
    final, message = _final(replies)
    if final != c.Rep.ACK:
        raise _refusal(c.Opt.LIST, final, message, "cannot list exports")
    return [
        ExportEntry(payload.name, payload.details)
        for _, payload in replies
        if isinstance(payload, ServerPayload)
    ]


async def list_meta_contexts(
    wire: Wire, record: Negotiation, export: str, queries: tuple[str, ...]
) -> list[str]:
    """``NBD_OPT_LIST_META_CONTEXT``: the names of the contexts the queries match.

    No queries lists every context of the export.  The option "SHOULD NOT be
    requested unless structured replies or extended headers have been
    negotiated first", so without them this raises without asking.
    """
    if not (record.structured_replies or record.extended_headers):
        raise NegotiationError(
            "NBD_OPT_LIST_META_CONTEXT needs structured replies or extended headers, which "
            "this connection has not negotiated"
        )
    replies = await exchange(
        wire,
        record,
        option(c.Opt.LIST_META_CONTEXT, MetaContextPayload(export, tuple(queries))),
        argument=f"{export!r}: {', '.join(queries) or '(all)'}",
    )
    final, message = _final(replies)
    if final != c.Rep.ACK:
        raise _refusal(c.Opt.LIST_META_CONTEXT, final, message, "cannot list metadata contexts")
    return [p.name for _, p in replies if isinstance(p, MetaContextReplyPayload)]


async def export_info(
    wire: Wire, record: Negotiation, export: str, info_requests: tuple[int, ...]
) -> ExportInfo:
    """``NBD_OPT_INFO``: what the server says about ``export``, without selecting it.

    A server may refuse INFO with ``NBD_REP_ERR_BLOCK_SIZE_REQD`` when the client did not
    ask for block sizes (qemu 2.10-3.1 always do): as for GO, ask again promising to obey them.
    """
    while True:
        replies = await exchange(
            wire,
            record,
            option(c.Opt.INFO, InfoRequestPayload(export, info_requests)),
            argument=repr(export),
        )
        final, message = _final(replies)
        if final != c.Rep.ERR_BLOCK_SIZE_REQD or c.Info.BLOCK_SIZE in info_requests:
            break
        info_requests = (*info_requests, c.Info.BLOCK_SIZE)
        record.fallbacks.append(Fallback(
            "block-size", "NBD_OPT_INFO: NBD_REP_ERR_BLOCK_SIZE_REQD: asked again with "
            "NBD_INFO_BLOCK_SIZE"))
    if final != c.Rep.ACK:
        raise _refusal(c.Opt.INFO, final, message, f"no information on export {export!r}")
    fields: dict[str, object] = {}
    infos = []
    for reply, payload in replies:
        if reply.reply_type != c.Rep.INFO:
            continue
        match payload:
            case InfoExport(size=size, transmission_flags=flags):
                fields.update(size=size, transmission_flags=flags)
            case InfoBlockSize():
                fields["block_size"] = payload
            case InfoDescription(description=text):
                fields["description"] = text
            case InfoName(name=name):
                fields["canonical_name"] = name
            case InfoInitState(flags=flags):
                fields["init_state"] = flags
        infos.append(
            payload.info_type if isinstance(payload, InfoUnknown) else _INFO_TYPE.get(type(payload))
        )
    return ExportInfo(name=export, infos=tuple(i for i in infos if i is not None), **fields)


async def abort(wire: Wire, record: Negotiation) -> None:
    """``NBD_OPT_ABORT``, politely: wait briefly for the ACK (or the close) the spec allows."""
    if wire.closed or wire.conn.phase is not Phase.OPTIONS:
        return
    with contextlib.suppress(ProtocolError, NegotiationError, OSError, asyncio.TimeoutError):
        saved = wire.timeout
        wire.timeout = min(saved, _ABORT_TIMEOUT)
        try:
            await exchange(wire, record, option(c.Opt.ABORT, EmptyPayload()))
        finally:
            wire.timeout = saved
