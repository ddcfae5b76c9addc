"""Fixtures every test module may use.

Generic on purpose: helpers for one area live in that area's test files or in
``tests/_fixtures_*.py`` modules.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from harness.process import descendant_pids, running_processes
from harness.tls import TestPKI, make_test_pki

# How long a finished test's children get to disappear by themselves (an asyncio child
# watcher may still be reaping) before they count as left behind.
_LEFTOVER_GRACE_SECONDS = 2.0


@pytest.fixture
def pki(tmp_path: Path) -> TestPKI:
    """A fresh CA with server and client certificates, in ``tmp_path/pki``."""
    return make_test_pki(tmp_path / "pki")


@pytest.fixture(scope="session")
def session_pki(tmp_path_factory: pytest.TempPathFactory) -> TestPKI:
    """One PKI shared by every test of this process (each xdist worker makes its own)."""
    return make_test_pki(tmp_path_factory.mktemp("session-pki"))


def _require_programs(*names: str) -> dict[str, str]:
    paths = {name: shutil.which(name) for name in names}
    missing = sorted(name for name, path in paths.items() if path is None)
    if missing:
        pytest.fail(
            f"required program(s) not installed: {', '.join(missing)}: run scripts/bootstrap",
            pytrace=False,
        )
    return {name: path for name, path in paths.items() if path is not None}


@pytest.fixture
def require_programs() -> Callable[..., dict[str, str]]:
    """``require_programs("qemu-nbd", "nbdinfo")`` returns their paths, or FAILS the test.

    A missing peer is an environment problem to fix (scripts/bootstrap installs them),
    never a reason to skip silently.
    """
    return _require_programs


def _shared_pids() -> set[int]:
    """Processes that session-wide fixtures marked as shared between tests."""
    pids: set[int] = set()
    for process in running_processes():
        if process.shared:
            pids.update(process.tree_pids())
    return pids


def _describe_pid(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return f"{pid} (gone)"
    command = raw.replace(b"\0", b" ").decode(errors="replace").strip()
    return f"{pid} ({command or 'zombie'})"


def _reap_if_child(pid: int) -> None:
    # Blocking is safe: the process was SIGKILLed, which cannot be caught or ignored.
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, 0)


@pytest.fixture(autouse=True)
def _no_leftover_processes() -> Iterator[None]:
    """Fail a test that leaves a process (even a zombie) behind; kill what it left."""
    me = os.getpid()
    before = set(descendant_pids(me))
    yield
    deadline = time.monotonic() + _LEFTOVER_GRACE_SECONDS
    while True:
        leftovers = set(descendant_pids(me)) - before - _shared_pids()
        if not leftovers or time.monotonic() >= deadline:
            break
        time.sleep(0.05)
    if not leftovers:
        return
    described = [_describe_pid(pid) for pid in sorted(leftovers)]
    # Processes started through ManagedProcess are stopped (and reaped) the proper way.
    for process in running_processes():
        if not process.shared and leftovers & set(process.tree_pids()):
            process.stop(timeout=1)
    leftovers = {pid for pid in leftovers if Path(f"/proc/{pid}").exists()}
    for pid in leftovers:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    for pid in leftovers:
        _reap_if_child(pid)
    pytest.fail("test left processes behind (killed now): " + ", ".join(described), pytrace=False)
