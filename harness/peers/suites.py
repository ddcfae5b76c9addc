"""The Debian suites that carry real peers (``matrix/suites.toml``) and the mirror to use.

A :class:`Suite` says how to build a root filesystem (base release, extra
suites, packages, pins), which providers may offer it and which upstream
version it carries per program family. :func:`host_mirror` finds the Debian
mirror this machine's apt already uses: the harness never names an outside
host of its own.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from harness import paths
from harness.errors import UserError

SUITES_FILE = paths.SUITES_FILE
PROVIDER_KINDS = ("host", "rootfs", "docker")
MIRROR_ENV = "NBD_HARNESS_DEBIAN_MIRROR"
APT_SOURCES = Path("/etc/apt")


class SuiteDataError(UserError, ValueError):
    """``matrix/suites.toml`` is malformed; the message names the suite and key."""


@dataclass(frozen=True)
class Suite:
    """One Debian suite's recipe and the versions it carries."""

    name: str
    release: str
    providers: tuple[str, ...]
    packages: tuple[str, ...]
    components: tuple[str, ...] = ("main",)
    extra_suites: tuple[str, ...] = ()
    pins: dict[str, str] = field(default_factory=dict, hash=False)
    versions: dict[str, str] = field(default_factory=dict, hash=False)
    program_packages: dict[str, str] = field(default_factory=dict, hash=False)

    def package_of(self, program: str) -> str:
        """The Debian package that ships ``program`` in this suite."""
        return self.program_packages[program]

    def include_list(self) -> list[str]:
        """Packages for ``mmdebstrap --include``, pinned ones spelled ``PKG/SUITE``."""
        return [f"{p}/{self.pins[p]}" if p in self.pins else p for p in self.packages]

    def apt_suites(self) -> tuple[str, ...]:
        return (self.release, *self.extra_suites)

    def recipe_digest(self, mirror: str) -> str:
        """A digest of everything the root filesystem is built from (cache invalidation)."""
        recipe = {
            "release": self.release,
            "extra": self.extra_suites,
            "packages": self.include_list(),
            "components": self.components,
            "mirror": mirror,
        }
        return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class SuiteData:
    """Everything ``matrix/suites.toml`` says."""

    suites: dict[str, Suite]
    families: dict[str, str]
    """Program name -> version family (``qemu-nbd`` -> ``qemu``)."""

    def suite(self, name: str) -> Suite:
        try:
            return self.suites[name]
        except KeyError:
            known = ", ".join(self.suites)
            raise SuiteDataError(f"unknown Debian suite {name!r}; known: {known}") from None

    def family_of(self, program: str) -> str | None:
        return self.families.get(program)


def toml_strings(where: str, key: str, value: object,
                 error: type[UserError] = SuiteDataError) -> tuple[str, ...]:
    """``value`` as a list of non-empty strings, or ``error`` naming ``where`` and ``key``
    (shared by the TOML loaders of harness/peers)."""
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise error(f"{where}: {key} must be a list of non-empty strings")
    return tuple(value)


def toml_table(where: str, key: str, value: object,
               error: type[UserError] = SuiteDataError) -> dict[str, str]:
    """``value`` as a table of non-empty strings, or ``error`` naming ``where`` and ``key``."""
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and v for k, v in value.items()
    ):
        raise error(f"{where}: {key} must be a table of strings")
    return dict(value)



def load_suites(path: Path = SUITES_FILE) -> SuiteData:
    """Read and validate ``matrix/suites.toml``; raise :class:`SuiteDataError`."""
    try:
        document = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise SuiteDataError(f"{path}: no such file") from None
    except tomllib.TOMLDecodeError as exc:
        raise SuiteDataError(f"{path}: not valid TOML: {exc}") from None
    programs = toml_table(f"{path}: [programs]", "programs", document.get("programs", {}))
    families = toml_table(f"{path}: [families]", "families", document.get("families", {}))
    defaults = document.get("defaults", {})
    default_packages = toml_strings(f"{path}: [defaults]", "packages", defaults.get("packages", []))
    default_components = toml_strings(
        f"{path}: [defaults]", "components", defaults.get("components", ["main"])
    )
    known_keys = {"release", "providers", "packages", "components", "extra_suites", "pins",
                  "versions", "program_packages"}
    suites: dict[str, Suite] = {}
    for name, table in document.get("suite", {}).items():
        where = f"{path}: [suite.{name}]"
        if not isinstance(table, dict):
            raise SuiteDataError(f"{where}: must be a table")
        unknown = sorted(set(table) - known_keys)
        if unknown:
            raise SuiteDataError(f"{where}: unknown key {unknown[0]!r}")
        release = table.get("release", name)
        if not isinstance(release, str) or not release:
            raise SuiteDataError(f"{where}: release must be a suite name")
        providers = toml_strings(where, "providers", table.get("providers", ["rootfs", "docker"]))
        bad = [p for p in providers if p not in PROVIDER_KINDS]
        if bad:
            raise SuiteDataError(
                f"{where}: provider {bad[0]!r} is not one of {', '.join(PROVIDER_KINDS)}"
            )
        suites[name] = Suite(
            name=name,
            release=release,
            providers=providers,
            packages=toml_strings(where, "packages", table.get("packages", list(default_packages))),
            components=toml_strings(
                where, "components", table.get("components", list(default_components))
            ),
            extra_suites=toml_strings(where, "extra_suites", table.get("extra_suites", [])),
            pins=toml_table(where, "pins", table.get("pins", {})),
            versions=toml_table(where, "versions", table.get("versions", {})),
            program_packages={
                **programs,
                **toml_table(where, "program_packages", table.get("program_packages", {})),
            },
        )
    if not suites:
        raise SuiteDataError(f"{path}: no [suite.NAME] tables")
    return SuiteData(suites=suites, families=families)


@functools.cache
def default_suites() -> SuiteData:
    """``matrix/suites.toml``, read once per process."""
    return load_suites()


# --- the machine's apt mirror ----------------------------------------------------------------

_DEB_LINE = re.compile(r"^\s*deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+(\S+)")


def _mirror_candidates(apt_dir: Path) -> list[tuple[str, list[str]]]:
    """(URI, suites) of every enabled ``deb`` source, one-line and deb822 formats."""
    found: list[tuple[str, list[str]]] = []
    one_line = [apt_dir / "sources.list", *sorted((apt_dir / "sources.list.d").glob("*.list"))]
    for path in one_line:
        try:
            text = path.read_text()
        except OSError:
            continue
        for line in text.splitlines():
            match = _DEB_LINE.match(line)
            if match:
                found.append((match.group(1), [match.group(2)]))
    for path in sorted((apt_dir / "sources.list.d").glob("*.sources")):
        try:
            text = path.read_text()
        except OSError:
            continue
        for stanza in re.split(r"\n\s*\n", text):
            fields: dict[str, str] = {}
            for line in stanza.splitlines():
                if line.startswith("#") or ":" not in line or line[:1].isspace():
                    continue
                key, _, value = line.partition(":")
                fields[key.strip().lower()] = value.strip()
            if "deb" not in fields.get("types", "").split():
                continue
            if fields.get("enabled", "yes").lower() == "no":
                continue
            for uri in fields.get("uris", "").split():
                found.append((uri, fields.get("suites", "").split()))
    return found


def host_mirror(apt_dir: Path = APT_SOURCES) -> str:
    """The Debian archive URL this machine's apt uses (``$NBD_HARNESS_DEBIAN_MIRROR`` wins).

    The first source serving a Debian release suite (not -security, -updates or
    -backports) is chosen; its URI is reused as is, so a local or frozen snapshot
    mirror keeps being used.
    """
    override = os.environ.get(MIRROR_ENV)
    if override:
        return override.rstrip("/")
    for uri, suites in _mirror_candidates(apt_dir):
        if any(re.fullmatch(r"[a-z]+", suite) for suite in suites) and "security" not in uri:
            return uri.rstrip("/")
    raise UserError(
        f"no Debian mirror found in {apt_dir}/sources.list(.d): set {MIRROR_ENV}=URL "
        "to the Debian archive to build peer root filesystems from"
    )


__all__ = [
    "MIRROR_ENV",
    "PROVIDER_KINDS",
    "SUITES_FILE",
    "Suite",
    "SuiteData",
    "SuiteDataError",
    "default_suites",
    "host_mirror",
    "load_suites",
]
