"""The results store, the conformance reports, ``report --diff`` and the ``report`` command,
on the results of a real run (qemu-nbd 7.2 and nbd-server 3.24, each breaking a SHOULD)."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest

from harness.matrix.results import CaseResult
from harness.report import RunResults, load_run, write_reports
from harness.report.conformance import problems_of, render_conformance
from harness.report.diff import diff_runs, render_diff
from harness.report.evidence import CaseEvidence
from harness.report.store import FORMAT, SCHEMA_FILE, results_document, write_results

EPERM_CASE = "write-read-only-eperm[qemu-nbd@7.2-vs-reference-client]"
FLAG_CASE = "flag-not-for-command[nbd-server@3.24-vs-reference-client]"


def nbd_harness(*argv: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "harness.cli", *argv], capture_output=True,
                          text=True, timeout=timeout, check=False)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("run") / "results"
    done = nbd_harness("run", "negative/write-read-only-eperm", "negative/flag-not-for-command",
                       "--server", "qemu-nbd@7.2", "--server", "nbd-server@3.24",
                       "--client", "reference-client", "--out", str(out), "--no-progress")
    assert done.returncode == 1, done.stderr  # both servers break a SHOULD the scenarios expect
    assert f"HTML report:   {out}/index.html" in done.stdout
    assert f"results store: {out}/results.json" in done.stdout
    return out


def test_results_json_follows_its_schema_and_says_what_ran(run_dir: Path) -> None:
    document = json.loads((run_dir / "results.json").read_text())
    jsonschema.validate(document, json.loads(SCHEMA_FILE.read_text()))
    assert (document["schema"], document["format"]) == ("nbd-harness-results", FORMAT)
    assert document["summary"]["total"] == 4 and document["summary"]["verdicts"]["fail"] == 2
    peers = {peer["spec"]: peer for peer in document["peers"]}
    assert peers["qemu-nbd@7.2"]["package"] == "qemu-utils"
    assert peers["qemu-nbd@7.2"]["package_version"].startswith("1:7.2")
    assert peers["qemu-nbd@7.2"]["roles"] == ["server"]
    assert document["environment"]["harness"]["version"]
    assert document["runs"][0]["command"][:2] == ["nbd-harness", "run"]
    case = next(c for c in document["cases"] if c["case_id"] == EPERM_CASE)
    assert case["group"] == "negative" and case["verdict"] == "fail"
    assert {"capture", "wire", "wire-index", "steps", "scenario"} <= set(case["evidence"])
    finding = next(f for f in case["findings"] if f["rule"] == "server.read-only-eperm")
    assert finding["level"] == "SHOULD" and "NBD_EPERM" in finding["sentence"]
    assert all(step["ended"] >= step["started"] > 0 for step in case["steps"])


def test_the_store_reads_back_what_it_wrote(run_dir: Path, tmp_path: Path) -> None:
    results = load_run(run_dir / "results.json")
    assert load_run(run_dir).cases == results.cases
    copy = dataclasses.replace(results, directory=tmp_path)
    write_results(copy)
    assert load_run(tmp_path).cases == results.cases
    assert results_document(load_run(tmp_path))["cases"] == results_document(results)["cases"]


@pytest.mark.parametrize(("content", "message"), [
    ('{"cases": []}', "not an nbd-harness results file"),
    ('{"schema": "nbd-harness-results", "format": 99, "cases": []}', "newer than this harness"),
    ('{"schema": "nbd-harness-results", "format": 1, "cases": [{"x": 1}]}', "cases[0]"),
    ('{"schema": "nbd-harness-res', "truncated or damaged"),
])
def test_a_bad_results_file_is_one_clear_error(tmp_path: Path, content: str,
                                                message: str) -> None:
    path = tmp_path / "results.json"
    path.write_text(content)
    done = nbd_harness("report", str(path))
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr
    done = nbd_harness("report", str(tmp_path / "nowhere"))
    assert done.returncode == 2 and "no such file or directory" in done.stderr


def test_the_wire_log_marks_the_finding_and_the_failed_step(run_dir: Path) -> None:
    results = load_run(run_dir)
    case = results.case(EPERM_CASE)
    assert case is not None
    blocks = CaseEvidence(run_dir, case).blocks()
    flagged = [b for b in blocks if "finding" in b.marks]
    assert [b.entry["name"] for b in flagged if b.entry] == ["NBD_REPLY_TYPE_ERROR"]
    assert "NBD_EINVAL" in flagged[0].text
    step = [b.entry["name"] for b in blocks if "step" in b.marks and b.entry]
    assert "NBD_CMD_WRITE" in step and "NBD_REPLY_TYPE_ERROR" in step
    assert "newstyle greeting" not in step  # the connect step came before


def test_conformance_report_is_ready_to_file(run_dir: Path) -> None:
    results = load_run(run_dir)
    report_dir = run_dir / "conformance"
    text = (report_dir / "qemu-nbd@7.2.md").read_text()
    assert text.startswith("# NBD conformance report: qemu-nbd 7.2")
    assert "| Package | qemu-utils 1:7.2" in text
    assert "## 1. SHOULD `server.read-only-eperm`" in text
    assert ("> Finally, it SHOULD return `NBD_EPERM` if it receives a write or trim request on "
            "a read-only export.") in text
    assert ("nbd-harness run negative/write-read-only-eperm --server qemu-nbd@7.2 --client "
            "reference-client") in text
    assert ">> frame" in text and ">>     error: 22 (NBD_EINVAL)" in text
    assert (f"nbd-harness replay {run_dir.resolve()}/cases/write-read-only-eperm_qemu-nbd@7.2-vs-"
            "reference-client_/capture.pcapng --against nbd://127.0.0.1:PORT/EXPORT") in text
    capture = run_dir / "cases" / "write-read-only-eperm_qemu-nbd@7.2-vs-reference-client_" \
        / "capture.pcapng"
    assert f"(../cases/{capture.parent.name}/capture.pcapng)" in text and capture.is_file()
    assert "name: write-read-only-eperm" in text  # the scenario file, quoted
    # The failed scenario is told under the rule it broke, not a second time.
    assert [p.title for p in problems_of(results, "qemu-nbd@7.2")] == [
        "SHOULD `server.read-only-eperm`"]
    assert "reference-client" not in {p.name.removesuffix(".md") for p in report_dir.iterdir()}
    assert render_conformance(results, "qemu-nbd@7.2", report_dir) == text


def _with_verdict(case: CaseResult, verdict: str, **changes: object) -> CaseResult:
    return dataclasses.replace(case, verdict=verdict, **changes)


def test_diff_finds_new_failures_fixes_changed_findings_and_upgrades(run_dir: Path) -> None:
    after = load_run(run_dir)
    eperm, flag = after.case(EPERM_CASE), after.case(FLAG_CASE)
    assert eperm is not None and flag is not None
    passing = [c for c in after.cases if c.ok]
    before_cases = [
        _with_verdict(eperm, "pass", findings=()),  # newly failing now
        _with_verdict(flag, "fail", findings=flag.findings[:1]),  # same verdict, new rule
        # the same scenario on an older qemu-nbd: paired with the case on 7.2
        dataclasses.replace(passing[0], case_id=passing[0].case_id.replace("@7.2", "@5.2"),
                            server=passing[0].server.replace("@7.2", "@5.2"), verdict="fail"),
        dataclasses.replace(passing[0], case_id="gone[x-vs-y]", scenario="gone"),
    ]
    peers = [dict(p, package_version="1:7.2+old") if p["spec"] == "qemu-nbd@7.2" else p
             for p in after.peers]
    before = RunResults(directory=run_dir, cases=before_cases, peers=peers)
    diff = diff_runs(after, before)
    assert [c.case_id for c in diff.new_failures] == [EPERM_CASE]
    assert [c.before.case_id for c in diff.fixed] == [before_cases[2].case_id]
    assert diff.fixed[0].renamed
    assert [c.case_id for c in diff.removed] == ["gone[x-vs-y]"]
    assert diff.regressed
    text = render_diff(diff, "new", "old")
    assert "**regressed**" in text and f"`{EPERM_CASE}`: pass -> fail" in text
    assert "qemu-nbd@7.2 (qemu-utils 1:7.2+old) -> qemu-nbd@7.2 (qemu-utils 1:7.2" in text
    assert diff_runs(after, after).unchanged == len(after.cases)
    assert not diff_runs(after, after).regressed


def test_report_command_renders_elsewhere_and_diffs(run_dir: Path, tmp_path: Path) -> None:
    done = nbd_harness("report", str(run_dir), "--junit", str(tmp_path / "j.xml"),
                       "--markdown", str(tmp_path / "md"), "--html", str(tmp_path / "html"))
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "j.xml").read_text().count("<testcase ") == 4
    assert (tmp_path / "md" / "qemu-nbd@7.2.md").is_file()
    assert (tmp_path / "md" / "summary.md").is_file()
    assert (tmp_path / "html" / "index.html").is_file()
    same = nbd_harness("report", str(run_dir), "--diff", str(run_dir / "results.json"))
    assert same.returncode == 0 and "no new failure" in same.stdout
    baseline = load_run(run_dir)
    baseline = dataclasses.replace(
        baseline, directory=tmp_path / "base",
        cases=[_with_verdict(c, "pass", findings=()) for c in baseline.cases])
    write_results(baseline)
    worse = nbd_harness("report", str(run_dir), "--diff", str(tmp_path / "base"), "--json")
    assert worse.returncode == 1
    document = json.loads(worse.stdout)
    assert {c["case"] for c in document["new_failures"]} == {EPERM_CASE, FLAG_CASE}


def test_run_reports_are_rewritten_in_place(run_dir: Path) -> None:
    before = (run_dir / "conformance" / "nbd-server@3.24.md").read_text()
    paths = write_reports(load_run(run_dir))
    assert paths["conformance"] == run_dir / "conformance"
    assert (run_dir / "conformance" / "nbd-server@3.24.md").read_text() == before
