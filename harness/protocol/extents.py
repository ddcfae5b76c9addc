"""Block-status extents as the harness compares them: adjacent extents of equal status joined.

Servers split a range into extents as they like (qemu per cluster, nbdkit per
plugin call, a client's map per request), and the spec lets them: two answers
that agree on every byte's status are the same answer once adjacent extents of
equal status are merged.  Every comparison of extents (scenario expectations,
the peers' maps, a replay's recorded and live replies) merges with this one
function.
"""

from __future__ import annotations

from collections.abc import Iterable

Extent = tuple[int, int, int]
"""(offset, length, flags): an extent placed in the export."""


def merge_extents(extents: Iterable[Extent]) -> list[Extent]:
    """Join each run of consecutive extents with equal flags into its first one."""
    merged: list[Extent] = []
    for offset, length, flags in extents:
        if merged and merged[-1][2] == flags:
            start, previous, _ = merged[-1]
            merged[-1] = (start, previous + length, flags)
        else:
            merged.append((offset, length, flags))
    return merged


def merge_descriptors(descriptors: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """:func:`merge_extents` for (length, flags) pairs, as a block-status reply lists them."""
    return [(length, flags)
            for _, length, flags in merge_extents((0, length, flags)
                                                  for length, flags in descriptors)]


__all__ = ["Extent", "merge_descriptors", "merge_extents"]
