"""The sans-IO NBD connection: bytes in, events out; events in, bytes out.

One :class:`Connection` per end of a session, in the style of h11: feed what
arrives with :meth:`Connection.receive_data`, pull messages with
:meth:`Connection.next_event`, and turn what you want to say into bytes with
:meth:`Connection.send`.  Three tables hold the machine: whose turn it is
(:data:`TURNS`), how the next message is read (:data:`READERS`) and where each
message leads (:data:`TRANSITIONS`); what a message settles in the negotiated
state lives in ``_record``; what each message must respect lives in
:mod:`._checks`, which judges both sides alike.

A strict client raises :class:`RemoteProtocolError` on the first rule the
server breaks.  A server sets ``strict_remote=False``: a client's violation is
then recorded on :attr:`Connection.violations` (and returned with the
event), so the server can answer it as the spec says (an
``NBD_REP_ERR_INVALID``, an ``NBD_EINVAL`` reply) and stay in sync.
``strict_local=False`` lets a test send what the spec forbids.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from . import _checks
from . import constants as c
from .codec import (
    decode_client_flags,
    decode_export_name_reply,
    decode_greeting,
    decode_option_payload,
    decode_option_reply,
    decode_option_request,
    decode_reply,
    decode_reply_payload,
    decode_request,
    encode,
)
from .errors import CodecError, LocalProtocolError, ProtocolError, RemoteProtocolError
from .messages import (
    ChunkBlockStatus,
    ChunkError,
    ChunkErrorOffset,
    ChunkOffsetData,
    ChunkOffsetHole,
    ClientFlags,
    ConnectionClosed,
    Event,
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
    ReplyChunk,
    Request,
    SimpleReply,
)
from .rules import CITATIONS
from .state import InFlight, Negotiated, PendingOption, Phase, Role, Violation


class _NeedData:
    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA: Final = _NeedData()
"""Returned by :meth:`Connection.next_event` when more bytes are needed."""

TURNS: dict[Phase, dict[Role, tuple[type, ...]]] = {
    Phase.GREETING: {Role.SERVER: (OldstyleGreeting, NewstyleGreeting)},
    Phase.CLIENT_FLAGS: {Role.CLIENT: (ClientFlags,)},
    Phase.OPTIONS: {Role.CLIENT: (OptionRequest,)},
    Phase.OPTION_REPLY: {Role.SERVER: (OptionReply,)},
    Phase.EXPORT_NAME_REPLY: {Role.SERVER: (ExportNameReply,)},
    Phase.TRANSMISSION: {Role.CLIENT: (Request,), Role.SERVER: (SimpleReply, ReplyChunk)},
    Phase.DISCONNECTING: {Role.SERVER: (SimpleReply, ReplyChunk)},
}
"""Which side may send which messages in each phase."""


# --- transitions ------------------------------------------------------------------
# What each in-turn message does to the phase.  A value is the next phase, or a small
# function of the connection (before the message's effects are applied) and the message
# for the few transitions that depend on what the message says.


def _after_option(conn: Connection, event: OptionRequest) -> Phase:
    """NBD_OPT_EXPORT_NAME has its own reply; every other option gets option replies."""
    return Phase.EXPORT_NAME_REPLY if event.option == c.Opt.EXPORT_NAME else Phase.OPTION_REPLY


def _after_option_reply(conn: Connection, event: OptionReply) -> Phase:
    """An ACK or error ends the option; what it ended decides where the session goes."""
    if event.reply_type != c.Rep.ACK and not c.is_rep_error(event.reply_type):
        return Phase.OPTION_REPLY
    assert conn.pending_option is not None
    option = conn.pending_option.option
    if option == c.Opt.ABORT:
        return Phase.CLOSED
    if event.reply_type == c.Rep.ACK:
        return _ACKED_OPTION_PHASE.get(option, Phase.OPTIONS)
    return Phase.OPTIONS


_ACKED_OPTION_PHASE: dict[int, Phase] = {
    c.Opt.STARTTLS: Phase.TLS_HANDSHAKE,
    c.Opt.GO: Phase.TRANSMISSION,
}
"""Options whose ACK leaves the option haggling (any other final reply returns to it)."""


def _after_request(conn: Connection, event: Request) -> Phase:
    """NBD_CMD_DISC: the server answers what is outstanding, then the session closes."""
    if event.type != c.Cmd.DISC:
        return Phase.TRANSMISSION
    return Phase.DISCONNECTING if conn.in_flight else Phase.CLOSED


def _after_reply_to_disc(conn: Connection, event: SimpleReply | ReplyChunk) -> Phase:
    """After NBD_CMD_DISC the last outstanding reply closes the session."""
    finished = {event.cookie} if isinstance(event, SimpleReply) or event.done else set()
    return Phase.CLOSED if conn.in_flight.keys() <= finished else Phase.DISCONNECTING


Transition = Phase | Callable[["Connection", Any], Phase]

TRANSITIONS: dict[Phase, dict[type, Transition]] = {
    Phase.GREETING: {
        OldstyleGreeting: Phase.TRANSMISSION,
        NewstyleGreeting: Phase.CLIENT_FLAGS,
    },
    Phase.CLIENT_FLAGS: {ClientFlags: Phase.OPTIONS},
    Phase.OPTIONS: {OptionRequest: _after_option},
    Phase.OPTION_REPLY: {OptionReply: _after_option_reply},
    Phase.EXPORT_NAME_REPLY: {ExportNameReply: Phase.TRANSMISSION},
    Phase.TRANSMISSION: {
        Request: _after_request,
        SimpleReply: Phase.TRANSMISSION,
        ReplyChunk: Phase.TRANSMISSION,
    },
    Phase.DISCONNECTING: {SimpleReply: _after_reply_to_disc, ReplyChunk: _after_reply_to_disc},
}
"""Phase -> message type -> next phase.  A message sent out of turn (only a lenient side
lets one through) has its effects but leaves the phase alone.  The TLS handshake ends
with :meth:`Connection.start_tls_done`, the end of the stream with ``ConnectionClosed``."""

# --- readers ----------------------------------------------------------------------
# How to cut the next message from the bytes, by phase and by the side that sends.

Reader = Callable[["Connection", bytearray], "tuple[Event, int] | None"]


def _read_greeting(conn: Connection, buf: bytearray) -> tuple[Event, int] | None:
    return decode_greeting(buf)


def _read_client_flags(conn: Connection, buf: bytearray) -> tuple[Event, int] | None:
    return decode_client_flags(buf)


def _read_option(conn: Connection, buf: bytearray) -> tuple[Event, int] | None:
    return decode_option_request(buf)


def _read_option_reply(conn: Connection, buf: bytearray) -> tuple[Event, int] | None:
    return decode_option_reply(buf)


def _read_export_name_reply(conn: Connection, buf: bytearray) -> tuple[Event, int] | None:
    return decode_export_name_reply(buf, zeroes=not conn.negotiated.no_zeroes)


def _read_request(conn: Connection, buf: bytearray) -> tuple[Event, int] | None:
    return decode_request(buf, conn.max_payload)


def _read_reply(conn: Connection, buf: bytearray) -> tuple[Event, int] | None:
    return decode_reply(buf, conn._read_length, conn.max_payload)


READERS: dict[Phase, dict[Role, Reader]] = {
    Phase.GREETING: {Role.SERVER: _read_greeting},
    Phase.CLIENT_FLAGS: {Role.CLIENT: _read_client_flags},
    Phase.OPTIONS: {Role.CLIENT: _read_option},
    Phase.OPTION_REPLY: {Role.SERVER: _read_option_reply},
    Phase.EXPORT_NAME_REPLY: {Role.SERVER: _read_export_name_reply},
    Phase.TRANSMISSION: {Role.CLIENT: _read_request, Role.SERVER: _read_reply},
    Phase.DISCONNECTING: {Role.SERVER: _read_reply},
}
"""Phase -> sending side -> the decoder of its next message (the same turns as TURNS)."""

OUT_OF_TURN: dict[tuple[Phase, Role], str] = {
    # A side that may not speak at all in this phase.
    (Phase.CLIENT_FLAGS, Role.SERVER): "server.option-reply-answers-option",
    (Phase.OPTIONS, Role.SERVER): "server.option-reply-answers-option",
    (Phase.OPTION_REPLY, Role.CLIENT): "client.no-option-before-final-reply",
    (Phase.EXPORT_NAME_REPLY, Role.CLIENT): "client.no-option-before-final-reply",
    (Phase.TLS_HANDSHAKE, Role.CLIENT): "client.tls-after-starttls-ack",
    (Phase.TLS_HANDSHAKE, Role.SERVER): "server.tls-after-starttls-ack",
    (Phase.DISCONNECTING, Role.CLIENT): "client.nothing-after-disc",
    (Phase.CLOSED, Role.CLIENT): "client.nothing-after-disc",
    (Phase.CLOSED, Role.SERVER): "server.no-reply-to-disc",
    # A side whose turn it is, sending another message than the phase expects.
    (Phase.GREETING, Role.SERVER): "server.greeting-magic",
    (Phase.CLIENT_FLAGS, Role.CLIENT): "client.client-flags-known",
    (Phase.OPTIONS, Role.CLIENT): "client.option-magic",
    (Phase.OPTION_REPLY, Role.SERVER): "server.option-reply-magic",
    (Phase.EXPORT_NAME_REPLY, Role.SERVER): "server.export-name-no-option-reply",
    (Phase.TRANSMISSION, Role.CLIENT): "client.request-magic",
    (Phase.TRANSMISSION, Role.SERVER): "server.reply-magic",
    (Phase.DISCONNECTING, Role.SERVER): "server.reply-magic",
}
"""The rule a side breaks by sending out of turn, by phase.  A client that speaks before
the server's greeting breaks no one sentence of the spec: its violation has no id."""


class Connection:
    """One end of an NBD session, as a state machine with no I/O."""

    def __init__(
        self,
        our_role: Role,
        *,
        strict_remote: bool = True,
        strict_local: bool = True,
        max_payload: int = 0xFFFFFFFF,
    ) -> None:
        self.our_role = our_role
        self.their_role = our_role.peer
        self.strict_remote = strict_remote
        self.strict_local = strict_local
        self.max_payload = max_payload
        self.phase = Phase.GREETING
        self.negotiated = Negotiated()
        self.pending_option: PendingOption | None = None
        self.in_flight: dict[int, InFlight] = {}
        self.answered: set[int] = set()
        """Cookies whose reply is complete (and not reused by a request since)."""
        self.violations: list[tuple[Role, Violation]] = []
        """Every rule broken so far and by whom (only when not raised)."""
        self.last_violations: list[Violation] = []
        """Rules broken by the last event received or sent."""
        self._buffer = bytearray()
        self._eof = False

    # --- input ------------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Feed bytes from the peer; ``b""`` means the peer closed its side."""
        if data:
            self._buffer += data
        else:
            self._eof = True

    @property
    def buffered(self) -> int:
        """Bytes received but not yet decoded."""
        return len(self._buffer)

    def next_event(self) -> Event | _NeedData:
        """The next message from the peer, :data:`NEED_DATA`, or ``ConnectionClosed``."""
        try:
            decoded = self._decode_next()
        except CodecError as exc:
            raise RemoteProtocolError(
                str(exc.message), section=exc.section, rule=exc.rule
            ) from None
        if decoded is None:
            if self._eof:
                if self._buffer:
                    raise RemoteProtocolError(
                        f"connection closed with {len(self._buffer)} bytes of an incomplete "
                        f"message ({self.phase.value})",
                        section="Transmission",
                    )
                self.phase = Phase.CLOSED
                return ConnectionClosed()
            return NEED_DATA
        event, used = decoded
        del self._buffer[:used]
        self._process(self.their_role, event)
        return event

    def _decode_next(self) -> tuple[Event, int] | None:
        buf = self._buffer
        if not buf:
            return None
        reader = READERS.get(self.phase, {}).get(self.their_role)
        if reader is None:
            raise CodecError(
                f"{self.their_role.value} sent {len(buf)} bytes while it is not its "
                f"turn ({self.phase.value})",
                rule=OUT_OF_TURN.get((self.phase, self.their_role), ""),
            )
        return reader(self, buf)

    def _read_length(self, cookie: int) -> int | None:
        flight = self.in_flight.get(cookie)
        if flight is not None and flight.request.type == c.Cmd.READ:
            return flight.request.length
        return None

    # --- output -----------------------------------------------------------------

    def send(self, event: Event) -> bytes:
        """Bytes for ``event``, after checking it is ours to send at this point."""
        self._process(self.our_role, event)
        return encode(event)

    def start_tls_done(self) -> None:
        """The TLS handshake after ``NBD_OPT_STARTTLS`` finished: options resume."""
        if self.phase is not Phase.TLS_HANDSHAKE:
            raise LocalProtocolError(f"no STARTTLS in progress ({self.phase.value})")
        self.negotiated.tls = True
        self.phase = Phase.OPTIONS

    # --- judging and applying ------------------------------------------------------

    def _process(self, sender: Role, event: Event) -> None:
        violations = self._judge(sender, event)
        self.last_violations = violations
        if violations:
            strict = self.strict_local if sender is self.our_role else self.strict_remote
            if strict:
                first = violations[0]
                error = LocalProtocolError if sender is self.our_role else RemoteProtocolError
                raise error(first.message, section=first.section, rule=first.rule)
            self.violations += [(sender, v) for v in violations]
        self._apply(sender, event)

    def _judge(self, sender: Role, event: Event) -> list[Violation]:
        allowed = TURNS.get(self.phase, {}).get(sender, ())
        if not isinstance(event, allowed):
            rule = OUT_OF_TURN.get((self.phase, sender), "")
            return [
                Violation(
                    f"{sender.value} may not send {type(event).__name__} now ({self.phase.value})",
                    CITATIONS[rule].section if rule else "",
                    rule,
                )
            ]
        neg = self.negotiated
        match event:
            case OldstyleGreeting(flags=flags):
                return _checks.check_transmission_flags(flags & 0xFFFF, neg, "oldstyle greeting")
            case ClientFlags():
                return _checks.check_client_flags(event, neg)
            case OptionRequest(option=option, data=data):
                payload, error = _parse_option(option, data)
                return _checks.check_option(option, payload, error, neg)
            case OptionReply(reply_type=rtype, data=data):
                assert self.pending_option is not None
                payload, error = _parse_reply(rtype, data)
                return _checks.check_option_reply(event, payload, error, self.pending_option, neg)
            case ExportNameReply(transmission_flags=flags, zeroes=zeroes):
                out = _checks.check_transmission_flags(flags, neg, "export-name reply")
                if zeroes == neg.no_zeroes:
                    out.append(_checks.zeroes_violation(zeroes))
                return out
            case Request():
                return _checks.check_request(event, neg)
            case SimpleReply():
                return _checks.check_simple_reply(event, neg, self.in_flight)
            case ReplyChunk():
                payload, error = _checks.decode_chunk(event)
                return _checks.check_chunk(
                    event, payload, error, neg, self.in_flight, self.answered
                )
        return []

    def _apply(self, sender: Role, event: Event) -> None:
        """Move to the next phase (:data:`TRANSITIONS`) and record what ``event`` settled."""
        next_phase = TRANSITIONS.get(self.phase, {}).get(type(event), self.phase)
        if not isinstance(next_phase, Phase):
            next_phase = next_phase(self, event)
        self._record(event)
        self.phase = next_phase

    def _record(self, event: Event) -> None:
        """What ``event`` settles in :attr:`negotiated`, the pending option, the requests."""
        neg = self.negotiated
        match event:
            case NewstyleGreeting(handshake_flags=flags):
                neg.handshake_flags = flags
                neg.style = (
                    "fixed-newstyle" if flags & c.HandshakeFlag.FIXED_NEWSTYLE else "newstyle"
                )
            case OldstyleGreeting(size=size, flags=flags):
                neg.style = "oldstyle"
                neg.export_size, neg.transmission_flags = size, flags & 0xFFFF
            case ClientFlags(flags=flags):
                neg.client_flags = flags
            case OptionRequest(option=option, data=data):
                payload, _ = _parse_option(option, data)
                if option == c.Opt.EXPORT_NAME:
                    neg.export_name = payload.name if isinstance(payload, ExportNamePayload) else ""
                else:
                    self.pending_option = PendingOption(option, payload)
            case OptionReply():
                self._record_option_reply(event)
            case ExportNameReply(size=size, transmission_flags=flags):
                neg.export_size, neg.transmission_flags = size, flags
            case Request():
                self._record_request(event)
            case SimpleReply(cookie=cookie):
                if self.in_flight.pop(cookie, None) is not None:
                    self.answered.add(cookie)
            case ReplyChunk():
                self._record_chunk(event)

    def _record_option_reply(self, reply: OptionReply) -> None:
        pending = self.pending_option
        assert pending is not None
        neg = self.negotiated
        payload, _ = _parse_reply(reply.reply_type, reply.data)
        pending.replies += 1
        if reply.reply_type == c.Rep.INFO and not isinstance(payload, RawPayload):
            pending.infos[_info_type(payload)] = payload
        if isinstance(payload, MetaContextReplyPayload):
            pending.contexts[payload.context_id] = payload.name
        final = reply.reply_type == c.Rep.ACK or c.is_rep_error(reply.reply_type)
        if not final:
            return
        self.pending_option = None
        ok = reply.reply_type == c.Rep.ACK
        match pending.option:
            case c.Opt.STARTTLS if ok:
                neg.forget_after_starttls()
            case c.Opt.STRUCTURED_REPLY if ok:
                neg.structured_replies = True
            case c.Opt.EXTENDED_HEADERS if ok:
                neg.extended_headers = True
            case c.Opt.SET_META_CONTEXT:
                # "replaces all previously-set metadata contexts (including when this
                # command fails)"
                neg.meta_contexts = dict(pending.contexts) if ok else {}
                name = (
                    pending.payload.name
                    if isinstance(pending.payload, MetaContextPayload)
                    else None
                )
                neg.meta_context_export = name if ok else None
            case c.Opt.GO if ok:
                export = pending.infos.get(c.Info.EXPORT)
                if isinstance(export, InfoExport):
                    neg.export_size = export.size
                    neg.transmission_flags = export.transmission_flags
                block = pending.infos.get(c.Info.BLOCK_SIZE)
                neg.block_size = block if isinstance(block, InfoBlockSize) else None
                init = pending.infos.get(c.Info.INIT_STATE)
                neg.init_state = init.flags if isinstance(init, InfoInitState) else None
                if isinstance(pending.payload, InfoRequestPayload):
                    neg.export_name = pending.payload.name
                    neg.block_size_requested = c.Info.BLOCK_SIZE in pending.payload.info_requests

    def _record_request(self, req: Request) -> None:
        if req.type == c.Cmd.DISC:
            return
        effect, ids, _ = _checks.effect_of(req)
        if ids is None:
            ids = tuple(self.negotiated.meta_contexts)
        self.in_flight[req.cookie] = InFlight(req, effect, ids)
        self.answered.discard(req.cookie)

    def _record_chunk(self, chunk: ReplyChunk) -> None:
        flight = self.in_flight.get(chunk.cookie)
        if flight is None:
            return
        payload, _ = _checks.decode_chunk(chunk)
        flight.chunks += 1
        match payload:
            case ChunkOffsetData(offset=offset, data=data):
                flight.covered.append((offset, offset + len(data)))
                flight.data_chunks += 1
            case ChunkOffsetHole(offset=offset, length=length):
                flight.covered.append((offset, offset + length))
                flight.data_chunks += 1
            case ChunkBlockStatus(context_id=cid):
                flight.status_contexts.add(cid)
            case ChunkErrorOffset() | ChunkError():
                flight.errored = True
        if chunk.done:
            del self.in_flight[chunk.cookie]
            self.answered.add(chunk.cookie)


def _parse_option(option: int, data: bytes) -> tuple[object, CodecError | None]:
    try:
        return decode_option_payload(option, data), None
    except CodecError as exc:
        return RawPayload(data), exc


def _parse_reply(reply_type: int, data: bytes) -> tuple[object, CodecError | None]:
    try:
        return decode_reply_payload(reply_type, data), None
    except CodecError as exc:
        return RawPayload(data), exc


_INFO_TYPES: dict[type, int] = {
    InfoExport: c.Info.EXPORT,
    InfoName: c.Info.NAME,
    InfoDescription: c.Info.DESCRIPTION,
    InfoBlockSize: c.Info.BLOCK_SIZE,
    InfoInitState: c.Info.INIT_STATE,
}


def _info_type(payload: object) -> int:
    if isinstance(payload, InfoUnknown):
        return payload.info_type
    return _INFO_TYPES[type(payload)]


__all__ = ["NEED_DATA", "READERS", "TRANSITIONS", "TURNS", "Connection", "ProtocolError"]
