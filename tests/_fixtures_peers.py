"""Helpers for the real-peer tests: the export every server serves and the checks a
client's view of it must pass (data byte for byte, extents exactly)."""

from __future__ import annotations

from harness.peers import BitmapSpec, ClientPeer, DataRange, Endpoint, ExportSpec, Layer

KiB = 1024
MiB = 1024 * KiB

CHAIN = ExportSpec(
    size=1 * MiB,
    layers=(
        Layer((DataRange(0, 128 * KiB, 2), DataRange(512 * KiB, 64 * KiB, 2))),
        Layer((DataRange(64 * KiB, 128 * KiB, 3),)),
    ),
    bitmaps=(BitmapSpec("b0"),),
    writes_after_bitmaps=(DataRange(256 * KiB, 64 * KiB, 9),),
    description="two-layer chain",
)
"""A qcow2 backing chain: base data at [0,128K) and [512K,576K), top at [64K,192K), and a
bitmap b0 created before the last write at [256K,320K)."""

QEMU_CONTEXTS = ("qemu:allocation-depth", "qemu:dirty-bitmap:b0")

# Where the data is (and a hole) : reads of these ranges cover every layer and a hole.
READS = ((0, 256 * KiB), (320 * KiB, 32 * KiB), (512 * KiB, 64 * KiB), (1 * MiB - 4096, 4096))


def expected_map(export: ExportSpec, context: str) -> list[tuple[int, int, int]]:
    if context == "base:allocation":
        return export.base_allocation()
    if context == "qemu:allocation-depth":
        return export.allocation_depth()
    return export.dirty_extents(context.rsplit(":", 1)[1])


def check_reads(client: ClientPeer, endpoint: Endpoint, export: ExportSpec = CHAIN) -> None:
    """The client reads what the export holds, byte for byte."""
    for offset, length in READS:
        data = client.read(endpoint, offset, length)
        assert data == export.read(offset, length), f"{client.program} read {offset}+{length}"


def check_maps(client: ClientPeer, endpoint: Endpoint, contexts: tuple[str, ...],
               export: ExportSpec = CHAIN) -> None:
    """The client's extents of each context are exactly the expected ones."""
    for context in contexts:
        assert client.map(endpoint, context) == expected_map(export, context), (
            f"{client.program} map {context}"
        )
