"""Real captures: real NBD peers recorded with ``dumpcap``, decoded, checked against tshark.

Each scenario starts a real server on a kernel-chosen loopback port, captures
``tcp port PORT`` on ``lo`` while real clients run, then decodes the file and
checks the message sequence, the negotiated state, the block status contexts and
that every byte read back equals what was written.  Every capture is also read
by Wireshark's own NBD dissector (tshark 4.0 decodes requests and simple
replies): our decode must agree on every message it decodes.

The same scenarios made the small captures in ``tests/data/captures`` (see its
README); they are checked here without any peer.  Regenerate them with::

    .venv/bin/python tests/test_dissect_peers.py --regenerate
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from harness.dissect import CLIENT, SERVER, Capture, Session, WireMessage, decode_capture
from harness.process import ManagedProcess, pick_port_and_start, run_command
from harness.protocol import constants as c
from harness.tls import TestPKI

CAPTURES = Path(__file__).parent / "data" / "captures"
PATTERN = bytes((i * 7 + 3) % 251 for i in range(8192))  # written, then read back
CLIENT_TIMEOUT = 60.0


# --- capturing ------------------------------------------------------------------


def _packet_count(dumpcap: ManagedProcess) -> int:
    counts = re.findall(r"Packets: (\d+)", dumpcap.log_text())
    return int(counts[-1]) if counts else 0


def _probe(port: int) -> None:
    # A UDP datagram the capture filter also matches: once dumpcap counts one, it
    # is capturing (its "Capturing on" line comes before it really is).
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.sendto(b"probe", ("127.0.0.1", port))


@contextlib.contextmanager
def capturing(path: Path, port: int, work: Path) -> Iterator[None]:
    """Record ``tcp port PORT`` on ``lo`` into ``path`` (pcap when it ends in .pcap)."""
    log = work / f"dumpcap-{path.name}.log"
    log.unlink(missing_ok=True)
    file_format = ["-P"] if path.suffix == ".pcap" else []
    dumpcap = ManagedProcess.start(
        [
            "dumpcap",
            "-i",
            "lo",
            *file_format,
            "-f",
            f"tcp port {port} or udp dst port {port}",
            "-w",
            str(path),
        ],
        log_path=log,
    )
    try:
        dumpcap.wait_ready(lambda: (_probe(port), _packet_count(dumpcap) > 0)[1], 15, "capture")
        yield
        # Everything sent before a later probe has been captured once the probe is counted.
        before = _packet_count(dumpcap)
        dumpcap.wait_ready(
            lambda: (_probe(port), _packet_count(dumpcap) > before)[1], 15, "final probe"
        )
    finally:
        dumpcap.stop()


def client(command: str, work: Path) -> str:
    """Run a client shell command (nbdsh needs Debian's python first on PATH)."""
    env = dict(os.environ, PATH="/usr/bin:" + os.environ.get("PATH", ""))
    result = run_command(
        ["sh", "-c", command],
        timeout=CLIENT_TIMEOUT,
        env=env,
        check=True,
        log_path=work / "clients.log",
    )
    return str(result.stdout)


def nbdsh_write_read(uri: str, offset: int, setup: str = "") -> str:
    script = (
        f"{setup}h.connect_uri({uri!r}); "
        f"h.pwrite(bytes.fromhex({PATTERN.hex()!r}), {offset}); "
        f"assert h.pread({len(PATTERN)}, {offset}) == bytes.fromhex({PATTERN.hex()!r}); "
        "h.shutdown()"
    )
    return f"nbdsh -c {_quote(script)}"


def _quote(text: str) -> str:
    return "'" + text.replace("'", "'\"'\"'") + "'"


# --- scenarios: record, then check -----------------------------------------------


@dataclass(frozen=True)
class Scenario:
    """How to record one capture, and what its decode must show."""

    name: str
    file_name: str
    record: Callable[[Path, Path], None]  # (capture path, work dir)
    check: Callable[[Capture], None]
    programs: tuple[str, ...]


def record_qemu_nbd(path: Path, work: Path) -> None:
    image = work / "disk.qcow2"
    run_command(["qemu-img", "create", "-f", "qcow2", str(image), "1M"], timeout=30, check=True)
    run_command(["qemu-img", "bitmap", "--add", str(image), "b0"], timeout=30, check=True)
    run_command(
        ["qemu-io", "-f", "qcow2", "-c", "write -P 0x11 0 64k", str(image)], timeout=30, check=True
    )
    server, port = pick_port_and_start(
        lambda p: [
            "qemu-nbd",
            "-t",
            "--bind",
            "127.0.0.1",
            "--port",
            str(p),
            "-f",
            "qcow2",
            "-A",
            "-B",
            "b0",
            str(image),
        ],
        log_path=work / "qemu-nbd.log",
    )
    uri = f"nbd://127.0.0.1:{port}"
    with server, capturing(path, port, work):
        client(f"nbdinfo --map {uri}", work)
        client(f"nbdinfo --map=qemu:allocation-depth {uri}", work)
        client(f"nbdinfo --map=qemu:dirty-bitmap:b0 {uri}", work)
        client(nbdsh_write_read(uri, 131072), work)


def check_qemu_nbd(capture: Capture) -> None:
    sessions = nbd_sessions(capture, 4)
    for session in sessions:
        assert session.state.style == "fixed-newstyle"
        assert session.state.structured_replies
        assert session.state.export_size == 1 << 20
        go = only(session, "NBD_OPT_GO")
        replies = [m.name for m in session.messages if m.option is go]
        assert replies[-1] == "NBD_REP_ACK" and "NBD_REP_INFO" in replies
        assert any(
            m.fields.get("info_type") == c.Info.EXPORT for m in session.messages if m.option is go
        )
    maps = {
        "base:allocation": [(65536, "allocated"), ((1 << 20) - 65536, "HOLE|ZERO")],
        "qemu:allocation-depth": [(65536, "depth 1"), ((1 << 20) - 65536, "unallocated (depth 0)")],
        "qemu:dirty-bitmap:b0": [(65536, "DIRTY"), ((1 << 20) - 65536, "clean")],
    }
    for session, (context, extents) in zip(sessions, maps.items(), strict=False):
        assert list(session.state.meta_contexts.values()) == [context]
        set_option = only(session, "NBD_OPT_SET_META_CONTEXT")
        assert [q["query"] for q in set_option.fields["queries"]] == [context]
        status = only(session, "NBD_REPLY_TYPE_BLOCK_STATUS")
        assert status.request is only(session, "NBD_CMD_BLOCK_STATUS")
        assert status.fields["context_name"] == context
        assert descriptors(status) == extents
    check_write_read(sessions[3], 131072)


def record_nbdkit(path: Path, work: Path) -> None:
    server, port = pick_port_and_start(
        lambda p: ["nbdkit", "-f", "-i", "127.0.0.1", "-p", str(p), "memory", "1M"],
        log_path=work / "nbdkit.log",
    )
    uri = f"nbd://127.0.0.1:{port}"
    with server, capturing(path, port, work):
        client(f"nbdinfo --list {uri}", work)
        client(
            f"qemu-io -f raw -c 'write -P 0x5a 4096 4096' -c 'read -P 0x5a 4096 4096' {uri}", work
        )
        client(f"qemu-img convert -O raw {uri} {work / 'copy.raw'}", work)
        # Non-fixed newstyle (no handshake flags): NBD_OPT_EXPORT_NAME and its 124 zeroes.
        client(nbdsh_write_read(uri, 65536, "h.set_handshake_flags(0); "), work)
    copy = (work / "copy.raw").read_bytes()
    assert copy[4096:8192] == b"\x5a" * 4096


def check_nbdkit(capture: Capture) -> None:
    listing, qemu_io, convert, legacy = nbd_sessions(capture, 4)
    assert [m.name for m in listing.messages if m.kind == "option"] == [
        "NBD_OPT_STRUCTURED_REPLY",
        "NBD_OPT_LIST",
        "NBD_OPT_INFO",
        "NBD_OPT_LIST_META_CONTEXT",
        "NBD_OPT_ABORT",
    ]
    assert listing.phase == "aborted"
    server_reply = only(listing, "NBD_REP_SERVER")
    assert server_reply.option is only(listing, "NBD_OPT_LIST")
    info = only(listing, "NBD_OPT_INFO")
    info_types = {m.fields["info_type"] for m in listing.messages if m.name == "NBD_REP_INFO"}
    assert c.Info.EXPORT in info_types
    assert info.fields["info_requests"] and all(
        m.option is info for m in listing.messages if m.name == "NBD_REP_INFO"
    )
    listed = [
        m.fields["context_name"] for m in listing.messages if m.name == "NBD_REP_META_CONTEXT"
    ]
    assert "base:allocation" in listed
    assert listing.state.meta_contexts == {}  # listing selects nothing
    write = only(qemu_io, "NBD_CMD_WRITE")
    assert (write.fields["offset"], write.fields["data"]) == (4096, b"\x5a" * 4096)
    read = only(qemu_io, "NBD_CMD_READ")
    assert read_data(qemu_io, read) == b"\x5a" * 4096
    # qemu-img convert asks for block status and reads what is allocated.
    contexts = convert.state.meta_contexts
    assert contexts == {next(iter(contexts)): "base:allocation"}
    convert_reads = [m for m in convert.messages if m.name == "NBD_CMD_READ"]
    assert convert_reads and any(b"\x5a" * 4096 in read_data(convert, m) for m in convert_reads)
    assert legacy.state.style == "newstyle" and not legacy.state.no_zeroes
    reply = next(m for m in legacy.messages if m.kind == "export-name-reply")
    assert reply.length == 134 and reply.fields["zeroes"] == b"\0" * 124
    assert reply.option is only(legacy, "NBD_OPT_EXPORT_NAME")
    check_write_read(legacy, 65536)


def record_nbd_server(path: Path, work: Path) -> None:
    image = work / "disk.raw"
    run_command(["qemu-img", "create", "-f", "raw", str(image), "1M"], timeout=30, check=True)

    def argv(port: int) -> list[str]:
        config = work / "nbd-server.conf"
        config.write_text(
            f"[generic]\nlisteningaddr = 127.0.0.1\nport = {port}\n[disk]\nexportname = {image}\n"
        )
        # -d: stay in the foreground and serve one client (no foreground multi-client mode)
        return ["nbd-server", "-d", "-C", str(config)]

    server, port = pick_port_and_start(argv, log_path=work / "nbd-server.log")
    with server, capturing(path, port, work):
        client(nbdsh_write_read(f"nbd://127.0.0.1:{port}/disk", 12288), work)


def check_nbd_server(capture: Capture) -> None:
    [session] = nbd_sessions(capture, 1)
    assert session.state.export_name == "disk"
    refused = only(session, "NBD_REP_ERR_UNSUP")
    assert refused.option is only(session, "NBD_OPT_STRUCTURED_REPLY")
    assert not session.state.structured_replies
    assert all(m.kind != "chunk" for m in session.messages)
    check_write_read(session, 12288)


def record_nbdkit_oldstyle(path: Path, work: Path) -> None:
    server, port = pick_port_and_start(
        lambda p: ["nbdkit", "-f", "-o", "-i", "127.0.0.1", "-p", str(p), "memory", "1M"],
        log_path=work / "nbdkit.log",
    )
    with server, capturing(path, port, work):
        client(nbdsh_write_read(f"nbd://127.0.0.1:{port}", 8192), work)


def check_nbdkit_oldstyle(capture: Capture) -> None:
    [session] = nbd_sessions(capture, 1)
    assert session.messages[0].kind == "oldstyle-greeting"
    assert session.state.style == "oldstyle" and session.state.export_size == 1 << 20
    assert not any(m.kind in ("option", "option-reply", "client-flags") for m in session.messages)
    check_write_read(session, 8192)


SCENARIOS = [
    Scenario(
        "qemu-nbd",
        "qemu-nbd-contexts-write-read.pcapng",
        record_qemu_nbd,
        check_qemu_nbd,
        ("qemu-nbd", "qemu-img", "qemu-io", "nbdinfo", "nbdsh"),
    ),
    Scenario(
        "nbdkit",
        "nbdkit-list-qemu-io-convert.pcap",
        record_nbdkit,
        check_nbdkit,
        ("nbdkit", "qemu-io", "qemu-img", "nbdinfo", "nbdsh"),
    ),
    Scenario(
        "nbd-server",
        "nbd-server-write-read.pcapng",
        record_nbd_server,
        check_nbd_server,
        ("nbd-server", "qemu-img", "nbdsh"),
    ),
    Scenario(
        "nbdkit-oldstyle",
        "nbdkit-oldstyle-write-read.pcapng",
        record_nbdkit_oldstyle,
        check_nbdkit_oldstyle,
        ("nbdkit", "nbdsh"),
    ),
]


# --- checking helpers -------------------------------------------------------------


def nbd_sessions(capture: Capture, count: int) -> list[Session]:
    """The capture's NBD sessions (exactly ``count``), each decoded without a loss."""
    assert capture.errors == []
    sessions = [s for s in capture.sessions if s.nbd]
    assert len(sessions) == count, [(s.index, s.phase) for s in capture.sessions]
    for session in sessions:
        assert session.undecoded == [], session.undecoded
        assert not session.joined_midstream
        for direction in (CLIENT, SERVER):
            assert session.accounted(direction)
            assert session.bytes_decoded[direction] == session.bytes_total[direction] > 0
        assert session.notes == []
        assert all(m.notes == () for m in session.messages), [
            (m.name, m.notes) for m in session.messages if m.notes
        ]
        replies = [m for m in session.messages if m.kind in ("simple-reply", "chunk")]
        assert all(m.request is not None for m in replies)
    return sessions


def only(session: Session, name: str) -> WireMessage:
    [message] = [m for m in session.messages if m.name == name]
    return message


def descriptors(status: WireMessage) -> list[tuple[int, str]]:
    return [(d["length"], d["status_text"]) for d in status.fields["descriptors"]]


def read_data(session: Session, read: WireMessage) -> bytes:
    """The bytes a READ returned, assembled from its simple reply or its chunks."""
    start, length = read.fields["offset"], read.fields["length"]
    buffer = bytearray(length)
    for reply in (m for m in session.messages if m.request is read):
        fields = reply.fields
        if reply.kind == "simple-reply":
            assert fields["error"] == 0
            buffer[:] = fields["data"]
        elif fields["type"] == c.ReplyType.OFFSET_DATA:
            at = fields["data_offset"] - start
            buffer[at : at + len(fields["data"])] = fields["data"]
        else:
            assert fields["type"] in (c.ReplyType.OFFSET_HOLE, c.ReplyType.NONE)
    return bytes(buffer)


def check_write_read(session: Session, offset: int) -> None:
    """The session wrote PATTERN at ``offset`` and read back the same bytes."""
    write = only(session, "NBD_CMD_WRITE")
    assert (write.fields["offset"], write.fields["data"]) == (offset, PATTERN)
    written = [m for m in session.messages if m.request is write]
    assert written and all(m.fields.get("error", 0) == 0 for m in written)
    reads = [
        m for m in session.messages if m.name == "NBD_CMD_READ" and m.fields["offset"] == offset
    ]
    assert [read_data(session, m) for m in reads] == [PATTERN]


# --- comparing with Wireshark -------------------------------------------------------


def tshark_messages(path: Path) -> set[tuple[str, int, int, int, int, int]]:
    """What tshark's NBD dissector decodes: requests and simple replies, by frame."""
    result = run_command(
        [
            "tshark",
            "-r",
            str(path),
            "-Y",
            "nbd",
            "-T",
            "fields",
            "-E",
            "occurrence=a",
            "-E",
            "aggregator=,",
            "-e",
            "frame.number",
            "-e",
            "nbd.magic",
            "-e",
            "nbd.type",
            "-e",
            "nbd.handle",
            "-e",
            "nbd.from",
            "-e",
            "nbd.len",
            "-e",
            "nbd.error",
        ],
        timeout=60,
        check=True,
    )
    decoded: set[tuple[str, int, int, int, int, int]] = set()
    for line in str(result.stdout).splitlines():
        frame, magics, types, handles, starts, lengths, errors = (line.split("\t") + [""] * 7)[:7]
        magic_list = [int(m, 16) for m in magics.split(",")]
        if all(m == c.REQUEST_MAGIC for m in magic_list):
            for type_, handle, start, length in zip(
                types.split(","),
                handles.split(","),
                starts.split(","),
                lengths.split(","),
                strict=True,
            ):
                decoded.add(
                    (
                        "request",
                        int(frame),
                        int(type_),
                        int(handle, 16),
                        int(start, 16),
                        int(length),
                    )
                )
        elif all(m == c.SIMPLE_REPLY_MAGIC for m in magic_list):
            for handle, error in zip(handles.split(","), errors.split(","), strict=True):
                decoded.add(("simple-reply", int(frame), 0, int(handle, 16), 0, int(error)))
        else:
            raise AssertionError(f"unexpected tshark line {line!r}")
    return decoded


def our_messages(capture: Capture) -> set[tuple[str, int, int, int, int, int]]:
    ours: set[tuple[str, int, int, int, int, int]] = set()
    for message in capture.messages:
        fields = message.fields
        if message.kind == "request" and fields["magic"] == c.REQUEST_MAGIC:
            ours.add(
                (
                    "request",
                    message.last_frame,
                    fields["type"],
                    fields["cookie"],
                    fields["offset"],
                    fields["length"],
                )
            )
        elif message.kind == "simple-reply":
            ours.add(("simple-reply", message.last_frame, 0, fields["cookie"], 0, fields["error"]))
    return ours


def check_against_tshark(path: Path, capture: Capture) -> None:
    theirs = tshark_messages(path)
    assert any(kind == "request" for kind, *_ in theirs), "tshark decoded no request"
    assert theirs <= our_messages(capture), sorted(theirs - our_messages(capture))


# --- tests ------------------------------------------------------------------------


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
def test_stored_capture(scenario: Scenario, require_programs: Callable[..., object]) -> None:
    require_programs("tshark")
    path = CAPTURES / scenario.file_name
    assert path.stat().st_size < 200 * 1024
    capture = decode_capture(path)
    scenario.check(capture)
    check_against_tshark(path, capture)


@pytest.mark.peers
@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
def test_fresh_capture(
    scenario: Scenario, tmp_path: Path, require_programs: Callable[..., object]
) -> None:
    require_programs("dumpcap", "tshark", *scenario.programs)
    path = tmp_path / scenario.file_name
    scenario.record(path, tmp_path)
    capture = decode_capture(path)
    scenario.check(capture)
    check_against_tshark(path, capture)


@pytest.mark.peers
def test_fresh_capture_starttls(
    tmp_path: Path, pki: TestPKI, require_programs: Callable[..., object]
) -> None:
    require_programs("dumpcap", "nbdkit", "nbdinfo")
    certificates = pki.directory
    server, port = pick_port_and_start(
        lambda p: [
            "nbdkit",
            "-f",
            "-i",
            "127.0.0.1",
            "-p",
            str(p),
            "--tls=require",
            f"--tls-certificates={certificates}",
            "memory",
            "1M",
        ],
        log_path=tmp_path / "nbdkit.log",
    )
    path = tmp_path / "tls.pcapng"
    with server, capturing(path, port, tmp_path):
        output = client(
            f"nbdinfo --size 'nbds://127.0.0.1:{port}/?tls-certificates={certificates}'", tmp_path
        )
    assert output.strip() == str(1 << 20)
    capture = decode_capture(path)
    [session] = [s for s in capture.sessions if s.nbd]
    assert session.undecoded == []
    assert [m.name for m in session.messages[:4]] == [
        "newstyle greeting",
        "client flags",
        "NBD_OPT_STARTTLS",
        "NBD_REP_ACK",
    ]
    assert sorted(m.direction for m in session.messages[4:]) == [CLIENT, SERVER]
    assert all(m.kind == "tls" for m in session.messages[4:])
    assert session.state.tls and session.phase == "tls"
    for direction in (CLIENT, SERVER):
        assert session.bytes_tls[direction] > 0 and session.accounted(direction)


# --- regenerating the stored captures ---------------------------------------------


def regenerate(directory: Path = CAPTURES) -> None:
    """Record every scenario again into ``directory`` (checking each as it goes)."""
    import tempfile

    directory.mkdir(parents=True, exist_ok=True)
    for scenario in SCENARIOS:
        with tempfile.TemporaryDirectory() as work:
            path = directory / scenario.file_name
            scenario.record(path, Path(work))
            scenario.check(decode_capture(path))
            print(f"{path}: {path.stat().st_size} bytes")


if __name__ == "__main__":
    if sys.argv[1:] != ["--regenerate"]:
        sys.exit("usage: test_dissect_peers.py --regenerate")
    regenerate()
