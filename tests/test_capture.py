"""The recording proxy and its pcapng writer (harness.capture, nbd-harness capture).

Real peers (qemu-nbd over TCP and unix sockets; nbdinfo and nbdsh as clients) talk
through the proxy.  Every byte written is read back through NBD and compared, and
the image file is checked too.  The capture is then read back independently of
the writer: scapy parses the frames, checksums are verified with scapy's own
checksum function, each direction is reassembled by sequence number and compared
with what went through; tshark checks the TCP conversations and the NBD
dissection, and that its TCP analysis finds nothing odd.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import shutil
import signal
import socket
import struct
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from scapy.packet import Packet
from scapy.utils import PcapNgReader
from scapy.utils import checksum as scapy_checksum

from harness.address import Address, parse_address
from harness.capture import (
    MAX_SEGMENT,
    SERVER_PORT,
    PcapngWriter,
    ProxyStats,
    ProxyThread,
    RecordingProxy,
)
from harness.capture.pcapng import SNAPLEN, internet_checksum
from harness.commands import capture as capture_command
from harness.errors import UserError
from harness.process import ManagedProcess, pick_port_and_start, run_command
from harness.protocol.constants import IHAVEOPT, NBDMAGIC, NEWSTYLE_GREETING_LEN, Cmd

IMAGE_SIZE = 16 * 1024 * 1024
TIMEOUT = 60  # seconds for any one client command
LOCALHOST = Address.tcp("127.0.0.1", 0)

# The newstyle greeting starts with these 16 bytes (spec: "Newstyle negotiation").
GREETING = struct.pack("!QQ", NBDMAGIC, IHAVEOPT)

_TCP_FIN, _TCP_SYN, _TCP_RST, _TCP_PSH, _TCP_ACK = 0x01, 0x02, 0x04, 0x08, 0x10


# ---------------------------------------------------------------------------------------
# Helpers: data patterns, peers, clients


def pattern(offset: int, length: int, seed: int) -> bytes:
    """Test data derived from its offset and a seed (different for every region)."""
    return random.Random(f"{seed}:{offset}").randbytes(length)


def client_env() -> dict[str, str]:
    """nbdsh runs ``python3`` from PATH: Debian's, which has the ``nbd`` module, must win."""
    env = dict(os.environ)
    env["PATH"] = "/usr/bin:/bin:" + env.get("PATH", "")
    return env


def nbdsh_write_read(uri: str, data_file: Path, offset: int, tmp_path: Path) -> None:
    """Write the file's bytes at ``offset`` through NBD, read them back, compare."""
    code = (
        f"data = open({str(data_file)!r}, 'rb').read()\n"
        f"h.pwrite(data, {offset})\n"
        f"assert h.pread(len(data), {offset}) == data, 'read back differs'\n"
    )
    result = run_command(
        ["nbdsh", "-u", uri, "-c", code],
        timeout=TIMEOUT,
        env=client_env(),
        log_path=tmp_path / "clients.log",
    )
    assert result.returncode == 0, result.stderr


def nbdinfo(uri: str, tmp_path: Path) -> str:
    result = run_command(
        ["nbdinfo", "--size", uri],
        timeout=TIMEOUT,
        env=client_env(),
        log_path=tmp_path / "clients.log",
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def nbd_uri(address: Address) -> str:
    if address.kind == "unix":
        return f"nbd+unix:///?socket={address.path}"
    return f"nbd://{address.host}:{address.port}"


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "disk.img"
    with open(path, "wb") as file:
        file.truncate(IMAGE_SIZE)
    return path


@pytest.fixture
def qemu_nbd_tcp(require_programs, image: Path, tmp_path: Path) -> Iterator[Address]:
    """qemu-nbd serving ``image`` on 127.0.0.1 and a kernel-chosen port (8 clients at once)."""
    require_programs("qemu-nbd", "nbdinfo", "nbdsh", "tshark")
    process, port = pick_port_and_start(
        lambda port: [
            "qemu-nbd",
            "-t",
            "--shared=8",
            "--bind",
            "127.0.0.1",
            "--port",
            str(port),
            "-f",
            "raw",
            str(image),
        ],
        log_path=tmp_path / "qemu-nbd.log",
    )
    with process:
        yield Address.tcp("127.0.0.1", port)


@pytest.fixture
def qemu_nbd_unix(require_programs, image: Path, tmp_path: Path) -> Iterator[Address]:
    """qemu-nbd serving ``image`` on a unix socket in the test's tmp dir."""
    require_programs("qemu-nbd", "nbdinfo", "nbdsh", "tshark")
    sock = tmp_path / "qemu-nbd.sock"
    argv = ["qemu-nbd", "-t", "--shared=8", "-k", str(sock), "-f", "raw", str(image)]
    with ManagedProcess.start(argv, log_path=tmp_path / "qemu-nbd.log") as process:
        process.wait_for_listening_unix(sock, 10)
        yield Address.unix(str(sock))


def assert_closed_by_proxy(sock: socket.socket) -> None:
    """The proxy ends this connection without sending anything: EOF, or a reset."""
    # The proxy aborts the client connection: a reset is as clean an end as EOF.
    with contextlib.suppress(ConnectionResetError):
        assert sock.recv(100) == b""


def assert_no_proxy_thread() -> None:
    names = [thread.name for thread in threading.enumerate()]
    assert "nbd-harness-proxy" not in names


# ---------------------------------------------------------------------------------------
# Reading a capture back, independently of the writer


@dataclass
class Flow:
    """One TCP conversation of a capture, reassembled."""

    client_port: int
    comments: list[bytes] = field(default_factory=list)
    # (side, flags, seq, payload) in capture order
    segments: list[tuple[str, int, int, bytes]] = field(default_factory=list)
    isn: dict[str, int] = field(default_factory=dict)

    def data(self, side: str) -> bytes:
        """Reassemble ``side``'s bytes by sequence number; assert no gap and no overlap."""
        base = (self.isn[side] + 1) & 0xFFFF_FFFF
        pieces = sorted(
            ((seq - base) & 0xFFFF_FFFF, payload)
            for who, _flags, seq, payload in self.segments
            if who == side and payload
        )
        expected = 0
        for relative, payload in pieces:
            assert relative == expected, f"{side} stream has a gap/overlap at {expected}"
            expected += len(payload)
        return b"".join(payload for _relative, payload in pieces)

    def flags(self) -> list[tuple[str, int]]:
        """(side, flags) of every segment that is not a plain data or pure ACK segment."""
        return [
            (who, flags)
            for who, flags, _seq, payload in self.segments
            if flags & (_TCP_SYN | _TCP_FIN | _TCP_RST)
        ]


def read_packets(path: Path) -> list[Packet]:
    """Every packet of a pcapng file, read with scapy, none truncated.

    Not ``rdpcap``: scapy's readers cut frames at 65535 bytes by default (scapy.data.MTU),
    and a full TCP segment on loopback makes a 65549-byte Ethernet frame, in our captures
    as in real captures of ``lo``.
    """
    packets = []
    with PcapNgReader(str(path)) as reader:
        while True:
            try:
                packet = reader.read_packet(size=SNAPLEN)
            except EOFError:
                break
            assert len(packet.original) == packet.wirelen, "truncated frame"
            packets.append(packet)
    return packets


def read_capture(path: Path) -> dict[int, Flow]:
    """Parse every frame with scapy, verify lengths and checksums, group by connection."""
    flows: dict[int, Flow] = {}
    for packet in read_packets(path):
        frame = bytes(packet.original)
        assert frame[12:14] == b"\x08\x00", "not IPv4 over Ethernet"
        ip = frame[14:]
        header_len = (ip[0] & 0x0F) * 4
        total_len = struct.unpack("!H", ip[2:4])[0]
        assert total_len == len(ip) <= 65535
        assert scapy_checksum(ip[:header_len]) == 0, "bad IPv4 header checksum"
        assert ip[9] == 6
        tcp = ip[header_len:total_len]
        pseudo = ip[12:20] + struct.pack("!BBH", 0, 6, len(tcp))
        assert scapy_checksum(pseudo + tcp) == 0, "bad TCP checksum"
        src_port, dst_port, seq = struct.unpack("!HHI", tcp[:8])
        flags = tcp[13]
        payload = tcp[(tcp[12] >> 4) * 4 :]
        assert len(payload) <= MAX_SEGMENT
        side = "server" if src_port == SERVER_PORT else "client"
        client_port = dst_port if side == "server" else src_port
        flow = flows.setdefault(client_port, Flow(client_port))
        flow.comments.extend(getattr(packet, "comments", None) or [])
        if flags & _TCP_SYN:
            flow.isn[side] = seq
        flow.segments.append((side, flags, seq, payload))
    return flows


def tshark(*args: str) -> str:
    if shutil.which("tshark") is None:
        pytest.fail("tshark is not installed: run scripts/bootstrap", pytrace=False)
    result = run_command(["tshark", *args], timeout=TIMEOUT)
    assert result.returncode == 0, result.stderr
    return result.stdout


def assert_tshark_clean(path: Path, streams: int) -> None:
    """tshark: ``streams`` TCP conversations, valid checksums, no TCP analysis warnings."""
    ids = tshark("-r", str(path), "-T", "fields", "-e", "tcp.stream").split()
    assert sorted(set(ids)) == [str(n) for n in range(streams)]
    anomalies = tshark(
        "-r",
        str(path),
        "-o",
        "tcp.check_checksum:TRUE",
        "-o",
        "ip.check_checksum:TRUE",
        "-Y",
        "tcp.analysis.flags || tcp.checksum.status != 1 || ip.checksum.status != 1",
    )
    assert anomalies.strip() == ""


def nbd_requests(path: Path) -> list[tuple[str, str, str]]:
    """(type, offset, length) of every NBD request Wireshark's dissector finds."""
    out = tshark(
        "-r",
        str(path),
        "-Y",
        "nbd.type",
        "-T",
        "fields",
        "-e",
        "nbd.type",
        "-e",
        "nbd.from",
        "-e",
        "nbd.len",
    )
    return [tuple(line.split("\t")) for line in out.splitlines() if line.strip()]


def assert_flows_match_stats(flows: dict[int, Flow], stats: ProxyStats) -> None:
    """The capture agrees with the proxy's counters: bytes per direction and how it ended."""
    assert len(flows) == len(stats.connections)
    for conn in stats.connections:
        flow = flows[conn.capture_port] if conn.capture_port else None
        if conn.failed:
            continue  # not opened in the capture: refused, checked by its own test
        assert flow is not None
        assert len(flow.data("client")) == conn.client_to_server
        assert len(flow.data("server")) == conn.server_to_client
        if conn.reset:
            assert flow.flags()[-1] == (conn.closed_by, _TCP_RST | _TCP_ACK)
            continue
        # Graceful: both FINs, the first from the side that closed first (the proxy
        # closes as the server), then the final ACK from that same side.
        first = "server" if conn.closed_by == "proxy" else conn.closed_by
        second = "client" if first == "server" else "server"
        assert flow.flags()[-2:] == [(first, _TCP_FIN | _TCP_ACK), (second, _TCP_FIN | _TCP_ACK)]
        assert flow.segments[-1][:2] == (first, _TCP_ACK)


# ---------------------------------------------------------------------------------------
# The writer alone


def test_internet_checksum_agrees_with_scapy() -> None:
    rng = random.Random(7)
    for length in (0, 1, 2, 3, 20, 1001, 65535, 65536):
        data = rng.randbytes(length)
        assert internet_checksum(data) == scapy_checksum(data)
    assert internet_checksum(b"\x00" * 40) == 0xFFFF
    assert internet_checksum(b"\xff\xff") == scapy_checksum(b"\xff\xff")


def test_writer_frames_a_conversation(tmp_path: Path) -> None:
    path = tmp_path / "w.pcapng"
    client_data = [pattern(0, 10, 1), pattern(10, 200_000, 1), pattern(200_010, 3, 1)]
    server_data = [pattern(0, 700_000, 2), pattern(700_000, 1, 2)]
    with PcapngWriter(path, interface_comment="the interface") as writer:
        stream = writer.open_stream("first connection", timestamp=1_700_000_000.25)
        stream.record("client", client_data[0], 1_700_000_000.5)
        stream.record("server", server_data[0], 1_700_000_001.0)
        stream.record("client", client_data[1], 1_700_000_001.5)
        stream.fin("client", 1_700_000_002.0)
        stream.record("server", server_data[1], 1_700_000_002.5)
        with pytest.raises(ValueError, match="FIN"):
            stream.record("client", client_data[2])
        stream.close("client", timestamp=1_700_000_003.0)
        stream.close("server")  # idempotent
        second = writer.open_stream("second connection")
        second.record("client", b"x")
        second.close("server", reset=True)
        writer.record_refused("third: refused")

    raw = path.read_bytes()
    block_type, _length, magic, major, minor = struct.unpack("<IIIHH", raw[:16])
    assert (block_type, magic, major, minor) == (0x0A0D0D0A, 0x1A2B3C4D, 1, 0)
    assert b"nbd-harness" in raw[:_length]
    idb = raw[_length:]
    idb_type, idb_length, linktype, _reserved, snaplen = struct.unpack("<IIHHI", idb[:16])
    assert (idb_type, linktype, snaplen) == (1, 1, 262144)
    assert struct.pack("<HH", 9, 1) + b"\x06" in idb[:idb_length]  # if_tsresol = 6
    assert b"the interface" in idb[:idb_length]

    packets = read_packets(path)
    assert float(packets[0].time) == pytest.approx(1_700_000_000.25, abs=1e-6)
    flows = read_capture(path)
    assert sorted(flows) == [40000, 40001, 40002]
    first, second, third = (flows[port] for port in sorted(flows))
    assert first.comments == [b"first connection"]
    assert first.data("client") == b"".join(client_data[:2])
    assert first.data("server") == b"".join(server_data)
    # The server's ISN sits 1 MiB below 2**32: 700 KB do not wrap, but the layout is
    # still checked by the unsigned arithmetic in Flow.data; the 8 MiB test wraps.
    assert first.flags() == [
        ("client", _TCP_SYN),
        ("server", _TCP_SYN | _TCP_ACK),
        ("client", _TCP_FIN | _TCP_ACK),
        ("server", _TCP_FIN | _TCP_ACK),
    ]
    assert first.segments[-1][:2] == ("client", _TCP_ACK)  # final ACK from the closer
    sizes = [len(payload) for _side, _flags, _seq, payload in first.segments if payload]
    assert max(sizes) == MAX_SEGMENT
    assert second.data("client") == b"x"
    assert second.flags()[-1] == ("server", _TCP_RST | _TCP_ACK)
    assert third.comments == [b"third: refused"]
    assert third.flags() == [("client", _TCP_SYN), ("server", _TCP_RST | _TCP_ACK)]
    assert_tshark_clean(path, streams=3)


def test_writer_is_thread_safe(tmp_path: Path) -> None:
    path = tmp_path / "threads.pcapng"
    sent: dict[int, bytes] = {}

    def talk(n: int, writer: PcapngWriter) -> None:
        stream = writer.open_stream(f"thread {n}")
        chunks = [pattern(n * 1000 + i, 1 + i * 997, n) for i in range(40)]
        for chunk in chunks:
            stream.record("client", chunk)
            stream.record("server", chunk[::-1])
        stream.close("client")
        sent[stream.client_port] = b"".join(chunks)

    with PcapngWriter(path) as writer, ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda n: talk(n, writer), range(8)))
    flows = read_capture(path)
    assert sorted(flows) == sorted(sent)
    for port, data in sent.items():
        assert flows[port].data("client") == data
        assert len(flows[port].data("server")) == len(data)


# ---------------------------------------------------------------------------------------
# The proxy with a scripted upstream: exact bytes, half-close


class ScriptedUpstream:
    """A TCP server (in a thread) that reads one connection to EOF, then answers and closes."""

    def __init__(self, answer: bytes) -> None:
        self.answer = answer
        self.received = b""
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(TIMEOUT)
        self.address = Address.tcp("127.0.0.1", self._listener.getsockname()[1])
        self._thread = threading.Thread(target=self._serve, name="scripted-upstream")
        self.error: BaseException | None = None

    def _serve(self) -> None:
        try:
            conn, _ = self._listener.accept()
            with conn:
                conn.settimeout(TIMEOUT)
                chunks = []
                while chunk := conn.recv(1 << 16):
                    chunks.append(chunk)
                self.received = b"".join(chunks)
                conn.sendall(self.answer)
        except BaseException as exc:  # reported by the test
            self.error = exc

    def __enter__(self) -> ScriptedUpstream:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._thread.join(TIMEOUT)
        self._listener.close()
        assert not self._thread.is_alive()


def test_proxy_forwards_exact_bytes_and_half_close(tmp_path: Path) -> None:
    path = tmp_path / "echo.pcapng"
    chunks = [pattern(0, 1, 3), pattern(1, 100, 3), pattern(101, 70_000, 3), pattern(0, 300_000, 4)]
    answer = pattern(0, 1_500_000, 5)  # more than 1 MiB: the server's sequence numbers wrap
    with (
        ScriptedUpstream(answer) as upstream,
        ProxyThread(LOCALHOST, upstream.address, path) as proxy,
    ):
        with socket.create_connection((proxy.address.host, proxy.address.port), TIMEOUT) as sock:
            sock.settimeout(TIMEOUT)
            for chunk in chunks:
                sock.sendall(chunk)
            sock.shutdown(socket.SHUT_WR)  # the upstream answers only after EOF
            received = []
            while chunk := sock.recv(1 << 16):
                received.append(chunk)
        proxy.wait_closed(1, TIMEOUT)
        stats = proxy.stats
    assert_no_proxy_thread()
    assert upstream.error is None
    sent = b"".join(chunks)
    assert upstream.received == sent
    assert b"".join(received) == answer
    assert (stats.accepted, stats.closed, stats.failed) == (1, 1, 0)
    assert (stats.client_to_server, stats.server_to_client) == (len(sent), len(answer))
    conn = stats.connections[0]
    assert (conn.closed_by, conn.reset, conn.done) == ("client", False, True)

    flows = read_capture(path)
    flow = flows[conn.capture_port]
    assert flow.data("client") == sent
    assert flow.data("server") == answer
    assert flow.flags() == [
        ("client", _TCP_SYN),
        ("server", _TCP_SYN | _TCP_ACK),
        ("client", _TCP_FIN | _TCP_ACK),
        ("server", _TCP_FIN | _TCP_ACK),
    ]
    # The answer came after the client's FIN, as it did on the wire.
    fin_index = next(i for i, s in enumerate(flow.segments) if s[1] & _TCP_FIN)
    assert all(not s[3] for s in flow.segments[:fin_index] if s[0] == "server")
    assert b"127.0.0.1:" in flow.comments[0] and str(upstream.address).encode() in flow.comments[0]
    assert_tshark_clean(path, streams=1)


def test_async_proxy_context_manager_and_unix_listen(tmp_path: Path) -> None:
    listen = Address.unix(str(tmp_path / "proxy.sock"))
    path = tmp_path / "a.pcapng"
    answer = b"pong" * 1000

    async def main() -> None:
        with ScriptedUpstream(answer) as upstream:
            async with RecordingProxy(listen, upstream.address, path) as proxy:
                assert proxy.address == listen
                reader, writer = await asyncio.open_unix_connection(listen.path)
                writer.write(b"ping" * 1000)
                writer.write_eof()
                assert await asyncio.wait_for(reader.read(), TIMEOUT) == answer
                writer.close()
                await writer.wait_closed()
                await asyncio.wait_for(proxy.wait_closed(1), TIMEOUT)
                assert proxy.stats.connections[0].peer.startswith(f"unix pid {os.getpid()} ")
            assert upstream.received == b"ping" * 1000

    asyncio.run(main())
    assert not os.path.exists(listen.path)  # the proxy removes its socket
    flow = next(iter(read_capture(path).values()))
    assert flow.data("client") == b"ping" * 1000
    assert flow.data("server") == answer


# ---------------------------------------------------------------------------------------
# The proxy in front of qemu-nbd


@pytest.mark.peers
def test_qemu_nbd_tcp_nbdinfo_and_nbdsh(qemu_nbd_tcp: Address, image: Path, tmp_path: Path) -> None:
    path = tmp_path / "tcp.pcapng"
    data_file = tmp_path / "data.bin"
    offset, data = 65536 + 512, pattern(65536 + 512, 300_000, 11)
    data_file.write_bytes(data)
    with ProxyThread(LOCALHOST, qemu_nbd_tcp, path) as proxy:
        uri = nbd_uri(proxy.address)
        assert nbdinfo(uri, tmp_path) == str(IMAGE_SIZE)
        nbdsh_write_read(uri, data_file, offset, tmp_path)
        proxy.wait_closed(2, TIMEOUT)
        stats, errors = proxy.stats, proxy.errors
    assert_no_proxy_thread()
    assert errors == []
    assert (stats.accepted, stats.closed, stats.failed) == (2, 2, 0)
    with open(image, "rb") as file:
        file.seek(offset)
        assert file.read(len(data)) == data

    flows = read_capture(path)
    assert_flows_match_stats(flows, stats)
    nbdsh_flow = flows[stats.connections[1].capture_port]
    client_bytes, server_bytes = nbdsh_flow.data("client"), nbdsh_flow.data("server")
    assert client_bytes[4:12] == GREETING[8:]  # client flags, then its first option
    assert server_bytes.startswith(GREETING)  # the newstyle greeting
    assert data in client_bytes  # the write payload, as sent
    assert data in server_bytes  # the read reply payload, as received
    # Who closes first after NBD_CMD_DISC is a race between client and server.
    assert {conn.closed_by for conn in stats.connections} <= {"client", "server"}
    assert_tshark_clean(path, streams=2)
    requests = nbd_requests(path)
    assert (str(Cmd.WRITE.value), f"{offset:#018x}", str(len(data))) in requests
    assert (str(Cmd.READ.value), f"{offset:#018x}", str(len(data))) in requests
    assert any(request[0] == str(Cmd.DISC.value) for request in requests)  # nbdsh's


@pytest.mark.peers
def test_qemu_nbd_unix_upstream(qemu_nbd_unix: Address, image: Path, tmp_path: Path) -> None:
    """unix -> unix with nbdsh, and tcp -> unix with nbdinfo."""
    data_file = tmp_path / "data.bin"
    offset, data = 1 << 20, pattern(1 << 20, 128 * 1024, 12)
    data_file.write_bytes(data)
    unix_listen = Address.unix(str(tmp_path / "proxy.sock"))
    with ProxyThread(unix_listen, qemu_nbd_unix, tmp_path / "unix.pcapng") as proxy:
        nbdsh_write_read(nbd_uri(proxy.address), data_file, offset, tmp_path)
        proxy.wait_closed(1, TIMEOUT)
        unix_stats = proxy.stats
    with ProxyThread(LOCALHOST, qemu_nbd_unix, tmp_path / "tcp.pcapng") as proxy:
        assert nbdinfo(nbd_uri(proxy.address), tmp_path) == str(IMAGE_SIZE)
        proxy.wait_closed(1, TIMEOUT)
        tcp_stats = proxy.stats
    assert_no_proxy_thread()
    with open(image, "rb") as file:
        file.seek(offset)
        assert file.read(len(data)) == data

    flows = read_capture(tmp_path / "unix.pcapng")
    assert_flows_match_stats(flows, unix_stats)
    (flow,) = flows.values()
    assert flow.comments[0].startswith(b"connection 1: client unix pid ")
    assert data in flow.data("client") and data in flow.data("server")
    assert_tshark_clean(tmp_path / "unix.pcapng", streams=1)
    assert_flows_match_stats(read_capture(tmp_path / "tcp.pcapng"), tcp_stats)
    assert_tshark_clean(tmp_path / "tcp.pcapng", streams=1)


@pytest.mark.peers
def test_concurrent_connections_are_separate_streams(
    qemu_nbd_tcp: Address, image: Path, tmp_path: Path
) -> None:
    path = tmp_path / "concurrent.pcapng"
    regions = {}
    for n in range(4):
        offset = n * (1 << 20) + 4096
        data = pattern(offset, 200_000, 20 + n)
        (tmp_path / f"data{n}.bin").write_bytes(data)
        regions[n] = (offset, data)
    with ProxyThread(LOCALHOST, qemu_nbd_tcp, path) as proxy:
        uri = nbd_uri(proxy.address)
        with ThreadPoolExecutor(4) as pool:
            futures = [
                pool.submit(nbdsh_write_read, uri, tmp_path / f"data{n}.bin", offset, tmp_path)
                for n, (offset, _data) in regions.items()
            ]
            for future in futures:
                future.result()
        proxy.wait_closed(4, TIMEOUT)
        stats = proxy.stats
    assert (stats.accepted, stats.closed, stats.failed) == (4, 4, 0)
    with open(image, "rb") as file:
        for offset, data in regions.values():
            file.seek(offset)
            assert file.read(len(data)) == data
    flows = read_capture(path)
    assert_flows_match_stats(flows, stats)
    # Each region's data is in exactly one conversation, in both directions.
    for _offset, data in regions.values():
        holders = [flow for flow in flows.values() if data in flow.data("client")]
        assert len(holders) == 1
        assert data in holders[0].data("server")
    assert_tshark_clean(path, streams=4)


@pytest.mark.peers
def test_write_heavy_session_is_split_into_segments(
    qemu_nbd_tcp: Address, image: Path, tmp_path: Path
) -> None:
    path = tmp_path / "heavy.pcapng"
    data_file = tmp_path / "data.bin"
    offset, data = 3 * 4096 + 17, pattern(3 * 4096 + 17, 8 * 1024 * 1024, 30)
    data_file.write_bytes(data)
    with ProxyThread(LOCALHOST, qemu_nbd_tcp, path) as proxy:
        nbdsh_write_read(nbd_uri(proxy.address), data_file, offset, tmp_path)
        proxy.wait_closed(1, TIMEOUT)
        stats = proxy.stats
    assert stats.client_to_server > len(data) and stats.server_to_client > len(data)
    with open(image, "rb") as file:
        file.seek(offset)
        assert file.read(len(data)) == data
    flows = read_capture(path)
    assert_flows_match_stats(flows, stats)
    (flow,) = flows.values()
    assert data in flow.data("client")
    assert data in flow.data("server")  # 8 MiB back: the server's sequence numbers wrapped
    # read_capture checked that no segment exceeds MAX_SEGMENT (how the proxy's reads were
    # cut depends on timing; the writer's splitting is checked exactly on its own).
    assert len([s for s in flow.segments if s[3]]) >= 2 * len(data) // MAX_SEGMENT
    assert_tshark_clean(path, streams=1)
    requests = nbd_requests(path)
    assert (str(Cmd.WRITE.value), f"{offset:#018x}", str(len(data))) in requests


# ---------------------------------------------------------------------------------------
# Failures: upstream down, clients that vanish


@pytest.mark.peers
def test_upstream_down_is_a_clean_error(require_programs, tmp_path: Path) -> None:
    require_programs("nbdinfo", "tshark")
    # A bound but not listening socket: connecting to it is refused, and nobody else can
    # take the port while the test runs.
    with socket.socket() as placeholder:
        placeholder.bind(("127.0.0.1", 0))
        upstream = Address.tcp("127.0.0.1", placeholder.getsockname()[1])
        path = tmp_path / "down.pcapng"
        with ProxyThread(LOCALHOST, upstream, path) as proxy:
            result = run_command(
                ["nbdinfo", nbd_uri(proxy.address)], timeout=TIMEOUT, env=client_env()
            )
            assert result.returncode != 0
            with socket.create_connection((proxy.address.host, proxy.address.port), 10) as sock:
                sock.settimeout(TIMEOUT)
                assert_closed_by_proxy(sock)
            proxy.wait_closed(2, TIMEOUT)
            stats, errors = proxy.stats, proxy.errors
    assert_no_proxy_thread()
    assert (stats.accepted, stats.failed, stats.closed) == (2, 2, 2)
    assert len(errors) == 2
    assert f"cannot connect to upstream {upstream}" in errors[0]
    assert "refused" in errors[0].lower()
    flows = read_capture(path)
    assert len(flows) == 2
    for flow in flows.values():
        assert flow.flags() == [("client", _TCP_SYN), ("server", _TCP_RST | _TCP_ACK)]
        assert b"upstream connect failed" in flow.comments[0]
    assert_tshark_clean(path, streams=2)


def test_unix_upstream_missing(tmp_path: Path) -> None:
    upstream = Address.unix(str(tmp_path / "nobody-here.sock"))
    with ProxyThread(LOCALHOST, upstream, tmp_path / "x.pcapng") as proxy:
        with socket.create_connection((proxy.address.host, proxy.address.port), 10) as sock:
            sock.settimeout(TIMEOUT)
            assert_closed_by_proxy(sock)
        proxy.wait_closed(1, TIMEOUT)
        assert "No such file or directory" in proxy.errors[0]


def test_upstream_connect_timeout_and_stop_while_connecting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def never_answers(self: RecordingProxy) -> None:
        await asyncio.sleep(3600)

    monkeypatch.setattr(RecordingProxy, "_connect_upstream", never_answers)
    proxy = ProxyThread(LOCALHOST, LOCALHOST, tmp_path / "t.pcapng", connect_timeout=0.2)
    with proxy:
        address = (proxy.address.host, proxy.address.port)
        with socket.create_connection(address, 10) as sock:
            sock.settimeout(TIMEOUT)
            assert_closed_by_proxy(sock)
        proxy.wait_closed(1, TIMEOUT)
        assert proxy.errors == [
            f"connection 1 from {proxy.stats.connections[0].peer}: cannot connect to "
            f"upstream {LOCALHOST}: no answer within 0.2 s"
        ]
    # Stopping while a connection waits for its upstream ends it at once.
    proxy = ProxyThread(LOCALHOST, LOCALHOST, tmp_path / "u.pcapng", connect_timeout=3600)
    with proxy, socket.create_connection((proxy.address.host, proxy.address.port), 10) as sock:
        sock.settimeout(TIMEOUT)
        for _ in range(1000):
            if proxy.stats.accepted:
                break
            time.sleep(0.01)
        proxy.stop()
        assert_closed_by_proxy(sock)
    assert_no_proxy_thread()
    assert proxy.stats.closed == 1


@pytest.mark.peers
def test_client_disconnecting_abruptly(qemu_nbd_tcp: Address, tmp_path: Path) -> None:
    path = tmp_path / "abrupt.pcapng"
    with ProxyThread(LOCALHOST, qemu_nbd_tcp, path) as proxy:
        # 1. A client that resets the connection in the middle of the handshake.
        sock = socket.create_connection((proxy.address.host, proxy.address.port), 10)
        sock.settimeout(TIMEOUT)
        greeting = b""
        while len(greeting) < NEWSTYLE_GREETING_LEN:
            greeting += sock.recv(NEWSTYLE_GREETING_LEN - len(greeting))
        assert greeting[:16] == GREETING
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()  # SO_LINGER 0: RST instead of FIN
        proxy.wait_closed(1, TIMEOUT)

        # 2. A client killed while its connection is idle: the kernel closes with FIN.
        nbdsh = ManagedProcess.start(
            [
                "nbdsh",
                "-u",
                nbd_uri(proxy.address),
                "-c",
                "import time; print('connected', flush=True); time.sleep(120)",
            ],
            log_path=tmp_path / "nbdsh.log",
            env=client_env(),
        )
        with nbdsh:
            nbdsh.wait_ready(lambda: "connected" in nbdsh.log_text(), TIMEOUT, "nbdsh connected")
        proxy.wait_closed(2, TIMEOUT)

        # 3. The server is fine and the proxy still serves.
        assert nbdinfo(nbd_uri(proxy.address), tmp_path) == str(IMAGE_SIZE)
        proxy.wait_closed(3, TIMEOUT)
        stats, errors = proxy.stats, proxy.errors
    assert errors == []
    reset, killed, fine = stats.connections
    assert (reset.closed_by, reset.reset) == ("client", True)
    assert (killed.closed_by, killed.reset) == ("client", False)
    assert fine.closed_by in ("client", "server") and not fine.reset  # DISC: either first
    flows = read_capture(path)
    assert_flows_match_stats(flows, stats)
    assert flows[reset.capture_port].flags()[-1] == ("client", _TCP_RST | _TCP_ACK)
    assert flows[reset.capture_port].data("server")[:16] == GREETING
    assert flows[killed.capture_port].flags()[-2][0] == "client"  # the client's FIN came first
    assert_tshark_clean(path, streams=3)


@pytest.mark.peers
def test_stop_with_connections_open(qemu_nbd_tcp: Address, tmp_path: Path) -> None:
    path = tmp_path / "stop.pcapng"
    proxy = ProxyThread(LOCALHOST, qemu_nbd_tcp, path).start()
    try:
        sock = socket.create_connection((proxy.address.host, proxy.address.port), 10)
        sock.settimeout(TIMEOUT)
        assert sock.recv(8) == GREETING[:8]
    finally:
        proxy.stop()
    with sock:
        rest = b""
        while chunk := sock.recv(100):
            rest += chunk  # the rest of the greeting, then EOF from the stopped proxy
    assert_no_proxy_thread()
    stats = proxy.stats
    assert (stats.closed, stats.connections[0].closed_by) == (1, "proxy")
    (flow,) = read_capture(path).values()
    assert flow.data("server") == GREETING[:8] + rest
    assert flow.flags()[-2:] == [("server", _TCP_FIN | _TCP_ACK), ("client", _TCP_FIN | _TCP_ACK)]


def test_proxy_thread_start_failure_leaves_no_thread(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        listen = Address.tcp("127.0.0.1", taken.getsockname()[1])
        with pytest.raises(OSError), ProxyThread(listen, LOCALHOST, tmp_path / "x.pcapng"):
            pass
    assert_no_proxy_thread()
    with pytest.raises(OSError):
        ProxyThread(LOCALHOST, LOCALHOST, tmp_path / "no" / "such" / "dir.pcapng").start()
    assert_no_proxy_thread()


# ---------------------------------------------------------------------------------------
# nbd-harness capture


_CLI = (
    "import argparse, sys\n"
    "from harness.commands import capture\n"
    "parser = argparse.ArgumentParser(prog='nbd-harness')\n"
    "capture.register(parser.add_subparsers(dest='command'))\n"
    "args = parser.parse_args()\n"
    "sys.exit(args.func(args))\n"
)


def start_cli(tmp_path: Path, *args: str) -> tuple[ManagedProcess, Address]:
    """Run ``nbd-harness capture ARGS`` in the background; return it and its listen address."""
    process = ManagedProcess.start(
        [sys.executable, "-c", _CLI, "capture", *args], log_path=tmp_path / "capture.log"
    )
    process.wait_ready(lambda: "listening on " in process.log_text(), TIMEOUT, "capture ready")
    first = process.log_text().split("listening on ", 1)[1]
    return process, parse_address(first.split(",", 1)[0])


@pytest.mark.peers
def test_cli_count(qemu_nbd_tcp: Address, tmp_path: Path) -> None:
    out = tmp_path / "cli.pcapng"
    process, address = start_cli(
        tmp_path,
        "--listen",
        "tcp://127.0.0.1:0",
        "--upstream",
        str(qemu_nbd_tcp),
        "--out",
        str(out),
        "--count",
        "1",
    )
    with process:
        assert address.port != 0
        assert nbdinfo(nbd_uri(address), tmp_path) == str(IMAGE_SIZE)
        assert process.wait(TIMEOUT) == 0
    log = process.log_text()
    assert "1 connection(s) finished: 1 connection(s), 0 failed;" in log
    flows = read_capture(out)
    (flow,) = flows.values()
    assert f"{len(flow.data('client'))} bytes client->server" in log
    assert f"{len(flow.data('server'))} bytes server->client" in log


def test_cli_interrupt_and_failures(tmp_path: Path) -> None:
    out = tmp_path / "cli.pcapng"
    listen = tmp_path / "cli.sock"
    process, address = start_cli(
        tmp_path,
        "--listen",
        f"unix:{listen}",
        "--upstream",
        f"unix:{tmp_path}/missing.sock",
        "--out",
        str(out),
    )
    with process:
        assert address == Address.unix(str(listen))
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(TIMEOUT)
            sock.connect(str(listen))
            assert_closed_by_proxy(sock)
        os.kill(process.pid, signal.SIGINT)
        assert process.wait(TIMEOUT) == 1  # a connection failed
    log = process.log_text()
    assert "interrupted: 1 connection(s), 1 failed" in log
    assert "cannot connect to upstream unix:" in log
    assert not listen.exists()
    assert len(read_capture(out)) == 1


@pytest.mark.parametrize(
    ("listen", "count", "out", "message"),
    [
        ("http://x", None, "x.pcapng", "expected tcp://HOST:PORT"),
        ("tcp://127.0.0.1:0", "0", "x.pcapng", "--count 0: must be at least 1"),
        ("tcp://127.0.0.1:0", None, "missing/x.pcapng", "cannot write .*missing/x.pcapng"),
    ],
)
def test_cli_user_errors(
    listen: str, count: str | None, out: str, message: str, tmp_path: Path
) -> None:
    parser = argparse.ArgumentParser()
    capture_command.register(parser.add_subparsers())
    argv = ["capture", "--listen", listen, "--upstream", "tcp://127.0.0.1:1"]
    argv += ["--out", str(tmp_path / out)] + (["--count", count] if count else [])
    args = parser.parse_args(argv)
    with pytest.raises(UserError, match=message):
        args.func(args)
