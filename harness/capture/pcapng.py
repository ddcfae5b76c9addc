"""A small, fast pcapng writer that dresses proxied byte streams as TCP conversations.

The recording proxy sees application bytes, not packets.  To make its capture
readable by Wireshark, tshark and our own scapy dissectors, each proxied
connection is written as a synthetic but fully consistent TCP/IPv4 conversation:
three-way handshake, data segments with correct sequence and acknowledgement
numbers, FIN or RST teardown, valid IPv4 and TCP checksums.  The server side is
always ``127.0.0.1:10809`` (the IANA NBD port) so Wireshark's NBD dissector applies
without a "Decode As"; each connection gets its own client port from 40000 up,
so every connection is its own ``tcp.stream``.  The real endpoints are recorded
in comments (interface comment and the comment on each connection's SYN).

Layout written (pcapng, little endian, one section, one interface):
Section Header Block (``shb_userappl`` = ``nbd-harness``, a comment), Interface
Description Block (``LINKTYPE_ETHERNET``, snaplen 262144, ``if_tsresol`` = 6,
i.e. microseconds), then Enhanced Packet Blocks.  Every block is flushed as soon
as it is written so a crashed run still leaves a readable file.

Not scapy: this writer sits on the proxy's data path and must stay cheap.
"""

from __future__ import annotations

import struct
import threading
import time
from pathlib import Path
from typing import BinaryIO, Literal

from harness.pcapformat import (
    BLOCK_EPB,
    BLOCK_IDB,
    ETHERTYPE_IPV4,
    IPPROTO_TCP,
    LINKTYPE_ETHERNET,
    OPT_COMMENT,
    OPT_ENDOFOPT,
    OPT_IF_NAME,
    OPT_IF_TSRESOL,
    OPT_SHB_USERAPPL,
    PCAPNG_BYTE_ORDER,
    PCAPNG_SHB,
    TCP_ACK,
    TCP_FIN,
    TCP_PSH,
    TCP_RST,
    TCP_SYN,
)
from harness.protocol.constants import NBD_PORT

Side = Literal["client", "server"]

SNAPLEN = 262144
USERAPPL = "nbd-harness"

# Synthetic framing.  Locally administered MACs; both ends on 127.0.0.1 like a real
# loopback capture; the NBD port on the server side so dissectors pick NBD by port.
CLIENT_MAC = bytes.fromhex("020000000001")
SERVER_MAC = bytes.fromhex("020000000002")
CLIENT_IP = bytes([127, 0, 0, 1])
SERVER_IP = bytes([127, 0, 0, 1])
SERVER_PORT = NBD_PORT  # Wireshark's NBD dissector applies to this port by default
FIRST_CLIENT_PORT = 40000

# 65535 (largest IPv4 total length) - 20 (IPv4 header) - 20 (TCP header): the
# largest payload one segment can carry.  Also what Linux advertises as MSS on lo.
MAX_SEGMENT = 65495
# Window advertised by both ends, with window scaling negotiated in the SYNs so the
# effective window (65535 << 7, about 8 MiB) is never exceeded by data in flight.
_WINDOW = 65535
_WINDOW_SHIFT = 7
# The receiver sends a pure ACK once this much data is unacknowledged (like delayed
# ACKs do), keeping "bytes in flight" far below the window: no analysis warnings.
_ACK_EVERY = 512 * 1024

_IP_DONT_FRAGMENT = 0x4000


def internet_checksum(data: bytes) -> int:
    """RFC 1071 ones' complement checksum of ``data`` (zero-padded to even length).

    The ones' complement sum of 16-bit words equals the big-endian integer value of
    the data modulo 0xFFFF (because 2**16 == 1 mod 0xFFFF), which Python computes in
    C: much faster than a loop over words for 64 KiB segments.
    """
    if len(data) % 2:
        data += b"\x00"
    value = int.from_bytes(data, "big")
    folded = value % 0xFFFF
    if folded == 0 and value != 0:
        folded = 0xFFFF  # non-zero data sums to "negative zero", never to +0
    return ~folded & 0xFFFF


def _option(code: int, value: bytes) -> bytes:
    padding = b"\x00" * (-len(value) % 4)
    return struct.pack("<HH", code, len(value)) + value + padding


def _options(*options: bytes) -> bytes:
    present = [opt for opt in options if opt]
    if not present:
        return b""
    return b"".join(present) + struct.pack("<HH", OPT_ENDOFOPT, 0)


def _comment(text: str | None) -> bytes:
    return _option(OPT_COMMENT, text.encode("utf-8")) if text else b""


def _block(block_type: int, body: bytes) -> bytes:
    total = 12 + len(body)
    return struct.pack("<II", block_type, total) + body + struct.pack("<I", total)


class _Direction:
    """Send-side TCP state of one end of a synthetic conversation."""

    def __init__(self, isn: int) -> None:
        self.next_seq = isn  # sequence number of the next byte (or SYN/FIN) this end sends
        self.acked_by_peer = isn  # highest ack number the other end has sent us
        self.fin_sent = False
        self.ip_id = 0


class TcpStream:
    """One proxied connection, written as a TCP conversation into a :class:`PcapngWriter`.

    Created by :meth:`PcapngWriter.open_stream`, which writes the three-way
    handshake.  All methods are thread-safe (they take the writer's lock).
    """

    def __init__(self, writer: PcapngWriter, client_port: int, number: int) -> None:
        self._writer = writer
        self.client_port = client_port
        #: 0-based index of this conversation in the file (tshark's ``tcp.stream``).
        self.number = number
        # Deterministic initial sequence numbers (reproducible files), different per
        # connection.  The server's starts 1 MiB below 2**32 in the first connection, so
        # any reader of our captures meets sequence-number wrap-around early, as it
        # would in real captures with random ISNs.
        self._ends: dict[Side, _Direction] = {
            "client": _Direction((0x1000_0000 + number * 0x0100_0000) & 0xFFFF_FFFF),
            "server": _Direction((0x1_0000_0000 - 0x10_0000 - number * 0x0100_0000) & 0xFFFF_FFFF),
        }
        self._first_fin: Side | None = None
        self.closed = False

    # -- public API ---------------------------------------------------------------

    @property
    def first_fin(self) -> Side | None:
        """The side whose FIN was recorded first, if any: the one that closed first."""
        return self._first_fin

    def record(self, direction: Side, data: bytes, timestamp: float | None = None) -> None:
        """Record ``data`` sent by ``direction`` ("client" or "server") as PSH|ACK segments.

        Chunks longer than :data:`MAX_SEGMENT` are split so every IPv4 packet fits.
        """
        if not data:
            return
        when = time.time() if timestamp is None else timestamp
        with self._writer._lock:
            self._check_open(direction)
            sender = self._ends[direction]
            frames: list[bytes] = []
            view = memoryview(data)
            for start in range(0, len(data), MAX_SEGMENT):
                segment = bytes(view[start : start + MAX_SEGMENT])
                frames.append(self._segment(direction, TCP_PSH | TCP_ACK, segment))
                sender.next_seq = (sender.next_seq + len(segment)) & 0xFFFF_FFFF
                if _unacked(sender) >= _ACK_EVERY:
                    frames.append(self._pure_ack(_other(direction)))
            self._writer._write_packets(frames, when)

    def fin(self, direction: Side, timestamp: float | None = None) -> None:
        """Record that ``direction`` half-closed its side (a FIN|ACK segment).

        The other side may still :meth:`record` data afterwards.  Calling it twice
        for the same side is harmless.
        """
        when = time.time() if timestamp is None else timestamp
        with self._writer._lock:
            if self.closed or self._ends[direction].fin_sent:
                return
            self._writer._write_packets([self._fin(direction)], when)

    def close(self, initiator: Side, reset: bool = False, timestamp: float | None = None) -> None:
        """Finish the conversation; idempotent.

        Normally: a FIN|ACK from ``initiator`` (unless :meth:`fin` already sent one),
        the other side's FIN|ACK, and a final ACK from the side that closed first.
        With ``reset=True`` the connection ends with an RST|ACK from ``initiator``.
        """
        when = time.time() if timestamp is None else timestamp
        with self._writer._lock:
            if self.closed:
                return
            self.closed = True
            if reset:
                frames = [self._segment(initiator, TCP_RST | TCP_ACK, b"")]
            else:
                frames = []
                for side in (initiator, _other(initiator)):
                    if not self._ends[side].fin_sent:
                        frames.append(self._fin(side))
                assert self._first_fin is not None
                frames.append(self._pure_ack(self._first_fin))
            self._writer._write_packets(frames, when)

    # -- framing ------------------------------------------------------------------

    def _check_open(self, direction: Side) -> None:
        if self.closed:
            raise ValueError(f"TCP stream {self.client_port} is already closed")
        if self._ends[direction].fin_sent:
            raise ValueError(f"{direction} already sent FIN on TCP stream {self.client_port}")

    def _fin(self, side: Side) -> bytes:
        frame = self._segment(side, TCP_FIN | TCP_ACK, b"")
        end = self._ends[side]
        end.next_seq = (end.next_seq + 1) & 0xFFFF_FFFF  # FIN takes one sequence number
        end.fin_sent = True
        if self._first_fin is None:
            self._first_fin = side
        return frame

    def _pure_ack(self, side: Side) -> bytes:
        return self._segment(side, TCP_ACK, b"")

    def _handshake(self) -> list[bytes]:
        client, server = self._ends["client"], self._ends["server"]
        syn_options = struct.pack("!BBH", 2, 4, MAX_SEGMENT)  # MSS
        syn_options += struct.pack("!BBBB", 1, 3, 3, _WINDOW_SHIFT)  # NOP, window scale
        frames = [self._segment("client", TCP_SYN, b"", options=syn_options)]
        client.next_seq = (client.next_seq + 1) & 0xFFFF_FFFF
        frames.append(self._segment("server", TCP_SYN | TCP_ACK, b"", options=syn_options))
        server.next_seq = (server.next_seq + 1) & 0xFFFF_FFFF
        frames.append(self._pure_ack("client"))
        return frames

    def _refusal(self) -> list[bytes]:
        """A SYN answered by RST|ACK: the connection never got through."""
        client = self._ends["client"]
        syn_options = struct.pack("!BBH", 2, 4, MAX_SEGMENT)
        frames = [self._segment("client", TCP_SYN, b"", options=syn_options)]
        client.next_seq = (client.next_seq + 1) & 0xFFFF_FFFF
        frames.append(self._segment("server", TCP_RST | TCP_ACK, b""))
        self.closed = True
        return frames

    def _segment(self, side: Side, flags: int, payload: bytes, options: bytes = b"") -> bytes:
        """One Ethernet/IPv4/TCP frame from ``side``; ACK numbers acknowledge all seen data."""
        sender, receiver = self._ends[side], self._ends[_other(side)]
        if side == "client":
            src_mac, dst_mac = CLIENT_MAC, SERVER_MAC
            src_ip, dst_ip = CLIENT_IP, SERVER_IP
            src_port, dst_port = self.client_port, SERVER_PORT
        else:
            src_mac, dst_mac = SERVER_MAC, CLIENT_MAC
            src_ip, dst_ip = SERVER_IP, CLIENT_IP
            src_port, dst_port = SERVER_PORT, self.client_port
        ack = 0
        if flags & TCP_ACK:
            ack = receiver.next_seq
            receiver.acked_by_peer = ack
        # A SYN's window is never scaled (RFC 7323 section 2.2).
        window = _WINDOW
        header_len = 20 + len(options)
        tcp_header = struct.pack(
            "!HHIIBBHHH",
            src_port,
            dst_port,
            sender.next_seq,
            ack,
            (header_len // 4) << 4,
            flags,
            window,
            0,  # checksum, filled below
            0,  # urgent pointer
        )
        tcp = tcp_header + options + payload
        pseudo_header = src_ip + dst_ip + struct.pack("!BBH", 0, IPPROTO_TCP, len(tcp))
        checksum = internet_checksum(pseudo_header + tcp)
        tcp = tcp[:16] + struct.pack("!H", checksum) + tcp[18:]

        sender.ip_id = (sender.ip_id + 1) & 0xFFFF
        ip_header = struct.pack(
            "!BBHHHBBH4s4s",
            0x45,  # version 4, header length 5 words
            0,
            20 + len(tcp),
            sender.ip_id,
            _IP_DONT_FRAGMENT,
            64,  # TTL
            IPPROTO_TCP,
            0,  # checksum, filled below
            src_ip,
            dst_ip,
        )
        ip_checksum = internet_checksum(ip_header)
        ip_header = ip_header[:10] + struct.pack("!H", ip_checksum) + ip_header[12:]
        ethernet = dst_mac + src_mac + struct.pack("!H", ETHERTYPE_IPV4)
        return ethernet + ip_header + tcp


def _other(side: Side) -> Side:
    return "server" if side == "client" else "client"


def _unacked(sender: _Direction) -> int:
    return (sender.next_seq - sender.acked_by_peer) & 0xFFFF_FFFF


class PcapngWriter:
    """Writes a pcapng file of synthetic TCP conversations; safe to share between threads.

    ``comment`` goes into the Section Header Block, ``interface_comment`` into the
    Interface Description Block (the proxy puts its real listen and upstream
    addresses there).  Use as a context manager or call :meth:`close`.
    """

    def __init__(
        self,
        path: Path | str,
        *,
        comment: str = "NBD sessions recorded by the nbd-harness proxy; TCP framing is synthetic",
        interface_comment: str | None = None,
    ) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._file: BinaryIO | None = open(self.path, "wb")  # noqa: SIM115 (closed in close())
        self._next_port = FIRST_CLIENT_PORT
        self._streams = 0
        #: Number of Enhanced Packet Blocks written so far.
        self.packets = 0
        shb_body = struct.pack("<IHHq", PCAPNG_BYTE_ORDER, 1, 0, -1) + _options(
            _comment(comment), _option(OPT_SHB_USERAPPL, USERAPPL.encode())
        )
        idb_body = struct.pack("<HHI", LINKTYPE_ETHERNET, 0, SNAPLEN) + _options(
            _comment(interface_comment),
            _option(OPT_IF_NAME, b"nbd-harness-proxy"),
            _option(OPT_IF_TSRESOL, bytes([6])),
        )
        with self._lock:
            self._write(_block(PCAPNG_SHB, shb_body) + _block(BLOCK_IDB, idb_body))

    def open_stream(self, comment: str | None = None, timestamp: float | None = None) -> TcpStream:
        """Start a new conversation: write SYN (carrying ``comment``), SYN-ACK and ACK."""
        when = time.time() if timestamp is None else timestamp
        with self._lock:
            stream = self._new_stream()
            self._write_packets(stream._handshake(), when, first_comment=comment)
        return stream

    def record_refused(self, comment: str | None = None, timestamp: float | None = None) -> None:
        """Record a connection that never got through: SYN (with ``comment``), RST|ACK."""
        when = time.time() if timestamp is None else timestamp
        with self._lock:
            stream = self._new_stream()
            self._write_packets(stream._refusal(), when, first_comment=comment)

    def close(self) -> None:
        """Close the file; idempotent.  Streams still open are left as they are."""
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None

    @property
    def closed(self) -> bool:
        return self._file is None

    def __enter__(self) -> PcapngWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- internals (called with the lock held) -------------------------------------

    def _new_stream(self) -> TcpStream:
        stream = TcpStream(self, self._next_port, self._streams)
        self._streams += 1
        self._next_port = self._next_port + 1 if self._next_port < 65535 else FIRST_CLIENT_PORT
        return stream

    def _write_packets(
        self, frames: list[bytes], timestamp: float, first_comment: str | None = None
    ) -> None:
        micros = round(timestamp * 1_000_000)
        blocks = []
        for index, frame in enumerate(frames):
            header = struct.pack(
                "<IIIII", 0, micros >> 32, micros & 0xFFFF_FFFF, len(frame), len(frame)
            )
            padding = b"\x00" * (-len(frame) % 4)
            options = _options(_comment(first_comment)) if index == 0 else b""
            blocks.append(_block(BLOCK_EPB, header + frame + padding + options))
        self._write(b"".join(blocks))
        self.packets += len(frames)

    def _write(self, data: bytes) -> None:
        if self._file is None:
            raise ValueError(f"pcapng writer for {self.path} is closed")
        self._file.write(data)
        self._file.flush()
