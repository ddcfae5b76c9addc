"""Running cases on worker processes: results in order, timeouts enforced, interruption clean."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from _fixtures_matrix import silent_server, write_library

from harness.matrix import pool
from harness.matrix.cases import (
    Case,
    Expectation,
    PeerRef,
    expand,
    reference_client,
    reference_profiles,
)
from harness.matrix.results import CaseResult, ResultStore, load_results
from harness.scenarios import Scenario, load_library


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Scenario]:
    directory = write_library(tmp_path_factory.mktemp("scenarios"))
    return {s.name: s for s in load_library(directory)}


def cases_of(scenario: Scenario, count: int) -> list[Case]:
    return expand([scenario], reference_profiles()[:count], [reference_client()]).cases


def test_workers_run_every_case_and_the_parent_stores_the_results(
        library: dict[str, Scenario], tmp_path: Path) -> None:
    cases = cases_of(library["sr-read"], 5)
    store = ResultStore(tmp_path)
    seen: list[str] = []
    started: list[str] = []
    run = pool.run_cases(cases, store, jobs=2, shard="1/1",
                         on_start=lambda case, worker: started.append(worker),
                         on_result=lambda result: seen.append(result.case_id))
    assert not run.interrupted
    assert [r.case_id for r in run.results] == [c.id for c in cases]
    assert sorted(seen) == sorted(c.id for c in cases)
    assert set(started) == {"w1", "w2"}
    assert all(r.ok and r.shard == "1/1" for r in run.results), [r.detail for r in run.results]
    assert sorted(r.case_id for r in load_results(tmp_path)) == sorted(seen)


def test_a_case_running_over_its_limit_is_stopped_and_is_an_error(
        library: dict[str, Scenario], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The worker's own watchdog would wait 60 s; the parent's limit (timeout + GRACE) is 1 s.
    monkeypatch.setattr(pool, "GRACE", -59.0)
    with silent_server() as port:
        peer = PeerRef(f"external:nbd://127.0.0.1:{port}/disk", "external", "server",
                       provider="external")
        hung = Case(library["write-read-back"], "commands/write-read-back", "server", peer,
                    reference_client(), Expectation(None), timeout=60.0)
        # The healthy case gets a limit a loaded machine cannot hit (120 - 59 s).
        fine = dataclasses.replace(cases_of(library["sr-read"], 1)[0], timeout=120.0)
        run = pool.run_cases([hung, fine], ResultStore(tmp_path), jobs=1)
    first, second = run.results
    assert first.verdict == "error" and "ran over 1 s" in first.detail
    # A new worker took over and ran the rest.
    assert second.verdict == "pass" and second.worker == "w2"


def test_an_interruption_stops_every_worker_and_keeps_what_finished(
        library: dict[str, Scenario], tmp_path: Path) -> None:
    cases = cases_of(library["sr-read"], 8)

    def interrupt(result: CaseResult) -> None:
        raise KeyboardInterrupt

    run = pool.run_cases(cases, ResultStore(tmp_path), jobs=2, on_result=interrupt)
    assert run.interrupted
    assert 1 <= len(run.results) < len(cases)
    # The autouse leftover check of conftest.py fails this test if a worker or peer is left.
