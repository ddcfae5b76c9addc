"""Read frames from pcap and pcapng files, keeping every frame before a break.

A small reader of our own (rather than scapy's) because a truncated or corrupt
file must give every complete frame before the damage and then one clear
:class:`CaptureError` saying where and what broke.

The file is memory-mapped while it is read (a gzip-compressed one is decompressed into
memory first): a frame's bytes are a view of the mapping, and ``Frame.at`` says where
they are in the file, so that the reassembly keeps places, not copies, and the decoder
reads a message's bytes from the file only when it needs them
(:mod:`harness.dissect._bytes`).  Pages already read are dropped from the mapping as the
reader goes, so resident memory stays flat however large the file.
"""

from __future__ import annotations

import contextlib
import io
import mmap
import os
import stat
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from harness.dissect._bytes import BufferSource, FileSource, Source
from harness.dissect.errors import CaptureError
from harness.pcapformat import (
    BLOCK_EPB,
    BLOCK_IDB,
    BLOCK_PB,
    BLOCK_SPB,
    OPT_IF_TSOFFSET,
    OPT_IF_TSRESOL,
    PCAPNG_BYTE_ORDER,
    PCAPNG_SHB,
)

_PCAP_MAGICS = {
    b"\xd4\xc3\xb2\xa1": ("<", 1e-6),
    b"\xa1\xb2\xc3\xd4": (">", 1e-6),
    b"\x4d\x3c\xb2\xa1": ("<", 1e-9),
    b"\xa1\xb2\x3c\x4d": (">", 1e-9),
}
_MAX_BLOCK = 256 * 1024 * 1024  # a sanity bound: larger means a corrupt length
_DROP_EVERY = 64 * 1024 * 1024
"""Bytes of the mapping read between two drops of its pages from resident memory."""


@dataclass(frozen=True)
class Frame:
    """One captured packet: its 1-based number, time, link type and bytes.

    ``data`` is a view of the file's bytes, valid while the frames are being read;
    ``at`` is where it starts in the capture's :class:`Source` (``CaptureReader.source``).
    """

    number: int
    time: float
    linktype: int
    data: memoryview
    original_length: int
    at: int = 0


@dataclass
class _Interface:
    linktype: int
    snaplen: int
    resolution: float = 1e-6
    offset: float = 0.0


class CaptureReader:
    """A capture file opened for reading: its frames, and the :class:`Source` that gives
    the bytes of any frame again later (by ``Frame.at``)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.source: Source
        self._mapping: mmap.mmap | None = None
        self._error: CaptureError | None = None
        piped: bytes | None = None
        try:
            with self.path.open("rb") as handle:
                if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
                    piped = handle.read()  # a pipe (``lint <(zcat ...)``): read it whole
                    compressed = piped[:2] == b"\x1f\x8b"
                else:
                    compressed = handle.read(2) == b"\x1f\x8b"
                    size = handle.seek(0, 2)
                    if not compressed and size:
                        self._mapping = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
        except (OSError, ValueError) as exc:
            strerror = getattr(exc, "strerror", None)
            raise CaptureError(f"cannot read capture {path}: {strerror or exc}") from exc
        if self._mapping is not None:
            self.buffer: bytes | mmap.mmap = self._mapping
            self.source = FileSource(self.path)
        elif compressed:
            # A gzip-compressed capture (.pcapng.gz, as Wireshark also reads them): held
            # in memory, decompressed up to any damage (reported after its frames).
            self.buffer = self._decompress(piped)
            self.source = BufferSource(self.buffer)
        else:
            self.buffer = piped or b""
            self.source = BufferSource(self.buffer)

    def _decompress(self, piped: bytes | None) -> bytes:
        """The decompressed bytes, up to any damage (kept in ``_error``)."""
        parts: list[bytes] = []
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            with io.BytesIO(piped) if piped is not None else self.path.open("rb") as handle:
                while chunk := handle.read(1 << 20):
                    while chunk:
                        parts.append(inflater.decompress(chunk))
                        if not (inflater.eof and inflater.unused_data):
                            break
                        # Another gzip member follows (concatenated .gz files are one stream).
                        chunk = inflater.unused_data
                        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
            if not inflater.eof:
                parts.append(inflater.flush())
                raise EOFError(
                    "Compressed file ended before the end-of-stream marker was reached"
                )
        except (EOFError, OSError, zlib.error) as exc:
            self._error = CaptureError(
                f"{self.path}: truncated or corrupt compressed capture: {exc}"
            )
        return b"".join(parts)

    def frames(self) -> Iterator[Frame]:
        """Every frame in file order (see :func:`read_frames`)."""
        view = memoryview(self.buffer)
        try:
            yield from _frames_of(self.path, view, self)
            if self._error is not None:
                raise self._error
        except CaptureError:
            if self._error is not None:
                raise self._error from None
            raise
        finally:
            view.release()
            self.close_mapping()

    def dropped(self, upto: int) -> None:
        """The reader is past ``upto``: drop the mapping's pages before it from memory."""
        if self._mapping is not None and hasattr(mmap, "MADV_DONTNEED"):
            self._mapping.madvise(mmap.MADV_DONTNEED, 0, upto - upto % mmap.PAGESIZE)

    def close_mapping(self) -> None:
        if self._mapping is not None:
            # A frame view still held somewhere keeps it mapped until released.
            with contextlib.suppress(BufferError):
                self._mapping.close()


def read_frames(path: str | Path) -> Iterator[Frame]:
    """Yield every frame of a pcap or pcapng file in file order.

    Raises :class:`CaptureError` when the file cannot be opened or is not a
    capture (before yielding anything), or when it is truncated or corrupt
    (after yielding every complete frame before the damage).  A frame's ``data`` is a
    view valid until the next frame is read: copy it (``bytes()``) to keep it.
    """
    yield from CaptureReader(path).frames()


def _frames_of(path: Path, data: memoryview, reader: CaptureReader) -> Iterator[Frame]:
    head = bytes(data[:4])
    if head in _PCAP_MAGICS:
        yield from _read_pcap(path, data, head, reader)
    elif len(head) == 4 and struct.unpack("<I", head)[0] == PCAPNG_SHB:
        yield from _read_pcapng(path, data, reader)
    elif not head:
        raise CaptureError(f"{path}: empty file, not a pcap or pcapng capture")
    else:
        raise CaptureError(f"{path}: not a pcap or pcapng capture (starts with {head.hex()})")


_PCAP_RECORD = {"<": struct.Struct("<IIII"), ">": struct.Struct(">IIII")}


def _read_pcap(
    path: Path, data: memoryview, magic: bytes, reader: CaptureReader
) -> Iterator[Frame]:
    endian, resolution = _PCAP_MAGICS[magic]
    size = len(data)
    if size < 24:
        raise CaptureError(f"{path}: truncated pcap file header ({size} of 24 bytes)")
    _major, _minor, _zone, _sigfigs, _snaplen, network = struct.unpack_from(
        endian + "HHiIII", data, 4
    )
    linktype = network & 0x0FFFFFFF  # the top bits may carry an FCS length
    record = _PCAP_RECORD[endian]
    number = 0
    position = 24
    next_drop = _DROP_EVERY
    while position < size:
        number += 1
        if size - position < 16:
            raise CaptureError(
                f"{path}: truncated at byte {position}: frame {number} has "
                f"{size - position} of 16 header bytes"
            )
        seconds, fraction, captured, original = record.unpack_from(data, position)
        if captured > _MAX_BLOCK:
            raise CaptureError(
                f"{path}: corrupt record at byte {position}: frame {number} claims "
                f"{captured} captured bytes"
            )
        start = position + 16
        if start + captured > size:
            raise CaptureError(
                f"{path}: truncated at byte {position}: frame {number} has "
                f"{size - start} of {captured} bytes"
            )
        position = start + captured
        yield Frame(number, seconds + fraction * resolution, linktype,
                    data[start:position], original, start)
        if position >= next_drop:
            reader.dropped(position)
            next_drop = position + _DROP_EVERY


_U32 = {"<": struct.Struct("<I"), ">": struct.Struct(">I")}
_HEAD = {"<": struct.Struct("<II"), ">": struct.Struct(">II")}


def _read_pcapng(path: Path, data: memoryview, reader: CaptureReader) -> Iterator[Frame]:
    endian = "<"
    interfaces: list[_Interface] = []
    number = 0
    position = 0
    size = len(data)
    next_drop = _DROP_EVERY
    while position < size:
        where = f"{path}: truncated at byte {position}"
        if size - position < 8:
            raise CaptureError(f"{where}: block header has {size - position} of 8 bytes")
        block_type, length = _HEAD[endian].unpack_from(data, position)
        if block_type == PCAPNG_SHB:
            if size - position < 12:
                raise CaptureError(f"{where}: section header is cut short")
            byte_order = bytes(data[position + 8 : position + 12])
            if struct.unpack("<I", byte_order)[0] == PCAPNG_BYTE_ORDER:
                endian = "<"
            elif struct.unpack(">I", byte_order)[0] == PCAPNG_BYTE_ORDER:
                endian = ">"
            else:
                raise CaptureError(f"{path}: corrupt section header at byte {position}")
            interfaces = []  # interface ids are per section
            (length,) = _U32[endian].unpack_from(data, position + 4)
        if length < 12 or length % 4 or length > _MAX_BLOCK:
            raise CaptureError(
                f"{path}: corrupt block at byte {position}: length {length} is impossible"
            )
        if position + length > size:
            what = (
                f"frame {number + 1}"
                if block_type in (BLOCK_EPB, BLOCK_SPB, BLOCK_PB)
                else f"block type {block_type:#x}"
            )
            raise CaptureError(f"{where}: {what} has {size - position} of {length} bytes")
        body_at = position + 8
        end = position + length
        if _U32[endian].unpack_from(data, end - 4)[0] != length:
            raise CaptureError(
                f"{path}: corrupt block at byte {position}: trailing length does not match"
            )
        position = end
        if block_type == BLOCK_IDB:
            interfaces.append(_parse_idb(path, bytes(data[body_at : end - 4]), endian))
        elif block_type in (BLOCK_EPB, BLOCK_SPB, BLOCK_PB):
            number += 1
            yield _parse_packet_block(
                path, number, block_type, data, body_at, end - 4, endian, interfaces
            )
            if position >= next_drop:
                reader.dropped(position)
                next_drop = position + _DROP_EVERY


def _parse_idb(path: Path, body: bytes, endian: str) -> _Interface:
    if len(body) < 8:
        raise CaptureError(f"{path}: corrupt interface description block")
    linktype, _reserved, snaplen = struct.unpack(endian + "HHI", body[:8])
    interface = _Interface(linktype, snaplen)
    options = body[8:]
    while len(options) >= 4:
        code, size = struct.unpack(endian + "HH", options[:4])
        value = options[4 : 4 + size]
        options = options[4 + ((size + 3) & ~3) :]
        if code == 0:
            break
        if code == OPT_IF_TSRESOL and size >= 1:
            exponent = value[0]
            base = 2 if exponent & 0x80 else 10
            interface.resolution = base ** -(exponent & 0x7F)
        elif code == OPT_IF_TSOFFSET and size >= 8:
            interface.offset = float(struct.unpack(endian + "q", value[:8])[0])
    return interface


def _parse_packet_block(
    path: Path,
    number: int,
    block_type: int,
    data: memoryview,
    body_at: int,
    body_end: int,
    endian: str,
    interfaces: list[_Interface],
) -> Frame:
    def corrupt() -> CaptureError:
        return CaptureError(f"{path}: corrupt packet block for frame {number}")

    body_length = body_end - body_at
    if block_type == BLOCK_SPB:
        if body_length < 4 or not interfaces:
            raise corrupt()
        (original,) = _U32[endian].unpack_from(data, body_at)
        interface = interfaces[0]
        captured = min(original, body_length - 4)
        if interface.snaplen:
            captured = min(captured, interface.snaplen)
        start = body_at + 4
        return Frame(number, 0.0, interface.linktype, data[start : start + captured], original,
                     start)
    if body_length < 20:
        raise corrupt()
    if block_type == BLOCK_EPB:
        interface_id, high, low, captured, original = _EPB[endian].unpack_from(data, body_at)
    else:
        interface_id, _drops, high, low, captured, original = _PB[endian].unpack_from(
            data, body_at
        )
    if interface_id >= len(interfaces) or 20 + captured > body_length:
        raise corrupt()
    interface = interfaces[interface_id]
    timestamp = ((high << 32) | low) * interface.resolution + interface.offset
    start = body_at + 20
    return Frame(number, timestamp, interface.linktype, data[start : start + captured], original,
                 start)


_EPB = {"<": struct.Struct("<IIIII"), ">": struct.Struct(">IIIII")}
_PB = {"<": struct.Struct("<HHIIII"), ">": struct.Struct(">HHIIII")}
