"""Rules of TLS: NBD_OPT_STARTTLS and the NOTLS, FORCEDTLS and SELECTIVETLS modes.

Section "TLS support" and its subsections.  A server's mode shows in what it
answers: NBD_REP_ERR_POLICY or NBD_REP_ERR_UNSUP to STARTTLS means NOTLS;
NBD_REP_ERR_TLS_REQD to anything means it does TLS, and to an option other than
INFO/GO means FORCEDTLS ("it MUST be consistent in its mode of operation across
the lifespan of a single TCP connection").  After a successful STARTTLS the
bytes are opaque: only their first record header can be checked.
"""

from __future__ import annotations

from collections.abc import Iterator

from harness.conformance._rule import Hit, rule
from harness.conformance._silence import unanswered_options
from harness.conformance._view import OptionMessages, SessionView, follows, reply_type
from harness.dissect.model import CLIENT, SERVER, WireMessage
from harness.protocol import constants as c

_STATEFUL_OPTIONS = (c.Opt.STRUCTURED_REPLY, c.Opt.EXTENDED_HEADERS, c.Opt.SET_META_CONTEXT)
_TLS_CONTENT_TYPES = range(0x14, 0x18)  # change_cipher_spec, alert, handshake, application_data
_TLS_HANDSHAKE = 0x16
_NOTLS_ANSWERS = (c.Rep.ERR_UNSUP, c.Rep.ERR_POLICY)


def _starttls_exchanges(view: SessionView) -> list[OptionMessages]:
    return [e for e in view.options if e.code == c.Opt.STARTTLS]


def _tls_required_replies(view: SessionView) -> list[tuple[OptionMessages, WireMessage]]:
    return [
        (exchange, reply)
        for exchange in view.options
        for reply in exchange.replies
        if reply_type(reply) == c.Rep.ERR_TLS_REQD
    ]


def _first_tls(view: SessionView, after: WireMessage, direction: str) -> WireMessage | None:
    for message in follows(view, after, direction):
        return message if message.kind == "tls" else None
    return None


def _looks_like_tls(record: bytes, *, handshake: bool) -> bool:
    if len(record) < 3 or record[1] != 0x03:
        return False
    return record[0] == _TLS_HANDSHAKE if handshake else record[0] in _TLS_CONTENT_TYPES


@rule(id="client.starttls-needs-fixed-newstyle")
def starttls_needs_fixed_newstyle(view: SessionView) -> Iterator[Hit]:
    """NBD_OPT_STARTTLS only in fixed newstyle negotiation (both flags set)."""
    if view.fixed_newstyle:
        return
    for exchange in _starttls_exchanges(view):
        yield Hit(exchange.option, "NBD_OPT_STARTTLS without fixed newstyle negotiation")


@rule(id="server.notls-without-fixed-newstyle")
def notls_without_fixed_newstyle(view: SessionView) -> Iterator[Hit]:
    """Without fixed newstyle the server neither demands nor starts TLS."""
    if view.fixed_newstyle or view.greeting is None:
        return
    for exchange, reply in _tls_required_replies(view):
        yield Hit(
            reply,
            f"NBD_REP_ERR_TLS_REQD to {exchange.option.name} without fixed newstyle negotiation",
        )
    for exchange in _starttls_exchanges(view):
        if exchange.succeeded:
            yield Hit(
                exchange.final, "NBD_OPT_STARTTLS acknowledged without fixed newstyle negotiation"
            )


@rule(id="server.notls-no-tls-reqd")
def notls_no_tls_reqd(view: SessionView) -> Iterator[Hit]:
    """A server that refused STARTTLS (NOTLS) never answers NBD_REP_ERR_TLS_REQD afterwards."""
    refusals = [
        e.final_position
        for e in _starttls_exchanges(view)
        if e.final_type in _NOTLS_ANSWERS and e.final_position is not None
    ]
    if not refusals:
        return
    for exchange, reply in _tls_required_replies(view):
        if view.position(reply) > min(refusals):
            yield Hit(
                reply,
                f"NBD_REP_ERR_TLS_REQD to {exchange.option.name} from a server "
                "that refused NBD_OPT_STARTTLS (NOTLS mode)",
            )


@rule(id="server.starttls-ack-when-tls-required")
def starttls_ack_when_tls_required(view: SessionView) -> Iterator[Hit]:
    """A server that answered NBD_REP_ERR_TLS_REQD (so FORCEDTLS or SELECTIVETLS) accepts
    NBD_OPT_STARTTLS."""
    demanded = [view.position(reply) for _exchange, reply in _tls_required_replies(view)]
    if not demanded:
        return
    for exchange in _starttls_exchanges(view):
        if (
            exchange.position > min(demanded)
            and not exchange.before.tls
            and exchange.final is not None
            and not exchange.succeeded
            and exchange.final_type != c.Rep.ERR_SHUTDOWN
        ):
            yield Hit(
                exchange.final,
                f"NBD_OPT_STARTTLS refused with {exchange.final.name} by a "
                "server that demanded TLS",
            )


@rule(id="server.forcedtls-errors-options")
def forcedtls_errors_options(view: SessionView) -> Iterator[Hit]:
    """A FORCEDTLS server (it demanded TLS for an option other than INFO/GO) errors every
    option but STARTTLS and ABORT with NBD_REP_ERR_TLS_REQD until TLS is up."""
    forced = any(
        exchange.code not in (c.Opt.INFO, c.Opt.GO, c.Opt.EXPORT_NAME)
        for exchange, _reply in _tls_required_replies(view)
    )
    if not forced:
        return
    for exchange in view.options:
        if exchange.code in (c.Opt.STARTTLS, c.Opt.ABORT, c.Opt.EXPORT_NAME) or exchange.before.tls:
            continue
        final = exchange.final
        if final is not None and exchange.final_type not in (
            c.Rep.ERR_TLS_REQD,
            c.Rep.ERR_SHUTDOWN,
        ):
            yield Hit(
                final,
                f"{exchange.option.name} answered with {final.name} before TLS by a "
                "server in FORCEDTLS mode",
            )


@rule(id="server.starttls-reply")
def starttls_reply(view: SessionView) -> Iterator[Hit]:
    """NBD_OPT_STARTTLS gets NBD_REP_ACK or an error, nothing else (and an answer at all)."""
    for exchange in _starttls_exchanges(view):
        for reply in exchange.replies:
            rep = reply_type(reply)
            if rep != c.Rep.ACK and not c.is_rep_error(rep):
                yield Hit(reply, f"{reply.name} in reply to NBD_OPT_STARTTLS")
    yield from unanswered_options(view, (c.Opt.STARTTLS,))


@rule(id="client.defer-stateful-options")
def defer_stateful_options(view: SessionView) -> Iterator[Hit]:
    """A client that goes for TLS sends no stateful option (structured replies, extended
    headers, metadata contexts) before NBD_OPT_STARTTLS."""
    starttls = _starttls_exchanges(view)
    if not starttls:
        return
    for exchange in view.options:
        if exchange.position < starttls[0].position and exchange.code in _STATEFUL_OPTIONS:
            yield Hit(
                exchange.option,
                f"{exchange.option.name} sent before NBD_OPT_STARTTLS; "
                "its effect is lost if TLS starts",
            )


@rule(id="client.tls-after-starttls-ack")
def tls_after_starttls_ack(view: SessionView) -> Iterator[Hit]:
    """After NBD_REP_ACK to STARTTLS the client's next bytes are a TLS handshake record."""
    for exchange in _starttls_exchanges(view):
        if not exchange.succeeded:
            continue
        first = _first_tls(view, exchange.option, CLIENT)
        if first is not None and not _looks_like_tls(first.wire, handshake=True):
            yield Hit(
                first,
                f"the client's bytes after NBD_REP_ACK to NBD_OPT_STARTTLS are "
                f"not a TLS handshake (they start {first.wire[:8].hex()})",
            )


@rule(id="server.tls-after-starttls-ack")
def server_tls_after_starttls_ack(view: SessionView) -> Iterator[Hit]:
    """After its NBD_REP_ACK to STARTTLS the server's next bytes are TLS records."""
    for exchange in _starttls_exchanges(view):
        if not exchange.succeeded or exchange.final is None:
            continue
        first = _first_tls(view, exchange.final, SERVER)
        if first is not None and not _looks_like_tls(first.wire, handshake=False):
            yield Hit(
                first,
                f"the server's bytes after its NBD_REP_ACK to NBD_OPT_STARTTLS "
                f"are not TLS records (they start {first.wire[:8].hex()})",
            )
