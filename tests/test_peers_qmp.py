"""The QMP session of the qemu-storage-daemon driver: bounded, and retried when a daemon that
has just started drops the first connection during negotiation."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import pytest

from harness.peers.qemu_storage_daemon import QmpSession
from harness.process import PeerError

GREETING = {"QMP": {"version": {"qemu": {"major": 7, "minor": 2, "micro": 0}, "package": ""},
                    "capabilities": []}}


def _messages(conn: socket.socket) -> Iterator[dict]:
    """The JSON objects the client sends (QMP is a stream of objects, no delimiter)."""
    decoder = json.JSONDecoder()
    buffer = ""
    while True:
        data = conn.recv(4096)
        if not data:
            return
        buffer += data.decode()
        while buffer.strip():
            try:
                message, end = decoder.raw_decode(buffer.lstrip())
            except ValueError:
                break
            buffer = buffer.lstrip()[end:]
            yield message


def _serve_one(conn: socket.socket) -> None:
    """Greet, accept qmp_capabilities, then answer commands until the client leaves."""
    conn.settimeout(10)
    conn.sendall(json.dumps(GREETING).encode() + b"\n")
    for message in _messages(conn):
        name = message.get("execute")
        if name in ("qmp_capabilities", "query-name"):
            answer: dict = {"return": {"name": "qsd"} if name == "query-name" else {}}
        else:
            answer = {"error": {"class": "CommandNotFound", "desc": f"{name} not found"}}
        if "id" in message:
            answer["id"] = message["id"]
        conn.sendall(json.dumps(answer).encode() + b"\n")


@contextmanager
def fake_qmp(path: Path, drop_first: int) -> Iterator[list[int]]:
    """A QMP server at ``path`` that closes its first ``drop_first`` connections at once."""
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(path))
    listener.listen(4)
    listener.settimeout(0.05)  # short, so the thread notices the stop soon
    seen = [0]
    stop = threading.Event()

    def run() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                seen[0] += 1
                if seen[0] > drop_first:
                    with suppress(OSError):
                        _serve_one(conn)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield seen
    finally:
        stop.set()
        thread.join(10)
        listener.close()


def test_a_dropped_first_connection_is_retried(tmp_path: Path) -> None:
    with fake_qmp(tmp_path / "qmp.sock", drop_first=2) as seen, \
            QmpSession(tmp_path / "qmp.sock", timeout=5, connect_timeout=5) as qmp:
        assert qmp.command("query-name") == {"name": "qsd"}
        with pytest.raises(PeerError, match="QMP nope failed: nope not found"):
            qmp.command("nope")
    assert seen[0] == 3


def test_giving_up_is_a_clear_error(tmp_path: Path) -> None:
    with fake_qmp(tmp_path / "qmp.sock", drop_first=99), \
            pytest.raises(PeerError, match=r"no session after 2 attempt\(s\)"):
        QmpSession(tmp_path / "qmp.sock", connect_timeout=5, attempts=2)


def test_a_daemon_that_exited_is_not_waited_for(tmp_path: Path) -> None:
    with fake_qmp(tmp_path / "qmp.sock", drop_first=99) as seen, \
            pytest.raises(PeerError, match="exited before its QMP session started"):
        QmpSession(tmp_path / "qmp.sock", connect_timeout=5, attempts=5, alive=lambda: False)
    assert seen[0] == 1
