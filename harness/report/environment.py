"""Where a run ran: the machine, the harness's own version, and every peer with its package.

The results store records these so that a result set read months later (or
diffed against another) says what produced it: a verdict means little without
the exact build of qemu-nbd it was measured on.
"""

from __future__ import annotations

import contextlib
import functools
import os
import platform
import socket
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from harness.paths import REPO
from harness.peers import Catalog
from harness.version import harness_version

GIT_TIMEOUT = 5.0


def _os_release() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/etc/os-release").read_text().splitlines():
            key, _, value = line.partition("=")
            if key == "PRETTY_NAME":
                return value.strip().strip('"')
    return platform.system()


def _memory_bytes() -> int | None:
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    return None


def _git(*argv: str) -> str | None:
    if REPO is None:
        return None  # an installed package: no checkout, no commit
    try:
        result = subprocess.run(["git", "-C", str(REPO), *argv], capture_output=True, text=True,
                                timeout=GIT_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() if result.returncode == 0 else None


def harness_build() -> dict[str, Any]:
    """The harness's package version and, in a git checkout, its commit (and whether it is
    modified)."""
    info: dict[str, Any] = {"version": harness_version()}
    commit = _git("rev-parse", "HEAD")
    if commit:
        info["commit"] = commit
        info["modified"] = bool(_git("status", "--porcelain", "--untracked-files=no"))
    return info


def describe_environment() -> dict[str, Any]:
    """The machine and the harness: what ``results.json`` keeps under ``environment``."""
    return {
        "host": socket.gethostname(),
        "os": _os_release(),
        "kernel": platform.release(),
        "arch": platform.machine(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "memory_bytes": _memory_bytes(),
        "harness": harness_build(),
    }


@functools.cache
def _catalog() -> Any:
    return Catalog.load()


def _package_of(spec: str, program: str,
                provider_name: str) -> tuple[str | None, str | None, str | None]:
    """(provider, Debian package, its installed Debian version) of the peer ``spec``; the
    provider is the one the runner would choose when the case does not name it."""
    try:
        catalog = _catalog()
        if provider_name:
            provider = catalog.provider(provider_name)
        else:
            provider = catalog.resolve(spec).provider
    except Exception:  # not installed, unknown provider: the peer entry says less
        return provider_name or None, None, None
    package = provider.suite.program_packages.get(program)
    if not package or provider.kind == "docker" or not provider.ready():
        return provider.name, package, None
    return provider.name, package, provider.installed_packages().get(package)


def _binary_of(program: str, provider_name: str) -> str | None:
    """The file that ran for ``program`` when it came from a path (``qemu-nbd=PATH``)."""
    if not provider_name.startswith("path:"):
        return None
    from harness.peers import DRIVERS

    try:
        provider = _catalog().provider(provider_name)
        found = provider.program_path(DRIVERS[program].executable)
    except Exception:  # the build is gone since: the provider name still says where it was
        return None
    return str(found) if found is not None else None


def describe_peers(peers: Iterable[Any]) -> list[dict[str, Any]]:
    """One entry per peer spec (``qemu-nbd@7.2``): program, version, the roles it played,
    where it ran from, and its Debian package and exact package version when it has one.

    ``peers`` are :class:`~harness.matrix.cases.PeerRef` objects (both sides of every case).
    """
    entries: dict[str, dict[str, Any]] = {}
    for peer in peers:
        entry = entries.get(peer.spec)
        if entry is None:
            entry = entries[peer.spec] = {
                "spec": peer.spec, "program": peer.program, "version": peer.version,
                "family": peer.family, "family_version": peer.family_version,
                "provider": peer.provider, "roles": [], "quirks": sorted(peer.quirks),
            }
            if not peer.reference and peer.provider != "external":
                provider, package, package_version = _package_of(peer.spec, peer.program,
                                                                 peer.provider)
                entry["provider"] = provider or ""
                entry["package"] = package
                entry["package_version"] = package_version
                binary = _binary_of(peer.program, peer.provider)
                if binary:
                    entry["binary"] = binary
            if getattr(peer, "note", ""):
                entry["note"] = peer.note
        if peer.role not in entry["roles"]:
            entry["roles"].append(peer.role)
    return [entries[spec] for spec in sorted(entries)]


__all__ = ["describe_environment", "describe_peers", "harness_build"]
