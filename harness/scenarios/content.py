"""What the export must contain: its initial data plus everything a scenario did to it.

The model never holds the whole image: it keeps the export's data ranges and
an ordered list of the scenario's writes, zeroes and trims, and computes any
range on demand.  A trimmed range is *unknown* ("a client MUST NOT make any
assumptions about the contents of the export affected by this command"):
comparisons skip it until it is written again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from harness.peers.export import DataRange, ExportSpec, pattern

OpKind = Literal["data", "zero", "unknown"]


@dataclass(frozen=True)
class _Op:
    offset: int
    length: int
    kind: OpKind
    seed: int = 0

    @property
    def end(self) -> int:
        return self.offset + self.length


@dataclass
class ContentModel:
    """The expected contents of one export over a scenario run."""

    size: int
    base: list[DataRange] = field(default_factory=list)
    ops: list[_Op] = field(default_factory=list)

    @classmethod
    def of(cls, spec: ExportSpec) -> ContentModel:
        """The model of an export as the scenario's ``export:`` describes it."""
        return cls(spec.size, spec.flattened_ranges())

    # --- changes ---------------------------------------------------------------------

    def write(self, offset: int, length: int, seed: int) -> None:
        self.ops.append(_Op(offset, length, "data", seed))

    def zero(self, offset: int, length: int) -> None:
        self.ops.append(_Op(offset, length, "zero"))

    def forget(self, offset: int, length: int) -> None:
        """The range's contents are unspecified from now on (a trim)."""
        self.ops.append(_Op(offset, length, "unknown"))

    # --- questions ---------------------------------------------------------------------

    def expected(self, offset: int, length: int) -> tuple[bytes, list[tuple[int, int]]]:
        """The bytes of ``[offset, offset+length)`` and the sub-ranges that are unknown."""
        end = min(offset + length, self.size)
        out = bytearray(max(end - offset, 0))
        unknown = bytearray(len(out))
        for data in self.base:
            lo, hi = max(offset, data.offset), min(end, data.end)
            if lo < hi:
                out[lo - offset : hi - offset] = pattern(lo, hi - lo, data.seed)
        for op in self.ops:
            lo, hi = max(offset, op.offset), min(end, op.end)
            if lo >= hi:
                continue
            window = slice(lo - offset, hi - offset)
            if op.kind == "data":
                out[window] = pattern(lo, hi - lo, op.seed)
                unknown[window] = bytes(hi - lo)
            elif op.kind == "zero":
                out[window] = bytes(hi - lo)
                unknown[window] = bytes(hi - lo)
            else:
                unknown[window] = b"\x01" * (hi - lo)
        return bytes(out), _runs(unknown, offset)

    def written(self) -> list[tuple[int, int]]:
        """Ranges the scenario wrote or zeroed that still have known contents, merged."""
        marks: list[tuple[int, int]] = []
        for op in self.ops:
            if op.kind in ("data", "zero"):
                marks.append((op.offset, min(op.end, self.size)))
        marks.sort()
        merged: list[tuple[int, int]] = []
        for start, end in marks:
            if merged and start <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(merged[-1][1], end))
            else:
                merged.append((start, end))
        return [(start, end - start) for start, end in merged if end > start]

    def known_zero(self, offset: int, length: int) -> bool:
        """True unless some byte of the range is known to be non-zero (unknown bytes pass)."""
        data, unknown = self.expected(offset, length)
        if not unknown:
            return not any(data)
        masked = bytearray(data)
        for start, size in unknown:
            masked[start - offset : start - offset + size] = bytes(size)
        return not any(masked)


VERIFY_PIECE = 8 * 1024 * 1024
"""Read-back of a written range longer than twice this checks its head and its tail."""


def verify_pieces(written: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The parts of the written ranges a read-back checks: all of a short range, the
    first and last :data:`VERIFY_PIECE` bytes of a long one (a 5 GiB zeroing is not
    read back whole)."""
    pieces = []
    for offset, length in written:
        if length <= 2 * VERIFY_PIECE:
            pieces.append((offset, length))
        else:
            pieces.append((offset, VERIFY_PIECE))
            pieces.append((offset + length - VERIFY_PIECE, VERIFY_PIECE))
    return pieces


def _runs(mask: bytearray, offset: int) -> list[tuple[int, int]]:
    """``(offset, length)`` of every run of 1 bytes in ``mask``."""
    runs: list[tuple[int, int]] = []
    position = 0
    while True:
        start = mask.find(b"\x01", position)
        if start < 0:
            return runs
        end = mask.find(b"\x00", start)
        end = len(mask) if end < 0 else end
        runs.append((offset + start, end - start))
        position = end


def first_difference(got: bytes, expected: bytes, unknown: list[tuple[int, int]],
                     offset: int) -> int | None:
    """Offset (absolute) of the first byte that differs outside ``unknown``, or None."""
    if len(got) != len(expected):
        return offset + min(len(got), len(expected))
    if not unknown and got == expected:
        return None
    position = 0
    skips = sorted((start - offset, start - offset + length) for start, length in unknown)
    for skip_start, skip_end in [*skips, (len(got), len(got))]:
        if got[position:skip_start] != expected[position:skip_start]:
            for index in range(position, skip_start):
                if got[index] != expected[index]:
                    return offset + index
        position = max(position, skip_end)
    return None


__all__ = ["VERIFY_PIECE", "ContentModel", "first_difference", "verify_pieces"]
