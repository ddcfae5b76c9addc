"""The export's bytes as one session reveals them, and where the session contradicts itself.

A session says things about the export's content: a successful ``NBD_CMD_WRITE``
puts its data there, a successful ``NBD_CMD_WRITE_ZEROES`` puts zeroes there, a
``base:allocation`` descriptor with ``NBD_STATE_ZERO`` says the range reads as zeroes,
and a successful read shows what is there.  :class:`ExportContent` walks the
session's transactions in causal order, keeps those statements as *facts* (by byte
range), and records a :class:`Contradiction` wherever a later message says otherwise
about bytes nothing could have changed in between.  Rules
(:mod:`harness.conformance.rules_semantics`) decide which contradictions breach which
sentence of the spec.

What may change bytes, and so makes them unknown:

- ``NBD_CMD_WRITE``, ``NBD_CMD_WRITE_ZEROES``, ``NBD_CMD_TRIM`` (after a trim the
  spec promises nothing until the range is written again) and any command the harness
  does not know (the whole export), from the moment the request is sent: the server may
  act on it any time before its reply, and one that never gets a reply may act at any
  time.  A failed write may have written part of its range.  A write on a
  ``NBD_FLAG_READ_ONLY`` export that succeeds (a breach of its own) says nothing.
- Two writes to overlapping ranges in flight together: the spec does not order them,
  so neither result is known.
- A read or status query while a write to an overlapping range is in flight: either
  answer is right, so the overlapped bytes are not judged.
- Another connection of the same capture (or its hidden bytes: TLS, undecodable
  requests) that could have written while the facts were compared: the contradiction
  is dropped.  Connections are never compared with each other.
- Bytes the decoder could not read in the client's stream of this session.

Only successful (complete, error-free) replies reveal content.  What a read showed is
kept for the ``NBD_CMD_CACHE`` rule only: the spec promises nothing about reading the
same unwritten bytes twice (an area reported as a hole not known to be zero is
explicitly unstable).
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, NamedTuple, TypeVar

from harness.dissect import CapturedData
from harness.dissect.model import CLIENT, Session, WireMessage
from harness.protocol import constants as c

if TYPE_CHECKING:
    from harness.conformance._view import SessionView, Transaction

V = TypeVar("V")
UNBOUNDED = 1 << 64
"""The end of an export of unknown size (a command the harness does not know covers it)."""

_OBSERVERS = frozenset({c.Cmd.READ, c.Cmd.BLOCK_STATUS})
_HARMLESS = frozenset({c.Cmd.FLUSH, c.Cmd.DISC, c.Cmd.CACHE})
"""Commands that change no data (``NBD_CMD_CACHE`` MUST NOT: that is what one rule checks)."""
_RANGED_WRITES = frozenset({c.Cmd.WRITE, c.Cmd.WRITE_ZEROES, c.Cmd.TRIM})
_STATUS_CHUNKS = frozenset({c.ReplyType.BLOCK_STATUS, c.ReplyType.BLOCK_STATUS_EXT})

WRITE = "write"
ZEROES = "zeroes"
STATUS_ZERO = "status-zero"
READ = "read"
FACT_KINDS = (WRITE, ZEROES, STATUS_ZERO, READ)
"""Where a fact comes from: a write's data, a write-zeroes, a ``NBD_STATE_ZERO``
descriptor, a read's data."""


@dataclass(slots=True, eq=False)
class Fact:
    """What one message says a range of the export holds.

    Never changed once made (a fact confirmed by a later read is a new one: see
    :meth:`confirmed`); not a frozen dataclass only because the walk makes one or two per
    read, and a frozen one costs four times as much to make.
    """

    kind: str
    """One of :data:`FACT_KINDS`."""
    origin: WireMessage
    """The message that said it: the write's reply, the status chunk, the read's data."""
    start: int
    """The export offset ``data[0]`` stands for."""
    data: bytes | CapturedData | None
    """The bytes, or ``None`` for zeroes."""
    basis: int
    """Position (in :attr:`SessionView.messages`) after which the content is known to
    have held: the reply to a write, the request of a read or status query that
    confirmed it."""
    since: float
    """Capture time from which another connection's write could have changed it."""
    since_frame: int
    confirmed_by: WireMessage | None = None
    """The latest read that returned the same bytes, if any."""

    def bytes_at(self, start: int, end: int) -> bytes | None:
        """The bytes at export range ``[start, end)`` (``None``: zeroes).  The whole of
        :attr:`data` is :attr:`data` itself, not a copy."""
        if self.data is None:
            return None
        return self.data[start - self.start : end - self.start]

    def confirmed(self, transaction: Transaction, message: WireMessage) -> Fact:
        """This fact, read back intact by ``transaction`` (its data in ``message``)."""
        request = transaction.request
        return Fact(
            self.kind,
            self.origin,
            self.start,
            self.data,
            transaction.position,
            request.time,
            request.frame,
            message,
        )


@dataclass(frozen=True)
class Contradiction:
    """A later message that says other bytes than an earlier one, with nothing between
    that may change them."""

    at: WireMessage
    """The later message: a read's data (simple reply or chunk) or a status chunk."""
    fact: Fact
    """What was known before (``fact.origin`` is the earlier message)."""
    offset: int
    """Export offset of the first byte that differs."""
    expected: int
    found: int
    between: Transaction | None = None
    """The latest command that must not change data (``NBD_CMD_CACHE``, a fast
    ``NBD_CMD_WRITE_ZEROES`` refused with ``NBD_ENOTSUP``) over those bytes since the
    fact held, if any: it takes the blame, being the only command there."""

    @property
    def earlier(self) -> WireMessage:
        """The message the later one contradicts: the reply of the command that came
        between, if any, else the fact's origin."""
        if self.between is not None:
            return self.between.replies[-1] if self.between.replies else self.between.request
        return self.fact.origin


class Extents(Generic[V]):
    """Non-overlapping ``[start, end)`` ranges of the export, each with a value."""

    def __init__(self) -> None:
        self._starts: list[int] = []
        self._items: list[tuple[int, int, V]] = []

    def _first(self, start: int) -> int:
        index = bisect.bisect_right(self._starts, start) - 1
        if index < 0:
            return 0
        return index + 1 if self._items[index][1] <= start else index

    def overlapping(self, start: int, end: int) -> list[tuple[int, int, V]]:
        """The values over ``[start, end)``, clipped to it, in order (gaps left out)."""
        out = []
        index = self._first(start)
        while index < len(self._items) and self._items[index][0] < end:
            low, high, value = self._items[index]
            out.append((max(low, start), min(high, end), value))
            index += 1
        return out

    def assign(self, start: int, end: int, value: V | None) -> None:
        """Give ``[start, end)`` the value (``None``: forget what was there)."""
        self.assign_pieces(start, end, [] if value is None else [(start, end, value)])

    def assign_pieces(self, start: int, end: int, pieces: list[tuple[int, int, V]]) -> None:
        """Give ``[start, end)`` the ``(low, high, value)`` pieces (in order, apart, inside
        the range) and forget what was there elsewhere in it: one change for a read that
        confirms some ranges and shows others."""
        if start >= end:
            return
        items = self._items
        first = self._first(start)
        last = first
        while last < len(items) and items[last][0] < end:
            last += 1
        middle: list[tuple[int, int, V]] = []
        if first < last and items[first][0] < start:
            low, _high, old = items[first]
            middle.append((low, start, old))
        middle.extend(pieces)
        if first < last and items[last - 1][1] > end:
            _low, high, old = items[last - 1]
            middle.append((end, high, old))
        items[first:last] = middle
        self._starts[first:last] = [item[0] for item in middle]


def _overlap(a: tuple[int, int], b: tuple[int, int]) -> bool:
    return a[0] < b[1] and b[0] < a[1]


def subtract(span: tuple[int, int], holes: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """``span`` without the ranges in ``holes``."""
    if not holes:
        return [span]
    parts = [span]
    for low, high in holes:
        parts = [
            piece
            for start, end in parts
            for piece in ((start, min(end, low)), (max(start, high), end))
            if piece[0] < piece[1]
        ]
    return parts


def first_difference(expected: bytes | None, found: bytes | None, length: int) -> int | None:
    """Index of the first byte where the two differ (``None`` stands for zeroes)."""
    if expected == found:
        return None
    if expected is None or found is None:
        data = found if expected is None else expected
        assert data is not None
        stripped = data.lstrip(b"\0")
        return None if not stripped else len(data) - len(stripped)
    if len(expected) != length or len(found) != length:
        return None  # a short slice: not comparable byte by byte
    return next(i for i in range(length) if expected[i] != found[i])


class _Piece(NamedTuple):
    """Bytes a reply shows: ``[start, end)`` holds ``data`` (``None``: zeroes)."""

    start: int
    end: int
    data: bytes | CapturedData | None
    message: WireMessage


def read_pieces(transaction: Transaction) -> list[_Piece] | None:
    """What a successful read's replies show, or ``None`` when they cannot be trusted
    (a short simple reply, content outside the request, overlapping chunks)."""
    low, high = transaction.offset, transaction.offset + transaction.length
    pieces: list[_Piece] = []
    for reply in transaction.replies:
        fields = reply.fields
        if reply.kind == "simple-reply":
            data = fields.get("data")
            if not isinstance(data, bytes | CapturedData) or len(data) != transaction.length:
                return None
            pieces.append(_Piece(low, high, data, reply))
        elif fields.get("type") == c.ReplyType.OFFSET_DATA and "data_offset" in fields:
            data = fields.get("data")
            if not isinstance(data, bytes | CapturedData):
                return None
            start = int(fields["data_offset"])
            pieces.append(_Piece(start, start + len(data), data, reply))
        elif fields.get("type") == c.ReplyType.OFFSET_HOLE and "hole_size" in fields:
            start = int(fields.get("hole_offset", 0))
            pieces.append(_Piece(start, start + int(fields["hole_size"]), None, reply))
    if len(pieces) > 1:
        pieces.sort(key=lambda piece: piece.start)
        for before, after in itertools.pairwise(pieces):
            if after.start < before.end:
                return None
    if any(piece.start < low or piece.end > high for piece in pieces):
        return None
    return pieces


def zero_claims(
    transaction: Transaction, size: int | None
) -> tuple[WireMessage, list[tuple[int, int, int]]] | None:
    """The ``base:allocation`` chunk of a successful status query and its descriptors
    as ``(start, end, status)`` export ranges (clipped to the export's size)."""
    for reply in transaction.replies:
        fields = reply.fields
        if fields.get("type") not in _STATUS_CHUNKS:
            continue
        if fields.get("context_name") != c.BASE_ALLOCATION:
            continue
        ranges = []
        position = transaction.offset
        end_of_export = UNBOUNDED if size is None else size
        for descriptor in fields.get("descriptors") or []:
            length = int(descriptor.get("length", 0))
            if length <= 0 or position >= end_of_export:
                break
            end = min(position + length, end_of_export)
            ranges.append((position, end, int(descriptor.get("status", 0))))
            position = end
        return reply, ranges
    return None


@dataclass
class _InFlight:
    """An observer (read, status query) between its request and its reply."""

    disturbed: list[tuple[int, int]]
    """Ranges a write in flight at some time of its window could have changed."""


class ExportContent:
    """The facts about one session's export and every contradiction among them."""

    def __init__(self, view: SessionView, others: Sequence[Session] = ()) -> None:
        self._view: SessionView | None = view
        """Read only during the walk, then dropped: the view holds this model, and no
        reference back lets a judged session be freed (its capture file closed) without
        waiting for the cycle collector."""
        self._others = [other for other in others if other.nbd and other is not view.session]
        self._foreign: list[tuple[float, float, int, int]] | None = None
        """When and where other connections may have written (worked out on the first
        contradiction: most sessions have none)."""
        self.facts: Extents[Fact] = Extents()
        self.unstable: Extents[bool] = Extents()
        """Ranges reported as ``NBD_STATE_HOLE`` without ``NBD_STATE_ZERO``: their
        contents are undefined, reads of them are never compared."""
        self.contradictions: list[Contradiction] = []
        self._hidden = [u.frame for u in view.undecoded(CLIENT)]
        self._read_only = view.transmission.has(c.TransmissionFlag.READ_ONLY)
        self._size = view.transmission.size
        self._writes_in_flight: dict[int, Transaction] = {}
        """By ``id``, in the order they were sent."""
        self._observers: dict[int, _InFlight] = {}
        self._in_flight: dict[int, list[Transaction]] = {}
        """Cookie -> the requests with that cookie in flight."""
        self._racy: set[int] = set()
        """Transactions whose effect is unknown: writes racing an overlapping write,
        any request sharing its cookie with another one in flight."""
        self._keepers: list[Transaction] = []
        """Commands that must not change data (see :func:`keeps_data`)."""
        self._walk(view)
        self._view = None

    # --- the walk ------------------------------------------------------------------------

    def _walk(self, view: SessionView) -> None:
        events: list[tuple[int, bool, Transaction]] = []
        for transaction in view.transactions:
            if transaction.command == c.Cmd.DISC:
                continue
            events.append((transaction.position, False, transaction))
            if transaction.completed_at is not None:
                events.append((transaction.completed_at, True, transaction))
        unseen = self._unseen_requests(view)
        events.sort(key=lambda event: event[0])
        for position, done, transaction in events:
            while unseen and unseen[0] < position:
                unseen.pop(0)
                self._something_changed()
            if done:
                self._finish(transaction)
            else:
                self._start(transaction)

    @staticmethod
    def _unseen_requests(view: SessionView) -> list[int]:
        """Positions of replies to requests sent before a capture joined mid-stream: such a
        request (a write, maybe) was in flight, unseen, until then."""
        if not view.midstream:
            return []
        return sorted(view.position(reply) for reply in view.orphan_replies)

    def _something_changed(self) -> None:
        """Anything may have changed anywhere: forget every fact."""
        self.facts = Extents()
        for observer in self._observers.values():
            observer.disturbed.append((0, UNBOUNDED))

    def _start(self, transaction: Transaction) -> None:
        sharing = self._in_flight.get(transaction.cookie)
        if sharing is None:
            self._in_flight[transaction.cookie] = [transaction]
        else:
            self._racy.update(id(other) for other in sharing)
            self._racy.add(id(transaction))
            sharing.append(transaction)
        command = transaction.command
        if command in _OBSERVERS:
            self._observers[id(transaction)] = _InFlight(
                [_span(write) for write in self._writes_in_flight.values()]
            )
        elif keeps_data(transaction):
            if command != c.Cmd.FLUSH:
                self._keepers.append(transaction)
        else:
            span = _span(transaction)
            for write in self._writes_in_flight.values():
                if _overlap(_span(write), span):
                    self._racy.update((id(write), id(transaction)))
            for observer in self._observers.values():
                observer.disturbed.append(span)
            self.facts.assign(*span, None)
            self._writes_in_flight[id(transaction)] = transaction

    def _finish(self, transaction: Transaction) -> None:
        sharing = self._in_flight[transaction.cookie]
        if len(sharing) == 1:
            del self._in_flight[transaction.cookie]
        else:
            sharing.remove(transaction)
        command = transaction.command
        trusted = transaction.succeeded and id(transaction) not in self._racy
        if command in _OBSERVERS:
            observer = self._observers.pop(id(transaction))
            if not trusted:
                return
            if command == c.Cmd.READ:
                self._observe_read(transaction, observer.disturbed)
            else:
                self._observe_status(transaction, observer.disturbed)
        elif not keeps_data(transaction):
            del self._writes_in_flight[id(transaction)]
            if trusted and not self._read_only:
                self._learn_write(transaction)

    def _learn_write(self, transaction: Transaction) -> None:
        if transaction.command == c.Cmd.WRITE:
            data = transaction.request.fields.get("data")
            if not isinstance(data, bytes | CapturedData) or len(data) != transaction.length:
                return
            kind = WRITE
        elif transaction.command == c.Cmd.WRITE_ZEROES:
            data, kind = None, ZEROES
        else:
            return  # after a trim nothing is promised
        reply = transaction.replies[-1]
        fact = Fact(
            kind=kind,
            origin=reply,
            start=transaction.offset,
            data=data,
            basis=self._position(reply),
            since=transaction.request.time,
            since_frame=transaction.request.frame,
        )
        self.facts.assign(*_span(transaction), fact)

    def _position(self, message: WireMessage) -> int:
        assert self._view is not None, "only during the walk"
        return self._view.position(message)

    def _observe_read(self, transaction: Transaction, disturbed: list[tuple[int, int]]) -> None:
        pieces = read_pieces(transaction)
        if pieces is None:
            return
        request = transaction.request
        for piece in pieces:
            for start, end in subtract((piece.start, piece.end), disturbed):
                seen = Fact(
                    READ,
                    piece.message,
                    piece.start,
                    piece.data,
                    transaction.position,
                    request.time,
                    request.frame,
                )
                self._compare(transaction, piece.message, start, end, seen)

    def _compare(
        self, transaction: Transaction, message: WireMessage, start: int, end: int, seen: Fact
    ) -> None:
        """Judge what a read shows over ``[start, end)`` against the facts, then keep it:
        the facts it agrees with, confirmed, and what it shows everywhere else."""
        kept: list[tuple[int, int, Fact]] = []
        shown_from = start  # where the bytes the read shows (not a confirmed fact) start
        for low, high, fact in self.facts.overlapping(start, end):
            found = seen.bytes_at(low, high)
            index = first_difference(fact.bytes_at(low, high), found, high - low)
            if index is None:
                if shown_from < low:
                    kept.append((shown_from, low, seen))
                kept.append((low, high, fact.confirmed(transaction, message)))
                shown_from = high
                continue
            offset = low + index
            self._contradict(
                transaction, message, fact, low, high, offset, found[index] if found else 0
            )
        if shown_from < end:
            kept.append((shown_from, end, seen))
        self.facts.assign_pieces(start, end, kept)

    def _observe_status(self, transaction: Transaction, disturbed: list[tuple[int, int]]) -> None:
        claims = zero_claims(transaction, self._size)
        if claims is None:
            return
        chunk, ranges = claims
        zero, hole = int(c.StateFlag.ZERO), int(c.StateFlag.HOLE)
        for low, high, status in ranges:
            for start, end in subtract((low, high), disturbed):
                if status & zero:
                    self._claim_zero(transaction, chunk, start, end)
                elif status & hole:
                    self.unstable.assign(start, end, True)
                    for fact_low, fact_high, fact in self.facts.overlapping(start, end):
                        if fact.kind == READ:
                            self.facts.assign(fact_low, fact_high, None)

    def _claim_zero(
        self, transaction: Transaction, chunk: WireMessage, start: int, end: int
    ) -> None:
        claim = Fact(
            kind=STATUS_ZERO,
            origin=chunk,
            start=start,
            data=None,
            basis=transaction.position,
            since=transaction.request.time,
            since_frame=transaction.request.frame,
        )
        updates: list[tuple[int, int, Fact | None]] = [(start, end, claim)]
        for low, high, fact in self.facts.overlapping(start, end):
            expected = fact.bytes_at(low, high)
            index = first_difference(expected, None, high - low)
            if index is None:
                continue
            assert expected is not None
            self._contradict(transaction, chunk, fact, low, high, low + index, 0)
            updates.append((low, high, None))  # which of the two is right is not known
        for low, high, value in updates:
            self.facts.assign(low, high, value)

    # --- judging ------------------------------------------------------------------------

    def _contradict(
        self,
        transaction: Transaction,
        message: WireMessage,
        fact: Fact,
        low: int,
        high: int,
        offset: int,
        found: int,
    ) -> None:
        if fact.kind == READ and self.unstable.overlapping(low, high):
            return
        done = transaction.completed_at
        assert done is not None
        if self._changed_unseen(fact, message, low, high):
            return
        between = self._keeper_between(fact, done, low, high)
        if fact.kind == READ and between is None:
            return  # reading unwritten bytes twice: the spec promises nothing
        expected = fact.bytes_at(offset, offset + 1)
        self.contradictions.append(
            Contradiction(
                at=message,
                fact=fact,
                offset=offset,
                expected=expected[0] if expected else 0,
                found=found,
                between=between,
            )
        )

    def _keeper_between(self, fact: Fact, done: int, low: int, high: int) -> Transaction | None:
        """The latest command that must not change data over ``[low, high)`` that may have
        acted after the fact held and before the later message was sent."""
        chosen = None
        for keeper in self._keepers:
            if keeper.position > done or not _overlap(_span(keeper), (low, high)):
                continue
            finished = keeper.completed_at
            if finished is None or finished > fact.basis:
                chosen = keeper
        return chosen

    def _changed_unseen(self, fact: Fact, message: WireMessage, low: int, high: int) -> bool:
        """Something the session cannot see may have changed ``[low, high)`` between the
        fact and ``message``: another connection's write, or client bytes the decoder
        could not read."""
        if any(fact.since_frame <= frame <= message.frame for frame in self._hidden):
            return True
        if self._foreign is None:
            self._foreign = _foreign_changes(self._others)
        return any(
            begin <= message.time and end >= fact.since and _overlap((start, stop), (low, high))
            for begin, end, start, stop in self._foreign
        )


def keeps_data(transaction: Transaction) -> bool:
    """A command that must not change the export's bytes: FLUSH, DISC, CACHE ("there MUST
    NOT be any difference in semantics"), and a WRITE_ZEROES with NBD_CMD_FLAG_FAST_ZERO
    refused with NBD_ENOTSUP ("SHOULD NOT alter the contents of the export")."""
    if transaction.command in _HARMLESS:
        return True
    return (
        transaction.command == c.Cmd.WRITE_ZEROES
        and bool(transaction.flags & c.CmdFlag.FAST_ZERO)
        and transaction.error == c.Errno.ENOTSUP
    )


def _span(transaction: Transaction) -> tuple[int, int]:
    """The export range a request covers (the whole export for a command unknown here)."""
    command = transaction.command
    if command in _RANGED_WRITES or command in _OBSERVERS or command == c.Cmd.CACHE:
        return transaction.offset, transaction.offset + transaction.effect_length
    return 0, UNBOUNDED


def _foreign_changes(others: list[Session]) -> list[tuple[float, float, int, int]]:
    """``(from, to, start, end)``: when and where other connections may have written."""
    from harness.conformance._view import SessionView  # it imports this module

    out: list[tuple[float, float, int, int]] = []
    for other in others:
        out.extend(_changes_of(SessionView(other)))
    return out


def _changes_of(view: SessionView) -> Iterator[tuple[float, float, int, int]]:
    session: Session = view.session
    times = [m.time for m in view.messages]
    hidden = session.phase == "tls" or bool(view.undecoded(CLIENT)) or session.joined_midstream
    if hidden and times:
        yield min(times), math.inf, 0, UNBOUNDED  # writes the decoder cannot see
    for transaction in view.transactions:
        if transaction.command in _OBSERVERS or transaction.command in _HARMLESS:
            continue
        done = transaction.completed_at
        end = math.inf if done is None else view.messages[done].time
        yield (transaction.request.time, end, *_span(transaction))
