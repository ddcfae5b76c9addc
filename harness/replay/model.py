"""What a replay reports: differences between a recorded session and a live peer.

Both directions of replay share this model: ``replay --against`` (we play the
recorded client to a live server and compare the server's answers) and
``replay --serve`` (we play the recorded server to a live client and compare
the client's messages).  A :class:`Difference` is semantic — a negotiated
feature, an error, data, extents, block sizes, a message that came or did not
come — never "byte 17 differs"; each names the spec sections involved.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from harness.errors import UserError


class ReplayError(UserError):
    """A capture that cannot be replayed (no such session, a TLS session, not NBD...)."""


@dataclass(frozen=True)
class Difference:
    """One way the live peer departed from the recorded one.

    ``step`` is the position in the recorded session (1-based message number,
    as ``nbd-harness dissect`` counts them within the session); ``message`` names
    the recorded message involved (``NBD_OPT_GO``, ``NBD_CMD_READ cookie 5``...);
    ``aspect`` is what differs (``reply type``, ``error``, ``data``, ``extents``,
    ``transmission flags``, ``block size``, ``missing reply``, ``extra message``,
    ``fallback``...); ``recorded`` and ``live`` say it in words; ``sections``
    are the spec section headings involved.
    """

    step: int
    message: str
    aspect: str
    recorded: str
    live: str
    sections: tuple[str, ...] = ()
    frame: int | None = None
    """The frame of the recorded message in the capture, when known."""

    def to_dict(self) -> dict[str, Any]:
        return {"step": self.step, "message": self.message, "aspect": self.aspect,
                "recorded": self.recorded, "live": self.live, "sections": list(self.sections),
                "frame": self.frame}

    def render(self) -> str:
        where = f"#{self.step}" + (f" (frame {self.frame})" if self.frame else "")
        sections = f"  [spec: {'; '.join(self.sections)}]" if self.sections else ""
        return (f"{where} {self.message}: {self.aspect} differs: recorded {self.recorded}; "
                f"live {self.live}{sections}")


@dataclass
class ReplayReport:
    """The outcome of replaying one recorded session."""

    session: int
    """The session's index in the capture (1-based, as ``nbd-harness dissect`` numbers it)."""
    mode: str
    """``against`` (recorded client to a live server) or ``serve`` (the reverse)."""
    peer: str
    """The live peer: a URI for ``against``, the client's address for ``serve``."""
    replayed: int = 0
    """How many recorded messages were played or matched."""
    differences: list[Difference] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    """What the replay adapted (context ids, export name, a fallback) and why."""
    error: str = ""
    """Set when the replay could not go on (connection lost, timeout): a difference too."""

    @property
    def same(self) -> bool:
        return not self.differences and not self.error

    def to_dict(self) -> dict[str, Any]:
        return {"session": self.session, "mode": self.mode, "peer": self.peer,
                "replayed": self.replayed, "same": self.same, "error": self.error,
                "notes": list(self.notes),
                "differences": [d.to_dict() for d in self.differences]}

    def render(self) -> str:
        head = (f"session {self.session} ({self.mode} {self.peer}): {self.replayed} messages "
                "replayed, ")
        head += ("no differences" if self.same
                 else f"{len(self.differences)} difference(s)"
                 + (f", stopped: {self.error}" if self.error else ""))
        lines = [head]
        lines += [f"  note: {note}" for note in self.notes]
        lines += [f"  {d.render()}" for d in self.differences]
        return "\n".join(lines) + "\n"


__all__ = ["Difference", "ReplayError", "ReplayReport"]
