"""``nbd-harness check-client 'COMMAND {uri}'``: a client command against every server profile.

Runs the command once per reference-server profile (one per distinct
behaviour by default), each time against an export with a two-layer chain
and a dirty bitmap, with the reference server checking everything the client
sends and a recording proxy capturing the conversation for the conformance
rules.  Placeholders: ``{uri}`` (``nbd://127.0.0.1:PORT/disk``), ``{uri_server}``,
``{host}``, ``{port}``, ``{export}``, ``{tls_dir}``.

Every run of the command is bounded by ``--timeout``: a client that hangs is
stopped, its capture is still checked, and it gets a ``fail`` with what it did
until then.  The result directory and its reports are written whatever happens
(also after Ctrl-C, with the profiles done so far).

Exit status: 0 when the client broke no rule anywhere (and worked against the
full protocol), 1 otherwise, 2 for a usage error, 130 when interrupted.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from harness.paths import REPORTS_DIR, default_out_help


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "check-client",
        help="run a client command against the reference server in each profile, strictly",
        description="Run COMMAND (quote it; {uri} is replaced by the server's URI) against the "
        "reference server in each version profile, recording and checking everything the "
        "client sends.",
    )
    parser.add_argument("command", metavar="COMMAND",
                        help="e.g. 'nbdinfo --map=qemu:allocation-depth {uri}'")
    parser.add_argument("--profile", action="append", default=[], metavar="NAME",
                        help="a profile to use (repeatable; `nbd-harness serve --list-profiles`)")
    parser.add_argument("--all-profiles", action="store_true",
                        help="every profile, not only one per distinct behaviour")
    parser.add_argument("--tls", action="store_true",
                        help="serve with TLS required ({uri} becomes nbds://...; "
                        "{tls_dir} holds the test PKI)")
    parser.add_argument("--strict-exit", action="store_true",
                        help="a non-zero exit fails against every profile (by default it is "
                        "'unsupported' against a profile that lacks features)")
    parser.add_argument("--timeout", type=float, default=120.0, metavar="SECONDS",
                        help="time limit of each run of the command (default: %(default)s)")
    parser.add_argument("--out", type=Path, metavar="DIR",
                        help="result directory (default: "
                             f"{default_out_help('check-client-DATE-TIME')})")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from harness.matrix.client_check import ClientCommand, check_client, profiles_for
    from harness.matrix.results import ResultStore
    from harness.report import collect, counts_line, negotiated_text, summarize, write_reports

    from .check import print_failures

    command = ClientCommand.parse(args.command)
    servers = profiles_for(args.profile, args.all_profiles)
    out = (args.out or REPORTS_DIR / f"check-client-{time.strftime('%Y%m%d-%H%M%S')}").absolute()
    store = ResultStore(out)
    results = []
    interrupted = False
    try:
        for server in servers:
            result = check_client(command, server, store, timeout=args.timeout, tls=args.tls,
                                  strict_exit=args.strict_exit)
            store.append(result)
            results.append(result)
            first = result.sessions[0] if result.sessions else {}
            options = "; ".join(first.get("options", []))
            print(f"{result.verdict:12} {server.spec:34} {negotiated_text(first)}", flush=True)
            if options:
                print(f"{'':47}options: {options}")
            if result.detail and result.ok:
                print(f"{'':47}{result.detail[:200]}")
    except KeyboardInterrupt:  # what ran so far is still reported
        print("interrupted", file=sys.stderr)
        interrupted = True
    store.write_run({"command": ["nbd-harness", "check-client", args.command],
                     "cases": len(results), "interrupted": interrupted})
    write_reports(collect(out, results))
    print_failures(results, sys.stdout)
    print(f"\n{counts_line(summarize(results))}; evidence and reports in {out}")
    if interrupted:
        return 130
    return 0 if all(result.ok for result in results) else 1
