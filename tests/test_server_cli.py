"""``nbd-harness serve`` as a user runs it: a subprocess, a TOML config, a port
file, real clients; plus the experimental INIT_STATE seen by the reference client."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.client import ConnectOptions
from harness.client.sync import Client
from harness.process import ManagedProcess
from harness.protocol import constants as c
from reference_server.config import config_from_dict
from reference_server.runner import ServerThread

KiB = 1024
ENV = {**os.environ, "PATH": "/usr/bin:/bin:" + os.environ.get("PATH", "")}
NBD_HARNESS = [sys.executable, "-m", "harness.cli"]


def _wait_for_file(path: Path, process: ManagedProcess, timeout: float = 20) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().strip():
            return path.read_text().strip()
        if not process.is_running():
            raise AssertionError(f"serve exited early:\n{process.log_text()}")
        time.sleep(0.05)
    raise AssertionError(f"no port file after {timeout} s:\n{process.log_text()}")


def test_serve_config_two_layers_nbdinfo_maps_depth(tmp_path, require_programs):
    require_programs("nbdinfo")
    size = 1024 * KiB
    with open(tmp_path / "base.raw", "wb") as base:
        base.truncate(size)
        os.pwrite(base.fileno(), b"\xbb" * (256 * KiB), 0)
    with open(tmp_path / "top.raw", "wb") as top:
        top.truncate(size)
        os.pwrite(top.fileno(), b"\xaa" * (64 * KiB), 128 * KiB)
        os.pwrite(top.fileno(), b"\xaa" * (64 * KiB), 512 * KiB)
    (tmp_path / "server.toml").write_text(
        '[server]\nlisten = "tcp://127.0.0.1:0"\nport_file = "port.txt"\n\n'
        '[[export]]\nname = "chain"\nbackend = "layers"\nlayers = ["top.raw", "base.raw"]\n'
        'bitmaps = ["b0"]\ndescription = "two-layer chain"\n'
    )
    process = ManagedProcess.start(
        [*NBD_HARNESS, "serve", "--config", str(tmp_path / "server.toml")],
        log_path=tmp_path / "serve.log",
        cwd=tmp_path,
    )
    try:
        port = _wait_for_file(tmp_path / "port.txt", process)
        out = subprocess.run(
            ["nbdinfo", "--json", "--map=qemu:allocation-depth", f"nbd://127.0.0.1:{port}/chain"],
            capture_output=True,
            text=True,
            timeout=60,
            env=ENV,
            check=True,
        ).stdout
        extents = [(e["offset"], e["length"], e["type"]) for e in json.loads(out)]
        assert extents == [
            (0, 128 * KiB, 2),
            (128 * KiB, 64 * KiB, 1),
            (192 * KiB, 64 * KiB, 2),
            (256 * KiB, 256 * KiB, 0),
            (512 * KiB, 64 * KiB, 1),
            (576 * KiB, 448 * KiB, 0),
        ]
        assert "listening on tcp://127.0.0.1:" in process.log_text()
    finally:
        assert process.stop() is not None


def test_serve_rejects_a_bad_config_with_one_line(tmp_path):
    (tmp_path / "bad.toml").write_text('[[export]]\nname = "x"\nsize = "8Q"\n')
    result = subprocess.run(
        [*NBD_HARNESS, "serve", "--config", str(tmp_path / "bad.toml")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert '"8Q"' in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_serve_needs_an_export(tmp_path):
    result = subprocess.run([*NBD_HARNESS, "serve"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and "--export" in result.stderr


@pytest.mark.parametrize("listen", ["unix"])
def test_serve_export_flag_on_a_unix_socket(tmp_path, listen, require_programs):
    require_programs("nbdinfo")
    sock = tmp_path / "nbd.sock"
    process = ManagedProcess.start(
        [*NBD_HARNESS, "serve", "--export", "disk=memory:4M", "--listen", f"unix:{sock}"],
        log_path=tmp_path / "serve.log",
    )
    try:
        process.wait_for_unix(sock, timeout=20)
        out = subprocess.run(
            ["nbdinfo", "--json", f"nbd+unix:///disk?socket={sock}"],
            capture_output=True,
            text=True,
            timeout=60,
            env=ENV,
            check=True,
        ).stdout
        assert json.loads(out)["exports"][0]["export-size"] == 4 << 20
    finally:
        process.stop()


def test_init_state_tracks_the_contents(tmp_path):
    """NBD_INFO_INIT_STATE (experimental): SPARSE with a hole, ZERO when all reads as zero."""
    config = config_from_dict(
        {
            "export": [
                {"name": "on", "size": "1M", "init_state": True},
                {"name": "off", "size": "1M"},
            ]
        },
        base_dir=tmp_path,
    )
    options = ConnectOptions(export_name="on", info_requests=(c.Info.INIT_STATE,))
    with ServerThread(config) as server:
        target = f"nbd://127.0.0.1:{server.address.port}/on"
        with Client.connect(target, options=options) as client:
            assert client.negotiation.init_state == c.InitFlag.SPARSE | c.InitFlag.ZERO
            client.write(0, b"\x01" * (64 * KiB))
            assert client.read(0, 64 * KiB) == b"\x01" * (64 * KiB)
        with Client.connect(target, options=options) as client:
            assert client.negotiation.init_state == c.InitFlag.SPARSE
            client.write(64 * KiB, b"\x02" * (960 * KiB))
        with Client.connect(target, options=options) as client:
            assert client.negotiation.init_state == 0  # no hole, not all zero
            client.write_zeroes(0, 1024 * KiB, no_hole=True)
            assert client.read(0, 1024 * KiB) == bytes(1024 * KiB)
        with Client.connect(target, options=options) as client:
            assert client.negotiation.init_state == c.InitFlag.ZERO
        off = ConnectOptions(export_name="off", info_requests=(c.Info.INIT_STATE,))
        with Client.connect(f"nbd://127.0.0.1:{server.address.port}/off", options=off) as client:
            assert client.negotiation.init_state is None  # off unless configured
