#!/usr/bin/env python3
"""Decoder and lint throughput beside Wireshark's tshark, on the same captures, in one run.

Captures (made once, kept in a cache directory outside the repository):

- ``copy-SIZE.pcapng``: nbdcopy writes SIZE bytes of nbdkit's pattern plugin to nbdkit's
  memory plugin through the recording proxy (bulk WRITE data, a few connections);
- ``small-N.pcapng``: nbdsh sends N small (512-byte) READ requests through the proxy,
  up to 64 in flight (many tiny messages: per-message cost).

Printed per capture: wall time and peak resident memory of ``nbd-harness lint``,
``nbd-harness dissect --json`` and ``tshark -r FILE -Y nbd`` (bookworm's 4.0 on the
host, sid's 4.6 in its root filesystem through bwrap), with lint's ratio to each tshark
(>1: lint is faster).  Then memory against capture size: lint's peak RSS on nbdcopy
captures of a quarter and the whole of SIZE (bulk data stays in the file, so it should not
grow with the bytes), and start-up: ``nbd-harness --help`` and lint of a tiny capture.

    .venv/bin/python benchmarks/bench_decoder.py [--size 1G] [--small 100000] [--rounds 1]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from harness.address import Address  # noqa: E402
from harness.capture.proxy import ProxyThread  # noqa: E402
from harness.process import pick_port_and_start  # noqa: E402

ENV = {**os.environ, "PATH": "/usr/bin:/bin:" + os.environ.get("PATH", "")}
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "nbd-harness" / "bench"
SID_ROOT = Path.home() / ".cache" / "nbd-harness" / "rootfs" / "sid"
NBD_HARNESS = [sys.executable, "-m", "harness.cli"]
TINY = REPO / "tests" / "data"

SMALL_SCRIPT = """

n, inflight = COUNT, 64
buf = nbd.Buffer(512)
issued = done = 0
def finished(*args):
    global done
    done += 1
    return 1
while done < n:
    while issued < n and issued - done < inflight:
        h.aio_pread(buf, (issued % 2048) * 512, completion=finished)
        issued += 1
    h.poll(-1)
"""


def parse_size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return int(text[:-1]) * units[text[-1].upper()] if text[-1].isalpha() else int(text)


def record(capture: Path, client_argv_for: Callable[[str], list[str]], size: int) -> None:
    """Start nbdkit memory, the proxy in front of it, run the client, keep the pcapng."""
    capture.parent.mkdir(parents=True, exist_ok=True)
    partial = capture.with_suffix(".partial")
    log = capture.with_suffix(".nbdkit.log")
    server, port = pick_port_and_start(
        lambda p: ["nbdkit", "-f", "-i", "127.0.0.1", "-p", str(p), "memory", str(size)],
        log_path=log,
        env=ENV,
    )
    try:
        with ProxyThread(
            Address.tcp("127.0.0.1", 0),
            Address.tcp("127.0.0.1", port),
            partial,
        ) as proxy:
            url = f"nbd://127.0.0.1:{proxy.address.port}"
            subprocess.run(client_argv_for(url), check=True, env=ENV, timeout=1800)
    finally:
        server.stop()
    partial.rename(capture)


def copy_capture(size: int) -> Path:
    """The nbdcopy capture of ``size`` bytes (recorded once, then cached)."""
    copy = CACHE / f"copy-{size >> 20}M.pcapng"
    if not copy.exists():
        print(f"recording {copy} ...", flush=True)
        record(
            copy, lambda url: ["nbdcopy", "--", "[", "nbdkit", "pattern", str(size), "]", url], size
        )
    return copy


def captures(size: int, small: int) -> list[Path]:
    copy = copy_capture(size)
    many = CACHE / f"small-{small}.pcapng"
    if not many.exists():
        print(f"recording {many} ...", flush=True)
        record(
            many,
            lambda url: ["nbdsh", "-u", url, "-c", SMALL_SCRIPT.replace("COUNT", str(small))],
            1 << 20,
        )
    return [copy, many]


def measure(argv: list[str]) -> tuple[float, float, float, int]:
    """(wall seconds, CPU seconds, peak RSS MiB of the process tree's largest member, exit
    status).  CPU time says more than wall time on a shared, loaded machine."""
    started = time.perf_counter()
    process = subprocess.Popen(
        argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=ENV, cwd=REPO
    )
    _pid, status, usage = os.wait4(process.pid, 0)
    elapsed = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    cpu = usage.ru_utime + usage.ru_stime
    return elapsed, cpu, usage.ru_maxrss / 1024, process.returncode


def tshark_commands(capture: Path) -> dict[str, list[str]]:
    commands: dict[str, list[str]] = {}
    if shutil.which("tshark", path=ENV["PATH"]):
        commands["tshark 4.0 (bookworm)"] = ["tshark", "-n", "-r", str(capture), "-Y", "nbd"]
    if (SID_ROOT / "usr/bin/tshark").exists():
        mounts: list[str] = []
        for name in ("usr", "etc", "var", "lib", "lib64", "bin", "sbin"):
            path = SID_ROOT / name
            if path.is_symlink():
                mounts += ["--symlink", os.readlink(path), f"/{name}"]
            elif path.is_dir():
                mounts += ["--ro-bind", str(path), f"/{name}"]
        commands["tshark 4.6 (sid)"] = [
            "bwrap",
            *mounts,
            "--proc",
            "/proc",
            "--dev",
            "/dev",
            "--tmpfs",
            "/tmp",
            "--ro-bind",
            str(capture),
            str(capture),
            "--die-with-parent",
            "tshark",
            "-n",
            "-r",
            str(capture),
            "-Y",
            "nbd",
        ]
    return commands


def bench_capture(capture: Path, rounds: int) -> None:
    size_mib = capture.stat().st_size / (1 << 20)
    print(f"\n{capture.name} ({size_mib:.0f} MiB)")
    commands = {
        "nbd-harness lint": [*NBD_HARNESS, "lint", str(capture)],
        "nbd-harness dissect --json": [*NBD_HARNESS, "dissect", "--json", str(capture)],
        **tshark_commands(capture),
    }
    best: dict[str, tuple[float, float, float, int]] = {}
    for _ in range(rounds):  # interleaved, best of the rounds
        for name, argv in commands.items():
            result = measure(argv)
            if name not in best or result[0] < best[name][0]:
                best[name] = result
    lint_wall, lint_cpu = best["nbd-harness lint"][:2]
    print(f"  {'command':28} {'wall s':>8} {'CPU s':>8} {'MiB/s':>8} {'peak RSS MiB':>13}"
          "  lint ratio (wall, CPU)")
    for name, (wall, cpu, rss, status) in best.items():
        ratio = f"{wall / lint_wall:.2f}x, {cpu / lint_cpu:.2f}x" if name.startswith("tshark") \
            else ""
        flag = "" if status in (0, 1) else f"  (exit {status})"
        print(f"  {name:28} {wall:8.2f} {cpu:8.2f} {size_mib / wall:8.0f} {rss:13.0f}  "
              f"{ratio}{flag}")


def bench_memory(size: int) -> None:
    """lint's peak RSS against the capture's size: the same workload, a quarter and whole."""
    print("\nmemory against capture size (nbd-harness lint, peak RSS)")
    for each in (size // 4, size):
        capture = copy_capture(each)
        wall, _cpu, rss, _status = measure([*NBD_HARNESS, "lint", str(capture)])
        print(f"  {capture.name:28} {capture.stat().st_size / (1 << 20):8.0f} MiB capture"
              f" {rss:8.0f} MiB RSS {wall:8.2f} s")


def bench_startup(rounds: int) -> None:
    tiny = min(TINY.glob("**/*.pcapng"), key=lambda p: p.stat().st_size, default=None)
    print("\nstart-up (best of rounds)")
    runs = {"nbd-harness --help": [*NBD_HARNESS, "--help"]}
    if tiny is not None:
        runs[f"nbd-harness lint {tiny.name} ({tiny.stat().st_size} B)"] = [
            *NBD_HARNESS,
            "lint",
            str(tiny),
        ]
        runs[f"tshark 4.0 -r {tiny.name}"] = ["tshark", "-n", "-r", str(tiny), "-Y", "nbd"]
    for name, argv in runs.items():
        wall = min(measure(argv)[0] for _ in range(max(rounds, 3)))
        print(f"  {name:50} {wall:6.3f} s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="1G", help="bytes nbdcopy writes (default 1G)")
    parser.add_argument("--small", type=int, default=100_000, help="small requests (100000)")
    parser.add_argument("--rounds", type=int, default=1, help="rounds, best kept (1)")
    parser.add_argument("--only", choices=("copy", "small", "memory", "startup"),
                        action="append")
    args = parser.parse_args()
    only = set(args.only or ("copy", "small", "memory", "startup"))
    versions = subprocess.run(["nbdkit", "--version"], capture_output=True, text=True, env=ENV)
    print(
        f"machine: {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}; "
        f"python {sys.version.split()[0]}; {versions.stdout.strip()}"
    )
    copy, many = captures(parse_size(args.size), args.small)
    if "copy" in only:
        bench_capture(copy, args.rounds)
    if "small" in only:
        bench_capture(many, args.rounds)
    if "memory" in only:
        bench_memory(parse_size(args.size))
    if "startup" in only:
        bench_startup(args.rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
