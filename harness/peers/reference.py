"""Our own reference server and client as peers (in this process, no provider needed).

``reference-server@qemu-2.10`` is the reference server with the ``qemu-2.10``
version profile (``reference_server.profiles``); ``reference-server`` alone
speaks the whole protocol. The export's chain becomes raw layer files (the
``layers`` backend); its bitmaps start clean in the server's memory and the
writes after the bitmaps are marked in them, so the server reports exactly
what qemu would.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from harness.address import Address
from harness.process import PeerError
from harness.version import harness_version

from ._base import (
    READY_TIMEOUT,
    ClientPeer,
    Endpoint,
    PeerVersion,
    RunningServer,
    ServerPeer,
    Transport,
)
from ._images import write_raw_layers
from ._provider import Argv, Progress, Provider, ProvisionReport
from .export import ExportSpec, Extents
from .suites import Suite

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

    def wrap(self, argv: Argv, *, binds: Sequence[Path] = (), cwd: Path | None = None,
             pid_namespace: bool = False, label: str | None = None) -> list[str]:
        return [os.fspath(word) for word in argv]


class ReferenceServerPeer(ServerPeer):
    """The reference server in a thread of this process, optionally with a version profile."""

    program = "reference-server"
    executable = "reference-server"

    def __init__(self, provider: Provider | None = None, *, profile: str | None = None,
                 log_dir: Path | None = None) -> None:
        super().__init__(provider or BuiltinProvider(), log_dir=log_dir)
        self.profile = profile

    def version(self) -> PeerVersion:
        version = harness_version()
        note = f"profile {self.profile}" if self.profile else ""
        return PeerVersion(self.program, version, None, version, note)

    def features(self):
        """The :class:`~reference_server.features.ServerFeatures` this peer serves with."""
        if self.profile is None or self.profile == "reference":
            from reference_server.features import FULL

            return FULL
        from reference_server.profiles import profile

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
        from reference_server.config import config_from_dict
        from reference_server.runner import ServerThread

        workdir = Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        layers = write_raw_layers(export, workdir)
        socket_dir = workdir
        if transport == "unix":
            socket, socket_dir = self.socket_path(workdir)
            listen = f"unix:{socket}"
        else:
            listen = "tcp://127.0.0.1:0"
        server_table: dict[str, object] = {"listen": listen}
        if export.tls_dir is not None:
            server_table.update(tls="required", tls_certificates=os.fspath(export.tls_dir))
        export_table: dict[str, object] = {
            "name": export.name,
            "read_only": export.read_only,
            "bitmaps": [{"name": b.name, "granularity": b.granularity} for b in export.bitmaps],
        }
        if len(layers) > 1:
            export_table.update(backend="layers", layers=[os.fspath(p) for p in layers])
        else:
            export_table.update(backend="file", path=os.fspath(layers[0]))
        if export.description:
            export_table["description"] = export.description
        config = config_from_dict({"server": server_table, "export": [export_table]},
                                  base_dir=workdir)
        thread = ServerThread(config, self.features()).start()
        try:
            backend = thread.server.registry.backend(export.name)
            for bitmap in export.bitmaps:
                for data in export.writes_after_bitmaps:
                    backend.bitmaps[bitmap.name].mark(data.offset, data.length)
        except BaseException:
            thread.stop()
            raise
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


class ReferenceClientPeer(ClientPeer):
    """The reference client (:class:`harness.client.Client`) in this process."""

    program = "reference-client"
    executable = "reference-client"
    capabilities = frozenset({"read", "write", "map", "map-contexts", "size"})

    def __init__(self, provider: Provider | None = None, *, log_dir: Path | None = None) -> None:
        super().__init__(provider or BuiltinProvider(), log_dir=log_dir)

    def version(self) -> PeerVersion:
        version = harness_version()
        return PeerVersion(self.program, version, None, version)

    def _connect(self, endpoint: Endpoint, contexts: tuple[str, ...] = ()):
        from harness.client import Client, ConnectOptions

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


__all__ = ["BuiltinProvider", "ReferenceClientPeer", "ReferenceServerPeer"]
