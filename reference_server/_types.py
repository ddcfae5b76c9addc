"""Values and errors shared by every storage backend."""

from __future__ import annotations

import errno as errno_module
from dataclasses import dataclass

from harness.errors import UserError
from harness.protocol.constants import Errno


@dataclass(frozen=True)
class Extent:
    """One run of the export with one status value.

    ``flags`` is the context's status value: ``StateFlag`` bits for
    ``base:allocation``, a depth for ``qemu:allocation-depth``, ``DirtyFlag``
    bits for a dirty bitmap.  ``length`` may exceed 32 bits (a 64 GiB hole is
    one extent): a server speaking 32-bit block status must split it.
    """

    length: int
    flags: int


class StorageError(Exception):
    """Base of every error a backend raises for an I/O request."""


class ReadOnlyError(StorageError):
    """A write, trim or write-zeroes on a read-only backend (NBD_EPERM)."""


class BackendIOError(StorageError):
    """The storage failed (NBD_EIO, or NBD_ENOSPC when ``errno`` says so)."""

    def __init__(self, message: str, errno: int = errno_module.EIO) -> None:
        super().__init__(message)
        self.errno = errno


class FastZeroUnsupported(StorageError):
    """A fast write-zeroes was asked for but would need writing data (NBD_ENOTSUP)."""


class StorageOpenError(StorageError, UserError):
    """A backend cannot be opened (missing layer, unreadable file...); a user mistake."""


def nbd_errno(exc: BaseException) -> Errno:
    """The NBD error value a server sends for an exception raised by a backend.

    ``ValueError`` (a range outside the export) maps to ``NBD_EINVAL``.
    """
    if isinstance(exc, ReadOnlyError):
        return Errno.EPERM
    if isinstance(exc, FastZeroUnsupported):
        return Errno.ENOTSUP
    if isinstance(exc, BackendIOError):
        out_of_space = exc.errno in (errno_module.ENOSPC, errno_module.EDQUOT)
        return Errno.ENOSPC if out_of_space else Errno.EIO
    if isinstance(exc, ValueError):
        return Errno.EINVAL
    if isinstance(exc, MemoryError):
        return Errno.ENOMEM
    return Errno.EIO
