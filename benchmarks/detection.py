#!/usr/bin/env python3
"""How much of the ground truth `nbd-harness lint` finds: recall and false findings.

Every `NAME.deviations.yaml` under the directories given (format: tests/data/zoo/README.md)
lists the deviations a careful reading of the spec finds in `NAME.pcapng`.  Each capture is
linted (`nbd-harness lint --json`); a deviation is *found* when a finding has its rule id (or
one of its `also:` ids) at its frame (or one of its `frames:`); a finding that matches no
listed deviation is a *false finding*.  Printed per capture, per implementation (the
directory holding the file) and in total; with --json, one JSON document.

    .venv/bin/python benchmarks/detection.py tests/data/zoo [--json] [--misses]

Exit status 0 always: this is a measurement, not a test.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

TRUTH_SUFFIX = ".deviations.yaml"


@dataclass
class Deviation:
    """One listed deviation, and whether lint found it."""

    frame: int
    rule: str
    what: str
    sender: str
    section: str
    level: str
    frames: list[int]
    rules: list[str]
    found: bool = False

    @classmethod
    def from_yaml(cls, entry: dict) -> Deviation:
        frames = [int(entry["frame"]), *(int(f) for f in entry.get("frames", []))]
        return cls(frame=int(entry["frame"]), rule=entry["rule"], what=entry["what"],
                   sender=entry["sender"], section=entry["section"], level=entry["level"],
                   frames=frames, rules=[entry["rule"], *entry.get("also", [])])

    def matches(self, finding: dict) -> bool:
        return finding["rule"] in self.rules and int(finding["frame"]) in self.frames


@dataclass
class CaptureResult:
    """Ground truth against lint's findings for one capture."""

    implementation: str
    capture: str
    judged: str
    deviations: list[Deviation]
    false_findings: list[dict] = field(default_factory=list)
    lint_error: str = ""

    @property
    def found(self) -> int:
        return sum(d.found for d in self.deviations)


def lint_command() -> list[str]:
    """`nbd-harness` beside this interpreter (the venv's), else on PATH."""
    beside = Path(sys.executable).with_name("nbd-harness")
    if beside.exists():
        return [str(beside)]
    found = shutil.which("nbd-harness")
    if found is None:
        sys.exit("detection: nbd-harness not found (run it with the project's .venv python)")
    return [found]


def lint(capture: Path) -> tuple[list[dict], str]:
    """lint's findings for one capture, and its error text if it printed no JSON."""
    completed = subprocess.run([*lint_command(), "lint", "--json", str(capture)],
                               capture_output=True, text=True, timeout=300)
    try:
        document = json.loads(completed.stdout)
    except json.JSONDecodeError:
        return [], (completed.stderr.strip().splitlines() or ["no output"])[-1]
    if isinstance(document, list):  # lint --json before nbd-harness-lint/2: a bare list
        return document, ""
    return document["findings"], "; ".join(document["errors"])


def measure(truth_file: Path) -> CaptureResult:
    """Compare one ground-truth file with lint's findings on its capture."""
    truth = yaml.safe_load(truth_file.read_text())
    capture = truth_file.with_name(truth["capture"])
    deviations = [Deviation.from_yaml(e) for e in truth.get("deviations") or []]
    findings, error = lint(capture)
    result = CaptureResult(truth_file.parent.name, str(capture), truth.get("judged", ""),
                           deviations, lint_error=error)
    for finding in findings:
        matched = [d for d in deviations if d.matches(finding)]
        for deviation in matched:
            deviation.found = True
        if not matched:
            result.false_findings.append(finding)
    return result


def truth_files(directories: list[Path]) -> list[Path]:
    files: list[Path] = []
    for directory in directories:
        if directory.is_file():
            files.append(directory)
        else:
            files.extend(sorted(directory.rglob(f"*{TRUTH_SUFFIX}")))
    return files


def _percent(found: int, total: int) -> str:
    return f"{100 * found / total:.0f}%" if total else "-"


def summarize(results: list[CaptureResult]) -> dict:
    """Totals per implementation and overall."""
    per_impl: dict[str, dict[str, int]] = {}
    for result in results:
        row = per_impl.setdefault(result.implementation,
                                  {"captures": 0, "deviations": 0, "found": 0, "false": 0})
        row["captures"] += 1
        row["deviations"] += len(result.deviations)
        row["found"] += result.found
        row["false"] += len(result.false_findings)
    total = {key: sum(row[key] for row in per_impl.values())
             for key in ("captures", "deviations", "found", "false")}
    return {"implementations": per_impl, "total": total}


def render(results: list[CaptureResult], summary: dict, misses: bool) -> str:
    lines = [f"{'capture':58} {'deviations':>10} {'found':>6} {'missed':>6} {'false':>6}"]
    for result in results:
        name = str(Path(result.capture).relative_to(Path(result.capture).parents[1]))
        lines.append(f"{name:58} {len(result.deviations):>10} {result.found:>6} "
                     f"{len(result.deviations) - result.found:>6} "
                     f"{len(result.false_findings):>6}"
                     + (f"  lint error: {result.lint_error}" if result.lint_error else ""))
        if misses:
            for deviation in result.deviations:
                if not deviation.found:
                    lines.append(f"    missed frame {deviation.frame} {deviation.rule}: "
                                 f"{deviation.what}")
            for finding in result.false_findings:
                lines.append(f"    false  frame {finding['frame']} {finding['rule']}: "
                             f"{finding['message']}")
    lines.append("")
    lines.append(f"{'implementation':24} {'captures':>8} {'deviations':>10} {'found':>6} "
                 f"{'recall':>7} {'false':>6}")
    rows = [*summary["implementations"].items(), ("TOTAL", summary["total"])]
    for name, row in rows:
        lines.append(f"{name:24} {row['captures']:>8} {row['deviations']:>10} {row['found']:>6} "
                     f"{_percent(row['found'], row['deviations']):>7} {row['false']:>6}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("directories", nargs="+", type=Path, metavar="DIR")
    parser.add_argument("--json", action="store_true", help="one JSON document")
    parser.add_argument("--misses", action="store_true",
                        help="list each missed deviation and each false finding")
    args = parser.parse_args(argv)
    results = [measure(path) for path in truth_files(args.directories)]
    summary = summarize(results)
    if args.json:
        json.dump({"captures": [asdict(r) | {"found": r.found} for r in results], **summary},
                  sys.stdout, indent=1, ensure_ascii=False)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(render(results, summary, args.misses))
    return 0


if __name__ == "__main__":
    sys.exit(main())
