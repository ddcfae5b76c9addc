"""The ``host`` provider: this machine's own Debian packages (scripts/bootstrap installs them)."""

from __future__ import annotations

import functools
import os
import shutil
import time
from pathlib import Path

from harness.process import find_program

from ._provider import (
    SYSTEM_PATH,
    Progress,
    Provider,
    ProvisionReport,
    read_dpkg_status,
    sandboxed,
)

OS_RELEASE = Path("/etc/os-release")


def host_codename(os_release: Path = OS_RELEASE) -> str | None:
    """The Debian codename of this machine (``bookworm``), or None when unknown."""
    try:
        text = os_release.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition("=")
        if key == "VERSION_CODENAME" and value:
            return value.strip().strip('"')
    return None


class HostProvider(Provider):
    """Programs as installed on this machine, found on PATH."""

    kind = "host"

    @property
    def name(self) -> str:
        return "host"

    def ready(self) -> bool:
        return True

    def install_hint(self) -> str:
        return "scripts/bootstrap"

    @functools.cache  # noqa: B019 - one provider object per process; the status is read once
    def installed_packages(self) -> dict[str, str]:
        return read_dpkg_status(Path("/"))

    def has_program(self, program: str) -> bool:
        return shutil.which(program, path=self._path()) is not None

    def provision(self, progress: Progress) -> ProvisionReport:
        started = time.monotonic()
        missing = sorted(p for p in self.suite.packages if p not in self.installed_packages())
        detail = (
            f"missing Debian packages: {' '.join(missing)}: run scripts/bootstrap"
            if missing
            else "the host's Debian packages are installed"
        )
        progress(detail)
        return ProvisionReport(self.name, False, time.monotonic() - started, 0, detail)

    def _path(self) -> str:
        return SYSTEM_PATH + ":" + os.environ.get("PATH", "")

    def environment(self) -> dict[str, str]:
        # The caller's environment, with Debian's programs first: nbdsh runs `python3` from
        # PATH and needs Debian's interpreter for its `nbd` module (not a pyenv or venv one).
        environment = {**os.environ, "PATH": self._path()}
        environment.pop("LIBNBD_DEBUG", None)
        return environment

    def wrap_words(self, words: list[str], *, binds: list[str], cwd: Path | None,
                   pid_namespace: bool, label: str | None) -> list[str]:
        if os.sep not in words[0]:
            found = shutil.which(words[0], path=self._path())
            words[0] = found if found is not None else find_program(words[0])
        if not pid_namespace:
            return words
        # A daemon that detaches (nbd-server) leaves our process group; in a PID namespace
        # of its own it still dies when bwrap does.
        return sandboxed(find_program("bwrap"), ["--dev-bind", "/", "/", "--proc", "/proc"],
                         words, cwd)


__all__ = ["HostProvider", "host_codename"]
