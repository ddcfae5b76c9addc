"""The docker provider for real: an engine started by scripts/dockerd, an image imported from a
suite's root filesystem, server and client cases run in containers (issue 11, item 3)."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.cli import main
from harness.peers.docker import RECIPE_LABEL, DockerProvider
from harness.peers.rootfs import RootfsProvider
from harness.peers.suites import load_suites

pytestmark = [pytest.mark.peers, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
DOCKERD = REPO / "scripts" / "dockerd"
SUITE = "trixie"


@pytest.fixture(scope="module")
def engine() -> Iterator[str]:
    """A Docker engine (ours, started by the project's script, stopped after), as DOCKER_HOST."""
    started = subprocess.run([DOCKERD, "start"], capture_output=True, text=True, timeout=600)
    if started.returncode != 0:
        if os.geteuid() != 0 and "no Docker engine" in started.stderr:
            pytest.skip(f"no Docker engine and no root to install one: {started.stderr.strip()}")
        pytest.fail(f"scripts/dockerd start failed: {started.stderr.strip()}")
    host = started.stdout.strip().removeprefix("DOCKER_HOST=")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DOCKER_HOST", host)
        try:
            yield host
        finally:
            subprocess.run([DOCKERD, "stop"], capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def image(engine: str) -> DockerProvider:
    """The suite's image, imported from its root filesystem tarball (built when missing)."""
    provider = DockerProvider(load_suites().suite(SUITE))
    report = provider.provision(lambda line: None)
    assert provider.ready(), report
    return provider


def _containers(prefix: str) -> list[str]:
    listed = subprocess.run(["docker", "ps", "--all", "--quiet", "--filter", f"name={prefix}"],
                            capture_output=True, text=True, timeout=30, check=True)
    return listed.stdout.split()


def test_the_image_is_the_suites_root_filesystem(image: DockerProvider) -> None:
    label = subprocess.run(
        ["docker", "image", "inspect", "--format",
         f'{{{{ index .Config.Labels "{RECIPE_LABEL}" }}}}', image.image],
        capture_output=True, text=True, timeout=30, check=True).stdout.strip()
    assert label == RootfsProvider(image.suite).digest()
    assert image.package_version("qemu-utils") == RootfsProvider(image.suite).package_version(
        "qemu-utils")


def test_a_server_case_runs_in_a_container(image: DockerProvider, tmp_path: Path) -> None:
    out = tmp_path / "out"
    code = main(["run", "handshake/greeting-then-go", "--provider", "docker",
                 "--server", f"qemu-nbd@{SUITE}", "--server", f"nbd-server@{SUITE}",
                 "--out", str(out), "-j", "2", "--no-progress"])
    document = json.loads((out / "results.json").read_text())
    assert code == 0, [c["detail"] for c in document["cases"]]
    assert sorted(c["verdict"] for c in document["cases"]) == ["pass", "pass"]
    providers = {p["spec"]: p["provider"] for p in document["peers"]}
    assert {providers[s] for s in providers if not s.startswith("reference")} == \
        {f"docker:{SUITE}"}
    assert _containers("qemu-nbd-") == [] and _containers("nbd-server-") == []


def test_a_client_case_runs_in_a_container(image: DockerProvider, tmp_path: Path) -> None:
    out = tmp_path / "out"
    code = main(["run", "base-allocation-map", "--provider", "docker",
                 "--server", "reference-server", "--client", f"nbdinfo@{SUITE}",
                 "--out", str(out), "-j", "1", "--no-progress", "--evidence", "full"])
    document = json.loads((out / "results.json").read_text())
    assert code == 0, [c["detail"] for c in document["cases"]]
    runs = [json.loads(path.read_text()) for path in out.glob("cases/*/steps.json")]
    wrapped = list(_where_run(runs))
    assert wrapped and all(where["provider"] == f"docker:{SUITE}" for where in wrapped)
    assert all(where["command"][1:3] == ["run", "--rm"] for where in wrapped)


def _where_run(document: object) -> Iterator[dict]:
    """Every record of where a client action ran (provider and command), anywhere inside."""
    if isinstance(document, dict):
        if "provider" in document and "command" in document:
            yield document
        for value in document.values():
            yield from _where_run(value)
    elif isinstance(document, list):
        for value in document:
            yield from _where_run(value)
