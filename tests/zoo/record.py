"""Record the zoo's captures: each zoo server driven by real clients, each zoo client against
the reference server, and the healthy peers (qemu-nbd, nbdkit) with the same clients, every
session through the harness's recording proxy (`nbd-harness capture`).

    /usr/bin/python3 tests/zoo/record.py [--out tests/data/zoo] [NAME...]

NAME is a zoo implementation, `qemu-nbd` or `nbdkit`.  One capture per client run:
OUT/NAME/CLIENT.pcapng.  Every process is bounded in time and killed at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import zoo  # a sibling script, not a package

HARNESS = zoo.REPO / ".venv" / "bin" / "nbd-harness"
EXPORT_SIZE = 16384
WAIT = 20.0
CLIENT_TIMEOUT = 15.0  # a client stuck on a broken server is stopped (and the capture kept)

# The real clients each server is driven with ({uri} is nbd://HOST:PORT/EXPORT).
SERVER_CLIENTS: dict[str, list[str]] = {
    "nbdinfo": ["nbdinfo", "{uri}"],
    "nbdinfo-list": ["nbdinfo", "--list", "nbd://{host}:{port}"],
    "nbdinfo-map": ["nbdinfo", "--map", "{uri}"],
    "qemu-img-info": ["qemu-img", "info", "--image-opts",
                      "driver=raw,file.driver=nbd,file.host={host},file.port={port},"
                      "file.export={export}"],
    "qemu-io-rw": ["qemu-io", "-f", "raw", "-c", "write -P 0x5a 4096 4096",
                   "-c", "read -P 0x5a 4096 4096", "-c", "read -P 0x5a 6144 512", "{uri}"],
    "nbdcopy": ["nbdcopy", "{uri}", "{work}/copy.raw"],
    "harness-info": [str(HARNESS), "info", "{uri}"],
}

# The healthy peers recorded with the same clients: their captures must give no finding.
HEALTHY: dict[str, list[str]] = {
    "qemu-nbd": ["qemu-nbd", "--persistent", "--shared=8", "-f", "raw", "-x", "disk",
                 "-k", "{sock}", "{image}"],
    "nbdkit": ["nbdkit", "--foreground", "--unix", "{sock}", "--exportname", "disk",
               "memory", str(EXPORT_SIZE)],
}


@dataclass
class Upstream:
    """A running server: where the proxy forwards to, and the export to ask for."""

    url: str
    export: str


def _kill(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def _first_line(process: subprocess.Popen, pattern: str) -> re.Match:
    """Wait (bounded) for the process's first stdout line and match it."""
    deadline = time.monotonic() + WAIT
    assert process.stdout is not None
    os.set_blocking(process.stdout.fileno(), False)
    buffered = ""
    while time.monotonic() < deadline:
        chunk = process.stdout.readline()
        buffered += chunk or ""
        if "\n" in buffered:
            match = re.search(pattern, buffered)
            if match:
                return match
            buffered = ""
        if process.poll() is not None:
            break
        time.sleep(0.05)
    raise RuntimeError(f"{process.args[0]}: no line matching {pattern!r} in {WAIT}s")


@contextlib.contextmanager
def zoo_server(impl: zoo.Implementation, work: Path) -> Iterator[Upstream]:
    """Start a zoo server; yield where it listens."""
    with open(work / "server.log", "w") as log:
        process = subprocess.Popen(impl.start_command(work, EXPORT_SIZE),
                                   stdout=subprocess.PIPE, stderr=log, text=True)
    try:
        match = _first_line(process, r"LISTENING (\S+) (\S*)")
        yield Upstream(match.group(1), match.group(2))
    finally:
        _kill(process)


@contextlib.contextmanager
def healthy_server(name: str, work: Path) -> Iterator[Upstream]:
    """Start qemu-nbd or nbdkit on a unix socket."""
    sock, image = work / "server.sock", work / "disk.img"
    sock.unlink(missing_ok=True)  # the last server's: waiting for it would not wait at all
    image.write_bytes(bytes((i * 7 + 3) & 0xFF for i in range(EXPORT_SIZE)))
    argv = [part.format(sock=sock, image=image) for part in HEALTHY[name]]
    with open(work / "server.log", "w") as log:
        process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=log)
    try:
        deadline = time.monotonic() + WAIT
        while not sock.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        yield Upstream(f"unix:{sock}", "disk")
    finally:
        _kill(process)


@contextlib.contextmanager
def reference_server(work: Path) -> Iterator[Upstream]:
    """The harness's reference server with one 16 KiB memory export named disk."""
    port_file = work / "reference.port"
    with open(work / "reference.log", "w") as log:
        process = subprocess.Popen(
            [str(HARNESS), "serve", "--export", f"disk=memory:{EXPORT_SIZE}",
             "--port-file", str(port_file)], stdout=subprocess.DEVNULL, stderr=log)
    try:
        deadline = time.monotonic() + WAIT
        while not (port_file.exists() and port_file.read_text().strip()):
            if time.monotonic() > deadline:
                raise RuntimeError("the reference server did not write its port")
            time.sleep(0.05)
        yield Upstream(f"tcp://127.0.0.1:{port_file.read_text().strip()}", "disk")
    finally:
        _kill(process)


def record(upstream: Upstream, out: Path, client: list[str], work: Path) -> int:
    """Run one client through a recording proxy in front of upstream; return its exit code."""
    out.parent.mkdir(parents=True, exist_ok=True)
    proxy = subprocess.Popen(
        [str(HARNESS), "capture", "--listen", "tcp://127.0.0.1:0", "--upstream", upstream.url,
         "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        match = _first_line(proxy, r"listening on tcp://([\d.]+):(\d+)")
        host, port = match.group(1), int(match.group(2))
        values = {"host": host, "port": port, "export": upstream.export, "work": work,
                  "uri": f"nbd://{host}:{port}/{upstream.export}"}
        argv = [part.format(**values) for part in client]
        try:
            completed = subprocess.run(argv, capture_output=True, text=True,
                                       timeout=CLIENT_TIMEOUT, stdin=subprocess.DEVNULL)
            code = completed.returncode
            (out.with_suffix(".log")).write_text(
                f"$ {' '.join(argv)}\nexit {code}\n{completed.stdout}{completed.stderr}")
        except subprocess.TimeoutExpired:
            code = -1
        time.sleep(0.5)  # let the proxy see both sides close
        return code
    finally:
        proxy.send_signal(signal.SIGINT)
        try:
            proxy.wait(10)
        except subprocess.TimeoutExpired:
            proxy.kill()
            proxy.wait(5)


def client_argv(impl: zoo.Implementation) -> list[str]:
    """A zoo client's argv template, with the placeholders record() fills."""
    return impl.run_command("{host}", "{port}", "{export}")  # type: ignore[arg-type]


def record_pairs(implementations: list[zoo.Implementation], out_dir: Path) -> None:
    """Each zoo client against each zoo server: the only way to reach the transmission phase
    of a server that breaks on the options modern clients send first."""
    for server in (impl for impl in implementations if impl.is_server):
        zoo.install(server)
        for client in (impl for impl in implementations if impl.is_client):
            zoo.install(client)
            with tempfile.TemporaryDirectory(prefix=f"zoo-{server.name}-") as scratch:
                work = Path(scratch)
                with zoo_server(server, work) as upstream:
                    out = out_dir / server.name / f"zoo-{client.name}.pcapng"
                    code = record(upstream, out, client_argv(client), work)
                    print(f"{server.name}: {client.name}: exit {code} -> {out}")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=zoo.REPO / "tests" / "data" / "zoo")
    parser.add_argument("--pairs", action="store_true",
                        help="only each zoo client against each zoo server")
    parser.add_argument("names", nargs="*")
    args = parser.parse_args(argv)
    implementations = {impl.name: impl for impl in zoo.load()}
    if args.pairs:
        record_pairs(list(implementations.values()), args.out)
        return 0
    names = args.names or [*implementations, *HEALTHY]
    for name in names:
        with tempfile.TemporaryDirectory(prefix=f"zoo-{name}-") as scratch:
            work = Path(scratch)
            impl = implementations.get(name)
            if impl is not None:
                zoo.install(impl)
            if impl is None or impl.is_server:
                for client_name, client in SERVER_CLIENTS.items():
                    starter = (zoo_server(impl, work) if impl is not None
                               else healthy_server(name, work))
                    with starter as upstream:
                        out = args.out / name / f"{client_name}.pcapng"
                        code = record(upstream, out, client, work)
                        print(f"{name}: {client_name}: exit {code} -> {out}")
            if impl is not None and impl.is_client:
                with reference_server(work) as upstream:
                    out = args.out / name / "client-vs-reference.pcapng"
                    code = record(upstream, out, client_argv(impl), work)
                    print(f"{name}: client against the reference server: exit {code} -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
