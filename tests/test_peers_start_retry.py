"""Peers that ended before listening without saying why (issue 11: "bwrap exited with code 1
before TCP listener" for nbd-server under many workers).

The cause: the port the kernel chose was taken by another program before nbd-server bound it,
and nbd-server's daemon tells only syslog. Its start is retried once on a new port, and the
retry is written in its log.
"""

from __future__ import annotations

import shutil
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import harness.process as process_module
from harness.peers import Catalog, ExportSpec
from harness.process import PeerError, is_listening_tcp, pick_port_and_start

LISTENER = "import socket, sys, time\n" \
           "s = socket.socket(); s.bind(('127.0.0.1', int(sys.argv[1]))); s.listen(8)\n" \
           "time.sleep(100)\n"


def _silent_then_listening(ports: list[int]):
    def argv(port: int) -> list[str]:
        ports.append(port)
        if len(ports) == 1:
            return ["sh", "-c", "exit 1"]  # gone, and not a word of why
        return [sys.executable, "-c", LISTENER, str(port)]
    return argv


def test_an_unexplained_exit_is_retried_once_and_recorded(tmp_path: Path) -> None:
    ports: list[int] = []
    log = tmp_path / "server.log"
    process, port = pick_port_and_start(_silent_then_listening(ports), log_path=log,
                                        unexplained_retries=1)
    with process:
        assert ports[1:] == [port] and is_listening_tcp(port, "127.0.0.1", process.tree_pids())
    assert f"exited with code 1 before TCP listener on 127.0.0.1:{ports[0]}" in log.read_text()
    assert "started again on a new port (log: server.log.retry1)" in log.read_text()


def test_without_retries_an_unexplained_exit_fails(tmp_path: Path) -> None:
    ports: list[int] = []
    with pytest.raises(PeerError, match="exited with code 1"):
        pick_port_and_start(_silent_then_listening(ports), log_path=tmp_path / "s.log")
    assert len(ports) == 1


def test_only_one_unexplained_retry(tmp_path: Path) -> None:
    calls: list[int] = []

    def argv(port: int) -> list[str]:
        calls.append(port)
        return ["sh", "-c", "exit 1"]

    with pytest.raises(PeerError, match="exited with code 1"):
        pick_port_and_start(argv, log_path=tmp_path / "s.log", unexplained_retries=1)
    assert len(calls) == 2


@pytest.fixture
def first_port_taken(monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    """The first port the harness picks is one another program listens on already."""
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    taken = blocker.getsockname()[1]
    real = process_module._kernel_chosen_port
    picks: list[int] = []

    def pick(host: str) -> int:
        picks.append(1)
        return taken if len(picks) == 1 else real(host)

    monkeypatch.setattr(process_module, "_kernel_chosen_port", pick)
    with blocker:
        yield taken


@pytest.mark.peers
@pytest.mark.skipif(shutil.which("nbd-server", path="/usr/sbin:/usr/bin") is None,
                    reason="nbd-server is not installed")
def test_nbd_server_starts_when_its_first_port_was_taken(first_port_taken: int,
                                                         tmp_path: Path) -> None:
    peer = Catalog.load(("host",)).resolve("nbd-server")
    with peer.start(ExportSpec(size=1 << 20), tmp_path) as server:
        assert server.address.port != first_port_taken and server.is_running()
    log = (tmp_path / "nbd-server.log").read_text()
    assert "is gone (it tells only syslog why)" in log
    assert f"before TCP listener on 127.0.0.1:{first_port_taken}, without saying why" in log
