"""The matrix: scenarios x server peer@version x client peer@version, run and judged.

    expansion = expand(load_library(), servers, clients)    # cases with expected outcomes
    result = run_case(expansion.cases[0], ResultStore(out))  # provision, record, lint, verdict

:mod:`.cases` expands the matrix and predicts each case's outcome from the
data in ``matrix/``; :mod:`.runner` runs one case; :mod:`.pool` runs many on
worker processes with a timeout each; :mod:`.results` stores results as JSON
lines and merges shards; :mod:`.verdict` judges a case (the verdict values are
:class:`harness.verdict.Verdict`).
"""

from .cases import (
    Case,
    Excluded,
    Expansion,
    Expectation,
    MatrixError,
    PeerRef,
    expand,
    expect,
    installed_peers,
    parse_peer,
    reference_client,
    reference_profiles,
    reference_server,
    select_scenarios,
)
from .results import CaseResult, ResultStore, load_results, merge_results
from .verdict import Outcome, judge, judge_case

__all__ = [
    "Case",
    "CaseResult",
    "Excluded",
    "Expansion",
    "Expectation",
    "MatrixError",
    "Outcome",
    "PeerRef",
    "ResultStore",
    "expand",
    "expect",
    "installed_peers",
    "judge",
    "judge_case",
    "load_results",
    "merge_results",
    "parse_peer",
    "reference_client",
    "reference_profiles",
    "reference_server",
    "select_scenarios",
]
