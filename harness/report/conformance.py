"""Conformance reports in Markdown, one per peer@version under test, ready to file upstream.

For each real peer the run judged (the server of server-role cases, the client
of client-role cases), ``conformance/SPEC.md`` lists every spec rule it broke
and every scenario expectation it did not meet: the level and the quoted spec
sentence, the smallest scenario that shows it, the one command that
reproduces it, the decoded messages around the offending one and the capture
to attach.  The reference server's profiles and the reference client are
ours, not upstream's: they get no report.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.matrix.results import CaseResult, case_slug
from harness.verdict import Verdict

from ._summary import counts_line, summarize
from .evidence import (
    CaseEvidence,
    WireBlock,
    findings_of_peer,
    peer_under_test,
    relative_link,
    replay_command,
    reproduce_command,
    rule_breaches,
)
from .store import RunResults

REFERENCE_PROGRAMS = ("reference-server", "reference-client")
LEVEL_ORDER = ("MUST NOT", "MUST", "SHOULD NOT", "SHOULD", "MAY")
CASES_LISTED = 8
"""Cases named per problem (the rest are counted)."""
SPEC_NAMES = {
    "proto": "NBD protocol (doc/proto.md, with the extension-ext-header branch)",
}


@dataclass
class Problem:
    """One broken rule, or one scenario whose expectation a peer did not meet."""

    key: str
    title: str
    level: str
    cases: list[CaseResult] = field(default_factory=list)
    findings: list[dict[str, Any]] = field(default_factory=list)
    """The first finding of each case (rules only)."""

    @property
    def rank(self) -> tuple[int, str]:
        order = LEVEL_ORDER.index(self.level) if self.level in LEVEL_ORDER else len(LEVEL_ORDER)
        return order, self.key


def report_name(spec: str) -> str:
    """The file name of ``spec``'s report inside ``conformance/``."""
    return f"{case_slug(spec)}.md"


def judged_peers(results: RunResults) -> list[str]:
    """Every real peer the run judged, sorted."""
    return sorted({peer_under_test(case) for case in results.cases
                   if peer_under_test(case).split("@")[0] not in REFERENCE_PROGRAMS})


def problems_of(results: RunResults, spec: str) -> list[Problem]:
    """What ``spec`` did wrong: broken rules (any verdict) and failed scenarios, worst first."""
    judged = [case for case in results.cases if peer_under_test(case) == spec]
    found = {f"rule:{b.rule}": Problem(key=b.rule, title=f"{b.level} `{b.rule}`",
                                       level=b.level, cases=b.cases, findings=b.findings)
             for b in rule_breaches(judged)}
    for case in judged:
        # A failed case in which the peer broke a rule is told under that rule.
        if case.verdict == Verdict.FAIL.value and not findings_of_peer(case):
            name = f"{case.group}/{case.scenario}" if case.group else case.scenario
            problem = found.setdefault(f"scenario:{name}", Problem(
                key=name, title=f"scenario `{name}`: expectation not met", level="scenario"))
            problem.cases.append(case)
    return sorted(found.values(), key=lambda p: p.rank)


def _smallest(problem: Problem, results: RunResults) -> tuple[CaseResult, dict[str, Any] | None]:
    """The case that shows ``problem`` with the fewest messages (then the quickest)."""
    def size(index: int) -> tuple[int, float]:
        case = problem.cases[index]
        count = CaseEvidence(results.directory, case).message_count()
        return (count if count else 1 << 30), case.duration

    best = min(range(len(problem.cases)), key=size)
    finding = problem.findings[best] if problem.findings else None
    return problem.cases[best], finding


def _quote(blocks: Iterable[WireBlock], target: WireBlock | None) -> list[str]:
    lines = []
    for block in blocks:
        marker = ">> " if block is target else "   "
        lines += [marker + line for line in block.lines]
    return lines


def _fence(lines: list[str], language: str = "") -> list[str]:
    text = "\n".join(lines)
    fence = "```"
    while fence in text:
        fence += "`"
    return [fence + language, *lines, fence]


def _problem_section(number: int, problem: Problem, results: RunResults, spec: str,
                     report_dir: Path) -> list[str]:
    case, finding = _smallest(problem, results)
    evidence = CaseEvidence(results.directory, case)
    blocks = evidence.blocks()
    out = [f"## {number}. {problem.title}", ""]
    if finding is not None:
        out += [f"**Spec**, section \"{finding.get('section', '?')}\" "
                f"({finding.get('level', '?')}):", "",
                f"> {finding.get('sentence', '')}", "",
                f"**What {spec} did**: {finding.get('message', '')} "
                f"(session {finding.get('session', '?')}, frame {finding.get('frame', '?')}, "
                f"sent by the {finding.get('direction', '?')}).", ""]
    else:
        step = evidence.failed_step() or {}
        sections = "; ".join(f'"{section}"' for section in case.spec) or "(none cited)"
        out += [f"**Spec** sections the scenario checks: {sections}.", ""]
        if case.description:
            out += [f"**Expected behaviour**: {case.description}", ""]
        if step:
            got = f"; got {step['got']!r}" if "got" in step else ""
            wanted = f"expected {step['expected']!r}" if "expected" in step else ""
            out += [f"**What {spec} did**: at scenario line {step.get('line', '?')} "
                    f"({step.get('action', '?')}): {step.get('detail', case.detail)}"
                    + (f" ({wanted}{got})" if wanted or got else "") + ".", ""]
        else:
            out += [f"**What {spec} did**: {case.detail}", ""]
    others = [c for c in problem.cases if c is not case]
    seen_in = [f"`{c.case_id}`" for c in [case, *others][:CASES_LISTED]]
    more = len(problem.cases) - len(seen_in)
    out += [f"**Seen in** {len(problem.cases)} case(s): " + ", ".join(seen_in)
            + (f" and {more} more" if more > 0 else "") + ".", ""]
    scenario_name = f"{case.group}/{case.scenario}" if case.group else case.scenario
    out += [f"**Smallest scenario that shows it**: `{scenario_name}` against "
            f"`{case.client if case.role == 'server' else case.server}`"
            + (f": {case.description}" if case.description else "") + "."]
    scenario_text = evidence.scenario_text()
    if scenario_text:
        out += ["", "<details><summary>scenario file</summary>", "",
                *_fence(scenario_text.rstrip("\n").split("\n"), "yaml"), "", "</details>"]
    out += ["", "**Reproduce** with nbd-harness:", "",
            *_fence([reproduce_command(case, results.runs)], "sh"), ""]
    replay = replay_command(case, results.directory)
    if replay:
        out += ["or replay the recorded session against another build "
                + ("of the server:" if case.role == "server" else "of the client:"), "",
                *_fence([replay], "sh"), ""]
    if finding is not None:
        quoted = evidence.quote_finding(finding, blocks)
        target = next((b for b in quoted if "finding" in b.marks
                       and b.entry and b.entry.get("offset") == finding.get("offset")), None)
        title = "**Decoded messages** around it (the offending message marked `>>`):"
    else:
        quoted = evidence.quote_step(blocks)
        target = None
        title = "**Decoded messages** of the failed step:"
    if quoted:
        out += [title, "", *_fence(_quote(quoted, target)), ""]
    capture = evidence.path("capture")
    if capture is not None:
        out += [f"**Capture to attach**: [{capture.name}]({relative_link(capture, report_dir)}) "
                f"(`{capture.resolve()}`; Wireshark reads it as it is"
                + ("; gunzip it first for trackers that want a plain pcapng" if
                   capture.name.endswith(".gz") else "") + ").", ""]
    return out


def render_conformance(results: RunResults, spec: str, report_dir: Path) -> str:
    """The Markdown report of ``spec`` (links relative to ``report_dir``)."""
    cases = [case for case in results.cases if peer_under_test(case) == spec]
    peer = results.peer(spec)
    environment = results.environment
    harness = environment.get("harness", {})
    roles = sorted({case.role for case in cases})
    name = spec.replace("@", " ")
    out = [f"# NBD conformance report: {name}", "",
           "| | |", "|---|---|",
           f"| Peer | `{spec}` as {' and '.join(roles) or '?'} |"]
    if peer.get("package"):
        out.append(f"| Package | {peer['package']} {peer.get('package_version') or ''} "
                   f"({peer.get('provider', '')}) |")
    if environment:
        out.append(f"| Machine | {environment.get('os', '?')}, kernel "
                   f"{environment.get('kernel', '?')}, {environment.get('arch', '?')} |")
    if harness:
        commit = harness.get("commit", "")
        out.append(f"| Tested by | nbd-harness {harness.get('version', '?')}"
                   + (f" (commit {commit[:12]}{', modified' if harness.get('modified') else ''})"
                      if commit else "") + " |")
    out.append(f"| Spec | {SPEC_NAMES['proto']} |")
    out.append(f"| Cases | {len(cases)}: {counts_line(summarize(cases))} |")
    out.append("")
    found = problems_of(results, spec)
    rules = [p for p in found if p.level != "scenario"]
    scenarios = [p for p in found if p.level == "scenario"]
    levels: dict[str, int] = {}
    for problem in rules:
        levels[problem.level] = levels.get(problem.level, 0) + 1
    out += ["## Summary", ""]
    if not found:
        out += [f"No rule broken and every scenario expectation met in {len(cases)} case(s).",
                ""]
    else:
        out += [f"- {len(rules)} spec rule(s) broken"
                + (f" ({', '.join(f'{n} {lv}' for lv, n in levels.items())})" if levels else ""),
                f"- {len(scenarios)} scenario expectation(s) not met", ""]
        out += [f"{n}. {problem.title} — {len(problem.cases)} case(s)"
                for n, problem in enumerate(found, start=1)]
        out.append("")
    quirks = peer.get("quirks") or []
    if quirks:
        out += ["Deviations already recorded for this version in the harness's matrix data "
                "(`matrix/peers/`): " + ", ".join(f"`{q}`" for q in quirks) + ".", ""]
    errors = [case for case in cases if case.verdict == Verdict.ERROR.value]
    for number, problem in enumerate(found, start=1):
        out += _problem_section(number, problem, results, spec, report_dir)
    if errors:
        out += ["## Cases that could not be judged", "",
                "The harness or the environment broke in these; they say nothing about the "
                "peer:", ""]
        out += [f"- `{case.case_id}`: {case.detail}" for case in errors[:CASES_LISTED]]
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def write_conformance(results: RunResults, directory: Path) -> Path:
    """Write one report per judged peer into ``directory`` (an ``index`` README too)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    rows = []
    for spec in judged_peers(results):
        path = directory / report_name(spec)
        path.write_text(render_conformance(results, spec, directory), encoding="utf-8")
        found = problems_of(results, spec)
        rows.append(f"| [{spec}]({path.name}) | "
                    f"{sum(p.level != 'scenario' for p in found)} | "
                    f"{sum(p.level == 'scenario' for p in found)} |")
    index = ["# Conformance reports", "",
             "One per peer@version the run judged; each is ready to paste into an upstream "
             "bug report (attach the capture it names).", "",
             "| peer | rules broken | scenario expectations not met |", "|---|---|---|",
             *rows]
    (directory / "README.md").write_text("\n".join(index) + "\n", encoding="utf-8")
    return directory


__all__ = ["Problem", "judged_peers", "problems_of", "render_conformance", "report_name",
           "write_conformance"]
