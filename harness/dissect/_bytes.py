"""A direction's bytes left where the capture holds them, read when a message needs them.

A reassembled direction is a list of *pieces*: runs of stream bytes, each a run of one
frame's TCP payload.  A piece names where its bytes are in a :class:`Source`: the capture
file itself (read with ``pread`` when needed, so bulk data never sits in memory) or a
buffer (a decompressed capture, bytes handed to :func:`~harness.dissect.decode_streams`).
:class:`StreamBytes` reads ranges of the stream across pieces; :class:`CapturedData` is a
range left unread (a WRITE's payload, a READ's data) that behaves as the bytes it stands
for wherever it is used (``len``, slicing, ``bytes()``, ``==``, ``hex``).

Memory then follows the number of messages, not the number of bytes: a 1 GiB capture
of bulk writes costs a few megabytes of pieces and message records.
"""

from __future__ import annotations

import bisect
import os
from collections.abc import Iterator
from pathlib import Path

from harness.dissect.errors import CaptureError

_WINDOW = 4096
"""Bytes read from the file at once for small reads (message headers): consecutive small
messages in one frame cost one read, a bulk message costs one read for its header."""
_OLDER_WINDOWS = 7
"""Windows kept besides the last: the content rules compare a read's data with an older
read's, walking two places of the stream at once."""


class Source:
    """Where pieces' bytes are: ``read(offset, length)`` gives them."""

    def read(self, offset: int, length: int) -> bytes:
        raise NotImplementedError


class BufferSource(Source):
    """Bytes already in memory (a decompressed capture, streams given as bytes)."""

    __slots__ = ("buffer",)

    def __init__(self, buffer: bytes | bytearray | memoryview) -> None:
        self.buffer = memoryview(buffer)

    def read(self, offset: int, length: int) -> bytes:
        return bytes(self.buffer[offset : offset + length])


class FileSource(Source):
    """The capture file, read with ``pread``: nothing of it stays in memory.

    The file stays open as long as a decoded message may need its bytes.  A file that
    shrinks after decoding (rewritten in place) gives a clear :class:`CaptureError`, not
    wrong bytes.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self._file = open(path, "rb")  # noqa: SIM115 - lives as long as the decoded capture
        self.fd = self._file.fileno()

    def read(self, offset: int, length: int) -> bytes:
        data = os.pread(self.fd, length, offset)
        if len(data) < length:
            raise CaptureError(
                f"{self.path} changed after it was decoded: {length} bytes at file offset "
                f"{offset} are no longer there"
            )
        return data


class StreamBytes:
    """One direction's contiguous bytes (up to its first gap), read piece by piece.

    ``starts[i]`` is the stream offset of piece ``i``, ``places[i]`` where its bytes are in
    ``source``; the last piece ends at ``len(self)``.
    """

    __slots__ = ("_older", "_window", "_window_at", "length", "places", "source", "starts")

    def __init__(self, source: Source, starts: list[int], places: list[int], length: int) -> None:
        self.source = source
        self.starts = starts
        self.places = places
        self.length = length
        self._window_at = -1
        self._window = b""
        self._older: list[tuple[int, bytes]] = []

    @classmethod
    def of(cls, data: bytes | bytearray | memoryview) -> StreamBytes:
        """A stream of bytes already in memory (one piece)."""
        return cls(BufferSource(data), [0] if len(data) else [], [0] if len(data) else [],
                   len(data))

    def __len__(self) -> int:
        return self.length

    def _piece_end(self, index: int) -> int:
        return self.starts[index + 1] if index + 1 < len(self.starts) else self.length

    def read(self, start: int, end: int) -> bytes:
        """Bytes ``[start, end)`` (clamped to the stream, like slicing)."""
        window_at = self._window_at  # the hot path first: a header within the last window
        if window_at <= start and end <= window_at + len(self._window):
            return self._window[start - window_at : end - window_at]
        if end > self.length:
            end = self.length
        if start >= end:
            return b""
        for at, window in self._older:  # a few more: rules walk two places at once
            if at <= start and end <= at + len(window):
                return window[start - at : end - at]
        index = bisect.bisect_right(self.starts, start) - 1
        piece_end = self._piece_end(index)
        if end <= piece_end and end - start <= _WINDOW:
            # A small read (a header, a small READ's data): read a window of this piece
            # and keep it, the last few as well.
            window_end = min(piece_end, start + _WINDOW)
            offset = self.places[index] + start - self.starts[index]
            if self._window_at >= 0:
                self._older.insert(0, (self._window_at, self._window))
                del self._older[_OLDER_WINDOWS:]
            self._window = self.source.read(offset, window_end - start)
            self._window_at = start
            return self._window[: end - start]
        return b"".join(self._parts(start, end, index))

    def _parts(self, start: int, end: int, index: int) -> Iterator[bytes]:
        position = start
        while position < end:
            piece_end = min(self._piece_end(index), end)
            offset = self.places[index] + position - self.starts[index]
            yield self.source.read(offset, piece_end - position)
            position = piece_end
            index += 1

    def __getitem__(self, key: slice) -> bytes:
        if not isinstance(key, slice) or key.step not in (None, 1):
            raise TypeError("StreamBytes supports only contiguous slices")
        start, stop, _ = key.indices(self.length)
        return self.read(start, stop)

    def __bytes__(self) -> bytes:
        return self.read(0, self.length)

    def startswith(self, prefix: bytes) -> bool:
        return self.read(0, len(prefix)) == prefix

    def find(self, sub: bytes, start: int = 0) -> int:
        """The first offset at or after ``start`` where ``sub`` is, or -1 (rarely used: only
        to resynchronise after bytes that cannot be read: it reads 64 KiB, then twice as
        much each time, up to 4 MiB)."""
        step = 1 << 16
        position = max(start, 0)
        while position < self.length:
            chunk_end = min(self.length, position + step + len(sub) - 1)
            found = self.read(position, chunk_end).find(sub)
            if found >= 0:
                return position + found
            position += step
            step = min(step * 2, 1 << 22)
        return -1

    def data(self, start: int, end: int) -> CapturedData:
        """Bytes ``[start, end)`` left unread: see :class:`CapturedData`."""
        return CapturedData(self, start, end if end < self.length else self.length)


class CapturedData:
    """A range of a stream, read only when its bytes are asked for.

    It stands in for ``bytes`` in a message's fields (bulk data): ``len()``, slicing
    (which gives ``bytes``), indexing, ``bytes()``, ``==`` with bytes, ``hex()``,
    ``repr()`` and iteration behave as on the bytes themselves.
    """

    __slots__ = ("_end", "_start", "_stream")

    def __init__(self, stream: StreamBytes, start: int, end: int) -> None:
        self._stream = stream
        self._start = start
        self._end = max(start, end)

    def __len__(self) -> int:
        return self._end - self._start

    def __bool__(self) -> bool:
        return self._end > self._start

    def __bytes__(self) -> bytes:
        return self._stream.read(self._start, self._end)

    def __getitem__(self, key: int | slice) -> int | bytes:
        if isinstance(key, slice):
            start, stop, step = key.indices(len(self))
            if step != 1:
                return bytes(self)[key]
            return self._stream.read(self._start + start, self._start + max(start, stop))
        index = key + len(self) if key < 0 else key
        if not 0 <= index < len(self):
            raise IndexError("CapturedData index out of range")
        return self._stream.read(self._start + index, self._start + index + 1)[0]

    def __iter__(self) -> Iterator[int]:
        return iter(bytes(self))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, CapturedData | bytes | bytearray | memoryview):
            return len(self) == len(other) and bytes(self) == bytes(other)
        return NotImplemented

    def __hash__(self) -> int:
        return hash(bytes(self))

    def hex(self, *args: object) -> str:
        return bytes(self).hex(*args)  # type: ignore[arg-type]

    def __repr__(self) -> str:
        return repr(bytes(self))
