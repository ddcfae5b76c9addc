"""The :class:`Backend` base: the checks, locking and bitmaps every backend shares.

Public methods validate the range, refuse writes on a read-only backend, take
the backend's lock, call the subclass's ``_`` method, mark the dirty bitmaps
and turn ``OSError`` into :class:`BackendIOError`.  Subclasses only say how
their storage reads, writes and reports allocation, as ``(start, end, value)``
runs; this class turns runs into clipped, merged :class:`Extent` lists.

Multi-connection consistency: a server process opens ONE backend per export and
shares it between all connections (see ``ExportRegistry``).  A write is visible
to every other connection as soon as it returns, and a flush on any connection
covers writes made through all of them, so the server may advertise
``NBD_FLAG_CAN_MULTI_CONN``.  The lock makes backends safe to call from a
thread executor.
"""

from __future__ import annotations

import abc
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from harness.protocol.constants import (
    BASE_ALLOCATION,
    QEMU_ALLOCATION_DEPTH,
    QEMU_DIRTY_BITMAP_PREFIX,
    InitFlag,
    StateFlag,
)

from ._bitmap import DEFAULT_GRANULARITY, DirtyBitmap
from ._extents import merge_runs
from ._rawfile import IO_PIECE, is_all_zero
from ._types import BackendIOError, Extent, FastZeroUnsupported, ReadOnlyError

Run = tuple[int, int, int]
"""``(start, end, value)``: bytes ``[start, end)`` share one status value."""

HOLE_ZERO = int(StateFlag.HOLE | StateFlag.ZERO)
ZERO = int(StateFlag.ZERO)
DATA = 0

T = TypeVar("T")


def runs_to_extents(runs: list[Run]) -> list[Extent]:
    """Merge runs and turn them into extents."""
    return [Extent(end - start, value) for start, end, value in merge_runs(runs)]


class Backend(abc.ABC):
    """The storage of one export.  See the module docstring for the contract."""

    size: int
    read_only: bool

    def __init__(self, size: int, read_only: bool) -> None:
        if size < 0:
            raise ValueError(f"export size must be >= 0, not {size}")
        self.size = size
        self.read_only = read_only
        self.bitmaps: dict[str, DirtyBitmap] = {}
        self._lock = threading.RLock()

    # --- helpers ---------------------------------------------------------------

    def _check_range(self, offset: int, length: int) -> None:
        if offset < 0 or length < 0 or offset + length > self.size:
            raise ValueError(
                f"range offset={offset} length={length} is outside the export (size {self.size})"
            )

    def _check_writable(self) -> None:
        if self.read_only:
            raise ReadOnlyError("the export is read-only")

    @contextmanager
    def _io(self, what: str) -> Iterator[None]:
        """Hold the lock and turn OS errors into :class:`BackendIOError`."""
        with self._lock:
            try:
                yield
            except OSError as exc:
                raise BackendIOError(f"{what}: {exc.strerror or exc}", exc.errno or 5) from exc

    def _mark(self, offset: int, length: int) -> None:
        for bitmap in self.bitmaps.values():
            bitmap.mark(offset, length)

    def _extents(
        self, offset: int, length: int, source: Callable[[int, int], list[Run]]
    ) -> list[Extent]:
        self._check_range(offset, length)
        if length == 0:
            return []
        with self._io("block status"):
            runs = source(offset, offset + length)
        extents = runs_to_extents(runs)
        # The contract: extents cover exactly the query.  A wrong subclass must
        # fail loudly here, never send a lie on the wire.
        if sum(extent.length for extent in extents) != length:
            raise AssertionError(f"{type(self).__name__} extents do not cover {offset}+{length}")
        return extents

    # --- data path ---------------------------------------------------------------

    def read(self, offset: int, length: int) -> bytes:
        """The ``length`` bytes at ``offset``."""
        self._check_range(offset, length)
        if length == 0:
            return b""
        with self._io("read"):
            data = self._read(offset, length)
        assert len(data) == length
        return data

    def read_into(self, offset: int, target: memoryview) -> None:
        """Fill ``target`` (a writable byte view) with the bytes at ``offset``.

        The server's read path: the reply buffer is allocated once per
        connection and the backend copies into it, instead of building a new
        ``bytes`` per request.
        """
        length = len(target)
        self._check_range(offset, length)
        if length == 0:
            return
        with self._io("read"):
            self._read_into(offset, target)

    def write(
        self, offset: int, data: bytes | bytearray | memoryview, *, fua: bool = False
    ) -> None:
        """Write ``data`` at ``offset``: the range becomes data (flags 0), even zero bytes.

        ``data`` may be a view of a buffer the caller reuses: backends copy it
        before returning and never keep a reference.
        """
        self._check_writable()
        self._check_range(offset, len(data))
        if not len(data):
            return
        with self._io("write"):
            self._write(offset, data)
            self._mark(offset, len(data))
            if fua:
                self._flush()

    def trim(self, offset: int, length: int, *, fua: bool = False) -> None:
        """Discard the range: it may become a hole and reads as zeroes afterwards."""
        self._check_writable()
        self._check_range(offset, length)
        if length == 0:
            return
        with self._io("trim"):
            self._trim(offset, length)
            self._mark(offset, length)
            if fua:
                self._flush()

    def write_zeroes(
        self, offset: int, length: int, *, may_trim: bool, fast: bool = False, fua: bool = False
    ) -> None:
        """Make the range read as zeroes.

        ``may_trim=False`` is ``NBD_CMD_FLAG_NO_HOLE``: the range must end up
        allocated.  ``fast=True`` is ``NBD_CMD_FLAG_FAST_ZERO``: raise
        :class:`FastZeroUnsupported` rather than write zero bytes.
        """
        self._check_writable()
        self._check_range(offset, length)
        if fast and not self.can_fast_zero():
            raise FastZeroUnsupported("this export cannot zero without writing data")
        if length == 0:
            return
        with self._io("write zeroes"):
            self._write_zeroes(offset, length, may_trim=may_trim, fast=fast)
            self._mark(offset, length)
            if fua:
                self._flush()

    def can_fast_zero(self) -> bool:
        """True if :meth:`write_zeroes` can (in general) work without writing data."""
        return False

    def flush(self) -> None:
        """Make every completed write durable."""
        with self._io("flush"):
            self._flush()

    def cache(self, offset: int, length: int) -> None:
        """Prefetch hint (``NBD_CMD_CACHE``): validates the range, may do nothing."""
        self._check_range(offset, length)
        with self._io("cache"):
            self._cache(offset, length)

    # --- status ------------------------------------------------------------------

    def allocation(self, offset: int, length: int) -> list[Extent]:
        """``base:allocation`` extents: ``StateFlag.HOLE`` / ``StateFlag.ZERO`` bits.

        Truthful: an extent with ZERO reads as zeroes; one with HOLE is not
        allocated.  The extents cover exactly the range, equal neighbours merged.
        """
        return self._extents(offset, length, self._allocation_runs)

    def allocation_depth(self, offset: int, length: int) -> list[Extent]:
        """``qemu:allocation-depth`` extents: 0 unallocated, 1 top layer, 2 next, ..."""
        return self._extents(offset, length, self._depth_runs)

    def segments(self, offset: int, length: int) -> list[tuple[int, int, bool]]:
        """``(offset, length, is_zero)`` covering the range; ``is_zero`` ranges read as zero.

        A structured read may send ``NBD_REPLY_TYPE_OFFSET_HOLE`` for them.
        """
        position = offset
        result: list[tuple[int, int, bool]] = []
        for extent in self.allocation(offset, length):
            is_zero = bool(extent.flags & StateFlag.ZERO)
            if result and result[-1][2] == is_zero:
                result[-1] = (result[-1][0], result[-1][1] + extent.length, is_zero)
            else:
                result.append((position, extent.length, is_zero))
            position += extent.length
        return result

    def is_plain_data(self, offset: int, length: int) -> bool:
        """True when :meth:`segments` would be one range that is not known to read as zero.

        A structured read of such a range is one data chunk; backends override
        this with something cheaper than computing the extents.
        """
        segments = self.segments(offset, length)
        return len(segments) == 1 and not segments[0][2]

    def init_state(self) -> InitFlag:
        """Experimental ``NBD_INFO_INIT_STATE`` bits, computed from the current contents.

        ``SPARSE`` when at least one hole exists, ``ZERO`` when the whole export
        reads as zeroes (ranges not reported ZERO are read and checked).
        """
        with self._io("init state"):
            runs = merge_runs(self._allocation_runs(0, self.size)) if self.size else []
            flags = InitFlag(0)
            if any(value & StateFlag.HOLE for _, _, value in runs):
                flags |= InitFlag.SPARSE
            if self._reads_as_zero(runs):
                flags |= InitFlag.ZERO
            return flags

    def _reads_as_zero(self, runs: list[Run]) -> bool:
        for start, end, value in runs:
            if value & StateFlag.ZERO:
                continue
            for piece_start in range(start, end, IO_PIECE):
                if not is_all_zero(self._read(piece_start, min(IO_PIECE, end - piece_start))):
                    return False
        return True

    # --- bitmaps and metadata contexts ---------------------------------------------

    def add_bitmap(self, name: str, granularity: int = DEFAULT_GRANULARITY) -> DirtyBitmap:
        """Start a dirty bitmap: it records every write, trim and write-zeroes from now on."""
        with self._lock:
            if name in self.bitmaps:
                raise ValueError(f"bitmap {name!r} already exists")
            bitmap = DirtyBitmap(name, self.size, granularity)
            self.bitmaps[name] = bitmap
            return bitmap

    def metadata_contexts(self) -> list[str]:
        """Names of every metadata context this backend can answer."""
        names = [BASE_ALLOCATION, QEMU_ALLOCATION_DEPTH]
        names.extend(QEMU_DIRTY_BITMAP_PREFIX + name for name in self.bitmaps)
        return names

    def block_status(self, context: str, offset: int, length: int) -> list[Extent]:
        """Extents of the named metadata context (``KeyError`` if unknown)."""
        if context == BASE_ALLOCATION:
            return self.allocation(offset, length)
        if context == QEMU_ALLOCATION_DEPTH:
            return self.allocation_depth(offset, length)
        if context.startswith(QEMU_DIRTY_BITMAP_PREFIX):
            bitmap = self.bitmaps.get(context[len(QEMU_DIRTY_BITMAP_PREFIX) :])
            if bitmap is not None:
                self._check_range(offset, length)
                return bitmap.extents(offset, length) if length else []
        raise KeyError(f"unknown metadata context {context!r}")

    # --- life cycle -------------------------------------------------------------------

    def close(self) -> None:
        """Release files; the backend must not be used afterwards."""
        with self._lock:
            self._close()

    def __enter__(self: T) -> T:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- what subclasses implement (called with the lock held) ------------------------------

    @abc.abstractmethod
    def _read(self, offset: int, length: int) -> bytes: ...

    def _read_into(self, offset: int, target: memoryview) -> None:
        """Copy the bytes at ``offset`` into ``target``; backends with a cheaper way override."""
        target[:] = self._read(offset, len(target))

    @abc.abstractmethod
    def _write(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        """Store ``data`` (copy it: the caller may reuse the buffer once this returns)."""

    @abc.abstractmethod
    def _trim(self, offset: int, length: int) -> None: ...

    @abc.abstractmethod
    def _write_zeroes(self, offset: int, length: int, *, may_trim: bool, fast: bool) -> None: ...

    @abc.abstractmethod
    def _allocation_runs(self, start: int, end: int) -> list[Run]:
        """``base:allocation`` runs covering ``[start, end)`` (need not be merged)."""

    @abc.abstractmethod
    def _depth_runs(self, start: int, end: int) -> list[Run]:
        """``qemu:allocation-depth`` runs covering ``[start, end)``."""

    def _flush(self) -> None:
        """Nothing to do for volatile storage."""
        return

    def _cache(self, offset: int, length: int) -> None:
        """No prefetching by default."""
        return

    def _close(self) -> None:
        """Nothing to release by default."""
        return


__all__ = [
    "DATA",
    "HOLE_ZERO",
    "ZERO",
    "Backend",
    "BackendIOError",
    "FastZeroUnsupported",
    "ReadOnlyError",
    "Run",
    "runs_to_extents",
]
