"""Client-role scenarios: real Debian clients against the reference server.

nbdinfo and qemu-img run every client-role scenario they have actions for;
nbdsh, nbdcopy, qemu-io and the reference client (`nbd-harness info`) run a
handful each. The verdict each case must give follows from the scenario's
requirements, the server profile's features and the program's client
features (``matrix/peers``, for the version installed here).
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable
from functools import cache
from pathlib import Path

import pytest

from harness.client_role import client_can_run, run_client_scenario
from harness.peerdata import default_peerdata
from harness.scenarios import Scenario, ScenarioResult, load_library, server_has
from reference_server.features import FULL, ServerFeatures
from reference_server.profiles import profile

pytestmark = pytest.mark.peers

TIMEOUT = 20.0
LIBRARY = load_library()
CLIENT_SCENARIOS = [s for s in LIBRARY if "client" in s.roles]

# program -> (peer-data family, how to read its version)
FAMILIES = {
    "nbdinfo": ("libnbd", ["nbdinfo", "--version"]),
    "nbdsh": ("libnbd", ["nbdinfo", "--version"]),
    "nbdcopy": ("libnbd", ["nbdinfo", "--version"]),
    "qemu-img": ("qemu", ["qemu-img", "--version"]),
    "qemu-io": ("qemu", ["qemu-img", "--version"]),
}

# Cases whose verdict is not what the features predict, and why.
KNOWN: dict[tuple[str, str, str], tuple[str, str]] = {
    # nbd-server answers NBD_OPT_INFO with size 0 (a known bug); nbdinfo believes it.
    ("nbd-server-3.24", "nbdinfo", "info-size"): ("fail", "export size (expected 3145728, got 0)"),
}


@cache
def client_features(program: str) -> frozenset[str]:
    """The client features the installed version of ``program`` has (matrix/peers data)."""
    if program == "nbd-harness":
        from harness.scenarios import REFERENCE_CLIENT_LACKS

        return frozenset(set(default_peerdata().features) - REFERENCE_CLIENT_LACKS)
    family, argv = FAMILIES[program]
    output = subprocess.run(argv, capture_output=True, text=True, timeout=30).stdout
    version = re.search(r"(\d+\.\d+)", output)
    assert version, output
    return frozenset(default_peerdata().program(family).features(version.group(1), "client"))


def expected(scenario: Scenario, program: str, features: ServerFeatures) -> str:
    missing = {f for f in scenario.requires_server if not server_has(features, f)}
    missing |= set(scenario.requires_client) - client_features(program)
    if not missing:
        return "pass"
    assert scenario.fallback is not None
    return scenario.fallback.outcome


def explain(result: ScenarioResult) -> str:
    lines = [f"{result.verdict}: {result.detail}"]
    lines += [f"  {s.phase}[{s.index}] line {s.line} {s.action}: {s.status} {s.detail}"
              for s in result.steps]
    for run in result.evidence.get("runs", []):
        lines.append(f"  $ {' '.join(run['argv'])[:200]} -> {run['returncode']}")
        if run["returncode"]:
            lines.append(f"    {run['stderr'][-300:]}")
    return "\n".join(lines)


def check(scenario: Scenario, program: str, tmp_path: Path,
          profile_name: str = "reference") -> ScenarioResult:
    features = FULL if profile_name == "reference" else profile(profile_name)
    result = run_client_scenario(scenario, program, features, tmp_path,
                                 features_client=client_features(program), timeout=TIMEOUT)
    verdict, words = KNOWN.get((profile_name, program, scenario.name),
                               (expected(scenario, program, features), ""))
    assert result.verdict == verdict, explain(result)
    assert words in result.detail
    return result


def cases(programs: list[str]) -> list[tuple[str, Scenario]]:
    return [(program, scenario) for program in programs for scenario in CLIENT_SCENARIOS
            if client_can_run(scenario, program)[0]]


@pytest.mark.parametrize(("program", "scenario"), cases(["nbdinfo", "qemu-img"]),
                         ids=lambda value: getattr(value, "id", value))
def test_nbdinfo_and_qemu_img(program: str, scenario: Scenario, tmp_path: Path,
                              require_programs: Callable[..., dict[str, str]]) -> None:
    require_programs(program)
    check(scenario, program, tmp_path)


OTHERS = [
    ("nbdsh", "write-then-read"), ("nbdsh", "zero-range"), ("nbdsh", "lists-exports"),
    ("nbdsh", "map-dirty-bitmap"), ("nbdsh", "client-3.0-cache"),
    ("nbdsh", "client-4.2-fast-zero"),
    ("nbdcopy", "copy-in"), ("nbdcopy", "copy-layered-export"), ("nbdcopy", "tls-required-data"),
    ("nbdcopy", "client-4.2-multi-conn-read-only"),
    ("qemu-io", "write-data"), ("qemu-io", "read-data"), ("qemu-io", "trim-range"),
    ("qemu-io", "client-2.8-write-zeroes"),
    ("nbd-harness", "map-allocation-depth"), ("nbd-harness", "lists-exports"),
    ("nbd-harness", "refuses-tls-downgrade"),
]


@pytest.mark.parametrize(("program", "name"), OTHERS)
def test_other_clients(program: str, name: str, tmp_path: Path,
                       require_programs: Callable[..., dict[str, str]]) -> None:
    if program != "nbd-harness":
        require_programs(program)
    scenario = next(s for s in CLIENT_SCENARIOS if s.name == name)
    check(scenario, program, tmp_path)


@pytest.mark.parametrize(("profile_name", "program", "name"), [
    ("qemu-2.6", "qemu-img", "go-fallback-to-export-name"),
    ("qemu-2.6", "qemu-img", "client-2.11-structured-replies"),
    ("qemu-2.6", "qemu-io", "write-zeroes-fallback"),
    ("qemu-2.6", "nbdsh", "write-zeroes-fallback"),
    ("qemu-2.10", "nbdinfo", "map-base-allocation"),
    ("qemu-2.10", "nbdsh", "client-3.0-cache"),
    ("qemu-2.10", "nbdinfo", "no-contexts-without-structured"),
    ("qemu-4.2", "nbdcopy", "client-7.1-multi-conn-writable"),
    ("nbd-server-3.24", "nbdinfo", "info-size"),
    ("nbd-server-3.24", "qemu-img", "info-size"),
])
def test_against_older_server_profiles(profile_name: str, program: str, name: str,
                                       tmp_path: Path,
                                       require_programs: Callable[..., dict[str, str]]) -> None:
    require_programs(program)
    scenario = next(s for s in CLIENT_SCENARIOS if s.name == name)
    check(scenario, program, tmp_path, profile_name)


def test_evidence_holds_the_servers_session_records(tmp_path: Path,
                                                     require_programs: Callable[..., object]
                                                     ) -> None:
    require_programs("nbdinfo")
    scenario = next(s for s in CLIENT_SCENARIOS if s.name == "map-base-allocation")
    result = check(scenario, "nbdinfo", tmp_path)
    sessions = result.evidence["sessions"]
    assert sessions and "base:allocation" in sessions[0]["meta_contexts"]
    assert sessions[0]["client_violations"] == []
    run = result.evidence["runs"][0]
    assert run["argv"][0] == "nbdinfo" and run["returncode"] == 0


def test_a_client_that_fails_is_a_fail_with_its_output(tmp_path: Path,
                                                       require_programs: Callable[..., object]
                                                       ) -> None:
    require_programs("qemu-img")
    from harness.scenarios._yaml import parse_text
    from harness.scenarios.loader import scenario_from_document

    document, lines = parse_text(
        "name: missing\ndescription: asks for an export that is not there\n"
        'spec: ["Option types"]\nroles: [client]\n'
        "client_steps:\n  - client_action: {action: info, export: no-such-export}\n", "x.yaml")
    scenario = scenario_from_document(document, lines)
    result = run_client_scenario(scenario, "qemu-img", FULL, tmp_path, timeout=TIMEOUT)
    assert result.verdict == "fail"
    assert "qemu-img info: exit 1" in result.detail


def test_an_unknown_program_is_an_error(tmp_path: Path) -> None:
    scenario = CLIENT_SCENARIOS[0]
    result = run_client_scenario(scenario, "no-such-client", FULL, tmp_path)
    assert result.verdict == "error"
    assert "unknown client program" in result.detail
