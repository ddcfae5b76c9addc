"""What a session has negotiated, and what is in flight.

Plain data, shared by the connection state machine, the reference server and
client, the dissector (which fills a :class:`Negotiated` from a capture), the
conformance rules, replay and scenarios.  Numbers stay numbers (the protocol's
IntEnum/IntFlag values); :meth:`Negotiated.as_dict` spells them the spec's way
for JSON.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from . import constants as c
from .messages import InfoBlockSize, Request


class Phase(enum.Enum):
    """Where a session is; the name says whose turn it is."""

    GREETING = "server sends greeting"
    CLIENT_FLAGS = "client sends flags"
    OPTIONS = "client sends an option"
    OPTION_REPLY = "server answers the option"
    EXPORT_NAME_REPLY = "server answers NBD_OPT_EXPORT_NAME"
    TLS_HANDSHAKE = "TLS handshake"
    TRANSMISSION = "transmission"
    DISCONNECTING = "client sent NBD_CMD_DISC"
    CLOSED = "closed"


class Role(enum.Enum):
    CLIENT = "client"
    SERVER = "server"

    @property
    def peer(self) -> Role:
        return Role.SERVER if self is Role.CLIENT else Role.CLIENT


@dataclass(frozen=True)
class Violation:
    """One rule broken by one side: what, where in the spec, and the error a
    server answers with when the violation is the client's request."""

    message: str
    section: str
    rule: str
    errno: int = c.Errno.EINVAL


def reply_form(structured_replies: bool, extended_headers: bool) -> str:
    """``simple``, ``structured`` or ``extended``: the replies a negotiation uses."""
    if extended_headers:
        return "extended"
    return "structured" if structured_replies else "simple"


@dataclass(frozen=True)
class OptionExchange:
    """One option sent during the handshake and the reply types it got, in order.

    ``argument`` is what the option named (an export, queries), for reading the
    record; ``message`` the text of an error reply.  ``NBD_OPT_EXPORT_NAME``
    has no option replies: its ``replies`` stay empty, ``outcome`` says what
    happened instead.
    """

    option: int
    replies: tuple[int, ...] = ()
    argument: str = ""
    message: str = ""
    outcome: str = ""

    @property
    def final(self) -> int | None:
        """The final reply type (``NBD_REP_ACK`` or an error), if any."""
        return self.replies[-1] if self.replies else None

    def as_dict(self) -> dict[str, object]:
        out: dict[str, object] = {
            "option": c.name_of(c.Opt, self.option),
            "replies": [c.name_of(c.Rep, r) for r in self.replies],
        }
        for key in ("argument", "message", "outcome"):
            if getattr(self, key):
                out[key] = getattr(self, key)
        return out


@dataclass
class Negotiated:
    """Everything the handshake settled (and, in ``options``, how it got there).

    ``style`` is empty until the greeting is seen; ``block_size`` is
    ``NBD_INFO_BLOCK_SIZE`` as the server sent it (None when it sent none);
    ``infos`` lists the ``NBD_INFO_*`` types the server sent with the final
    ``NBD_OPT_GO``; ``selected_with`` says how the export was selected.
    """

    style: str = ""  # "oldstyle" | "newstyle" | "fixed-newstyle"
    handshake_flags: int = 0
    client_flags: int = 0
    tls: bool = False
    structured_replies: bool = False
    extended_headers: bool = False
    # Contexts selected by the last NBD_OPT_SET_META_CONTEXT, id -> name, and
    # the export it named (BLOCK_STATUS needs both to match the export used).
    meta_contexts: dict[int, str] = field(default_factory=dict)
    meta_context_export: str | None = None
    export_name: str | None = None
    export_size: int | None = None
    transmission_flags: int = 0
    block_size: InfoBlockSize | None = None
    block_size_requested: bool = False
    init_state: int | None = None
    description: str | None = None
    canonical_name: str | None = None
    infos: list[int] = field(default_factory=list)
    options: list[OptionExchange] = field(default_factory=list)
    selected_with: str = ""  # "NBD_OPT_GO" | "NBD_OPT_EXPORT_NAME" | "oldstyle greeting"

    @property
    def no_zeroes(self) -> bool:
        return bool(self.client_flags & c.ClientFlag.C_NO_ZEROES)

    @property
    def reply_form(self) -> str:
        """The replies this negotiation uses: see :func:`reply_form`."""
        return reply_form(self.structured_replies, self.extended_headers)

    @property
    def replies_with_chunks(self) -> bool:
        """Structured replies or extended headers: the server may send chunks."""
        return self.structured_replies or self.extended_headers

    @property
    def fixed_newstyle(self) -> bool:
        return self.style == "fixed-newstyle"

    def has(self, flag: c.TransmissionFlag) -> bool:
        return bool(self.transmission_flags & flag)

    @property
    def min_block(self) -> int:
        return self.block_size.minimum if self.block_size else 1

    @property
    def max_payload(self) -> int:
        return self.block_size.maximum if self.block_size else c.DEFAULT_MAX_PAYLOAD

    def forget_after_starttls(self) -> None:
        """STARTTLS wipes what was negotiated in the clear (section "STARTTLS")."""
        self.structured_replies = False
        self.extended_headers = False
        self.meta_contexts = {}
        self.meta_context_export = None

    def as_dict(self) -> dict[str, object]:
        """A JSON-ready view with the spec's names for flags and types."""
        block = self.block_size
        return {
            "style": self.style,
            "handshake_flags": _flag_names(c.HandshakeFlag, self.handshake_flags),
            "client_flags": _flag_names(c.ClientFlag, self.client_flags),
            "tls": self.tls,
            "structured_replies": self.structured_replies,
            "extended_headers": self.extended_headers,
            "selected_with": self.selected_with,
            "export_name": self.export_name,
            "export_size": self.export_size,
            "transmission_flags": _flag_names(c.TransmissionFlag, self.transmission_flags),
            "block_size": None
            if block is None
            else {
                "minimum": block.minimum,
                "preferred": block.preferred,
                "maximum": block.maximum,
            },
            "description": self.description,
            "canonical_name": self.canonical_name,
            "init_state": None
            if self.init_state is None
            else _flag_names(c.InitFlag, self.init_state),
            "contexts": {str(k): v for k, v in sorted(self.meta_contexts.items())},
            "infos": [c.name_of(c.Info, i) for i in self.infos],
            "options": [o.as_dict() for o in self.options],
        }


def _flag_names(flag_type: type[enum.IntFlag], value: int) -> list[str]:
    names = [
        c.spec_name(member)
        for member in flag_type
        if member.value and value & member.value == member.value
    ]
    known = 0
    for member in flag_type:
        known |= member.value
    if value & ~known:
        names.append(hex(value & ~known))
    return names


@dataclass
class InFlight:
    """A request awaiting (the rest of) its reply."""

    request: Request
    effect_length: int
    context_ids: tuple[int, ...]  # contexts a block status reply must cover
    covered: list[tuple[int, int]] = field(default_factory=list)  # content/error ranges
    data_chunks: int = 0
    status_contexts: set[int] = field(default_factory=set)
    errored: bool = False
    chunks: int = 0


@dataclass
class PendingOption:
    """An option awaiting its final reply, and what its replies said so far."""

    option: int
    payload: object
    infos: dict[int, object] = field(default_factory=dict)
    contexts: dict[int, str] = field(default_factory=dict)
    replies: int = 0
