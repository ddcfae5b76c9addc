"""``summary.md``: counts, the matrix per pair of peers, every problem with its evidence,
and what each real client negotiated with the reference server."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from harness.matrix.results import CaseResult
from harness.verdict import ORDER

from ._summary import citation, counts_line, negotiated_text, problems, summarize


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _run_lines(runs: Sequence[dict[str, Any]]) -> list[str]:
    lines = []
    for run in runs:
        shard = f" shard {run['shard']}" if run.get("shard") else ""
        wall = f", wall time {run['wall_seconds']:.1f} s" if "wall_seconds" in run else ""
        jobs = f", -j {run['jobs']}" if run.get("jobs") else ""
        host = f" on {run['host']}" if run.get("host") else ""
        lines.append(f"- run{shard}{host}: {run.get('cases', '?')} cases{jobs}{wall}")
    return lines


def negotiation_table(results: Sequence[CaseResult]) -> list[str]:
    """What each real client negotiated (first connection of each client-side case)."""
    rows = []
    for result in results:
        if result.role != "client" or not result.sessions:
            continue
        first = result.sessions[0]
        options = "; ".join(first.get("options", []))
        rows.append(f"| {_cell(result.client)} | {_cell(result.server)} | "
                    f"{_cell(result.scenario)} | {_cell(negotiated_text(first))} | "
                    f"{_cell(options)} |")
    if not rows:
        return []
    return ["## What each client negotiated", "",
            "As the reference server saw it (first connection of each client-side case).", "",
            "| client | server | scenario | negotiated | options (and answers) |",
            "|---|---|---|---|---|", *rows, ""]


def built_peer_lines(peers: Sequence[dict[str, Any]]) -> list[str]:
    """The programs under test that came from a path (``qemu-nbd=PATH``): which file, which
    version, and how that version was placed on the data."""
    rows = [f"| {_cell(entry['spec'])} | `{_cell(entry['binary'])}` | "
            f"{_cell(entry.get('note', ''))} |" for entry in peers if entry.get("binary")]
    if not rows:
        return []
    return ["## Built programs under test", "", "| peer | binary | version |", "|---|---|---|",
            *rows, ""]


def render_markdown(results: Sequence[CaseResult], runs: Sequence[dict[str, Any]] = (),
                    peers: Sequence[dict[str, Any]] = ()) -> str:
    """The report as Markdown text (``peers``: the result set's peer entries)."""
    summary = summarize(results)
    lines = ["# nbd-harness results", "",
             f"{summary.total} cases: {counts_line(summary)}.", ""]
    lines += _run_lines(runs)
    if runs:
        lines.append("")
    lines += built_peer_lines(peers)
    verdicts = [v.value for v in ORDER]
    lines += ["## Per pair of peers", "",
              "| server vs client | " + " | ".join(verdicts) + " |",
              "|---|" + "---|" * len(verdicts)]
    for pair, counts in summary.pair_counts.items():
        lines.append(f"| {_cell(pair)} | " + " | ".join(str(counts[v]) for v in verdicts) + " |")
    lines.append("")
    bad = problems(results)
    if bad:
        lines += ["## Failures and errors", ""]
        for result in bad:
            lines.append(f"### {result.case_id}: {result.verdict}")
            lines.append("")
            if result.description:
                lines.append(f"{result.description}")
                lines.append("")
            lines.append(f"- expected: {result.expected or 'any good verdict'}"
                         + (f" ({result.expectation})" if result.expectation else ""))
            lines.append(f"- observed: {result.observed}")
            if result.detail:
                lines.append(f"- detail: {result.detail}")
            if result.spec:
                lines.append(f"- spec: {'; '.join(result.spec)}")
            lines += [f"- finding: {citation(f)}" for f in result.mandatory_findings()]
            for name, path in sorted(result.evidence.items()):
                lines.append(f"- {name}: [{path}]({path})")
            lines.append("")
    lines += negotiation_table(results)
    return "\n".join(lines).rstrip() + "\n"


__all__ = ["built_peer_lines", "negotiation_table", "render_markdown"]
