"""What the session-level rules share: when silence means "never answered", and whether a
party broke a mandatory rule before a close (see :mod:`harness.conformance.rules_session`).

Kept apart from the rule modules so that rules about single options can ask about
silence too (``server.list-replies``: an NBD_OPT_LIST never answered) without importing
another module's rules.
"""

from __future__ import annotations

from collections.abc import Iterator

from harness.conformance._rule import REGISTRY, Hit
from harness.conformance._view import SessionView, reply_error
from harness.dissect.model import CLIENT, SERVER, StreamEnd, WireMessage
from harness.protocol import constants as c

PATIENCE = 1.0
"""Seconds of silence after a message, before the client closes, that show the server
was never going to answer it (a healthy peer answers in milliseconds; the fault
captures wait about 2-4 s before giving up)."""

CLOSE_RULES = frozenset(
    {
        "server.no-hard-disconnect-in-options",
        "server.no-hard-disconnect-in-transmission",
        "client.abort-before-close",
        "client.disc-before-close",
    }
)
"""The rules that judge a close by asking what the other party broke first (so they are
left out of that question: no rule asks about itself)."""


def breached_before(view: SessionView, party: str, frame: int) -> bool:
    """``party`` broke a MUST-level rule (or sent bytes that cannot be read as NBD) at or
    before ``frame``: the other party may then hard-disconnect, or stop answering."""
    key = f"mandatory-breach-frames:{party}"
    frames = view.memo.get(key)
    if frames is None:
        found = [u.frame for u in view.undecoded(party) if u.kind != "after-gap"]
        found += [m.frame for m in view.truncated(party)]
        for item in REGISTRY.values():
            if item.role != party or item.id in CLOSE_RULES or not item.mandatory:
                continue
            if view.midstream and not item.midstream:
                continue
            found.extend(f.frame for f in item.check(view))
        frames = view.memo[key] = sorted(found)
    return bool(frames) and frames[0] <= frame  # type: ignore[index]


def out_of_frame(view: SessionView, end: StreamEnd) -> bool:
    """The closing party's own stream stopped making sense before its close (bytes that do
    not decode as NBD, or a message cut short: its reader takes what follows as the rest):
    no soft disconnect it sent could have been read as one, and the broken message is
    judged where it is."""
    if any(m.frame <= end.frame for m in view.truncated(end.direction)):
        return True
    return any(
        u.kind != "after-gap" and u.frame <= end.frame for u in view.undecoded(end.direction)
    )


def sent(view: SessionView, kind: str, code: int, before: int) -> bool:
    """The client sent an option (``kind="option"``) or request with number ``code`` in a
    frame before ``before``."""
    if kind == "request":
        return any(t.request.frame <= before for t in view.transactions_of(code))
    return any(
        m.direction == CLIENT and m.fields.get("option") == code and m.frame <= before
        for m in view.messages_of(kind)
    )


def server_errors(view: SessionView, error: int) -> bool:
    """The server answered some request with ``error`` (or some option with it, for the
    ``NBD_REP_ERR_*`` values)."""
    if any(reply_error(r) == error for t in view.transactions if t.error for r in t.replies):
        return True
    return any(
        int(r.fields.get("reply_type", 0)) == error for o in view.options for r in o.replies
    )


def silence(view: SessionView, message: WireMessage) -> str | None:
    """How the capture shows that the server will never answer ``message`` (a client
    option or request that has no final reply): ``None`` when it does not show it.

    The server must have sent nothing unreadable or cut short after it (such a reply is
    judged by what it holds, not as silence), the client must not have ended the session
    itself first (``NBD_OPT_ABORT``, ``NBD_CMD_DISC``) nor broken a MUST-level rule (the
    server may then stop), and the connection must have closed: by the server, or by the
    client after :data:`PATIENCE` seconds.
    """
    first = view.closed_first
    if first is None or view.session.phase == "tls":
        return None
    if any(u.frame >= message.frame for u in view.undecoded(SERVER)):
        return None
    if any(m.frame >= message.frame for m in view.truncated(SERVER)):
        return None  # an answer cut short is an answer, judged by the rules for what it holds
    if sent(view, "option", c.Opt.ABORT, first.frame) or sent(
        view, "request", c.Cmd.DISC, first.frame
    ):
        return None
    if breached_before(view, CLIENT, first.frame):
        return None
    if first.direction == SERVER:
        return f"the server closed the connection (frame {first.frame}) without answering"
    waited = first.time - message.time
    if waited < PATIENCE:
        return None
    return (
        f"no answer in the {waited:.1f} s before the client closed the connection "
        f"(frame {first.frame})"
    )


def unanswered_options(view: SessionView, codes: tuple[int, ...]) -> Iterator[Hit]:
    """A hit for each option of ``codes`` that never got a final reply (see
    :func:`silence`): for the rules that say how the server answers each option."""
    for exchange in view.options:
        if exchange.code in codes and exchange.final is None:
            why = silence(view, exchange.option)
            if why is not None:
                yield Hit(exchange.option, f"{exchange.option.name} never answered: {why}")
