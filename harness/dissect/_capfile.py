"""Read frames from pcap and pcapng files, keeping every frame before a break.

A small reader of our own (rather than scapy's) because a truncated or corrupt
file must give every complete frame before the damage and then one clear
:class:`CaptureError` saying where and what broke.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

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


@dataclass(frozen=True)
class Frame:
    """One captured packet: its 1-based number, time, link type and bytes."""

    number: int
    time: float
    linktype: int
    data: bytes
    original_length: int


@dataclass
class _Interface:
    linktype: int
    snaplen: int
    resolution: float = 1e-6
    offset: float = 0.0


def read_frames(path: str | Path) -> Iterator[Frame]:
    """Yield every frame of a pcap or pcapng file in file order.

    Raises :class:`CaptureError` when the file cannot be opened or is not a
    capture (before yielding anything), or when it is truncated or corrupt
    (after yielding every complete frame before the damage).
    """
    path = Path(path)
    try:
        handle: BinaryIO = path.open("rb")
        if handle.read(2) == b"\x1f\x8b":
            # A gzip-compressed capture (.pcapng.gz, as Wireshark also reads them).
            handle.close()
            handle = gzip.open(path, "rb")  # type: ignore[assignment]  # noqa: SIM115
        else:
            handle.seek(0)
    except OSError as exc:
        raise CaptureError(f"cannot read capture {path}: {exc.strerror or exc}") from exc
    with handle:
        try:
            yield from _frames_of(path, handle)
        except (EOFError, OSError, zlib.error) as exc:
            # Only a compressed file fails this way: the frames before the damage are out.
            raise CaptureError(f"{path}: truncated or corrupt compressed capture: {exc}") from None


def _frames_of(path: Path, handle: BinaryIO) -> Iterator[Frame]:
    head = handle.read(4)
    if head in _PCAP_MAGICS:
        yield from _read_pcap(path, handle, head)
    elif len(head) == 4 and struct.unpack("<I", head)[0] == PCAPNG_SHB:
        handle.seek(0)
        yield from _read_pcapng(path, handle)
    elif not head:
        raise CaptureError(f"{path}: empty file, not a pcap or pcapng capture")
    else:
        raise CaptureError(f"{path}: not a pcap or pcapng capture (starts with {head.hex()})")


def _read_pcap(path: Path, handle: BinaryIO, magic: bytes) -> Iterator[Frame]:
    endian, resolution = _PCAP_MAGICS[magic]
    header = handle.read(20)
    if len(header) < 20:
        raise CaptureError(f"{path}: truncated pcap file header ({4 + len(header)} of 24 bytes)")
    _major, _minor, _zone, _sigfigs, _snaplen, network = struct.unpack(endian + "HHiIII", header)
    linktype = network & 0x0FFFFFFF  # the top bits may carry an FCS length
    number = 0
    position = 24
    while True:
        record = handle.read(16)
        if not record:
            return
        number += 1
        if len(record) < 16:
            raise CaptureError(
                f"{path}: truncated at byte {position}: frame {number} has "
                f"{len(record)} of 16 header bytes"
            )
        seconds, fraction, captured, original = struct.unpack(endian + "IIII", record)
        if captured > _MAX_BLOCK:
            raise CaptureError(
                f"{path}: corrupt record at byte {position}: frame {number} claims "
                f"{captured} captured bytes"
            )
        data = handle.read(captured)
        if len(data) < captured:
            raise CaptureError(
                f"{path}: truncated at byte {position}: frame {number} has "
                f"{len(data)} of {captured} bytes"
            )
        position += 16 + captured
        yield Frame(number, seconds + fraction * resolution, linktype, data, original)


def _read_pcapng(path: Path, handle: BinaryIO) -> Iterator[Frame]:
    endian = "<"
    interfaces: list[_Interface] = []
    number = 0
    position = 0
    while True:
        head = handle.read(8)
        if not head:
            return
        where = f"{path}: truncated at byte {position}"
        if len(head) < 8:
            raise CaptureError(f"{where}: block header has {len(head)} of 8 bytes")
        block_type = struct.unpack(endian + "I", head[:4])[0]
        if block_type == PCAPNG_SHB:
            byte_order = handle.read(4)
            if len(byte_order) < 4:
                raise CaptureError(f"{where}: section header is cut short")
            if struct.unpack("<I", byte_order)[0] == PCAPNG_BYTE_ORDER:
                endian = "<"
            elif struct.unpack(">I", byte_order)[0] == PCAPNG_BYTE_ORDER:
                endian = ">"
            else:
                raise CaptureError(f"{path}: corrupt section header at byte {position}")
            interfaces = []  # interface ids are per section
            length = struct.unpack(endian + "I", head[4:])[0]
            body_start = byte_order
        else:
            length = struct.unpack(endian + "I", head[4:])[0]
            body_start = b""
        if length < 12 or length % 4 or length > _MAX_BLOCK:
            raise CaptureError(
                f"{path}: corrupt block at byte {position}: length {length} is impossible"
            )
        rest = handle.read(length - 8 - len(body_start))
        if len(rest) < length - 8 - len(body_start):
            what = (
                f"frame {number + 1}"
                if block_type in (BLOCK_EPB, BLOCK_SPB, BLOCK_PB)
                else f"block type {block_type:#x}"
            )
            raise CaptureError(
                f"{where}: {what} has {8 + len(body_start) + len(rest)} of {length} bytes"
            )
        block = memoryview(body_start + rest)  # frames are views of it, not copies
        body, trailer = block[:-4], block[-4:]
        if struct.unpack(endian + "I", trailer)[0] != length:
            raise CaptureError(
                f"{path}: corrupt block at byte {position}: trailing length does not match"
            )
        position += length
        if block_type == BLOCK_IDB:
            interfaces.append(_parse_idb(path, body, endian))
        elif block_type in (BLOCK_EPB, BLOCK_SPB, BLOCK_PB):
            number += 1
            yield _parse_packet_block(path, number, block_type, body, endian, interfaces)


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
    body: bytes,
    endian: str,
    interfaces: list[_Interface],
) -> Frame:
    def corrupt() -> CaptureError:
        return CaptureError(f"{path}: corrupt packet block for frame {number}")

    if block_type == BLOCK_SPB:
        if len(body) < 4 or not interfaces:
            raise corrupt()
        original = struct.unpack(endian + "I", body[:4])[0]
        interface = interfaces[0]
        captured = min(original, len(body) - 4)
        if interface.snaplen:
            captured = min(captured, interface.snaplen)
        return Frame(number, 0.0, interface.linktype, body[4 : 4 + captured], original)
    if block_type == BLOCK_EPB:
        if len(body) < 20:
            raise corrupt()
        interface_id, high, low, captured, original = struct.unpack(endian + "IIIII", body[:20])
        data_start = 20
    else:
        if len(body) < 20:
            raise corrupt()
        interface_id, _drops, high, low, captured, original = struct.unpack(
            endian + "HHIIII", body[:20]
        )
        data_start = 20
    if interface_id >= len(interfaces) or data_start + captured > len(body):
        raise corrupt()
    interface = interfaces[interface_id]
    timestamp = ((high << 32) | low) * interface.resolution + interface.offset
    data = body[data_start : data_start + captured]
    return Frame(number, timestamp, interface.linktype, data, original)
