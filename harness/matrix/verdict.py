"""Judging a case: what happened, the wire's findings, and what the matrix data predicted.

The verdict values themselves are :class:`harness.verdict.Verdict`.  Here they
are combined, once for every kind of case (a matrix case, a server behind a
URI, a client command checked against the reference server):

- :func:`judge_case` weighs what the run came to against the conformance
  findings on its capture and against the expected verdict;
- :func:`judge` is its last stage: the observed verdict against the expected one.

An :class:`Outcome` pairs the observed verdict with the expected one and says
whether the case is good.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from harness.verdict import BENIGN, Verdict

Finding = Mapping[str, Any]
"""A conformance finding as stored in results (``Finding.to_dict()``)."""


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


def judge_case(observed: Verdict, detail: str, findings: Sequence[Finding], *,
               under_test: str, peer: str, expected: Verdict | None = None,
               capture_problem: str | None = None, peer_faults: Sequence[str] = (),
               reference_breaches_deliberate: bool = False,
               evidenced: bool = True, known_breaches: frozenset[str] = frozenset()) -> Outcome:
    """The final verdict of a case whose run came to ``observed`` (``detail`` says why).

    ``under_test`` is the role of the peer being judged (``server`` or
    ``client``; the reference peer plays the other one) and ``peer`` its name
    for the detail.  In order:

    1. ``capture_problem`` (the capture is damaged, or decoding or checking it
       failed) makes the case an ``error``, unless it already is one;
    2. the peer under test breaking the protocol fails the case, whatever the
       run came to (the reference side may have choked on it): by the
       reference side's own account (``peer_faults``), or a MUST / MUST NOT
       finding of its role on the wire.  SHOULD-level findings never change a
       verdict, nor do ``known_breaches`` (rules a side breaks by its version or by
       the scenario's configuration of it): the reports list them;
    3. the reference side breaking a MUST is a harness bug (``error``), unless
       ``reference_breaches_deliberate`` (a negative scenario makes the
       reference client break rules on purpose; a reference-server profile
       reproduces a real server's deviations) or the run already found fault
       (a ``fail`` or ``error`` stands);
    4. a benign verdict without ``evidenced`` (no capture was written) is an
       ``error``: nothing shows it;
    5. :func:`judge` against ``expected`` (None: any benign verdict is good).
    """
    # Here, not at the top: harness.conformance loads scapy (seconds on a busy machine), and
    # the matrix package and the CLI import this module long before any capture is checked.
    from harness.conformance import MANDATORY_LEVELS

    if capture_problem and observed != Verdict.ERROR:
        observed, detail = Verdict.ERROR, capture_problem
    mandatory = [f for f in findings if f.get("level") in MANDATORY_LEVELS]
    mandatory = [f for f in mandatory if f.get("rule") not in known_breaches]
    theirs = [f for f in mandatory if f.get("role") == under_test]
    ours = [f for f in mandatory if f.get("role") != under_test]
    fault = _peer_fault(peer, peer_faults, theirs, under_test)
    if fault:
        observed, detail = Verdict.FAIL, fault + (f"; steps: {detail}" if detail else "")
    elif ours and not reference_breaches_deliberate and observed.benign:
        first = ours[0]
        observed, detail = Verdict.ERROR, (
            f"the {_reference(under_test)} broke {first['level']} {first['rule']} at frame "
            f"{first['frame']}: {first['message']} (a harness bug)")
    if observed.benign and not evidenced:
        observed, detail = Verdict.ERROR, "no capture was written: the case is not evidenced"
    return judge(observed, expected, detail)


def _peer_fault(peer: str, peer_faults: Sequence[str], theirs: Sequence[Finding],
                under_test: str) -> str:
    """Why the peer under test is at fault ("" when it is not)."""
    if peer_faults:
        return (f"{peer} broke the protocol (by the {_reference(under_test)}'s account): "
                f"{peer_faults[0]}")
    if theirs:
        first = theirs[0]
        return (f"{peer} broke {first['level']} {first['rule']} at frame {first['frame']} "
                f"(spec \"{first['section']}\": \"{first['sentence']}\"): {first['message']}"
                + (f" (and {len(theirs) - 1} more)" if len(theirs) > 1 else ""))
    return ""


def _reference(under_test: str) -> str:
    """The reference peer facing a peer under test in role ``under_test``."""
    return "reference client" if under_test == "server" else "reference server"


__all__ = ["Finding", "Outcome", "judge", "judge_case"]
