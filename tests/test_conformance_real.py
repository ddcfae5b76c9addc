"""Real peers give no false findings: sessions recorded through the capture proxy between
real clients (nbdinfo, nbdsh, qemu-img, qemu-io, our reference client) and real servers
(qemu-nbd 7.2, nbdkit, nbd-server, the reference server) decode completely and break no rule.

Every client session also checks its data: what nbdsh and qemu-io write is read back and
compared, qemu-img convert's copy is compared with what the export holds.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from _fixtures_client import (
    CHAIN_SIZE,
    build_chain,
    reference_server,
    start_nbd_server,
    start_nbdkit,
    start_qemu_nbd,
)

from harness.address import Address
from harness.capture import ProxyThread
from harness.client import Client, ConnectOptions
from harness.conformance import Finding, check_capture
from harness.dissect import decode_capture
from harness.tls import make_test_pki

pytestmark = pytest.mark.peers

KiB = 1024
MiB = 1024 * KiB
# Debian's python3 first: nbdsh runs `python3` from PATH and needs Debian's `nbd` module.
ENV = {**os.environ, "PATH": "/usr/bin:/bin:" + os.environ.get("PATH", ""), "LIBNBD_DEBUG": "0"}
TIMEOUT = 60

# Written at two offsets, read back and compared; then zero, trim, flush and block status
# where the server offers them (libnbd refuses commands the server did not advertise).
NBDSH_SCRIPT = """
data = bytes((i * 7 + 3) & 0xFF for i in range(65536))
h.pwrite(data, 131072)
h.pwrite(data[:4096], 1048576 - 4096)
assert h.pread(65536, 131072) == data
assert h.pread(4096, 1048576 - 4096) == data[:4096]
if h.can_zero():
    h.zero(65536, 262144)
    assert h.pread(65536, 262144) == bytes(65536)
if h.can_trim():
    h.trim(65536, 393216)
if h.can_flush():
    h.flush()
if h.can_fua():
    h.pwrite(data[:512], 0, nbd.CMD_FLAG_FUA)
    assert h.pread(512, 0) == data[:512]
if h.can_meta_context(nbd.CONTEXT_BASE_ALLOCATION):
    seen = []
    h.block_status(1048576, 0, lambda ctx, off, ext, err: seen.append((ctx, ext)) or 0)
    assert seen and seen[0][0] == nbd.CONTEXT_BASE_ALLOCATION
h.shutdown()  # NBD_CMD_DISC: a client that just closes hard-disconnects (client.disc-before-close)
"""


def run(argv: Sequence[str], *, check: bool = True) -> subprocess.CompletedProcess[bytes]:
    result = subprocess.run(list(argv), capture_output=True, timeout=TIMEOUT, env=ENV)
    if check and result.returncode:
        raise AssertionError(f"{argv} failed ({result.returncode}):\n{result.stderr.decode()}")
    return result


@contextlib.contextmanager
def recording(path: Path, port: int) -> Iterator[ProxyThread]:
    """The capture proxy in front of 127.0.0.1:``port``, writing ``path``."""
    with ProxyThread(Address.tcp("127.0.0.1", 0), Address.tcp("127.0.0.1", port), path) as proxy:
        yield proxy


def assert_clean(path: Path, expected: Sequence[tuple[str, int]] = ()) -> list[Finding]:
    """Every session decodes completely and the rules find exactly ``expected`` (rule, count)."""
    capture = decode_capture(path)
    assert capture.errors == []
    assert capture.sessions
    for session in capture.sessions:
        if not any(session.bytes_total.values()):
            continue  # a connection the peer closed at once (nbd-server's second client)
        assert session.nbd, f"session {session.index} of {path.name} is not NBD"
        assert session.undecoded == [], session.undecoded
        for direction in ("client", "server"):
            assert session.accounted(direction)
            assert (
                session.bytes_decoded[direction] + session.bytes_tls[direction]
                == (session.bytes_total[direction])
            )
    findings = check_capture(capture)
    counts: dict[str, int] = {}
    for finding in findings:
        counts[finding.rule] = counts.get(finding.rule, 0) + 1
    assert sorted(counts.items()) == sorted(expected), "\n".join(f.describe() for f in findings)
    return findings


def libnbd_clients(uri: str, work: Path, name: str) -> None:
    """nbdinfo (plain, --list, --map) and an nbdsh session that writes and reads back."""
    base = uri.rsplit("/", 1)[0]
    run(["nbdinfo", uri])
    run(["nbdinfo", "--list", base])
    run(["nbdinfo", "--map", uri])
    run(["nbdsh", "--base-allocation", "-u", uri, "-c", NBDSH_SCRIPT])


def qemu_clients(uri: str, work: Path, name: str, expected: bytes | None = None) -> None:
    """qemu-img convert (compared with ``expected``), qemu-img map, qemu-io write/read -P."""
    copy = work / f"{name}-copy.raw"
    run(["qemu-img", "convert", "-f", "raw", "-O", "raw", uri, str(copy)])
    if expected is not None:
        assert copy.read_bytes() == expected
    run(["qemu-img", "map", "--output=json", "-f", "raw", uri])
    io = run(
        [
            "qemu-io",
            "-f",
            "raw",
            "-c",
            "write -P 0x5a 65536 64k",
            "-c",
            "read -P 0x5a 65536 64k",
            "-c",
            "flush",
            uri,
        ]
    )
    assert b"Pattern verification failed" not in io.stdout + io.stderr


def test_qemu_nbd_sessions_are_clean(tmp_path: Path, require_programs) -> None:
    require_programs("qemu-nbd", "qemu-img", "qemu-io", "nbdinfo", "nbdsh")
    chain = build_chain(tmp_path / "chain")
    process, port = start_qemu_nbd(
        tmp_path, chain.top, "-x", "disk", "-B", "b0", "-A", "--shared=0"
    )
    capture = tmp_path / "qemu.pcapng"
    try:
        with recording(capture, port) as proxy:
            uri = f"nbd://127.0.0.1:{proxy.address.port}/disk"
            qemu_clients(uri, tmp_path, "qemu", expected=chain.data)
            run(["nbdinfo", "--map=qemu:dirty-bitmap:b0", uri])
            run(["nbdinfo", "--map=qemu:allocation-depth", uri])
            libnbd_clients(uri, tmp_path, "qemu")
    finally:
        process.stop()
    assert_clean(capture)


def test_nbdkit_sessions_are_clean(tmp_path: Path, require_programs) -> None:
    require_programs("nbdkit", "qemu-img", "qemu-io", "nbdinfo", "nbdsh")
    process, port = start_nbdkit(tmp_path, "memory", "4M")
    capture = tmp_path / "nbdkit.pcapng"
    try:
        with recording(capture, port) as proxy:
            uri = f"nbd://127.0.0.1:{proxy.address.port}/"
            qemu_clients(uri, tmp_path, "nbdkit", expected=bytes(4 * MiB))
            libnbd_clients(uri, tmp_path, "nbdkit")
    finally:
        process.stop()
    assert_clean(capture)


@pytest.mark.parametrize("client", ["nbdinfo", "nbdsh", "qemu-img", "qemu-io"])
def test_nbd_server_sessions_are_clean(tmp_path: Path, client: str, require_programs) -> None:
    # nbd-server serves one client per process in the foreground: one server per client.
    require_programs("nbd-server", "qemu-img", "qemu-io", "nbdinfo", "nbdsh")
    image = tmp_path / "disk.img"
    with open(image, "wb") as file:
        file.truncate(4 * MiB)
    process, port = start_nbd_server(tmp_path, image)
    capture = tmp_path / "nbd-server.pcapng"
    try:
        with recording(capture, port) as proxy:
            uri = f"nbd://127.0.0.1:{proxy.address.port}/disk"
            if client == "nbdinfo":
                run(["nbdinfo", uri])  # nbd-server 3.24 has no block status
            elif client == "nbdsh":
                run(["nbdsh", "-u", uri, "-c", NBDSH_SCRIPT])
            elif client == "qemu-img":
                copy = tmp_path / "copy.raw"
                run(["qemu-img", "convert", "-f", "raw", "-O", "raw", uri, str(copy)])
                assert copy.read_bytes() == bytes(4 * MiB)
            else:
                run(
                    [
                        "qemu-io",
                        "-f",
                        "raw",
                        "-c",
                        "write -P 0x5a 0 64k",
                        "-c",
                        "read -P 0x5a 0 64k",
                        uri,
                    ]
                )
    finally:
        process.stop()
    if client == "nbdinfo":
        # A real deviation, not a false finding: nbd-server (every version) answers
        # NBD_OPT_INFO with export size 0, then NBD_OPT_GO with the same parameters with
        # the real size.  Option types: "If there are no intervening option requests between
        # a successful NBD_OPT_INFO [...] and an NBD_OPT_GO with the same parameters [...],
        # then the server MUST reply with the same set of information".
        [finding] = assert_clean(capture, [("server.go-consistent-with-info", 1)])
        messages = decode_capture(capture).messages
        infos = [m for m in messages if m.name == "NBD_REP_INFO"]
        assert [m.fields["size"] for m in infos] == [0, 4 * MiB]
        [go_ack] = [
            m
            for m in messages
            if m.name == "NBD_REP_ACK" and m.option is not None and m.option.name == "NBD_OPT_GO"
        ]
        assert (finding.frame, finding.offset) == (go_ack.frame, go_ack.offset)
    else:
        assert_clean(capture)


def test_reference_server_sessions_are_clean(tmp_path: Path, require_programs) -> None:
    require_programs("qemu-img", "qemu-io", "nbdinfo", "nbdsh")
    exports = [{"name": "disk", "size": "4M", "bitmaps": ["b0"], "description": "scratch"}]
    capture = tmp_path / "reference.pcapng"
    with (
        reference_server(tmp_path, exports) as server,
        recording(capture, server.address.port) as proxy,
    ):
        uri = f"nbd://127.0.0.1:{proxy.address.port}/disk"
        qemu_clients(uri, tmp_path, "reference", expected=bytes(4 * MiB))
        libnbd_clients(uri, tmp_path, "reference")
        run(["nbdinfo", "--map=qemu:dirty-bitmap:b0", uri])
        # Our own client negotiates extended headers: 64-bit requests and replies,
        # the block status payload form.
        options = ConnectOptions(meta_contexts=("base:allocation", "qemu:dirty-bitmap:b0"))
        with Client.connect(uri, options=options) as client:
            assert client.negotiation.extended_headers
            data = bytes(range(256)) * 64
            client.write(8192, data)
            assert client.read(8192, len(data)) == data
            client.write_zeroes(0, 4096)
            client.trim(65536, 65536)
            client.flush()
            ids = client.contexts
            assert client.block_status(0, CHAIN_SIZE)
            assert client.block_status(0, 65536, req_one=True)
            client.block_status(0, CHAIN_SIZE, context_ids=[ids["qemu:dirty-bitmap:b0"]])
    assert_clean(capture)


def test_tls_sessions_are_clean(tmp_path: Path, require_programs) -> None:
    """nbdkit in FORCEDTLS mode: a TLS client, and a plain one it turns away."""
    require_programs("nbdkit", "nbdinfo")
    pki = make_test_pki(tmp_path / "pki")
    process, port = start_nbdkit(
        tmp_path, "--tls=require", f"--tls-certificates={pki.directory}", "memory", "1M"
    )
    capture = tmp_path / "tls.pcapng"
    try:
        with recording(capture, port) as proxy:
            plain = f"nbd://127.0.0.1:{proxy.address.port}/"
            secure = f"nbds://127.0.0.1:{proxy.address.port}/?tls-certificates={pki.directory}"
            assert b"export-size" in run(["nbdinfo", "--json", secure]).stdout
            assert run(["nbdinfo", plain], check=False).returncode != 0
    finally:
        process.stop()
    assert_clean(capture)


# libnbd with strict mode off sends what the spec forbids (ranges past the end, commands
# the server did not advertise): the client rules must catch each one on real traffic, and
# the servers' error replies are judged by the error rules.
ERROR_SCRIPT = """
h.set_strict_mode(0)
size = h.get_size()
def attempt(call):
    try:
        call()
    except nbd.Error:
        pass
attempt(lambda: h.pread(4096, size - 512))
attempt(lambda: h.pwrite(b"x" * 4096, size - 512))
attempt(lambda: h.pwrite(b"x" * 512, 0))
attempt(lambda: h.trim(4096, 0))
attempt(lambda: h.zero(4096, 0))
attempt(lambda: h.flush())
attempt(lambda: h.zero(4096, 0, nbd.CMD_FLAG_FAST_ZERO))
attempt(lambda: h.block_status(4096, size - 512, lambda *args: 0))
h.shutdown()
"""
PAST_END = ("client.request-within-export", 3)  # the read, the write, the block status


@contextlib.contextmanager
def read_only_server(kind: str, tmp_path: Path) -> Iterator[tuple[int, str]]:
    """A read-only 1 MiB export (nbd-server: read-write, it has no block status either)."""
    image = tmp_path / "disk.raw"
    with open(image, "wb") as file:
        file.truncate(1 * MiB)
    if kind == "reference":
        exports = [{"name": "disk", "size": "1M", "read_only": True}]
        with reference_server(tmp_path, exports) as server:
            yield server.address.port, "disk"
        return
    if kind == "qemu-nbd":
        process, port = start_qemu_nbd(tmp_path, image, "-x", "disk", "-r", fmt="raw")
        export = "disk"
    elif kind == "nbdkit":
        process, port = start_nbdkit(tmp_path, "-r", "memory", "1M")
        export = ""
    else:
        process, port = start_nbd_server(tmp_path, image)
        export = "disk"
    try:
        yield port, export
    finally:
        process.stop()


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        (
            "qemu-nbd",
            [
                PAST_END,
                ("client.trim-needs-send-trim", 1),
                ("client.write-zeroes-needs-send-write-zeroes", 2),
                ("client.fast-zero-needs-send-fast-zero", 1),
                # A real deviation: qemu-nbd 7.2 fails a write to a read-only export with
                # NBD_EINVAL ("Export is read-only").  Error values: "Finally, it SHOULD
                # return NBD_EPERM if it receives a write or trim request on a read-only
                # export."
                ("server.read-only-eperm", 1),
            ],
        ),
        (
            "nbdkit",
            [
                PAST_END,
                ("client.trim-needs-send-trim", 1),
                ("client.write-zeroes-needs-send-write-zeroes", 2),
                ("client.fast-zero-needs-send-fast-zero", 1),
                # A real deviation: nbdkit 1.32 sends the errors of commands other than
                # NBD_CMD_READ as simple replies although structured replies were
                # negotiated.  Structured reply chunk message: "The server SHOULD prefer
                # sending errors via a structured reply".
                ("server.structured-errors-preferred", 5),
            ],
        ),
        (
            "nbd-server",
            [
                PAST_END,
                ("client.trim-needs-send-trim", 1),
                ("client.flush-needs-send-flush", 1),
                ("client.fast-zero-needs-send-fast-zero", 1),
                ("client.block-status-needs-contexts", 1),
            ],
        ),
        ("reference", [PAST_END]),
    ],
)
def test_error_paths_of_real_servers(
    kind: str, expected: list[tuple[str, int]], tmp_path: Path, require_programs
) -> None:
    require_programs("nbdsh", {"reference": "nbdsh"}.get(kind, kind))
    capture = tmp_path / "errors.pcapng"
    with read_only_server(kind, tmp_path) as (port, export), recording(capture, port) as proxy:
        uri = f"nbd://127.0.0.1:{proxy.address.port}/{export}"
        flags = [] if kind == "nbd-server" else ["--base-allocation"]
        run(["nbdsh", *flags, "-u", uri, "-c", ERROR_SCRIPT])
    findings = assert_clean(capture, expected)
    assert all(f.role == "client" for f in findings if f.mandatory)


def nbdkit_pattern(size: int) -> bytes:
    """What nbdkit's pattern plugin serves: each 8-byte word is its own offset, big-endian."""
    return b"".join(offset.to_bytes(8, "big") for offset in range(0, size, 8))


def test_nbdcopy_sessions_are_clean(tmp_path: Path, require_programs) -> None:
    """nbdcopy: several connections per export, many requests in flight on each."""
    require_programs("nbdkit", "nbdcopy")
    source, source_port = start_nbdkit(tmp_path, "pattern", "4M", name="source")
    target, target_port = start_nbdkit(tmp_path, "memory", "4M", name="target")
    copy = tmp_path / "copy.raw"
    try:
        with (
            recording(tmp_path / "source.pcapng", source_port) as from_proxy,
            recording(tmp_path / "target.pcapng", target_port) as to_proxy,
        ):
            source_uri = f"nbd://127.0.0.1:{from_proxy.address.port}/"
            target_uri = f"nbd://127.0.0.1:{to_proxy.address.port}/"
            run(["nbdcopy", source_uri, target_uri])
            run(["nbdcopy", target_uri, str(copy)])
    finally:
        source.stop()
        target.stop()
    assert copy.read_bytes() == nbdkit_pattern(4 * MiB)
    assert_clean(tmp_path / "source.pcapng")
    assert_clean(tmp_path / "target.pcapng")
    assert len(decode_capture(tmp_path / "source.pcapng").sessions) > 1  # multi-conn
