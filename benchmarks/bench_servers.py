#!/usr/bin/env python3
"""Throughput and memory of the reference server beside real servers, in one run.

Each server gets the same job: nbdcopy writes SIZE bytes of patterned data to
it, then reads them back (timed into nbdcopy's null sink, then read again untimed
and compared byte for byte), then `nbdinfo --map` walks it.  Servers: the
reference server (as a separate `nbd-harness serve` process so its memory and
CPU are its own), nbdkit's memory plugin and qemu-nbd on a sparse raw file, all
from this machine's packages.

Rounds interleave the servers (a fresh server per round, the order rotated
each round), so a burst of load from elsewhere on the machine hits every
server alike.  Printed, as medians over the rounds: MiB/s for each step, the
CPU seconds the server process spent per GiB moved (less sensitive to a
crowded machine than wall-clock time), the peak resident memory (VmHWM) and
its ratio to the bytes written, and the reference server's figures as ratios
of nbdkit's.  The machine and the peers' versions head the output.  The files
(source, the copy read back for comparing, qemu-nbd's image) live in /dev/shm
when it exists, so no disk is timed.

    .venv/bin/python benchmarks/bench_servers.py [--size 1G] [--rounds 3]

Figures vary with the machine; compare the rows of one run, not runs.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from harness.process import ManagedProcess, pick_port_and_start  # noqa: E402
from reference_server.config import parse_size  # noqa: E402

ENV = {**os.environ, "PATH": "/usr/bin:/bin:" + os.environ.get("PATH", "")}
MiB = 1 << 20
GiB = 1 << 30
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

Starter = Callable[[int, Path], tuple[ManagedProcess, int]]


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of the process and its reaped children so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(value) for value in fields[11:15]) / CLOCK_TICKS


def timed(argv: list[str], pid: int) -> tuple[float, float]:
    """Wall-clock seconds of ``argv`` and the CPU seconds server ``pid`` spent meanwhile."""
    cpu = cpu_seconds(pid)
    start = time.perf_counter()
    subprocess.run(argv, check=True, env=ENV, capture_output=True, timeout=900)
    return time.perf_counter() - start, cpu_seconds(pid) - cpu


def start_reference(size: int, workdir: Path) -> tuple[ManagedProcess, int]:
    # `nbd-harness serve` from the checkout this script is in (not whatever the venv
    # installed), so a copy of this script in another worktree measures that tree's code.
    def argv(port: int) -> list[str]:
        return [sys.executable, "-c", "import sys; from harness.cli import main; sys.exit(main())",
                "serve", "--export", f"disk=memory:{size}", "--listen",
                f"tcp://127.0.0.1:{port}"]

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return pick_port_and_start(argv, log_path=workdir / "reference.log", env=env, cwd=REPO)


def start_nbdkit(size: int, workdir: Path) -> tuple[ManagedProcess, int]:
    def argv(port: int) -> list[str]:
        return ["nbdkit", "-f", "-i", "127.0.0.1", "-p", str(port), "-e", "disk",
                "memory", str(size)]

    return pick_port_and_start(argv, log_path=workdir / "nbdkit.log")


def start_qemu_nbd(size: int, workdir: Path) -> tuple[ManagedProcess, int]:
    image = workdir / "qemu.raw"
    image.unlink(missing_ok=True)
    with open(image, "wb") as out:
        out.truncate(size)  # sparse: the file system allocates what is written

    def argv(port: int) -> list[str]:
        return ["qemu-nbd", "-t", "--bind", "127.0.0.1", "--port", str(port), "-x", "disk",
                "-f", "raw", "--cache=writeback", str(image)]

    return pick_port_and_start(argv, log_path=workdir / "qemu-nbd.log")


SERVERS: dict[str, Starter] = {"reference": start_reference, "nbdkit-memory": start_nbdkit,
                               "qemu-nbd-raw": start_qemu_nbd}
BASELINE = "nbdkit-memory"


def one_round(name: str, size: int, source: Path, workdir: Path) -> dict[str, float]:
    """A fresh server: write, read back and compare, map; times, CPU and peak memory."""
    process, port = SERVERS[name](size, workdir)
    uri = f"nbd://127.0.0.1:{port}/disk"
    copy = workdir / f"{name}.out"
    try:
        write, write_cpu = timed(["nbdcopy", "--flush", str(source), uri], process.pid)
        # Timed into nbdcopy's null sink: a file as the sink (even in /dev/shm) made the
        # client's page allocation the bottleneck, and its speed varied 3x between rounds.
        read, read_cpu = timed(["nbdcopy", uri, "null:"], process.pid)
        subprocess.run(["nbdcopy", uri, str(copy)], check=True, env=ENV, capture_output=True,
                       timeout=900)  # then read back again, untimed, to compare every byte
        if not same_file(copy, source):
            raise SystemExit(f"{name}: data read back differs from data written")
        mapped, _ = timed(["nbdinfo", "--map", uri], process.pid)
        return {"write": write, "read": read, "map": mapped, "write_cpu": write_cpu,
                "read_cpu": read_cpu, "rss": peak_rss_mib(process.pid)}
    finally:
        process.stop()
        copy.unlink(missing_ok=True)


def same_file(left: Path, right: Path) -> bool:
    with open(left, "rb") as a, open(right, "rb") as b:
        while True:
            block_a, block_b = a.read(MiB), b.read(MiB)
            if block_a != block_b:
                return False
            if not block_a:
                return True


def version(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, env=ENV, capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        return f"unavailable ({exc})"
    return out.splitlines()[0].strip() if out else "unknown"


def machine() -> list[str]:
    model = next((line.split(":", 1)[1].strip()
                  for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor() or "unknown CPU")
    return [
        f"machine: {model}, {os.cpu_count()} CPUs, Linux {platform.release()}, "
        f"Python {platform.python_version()}",
        f"peers: {version(['nbdkit', '--version'])}; {version(['qemu-nbd', '--version'])}; "
        f"{version(['nbdcopy', '--version'])}",
    ]


def make_source(path: Path, size: int) -> None:
    block = bytes(range(256)) * 4096  # 1 MiB, not all zero: no shortcut for holes
    with open(path, "wb") as out:
        for index in range(size // len(block)):
            out.write(block[index % 256 :] + block[: index % 256])
        out.write(block[: size % len(block)])


def report(rows: dict[str, list[dict[str, float]]], size: int, rounds: int) -> list[str]:
    mib, gib = size / MiB, size / GiB
    median = {name: {key: statistics.median(r[key] for r in runs) for key in runs[0]}
              for name, runs in rows.items()}
    lines = [f"{size} bytes ({mib:.0f} MiB) written, read back and mapped; "
             f"median of {rounds} rounds",
             f"{'server':14} {'write MiB/s':>11} {'read MiB/s':>10} {'map s':>7} "
             f"{'CPU s/GiB w':>11} {'CPU s/GiB r':>11} {'peak RSS MiB':>12} {'RSS/written':>11}"]
    for name, m in median.items():
        lines.append(
            f"{name:14} {mib / m['write']:11.0f} {mib / m['read']:10.0f} {m['map']:7.3f} "
            f"{m['write_cpu'] / gib:11.2f} {m['read_cpu'] / gib:11.2f} {m['rss']:12.1f} "
            f"{m['rss'] / mib:11.2f}")
    base = median.get(BASELINE)
    if base is not None:
        lines.append(f"ratios to {BASELINE} (throughput: higher is better; CPU: lower is better)")
        for name, m in median.items():
            if name == BASELINE:
                continue
            lines.append(
                f"{name:14} write {base['write'] / m['write']:5.2f}x  "
                f"read {base['read'] / m['read']:5.2f}x  "
                f"CPU write {m['write_cpu'] / base['write_cpu']:5.2f}x  "
                f"CPU read {m['read_cpu'] / base['read_cpu']:5.2f}x")
    return lines


def default_workdir() -> Path | None:
    shm = Path("/dev/shm")
    return shm if shm.is_dir() and os.access(shm, os.W_OK) else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="256M", help="bytes to copy each way (256M, 1G, ...)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per server (median)")
    parser.add_argument("--workdir", type=Path, default=default_workdir(),
                        help="where the source, the copies read back and qemu-nbd's image go "
                             "(default: /dev/shm when it exists, so no disk is timed)")
    args = parser.parse_args()
    size = parse_size(args.size)
    if size <= 0 or args.rounds <= 0:
        parser.error("--size and --rounds must be positive")
    header = machine()
    load_before = os.getloadavg()[0]
    rows: dict[str, list[dict[str, float]]] = {name: [] for name in SERVERS}
    names = list(SERVERS)
    with tempfile.TemporaryDirectory(prefix="nbd-bench-", dir=args.workdir) as scratch:
        workdir = Path(scratch)
        source = workdir / "source.raw"
        make_source(source, size)
        for index in range(args.rounds):
            order = names[index % len(names):] + names[: index % len(names)]
            for name in order:
                rows[name].append(one_round(name, size, source, workdir))
    header.append(f"load average (1 min) before/after: {load_before:.1f}/{os.getloadavg()[0]:.1f}")
    print("\n".join(header + report(rows, size, args.rounds)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
