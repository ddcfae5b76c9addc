"""The ``rootfs`` provider: a Debian suite's root filesystem, run with bubblewrap.

``mmdebstrap --variant=essential`` builds the suite from the mirror this
machine's apt already uses, into ``$NBD_HARNESS_CACHE/rootfs/SUITE.tar.zst``
(default ``~/.cache/nbd-harness``, never inside the repository); it is
unpacked once next to it. A lock file makes parallel test workers wait for
one build instead of building the same suite twice; a stamp holding the
recipe's digest rebuilds the suite when its recipe in ``matrix/suites.toml``
(its package list, pins, suites, or the mirror) changes: a cached root
filesystem built from another recipe is not ready, and provisioning replaces it.
The old root is moved aside rather than deleted while peers may still run from
it, and removed once no sandbox uses it.

Programs run as ``bwrap --ro-bind ROOT/usr /usr ... --proc /proc --dev /dev --tmpfs /tmp
--bind DIR DIR ... --unshare-pid --die-with-parent`` (the root's system directories bound
read-only on bwrap's own tmpfs root, so a bound DIR may be anywhere): in the host network
namespace, so 127.0.0.1 ports and unix sockets in the bound directories work
both ways, and in a PID namespace, so whatever the program forks dies with it.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from harness.errors import UserError
from harness.paths import REPO
from harness.process import ManagedProcess, PeerError, find_program

from ._provider import (
    Progress,
    Provider,
    ProvisionReport,
    outermost,
    read_dpkg_status,
    sandboxed,
)
from .suites import Suite, host_mirror

CACHE_ENV = "NBD_HARNESS_CACHE"
# Spelled exactly so: the mirror is a frozen snapshot whose Release files have expired.
CHECK_VALID_UNTIL = 'Acquire::Check-Valid-Until "false"'
BUILD_TIMEOUT = 20 * 60.0
LOCK_TIMEOUT = 30 * 60.0
_BIN_DIRS = ("usr/bin", "usr/sbin", "bin", "sbin")


def cache_dir() -> Path:
    """Where peers are cached: ``$NBD_HARNESS_CACHE``, else ``~/.cache/nbd-harness``."""
    configured = os.environ.get(CACHE_ENV)
    if configured:
        base = Path(configured).expanduser()
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        base = (Path(xdg) if xdg else Path.home() / ".cache") / "nbd-harness"
    base = base.absolute()
    if REPO and (base == REPO or REPO in base.parents):
        raise UserError(f"{CACHE_ENV}={base} is inside the repository: choose a directory outside")
    return base


def disk_usage(path: Path) -> int:
    """Bytes allocated on disk under ``path`` (files counted once, symlinks not followed)."""
    if not path.exists():
        return 0
    if path.is_file():
        return path.stat().st_blocks * 512
    total = 0
    seen: set[tuple[int, int]] = set()
    for directory, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            with contextlib.suppress(OSError):
                info = os.lstat(os.path.join(directory, name))
                if (info.st_dev, info.st_ino) not in seen:
                    seen.add((info.st_dev, info.st_ino))
                    total += info.st_blocks * 512
    return total


@contextlib.contextmanager
def _locked(path: Path, timeout: float) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (waiting at most ``timeout`` seconds)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise PeerError(f"{path} stayed locked for {timeout:g} s") from None
                time.sleep(0.2)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def run_with_progress(
    argv: Sequence[str], *, log_path: Path, progress: Progress, timeout: float,
    what: str
) -> None:
    """Run ``argv`` to completion, passing each new line of its output to ``progress``."""
    process = ManagedProcess.start(argv, log_path=log_path)
    shown = 0
    deadline = time.monotonic() + timeout
    try:
        while True:
            lines = process.log_text().splitlines()
            for line in lines[shown:]:
                if line.strip():
                    progress(line.rstrip())
            shown = len(lines)
            code = process.poll()
            if code is not None:
                break
            if time.monotonic() >= deadline:
                raise PeerError(f"{what} took longer than {timeout:g} s; log: {log_path}")
            time.sleep(0.2)
    finally:
        code = process.stop()
    for line in process.log_text().splitlines()[shown:]:
        if line.strip():
            progress(line.rstrip())
    if code != 0:
        raise PeerError(
            f"{what} failed with exit code {code}\n  command: {' '.join(argv)}\n"
            f"  log {log_path}, last lines:\n    " + "\n    ".join(process.log_tail().splitlines())
        )


class RootfsProvider(Provider):
    """One suite's root filesystem, built once and run through bubblewrap."""

    kind = "rootfs"

    def __init__(self, suite: Suite, base: Path | None = None) -> None:
        super().__init__(suite)
        self._base = base

    # --- where things are -------------------------------------------------------------------

    @property
    def base(self) -> Path:
        return self._base if self._base is not None else cache_dir() / "rootfs"

    @property
    def tarball(self) -> Path:
        return self.base / f"{self.suite.name}.tar.zst"

    @property
    def root(self) -> Path:
        return self.base / self.suite.name

    @property
    def _tarball_stamp(self) -> Path:
        return self.base / f"{self.suite.name}.tar.zst.recipe"

    @property
    def _root_stamp(self) -> Path:
        return self.base / f"{self.suite.name}.unpacked"

    @property
    def _lock(self) -> Path:
        return self.base / f"{self.suite.name}.lock"

    @functools.cached_property
    def mirror(self) -> str:
        return host_mirror()

    def digest(self) -> str:
        return self.suite.recipe_digest(self.mirror)

    # --- state -------------------------------------------------------------------------------

    def ready(self) -> bool:
        try:
            stamp = json.loads(self._root_stamp.read_text())
        except (OSError, ValueError):
            return False
        return stamp.get("recipe") == self.digest() and self.root.is_dir()

    def install_hint(self) -> str:
        return f"nbd-harness peers install {self.suite.name}"

    def installed_packages(self) -> dict[str, str]:
        if not self.ready():
            return {}
        return self._packages(self._root_stamp.stat().st_mtime)

    @functools.cache  # noqa: B019 - keyed by the stamp's mtime: a rebuild reads it again
    def _packages(self, _stamp_mtime: float) -> dict[str, str]:
        return read_dpkg_status(self.root)

    def has_program(self, program: str) -> bool:
        return self.ready() and any(
            os.path.lexists(self.root / directory / program) for directory in _BIN_DIRS
        )

    # --- provisioning ------------------------------------------------------------------------

    def mmdebstrap_argv(self, output: Path) -> list[str]:
        """The mmdebstrap command that builds this suite into ``output`` (a .tar.zst)."""
        components = " ".join(self.suite.components)
        sources = [f"deb {self.mirror} {suite} {components}" for suite in self.suite.apt_suites()]
        return [
            "mmdebstrap",
            "--variant=essential",
            "--include=" + ",".join(self.suite.include_list()),
            "--components=" + ",".join(self.suite.components),
            f"--aptopt={CHECK_VALID_UNTIL}",
            self.suite.release,
            os.fspath(output),
            *sources,
        ]

    def provision(self, progress: Progress) -> ProvisionReport:
        started = time.monotonic()
        built = False
        with _locked(self._lock, LOCK_TIMEOUT):
            if self.ready():
                progress(f"{self.name}: already installed in {self.root}")
                return self._report(started, built, "cached")
            digest = self.digest()
            self.base.mkdir(parents=True, exist_ok=True)
            if not self._tarball_current(digest):
                self._build(digest, progress)
                built = True
            self._unpack(digest, progress)
        return self._report(started, built, "built" if built else "unpacked from the cache")

    def _report(self, started: float, built: bool, detail: str) -> ProvisionReport:
        used = disk_usage(self.tarball) + disk_usage(self.root)
        return ProvisionReport(self.name, built, time.monotonic() - started, used, detail)

    def _tarball_current(self, digest: str) -> bool:
        try:
            return self.tarball.is_file() and self._tarball_stamp.read_text().strip() == digest
        except OSError:
            return False

    def _build(self, digest: str, progress: Progress) -> None:
        find_program("mmdebstrap")
        partial = self.base / f"{self.suite.name}.partial.tar.zst"
        partial.unlink(missing_ok=True)
        progress(f"{self.name}: building with mmdebstrap from {self.mirror}")
        log_path = self.base / f"{self.suite.name}.build.log"
        log_path.unlink(missing_ok=True)  # the log is appended to: show this build's only
        run_with_progress(
            self.mmdebstrap_argv(partial),
            log_path=log_path,
            progress=lambda line: progress(f"{self.name}: {line}"),
            timeout=BUILD_TIMEOUT,
            what=f"mmdebstrap {self.suite.name}",
        )
        partial.replace(self.tarball)
        self._tarball_stamp.write_text(digest + "\n")

    def _unpack(self, digest: str, progress: Progress) -> None:
        progress(f"{self.name}: unpacking {self.tarball} into {self.root}")
        staging = self.base / f".{self.suite.name}.unpacking"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        run_with_progress(
            # /dev comes from bwrap's --dev; device nodes cannot be made without privileges.
            ["tar", "-C", os.fspath(staging), "--zstd", "-xf", os.fspath(self.tarball),
             "--exclude=./dev/*"],
            log_path=self.base / f"{self.suite.name}.unpack.log",
            progress=lambda line: progress(f"{self.name}: {line}"),
            timeout=BUILD_TIMEOUT,
            what=f"unpacking {self.tarball}",
        )
        self._root_stamp.unlink(missing_ok=True)
        # Peers started from the old root may still run (other test workers, other
        # checkouts): move it aside instead of deleting files under them, and delete it
        # once no mount namespace uses it any more.
        if self.root.exists():
            self.root.replace(self.base / f".{self.suite.name}.old-{time.time_ns()}")
        staging.replace(self.root)
        self._root_stamp.write_text(json.dumps({"recipe": digest, "unpacked": time.time()}))
        self._remove_retired_roots(progress)

    def _remove_retired_roots(self, progress: Progress) -> None:
        """Delete the roots earlier rebuilds moved aside, unless a sandbox still uses one."""
        for old in sorted(self.base.glob(f".{self.suite.name}.old-*")):
            if mounted_anywhere(old):
                progress(f"{self.name}: keeping the previous root {old} while peers use it")
                continue
            shutil.rmtree(old, ignore_errors=True)

    # --- running ------------------------------------------------------------------------------

    def wrap_words(self, words: list[str], *, binds: list[str], cwd: Path | None,
                   pid_namespace: bool, label: str | None) -> list[str]:
        mounts: list[str] = []
        for directory in binds:
            mounts += ["--bind", directory, directory]
        sandbox = [*system_mounts(self.root), "--proc", "/proc", "--dev", "/dev",
                   "--tmpfs", "/tmp", *mounts]
        return sandboxed("bwrap", sandbox, words, cwd)

    def popen_cwd(self, cwd: Path | None) -> Path | None:
        return None  # bwrap's --chdir sets it inside


def mounted_anywhere(directory: Path) -> bool:
    """True when some process's mount table has ``directory`` (or a path under it) as a
    mount source: a bubblewrap sandbox is running from it.

    The kernel shows a bind mount's source by its current path, so a root renamed
    while a sandbox runs from it shows under its new name.
    """
    directory = directory.absolute()
    # The "root" column is the path inside the mounted file system, which is the
    # absolute path only when the cache lives on the file system mounted at /.
    mount_point = directory
    while not os.path.ismount(mount_point) and mount_point != mount_point.parent:
        mount_point = mount_point.parent
    targets = {os.fspath(directory), "/" + os.fspath(directory.relative_to(mount_point))}
    for mountinfo in Path("/proc").glob("[0-9]*/mountinfo"):
        try:
            text = mountinfo.read_text(errors="replace")
        except OSError:
            continue  # the process ended, or is not ours to read
        for line in text.splitlines():
            fields = line.split(" ", 4)
            if len(fields) > 3:
                source = fields[3].replace("\\040", " ")
                if any(source == t or source.startswith(t + "/") for t in targets):
                    return True
    return False


# The directories of a root filesystem that hold the system, bound read-only.  The rest of the
# sandbox's / is bwrap's own tmpfs, so bwrap can make the mount point of any directory it binds
# (with the whole root bound read-only at /, "--bind /srv/run/case /srv/run/case" fails:
# "Can't mkdir parents for /srv/run/case: Read-only file system").
SYSTEM_DIRS = ("usr", "etc", "var", "opt", "lib", "lib32", "lib64", "libx32", "bin", "sbin")


def system_mounts(root: Path) -> list[str]:
    """bwrap arguments that show ``root``'s system directories (and merged-/usr symlinks)."""
    words: list[str] = []
    for name in SYSTEM_DIRS:
        path = root / name
        if path.is_symlink():
            words += ["--symlink", os.readlink(path), f"/{name}"]
        elif path.is_dir():
            words += ["--ro-bind", os.fspath(path), f"/{name}"]
    return words


__all__ = ["CACHE_ENV", "CHECK_VALID_UNTIL", "RootfsProvider", "cache_dir", "disk_usage",
           "mounted_anywhere", "outermost", "run_with_progress"]
