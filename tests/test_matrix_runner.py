"""Running one case: real and reference peers, the proxy in front, the wire checked, verdicts."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from _fixtures_matrix import silent_server, write_library

from harness.dissect import decode_capture
from harness.matrix.cases import (
    Case,
    Expectation,
    PeerRef,
    expand,
    real_peer,
    reference_client,
    reference_server,
)
from harness.matrix.results import ResultStore
from harness.matrix.runner import run_case
from harness.report.evidence import read_text
from harness.scenarios import Scenario, load_library

pytestmark = pytest.mark.peers


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Scenario]:
    directory = write_library(tmp_path_factory.mktemp("scenarios"))
    return {s.name: s for s in load_library(directory)}


@pytest.fixture
def store(tmp_path: Path) -> ResultStore:
    return ResultStore(tmp_path / "results")


def only_case(scenario: Scenario, server: PeerRef, client: PeerRef | None = None) -> Case:
    expansion = expand([scenario], [server], [client or reference_client()])
    assert len(expansion.cases) == 1, expansion.excluded
    return expansion.cases[0]


def test_reference_server_case_passes_with_its_evidence(library: dict[str, Scenario],
                                                        store: ResultStore) -> None:
    # --evidence full: a good case keeps everything (compact keeps its page and capture).
    result = run_case(only_case(library["sr-read"], reference_server()), store, evidence="full")
    assert (result.verdict, result.observed, result.expected) == ("pass", "pass", "pass")
    assert result.case_id == "sr-read[reference-server-vs-reference-client]"
    for name in ("capture", "wire", "wire-index", "findings", "steps", "scenario"):
        assert (store.directory / result.evidence[name]).is_file(), name
    capture = decode_capture(store.directory / result.evidence["capture"])
    assert capture.sessions and capture.sessions[0].state.structured_replies
    reads = [m for m in capture.messages if m.name == "NBD_CMD_READ"]
    assert reads, "the read went through the proxy"
    assert json.loads((store.directory / result.evidence["findings"]).read_text()) == []
    assert result.findings == ()
    assert result.sessions[0]["structured_replies"] is True
    assert [step["status"] for step in result.steps] == ["ok"] * len(result.steps)
    assert result.spec == ("Option types", "Structured reply chunk message")


def test_a_profile_without_the_feature_makes_the_predicted_fallback(
        library: dict[str, Scenario], store: ResultStore) -> None:
    result = run_case(only_case(library["sr-read"], reference_server("qemu-2.10")), store,
                      evidence="full")
    assert (result.verdict, result.observed, result.expected) == (
        "expected-fallback", "expected-fallback", "expected-fallback")
    assert "qemu-2.10 lacks structured-replies" in result.expectation
    assert result.sessions[0]["structured_replies"] is False
    wire = read_text(store.directory / result.evidence["wire"])  # passing cases: gzip'd
    assert wire is not None and result.evidence["wire"].endswith(".gz")
    assert "NBD_OPT_STRUCTURED_REPLY" in wire and "NBD_REP_ERR_UNSUP" in wire


def test_real_qemu_nbd_serves_the_case(library: dict[str, Scenario], store: ResultStore,
                                       require_programs) -> None:
    require_programs("qemu-nbd", "qemu-img")
    case = only_case(library["write-read-back"], real_peer("qemu-nbd", "7.2", "server", "host"))
    result = run_case(case, store, evidence="full")  # logs and wire log kept, images not
    assert result.verdict == "pass", result.detail
    case_dir = store.directory / result.evidence["directory"]
    assert any(key.startswith("log:server/") for key in result.evidence)
    wire = read_text(store.directory / result.evidence["wire"])  # passing cases: gzip'd
    assert wire is not None and result.evidence["wire"].endswith(".gz")
    assert "NBD_CMD_WRITE" in wire and "NBD_CMD_READ" in wire
    assert not list(case_dir.rglob("*.qcow2")) and not list(case_dir.rglob("*.raw"))


def test_a_real_server_breaking_a_must_fails_with_the_citation(
        library: dict[str, Scenario], store: ResultStore, require_programs) -> None:
    """qemu-nbd 7.2 answers NBD_OPT_ABORT with NBD_REP_ERR_TLS_REQD on a TLS-only export."""
    require_programs("qemu-nbd", "qemu-img")
    case = only_case(library["abort-in-the-clear"],
                     real_peer("qemu-nbd", "7.2", "server", "host"))
    result = run_case(case, store)
    assert result.verdict == "fail"
    broken = [f for f in result.mandatory_findings() if f["rule"] == "server.abort-ack"]
    assert broken, result.findings
    finding = broken[0]
    assert finding["role"] == "server" and finding["frame"] > 0
    assert finding["section"] and "NBD_REP_ACK" in finding["sentence"]
    assert "server.abort-ack" in result.detail and f"frame {finding['frame']}" in result.detail


def test_client_role_case_is_recorded_through_the_proxy(
        library: dict[str, Scenario], store: ResultStore, require_programs) -> None:
    require_programs("nbdinfo")
    nbdinfo = real_peer("nbdinfo", "1.14", "client", "host")
    case = only_case(library["client-sr"], reference_server("qemu-2.10"), nbdinfo)
    assert case.id == "client-sr[reference-server@qemu-2.10-vs-nbdinfo@1.14]"
    result = run_case(case, store)
    assert (result.verdict, result.expected) == ("expected-fallback", "expected-fallback"), \
        result.detail
    # What the server recorded of the real client, and what the proxy captured, agree.
    assert result.sessions and all(not s["structured_replies"] for s in result.sessions)
    assert any("NBD_OPT_STRUCTURED_REPLY" in o for o in result.sessions[-1]["options"])
    capture = decode_capture(store.directory / result.evidence["capture"])
    names = {m.name for m in capture.messages}
    assert {"NBD_OPT_STRUCTURED_REPLY", "NBD_REP_ERR_UNSUP"} <= names


def test_a_client_from_a_root_filesystem_runs_there(library: dict[str, Scenario],
                                                   store: ResultStore) -> None:
    from harness.peers import Catalog

    provider = Catalog.load().provider("rootfs:sid")
    provider.provision(lambda line: None)  # cached after the first time
    nbdinfo = real_peer("nbdinfo", "1.24", "client", "rootfs:sid")
    result = run_case(only_case(library["client-sr"], reference_server(), nbdinfo), store,
                      evidence="full")  # a good case keeps its logs with --evidence full
    assert result.verdict == "pass", result.detail
    logs = [store.directory / path for key, path in result.evidence.items()
            if key.startswith("log:client/")]
    assert logs and all("rootfs/sid" in log.read_text() for log in logs)


def test_an_environment_failure_is_an_error_never_a_pass(library: dict[str, Scenario],
                                                         store: ResultStore) -> None:
    broken = PeerRef("qemu-nbd@7.2", "qemu-nbd", "server", "7.2", "qemu", "7.2",
                     real_peer("qemu-nbd", "7.2", "server").features, "rootfs:nowhere")
    result = run_case(only_case(library["write-read-back"], broken), store)
    assert (result.verdict, result.observed) == ("error", "error")
    assert "nowhere" in result.detail


def test_the_watchdog_ends_a_case_that_hangs(library: dict[str, Scenario],
                                             store: ResultStore) -> None:
    with silent_server() as port:
        peer = PeerRef(f"external:nbd://127.0.0.1:{port}/disk", "external", "server",
                       provider="external")
        case = Case(library["write-read-back"], "commands/write-read-back", "server", peer,
                    reference_client(), Expectation(None), timeout=1.5)
        started = time.monotonic()
        result = run_case(case, store)
    assert result.verdict == "error"
    assert "did not finish within 1.5 s" in result.detail
    assert time.monotonic() - started < 9  # the step timeout (10 s) was cut short
