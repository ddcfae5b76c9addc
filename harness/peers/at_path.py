"""The ``path`` provider: programs a user built, run from where they are.

``--server qemu-nbd=~/src/qemu/build/qemu-nbd`` (or ``=~/src/qemu/build``, a
directory) tests the user's own build. A :class:`PathProvider` is a location
and the provider that runs what is there (by default the host, as it is;
a suite's root filesystem when the build needs that suite's libraries):

- a file is the program it was given for (its executable: ``qemu-nbd``), and
  the programs beside it are its siblings (a qemu build's ``qemu-img`` and
  ``qemu-io`` make the images its ``qemu-nbd`` serves);
- a directory holds programs by name: ``DIR/NAME``, ``DIR/bin/NAME`` or one
  level down (``DIR/storage-daemon/qemu-storage-daemon`` in a qemu build tree,
  ``DIR/info/nbdinfo`` in a libnbd one), so an install prefix's ``bin``, a
  build tree or ``nbd-harness peers build``'s output all work.

A program the location does not have comes from the base provider (the
host's ``qemu-img`` when only a ``qemu-nbd`` was given). Commands that name a
program on their own (a shell that starts ``nbd-server``) find the location's
programs first on PATH, through a directory of symlinks kept in the cache.

The provider is named ``path:LOCATION`` (``path:EXECUTABLE=FILE`` when a file's
name is not its program's), so a case names it and a worker process makes the
same provider again from the name (:meth:`PathProvider.from_name`).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

from harness.errors import UserError

from ._provider import Progress, Provider, ProvisionReport, outermost
from .suites import Suite

KIND = "path"
# Where, under a directory, a program may be: the directory itself, an install prefix's bin,
# and (checked last) one level down, as in build trees.
_PREFIX_DIRS = ("", "bin", "sbin")


class PathError(UserError, ValueError):
    """A program path that cannot be used; the message says which and why."""


def _executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def driver_executables() -> frozenset[str]:
    """The programs the drivers run by name (``qemu-nbd``, ``nbdinfo``...), except the
    interpreter the Python bindings run in (a location's ``python3`` is not a peer)."""
    from ._base import DRIVERS

    return frozenset(driver.executable for driver in DRIVERS.values()
                     if not driver.builtin and driver.executable != "python3")


def find_in_directory(directory: Path, name: str) -> Path | None:
    """``name`` under ``directory``: ``DIR/NAME``, ``DIR/bin/NAME``, ``DIR/sbin/NAME``, then
    ``DIR/*/NAME`` (the first, by name); None when it is nowhere."""
    for sub in _PREFIX_DIRS:
        candidate = directory / sub / name
        if _executable(candidate):
            return candidate
    with contextlib.suppress(OSError):
        for child in sorted(directory.iterdir()):
            if child.is_dir() and _executable(child / name):
                return child / name
    return None


@dataclass(frozen=True)
class PathSpec:
    """``PROGRAM=PATH[@VERSION]``: a program the user built, and the version it is (None:
    ask the program)."""

    program: str
    location: str
    version: str | None = None

    def __str__(self) -> str:
        return f"{self.program}={self.location}" + (f"@{self.version}" if self.version else "")


_PATH_SPEC = re.compile(r"^(?P<program>[a-z][a-z0-9-]*)=(?P<location>.+?)"
                        r"(?:@(?P<version>[A-Za-z0-9.+~_-]+))?$")


def parse_path_spec(text: str) -> PathSpec | None:
    """``qemu-nbd=/build/qemu-nbd@8.2`` -> a :class:`PathSpec`; None when ``text`` names no
    path (``qemu-nbd@8.2``). A path may hold ``@``: only a last ``@WORD`` without a ``/``
    is the version."""
    match = _PATH_SPEC.match(text.strip())
    if match is None:
        return None
    return PathSpec(match.group("program"), match.group("location"), match.group("version"))


class PathProvider(Provider):
    """Programs at a location on this machine, run through a base provider."""

    kind = KIND

    def __init__(self, location: Path | str, *, executable: str | None = None,
                 base: Provider) -> None:
        """``location`` is a program file (for ``executable``, by default its own name) or a
        directory of programs; ``base`` runs them (the host, or a root filesystem)."""
        path = Path(os.path.expanduser(os.fspath(location))).absolute()
        if not path.exists():
            raise PathError(f"{location}: no such file or directory")
        if path.is_file() and not os.access(path, os.X_OK):
            raise PathError(f"{location}: not an executable program")
        if not base.owns_processes:
            raise PathError(f"{location}: built programs run on this machine or in a root "
                            f"filesystem, not from {base.name}")
        self.location = path
        self.file_executable = (executable or path.name) if path.is_file() else None
        super().__init__(Suite(name=self._name_text(), release="", providers=(), packages=()))
        self.base = base
        self.programs = self._find_programs()

    def _name_text(self) -> str:
        if self.file_executable is None or self.file_executable == self.location.name:
            return os.fspath(self.location)
        return f"{self.file_executable}={self.location}"

    @classmethod
    def from_name(cls, name: str, base: Provider) -> PathProvider:
        """The provider :attr:`name` names (``path:/opt/qemu/bin`` or
        ``path:qemu-nbd=/build/my-qemu-nbd``)."""
        text = name.removeprefix(f"{KIND}:")
        executable, sep, location = text.partition("=")
        if not sep or os.sep in executable:
            return cls(text, base=base)
        return cls(location, executable=executable, base=base)

    @property
    def name(self) -> str:
        return f"{KIND}:{self._name_text()}"

    def _find_programs(self) -> dict[str, Path]:
        """Executable name -> the file that runs for it, for every driver's program here."""
        if self.file_executable is not None:
            found = {self.file_executable: self.location}
            for name in driver_executables() - {self.file_executable}:
                sibling = self.location.parent / name
                if _executable(sibling):
                    found[name] = sibling
            return found
        found = {}
        for name in sorted(driver_executables()):
            path = find_in_directory(self.location, name)
            if path is not None:
                found[name] = path
        return found

    def program_path(self, program: str) -> Path | None:
        """The file at this location that runs for ``program`` (None: the base's runs)."""
        return self.programs.get(program)

    # --- state -----------------------------------------------------------------------------

    def ready(self) -> bool:
        return self.location.exists() and self.base.ready()

    def install_hint(self) -> str:
        return f"build the program, then give its path (PROGRAM={self.location})"

    def installed_packages(self) -> dict[str, str]:
        return {}  # built, not packaged: the version is the program's own

    def has_program(self, program: str) -> bool:
        return program in self.programs or self.base.has_program(program)

    def provision(self, progress: Progress) -> ProvisionReport:
        progress(f"{self.name}: nothing to install (a program at a path)")
        return ProvisionReport(self.name, False, 0.0, 0, "a program at a path")

    # --- running ---------------------------------------------------------------------------

    def shim_dir(self) -> Path:
        """A directory of symlinks, one per program here, under its program's name: first on
        PATH, so commands that start a program by name (a supervising shell) find these."""
        from .rootfs import cache_dir

        digest = hashlib.sha256(self.name.encode()).hexdigest()[:16]
        directory = cache_dir() / "path-bin" / digest
        directory.mkdir(parents=True, exist_ok=True)
        for name, target in self.programs.items():
            link = directory / name
            with contextlib.suppress(OSError):
                if os.readlink(link) == os.fspath(target):
                    continue
            staging = directory / f".{name}.{os.getpid()}"
            staging.unlink(missing_ok=True)
            staging.symlink_to(target)
            staging.replace(link)  # atomic: concurrent workers never see it missing
        return directory

    def environment(self) -> dict[str, str]:
        environment = dict(self.base.environment())
        environment["PATH"] = f"{self.shim_dir()}:{environment.get('PATH', '')}"
        return environment

    def process_environment(self) -> dict[str, str]:
        return self.environment()  # host's and bwrap's wrappers pass it on to the program

    def wrap_words(self, words: list[str], *, binds: list[str], cwd: Path | None,
                   pid_namespace: bool, label: str | None) -> list[str]:
        found = self.program_path(words[0]) if os.sep not in words[0] else None
        if found is not None:
            words = [os.fspath(found), *words[1:]]
        # A sandboxed base must see the programs (and the symlinks to them) where they are.
        seen = [self.shim_dir(), *(path.parent for path in self.programs.values())]
        return self.base.wrap_words(words, binds=outermost([*map(Path, binds), *seen]),
                                    cwd=cwd, pid_namespace=pid_namespace, label=label)

    def popen_cwd(self, cwd: Path | None) -> Path | None:
        return self.base.popen_cwd(cwd)

    def cleanup(self, label: str) -> None:
        self.base.cleanup(label)


__all__ = ["KIND", "PathError", "PathProvider", "PathSpec", "driver_executables",
           "find_in_directory", "parse_path_spec"]
