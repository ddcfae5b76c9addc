"""The fuzzer: short seeded campaigns against the reference server (healthy and faulty),
a shrunk failure that ``scenarios run`` replays, and disconnects at every point of a real
client's session."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from harness.client_role import serve_reference
from harness.fuzz import Campaign, run_campaign
from harness.fuzz.clients import every_point
from harness.fuzz.target import ReferenceTarget
from harness.scenarios import load_scenario
from harness.server_role import run_server_scenario
from harness.verdict import Verdict


def _campaign(tmp_path: Path, faults: tuple[str, ...], examples: int):
    target = ReferenceTarget(faults=faults)
    try:
        return run_campaign(Campaign(target, max_examples=examples, seed=4, timeout=3,
                                     out_dir=tmp_path / "out"))
    finally:
        target.close()


def test_healthy_reference_server_gives_no_failure(tmp_path: Path) -> None:
    summary = _campaign(tmp_path, (), 30)
    assert summary.examples >= 30
    assert summary.steps > summary.examples
    assert summary.failures == [], summary.describe()


def test_faulty_server_is_shrunk_to_a_scenario_that_replays(tmp_path: Path) -> None:
    summary = _campaign(tmp_path, ("write-zeroes-not-zeroing",), 80)
    assert len(summary.failures) == 1, summary.describe()
    failure = summary.failures[0]
    assert failure.kind in ("step", "corruption")
    assert failure.pcapng is not None and failure.pcapng.stat().st_size > 0
    scenario = load_scenario(failure.scenario)
    actions = [step.action for step in scenario.steps]
    assert "zero" in actions and len(actions) <= 8  # shrunk: connect, write, zero, read...
    # Replayed against the same broken server, the scenario fails; against a healthy one
    # it passes.
    broken = ReferenceTarget(faults=("write-zeroes-not-zeroing",))
    try:
        assert run_server_scenario(scenario, broken.uri, timeout=3).verdict == Verdict.FAIL
    finally:
        broken.close()
    with serve_reference(scenario.export, workdir=tmp_path / "ref") as served:
        assert run_server_scenario(scenario, served.uri(), timeout=3).verdict == Verdict.PASS


@pytest.mark.skipif(shutil.which("qemu-img") is None, reason="qemu-img is not installed")
def test_qemu_img_fails_cleanly_at_every_point() -> None:
    outcomes = every_point("qemu-img info {uri}", timeout=10)
    assert len(outcomes) > 20
    assert [o.as_dict() for o in outcomes if o.problem] == []
    assert all(o.returncode is not None and o.seconds < 10 for o in outcomes)
    assert any(o.returncode != 0 for o in outcomes)
