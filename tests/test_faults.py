"""Fault profiles of the reference server and client, their captures and ground truth.

The tables (``reference_server.faults.FAULTS``, ``harness.client.faults.CLIENT_FAULTS``)
cite the spec verbatim; the command line lists and selects them; each fault met
by a real client ends as documented within a bounded time; every committed
``tests/data/faults/NAME.deviations.yaml`` points at a frame of its capture and
quotes the spec verbatim.  Whether ``lint`` flags each deviation is asserted
later, when the rules exist.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from harness.client.faults import CLIENT_FAULTS
from harness.conformance._rule import REGISTRY
from harness.conformance.spec_coverage import normalise, read_specs
from harness.dissect._capfile import read_frames
from harness.errors import UserError
from harness.faults import FAULT_CLASSES, select_faults
from reference_server.faults import FAULTS, ServerFaults

REPO = Path(__file__).resolve().parents[1]
FAULT_DIR = REPO / "tests" / "data" / "faults"
SPECS = read_specs(REPO / "docs" / "spec")
LEVELS = {"MUST", "MUST NOT", "SHOULD", "SHOULD NOT", "MAY"}


def _load_recorder():
    spec = importlib.util.spec_from_file_location("fault_recorder", FAULT_DIR / "record.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["fault_recorder"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


recorder = _load_recorder()
TRUTH_FILES = sorted(FAULT_DIR.glob("*.deviations.yaml"))


def _under_section(sentence: str, section: str) -> bool:
    wanted = normalise(sentence)
    return any(wanted in spec.sections.get(section, "\0") for spec in SPECS)


def _rule_known(rule: str) -> bool:
    """A rule id the conformance package has, or a proposed one it does not have yet."""
    if rule.startswith("new:"):
        return rule[len("new:"):] not in REGISTRY
    return rule in REGISTRY


# --- the tables ---------------------------------------------------------------------------


@pytest.mark.parametrize("fault", [*FAULTS, *CLIENT_FAULTS], ids=lambda fault: fault.name)
def test_fault_entry_cites_the_spec(fault) -> None:
    assert fault.fault_class in FAULT_CLASSES
    assert fault.level in LEVELS
    assert fault.description and fault.trigger
    assert _under_section(fault.sentence, fault.section), (
        f"{fault.name}: {fault.sentence!r} is not under {fault.section!r} in docs/spec")
    if fault.rule in REGISTRY:  # the rule's own citation decides the level
        assert REGISTRY[fault.rule].level == fault.level
    else:  # a proposed rule quotes a sentence that carries its key word
        assert fault.level in normalise(fault.sentence)
    if fault.deviation:
        assert _rule_known(fault.rule), f"{fault.name}: rule {fault.rule!r}"
        assert fault.rule.removeprefix("new:").startswith(fault.role + ".")
    else:
        assert fault.level == "MAY" and not fault.rule


def test_fault_names_are_unique_and_every_fault_has_a_capture() -> None:
    names = [fault.name for fault in (*FAULTS, *CLIENT_FAULTS)]
    assert len(names) == len(set(names))
    recorded = {fault for recipe in recorder.RECIPES for fault in recipe.faults}
    recorded |= {d.citation for recipe in recorder.RECIPES for d in recipe.deviations}
    recorded |= {recipe.client[-2] for recipe in recorder.RECIPES if "--fault" in recipe.client}
    assert {fault.name for fault in (*FAULTS, *CLIENT_FAULTS)} <= recorded


def test_unknown_fault_is_a_user_error_listing_the_known_ones() -> None:
    with pytest.raises(UserError, match=r"unknown server fault 'nope'.*reply-bad-magic"):
        ServerFaults(["reply-bad-magic", "nope"])
    with pytest.raises(UserError, match="unknown client fault"):
        select_faults(["reply-bad-magic"], CLIENT_FAULTS, "client")


def test_healthy_server_has_no_fault_object() -> None:
    assert ServerFaults.from_names([]) is None
    faults = ServerFaults.from_names(["read-unanswered", "no-fixed-newstyle", "read-unanswered"])
    assert faults is not None and faults.names == {"read-unanswered", "no-fixed-newstyle"}


def test_docs_faults_md_is_current() -> None:
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "gen-fault-docs"), "--check"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    text = (REPO / "docs" / "faults.md").read_text()
    assert all(f"`{fault.name}`" in text for fault in (*FAULTS, *CLIENT_FAULTS))


# --- the command line ------------------------------------------------------------------------


def _harness(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=REPO)


def test_list_faults_commands_list_every_fault() -> None:
    served = _harness("serve", "--list-faults")
    asked = _harness("info", "--list-faults")
    assert served.returncode == 0 and asked.returncode == 0
    assert [line.split()[0] for line in served.stdout.splitlines()] == [f.name for f in FAULTS]
    assert [line.split()[0] for line in asked.stdout.splitlines()] == [
        f.name for f in CLIENT_FAULTS]


def test_serve_refuses_an_unknown_fault_in_one_line(tmp_path: Path) -> None:
    result = _harness("serve", "--export", "d=memory:1M", "--fault", "reply-bad-magik")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "unknown server fault 'reply-bad-magik'" in (
        result.stderr)
    config = tmp_path / "server.toml"
    config.write_text('[server]\nfault = "read-unanswered"\n[[export]]\nname = "d"\nsize = "1M"\n')
    result = _harness("serve", "--config", str(config))
    assert result.returncode == 2 and "fault must be a list of names" in result.stderr


def test_toml_fault_list_and_flags_combine(tmp_path: Path) -> None:
    import argparse

    from harness.commands.serve import build_config, resolve_faults

    config = tmp_path / "server.toml"
    config.write_text('[server]\nfault = ["read-unanswered"]\n'
                      '[[export]]\nname = "d"\nsize = "1M"\n')
    args = argparse.Namespace(config=config, export=[], listen=None, port_file=None, tls=None,
                              tls_certificates=None, handshake=None, fault=["no-opt-list"])
    assert [e.name for e in build_config(args).exports] == ["d"]
    faults = resolve_faults(args)
    assert faults is not None and faults.names == {"read-unanswered", "no-opt-list"}


# --- each fault against a real client --------------------------------------------------------


@pytest.mark.peers
@pytest.mark.slow
@pytest.mark.parametrize("recipe", recorder.RECIPES, ids=lambda recipe: recipe.name)
def test_client_meets_the_fault_as_documented(recipe, tmp_path: Path, require_programs) -> None:
    programs = [recipe.client[0]] if recipe.client[0] != sys.executable else []
    require_programs(*programs, *(["nbdkit"] if recipe.nbdkit else []))
    outcome = recorder.run_recipe(recipe, tmp_path / "out", tmp_path / "scratch")
    assert recorder.saw_as_documented(recipe, outcome), (
        f"{recipe.name}: client {outcome.result} (want {recipe.expect}, output matching "
        f"{recipe.output!r}):\n{outcome.output}")
    bound = recorder.HANG_TIMEOUT if recipe.expect == "hangs" else recorder.RUN_TIMEOUT
    assert outcome.seconds < bound + 5
    assert (tmp_path / "out" / f"{recipe.name}.pcapng").stat().st_size > 0


# --- the committed ground truth -----------------------------------------------------------------


def test_every_recipe_has_its_capture_and_ground_truth() -> None:
    names = {recipe.name for recipe in recorder.RECIPES}
    assert {path.name.removesuffix(".deviations.yaml") for path in TRUTH_FILES} == names
    assert {path.stem for path in FAULT_DIR.glob("*.pcapng")} == names


@pytest.mark.parametrize("path", TRUTH_FILES, ids=lambda path: path.name.split(".")[0])
def test_ground_truth_names_capture_frames_and_verbatim_sentences(path: Path) -> None:
    truth = yaml.safe_load(path.read_text())
    assert set(truth) <= {"capture", "produced_by", "judged", "deviations", "notes"}
    capture = FAULT_DIR / truth["capture"]
    frames = max(frame.number for frame in read_frames(capture))
    assert truth["judged"] in ("server", "client", "both") and truth["produced_by"]
    recipe = recorder.RECIPE_BY_NAME[capture.stem]
    assert len(truth["deviations"]) == len(recipe.deviations)
    if not truth["deviations"]:
        assert truth.get("notes")  # an empty list says why
    for deviation in truth["deviations"]:
        for frame in [deviation["frame"], *deviation.get("frames", [])]:
            assert 1 <= frame <= frames
        assert deviation["sender"] in ("server", "client")
        assert deviation["level"] in LEVELS - {"MAY"}
        assert _under_section(deviation["sentence"], deviation["section"]), deviation
        assert _rule_known(deviation["rule"]), deviation["rule"]
        assert deviation["what"]
        assert truth["judged"] in (deviation["sender"], "both")
        assert all(_rule_known(rule) for rule in deviation.get("also", []))


@pytest.mark.parametrize("recipe", recorder.RECIPES, ids=lambda recipe: recipe.name)
def test_ground_truth_frames_are_where_the_locators_find_them(recipe) -> None:
    capture = FAULT_DIR / f"{recipe.name}.pcapng"
    committed = yaml.safe_load((FAULT_DIR / f"{recipe.name}.deviations.yaml").read_text())
    derived = recorder.ground_truth(recipe, capture, "any client")
    assert committed["deviations"] == derived["deviations"]
