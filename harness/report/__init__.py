"""Reports generated from a result set: JSON, JUnit XML, Markdown and the static matrix page.

    paths = write_reports(load_results(directory), directory)

Renderers read :class:`~harness.matrix.results.CaseResult` objects only, so a
merged result set (several CI shards) renders exactly like a single run.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from harness.matrix.results import CaseResult

from ._summary import Summary, citation, counts_line, negotiated_text, problems, summarize
from .html import render_html
from .json_report import render_json
from .junit import render_junit
from .markdown import render_markdown

REPORT_FILES = {
    "json": "report.json",
    "junit": "junit.xml",
    "markdown": "summary.md",
    "html": "index.html",
}
"""Format -> file name inside the result directory."""


def write_reports(results: Sequence[CaseResult], directory: Path,
                  runs: Sequence[dict[str, Any]] = ()) -> dict[str, Path]:
    """Write every report into ``directory``; return format -> path."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    ordered = sorted(results, key=lambda r: r.case_id)
    texts = {
        "json": render_json(ordered, runs),
        "junit": render_junit(ordered),
        "markdown": render_markdown(ordered, runs),
        "html": render_html(ordered, runs),
    }
    paths = {}
    for kind, text in texts.items():
        path = directory / REPORT_FILES[kind]
        path.write_text(text, encoding="utf-8")
        paths[kind] = path
    return paths


__all__ = [
    "REPORT_FILES",
    "Summary",
    "citation",
    "counts_line",
    "negotiated_text",
    "problems",
    "render_html",
    "render_json",
    "render_junit",
    "render_markdown",
    "summarize",
    "write_reports",
]
