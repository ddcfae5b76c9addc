"""The one way nbd-harness runs external programs.

Every peer (qemu-nbd, nbdkit, nbd-server, nbdinfo ...) runs through
:class:`ManagedProcess` (long-running) or :func:`run_command` (one-shot). Both
put the program in a new session, so that stopping it signals its whole process
group: a server that forked helpers, or ``sh -c 'a & b'``, leaves nothing
behind. Output goes to a log file, never to a pipe that nobody reads.

A module-level registry remembers every process still running, and kills them
all at interpreter exit and on SIGTERM, so a crashed or cancelled run does not
leave peers listening on the machine.

The leader is never reaped before its group has been killed: while it is a
zombie its pid (which is also the group id) cannot be reused, so signalling the
group can never hit an unrelated process.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from types import FrameType, TracebackType

from harness.errors import UserError

__all__ = [
    "ManagedProcess",
    "MissingProgramError",
    "PeerError",
    "descendant_pids",
    "find_program",
    "is_listening_tcp",
    "is_listening_unix",
    "pick_port_and_start",
    "run_command",
    "running_processes",
]

#: How many log lines an error message quotes.
LOG_TAIL_LINES = 20

# What programs print when bind() fails with EADDRINUSE ("Address already in use").
_ADDRESS_IN_USE = re.compile(r"address (already )?in use", re.IGNORECASE)


class PeerError(Exception):
    """An external program failed: it would not start, exited early, timed out or failed.

    The message names the program and quotes the tail of its output.
    """


class MissingProgramError(PeerError, UserError):
    """A program the harness needs is not installed (a user error: the CLI prints one line)."""


def find_program(name: str) -> str:
    """Return the absolute path of ``name`` from PATH, or raise :class:`MissingProgramError`."""
    path = shutil.which(name)
    if path is None:
        raise MissingProgramError(f"{name} is not installed: run scripts/bootstrap")
    return path


def _tail(text: str, lines: int = LOG_TAIL_LINES) -> str:
    kept = text.rstrip("\n").splitlines()[-lines:]
    return "\n".join(kept) if kept else "(no output)"


def _describe(argv: Sequence[str]) -> str:
    return " ".join(str(arg) for arg in argv)


def _resolve_argv(argv: Sequence[str | os.PathLike[str]]) -> list[str]:
    """Return argv as strings with argv[0] resolved, so a missing program reads clearly."""
    if not argv:
        raise ValueError("argv must not be empty")
    words = [os.fspath(arg) for arg in argv]
    if os.sep not in words[0]:
        words[0] = find_program(words[0])
    return words


# --------------------------------------------------------------------------------------
# /proc inspection


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """Return (state, ppid) of ``pid`` from /proc, or None when it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    fields = raw.rpartition(")")[2].split()
    return fields[0], int(fields[1])


def _parent_map() -> dict[int, int]:
    parents: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            stat = _proc_stat(int(entry.name))
            if stat is not None:
                parents[int(entry.name)] = stat[1]
    return parents


def descendant_pids(pid: int) -> list[int]:
    """Return the pids of every live or zombie process whose parent chain leads to ``pid``."""
    children: dict[int, list[int]] = {}
    for child, parent in _parent_map().items():
        children.setdefault(parent, []).append(child)
    found: list[int] = []
    pending = list(children.get(pid, ()))
    while pending:
        current = pending.pop()
        found.append(current)
        pending.extend(children.get(current, ()))
    return sorted(found)


def _socket_inodes(pids: Iterable[int]) -> set[int]:
    inodes: set[int] = set()
    for pid in pids:
        with contextlib.suppress(OSError):
            for entry in os.scandir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    target = os.readlink(entry.path)
                    if target.startswith("socket:["):
                        inodes.add(int(target[8:-1]))
    return inodes


def _decode_proc_address(hex_address: str) -> str:
    # The kernel prints each 32-bit word of the address in host byte order.
    words = [int(hex_address[i : i + 8], 16) for i in range(0, len(hex_address), 8)]
    packed = struct.pack(f"={len(words)}I", *words)
    family = socket.AF_INET if len(packed) == 4 else socket.AF_INET6
    return socket.inet_ntop(family, packed)


_WILDCARDS = {"0.0.0.0", "::"}
_TCP_LISTEN = "0A"


def _tcp_listeners(port: int) -> list[tuple[str, int]]:
    """Return (address, inode) of every TCP socket listening on ``port``."""
    found: list[tuple[str, int]] = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            hex_address, _, hex_port = fields[1].partition(":")
            if fields[3] == _TCP_LISTEN and int(hex_port, 16) == port:
                found.append((_decode_proc_address(hex_address), int(fields[9])))
    return found


def is_listening_tcp(port: int, host: str | None = None, pids: Iterable[int] | None = None) -> bool:
    """Tell whether a TCP socket listens on ``port``, without connecting to it.

    ``host`` limits the match to that address (a wildcard bind also matches);
    ``pids`` limits it to sockets those processes hold.
    """
    listeners = _tcp_listeners(port)
    if host is not None:
        wanted = {host, *_WILDCARDS}
        if host == "localhost":
            wanted |= {"127.0.0.1", "::1"}
        listeners = [(address, inode) for address, inode in listeners if address in wanted]
    if pids is None:
        return bool(listeners)
    owned = _socket_inodes(pids)
    return any(inode in owned for _, inode in listeners)


# Flag __SO_ACCEPTCON in /proc/net/unix: the socket is listening.
_UNIX_ACCEPTCON = 0x10000


def is_listening_unix(path: str | os.PathLike[str], pids: Iterable[int] | None = None) -> bool:
    """Tell whether a unix socket listens at ``path``, without connecting to it."""
    # A program may bind a relative path: /proc shows the path as it was bound.
    wanted = {os.fspath(path), os.path.abspath(os.fspath(path))}
    owned = None if pids is None else _socket_inodes(pids)
    try:
        lines = Path("/proc/net/unix").read_text().splitlines()[1:]
    except OSError:
        return False
    for line in lines:
        fields = line.split(maxsplit=7)
        if len(fields) < 8 or fields[7] not in wanted:
            continue
        if int(fields[3], 16) & _UNIX_ACCEPTCON and (owned is None or int(fields[6]) in owned):
            return True
    return False


# --------------------------------------------------------------------------------------
# Registry: whatever is still running at exit or on SIGTERM gets killed.

# Re-entrant: the SIGTERM handler runs in the main thread, possibly while it holds the lock.
_registry_lock = threading.RLock()
_running: set[ManagedProcess] = set()
_sigterm_installed = False
_previous_sigterm: Callable[[int, FrameType | None], object] | int | None = None


def _register(process: ManagedProcess) -> None:
    with _registry_lock:
        _running.add(process)
    _install_sigterm_handler()


def _unregister(process: ManagedProcess) -> None:
    with _registry_lock:
        _running.discard(process)


def running_processes() -> list[ManagedProcess]:
    """Every process started here and not yet stopped (for leak checks and cleanup)."""
    with _registry_lock:
        return list(_running)


def _stop_all(timeout: float) -> None:
    with _registry_lock:
        pending = list(_running)
    for process in pending:
        with contextlib.suppress(Exception):
            if process._stopping:
                # Interrupted inside its own stop() (maybe holding Popen's wait lock): waiting
                # here could deadlock, so only kill; the interrupted stop() reaps it.
                process._signal_group(signal.SIGKILL)
            else:
                process.stop(timeout=timeout)


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    _stop_all(timeout=1.0)
    previous = _previous_sigterm
    if callable(previous):
        previous(signum, frame)
    elif previous != signal.SIG_IGN:
        # Die of SIGTERM as we would have without this handler.
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)


def _install_sigterm_handler() -> None:
    global _sigterm_installed, _previous_sigterm
    if _sigterm_installed:
        return
    try:
        _previous_sigterm = signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:
        return  # Not the main thread: atexit still covers a normal exit.
    _sigterm_installed = True


atexit.register(_stop_all, 1.0)


# --------------------------------------------------------------------------------------
# Long-running processes


class ManagedProcess:
    """A program running in its own session, logging to a file, stopped with its group.

    Create with :meth:`start`. Use as a context manager, or call :meth:`stop`.
    """

    def __init__(self, popen: subprocess.Popen[bytes], argv: list[str], log_path: Path) -> None:
        self._popen = popen
        self.argv = argv
        self.log_path = log_path
        self._returncode: int | None = None
        self._reaped = False
        self._stopping = False
        self._lock = threading.RLock()  # re-entrant for the same reason as _registry_lock
        #: True when the process serves several tests (a session fixture): leak checks skip it.
        self.shared = False

    @classmethod
    def start(
        cls,
        argv: Sequence[str | os.PathLike[str]],
        *,
        log_path: Path,
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        pass_fds: Sequence[int] = (),
    ) -> ManagedProcess:
        """Start ``argv`` with stdin from /dev/null and stdout+stderr appended to ``log_path``.

        ``env`` replaces the environment when given. Raises :class:`PeerError` when the
        program cannot be started.
        """
        words = _resolve_argv(argv)
        log_path = Path(log_path)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as log:
            try:
                popen = subprocess.Popen(
                    words,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=None if env is None else dict(env),
                    cwd=cwd,
                    pass_fds=tuple(pass_fds),
                    start_new_session=True,
                )
            except OSError as exc:
                raise PeerError(f"cannot start {_describe(words)}: {exc}") from exc
        process = cls(popen, words, log_path)
        _register(process)
        return process

    # -- state ------------------------------------------------------------------------

    @property
    def pid(self) -> int:
        """Process id of the leader (also its process group and session id)."""
        return self._popen.pid

    @property
    def name(self) -> str:
        """The program's base name, for messages."""
        return os.path.basename(self.argv[0])

    @property
    def returncode(self) -> int | None:
        """Exit code (negative signal number when killed), or None while it runs."""
        return self.poll()

    def poll(self) -> int | None:
        """Return the exit code if the leader has exited, without reaping it."""
        with self._lock:
            if self._returncode is not None:
                return self._returncode
            try:
                info = os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                # Already reaped, by Popen.communicate() in run_command: Popen has the status.
                self._popen.wait()
                self._returncode = self._popen.returncode
                self._reaped = True
                return self._returncode
            if info is None or info.si_pid == 0:
                return None
            if info.si_code == os.CLD_EXITED:
                self._returncode = info.si_status
            else:
                self._returncode = -info.si_status
            return self._returncode

    def is_running(self) -> bool:
        """True while the leader has not exited."""
        return self.poll() is None

    def log_text(self) -> str:
        """Everything the program has written so far."""
        try:
            return self.log_path.read_bytes().decode("utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """The last ``lines`` lines of the log."""
        return _tail(self.log_text(), lines)

    def tree_pids(self) -> list[int]:
        """The leader and every process descending from it (for ownership checks)."""
        if self._reaped:
            return []
        return [self.pid, *descendant_pids(self.pid)]

    # -- waiting ----------------------------------------------------------------------

    def _failure(self, message: str) -> PeerError:
        return PeerError(
            f"{message}\n  command: {_describe(self.argv)}\n  log {self.log_path}, last lines:\n"
            + _indent(self.log_tail())
        )

    def wait_ready(self, check: Callable[[], bool], timeout: float, what: str) -> None:
        """Poll ``check`` until it returns True.

        Fails fast when the process exits first, and after ``timeout`` seconds: both raise
        :class:`PeerError` quoting the log tail, after stopping the process (it is of no use).
        """
        deadline = time.monotonic() + timeout
        delay = 0.005
        while True:
            if check():
                return
            code = self.poll()
            if code is not None:
                self.stop()
                raise self._failure(f"{self.name} exited with code {code} before {what}")
            if time.monotonic() >= deadline:
                self.stop()
                raise self._failure(f"{self.name}: no {what} after {timeout:g} s")
            time.sleep(delay)
            delay = min(delay * 2, 0.1)

    def wait_for_tcp(self, host: str, port: int, timeout: float) -> None:
        """Wait until a TCP connection to host:port succeeds (the probe connects and closes).

        A server that serves one client and exits (qemu-nbd without ``-t``) takes the probe
        for its client: use :meth:`wait_for_listening_tcp` for those.
        """

        def connectable() -> bool:
            try:
                with socket.create_connection((host, port), timeout=1.0):
                    return True
            except OSError:
                return False

        self.wait_ready(connectable, timeout, f"TCP listener on {host}:{port}")

    def wait_for_unix(self, path: str | os.PathLike[str], timeout: float) -> None:
        """Wait until a connection to the unix socket ``path`` succeeds (connects and closes)."""

        def connectable() -> bool:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
                probe.settimeout(1.0)
                try:
                    probe.connect(os.fspath(path))
                except OSError:
                    return False
                return True

        self.wait_ready(connectable, timeout, f"unix socket listener at {path}")

    def wait_for_listening_tcp(self, port: int, timeout: float, host: str = "127.0.0.1") -> None:
        """Wait until this process (or a descendant) listens on host:port; never connects."""
        self.wait_ready(
            lambda: is_listening_tcp(port, host, self.tree_pids()),
            timeout,
            f"TCP listener on {host}:{port}",
        )

    def wait_for_listening_unix(self, path: str | os.PathLike[str], timeout: float) -> None:
        """Wait until this process (or a descendant) listens at unix ``path``; never connects."""
        self.wait_ready(
            lambda: is_listening_unix(path, self.tree_pids()),
            timeout,
            f"unix socket listener at {path}",
        )

    def wait(self, timeout: float) -> int:
        """Wait for the program to exit by itself; raise :class:`PeerError` after ``timeout``.

        The process is reaped (with its group killed) once it has exited.
        """
        deadline = time.monotonic() + timeout
        while self.poll() is None:
            if time.monotonic() >= deadline:
                raise self._failure(f"{self.name} still running after {timeout:g} s")
            time.sleep(0.01)
        return self.stop()

    # -- stopping ---------------------------------------------------------------------

    def _signal_group(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signum)

    def stop(self, timeout: float = 5) -> int:
        """SIGTERM the process group, SIGKILL it after ``timeout`` s, reap; return the exit code.

        Processes that left the group but still descend from the leader are killed too.
        Idempotent: later calls return the same code.
        """
        if self._reaped:
            assert self._returncode is not None
            return self._returncode
        self._stopping = True
        # Collected while the leader is alive or a zombie, so the parent chain is intact.
        stragglers = descendant_pids(self.pid)
        if self.poll() is None:
            self._signal_group(signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while self.poll() is None and time.monotonic() < deadline:
                time.sleep(0.01)
        # The leader is not reaped yet, so the group id cannot have been reused.
        self._signal_group(signal.SIGKILL)
        for pid in stragglers:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        self._popen.wait()
        with self._lock:
            if self._returncode is None:
                self._returncode = self._popen.returncode
            self._reaped = True
        _unregister(self)
        return self._returncode

    def __enter__(self) -> ManagedProcess:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.poll() is None else f"exited {self._returncode}"
        return f"<ManagedProcess {self.pid} {self.name} {state}>"


def _indent(text: str) -> str:
    return "\n".join("    " + line for line in text.splitlines())


# --------------------------------------------------------------------------------------
# One-shot commands


def run_command(
    argv: Sequence[str | os.PathLike[str]],
    *,
    timeout: float,
    log_path: Path | None = None,
    input: str | bytes | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    check: bool = False,
    text: bool = True,
) -> subprocess.CompletedProcess[str] | subprocess.CompletedProcess[bytes]:
    """Run ``argv`` to completion in its own session and return its output.

    stdout and stderr are captured separately (as str when ``text``, else bytes) and, when
    ``log_path`` is given, also appended to that file. After ``timeout`` seconds the whole
    process group is killed and :class:`PeerError` is raised with the output tail; with
    ``check`` a non-zero exit raises it too.
    """
    words = _resolve_argv(argv)
    data = input.encode() if isinstance(input, str) else input
    try:
        popen = subprocess.Popen(
            words,
            stdin=subprocess.DEVNULL if data is None else subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=None if env is None else dict(env),
            cwd=cwd,
            start_new_session=True,
        )
    except OSError as exc:
        raise PeerError(f"cannot start {_describe(words)}: {exc}") from exc
    # Registered so that SIGTERM or exit during a long command kills it too.
    managed = ManagedProcess(popen, words, log_path or Path(os.devnull))
    _register(managed)
    timed_out = False
    try:
        try:
            stdout, stderr = popen.communicate(data, timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            managed._signal_group(signal.SIGKILL)
            # The pipes close once the group is dead; a bounded wait guards against escapees.
            try:
                stdout, stderr = popen.communicate(timeout=5)
            except subprocess.TimeoutExpired:
                stdout, stderr = b"", b""
    finally:
        managed.stop(timeout=0)
    if log_path is not None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as log:
            log.write(f"$ {_describe(words)}\n".encode())
            log.write(stdout or b"")
            log.write(stderr or b"")
    out_text = (stdout or b"").decode("utf-8", errors="replace")
    err_text = (stderr or b"").decode("utf-8", errors="replace")
    if timed_out:
        raise PeerError(
            f"{os.path.basename(words[0])} timed out after {timeout:g} s\n"
            f"  command: {_describe(words)}\n  output, last lines:\n"
            + _indent(_tail(out_text + err_text))
        )
    code = popen.returncode
    if check and code != 0:
        raise PeerError(
            f"{os.path.basename(words[0])} failed with exit code {code}\n"
            f"  command: {_describe(words)}\n  output, last lines:\n"
            + _indent(_tail(out_text + err_text))
        )
    if text:
        return subprocess.CompletedProcess(words, code, out_text, err_text)
    return subprocess.CompletedProcess(words, code, stdout or b"", stderr or b"")


# --------------------------------------------------------------------------------------
# Servers on kernel-chosen ports


def attempt_log(log_path: Path, attempt: int) -> Path:
    """The log of start ``attempt`` of a program (0: the first, whose log is ``log_path``)."""
    return log_path if attempt == 0 else log_path.with_name(f"{log_path.name}.retry{attempt}")


def note_restart(log_path: Path, attempt: int, what: str, how: str = "started again") -> None:
    """Say in the first attempt's log that start ``attempt`` failed (``what``) and that the
    program was started again (``how``), and where the next attempt logs."""
    with open(log_path, "a", encoding="utf-8") as log:
        log.write(f"nbd-harness: {what}; {how} (log: {attempt_log(log_path, attempt + 1).name})\n")


def _kernel_chosen_port(host: str) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def pick_port_and_start(
    argv_with_port: Callable[[int], Sequence[str | os.PathLike[str]]],
    *,
    log_path: Path,
    host: str = "127.0.0.1",
    ready_timeout: float = 10.0,
    attempts: int = 5,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    pass_fds: Sequence[int] = (),
    owned: bool = True,
    unexplained_retries: int = 0,
) -> tuple[ManagedProcess, int]:
    """Start a TCP server on a port the kernel chose, retrying when that port got taken.

    The port is picked by binding ``host`` port 0 and closing the socket, so another program
    can take it before ours binds: when the program then fails with "address in use", a new
    port is tried (up to ``attempts`` times). Readiness means the program (or a descendant)
    listens on ``host``:port, checked in /proc without connecting; with ``owned`` False any
    listener there will do (a container engine's process runs the program, not ours).
    ``unexplained_retries`` more attempts are made for a program that ended before it
    listened without saying "address in use" (a daemon that tells only syslog); each is
    recorded in the first attempt's log. Returns the running process and its port.
    """
    last_error: PeerError | None = None
    for attempt in range(attempts):
        port = _kernel_chosen_port(host)
        process = ManagedProcess.start(
            argv_with_port(port), log_path=attempt_log(log_path, attempt), env=env, cwd=cwd,
            pass_fds=pass_fds,
        )
        try:
            if owned:
                process.wait_for_listening_tcp(port, ready_timeout, host)
            else:
                process.wait_ready(lambda port=port: is_listening_tcp(port, host), ready_timeout,
                                   f"TCP listener on {host}:{port}")
        except PeerError as exc:
            if not _ADDRESS_IN_USE.search(process.log_text()):
                if unexplained_retries <= 0 or " exited with code " not in str(exc):
                    raise
                unexplained_retries -= 1
                note_restart(log_path, attempt,
                             f"{exc.args[0].splitlines()[0]}, without saying why",
                             "started again on a new port")
            last_error = exc
            continue
        return process, port
    assert last_error is not None
    raise PeerError(f"no free port after {attempts} attempts; last failure:\n{last_error}")
