"""What every renderer needs from a result set: counts, the pairs of peers, failures, sessions."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from harness.matrix.results import CaseResult
from harness.verdict import ORDER, Verdict


def pair_label(result: CaseResult) -> str:
    """``qemu-nbd@7.2-vs-reference-client``: the column a case sits in."""
    return f"{result.server}-vs-{result.client}"


@dataclass(frozen=True)
class Summary:
    """Counts of a result set, overall and per pair of peers."""

    total: int
    counts: dict[str, int]
    """Verdict value -> number of cases (every verdict present, worst first)."""
    pairs: list[str]
    """Column labels, sorted."""
    scenarios: list[str]
    """Row labels, sorted."""
    pair_counts: dict[str, dict[str, int]]
    """Pair label -> verdict value -> number."""

    @property
    def ok(self) -> bool:
        return self.counts[Verdict.FAIL.value] == 0 and self.counts[Verdict.ERROR.value] == 0


def summarize(results: Sequence[CaseResult]) -> Summary:
    counts = Counter(result.verdict for result in results)
    pair_counts: dict[str, Counter[str]] = {}
    for result in results:
        pair_counts.setdefault(pair_label(result), Counter())[result.verdict] += 1
    return Summary(
        total=len(results),
        counts={verdict.value: counts.get(verdict.value, 0) for verdict in ORDER},
        pairs=sorted(pair_counts),
        scenarios=sorted({result.scenario for result in results}),
        pair_counts={pair: {v.value: c.get(v.value, 0) for v in ORDER}
                     for pair, c in sorted(pair_counts.items())},
    )


def counts_line(summary: Summary) -> str:
    """``3 pass, 1 fail, 2 unsupported`` (only the verdicts that occur; worst first)."""
    parts = [f"{count} {verdict}" for verdict, count in summary.counts.items() if count]
    return ", ".join(parts) if parts else "no cases"


def verdict_of(result: CaseResult) -> Verdict:
    """The case's verdict (``error`` when the stored one is not a verdict at all)."""
    try:
        return result.final
    except ValueError:
        return Verdict.ERROR


def problems(results: Iterable[CaseResult]) -> list[CaseResult]:
    """The cases that failed or errored, worst first, then by id."""
    rank = {verdict: index for index, verdict in enumerate(ORDER)}
    bad = [r for r in results if not verdict_of(r).benign]
    return sorted(bad, key=lambda r: (rank[verdict_of(r)], r.case_id))


def citation(finding: dict[str, Any]) -> str:
    """``MUST server.x (section "Transmission phase": "the sentence") at frame 12``."""
    return (f"{finding.get('level', '?')} {finding.get('rule', '?')} "
            f"(spec section \"{finding.get('section', '?')}\": "
            f"\"{finding.get('sentence', '')}\") at frame {finding.get('frame', '?')}, "
            f"session {finding.get('session', '?')}: {finding.get('message', '')}")


def negotiated_text(session: dict[str, Any]) -> str:
    """What one connection negotiated, in one line (from a session record or the capture)."""
    if not session:
        return ""
    parts = [session.get("style") or ""]
    if session.get("tls"):
        parts.append("TLS")
    if session.get("extended_headers"):
        parts.append("extended-headers")
    elif session.get("structured_replies"):
        parts.append("structured-replies")
    else:
        parts.append("simple-replies")
    contexts = session.get("meta_contexts") or []
    if contexts:
        parts.append("contexts=" + "+".join(contexts))
    if session.get("export") is not None:
        parts.append(f"export={session['export']!r}")
    return ", ".join(part for part in parts if part)


__all__ = [
    "Summary",
    "citation",
    "counts_line",
    "negotiated_text",
    "pair_label",
    "problems",
    "summarize",
    "verdict_of",
]
