"""qemu-nbd: qemu's NBD server for one image (qcow2 backing chains, bitmaps, allocation depth)."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ._actions import ActionOutput, output_reader
from ._base import RunningServer, ServerPeer, Transport
from ._qemu import build_image, probe_chain, qemu_series, tls_object
from .export import ExportSpec
from .qemu_build.data import series_of

if TYPE_CHECKING:
    from harness.scenarios import ExportRequirements


@output_reader("qemu-nbd-list")
def read_list(stdout: str, out: Path) -> ActionOutput:
    """``qemu-nbd --list`` (qemu's NBD client): the export names it printed."""
    return ActionOutput(exports=re.findall(r"^\s*export: '(.*)'\s*$", stdout, re.MULTILINE))


# The releases that brought qemu-nbd's switches for bitmaps and allocation depth: --bitmap is
# in 4.1.1's qemu-nbd.c long options and not in 3.1.0's (qemu's changelog: 4.0), and
# --allocation-depth in 6.2.0's and not 4.1.1's (docs/interop/nbd.rst: 5.2). Before, qemu's
# server could export a bitmap only through QMP (nbd-server-add, 3.0), not qemu-nbd. 4.1.1
# keeps one bitmap (the last -B: "bitmap = optarg"); 6.2.0 a list, as 5.2 (peers compare).
BITMAP_SINCE = (4, 0)
BITMAPS_SINCE = (5, 2)
ALLOCATION_DEPTH_SINCE = (5, 2)


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
    version_word = "qemu-nbd"
    represents_family = True
    options_type = QemuNbdOptions

    @classmethod
    def options_for(cls, export: ExportRequirements) -> QemuNbdOptions | None:
        # qemu-nbd advertises CAN_MULTI_CONN only when it accepts several clients at once.
        return QemuNbdOptions(shared=8) if export.spec.multi_conn else None

    @classmethod
    def unservable(cls, export: ExportRequirements, version: str | None = None) -> str | None:
        reason = super().unservable(export, version)
        if reason is None and len(export.spec.bitmaps) > 1 and version and \
                series_of(version) < BITMAPS_SINCE:
            return "qemu-nbd exports several dirty bitmaps from 5.2 (4.x keeps the last -B)"
        return reason

    @classmethod
    def probe_export(cls) -> tuple[ExportSpec, QemuNbdOptions]:
        # A shareable export (--shared > 1): the data's claims are for those.
        return probe_chain(), QemuNbdOptions(shared=2)

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
        series = qemu_series(self.provider)
        if options.allocation_depth and series >= ALLOCATION_DEPTH_SINCE:
            argv.append("-A")
        if options.bitmaps and series >= BITMAP_SINCE:
            for bitmap in export.bitmaps:
                argv += ["-B", bitmap.name]
        if export.tls_dir is not None:
            argv += [*tls_object(export.tls_dir, "server"), "--tls-creds", "tls0"]
        return [*argv, *options.extra_args]

    def serve(self, export: ExportSpec, workdir: Path, options: QemuNbdOptions, *,
              transport: Transport, ready_timeout: float) -> RunningServer:
        image = build_image(self, export, workdir)
        argv = self.argv(export, options)
        return self.launch(
            export,
            workdir,
            transport=transport,
            tcp_argv=lambda port: [*argv, "-b", "127.0.0.1", "-p", str(port), image.name],
            unix_argv=lambda path: [*argv, "-k", os.fspath(path), image.name],
            ready_timeout=ready_timeout,
        )


__all__ = ["QemuNbd", "QemuNbdOptions", "read_list"]
