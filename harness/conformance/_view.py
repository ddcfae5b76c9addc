"""What the rules need to know about one session, worked out once.

The dissector hands out messages in causal order (a reply after what it
answers, even when the server answered before the request was complete) with
their request/option links.  Most rules need more context than one message:
which options were answered by which replies and what had been negotiated when
each option was sent (:class:`OptionMessages`), which replies belong to which
request and whether the reply was complete (:class:`Transaction`), and what the
session settled for the transmission phase (:class:`Transmission`).  A
:class:`SessionView` computes all that in one pass; rule functions read it.

A session can hold millions of messages and nearly two hundred rules read it, so the
per-message facts are worked out once and indexed in that pass: a transaction's header
fields and reply summary, the messages by direction and by kind, the transactions by
command, the chunks by type (:meth:`SessionView.transactions_of`,
:meth:`SessionView.chunks_of`...).  A rule about one command or one chunk type reads
those, not every message; per-message code reads ``message.fields``, not the scapy
``message.packet`` (costly to build), wherever the fields suffice.

Nothing here judges anything: a reply naming the wrong option is still filed
under the option it answers, a chunk after the final one is kept aside as
``late``, a reply nobody asked for lands in ``orphan_replies``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from functools import cache, cached_property

from scapy.fields import PacketListField
from scapy.packet import NoPayload, Packet

from harness.conformance._content import ExportContent
from harness.conformance.findings import Finding
from harness.dissect.layers import ALL_LAYERS, TextField, TextLenField, fields_of
from harness.dissect.model import CLIENT, SERVER, Session, StreamEnd, Undecoded, WireMessage
from harness.protocol import constants as c
from harness.protocol.state import Negotiated

_DATA_OPTIONS = (c.Opt.GO, c.Opt.INFO)
# Plain ints: IntFlag's own & is slow, and these are tested once per message.
_DONE = int(c.ReplyFlag.DONE)
_PAYLOAD_LEN = int(c.CmdFlag.PAYLOAD_LEN)


@dataclass
class OptionMessages:
    """The wire messages of one option exchange: the option the client sent and every
    option reply that answered it, where they sit in the session and what had been
    negotiated before.  (The exchange as plain numbers, as a client records it, is
    :class:`harness.protocol.state.OptionExchange`.)"""

    option: WireMessage
    position: int
    """Index of the option in :attr:`SessionView.messages`."""
    before: Negotiated
    """What had been negotiated when the client sent the option (``tls``,
    ``structured_replies``, ``extended_headers``; a snapshot, never changed)."""
    replies: list[WireMessage] = field(default_factory=list)
    reply_positions: list[int] = field(default_factory=list)

    @property
    def code(self) -> int:
        """The option number (``NBD_OPT_*``)."""
        return int(self.option.fields.get("option", -1))

    @property
    def final(self) -> WireMessage | None:
        """The first final reply (``NBD_REP_ACK`` or an error), if any arrived."""
        for reply in self.replies:
            if is_final_reply(reply):
                return reply
        return None

    @property
    def final_position(self) -> int | None:
        for reply, position in zip(self.replies, self.reply_positions, strict=True):
            if is_final_reply(reply):
                return position
        return None

    @property
    def final_type(self) -> int | None:
        final = self.final
        return None if final is None else reply_type(final)

    @property
    def succeeded(self) -> bool:
        return self.final_type == c.Rep.ACK

    @property
    def export_name(self) -> str | None:
        return self.option.fields.get("export_name")

    def replies_of_type(self, rep: int) -> list[WireMessage]:
        return [r for r in self.replies if reply_type(r) == rep]

    def infos(self) -> list[WireMessage]:
        """The ``NBD_REP_INFO`` replies before the final reply."""
        out = []
        for reply in self.replies:
            if is_final_reply(reply):
                break
            if reply_type(reply) == c.Rep.INFO:
                out.append(reply)
        return out


@dataclass(eq=False, slots=True)
class Transaction:
    """One request and the replies (simple, or chunks) the server sent for it.

    The request's header fields and what the replies add up to are worked out once, as
    the replies arrive (:meth:`answer`), not on every read: rules ask them of every
    transaction of a session, many times over.
    """

    request: WireMessage
    position: int
    """Index of the request in :attr:`SessionView.messages`."""
    replies: list[WireMessage] = field(default_factory=list)
    reply_positions: list[int] = field(default_factory=list)
    complete: bool = False
    """A simple reply, or a chunk with ``NBD_REPLY_FLAG_DONE``, arrived."""
    late: list[WireMessage] = field(default_factory=list)
    """Replies with this cookie after the reply was complete (and before the
    cookie was used again)."""
    chunks: list[WireMessage] = field(default_factory=list)
    """The replies that are chunks (structured or extended), in order."""
    error: int = 0
    """The first error value among the replies (0 when none; -1 for an error chunk
    whose error field is 0)."""
    completed_at: int | None = None
    """Position of the reply that completed the transaction, if any."""
    # The request's header as the dissector decoded it (every request message has its
    # whole header, whatever the dissector made of the rest): set from ``request.fields``.
    command: int = field(init=False)
    flags: int = field(init=False)
    cookie: int = field(init=False)
    offset: int = field(init=False)
    length: int = field(init=False)
    """The header's length field (payload length with ``NBD_CMD_FLAG_PAYLOAD_LEN``)."""
    extended: bool = field(init=False)
    """The request has the extended (64-bit) header."""
    payload_form: bool = field(init=False)
    """An extended request whose length counts payload bytes."""
    effect_length: int = field(init=False)
    """How much of the export the request covers (``length``, or the block
    status payload's effect length)."""

    def __post_init__(self) -> None:
        fields = self.request.fields
        self.command = int(fields.get("type", -1))
        self.flags = int(fields.get("flags", 0))
        self.cookie = int(fields.get("cookie", 0))
        self.offset = int(fields.get("offset", 0))
        self.length = int(fields.get("length", 0))
        self.extended = is_extended_request(self.request)
        self.payload_form = self.extended and bool(self.flags & _PAYLOAD_LEN)
        self.effect_length = self._effect_length()

    def _effect_length(self) -> int:
        if self.payload_form and self.command == c.Cmd.BLOCK_STATUS:
            if "effect_length" in self.request.fields:
                return int(self.request.fields["effect_length"])
            # A payload the dissector shows as raw data (not 8 bytes plus 4 per
            # context id): its first 8 bytes are still the effect length.
            data = self.request.fields.get("data") or b""
            return int.from_bytes(data[:8], "big") if len(data) >= 8 else 0
        return self.length

    def answer(self, reply: WireMessage, position: int) -> bool:
        """File ``reply`` (at ``position``) as one of this request's replies; True when it
        completes the transaction."""
        self.replies.append(reply)
        self.reply_positions.append(position)
        if reply.kind == "chunk":
            self.chunks.append(reply)
        if not self.error:
            self.error = reply_error(reply)
        if is_done(reply):
            self.complete = True
            self.completed_at = position
        return self.complete

    @property
    def name(self) -> str:
        """``NBD_CMD_READ``... (read from the header, whatever the dissector made of the rest)."""
        return c.name_of(c.Cmd, self.command)

    @property
    def errored(self) -> bool:
        """An error chunk, or a simple reply with a nonzero error."""
        return self.error != 0

    @property
    def succeeded(self) -> bool:
        """Complete and without any error."""
        return self.complete and not self.error

    def in_flight_at(self, position: int) -> bool:
        """Sent before ``position`` and not complete by then."""
        done = self.completed_at
        return self.position < position and (done is None or done > position)


@dataclass
class Transmission:
    """What the handshake settled for the transmission phase."""

    entered_by: WireMessage | None = None
    """The ``NBD_REP_ACK`` to ``NBD_OPT_GO``, the export-name reply or the
    oldstyle greeting; ``None`` when the capture never reached transmission."""
    go: OptionMessages | None = None
    export_name: str | None = None
    flags: int | None = None
    size: int | None = None
    block_size: tuple[int, int, int] | None = None
    """(minimum, preferred, maximum payload) the server advertised with GO."""
    block_size_requested: bool = False
    """The GO asked for ``NBD_INFO_BLOCK_SIZE``: the client must abide by it."""
    negotiated: Negotiated = field(default_factory=Negotiated)
    contexts: dict[int, str] = field(default_factory=dict)
    """Metadata contexts the last ``NBD_OPT_SET_META_CONTEXT`` selected (if it succeeded)."""
    contexts_exchange: OptionMessages | None = None
    """That last ``NBD_OPT_SET_META_CONTEXT`` (after any STARTTLS)."""

    def has(self, flag: int) -> bool:
        """True when the transmission flags advertise ``flag``."""
        return self.flags is not None and bool(self.flags & flag)

    @property
    def contexts_usable(self) -> bool:
        """At least one context was selected, for the export transmission uses."""
        exchange = self.contexts_exchange
        return (
            bool(self.contexts)
            and exchange is not None
            and exchange.export_name == self.export_name
        )

    @property
    def minimum_block(self) -> int:
        return self.block_size[0] if self.block_size else 1

    @property
    def maximum_payload(self) -> int | None:
        return self.block_size[2] if self.block_size else None


def is_extended_request(message: WireMessage) -> bool:
    """A request with the extended (64-bit) header."""
    return message.fields.get("magic") == c.EXTENDED_REQUEST_MAGIC


def reply_type(message: WireMessage) -> int:
    return int(message.fields.get("reply_type", 0))


def is_final_reply(message: WireMessage) -> bool:
    """``NBD_REP_ACK`` or any error reply ends an option's replies."""
    rep = reply_type(message)
    return rep == c.Rep.ACK or c.is_rep_error(rep)


def chunk_type(message: WireMessage) -> int:
    return int(message.fields.get("type", -1))


def is_done(message: WireMessage) -> bool:
    """A simple reply, or a chunk with ``NBD_REPLY_FLAG_DONE``: the reply is complete."""
    if message.kind == "simple-reply":
        return True
    return bool(int(message.fields.get("flags", 0)) & _DONE)


def reply_error(message: WireMessage) -> int:
    """The error a simple reply or an error chunk carries (0 when none)."""
    if message.kind == "simple-reply":
        return int(message.fields.get("error", 0))
    if message.kind == "chunk" and c.is_error_chunk(chunk_type(message)):
        return int(message.fields.get("error", 0)) or -1  # an error chunk is an error
    return 0


def header_length(message: WireMessage) -> int:
    """The ``length`` field of an option, option reply or chunk header."""
    return int(message.fields.get("length", 0) or 0)


def payload(message: WireMessage) -> bytes:
    """The bytes after an option, option-reply or chunk header."""
    wire = message.wire
    if message.kind == "option":
        return wire[c.OPTION_HEADER_LEN :]
    if message.kind == "option-reply":
        return wire[c.OPTION_REPLY_HEADER_LEN :]
    if message.kind == "chunk":
        extended = message.fields.get("magic") == c.EXTENDED_REPLY_MAGIC
        return wire[c.EXTENDED_REPLY_HEADER_LEN if extended else c.STRUCTURED_REPLY_HEADER_LEN :]
    return b""


def body_fields(message: WireMessage) -> dict[str, object]:
    """The decoded fields after a message's header (an option's data, an option reply's or
    a chunk's payload), ``trailing`` bytes included: equal dicts mean equal payloads."""
    return fields_of(message.packet.payload)


def _declares_text(layer: type[Packet]) -> set[str]:
    """The names under which ``layer`` puts text in a message's ``fields``: its text
    fields, and its lists of elements that hold text (as :func:`_collect_strings` finds
    them)."""
    names = set()
    for fld in layer.fields_desc:
        if isinstance(fld, TextField | TextLenField):
            names.add(fld.name)
        elif isinstance(fld, PacketListField):
            element = getattr(fld, "cls", None)
            if isinstance(element, type) and _declares_text(element):
                names.add(fld.name)
    return names


TEXT_FIELD_NAMES = frozenset(name for layer in ALL_LAYERS for name in _declares_text(layer))
"""Every field name under which some layer holds a string.  A message whose ``fields``
have none of them has no string, and :func:`strings_of` answers without its packet (the
requests and simple replies that make up most of a session)."""


@cache
def _chunk_has_text(header: type[Packet], kind: int) -> bool:
    """A chunk of type ``kind`` dissected with ``header`` has a layer that declares text (the
    header layer's own choice of payload layer, asked once per type: the decoder adds a
    ``context_name`` of its own to status chunks, so their fields alone do not tell)."""
    payload_layer = header(type=kind).guess_payload_class(b"")
    return bool(_declares_text(header) or _declares_text(payload_layer))


def strings_of(message: WireMessage) -> list[tuple[str, bytes]]:
    """Every string field of a message as raw bytes: ``[("export_name", b"disk"), ...]``.

    Strings (section "Conventions") are what the layers declare as text: export
    names, queries, context names, descriptions, error messages.  Only a message that may
    hold one has its scapy packet read.
    """
    if message.kind == "chunk":
        if not _chunk_has_text(message.layer, chunk_type(message)):
            return []
    elif TEXT_FIELD_NAMES.isdisjoint(message.fields):
        return []
    out: list[tuple[str, bytes]] = []
    _collect_strings(message.packet, out)
    return out


def _collect_strings(packet: Packet, out: list[tuple[str, bytes]]) -> None:
    layer: Packet | None = packet
    while layer is not None and not isinstance(layer, NoPayload):
        for fld in layer.fields_desc:
            if isinstance(fld, TextField | TextLenField):
                value = layer.getfieldval(fld.name)
                out.append((fld.name, bytes(value or b"")))
            elif isinstance(fld, PacketListField):
                for element in layer.getfieldval(fld.name) or []:
                    _collect_strings(element, out)
        layer = layer.payload


class SessionView:
    """One decoded session with everything the rules ask about, computed once."""

    def __init__(self, session: Session, others: Sequence[Session] = ()) -> None:
        self.session = session
        self.others = [other for other in others if other is not session]
        """The capture's other connections (they may write to the same export)."""
        self._content: ExportContent | None = None
        self.messages = list(session.messages)
        """The session's messages in causal order: every reply follows what it answers."""
        self.greeting: WireMessage | None = None
        self.client_flags: WireMessage | None = None
        self.options: list[OptionMessages] = []
        self.orphan_option_replies: list[WireMessage] = []
        self.export_name_reply: WireMessage | None = None
        self.transactions: list[Transaction] = []
        self.orphan_replies: list[WireMessage] = []
        self.transmission = Transmission()
        self.memo: dict[str, object] = {}
        """Results one rule works out and others reuse (the session-level rules ask once
        which mandatory rules each party broke)."""
        self.findings: dict[str, list[Finding]] = {}
        """The findings of every rule already run on this session, by rule id (a rule
        runs once per session, however many rules ask what it found)."""
        self._position: dict[int, int] | None = None
        self._by_direction: defaultdict[str, list[WireMessage]] = defaultdict(list)
        self._by_kind: defaultdict[str, list[WireMessage]] = defaultdict(list)
        self._by_command: dict[int, list[Transaction]] = {}
        self._by_chunk_type: dict[int, list[WireMessage]] = {}
        self._strings: dict[str, list[tuple[WireMessage, str, bytes]]] = {}
        self._truncated: dict[str, list[WireMessage]] = {}
        self._walk()

    # --- lookups ---------------------------------------------------------------

    def position(self, message: WireMessage) -> int:
        """Index of ``message`` in :attr:`messages` (causal order)."""
        if self._position is None:
            self._position = {id(m): i for i, m in enumerate(self.messages)}
        return self._position[id(message)]

    @cached_property
    def transaction_of(self) -> dict[int, Transaction]:
        """``id(reply)`` -> the transaction it belongs to (late replies included)."""
        return {
            id(reply): transaction
            for transaction in self.transactions
            for reply in (*transaction.replies, *transaction.late)
        }

    def messages_from(self, direction: str) -> Iterator[WireMessage]:
        """The messages ``direction`` sent, in causal order."""
        return iter(self._by_direction.get(direction, ()))

    def messages_of(self, kind: str) -> Sequence[WireMessage]:
        """The messages of one :attr:`~harness.dissect.model.WireMessage.kind` (``"chunk"``,
        ``"option-reply"``...), in causal order."""
        return self._by_kind.get(kind, ())

    def transactions_of(self, *commands: int) -> Sequence[Transaction]:
        """The transactions whose request has one of ``commands`` (``NBD_CMD_*``), in
        request order: rules about one command do not scan every request."""
        if len(commands) == 1:
            return self._by_command.get(commands[0], ())
        chosen = [t for command in set(commands) for t in self._by_command.get(command, ())]
        return sorted(chosen, key=lambda transaction: transaction.position)

    def chunks_of(self, *types: int) -> Sequence[WireMessage]:
        """The chunks of ``types`` (``NBD_REPLY_TYPE_*``, as :func:`chunk_type` reads them),
        in causal order: rules about one chunk type do not scan every chunk."""
        if len(types) == 1:
            return self._by_chunk_type.get(types[0], ())
        chosen = [m for kind in set(types) for m in self._by_chunk_type.get(kind, ())]
        return sorted(chosen, key=lambda chunk: chunk.offset)  # one stream: its order

    def truncated(self, direction: str) -> list[WireMessage]:
        """The messages ``direction`` sent cut short (:attr:`WireMessage.truncated`), in
        causal order."""
        found = self._truncated.get(direction)
        if found is None:
            found = self._truncated[direction] = [
                m for m in self.messages_from(direction) if m.truncated
            ]
        return found

    @cached_property
    def error_chunks(self) -> Sequence[WireMessage]:
        """Every error chunk (a type with the error bit, known or not), in causal order."""
        return self.chunks_of(*(kind for kind in self._by_chunk_type if c.is_error_chunk(kind)))

    @cached_property
    def error_replies(self) -> list[tuple[WireMessage, int]]:
        """Every server message that carries an error (:func:`reply_error`) with that error,
        in causal order."""
        found = []
        for message in self.messages_from(SERVER):
            error = reply_error(message)
            if error:
                found.append((message, error))
        return found

    def undecoded(self, direction: str) -> list[Undecoded]:
        return [u for u in self.session.undecoded if u.direction == direction]

    def strings_from(self, direction: str) -> list[tuple[WireMessage, str, bytes]]:
        """Every string ``direction`` sent (:func:`strings_of`) with its message, in causal
        order: found once for all the string rules."""
        found = self._strings.get(direction)
        if found is None:
            found = self._strings[direction] = [
                (message, name, value)
                for message in self.messages_from(direction)
                for name, value in strings_of(message)
            ]
        return found

    @property
    def handshake_flags(self) -> int:
        if self.greeting is None or self.greeting.kind != "newstyle-greeting":
            return 0
        return int(self.greeting.fields.get("handshake_flags", 0))

    @property
    def client_flag_bits(self) -> int:
        return (
            0 if self.client_flags is None else int(self.client_flags.fields.get("client_flags", 0))
        )

    @property
    def fixed_newstyle(self) -> bool:
        """The server offered fixed newstyle and the client accepted it."""
        return bool(self.handshake_flags & c.HandshakeFlag.FIXED_NEWSTYLE) and bool(
            self.client_flag_bits & c.ClientFlag.C_FIXED_NEWSTYLE
        )

    @property
    def midstream(self) -> bool:
        return self.session.joined_midstream

    @property
    def content(self) -> ExportContent:
        """The export's bytes as this session reveals them, and the contradictions among
        them (:mod:`harness.conformance._content`), worked out on first use."""
        if self._content is None:
            self._content = ExportContent(self, self.others)
        return self._content

    # --- how the session ended (session-level and timing rules) -------------------

    def end(self, direction: str) -> StreamEnd | None:
        """The FIN or RST that ended ``direction`` (None: the capture shows no end)."""
        return self.session.ends.get(direction)

    @property
    def closed_first(self) -> StreamEnd | None:
        """The end of the direction that closed first: who initiated the disconnect
        (None when the capture shows neither side closing)."""
        ends = [e for e in (self.end(CLIENT), self.end(SERVER)) if e is not None]
        return min(ends, key=lambda e: (e.frame, e.direction != CLIENT), default=None)

    def sent_after(self, direction: str, frame: int) -> bool:
        """``direction`` sent bytes (a message or an undecodable region) in a frame after
        ``frame``."""
        return any(m.last_frame > frame for m in self.messages_from(direction)) or any(
            u.frame > frame for u in self.undecoded(direction)
        )

    # --- the one pass ------------------------------------------------------------

    def _walk(self) -> None:
        state = Negotiated()
        pending: list[OptionMessages] = []  # awaiting their final reply, oldest first
        export_name_option: WireMessage | None = None
        in_flight: dict[int, list[Transaction]] = {}
        finished: dict[int, Transaction] = {}  # cookie -> last completed transaction
        contexts: dict[int, str] = {}
        contexts_exchange: OptionMessages | None = None
        export_info: dict[str, object] = {}
        by_direction, by_kind = self._by_direction, self._by_kind
        for position, message in enumerate(self.messages):
            kind = message.kind
            by_direction[message.direction].append(message)
            by_kind[kind].append(message)
            # Transmission messages first: they are nearly all of a long session.
            if kind == "request":
                transaction = Transaction(message, position)
                self.transactions.append(transaction)
                self._by_command.setdefault(transaction.command, []).append(transaction)
                if transaction.command != c.Cmd.DISC:
                    in_flight.setdefault(transaction.cookie, []).append(transaction)
            elif kind in ("simple-reply", "chunk"):
                self._pair(message, position, in_flight, finished)
                if kind == "chunk":
                    self._by_chunk_type.setdefault(chunk_type(message), []).append(message)
            elif kind in ("newstyle-greeting", "oldstyle-greeting"):
                self.greeting = message
                if kind == "oldstyle-greeting":
                    self._enter(message, state, contexts, contexts_exchange)
                    self.transmission.flags = message.fields.get("transmission_flags")
                    self.transmission.size = message.fields.get("size")
            elif kind == "client-flags":
                self.client_flags = message
            elif kind == "option":
                exchange = OptionMessages(message, position, state)
                self.options.append(exchange)
                if exchange.code == c.Opt.EXPORT_NAME:
                    export_name_option = message
                else:
                    pending.append(exchange)
                if exchange.code in _DATA_OPTIONS:
                    export_info = {}
                elif exchange.code == c.Opt.SET_META_CONTEXT:
                    contexts = {}
                    contexts_exchange = exchange
            elif kind == "option-reply":
                exchange = _answered(pending, message)
                if exchange is None:
                    self.orphan_option_replies.append(message)
                    continue
                exchange.replies.append(message)
                exchange.reply_positions.append(position)
                if is_final_reply(message):
                    pending.remove(exchange)
                state, contexts, contexts_exchange = self._apply_reply(
                    exchange, message, state, contexts, contexts_exchange, export_info
                )
            elif kind == "export-name-reply":
                self.export_name_reply = message
                self._enter(message, state, contexts, contexts_exchange)
                if export_name_option is not None:
                    self.transmission.export_name = export_name_option.fields.get("export_name")
                self.transmission.flags = message.fields.get("transmission_flags")
                self.transmission.size = message.fields.get("size")
        if self.midstream and self.transmission.entered_by is None:
            guessed = self.session.state
            self.transmission.negotiated = Negotiated(
                structured_replies=guessed.structured_replies,
                extended_headers=guessed.extended_headers,
            )

    def _apply_reply(
        self,
        exchange: OptionMessages,
        message: WireMessage,
        state: Negotiated,
        contexts: dict[int, str],
        contexts_exchange: OptionMessages | None,
        export_info: dict[str, object],
    ) -> tuple[Negotiated, dict[int, str], OptionMessages | None]:
        rep = reply_type(message)
        named = message.fields.get("option")
        if named != exchange.code:
            return state, contexts, contexts_exchange  # a mislabelled reply settles nothing
        if rep == c.Rep.META_CONTEXT and exchange is contexts_exchange:
            contexts[int(message.fields.get("context_id", 0))] = message.fields.get(
                "context_name", ""
            )
        elif rep == c.Rep.INFO and exchange.code in _DATA_OPTIONS:
            info = message.fields.get("info_type")
            if info == c.Info.EXPORT:
                export_info["size"] = message.fields.get("size")
                export_info["flags"] = message.fields.get("transmission_flags")
            elif info == c.Info.BLOCK_SIZE and "maximum_payload_size" in message.fields:
                export_info["block_size"] = (
                    int(message.fields.get("minimum_block_size", 0)),
                    int(message.fields.get("preferred_block_size", 0)),
                    int(message.fields.get("maximum_payload_size", 0)),
                )
        elif c.is_rep_error(rep) and exchange is contexts_exchange:
            contexts = {}
        elif rep == c.Rep.ACK:
            if exchange.code == c.Opt.STRUCTURED_REPLY:
                state = replace(state, structured_replies=True)
            elif exchange.code == c.Opt.EXTENDED_HEADERS:
                state = replace(state, extended_headers=True)
            elif exchange.code == c.Opt.STARTTLS:
                # Nothing negotiated before STARTTLS survives it.
                state = Negotiated(tls=True)
                contexts, contexts_exchange = {}, None
            elif exchange.code == c.Opt.GO:
                self._enter(message, state, contexts, contexts_exchange)
                self.transmission.go = exchange
                self.transmission.export_name = exchange.export_name
                self.transmission.size = export_info.get("size")  # type: ignore[assignment]
                self.transmission.flags = export_info.get("flags")  # type: ignore[assignment]
                self.transmission.block_size = export_info.get("block_size")  # type: ignore[assignment]
                requests = exchange.option.fields.get("info_requests") or []
                self.transmission.block_size_requested = c.Info.BLOCK_SIZE in requests
        return state, contexts, contexts_exchange

    def _enter(
        self,
        message: WireMessage,
        state: Negotiated,
        contexts: dict[int, str],
        contexts_exchange: OptionMessages | None,
    ) -> None:
        self.transmission.entered_by = message
        self.transmission.negotiated = state
        self.transmission.contexts = dict(contexts)
        self.transmission.contexts_exchange = contexts_exchange

    def _pair(
        self,
        message: WireMessage,
        position: int,
        in_flight: dict[int, list[Transaction]],
        finished: dict[int, Transaction],
    ) -> None:
        cookie = int(message.fields.get("cookie", 0))
        waiting = in_flight.get(cookie)
        if not waiting:
            earlier = finished.get(cookie)
            if earlier is not None:
                earlier.late.append(message)
            else:
                self.orphan_replies.append(message)
            return
        transaction = waiting[0]
        if transaction.answer(message, position):
            waiting.pop(0)
            if not waiting:
                del in_flight[cookie]
            finished[cookie] = transaction


def _answered(pending: list[OptionMessages], reply: WireMessage) -> OptionMessages | None:
    """The pending option a reply answers: the oldest one it names, else the oldest one
    (replies come in option order; a reply naming another option is still its answer)."""
    if not pending:
        return None
    named = reply.fields.get("option")
    for exchange in pending:
        if exchange.code == named:
            return exchange
    return pending[0]


def follows(view: SessionView, message: WireMessage, direction: str) -> list[WireMessage]:
    """Messages of ``direction`` after ``message`` in causal order."""
    start = view.position(message) + 1
    return [m for m in view.messages[start:] if m.direction == direction]


def undecoded_after(view: SessionView, message: WireMessage) -> list[Undecoded]:
    """Undecodable regions of ``message``'s direction that start at or after its end."""
    end = message.offset + message.length
    return [u for u in view.undecoded(message.direction) if u.offset >= end]


def undecoded_at(view: SessionView, message: WireMessage) -> Undecoded | None:
    """The undecodable region that starts right where ``message`` ends, if any."""
    end = message.offset + message.length
    for region in view.undecoded(message.direction):
        if region.offset == end:
            return region
    return None


def bad_magic(region: Undecoded, expected: str) -> bool:
    """The decoder stopped at ``region`` because the magic of an ``expected`` message
    (``"option"``, ``"option-reply"``, ``"request"``, ``"reply"``, ``"greeting-magic"``...:
    see :data:`harness.dissect.EXPECTED`) was wrong."""
    return region.kind == "bad-magic" and region.expected == expected


def found_zeroes(region: Undecoded) -> bool:
    """The wrong magic the decoder found is all zero bytes (padding, most likely)."""
    return region.kind == "bad-magic" and region.found_magic == 0
