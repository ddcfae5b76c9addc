"""What a good case keeps (``run --evidence``): a compact capture with bulk data elided but
every header and length kept, the whole capture, or none of its wire (issue 11, item 5)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from harness.cli import main
from harness.dissect import decode_capture
from harness.matrix._keep import tls_application_data

pytestmark = pytest.mark.peers

RUN = ["run", "large-transfer", "--server", "reference-server", "--client", "reference-client",
       "-j", "1", "--no-progress"]


def _run(tmp_path: Path, evidence: str) -> Path:
    out = tmp_path / evidence
    assert main([*RUN, "--out", str(out), "--evidence", evidence]) == 0
    (case,) = json.loads((out / "results.json").read_text())["cases"]
    return out / case["evidence"]["directory"]


def _data_messages(capture: Path) -> list[tuple[str, int, int]]:
    decoded = decode_capture(capture)
    assert decoded.errors == []
    return [(m.name, m.offset, m.length) for s in decoded.sessions for m in s.messages
            if m.kind in ("request", "simple-reply", "chunk")]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("evidence")
    return {evidence: _run(base, evidence) for evidence in ("full", "compact", "failures")}


def test_a_compact_capture_keeps_every_message_but_not_the_data(runs: dict[str, Path]) -> None:
    full, compact = runs["full"] / "capture.pcapng.gz", runs["compact"] / "capture.pcapng.gz"
    assert compact.stat().st_size * 20 < full.stat().st_size
    messages = _data_messages(compact)
    assert messages == _data_messages(full) and any(n == "NBD_CMD_WRITE" for n, _, _ in messages)
    raw = gzip.decompress(compact.read_bytes())
    assert b"nbd-harness: a good case's capture, compacted: the data of" in raw
    assert b"data bytes elided (zeroed)" in raw


def test_a_compact_case_keeps_its_capture_alone_and_lint_still_reads_it(
        runs: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    case = runs["compact"]
    assert sorted(p.name for p in case.iterdir()) == ["capture.pcapng.gz", "index.html"]
    assert main(["lint", str(case / "capture.pcapng.gz")]) == 0
    capsys.readouterr()
    page = (case / "index.html").read_text()
    assert "nbd-harness dissect" in page and "capture.pcapng.gz" in page


def test_a_full_case_keeps_its_wire_log_steps_and_scenario(runs: dict[str, Path]) -> None:
    case = runs["full"]
    for name in ("wire.txt.gz", "wire-index.json.gz", "steps.json", "findings.json",
                 "scenario.yaml"):
        assert (case / name).exists(), name


def test_good_cases_keep_the_scenario_once_and_results_hold_their_steps(
        runs: dict[str, Path]) -> None:
    for evidence in ("compact", "failures"):
        out = runs[evidence].parent.parent
        (case,) = json.loads((out / "results.json").read_text())["cases"]
        assert case["evidence"]["scenario"] == "scenarios/commands/large-transfer.yaml"
        assert (out / case["evidence"]["scenario"]).read_text().startswith("name: large-transfer")
        assert case["steps"] and all(step["status"] == "ok" for step in case["steps"])


def test_failures_only_keeps_no_wire_evidence_of_a_good_case(runs: dict[str, Path]) -> None:
    case = runs["failures"]
    assert [p.name for p in case.iterdir()] == ["index.html"]
    assert "a good case keeps none" in (case / "index.html").read_text()


def test_tls_application_data_is_found_by_record() -> None:
    records = bytes([22, 3, 3, 0, 4]) + b"hand" + bytes([23, 3, 3, 0x10, 0]) + bytes(4096)
    assert tls_application_data(records, 100) == [(100 + 9 + 5, 100 + 9 + 5 + 4096)]
