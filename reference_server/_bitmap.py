"""Dirty bitmaps: the data behind ``qemu:dirty-bitmap:NAME`` metadata contexts.

qemu semantics: a bitmap records which granules were written (by a write,
trim or write-zeroes) since it was created or last cleared.  Ours live in memory
only, so every bitmap starts clean when the server starts.
"""

from __future__ import annotations

import threading

from harness.protocol.constants import DirtyFlag

from ._extents import RangeMap, merge_runs
from ._types import Extent

DEFAULT_GRANULARITY = 64 * 1024


class DirtyBitmap:
    """Which granules of an export were written since creation (or :meth:`clear`).

    Granules are ``granularity`` bytes (a power of two) aligned to offset 0; the
    last one is cut at the export size.  Extents are exact granule multiples.
    """

    def __init__(self, name: str, size: int, granularity: int = DEFAULT_GRANULARITY) -> None:
        if not name:
            raise ValueError("a dirty bitmap needs a non-empty name")
        if granularity <= 0 or granularity & (granularity - 1):
            raise ValueError(f"bitmap granularity must be a power of two, not {granularity}")
        if size < 0:
            raise ValueError(f"size must be >= 0, not {size}")
        self.name = name
        self.size = size
        self.granularity = granularity
        self._dirty: RangeMap[int] = RangeMap(size, 0)
        self._lock = threading.Lock()

    def _check(self, offset: int, length: int) -> None:
        if offset < 0 or length < 0 or offset + length > self.size:
            raise ValueError(
                f"range {offset}+{length} is outside bitmap {self.name!r} of size {self.size}"
            )

    def mark(self, offset: int, length: int) -> None:
        """Mark dirty every granule that ``[offset, offset + length)`` touches."""
        self._check(offset, length)
        if length == 0:
            return
        start = offset - offset % self.granularity
        end = -(-(offset + length) // self.granularity) * self.granularity
        with self._lock:
            self._dirty.set(start, min(end, self.size), int(DirtyFlag.DIRTY))

    def extents(self, offset: int, length: int) -> list[Extent]:
        """Extents (flags ``DirtyFlag.DIRTY`` or 0) covering exactly the query range."""
        self._check(offset, length)
        with self._lock:
            runs = merge_runs(self._dirty.runs(offset, offset + length))
        return [Extent(end - start, flags) for start, end, flags in runs]

    def is_dirty(self, offset: int, length: int) -> bool:
        """True when some granule touching the range is dirty."""
        self._check(offset, length)
        with self._lock:
            return self._dirty.contains_value(int(DirtyFlag.DIRTY), offset, offset + length)

    def clear(self) -> None:
        """Forget every change: the whole bitmap is clean again."""
        with self._lock:
            self._dirty.clear()

    def __repr__(self) -> str:
        return f"DirtyBitmap({self.name!r}, size={self.size}, granularity={self.granularity})"
