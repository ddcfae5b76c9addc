"""The verdict of a case: what happened, and whether that is what the matrix data predicted.

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

An :class:`Outcome` pairs the observed verdict with the expected one and
says whether the case is good.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Verdict(enum.StrEnum):
    """What one case came to."""

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


@dataclass(frozen=True)
class Outcome:
    """The verdict a case ends with, given what happened and what the data predicted.

    ``observed`` is what the steps and the wire checks came to; ``expected`` is
    what the matrix data predicts; ``verdict`` is the final word: ``error`` and
    ``fail`` stand; a benign verdict other than the predicted one is a ``fail``
    (the data or the peer is wrong, and the detail says which differ).
    """

    verdict: Verdict
    observed: Verdict
    expected: Verdict | None
    """None when nothing is predicted (an external server): any benign verdict is good."""
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.verdict in BENIGN


def judge(observed: Verdict, expected: Verdict | None, detail: str = "") -> Outcome:
    """Combine the observed verdict with the expected one (see :class:`Outcome`)."""
    if observed in (Verdict.ERROR, Verdict.FAIL) or expected is None or observed == expected:
        return Outcome(observed, observed, expected, detail)
    mismatch = (f"the matrix data predicts {expected.value}, "
                f"but the case came to {observed.value}")
    return Outcome(Verdict.FAIL, observed, expected,
                   f"{mismatch}: {detail}" if detail else mismatch)


def worst(verdicts: list[Verdict]) -> Verdict:
    """The worst of ``verdicts`` in :data:`ORDER` (``pass`` for none)."""
    for verdict in ORDER:
        if verdict in verdicts:
            return verdict
    return Verdict.PASS


__all__ = ["BENIGN", "ORDER", "SYMBOLS", "Outcome", "Verdict", "judge", "worst"]
