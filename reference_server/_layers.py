"""A thin-provisioned backing chain of sparse raw files (the data behind
``qemu:allocation-depth``).

``paths[0]`` is the top (active) layer.  A byte is allocated in a layer where
that file has data (``SEEK_DATA``; past a layer's end of file is unallocated).
A read takes each byte from the topmost layer that has it allocated, else zero;
its depth is that layer's 1-based index, 0 if none.

Writes go to the top file.  Because a raw file allocates whole file-system
blocks, a write that covers only part of a block the top does not yet hold
would hide the lower layers' bytes in the rest of that block; so writes are
copy-on-write at the top file's block size: the block is filled from the
chain's current contents first.

Trim and write-zeroes must make the range read as zero, not re-expose lower
layers: they write zero bytes into the top file (persistent, unlike a punched
hole) and remember the range as known-zero, reported as ``ZERO`` with depth 1.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from ._backend import DATA, HOLE_ZERO, ZERO, Backend, Run
from ._extents import RangeMap, merge_runs, overlay_runs
from ._file import file_runs
from ._rawfile import pread_full, pwrite_full, write_zero_bytes
from ._types import StorageOpenError

_MIN_COW_BLOCK = 4096


class LayeredBackend(Backend):
    """A backing chain: ``paths[0]`` on top.  Every layer file must exist.

    ``size`` defaults to the largest layer.  Only the top file is ever written,
    and not at all when ``read_only``.
    """

    def __init__(
        self, paths: Sequence[Path | str], size: int | None = None, read_only: bool = False
    ) -> None:
        if not paths:
            raise StorageOpenError("a layered export needs at least one layer file")
        self.paths = [Path(path) for path in paths]
        self._fds: list[int] = []
        try:
            for index, path in enumerate(self.paths):
                if not path.is_file():
                    what = "does not exist" if not path.exists() else "is not a regular file"
                    raise StorageOpenError(f"layer {index + 1} {path}: {what}")
                writable = index == 0 and not read_only
                flags = (os.O_RDWR if writable else os.O_RDONLY) | os.O_CLOEXEC
                try:
                    self._fds.append(os.open(path, flags))
                except OSError as exc:
                    raise StorageOpenError(f"layer {index + 1} {path}: {exc.strerror}") from exc
        except BaseException:
            self._close()
            raise
        if size is None:
            size = max(os.fstat(fd).st_size for fd in self._fds)
        super().__init__(size, read_only)
        self._known_zero: RangeMap[bool] = RangeMap(size, False)
        self._cow_block = max(_MIN_COW_BLOCK, os.fstat(self._fds[0]).st_blksize)

    # --- where each byte comes from ---------------------------------------------------

    def _layer_runs(self, start: int, end: int) -> list[Run]:
        """``(start, end, depth)`` runs from the files alone (known-zero not applied)."""
        unresolved = [(start, end)]
        resolved: list[Run] = []
        for depth, fd in enumerate(self._fds, start=1):
            still_unresolved: list[tuple[int, int]] = []
            for run_start, run_end in unresolved:
                for s, e, is_data in file_runs(fd, run_start, run_end):
                    if is_data:
                        resolved.append((s, e, depth))
                    else:
                        still_unresolved.append((s, e))
            unresolved = still_unresolved
            if not unresolved:
                break
        resolved.extend((s, e, 0) for s, e in unresolved)
        resolved.sort()
        return merge_runs(resolved)

    _KNOWN_ZERO = -1
    """Source "depth" of ranges this process zeroed: they read as zero whatever the files hold."""

    def _source_runs(self, start: int, end: int) -> list[Run]:
        """``(start, end, depth)`` with known-zero ranges as depth ``_KNOWN_ZERO``."""
        known = [
            (s, e, self._KNOWN_ZERO if zero else None)
            for s, e, zero in self._known_zero.runs(start, end)
        ]
        return overlay_runs(self._layer_runs(start, end), known)

    def _depth_runs(self, start: int, end: int) -> list[Run]:
        # Known-zero ranges hold zero bytes written into the top layer: depth 1.
        return [
            (s, e, 1 if depth == self._KNOWN_ZERO else depth)
            for s, e, depth in self._source_runs(start, end)
        ]

    def _allocation_runs(self, start: int, end: int) -> list[Run]:
        flags_for_depth = {0: HOLE_ZERO, self._KNOWN_ZERO: ZERO}
        runs = self._source_runs(start, end)
        return [(s, e, flags_for_depth.get(depth, DATA)) for s, e, depth in runs]

    # --- data path -----------------------------------------------------------------------

    def _read(self, offset: int, length: int) -> bytes:
        result = bytearray(length)
        for start, end, depth in self._source_runs(offset, offset + length):
            if depth > 0:
                data = pread_full(self._fds[depth - 1], start, end - start)
                result[start - offset : end - offset] = data
        return bytes(result)

    def _copy_on_write_edges(self, offset: int, end: int) -> None:
        """Before ``[offset, end)`` is written to the top file, give the top file the
        chain's current bytes for the rest of the partial blocks at both edges."""
        block = self._cow_block
        head = offset - offset % block
        tail = min(self.size, -(-end // block) * block)
        # Read both edges before writing either: the first write makes the
        # whole block top-layer data, hiding what the second read needs.
        before = self._read(head, offset - head) if head < offset else b""
        after = self._read(end, tail - end) if end < tail else b""
        if before:
            pwrite_full(self._fds[0], head, before)
        if after:
            pwrite_full(self._fds[0], end, after)

    def _write(self, offset: int, data: bytes) -> None:
        self._copy_on_write_edges(offset, offset + len(data))
        pwrite_full(self._fds[0], offset, data)
        self._known_zero.set(offset, offset + len(data), False)

    def _zero(self, offset: int, length: int) -> None:
        self._copy_on_write_edges(offset, offset + length)
        write_zero_bytes(self._fds[0], offset, length)
        self._known_zero.set(offset, offset + length, True)

    def _trim(self, offset: int, length: int) -> None:
        self._zero(offset, length)

    def _write_zeroes(self, offset: int, length: int, *, may_trim: bool, fast: bool) -> None:
        # can_fast_zero() is False, so the base class already refused fast=True.
        self._zero(offset, length)

    def _flush(self) -> None:
        if not self.read_only:
            os.fdatasync(self._fds[0])

    def _close(self) -> None:
        while self._fds:
            os.close(self._fds.pop())
