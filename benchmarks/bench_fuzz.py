#!/usr/bin/env python3
"""A byte-level mutation campaign against the reference server, in one process.

A real :class:`~reference_server.server.ReferenceServer` listens on a unix
socket in this process's event loop; clients in the same loop each open a
connection, send one input (a mutated byte stream), shut down their sending
side and read whatever the server answers until it closes.  No hypothesis, no
recording, no judging on our side: the server's own state machine judges every
message it receives, and this script only watches the server survive.

Inputs come from valid sessions the protocol codec builds (client flags,
options in many orders, ``NBD_OPT_GO`` or ``NBD_OPT_EXPORT_NAME``, compact or
extended requests, writes with payloads, ``NBD_CMD_DISC``), then mutated:
bit flips, random bytes, truncation, splices of two sessions, deleted or
duplicated spans, inserted junk and changed length fields (option lengths,
request lengths, write payload sizes) at the offsets the builder recorded.
Each input is drawn from ``random.Random(seed, index)``: input N of a seed is
the same bytes on every run (``--show N`` prints it).

After every batch (``--batch`` inputs) the campaign checks:

- no crash: an exception escaping a session (the loop's exception handler) or
  a log record at ERROR or above from the server counts as one;
- no hang: every connection ended within ``--hang`` seconds of its input
  being sent in full (the client had shut its side: the server must close);
- a well-behaved client is still served: the reference client connects,
  writes 4 KiB, reads it back and compares, within 1 s;
- no leaked descriptor: ``/proc/self/fd`` back to the count before the
  campaign once all sessions ended;
- bounded memory: resident memory (``VmRSS``) at or under ``--rss-bound`` MiB.

Printed: inputs/s, the extrapolated time to 1,000,000 inputs, and the totals.
Exit status 1 when any check failed.

    .venv/bin/python benchmarks/bench_fuzz.py [--seconds 120] [--inputs N] [--seed 0]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import gc
import logging
import os
import random
import struct
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from harness.address import Address  # noqa: E402
from harness.client import ConnectOptions, NbdClient  # noqa: E402
from harness.protocol import constants as c  # noqa: E402
from harness.protocol.codec import encode, option  # noqa: E402
from harness.protocol.messages import (  # noqa: E402
    ClientFlags,
    EmptyPayload,
    ExportNamePayload,
    InfoRequestPayload,
    MetaContextPayload,
    Request,
)
from reference_server.config import ExportConfig, ServerConfig  # noqa: E402
from reference_server.server import ReferenceServer  # noqa: E402

MiB = 1 << 20
EXPORT = "disk"
EXPORT_SIZE = 1 * MiB
"""Small, so mutated writes cannot grow the memory export far."""
SERVED_WITHIN = 1.0
"""Bound on the well-behaved client's connect + write + read-back after each batch."""
PROBE = bytes(range(256)) * 16

# --- valid sessions ---------------------------------------------------------------


@dataclass
class Session:
    """A valid client byte stream and the offsets of its 32-bit length fields."""

    data: bytearray = field(default_factory=bytearray)
    lengths: list[int] = field(default_factory=list)

    def add_option(self, opt: int, payload: object = None) -> None:
        self.lengths.append(len(self.data) + 12)  # IHAVEOPT (8), option (4), length
        self.data += encode(option(opt, payload))

    def add_request(self, req: Request) -> None:
        # compact: magic 4, flags 2, type 2, cookie 8, offset 8, length 4 (at 24)
        # extended: ... offset 8, length 8 (low half at 28)
        self.lengths.append(len(self.data) + (28 if req.extended else 24))
        self.data += encode(req)


def _requests(rng: random.Random, session: Session, extended: bool, structured: bool) -> None:
    block = 512
    for cookie in range(rng.randint(0, 6)):
        kind = rng.choice((c.Cmd.READ, c.Cmd.WRITE, c.Cmd.FLUSH, c.Cmd.TRIM,
                           c.Cmd.WRITE_ZEROES, c.Cmd.CACHE, c.Cmd.BLOCK_STATUS))
        offset = rng.randrange(0, EXPORT_SIZE // block) * block
        length = rng.choice((block, 4096, 65536))
        flags = 0
        payload = b""
        if kind == c.Cmd.WRITE:
            payload = bytes([cookie & 0xFF]) * length
            flags = rng.choice((0, int(c.CmdFlag.FUA)))
        elif kind == c.Cmd.READ and structured:
            flags = rng.choice((0, int(c.CmdFlag.DF)))
        elif kind == c.Cmd.FLUSH:
            offset = length = 0
        session.add_request(Request(int(kind), offset, length, cookie + 1, flags, payload,
                                    extended))
    if rng.random() < 0.7:
        session.add_request(Request(int(c.Cmd.DISC), extended=extended))


def valid_session(rng: random.Random) -> Session:
    """One of the sessions a correct client could send, drawn from ``rng``."""
    session = Session()
    session.data += encode(ClientFlags(rng.choice((1, 3))))
    structured = extended = False
    for _ in range(rng.randint(0, 3)):
        opt = rng.choice((c.Opt.LIST, c.Opt.INFO, c.Opt.LIST_META_CONTEXT, c.Opt.ABORT))
        if opt == c.Opt.LIST:
            session.add_option(opt, EmptyPayload())
        elif opt == c.Opt.INFO:
            session.add_option(opt, InfoRequestPayload(EXPORT, (int(c.Info.BLOCK_SIZE),)))
        elif opt == c.Opt.LIST_META_CONTEXT:
            session.add_option(opt, MetaContextPayload(EXPORT, ("base:",)))
        else:
            session.add_option(opt, EmptyPayload())
            return session  # ABORT ends the session
    if rng.random() < 0.3:
        extended = True
        session.add_option(c.Opt.EXTENDED_HEADERS, EmptyPayload())
    elif rng.random() < 0.6:
        structured = True
        session.add_option(c.Opt.STRUCTURED_REPLY, EmptyPayload())
    if (structured or extended) and rng.random() < 0.7:
        session.add_option(c.Opt.SET_META_CONTEXT,
                           MetaContextPayload(EXPORT, (c.BASE_ALLOCATION,)))
    if extended or rng.random() < 0.7:
        session.add_option(c.Opt.GO, InfoRequestPayload(EXPORT, (int(c.Info.BLOCK_SIZE),)))
    else:
        session.add_option(c.Opt.EXPORT_NAME, ExportNamePayload(EXPORT))
    _requests(rng, session, extended, structured)
    return session


# --- mutations ----------------------------------------------------------------------

LENGTHS = (0, 1, 3, 4, 7, 8, 12, 511, 512, 4095, 4096, 65535, 65536, 0x7FFFFFFF,
           0x80000000, 0xFFFFFFFE, 0xFFFFFFFF)
"""Length-field values at the edges: empty, odd, block sizes, the limits, the 32-bit top."""


def mutate(rng: random.Random, session: Session, other: Session) -> tuple[bytes, str]:
    """``session`` changed by one to four mutations; also returns their names."""
    data = bytearray(session.data)
    names = []
    for _ in range(rng.choice((1, 1, 1, 2, 2, 3, 4))):
        kind = rng.choice(("flip", "byte", "truncate", "splice", "delete", "duplicate",
                           "insert", "length", "length"))
        names.append(kind)
        size = len(data)
        at = rng.randrange(size) if size else 0
        if kind == "flip" and size:
            data[at] ^= 1 << rng.randrange(8)
        elif kind == "byte" and size:
            data[at] = rng.choice((0, 0xFF, 0x7F, 0x80, rng.randrange(256)))
        elif kind == "truncate":
            del data[at:]
        elif kind == "splice":
            cut = rng.randrange(len(other.data) + 1)
            data = data[:at] + other.data[cut:]
        elif kind == "delete":
            del data[at:at + rng.randint(1, 32)]
        elif kind == "duplicate":
            data[at:at] = data[at:at + rng.randint(1, 64)]
        elif kind == "insert":
            data[at:at] = rng.randbytes(rng.randint(1, 32))
        elif kind == "length" and session.lengths:
            where = rng.choice(session.lengths)
            if where + 4 <= len(data):
                value = rng.choice((*LENGTHS, rng.randrange(1 << 32)))
                struct.pack_into(">I", data, where, value)
    return bytes(data), "+".join(names)


POOL = 512
"""Valid sessions drawn once per seed; each input mutates one of them (and splices another)."""


@functools.cache
def session_pool(seed: int) -> tuple[Session, ...]:
    return tuple(valid_session(random.Random(f"{seed}:pool:{n}")) for n in range(POOL))


def make_input(seed: int, index: int) -> tuple[bytes, str]:
    """Input number ``index`` of the campaign ``seed``: the same bytes on every run."""
    rng = random.Random(f"{seed}:{index}")
    pool = session_pool(seed)
    session = rng.choice(pool)
    if rng.random() < 0.05:
        return bytes(session.data), "valid"
    return mutate(rng, session, rng.choice(pool))


# --- the campaign ----------------------------------------------------------------


@dataclass
class Tally:
    inputs: int = 0
    bytes_sent: int = 0
    crashes: list[str] = field(default_factory=list)
    hangs: list[int] = field(default_factory=list)
    unserved: list[str] = field(default_factory=list)
    fd_leaks: list[str] = field(default_factory=list)
    rss_over: list[str] = field(default_factory=list)
    peak_rss_mib: float = 0.0
    mutations: Counter[str] = field(default_factory=Counter)
    reply_bytes: int = 0
    slowest_probe: float = 0.0

    @property
    def failed(self) -> bool:
        return bool(self.crashes or self.hangs or self.unserved or self.fd_leaks or self.rss_over)


class CrashLog(logging.Handler):
    """Counts log records at ERROR or above (the server logs what it did not expect)."""

    def __init__(self, tally: Tally) -> None:
        super().__init__(logging.ERROR)
        self.tally = tally

    def emit(self, record: logging.LogRecord) -> None:
        self.tally.crashes.append(f"log: {record.getMessage()[:200]}")


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def send_one(path: str, data: bytes, hang: float, tally: Tally, index: int) -> None:
    """One connection: send the input, shut down our side, read until the server closes."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(path), hang)
    except (OSError, TimeoutError) as exc:
        tally.crashes.append(f"input {index}: connect failed: {exc}")
        return
    try:
        async with asyncio.timeout(hang):
            writer.write(data)
            await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()
            while chunk := await reader.read(1 << 16):
                tally.reply_bytes += len(chunk)
    except TimeoutError:
        tally.hangs.append(index)
    except OSError:
        pass  # the server closed while we still sent: an answer like any other
    finally:
        writer.close()
        with contextlib.suppress(OSError, TimeoutError):
            await asyncio.wait_for(writer.wait_closed(), hang)


async def well_behaved(path: str, tally: Tally, batch: int) -> None:
    """The reference client is served: write 4 KiB, read it back, within SERVED_WITHIN."""
    start = time.monotonic()
    offset = (batch * len(PROBE)) % EXPORT_SIZE
    try:
        async with asyncio.timeout(SERVED_WITHIN * 5):
            client = await NbdClient.connect(Address.unix(path),
                                             options=ConnectOptions(export_name=EXPORT))
            await client.write(offset, PROBE)
            back = await client.read(offset, len(PROBE))
            await client.disconnect()
    except Exception as exc:  # any failure of a well-behaved client is the finding
        tally.unserved.append(f"batch {batch}: {type(exc).__name__}: {exc}")
        return
    took = time.monotonic() - start
    tally.slowest_probe = max(tally.slowest_probe, took)
    if back != PROBE:
        tally.unserved.append(f"batch {batch}: read back differs from what was written")
    elif took > SERVED_WITHIN:
        tally.unserved.append(f"batch {batch}: served in {took:.2f} s (> {SERVED_WITHIN} s)")


async def settle(server: ReferenceServer, bound: float) -> bool:
    """Wait (bounded) until every session of the server has ended."""
    deadline = time.monotonic() + bound
    while server._sessions and time.monotonic() < deadline:  # our own server: its open sessions
        await asyncio.sleep(0.01)
    return not server._sessions


async def campaign(args: argparse.Namespace, tally: Tally) -> float:
    """Run the campaign; returns the seconds it took."""
    loop = asyncio.get_running_loop()

    def on_exception(loop: asyncio.AbstractEventLoop, context: dict) -> None:
        exc = context.get("exception")
        tally.crashes.append(f"loop: {context.get('message')}: {exc!r}"[:300])

    loop.set_exception_handler(on_exception)
    with tempfile.TemporaryDirectory(prefix="bench-fuzz-") as tmp:
        path = str(Path(tmp) / "nbd.sock")
        config = ServerConfig(listen=Address.unix(path),
                              exports=(ExportConfig(name=EXPORT, size=EXPORT_SIZE),)).validated()
        server = ReferenceServer(config, keep_records=False)
        await server.start()
        try:
            return await _batches(server, path, args, tally)
        finally:
            await server.stop()


async def _batches(server: ReferenceServer, path: str, args: argparse.Namespace,
                   tally: Tally) -> float:
    await well_behaved(path, tally, -1)  # warm-up: imports, caches, the export's first pages
    await settle(server, args.hang)
    gc.collect()
    baseline_fds = open_fds()
    start = time.monotonic()
    index = batch = 0
    last_report = start
    while index < args.inputs and time.monotonic() - start < args.seconds:
        end = min(index + args.batch, args.inputs)
        queue = iter(range(index, end))

        async def worker(queue: Iterator[int] = queue) -> None:
            for number in queue:
                data, names = make_input(args.seed, number)
                tally.mutations.update(names.split("+"))
                tally.bytes_sent += len(data)
                await send_one(path, data, args.hang, tally, number)

        await asyncio.gather(*(worker() for _ in range(args.concurrency)))
        tally.inputs += end - index
        index = end
        await well_behaved(path, tally, batch)
        if not await settle(server, args.hang):
            tally.hangs.append(-batch)  # sessions alive after every client left
        gc.collect()
        fds = open_fds()
        if fds != baseline_fds:
            tally.fd_leaks.append(f"batch {batch}: {fds} fds open, {baseline_fds} before")
        rss = rss_mib()
        tally.peak_rss_mib = max(tally.peak_rss_mib, rss)
        if rss > args.rss_bound:
            tally.rss_over.append(f"batch {batch}: {rss:.0f} MiB")
        batch += 1
        now = time.monotonic()
        if now - last_report >= 10 or index >= args.inputs:
            last_report = now
            rate = tally.inputs / (now - start)
            print(f"  {tally.inputs:>9,} inputs  {rate:7.0f}/s  rss {rss:6.1f} MiB  "
                  f"fds {fds}  crashes {len(tally.crashes)}  hangs {len(tally.hangs)}",
                  flush=True)
        if tally.failed and args.stop_on_failure:
            break
    return time.monotonic() - start


def report(tally: Tally, seconds: float, args: argparse.Namespace) -> None:
    rate = tally.inputs / seconds if seconds else 0.0
    million = 1_000_000 / rate if rate else float("inf")
    print(f"\nseed {args.seed}: {tally.inputs:,} inputs in {seconds:.1f} s = {rate:.0f} inputs/s "
          f"(concurrency {args.concurrency}, batch {args.batch})")
    print(f"  sent {tally.bytes_sent / MiB:.1f} MiB, the server answered "
          f"{tally.reply_bytes / MiB:.1f} MiB")
    print(f"  1,000,000 inputs at this rate: {million / 60:.1f} min")
    print(f"  crashes {len(tally.crashes)}, hangs (> {args.hang} s) {len(tally.hangs)}, "
          f"well-behaved client not served {len(tally.unserved)} "
          f"(slowest {tally.slowest_probe * 1000:.0f} ms), fd leaks {len(tally.fd_leaks)}, "
          f"peak RSS {tally.peak_rss_mib:.1f} MiB (bound {args.rss_bound} MiB)")
    print("  mutations: " + ", ".join(f"{k} {v}" for k, v in tally.mutations.most_common()))
    for title, items in (("crash", tally.crashes), ("hang (input)", tally.hangs),
                         ("unserved", tally.unserved), ("fd leak", tally.fd_leaks),
                         ("rss", tally.rss_over)):
        for item in items[:10]:
            print(f"  {title}: {item}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=120.0,
                        help="time budget (default 120)")
    parser.add_argument("--inputs", type=int, default=1_000_000,
                        help="input budget (default 1,000,000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch", type=int, default=2000,
                        help="inputs between checks (default 2000)")
    parser.add_argument("--concurrency", type=int, default=16,
                        help="connections open at once (default 16)")
    parser.add_argument("--hang", type=float, default=5.0,
                        help="seconds a connection may take after its input (default 5)")
    parser.add_argument("--rss-bound", type=float, default=256.0,
                        help="resident memory bound, MiB (default 256)")
    parser.add_argument("--stop-on-failure", action="store_true")
    parser.add_argument("--show", type=int, metavar="N",
                        help="print input N of the seed (hex) and exit")
    args = parser.parse_args(argv)
    if args.show is not None:
        data, names = make_input(args.seed, args.show)
        print(f"input {args.show} of seed {args.seed} ({names}, {len(data)} bytes):\n{data.hex()}")
        return 0
    tally = Tally()
    handler = CrashLog(tally)
    logging.getLogger("nbd-harness").addHandler(handler)
    logging.getLogger("asyncio").addHandler(handler)
    print(f"reference server, unix socket, memory export {EXPORT_SIZE // MiB} MiB; "
          f"budget {args.inputs:,} inputs or {args.seconds:.0f} s; pid {os.getpid()}", flush=True)
    try:
        seconds = asyncio.run(campaign(args, tally))
    finally:
        for name in ("nbd-harness", "asyncio"):
            logging.getLogger(name).removeHandler(handler)
    report(tally, seconds, args)
    return 1 if tally.failed else 0


if __name__ == "__main__":
    sys.exit(main())
