"""Reports from a result set: JUnit XML, the Markdown summary, the console (the HTML report,
the store and the conformance reports have their own test modules)."""

from __future__ import annotations

import io
import xml.etree.ElementTree as ET
from pathlib import Path

from harness.matrix.results import CaseResult
from harness.report import REPORT_FILES, RunResults, write_reports
from harness.report.console import Progress, summary_table
from harness.report.junit import render_junit
from harness.report.markdown import render_markdown

FINDING = {"rule": "server.abort-ack", "level": "MUST", "role": "server",
           "section": "Option types", "sentence": "The server MUST reply with `NBD_REP_ACK`.",
           "frame": 9, "offset": 20, "session": 1, "direction": "server",
           "message": "NBD_OPT_ABORT answered with NBD_REP_ERR_TLS_REQD"}


def case(scenario: str, server: str, verdict: str, *, client: str = "reference-client",
         role: str = "server", **extra) -> CaseResult:
    values = dict(case_id=f"{scenario}[{server}-vs-{client}]", scenario=scenario, role=role,
                  server=server, client=client, verdict=verdict, observed=verdict,
                  expected="pass" if verdict in ("pass", "fail", "error") else verdict,
                  duration=0.25, evidence={"directory": f"cases/{scenario}_{server}"})
    values.update(extra)
    return CaseResult(**values)


RESULTS = [
    case("sr-read", "qemu-nbd@7.2", "pass"),
    case("sr-read", "reference-server@qemu-2.10", "expected-fallback",
         expectation="reference-server@qemu-2.10 lacks structured-replies"),
    case("abort", "qemu-nbd@7.2", "fail", detail="qemu-nbd@7.2 broke MUST server.abort-ack",
         findings=(FINDING,), spec=("Option types",)),
    case("psk", "nbdkit@1.32", "unsupported"),
    case("write <b>", "nbd-server@3.24", "error", detail="nbd-server would not start <&>"),
    case("info", "reference-server", "pass", client="nbdinfo@1.14", role="client",
         sessions=({"style": "fixed-newstyle", "structured_replies": True,
                    "extended_headers": False, "meta_contexts": ["base:allocation"],
                    "options": ["NBD_OPT_GO -> NBD_REP_ACK"], "export": "disk"},)),
]


def test_junit_has_failures_and_errors_and_never_skips() -> None:
    root = ET.fromstring(render_junit(RESULTS))
    assert (root.get("tests"), root.get("failures"), root.get("errors")) == ("6", "1", "1")
    cases = {c.get("name") + "@" + c.get("classname"): c for c in root.iter("testcase")}
    failed = cases["abort@nbd-harness.qemu-nbd@7.2-vs-reference-client"]
    failure = failed.find("failure")
    assert failure is not None and "server.abort-ack" in failure.text
    assert "frame 9" in failure.text and "Option types" in failure.text
    errored = cases["write <b>@nbd-harness.nbd-server@3.24-vs-reference-client"]
    assert errored.find("error") is not None
    assert not list(root.iter("skipped"))
    fallback = cases["sr-read@nbd-harness.reference-server@qemu-2.10-vs-reference-client"]
    properties = {p.get("name"): p.get("value") for p in fallback.iter("property")}
    assert properties["verdict"] == "expected-fallback"
    assert fallback.find("failure") is None and fallback.find("error") is None


def test_markdown_lists_pairs_problems_and_what_clients_negotiated() -> None:
    text = render_markdown(RESULTS, [{"shard": "2/2", "cases": 6, "wall_seconds": 12.5}])
    assert "6 cases: 1 error, 1 fail, 1 expected-fallback, 1 unsupported, 2 pass." in text
    assert "| qemu-nbd@7.2-vs-reference-client | 0 | 1 | 0 | 0 | 1 |" in text
    assert "### abort[qemu-nbd@7.2-vs-reference-client]: fail" in text
    assert "MUST server.abort-ack" in text and "at frame 9" in text
    assert "wall time 12.5 s" in text
    assert "## What each client negotiated" in text
    assert "| nbdinfo@1.14 | reference-server | info | fixed-newstyle, structured-replies, " \
           "contexts=base:allocation, export='disk' | NBD_OPT_GO -> NBD_REP_ACK |" in text


def test_write_reports_writes_every_report(tmp_path: Path) -> None:
    paths = write_reports(RunResults(directory=tmp_path, cases=RESULTS))
    assert {kind: path.name for kind, path in paths.items()} == REPORT_FILES
    assert all(path.is_dir() or path.stat().st_size > 0 for path in paths.values())
    # The conformance reports: one per real peer judged (the reference peers get none).
    assert sorted(p.name for p in paths["conformance"].iterdir()) == [
        "README.md", "nbd-server@3.24.md", "nbdinfo@1.14.md", "nbdkit@1.32.md", "qemu-nbd@7.2.md"]


def test_console_summary_and_progress() -> None:
    table = summary_table(RESULTS)
    assert "qemu-nbd@7.2-vs-reference-client" in table
    assert "Failures and errors (2):" in table and "evidence: cases/abort_qemu-nbd@7.2" in table
    assert "nbdinfo@1.14" in table and "contexts base:allocation" in table
    assert table.splitlines()[-1] == ("6 cases: 1 error, 1 fail, 1 expected-fallback, "
                                      "1 unsupported, 2 pass")
    stream = io.StringIO()
    progress = Progress(len(RESULTS), stream)
    for result in RESULTS:
        progress.result(result)
    progress.finish()
    output = stream.getvalue()
    # Not a terminal: problems are printed as they happen, no carriage-return redraws.
    assert "fail: abort[qemu-nbd@7.2-vs-reference-client]" in output
    assert "error: write <b>[nbd-server@3.24-vs-reference-client]" in output
    assert "\r" not in output
    assert progress.done == 6
