"""Server-role scenarios end to end against the reference server (in-process, loopback).

Every server-role scenario of the library must pass against the full
reference server; against qemu version profiles each must give the verdict
its requirements and fallback predict from the profile's features; and a
server that lies, loses writes or vanishes must fail (or be an error), never
pass.
"""

from __future__ import annotations

import asyncio
import textwrap
from pathlib import Path

import pytest

from harness.client_role import serve_reference
from harness.peerdata import default_peerdata
from harness.scenarios import (
    Scenario,
    ScenarioResult,
    load_library,
    load_scenario,
    server_has,
)
from harness.scenarios._yaml import parse_text
from harness.scenarios.loader import scenario_from_document
from harness.server_role import run_server_scenario
from reference_server.features import FULL, ServerFeatures
from reference_server.profiles import profile

TIMEOUT = 10.0
LIBRARY = load_library()
SERVER_SCENARIOS = [s for s in LIBRARY if "server" in s.roles]
PROFILES = ("qemu-2.6", "qemu-3.0", "qemu-7.2")
"""Old, middle and current qemu: every feature of the list is missing in one of them."""


def harness_limited(scenario: Scenario) -> bool:
    return "harness-limit" in scenario.tags


def run(scenario: Scenario, features: ServerFeatures = FULL, tmp_path: Path | None = None,
        **kwargs: object) -> ScenarioResult:
    with serve_reference(scenario.export, features, tmp_path) as served:
        return run_server_scenario(scenario, served.uri(), tls_dir=served.tls_dir,
                                   timeout=TIMEOUT, **kwargs)  # type: ignore[arg-type]


def explain(result: ScenarioResult) -> str:
    lines = [f"{result.verdict}: {result.detail}"]
    lines += [f"  {s.phase}[{s.index}] line {s.line} {s.action}: {s.status} {s.detail}"
              for s in result.steps]
    return "\n".join(lines)


def test_there_are_enough_server_scenarios_in_every_group() -> None:
    groups = {s.group for s in SERVER_SCENARIOS}
    assert groups >= {"handshake", "options", "commands", "contexts", "tls", "structured",
                      "extended", "negative", "qemu-features"}
    assert len(SERVER_SCENARIOS) >= 30


@pytest.mark.parametrize("scenario", SERVER_SCENARIOS, ids=lambda s: s.id)
def test_passes_against_the_full_reference_server(scenario: Scenario, tmp_path: Path) -> None:
    result = run(scenario, FULL, tmp_path)
    if harness_limited(scenario):
        # TLS-PSK: the reference client cannot play it. An error, never a pass or a skip.
        assert result.verdict == "error", explain(result)
        assert "PSK" in result.detail
        return
    assert result.verdict == "pass", explain(result)
    assert len(result.steps) >= len(scenario.steps), explain(result)
    assert all(step.status == "ok" for step in result.steps), explain(result)


# Profile quirks that hide features on read-only exports (qemu does not advertise
# write-only commands there): reference_server/_options.py transmission_flags.
HIDDEN_ON_READ_ONLY = {
    "read-only-hides-write-flags": {"trim", "write-zeroes", "fast-zero"},
    "read-only-hides-fua": {"fua"},
}


# Profile quirks that reproduce a real release's deviation from the spec, and the scenarios
# that catch it (the real qemu-nbd fails them too: docs/findings.md #6 and #8).
DEVIATIONS = {
    "abort-before-tls-refused": {"tls/forcedtls-abort-allowed"},
    "request-errors-einval": {"negative/write-read-only-eperm", "negative/trim-read-only-eperm",
                              "negative/zero-read-only-eperm"},
}


def expected_verdict(scenario: Scenario, features: ServerFeatures) -> str:
    missing = {f for f in scenario.requires_server if not server_has(features, f)}
    if scenario.export.spec.read_only:
        for quirk, hidden in HIDDEN_ON_READ_ONLY.items():
            if quirk in features.quirks:
                missing |= hidden & scenario.requires_server
    if not missing:
        deviates = any(scenario.id in DEVIATIONS.get(quirk, ()) for quirk in features.quirks)
        return "fail" if deviates else "pass"
    assert scenario.fallback is not None
    return scenario.fallback.outcome


@pytest.mark.parametrize("profile_name", PROFILES)
def test_verdicts_follow_the_profiles_features(profile_name: str, tmp_path: Path) -> None:
    features = profile(profile_name)
    wrong = []
    for scenario in SERVER_SCENARIOS:
        if harness_limited(scenario):
            continue
        result = run(scenario, features, tmp_path / scenario.name)
        wanted = expected_verdict(scenario, features)
        if result.verdict != wanted:
            wrong.append(f"{scenario.id}: expected {wanted}, got {explain(result)}")
    assert not wrong, "\n".join(wrong)


def test_unsupported_says_how_the_server_said_so(tmp_path: Path) -> None:
    scenario = next(s for s in LIBRARY if s.name == "cache")
    result = run(scenario, profile("qemu-2.10"), tmp_path)
    assert result.verdict == "unsupported"
    assert "NBD_FLAG_SEND_CACHE not advertised" in result.detail
    assert result.evidence["missing_features"] == {"cache": "NBD_FLAG_SEND_CACHE not advertised"}


def test_expected_fallback_still_checks_the_data(tmp_path: Path) -> None:
    scenario = next(s for s in LIBRARY if s.name == "server-2.10-opt-go")
    result = run(scenario, profile("qemu-2.6"), tmp_path)
    assert result.verdict == "expected-fallback", explain(result)
    phases = {(s.phase, s.action, s.status) for s in result.steps}
    assert ("steps", "expect_negotiated", "skipped") in phases
    assert ("fallback", "expect_negotiated", "ok") in phases
    assert ("fallback", "read", "ok") in phases
    negotiated = result.evidence["connections"]["main"][0]
    assert negotiated["selected_with"] == "NBD_OPT_EXPORT_NAME"


def test_client_features_make_the_reference_client_older(tmp_path: Path) -> None:
    scenario = next(s for s in LIBRARY if s.name == "server-2.11-structured-replies")
    everything = set(default_peerdata().features)
    result = run(scenario, FULL, tmp_path, features_client=everything - {"structured-replies"})
    assert result.verdict == "expected-fallback", explain(result)
    assert result.evidence["missing_features"] == {"structured-replies": "the client lacks it"}
    unsupported = next(s for s in LIBRARY if s.name == "server-2.12-base-allocation")
    result = run(unsupported, FULL, tmp_path / "b",
                 features_client=everything - {"base-allocation"})
    assert result.verdict == "unsupported"
    assert "the client lacks base-allocation" in result.detail


# --- servers that misbehave fail ------------------------------------------------------------


def inline(text: str) -> Scenario:
    document, lines = parse_text(textwrap.dedent(text), "inline.yaml")
    return scenario_from_document(document, lines, group="test")


def test_a_wrong_expectation_fails_with_expected_and_got(tmp_path: Path) -> None:
    scenario = inline("""\
        name: wrong
        description: expects an error a read does not give
        spec: ["Request types"]
        roles: [server]
        steps:
          - connect: {}
          - read: {offset: 0, length: 4k}
            expect: {error: NBD_EPERM}
        """)
    result = run(scenario, FULL, tmp_path)
    assert result.verdict == "fail"
    step = result.failed_step
    assert step is not None and step.line == 7 and step.action == "read"
    assert step.expected == "NBD_EPERM" and step.got == "ok"
    assert "steps[1] read (line 7)" in result.detail


def test_a_server_that_corrupts_reads_fails(tmp_path: Path) -> None:
    scenario = load_scenario(Path("scenarios/commands/write-read-roundtrip.yaml"))
    with serve_reference(scenario.export, FULL, tmp_path) as served:
        backend = served.backend()
        real_read = backend.read

        def corrupt(offset: int, length: int) -> bytes:
            data = bytearray(real_read(offset, length))
            if data:
                data[len(data) // 2] ^= 0xFF
            return bytes(data)

        backend.read = corrupt  # type: ignore[method-assign]
        result = run_server_scenario(scenario, served.uri(), timeout=TIMEOUT)
    assert result.verdict == "fail", explain(result)
    assert "data differs" in result.detail


def test_a_server_that_loses_writes_fails_the_read_back(tmp_path: Path) -> None:
    scenario = inline("""\
        name: lost
        description: a write that is never read back by the steps
        spec: ["Request types"]
        roles: [server]
        steps:
          - connect: {}
          - write: {offset: 64k, length: 64k}
        """)
    with serve_reference(scenario.export, FULL, tmp_path) as served:
        backend = served.backend()
        backend.write = lambda offset, data, fua=False: None  # type: ignore[method-assign]
        result = run_server_scenario(scenario, served.uri(), timeout=TIMEOUT)
    assert result.verdict == "fail", explain(result)
    verify = [s for s in result.steps if s.phase == "verify"]
    assert verify and verify[0].status == "failed"
    assert "read-back of 65536+65536" in verify[0].detail


def test_a_server_with_a_wrong_info_size_fails(tmp_path: Path) -> None:
    # nbd-server's known bug: NBD_OPT_INFO reports size 0.
    scenario = next(s for s in LIBRARY if s.name == "info-export")
    result = run(scenario, profile("nbd-server-3.24"), tmp_path)
    assert result.verdict == "fail"
    assert "size: expected 4194304, got 0" in result.detail


def test_nothing_listening_is_an_error(tmp_path: Path) -> None:
    scenario = next(s for s in LIBRARY if s.name == "write-read-roundtrip")
    with serve_reference(scenario.export, FULL, tmp_path) as served:
        uri = served.uri()
    result = run_server_scenario(scenario, uri, timeout=TIMEOUT)
    assert result.verdict == "error"
    assert "environment" in result.detail


def test_runs_from_inside_an_event_loop(tmp_path: Path) -> None:
    scenario = next(s for s in LIBRARY if s.name == "write-read-roundtrip")

    async def inside() -> ScenarioResult:
        return run(scenario, FULL, tmp_path)

    assert asyncio.run(inside()).verdict == "pass"


def test_result_is_json_ready(tmp_path: Path) -> None:
    import json

    scenario = next(s for s in LIBRARY if s.name == "dirty-bitmap-map")
    result = run(scenario, FULL, tmp_path)
    data = json.loads(json.dumps(result.as_dict()))
    assert data["verdict"] == "pass"
    assert data["scenario"] == "contexts/dirty-bitmap-map"
    assert data["evidence"]["connections"]["main"][0]["contexts"] == {
        "1": "qemu:dirty-bitmap:b0"}
