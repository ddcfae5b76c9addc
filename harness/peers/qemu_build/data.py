"""The recipe data for building qemu releases (``matrix/qemu-builds.toml``).

A :class:`BuildRoot` is a Debian suite's root filesystem with compilers and
-dev packages; an :class:`Era` is a range of releases built the same way
(which root, which Python, which flags, which compatibility headers, which
build system, which programs come out where); a :class:`Release` is an
official release tarball with its SHA-256.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path

from harness.errors import UserError
from harness.paths import QEMU_BUILDS_FILE as BUILDS_FILE
from harness.peers.suites import Suite, toml_strings, toml_table

BUILD_SYSTEMS = ("make", "meson")


class BuildDataError(UserError, ValueError):
    """``matrix/qemu-builds.toml`` is malformed; the message names the table and key."""


def series_of(version: str) -> tuple[int, int]:
    """``2.12.1`` -> ``(2, 12)``; raise ValueError for what is not a version."""
    match = re.match(r"^(\d+)\.(\d+)(?:[.+~-]|$)", version.strip())
    if not match:
        raise ValueError(f"{version!r} is not a qemu version (MAJOR.MINOR[.PATCH])")
    return int(match.group(1)), int(match.group(2))


def series_name(version: str) -> str:
    """``2.12.1`` -> ``2.12``: the version the matrix and the profiles use."""
    major, minor = series_of(version)
    return f"{major}.{minor}"


@dataclass(frozen=True)
class BuildRoot:
    """A build root: the suite it is made from and the packages added to it."""

    name: str
    suite: str
    packages: tuple[str, ...]

    def as_suite(self) -> Suite:
        """The root as a :class:`Suite`, so the rootfs provider builds and caches it."""
        return Suite(name=self.name, release=self.suite, providers=("rootfs",),
                     packages=self.packages)


@dataclass(frozen=True)
class Era:
    """Releases ``since`` <= major.minor < ``until``, built one way."""

    since: str
    until: str
    root: str
    python: str
    build_system: str
    configure: tuple[str, ...]
    programs: dict[str, str] = field(hash=False)
    """Program name -> its path in the build directory (also its make/ninja target)."""
    cflags: tuple[str, ...] = ()
    compat_headers: dict[str, str] = field(default_factory=dict, hash=False)
    environment: dict[str, str] = field(default_factory=dict, hash=False)
    note: str = ""

    def covers(self, version: str) -> bool:
        return series_of(self.since) <= series_of(version) < series_of(self.until)

    def digest(self, root: BuildRoot) -> str:
        """What a build of this era is made from; a cached build with another is stale."""
        recipe = {"era": asdict(self), "root": asdict(root)}
        recipe["era"].pop("note")
        text = json.dumps(recipe, sort_keys=True, default=list)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Release:
    """An official release tarball."""

    version: str
    url: str
    sha256: str
    sha256_from: str = ""

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]


@dataclass(frozen=True)
class BuildData:
    """Everything ``matrix/qemu-builds.toml`` says."""

    roots: dict[str, BuildRoot]
    eras: tuple[Era, ...]
    releases: tuple[Release, ...]
    jobs: int = 2

    def era_for(self, version: str) -> Era:
        for era in self.eras:
            if era.covers(version):
                return era
        ranges = ", ".join(f"{e.since}-{e.until}" for e in self.eras)
        raise BuildDataError(
            f"no build recipe for qemu {version} in {BUILDS_FILE.name} (eras: {ranges})"
        )

    def root_of(self, era: Era) -> BuildRoot:
        return self.roots[era.root]

    def root_for_suite(self, suite: str) -> BuildRoot:
        """The build root made from the Debian ``suite`` (for its source packages)."""
        for root in self.roots.values():
            if root.suite == suite:
                return root
        known = ", ".join(sorted({r.suite for r in self.roots.values()}))
        raise BuildDataError(f"no build root for Debian {suite} in {BUILDS_FILE.name} "
                             f"(build roots: {known})")

    def release_for(self, version: str) -> Release | None:
        """The release tarball of ``version`` (``2.12`` picks the newest 2.12.x listed)."""
        exact = [r for r in self.releases if r.version == version]
        if exact:
            return exact[0]
        if re.fullmatch(r"\d+\.\d+", version):
            same = [r for r in self.releases if series_name(r.version) == version]
            if same:
                return max(same, key=lambda r: [int(p) for p in r.version.split(".")])
        return None

    def release_named(self, filename: str) -> Release | None:
        """The release whose tarball has this file name (to check a local tarball)."""
        return next((r for r in self.releases if r.filename == filename), None)


def _strings(where: str, key: str, value: object) -> tuple[str, ...]:
    return toml_strings(where, key, value, BuildDataError)


def _table(where: str, key: str, value: object) -> dict[str, str]:
    return toml_table(where, key, value, BuildDataError)


def _string(where: str, key: str, table: dict, default: str | None = None) -> str:
    value = table.get(key, default)
    if not isinstance(value, str) or not value:
        raise BuildDataError(f"{where}: {key} must be a non-empty string")
    return value


def _era(where: str, table: dict, roots: dict[str, BuildRoot]) -> Era:
    known = {"since", "until", "root", "python", "build_system", "configure", "programs",
             "cflags", "compat_headers", "environment", "note"}
    unknown = sorted(set(table) - known)
    if unknown:
        raise BuildDataError(f"{where}: unknown key {unknown[0]!r}")
    era = Era(
        since=_string(where, "since", table),
        until=_string(where, "until", table),
        root=_string(where, "root", table),
        python=_string(where, "python", table),
        build_system=_string(where, "build_system", table),
        configure=_strings(where, "configure", table.get("configure", [])),
        programs=_table(where, "programs", table.get("programs", {})),
        cflags=_strings(where, "cflags", table.get("cflags", [])),
        compat_headers=_table(where, "compat_headers", table.get("compat_headers", {})),
        environment=_table(where, "environment", table.get("environment", {})),
        note=str(table.get("note", "")),
    )
    try:
        series_of(era.since), series_of(era.until)
    except ValueError as exc:
        raise BuildDataError(f"{where}: {exc}") from None
    if era.root not in roots:
        raise BuildDataError(f"{where}: root {era.root!r} is not a [root.NAME] table")
    if era.build_system not in BUILD_SYSTEMS:
        raise BuildDataError(f"{where}: build_system must be one of {', '.join(BUILD_SYSTEMS)}")
    if "qemu-nbd" not in era.programs:
        raise BuildDataError(f"{where}: programs must name qemu-nbd")
    return era


def load_build_data(path: Path = BUILDS_FILE) -> BuildData:
    """Read and validate ``matrix/qemu-builds.toml``; raise :class:`BuildDataError`."""
    try:
        document = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise BuildDataError(f"{path}: no such file") from None
    except tomllib.TOMLDecodeError as exc:
        raise BuildDataError(f"{path}: not valid TOML: {exc}") from None
    roots = {
        name: BuildRoot(name, _string(f"{path}: [root.{name}]", "suite", table),
                        _strings(f"{path}: [root.{name}]", "packages", table.get("packages")))
        for name, table in document.get("root", {}).items()
    }
    eras = tuple(_era(f"{path}: era {index + 1}", table, roots)
                 for index, table in enumerate(document.get("era", [])))
    releases = []
    for index, table in enumerate(document.get("release", [])):
        where = f"{path}: release {index + 1}"
        digest = _string(where, "sha256", table)
        if not re.fullmatch(r"[0-9a-f]{64}", digest):
            raise BuildDataError(f"{where}: sha256 must be 64 lowercase hex digits")
        releases.append(Release(_string(where, "version", table), _string(where, "url", table),
                                digest, str(table.get("sha256_from", ""))))
    jobs = document.get("defaults", {}).get("jobs", 2)
    if not isinstance(jobs, int) or jobs < 1:
        raise BuildDataError(f"{path}: [defaults] jobs must be a positive integer")
    if not eras:
        raise BuildDataError(f"{path}: no [[era]] tables")
    return BuildData(roots=roots, eras=eras, releases=tuple(releases), jobs=jobs)


@functools.cache
def default_build_data() -> BuildData:
    """``matrix/qemu-builds.toml``, read once per process."""
    return load_build_data()


__all__ = ["BUILDS_FILE", "BuildData", "BuildDataError", "BuildRoot", "Era", "Release",
           "default_build_data", "load_build_data", "series_name", "series_of"]
