"""What every provider does: run a suite's programs, report what it carries, get provisioned.

A provider turns ``argv`` into the command that runs that program from its
suite (as is on the host, through ``bwrap`` into a root filesystem, through
``docker run``) and starts it with :mod:`harness.process`, so every peer is
logged, bounded by timeouts and stopped with its whole process tree.
Directories a program must see (its work directory, a PKI, a socket's
directory) are passed as ``binds``: they appear at the same path inside.
"""

from __future__ import annotations

import os
import re
import subprocess
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from harness.process import (
    ManagedProcess,
    PeerError,
    is_listening_tcp,
    is_listening_unix,
    pick_port_and_start,
    run_command,
)

from .suites import Suite

Argv = Sequence[str | os.PathLike[str]]
Progress = Callable[[str], None]

# PATH inside every provider: Debian's own programs (and its python3, which nbdsh runs).
SYSTEM_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class ProvisionReport:
    """What ``peers install`` did for one suite."""

    provider: str
    built: bool
    seconds: float
    disk_bytes: int
    detail: str = ""


def upstream_version(debian_version: str) -> str:
    """``1:7.2+dfsg-7+deb12u18`` -> ``7.2``; ``1.32.5-1`` -> ``1.32.5``.

    The epoch, the Debian revision and any ``+dfsg``/``~bpo`` suffix go; what is left is the
    upstream version as the program itself spells it.
    """
    version = debian_version.split(":", 1)[-1]
    version = version.rsplit("-", 1)[0] if "-" in version else version
    match = re.match(r"\d+(?:\.\d+)*", version)
    return match.group(0) if match else version


def read_dpkg_status(root: Path = Path("/")) -> dict[str, str]:
    """Installed package -> Debian version, from ``ROOT/var/lib/dpkg/status``."""
    try:
        text = (root / "var/lib/dpkg/status").read_text(errors="replace")
    except OSError:
        return {}
    installed: dict[str, str] = {}
    for stanza in text.split("\n\n"):
        fields: dict[str, str] = {}
        for line in stanza.splitlines():
            if line[:1].isspace() or ":" not in line:
                continue
            key, _, value = line.partition(":")
            fields[key] = value.strip()
        if fields.get("Status", "").endswith(" installed") and "Package" in fields:
            installed[fields["Package"]] = fields.get("Version", "")
    return installed


class Provider(ABC):
    """Runs programs of one Debian suite."""

    kind: ClassVar[str]
    #: True when the programs run as descendants of our process (so /proc shows which
    #: sockets they own); docker's containers are children of the engine instead.
    owns_processes: ClassVar[bool] = True
    #: True when the provider knows its programs' versions better than their ``--version``
    #: does (a qemu built from source knows its tree's VERSION; qemu-nbd 2.5-2.9 print 0.0.1).
    knows_versions: ClassVar[bool] = False

    def __init__(self, suite: Suite) -> None:
        self.suite = suite

    @property
    def name(self) -> str:
        """``host``, ``rootfs:sid``, ``docker:trixie``."""
        return f"{self.kind}:{self.suite.name}"

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"

    # --- state ---------------------------------------------------------------------------

    @abstractmethod
    def ready(self) -> bool:
        """True when the suite's programs can run now (installed, built or pulled)."""

    @abstractmethod
    def install_hint(self) -> str:
        """The command a user runs to make this provider ready."""

    @abstractmethod
    def installed_packages(self) -> dict[str, str]:
        """Package -> Debian version of what is installed ({} when not ready)."""

    @abstractmethod
    def has_program(self, program: str) -> bool:
        """True when the executable ``program`` exists in this provider."""

    def package_version(self, package: str) -> str | None:
        """The upstream version of an installed package, or None."""
        version = self.installed_packages().get(package)
        return upstream_version(version) if version else None

    def data_version(self, family: str) -> str | None:
        """The version ``matrix/suites.toml`` says this suite carries for ``family``."""
        return self.suite.versions.get(family)

    # --- provisioning ---------------------------------------------------------------------------

    @abstractmethod
    def provision(self, progress: Progress) -> ProvisionReport:
        """Make the provider ready (idempotent); report time and disk used."""

    # --- running ---------------------------------------------------------------------------

    def environment(self) -> dict[str, str]:
        """The environment programs run with."""
        return {"PATH": SYSTEM_PATH, "HOME": "/tmp", "LANG": "C.UTF-8", "TMPDIR": "/tmp"}

    def process_environment(self) -> dict[str, str]:
        """The environment of the command :meth:`wrap` returns (the program's, by default)."""
        return self.environment()

    def wrap(
        self,
        argv: Argv,
        *,
        binds: Sequence[Path] = (),
        cwd: Path | None = None,
        pid_namespace: bool = False,
        label: str | None = None,
    ) -> list[str]:
        """The command that runs ``argv`` from this provider.

        ``binds`` must be visible at the same path; ``pid_namespace`` puts the program in a
        PID namespace of its own, so a daemon that detaches still dies with the command;
        ``label`` names what may need cleaning up after (a container). Each provider says
        how in :meth:`wrap_words`.
        """
        return self.wrap_words([os.fspath(word) for word in argv], binds=outermost(binds),
                               cwd=cwd, pid_namespace=pid_namespace, label=label)

    @abstractmethod
    def wrap_words(self, words: list[str], *, binds: list[str], cwd: Path | None,
                   pid_namespace: bool, label: str | None) -> list[str]:
        """:meth:`wrap` for ``argv`` as strings and ``binds`` as the outermost absolute
        directories (none inside another)."""

    def cleanup(self, label: str) -> None:  # noqa: B027 - optional hook
        """Remove what outlives a stopped command (a container); nothing by default."""

    def popen_cwd(self, cwd: Path | None) -> Path | None:
        """The directory to start the wrapper in (the program's own when it runs here)."""
        return cwd

    def start(
        self,
        argv: Argv,
        *,
        log_path: Path,
        binds: Sequence[Path] = (),
        cwd: Path | None = None,
        pid_namespace: bool = False,
        label: str | None = None,
    ) -> ManagedProcess:
        """Start a long-running program, logging to ``log_path``."""
        command = self.wrap(argv, binds=binds, cwd=cwd, pid_namespace=pid_namespace, label=label)
        return ManagedProcess.start(
            command, log_path=log_path, env=self.process_environment(), cwd=self.popen_cwd(cwd)
        )

    def start_tcp(
        self,
        argv_with_port: Callable[[int], Argv],
        *,
        log_path: Path,
        binds: Sequence[Path] = (),
        cwd: Path | None = None,
        pid_namespace: bool = False,
        label: str | None = None,
        host: str = "127.0.0.1",
        ready_timeout: float = 30.0,
        unexplained_retries: int = 0,
    ) -> tuple[ManagedProcess, int]:
        """Start a TCP server on a kernel-chosen port; return it once it listens
        (``unexplained_retries``: see :func:`~harness.process.pick_port_and_start`)."""

        def command(port: int) -> list[str]:
            return self.wrap(
                argv_with_port(port),
                binds=binds,
                cwd=cwd,
                pid_namespace=pid_namespace,
                label=label,
            )

        return pick_port_and_start(
            command,
            log_path=log_path,
            host=host,
            ready_timeout=ready_timeout,
            env=self.process_environment(),
            cwd=self.popen_cwd(cwd),
            owned=self.owns_processes,
            unexplained_retries=unexplained_retries,
        )

    def wait_unix(self, process: ManagedProcess, path: Path, timeout: float) -> None:
        """Wait until ``process`` listens at the unix socket ``path``."""
        if self.owns_processes:
            process.wait_for_listening_unix(path, timeout)
        else:
            process.wait_ready(lambda: is_listening_unix(path), timeout, f"unix socket {path}")

    def wait_tcp(self, process: ManagedProcess, port: int, timeout: float,
                 host: str = "127.0.0.1") -> None:
        """Wait until ``process`` listens on ``host``:``port`` (started on a port we chose)."""
        if self.owns_processes:
            process.wait_for_listening_tcp(port, timeout, host)
        else:
            process.wait_ready(
                lambda: is_listening_tcp(port, host), timeout, f"TCP listener on {host}:{port}"
            )

    def run(
        self,
        argv: Argv,
        *,
        timeout: float,
        binds: Sequence[Path] = (),
        cwd: Path | None = None,
        log_path: Path | None = None,
        input: str | bytes | None = None,
        check: bool = True,
        text: bool = True,
    ) -> subprocess.CompletedProcess:
        """Run a program to completion; with ``check`` a failure raises :class:`PeerError`."""
        command = self.wrap(argv, binds=binds, cwd=cwd)
        return run_command(
            command,
            timeout=timeout,
            log_path=log_path,
            input=input,
            env=self.process_environment(),
            cwd=self.popen_cwd(cwd),
            check=check,
            text=text,
        )


def outermost(binds: Sequence[Path]) -> list[str]:
    """Absolute bind directories, without duplicates and without ones inside another."""
    paths = sorted({os.path.abspath(os.fspath(path)) for path in binds}, key=len)
    kept: list[str] = []
    for path in paths:
        if not any(path == outer or path.startswith(outer.rstrip("/") + "/") for outer in kept):
            kept.append(path)
    return kept


def sandboxed(bwrap: str, sandbox: Sequence[str], words: Sequence[str],
              cwd: Path | None) -> list[str]:
    """``bwrap SANDBOX... --unshare-pid --die-with-parent [--chdir CWD] -- WORDS``: a PID
    namespace of its own, so whatever the program forks dies with the command."""
    return [
        bwrap,
        *sandbox,
        "--unshare-pid",
        "--die-with-parent",
        # Absolute: bwrap resolves --chdir inside the sandbox, after the binds.
        *(["--chdir", os.path.abspath(cwd)] if cwd is not None else []),
        "--",
        *words,
    ]


def require_ready(provider: Provider) -> None:
    """Raise :class:`PeerError` naming the install command when ``provider`` is not ready."""
    if not provider.ready():
        raise PeerError(f"{provider.name} is not installed: run `{provider.install_hint()}`")


__all__ = [
    "SYSTEM_PATH",
    "Argv",
    "Progress",
    "Provider",
    "ProvisionReport",
    "outermost",
    "read_dpkg_status",
    "require_ready",
    "sandboxed",
    "upstream_version",
]
