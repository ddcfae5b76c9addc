"""Rules of the baseline every implementation must have: fixed newstyle, INFO/GO, LIST.

Section "Baseline" ("The following MUST be implemented by all implementations"),
and the client's preference for ``NBD_OPT_GO`` ("Option types").  A capture shows
what a peer implements only by what it does: a server that answers a baseline
option with ``NBD_REP_ERR_UNSUP`` says it does not implement it; a client that
goes straight to ``NBD_OPT_EXPORT_NAME`` never tried ``NBD_OPT_GO``.
"""

from __future__ import annotations

from collections.abc import Iterator

from harness.conformance._rule import Hit, rule
from harness.conformance._view import SessionView, reply_type
from harness.protocol import constants as c


def _refused_as_unknown(view: SessionView, codes: tuple[int, ...]) -> Iterator[Hit]:
    """The ``NBD_REP_ERR_UNSUP`` answers to options ``codes``: the server does not
    implement them (judged only in fixed newstyle, where options are allowed at all)."""
    if not view.handshake_flags & c.HandshakeFlag.FIXED_NEWSTYLE:
        return  # a server without fixed newstyle is judged once, at its greeting
    for exchange in view.options:
        if exchange.code not in codes:
            continue
        final = exchange.final
        if final is not None and reply_type(final) == c.Rep.ERR_UNSUP:
            yield Hit(
                final,
                f"{exchange.option.name} answered with NBD_REP_ERR_UNSUP: the server does not "
                f"implement {exchange.option.name}, which every implementation must",
            )


@rule(id="server.baseline-fixed-newstyle")
def baseline_fixed_newstyle(view: SessionView) -> Iterator[Hit]:
    """A newstyle greeting sets NBD_FLAG_FIXED_NEWSTYLE (the fixed newstyle handshake is
    baseline)."""
    greeting = view.greeting
    if greeting is None or greeting.kind != "newstyle-greeting":
        return  # oldstyle is a different handshake, judged by its own rules
    if not view.handshake_flags & c.HandshakeFlag.FIXED_NEWSTYLE:
        yield Hit(
            greeting,
            f"the newstyle greeting's handshake flags {view.handshake_flags:#06x} lack "
            "NBD_FLAG_FIXED_NEWSTYLE: the server does not implement the fixed newstyle handshake",
        )


@rule(id="server.baseline-info-go")
def baseline_info_go(view: SessionView) -> Iterator[Hit]:
    """NBD_OPT_INFO and NBD_OPT_GO are never answered NBD_REP_ERR_UNSUP."""
    yield from _refused_as_unknown(view, (c.Opt.INFO, c.Opt.GO))


@rule(id="server.baseline-list")
def baseline_list(view: SessionView) -> Iterator[Hit]:
    """NBD_OPT_LIST is never answered NBD_REP_ERR_UNSUP."""
    yield from _refused_as_unknown(view, (c.Opt.LIST,))


@rule(id="client.go-in-preference")
def go_in_preference(view: SessionView) -> Iterator[Hit]:
    """In fixed newstyle, a client tries NBD_OPT_INFO or NBD_OPT_GO before NBD_OPT_EXPORT_NAME.

    A client that asked NBD_OPT_INFO first has shown it speaks the INFO/GO family: its
    later choice of EXPORT_NAME is not judged (the fallback the spec asks for looks the
    same on the wire).  A client in non-fixed newstyle has no other option to use.
    """
    if not view.fixed_newstyle:
        return
    for exchange in view.options:
        if exchange.code in (c.Opt.INFO, c.Opt.GO):
            return
        if exchange.code == c.Opt.EXPORT_NAME:
            yield Hit(
                exchange.option,
                "NBD_OPT_EXPORT_NAME sent in fixed newstyle without trying NBD_OPT_GO (or "
                "NBD_OPT_INFO) first",
            )
            return

