"""``nbd-harness fuzz``: drive a server with the hypothesis fuzzer; failures come back as scenarios.

    nbd-harness fuzz nbd://127.0.0.1:10809/disk --max-examples 500
    nbd-harness fuzz --server nbdkit --max-examples 2000 --seed 3
    nbd-harness fuzz --server reference-server --fault write-zeroes-not-zeroing
    nbd-harness fuzz --client 'nbdinfo {uri}' --max-examples 200

Every failure (a crash, a hang beyond ``--timeout``, a step whose outcome or data
is wrong, a MUST-level finding over the capture) is shrunk and written to
``--out`` as a scenario YAML (``nbd-harness scenarios run FILE --uri ...`` replays
it) and its pcapng.  The exit status is 1 when anything was found.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from harness.errors import UserError


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``fuzz`` sub-command."""
    parser = subparsers.add_parser(
        "fuzz",
        help="fuzz a server (or a client) and write each failure as a replayable scenario",
        description="Hypothesis-driven protocol fuzzing: negotiation choices, valid and "
        "mutated options, requests in and around the export, pipelining, byte-level "
        "mutation and disconnects; every step judged by the conformance rules and by "
        "data read-back; failures shrunk and written as scenario YAML plus pcapng.",
    )
    target = parser.add_mutually_exclusive_group()
    target.add_argument("uri", nargs="?", help="a live server to fuzz (nbd://HOST:PORT/EXPORT)")
    target.add_argument("--server", metavar="PEER[@VER]",
                        help="a server peer the harness starts (and restarts when it dies)")
    target.add_argument("--client", metavar="'CMD {uri}'",
                        help="a client command, run against a reference server whose replies "
                        "are cut, stalled or mutated")
    parser.add_argument("--fault", action="append", default=[], metavar="NAME",
                        help="with --server reference-server: a fault profile to apply")
    parser.add_argument("--profile", default="reference",
                        help="with --server reference-server: its version profile")
    parser.add_argument("--max-examples", type=int, default=200, metavar="N",
                        help="budget in examples (default 200)")
    parser.add_argument("--max-time", type=float, default=None, metavar="SECONDS",
                        help="budget in seconds (checked between batches of examples)")
    parser.add_argument("--seed", type=int, default=0, help="campaign seed (default 0)")
    parser.add_argument("--timeout", type=float, default=5.0, metavar="SECONDS",
                        help="bound on each wait; longer is a hang (default 5)")
    parser.add_argument("--out", type=Path, default=Path("fuzz-failures"), metavar="DIR",
                        help="where failing scenarios and captures go (default fuzz-failures/)")
    parser.add_argument("--no-shrink", action="store_true", help="report failures unshrunk")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from harness.fuzz import Campaign, run_campaign
    from harness.fuzz.target import LiveTarget, PeerTarget, ReferenceTarget

    if args.max_examples < 1:
        raise UserError("--max-examples must be at least 1")
    if args.fault and args.server != "reference-server":
        raise UserError("--fault needs --server reference-server (or fuzz the URI of "
                        "'nbd-harness serve --fault NAME')")
    if args.client:
        return _run_client(args)
    if args.uri:
        target = LiveTarget(args.uri)
    elif args.server == "reference-server" or (args.server or "").startswith("reference-server@"):
        profile = args.server.partition("@")[2] or args.profile
        target = ReferenceTarget(profile, tuple(args.fault))
    elif args.server:
        target = PeerTarget(args.server)
    else:
        raise UserError("give a URI, --server PEER or --client 'CMD {uri}'")
    quiet = args.json or not sys.stderr.isatty()

    def progress(summary) -> None:
        if not quiet:
            print(f"\r{summary.examples} examples, {summary.steps} steps, "
                  f"{summary.seconds:.0f} s, {len(summary.failures)} failure(s)",
                  end="", file=sys.stderr, flush=True)

    try:
        campaign = Campaign(target, max_examples=args.max_examples, max_time=args.max_time,
                            seed=args.seed, timeout=args.timeout, out_dir=args.out,
                            shrink=not args.no_shrink)
        summary = run_campaign(campaign, progress)
    finally:
        target.close()
    if not quiet:
        print(file=sys.stderr)
    print(json.dumps(summary.as_dict(), indent=1) if args.json else summary.describe())
    return 1 if summary.failures else 0


def _run_client(args: argparse.Namespace) -> int:
    from harness.fuzz.clients import ClientCampaign, run_client_campaign

    if "{uri}" not in args.client:
        raise UserError("--client needs a command with {uri} in it, e.g. 'nbdinfo {uri}'")
    summary = run_client_campaign(ClientCampaign(args.client, max_examples=args.max_examples,
                                                 max_time=args.max_time, seed=args.seed,
                                                 timeout=args.timeout, out_dir=args.out))
    print(json.dumps(summary.as_dict(), indent=1) if args.json else summary.describe())
    return 1 if summary.failures else 0
