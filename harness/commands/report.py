"""``nbd-harness report``: render a run's results again, elsewhere, or compared with another run.

    nbd-harness report reports/run-20261121-101500                 # every report, in place
    nbd-harness report RESULTS --html site/ --junit ci/junit.xml
    nbd-harness report RESULTS --markdown upstream/                # conformance reports
    nbd-harness report RESULTS --diff reports/last-week            # what changed

RESULTS is a ``results.json`` or the directory ``nbd-harness run`` wrote.
With ``--diff``, the exit status is 1 when a case newly fails, so a CI job that
upgrades a peer fails on regressions only.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from harness.errors import UserError

if TYPE_CHECKING:
    from harness.report import RunResults


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "report",
        help="render a run's results (HTML, JUnit, Markdown) or compare two runs",
        description="Render the results of `nbd-harness run` (RESULTS: its results.json or "
        "its directory). Without an output option, every report is written again into the "
        "results directory. --diff compares with another run: new failures, fixed cases, "
        "changed findings and upgraded peers (exit status 1 when something newly fails).",
    )
    parser.add_argument("results", type=Path, metavar="RESULTS",
                        help="results.json, or the result directory of a run")
    parser.add_argument("--html", type=Path, metavar="DIR",
                        help="write the HTML report (index.html, a page per case and per peer) "
                        "into DIR; evidence links point back into the results directory")
    parser.add_argument("--junit", type=Path, metavar="FILE", help="write JUnit XML to FILE")
    parser.add_argument("--markdown", type=Path, metavar="DIR",
                        help="write summary.md and one conformance report per peer@version "
                        "(ready to file upstream) into DIR")
    parser.add_argument("--diff", type=Path, metavar="OTHER",
                        help="compare with the run OTHER (the baseline) and print what changed")
    parser.add_argument("--json", action="store_true", help="with --diff: JSON output")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from harness.report import load_run

    results = load_run(args.results)
    if args.json and args.diff is None:
        raise UserError("--json goes with --diff")
    try:
        return _render(args, results)
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        raise UserError(f"{where}cannot write: {exc.strerror or exc}") from None


def _render(args: argparse.Namespace, results: RunResults) -> int:
    from harness.report import load_run, write_reports
    from harness.report.conformance import write_conformance
    from harness.report.diff import diff_runs, render_diff
    from harness.report.html import write_html
    from harness.report.junit import render_junit
    from harness.report.markdown import render_markdown

    from .run import print_report_paths

    wrote = False
    if args.html is not None:
        print(f"HTML report:   {write_html(results, args.html)}")
        wrote = True
    if args.junit is not None:
        _write(args.junit, render_junit(results.cases))
        print(f"JUnit XML:     {args.junit}")
        wrote = True
    if args.markdown is not None:
        _write(args.markdown / "summary.md",
               render_markdown(results.cases, results.runs, results.peers))
        write_conformance(results, args.markdown)
        print(f"Markdown:      {args.markdown}/summary.md and one conformance report per "
              f"peer@version ({args.markdown}/README.md lists them)")
        wrote = True
    if args.diff is not None:
        baseline = load_run(args.diff)
        diff = diff_runs(results, baseline)
        if args.json:
            print(json.dumps(diff.to_dict(), indent=2))
        else:
            sys.stdout.write(render_diff(diff, str(args.results), str(args.diff)))
        return 1 if diff.regressed else 0
    if not wrote:
        print_report_paths(write_reports(results))
    return 0


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


__all__ = ["register", "run"]
