"""Replay a captured NBD session: its client side against a live server
(``replay --against URI``), or its server side to a live client (``replay --serve``).

Both report, message by message, where the live peer departs from the recorded
one, semantically (features, errors, data, extents, block sizes), with the spec
sections involved.
"""

from harness.replay._load import Selection, load_sessions, unreplayable
from harness.replay.model import Difference, ReplayError, ReplayReport

__all__ = [
    "Difference",
    "ReplayError",
    "ReplayReport",
    "Selection",
    "load_sessions",
    "unreplayable",
]
