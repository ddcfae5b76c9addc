"""Which recorded sessions of a capture can be replayed, and why the others cannot.

A capture (from the recording proxy, tcpdump or Wireshark; pcap or pcapng,
gzip'd or not) may hold several TCP connections.  Replay needs a session's
handshake and its messages in clear: a session that switched to TLS, that
the capture joined after its greeting, or that carries no NBD is refused with
a message saying so.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from harness.dissect import Capture, Session, decode_capture
from harness.protocol import constants as c

from .model import ReplayError


@dataclass
class Selection:
    """The sessions chosen for replay, and the ones left out with the reason."""

    capture: Capture
    sessions: list[Session] = field(default_factory=list)
    skipped: list[tuple[int, str]] = field(default_factory=list)
    """(session index, why it cannot be replayed) for sessions not asked for by number."""


def unreplayable(session: Session) -> str | None:
    """Why ``session`` cannot be replayed, or None when it can."""
    if not session.nbd:
        return "it carries no NBD"
    if session.state.tls or session.phase == "tls":
        frame = next((m.frame for m in session.messages if m.kind == "option"
                      and m.fields.get("option") == c.Opt.STARTTLS), None)
        where = f" (NBD_OPT_STARTTLS at frame {frame})" if frame else ""
        return (f"it switched to TLS{where}: what followed is encrypted and cannot be "
                "replayed; record the session without TLS (for instance through "
                "`nbd-harness capture` in front of a server started without TLS)")
    if session.joined_midstream:
        return ("the capture joined it after its handshake: without the negotiation "
                "there is nothing to replay from")
    if not any(m.kind in ("oldstyle-greeting", "newstyle-greeting") for m in session.messages):
        return "the capture holds no greeting of it"
    return None


def load_sessions(path: str | Path, select: Sequence[int] = ()) -> Selection:
    """Decode ``path`` and choose the sessions to replay.

    ``select`` lists session indexes (1-based, as ``nbd-harness dissect`` numbers
    them); empty means every replayable session.  Raises :class:`ReplayError`
    when a selected session does not exist or cannot be replayed, or when
    nothing in the capture can be.
    """
    capture = decode_capture(path)
    by_index = {session.index: session for session in capture.sessions}
    selection = Selection(capture=capture)
    if select:
        for index in select:
            session = by_index.get(index)
            if session is None:
                raise ReplayError(f"{path} has no session {index} (it has "
                                  f"{len(capture.sessions)} session(s), numbered from 1; "
                                  "`nbd-harness dissect FILE` lists them)")
            why = unreplayable(session)
            if why:
                raise ReplayError(f"{path}: session {index} cannot be replayed: {why}")
            selection.sessions.append(session)
        return selection
    for session in capture.sessions:
        why = unreplayable(session)
        if why:
            selection.skipped.append((session.index, why))
        else:
            selection.sessions.append(session)
    if not selection.sessions:
        reasons = "; ".join(f"session {i}: {why}" for i, why in selection.skipped)
        raise ReplayError(f"{path}: no session to replay"
                          + (f" ({reasons})" if reasons else " (the capture holds no TCP "
                             "connection)"))
    return selection


__all__ = ["Selection", "load_sessions", "unreplayable"]
