"""The built wheel, installed into a fresh virtual environment outside the repository, runs
the main commands from an empty directory: its data (scenarios, matrix data, spec copies,
templates, schemas) ships inside the package."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCENARIO_COUNT = len(list((REPO / "scenarios").rglob("*.yaml")))
CAPTURE = REPO / "tests" / "data" / "captures" / "nbd-server-write-read.pcapng"
NOT_BUILT = {".git", ".venv", "build", "dist", "reports", "tests", "benchmarks"}
"""Top-level entries of the checkout the wheel is not built from."""
COMMAND_TIMEOUT = 120.0
START_WAIT = 30.0
REPORTS = ("results.json", "index.html", "junit.xml", "summary.md")

pytestmark = [pytest.mark.slow, pytest.mark.peers]


def _not_built(directory: str, names: list[str]) -> list[str]:
    """What copytree leaves out: build leftovers anywhere, the top-level entries above."""
    top = Path(directory) == REPO
    return [name for name in names if name == "__pycache__" or name.endswith(".egg-info")
            or (top and name in NOT_BUILT)]


def _check_call(argv: list[str | os.PathLike], cwd: Path) -> None:
    completed = subprocess.run(argv, cwd=cwd, capture_output=True, text=True,
                               timeout=COMMAND_TIMEOUT, check=False)
    assert completed.returncode == 0, f"{argv}: {completed.stderr}"


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv (Debian's python with its site packages, for the `nbd` module) with the
    wheel built from this checkout installed; its bin/ directory.

    The wheel is built from a copy of the sources, so no build/ or stale build/lib is
    left in (or taken from) the checkout."""
    base = tmp_path_factory.mktemp("package")
    source, dist = base / "source", base / "dist"
    shutil.copytree(REPO, source, symlinks=True, ignore=_not_built)
    _check_call([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                 "-q", "-w", dist, source], cwd=base)
    [wheel] = dist.glob("nbd_harness-*.whl")
    python = Path(sys.base_prefix) / "bin" / f"python{sys.version_info[0]}.{sys.version_info[1]}"
    _check_call([python, "-m", "venv", "--system-site-packages", base / "venv"], cwd=base)
    _check_call([base / "venv" / "bin" / "pip", "install", "-q", wheel], cwd=base)
    return base / "venv" / "bin"


def _environment() -> dict[str, str]:
    """This environment without what would point Python back at the checkout, and wide enough
    that --help does not wrap."""
    kept = {key: value for key, value in os.environ.items()
            if key not in {"PYTHONPATH", "VIRTUAL_ENV"}}
    return {**kept, "COLUMNS": "200"}


def _harness(venv: Path, cwd: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([venv / "nbd-harness", *argv], cwd=cwd, env=_environment(),
                          capture_output=True, text=True, timeout=COMMAND_TIMEOUT, check=False)


def _ok(venv: Path, cwd: Path, *argv: str) -> str:
    """Run ``nbd-harness ARGV`` in ``cwd``; it exits 0 and prints no traceback; its stdout."""
    completed = _harness(venv, cwd, *argv)
    assert completed.returncode == 0, f"nbd-harness {' '.join(argv)}: {completed.stderr}"
    assert "Traceback" not in completed.stderr
    return completed.stdout


@contextmanager
def _server(venv: Path, cwd: Path) -> Iterator[str]:
    """The installed reference server on a kernel-chosen port; yields its export's URI."""
    port_file = cwd / "port"
    process = subprocess.Popen(
        [venv / "nbd-harness", "serve", "--export", "disk=memory:8M", "--port-file", port_file],
        cwd=cwd, env=_environment(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + START_WAIT
        while not (port_file.exists() and port_file.read_text().strip()):
            assert process.poll() is None and time.monotonic() < deadline, "serve did not start"
            time.sleep(0.05)
        yield f"nbd://127.0.0.1:{port_file.read_text().strip()}/disk"
    finally:
        process.kill()
        process.wait(10)


def _one_result_dir(cwd: Path, prefix: str) -> Path:
    """The one result directory ``./reports/PREFIX-DATE-TIME`` a command wrote by default."""
    [found] = (cwd / "reports").glob(f"{prefix}-*")
    for name in REPORTS:
        assert (found / name).is_file(), f"{name} missing from {found}"
    return found


def _commands_find_the_shipped_data(venv: Path, cwd: Path) -> None:
    assert "run the interop matrix" in _ok(venv, cwd, "--help")
    assert "./reports/run-DATE-TIME, under the current directory" in _ok(venv, cwd, "run",
                                                                         "--help")
    listed = _ok(venv, cwd, "run", "--list").splitlines()
    assert any(line.startswith("fixed-newstyle-greeting[") for line in listed), listed[:5]
    assert (f"{SCENARIO_COUNT} of {SCENARIO_COUNT} scenario file(s) valid"
            in _ok(venv, cwd, "scenarios", "validate"))
    peers = _ok(venv, cwd, "peers", "list").splitlines()
    assert peers[0].split()[:2] == ["PEER", "SUITE"]
    assert any(line.startswith("qemu-nbd@7.2 ") for line in peers), peers


def _lint_a_capture(venv: Path, cwd: Path) -> None:
    shutil.copy(CAPTURE, cwd)
    assert _ok(venv, cwd, "lint", CAPTURE.name).splitlines() == [
        f"0 finding(s), 0 at MUST level, in 1 NBD session(s) of {CAPTURE.name}"]


def _serve_info_check_report(venv: Path, cwd: Path) -> None:
    with _server(venv, cwd) as uri:
        assert "export-size: 8388608 (8M)" in _ok(venv, cwd, "info", uri)
        checked = _ok(venv, cwd, "check", uri, "fixed-newstyle-greeting", "--wait", "2")
    assert "pass               fixed-newstyle-greeting" in checked
    check_dir = _one_result_dir(cwd, "check")
    (check_dir / "index.html").unlink()
    assert "index.html" in _ok(venv, cwd, "report", str(check_dir.relative_to(cwd)))
    assert (check_dir / "index.html").is_file()


def _run_real_peers(venv: Path, cwd: Path) -> None:
    """A host peer and one from a cached root filesystem (run in bwrap, in ./reports)."""
    ran = _ok(venv, cwd, "run", "fixed-newstyle-greeting", "--server", "qemu-nbd@7.2",
              "--server", "qemu-nbd@11.1")
    assert "2 cases: 2 pass" in ran
    _one_result_dir(cwd, "run")


def _run_a_users_scenarios_dir(venv: Path, cwd: Path) -> None:
    """``--scenarios-dir`` reads the user's own library instead of the shipped one."""
    library = cwd / "mine"
    library.mkdir()
    shipped = (REPO / "scenarios" / "handshake" / "fixed-newstyle-greeting.yaml").read_text()
    mine = shipped.replace("name: fixed-newstyle-greeting\n", "name: my-greeting\n", 1)
    (library / "my-greeting.yaml").write_text(mine)
    listed = _ok(venv, cwd, "run", "--list", "--scenarios-dir", "mine",
                 "--server", "qemu-nbd@7.2").splitlines()
    assert listed and all(line.startswith("my-greeting[") for line in listed), listed


def test_installed_wheel_runs_from_another_directory(venv: Path, tmp_path: Path) -> None:
    """Every main command of the installed package works in an empty directory, with the data
    the wheel carries, and writes its results under ./reports there.  One test, so that
    xdist workers do not each build and install the wheel."""
    cwd = tmp_path / "empty"
    cwd.mkdir()
    imported = subprocess.run([venv / "python", "-c", "import harness; print(harness.__file__)"],
                              cwd=cwd, env=_environment(), capture_output=True, text=True,
                              timeout=COMMAND_TIMEOUT, check=True).stdout
    assert Path(imported.strip()).is_relative_to(venv.parent), imported
    _commands_find_the_shipped_data(venv, cwd)
    _lint_a_capture(venv, cwd)
    _serve_info_check_report(venv, cwd)
    _run_real_peers(venv, cwd)
    _run_a_users_scenarios_dir(venv, cwd)
