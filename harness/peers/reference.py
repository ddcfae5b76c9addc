"""Our own reference server and client as peers (in this process, no provider needed).

``reference-server@qemu-2.10`` is the reference server with the ``qemu-2.10``
version profile (``reference_server.profiles``); ``reference-server`` alone
speaks the whole protocol.

:func:`host_reference` is the one way the harness hosts the reference server
(the peer here, and :func:`harness.client_role.serve_reference` for a scenario's
export): a thread of this process with a configuration built directly
(:func:`reference_config`).  The export's chain becomes raw layer files (or
memory); its bitmaps start clean and the writes after the bitmaps are marked in
them, so the server reports exactly what qemu would.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from harness.address import Address
from harness.client import Client, ConnectOptions
from harness.process import PeerError
from harness.version import harness_version
from reference_server.config import (
    BitmapConfig,
    ExportConfig,
    ServerConfig,
    block_sizes,
    parse_listen,
)
from reference_server.features import FULL
from reference_server.profiles import profile
from reference_server.runner import ServerThread

from ._actions import ActionOutput, output_reader, parse_json
from ._base import (
    READY_TIMEOUT,
    ClientPeer,
    Endpoint,
    Peer,
    PeerVersion,
    RunningServer,
    ServerPeer,
    Transport,
)
from ._images import write_raw_layers
from ._provider import Progress, Provider, ProvisionReport
from .export import ExportSpec, Extents
from .suites import Suite

if TYPE_CHECKING:
    from reference_server.features import ServerFeatures
    from reference_server.storage import Backend

BUILTIN_SUITE = Suite(name="builtin", release="", providers=(), packages=())


class BuiltinProvider(Provider):
    """The harness itself: reference peers run in this Python process."""

    kind = "builtin"

    def __init__(self) -> None:
        super().__init__(BUILTIN_SUITE)

    @property
    def name(self) -> str:
        return "builtin"

    def ready(self) -> bool:
        return True

    def install_hint(self) -> str:
        return "scripts/bootstrap"

    def installed_packages(self) -> dict[str, str]:
        return {}

    def has_program(self, program: str) -> bool:
        return True

    def provision(self, progress: Progress) -> ProvisionReport:
        return ProvisionReport(self.name, False, 0.0, 0, "part of nbd-harness")

    def wrap_words(self, words: list[str], *, binds: list[str], cwd: Path | None,
                   pid_namespace: bool, label: str | None) -> list[str]:
        return words


EXTRA_EXPORT_SIZE = 1024 * 1024
"""Size of each of ``extra_exports`` (empty memory exports) in :func:`host_reference`."""

Storage = Literal["memory", "files"]
"""How :func:`host_reference` keeps the export: in the server's memory, or in raw layer
files (one per layer of the chain, the ``file`` or ``layers`` backend)."""


def reference_config(
    export: ExportSpec,
    workdir: Path,
    *,
    storage: Storage = "files",
    listen: str | Address = "tcp://127.0.0.1:0",
    tls: Literal["off", "optional", "required"] | None = None,
    handshake: Literal["fixed-newstyle", "newstyle", "oldstyle"] = "fixed-newstyle",
    list_exports: bool = True,
    extra_exports: Sequence[str] = (),
) -> ServerConfig:
    """The reference server's :class:`~reference_server.config.ServerConfig` for ``export``.

    Built directly (no document to parse) and validated as a configuration file
    would be.  With ``files`` storage the layer files are written into ``workdir``
    (the writes after the bitmaps in the top one).  ``tls`` None means: required
    when the export has a ``tls_dir``, else off.
    """

    minimum, preferred, maximum = block_sizes(export.min_block_size, export.preferred_block_size,
                                              export.max_payload_size)
    backend: dict[str, Any] = {"backend": "memory"}
    if storage == "files":
        layers = tuple(write_raw_layers(export, workdir))
        backend = {"backend": "file", "path": layers[0]} if len(layers) == 1 else {
            "backend": "layers", "layers": layers}
    table = ExportConfig(
        name=export.name, size=export.size, read_only=export.read_only,
        bitmaps=tuple(BitmapConfig(b.name, b.granularity) for b in export.bitmaps),
        description=export.description, min_block_size=minimum, preferred_block_size=preferred,
        max_payload_size=maximum, block_size_configured=export.block_sizes_set,
        block_size_required=export.block_size_required, multi_conn=export.multi_conn,
        init_state=export.init_state, flat_image=export.image_format == "raw", **backend)
    extra = tuple(ExportConfig(name=name, size=EXTRA_EXPORT_SIZE) for name in extra_exports)
    if tls is None:
        tls = "required" if export.tls_dir is not None else "off"
    return ServerConfig(
        listen=parse_listen(listen) if isinstance(listen, str) else listen,
        tls=tls, tls_certificates=export.tls_dir if tls != "off" else None,
        handshake=handshake, list_exports=list_exports, exports=(table, *extra),
    ).validated()


def host_reference(export: ExportSpec, workdir: Path, features: ServerFeatures | None = None,
                   *, storage: Storage = "files", **serving: Any) -> ServerThread:
    """Start the reference server (profile ``features``) serving ``export``: the one way.

    The export is as :class:`~harness.peers.export.ExportSpec` describes it
    before the first client connects: the layer data is in place, the dirty
    bitmaps are clean but for the granules ``writes_after_bitmaps`` touched (a
    read-only export gets its data the same way before it goes read-only).
    ``serving`` are the server-wide settings of :func:`reference_config`.  The
    caller stops the returned thread.
    """

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    config = reference_config(export, workdir, storage=storage, **serving)
    thread = ServerThread(config, features or FULL).start()
    try:
        _fill(thread.server.registry.backend(export.name), export, storage)
    except BaseException:
        thread.stop()
        raise
    return thread


def _fill(backend: Backend, export: ExportSpec, storage: Storage) -> None:
    """Data of a memory export, then bitmaps dirty exactly where the writes after them were."""
    if storage == "memory":
        read_only = backend.read_only
        backend.read_only = False  # the data goes in before any client sees the export
        try:
            for data in export.flattened_ranges():
                backend.write(data.offset, data.data())
        finally:
            backend.read_only = read_only
    for bitmap in backend.bitmaps.values():
        bitmap.clear()
        for data in export.writes_after_bitmaps:
            bitmap.mark(data.offset, data.length)


class ReferenceServerPeer(ServerPeer):
    """The reference server in a thread of this process, optionally with a version profile."""

    program = "reference-server"
    executable = "reference-server"
    builtin = True

    def __init__(self, provider: Provider | None = None, *, profile: str | None = None,
                 log_dir: Path | None = None) -> None:
        super().__init__(provider or BuiltinProvider(), log_dir=log_dir)
        self.profile = profile

    @classmethod
    def in_process(cls, version: str | None, *, log_dir: Path | None = None) -> Peer:
        """``reference-server@PROFILE``: the version is a profile name."""
        return cls(profile=version, log_dir=log_dir)

    def version(self) -> PeerVersion:
        version = harness_version()
        note = f"profile {self.profile}" if self.profile else ""
        return PeerVersion(self.program, version, None, version, note)

    def features(self):
        """The :class:`~reference_server.features.ServerFeatures` this peer serves with."""
        if self.profile is None or self.profile == "reference":
            return FULL

        return profile(self.profile)

    def start(
        self,
        export: ExportSpec,
        workdir: Path,
        *,
        transport: Transport = "tcp",
        options: object | None = None,
        ready_timeout: float = READY_TIMEOUT,
    ) -> RunningServer:
        workdir = Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        socket_dir = workdir
        if transport == "unix":
            socket, socket_dir = self.socket_path(workdir)
            listen = f"unix:{socket}"
        else:
            listen = "tcp://127.0.0.1:0"
        thread = host_reference(export, workdir, self.features(), listen=listen)
        address: Address = thread.address
        log_path = workdir / "reference-server.log"
        log_path.touch()
        server = RunningServer(f"reference-server ({self.profile or 'reference'})",
                               Endpoint(address, export.name, export.tls_dir), log_path, None,
                               export)
        server.add_cleanup(thread.stop)
        if socket_dir != workdir:
            server.add_cleanup(lambda: shutil.rmtree(socket_dir, ignore_errors=True))
        return server


# What the reference client prints as `nbd-harness info --json` ([nbd-harness] of
# matrix/client-actions.toml: the client-role runner drives the command; in this process
# the client is ReferenceClientPeer below).


@output_reader("harness-info-json")
def read_info(stdout: str, out: Path) -> ActionOutput:
    document = parse_json(stdout)
    return ActionOutput(size=document["negotiation"]["export_size"], document=document)


@output_reader("harness-list-json")
def read_list(stdout: str, out: Path) -> ActionOutput:
    document = parse_json(stdout)
    return ActionOutput(exports=[e["name"] for e in document["exports"]], document=document)


@output_reader("harness-map-json")
def read_map(stdout: str, out: Path) -> ActionOutput:
    return ActionOutput(extents=[(e["offset"], e["length"], e["type"])
                                 for e in parse_json(stdout)["map"]["extents"]])


class ReferenceClientPeer(ClientPeer):
    """The reference client (:class:`harness.client.Client`) in this process."""

    program = "reference-client"
    executable = "reference-client"
    builtin = True
    capabilities = frozenset({"read", "write", "map", "map-contexts", "size"})

    def __init__(self, provider: Provider | None = None, *, log_dir: Path | None = None) -> None:
        super().__init__(provider or BuiltinProvider(), log_dir=log_dir)

    @classmethod
    def in_process(cls, version: str | None, *, log_dir: Path | None = None) -> Peer:
        return cls(log_dir=log_dir)

    def version(self) -> PeerVersion:
        version = harness_version()
        return PeerVersion(self.program, version, None, version)

    def _connect(self, endpoint: Endpoint, contexts: tuple[str, ...] = ()):
        options = ConnectOptions(meta_contexts=contexts) if contexts else ConnectOptions()
        return Client.connect(endpoint.uri(), options=options)

    def read(self, endpoint: Endpoint, offset: int, length: int) -> bytes:
        with self._connect(endpoint) as client:
            return client.read(offset, length)

    def write(self, endpoint: Endpoint, offset: int, data: bytes) -> None:
        with self._connect(endpoint) as client:
            client.write(offset, data)
            client.flush()

    def map(self, endpoint: Endpoint, context: str = "base:allocation") -> Extents:
        with self._connect(endpoint, (context,)) as client:
            if context not in client.contexts:
                raise PeerError(f"the server does not offer {context}")
            return list(client.map(context))

    def size(self, endpoint: Endpoint) -> int:
        with self._connect(endpoint) as client:
            return client.export_size

    def run(self, args: Sequence[str], **kwargs: object):
        raise PeerError("the reference client runs in-process: use its methods")


__all__ = [
    "EXTRA_EXPORT_SIZE",
    "BuiltinProvider",
    "ReferenceClientPeer",
    "ReferenceServerPeer",
    "Storage",
    "host_reference",
    "reference_config",
]
