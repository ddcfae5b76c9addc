"""Verdicts, the results store (JSON lines, evidence paths) and the merge of shards."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from harness.matrix.results import (
    CaseResult,
    ResultsError,
    ResultStore,
    case_slug,
    compress_result_lines,
    load_results,
    load_runs,
    merge_results,
)
from harness.matrix.verdict import judge, judge_case
from harness.verdict import BENIGN, Verdict, worst


def result(case_id: str = "read[a@1-vs-b@2]", verdict: str = "pass", *, started: float = 1.0,
           detail: str = "", evidence: dict[str, str] | None = None, **extra) -> CaseResult:
    values = dict(case_id=case_id, scenario=case_id.split("[")[0], role="server",
                  server=case_id.split("[")[1].split("-vs-")[0] if "[" in case_id else "s",
                  client="reference-client", verdict=verdict, observed=verdict,
                  expected=verdict, detail=detail, started=started, evidence=evidence or {})
    values.update(extra)
    return CaseResult(**values)


# --- verdicts -------------------------------------------------------------------------------


def test_verdict_parse_accepts_spellings_and_rejects_others() -> None:
    assert Verdict.parse("expected_fallback") is Verdict.EXPECTED_FALLBACK
    assert Verdict.parse(" PASS ") is Verdict.PASS
    with pytest.raises(ValueError, match="not a verdict"):
        Verdict.parse("skipped")


@pytest.mark.parametrize(("observed", "expected", "final"), [
    (Verdict.PASS, Verdict.PASS, Verdict.PASS),
    (Verdict.EXPECTED_FALLBACK, Verdict.EXPECTED_FALLBACK, Verdict.EXPECTED_FALLBACK),
    (Verdict.UNSUPPORTED, Verdict.UNSUPPORTED, Verdict.UNSUPPORTED),
    # The data predicted something else: the data or the peer is wrong, so the case fails.
    (Verdict.PASS, Verdict.UNSUPPORTED, Verdict.FAIL),
    (Verdict.UNSUPPORTED, Verdict.PASS, Verdict.FAIL),
    (Verdict.EXPECTED_FALLBACK, Verdict.PASS, Verdict.FAIL),
    # fail and error stand whatever was predicted; error is never turned into anything else.
    (Verdict.FAIL, Verdict.PASS, Verdict.FAIL),
    (Verdict.ERROR, Verdict.PASS, Verdict.ERROR),
    (Verdict.ERROR, Verdict.UNSUPPORTED, Verdict.ERROR),
    # Nothing predicted (an external server): any benign verdict is good.
    (Verdict.UNSUPPORTED, None, Verdict.UNSUPPORTED),
    (Verdict.ERROR, None, Verdict.ERROR),
])
def test_judge(observed: Verdict, expected: Verdict | None, final: Verdict) -> None:
    outcome = judge(observed, expected, "why")
    assert outcome.verdict is final
    assert outcome.observed is observed
    assert outcome.ok == (final in BENIGN)
    if final is Verdict.FAIL and observed is not Verdict.FAIL:
        assert f"predicts {expected.value}" in outcome.detail and outcome.detail.endswith("why")


def finding(role: str, level: str = "MUST", rule: str = "r") -> dict[str, object]:
    return {"role": role, "level": level, "rule": f"{role}.{rule}", "frame": 7,
            "section": "S", "sentence": "T", "message": "m"}


@pytest.mark.parametrize(("observed", "findings", "options", "final"), [
    # A MUST the peer under test broke fails the case, whatever the run came to.
    (Verdict.PASS, [finding("server")], {}, Verdict.FAIL),
    (Verdict.ERROR, [finding("server")], {}, Verdict.FAIL),
    (Verdict.UNSUPPORTED, [finding("server", "MUST NOT")], {}, Verdict.FAIL),
    # SHOULD-level findings never change a verdict.
    (Verdict.PASS, [finding("server", "SHOULD"), finding("client", "SHOULD NOT")], {},
     Verdict.PASS),
    # The reference side breaking a MUST is a harness bug...
    (Verdict.PASS, [finding("client")], {}, Verdict.ERROR),
    (Verdict.EXPECTED_FALLBACK, [finding("client")], {}, Verdict.ERROR),
    # ... unless on purpose, or the run already found fault.
    (Verdict.PASS, [finding("client")], {"reference_breaches_deliberate": True}, Verdict.PASS),
    (Verdict.FAIL, [finding("client")], {}, Verdict.FAIL),
    # The reference side's own account of the peer's faults counts like the wire.
    (Verdict.PASS, [finding("client")], {"peer_faults": ["sent junk"]}, Verdict.FAIL),
    # A capture that cannot evidence the case is an error (a peer at fault still fails).
    (Verdict.PASS, [], {"capture_problem": "the capture is damaged: x"}, Verdict.ERROR),
    (Verdict.PASS, [finding("server")], {"capture_problem": "damaged"}, Verdict.FAIL),
    (Verdict.PASS, [], {"evidenced": False}, Verdict.ERROR),
    (Verdict.FAIL, [], {"evidenced": False}, Verdict.FAIL),
    # Then the expectation: expected-fallback observed where pass is predicted fails.
    (Verdict.EXPECTED_FALLBACK, [], {"expected": Verdict.PASS}, Verdict.FAIL),
    (Verdict.EXPECTED_FALLBACK, [], {"expected": Verdict.EXPECTED_FALLBACK},
     Verdict.EXPECTED_FALLBACK),
])
def test_judge_case(observed: Verdict, findings: list[dict[str, object]],
                    options: dict[str, object], final: Verdict) -> None:
    outcome = judge_case(observed, "steps said so", findings, under_test="server",
                         peer="qemu-nbd@7.2", **options)
    assert outcome.verdict is final
    if final is Verdict.FAIL and observed is not Verdict.FAIL and not options:
        assert outcome.observed is Verdict.FAIL
        assert outcome.detail.startswith("qemu-nbd@7.2 broke")
        assert outcome.detail.endswith("; steps: steps said so")
    if final is Verdict.ERROR and observed is not Verdict.ERROR and findings:
        assert "the reference client broke MUST client.r at frame 7" in outcome.detail


def test_judge_case_names_the_first_breach_and_counts_the_rest() -> None:
    breaches = [finding("client", rule="a"), finding("client", rule="b"), finding("server")]
    outcome = judge_case(Verdict.PASS, "", breaches, under_test="client", peer="nbdinfo")
    assert outcome.verdict is Verdict.FAIL
    assert outcome.detail == ('nbdinfo broke MUST client.a at frame 7 (spec "S": "T"): m '
                              "(and 1 more)")


def test_worst_orders_error_first() -> None:
    assert worst([Verdict.PASS, Verdict.FAIL, Verdict.ERROR]) is Verdict.ERROR
    assert worst([Verdict.UNSUPPORTED, Verdict.PASS]) is Verdict.UNSUPPORTED
    assert worst([]) is Verdict.PASS


# --- the store -------------------------------------------------------------------------------


def test_slug_is_a_safe_directory_name() -> None:
    slug = case_slug("ctx/x[nbd://127.0.0.1:1/d-vs-reference-client]")
    assert "/" not in slug and "[" not in slug and ":" not in slug
    assert case_slug("a[b@1.2-vs-c@3]") == "a_b@1.2-vs-c@3_"


def test_append_and_load_round_trip(tmp_path: Path) -> None:
    store = ResultStore(tmp_path)
    finding = {"rule": "server.x", "level": "MUST", "role": "server", "section": "S",
               "sentence": "the server MUST", "frame": 7, "offset": 0, "session": 1,
               "direction": "server", "message": "m"}
    first = result(findings=(finding,), spec=("Transmission",), sessions=({"style": "x"},))
    second = result("write[a@1-vs-b@2]", "fail", detail="bad data")
    store.append(first)
    store.append(second)
    loaded = load_results(tmp_path)
    assert loaded == [first, second]
    assert loaded[1].final is Verdict.FAIL and not loaded[1].ok
    assert loaded[0].mandatory_findings() == [finding]
    line = json.loads((tmp_path / "results.jsonl").read_text().splitlines()[0])
    assert line["format"] == 1 and line["verdict"] == "pass"
    # Once results.json holds the run, the line files are gzip'd and still read the same.
    compress_result_lines(tmp_path)
    assert not (tmp_path / "results.jsonl").exists()
    assert (tmp_path / "results.jsonl.gz").is_file()
    assert load_results(tmp_path) == [first, second]
    store.append(second)  # a later run in the same directory writes a new line file
    compress_result_lines(tmp_path)
    assert len(list(tmp_path.glob("results*.jsonl.gz"))) == 2
    assert [r.case_id for r in load_results(tmp_path)].count(second.case_id) == 2


_APPEND_MANY = """
import sys
from pathlib import Path
from harness.matrix.results import CaseResult, ResultStore
store = ResultStore(Path(sys.argv[1]))
for number in range(50):
    store.append(CaseResult(case_id=f"s{sys.argv[2]}-{number}[a@1-vs-b@2]", scenario="s",
                            role="server", server="a@1", client="b@2", verdict="pass",
                            observed="pass", expected="pass", detail="x" * 5000))
"""


def test_concurrent_writers_never_interleave_lines(tmp_path: Path) -> None:
    writers = [subprocess.Popen([sys.executable, "-c", _APPEND_MANY, str(tmp_path), str(n)])
               for n in range(3)]
    try:
        codes = [writer.wait(60) for writer in writers]
    finally:
        for writer in writers:
            writer.kill()
            writer.wait()
    assert codes == [0, 0, 0]
    loaded = load_results(tmp_path)
    assert len(loaded) == 150
    assert len({r.case_id for r in loaded}) == 150


def test_load_errors_are_one_line_user_errors(tmp_path: Path) -> None:
    with pytest.raises(ResultsError, match="no such result directory"):
        load_results(tmp_path / "missing")
    with pytest.raises(ResultsError, match="not a result directory"):
        load_results(tmp_path)
    (tmp_path / "results.jsonl").write_text('{"case_id": "x"}\n{not json\n')
    with pytest.raises(ResultsError, match=r"results.jsonl:1: not a case result"):
        load_results(tmp_path)


def test_merge_shards_keeps_the_latest_run_and_copies_evidence(tmp_path: Path) -> None:
    shard1, shard2, merged = tmp_path / "s1", tmp_path / "s2", tmp_path / "merged"
    for shard, cases in ((shard1, ["a[x-vs-y]", "b[x-vs-y]"]), (shard2, ["c[x-vs-y]"])):
        store = ResultStore(shard)
        for case_id in cases:
            case_dir = store.case_dir(case_id)
            (case_dir / "capture.pcapng").write_bytes(case_id.encode())
            store.append(result(case_id, started=1.0, evidence={
                "capture": f"cases/{case_slug(case_id)}/capture.pcapng"}))
        store.write_run({"shard": f"{shard.name}", "cases": len(cases)})
    # A re-run of case b in shard 2, later: it replaces the first run.
    store2 = ResultStore(shard2)
    (store2.case_dir("b[x-vs-y]") / "capture.pcapng").write_bytes(b"rerun")
    store2.append(result("b[x-vs-y]", "fail", started=2.0, evidence={
        "capture": f"cases/{case_slug('b[x-vs-y]')}/capture.pcapng"}))
    results = merge_results([shard1, shard2], merged)
    assert [r.case_id for r in results] == ["a[x-vs-y]", "b[x-vs-y]", "c[x-vs-y]"]
    assert [r.verdict for r in results] == ["pass", "fail", "pass"]
    assert load_results(merged) == results
    for item in results:
        copied = merged / item.evidence["capture"]
        expected = b"rerun" if item.case_id.startswith("b") else item.case_id.encode()
        assert copied.read_bytes() == expected
    assert sorted(run["shard"] for run in load_runs(merged)) == ["s1", "s2"]


def test_merge_refuses_nothing_and_itself(tmp_path: Path) -> None:
    with pytest.raises(ResultsError, match="nothing to merge"):
        merge_results([], tmp_path / "out")
    ResultStore(tmp_path).append(result())
    with pytest.raises(ResultsError, match="cannot also be a source"):
        merge_results([tmp_path], tmp_path)


def test_known_breaches_are_reported_but_do_not_fail_the_case() -> None:
    finding = {"rule": "server.baseline-info-go", "level": "MUST", "role": "server",
               "section": "Baseline", "sentence": "s", "frame": 5, "offset": 0,
               "session": 1, "direction": "server", "message": "GO answered ERR_UNSUP"}
    failed = judge_case(Verdict.PASS, "", [finding], under_test="server", peer="qemu-nbd@2.6")
    assert failed.verdict is Verdict.FAIL and "server.baseline-info-go" in failed.detail
    known = judge_case(Verdict.PASS, "", [finding], under_test="server", peer="qemu-nbd@2.6",
                       known_breaches=frozenset({"server.baseline-info-go"}))
    assert known.verdict is Verdict.PASS
    # On the reference side too: a profile of an old version is no harness bug.
    ours = judge_case(Verdict.PASS, "", [finding], under_test="client", peer="nbdinfo",
                      known_breaches=frozenset({"server.baseline-info-go"}))
    assert ours.verdict is Verdict.PASS
