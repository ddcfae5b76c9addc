"""The CI templates users copy (ci/github, ci/gitlab): linted, structurally checked, and every
nbd-harness command in them is one the harness accepts (issue 11, item 4)."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from harness.cli import build_parser

REPO = Path(__file__).resolve().parents[1]
GITHUB = REPO / "ci" / "github" / "nbd-harness.yml"
GITLAB = REPO / "ci" / "gitlab" / "nbd-harness.gitlab-ci.yml"


def _actionlint() -> str:
    beside_python = Path(sys.executable).parent / "actionlint"
    found = str(beside_python) if beside_python.exists() else shutil.which("actionlint")
    assert found, "actionlint is a test dependency: pip install -e '.[test]'"
    return found


def test_the_github_workflow_passes_actionlint() -> None:
    result = subprocess.run([_actionlint(), "-no-color", str(GITHUB)], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_actionlint_finds_mistakes(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yml"
    broken.write_text(GITHUB.read_text().replace("runs-on: ubuntu-24.04", "runs_on: x", 1))
    result = subprocess.run([_actionlint(), "-no-color", str(broken)], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode != 0 and "runs_on" in result.stdout


# --- GitLab: a structural check of what GitLab accepts --------------------------------------

GITLAB_GLOBALS = {"stages", "variables", "default", "workflow", "include", "image", "services",
                  "before_script", "after_script", "cache"}
GITLAB_JOB_KEYS = {"extends", "stage", "image", "services", "script", "before_script",
                   "after_script", "variables", "parallel", "artifacts", "needs", "when",
                   "rules", "timeout", "tags", "allow_failure", "retry", "cache",
                   "dependencies", "interruptible", "resource_group", "environment"}
GITLAB_ARTIFACT_KEYS = {"paths", "exclude", "expire_in", "expose_as", "name", "public",
                        "reports", "untracked", "when"}
GITLAB_WHEN = {"on_success", "on_failure", "always", "manual", "delayed", "never"}


def _valid_parallel(parallel: object) -> bool:
    if isinstance(parallel, int):
        return 1 < parallel <= 200
    if not isinstance(parallel, dict) or set(parallel) != {"matrix"}:
        return False
    return all(isinstance(row, dict) and all(isinstance(v, list | str) for v in row.values())
               for row in parallel["matrix"])


def gitlab_problems(document: dict[str, Any]) -> list[str]:
    """What GitLab would refuse in ``document`` (the subset of .gitlab-ci.yml we use)."""
    problems: list[str] = []
    stages = document.get("stages", ["build", "test", "deploy"])
    jobs = {name: job for name, job in document.items() if name not in GITLAB_GLOBALS}
    for name, job in jobs.items():
        where = f"job {name}"
        if not isinstance(job, dict):
            problems.append(f"{where}: not a mapping")
            continue
        unknown = set(job) - GITLAB_JOB_KEYS
        if unknown:
            problems.append(f"{where}: unknown keys {sorted(unknown)}")
        merged = dict(jobs.get(job["extends"], {})) if "extends" in job else {}
        if "extends" in job and job["extends"] not in jobs:
            problems.append(f"{where}: extends an unknown job {job['extends']}")
        merged.update(job)
        if not name.startswith("."):
            if not isinstance(merged.get("script"), list) or not merged["script"]:
                problems.append(f"{where}: needs a non-empty script list")
            if merged.get("stage", "test") not in stages:
                problems.append(f"{where}: stage {merged.get('stage')} is not in stages")
        for need in job.get("needs", []):
            target = need["job"] if isinstance(need, dict) else need
            if target not in jobs:
                problems.append(f"{where}: needs an unknown job {target}")
        if "when" in job and job["when"] not in GITLAB_WHEN:
            problems.append(f"{where}: when {job['when']!r}")
        parallel = job.get("parallel")
        if parallel is not None and not _valid_parallel(parallel):
            problems.append(f"{where}: parallel is an integer 2..200 or {{matrix: [...]}}")
        artifacts = job.get("artifacts", {})
        unknown = set(artifacts) - GITLAB_ARTIFACT_KEYS
        if unknown:
            problems.append(f"{where}: unknown artifacts keys {sorted(unknown)}")
        if "expose_as" in artifacts and not all(
                "$" not in path and "*" not in path for path in artifacts.get("paths", [])):
            problems.append(f"{where}: expose_as needs literal paths")
        if "when" in artifacts and artifacts["when"] not in {"on_success", "on_failure",
                                                              "always"}:
            problems.append(f"{where}: artifacts when {artifacts['when']!r}")
    return problems


def test_the_gitlab_file_is_what_gitlab_accepts() -> None:
    assert gitlab_problems(yaml.safe_load(GITLAB.read_text())) == []


def test_the_gitlab_check_finds_mistakes() -> None:
    document = yaml.safe_load(GITLAB.read_text())
    document["report"]["needs"].append({"job": "missing", "artifacts": True})
    document["peers"]["stage"] = "deploy"
    document["built"]["artefacts"] = {}
    problems = gitlab_problems(document)
    assert any("unknown job missing" in p for p in problems)
    assert any("stage deploy" in p for p in problems)
    assert any("artefacts" in p for p in problems)


# --- the commands in both files -------------------------------------------------------------

def _commands(path: Path) -> list[list[str]]:
    """Every ``nbd-harness ...`` command line in the file, split as the shell would (variables
    given example values)."""
    text = re.sub(r"\\\n\s*", " ", path.read_text())
    subcommands = "|".join(("run", "report", "check-client", "check", "peers"))
    found = []
    for line in text.splitlines():
        match = re.search(rf"(?:^|[\s;]|-\s)nbd-harness (?:{subcommands}) ", line)
        if match is None or line.lstrip().startswith("#"):
            continue
        command = line[line.index("nbd-harness ", match.start()):].split(" || ")[0]
        command = command.split(";")[0]
        command = re.sub(r"\$\{?[A-Za-z_][^\s\"']*", "X", command)
        words = shlex.split(command)
        if words and words[0] == "nbd-harness" and len(words) > 1:
            found.append(words[1:])
    return found


@pytest.mark.parametrize("path", [GITHUB, GITLAB], ids=["github", "gitlab"])
def test_every_command_is_one_the_harness_accepts(path: Path) -> None:
    commands = _commands(path)
    assert {words[0] for words in commands} >= {"run", "report"}
    parser = build_parser()
    for words in commands:
        parser.parse_args(words)  # exits (SystemExit) on an unknown option or a bad value
    runs = [words for words in commands if words[0] == "run" and "--merge" not in words]
    assert runs and all("--evidence" in words for words in runs)
    assert any("--diff" in words for words in commands)
    assert any(any("=build/qemu-nbd" in w for w in words) for words in runs)
