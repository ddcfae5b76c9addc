"""The reference server against the real Debian clients: nbdinfo, nbdsh and
python3-libnbd, nbdcopy, qemu-img and qemu-io.

Every byte written is read back and compared; extents are checked exactly.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.tls import make_test_pki
from reference_server.config import config_from_dict
from reference_server.runner import ServerThread

pytestmark = pytest.mark.peers

KiB = 1024
MiB = 1024 * KiB
# Debian's python3 first: nbdsh runs `python3` from PATH and needs Debian's `nbd` module.
ENV = {**os.environ, "PATH": "/usr/bin:/bin:" + os.environ.get("PATH", ""), "LIBNBD_DEBUG": "0"}


def pattern(offset: int, length: int, seed: int = 1) -> bytes:
    """Bytes that depend on their absolute offset and a seed: misplaced data shows."""
    out = bytearray()
    block = offset // 8
    while len(out) < (offset % 8) + length:
        out += ((block * 2654435761 + seed) & 0xFFFFFFFFFFFFFFFF).to_bytes(8, "little")
        block += 1
    return bytes(out[offset % 8 : offset % 8 + length])


def run(argv: list[str], timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=ENV)
    if check and result.returncode:
        raise AssertionError(f"{argv} failed ({result.returncode}):\n{result.stderr}")
    return result


def start(tmp_path: Path, document: dict) -> ServerThread:
    return ServerThread(config_from_dict(document, base_dir=tmp_path)).start()


@pytest.fixture
def memory_server(tmp_path: Path) -> Iterator[ServerThread]:
    server = start(
        tmp_path,
        {
            "export": [
                {"name": "disk", "size": "8M", "description": "scratch disk", "bitmaps": ["b0"]},
                {"name": "ro", "size": "1M", "read_only": True},
            ]
        },
    )
    try:
        yield server
    finally:
        server.stop()


def uri(server: ServerThread, export: str = "disk") -> str:
    return f"nbd://127.0.0.1:{server.address.port}/{export}"


def nbdinfo_json(*args: str) -> dict:
    return json.loads(run(["nbdinfo", "--json", *args]).stdout)


def nbdinfo_map(context: str, target: str) -> list[tuple[int, int, int]]:
    out = run(["nbdinfo", "--json", f"--map={context}", target]).stdout
    return [(e["offset"], e["length"], e["type"]) for e in json.loads(out)]


@pytest.fixture
def layered(tmp_path: Path) -> Iterator[tuple[ServerThread, bytes, bytes]]:
    """A two-layer chain: base has data at [0,128K) and [512K,576K), top at [64K,192K)."""
    size = 1 * MiB
    base_data = pattern(0, 128 * KiB, seed=2) + pattern(512 * KiB, 64 * KiB, seed=2)
    top_data = pattern(64 * KiB, 128 * KiB, seed=3)
    with open(tmp_path / "base.raw", "wb") as base:
        base.truncate(size)
        os.pwrite(base.fileno(), base_data[: 128 * KiB], 0)
        os.pwrite(base.fileno(), base_data[128 * KiB :], 512 * KiB)
    with open(tmp_path / "top.raw", "wb") as top:
        top.truncate(size)
        os.pwrite(top.fileno(), top_data, 64 * KiB)
    server = start(
        tmp_path,
        {
            "export": [
                {
                    "name": "chain",
                    "backend": "layers",
                    "layers": ["top.raw", "base.raw"],
                    "description": "two-layer chain",
                    "bitmaps": ["b0"],
                }
            ]
        },
    )
    try:
        yield server, base_data, top_data
    finally:
        server.stop()


def test_nbdinfo_lists_exports_with_details(memory_server, require_programs):
    require_programs("nbdinfo")
    listing = nbdinfo_json("--list", f"nbd://127.0.0.1:{memory_server.address.port}")
    exports = {e["export-name"]: e for e in listing["exports"]}
    assert set(exports) == {"disk", "ro"}
    disk = exports["disk"]
    assert disk["export-size"] == 8 * MiB
    assert disk["description"] == "scratch disk"
    assert set(disk["contexts"]) == {
        "base:allocation",
        "qemu:allocation-depth",
        "qemu:dirty-bitmap:b0",
    }
    assert disk["can_multi_conn"] and disk["can_fast_zero"] and disk["can_df"]
    assert exports["ro"]["is_read_only"] is True
    assert listing["protocol"] == "newstyle-fixed"
    assert listing["TLS"] is False


def test_nbdinfo_maps_allocation_depth_of_two_layers(layered, require_programs):
    require_programs("nbdinfo")
    server, _, _ = layered
    target = f"nbd://127.0.0.1:{server.address.port}/chain"
    assert nbdinfo_map("qemu:allocation-depth", target) == [
        (0, 64 * KiB, 2),
        (64 * KiB, 128 * KiB, 1),
        (192 * KiB, 320 * KiB, 0),
        (512 * KiB, 64 * KiB, 2),
        (576 * KiB, 448 * KiB, 0),
    ]
    assert nbdinfo_map("base:allocation", target) == [
        (0, 192 * KiB, 0),
        (192 * KiB, 320 * KiB, 3),
        (512 * KiB, 64 * KiB, 0),
        (576 * KiB, 448 * KiB, 3),
    ]


def test_chain_reads_and_writes_through_libnbd(layered, tmp_path, require_programs):
    require_programs("nbdsh")
    import nbd

    server, base_data, top_data = layered
    handle = nbd.NBD()
    handle.add_meta_context("qemu:dirty-bitmap:b0")
    handle.connect_uri(f"nbd://127.0.0.1:{server.address.port}/chain")
    try:
        assert handle.pread(64 * KiB, 0) == base_data[: 64 * KiB]
        assert handle.pread(128 * KiB, 64 * KiB) == top_data
        assert handle.pread(64 * KiB, 512 * KiB) == base_data[128 * KiB :]
        assert handle.pread(4096, 300 * KiB) == bytes(4096)
        new = pattern(256 * KiB, 64 * KiB, seed=9)
        handle.pwrite(new, 256 * KiB)
        handle.flush()
        assert handle.pread(64 * KiB, 256 * KiB) == new
        # Zeroing a range the base has data in must not re-expose the base.
        handle.zero(64 * KiB, 0)
        assert handle.pread(64 * KiB, 0) == bytes(64 * KiB)
        dirty = []
        handle.block_status(1 * MiB, 0, lambda ctx, off, ents, err: dirty.append((ctx, ents)))
    finally:
        handle.shutdown()
    assert dirty and dirty[0][0] == "qemu:dirty-bitmap:b0"
    ents = dirty[0][1]
    runs = [(ents[i], ents[i + 1]) for i in range(0, len(ents), 2)]
    assert runs == [(64 * KiB, 1), (192 * KiB, 0), (64 * KiB, 1), (704 * KiB, 0)]
    target = f"nbd://127.0.0.1:{server.address.port}/chain"
    assert nbdinfo_map("qemu:allocation-depth", target) == [
        (0, 192 * KiB, 1),
        (192 * KiB, 64 * KiB, 0),
        (256 * KiB, 64 * KiB, 1),
        (320 * KiB, 192 * KiB, 0),
        (512 * KiB, 64 * KiB, 2),
        (576 * KiB, 448 * KiB, 0),
    ]
    # The write landed in the top layer file, byte for byte.
    with open(tmp_path / "top.raw", "rb") as top:
        top.seek(256 * KiB)
        assert top.read(64 * KiB) == new


def test_nbdsh_write_zero_trim_read_back(memory_server, require_programs):
    require_programs("nbdsh")
    script = """
def pattern(offset, length, seed=1):
    out = bytearray(); block = offset // 8
    while len(out) < (offset % 8) + length:
        out += ((block * 2654435761 + seed) & 0xFFFFFFFFFFFFFFFF).to_bytes(8, "little"); block += 1
    return bytes(out[offset % 8 : offset % 8 + length])
data = pattern(4096, 256 * 1024)
h.pwrite(data, 4096, nbd.CMD_FLAG_FUA)
assert h.pread(len(data), 4096) == data
h.zero(65536, 65536, nbd.CMD_FLAG_NO_HOLE)
assert h.pread(65536, 65536) == bytes(65536)
h.trim(65536, 131072)
assert h.pread(65536, 131072) == bytes(65536)
assert h.pread(4096, 4096) == data[:4096]
assert h.pread(4096, 196608) == data[196608 - 4096 : 196608]
assert h.pread(65536, 0) == bytes(4096) + data[: 65536 - 4096]
h.cache(4096, 0)
h.flush()
ents = []
h.block_status(8 * 1024 * 1024, 0, lambda c, o, e, err: ents.append((c, e)))
print(ents)
"""
    out = run(["nbdsh", "--base-allocation", "-u", uri(memory_server), "-c", script]).stdout
    ((context, extents),) = eval(out)
    assert context == "base:allocation"
    runs = [(extents[i], extents[i + 1]) for i in range(0, len(extents), 2)]
    assert runs == [
        (4096, 3),
        (61440, 0),
        (65536, 2),
        (65536, 3),
        (69632, 0),
        (8 * MiB - 266240, 3),
    ]
    # (zeroed with NO_HOLE: allocated zeroes; trimmed: hole; the rest as written)


def test_read_only_export_refuses_writes_with_eperm(memory_server, require_programs):
    require_programs("nbdsh")
    import nbd

    handle = nbd.NBD()
    handle.connect_uri(uri(memory_server, "ro"))
    try:
        assert handle.is_read_only()
        handle.set_strict_mode(0)  # let the write reach the server
        with pytest.raises(nbd.Error) as info:
            handle.pwrite(b"x" * 512, 0)
        assert info.value.errno == "EPERM"
        assert handle.pread(512, 0) == bytes(512)
    finally:
        handle.shutdown()


def test_qemu_img_convert_from_server_is_bit_exact(tmp_path, require_programs):
    require_programs("qemu-img")
    source = tmp_path / "source.raw"
    size = 4 * MiB
    with open(source, "wb") as out:
        out.truncate(size)
        for offset in (0, 1 * MiB + 512, 3 * MiB):
            os.pwrite(out.fileno(), pattern(offset, 300 * KiB, seed=5), offset)
    server = start(
        tmp_path,
        {"export": [{"name": "src", "backend": "file", "path": "source.raw", "read_only": True}]},
    )
    try:
        copy = tmp_path / "copy.raw"
        run(["qemu-img", "convert", "-f", "raw", "-O", "raw", uri(server, "src"), str(copy)])
        assert copy.read_bytes() == source.read_bytes()
        compare = run(
            ["qemu-img", "compare", "-f", "raw", "-F", "raw", str(source), uri(server, "src")],
            check=False,
        )
        assert compare.returncode == 0, compare.stdout + compare.stderr
    finally:
        server.stop()


def test_qemu_img_convert_into_server_and_qemu_io(memory_server, tmp_path, require_programs):
    require_programs("qemu-img", "qemu-io")
    source = tmp_path / "in.raw"
    data = pattern(0, 2 * MiB, seed=7)
    source.write_bytes(data)
    run(["qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", str(source), uri(memory_server)])
    back = tmp_path / "back.raw"
    run(["qemu-img", "convert", "-f", "raw", "-O", "raw", uri(memory_server), str(back)])
    assert back.read_bytes()[: 2 * MiB] == data
    assert back.read_bytes()[2 * MiB :] == bytes(6 * MiB)
    result = run(
        [
            "qemu-io",
            "-f",
            "raw",
            uri(memory_server),
            "-c",
            "write -P 0xab 4M 64k",
            "-c",
            "read -P 0xab 4M 64k",
            "-c",
            "write -z 4160k 64k",
            "-c",
            "read -P 0 4160k 64k",
            "-c",
            "discard 0 64k",
            "-c",
            "read -P 0 0 64k",
            "-c",
            "flush",
        ]
    )
    assert "Pattern verification failed" not in result.stdout + result.stderr
    assert result.stdout.count("read 65536/65536 bytes") == 3


def test_nbdcopy_round_trip(memory_server, tmp_path, require_programs):
    require_programs("nbdcopy")
    source = tmp_path / "in.raw"
    data = pattern(0, 3 * MiB, seed=11) + bytes(5 * MiB)
    source.write_bytes(data)
    run(["nbdcopy", str(source), uri(memory_server)])
    out = tmp_path / "out.raw"
    run(["nbdcopy", uri(memory_server), str(out)])
    assert out.read_bytes() == data


def test_multi_conn_connections_see_flushed_writes(memory_server, require_programs):
    require_programs("nbdsh")
    import nbd

    first, second = nbd.NBD(), nbd.NBD()
    first.connect_uri(uri(memory_server))
    second.connect_uri(uri(memory_server))
    try:
        assert first.can_multi_conn() and second.can_multi_conn()
        data = pattern(1 * MiB, 128 * KiB, seed=13)
        first.pwrite(data, 1 * MiB)
        first.flush()
        assert second.pread(len(data), 1 * MiB) == data
    finally:
        first.shutdown()
        second.shutdown()


def test_block_size_constraints_advertised_and_enforced(tmp_path, require_programs):
    require_programs("nbdinfo")
    import nbd

    server = start(
        tmp_path,
        {
            "export": [
                {
                    "name": "blk",
                    "size": "1M",
                    "min_block_size": 512,
                    "preferred_block_size": 4096,
                    "max_payload_size": "64k",
                }
            ]
        },
    )
    try:
        info = nbdinfo_json(uri(server, "blk"))["exports"][0]
        assert (
            info["block_size_minimum"],
            info["block_size_preferred"],
            info["block_size_maximum"],
        ) == (512, 4096, 65536)
        handle = nbd.NBD()
        handle.connect_uri(uri(server, "blk"))
        try:
            handle.set_strict_mode(0)
            with pytest.raises(nbd.Error) as info_err:
                handle.pread(100, 3)
            assert info_err.value.errno == "EINVAL"
            data = pattern(512, 1024)
            handle.pwrite(data, 512)
            assert handle.pread(1024, 512) == data
        finally:
            handle.shutdown()
    finally:
        server.stop()


@pytest.mark.parametrize("style", ["oldstyle", "newstyle"])
def test_old_handshake_styles(tmp_path, style, require_programs):
    require_programs("nbdsh")
    import nbd

    server = start(
        tmp_path, {"server": {"handshake": style}, "export": [{"name": "only", "size": "1M"}]}
    )
    try:
        handle = nbd.NBD()
        if style == "newstyle":
            handle.set_export_name("only")
        handle.connect_tcp("127.0.0.1", str(server.address.port))
        try:
            assert handle.get_protocol() == style
            assert not handle.get_structured_replies_negotiated()
            data = pattern(0, 4096, seed=17)
            handle.pwrite(data, 8192)
            assert handle.pread(4096, 8192) == data
        finally:
            handle.shutdown()
    finally:
        server.stop()


@pytest.mark.parametrize("mode", ["required", "optional"])
def test_tls_modes_with_nbdinfo(tmp_path, mode, require_programs):
    require_programs("nbdinfo")
    pki = make_test_pki(tmp_path / "pki")
    exports = [{"name": "secret", "size": "1M", "tls": "required"}]
    if mode == "optional":
        exports.append({"name": "open", "size": "1M"})
    server = start(
        tmp_path,
        {"server": {"tls": mode, "tls_certificates": str(pki.directory)}, "export": exports},
    )
    port = server.address.port
    try:
        secure = f"nbds://127.0.0.1:{port}/secret?tls-certificates={pki.directory}"
        info = nbdinfo_json(secure)
        assert info["TLS"] is True and info["exports"][0]["export-size"] == MiB
        plain = run(["nbdinfo", "--json", f"nbd://127.0.0.1:{port}/secret"], check=False)
        assert plain.returncode != 0
        if mode == "optional":
            assert nbdinfo_json(f"nbd://127.0.0.1:{port}/open")["TLS"] is False
    finally:
        server.stop()


def test_tls_off_refuses_nbds(memory_server, tmp_path, require_programs):
    require_programs("nbdinfo")
    pki = make_test_pki(tmp_path / "pki")
    target = f"nbds://127.0.0.1:{memory_server.address.port}/disk?tls-certificates={pki.directory}"
    result = run(["nbdinfo", target], check=False)
    # NOTLS answers NBD_OPT_STARTTLS with NBD_REP_ERR_POLICY; nbds:// then gives up.
    assert result.returncode != 0


def test_tls_with_a_certificate_from_another_ca_fails(tmp_path, require_programs):
    require_programs("nbdinfo")
    pki = make_test_pki(tmp_path / "pki")
    other = make_test_pki(tmp_path / "other", ca_name="someone else")
    server = start(
        tmp_path,
        {
            "server": {"tls": "required", "tls_certificates": str(pki.directory)},
            "export": [{"name": "secret", "size": "1M"}],
        },
    )
    try:
        target = f"nbds://127.0.0.1:{server.address.port}/secret?tls-certificates={other.directory}"
        assert run(["nbdinfo", target], check=False).returncode != 0
    finally:
        server.stop()


# --- the fast data path under real clients: multi-conn, pipelined, sparse ----------------------


def test_nbdcopy_multi_conn_copy_reads_back_and_maps_exactly(tmp_path, require_programs):
    """nbdcopy over four connections with many requests in flight each: every byte reads
    back, the map is exact, and every request took the fast path."""
    require_programs("nbdcopy", "nbdinfo")
    # nbdcopy hands each connection 128 MiB of the disk at a time: four such segments,
    # each with some data (the rest sparse, so the test moves little).
    size = 512 * MiB
    data_runs = [(k * 128 * MiB + k * MiB, 3 * MiB + k * 64 * KiB) for k in range(4)]
    source = tmp_path / "in.raw"
    with open(source, "wb") as out:
        out.truncate(size)
        for offset, length in data_runs:
            os.pwrite(out.fileno(), pattern(offset, length, seed=17), offset)
    server = start(tmp_path, {"export": [{"name": "disk", "size": size}]})
    try:
        target = uri(server)
        run(["nbdcopy", "--connections=4", "--requests=32", "--flush", str(source), target])
        copy = tmp_path / "out.raw"
        run(["nbdcopy", "--connections=4", "--requests=32", target, str(copy)])
        assert same_bytes(copy, source)
        extents = nbdinfo_map("base:allocation", target)
        assert [(offset, length) for offset, length, kind in extents if kind == 0] == data_runs
        assert all(kind in (2, 3) for _, _, kind in extents if kind != 0)  # read as zero
        assert sum(length for _, length, _ in extents) == size
    finally:
        server.stop()  # every session has ended and left its record
    records = server.server.records
    writers = [r for r in records if r.commands.get("NBD_CMD_WRITE")]
    readers = [r for r in records if r.commands.get("NBD_CMD_READ")]
    assert len(writers) >= 2 and len(readers) >= 2  # the copies really used multi-conn
    for record in writers + readers:
        served = record.commands["NBD_CMD_WRITE"] + record.commands["NBD_CMD_READ"]
        assert record.fast_path == served and not record.client_violations


def same_bytes(left: Path, right: Path) -> bool:
    with open(left, "rb") as a, open(right, "rb") as b:
        while True:
            block = a.read(4 * MiB)
            if block != b.read(4 * MiB):
                return False
            if not block:
                return True


@pytest.mark.parametrize("structured", [True, False], ids=["structured", "simple"])
def test_libnbd_pipelined_writes_and_reads_round_trip(memory_server, structured, require_programs):
    """64 writes then 64 reads in flight at once on one connection, unaligned, some with
    FUA, reads across holes: each read returns exactly the bytes written there."""
    require_programs("nbdsh")
    import nbd

    size = 8 * MiB
    handle = nbd.NBD()
    handle.set_request_structured_replies(structured)
    handle.connect_uri(uri(memory_server))
    try:
        assert handle.get_structured_replies_negotiated() == structured
        model = bytearray(size)
        writes = []
        for index in range(64):
            offset = index * 120 * KiB + index * 13
            data = pattern(offset, 1 + index * 1531 % (96 * KiB), seed=index)
            model[offset : offset + len(data)] = data
            writes.append((offset, nbd.Buffer.from_bytearray(bytearray(data)), index % 4 == 0))
        cookies = [handle.aio_pwrite(buffer, offset, flags=nbd.CMD_FLAG_FUA if fua else 0)
                   for offset, buffer, fua in writes]
        reads = [(index * 97 * KiB + index, 1 + index * 4099 % (200 * KiB)) for index in range(64)]
        buffers = [nbd.Buffer(length) for _, length in reads]
        while handle.aio_in_flight():
            handle.poll(-1)
        assert all(handle.aio_command_completed(cookie) for cookie in cookies)
        pairs = list(zip(buffers, reads, strict=True))
        cookies = [handle.aio_pread(buffer, offset) for buffer, (offset, _) in pairs]
        while handle.aio_in_flight():
            handle.poll(-1)
        assert all(handle.aio_command_completed(cookie) for cookie in cookies)
        for buffer, (offset, length) in pairs:
            assert bytes(buffer.to_bytearray()) == bytes(model[offset : offset + length])
    finally:
        handle.shutdown()
    (record,) = memory_server.wait_for_records(1)
    assert record.fast_path == 128 and not record.client_violations


def test_nbdcopy_round_trip_over_tls(tmp_path, require_programs):
    """The fast path over TLS (whose transport keeps what it is given: replies are copied)."""
    require_programs("nbdcopy")
    pki = make_test_pki(tmp_path / "pki")
    server = start(
        tmp_path,
        {"server": {"tls": "required", "tls_certificates": str(pki.directory)},
         "export": [{"name": "disk", "size": "8M"}]},
    )
    data = pattern(0, 5 * MiB + 4 * KiB, seed=23)
    source = tmp_path / "in.raw"
    source.write_bytes(data + bytes(8 * MiB - len(data)))
    try:
        secure = f"nbds://127.0.0.1:{server.address.port}/disk?tls-certificates={pki.directory}"
        run(["nbdcopy", "--requests=16", str(source), secure])
        copy = tmp_path / "out.raw"
        run(["nbdcopy", "--requests=16", secure, str(copy)])
        assert copy.read_bytes() == source.read_bytes()
    finally:
        server.stop()
    assert sum(record.fast_path for record in server.server.records) > 0
