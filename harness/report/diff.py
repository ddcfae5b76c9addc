"""What changed between two runs: the view a CI job needs when a peer is upgraded.

Cases are matched by id.  When a peer was upgraded, its cases change ids
(``qemu-nbd@7.2`` -> ``qemu-nbd@10.0``): the cases left unmatched are then paired
by scenario and programs (without versions), when that pairing is one to one,
and reported as the same case on the new version.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from harness.matrix.results import CaseResult

from .store import RunResults


@dataclass(frozen=True)
class CaseChange:
    """One case in both runs whose verdict or findings differ."""

    before: CaseResult
    after: CaseResult
    added_rules: tuple[str, ...] = ()
    """``LEVEL rule`` broken now and not before."""
    removed_rules: tuple[str, ...] = ()

    @property
    def case_id(self) -> str:
        return self.after.case_id

    @property
    def renamed(self) -> bool:
        return self.before.case_id != self.after.case_id


@dataclass
class RunDiff:
    """The differences between a run (``after``) and a baseline (``before``)."""

    new_failures: list[CaseChange] = field(default_factory=list)
    """Good before, failed or errored now."""
    fixed: list[CaseChange] = field(default_factory=list)
    """Failed or errored before, good now."""
    still_failing: list[CaseChange] = field(default_factory=list)
    """Bad in both runs, but with another verdict or other findings."""
    changed: list[CaseChange] = field(default_factory=list)
    """Good in both runs, but another verdict (pass -> unsupported...) or other findings."""
    added: list[CaseResult] = field(default_factory=list)
    removed: list[CaseResult] = field(default_factory=list)
    peers: list[tuple[str, str, str]] = field(default_factory=list)
    """(peer, before, after): peers whose version or package changed."""
    unchanged: int = 0

    @property
    def regressed(self) -> bool:
        """True when some case is newly failing (or a new case fails)."""
        return bool(self.new_failures) or any(not case.ok for case in self.added)

    def to_dict(self) -> dict[str, Any]:
        def change(item: CaseChange) -> dict[str, Any]:
            return {"case": item.after.case_id, "before_case": item.before.case_id,
                    "before": item.before.verdict, "after": item.after.verdict,
                    "added_rules": list(item.added_rules),
                    "removed_rules": list(item.removed_rules), "detail": item.after.detail}
        return {
            "regressed": self.regressed, "unchanged": self.unchanged,
            "new_failures": [change(c) for c in self.new_failures],
            "fixed": [change(c) for c in self.fixed],
            "still_failing": [change(c) for c in self.still_failing],
            "changed": [change(c) for c in self.changed],
            "added": [{"case": c.case_id, "verdict": c.verdict} for c in self.added],
            "removed": [{"case": c.case_id, "verdict": c.verdict} for c in self.removed],
            "peers": [{"peer": p, "before": b, "after": a} for p, b, a in self.peers],
        }


def _rules(case: CaseResult) -> set[str]:
    return {f"{f.get('level', '?')} {f.get('rule', '?')}" for f in case.findings}


def _program(spec: str) -> str:
    """``qemu-nbd@7.2`` -> ``qemu-nbd``; a reference-server profile keeps its family
    (``reference-server@qemu-2.10`` -> ``reference-server@qemu``) so profiles of different
    families never pair."""
    program, _, version = spec.partition("@")
    if program == "reference-server" and version:
        return f"{program}@{version.rsplit('-', 1)[0]}"
    return program


def _loose_key(case: CaseResult) -> tuple[str, str, str, str]:
    return case.scenario, case.role, _program(case.server), _program(case.client)


def _pair_renamed(before: dict[str, CaseResult],
                  after: dict[str, CaseResult]) -> list[tuple[CaseResult, CaseResult]]:
    """Unmatched cases that are the same scenario between the same programs, one to one."""
    old = Counter(_loose_key(c) for c in before.values())
    new = Counter(_loose_key(c) for c in after.values())
    by_old = {_loose_key(c): c for c in before.values()}
    pairs = []
    for case in after.values():
        key = _loose_key(case)
        if old[key] == 1 and new[key] == 1:
            pairs.append((by_old[key], case))
    return pairs


def _peer_label(entry: dict[str, Any]) -> str:
    package = entry.get("package_version")
    return f"{entry.get('spec')}" + (f" ({entry.get('package')} {package})" if package else "")


def _peer_changes(before: RunResults, after: RunResults) -> list[tuple[str, str, str]]:
    old = {e.get("spec"): e for e in before.peers}
    new = {e.get("spec"): e for e in after.peers}
    changes = []
    for spec in sorted(set(old) & set(new)):
        if old[spec].get("package_version") != new[spec].get("package_version"):
            changes.append((spec, _peer_label(old[spec]), _peer_label(new[spec])))
    old_programs = {_program(s): s for s in old if s not in new}
    for spec in sorted(set(new) - set(old)):
        was = old_programs.get(_program(spec))
        if was:
            changes.append((_program(spec), _peer_label(old[was]), _peer_label(new[spec])))
    return changes


def diff_runs(after: RunResults, before: RunResults) -> RunDiff:
    """How ``after`` differs from the baseline ``before``."""
    old = {case.case_id: case for case in before.cases}
    new = {case.case_id: case for case in after.cases}
    pairs = [(old[i], new[i]) for i in sorted(set(old) & set(new))]
    only_old = {i: old[i] for i in old if i not in new}
    only_new = {i: new[i] for i in new if i not in old}
    for was, now in _pair_renamed(only_old, only_new):
        pairs.append((was, now))
        del only_old[was.case_id]
        del only_new[now.case_id]
    diff = RunDiff(added=sorted(only_new.values(), key=lambda c: c.case_id),
                   removed=sorted(only_old.values(), key=lambda c: c.case_id),
                   peers=_peer_changes(before, after))
    for was, now in sorted(pairs, key=lambda p: p[1].case_id):
        change = CaseChange(was, now, tuple(sorted(_rules(now) - _rules(was))),
                            tuple(sorted(_rules(was) - _rules(now))))
        same = (was.verdict == now.verdict and not change.added_rules
                and not change.removed_rules)
        if same and not change.renamed:
            diff.unchanged += 1
        elif was.ok and not now.ok:
            diff.new_failures.append(change)
        elif not was.ok and now.ok:
            diff.fixed.append(change)
        elif same:
            diff.unchanged += 1
        elif not now.ok:
            diff.still_failing.append(change)
        else:
            diff.changed.append(change)
    return diff


def _change_line(change: CaseChange) -> str:
    name = change.after.case_id
    if change.renamed:
        name += f" (was {change.before.case_id})"
    line = f"- `{name}`: {change.before.verdict} -> {change.after.verdict}"
    if change.added_rules:
        line += "; now breaks " + ", ".join(change.added_rules)
    if change.removed_rules:
        line += "; no longer breaks " + ", ".join(change.removed_rules)
    if not change.after.ok and change.after.detail:
        line += f": {change.after.detail[:300]}"
    return line


LISTED = 200
"""Cases listed per section of the Markdown diff (``--json`` lists every one)."""


def _capped(lines: list[str]) -> list[str]:
    if len(lines) <= LISTED:
        return lines
    return [*lines[:LISTED], f"- ... and {len(lines) - LISTED} more (`--json` lists them all)"]


def render_diff(diff: RunDiff, after_name: str, before_name: str) -> str:
    """The diff in Markdown (a CI job summary)."""
    out = [f"# nbd-harness: {after_name} compared with {before_name}", ""]
    verdict = ("**regressed**: new failures" if diff.regressed else "no new failure")
    out += [f"{verdict}; {len(diff.new_failures)} newly failing, {len(diff.fixed)} fixed, "
            f"{len(diff.still_failing)} still failing differently, {len(diff.changed)} "
            f"otherwise changed, {len(diff.added)} new, {len(diff.removed)} gone, "
            f"{diff.unchanged} unchanged.", ""]
    if diff.peers:
        out += ["## Peers that changed", ""]
        out += [f"- {peer}: {was} -> {now}" for peer, was, now in diff.peers]
        out.append("")
    sections = (("New failures", diff.new_failures), ("Fixed", diff.fixed),
                ("Still failing, differently", diff.still_failing),
                ("Changed (still good)", diff.changed))
    for title, changes in sections:
        if changes:
            out += [f"## {title} ({len(changes)})", "",
                    *_capped([_change_line(c) for c in changes]), ""]
    if diff.added:
        out += [f"## New cases ({len(diff.added)})", ""]
        out += _capped([f"- `{c.case_id}`: {c.verdict}" for c in diff.added])
        out.append("")
    if diff.removed:
        out += [f"## Cases gone ({len(diff.removed)})", ""]
        out += _capped([f"- `{c.case_id}`: was {c.verdict}" for c in diff.removed])
        out.append("")
    return "\n".join(out).rstrip() + "\n"


__all__ = ["CaseChange", "RunDiff", "diff_runs", "render_diff"]
