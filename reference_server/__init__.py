"""The reference server: a complete NBD server, sans-IO at its core.

Most callers want :mod:`.runner` (a server on a thread), :mod:`.config`,
:mod:`.features` / :mod:`.profiles` (what a version profile can do) and
:mod:`.storage` (the export backends).  The sans-IO pieces re-exported here
are for a caller that answers like the reference server without running it
(the replay's honest server, :mod:`harness.replay`): how options are answered
(:class:`OptionContext`, :func:`answer_option`, :func:`transmission_flags`),
how commands are executed (:class:`Executor`, :data:`Reply`), and the
interval map the backends keep their state in (:class:`RangeMap`,
:func:`merge_runs`, :func:`overlay_runs`).
"""

from ._commands import Executor, Reply
from ._extents import RangeMap, merge_runs, overlay_runs
from ._options import OptionContext, answer_option, transmission_flags

__all__ = [
    "Executor",
    "OptionContext",
    "RangeMap",
    "Reply",
    "answer_option",
    "merge_runs",
    "overlay_runs",
    "transmission_flags",
]
