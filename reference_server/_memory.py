"""A sparse in-memory backend: cheap even for a 64 GiB export.

Data lives in 64 KiB chunks allocated on first write; a chunk whose bytes are
all zero is dropped, so bytes outside any chunk read as zero and a missing
chunk costs nothing.  Resident memory follows the non-zero data written, not
the export size: trims and write-zeroes free whole chunks at once.  The
allocation state (hole, allocated zeroes, data) is kept separately, exact to
the byte, in a :class:`RangeMap`; it is what a real thin-provisioned disk
would report, independent of the bytes' values.

The data path copies once each way (request buffer into chunks, chunks into
the reply buffer) through memoryviews; it never builds an intermediate
``bytes``.
"""

from __future__ import annotations

from collections.abc import Iterator

from harness.protocol.constants import InitFlag

from ._backend import DATA, HOLE_ZERO, ZERO, Backend, Run
from ._extents import RangeMap

CHUNK = 64 * 1024
_ZERO_CHUNK = bytes(CHUNK)
_ZERO_VIEW = memoryview(_ZERO_CHUNK)


def is_zero(piece: memoryview) -> bool:
    """True when every byte of ``piece`` (at most one chunk long) is zero.

    Data written by clients rarely starts with a zero byte, so the first and
    last bytes answer most calls; otherwise one ``memcmp`` (a memoryview
    comparison would go byte by byte through ``struct``).
    """
    if piece[0] or piece[-1]:
        return False
    return piece.tobytes() == (_ZERO_CHUNK if len(piece) == CHUNK else bytes(len(piece)))


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

    @property
    def allocated_bytes(self) -> int:
        """Bytes of chunk memory held: what the export costs in RAM."""
        return len(self._chunks) * CHUNK

    @staticmethod
    def _pieces(offset: int, length: int) -> Iterator[tuple[int, int, int, int]]:
        """Yield ``(chunk_index, start_in_chunk, end_in_chunk, position_in_request)``."""
        position = 0
        while position < length:
            index, start = divmod(offset + position, CHUNK)
            end = min(CHUNK, start + length - position)
            yield index, start, end, position
            position += end - start

    def _read(self, offset: int, length: int) -> bytes:
        result = bytearray(length)
        self._read_into(offset, memoryview(result))
        return bytes(result)

    def _read_into(self, offset: int, target: memoryview) -> None:
        chunks = self._chunks
        for index, start, end, position in self._pieces(offset, len(target)):
            chunk = chunks.get(index)
            stop = position + end - start
            if chunk is None:
                target[position:stop] = _ZERO_VIEW[: end - start]
            else:
                target[position:stop] = memoryview(chunk)[start:end]

    def _write(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data).cast("B")
        chunks = self._chunks
        for index, start, end, position in self._pieces(offset, len(view)):
            piece = view[position : position + end - start]
            chunk = chunks.get(index)
            if chunk is None:
                if is_zero(piece):
                    continue  # zero bytes over a missing chunk change nothing
                if end - start == CHUNK:
                    chunks[index] = bytearray(piece)  # whole chunk: no zero-fill first
                    continue
                chunk = chunks[index] = bytearray(CHUNK)
                chunk[start:end] = piece
                continue
            chunk[start:end] = piece
            # A chunk can only become all zero if the bytes just written are zero.
            if is_zero(piece) and chunk == _ZERO_CHUNK:
                del chunks[index]
        self._state.set(offset, offset + len(view), DATA)

    def _zero(self, offset: int, length: int, state: int) -> None:
        chunks = self._chunks
        for index, start, end, _ in self._pieces(offset, length):
            chunk = chunks.get(index)
            if chunk is None:
                continue
            if end - start == CHUNK:
                del chunks[index]
                continue
            chunk[start:end] = _ZERO_VIEW[: end - start]
            if chunk == _ZERO_CHUNK:
                del chunks[index]
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

    def is_plain_data(self, offset: int, length: int) -> bool:
        self._check_range(offset, length)
        end = offset + length
        with self._lock:
            for _, run_end, value in self._state.runs(offset, end):
                # The first run: plain data when it is not a zero state and reaches the end.
                return run_end == end and not value & ZERO
        return False

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
