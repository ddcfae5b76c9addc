"""qemu-nbd: qemu's NBD server for one image (qcow2 backing chains, bitmaps, allocation depth)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ._base import READY_TIMEOUT, RunningServer, ServerPeer, Transport, version_in
from ._images import build_qcow2_chain, write_raw_flat
from ._qemu import tls_object
from .export import ExportSpec, ExportSpecError


@dataclass(frozen=True)
class QemuNbdOptions:
    """qemu-nbd switches beyond what the export says.

    ``allocation_depth`` exports ``qemu:allocation-depth`` (``-A``, qemu 5.2+);
    ``bitmaps`` exports every bitmap of the export (``-B NAME``); ``persistent``
    keeps serving after the first client (``-t``); ``shared`` is ``-e N``.
    """

    allocation_depth: bool = True
    bitmaps: bool = True
    persistent: bool = True
    shared: int | None = None
    extra_args: tuple[str, ...] = ()


class QemuNbd(ServerPeer):
    """``qemu-nbd`` serving a qcow2 chain (or a raw file) built from the export."""

    program = "qemu-nbd"
    executable = "qemu-nbd"

    def parse_version(self, output: str) -> str:
        return version_in(output, "qemu-nbd")

    def build_image(self, export: ExportSpec, workdir: Path) -> Path:
        """Materialize the export in ``workdir`` with this suite's qemu tools."""
        if export.image_format == "qcow2":
            return build_qcow2_chain(export, workdir, self.provider,
                                     self.log_path(workdir, "image"))
        if export.bitmaps:
            raise ExportSpecError(
                "dirty bitmaps need image_format qcow2 (a raw image has nowhere to keep them)"
            )
        return write_raw_flat(export, workdir / "export.raw")

    def argv(self, export: ExportSpec, options: QemuNbdOptions) -> list[str]:
        """qemu-nbd's arguments, without where it listens."""
        argv = ["qemu-nbd", "-f", export.image_format, "-x", export.name]
        if export.description:
            argv += ["-D", export.description]
        if export.read_only:
            argv.append("-r")
        if options.persistent:
            argv.append("-t")
        if options.shared is not None:
            argv += ["-e", str(options.shared)]
        if options.allocation_depth:
            argv.append("-A")
        if options.bitmaps:
            for bitmap in export.bitmaps:
                argv += ["-B", bitmap.name]
        if export.tls_dir is not None:
            argv += [*tls_object(export.tls_dir, "server"), "--tls-creds", "tls0"]
        return [*argv, *options.extra_args]

    def start(
        self,
        export: ExportSpec,
        workdir: Path,
        *,
        transport: Transport = "tcp",
        options: object | None = None,
        ready_timeout: float = READY_TIMEOUT,
    ) -> RunningServer:
        opts = options if isinstance(options, QemuNbdOptions) else QemuNbdOptions()
        workdir = Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        image = self.build_image(export, workdir)
        argv = self.argv(export, opts)
        return self.launch(
            export,
            workdir,
            transport=transport,
            tcp_argv=lambda port: [*argv, "-b", "127.0.0.1", "-p", str(port), image.name],
            unix_argv=lambda path: [*argv, "-k", os.fspath(path), image.name],
            ready_timeout=ready_timeout,
        )

__all__ = ["QemuNbd", "QemuNbdOptions"]
