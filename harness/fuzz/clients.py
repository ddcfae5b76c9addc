"""Clients under fuzz: a real client command against a reference server whose stream breaks.

The reference server serves a small export; a :class:`~.cut.CutRelay` between it
and the client cuts the connection, stalls it, or flips one byte at a chosen
offset of the server's stream.  The client must end in bounded time (no hang),
by itself (no crash: no signal), and with an error when the cut took a reply it
needed (a clean exit after a cut before the last byte the server sent means it
claimed success for something it never got).

:func:`cut_points` lists the default disconnect-at-every-point cases (every
message boundary of a clean session, and every byte offset inside its handshake);
:func:`run_cut` judges one; :func:`run_client_campaign` lets hypothesis draw the
cuts (``nbd-harness fuzz --client``).
"""

from __future__ import annotations

import json
import re
import shlex
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st
from hypothesis.errors import Flaky

from harness.address import Address
from harness.capture.proxy import ProxyThread
from harness.dissect import decode_capture
from harness.peers.export import DataRange, ExportSpec, Layer
from harness.peers.reference import host_reference

from .cut import Cut, CutRelayThread, CutStream

CLIENT_EXPORT = ExportSpec(size=1024 * 1024, image_format="raw",
                           layers=(Layer((DataRange(0, 64 * 1024, 3),)),))
"""What the client reads: 64 KiB of pattern data and a hole."""


@dataclass(frozen=True)
class CutOutcome:
    """What one client run did after one cut, and the verdict."""

    cut: Cut
    returncode: int | None
    seconds: float
    problem: str | None
    stderr: str = ""
    output: str = ""
    """What the client reported (stdout and data it wrote), decoded, its tail."""

    def as_dict(self) -> dict[str, Any]:
        return {"at": self.cut.at, "stream": self.cut.stream, "action": self.cut.action,
                "returncode": self.returncode, "seconds": round(self.seconds, 3),
                "problem": self.problem, "stderr": self.stderr[-2000:],
                "output": self.output[-2000:]}


@contextmanager
def served_reference() -> Iterator[Address]:
    """The reference server serving :data:`CLIENT_EXPORT` (memory), stopped on exit."""
    with tempfile.TemporaryDirectory(prefix="nbdh-fuzz-client-") as scratch:
        thread = host_reference(CLIENT_EXPORT, Path(scratch), storage="memory")
        try:
            yield thread.address
        finally:
            thread.stop()


def _argv(command: str, address: Address) -> list[str]:
    uri = f"nbd://{address.host}:{address.port}/{CLIENT_EXPORT.name}"
    return [word.replace("{uri}", uri) for word in shlex.split(command)]


def _signal_of(returncode: int | None) -> str | None:
    if returncode is None or returncode >= 0:
        return None
    try:
        return signal.Signals(-returncode).name
    except ValueError:
        return f"signal {-returncode}"


@dataclass(frozen=True)
class Ran:
    """How one client run ended: exit status (None: still running at the timeout), what it
    reported (stdout, and the data it wrote to a file), its stderr and its duration."""

    returncode: int | None
    output: bytes
    stderr: str
    seconds: float


Invoke = Callable[[Address], Ran]
"""Runs the client under test against a server address (the relay's), bounded in time."""


def command_invoker(command: str, timeout: float) -> Invoke:
    """An :data:`Invoke` for a command line with ``{uri}`` (``fuzz --client``)."""
    def invoke(address: Address) -> Ran:
        started = time.monotonic()
        try:
            done = subprocess.run(_argv(command, address), capture_output=True, timeout=timeout,
                                  check=False, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired as exc:
            return Ran(None, exc.stdout or b"", (exc.stderr or b"").decode(errors="replace"),
                       time.monotonic() - started)
        return Ran(done.returncode, done.stdout, done.stderr.decode(errors="replace"),
                   time.monotonic() - started)

    return invoke


_DECIMAL = re.compile(rb"\d+\.\d+")


def normalised_lines(output: bytes, address: Address) -> list[bytes]:
    """``output``'s lines with the address it was run against (which differs from run to run:
    each cut has its own relay) replaced by ``ADDRESS``/``PORT``, decimals by ``N.N``."""
    text = output.replace(f"{address.host}:{address.port}".encode(), b"ADDRESS")
    if address.port:
        text = re.sub(rb"\b%d\b" % address.port, b"PORT", text)
    # Timings and rates (qemu-io's "00.00 sec (6.047 MiB/sec ...)") differ from run to run.
    return [_DECIMAL.sub(b"N.N", line) for line in text.splitlines()]


def only_what_it_got(output: list[bytes], clean: list[bytes]) -> bool:
    """True when ``output`` is ``clean`` with lines left out (in order, none changed or
    added): a client that reports only the facts it received before a cut and leaves out
    the optional ones it could not get claims nothing false.  nbdinfo does exactly that:
    it lists metadata contexts only when NBD_OPT_LIST_META_CONTEXT succeeds and probes the
    content best-effort (libnbd info/show.c), so a cut during either still exits 0 with a
    true, shorter description (docs/findings.md, "nbdinfo after a cut")."""
    remaining = iter(clean)
    return all(any(line == candidate for candidate in remaining) for line in output)


def judge_ran(ran: Ran, cut: Cut | None, *, clean: list[bytes] | None,
              address: Address, timeout: float) -> str | None:
    """The problem with how the client ended after ``cut``, or None when it ended well."""
    if ran.returncode is None:
        return f"hang: still running after {timeout:g} s"
    if (name := _signal_of(ran.returncode)) is not None:
        return f"crash: killed by {name}"
    if cut is not None and cut.action != "flip" and clean is not None \
            and ran.returncode == 0 \
            and not only_what_it_got(normalised_lines(ran.output, address), clean):
        return ("no error: the client exited 0 after the cut, reporting something a clean "
                "session does not")
    return None


def cut_with(invoke: Invoke, upstream: Address, cut: Cut | None, *, timeout: float,
             clean: list[bytes] | None = None) -> CutOutcome:
    """Run the client through a relay that applies ``cut``; judge how it ended.

    ``clean`` is what it reports in an unbroken session (normalised lines): a client that
    exits 0 after a cut must report nothing else (:func:`only_what_it_got`), else it
    claimed a success it never had."""
    with CutRelayThread(upstream, cut) as relay:
        address = relay.address
        ran = invoke(address)
    problem = judge_ran(ran, cut, clean=clean, address=address, timeout=timeout)
    return CutOutcome(cut or Cut(-1, "flip"), ran.returncode, ran.seconds, problem, ran.stderr,
                      ran.output[-2000:].decode(errors="replace"))


def run_cut(command: str, upstream: Address, cut: Cut | None, *, timeout: float,
            clean_output: list[bytes] | None = None) -> CutOutcome:
    """:func:`cut_with` for a command line (``clean_output``: :attr:`CleanSession.output`)."""
    return cut_with(command_invoker(command, timeout), upstream, cut, timeout=timeout,
                    clean=clean_output)


@dataclass(frozen=True)
class CleanSession:
    """An unbroken run of a client: what it reported (normalised lines) and where a stream
    can be cut (message boundaries; every byte up to ``byte_points_end``)."""

    output: list[bytes]
    total: int
    boundaries: tuple[int, ...]
    byte_points_end: int

    def points(self) -> list[int]:
        """Every message boundary, and every byte offset of the first two messages (the
        greeting and the first option reply, for the server's stream), never the very end."""
        return sorted(({*self.boundaries, *range(self.byte_points_end)} | {0}) - {self.total})


def clean_session(client: str | Invoke, upstream: Address, *, timeout: float,
                  stream: CutStream = "server") -> CleanSession:
    """Run the client (a command line or an :data:`Invoke`) once unbroken and recorded, and
    find the cut points of ``stream``."""
    invoke = command_invoker(client, timeout) if isinstance(client, str) else client
    with tempfile.TemporaryDirectory(prefix="nbdh-fuzz-clean-") as scratch:
        pcapng = Path(scratch) / "clean.pcapng"
        with ProxyThread(Address.tcp("127.0.0.1", 0), upstream, pcapng) as proxy:
            ran = invoke(proxy.address)
            proxy.wait_closed(1, timeout)
            address = proxy.address
        if ran.returncode != 0:
            raise RuntimeError(f"the client fails without any cut (exit {ran.returncode}): "
                               f"{ran.stderr.strip()[-300:]}")
        sessions = decode_capture(pcapng).sessions
    if not sessions:
        raise RuntimeError("the client never connected")
    session = sessions[0]
    messages = [m for m in session.messages if m.direction == stream]
    boundaries = sorted({m.offset for m in messages} | {m.offset + m.length for m in messages})
    total = session.bytes_total[stream]
    byte_end = messages[1].offset + messages[1].length if len(messages) > 1 else total
    if stream == "client":
        byte_end = 0  # the client's stream: its message boundaries only
    return CleanSession(normalised_lines(ran.output, address), total, tuple(boundaries),
                        byte_end)


def every_point(command: str, *, timeout: float = 10.0,
                actions: tuple[str, ...] = ("close",)) -> list[CutOutcome]:
    """Disconnect (or ``stall``) ``command`` at every point of :func:`cut_points`."""
    with served_reference() as upstream:
        clean = clean_session(command, upstream, timeout=timeout)
        return [run_cut(command, upstream, Cut(at, action), timeout=timeout,  # type: ignore[arg-type]
                        clean_output=clean.output)
                for at in clean.points() for action in actions]


@dataclass
class ClientCampaign:
    """A hypothesis campaign against one client command."""

    command: str
    max_examples: int = 100
    max_time: float | None = None
    seed: int = 0
    timeout: float = 10.0
    out_dir: Path = Path("fuzz-failures")


@dataclass
class ClientSummary:
    """What a client campaign ran and found."""

    command: str
    examples: int = 0
    seconds: float = 0.0
    server_bytes: int = 0
    failures: list[CutOutcome] = field(default_factory=list)
    reproducer: Path | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"command": self.command, "examples": self.examples,
                "seconds": round(self.seconds, 3), "server_bytes": self.server_bytes,
                "failures": [f.as_dict() for f in self.failures],
                "reproducer": str(self.reproducer) if self.reproducer else None}

    def describe(self) -> str:
        lines = [f"{self.command}: {self.examples} examples in {self.seconds:.1f} s: "
                 f"{len(self.failures)} failure(s)"]
        for failure in self.failures:
            lines.append(f"  {failure.cut.describe()}: {failure.problem} "
                         f"(exit {failure.returncode}, {failure.seconds:.1f} s)")
        if self.reproducer:
            lines.append(f"  cuts written to {self.reproducer}")
        return "\n".join(lines)


def run_client_campaign(campaign: ClientCampaign) -> ClientSummary:
    """Hypothesis draws cuts (offset, close/stall/flip); failures are shrunk to the first."""
    summary = ClientSummary(campaign.command)
    started = time.monotonic()
    with served_reference() as upstream:
        clean = clean_session(campaign.command, upstream, timeout=campaign.timeout)
        summary.server_bytes = total = clean.total

        @hypothesis_seed(campaign.seed)
        @settings(max_examples=campaign.max_examples, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck), report_multiple_bugs=False)
        @given(at=st.integers(0, max(total - 1, 0)),
               action=st.sampled_from(["close", "flip", "stall"]))
        def example(at: int, action: str) -> None:
            if campaign.max_time is not None and \
                    time.monotonic() - started > campaign.max_time:
                return
            summary.examples += 1
            outcome = run_cut(campaign.command, upstream, Cut(at, action),  # type: ignore[arg-type]
                              timeout=campaign.timeout, clean_output=clean.output)
            if outcome.problem is None:
                return
            if action == "stall" and outcome.problem.startswith("hang"):
                # A client may wait for a stalled server as long as it likes: the spec asks
                # no timeout of it.  A stall is judged only by what the client then does.
                return
            summary.failures[:] = [outcome]
            raise AssertionError(outcome.problem)

        # A failure that does not happen again when hypothesis replays it (Flaky) is still
        # reported: the first outcome is kept in summary.failures.
        with suppress(AssertionError, Flaky):
            example()
    summary.seconds = time.monotonic() - started
    if summary.failures:
        campaign.out_dir.mkdir(parents=True, exist_ok=True)
        summary.reproducer = campaign.out_dir / "client-cut.json"
        summary.reproducer.write_text(json.dumps(summary.as_dict(), indent=1))
    return summary


__all__ = ["CleanSession", "ClientCampaign", "ClientSummary", "CutOutcome", "Invoke", "Ran",
           "clean_session", "command_invoker", "cut_with", "every_point", "judge_ran",
           "normalised_lines", "only_what_it_got", "run_client_campaign", "run_cut"]
