"""``junit.xml``: one test suite per pair of peers, one test case per scenario.

CI systems read JUnit XML: ``fail`` becomes ``<failure>``, ``error``
becomes ``<error>``.  ``unsupported`` and ``expected-fallback`` are good
outcomes when the matrix data predicts them, so they are passed test cases
whose ``verdict`` property (and output) says which; nothing is ever
reported as skipped.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path

from harness.matrix.results import CaseResult
from harness.verdict import Verdict

from ._summary import citation, pair_label


def _case_text(result: CaseResult) -> str:
    lines = [f"verdict: {result.verdict} (observed {result.observed}, "
             f"expected {result.expected or 'any good verdict'})"]
    if result.expectation:
        lines.append(f"why expected: {result.expectation}")
    if result.detail:
        lines.append(f"detail: {result.detail}")
    lines += [f"finding: {citation(f)}" for f in result.findings]
    lines += [f"evidence {name}: {path}" for name, path in sorted(result.evidence.items())]
    return "\n".join(lines)


def render_junit(results: Sequence[CaseResult]) -> str:
    """The result set as JUnit XML text."""
    suites: dict[str, list[CaseResult]] = {}
    for result in results:
        suites.setdefault(pair_label(result), []).append(result)
    root = ET.Element("testsuites", name="nbd-harness")
    totals = {"tests": 0, "failures": 0, "errors": 0}
    for pair, members in sorted(suites.items()):
        failures = sum(r.verdict == Verdict.FAIL for r in members)
        errors = sum(r.verdict == Verdict.ERROR for r in members)
        suite = ET.SubElement(root, "testsuite", name=pair, tests=str(len(members)),
                              failures=str(failures), errors=str(errors), skipped="0",
                              time=f"{sum(r.duration for r in members):.3f}")
        for result in sorted(members, key=lambda r: r.scenario):
            case = ET.SubElement(suite, "testcase", classname=f"nbd-harness.{pair}",
                                 name=result.scenario, time=f"{result.duration:.3f}")
            properties = ET.SubElement(case, "properties")
            for name, value in (("case", result.case_id), ("verdict", result.verdict),
                                ("observed", result.observed),
                                ("expected", result.expected or ""), ("role", result.role),
                                ("spec", "; ".join(result.spec))):
                ET.SubElement(properties, "property", name=name, value=value)
            text = _case_text(result)
            if result.verdict == Verdict.FAIL:
                ET.SubElement(case, "failure", message=result.detail[:500] or "failed",
                              type="fail").text = text
            elif result.verdict == Verdict.ERROR:
                ET.SubElement(case, "error", message=result.detail[:500] or "error",
                              type="error").text = text
            ET.SubElement(case, "system-out").text = text
        totals["tests"] += len(members)
        totals["failures"] += failures
        totals["errors"] += errors
    for key, value in totals.items():
        root.set(key, str(value))
    ET.indent(root)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"


def write_junit(results: Sequence[CaseResult], path: Path) -> Path:
    path.write_text(render_junit(results), encoding="utf-8")
    return path


__all__ = ["render_junit", "write_junit"]
