"""The pytest plugin: inert without --nbd-matrix; with it, cases are items (also under xdist)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from _fixtures_matrix import write_library

pytest_plugins = ("pytester",)

PEERS = ("--nbd-server", "reference-server", "--nbd-server", "reference-server@qemu-2.10",
         "--nbd-client", "reference-client")


@pytest.fixture
def library(tmp_path: Path) -> Path:
    return write_library(tmp_path / "scenarios", ("sr-read", "write-read-back"))


def test_inert_without_the_option(pytester: pytest.Pytester, library: Path) -> None:
    pytester.makepyfile(test_plain="def test_one():\n    assert True\n")
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider",
                                          "--nbd-scenarios-dir", str(library))
    result.assert_outcomes(passed=1)
    assert "nbd-harness matrix" not in result.stdout.str()


def test_cases_are_items_with_readable_ids(pytester: pytest.Pytester, library: Path,
                                           tmp_path: Path) -> None:
    result = pytester.runpytest_inprocess(
        "--nbd-matrix", "--nbd-scenarios-dir", str(library), *PEERS, "--collect-only", "-q",
        "--nbd-out", str(tmp_path / "out"), "-p", "no:cacheprovider")
    lines = [line for line in result.stdout.lines if "::" in line]
    names = sorted(line.split("::")[-1] for line in lines)
    assert names == [
        "sr-read[reference-server-vs-reference-client]",
        "sr-read[reference-server@qemu-2.10-vs-reference-client]",
        "write-read-back[reference-server-vs-reference-client]",
        "write-read-back[reference-server@qemu-2.10-vs-reference-client]",
    ]
    assert all(line.split("::")[0].endswith(".yaml") for line in lines)


def test_run_with_markers_and_reports(pytester: pytest.Pytester, library: Path,
                                      tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = pytester.runpytest_inprocess(
        "--nbd-matrix", "--nbd-scenarios-dir", str(library), *PEERS, "--strict-markers",
        "-m", "structured-replies and server-role and spec-option-types",
        "--nbd-out", str(out), "-p", "no:cacheprovider", "-rA")
    result.assert_outcomes(passed=2, deselected=2)
    text = result.stdout.str()
    assert "nbd-harness matrix" in text
    assert "2 cases: 1 expected-fallback, 1 pass" in text
    document = json.loads((out / "results.json").read_text())
    assert document["summary"]["total"] == 2
    assert (out / "index.html").is_file()


def test_an_error_verdict_is_a_pytest_error(pytester: pytest.Pytester, library: Path,
                                            tmp_path: Path) -> None:
    # A conftest that makes every case an environment failure (a peer that would not start).
    pytester.makeconftest("""
import dataclasses
import harness.matrix.runner as runner

real = runner.run_case

def broken(case, store, **kwargs):
    result = real(case, store, **kwargs)
    return dataclasses.replace(result, verdict="error", observed="error",
                               detail="the peer would not start")

runner.run_case = broken
""")
    result = pytester.runpytest_inprocess(
        "--nbd-matrix", "--nbd-scenarios-dir", str(library), "--nbd-server", "reference-server",
        "--nbd-client", "reference-client", "-k", "write-read-back",
        "--nbd-out", str(tmp_path / "out"), "-p", "no:cacheprovider")
    result.assert_outcomes(errors=1, deselected=1)
    assert "the peer would not start" in result.stdout.str()


def test_xdist_workers_share_one_result_set(pytester: pytest.Pytester, library: Path,
                                            tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = pytester.runpytest_subprocess(
        "--nbd-matrix", "--nbd-scenarios-dir", str(library), *PEERS, "-n", "2",
        "--nbd-out", str(out), "-p", "no:cacheprovider", timeout=300)
    result.assert_outcomes(passed=4)
    # The workers' line files, gzip'd once results.json holds the run.
    workers = sorted(path.name for path in out.glob("results-*.jsonl.gz"))
    assert workers and all(name.startswith("results-gw") for name in workers)
    document = json.loads((out / "results.json").read_text())
    assert document["summary"]["total"] == 4 and document["summary"]["ok"]
