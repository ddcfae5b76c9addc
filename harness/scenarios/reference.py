"""Serve a scenario's export with the reference server, in any version profile.

The client-role runner needs this (a real client against the reference
server), and so does anyone who wants to run server-role scenarios against
the reference server::

    with serve_reference(scenario.export, profile("qemu-2.10"), workdir) as served:
        result = run_server_scenario(scenario, served.uri, tls_dir=served.tls_dir)

The export is built exactly as :class:`~harness.peers.export.ExportSpec`
describes it: the layer data (pattern ranges) is in place before the first
client connects, the dirty bitmaps are clean, and then ``writes_after_bitmaps``
are written through the server's own storage, so exactly their granules are
dirty.  A read-only export gets its data the same way before it goes
read-only.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.address import Address
from harness.client.uri import NbdUri
from harness.peers.export import DataRange, pattern
from harness.tls import make_test_pki
from reference_server.config import config_from_dict
from reference_server.features import FULL, ServerFeatures
from reference_server.runner import ServerThread
from reference_server.storage import Backend

from .model import ExportRequirements

EXTRA_EXPORT_SIZE = 1024 * 1024
"""Size of each of ``extra_exports`` (empty memory exports)."""


@dataclass
class ServedExport:
    """A running reference server serving one scenario's export."""

    thread: ServerThread
    export: ExportRequirements
    tls_dir: Path | None
    front: Address | None = None
    """Where clients reach it when something (a recording proxy) stands in front."""

    @property
    def address(self) -> Address:
        return self.front or self.thread.address

    def behind(self, front: Address) -> ServedExport:
        """The same export as reached through ``front`` (URIs name ``front``)."""
        return dataclasses.replace(self, front=front)

    def uri(self, export: str | None = None, *, tls: bool | None = None) -> str:
        """``nbd://127.0.0.1:PORT/NAME`` (``nbds://...?tls-certificates=DIR`` with TLS).

        ``tls`` None means: TLS when the export is served with TLS at all.
        """
        use_tls = (self.export.tls != "off") if tls is None else tls
        name = self.export.name if export is None else export
        address = self.address
        if address.kind == "unix":
            uri = NbdUri("nbds+unix" if use_tls else "nbd+unix", export=name,
                         socket=address.path,
                         tls_certificates=str(self.tls_dir) if use_tls and self.tls_dir else None,
                         tls_hostname="localhost" if use_tls else None)
        else:
            uri = NbdUri("nbds" if use_tls else "nbd", host=address.host, port=address.port,
                         export=name,
                         tls_certificates=str(self.tls_dir) if use_tls and self.tls_dir else None)
        return str(uri)

    @property
    def records(self) -> list[Any]:
        """The server's :class:`~reference_server.server.SessionRecord` list (finished ones)."""
        return self.thread.server.records

    def backend(self) -> Backend:
        """The storage of the scenario's export (to check what clients wrote)."""
        return self.thread.server.registry.backend(self.export.name)


def _write_raw(path: Path, size: int, ranges: tuple[DataRange, ...]) -> None:
    with open(path, "wb") as image:
        image.truncate(size)
        for data in ranges:
            os.pwrite(image.fileno(), pattern(data.offset, data.length, data.seed), data.offset)


def server_document(export: ExportRequirements, workdir: Path, tls_dir: Path | None,
                    listen: str = "tcp://127.0.0.1:0") -> dict[str, Any]:
    """The reference server configuration (the TOML shape) for ``export``.

    Layer files are written into ``workdir`` (base first: ``layer0.raw``...).
    """
    table: dict[str, Any] = {
        "name": export.name,
        "size": export.size,
        "read_only": export.read_only,
        "description": export.description,
        "bitmaps": [{"name": b.name, "granularity": b.granularity} for b in export.bitmaps],
        "block_size_required": export.block_size_required,
        "multi_conn": export.multi_conn,
        "init_state": export.init_state,
    }
    for key in ("min_block_size", "preferred_block_size", "max_payload_size"):
        if getattr(export, key) is not None:
            table[key] = getattr(export, key)
    if export.backend == "layers":
        files = []
        for index, ranges in enumerate(export.layers):
            path = workdir / f"layer{index}.raw"
            _write_raw(path, export.size, ranges)
            files.append(path.name)
        table["backend"] = "layers"
        table["layers"] = list(reversed(files))  # the server wants the top layer first
    else:
        table["backend"] = "memory"
    server: dict[str, Any] = {
        "listen": listen,
        "handshake": export.handshake,
        "list_exports": export.list_exports,
        "tls": export.tls,
    }
    if export.tls != "off":
        server["tls_certificates"] = str(tls_dir)
    exports = [table] + [{"name": name, "size": EXTRA_EXPORT_SIZE}
                         for name in export.extra_exports]
    return {"server": server, "export": exports}


def _fill(backend: Backend, export: ExportRequirements) -> None:
    """Initial data of a memory export, clean bitmaps, then the writes after the bitmaps."""
    read_only = backend.read_only
    backend.read_only = False  # the data goes in before any client sees the export
    try:
        if export.backend == "memory":
            for ranges in export.layers:
                for data in ranges:
                    backend.write(data.offset, pattern(data.offset, data.length, data.seed))
        for bitmap in backend.bitmaps.values():
            bitmap.clear()
        for data in export.writes_after_bitmaps:
            backend.write(data.offset, pattern(data.offset, data.length, data.seed))
    finally:
        backend.read_only = read_only


@contextlib.contextmanager
def serve_reference(
    export: ExportRequirements,
    features: ServerFeatures = FULL,
    workdir: Path | None = None,
    *,
    listen: str = "tcp://127.0.0.1:0",
    tls_dir: Path | None = None,
) -> Iterator[ServedExport]:
    """Run the reference server (profile ``features``) serving ``export``; stop it on exit.

    ``workdir`` holds layer files and, when the export uses TLS and ``tls_dir``
    (a :func:`~harness.tls.make_test_pki` directory) is not given, a fresh test
    PKI (``workdir/pki``); a temporary directory is used when it is None.
    """
    with contextlib.ExitStack() as stack:
        if workdir is None:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="nbdh-ref-")))
        workdir = Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        if export.tls != "off" and tls_dir is None:
            tls_dir = make_test_pki(workdir / "pki").directory
        document = server_document(export, workdir, tls_dir, listen)
        config = config_from_dict(document, base_dir=workdir)
        thread = ServerThread(config, features).start()
        stack.callback(thread.stop)
        _fill(thread.server.registry.backend(export.name), export)
        yield ServedExport(thread, export, tls_dir)


__all__ = ["EXTRA_EXPORT_SIZE", "ServedExport", "serve_reference", "server_document"]
