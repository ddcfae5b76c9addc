"""The verdict: what one run of a scenario, or one case of the matrix, came to.

Five values, as in quic-interop-runner's result enum plus the two NBD needs:

- ``pass``: every step held and the wire broke no mandatory rule;
- ``fail``: an expectation broke (data not as written, a wrong reply or error,
  a MUST broken on the wire), or the outcome differs from what the matrix
  data predicts for this pair of versions;
- ``unsupported``: the peer lacks a feature the scenario needs and said so
  correctly (ERR_UNSUP, the flag not advertised);
- ``expected-fallback``: a feature is missing on one side and both sides fell
  back as the scenario says they must (and the data still checks out);
- ``error``: the harness or the environment broke (a peer would not start, a
  timeout, a bug of ours).  Never turned into a pass or a skip.

The values are written into results.json, the reports, JUnit and the results
schema: they never change.  This module sits below every package that names a
verdict (scenarios, matrix, report), so each of them imports it from here.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable


class Verdict(enum.StrEnum):
    """What one run or case came to."""

    PASS = "pass"
    FAIL = "fail"
    UNSUPPORTED = "unsupported"
    EXPECTED_FALLBACK = "expected-fallback"
    ERROR = "error"

    @classmethod
    def parse(cls, text: str) -> Verdict:
        """``"expected-fallback"`` -> :attr:`EXPECTED_FALLBACK`; ValueError for anything else."""
        try:
            return cls(str(text).strip().lower().replace("_", "-"))
        except ValueError:
            known = ", ".join(v.value for v in cls)
            raise ValueError(f"{text!r} is not a verdict (known: {known})") from None

    @property
    def benign(self) -> bool:
        """True for the verdicts a correct pair of peers can produce."""
        return self in BENIGN


BENIGN = frozenset({Verdict.PASS, Verdict.UNSUPPORTED, Verdict.EXPECTED_FALLBACK})
"""Verdicts that are good when the matrix data predicts them."""

ORDER = (Verdict.ERROR, Verdict.FAIL, Verdict.EXPECTED_FALLBACK, Verdict.UNSUPPORTED,
         Verdict.PASS)
"""Worst first: the order summaries list verdicts in."""

SYMBOLS = {
    Verdict.PASS: "✓",
    Verdict.FAIL: "✗",
    Verdict.UNSUPPORTED: "○",
    Verdict.EXPECTED_FALLBACK: "↓",
    Verdict.ERROR: "!",
}
"""One character per verdict, for the matrix page and the progress line."""


def worst(verdicts: Iterable[Verdict]) -> Verdict:
    """The worst of ``verdicts`` in :data:`ORDER` (``pass`` for none)."""
    present = set(verdicts)
    for verdict in ORDER:
        if verdict in present:
            return verdict
    return Verdict.PASS


__all__ = ["BENIGN", "ORDER", "SYMBOLS", "Verdict", "worst"]
