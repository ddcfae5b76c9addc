"""What a client learned from a server: the negotiation record and option results.

Plain data, filled in while the handshake runs, printable by ``nbd-harness
info`` and comparable in tests.  The record is the protocol's
:class:`~harness.protocol.state.Negotiated` (with its
:class:`~harness.protocol.state.OptionExchange` list) plus what only a client
has: the fallbacks it took.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from harness.protocol.messages import InfoBlockSize
from harness.protocol.state import Negotiated


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
class Negotiation(Negotiated):
    """What the reference client reports of one handshake: the protocol's
    :class:`~harness.protocol.state.Negotiated` (everything offered and settled)
    and the fallbacks the client took on the way, which only a client has."""

    fallbacks: list[Fallback] = field(default_factory=list)

    def fallback_kinds(self) -> list[str]:
        return [f.kind for f in self.fallbacks]

    def as_dict(self) -> dict[str, object]:
        """:meth:`Negotiated.as_dict` and the fallbacks."""
        return {
            **super().as_dict(),
            "fallbacks": [{"kind": f.kind, "what": f.what} for f in self.fallbacks],
        }


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


__all__ = ["ExportEntry", "ExportInfo", "Fallback", "Negotiation"]
