"""Storage backends: data read back byte for byte, allocation, depth and bitmaps exact."""

from __future__ import annotations

import errno
import hashlib
import itertools
import os
import tempfile
import threading
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.protocol.constants import (
    BASE_ALLOCATION,
    QEMU_ALLOCATION_DEPTH,
    DirtyFlag,
    Errno,
    InitFlag,
    StateFlag,
)
from reference_server import _file
from reference_server._extents import RangeMap, merge_runs, overlay_runs
from reference_server._memory import CHUNK
from reference_server.config import BitmapConfig, ExportConfig
from reference_server.storage import (
    Backend,
    BackendIOError,
    DirtyBitmap,
    ExportRegistry,
    Extent,
    FastZeroUnsupported,
    FileBackend,
    LayeredBackend,
    MemoryBackend,
    ReadOnlyError,
    StorageOpenError,
    nbd_errno,
    open_backend,
)

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
BLOCK = 64 * KiB  # aligned ranges, so file system granularity never matters

HOLE = int(StateFlag.HOLE | StateFlag.ZERO)
ZERO = int(StateFlag.ZERO)
DATA = 0


def pattern(offset: int, length: int, seed: int) -> bytes:
    """Bytes that depend on their absolute offset and the seed; never zero."""
    out = bytearray()
    block = offset // 32
    while len(out) < (offset % 32) + length:
        out += hashlib.blake2b(f"{seed}:{block}".encode(), digest_size=32).digest()
        block += 1
    data = bytes(out[offset % 32 : offset % 32 + length])
    return data.replace(b"\0", b"\x01")


def rle(flags: list[int] | bytes | bytearray, offset: int = 0) -> list[Extent]:
    """Run-length encoding of per-byte values as extents."""
    extents: list[Extent] = []
    for value in flags:
        if extents and extents[-1].flags == value:
            extents[-1] = Extent(extents[-1].length + 1, value)
        else:
            extents.append(Extent(1, value))
    return extents


def assert_truthful(backend: Backend, offset: int, length: int) -> None:
    """base:allocation covers the range exactly and ZERO ranges really read as zero."""
    extents = backend.allocation(offset, length)
    assert sum(e.length for e in extents) == length
    assert all(e.length > 0 for e in extents)
    assert all(a.flags != b.flags for a, b in itertools.pairwise(extents))
    position = offset
    for extent in extents:
        if extent.flags & StateFlag.ZERO:
            assert backend.read(position, extent.length) == bytes(extent.length)
        position += extent.length


def write_raw(path: Path, size: int, pieces: dict[int, bytes]) -> None:
    """A sparse raw file of ``size`` bytes with data only where ``pieces`` says."""
    with open(path, "wb") as stream:
        stream.truncate(size)
    fd = os.open(path, os.O_RDWR)
    try:
        for offset, data in pieces.items():
            os.pwrite(fd, data, offset)
    finally:
        os.close(fd)


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- interval map ------------------------------------------------------------------------


class TestRangeMap:
    def test_set_splits_and_merges(self) -> None:
        ranges: RangeMap[int] = RangeMap(100, 0)
        ranges.set(10, 20, 1)
        ranges.set(30, 40, 1)
        assert list(ranges.runs()) == [
            (0, 10, 0),
            (10, 20, 1),
            (20, 30, 0),
            (30, 40, 1),
            (40, 100, 0),
        ]
        ranges.set(20, 30, 1)
        assert list(ranges.runs()) == [(0, 10, 0), (10, 40, 1), (40, 100, 0)]
        ranges.set(0, 100, 0)
        assert list(ranges.runs()) == [(0, 100, 0)]
        assert len(ranges) == 1

    def test_runs_are_clipped_to_the_query(self) -> None:
        ranges: RangeMap[str] = RangeMap(50, "a")
        ranges.set(10, 20, "b")
        assert list(ranges.runs(15, 25)) == [(15, 20, "b"), (20, 25, "a")]
        assert list(ranges.runs(12, 13)) == [(12, 13, "b")]
        assert list(ranges.runs(40, 40)) == []
        assert ranges.value_at(19) == "b" and ranges.value_at(20) == "a"

    @given(
        size=st.integers(1, 60),
        operations=st.lists(
            st.tuples(st.integers(0, 60), st.integers(0, 60), st.integers(0, 3)), max_size=25
        ),
    )
    def test_agrees_with_a_list(self, size: int, operations: list[tuple[int, int, int]]) -> None:
        ranges: RangeMap[int] = RangeMap(size, 0)
        model = [0] * size
        for start, end, value in operations:
            ranges.set(start, end, value)
            for index in range(max(start, 0), min(end, size)):
                model[index] = value
        runs = list(ranges.runs())
        assert merge_runs(runs) == runs  # always maximal
        expanded = [value for start, end, value in runs for _ in range(start, end)]
        assert expanded == model

    def test_overlay(self) -> None:
        base = [(0, 10, 3), (10, 20, 0)]
        top = [(0, 5, None), (5, 15, 2), (15, 20, None)]
        assert overlay_runs(base, top) == [(0, 5, 3), (5, 15, 2), (15, 20, 0)]


# --- dirty bitmaps -------------------------------------------------------------------------


class TestDirtyBitmap:
    def test_marks_every_granule_touched(self) -> None:
        bitmap = DirtyBitmap("b0", 1 * MiB)
        assert bitmap.extents(0, MiB) == [Extent(MiB, 0)]
        bitmap.mark(BLOCK + 1, 1)  # one byte dirties its whole granule
        bitmap.mark(4 * BLOCK - 1, 2)  # two bytes straddle two granules
        assert bitmap.extents(0, MiB) == [
            Extent(BLOCK, 0),
            Extent(BLOCK, DirtyFlag.DIRTY),
            Extent(BLOCK, 0),
            Extent(2 * BLOCK, DirtyFlag.DIRTY),
            Extent(MiB - 5 * BLOCK, 0),
        ]
        # Clipped to the query, not to granules.
        assert bitmap.extents(BLOCK + 100, 200) == [Extent(200, DirtyFlag.DIRTY)]
        assert bitmap.is_dirty(0, BLOCK + 1) and not bitmap.is_dirty(0, BLOCK)
        bitmap.clear()
        assert bitmap.extents(0, MiB) == [Extent(MiB, 0)]

    def test_last_granule_is_cut_at_the_size(self) -> None:
        bitmap = DirtyBitmap("tail", 1000, granularity=512)
        bitmap.mark(999, 1)
        assert bitmap.extents(0, 1000) == [Extent(512, 0), Extent(488, DirtyFlag.DIRTY)]
        bitmap.mark(0, 0)  # an empty range touches nothing
        assert bitmap.extents(0, 512) == [Extent(512, 0)]

    def test_rejects_bad_arguments(self) -> None:
        with pytest.raises(ValueError, match="power of two"):
            DirtyBitmap("b", 100, granularity=1000)
        with pytest.raises(ValueError, match="name"):
            DirtyBitmap("", 100)
        bitmap = DirtyBitmap("b", 100)
        with pytest.raises(ValueError, match="outside"):
            bitmap.mark(90, 20)
        with pytest.raises(ValueError, match="outside"):
            bitmap.extents(-1, 2)


# --- memory backend --------------------------------------------------------------------------


class TestMemoryBackend:
    def test_new_export_is_one_hole(self) -> None:
        backend = MemoryBackend(8 * MiB)
        assert backend.allocation(0, 8 * MiB) == [Extent(8 * MiB, HOLE)]
        assert backend.allocation_depth(0, 8 * MiB) == [Extent(8 * MiB, 0)]
        assert backend.read(0, 8 * MiB) == bytes(8 * MiB)
        assert backend.init_state() == InitFlag.SPARSE | InitFlag.ZERO
        assert backend.segments(0, 8 * MiB) == [(0, 8 * MiB, True)]
        assert backend.chunk_count == 0

    def test_64_gib_export_is_cheap_and_exact(self) -> None:
        size = 64 * GiB
        backend = MemoryBackend(size)
        writes = {0: pattern(0, 10, 1), 17 * GiB + 3: pattern(17 * GiB + 3, 70_000, 2)}
        writes[size - 5] = pattern(size - 5, 5, 3)
        for offset, data in writes.items():
            backend.write(offset, data)
        for offset, data in writes.items():
            assert backend.read(offset, len(data)) == data
        assert backend.chunk_count <= 4  # memory follows the data, not the size
        middle = 17 * GiB + 3
        assert backend.allocation(0, size) == [
            Extent(10, DATA),
            Extent(middle - 10, HOLE),
            Extent(70_000, DATA),
            Extent(size - 5 - middle - 70_000, HOLE),
            Extent(5, DATA),
        ]
        assert backend.read(middle - 2, 4) == b"\0\0" + writes[middle][:2]

    def test_unaligned_writes_across_chunks_read_back(self) -> None:
        backend = MemoryBackend(1 * MiB)
        model = bytearray(1 * MiB)
        for seed, (offset, length) in enumerate([(1, 100), (65_530, 20), (130_000, 200_000)]):
            data = pattern(offset, length, seed)
            backend.write(offset, data)
            model[offset : offset + length] = data
        assert backend.read(0, 1 * MiB) == bytes(model)
        assert backend.read(65_529, 22) == bytes(model[65_529:65_551])

    def test_written_zero_bytes_are_data(self) -> None:
        backend = MemoryBackend(1 * MiB)
        backend.write(BLOCK, bytes(BLOCK))
        assert backend.allocation(0, 3 * BLOCK) == [
            Extent(BLOCK, HOLE),
            Extent(BLOCK, DATA),
            Extent(BLOCK, HOLE),
        ]
        assert backend.allocation_depth(0, 3 * BLOCK) == [
            Extent(BLOCK, 0),
            Extent(BLOCK, 1),
            Extent(BLOCK, 0),
        ]
        assert backend.chunk_count == 0  # zero bytes cost no memory
        assert backend.init_state() == InitFlag.SPARSE | InitFlag.ZERO
        backend.write(0, bytes(1 * MiB))
        assert backend.init_state() == InitFlag.ZERO

    def test_trim_and_write_zeroes_states(self) -> None:
        size = 8 * BLOCK
        backend = MemoryBackend(size)
        backend.write(0, pattern(0, size, 7))
        backend.trim(BLOCK, BLOCK)
        backend.write_zeroes(3 * BLOCK, BLOCK, may_trim=True)
        backend.write_zeroes(5 * BLOCK + 10, BLOCK - 20, may_trim=False)
        assert backend.allocation(0, size) == [
            Extent(BLOCK, DATA),
            Extent(BLOCK, HOLE),
            Extent(BLOCK, DATA),
            Extent(BLOCK, HOLE),
            Extent(BLOCK + 10, DATA),
            Extent(BLOCK - 20, ZERO),
            Extent(2 * BLOCK + 10, DATA),
        ]
        assert backend.allocation_depth(0, size) == [
            Extent(BLOCK, 1),
            Extent(BLOCK, 0),
            Extent(BLOCK, 1),
            Extent(BLOCK, 0),
            Extent(4 * BLOCK, 1),
        ]
        expected = bytearray(pattern(0, size, 7))
        expected[BLOCK : 2 * BLOCK] = bytes(BLOCK)
        expected[3 * BLOCK : 4 * BLOCK] = bytes(BLOCK)
        expected[5 * BLOCK + 10 : 6 * BLOCK - 10] = bytes(BLOCK - 20)
        assert backend.read(0, size) == bytes(expected)
        assert backend.segments(0, size) == [
            (0, BLOCK, False),
            (BLOCK, BLOCK, True),
            (2 * BLOCK, BLOCK, False),
            (3 * BLOCK, BLOCK, True),
            (4 * BLOCK, BLOCK + 10, False),
            (5 * BLOCK + 10, BLOCK - 20, True),
            (6 * BLOCK - 10, 2 * BLOCK + 10, False),
        ]
        assert backend.init_state() == InitFlag.SPARSE
        assert_truthful(backend, 0, size)

    def test_memory_follows_the_data_written_not_the_size(self) -> None:
        backend = MemoryBackend(1 << 40)  # 1 TiB: only what is written costs memory
        offset = 5 * GiB + 7
        data = pattern(offset, 3 * MiB + 100, 4)
        backend.write(offset, memoryview(data))
        touched = (offset + len(data) - 1) // CHUNK - offset // CHUNK + 1
        assert backend.allocated_bytes == touched * CHUNK <= len(data) + 2 * CHUNK
        # Trim, write-zeroes and zero bytes written free the chunks they cover entirely.
        backend.trim(offset + MiB - 7, MiB)
        assert backend.allocated_bytes == (touched - MiB // CHUNK) * CHUNK
        backend.write_zeroes(offset - 7, CHUNK, may_trim=False)
        backend.write(offset + 2 * MiB - 7, bytes(CHUNK))
        assert backend.allocated_bytes == (touched - MiB // CHUNK - 2) * CHUNK
        expected = bytearray(data)
        expected[MiB - 7 : 2 * MiB - 7] = bytes(MiB)
        expected[: CHUNK - 7] = bytes(CHUNK - 7)
        expected[2 * MiB - 7 : 2 * MiB - 7 + CHUNK] = bytes(CHUNK)
        assert backend.read(offset, len(data)) == bytes(expected)
        assert backend.allocation(offset - 7, len(data) + 7) == [
            Extent(CHUNK, ZERO),
            Extent(MiB - CHUNK, DATA),
            Extent(MiB, HOLE),
            Extent(MiB + 107, DATA),
        ]
        # Everything trimmed: no memory at all, and the export reads as zeroes again.
        backend.trim(0, backend.size)
        assert backend.allocated_bytes == 0
        assert backend.init_state() == InitFlag.SPARSE | InitFlag.ZERO

    def test_read_into_fills_a_reused_buffer(self) -> None:
        backend = MemoryBackend(4 * CHUNK)
        backend.write(CHUNK + 10, pattern(CHUNK + 10, CHUNK, 5))
        buffer = bytearray(b"\xee") * (3 * CHUNK + 2)  # stale bytes: holes must overwrite them
        backend.read_into(5, memoryview(buffer)[1 : 3 * CHUNK + 1])
        assert buffer[0] == buffer[-1] == 0xEE
        assert bytes(buffer[1:-1]) == backend.read(5, 3 * CHUNK)
        assert backend.is_plain_data(CHUNK + 10, CHUNK)
        assert not backend.is_plain_data(CHUNK + 9, CHUNK)
        assert not backend.is_plain_data(0, 10)

    def test_extents_are_clipped_and_merged(self) -> None:
        backend = MemoryBackend(1 * MiB)
        backend.write(1000, pattern(1000, 1000, 1))
        backend.write(2000, pattern(2000, 1000, 2))  # adjacent data merges
        assert backend.allocation(1500, 2000) == [Extent(1500, DATA), Extent(500, HOLE)]
        assert backend.allocation(1200, 10) == [Extent(10, DATA)]
        assert backend.allocation(0, 0) == []

    def test_fast_zero_and_flush_and_cache(self) -> None:
        backend = MemoryBackend(1 * MiB)
        assert backend.can_fast_zero()
        backend.write(0, pattern(0, BLOCK, 1))
        backend.write_zeroes(0, BLOCK, may_trim=False, fast=True, fua=True)
        assert backend.read(0, BLOCK) == bytes(BLOCK)
        backend.flush()
        backend.cache(0, 1 * MiB)
        with pytest.raises(ValueError):
            backend.cache(1, 1 * MiB)

    def test_read_only(self) -> None:
        backend = MemoryBackend(1 * MiB, read_only=True)
        backend.add_bitmap("b0")
        with pytest.raises(ReadOnlyError):
            backend.write(0, b"x")
        with pytest.raises(ReadOnlyError):
            backend.trim(0, BLOCK)
        with pytest.raises(ReadOnlyError):
            backend.write_zeroes(0, BLOCK, may_trim=True)
        assert not backend.can_fast_zero()
        backend.flush()
        assert backend.read(0, BLOCK) == bytes(BLOCK)
        assert backend.bitmaps["b0"].extents(0, 1 * MiB) == [Extent(1 * MiB, 0)]

    @pytest.mark.parametrize(("offset", "length"), [(-1, 1), (0, -1), (1 * MiB, 1), (1, 1 * MiB)])
    def test_ranges_outside_the_export_are_refused(self, offset: int, length: int) -> None:
        backend = MemoryBackend(1 * MiB)
        for call in (
            lambda: backend.read(offset, length),
            lambda: backend.trim(offset, length),
            lambda: backend.write_zeroes(offset, length, may_trim=True),
            lambda: backend.allocation(offset, length),
            lambda: backend.allocation_depth(offset, length),
            lambda: backend.cache(offset, length),
        ):
            with pytest.raises(ValueError, match="outside the export"):
                call()
        if length > 0:
            with pytest.raises(ValueError, match="outside the export"):
                backend.write(offset, b"x" * length)

    def test_bitmaps_record_every_change(self) -> None:
        backend = MemoryBackend(1 * MiB)
        backend.write(0, pattern(0, 10, 1))  # before the bitmap: not recorded
        b0 = backend.add_bitmap("b0")
        fine = backend.add_bitmap("fine", granularity=4 * KiB)
        backend.read(0, 1 * MiB)  # reads never dirty
        backend.write(BLOCK + 5, pattern(BLOCK + 5, 10, 2))
        backend.trim(4 * BLOCK, 10)
        backend.write_zeroes(6 * BLOCK + 100, BLOCK, may_trim=False)
        dirty = int(DirtyFlag.DIRTY)
        assert b0.extents(0, 1 * MiB) == [
            Extent(BLOCK, 0),
            Extent(BLOCK, dirty),
            Extent(2 * BLOCK, 0),
            Extent(BLOCK, dirty),
            Extent(BLOCK, 0),
            Extent(2 * BLOCK, dirty),
            Extent(8 * BLOCK, 0),
        ]
        assert fine.extents(BLOCK, BLOCK) == [Extent(4 * KiB, dirty), Extent(BLOCK - 4 * KiB, 0)]
        assert backend.metadata_contexts() == [
            BASE_ALLOCATION,
            QEMU_ALLOCATION_DEPTH,
            "qemu:dirty-bitmap:b0",
            "qemu:dirty-bitmap:fine",
        ]
        assert backend.block_status("qemu:dirty-bitmap:b0", BLOCK, 10) == [Extent(10, dirty)]
        assert backend.block_status(BASE_ALLOCATION, 0, 20) == [Extent(10, DATA), Extent(10, HOLE)]
        assert backend.block_status(QEMU_ALLOCATION_DEPTH, 0, 20) == [Extent(10, 1), Extent(10, 0)]
        with pytest.raises(KeyError):
            backend.block_status("qemu:dirty-bitmap:nope", 0, 1)
        with pytest.raises(KeyError):
            backend.block_status("base:nothing", 0, 1)
        with pytest.raises(ValueError, match="already exists"):
            backend.add_bitmap("b0")

    def test_connections_share_one_backend_from_threads(self) -> None:
        backend = MemoryBackend(16 * BLOCK)
        errors: list[BaseException] = []

        def worker(seed: int) -> None:
            try:
                for round_number in range(20):
                    offset = seed * 2 * BLOCK + round_number * 100
                    data = pattern(offset, 3000, seed)
                    backend.write(offset, data)
                    assert backend.read(offset, 3000) == data
            except BaseException as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(seed,)) for seed in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert not errors
        for seed in range(8):
            offset = seed * 2 * BLOCK + 19 * 100
            assert backend.read(offset, 3000) == pattern(offset, 3000, seed)


def test_errors_map_to_nbd_errno() -> None:
    assert nbd_errno(ReadOnlyError("ro")) == Errno.EPERM
    assert nbd_errno(BackendIOError("broken")) == Errno.EIO
    assert nbd_errno(BackendIOError("full", errno.ENOSPC)) == Errno.ENOSPC
    assert nbd_errno(FastZeroUnsupported("slow")) == Errno.ENOTSUP
    assert nbd_errno(ValueError("outside")) == Errno.EINVAL


# --- the property: memory backend against a bytearray model ---------------------------------

_operation = st.tuples(
    st.sampled_from(["write", "write_zero_bytes", "trim", "zero", "zero_no_hole"]),
    st.integers(0, 200_000),
    st.integers(1, 80_000),
    st.integers(0, 1000),
)


@settings(max_examples=150, deadline=None)
@given(
    size=st.integers(1, 200_000),
    operations=st.lists(_operation, max_size=15),
    query=st.tuples(st.integers(0, 200_000), st.integers(0, 200_000)),
)
def test_memory_backend_agrees_with_a_model(
    size: int, operations: list[tuple[str, int, int, int]], query: tuple[int, int]
) -> None:
    backend = MemoryBackend(size)
    bitmap = backend.add_bitmap("b", granularity=4096)
    data = bytearray(size)
    flags = bytearray([HOLE]) * size
    dirty = bytearray(size)
    for kind, offset, length, seed in operations:
        offset %= size
        length = min(length, size - offset)
        end = offset + length
        if kind == "write":
            piece = pattern(offset, length, seed)
            backend.write(offset, piece)
            data[offset:end], flags[offset:end] = piece, bytes([DATA]) * length
        elif kind == "write_zero_bytes":
            backend.write(offset, bytes(length))
            data[offset:end], flags[offset:end] = bytes(length), bytes([DATA]) * length
        else:
            if kind == "trim":
                backend.trim(offset, length)
            else:
                backend.write_zeroes(offset, length, may_trim=kind == "zero")
            data[offset:end] = bytes(length)
            flags[offset:end] = bytes([ZERO if kind == "zero_no_hole" else HOLE]) * length
        first, last = offset // 4096 * 4096, min(size, -(-end // 4096) * 4096)
        dirty[first:last] = b"\1" * (last - first)

    assert backend.read(0, size) == bytes(data)
    assert backend.allocation(0, size) == rle(flags)
    assert backend.allocation_depth(0, size) == rle([0 if f == HOLE else 1 for f in flags])
    assert bitmap.extents(0, size) == rle(dirty)
    start = query[0] % size
    length = min(query[1], size - start)
    assert backend.allocation(start, length) == rle(flags[start : start + length])
    assert backend.read(start, length) == bytes(data[start : start + length])
    assert_truthful(backend, start, length)
    position = start
    for seg_offset, seg_length, is_zero in backend.segments(start, length):
        assert seg_offset == position
        if is_zero:
            assert not any(data[seg_offset : seg_offset + seg_length])
        position += seg_length
    assert position == start + length
    if length:
        segments = backend.segments(start, length)
        assert backend.is_plain_data(start, length) == (len(segments) == 1 and not segments[0][2])
    target = bytearray(b"\xee") * length
    backend.read_into(start, memoryview(target))
    assert target == data[start : start + length]
    # Memory follows the data: a chunk is held exactly when it has a non-zero byte.
    assert backend.chunk_count == sum(
        1 for first in range(0, size, CHUNK) if any(data[first : first + CHUNK])
    )
    expected_init = InitFlag(0)
    if HOLE in flags:
        expected_init |= InitFlag.SPARSE
    if not any(data):
        expected_init |= InitFlag.ZERO
    assert backend.init_state() == expected_init


# --- file backend -------------------------------------------------------------------------------


class TestFileBackend:
    def test_missing_file_is_created_sparse(self, tmp_path: Path) -> None:
        path = tmp_path / "disk.raw"
        with FileBackend(path, size=4 * MiB) as backend:
            assert path.stat().st_size == 4 * MiB
            assert path.stat().st_blocks == 0
            assert backend.size == 4 * MiB
            assert backend.allocation(0, 4 * MiB) == [Extent(4 * MiB, HOLE)]
            assert backend.allocation_depth(0, 4 * MiB) == [Extent(4 * MiB, 0)]
            assert backend.read(0, 4 * MiB) == bytes(4 * MiB)
            assert backend.init_state() == InitFlag.SPARSE | InitFlag.ZERO

    def test_writes_read_back_and_show_as_data(self, tmp_path: Path) -> None:
        path = tmp_path / "disk.raw"
        with FileBackend(path, size=16 * BLOCK) as backend:
            backend.write(2 * BLOCK, pattern(2 * BLOCK, BLOCK, 1))
            backend.write(5 * BLOCK, pattern(5 * BLOCK, 2 * BLOCK, 2), fua=True)
            assert backend.read(2 * BLOCK, BLOCK) == pattern(2 * BLOCK, BLOCK, 1)
            assert backend.read(5 * BLOCK, 2 * BLOCK) == pattern(5 * BLOCK, 2 * BLOCK, 2)
            expected = [
                Extent(2 * BLOCK, HOLE),
                Extent(BLOCK, DATA),
                Extent(2 * BLOCK, HOLE),
                Extent(2 * BLOCK, DATA),
                Extent(9 * BLOCK, HOLE),
            ]
            assert backend.allocation(0, 16 * BLOCK) == expected
            assert backend.allocation_depth(0, 16 * BLOCK) == [
                Extent(e.length, 0 if e.flags else 1) for e in expected
            ]
            assert backend.allocation(2 * BLOCK + 10, 100) == [Extent(100, DATA)]
            assert backend.init_state() == InitFlag.SPARSE
            backend.flush()
            backend.cache(0, 16 * BLOCK)
        # Persistent: a new backend on the same file sees the same bytes.
        with FileBackend(path, read_only=True) as reopened:
            assert reopened.size == 16 * BLOCK
            assert reopened.read(5 * BLOCK, 2 * BLOCK) == pattern(5 * BLOCK, 2 * BLOCK, 2)

    def test_trim_and_write_zeroes(self, tmp_path: Path) -> None:
        size = 8 * BLOCK
        with FileBackend(tmp_path / "disk.raw", size=size) as backend:
            assert backend.can_fast_zero()  # ext4 / tmpfs punch holes
            backend.write(0, pattern(0, size, 3))
            backend.trim(BLOCK, BLOCK)
            backend.write_zeroes(3 * BLOCK, BLOCK, may_trim=True, fast=True)
            backend.write_zeroes(5 * BLOCK, BLOCK, may_trim=False)
            assert backend.allocation(0, size) == [
                Extent(BLOCK, DATA),
                Extent(BLOCK, HOLE),
                Extent(BLOCK, DATA),
                Extent(BLOCK, HOLE),
                Extent(BLOCK, DATA),
                Extent(BLOCK, ZERO),  # NO_HOLE: allocated zeroes, never reported as a hole
                Extent(2 * BLOCK, DATA),
            ]
            assert backend.allocation_depth(0, size) == [
                Extent(BLOCK, 1),
                Extent(BLOCK, 0),
                Extent(BLOCK, 1),
                Extent(BLOCK, 0),
                Extent(4 * BLOCK, 1),
            ]
            expected = bytearray(pattern(0, size, 3))
            for start in (BLOCK, 3 * BLOCK, 5 * BLOCK):
                expected[start : start + BLOCK] = bytes(BLOCK)
            assert backend.read(0, size) == bytes(expected)
            assert_truthful(backend, 0, size)
            # Writing data over the zeroed range makes it plain data again.
            backend.write(5 * BLOCK, pattern(5 * BLOCK, 10, 4))
            assert backend.allocation(5 * BLOCK, BLOCK) == [
                Extent(10, DATA),
                Extent(BLOCK - 10, ZERO),
            ]

    def test_export_larger_than_the_file(self, tmp_path: Path) -> None:
        path = tmp_path / "short.raw"
        write_raw(path, BLOCK, {0: pattern(0, BLOCK, 1)})
        with FileBackend(path, size=4 * BLOCK) as backend:
            assert backend.allocation(0, 4 * BLOCK) == [
                Extent(BLOCK, DATA),
                Extent(3 * BLOCK, HOLE),
            ]
            assert backend.read(0, 2 * BLOCK) == pattern(0, BLOCK, 1) + bytes(BLOCK)
            backend.write(3 * BLOCK, pattern(3 * BLOCK, BLOCK, 2))
            assert path.stat().st_size == 4 * BLOCK
            assert backend.read(3 * BLOCK, BLOCK) == pattern(3 * BLOCK, BLOCK, 2)

    def test_export_smaller_than_the_file(self, tmp_path: Path) -> None:
        path = tmp_path / "long.raw"
        write_raw(path, 4 * BLOCK, {0: pattern(0, 4 * BLOCK, 1)})
        with FileBackend(path, read_only=True, size=BLOCK) as backend:
            assert backend.size == BLOCK
            assert backend.allocation(0, BLOCK) == [Extent(BLOCK, DATA)]
            with pytest.raises(ValueError):
                backend.read(0, BLOCK + 1)

    def test_all_zero_data_reads_as_zero(self, tmp_path: Path) -> None:
        path = tmp_path / "zeroes.raw"
        write_raw(path, 2 * BLOCK, {0: bytes(2 * BLOCK)})
        with FileBackend(path, read_only=True) as backend:
            assert backend.allocation(0, 2 * BLOCK) == [Extent(2 * BLOCK, DATA)]
            assert backend.init_state() == InitFlag.ZERO

    def test_read_only_file(self, tmp_path: Path) -> None:
        path = tmp_path / "ro.raw"
        write_raw(path, BLOCK, {0: pattern(0, BLOCK, 9)})
        digest = file_digest(path)
        with FileBackend(path, read_only=True) as backend:
            for call in (
                lambda: backend.write(0, b"x"),
                lambda: backend.trim(0, 1),
                lambda: backend.write_zeroes(0, 1, may_trim=False),
            ):
                with pytest.raises(ReadOnlyError):
                    call()
            assert not backend.can_fast_zero()
            backend.flush()
            assert backend.read(0, BLOCK) == pattern(0, BLOCK, 9)
        assert file_digest(path) == digest

    def test_open_errors(self, tmp_path: Path) -> None:
        with pytest.raises(StorageOpenError, match="no size"):
            FileBackend(tmp_path / "missing.raw")
        with pytest.raises(StorageOpenError, match="cannot open"):
            FileBackend(tmp_path / "missing.raw", read_only=True)
        with pytest.raises(StorageOpenError, match="directory"):
            FileBackend(tmp_path, size=10)

    def test_without_fallocate_zeroes_are_written(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(_file, "fallocate", lambda fd, mode, offset, length: False)
        size = 4 * BLOCK
        with FileBackend(tmp_path / "disk.raw", size=size) as backend:
            assert not backend.can_fast_zero()
            backend.write(0, pattern(0, size, 5))
            backend.trim(0, BLOCK)
            backend.write_zeroes(2 * BLOCK, BLOCK, may_trim=False)
            bitmap = backend.add_bitmap("b")
            with pytest.raises(FastZeroUnsupported):
                backend.write_zeroes(BLOCK, BLOCK, may_trim=True, fast=True)
            assert bitmap.extents(0, size) == [Extent(size, 0)]  # a refused zero changes nothing
            # Zero bytes were written: allocated, reported ZERO (not a hole).
            assert backend.allocation(0, size) == [
                Extent(BLOCK, ZERO),
                Extent(BLOCK, DATA),
                Extent(BLOCK, ZERO),
                Extent(BLOCK, DATA),
            ]
            assert backend.read(0, BLOCK) == bytes(BLOCK)
            assert backend.read(BLOCK, BLOCK) == pattern(BLOCK, BLOCK, 5)

    def test_io_errors_become_backend_io_errors(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        def full(fd: int, offset: int, data: bytes) -> None:
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(_file, "pwrite_full", full)
        with FileBackend(tmp_path / "disk.raw", size=BLOCK) as backend:
            bitmap = backend.add_bitmap("b")
            with pytest.raises(BackendIOError) as caught:
                backend.write(0, b"x")
            assert caught.value.errno == errno.ENOSPC
            assert nbd_errno(caught.value) == Errno.ENOSPC
            assert bitmap.extents(0, BLOCK) == [Extent(BLOCK, 0)]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(operations=st.lists(_operation, max_size=10))
def test_file_backend_agrees_with_a_model(operations: list[tuple[str, int, int, int]]) -> None:
    size = 200_000
    with tempfile.TemporaryDirectory() as directory:
        backend = FileBackend(Path(directory) / "disk.raw", size=size)
        model = bytearray(size)
        with backend:
            for kind, offset, length, seed in operations:
                offset %= size
                length = min(length, size - offset)
                if kind == "write":
                    piece = pattern(offset, length, seed)
                    backend.write(offset, piece)
                    model[offset : offset + length] = piece
                elif kind == "write_zero_bytes":
                    backend.write(offset, bytes(length))
                    model[offset : offset + length] = bytes(length)
                else:
                    if kind == "trim":
                        backend.trim(offset, length)
                    else:
                        backend.write_zeroes(offset, length, may_trim=kind == "zero")
                    model[offset : offset + length] = bytes(length)
            assert backend.read(0, size) == bytes(model)
            assert_truthful(backend, 0, size)


# --- layered backend ------------------------------------------------------------------------------


@pytest.fixture
def chain(tmp_path: Path) -> list[Path]:
    """A three-layer chain, 8 blocks big, data at 64 KiB-aligned places:

    block:  0  1  2  3  4  5  6  7
    top     .  .  T  .  T  .  .  .
    mid     .  M  M  .  .  .  .  .
    base    B  B  B  .  .  B  .  .     (base is only 6 blocks long)
    """
    top, mid, base = tmp_path / "top.raw", tmp_path / "mid.raw", tmp_path / "base.raw"
    write_raw(
        top,
        8 * BLOCK,
        {2 * BLOCK: pattern(2 * BLOCK, BLOCK, 1), 4 * BLOCK: pattern(4 * BLOCK, BLOCK, 1)},
    )
    write_raw(mid, 8 * BLOCK, {BLOCK: pattern(BLOCK, 2 * BLOCK, 2)})
    write_raw(
        base, 6 * BLOCK, {0: pattern(0, 3 * BLOCK, 3), 5 * BLOCK: pattern(5 * BLOCK, BLOCK, 3)}
    )
    return [top, mid, base]


def chain_contents() -> bytes:
    """What the ``chain`` fixture reads as."""
    expected = bytearray(8 * BLOCK)
    expected[0:BLOCK] = pattern(0, BLOCK, 3)
    expected[BLOCK : 2 * BLOCK] = pattern(BLOCK, BLOCK, 2)
    expected[2 * BLOCK : 3 * BLOCK] = pattern(2 * BLOCK, BLOCK, 1)
    expected[4 * BLOCK : 5 * BLOCK] = pattern(4 * BLOCK, BLOCK, 1)
    expected[5 * BLOCK : 6 * BLOCK] = pattern(5 * BLOCK, BLOCK, 3)
    return bytes(expected)


class TestLayeredBackend:
    def test_depth_and_reads_follow_the_topmost_layer(self, chain: list[Path]) -> None:
        with LayeredBackend(chain, read_only=True) as backend:
            assert backend.size == 8 * BLOCK  # the largest layer
            assert backend.allocation_depth(0, 8 * BLOCK) == [
                Extent(BLOCK, 3),
                Extent(BLOCK, 2),
                Extent(BLOCK, 1),
                Extent(BLOCK, 0),
                Extent(BLOCK, 1),
                Extent(BLOCK, 3),
                Extent(2 * BLOCK, 0),
            ]
            assert backend.allocation(0, 8 * BLOCK) == [
                Extent(3 * BLOCK, DATA),
                Extent(BLOCK, HOLE),
                Extent(2 * BLOCK, DATA),
                Extent(2 * BLOCK, HOLE),
            ]
            assert backend.read(0, 8 * BLOCK) == chain_contents()
            assert backend.allocation_depth(BLOCK + 5, BLOCK) == [
                Extent(BLOCK - 5, 2),
                Extent(5, 1),
            ]
            assert backend.init_state() == InitFlag.SPARSE

    def test_writes_go_to_the_top_only(self, chain: list[Path]) -> None:
        lower_digests = [file_digest(path) for path in chain[1:]]
        expected = bytearray(chain_contents())
        with LayeredBackend(chain) as backend:
            backend.write(3 * BLOCK, pattern(3 * BLOCK, BLOCK, 7))
            backend.write(0, pattern(0, BLOCK, 8))
            expected[3 * BLOCK : 4 * BLOCK] = pattern(3 * BLOCK, BLOCK, 7)
            expected[0:BLOCK] = pattern(0, BLOCK, 8)
            assert backend.read(0, 8 * BLOCK) == bytes(expected)
            assert backend.allocation_depth(0, 8 * BLOCK) == [
                Extent(BLOCK, 1),
                Extent(BLOCK, 2),
                Extent(3 * BLOCK, 1),
                Extent(BLOCK, 3),
                Extent(2 * BLOCK, 0),
            ]
        assert [file_digest(path) for path in chain[1:]] == lower_digests
        assert chain[0].read_bytes()[3 * BLOCK : 4 * BLOCK] == pattern(3 * BLOCK, BLOCK, 7)

    def test_partial_block_write_keeps_lower_layer_bytes(self, chain: list[Path]) -> None:
        # 10 bytes in the middle of a base-only block: the top file must not
        # hide the rest of the base's block behind zeroes.
        with LayeredBackend(chain) as backend:
            backend.write(100, b"0123456789")
            expected = bytearray(chain_contents())
            expected[100:110] = b"0123456789"
            assert backend.read(0, 8 * BLOCK) == bytes(expected)
            assert backend.allocation_depth(100, 10) == [Extent(10, 1)]
            assert backend.allocation_depth(BLOCK, BLOCK) == [Extent(BLOCK, 2)]
            # A partial write at the export's end, in a block only one layer has.
            backend.write(8 * BLOCK - 3, b"end")
            assert backend.read(8 * BLOCK - 5, 5) == b"\0\0end"

    def test_trim_and_zero_never_reexpose_lower_layers(self, chain: list[Path]) -> None:
        lower_digests = [file_digest(path) for path in chain[1:]]
        with LayeredBackend(chain) as backend:
            assert not backend.can_fast_zero()
            backend.trim(0, BLOCK)  # base data under it
            backend.write_zeroes(BLOCK, BLOCK, may_trim=True)  # mid data under it
            backend.write_zeroes(2 * BLOCK, BLOCK, may_trim=False)  # top data
            with pytest.raises(FastZeroUnsupported):
                backend.write_zeroes(5 * BLOCK, BLOCK, may_trim=True, fast=True)
            assert backend.read(0, 3 * BLOCK) == bytes(3 * BLOCK)
            assert backend.allocation(0, 8 * BLOCK) == [
                Extent(3 * BLOCK, ZERO),
                Extent(BLOCK, HOLE),
                Extent(2 * BLOCK, DATA),
                Extent(2 * BLOCK, HOLE),
            ]
            assert backend.allocation_depth(0, 8 * BLOCK) == [
                Extent(3 * BLOCK, 1),
                Extent(BLOCK, 0),
                Extent(BLOCK, 1),
                Extent(BLOCK, 3),
                Extent(2 * BLOCK, 0),
            ]
            assert backend.read(5 * BLOCK, BLOCK) == pattern(5 * BLOCK, BLOCK, 3)
            assert_truthful(backend, 0, 8 * BLOCK)
            backend.write(BLOCK, pattern(BLOCK, 100, 5))  # data over known-zero
            assert backend.allocation(BLOCK, BLOCK) == [
                Extent(100, DATA),
                Extent(BLOCK - 100, ZERO),
            ]
        assert [file_digest(path) for path in chain[1:]] == lower_digests
        # The zeroes are in the top file: a new process still reads zeroes.
        with LayeredBackend(chain, read_only=True) as reopened:
            assert reopened.read(0, BLOCK) == bytes(BLOCK)
            assert reopened.allocation_depth(0, BLOCK) == [Extent(BLOCK, 1)]

    def test_read_only_chain(self, chain: list[Path]) -> None:
        digests = [file_digest(path) for path in chain]
        with LayeredBackend(chain, read_only=True) as backend:
            with pytest.raises(ReadOnlyError):
                backend.write(0, b"x")
            with pytest.raises(ReadOnlyError):
                backend.trim(0, BLOCK)
        assert [file_digest(path) for path in chain] == digests

    def test_explicit_size_and_all_zero_chain(self, tmp_path: Path) -> None:
        top, base = tmp_path / "top.raw", tmp_path / "base.raw"
        write_raw(top, 0, {})
        write_raw(base, 2 * BLOCK, {0: bytes(BLOCK)})  # data, but zero bytes
        with LayeredBackend([top, base], size=4 * BLOCK) as backend:
            assert backend.size == 4 * BLOCK
            assert backend.allocation_depth(0, 4 * BLOCK) == [
                Extent(BLOCK, 2),
                Extent(3 * BLOCK, 0),
            ]
            assert backend.init_state() == InitFlag.SPARSE | InitFlag.ZERO
            backend.write(3 * BLOCK, pattern(3 * BLOCK, BLOCK, 1))  # past every layer's end
            assert backend.read(3 * BLOCK, BLOCK) == pattern(3 * BLOCK, BLOCK, 1)
            assert backend.init_state() == InitFlag.SPARSE

    def test_missing_layer_is_an_error(self, chain: list[Path], tmp_path: Path) -> None:
        with pytest.raises(StorageOpenError, match=r"layer 2 .*nope.raw: does not exist"):
            LayeredBackend([chain[0], tmp_path / "nope.raw"])
        with pytest.raises(StorageOpenError, match="at least one"):
            LayeredBackend([])


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(operations=st.lists(_operation, max_size=8))
def test_layered_backend_agrees_with_a_model(operations: list[tuple[str, int, int, int]]) -> None:
    size = 200_000
    with tempfile.TemporaryDirectory() as directory:
        top, base = Path(directory) / "top.raw", Path(directory) / "base.raw"
        write_raw(base, size, {0: pattern(0, size, 99)})
        write_raw(top, size // 2, {BLOCK: pattern(BLOCK, BLOCK, 98)})
        model = bytearray(pattern(0, size, 99))
        model[BLOCK : 2 * BLOCK] = pattern(BLOCK, BLOCK, 98)
        with LayeredBackend([top, base]) as backend:
            assert backend.read(0, size) == bytes(model)
            for kind, offset, length, seed in operations:
                offset %= size
                length = min(length, size - offset)
                if kind == "write":
                    piece = pattern(offset, length, seed)
                    backend.write(offset, piece)
                    model[offset : offset + length] = piece
                elif kind == "write_zero_bytes":
                    backend.write(offset, bytes(length))
                    model[offset : offset + length] = bytes(length)
                else:
                    if kind == "trim":
                        backend.trim(offset, length)
                    else:
                        backend.write_zeroes(offset, length, may_trim=kind == "zero")
                    model[offset : offset + length] = bytes(length)
                assert backend.read(0, size) == bytes(model)
            assert_truthful(backend, 0, size)
            depths = backend.allocation_depth(0, size)
            assert sum(e.length for e in depths) == size
            assert {e.flags for e in depths} <= {1, 2}  # the base has data everywhere
        with LayeredBackend([top, base], read_only=True) as reopened:
            assert reopened.read(0, size) == bytes(model)


# --- factory and registry ------------------------------------------------------------------


class TestOpenBackend:
    def test_memory_with_bitmaps(self) -> None:
        export = ExportConfig(
            name="m", size=MiB, bitmaps=(BitmapConfig("b0"), BitmapConfig("b1", 512))
        )
        with open_backend(export) as backend:
            assert isinstance(backend, MemoryBackend)
            assert backend.bitmaps["b1"].granularity == 512
            assert backend.metadata_contexts()[-2:] == [
                "qemu:dirty-bitmap:b0",
                "qemu:dirty-bitmap:b1",
            ]

    def test_file_and_layers(self, chain: list[Path], tmp_path: Path) -> None:
        file_export = ExportConfig(name="f", size=BLOCK, backend="file", path=tmp_path / "f.raw")
        with open_backend(file_export) as backend:
            assert isinstance(backend, FileBackend) and backend.size == BLOCK
        layered = ExportConfig(name="l", size=8 * BLOCK, backend="layers", layers=tuple(chain))
        with open_backend(layered) as backend:
            assert isinstance(backend, LayeredBackend)
            assert backend.read(0, 8 * BLOCK) == chain_contents()

    def test_registry_shares_one_backend_per_export(self) -> None:
        exports = [ExportConfig(name="a", size=MiB), ExportConfig(name="b", size=MiB)]
        with ExportRegistry(exports) as registry:
            first = registry.backend("a")
            assert registry.backend(exports[0]) is first
            assert registry.backend("b") is not first
            # Two "connections" to export a: a write through one is seen by the other.
            first.write(0, pattern(0, 100, 1))
            assert registry.backend("a").read(0, 100) == pattern(0, 100, 1)
            assert registry.backend("b").read(0, 100) == bytes(100)
            with pytest.raises(KeyError):
                registry.backend("c")
