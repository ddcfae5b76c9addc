"""ManagedProcess, run_command and friends: start, stop, reap, kill groups, report failures."""

from __future__ import annotations

import os
import signal
import socket
import sys
import textwrap
import time
from pathlib import Path

import pytest

from harness.process import (
    ManagedProcess,
    MissingProgramError,
    PeerError,
    descendant_pids,
    find_program,
    is_listening_tcp,
    is_listening_unix,
    pick_port_and_start,
    run_command,
    running_processes,
)

# A server for the readiness tests: listens on the TCP port or unix path in argv[1].
_LISTENER = textwrap.dedent(
    """
    import socket, sys, time
    target = sys.argv[1]
    if target.isdigit():
        server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        server.bind(("127.0.0.1", int(target)))
    else:
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind(target)
    server.listen(8)
    print("listening", flush=True)
    time.sleep(100)
    """
)


def _is_dead(pid: int) -> bool:
    """True when ``pid`` is gone or only a zombie waiting for a parent that is not us."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[0] == "Z"


def _wait_until(condition, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)
    return True


def test_start_stop_reaps_and_is_idempotent(tmp_path: Path) -> None:
    process = ManagedProcess.start(["sleep", "100"], log_path=tmp_path / "sleep.log")
    assert process.returncode is None
    assert process.is_running()
    assert process in running_processes()
    assert process.stop() == -signal.SIGTERM
    assert process.returncode == -signal.SIGTERM
    assert not Path(f"/proc/{process.pid}").exists()  # reaped, not a zombie
    assert process.stop() == -signal.SIGTERM
    assert process not in running_processes()


def test_output_goes_to_log_and_exit_code_is_kept(tmp_path: Path) -> None:
    log = tmp_path / "out.log"
    process = ManagedProcess.start(
        ["sh", "-c", "echo to-stdout; echo to-stderr >&2; exit 7"], log_path=log
    )
    assert process.wait(timeout=10) == 7
    assert process.log_text().splitlines() == ["to-stdout", "to-stderr"]
    assert log.read_text() == "to-stdout\nto-stderr\n"
    assert process.stop() == 7


def test_stdin_is_devnull_and_env_cwd_apply(tmp_path: Path) -> None:
    process = ManagedProcess.start(
        ["sh", "-c", 'cat; echo "$GREETING"; pwd'],
        log_path=tmp_path / "env.log",
        env={"GREETING": "hello-env", "PATH": os.environ["PATH"]},
        cwd=tmp_path,
    )
    assert process.wait(timeout=10) == 0
    assert process.log_text().splitlines() == ["hello-env", str(tmp_path)]


def test_context_manager_stops(tmp_path: Path) -> None:
    with ManagedProcess.start(["sleep", "100"], log_path=tmp_path / "s.log") as process:
        pid = process.pid
    assert process.returncode == -signal.SIGTERM
    assert not Path(f"/proc/{pid}").exists()


def test_stop_kills_the_whole_group(tmp_path: Path) -> None:
    process = ManagedProcess.start(
        ["sh", "-c", "sleep 100 & sleep 100"], log_path=tmp_path / "group.log"
    )
    process.wait_ready(lambda: len(descendant_pids(process.pid)) >= 2, 10, "two children")
    family = [process.pid, *descendant_pids(process.pid)]
    assert len(family) == 3
    process.stop()
    # The background sleep was orphaned to init: it must be dead (init reaps it when it can).
    assert _wait_until(lambda: all(_is_dead(pid) for pid in family))
    assert not descendant_pids(os.getpid())


def test_stop_escalates_to_sigkill(tmp_path: Path) -> None:
    process = ManagedProcess.start(
        ["sh", "-c", "trap '' TERM; echo trapped; while :; do sleep 0.05; done"],
        log_path=tmp_path / "stubborn.log",
    )
    process.wait_ready(lambda: "trapped" in process.log_text(), 10, "trap installed")
    assert process.stop(timeout=0.2) == -signal.SIGKILL


def test_early_exit_is_reported_with_log_tail(tmp_path: Path) -> None:
    script = "for i in $(seq 1 30); do echo line-$i; done; echo fatal: no such export; exit 3"
    process = ManagedProcess.start(["sh", "-c", script], log_path=tmp_path / "early.log")
    with pytest.raises(PeerError) as caught:
        process.wait_ready(lambda: False, 10, "the export")
    message = str(caught.value)
    assert "exited with code 3 before the export" in message
    assert "fatal: no such export" in message
    assert "line-30" in message and "line-12" in message
    assert "line-11\n" not in message  # only the last 20 lines are quoted
    assert process.returncode == 3


def test_wait_ready_timeout_stops_the_process(tmp_path: Path) -> None:
    process = ManagedProcess.start(["sleep", "100"], log_path=tmp_path / "slow.log")
    with pytest.raises(PeerError, match=r"sleep: no the moon after 0\.2 s"):
        process.wait_ready(lambda: False, 0.2, "the moon")
    assert process.returncode == -signal.SIGTERM
    assert process not in running_processes()


def test_wait_timeout(tmp_path: Path) -> None:
    with ManagedProcess.start(["sleep", "100"], log_path=tmp_path / "w.log") as process:
        with pytest.raises(PeerError, match=r"still running after 0\.1 s"):
            process.wait(timeout=0.1)
        assert process.is_running()


def test_missing_program() -> None:
    with pytest.raises(
        MissingProgramError, match="no-such-nbd-tool is not installed: run scripts/bootstrap"
    ):
        find_program("no-such-nbd-tool")
    assert find_program("sh").endswith("/sh")


def test_start_missing_program_raises_peer_error(tmp_path: Path) -> None:
    with pytest.raises(PeerError, match="not installed"):
        ManagedProcess.start(["no-such-nbd-tool"], log_path=tmp_path / "x.log")
    with pytest.raises(PeerError, match="cannot start"):
        ManagedProcess.start([str(tmp_path / "absent")], log_path=tmp_path / "y.log")


def test_run_command_captures_output_and_logs(tmp_path: Path) -> None:
    log = tmp_path / "cmd.log"
    result = run_command(
        ["sh", "-c", "cat; echo err >&2; exit 4"], timeout=10, input="hello\n", log_path=log
    )
    assert result.returncode == 4
    assert result.stdout == "hello\n"
    assert result.stderr == "err\n"
    assert (
        log.read_text() == "$ " + find_program("sh") + " -c cat; echo err >&2; exit 4\nhello\nerr\n"
    )
    raw = run_command(["printf", "\\377\\000"], timeout=10, text=False)
    assert raw.stdout == b"\xff\x00"


def test_run_command_check_raises(tmp_path: Path) -> None:
    with pytest.raises(PeerError, match=r"(?s)sh failed with exit code 4.*why-it-failed"):
        run_command(["sh", "-c", "echo why-it-failed >&2; exit 4"], timeout=10, check=True)


def test_run_command_timeout_kills_the_group() -> None:
    started = time.monotonic()
    with pytest.raises(PeerError) as caught:
        run_command(["sh", "-c", "echo partial-output; sleep 100 & sleep 100"], timeout=0.5)
    message = str(caught.value)
    assert "timed out after 0.5 s" in message
    assert "partial-output" in message
    assert "sleep 100" in message  # the command is quoted
    assert time.monotonic() - started < 60  # it returned: the grandchild did not hold the pipe
    assert not descendant_pids(os.getpid())


def test_pick_port_and_start_and_listening_checks(tmp_path: Path) -> None:
    process, port = pick_port_and_start(
        lambda port: [sys.executable, "-c", _LISTENER, str(port)], log_path=tmp_path / "l.log"
    )
    with process:
        assert is_listening_tcp(port, "127.0.0.1", process.tree_pids())
        assert not is_listening_tcp(port, "127.0.0.1", [os.getpid()])  # not our socket
        process.wait_for_tcp("127.0.0.1", port, timeout=10)
        with socket.create_connection(("127.0.0.1", port), timeout=10):
            pass
    assert not is_listening_tcp(port, "127.0.0.1", None)


def test_pick_port_and_start_retries_when_address_in_use(tmp_path: Path) -> None:
    ports: list[int] = []

    def argv(port: int) -> list[str]:
        ports.append(port)
        if len(ports) == 1:
            return ["sh", "-c", "echo 'bind: Address already in use' >&2; exit 1"]
        return [sys.executable, "-c", _LISTENER, str(port)]

    process, port = pick_port_and_start(argv, log_path=tmp_path / "retry.log")
    with process:
        assert len(ports) == 2
        assert port == ports[1]
        assert is_listening_tcp(port, "127.0.0.1", process.tree_pids())
    assert "Address already in use" in (tmp_path / "retry.log").read_text()


def test_pick_port_and_start_does_not_retry_other_failures(tmp_path: Path) -> None:
    calls: list[int] = []

    def argv(port: int) -> list[str]:
        calls.append(port)
        return ["sh", "-c", "echo 'unknown option --frobnicate' >&2; exit 2"]

    with pytest.raises(PeerError, match=r"(?s)exited with code 2.*unknown option --frobnicate"):
        pick_port_and_start(argv, log_path=tmp_path / "bad.log")
    assert len(calls) == 1


def test_wait_for_unix(tmp_path: Path) -> None:
    path = tmp_path / "server.sock"
    with ManagedProcess.start(
        [sys.executable, "-c", _LISTENER, str(path)], log_path=tmp_path / "u.log"
    ) as process:
        process.wait_for_listening_unix(path, timeout=10)
        assert is_listening_unix(path, process.tree_pids())
        assert not is_listening_unix(path, [os.getpid()])
        process.wait_for_unix(path, timeout=10)
    assert not is_listening_unix(path)


# A Python program that starts a sleep through ManagedProcess, reports its pid, then waits.
_OWNER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from harness.process import ManagedProcess
    sleeper = ManagedProcess.start(["sleep", "100"], log_path=Path(sys.argv[1]))
    print("sleeper", sleeper.pid, flush=True)
    if sys.argv[2] == "wait":
        time.sleep(100)
    """
)


def _sleeper_pid(owner: ManagedProcess) -> int:
    owner.wait_ready(lambda: "sleeper" in owner.log_text(), 30, "the sleeper's pid")
    return int(owner.log_text().split("sleeper", 1)[1].split()[0])


def test_registry_kills_children_at_exit(tmp_path: Path) -> None:
    with ManagedProcess.start(
        [sys.executable, "-c", _OWNER, str(tmp_path / "sleeper.log"), "exit"],
        log_path=tmp_path / "owner.log",
    ) as owner:
        sleeper = _sleeper_pid(owner)
        assert owner.wait(timeout=30) == 0
    assert _wait_until(lambda: _is_dead(sleeper))


def test_registry_kills_children_on_sigterm(tmp_path: Path) -> None:
    with ManagedProcess.start(
        [sys.executable, "-c", _OWNER, str(tmp_path / "sleeper.log"), "wait"],
        log_path=tmp_path / "owner.log",
    ) as owner:
        sleeper = _sleeper_pid(owner)
        os.kill(owner.pid, signal.SIGTERM)  # the owner alone, not its group
        assert owner.wait(timeout=30) == -signal.SIGTERM
    assert _wait_until(lambda: _is_dead(sleeper))


def test_conftest_fails_a_test_that_leaks_a_process(tmp_path: Path) -> None:
    """The autouse leak check of tests/conftest.py: a leaked child fails its test and dies."""
    (tmp_path / "conftest.py").write_text((Path(__file__).parent / "conftest.py").read_text())
    (tmp_path / "test_leaky.py").write_text(
        textwrap.dedent(
            """
            import subprocess
            from pathlib import Path

            def test_leaks():
                child = subprocess.Popen(["sleep", "100"])
                Path("leaked.pid").write_text(str(child.pid))

            def test_clean():
                subprocess.run(["true"], check=True)
            """
        )
    )
    result = run_command(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist"],
        timeout=120,
        cwd=tmp_path,
    )
    assert result.returncode == 1, result.stdout
    assert "2 passed, 1 error" in result.stdout  # test_leaks passes, then errors
    assert "test left processes behind (killed now)" in result.stdout
    assert "sleep 100" in result.stdout
    leaked = int((tmp_path / "leaked.pid").read_text())
    assert _wait_until(lambda: _is_dead(leaked))
