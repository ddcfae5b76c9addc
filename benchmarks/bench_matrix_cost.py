#!/usr/bin/env python3
"""Per-case harness overhead against the peers' own time, and the default matrix's wall time.

Runs a small sample of the default matrix's cases (evenly spread over its sorted case
list) one after the other and splits each case's time into: peer start (serving the
export: ``_serve`` up to its first yield), proxy (start and stop of the recording
proxy), client run (the scenario's steps), decode+lint (``lint_capture``), evidence
(keeping/collecting the case's files) and the rest.  The phases are timed by wrapping
the runner's own functions, so the cases run exactly as in ``run-matrix``.  Then the
default matrix wall time is estimated: mean case time x cases / workers.

    .venv/bin/python benchmarks/bench_matrix_cost.py [--sample 6] [--workers 2]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from harness.matrix import runner  # noqa: E402
from harness.matrix.results import ResultStore  # noqa: E402
from harness.matrix.selection import MatrixRequest, build_matrix  # noqa: E402

PHASES = ("peer start", "proxy", "client run", "decode+lint", "evidence")
spent: dict[str, float] = defaultdict(float)


def timed(phase: str, function: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            spent[phase] += time.perf_counter() - started

    return wrapper


def timed_serve(function: Callable[..., Any]) -> Callable[..., Any]:
    """``_serve`` is a context manager: its start is the time to its first yield."""

    @contextlib.contextmanager
    def wrapper(*args: Any, **kwargs: Any) -> Iterator[Any]:
        started = time.perf_counter()
        with function(*args, **kwargs) as value:
            spent["peer start"] += time.perf_counter() - started
            yield value

    return wrapper


def instrument() -> None:
    runner._serve = timed_serve(runner._serve)
    runner.run_server_scenario = timed("client run", runner.run_server_scenario)
    runner.run_client_scenario = timed("client run", runner.run_client_scenario)
    runner.lint_capture = timed("decode+lint", runner.lint_capture)
    runner.keep = timed("evidence", runner.keep)
    runner._collect_evidence = timed("evidence", runner._collect_evidence)
    proxy = runner.ProxyThread
    proxy.start = timed("proxy", proxy.start)
    proxy.stop = timed("proxy", proxy.stop)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sample", type=int, default=6, help="cases to run (6)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2,
                        help="workers of the estimated matrix run (CPU count)")
    args = parser.parse_args()
    expansion = build_matrix(MatrixRequest())
    cases = expansion.cases
    step = max(len(cases) // args.sample, 1)
    sample = cases[::step][: args.sample]
    print(f"machine: {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}; default matrix: "
          f"{len(cases)} cases; sample of {len(sample)}")
    instrument()
    totals: list[float] = []
    shares: dict[str, list[float]] = defaultdict(list)
    header = "".join(f"{p:>12}" for p in (*PHASES, "other", "total"))
    print(f"  {'case':60}{header}   verdict")
    with tempfile.TemporaryDirectory(prefix="bench-matrix-") as directory:
        store = ResultStore(Path(directory))
        for case in sample:
            spent.clear()
            started = time.perf_counter()
            result = runner.run_case(case, store)
            total = time.perf_counter() - started
            other = total - sum(spent[p] for p in PHASES)
            totals.append(total)
            for phase in PHASES:
                shares[phase].append(spent[phase])
            shares["other"].append(other)
            row = "".join(f"{spent[p]:12.3f}" for p in PHASES) + f"{other:12.3f}{total:12.3f}"
            print(f"  {case.id[:60]:60}{row}   {result.verdict}")
    mean = statistics.mean(totals)
    print("\n  mean per case: " + ", ".join(
        f"{p} {statistics.mean(v):.3f} s ({statistics.mean(v) / mean:.0%})"
        for p, v in shares.items()))
    harness_share = sum(statistics.mean(shares[p]) for p in ("proxy", "decode+lint", "evidence",
                                                             "other"))
    print(f"  harness overhead (proxy, decode+lint, evidence, other): {harness_share:.3f} s "
          f"per case ({harness_share / mean:.0%}); peers (start + run): "
          f"{mean - harness_share:.3f} s")
    estimate = mean * len(cases) / args.workers
    print(f"  estimated default matrix wall time: {len(cases)} cases x {mean:.2f} s / "
          f"{args.workers} workers = {estimate / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
