"""What a case keeps as evidence once it is judged (``run --evidence``).

Failing and erroring cases keep everything. A good case keeps what a user needs
to see it again, by the run's evidence policy:

- ``full``: the capture, the decoded wire log and its index, its steps, findings and
  scenario copy, its logs (large ones gzip'd);
- ``compact`` (the default): the capture alone, gzip'd, with a large capture's bulk data
  elided: the data bytes of every NBD_CMD_WRITE, of every simple reply to a
  READ and of every structured/extended data chunk are zeroed (their headers,
  lengths, offsets and every other message stay as they were), TCP checksums
  are made right again (TLS application data records lose their ciphertext the
  same way, their headers kept), and pcapng comments say where and how much was elided
  (the section header: in total; each changed packet: its share). Zeroes
  compress to almost nothing, so ``nbd-harness dissect`` and ``lint`` (and
  Wireshark) read the capture as before, minus the data.  The wire log, its
  index, the logs and the other small files go: the wire log is the capture
  decoded again (``nbd-harness dissect``), and ``results.json`` holds the steps
  and findings;
- ``failures``: nothing of the case's own (its page is still written).

Outside ``full``, a good case's scenario copy is kept once per scenario, in
``scenarios/`` of the result directory (:func:`share_scenario`), not once per case.
Images, data files and TLS keys (``.raw``, ``.qcow2``, ``.bin``, ``.pem``...) go in every
policy.  With ``--keep-data`` a good case keeps everything as it left it.

Why so little: a full run has about 10,500 cases, most of them good, and on disk
every small file takes a whole file-system block (4 KiB); a good case left with
its page and its compressed capture takes about 8 KiB, so the run stays under
300 MB (the README gives the measured figure).
"""

from __future__ import annotations

import contextlib
import gzip
import os
import shutil
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

EVIDENCE_CHOICES = ("compact", "full", "failures")
DEFAULT_EVIDENCE = "compact"
ELIDE_ABOVE = 64 * 1024
"""Captures up to this size are kept whole: eliding them saves little."""
LOG_GZIP_ABOVE = 16 * 1024
"""A good case's logs larger than this are gzip'd (``NAME.log.gz``: qemu-io's hex dumps)."""
MIN_ELIDED = 1024
"""Data payloads shorter than this are kept (small reads and writes show their bytes)."""
BULKY_SUFFIXES = (".raw", ".qcow2", ".in", ".out", ".img", ".bin", ".pem")
SHARED_SCENARIOS = "scenarios"
"""Where good cases' scenario copies are kept, once per scenario (in the result directory)."""
WIRE_FILES = ("capture.pcapng", "wire.txt", "wire-index.json")
_HEADER_LENGTH = {"request": 32, "simple-reply": 16, "chunk": 40}
"""Bytes at the start of a data-bearing message that are kept whatever the form: the largest
header of its kind (extended request 32; extended chunk header 32 + its 8-byte offset)."""

# pcapng (little-endian, as harness.capture.pcapng writes it)
_SHB, _EPB = 0x0A0D0D0A, 0x00000006
_OPT_COMMENT, _OPT_END = 1, 0
_ETH, _IPV4 = 14, 20


@dataclass(frozen=True)
class Elided:
    """What eliding one capture did."""

    messages: int
    bytes: int
    packets: int


def keep(case_dir: Path, evidence: str, keep_data: bool) -> None:
    """Reduce the evidence of a good case in ``case_dir`` to what ``evidence`` keeps
    (``keep_data``: keep everything as the case left it)."""
    if keep_data:
        return
    capture = case_dir / WIRE_FILES[0]
    for path in case_dir.rglob("*"):
        bulky = path.name.endswith(BULKY_SUFFIXES)
        if path.is_file() and (bulky or (evidence != "full" and path != capture)):
            with contextlib.suppress(OSError):
                path.unlink()
    if evidence == "failures":
        capture.unlink(missing_ok=True)
    if evidence == "compact" and capture.exists() and capture.stat().st_size > ELIDE_ABOVE:
        with contextlib.suppress(Exception):  # a capture we cannot elide is kept whole
            elide_capture(capture, data_ranges(capture))
    for name in WIRE_FILES:
        _gzip(case_dir / name)
    for log in case_dir.rglob("*.log"):
        if log.stat().st_size > LOG_GZIP_ABOVE:
            _gzip(log)
    for directory in sorted(case_dir.rglob("*"), key=lambda p: -len(p.parts)):
        if directory.is_dir() and not any(directory.iterdir()):
            directory.rmdir()  # a peer's directory or a TLS case's PKI, emptied above


def share_scenario(copy: Path, shared: Path) -> None:
    """Keep a good case's scenario ``copy`` once per scenario, at ``shared``: move it
    there when it is the first, else drop it (cases of the same scenario run in several
    workers at once: the move is atomic, and every copy holds the same text)."""
    if not copy.exists():
        return
    if shared.exists() and shared.read_bytes() == copy.read_bytes():
        copy.unlink()
        return  # (a different text is an earlier run's, in the same result directory)
    shared.parent.mkdir(parents=True, exist_ok=True)
    os.replace(copy, shared)


def _gzip(path: Path) -> None:
    # Level 6: an elided capture is mostly zeroes, which level 3 stores 5x larger.
    if path.exists():
        with path.open("rb") as raw, gzip.open(f"{path}.gz", "wb", compresslevel=6) as out:
            shutil.copyfileobj(raw, out)
        path.unlink()


def _carries_data(message: Any) -> bool:
    if message.kind == "request":
        return message.name == "NBD_CMD_WRITE"
    if message.kind == "chunk":
        return "OFFSET_DATA" in message.name
    return message.kind == "simple-reply"


def tls_application_data(records: bytes, offset: int) -> list[tuple[int, int]]:
    """The stream ranges of the contents of TLS application data records (type 23) in
    ``records`` (at stream ``offset``): ciphertext, of no use without the session's keys.
    Record headers and the handshake stay."""
    ranges = []
    at = 0
    while at + 5 <= len(records):
        content_type, length = records[at], int.from_bytes(records[at + 3:at + 5], "big")
        if content_type == 23 and length >= MIN_ELIDED:
            ranges.append((offset + at + 5, offset + min(at + 5 + length, len(records))))
        at += 5 + length
    return ranges


def data_ranges(capture: Path) -> dict[tuple[int, str], list[tuple[int, int]]]:
    """(client port, direction) -> the stream ranges of bulk data to elide, from the
    dissector's reading of ``capture``: NBD data payloads, and TLS ciphertext."""
    from harness.dissect import decode_capture

    ranges: dict[tuple[int, str], list[tuple[int, int]]] = {}
    for session in decode_capture(capture).sessions:
        for message in session.messages:
            found = ranges.setdefault((session.client[1], message.direction), [])
            head = _HEADER_LENGTH.get(message.kind, 0)
            if _carries_data(message) and message.length - head >= MIN_ELIDED:
                found.append((message.offset + head, message.offset + message.length))
            elif message.kind == "tls" and message.length >= MIN_ELIDED:
                found += tls_application_data(bytes(message.packet), message.offset)
    return {key: value for key, value in ranges.items() if value}


def _checksum(data: bytes) -> int:
    from harness.capture.pcapng import internet_checksum

    return internet_checksum(data)


def _zero(payload: bytearray, start: int, ranges: Iterable[tuple[int, int]]) -> int:
    """Zero the bytes of ``payload`` (stream offset ``start``) inside ``ranges``; count them."""
    zeroed = 0
    end = start + len(payload)
    for low, high in ranges:
        low, high = max(low, start), min(high, end)
        if low < high:
            payload[low - start:high - start] = bytes(high - low)
            zeroed += high - low
    return zeroed


def _comment_option(text: str) -> bytes:
    value = text.encode()
    return struct.pack("<HH", _OPT_COMMENT, len(value)) + value + b"\0" * (-len(value) % 4)


def _with_comment(body: bytes, fixed: int, text: str) -> bytes:
    """A block body (``fixed`` bytes before its options) with one more comment option."""
    options = body[fixed:]
    if options.endswith(struct.pack("<HH", _OPT_END, 0)):
        options = options[:-4]
    return body[:fixed] + options + _comment_option(text) + struct.pack("<HH", _OPT_END, 0)


def _block(block_type: int, body: bytes) -> bytes:
    return struct.pack("<II", block_type, 12 + len(body)) + body + \
        struct.pack("<I", 12 + len(body))


def elide_capture(path: Path, ranges: dict[tuple[int, str], list[tuple[int, int]]]) -> Elided:
    """Zero the data ``ranges`` in the pcapng ``path`` (rewritten in place); say so in it."""
    from harness.capture.pcapng import SERVER_PORT

    data = path.read_bytes()
    blocks: list[tuple[int, bytes]] = []
    isn: dict[tuple[int, int], int] = {}
    total = packets = 0
    at = 0
    while at + 12 <= len(data):
        block_type, length = struct.unpack_from("<II", data, at)
        body = data[at + 8:at + length - 4]
        at += length
        if block_type == _EPB:
            captured = struct.unpack_from("<I", body, 12)[0]
            frame = bytearray(body[20:20 + captured])
            tcp = _ETH + (frame[_ETH] & 0x0F) * 4
            src, dst, seq = struct.unpack_from(">HHI", frame, tcp)
            flags = frame[tcp + 13]
            if flags & 0x02:  # SYN: the stream starts after it
                isn[(src, dst)] = seq + 1
            offset = tcp + (frame[tcp + 12] >> 4) * 4
            client, direction = (dst, "server") if src == SERVER_PORT else (src, "client")
            wanted = ranges.get((client, direction))
            if wanted and len(frame) > offset and (src, dst) in isn:
                payload = bytearray(frame[offset:])
                zeroed = _zero(payload, (seq - isn[(src, dst)]) & 0xFFFFFFFF, wanted)
                if zeroed:
                    frame[offset:] = payload
                    _fix_tcp_checksum(frame, tcp)
                    padded = bytes(frame) + b"\0" * (-len(frame) % 4)
                    body = _with_comment(body[:20] + padded + body[20 + captured
                                                                   + (-captured % 4):],
                                         20 + len(padded),
                                         f"nbd-harness: {zeroed} data bytes elided (zeroed)")
                    total += zeroed
                    packets += 1
        blocks.append((block_type, body))
    messages = sum(len(v) for v in ranges.values())
    note = (f"nbd-harness: a good case's capture, compacted: the data of {messages} NBD "
            f"messages or TLS records ({total} bytes in {packets} packets) is elided "
            "(zeroed); every header, length and offset is as it was on the wire")
    out = [_block(t, _with_comment(b, 16, note) if t == _SHB else b) for t, b in blocks]
    path.write_bytes(b"".join(out))
    return Elided(messages, total, packets)


def _fix_tcp_checksum(frame: bytearray, tcp: int) -> None:
    ip = _ETH
    segment_length = len(frame) - tcp
    frame[tcp + 16:tcp + 18] = b"\0\0"
    pseudo = bytes(frame[ip + 12:ip + 20]) + struct.pack(">BBH", 0, 6, segment_length)
    frame[tcp + 16:tcp + 18] = struct.pack(">H", _checksum(pseudo + bytes(frame[tcp:])))


__all__ = ["DEFAULT_EVIDENCE", "EVIDENCE_CHOICES", "SHARED_SCENARIOS", "Elided", "data_ranges",
           "elide_capture", "keep", "share_scenario", "tls_application_data"]
