"""What a server peer serves: :class:`ExportSpec`, and what a client must then see.

One description feeds every server driver: qemu-nbd and qemu-storage-daemon
build a qcow2 backing chain from it with their own suite's qemu-img and
qemu-io, nbdkit and nbd-server get the flattened content as a sparse raw file,
the reference server gets raw layer files. The same description answers what
a correct client reads back (:meth:`ExportSpec.read`) and which extents each
metadata context must report (:meth:`ExportSpec.base_allocation`,
:meth:`ExportSpec.allocation_depth`, :meth:`ExportSpec.dirty_extents`).

Data is a pattern derived from the absolute offset and a seed
(:func:`pattern`), so data read from the wrong place never passes for right.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from harness.errors import UserError
from harness.protocol.extents import merge_extents

ImageFormat = Literal["raw", "qcow2"]
IMAGE_FORMATS: tuple[ImageFormat, ...] = ("raw", "qcow2")

DEFAULT_CLUSTER_SIZE = 64 * 1024
"""qcow2's default cluster size: allocation is tracked per cluster, so data ranges align to it."""
DEFAULT_GRANULARITY = 64 * 1024
"""qemu's default dirty bitmap granularity."""

# base:allocation flags of allocated data and of a hole that reads as zeroes
# (NBD_STATE_HOLE | NBD_STATE_ZERO); a dirty granule is 1 (NBD_STATE_DIRTY).
DATA_FLAGS = 0
HOLE_FLAGS = 3
DIRTY = 1
CLEAN = 0


class ExportSpecError(UserError, ValueError):
    """An export description that cannot be built; the message says why."""


def pattern(offset: int, length: int, seed: int = 1) -> bytes:
    """Bytes that depend on their absolute offset and ``seed``: misplaced data shows.

    Every aligned 8-byte word is ``(word_index * 2654435761 + seed) mod 2**64``,
    little-endian; it is never all zero for the sizes we use, so a range of it is
    never mistaken for a hole.
    """
    out = bytearray()
    word = offset // 8
    while len(out) < (offset % 8) + length:
        out += ((word * 2654435761 + seed) & 0xFFFFFFFFFFFFFFFF).to_bytes(8, "little")
        word += 1
    return bytes(out[offset % 8 : offset % 8 + length])


@dataclass(frozen=True)
class DataRange:
    """``length`` bytes of :func:`pattern` data at ``offset`` (seeded by ``seed``)."""

    offset: int
    length: int
    seed: int = 1

    @property
    def end(self) -> int:
        return self.offset + self.length

    def data(self) -> bytes:
        return pattern(self.offset, self.length, self.seed)


@dataclass(frozen=True)
class Layer:
    """One image of a backing chain and the data written into it."""

    ranges: tuple[DataRange, ...] = ()


@dataclass(frozen=True)
class BitmapSpec:
    """A persistent dirty bitmap of the top layer, ``qemu:dirty-bitmap:NAME`` on the wire."""

    name: str
    granularity: int = DEFAULT_GRANULARITY


Extents = list[tuple[int, int, int]]
"""(offset, length, flags) covering a whole export, adjacent equal flags merged."""


@dataclass(frozen=True)
class ExportSpec:
    """An export to serve: size, image format, backing chain, bitmaps, access, TLS, and
    the per-export properties a server advertises for it.

    This is the one export model: every server driver serves it, and a scenario's
    :class:`~harness.scenarios.ExportRequirements` holds one.

    ``layers`` run from the base image to the top one. ``bitmaps`` are created in
    the top layer after the layers got their data; ``writes_after_bitmaps`` are
    then written into the top layer, so exactly their granules are dirty.
    ``tls_dir`` is a directory from :func:`harness.tls.make_test_pki`: the server
    then requires TLS (FORCEDTLS) with that PKI.

    Block sizes are None when the server chooses them; ``multi_conn`` marks the
    export shareable between connections (NBD_FLAG_CAN_MULTI_CONN where the server
    can); ``init_state`` enables the experimental NBD_INFO_INIT_STATE.  Not every
    program can be configured for all of these: what a driver cannot serve,
    :func:`harness.matrix._setup.unservable` says.
    """

    size: int
    name: str = "disk"
    image_format: ImageFormat = "qcow2"
    layers: tuple[Layer, ...] = ()
    bitmaps: tuple[BitmapSpec, ...] = ()
    writes_after_bitmaps: tuple[DataRange, ...] = ()
    read_only: bool = False
    tls_dir: Path | None = None
    description: str = ""
    cluster_size: int = DEFAULT_CLUSTER_SIZE
    min_block_size: int | None = None
    preferred_block_size: int | None = None
    max_payload_size: int | None = None
    block_size_required: bool = False
    multi_conn: bool = True
    init_state: bool = False

    def __post_init__(self) -> None:
        if self.size <= 0:
            raise ExportSpecError(f"export size must be positive, not {self.size}")
        if self.image_format not in IMAGE_FORMATS:
            raise ExportSpecError(
                f"image format {self.image_format!r} is not one of {', '.join(IMAGE_FORMATS)}"
            )
        if self.cluster_size <= 0 or self.cluster_size & (self.cluster_size - 1):
            raise ExportSpecError(f"cluster size must be a power of two, not {self.cluster_size}")
        for data in self.all_ranges():
            if data.offset < 0 or data.length <= 0 or data.end > self.size:
                raise ExportSpecError(
                    f"data range {data.offset}+{data.length} is outside the export "
                    f"(size {self.size})"
                )
            # Allocation is per cluster (qcow2) or per filesystem block (sparse raw files):
            # aligned ranges make the expected extents exact for every server.
            if data.offset % self.cluster_size or data.length % self.cluster_size:
                raise ExportSpecError(
                    f"data range {data.offset}+{data.length} is not aligned to the cluster "
                    f"size {self.cluster_size}"
                )
        names = [bitmap.name for bitmap in self.bitmaps]
        if len(set(names)) != len(names):
            raise ExportSpecError(f"bitmap names must be unique, not {names}")
        for bitmap in self.bitmaps:
            granularity = bitmap.granularity
            if not bitmap.name or granularity < 512 or granularity & (granularity - 1):
                raise ExportSpecError(
                    f"bitmap {bitmap.name!r}: needs a name and a power-of-two granularity "
                    f">= 512, not {granularity}"
                )
        if self.writes_after_bitmaps and not self.bitmaps:
            raise ExportSpecError("writes_after_bitmaps needs at least one bitmap")

    # --- shape ---------------------------------------------------------------------------

    @property
    def block_sizes_set(self) -> bool:
        """True when any block size constraint is given (else the server chooses them)."""
        return any(
            size is not None
            for size in (self.min_block_size, self.preferred_block_size, self.max_payload_size)
        )

    @property
    def chain(self) -> tuple[Layer, ...]:
        """The layers base first, the writes after the bitmaps added to the top one."""
        layers = self.layers or (Layer(),)
        if not self.writes_after_bitmaps:
            return layers
        top = Layer(layers[-1].ranges + self.writes_after_bitmaps)
        return (*layers[:-1], top)

    @property
    def depth(self) -> int:
        """How many images the chain has (at least one)."""
        return max(len(self.layers), 1)

    def all_ranges(self) -> Iterable[DataRange]:
        for layer in self.layers:
            yield from layer.ranges
        yield from self.writes_after_bitmaps

    # --- what a correct client sees ------------------------------------------------------------

    def content(self) -> bytes:
        """The whole export as a client reads it: each layer over the ones below."""
        image = bytearray(self.size)
        for layer in self.chain:
            for data in layer.ranges:
                image[data.offset : data.end] = data.data()
        return bytes(image)

    def read(self, offset: int, length: int) -> bytes:
        """The ``length`` bytes at ``offset`` a correct server returns."""
        if offset < 0 or length < 0 or offset + length > self.size:
            raise ValueError(f"read {offset}+{length} is outside the export (size {self.size})")
        return self.content()[offset : offset + length]

    def allocation_depth(self) -> Extents:
        """``qemu:allocation-depth``: 1 where the top layer has data, 2 below it, 0 nowhere."""
        chain = self.chain
        owners = [0] * (self.size // self.cluster_size + 1)
        unit = self.cluster_size
        for depth, layer in enumerate(reversed(chain), start=1):
            for data in layer.ranges:
                for cluster in range(data.offset // unit, data.end // unit):
                    if owners[cluster] == 0:
                        owners[cluster] = depth
        return _runs(owners, self.cluster_size, self.size)

    def base_allocation(self) -> Extents:
        """``base:allocation``: data (0) where any layer has data, else hole+zero (3)."""
        return merge_extents(
            [
                (offset, length, HOLE_FLAGS if depth == 0 else DATA_FLAGS)
                for offset, length, depth in self.allocation_depth()
            ]
        )

    def dirty_extents(self, bitmap: str) -> Extents:
        """``qemu:dirty-bitmap:NAME``: the granules the writes after the bitmaps touched."""
        spec = next((b for b in self.bitmaps if b.name == bitmap), None)
        if spec is None:
            raise KeyError(f"no bitmap {bitmap!r} in this export")
        granule = spec.granularity
        dirty = [0] * (-(-self.size // granule))
        for data in self.writes_after_bitmaps:
            for index in range(data.offset // granule, -(-data.end // granule)):
                dirty[index] = DIRTY
        return _runs(dirty, granule, self.size)

    def flattened_ranges(self) -> list[DataRange]:
        """Every range of the chain, top layers last (write them in this order)."""
        return [data for layer in self.chain for data in layer.ranges]


def _runs(values: Sequence[int], unit: int, size: int) -> Extents:
    extents: Extents = []
    for index, value in enumerate(values):
        start = index * unit
        if start >= size:
            break
        length = min(unit, size - start)
        if extents and extents[-1][2] == value:
            offset, previous, _ = extents[-1]
            extents[-1] = (offset, previous + length, value)
        else:
            extents.append((start, length, value))
    return extents


__all__ = [
    "CLEAN",
    "DATA_FLAGS",
    "DEFAULT_CLUSTER_SIZE",
    "DEFAULT_GRANULARITY",
    "DIRTY",
    "HOLE_FLAGS",
    "IMAGE_FORMATS",
    "BitmapSpec",
    "DataRange",
    "ExportSpec",
    "ExportSpecError",
    "Extents",
    "ImageFormat",
    "Layer",
    "merge_extents",
    "pattern",
]
