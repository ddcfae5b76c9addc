"""Which drivers exist, which providers carry which versions, and ``PROGRAM@VERSION`` lookup.

:func:`resolve_peer` turns ``qemu-nbd@5.2`` into a driver bound to the first
ready provider that carries qemu 5.2 (host, then root filesystems, then
docker images, in ``matrix/suites.toml`` order); when none is ready it says
what to run, and when no suite carries that version it says so and points to
the reference server's profiles. :func:`list_peers` is ``peers list``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from harness.peerdata import load_peerdata, version_matches
from harness.process import PeerError

from ._base import (
    DRIVERS,
    ClientPeer,
    Peer,
    PeerSpec,
    PeerSpecError,
    ServerPeer,
    load_drivers,
    parse_peer_spec,
)
from ._provider import Provider, read_dpkg_status, upstream_version
from .at_path import KIND as PATH_KIND
from .at_path import PathProvider, PathSpec, parse_path_spec
from .docker import DockerProvider
from .host import HostProvider, host_codename
from .rootfs import RootfsProvider
from .suites import PROVIDER_KINDS, Suite, SuiteData, load_suites

load_drivers()

from .qemu_build.provider import FAMILY as BUILD_FAMILY  # noqa: E402 - after the drivers load
from .qemu_build.provider import KIND as BUILD_KIND  # noqa: E402
from .qemu_build.provider import built_release_providers  # noqa: E402

CATALOG_KINDS = (*PROVIDER_KINDS, BUILD_KIND)
"""Where peers come from: the suites' providers, then qemu releases built from source."""


def builtin_programs() -> tuple[str, ...]:
    """Our own peers (``reference-server``, ``reference-client``): always provided."""
    return tuple(program for program, driver in DRIVERS.items() if driver.builtin)


BUILTIN_PROGRAMS = builtin_programs()


def family_programs(data: SuiteData) -> dict[str, str]:
    """Version family -> the program that stands for it (``qemu`` -> ``qemu-nbd``) in rows
    of versions no suite carries."""
    found: dict[str, str] = {}
    for program, driver in DRIVERS.items():
        family = data.family_of(program)
        if driver.represents_family and family is not None:
            found.setdefault(family, program)
    return found


def _version_matches(actual: str | None, wanted: str) -> bool:
    if not actual:
        return False
    try:
        return version_matches(actual, wanted)
    except ValueError:
        return False


def build_providers(data: SuiteData, kinds: tuple[str, ...] = CATALOG_KINDS,
                    rootfs_base: Path | None = None) -> list[Provider]:
    """Every provider of every suite, in the order peers are looked for."""
    providers: list[Provider] = []
    codename = host_codename()
    if "host" in kinds:
        suite = data.suites.get(codename or "")
        if suite is None or "host" not in suite.providers:
            suite = _unlisted_host_suite(data, codename)
        providers.append(HostProvider(suite))
    if "rootfs" in kinds:
        providers += [RootfsProvider(s, rootfs_base) for s in data.suites.values()
                      if "rootfs" in s.providers]
    if "docker" in kinds:
        providers += [DockerProvider(s) for s in data.suites.values() if "docker" in s.providers]
    if BUILD_KIND in kinds:
        providers += built_release_providers(data, rootfs_base=rootfs_base)
    return providers


def _unlisted_host_suite(data: SuiteData, codename: str | None) -> Suite:
    """A host whose release matrix/suites.toml does not list still provides what it has:
    its versions are read from its installed packages."""
    program_packages = next(iter(data.suites.values())).program_packages
    installed = read_dpkg_status()
    versions: dict[str, str] = {}
    for program, package in program_packages.items():
        family = data.family_of(program)
        if family and package in installed and family not in versions:
            parts = upstream_version(installed[package]).split(".")
            versions[family] = ".".join(parts[:2])
    return Suite(name=codename or "host", release=codename or "", providers=("host",),
                 packages=(), versions=versions, program_packages=program_packages)


@dataclass
class Catalog:
    """The suites' data and their providers."""

    data: SuiteData
    providers: list[Provider]

    @classmethod
    def load(cls, kinds: tuple[str, ...] = CATALOG_KINDS,
             rootfs_base: Path | None = None) -> Catalog:
        data = load_suites()
        return cls(data, build_providers(data, kinds, rootfs_base))

    def provider(self, name: str) -> Provider:
        """A provider by name (``host``, ``rootfs:sid``, ``docker:trixie``,
        ``path:/opt/qemu/bin``)."""
        if name.startswith(f"{PATH_KIND}:"):
            return PathProvider.from_name(name, base=self.host())
        for provider in self.providers:
            if provider.name == name:
                return provider
        known = ", ".join(p.name for p in self.providers)
        raise PeerSpecError(f"unknown provider {name!r}; known: {known}")

    def host(self) -> Provider:
        """The host provider (built programs run through it)."""
        for provider in self.providers:
            if provider.kind == "host":
                return provider
        return build_providers(self.data, ("host",))[0]

    def at_path(self, spec: PathSpec, *, log_dir: Path | None = None) -> Peer:
        """The driver of ``spec.program`` running the program at ``spec.location``."""
        driver = DRIVERS.get(spec.program)
        if driver is None or driver.builtin:
            known = ", ".join(p for p, d in DRIVERS.items() if not d.builtin)
            raise PeerSpecError(f"{spec}: {spec.program!r} is not a program the harness "
                                f"drives; known: {known}")
        provider = PathProvider(spec.location, executable=driver.executable, base=self.host())
        if provider.program_path(driver.executable) is None:
            raise PeerSpecError(f"{spec}: no {driver.executable} program there")
        return driver(provider, log_dir=log_dir)

    def version_in(self, provider: Provider, program: str) -> str | None:
        """The version of ``program`` ``provider`` has (installed) or would have (data)."""
        family = self.data.family_of(program)
        package = provider.suite.program_packages.get(program)
        if provider.kind != "docker" and provider.ready() and package:
            installed = provider.package_version(package)
            if installed:
                return installed
        return provider.data_version(family) if family else None

    def carries(self, provider: Provider, spec: PeerSpec) -> bool:
        """True when ``provider``'s suite has ``spec.program`` at ``spec.version``."""
        family = self.data.family_of(spec.program)
        if family is None or family not in provider.suite.versions:
            return False
        if spec.program not in provider.suite.program_packages:
            return False  # a build of a release without that program (qemu-storage-daemon)
        if spec.version is None or spec.version == provider.suite.name:
            return True
        return _version_matches(self.version_in(provider, spec.program), spec.version) or (
            _version_matches(provider.data_version(family), spec.version)
        )

    def candidates(self, spec: PeerSpec) -> list[Provider]:
        return [provider for provider in self.providers if self.carries(provider, spec)]

    def resolve(self, spec: PeerSpec | str, *, log_dir: Path | None = None) -> Peer:
        """A driver for ``spec`` bound to the first ready provider that carries it (or to
        the program at a path: ``qemu-nbd=/build/qemu-nbd``)."""
        if isinstance(spec, str):
            at_path = parse_path_spec(spec)
            if at_path is not None:
                return self.at_path(at_path, log_dir=log_dir)
            spec = parse_peer_spec(spec)
        driver = DRIVERS.get(spec.program)
        if driver is None:
            known = ", ".join(sorted(DRIVERS))
            raise PeerSpecError(f"unknown peer program {spec.program!r}; known: {known}")
        if driver.builtin:
            return driver.in_process(spec.version, log_dir=log_dir)
        candidates = self.candidates(spec)
        for provider in candidates:
            if provider.ready():
                peer = driver(provider, log_dir=log_dir)
                if peer.available():
                    return peer
        if candidates:
            hints = " or ".join(f"`{p.install_hint()}`" for p in candidates
                                if p.kind != "host")
            if not hints:
                hints = "`scripts/bootstrap`"
            raise PeerSpecError(f"{spec} is not installed: run {hints}")
        family = self.data.family_of(spec.program)
        carried = sorted({v for s in self.data.suites.values()
                          for k, v in s.versions.items() if k == family})
        message = f"no Debian suite in matrix/suites.toml carries {spec}"
        if carried:
            message += f" ({spec.program} versions carried: {', '.join(carried)})"
        played = family_programs(self.data).get(family or "")
        if spec.version and played is not None and issubclass(DRIVERS[played], ServerPeer):
            profile = f"reference-server@{family}-{spec.version}"
            message += f"; the reference server can play it: {profile}"
        if spec.version and family == BUILD_FAMILY:
            message += f"; or build the release: nbd-harness peers build qemu {spec.version}"
        raise PeerSpecError(message)


def resolve_peer(spec: PeerSpec | str, *, log_dir: Path | None = None) -> Peer:
    """``resolve_peer("qemu-nbd@5.2")``: a ready driver, or a one-line error saying what to run."""
    return Catalog.load().resolve(spec, log_dir=log_dir)


def resolve_server(spec: PeerSpec | str, *, log_dir: Path | None = None) -> ServerPeer:
    peer = resolve_peer(spec, log_dir=log_dir)
    if not isinstance(peer, ServerPeer):
        raise PeerSpecError(f"{spec} is not a server")
    return peer


def resolve_client(spec: PeerSpec | str, *, log_dir: Path | None = None) -> ClientPeer:
    peer = resolve_peer(spec, log_dir=log_dir)
    if not isinstance(peer, ClientPeer):
        raise PeerSpecError(f"{spec} is not a client")
    return peer


# --- peers list ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProviderState:
    name: str
    kind: str
    ready: bool
    version: str | None
    hint: str


@dataclass(frozen=True)
class PeerListing:
    """One row of ``peers list``: a program at a version, and who provides it."""

    peer: str
    program: str
    version: str
    family: str | None
    roles: tuple[str, ...]
    suite: str | None
    provided: bool
    provider: str | None
    providers: tuple[ProviderState, ...] = field(default_factory=tuple)
    hint: str = ""

    def as_json(self) -> dict:
        return {
            "peer": self.peer,
            "program": self.program,
            "version": self.version,
            "family": self.family,
            "roles": list(self.roles),
            "suite": self.suite,
            "provided": self.provided,
            "provider": self.provider,
            "providers": [
                {"name": p.name, "kind": p.kind, "ready": p.ready, "version": p.version,
                 "hint": p.hint}
                for p in self.providers
            ],
            "hint": self.hint,
        }


def _programs_in_order() -> list[str]:
    return [name for name, driver in DRIVERS.items() if not driver.builtin]


def list_peers(catalog: Catalog | None = None, *, unpackaged: bool = True) -> list[PeerListing]:
    """Every known ``program@version``: whether it is provided, and from where.

    One row per program and suite; with ``unpackaged``, also the versions
    ``matrix/peers`` knows but no suite carries (the reference server plays those),
    and the built-in reference peers.
    """
    catalog = catalog or Catalog.load()
    rows: list[PeerListing] = []
    by_suite: dict[str, list[Provider]] = {}
    for provider in catalog.providers:
        by_suite.setdefault(provider.suite.name, []).append(provider)
    listed: set[tuple[str, str]] = set()
    for suite_name, providers in by_suite.items():
        for program in _programs_in_order():
            driver = DRIVERS[program]
            family = catalog.data.family_of(program)
            states = []
            for provider in providers:
                spec = PeerSpec(program, None)
                if not catalog.carries(provider, spec):
                    continue
                ready = provider.ready() and driver(provider).available()
                states.append(ProviderState(provider.name, provider.kind, ready,
                                            catalog.version_in(provider, program),
                                            provider.install_hint()))
            if not states:
                continue
            data_version = providers[0].data_version(family) if family else None
            version = data_version or next((s.version for s in states if s.version), "?")
            chosen = next((s.name for s in states if s.ready), None)
            rows.append(PeerListing(
                peer=f"{program}@{version}", program=program, version=version, family=family,
                roles=driver.roles, suite=suite_name, provided=chosen is not None,
                provider=chosen, providers=tuple(states),
                hint="" if chosen else f"run `{states[0].hint}`",
            ))
            if family:
                listed.add((family, version))
    if unpackaged:
        rows += _unpackaged_rows(catalog, listed)
    return rows


def _unpackaged_rows(catalog: Catalog, listed: set[tuple[str, str]]) -> list[PeerListing]:
    rows = [
        PeerListing(peer=name, program=name, version="builtin", family=None,
                    roles=DRIVERS[name].roles, suite=None, provided=True, provider="builtin")
        for name in builtin_programs()
    ]
    try:
        peerdata = load_peerdata()
    except (PeerError, ValueError):
        return rows
    standing_for = family_programs(catalog.data)
    for family, program_data in peerdata.programs.items():
        program = standing_for.get(family)
        if program is None:
            continue
        for info in program_data.versions:
            if any(f == family and _version_matches(v, info.version) for f, v in listed):
                continue
            hint = "not packaged in any suite of matrix/suites.toml"
            if "server" in DRIVERS[program].roles:
                hint += f"; reference-server@{family}-{info.version} plays it"
            rows.append(PeerListing(
                peer=f"{program}@{info.version}", program=program, version=info.version,
                family=family, roles=DRIVERS[program].roles, suite=None, provided=False,
                provider=None, hint=hint,
            ))
    return rows


__all__ = [
    "BUILTIN_PROGRAMS",
    "CATALOG_KINDS",
    "DRIVERS",
    "Catalog",
    "PeerListing",
    "ProviderState",
    "build_providers",
    "builtin_programs",
    "family_programs",
    "list_peers",
    "resolve_client",
    "resolve_peer",
    "resolve_server",
]
