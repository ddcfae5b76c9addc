"""Serve a scenario's export with the reference server, in any version profile.

The client-role runner needs this (a real client against the reference
server), and so does anyone who wants to run server-role scenarios against
the reference server::

    with serve_reference(scenario.export, profile("qemu-2.10"), workdir) as served:
        result = run_server_scenario(scenario, served.uri, tls_dir=served.tls_dir)

The export is built exactly as :class:`~harness.peers.export.ExportSpec`
describes it, by :func:`harness.peers.reference.host_reference` (the one way
the reference server is hosted): the layer data (pattern ranges) is in place
before the first client connects, and the dirty bitmaps are clean but for the
granules ``writes_after_bitmaps`` touched.  A read-only export gets its data
the same way before it goes read-only.
"""

from __future__ import annotations

import contextlib
import dataclasses
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.address import Address
from harness.client.uri import NbdUri
from harness.peers.reference import EXTRA_EXPORT_SIZE, host_reference
from harness.scenarios.model import ExportRequirements
from harness.tls import make_test_pki
from reference_server.features import FULL, ServerFeatures
from reference_server.runner import ServerThread
from reference_server.storage import Backend


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
        name = self.export.spec.name if export is None else export
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
        return self.thread.server.registry.backend(self.export.spec.name)


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
    PKI (``workdir/pki``); a temporary directory is used when it is None.  The
    server is hosted by :func:`harness.peers.reference.host_reference`, as the
    ``reference-server`` peer is.
    """
    with contextlib.ExitStack() as stack:
        if workdir is None:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="nbdh-ref-")))
        workdir = Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        if export.tls != "off" and tls_dir is None:
            tls_dir = make_test_pki(workdir / "pki").directory
        thread = host_reference(
            export.export_spec(tls_dir), workdir, features,
            storage="memory" if export.backend == "memory" else "files", listen=listen,
            tls=export.tls, handshake=export.handshake, list_exports=export.list_exports,
            extra_exports=export.extra_exports)
        stack.callback(thread.stop)
        yield ServedExport(thread, export, tls_dir)


__all__ = ["EXTRA_EXPORT_SIZE", "ServedExport", "serve_reference"]
