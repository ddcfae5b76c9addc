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


def test_leaving_out_optional_lines_is_no_false_claim() -> None:
    from harness.address import Address
    from harness.fuzz.clients import normalised_lines, only_what_it_got

    address = Address.tcp("127.0.0.1", 45433)
    clean = [b"uri: nbd://ADDRESS/disk", b"contexts:", b"size: 1"]
    shorter = normalised_lines(b"uri: nbd://127.0.0.1:45433/disk\nsize: 1\n", address)
    assert only_what_it_got(shorter, clean)
    assert not only_what_it_got([b"size: 2"], clean)
    assert not only_what_it_got([b"size: 1", b"contexts:"], clean)  # order kept


def test_disconnect_group_is_selectable_and_expands_per_client_action() -> None:
    from harness.matrix.cases import real_peer, reference_client, reference_server
    from harness.matrix.disconnect import expand_disconnect, generated_selection
    from harness.scenarios import LIBRARY, load_library

    library = load_library(LIBRARY)
    assert generated_selection(["disconnect"], library) == ([], True)
    assert generated_selection(["handshake"], library) == (["handshake"], False)
    assert generated_selection([], library) == ([], True)
    clients = [real_peer("nbdinfo", "1.14", "client", "host"),
               real_peer("qemu-io", "7.2", "client", "rootfs:x"),
               reference_client()]
    servers = [real_peer("nbdkit", "1.32", "server", "host"), reference_server()]
    cases, excluded = expand_disconnect(servers, clients, host_only=True, timeout=60)
    assert [case.id for case in cases] == [
        "disconnect-read[reference-server-vs-nbdinfo@1.14]",
        "disconnect-client-drops[nbdkit@1.32-vs-reference-client]"]
    assert [e.scenario for e in excluded] == ["disconnect-write"]  # nbdinfo writes nothing
    every, _ = expand_disconnect(servers, clients, host_only=False, timeout=60)
    assert len(every) == 4  # qemu-io from a suite: read and write


@pytest.mark.skipif(shutil.which("nbdinfo") is None, reason="nbdinfo is not installed")
def test_nbdinfo_disconnect_case_judges_every_cut(tmp_path: Path) -> None:
    import json

    from harness.matrix.cases import real_peer
    from harness.matrix.disconnect import expand_disconnect, run_disconnect_case
    from harness.matrix.results import ResultStore

    cases, _ = expand_disconnect([], [real_peer("nbdinfo", "1.14", "client", "host")],
                                 host_only=True, timeout=120)
    store = ResultStore(tmp_path)
    result = run_disconnect_case(cases[0], store)
    assert result.verdict == "pass", result.detail
    cuts = json.loads((tmp_path / result.evidence["cuts"]).read_text())
    assert len(cuts) > 20 and all(cut["returncode"] is not None for cut in cuts)
    assert {189, 234, 366} <= {cut["at"] for cut in cuts if cut["returncode"] == 0}
