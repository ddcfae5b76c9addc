"""A raw (possibly sparse) file as an export.

Allocation is what the file system says through ``SEEK_DATA``/``SEEK_HOLE``, at
its own block granularity (4 KiB on ext4): that is the truth the file reports.
Trim and write-zeroes use ``fallocate`` (punch hole, zero range) and fall back
to writing zero bytes where the file system cannot.

ext4 and xfs report ``FALLOC_FL_ZERO_RANGE``'s unwritten extents as holes to
``SEEK_DATA``, so ranges this process zeroed with ``NO_HOLE`` are remembered in
memory and reported as allocated zeroes (``ZERO``, depth 1) rather than holes.
"""

from __future__ import annotations

import os
from pathlib import Path

from ._backend import DATA, HOLE_ZERO, ZERO, Backend, Run
from ._extents import RangeMap, overlay_runs
from ._rawfile import (
    FALLOC_FL_KEEP_SIZE,
    FALLOC_FL_PUNCH_HOLE,
    FALLOC_FL_ZERO_RANGE,
    data_runs,
    fallocate,
    pread_full,
    pwrite_full,
    write_zero_bytes,
)
from ._types import FastZeroUnsupported, StorageOpenError

_PUNCH = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE


def file_runs(fd: int, start: int, end: int) -> list[tuple[int, int, bool]]:
    """``(start, end, is_data)`` runs of a file covering ``[start, end)``; past EOF is hole."""
    runs: list[tuple[int, int, bool]] = []
    position = start
    for data_start, data_end in data_runs(fd, start, end):
        if data_start > position:
            runs.append((position, data_start, False))
        runs.append((data_start, data_end, True))
        position = data_end
    if position < end:
        runs.append((position, end, False))
    return runs


class FileBackend(Backend):
    """A raw file.  Created sparse with ``size`` bytes when missing (unless read-only).

    ``size`` defaults to the file's size.  When the export is larger than the
    file, the tail reads as a hole and writes there grow the file; when
    smaller, only the first ``size`` bytes are exported.
    """

    def __init__(
        self, path: Path | str, read_only: bool = False, *, size: int | None = None
    ) -> None:
        self.path = Path(path)
        self._fd = self._open(self.path, read_only, size)
        if size is None:
            size = os.fstat(self._fd).st_size
        super().__init__(size, read_only)
        self._known_zero: RangeMap[bool] = RangeMap(size, False)
        self._can_punch = not read_only and self._probe_punch(size)
        self._can_zero_range: bool | None = None  # unknown until first tried

    @staticmethod
    def _open(path: Path, read_only: bool, size: int | None) -> int:
        if path.is_dir():
            raise StorageOpenError(f"{path}: is a directory, not a raw image file")
        try:
            if read_only:
                return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            if not path.exists():
                if size is None:
                    raise StorageOpenError(f"{path}: file does not exist and no size was given")
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
                os.ftruncate(fd, size)
                return fd
            return os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except OSError as exc:
            raise StorageOpenError(f"{path}: cannot open: {exc.strerror}") from exc

    def _probe_punch(self, size: int) -> bool:
        """Can this file system punch holes?  Tried past end of file, where it changes nothing."""
        try:
            return fallocate(self._fd, _PUNCH, max(os.fstat(self._fd).st_size, size) + 4096, 1)
        except OSError:
            return False

    # --- data path ----------------------------------------------------------------

    def _read(self, offset: int, length: int) -> bytes:
        return pread_full(self._fd, offset, length)

    def _write(self, offset: int, data: bytes) -> None:
        pwrite_full(self._fd, offset, data)
        self._known_zero.set(offset, offset + len(data), False)

    def _punch_or_write(self, offset: int, length: int, *, fast: bool) -> None:
        if self._can_punch and fallocate(self._fd, _PUNCH, offset, length):
            self._known_zero.set(offset, offset + length, False)  # now a real hole
            return
        if fast:
            raise FastZeroUnsupported(f"{self.path}: the file system cannot punch holes")
        write_zero_bytes(self._fd, offset, length)
        self._known_zero.set(offset, offset + length, True)

    def _trim(self, offset: int, length: int) -> None:
        self._punch_or_write(offset, length, fast=False)

    def _write_zeroes(self, offset: int, length: int, *, may_trim: bool, fast: bool) -> None:
        if may_trim:
            self._punch_or_write(offset, length, fast=fast)
            return
        # NO_HOLE: the range must stay allocated.  ZERO_RANGE without KEEP_SIZE
        # also grows a file shorter than the export.
        if self._can_zero_range is not False:
            self._can_zero_range = fallocate(self._fd, FALLOC_FL_ZERO_RANGE, offset, length)
        if not self._can_zero_range:
            if fast:
                raise FastZeroUnsupported(f"{self.path}: the file system cannot zero ranges")
            write_zero_bytes(self._fd, offset, length)
        self._known_zero.set(offset, offset + length, True)

    def can_fast_zero(self) -> bool:
        return self._can_punch

    def _flush(self) -> None:
        if not self.read_only:
            os.fdatasync(self._fd)

    def _cache(self, offset: int, length: int) -> None:
        if length:
            os.posix_fadvise(self._fd, offset, length, os.POSIX_FADV_WILLNEED)

    def _close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    # --- status ---------------------------------------------------------------------

    def _allocation_runs(self, start: int, end: int) -> list[Run]:
        runs = [
            (s, e, DATA if is_data else HOLE_ZERO)
            for s, e, is_data in file_runs(self._fd, start, end)
        ]
        known = [(s, e, ZERO if zero else None) for s, e, zero in self._known_zero.runs(start, end)]
        return overlay_runs(runs, known)

    def _depth_runs(self, start: int, end: int) -> list[Run]:
        runs = self._allocation_runs(start, end)
        return [(s, e, 0 if value == HOLE_ZERO else 1) for s, e, value in runs]
