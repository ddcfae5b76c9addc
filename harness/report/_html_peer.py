"""What a peer's page shows, as plain data: its package, counts, the rules it broke.

A peer is judged only by the cases that test it (the server in server-role
cases, the client in client-role ones); the cases where it merely served as
the other side are counted apart, and the reference peers' deliberate
breaches in negative scenarios are never held against anyone.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from harness.matrix.results import CaseResult
from harness.verdict import ORDER, SYMBOLS

from ._html_matrix import (
    VERDICT_CLASS,
    Problem,
    case_href,
    group_key,
    one_line_reason,
)
from ._summary import problems, verdict_of
from .evidence import peer_under_test, rule_breaches

CASES_PER_RULE = 5
"""Cases linked from each broken rule (the count says how many there are)."""


@dataclass(frozen=True)
class CountRow:
    """A row of verdict counts: its label, the counts in :data:`ORDER`, the total."""

    label: str
    note: str
    counts: tuple[int, ...]
    total: int


@dataclass(frozen=True)
class BrokenRule:
    level: str
    rule: str
    section: str
    sentence: str
    cases: int
    links: tuple[tuple[str, str], ...]
    """(case id, link) of the first :data:`CASES_PER_RULE` cases."""


@dataclass
class PeerView:
    spec: str
    entry: dict[str, Any]
    facts: list[tuple[str, str]]
    quirks: list[str]
    roles: list[CountRow]
    groups: list[CountRow]
    groups_judge: bool
    """The group counts are of the cases that test this peer (else: every case it is in)."""
    rules: list[BrokenRule]
    problems: list[tuple[Problem, bool]]
    """Problem cases it took part in, and whether they test it."""
    judged: int
    conformance: str
    """Link to its Markdown conformance report ("" when there is none)."""


def _counts(label: str, note: str, cases: Sequence[CaseResult]) -> CountRow:
    verdicts = Counter(verdict_of(result) for result in cases)
    return CountRow(label, note, tuple(verdicts[v] for v in ORDER), len(cases))


def _facts(spec: str, entry: dict[str, Any]) -> list[tuple[str, str]]:
    facts = []
    program, _, version = spec.partition("@")
    facts.append(("program", str(entry.get("program") or program)))
    if entry.get("version") or version:
        facts.append(("version", str(entry.get("version") or version)))
    if entry.get("family"):
        family = str(entry["family"])
        if entry.get("family_version"):
            family += f" {entry['family_version']}"
        facts.append(("family", family))
    if entry.get("package"):
        package = str(entry["package"])
        if entry.get("package_version"):
            package += f" {entry['package_version']}"
        facts.append(("package", package))
    if entry.get("provider"):
        facts.append(("provider", str(entry["provider"])))
    if entry.get("binary"):
        facts.append(("binary", str(entry["binary"])))
    if entry.get("note"):
        facts.append(("version read", str(entry["note"])))
    if entry.get("roles"):
        facts.append(("roles", ", ".join(str(r) for r in entry["roles"])))
    return facts


def _broken_rules(judged: Sequence[CaseResult]) -> list[BrokenRule]:
    mandatory = ("MUST", "MUST NOT")
    ordered = sorted(rule_breaches(judged),
                     key=lambda b: (b.level not in mandatory, -len(b.cases), b.rule))
    return [BrokenRule(b.level, b.rule, b.section, b.sentence, len(b.cases),
                       tuple((r.case_id, case_href(r, "../"))
                             for r in b.cases[:CASES_PER_RULE]))
            for b in ordered]


def peer_view(spec: str, entry: dict[str, Any], cases: Sequence[CaseResult],
              conformance: str) -> PeerView:
    """The page of ``spec`` from every case of the run (only its own are used)."""
    taking_part = [r for r in cases if spec in (r.server, r.client)]
    judged = [r for r in taking_part if peer_under_test(r) == spec]
    roles = []
    for role in ("server", "client"):
        members = [r for r in taking_part if getattr(r, role) == spec]
        if members:
            tested = sum(1 for r in members if peer_under_test(r) == spec)
            note = str(tested) if tested else "0 (it is the other side)"
            roles.append(_counts(f"as {role}", note, members))
    basis = judged or taking_part
    by_group: dict[str, list[CaseResult]] = {}
    for result in basis:
        by_group.setdefault(result.group, []).append(result)
    groups = [_counts(group or "(no group)", "", by_group[group])
              for group in sorted(by_group, key=group_key)]
    bad = problems(taking_part)
    found = [(Problem(VERDICT_CLASS[verdict_of(r)], SYMBOLS[verdict_of(r)], r.verdict,
                         r.case_id, case_href(r, "../"), one_line_reason(r)),
                 peer_under_test(r) == spec) for r in bad]
    return PeerView(spec=spec, entry=entry, facts=_facts(spec, entry),
                    quirks=[str(q) for q in entry.get("quirks") or ()], roles=roles,
                    groups=groups, groups_judge=bool(judged), rules=_broken_rules(judged),
                    problems=found, judged=len(judged), conformance=conformance)


__all__ = ["BrokenRule", "CountRow", "PeerView", "peer_view"]
