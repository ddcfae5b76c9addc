"""Reports of a run: the results store and what people read.

    results = collect(directory, cases, runs, peers)   # or load_run(path)
    paths = write_reports(results)

Writes into the result directory:

- ``results.json``: the results store (:mod:`.store`; schema ``results.schema.json``);
- ``index.html`` with ``cases/SLUG/index.html`` and ``peers/SPEC.html``: the HTML report;
- ``junit.xml``: one testcase per case, the findings in the failure text;
- ``summary.md``: counts and problems, for a CI job's summary;
- ``conformance/SPEC.md``: per peer@version under test, a report ready to file upstream.

Renderers read :class:`~harness.report.store.RunResults` only, so a merged result
set (several CI shards) renders exactly like a single run.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from harness.matrix.results import (
    CaseResult,
    compress_result_lines,
    latest_per_case,
    load_results,
    load_runs,
)

from ._summary import Summary, citation, counts_line, negotiated_text, problems, summarize
from .conformance import write_conformance
from .environment import describe_environment, describe_peers
from .html import write_html
from .junit import render_junit
from .markdown import render_markdown
from .store import RESULTS_JSON, RunResults, load_run, write_results

REPORT_FILES = {
    "results": RESULTS_JSON,
    "junit": "junit.xml",
    "summary": "summary.md",
    "html": "index.html",
    "conformance": "conformance",
}
"""Report -> its file (or directory) name inside the result directory."""


def peers_from_results(cases: Iterable[CaseResult]) -> list[dict[str, Any]]:
    """Peer entries when only the results are known (no matrix data at hand)."""
    entries: dict[str, dict[str, Any]] = {}
    for case in cases:
        for spec, role in ((case.server, "server"), (case.client, "client")):
            entry = entries.setdefault(spec, {"spec": spec, "program": spec.split("@")[0],
                                              "version": spec.partition("@")[2] or None,
                                              "roles": [], "quirks": []})
            if role not in entry["roles"]:
                entry["roles"].append(role)
    return [entries[spec] for spec in sorted(entries)]


def collect(directory: Path, cases: Sequence[CaseResult] | None = None,
            runs: Sequence[dict[str, Any]] | None = None, peers: Iterable[Any] = ()) -> RunResults:
    """The store of the run in ``directory``: ``cases`` (default: its ``results*.jsonl``),
    ``runs`` (default: its ``run.json``), this machine's environment, and the peers
    (:class:`~harness.matrix.cases.PeerRef` objects; default: named by the cases only)."""
    directory = Path(directory)
    if cases is None:
        cases = latest_per_case(load_results(directory))
    if runs is None:
        runs = load_runs(directory)
    described = describe_peers(peers) if peers else []
    known = {entry["spec"] for entry in described}
    described += [entry for entry in peers_from_results(cases) if entry["spec"] not in known]
    return RunResults(directory=directory, cases=sorted(cases, key=lambda r: r.case_id),
                      runs=list(runs), environment=describe_environment(),
                      peers=sorted(described, key=lambda e: e["spec"]))


def write_reports(results: RunResults) -> dict[str, Path]:
    """Write the store and every report into ``results.directory``; return name -> path."""
    directory = results.directory
    directory.mkdir(parents=True, exist_ok=True)
    paths = {"results": write_results(results)}
    # results.json now holds every case: the crash-safe line files shrink to a tenth.
    compress_result_lines(directory)
    paths["junit"] = directory / REPORT_FILES["junit"]
    paths["junit"].write_text(render_junit(results.cases), encoding="utf-8")
    paths["summary"] = directory / REPORT_FILES["summary"]
    paths["summary"].write_text(render_markdown(results.cases, results.runs, results.peers),
                                encoding="utf-8")
    paths["conformance"] = write_conformance(results, directory / REPORT_FILES["conformance"])
    paths["html"] = write_html(results, directory)
    return paths


__all__ = [
    "REPORT_FILES",
    "RunResults",
    "Summary",
    "citation",
    "collect",
    "counts_line",
    "load_run",
    "negotiated_text",
    "peers_from_results",
    "problems",
    "summarize",
    "write_reports",
]
