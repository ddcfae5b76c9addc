"""Replay a captured NBD session: its client side against a live server
(``replay --against URI``), or its server side to a live client (``replay --serve``).

Both report, message by message, where the live peer departs from the recorded
one, semantically (features, errors, data, extents, block sizes), with the spec
sections involved.

    selection = load_sessions("failing.pcapng")
    for report in replay_against(selection, "nbd://127.0.0.1:10809/disk"):
        print(report.render())
"""

from harness.replay._load import Selection, load_sessions, unreplayable
from harness.replay.against import replay_against, replay_session
from harness.replay.model import Difference, ReplayError, ReplayReport
from harness.replay.serve import ReplayServerThread, serve_replay

__all__ = [
    "Difference",
    "ReplayError",
    "ReplayReport",
    "ReplayServerThread",
    "Selection",
    "load_sessions",
    "replay_against",
    "replay_session",
    "serve_replay",
    "unreplayable",
]
