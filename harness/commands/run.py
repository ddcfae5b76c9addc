"""``nbd-harness run``: the matrix — scenarios x server peer@version x client peer@version.

Expands the request into cases (each with the outcome the matrix data
predicts), runs them on ``-j N`` worker processes (each case recorded by the
proxy, decoded, checked by every conformance rule), shows a progress line,
prints a summary table and writes the result set and its reports (JSON lines
per case, ``results.json``, ``junit.xml``, ``summary.md``, the HTML report
``index.html`` and ``conformance/*.md``) to
``--out``.  ``--shard I/N`` runs every N-th case (CI jobs on identical
machines); ``--merge DIR...`` merges the result directories of the shards into
``--out`` and renders the reports of the whole set.

Exit status: 0 when every case is good (pass, or the unsupported /
expected-fallback outcome the data predicts), 1 when any case failed or
errored, 2 for a usage error, 130 when interrupted.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from harness.errors import UserError
from harness.paths import REPORTS_DIR, default_out_help

if TYPE_CHECKING:
    from harness.matrix.cases import Excluded, Expansion



def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "run",
        help="run the interop matrix (scenarios x servers x clients) and write reports",
        description="Run every scenario against every installed real peer and every "
        "reference-server profile (or what the options select), record and check each case, "
        "and write the results and reports. SCENARIO is a name, group/name, a group "
        "(e.g. contexts) or a glob.",
    )
    parser.add_argument("scenarios", nargs="*", metavar="SCENARIO",
                        help="scenarios to run (default: all of scenarios/)")
    parser.add_argument("--scenarios-dir", type=Path, metavar="DIR",
                        help="read scenarios from DIR instead of the ones shipped with nbd-harness")
    parser.add_argument("--server", action="append", default=[], metavar="PEER[@VER]",
                        help="a server to test (repeatable): qemu-nbd, qemu-nbd@10.0, "
                        "nbdkit@trixie, reference-server@qemu-2.10, reference-server; a program "
                        "you built: qemu-nbd=PATH (the file, or a directory holding it; its "
                        "version is read from it, or give it: qemu-nbd=PATH@8.2)")
    parser.add_argument("--client", action="append", default=[], metavar="PEER[@VER]",
                        help="a client to test (repeatable): nbdinfo, qemu-img@11.1, "
                        "reference-client; a program you built: nbdinfo=PATH[@VERSION]")
    parser.add_argument("--provider", action="append", default=[], dest="providers",
                        choices=("host", "rootfs", "docker"), metavar="KIND",
                        help="where real peers come from (repeatable): host, rootfs (a suite's "
                        "root filesystem under bubblewrap) or docker (a suite's image; start "
                        "an engine with scripts/dockerd start); default: any, host first")
    parser.add_argument("--profiles", choices=("relevant", "all", "distinct", "none"),
                        default="relevant",
                        help="reference-server profiles: relevant = every profile as a server "
                        "under test, and for client-role scenarios one per behaviour that "
                        "matters to the scenario; all; distinct = one per distinct server "
                        "behaviour; none (default: %(default)s)")
    parser.add_argument("-j", "--jobs", type=int, default=default_jobs(), metavar="N",
                        help="worker processes (default: 3 per CPU, at most 16: %(default)s; "
                        "cases mostly wait on peers, so more workers than CPUs pay off)")
    parser.add_argument("--shard", metavar="I/N",
                        help="run only shard I of N (every N-th case, 1 <= I <= N)")
    parser.add_argument("--out", type=Path, metavar="DIR",
                        help=f"result directory (default: {default_out_help('run-DATE-TIME')})")
    parser.add_argument("--timeout", type=float, default=180.0, metavar="SECONDS",
                        help="time limit of each case (default: %(default)s)")
    parser.add_argument("--list", action="store_true",
                        help="list the cases (and the combinations that make none), run nothing")
    parser.add_argument("--json", action="store_true", help="with --list: JSON output")
    parser.add_argument("--merge", nargs="+", type=Path, metavar="DIR",
                        help="merge these result directories (shards) into --out and render "
                        "its reports; run nothing")
    parser.add_argument("--install-peers", action="store_true",
                        help="first provision every Debian suite's peers that is not yet "
                        "installed (`nbd-harness peers install all`; cached outside the repo)")
    parser.add_argument("--evidence", choices=("compact", "full", "failures"),
                        default="compact",
                        help="what a good case keeps (failing and erroring cases keep "
                        "everything): compact = its capture with bulk data elided (every "
                        "header and length kept) and its wire log; full = the whole capture; "
                        "failures = none of its wire evidence (default: %(default)s)")
    parser.add_argument("--keep-data", action="store_true",
                        help="keep images and data files of passing cases too")
    parser.add_argument("--no-progress", action="store_true", help="no progress line")
    parser.set_defaults(func=run)


def default_jobs() -> int:
    """Three workers per CPU (at most 16): a case spends most of its time waiting on peers
    (a full matrix at -j 2 kept two CPUs 18 % busy)."""
    return max(2, min(16, 3 * (os.cpu_count() or 1)))


def _shard(text: str | None) -> tuple[int, int] | None:
    if not text:
        return None
    match = re.fullmatch(r"(\d+)/(\d+)", text.strip())
    if not match or not 1 <= int(match.group(1)) <= int(match.group(2)):
        raise UserError(f"--shard {text!r}: expected I/N with 1 <= I <= N, e.g. 2/4")
    return int(match.group(1)), int(match.group(2))


def _default_out() -> Path:
    return REPORTS_DIR / f"run-{time.strftime('%Y%m%d-%H%M%S')}"


def _list(expansion: Expansion, as_json: bool) -> int:
    if as_json:
        document = {
            "cases": [{
                "id": case.id, "scenario": case.scenario.name, "group": case.scenario.group,
                "role": case.role, "server": case.server.spec, "client": case.client.spec,
                "expected": case.expected.value if case.expected else None,
                "why": case.expectation.why,
                "features": list(case.features()), "spec": list(case.scenario.spec),
                "provider": case.under_test.provider,
            } for case in expansion.cases],
            "excluded": [{"scenario": e.scenario, "peer": e.peer, "reason": e.reason}
                         for e in expansion.excluded],
        }
        print(json.dumps(document, indent=2))
        return 0
    for case in expansion.cases:
        why = f"  ({case.expectation.why})" if case.expectation.why else ""
        expected = case.expected.value if case.expected else "any good verdict"
        print(f"{case.id}  expect {expected}{why}")
    print(f"\n{len(expansion.cases)} cases", file=sys.stderr)
    _print_excluded(expansion.excluded, sys.stderr)
    return 0


def _print_excluded(excluded: Sequence[Excluded], stream: TextIO) -> None:
    if not excluded:
        return
    reasons: dict[str, list[str]] = {}
    for item in excluded:
        reasons.setdefault(item.reason, []).append(f"{item.scenario}/{item.peer}")
    print(f"{len(excluded)} scenario/peer combinations make no case:", file=stream)
    for reason, which in sorted(reasons.items(), key=lambda kv: -len(kv[1])):
        print(f"  {len(which):4} x {reason}", file=stream)


def print_report_paths(paths: dict[str, Path], stream: TextIO | None = None) -> None:
    """Say where the reports are (the HTML report first: it is where people start)."""
    stream = stream or sys.stdout
    print(f"HTML report:   {paths['html']}", file=stream)
    print(f"JUnit XML:     {paths['junit']}", file=stream)
    print(f"results store: {paths['results']}", file=stream)
    print(f"summary:       {paths['summary']}", file=stream)
    print(f"conformance:   {paths['conformance']}/ (Markdown per peer@version, ready to file)",
          file=stream)


def _merge(args: argparse.Namespace) -> int:
    from harness.matrix.results import load_runs, merge_results
    from harness.report import collect, write_reports
    from harness.report.console import summary_table

    if args.out is None:
        raise UserError("--merge needs --out DIR (where the merged result set goes)")
    results = merge_results(args.merge, args.out)
    paths = write_reports(collect(args.out, results, load_runs(args.out)))
    print(summary_table(results))
    print(f"\nmerged {len(args.merge)} result set(s) into {args.out}")
    print_report_paths(paths)
    return 0 if all(result.ok for result in results) else 1


def run(args: argparse.Namespace) -> int:
    from harness.matrix.pool import run_cases
    from harness.matrix.results import ResultStore
    from harness.matrix.selection import MatrixRequest, build_matrix
    from harness.report import collect, write_reports
    from harness.report.console import Progress, summary_table

    if args.merge:
        return _merge(args)
    if args.jobs < 1:
        raise UserError(f"-j {args.jobs}: needs at least one worker")
    if args.timeout <= 0:
        raise UserError(f"--timeout {args.timeout}: must be positive")
    shard = _shard(args.shard)
    started = time.monotonic()
    if args.install_peers and not args.list:
        from harness.commands.peers import run_install

        run_install(argparse.Namespace(suite="all", docker=False))
    request = MatrixRequest(scenarios=args.scenarios, servers=args.server, clients=args.client,
                            profiles=args.profiles, timeout=args.timeout,
                            library=args.scenarios_dir, providers=tuple(args.providers))
    expansion = build_matrix(request)
    if shard is not None:
        expansion = expansion.shard(*shard)
    if args.list:
        return _list(expansion, args.json)
    if not expansion.cases:
        _print_excluded(expansion.excluded, sys.stderr)
        raise UserError("the selection makes no case (see the reasons above, or --list)")
    # Absolute: peers run with their case directory as working directory (bwrap --chdir).
    out = (args.out or _default_out()).absolute()
    store = ResultStore(out)
    shard_text = f"{shard[0]}/{shard[1]}" if shard else ""
    print(f"nbd-harness run: {len(expansion.cases)} cases on "
          f"{min(args.jobs, len(expansion.cases))} worker(s)"
          + (f", shard {shard_text}" if shard_text else "") + f"; results in {out}",
          file=sys.stderr, flush=True)
    progress = Progress(len(expansion.cases), enabled=not args.no_progress)
    pool = run_cases(expansion.cases, store, jobs=args.jobs, shard=shard_text,
                     keep_data=args.keep_data, evidence=args.evidence,
                     on_result=progress.result)
    progress.finish()
    wall = time.monotonic() - started
    run_info = {
        "started": round(time.time() - wall, 3),
        "command": ["nbd-harness", "run", *sys.argv[2:]] if sys.argv[1:2] == ["run"] else [],
        "shard": shard_text, "jobs": args.jobs, "cases": len(expansion.cases),
        "finished": len(pool.results), "interrupted": pool.interrupted,
        "wall_seconds": round(wall, 1), "host": socket.gethostname(), "cpus": os.cpu_count(),
        "excluded": [{"scenario": e.scenario, "peer": e.peer, "reason": e.reason}
                     for e in expansion.excluded],
    }
    store.write_run(run_info)
    peers = [peer for case in expansion.cases for peer in (case.server, case.client)]
    paths = write_reports(collect(out, pool.results, [run_info], peers))
    print(summary_table(pool.results))
    _print_excluded(expansion.excluded, sys.stdout)
    print()
    print_report_paths(paths)
    print(f"wall time {wall:.1f} s ({len(pool.results)} cases, -j {args.jobs})")
    if pool.interrupted:
        print(f"interrupted: {len(expansion.cases) - len(pool.results)} case(s) not run",
              file=sys.stderr)
        return 130
    return 0 if all(result.ok for result in pool.results) else 1
