"""What the dissector hands out: sessions of decoded NBD messages.

The conformance rules consume this model, so it says everything the wire said
and nothing more: one :class:`WireMessage` per NBD message (with its scapy
packet, plain field values, where it sits in the capture and which request or
option it answers), one :class:`Undecoded` per region that could not be read
(with the reason), and the protocol's :class:`~harness.protocol.state.Negotiated`
filled with what the handshake arrived at.

Every captured byte is accounted for, per direction::

    bytes_total == bytes_decoded + bytes_tls + sum(undecoded lengths)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from scapy.packet import Packet

from harness.dissect.layers import dissect
from harness.protocol.state import Negotiated

CLIENT = "client"
"""Direction of bytes sent by the client to the server."""
SERVER = "server"
"""Direction of bytes sent by the server to the client."""
DIRECTIONS = (CLIENT, SERVER)

KINDS = (
    "oldstyle-greeting",
    "newstyle-greeting",
    "client-flags",
    "option",
    "option-reply",
    "export-name-reply",
    "request",
    "simple-reply",
    "chunk",
    "tls",
)
"""Every value of :attr:`WireMessage.kind`."""

PHASES = (
    "greeting",  # nothing decoded yet (or the capture stops there)
    "handshake",  # option haggling (newstyle)
    "transmission",  # after the oldstyle greeting, EXPORT_NAME or a successful GO
    "tls",  # after a successful NBD_OPT_STARTTLS: the rest is opaque
    "aborted",  # after NBD_OPT_ABORT
    "not-nbd",  # the connection carries no NBD
)
"""Every value of :attr:`Session.phase`."""


@dataclass(eq=False, slots=True)  # not frozen: a frozen record costs 3x to build, per message
class WireMessage:
    """One NBD message as it went over the wire.

    ``frame`` is where its first byte arrived, ``last_frame`` the frame that
    completed it (the latest frame any of its bytes arrived in: with segments
    out of order, not always the frame of its last byte); ``offset`` and ``length`` place
    it in its direction's byte stream.  ``fields`` has every field of every
    layer of ``packet`` as plain values (ints, strs, bytes for data, lists of
    dicts for queries and block descriptors); block status chunks add
    ``context_name`` and a ``status_text`` per descriptor, decoded with the
    contexts the session negotiated.  ``notes`` tells what the decoder had to
    assume or found odd (no reply is judged here: that is the conformance
    rules' job).

    The message's bytes stay in the capture until asked for (``wire``, bulk ``data``
    fields), and the scapy ``packet`` of a request, simple reply or data chunk is
    dissected on first use: the fields are read without it.  A message is a record of
    what was on the wire: nothing changes it once decoded.
    """

    session: int
    direction: str
    kind: str
    name: str
    """``NBD_OPT_GO``, ``NBD_REP_INFO``, ``NBD_CMD_READ``, ``newstyle greeting``..."""
    frame: int
    last_frame: int
    offset: int
    length: int
    time: float
    layer: type[Packet] = field(repr=False)
    """The scapy layer the message is dissected with (``packet`` is an instance of it, or
    ``Raw`` when it could not be dissected)."""
    raw: Any = field(repr=False)
    """The message's bytes as captured, read on demand (``bytes(raw)``; see ``wire``)."""
    request: WireMessage | None = field(default=None, repr=False)
    """For replies and chunks: the request they answer (same cookie)."""
    option: WireMessage | None = field(default=None, repr=False)
    """For option replies and the export-name reply: the option they answer."""
    fields: dict[str, Any] = field(default_factory=dict, repr=False)
    notes: tuple[str, ...] = ()
    missing: int = 0
    """Bytes the message's own header (or its request) promised that never came: the
    sender closed its stream first, or the next message starts before (found by
    resynchronising).  0 for a whole message; the fields hold what did arrive."""
    dissected: Packet | None = field(default=None, repr=False)
    """The scapy packet once dissected (by the decoder, or on first use of ``packet``)."""

    @property
    def packet(self) -> Packet:
        """The message dissected by its scapy layer (on first use; kept unless it holds bulk
        data, which stays in the capture)."""
        if self.dissected is not None:
            return self.dissected
        packet, _notes = dissect(self.layer, self.wire, self.missing > 0)
        if self.length <= _KEEP_DISSECTED:
            self.dissected = packet
        return packet

    @property
    def truncated(self) -> bool:
        """The message was cut short (see :attr:`missing`)."""
        return self.missing > 0

    @property
    def wire(self) -> bytes:
        """The exact bytes of the message as captured."""
        return bytes(self.raw)


_KEEP_DISSECTED = 64 * 1024
"""Longer messages (bulk data) are dissected again when asked, not kept in memory."""

UNDECODED_KINDS = (
    "bad-magic",  # a message should start here, but its magic is wrong
    "incomplete",  # a message cut short by the end of the capture or missing bytes
    "after-gap",  # captured after bytes the capture misses: where messages start is unknown
    "unexpected",  # bytes where the protocol allows none (after ABORT, before the greeting)
    "not-nbd",  # the connection carries no NBD
)
"""Every value of :attr:`Undecoded.kind`."""

EXPECTED = (
    "greeting",
    "greeting-magic",
    "client-flags",
    "option",
    "option-reply",
    "export-name-reply",
    "request",
    "reply",
)
"""Every value of :attr:`Undecoded.expected` (besides ``None``): the message the
decoder looked for (``greeting-magic``: the magic after NBDMAGIC, which tells
oldstyle from newstyle)."""


@dataclass(frozen=True)
class Undecoded:
    """Captured bytes the decoder could not read as NBD, and why.

    ``reason`` says it in words; ``kind``, ``expected``, ``expected_magic`` and
    ``found_magic`` say it as data, for programs (the conformance rules).
    """

    session: int
    direction: str
    offset: int
    length: int
    frame: int
    reason: str
    kind: str = "unexpected"
    """One of :data:`UNDECODED_KINDS`."""
    expected: str | None = None
    """For ``bad-magic`` and ``incomplete``: the message that should start here (one of
    :data:`EXPECTED`, ``None`` when the decoder expected nothing in particular)."""
    expected_magic: tuple[int, ...] = ()
    """For ``bad-magic``: the magic numbers that would have been valid here."""
    found_magic: int | None = None
    """For ``bad-magic``: the number found instead (as wide as the expected magic:
    32 or 64 bits)."""
    resumed_at: int | None = None
    """Where decoding of this direction resumed after the region (the next plausible
    message boundary, found by resynchronising); ``None`` when it did not resume."""


@dataclass(frozen=True)
class StreamEnd:
    """How one direction of a connection ended, as captured: its first FIN or RST.

    It has ``frame``, ``offset`` and ``direction`` like a message, so a finding about a
    close (a hard disconnect, a message never sent) can point at it.
    """

    session: int
    direction: str
    frame: int
    offset: int
    """Where the direction's byte stream ended (its captured length)."""
    time: float
    """Capture time of ``frame`` (seconds)."""
    reset: bool = False
    """An RST (an abortive close) rather than a FIN."""


@dataclass
class Session:
    """One TCP connection: its messages in causal order and its accounting.

    Causal order: each direction's messages in stream order, merged so that a
    reply comes after what it answers and a client's message after the reply it
    waited for (a client message counts from its first frame, a server message
    from the frame that completed it).
    """

    index: int
    client: tuple[str, int]
    server: tuple[str, int]
    messages: list[WireMessage] = field(default_factory=list)
    undecoded: list[Undecoded] = field(default_factory=list)
    state: Negotiated = field(default_factory=Negotiated)
    """What the handshake settled, as seen on the wire: ``style`` stays empty until
    the greeting is seen, ``meta_contexts`` are those of the last
    ``NBD_OPT_SET_META_CONTEXT``, ``block_size`` is what came with ``NBD_OPT_GO``."""
    phase: str = "greeting"
    """One of :data:`PHASES`: where the session ended up."""
    joined_midstream: bool = False
    bytes_total: dict[str, int] = field(default_factory=lambda: dict.fromkeys(DIRECTIONS, 0))
    bytes_decoded: dict[str, int] = field(default_factory=lambda: dict.fromkeys(DIRECTIONS, 0))
    bytes_tls: dict[str, int] = field(default_factory=lambda: dict.fromkeys(DIRECTIONS, 0))
    notes: list[str] = field(default_factory=list)
    """Reassembly and decoding remarks (retransmissions that differ, gaps...)."""
    first_frame: int = 0
    last_frame: int = 0
    ends: dict[str, StreamEnd] = field(default_factory=dict)
    """Per direction, the FIN or RST that ended it (absent: the capture shows no end, so
    more bytes may have followed).  Session-level rules read who closed first and when."""

    @property
    def nbd(self) -> bool:
        """False when the connection carries no NBD at all."""
        return self.phase != "not-nbd"

    def accounted(self, direction: str) -> bool:
        """True when every captured byte of ``direction`` is decoded, TLS or undecoded."""
        undecoded = sum(u.length for u in self.undecoded if u.direction == direction)
        return self.bytes_total[direction] == (
            self.bytes_decoded[direction] + self.bytes_tls[direction] + undecoded
        )


@dataclass
class Capture:
    """A decoded capture file."""

    path: str
    frames: int
    sessions: list[Session] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    """Problems with the file itself (truncated, corrupt): decoding stopped there."""
    notes: list[str] = field(default_factory=list)
    """Frames skipped for reasons worth knowing (fragments, unknown link types)."""

    @property
    def messages(self) -> list[WireMessage]:
        """Every message of every session, in session order."""
        return [message for session in self.sessions for message in session.messages]
