"""``nbd-harness check URI``: live probes and every applicable scenario against a running server.

A first probe learns what the server says about itself (greeting, export list,
size and flags), then active probes put the questions only a live check can
(a read past the end, an unknown command, unadvertised commands, unknown export
names, options a server may not implement...), each wait bounded by ``--wait``,
and each server-role scenario whose expectations hold for an export of unknown
contents runs with the reference client.  Everything goes through a recording
proxy and every capture is checked by the conformance rules; a server that
hangs or drops a connection gets a verdict, and the check goes on.  Read-only
unless ``--allow-writes`` (scenarios that write pattern data over the export and
read it back; probes that send writing commands).  Each failure is printed
with the rule it broke, the spec citation and the frame.

Exit status: 0 when every case is good, 1 when any failed (a MUST broken, data
not as written, a wrong reply, no answer) or errored, 2 for a usage error (bad
URI, nothing listening there).  The result directory and its reports are
written whenever the server could be reached, however broken it is.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from harness.errors import UserError
from harness.paths import REPORTS_DIR, default_out_help

if TYPE_CHECKING:
    from harness.matrix.live_check import LiveCheck
    from harness.matrix.results import CaseResult



def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "check",
        help="check a running NBD server: every applicable scenario, recorded and linted",
        description="Run every server scenario that fits an export of unknown contents "
        "against the server at URI (nbd://HOST:PORT/EXPORT, nbds://..., nbd+unix:///EXPORT"
        "?socket=PATH), through a recording proxy, and check every message against the spec.",
    )
    parser.add_argument("uri", metavar="URI", help="the server and export to check")
    parser.add_argument("scenarios", nargs="*", metavar="SCENARIO",
                        help="only these scenarios (name, group/name, group or glob)")
    parser.add_argument("--scenarios-dir", type=Path, metavar="DIR",
                        help="read scenarios from DIR instead of the ones shipped with nbd-harness")
    parser.add_argument("--allow-writes", action="store_true",
                        help="also run scenarios that write (they overwrite parts of the export)")
    parser.add_argument("-j", "--jobs", type=int, default=1, metavar="N",
                        help="cases at once (default: %(default)s; the server sees N clients)")
    parser.add_argument("--out", type=Path, metavar="DIR",
                        help=f"result directory (default: {default_out_help('check-DATE-TIME')})")
    parser.add_argument("--timeout", type=float, default=120.0, metavar="SECONDS",
                        help="time limit of each case (default: %(default)s)")
    parser.add_argument("--wait", type=float, default=10.0, metavar="SECONDS",
                        help="how long a probe waits for each answer before it counts as never "
                        "coming (default: %(default)s)")
    parser.add_argument("--json", action="store_true",
                        help="print the results as JSON (one object per case)")
    parser.add_argument("--list", action="store_true",
                        help="list the applicable scenarios (and why others are not), run nothing")
    parser.set_defaults(func=run)


def print_failures(results: Sequence[CaseResult], stream: TextIO) -> None:
    """Each failing case: its detail, and every MUST it broke with citation and frame."""
    for result in results:
        if result.ok:
            continue
        print(f"\n{result.verdict.upper()} {result.scenario}: {result.detail}", file=stream)
        for finding in result.mandatory_findings():
            print(f"  rule {finding['rule']} ({finding['level']}, {finding['role']}) at frame "
                  f"{finding['frame']}, session {finding['session']}: {finding['message']}",
                  file=stream)
            print(f"    spec, section \"{finding['section']}\": \"{finding['sentence']}\"",
                  file=stream)
        failed = next((s for s in result.steps if s.get("status") in ("failed", "error")), None)
        if failed is not None:
            print(f"  step {failed.get('phase')}[{failed.get('index')}] {failed.get('action')} "
                  f"(scenario line {failed.get('line')}): {failed.get('detail', '')}", file=stream)
        if "directory" in result.evidence:
            print(f"  evidence: {result.evidence['directory']} (capture.pcapng, wire.txt)",
                  file=stream)


def run(args: argparse.Namespace) -> int:
    import tempfile

    from harness.matrix.cases import select_scenarios
    from harness.matrix.live_check import check_live
    from harness.matrix.results import ResultStore
    from harness.report import collect, counts_line, summarize, write_reports
    from harness.scenarios import LIBRARY, load_library

    if args.jobs < 1:
        raise UserError(f"-j {args.jobs}: needs at least one worker")
    if args.wait <= 0:
        raise UserError(f"--wait {args.wait:g}: needs a positive number of seconds")
    scenarios = select_scenarios(load_library(args.scenarios_dir or LIBRARY), args.scenarios)
    if args.list:
        with tempfile.TemporaryDirectory(prefix="nbd-harness-check-") as scratch:
            check = check_live(args.uri, scenarios, ResultStore(Path(scratch)),
                               allow_writes=args.allow_writes, wait=args.wait, jobs=args.jobs,
                               timeout=args.timeout, list_only=True)
        _print_facts(args.uri, check)
        for name in check.planned:
            print(name)
        for item in check.excluded:
            print(f"  not applicable: {item.scenario}: {item.reason}", file=sys.stderr)
        return 0
    out = (args.out or REPORTS_DIR / f"check-{time.strftime('%Y%m%d-%H%M%S')}").absolute()
    store = ResultStore(out)
    check = check_live(args.uri, scenarios, store, allow_writes=args.allow_writes,
                       wait=args.wait, jobs=args.jobs, timeout=args.timeout)
    _print_facts(args.uri, check)
    if not any(not name.startswith("probe:") for name in check.planned):
        print("note: no scenario applies to this export (see --list for why); only the probes "
              "ran", file=sys.stderr)
    results = check.results
    store.write_run({"command": ["nbd-harness", "check", args.uri], "uri": args.uri,
                     "cases": len(results), "allow_writes": args.allow_writes,
                     "wait": args.wait})
    write_reports(collect(out, results))
    if args.json:
        print(json.dumps([r.to_dict() for r in results], indent=2))
    else:
        for result in results:
            print(f"{result.verdict:18} {result.scenario}"
                  + (f"  ({result.detail[:120]})" if result.detail and result.ok else ""))
        print_failures(results, sys.stdout)
        print(f"\n{counts_line(summarize(results))}; evidence and reports in {out}")
    if check.interrupted:
        return 130
    return 0 if all(result.ok for result in results) else 1


def _print_facts(uri: str, check: LiveCheck) -> None:
    facts, export = check.facts, check.export
    learned = (f"{export.size} bytes, {'read-only' if export.read_only else 'writable'}"
               f"{', TLS' if export.tls else ''}" if export is not None
               else "size unknown (" + "; ".join(facts.problems or ["no transmission"]) + ")")
    print(f"{uri}: {learned}; {len(check.planned)} probe(s) and scenario(s) to run, "
          f"{len(check.excluded)} not applicable", file=sys.stderr)
