"""An interval map over ``[0, size)``: one value per byte, stored as runs.

Backends keep their per-byte state (hole / allocated zero / data, known-zero
ranges, dirty granules) in a :class:`RangeMap`.  It is exact to the byte,
costs memory per run rather than per byte, so a 64 GiB export with a few writes
holds a handful of entries, and finds a run with :mod:`bisect`.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable, Iterator
from typing import Generic, TypeVar

V = TypeVar("V")


class RangeMap(Generic[V]):
    """Values over ``[0, size)`` as runs; adjacent runs always hold different values.

    Run ``i`` covers ``[starts[i], starts[i + 1])`` (the last one ends at
    ``size``) and holds ``values[i]``.
    """

    def __init__(self, size: int, default: V) -> None:
        if size < 0:
            raise ValueError(f"size must be >= 0, not {size}")
        self.size = size
        self._default = default
        self._starts: list[int] = [0]
        self._values: list[V] = [default]

    def clear(self) -> None:
        """Set every byte back to the default value."""
        self._starts = [0]
        self._values = [self._default]

    def __len__(self) -> int:
        """Number of runs."""
        return len(self._starts)

    def _split(self, pos: int) -> int:
        """Make a run start at ``pos`` (0 <= pos < size) and return its index."""
        index = bisect_right(self._starts, pos) - 1
        if self._starts[index] == pos:
            return index
        self._starts.insert(index + 1, pos)
        self._values.insert(index + 1, self._values[index])
        return index + 1

    def set(self, start: int, end: int, value: V) -> None:
        """Give every byte of ``[start, end)`` the value ``value``."""
        start = max(start, 0)
        end = min(end, self.size)
        if start >= end:
            return
        first = self._split(start)
        last = self._split(end) if end < self.size else len(self._starts)
        self._starts[first:last] = [start]
        self._values[first:last] = [value]
        # Keep runs maximal: merge with equal neighbours (right first, so
        # ``first`` stays valid).
        if first + 1 < len(self._starts) and self._values[first + 1] == value:
            del self._starts[first + 1]
            del self._values[first + 1]
        if first > 0 and self._values[first - 1] == value:
            del self._starts[first]
            del self._values[first]

    def runs(self, start: int = 0, end: int | None = None) -> Iterator[tuple[int, int, V]]:
        """Yield ``(run_start, run_end, value)`` covering ``[start, end)``, clipped to it."""
        end = self.size if end is None else min(end, self.size)
        start = max(start, 0)
        if start >= end:
            return
        index = bisect_right(self._starts, start) - 1
        while index < len(self._starts) and self._starts[index] < end:
            run_end = self._starts[index + 1] if index + 1 < len(self._starts) else self.size
            yield max(start, self._starts[index]), min(end, run_end), self._values[index]
            index += 1

    def value_at(self, pos: int) -> V:
        """The value of the byte at ``pos``."""
        if not 0 <= pos < self.size:
            raise IndexError(pos)
        return self._values[bisect_right(self._starts, pos) - 1]

    def contains_value(self, value: V, start: int = 0, end: int | None = None) -> bool:
        """True when some byte of ``[start, end)`` holds ``value``."""
        return any(run_value == value for _, _, run_value in self.runs(start, end))


def merge_runs(runs: Iterable[tuple[int, int, V]]) -> list[tuple[int, int, V]]:
    """Join contiguous ``(start, end, value)`` runs that hold equal values; drop empty ones."""
    merged: list[tuple[int, int, V]] = []
    for start, end, value in runs:
        if start >= end:
            continue
        if merged and merged[-1][1] == start and merged[-1][2] == value:
            merged[-1] = (merged[-1][0], end, value)
        else:
            merged.append((start, end, value))
    return merged


def overlay_runs(
    base: Iterable[tuple[int, int, V]], top: Iterable[tuple[int, int, V | None]]
) -> list[tuple[int, int, V]]:
    """Replace ``base`` values by ``top`` values where ``top`` is not None.

    Both inputs are sorted and cover the same range without gaps.
    """
    top_runs = [run for run in top if run[2] is not None]
    result: list[tuple[int, int, V]] = []
    index = 0
    for start, end, value in base:
        pos = start
        while pos < end:
            while index < len(top_runs) and top_runs[index][1] <= pos:
                index += 1
            if index < len(top_runs) and top_runs[index][0] <= pos:
                top_end = min(end, top_runs[index][1])
                override = top_runs[index][2]
                assert override is not None
                result.append((pos, top_end, override))
                pos = top_end
            else:
                next_start = top_runs[index][0] if index < len(top_runs) else end
                stop = min(end, next_start)
                result.append((pos, stop, value))
                pos = stop
    return merge_runs(result)
