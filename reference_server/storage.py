"""Storage for the reference server's exports: the data side, no networking.

Three backends share the :class:`Backend` API (read, write, trim,
write-zeroes, flush, cache, and the data of the metadata contexts
``base:allocation``, ``qemu:allocation-depth`` and ``qemu:dirty-bitmap:NAME``):

- :class:`MemoryBackend`: sparse RAM disk, exact to the byte;
- :class:`FileBackend`: a raw file, allocation from ``SEEK_DATA``/``SEEK_HOLE``;
- :class:`LayeredBackend`: a backing chain of raw files (allocation depth).

Errors map to NBD error values with :func:`nbd_errno`: :class:`ReadOnlyError`
is ``NBD_EPERM``, :class:`BackendIOError` ``NBD_EIO`` (``NBD_ENOSPC`` when out
of space), :class:`FastZeroUnsupported` ``NBD_ENOTSUP``, ``ValueError`` (range
outside the export) ``NBD_EINVAL``.

Multi-connection: the server keeps ONE backend per export in an
:class:`ExportRegistry` and shares it between all its connections, so a write
is visible to every connection once it returns and a flush covers all of them;
this is why the server may advertise ``NBD_FLAG_CAN_MULTI_CONN``.  Each backend
has one lock, so a server may call it from a thread executor.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

from ._backend import Backend
from ._bitmap import DEFAULT_GRANULARITY, DirtyBitmap
from ._file import FileBackend
from ._layers import LayeredBackend
from ._memory import MemoryBackend
from ._types import (
    BackendIOError,
    Extent,
    FastZeroUnsupported,
    ReadOnlyError,
    StorageError,
    StorageOpenError,
    nbd_errno,
)
from .config import ExportConfig


def open_backend(export: ExportConfig) -> Backend:
    """Open the storage an export's configuration describes, with its dirty bitmaps."""
    backend: Backend
    if export.backend == "memory":
        backend = MemoryBackend(export.size, read_only=export.read_only)
    elif export.backend == "file":
        if export.path is None:
            raise StorageOpenError(f'export "{export.name}": backend "file" needs a path')
        backend = FileBackend(export.path, export.read_only, size=export.size)
    elif export.backend == "layers":
        backend = LayeredBackend(export.layers, export.size, export.read_only)
    else:
        raise StorageOpenError(f'export "{export.name}": unknown backend "{export.backend}"')
    for bitmap in export.bitmaps:
        backend.add_bitmap(bitmap.name, bitmap.granularity)
    return backend


class ExportRegistry:
    """One shared backend per export for a whole server process, opened on first use."""

    def __init__(self, exports: Iterable[ExportConfig]) -> None:
        self._exports = {export.name: export for export in exports}
        self._backends: dict[str, Backend] = {}
        self._lock = threading.Lock()

    def backend(self, export: ExportConfig | str) -> Backend:
        """The backend of ``export`` (a config or a name); ``KeyError`` for an unknown name."""
        name = export if isinstance(export, str) else export.name
        with self._lock:
            backend = self._backends.get(name)
            if backend is None:
                backend = self._backends[name] = open_backend(self._exports[name])
            return backend

    def open_all(self) -> None:
        """Open every export now, so configuration mistakes show at startup."""
        for name in self._exports:
            self.backend(name)

    def close(self) -> None:
        """Close every opened backend."""
        with self._lock:
            backends, self._backends = list(self._backends.values()), {}
        for backend in backends:
            backend.close()

    def __enter__(self) -> ExportRegistry:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


__all__ = [
    "DEFAULT_GRANULARITY",
    "Backend",
    "BackendIOError",
    "DirtyBitmap",
    "ExportRegistry",
    "Extent",
    "FastZeroUnsupported",
    "FileBackend",
    "LayeredBackend",
    "MemoryBackend",
    "ReadOnlyError",
    "StorageError",
    "StorageOpenError",
    "nbd_errno",
    "open_backend",
]
