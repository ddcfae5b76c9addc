"""The scenario library: every file valid, enough of them, every qemu feature covered both ways."""

from __future__ import annotations

from collections import Counter

import pytest

from harness.client_role import default_client_actions
from harness.peerdata import default_peerdata
from harness.scenarios import load_library, scenario_files, validate_library
from harness.scenarios.loader import GROUPS, spec_headings

# qemu's docs/interop/nbd.rst "Features by version" (docs/spec/qemu-nbd.rst), as
# (version, feature id) pairs: each must have a server and a client scenario.
QEMU_FEATURES_BY_VERSION = [
    ("2.6", "starttls-x509"),
    ("2.8", "write-zeroes"),
    ("2.10", "opt-go"),
    ("2.10", "info-block-size"),
    ("2.11", "structured-replies"),
    ("2.12", "base-allocation"),
    ("3.0", "starttls-psk"),
    ("3.0", "dirty-bitmap"),
    ("3.0", "cache"),
    ("4.2", "multi-conn-read-only"),
    ("4.2", "fast-zero"),
    ("5.2", "allocation-depth"),
    ("7.1", "multi-conn-writable"),
    ("8.2", "extended-headers"),
    ("8.2", "block-status-payload"),
]


@pytest.fixture(scope="module")
def library():
    return load_library()


def test_every_file_validates() -> None:
    scenarios, errors = validate_library()
    assert not errors, "\n".join(str(e) for e in errors)
    assert len(scenarios) == len(list(scenario_files()))


def test_at_least_150_scenarios_one_per_file(library) -> None:
    assert len(library) >= 150
    assert len({s.name for s in library}) == len(library)
    for scenario in library:
        assert scenario.path is not None and scenario.path.stem == scenario.name


def test_every_group_is_used_and_known(library) -> None:
    groups = Counter(s.group for s in library)
    assert set(groups) == set(GROUPS), groups
    for group in GROUPS:
        assert groups[group] >= 10, (group, groups[group])


def test_feature_ids_and_roles_are_known(library) -> None:
    features = default_peerdata().features
    for scenario in library:
        assert scenario.roles and set(scenario.roles) <= {"server", "client"}
        for role in ("server", "client"):
            for feature in scenario.requires(role):
                assert feature in features, (scenario.id, feature)
                assert role in features[feature].roles, (scenario.id, role, feature)


def test_spec_citations_exist(library) -> None:
    headings = spec_headings()
    for scenario in library:
        assert scenario.spec
        for section in scenario.spec:
            assert section.replace("`", "") in headings, (scenario.id, section)


def test_both_roles_are_tested(library) -> None:
    roles = Counter(tuple(s.roles) for s in library)
    assert roles[("server",)] >= 100
    assert roles[("client",)] >= 30
    assert roles[("server", "client")] >= 5


@pytest.mark.parametrize(("version", "feature"), QEMU_FEATURES_BY_VERSION)
def test_qemu_features_by_version_both_directions(library, version: str, feature: str) -> None:
    for role in ("server", "client"):
        name = f"{role}-{version}-{feature}"
        matches = [s for s in library if s.name == name]
        assert matches, f"no scenario {name} in qemu-features/"
        scenario = matches[0]
        assert scenario.group == "qemu-features"
        assert scenario.roles == (role,)
        assert feature in scenario.requires_server, name
        assert "qemu-nbd.rst: Features by version" in scenario.spec
        assert f"qemu-{version}" in scenario.tags


def test_qemu_feature_versions_agree_with_the_peer_data() -> None:
    # The features-by-version list and matrix/peers/qemu.toml say the same "since".
    qemu = default_peerdata().program("qemu")
    for version, feature in QEMU_FEATURES_BY_VERSION:
        claims = [c for c in qemu.claims if c.feature == feature and c.role == "server"]
        assert claims and (claims[0].upstream_since or claims[0].since) == version, \
            (feature, version)


def _commands_and_flags(library) -> tuple[set[str], set[str]]:
    """Commands and command flags the library's server steps send."""
    commands: set[str] = set()
    flags: set[str] = set()
    by_action = {"read": "NBD_CMD_READ", "write": "NBD_CMD_WRITE", "zero": "NBD_CMD_WRITE_ZEROES",
                 "trim": "NBD_CMD_TRIM", "flush": "NBD_CMD_FLUSH", "cache": "NBD_CMD_CACHE",
                 "block_status": "NBD_CMD_BLOCK_STATUS", "map": "NBD_CMD_BLOCK_STATUS",
                 "disconnect": "NBD_CMD_DISC"}
    by_switch = {"fua": "NBD_CMD_FLAG_FUA", "no_hole": "NBD_CMD_FLAG_NO_HOLE",
                 "fast_zero": "NBD_CMD_FLAG_FAST_ZERO", "req_one": "NBD_CMD_FLAG_REQ_ONE",
                 "payload_contexts": "NBD_CMD_FLAG_PAYLOAD_LEN"}
    for scenario in library:
        for step in scenario.steps:
            if step.action in by_action:
                commands.add(by_action[step.action])
            if step.action == "request" and isinstance(step.args["command"], str):
                commands.add(step.args["command"])
            raw_flags = step.args.get("flags") or []
            if isinstance(raw_flags, list):
                flags |= {f for f in raw_flags if isinstance(f, str)}
            flags |= {flag for key, flag in by_switch.items() if step.args.get(key)}
    return commands, flags


def test_the_subjects_the_issue_lists_are_covered(library) -> None:
    ids = {s.id for s in library}
    for wanted in ("handshake/oldstyle-server", "handshake/newstyle-not-fixed",
                   "handshake/fixed-newstyle-greeting", "handshake/greeting-then-go",
                   "handshake/abort-in-option-phase", "handshake/export-name-unknown-closes",
                   "options/list-exports", "options/info-export", "options/unknown-option-unsup",
                   "options/block-size-required", "options/info-init-state",
                   "commands/multi-conn-flush-visible", "commands/flush-durable-after-abrupt-close",
                   "commands/fua-durable-after-abrupt-close",
                   "tls/forcedtls-refuses-plain-client", "client/refuses-tls-downgrade",
                   "structured/read-data-chunks", "extended/extended-headers-negotiated",
                   "extended/block-status-payload", "contexts/list-qemu-wildcard",
                   "contexts/list-dirty-bitmap-wildcard", "contexts/allocation-depth-chain",
                   "negative/read-past-end", "negative/many-errors-in-a-row"):
        assert wanted in ids, wanted
    actions = Counter(step.action for s in library for step in (*s.steps, *s.client_steps))
    for action in ("connect", "read", "write", "zero", "trim", "flush", "cache", "block_status",
                   "map", "request", "raw", "raw_handshake", "option", "list_exports", "info",
                   "list_meta_contexts", "set_meta_contexts", "reconnect", "disconnect",
                   "client_action", "expect_sessions", "expect_server_data"):
        assert actions[action] > 0, action
    commands, flags = _commands_and_flags(library)
    assert {"NBD_CMD_READ", "NBD_CMD_WRITE", "NBD_CMD_DISC", "NBD_CMD_FLUSH", "NBD_CMD_TRIM",
            "NBD_CMD_CACHE", "NBD_CMD_WRITE_ZEROES", "NBD_CMD_BLOCK_STATUS"} <= commands
    assert {"NBD_CMD_FLAG_FUA", "NBD_CMD_FLAG_NO_HOLE", "NBD_CMD_FLAG_DF",
            "NBD_CMD_FLAG_REQ_ONE", "NBD_CMD_FLAG_FAST_ZERO", "NBD_CMD_FLAG_PAYLOAD_LEN"} <= flags
    client_actions = {step.args["action"] for s in library for step in s.client_steps
                      if step.action == "client_action"}
    assert {"info", "list", "read", "write", "map", "copy-in", "copy-out"} <= client_actions


def test_every_client_action_has_a_program(library) -> None:
    programs = default_client_actions()
    for scenario in library:
        for step in scenario.client_steps:
            if step.action != "client_action":
                continue
            action = step.args["action"]
            context = step.args.get("context") if action == "map" else None
            able = [p for p in programs.values() if p.form(action, context) is not None]
            assert able, (scenario.id, action, context)


def test_descriptions_are_one_line(library) -> None:
    for scenario in library:
        assert scenario.description.strip()
        assert "\n" not in scenario.description.strip()
