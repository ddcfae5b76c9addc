"""Rules over the session as a whole: answers that never came, and closes that should not be.

Sections "Termination of the session during option haggling", "Terminating the
transmission phase", "Simple reply message" and "Request types".  These rules read
how the capture ends (:attr:`harness.dissect.model.Session.ends`: the first FIN or
RST of each direction, with its time) besides the messages:

- a message is *unanswered* when no (final) reply came and the capture shows the
  server will send none: the server closed the connection, or the client waited
  :data:`PATIENCE` seconds in silence and then closed it.  A capture that stops
  with the connection still open proves nothing and gives no finding;
- a close is a *hard disconnect* when the party that closed first did so without
  the soft disconnect (``NBD_OPT_ABORT``, ``NBD_CMD_DISC``).  The spec lets either
  party hard-disconnect once the other broke a mandatory rule, so these rules first
  ask which MUST-level rules the other party broke before the close
  (:func:`harness.conformance._silence.breached_before`), and give no finding when it
  did.
"""

from __future__ import annotations

from collections.abc import Iterator

from harness.conformance._rule import Hit, rule
from harness.conformance._silence import (
    PATIENCE,
    breached_before,
    out_of_frame,
    sent,
    server_errors,
    silence,
)
from harness.conformance._view import SessionView, Transaction
from harness.dissect.model import CLIENT, SERVER, StreamEnd
from harness.protocol import constants as c


def _unanswered(view: SessionView) -> Iterator[tuple[Transaction, str]]:
    for transaction in view.transactions:
        if transaction.replies or transaction.command == c.Cmd.DISC:
            continue
        why = silence(view, transaction.request)
        if why is not None:
            yield transaction, why


def _structured(view: SessionView) -> bool:
    negotiated = view.transmission.negotiated
    return negotiated.structured_replies or negotiated.extended_headers


@rule(id="server.read-answered")
def read_answered(view: SessionView) -> Iterator[Hit]:
    """Every NBD_CMD_READ gets a reply before the connection ends."""
    for transaction, why in _unanswered(view):
        if transaction.command == c.Cmd.READ:
            yield Hit(transaction.request, f"NBD_CMD_READ never answered: {why}")


@rule(id="server.simple-reply-to-all")
def simple_reply_to_all(view: SessionView) -> Iterator[Hit]:
    """Without structured replies, every request but NBD_CMD_DISC gets a simple reply
    (NBD_CMD_READ: see server.read-answered)."""
    if _structured(view):
        return
    for transaction, why in _unanswered(view):
        if transaction.command != c.Cmd.READ:
            yield Hit(transaction.request, f"{transaction.name} never answered: {why}")


@rule(id="server.simple-read-data-length")
def simple_read_data_length(view: SessionView) -> Iterator[Hit]:
    """A simple reply to NBD_CMD_READ is not cut short while the connection stays open.

    The decoder reads a simple reply to a READ as header plus *length* bytes; when the
    server's last bytes are such a reply cut short and the server did not close the
    connection itself (the spec's answer to an error found after the header was sent
    is a hard disconnect), the data was short.
    """
    if _structured(view) or view.session.phase == "tls":
        return
    first = view.closed_first
    if first is None or first.direction == SERVER:
        return
    for region in view.undecoded(SERVER):
        if region.kind != "incomplete" or region.expected != "reply":
            continue
        reads = [
            t for t in view.transactions
            if t.command == c.Cmd.READ and not t.replies and t.request.frame <= region.frame
        ]
        if reads and first.time - reads[0].request.time >= PATIENCE:
            yield Hit(
                region,
                f"the simple reply to NBD_CMD_READ of {reads[0].length} bytes (frame "
                f"{reads[0].request.frame}) stops after {region.length} bytes of header and "
                f"data, and the server keeps the connection open until the client closes it "
                f"(frame {first.frame})",
            )
    # The resynchronising decoder reads such a reply as far as it goes (``missing`` bytes).
    for transaction in view.transactions:
        if transaction.command != c.Cmd.READ:
            continue
        for reply in transaction.replies:
            if reply.truncated and first.time - transaction.request.time >= PATIENCE:
                yield Hit(
                    reply,
                    f"the simple reply to NBD_CMD_READ of {transaction.length} bytes (frame "
                    f"{transaction.request.frame}) lacks {reply.missing} bytes of data, and the "
                    f"server keeps the connection open until the client closes it (frame "
                    f"{first.frame})",
                )


# --- closes ------------------------------------------------------------------------------------


def _entered_before(view: SessionView, end: StreamEnd) -> bool:
    """The session was in the transmission phase when ``end`` came."""
    entered = view.transmission.entered_by
    return entered is not None and entered.last_frame <= end.frame


def _in_option_haggling(view: SessionView, end: StreamEnd) -> bool:
    """``end`` came during fixed newstyle option haggling, after the client flags."""
    return (
        view.session.phase not in ("tls", "not-nbd")
        and view.fixed_newstyle
        and view.client_flags is not None
        and view.client_flags.frame <= end.frame
        and not _entered_before(view, end)
    )


@rule(id="server.no-hard-disconnect-in-options")
def no_hard_disconnect_in_options(view: SessionView) -> Iterator[Hit]:
    """During option haggling the server closes only where the spec lets it.

    Not judged: a close after NBD_OPT_ABORT (soft disconnect), after NBD_OPT_EXPORT_NAME
    (the server must close when it cannot satisfy it), after NBD_REP_ERR_SHUTDOWN (a
    server shutting down), or after the client broke a MUST-level rule.
    """
    first = view.closed_first
    if first is None or first.direction != SERVER or not _in_option_haggling(view, first):
        return
    if out_of_frame(view, first):
        return
    if sent(view, "option", c.Opt.ABORT, first.frame):
        return
    if sent(view, "option", c.Opt.EXPORT_NAME, first.frame):
        return
    if server_errors(view, c.Rep.ERR_SHUTDOWN) or breached_before(view, CLIENT, first.frame):
        return
    last = [m for m in view.messages_from(CLIENT) if m.frame <= first.frame][-1]
    yield Hit(
        first,
        f"the server closed the connection during option haggling, after {last.name} "
        f"(frame {last.frame}), instead of answering (or erroring) the client's options",
    )


@rule(id="server.no-hard-disconnect-in-transmission")
def no_hard_disconnect_in_transmission(view: SessionView) -> Iterator[Hit]:
    """In transmission the server does not close with requests in flight, unasked.

    A server that closes with nothing in flight may be shutting down (the spec lets it
    hard-disconnect then), so only a close with requests still unanswered is judged; not
    after NBD_CMD_DISC, after an NBD_ESHUTDOWN error, or after the client broke a
    MUST-level rule.
    """
    first = view.closed_first
    if first is None or first.direction != SERVER or view.session.phase == "tls":
        return
    if not _entered_before(view, first) or sent(view, "request", c.Cmd.DISC, first.frame):
        return
    if out_of_frame(view, first) or server_errors(view, c.Errno.ESHUTDOWN):
        return
    if breached_before(view, CLIENT, first.frame):
        return
    waiting = [
        t for t in view.transactions
        if t.command != c.Cmd.DISC and not t.complete and t.request.frame <= first.frame
    ]
    if waiting:
        names = ", ".join(f"{t.name} (frame {t.request.frame})" for t in waiting[:3])
        yield Hit(first, f"the server closed the connection with {names} unanswered")


@rule(id="client.abort-before-close")
def abort_before_close(view: SessionView) -> Iterator[Hit]:
    """A client ending option haggling sends NBD_OPT_ABORT rather than closing.

    Not judged: after the server broke a MUST-level rule, after NBD_REP_ERR_SHUTDOWN
    (client.soft-disconnect-on-err-shutdown), after NBD_OPT_EXPORT_NAME (the server
    answers it by entering transmission or closing), or after NBD_OPT_STARTTLS (a failed
    TLS negotiation ends with a hard disconnect).
    """
    first = view.closed_first
    if first is None or first.direction != CLIENT or not _in_option_haggling(view, first):
        return
    if out_of_frame(view, first):
        return
    for code in (c.Opt.ABORT, c.Opt.EXPORT_NAME, c.Opt.STARTTLS):
        if sent(view, "option", code, first.frame):
            return
    if server_errors(view, c.Rep.ERR_SHUTDOWN) or breached_before(view, SERVER, first.frame):
        return
    yield Hit(first, "the client closed the connection during option haggling without "
                     "NBD_OPT_ABORT")


@rule(id="client.disc-before-close")
def disc_before_close(view: SessionView) -> Iterator[Hit]:
    """A client ending transmission sends NBD_CMD_DISC rather than closing.

    Not judged: after the server broke a MUST-level rule (or never answered a request:
    server.read-answered), or after an NBD_ESHUTDOWN error
    (client.soft-disconnect-on-eshutdown).
    """
    first = view.closed_first
    if first is None or first.direction != CLIENT or view.session.phase == "tls":
        return
    if not _entered_before(view, first) or sent(view, "request", c.Cmd.DISC, first.frame):
        return
    if out_of_frame(view, first) or server_errors(view, c.Errno.ESHUTDOWN):
        return
    if breached_before(view, SERVER, first.frame):
        return
    yield Hit(first, "the client closed the connection in transmission without NBD_CMD_DISC")
