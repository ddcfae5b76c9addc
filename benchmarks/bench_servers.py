#!/usr/bin/env python3
"""Throughput and memory of the reference server beside real servers, in one run.

Each server gets the same job: nbdcopy writes SIZE bytes of patterned data to
it, then reads them back (compared byte for byte), then `nbdinfo --map` walks
it.  Printed per server: seconds and MiB/s for each step and the server's
peak resident memory (VmHWM).  Servers: the reference server (as a separate
`nbd-harness serve` process so its memory is its own), nbdkit's memory
plugin and qemu-nbd on a raw file, all from this machine's packages.

    .venv/bin/python benchmarks/bench_servers.py [--size 256M] [--rounds 3]

Figures vary with the machine; compare the rows of one run, not runs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from harness.process import ManagedProcess, pick_port_and_start  # noqa: E402
from reference_server.config import parse_size  # noqa: E402

ENV = {**os.environ, "PATH": "/usr/bin:/bin:" + os.environ.get("PATH", "")}


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def timed(argv: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True, env=ENV, capture_output=True, timeout=600)
    return time.perf_counter() - start


def start_reference(size: int, workdir: Path) -> tuple[ManagedProcess, int]:
    def argv(port: int) -> list[str]:
        return [str(REPO / ".venv/bin/nbd-harness"), "serve", "--export",
                f"disk=memory:{size}", "--listen", f"tcp://127.0.0.1:{port}"]

    return pick_port_and_start(argv, log_path=workdir / "reference.log")


def start_nbdkit(size: int, workdir: Path) -> tuple[ManagedProcess, int]:
    def argv(port: int) -> list[str]:
        return ["nbdkit", "-f", "-i", "127.0.0.1", "-p", str(port), "-e", "disk",
                "memory", str(size)]

    return pick_port_and_start(argv, log_path=workdir / "nbdkit.log")


def start_qemu_nbd(size: int, workdir: Path) -> tuple[ManagedProcess, int]:
    image = workdir / "qemu.raw"
    with open(image, "wb") as out:
        out.truncate(size)

    def argv(port: int) -> list[str]:
        return ["qemu-nbd", "-t", "--bind", "127.0.0.1", "--port", str(port), "-x", "disk",
                "-f", "raw", "--cache=writeback", str(image)]

    return pick_port_and_start(argv, log_path=workdir / "qemu-nbd.log")


SERVERS = {"reference": start_reference, "nbdkit-memory": start_nbdkit,
           "qemu-nbd-raw": start_qemu_nbd}


def bench(name: str, size: int, rounds: int, source: Path, workdir: Path) -> dict:
    process, port = SERVERS[name](size, workdir)
    uri = f"nbd://127.0.0.1:{port}/disk"
    copy = workdir / f"{name}.out"
    try:
        writes, reads, maps = [], [], []
        for _ in range(rounds):
            writes.append(timed(["nbdcopy", "--flush", str(source), uri]))
            reads.append(timed(["nbdcopy", uri, str(copy)]))
            if copy.read_bytes() != source.read_bytes():
                raise SystemExit(f"{name}: data read back differs from data written")
            maps.append(timed(["nbdinfo", "--map", uri]))
        return {"server": name, "write": statistics.median(writes),
                "read": statistics.median(reads), "map": statistics.median(maps),
                "rss": peak_rss_mib(process.pid)}
    finally:
        process.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="256M")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    size = parse_size(args.size)
    with tempfile.TemporaryDirectory(prefix="nbd-bench-") as scratch:
        workdir = Path(scratch)
        source = workdir / "source.raw"
        block = bytes(range(256)) * 4096  # 1 MiB, not all zero: no shortcut for holes
        with open(source, "wb") as out:
            for index in range(size // len(block)):
                out.write(block[index % 256 :] + block[: index % 256])
        rows = [bench(name, size, args.rounds, source, workdir) for name in SERVERS]
    mib = size / (1 << 20)
    print(f"{args.size} written, read back and mapped; median of {args.rounds} rounds")
    print(f"{'server':16} {'write s':>8} {'MiB/s':>8} {'read s':>8} {'MiB/s':>8} "
          f"{'map s':>7} {'peak RSS MiB':>13}")
    for row in rows:
        print(f"{row['server']:16} {row['write']:8.2f} {mib / row['write']:8.0f} "
              f"{row['read']:8.2f} {mib / row['read']:8.0f} {row['map']:7.3f} "
              f"{row['rss']:13.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
