"""Turn an :class:`ExportSpec` into files a server can serve.

- :func:`build_qcow2_chain`: a qcow2 backing chain made by the server's own
  suite's ``qemu-img`` and ``qemu-io`` (so an old qemu never meets an image
  feature it does not know), with persistent dirty bitmaps created by
  ``qemu-img bitmap --add`` *before* the last writes, which qemu-io then makes
  through qemu's block layer: exactly their granules are dirty.
- :func:`write_raw_flat`: the chain's content as one sparse raw file (nbdkit,
  nbd-server, qemu with ``image_format="raw"``).
- :func:`write_raw_layers`: one sparse raw file per layer (the reference
  server's ``layers`` backend).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from .export import DataRange, ExportSpec

if TYPE_CHECKING:
    from ._provider import Provider

IMAGE_TIMEOUT = 120.0


def write_raw_flat(spec: ExportSpec, path: Path) -> Path:
    """Write the export's whole content as a sparse raw file (holes where no layer has data)."""
    with open(path, "wb") as image:
        image.truncate(spec.size)
        for data in spec.flattened_ranges():
            os.pwrite(image.fileno(), data.data(), data.offset)
    return path


def write_raw_layers(spec: ExportSpec, directory: Path) -> list[Path]:
    """One sparse raw file per layer (the writes after the bitmaps in the top one); top first."""
    paths = []
    for index, layer in enumerate(spec.chain):
        path = directory / f"layer{index}.raw"
        with open(path, "wb") as image:
            image.truncate(spec.size)
            for data in layer.ranges:
                os.pwrite(image.fileno(), data.data(), data.offset)
        paths.append(path)
    return list(reversed(paths))


def _qemu_io_writes(ranges: tuple[DataRange, ...], directory: Path, stem: str) -> list[str]:
    """qemu-io arguments writing each range from a data file (``write -s``, qemu 5.0+)."""
    args: list[str] = []
    for number, data in enumerate(ranges):
        source = directory / f"{stem}.{number}.bin"
        source.write_bytes(data.data())
        args += ["-c", f"write -q -s {source.name} {data.offset} {data.length}"]
    return args


def build_qcow2_chain(
    spec: ExportSpec, directory: Path, provider: Provider, log_path: Path | None = None
) -> Path:
    """Build the export as a qcow2 chain in ``directory`` with ``provider``'s qemu tools.

    Returns the top image. Backing files are named relative to the top image, so the
    chain can be opened from any path it is bound at.
    """
    layers = spec.layers or ()
    count = max(len(layers), 1)
    previous: str | None = None
    cleanup: list[Path] = []

    def run(argv: list[str]) -> None:
        provider.run(argv, timeout=IMAGE_TIMEOUT, binds=[directory], cwd=directory,
                     log_path=log_path)

    for index in range(count):
        name = f"layer{index}.qcow2"
        create = ["qemu-img", "create", "-q", "-f", "qcow2",
                  "-o", f"cluster_size={spec.cluster_size}"]
        if previous is not None:
            create += ["-b", previous, "-F", "qcow2"]
        run([*create, name, str(spec.size)])
        ranges = layers[index].ranges if index < len(layers) else ()
        if ranges:
            writes = _qemu_io_writes(ranges, directory, f"layer{index}")
            cleanup += [directory / f"layer{index}.{n}.bin" for n in range(len(ranges))]
            run(["qemu-io", "-f", "qcow2", *writes, name])
        previous = name
    assert previous is not None
    for bitmap in spec.bitmaps:
        run(["qemu-img", "bitmap", "--add", "-g", str(bitmap.granularity), previous, bitmap.name])
    if spec.writes_after_bitmaps:
        writes = _qemu_io_writes(spec.writes_after_bitmaps, directory, "dirty")
        cleanup += [directory / f"dirty.{n}.bin" for n in range(len(spec.writes_after_bitmaps))]
        run(["qemu-io", "-f", "qcow2", *writes, previous])
    for path in cleanup:
        path.unlink(missing_ok=True)
    return directory / previous


__all__ = ["build_qcow2_chain", "write_raw_flat", "write_raw_layers"]
