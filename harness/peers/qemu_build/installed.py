"""The qemu releases built into the peer cache (``~/.cache/nbd-harness/qemu/NAME/``).

Each finished build leaves ``bin/`` (qemu-nbd, qemu-img, qemu-io and, from 5.0,
qemu-storage-daemon), ``logs/`` and ``build.json``: the version from the tree,
where it came from, the recipe digest it was built with, the Debian suite
whose peer root filesystem runs it, and how long it took. A build without its
``build.json`` never finished and does not count.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from harness.peers.rootfs import cache_dir

from .data import series_name

STAMP = "build.json"


def builds_base() -> Path:
    """Where built releases live: ``$NBD_HARNESS_CACHE/qemu`` (``~/.cache/nbd-harness/qemu``)."""
    return cache_dir() / "qemu"


@dataclass(frozen=True)
class BuiltRelease:
    """One finished build of a qemu release."""

    name: str
    """The cache folder's name: the version, plus ``+debian-SUITE`` for a Debian source."""
    version: str
    """As the tree's VERSION file says (``2.12.1``)."""
    run_suite: str
    """The Debian suite whose peer root filesystem runs the programs (the build root's)."""
    source: str
    identity: str
    recipe: str
    seconds: float
    built_at: str
    programs: dict[str, str] = field(default_factory=dict)
    """Program name -> file name in ``bin/``."""
    directory: Path = Path()

    @property
    def series(self) -> str:
        """``2.12``: the version the matrix data and the profiles speak of."""
        return series_name(self.version)

    @property
    def bin_dir(self) -> Path:
        return self.directory / "bin"

    def program_path(self, program: str) -> Path | None:
        name = self.programs.get(program)
        return self.bin_dir / name if name else None

    def as_json(self) -> dict:
        document = asdict(self)
        document.pop("directory")
        return document

    def save(self) -> None:
        (self.directory / STAMP).write_text(json.dumps(self.as_json(), indent=2) + "\n")

    @classmethod
    def load(cls, directory: Path) -> BuiltRelease | None:
        """The build in ``directory``, or None when it has no readable ``build.json``."""
        try:
            document = json.loads((directory / STAMP).read_text())
            build = cls(**{**document, "directory": directory})
            series_name(build.version)
        except (OSError, ValueError, TypeError):
            return None
        if not all(os.access(build.bin_dir / name, os.X_OK) for name in build.programs.values()):
            return None
        return build


def installed_builds(base: Path | None = None) -> list[BuiltRelease]:
    """Every finished build, oldest version first."""
    base = base or builds_base()
    if not base.is_dir():
        return []
    builds = [b for d in sorted(base.iterdir()) if d.is_dir() and not d.name.startswith(".")
              if (b := BuiltRelease.load(d)) is not None]
    return sorted(builds, key=lambda b: (_numbers(b.version), b.name))


def _numbers(version: str) -> tuple[int, ...]:
    parts = []
    for part in version.replace("-", ".").split("."):
        if not part.isdigit():
            break
        parts.append(int(part))
    return tuple(parts)


__all__ = ["STAMP", "BuiltRelease", "builds_base", "installed_builds"]
