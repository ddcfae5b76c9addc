"""What qemu's servers share: TLS objects, images, the probe export (qemu's clients are
driven by ``matrix/client-actions.toml``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from ._base import KiB, ServerPeer
from ._images import build_qcow2_chain, write_raw_flat
from ._observe import PROBE_BITMAP
from ._provider import Provider
from .export import BitmapSpec, DataRange, ExportSpec, ExportSpecError, Layer
from .qemu_build.data import series_of

TLS_ID = "tls0"


def probe_chain() -> ExportSpec:
    """What qemu's servers are probed with: a qcow2 chain with a bitmap, as ``matrix/peers``
    describes qemu (a backing chain for allocation depth, a write after the bitmap)."""
    return ExportSpec(
        size=1024 * KiB,
        layers=(Layer((DataRange(0, 64 * KiB, 2),)), Layer((DataRange(128 * KiB, 64 * KiB),))),
        bitmaps=(BitmapSpec(PROBE_BITMAP),),
        writes_after_bitmaps=(DataRange(256 * KiB, 64 * KiB, 3),),
    )


def build_image(server: ServerPeer, export: ExportSpec, workdir: Path, *,
                live_bitmaps: bool = False) -> Path:
    """Materialize the export in ``workdir`` with ``server``'s suite's qemu tools: a qcow2
    chain, or a flat raw file (which has nowhere to keep bitmaps, persistent or
    ``live_bitmaps`` added once the server runs)."""
    if export.image_format == "qcow2":
        return build_qcow2_chain(export, workdir, image_tools(server.provider),
                                 server.log_path(workdir, "image"))
    if export.bitmaps or live_bitmaps:
        raise ExportSpecError(
            "dirty bitmaps need image_format qcow2 (a raw image has nowhere to keep them)"
        )
    return write_raw_flat(export, workdir / "export.raw")


def qemu_series(provider: Provider) -> tuple[int, int]:
    """The qemu release (major, minor) ``provider`` carries; a newest one when it is unknown."""
    version = provider.data_version("qemu")
    try:
        return series_of(version) if version else (99, 0)
    except ValueError:
        return (99, 0)


WRITE_FROM_FILE_SINCE = (5, 0)
"""qemu-io's ``write -s FILE`` (how images get their pattern data) came in qemu 5.0."""


def image_tools(provider: Provider) -> Provider:
    """Whose qemu-img and qemu-io make a server's images: its own suite's, except for a
    release built from source before 5.0 (no ``qemu-io write -s``), whose images the
    packaged qemu of the suite it runs in makes (qcow2 v3 images every release reads)."""
    from .qemu_build.provider import BuildProvider

    if isinstance(provider, BuildProvider) and qemu_series(provider) < WRITE_FROM_FILE_SINCE:
        return provider.runner
    return provider


def escape_option(value: str) -> str:
    """A value inside qemu's comma-separated options: commas are doubled."""
    return value.replace(",", ",,")


def tls_object(directory: Path, endpoint: Literal["server", "client"]) -> list[str]:
    """``--object tls-creds-x509,...``: the PKI of :func:`harness.tls.make_test_pki`.

    qemu reads ``ca-cert.pem`` and ``server-*.pem`` or ``client-*.pem`` from the
    directory; a server verifies the client's certificate (``verify-peer`` defaults on).
    """
    return [
        "--object",
        f"tls-creds-x509,id={TLS_ID},dir={escape_option(os.fspath(directory))},"
        f"endpoint={endpoint}",
    ]


__all__ = ["TLS_ID", "build_image", "escape_option", "image_tools", "probe_chain",
           "qemu_series", "tls_object"]
