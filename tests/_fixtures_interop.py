"""Helpers for the cross-version interop tests (tests/test_peers_interop.py).

Which provider carries each Debian suite's peers (the host for bookworm, a root
filesystem for the others), a reference server with one layered export per
purpose and the session records it keeps, a model of what nbdkit's memory
plugin holds after a series of commands, and the list of every packaged server
version with the reference profile that stands for it.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from harness.peerdata import default_peerdata
from harness.peers import DRIVERS, Catalog, ClientPeer, Endpoint, ExportSpec, Peer, Provider
from harness.peers.export import DATA_FLAGS, HOLE_FLAGS, Extents, merge_extents
from harness.peers.host import host_codename
from harness.peers.rootfs import RootfsProvider
from harness.peers.suites import load_suites
from reference_server.config import config_from_dict
from reference_server.features import ServerFeatures
from reference_server.runner import ServerThread

KiB = 1024
MiB = 1024 * KiB

SUITES = ("bullseye", "bookworm", "trixie", "sid")
"""One suite per packaged nbdkit and libnbd version (bookworm is this machine's own)."""
HOST_SUITE = "bookworm"
NEWEST_CLIENT_SUITE = "sid"
"""The suite with the newest libnbd (1.24): its nbdinfo shows extended headers."""

RECORD_TIMEOUT = 10.0
"""How long the server may take to file a session's record after the client has gone."""


# --- providers and drivers -----------------------------------------------------------------


@functools.cache
def provider_for(suite: str) -> Provider:
    """The provider of ``suite``'s programs: the host for bookworm, else its root filesystem
    (built once per machine and cached; ``provision`` only checks it then)."""
    if suite == HOST_SUITE:
        if host_codename() != HOST_SUITE:
            pytest.fail(f"this machine is {host_codename()!r}, not Debian {HOST_SUITE}: the "
                        "host provider stands for bookworm here", pytrace=False)
        return Catalog.load(kinds=("host",)).provider("host")
    provider = RootfsProvider(load_suites().suite(suite))
    report = provider.provision(lambda line: None)
    if not provider.ready():
        pytest.fail(f"rootfs:{suite} could not be provided: {report}", pytrace=False)
    return provider


def suite_version(suite: str, family: str) -> str:
    """The version of ``family`` (``libnbd``, ``qemu``...) that matrix data lists for ``suite``."""
    return load_suites().suite(suite).versions[family]


def peer(suite: str, program: str, log_dir: Path | None = None) -> Peer:
    """``program``'s driver bound to ``suite``'s provider; fails when the suite lacks it."""
    driver = DRIVERS[program](provider_for(suite), log_dir=log_dir)
    assert driver.available(), f"{program} missing from {driver.provider.name}"
    return driver


def client(suite: str, program: str, log_dir: Path | None = None) -> ClientPeer:
    found = peer(suite, program, log_dir)
    assert isinstance(found, ClientPeer)
    return found


# --- a reference server with one layered export per purpose ------------------------------------


def layered_export_table(spec: ExportSpec, directory: Path) -> dict[str, object]:
    """The ``[[export]]`` table serving ``spec`` as raw layer files written in ``directory``
    (what :class:`harness.peers.reference.ReferenceServerPeer` does for one export)."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, layer in enumerate(spec.chain):
        path = directory / f"layer{index}.raw"
        with open(path, "wb") as image:
            image.truncate(spec.size)
            for data in layer.ranges:
                os.pwrite(image.fileno(), data.data(), data.offset)
        paths.append(os.fspath(path))
    return {
        "name": spec.name,
        "backend": "layers",
        "layers": list(reversed(paths)),  # top first
        "read_only": spec.read_only,
        "bitmaps": [{"name": b.name, "granularity": b.granularity} for b in spec.bitmaps],
    }


def mark_bitmaps(thread: ServerThread, spec: ExportSpec) -> None:
    """Mark ``spec``'s writes after the bitmaps in the served bitmaps: qemu's view of them."""
    backend = thread.server.registry.backend(spec.name)
    for bitmap in spec.bitmaps:
        for data in spec.writes_after_bitmaps:
            backend.bitmaps[bitmap.name].mark(data.offset, data.length)


@contextmanager
def layered_server(specs: list[ExportSpec], directory: Path,
                   extra_exports: tuple[dict[str, object], ...] = ()) -> Iterator[ServerThread]:
    """One reference server (full protocol) serving every spec as a layered export."""
    tables = [layered_export_table(spec, directory / spec.name) for spec in specs]
    config = config_from_dict({"export": [*tables, *extra_exports]}, base_dir=directory)
    with ServerThread(config) as thread:
        for spec in specs:
            mark_bitmaps(thread, spec)
        yield thread


def sessions(thread: ServerThread, export: str, at_least: int = 1) -> list[dict]:
    """Summaries of the finished sessions that used ``export`` (waits for ``at_least``)."""
    deadline = time.monotonic() + RECORD_TIMEOUT
    while True:
        found = [r.summary() for r in list(thread.server.records) if r.export == export]
        if len(found) >= at_least or time.monotonic() >= deadline:
            return found
        time.sleep(0.05)


def endpoint(thread: ServerThread, export: str) -> Endpoint:
    return Endpoint(thread.address, export)


# --- what nbdkit's memory plugin holds -------------------------------------------------------


@dataclass
class SparseModel:
    """The expected content and allocation of a sparse export, ``unit``-sized clusters.

    nbdkit's memory plugin keeps data in pages (32 KiB) it frees when they are zeroed or
    trimmed whole, so with ``unit``-aligned commands its ``base:allocation`` is exact.
    """

    size: int
    unit: int = 64 * KiB

    def __post_init__(self) -> None:
        self.image = bytearray(self.size)
        self.allocated = [False] * (self.size // self.unit)

    def _clusters(self, offset: int, length: int) -> range:
        assert offset % self.unit == 0 and length % self.unit == 0, (offset, length)
        return range(offset // self.unit, (offset + length) // self.unit)

    def write(self, offset: int, data: bytes) -> None:
        self.image[offset : offset + len(data)] = data
        for cluster in self._clusters(offset, len(data)):
            self.allocated[cluster] = True

    def zero(self, offset: int, length: int) -> None:
        """Zero (or trim, which the memory plugin turns into zeroing) whole clusters."""
        self.image[offset : offset + length] = bytes(length)
        for cluster in self._clusters(offset, length):
            self.allocated[cluster] = False

    def base_allocation(self) -> Extents:
        return merge_extents(
            (index * self.unit, self.unit, DATA_FLAGS if allocated else HOLE_FLAGS)
            for index, allocated in enumerate(self.allocated)
        )


def nbdkit_pattern(offset: int, length: int) -> bytes:
    """nbdkit's pattern plugin: every 8-byte word holds its own offset, big-endian."""
    start = offset - offset % 8
    words = b"".join(word.to_bytes(8, "big") for word in range(start, offset + length + 8, 8))
    return words[offset - start : offset - start + length]


# --- every packaged server version and the profile that stands for it ----------------------------

PROGRAM_OF_FAMILY = {"qemu": "qemu-nbd", "nbdkit": "nbdkit", "nbd-server": "nbd-server"}


@dataclass(frozen=True)
class PackagedServer:
    """One server version as packaged in one suite: ``qemu-nbd`` 10.0 from trixie."""

    family: str
    version: str
    suite: str

    @property
    def program(self) -> str:
        return PROGRAM_OF_FAMILY[self.family]

    @property
    def profile_name(self) -> str:
        return f"{self.family}-{self.version}"

    @property
    def id(self) -> str:
        return f"{self.family}-{self.version}-{self.suite}"

    def client_suites(self) -> tuple[str, ...]:
        """The nbdinfo versions that look at it: the newest, and the suite's own."""
        own = HOST_SUITE if self.suite == HOST_SUITE else self.suite
        return tuple(dict.fromkeys((NEWEST_CLIENT_SUITE, own)))


def packaged_servers() -> list[PackagedServer]:
    """Every (server version, suite) that ``matrix/peers/*.toml`` says is packaged."""
    data = default_peerdata()
    found = []
    for family in PROGRAM_OF_FAMILY:
        for info in data.program(family).versions:
            found += [PackagedServer(family, info.version, where.suite) for where in info.packaged]
    return found


def reference_thread(export: dict[str, object], features: ServerFeatures) -> ServerThread:
    """A (not yet started) reference server with one memory export and ``features``."""
    return ServerThread(config_from_dict({"export": [export]}), features)


def renamed(spec: ExportSpec, name: str) -> ExportSpec:
    return dataclasses.replace(spec, name=name)


__all__ = [
    "HOST_SUITE",
    "NEWEST_CLIENT_SUITE",
    "SUITES",
    "PackagedServer",
    "SparseModel",
    "client",
    "endpoint",
    "layered_export_table",
    "layered_server",
    "mark_bitmaps",
    "nbdkit_pattern",
    "packaged_servers",
    "peer",
    "provider_for",
    "reference_thread",
    "renamed",
    "sessions",
    "suite_version",
]
