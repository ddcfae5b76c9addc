"""What a broken rule produces: a :class:`Finding` that points at the wire and quotes the spec."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Pointer:
    """Where another message of the capture sits: the earlier message a finding's
    message contradicts (see :attr:`Finding.related`)."""

    session: int
    frame: int
    offset: int
    direction: str


@dataclass(frozen=True)
class Finding:
    """One breach of one rule by one message (or undecodable region) of a capture.

    ``frame`` is the capture frame where the offending message starts and
    ``offset`` its position in its direction's byte stream (``direction`` is
    ``"client"`` or ``"server"``: who sent it).  ``rule``, ``level``, ``role``,
    ``section`` and ``sentence`` are copied from the rule, so a finding quotes
    the spec on its own; ``message`` says what exactly happened.
    """

    rule: str
    level: str
    role: str
    section: str
    sentence: str
    session: int
    frame: int
    offset: int
    direction: str
    message: str
    related: Pointer | None = None
    """The earlier message this one contradicts, for rules that compare two messages
    (the export-content rules); ``None`` for the others."""

    @property
    def mandatory(self) -> bool:
        """True for MUST and MUST NOT: the peer broke the protocol, not advice."""
        return self.level in ("MUST", "MUST NOT")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: every field by name (``related`` only when there is one)."""
        out = asdict(self)
        if self.related is None:
            del out["related"]
        return out

    def describe(self) -> str:
        """One line: where, which rule at which level, and what happened."""
        arrow = "client→server" if self.direction == "client" else "server→client"
        return (
            f"frame {self.frame} (session {self.session}, {arrow} offset {self.offset}): "
            f"{self.level} {self.rule}: {self.message}"
        )
