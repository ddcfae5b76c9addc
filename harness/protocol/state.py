"""What a session has negotiated, and what is in flight.

Plain data, shared by the connection state machine, the reference server and
client, and anything that judges a captured session.
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


@dataclass
class Negotiated:
    """Everything the handshake settled."""

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

    @property
    def no_zeroes(self) -> bool:
        return bool(self.client_flags & c.ClientFlag.C_NO_ZEROES)

    @property
    def reply_form(self) -> str:
        """The replies this negotiation uses: see :func:`reply_form`."""
        return reply_form(self.structured_replies, self.extended_headers)

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
