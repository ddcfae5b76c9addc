"""Low-level helpers for sparse raw files: full reads/writes, data runs, fallocate.

``fallocate(2)`` is reached through ctypes because :mod:`os` only exposes
``posix_fallocate``, which cannot punch holes or zero ranges.
"""

from __future__ import annotations

import ctypes
import errno
import os
from collections.abc import Iterator
from typing import Any

FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
FALLOC_FL_ZERO_RANGE = 0x10

_UNSUPPORTED_ERRNOS = frozenset({errno.EOPNOTSUPP, errno.ENOSYS, errno.ENOTSUP, errno.EINVAL})
"""Errors meaning "this file system cannot do that fallocate mode" (EINVAL included:
some file systems answer it for modes they do not know)."""

_ZERO_BLOCK = bytes(1024 * 1024)
IO_PIECE = len(_ZERO_BLOCK)
"""Largest single pread/pwrite we issue (keeps memory bounded on huge requests)."""


def _load_fallocate() -> Any:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        function = libc.fallocate
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    function.restype = ctypes.c_int
    return function


_fallocate = _load_fallocate()


def fallocate(fd: int, mode: int, offset: int, length: int) -> bool:
    """Call ``fallocate(fd, mode, offset, length)``.

    Returns False when the platform or file system does not support ``mode``;
    raises :class:`OSError` for real failures (ENOSPC, EIO, ...).
    """
    if _fallocate is None:
        return False
    if _fallocate(fd, mode, offset, length) == 0:
        return True
    err = ctypes.get_errno()
    if err in _UNSUPPORTED_ERRNOS:
        return False
    raise OSError(err, f"fallocate(mode={mode:#x}): {os.strerror(err)}")


def pread_full(fd: int, offset: int, length: int) -> bytes:
    """Read exactly ``length`` bytes; bytes past end of file read as zeroes."""
    pieces: list[bytes] = []
    done = 0
    while done < length:
        piece = os.pread(fd, min(length - done, IO_PIECE), offset + done)
        if not piece:
            pieces.append(bytes(length - done))
            break
        pieces.append(piece)
        done += len(piece)
    return b"".join(pieces)


def pwrite_full(fd: int, offset: int, data: bytes | bytearray | memoryview) -> None:
    """Write all of ``data`` at ``offset`` (retrying short writes)."""
    view = memoryview(data)
    done = 0
    while done < len(view):
        done += os.pwrite(fd, view[done : done + IO_PIECE], offset + done)


def write_zero_bytes(fd: int, offset: int, length: int) -> None:
    """Write real zero bytes over ``[offset, offset + length)`` (allocates blocks)."""
    done = 0
    while done < length:
        piece = min(length - done, IO_PIECE)
        pwrite_full(fd, offset + done, _ZERO_BLOCK[:piece])
        done += piece


def data_runs(fd: int, start: int, end: int) -> Iterator[tuple[int, int]]:
    """Yield ``(run_start, run_end)`` of the file's data (not holes) inside ``[start, end)``.

    Uses ``SEEK_DATA``/``SEEK_HOLE``, so runs have the file system's allocation
    granularity; everything past end of file is a hole.
    """
    file_end = min(end, os.fstat(fd).st_size)
    pos = start
    while pos < file_end:
        try:
            data_start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # no data after pos
                return
            raise
        if data_start >= file_end:
            return
        hole_start = os.lseek(fd, data_start, os.SEEK_HOLE)
        yield data_start, min(hole_start, file_end)
        pos = hole_start


def is_all_zero(data: bytes | bytearray) -> bool:
    """True when every byte of ``data`` is zero (C speed)."""
    return data.count(0) == len(data)
