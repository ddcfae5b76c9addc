"""What a client learned from a server: the negotiation record and option results.

Plain data, filled in while the handshake runs, printable by ``nbd-harness
info`` and comparable in tests.  Numbers stay numbers (the protocol's
IntEnum/IntFlag values); :meth:`Negotiation.as_dict` spells them the spec's
way for JSON.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from harness.protocol import constants as c
from harness.protocol.messages import InfoBlockSize


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


@dataclass(frozen=True)
class Fallback:
    """A feature the client wanted and did without, and why.

    ``kind`` is a stable identifier (``extended-headers``, ``structured-replies``,
    ``meta-contexts``, ``go``, ``starttls``, ``block-size``, ``options``); ``what``
    says what the client did instead, for a human.
    """

    kind: str
    what: str


@dataclass
class Negotiation:
    """Everything offered and settled during one handshake.

    ``block_size`` is ``NBD_INFO_BLOCK_SIZE`` as the server sent it (None
    when it sent none); ``contexts`` maps the ids of the selected metadata
    contexts to their names; ``infos`` lists the ``NBD_INFO_*`` types the
    server sent with the final ``NBD_OPT_GO``.
    """

    style: str = ""  # "oldstyle" | "newstyle" | "fixed-newstyle"
    handshake_flags: int = 0
    client_flags: int = 0
    tls: bool = False
    structured_replies: bool = False
    extended_headers: bool = False
    export_name: str = ""
    export_size: int | None = None
    transmission_flags: int = 0
    block_size: InfoBlockSize | None = None
    description: str | None = None
    canonical_name: str | None = None
    init_state: int | None = None
    contexts: dict[int, str] = field(default_factory=dict)
    infos: list[int] = field(default_factory=list)
    options: list[OptionExchange] = field(default_factory=list)
    fallbacks: list[Fallback] = field(default_factory=list)
    selected_with: str = ""  # "NBD_OPT_GO" | "NBD_OPT_EXPORT_NAME" | "oldstyle greeting"

    def fallback_kinds(self) -> list[str]:
        return [f.kind for f in self.fallbacks]

    def has(self, flag: c.TransmissionFlag) -> bool:
        return bool(self.transmission_flags & flag)

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
            "contexts": {str(k): v for k, v in sorted(self.contexts.items())},
            "infos": [c.name_of(c.Info, i) for i in self.infos],
            "options": [o.as_dict() for o in self.options],
            "fallbacks": [{"kind": f.kind, "what": f.what} for f in self.fallbacks],
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


@dataclass(frozen=True)
class ExportEntry:
    """One ``NBD_REP_SERVER`` answer to ``NBD_OPT_LIST``."""

    name: str
    description: str = ""


@dataclass(frozen=True)
class ExportInfo:
    """What ``NBD_OPT_INFO`` told about one export (nothing is selected by it)."""

    name: str
    size: int | None = None
    transmission_flags: int = 0
    block_size: InfoBlockSize | None = None
    description: str | None = None
    canonical_name: str | None = None
    init_state: int | None = None
    infos: tuple[int, ...] = ()


__all__ = ["ExportEntry", "ExportInfo", "Fallback", "Negotiation", "OptionExchange"]
