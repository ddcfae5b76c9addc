#!/usr/bin/env python3
"""Denial-of-service probes against the reference server, beside real servers, in one run.

Each probe is one of the attacks of issue 12, run by a separate process of
hostile clients against a fresh server for DURATION seconds:

- ``meta-query-flood``: one client sends NBD_OPT_SET_META_CONTEXT with 100,000
  queries (1.9 MB), again and again;
- ``big-options``: eight clients each announce a 60 MiB option and send it;
- ``unread-reads``: sixteen clients each ask for a 32 MiB read (simple replies)
  and never read the reply;
- ``slowloris``: thirty clients send their handshake one byte a second;
- ``connect-burst``: 300 connections opened at once, and held.

Meanwhile well-behaved clients, a real ``nbdinfo`` and the reference client
(connect, read 4 KiB, disconnect), are timed (each bounded by 15 s).  Printed
per server and probe: their latency (the reference server must serve them
within 1 s), the server's peak resident memory, its open file descriptors
before the probe and after the hostile clients left (a difference is a leak),
and how the hostile connections fared: refused cleanly (closed before the
greeting), cut off (by a limit), how long the longest stayed.  Servers: the
reference server (``nbd-harness serve``, default limits), nbdkit's memory
plugin and qemu-nbd on a sparse file, all on kernel-chosen ports.  Figures,
not pass/fail: they vary with the machine.

    .venv/bin/python benchmarks/bench_dos.py [--duration 12] [--probe NAME ...] [--server NAME ...]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from harness.process import ManagedProcess, pick_port_and_start  # noqa: E402

ENV = {**os.environ, "PATH": "/usr/bin:/bin:" + os.environ.get("PATH", "")}
MiB = 1 << 20
EXPORT = "disk"
SIZE = 64 * MiB
CLIENT_TIMEOUT = 15.0
"""Bound on one well-behaved client run (nbdinfo's own default is far longer)."""
SERVED_WITHIN = 1.0
"""What the reference server promises a well-behaved client under every probe."""

IHAVEOPT = 0x49484156454F5054
OPT_GO, OPT_INFO, OPT_STRUCTURED_REPLY, OPT_SET_META_CONTEXT = 7, 6, 8, 10
REQUEST_MAGIC, CMD_READ = 0x25609513, 0
FLAGS = struct.pack(">I", 3)  # C_FIXED_NEWSTYLE | C_NO_ZEROES


# --- servers ---------------------------------------------------------------------------


def start_reference(workdir: Path) -> tuple[ManagedProcess, int]:
    def argv(port: int) -> list[str]:
        return [sys.executable, "-c", "import sys; from harness.cli import main; sys.exit(main())",
                "serve", "--export", f"{EXPORT}=memory:{SIZE}", "--listen",
                f"tcp://127.0.0.1:{port}"]

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return pick_port_and_start(argv, log_path=workdir / "reference.log", env=env, cwd=REPO)


def start_nbdkit(workdir: Path) -> tuple[ManagedProcess, int]:
    def argv(port: int) -> list[str]:
        return ["nbdkit", "-f", "-i", "127.0.0.1", "-p", str(port), "-e", EXPORT,
                "memory", str(SIZE)]

    return pick_port_and_start(argv, log_path=workdir / "nbdkit.log")


def start_qemu_nbd(workdir: Path) -> tuple[ManagedProcess, int]:
    image = workdir / "qemu.raw"
    image.unlink(missing_ok=True)
    with open(image, "wb") as out:
        out.truncate(SIZE)

    def argv(port: int) -> list[str]:
        # --shared as many connections as the reference server's default limit.
        return ["qemu-nbd", "-t", "--shared=256", "--bind", "127.0.0.1", "--port", str(port),
                "-x", EXPORT, "-f", "raw", str(image)]

    return pick_port_and_start(argv, log_path=workdir / "qemu-nbd.log")


SERVERS: dict[str, Callable[[Path], tuple[ManagedProcess, int]]] = {
    "reference": start_reference, "nbdkit-memory": start_nbdkit, "qemu-nbd-raw": start_qemu_nbd}


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


# --- hostile clients (run in a child process: their CPU is not the measurer's) -------------


class Tally:
    """How the hostile connections fared."""

    def __init__(self) -> None:
        self.connected = 0
        self.refused = 0  # closed by the server before its greeting
        self.failed = 0  # the connect itself failed (EAGAIN, ECONNREFUSED, timeout)
        self.cut = 0  # closed by the server after the greeting
        self.held = 0.0  # longest time one connection stayed open

    async def open(self, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", port, limit=4 * MiB), 10)
        except (OSError, TimeoutError):
            self.failed += 1
            return None
        try:
            greeting = await asyncio.wait_for(reader.readexactly(18), 10)
        except (asyncio.IncompleteReadError, ConnectionError):
            self.refused += 1
            writer.close()
            return None
        except TimeoutError:
            self.failed += 1
            writer.close()
            return None
        if greeting[:8] != b"NBDMAGIC":
            self.failed += 1
            writer.close()
            return None
        self.connected += 1
        writer.write(FLAGS)
        return reader, writer


def option(opt: int, data: bytes) -> bytes:
    return struct.pack(">QII", IHAVEOPT, opt, len(data)) + data


async def option_replies(reader: asyncio.StreamReader) -> int:
    """Read the replies to one option; the type of the last one."""
    while True:
        _, _, reply_type, length = struct.unpack(">QIII", await reader.readexactly(20))
        await reader.readexactly(length)
        if reply_type == 1 or reply_type & 0x80000000:
            return reply_type


async def go(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    name = EXPORT.encode()
    writer.write(option(OPT_GO, struct.pack(">I", len(name)) + name + struct.pack(">H", 0)))
    if await option_replies(reader) != 1:
        raise ConnectionError("NBD_OPT_GO refused")


async def meta_query_flood(port: int, tally: Tally, until: float) -> None:
    name = EXPORT.encode()
    query = b"base:allocation"
    queries = (struct.pack(">I", len(query)) + query) * 100_000
    payload = struct.pack(">I", len(name)) + name + struct.pack(">I", 100_000) + queries
    await keep_at(port, tally, until, lambda r, w: _flood(r, w, payload, until))


async def _flood(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, payload: bytes,
                 until: float) -> None:
    writer.write(option(OPT_STRUCTURED_REPLY, b""))
    await option_replies(reader)
    while time.monotonic() < until:
        writer.write(option(OPT_SET_META_CONTEXT, payload))
        await writer.drain()
        await option_replies(reader)


async def big_options(port: int, tally: Tally, until: float) -> None:
    chunk = bytes(MiB)

    async def announce(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while time.monotonic() < until:
            writer.write(struct.pack(">QII", IHAVEOPT, OPT_INFO, 60 * MiB))
            for _ in range(60):
                writer.write(chunk)
                await writer.drain()
            await option_replies(reader)

    await asyncio.gather(*(keep_at(port, tally, until, announce) for _ in range(8)))


async def unread_reads(port: int, tally: Tally, until: float) -> None:
    async def ask(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await go(reader, writer)
        writer.write(struct.pack(">IHHQQI", REQUEST_MAGIC, 0, CMD_READ, 1, 0, 32 * MiB))
        await writer.drain()
        await asyncio.sleep(max(0.0, until - time.monotonic()))  # and read nothing

    await asyncio.gather(*(keep_at(port, tally, until, ask, reconnect=False) for _ in range(16)))


async def slowloris(port: int, tally: Tally, until: float) -> None:
    name = EXPORT.encode()
    trickle = option(OPT_GO, struct.pack(">I", len(name)) + name + struct.pack(">H", 0)) * 100

    async def drip(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for byte in trickle:
            if time.monotonic() >= until:
                return
            writer.write(bytes([byte]))
            await writer.drain()
            try:  # wait a second, noticing when the server closes
                if await asyncio.wait_for(reader.read(1), 1) == b"":
                    raise ConnectionResetError("closed by the server")
            except TimeoutError:
                pass

    await asyncio.gather(*(keep_at(port, tally, until, drip, reconnect=False)
                           for _ in range(30)))


async def connect_burst(port: int, tally: Tally, until: float) -> None:
    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(max(0.0, until - time.monotonic()))

    await asyncio.gather(*(keep_at(port, tally, until, hold, reconnect=False)
                           for _ in range(300)))


Attack = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def keep_at(port: int, tally: Tally, until: float, attack: Attack,
                  reconnect: bool = True) -> None:
    """Run ``attack`` on a connection until ``until``; reconnect when the server cuts it."""
    while time.monotonic() < until:
        opened = await tally.open(port)
        if opened is None:
            if not reconnect:
                return
            await asyncio.sleep(0.1)
            continue
        reader, writer = opened
        started = time.monotonic()
        try:
            await attack(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, struct.error):
            tally.cut += 1
        finally:
            tally.held = max(tally.held, time.monotonic() - started)
            writer.close()
        if not reconnect:
            return


PROBES: dict[str, Callable[[int, Tally, float], Awaitable[None]]] = {
    "meta-query-flood": meta_query_flood, "big-options": big_options,
    "unread-reads": unread_reads, "slowloris": slowloris, "connect-burst": connect_burst}


def run_hostile(probe: str, port: int, duration: float) -> None:
    tally = Tally()
    until = time.monotonic() + duration

    async def main() -> None:
        await asyncio.wait_for(PROBES[probe](port, tally, until), duration + 30)

    asyncio.run(main())
    print(json.dumps(vars(tally)))


# --- well-behaved clients ------------------------------------------------------------------


def time_nbdinfo(uri: str) -> float:
    start = time.perf_counter()
    try:
        subprocess.run(["nbdinfo", uri], check=True, capture_output=True, env=ENV,
                       timeout=CLIENT_TIMEOUT)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
        return float("inf")
    return time.perf_counter() - start


def time_reference_client(uri: str) -> float:
    from harness.client import NbdClient

    async def session() -> None:
        client = await NbdClient.connect(uri)
        await client.read(0, 4096)
        await client.disconnect()

    start = time.perf_counter()
    try:
        asyncio.run(asyncio.wait_for(session(), CLIENT_TIMEOUT))
    except Exception:  # any failure is "not served": the figure says so
        return float("inf")
    return time.perf_counter() - start


# --- one probe against one server ------------------------------------------------------------


def one_probe(server: str, probe: str, duration: float, workdir: Path) -> dict[str, object]:
    process, port = SERVERS[server](workdir)
    uri = f"nbd://127.0.0.1:{port}/{EXPORT}"
    try:
        time_nbdinfo(uri)  # a first session: whatever the server opens once is open now
        fds_before = open_fds(process.pid)
        hostile = subprocess.Popen(
            [sys.executable, __file__, "--hostile", probe, "--port", str(port),
             "--duration", str(duration)], stdout=subprocess.PIPE, text=True, cwd=REPO)
        time.sleep(min(2.0, duration / 3))  # let the attack take hold
        nbdinfo = time_nbdinfo(uri)
        reference = time_reference_client(uri)
        out, _ = hostile.communicate(timeout=duration + 60)
        tally = json.loads(out.strip().splitlines()[-1]) if out.strip() else {}
        deadline = time.monotonic() + 10  # the server notices the hostile clients left
        while open_fds(process.pid) > fds_before and time.monotonic() < deadline:
            time.sleep(0.1)
        alive = process.poll() is None
        return {"nbdinfo": nbdinfo, "reference": reference, "rss": peak_rss_mib(process.pid),
                "fds_before": fds_before, "fds_after": open_fds(process.pid) if alive else -1,
                **tally}
    finally:
        process.stop()


def seconds(value: float) -> str:
    return "timeout" if value == float("inf") else f"{value:.2f}"


def report(rows: list[tuple[str, str, dict]]) -> list[str]:
    lines = [f"{'probe':<17}{'server':<15}{'nbdinfo s':>10}{'ref.client s':>13}{'peak RSS MiB':>13}"
             f"{'fds before/after':>17}{'refused':>8}{'cut':>5}{'failed':>7}{'longest s':>10}"]
    for probe, server, row in rows:
        lines.append(
            f"{probe:<17}{server:<15}{seconds(row['nbdinfo']):>10}"
            f"{seconds(row['reference']):>13}{row['rss']:>13.1f}"
            f"{row['fds_before']:>9}/{row['fds_after']:<7}{row.get('refused', 0):>8}"
            f"{row.get('cut', 0):>5}{row.get('failed', 0):>7}{row.get('held', 0.0):>10.1f}")
    served = [row for _, server, row in rows if server == "reference"]
    slow = [max(row["nbdinfo"], row["reference"]) for row in served]
    if slow:
        worst = max(slow)
        verdict = "within" if worst <= SERVED_WITHIN else "NOT within"
        lines.append(f"reference server: well-behaved clients served {verdict} "
                     f"{SERVED_WITHIN:g} s under every probe (worst {seconds(worst)} s); "
                     f"fds leaked: {sum(max(0, r['fds_after'] - r['fds_before']) for r in served)}")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=12.0,
                        help="seconds each probe's hostile clients run (default 12)")
    parser.add_argument("--probe", action="append", choices=sorted(PROBES),
                        help="run only this probe (repeatable; default: all)")
    parser.add_argument("--server", action="append", choices=sorted(SERVERS),
                        help="probe only this server (repeatable; default: all)")
    parser.add_argument("--hostile", choices=sorted(PROBES), help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.hostile:
        run_hostile(args.hostile, args.port, args.duration)
        return 0
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-dos-",
                                     dir="/dev/shm" if Path("/dev/shm").is_dir() else None) as tmp:
        for probe in args.probe or list(PROBES):
            for server in args.server or list(SERVERS):
                row = one_probe(server, probe, args.duration, Path(tmp))
                rows.append((probe, server, row))
                print(f"# {probe} / {server}: {row}", file=sys.stderr, flush=True)
    print(f"load average (1 min): {os.getloadavg()[0]:.1f}; {args.duration:g} s per probe")
    print("\n".join(report(rows)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
