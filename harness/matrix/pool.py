"""Running many cases on worker processes, each case bounded by a timeout, nothing left behind.

Each worker is a fresh interpreter (``python -m harness.matrix._worker``, in a
session of its own so a terminal's Ctrl-C reaches only this process) that runs
one case at a time with :func:`~harness.matrix.runner.run_case` and sends the
result back over a pipe; the parent hands out the cases, writes every result
to the store (one writer) and reports progress.

Bounds: a case that outlives its own watchdog by :data:`GRACE` seconds gets
its worker stopped (SIGTERM: the worker's process registry stops every peer
it started; then SIGKILL for the worker and whatever it started that is still
there) and becomes an ``error`` result; a new worker takes its place.  On
Ctrl-C or SIGTERM the parent stops every worker the same way, so no peer
outlives the run.
"""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from harness.process import descendant_pids
from harness.verdict import Verdict

from ._worker import read_frame, write_frame
from .cases import Case
from .results import CaseResult, ResultStore

GRACE = 60.0
"""Seconds past a case's own timeout before its worker is stopped from outside."""
STOP_WAIT = 5.0
"""Seconds a worker gets to stop its peers after SIGTERM before SIGKILL."""
WORKER_LOG = "workers.log"
_POLL = 0.2
_END = b"\0" * 8


def _stop_process_tree(pid: int, wait: float = STOP_WAIT) -> None:
    """SIGTERM ``pid`` (it stops its own peers), then SIGKILL what of its tree is left.

    The tree is read before the signal: once ``pid`` is gone its children belong to init.
    """

    family = set(descendant_pids(pid))
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
        stat = Path(f"/proc/{pid}/stat")
        with contextlib.suppress(OSError):
            if stat.read_text().rpartition(")")[2].split()[0] == "Z":
                break  # a zombie: it is done, only the reaping is left
        family |= set(descendant_pids(pid))
        time.sleep(0.05)
    for victim in sorted(family | {pid}):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(victim, signal.SIGKILL)


def error_result(case: Case, detail: str, shard: str = "", worker: str = "") -> CaseResult:
    """A result for a case the harness could not finish (never a pass)."""
    return CaseResult(
        case_id=case.id, scenario=case.scenario.name, group=case.scenario.group, role=case.role,
        server=case.server.spec, client=case.client.spec, verdict=Verdict.ERROR.value,
        observed=Verdict.ERROR.value,
        expected=case.expected.value if case.expected else None, detail=detail,
        description=case.scenario.description, spec=tuple(case.scenario.spec),
        features=case.features(), expectation=case.expectation.why, started=time.time(),
        versions={"server": case.server.spec, "client": case.client.spec}, shard=shard,
        worker=worker)


@dataclass
class _Worker:
    name: str
    process: subprocess.Popen[bytes]
    case: int | None = None
    since: float = 0.0
    reader: threading.Thread | None = None

    def send(self, payload: Any) -> None:
        stdin = self.process.stdin
        assert stdin is not None
        write_frame(stdin, payload)

    def finish(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            stdin = self.process.stdin
            assert stdin is not None
            stdin.write(_END)
            stdin.close()


def _read_replies(name: str, stream: BinaryIO, replies: queue.Queue[tuple[str, Any]]) -> None:
    while True:
        try:
            frame = read_frame(stream)
        except Exception as exc:  # a torn frame: the worker died mid-write
            replies.put((name, ("gone", None, f"unreadable reply: {exc}")))
            return
        if frame is None:
            replies.put((name, ("gone", None, "")))
            return
        replies.put((name, frame))


@dataclass
class PoolRun:
    """What :func:`run_cases` did: the results in case order, and whether it was interrupted."""

    results: list[CaseResult] = field(default_factory=list)
    interrupted: bool = False


def run_cases(
    cases: Sequence[Case],
    store: ResultStore,
    *,
    jobs: int = 1,
    shard: str = "",
    keep_data: bool = False,
    evidence: str = "compact",
    on_start: Callable[[Case, str], None] | None = None,
    on_result: Callable[[CaseResult], None] | None = None,
) -> PoolRun:
    """Run ``cases`` on ``jobs`` worker processes; append each result to ``store``.

    ``on_start``/``on_result`` are called in this process as cases start and
    finish (progress display).  Ctrl-C (or SIGTERM) stops every worker and
    returns what finished, with ``interrupted`` set.
    """
    store.directory.mkdir(parents=True, exist_ok=True)
    jobs = max(1, min(jobs, len(cases) or 1))
    pending = list(range(len(cases)))
    pending.reverse()  # pop() from the end hands out cases in order
    replies: queue.Queue[tuple[str, Any]] = queue.Queue()
    workers: dict[str, _Worker] = {}
    finished: dict[int, CaseResult] = {}
    run = PoolRun()
    counter = 0
    log = open(store.directory / WORKER_LOG, "ab")  # noqa: SIM115 - closed in finally

    def spawn() -> None:
        nonlocal counter
        counter += 1
        name = f"w{counter}"
        process = subprocess.Popen(
            [sys.executable, "-m", "harness.matrix._worker", os.fspath(store.directory),
             shard, name, "1" if keep_data else "0", evidence],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
            start_new_session=True)
        worker = _Worker(name, process)
        assert process.stdout is not None
        worker.reader = threading.Thread(target=_read_replies, name=f"pool-{name}",
                                         args=(name, process.stdout, replies), daemon=True)
        worker.reader.start()
        workers[name] = worker
        assign(worker)

    def assign(worker: _Worker) -> None:
        if pending:
            index = pending.pop()
            worker.case, worker.since = index, time.monotonic()
            with contextlib.suppress(OSError):  # it died: its reader reports it gone
                worker.send((index, cases[index]))
            if on_start is not None:
                on_start(cases[index], worker.name)
        else:
            worker.case = None
            worker.finish()

    def record(index: int, result: CaseResult) -> None:
        finished[index] = result
        store.append(result)
        if on_result is not None:
            on_result(result)

    def retire(worker: _Worker, why: str) -> None:
        """Stop ``worker``; its case (if any) becomes an error; a new worker replaces it."""
        _stop_process_tree(worker.process.pid)
        with contextlib.suppress(subprocess.TimeoutExpired):
            worker.process.wait(STOP_WAIT)
        workers.pop(worker.name, None)
        if worker.case is not None and worker.case not in finished:
            record(worker.case, error_result(cases[worker.case], why, shard, worker.name))
        if pending:
            spawn()

    previous_term = signal.getsignal(signal.SIGTERM)

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    with contextlib.suppress(ValueError):  # only the main thread may set handlers
        signal.signal(signal.SIGTERM, on_term)
    try:
        for _ in range(jobs):
            spawn()
        while len(finished) < len(cases):
            try:
                name, message = replies.get(timeout=_POLL)
            except queue.Empty:
                name, message = "", None
            worker = workers.get(name)
            if message is not None and worker is not None:
                kind, index, payload = message
                if kind == "done":
                    record(index, CaseResult.from_dict(payload))
                    assign(worker)
                elif kind == "crash":
                    record(index, error_result(cases[index], f"the worker failed: {payload}",
                                               shard, name))
                    assign(worker)
                else:  # gone: the worker ended
                    code = worker.process.wait()
                    workers.pop(name, None)
                    if worker.case is not None and worker.case not in finished:
                        record(worker.case, error_result(
                            cases[worker.case], f"the worker died (exit code {code}); see "
                            f"{WORKER_LOG}{(': ' + payload) if payload else ''}", shard, name))
                        if pending:
                            spawn()
            now = time.monotonic()
            for worker in list(workers.values()):
                if worker.case is not None:
                    limit = cases[worker.case].timeout + GRACE
                    if now - worker.since > limit:
                        retire(worker, f"the case ran over {limit:g} s: its worker and every "
                                       "peer it started were stopped")
            if not workers and len(finished) < len(cases):
                for index in range(len(cases)):
                    if index not in finished:
                        record(index, error_result(cases[index], "no worker ran this case",
                                                   shard))
    except KeyboardInterrupt:
        run.interrupted = True
    finally:
        # A second Ctrl-C must not cut the cleanup short and leave peers running.
        previous_int = None
        with contextlib.suppress(ValueError):
            previous_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
        for worker in list(workers.values()):
            if run.interrupted or worker.case is not None:
                _stop_process_tree(worker.process.pid)
            else:
                worker.finish()
            try:
                worker.process.wait(STOP_WAIT)
            except subprocess.TimeoutExpired:
                _stop_process_tree(worker.process.pid, wait=0)
                worker.process.wait()
            if worker.process.stdin is not None:
                with contextlib.suppress(OSError):
                    worker.process.stdin.close()
            if worker.reader is not None:
                worker.reader.join(STOP_WAIT)
            if worker.process.stdout is not None:
                worker.process.stdout.close()
        with contextlib.suppress(ValueError, TypeError):
            signal.signal(signal.SIGTERM, previous_term)
            if previous_int is not None:
                signal.signal(signal.SIGINT, previous_int)
        log.close()
    run.results = [finished[index] for index in sorted(finished)]
    return run


__all__ = ["GRACE", "STOP_WAIT", "PoolRun", "error_result", "run_cases"]
