"""A sparse in-memory backend: cheap even for a 64 GiB export.

Data lives in 64 KiB chunks allocated on first write; a chunk whose bytes are
all zero is dropped, so bytes outside any chunk read as zero and a missing
chunk costs nothing.  The allocation state (hole, allocated zeroes, data) is
kept separately, exact to the byte, in a :class:`RangeMap`; it is what a real
thin-provisioned disk would report, independent of the bytes' values.
"""

from __future__ import annotations

from collections.abc import Iterator

from harness.protocol.constants import InitFlag

from ._backend import DATA, HOLE_ZERO, ZERO, Backend, Run
from ._extents import RangeMap
from ._rawfile import is_all_zero

CHUNK = 64 * 1024
_ZERO_CHUNK = bytes(CHUNK)


class MemoryBackend(Backend):
    """A sparse RAM disk of ``size`` bytes, all hole at the start.

    State per byte: hole (``HOLE|ZERO``) after creation, trim or write-zeroes
    that may trim; allocated zeroes (``ZERO``) after write-zeroes with
    ``NO_HOLE``; data (0) after a write, whatever the bytes.  Allocation depth is
    1 wherever allocated (data or allocated zeroes) and 0 in holes.
    """

    def __init__(self, size: int, read_only: bool = False) -> None:
        super().__init__(size, read_only)
        self._chunks: dict[int, bytearray] = {}
        self._state: RangeMap[int] = RangeMap(size, HOLE_ZERO)

    @property
    def chunk_count(self) -> int:
        """How many 64 KiB chunks hold non-zero data (memory actually used)."""
        return len(self._chunks)

    def _pieces(self, offset: int, length: int) -> Iterator[tuple[int, int, int, int]]:
        """Yield ``(chunk_index, start_in_chunk, end_in_chunk, position_in_request)``."""
        position = 0
        while position < length:
            absolute = offset + position
            index, start = divmod(absolute, CHUNK)
            end = min(CHUNK, start + length - position)
            yield index, start, end, position
            position += end - start

    def _read(self, offset: int, length: int) -> bytes:
        result = bytearray(length)
        for index, start, end, position in self._pieces(offset, length):
            chunk = self._chunks.get(index)
            if chunk is not None:
                result[position : position + end - start] = chunk[start:end]
        return bytes(result)

    def _write(self, offset: int, data: bytes) -> None:
        for index, start, end, position in self._pieces(offset, len(data)):
            piece = data[position : position + end - start]
            chunk = self._chunks.get(index)
            if chunk is None:
                if is_all_zero(piece):
                    continue  # zero bytes over a missing chunk change nothing
                chunk = self._chunks[index] = bytearray(CHUNK)
            chunk[start:end] = piece
            if chunk == _ZERO_CHUNK:
                del self._chunks[index]
        self._state.set(offset, offset + len(data), DATA)

    def _zero(self, offset: int, length: int, state: int) -> None:
        for index, start, end, _ in self._pieces(offset, length):
            chunk = self._chunks.get(index)
            if chunk is None:
                continue
            if end - start == CHUNK:
                del self._chunks[index]
                continue
            chunk[start:end] = _ZERO_CHUNK[: end - start]
            if chunk == _ZERO_CHUNK:
                del self._chunks[index]
        self._state.set(offset, offset + length, state)

    def _trim(self, offset: int, length: int) -> None:
        self._zero(offset, length, HOLE_ZERO)

    def _write_zeroes(self, offset: int, length: int, *, may_trim: bool, fast: bool) -> None:
        self._zero(offset, length, HOLE_ZERO if may_trim else ZERO)

    def can_fast_zero(self) -> bool:
        return not self.read_only

    def _allocation_runs(self, start: int, end: int) -> list[Run]:
        return list(self._state.runs(start, end))

    def _depth_runs(self, start: int, end: int) -> list[Run]:
        runs = self._state.runs(start, end)
        return [(s, e, 0 if value == HOLE_ZERO else 1) for s, e, value in runs]

    def init_state(self) -> InitFlag:
        # Exact and O(runs): all-zero chunks are never kept, so "no chunk" is
        # "reads entirely as zero".
        with self._lock:
            flags = InitFlag(0)
            if self._state.contains_value(HOLE_ZERO):
                flags |= InitFlag.SPARSE
            if not self._chunks:
                flags |= InitFlag.ZERO
            return flags
