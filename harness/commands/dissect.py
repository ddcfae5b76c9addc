"""``nbd-harness dissect FILE``: decode the NBD in a pcap/pcapng capture.

Prints every message with its fields (``--json`` for machine-readable output).
A file that cannot be read at all is a one-line error; a file truncated or
corrupt part-way prints what was decoded, then the error, and exits 1.
"""

from __future__ import annotations

import argparse
import json
import sys

from harness.errors import UserError


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``dissect`` sub-command."""
    parser = subparsers.add_parser(
        "dissect",
        help="decode the NBD sessions of a pcap/pcapng capture",
        description="Decode every NBD session of a pcap or pcapng capture with the scapy "
        "dissectors: handshake, options, requests and replies, with names for every value.",
    )
    parser.add_argument("file", metavar="FILE", help="capture file (pcap or pcapng)")
    parser.add_argument(
        "--session", type=int, metavar="N", help="show only session N (1-based, in file order)"
    )
    parser.add_argument(
        "--json", action="store_true", help="print a JSON list of messages with their fields"
    )
    parser.add_argument(
        "--data", action="store_true", help="show READ/WRITE data in full, not the first 16 bytes"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Decode and print; 1 when the file was truncated or corrupt part-way."""
    # Imported here, not at the top: every command registers on start-up (a fast --help).
    from harness.dissect import decode_capture, iter_json, render_capture

    capture = decode_capture(args.file)
    if args.session is not None and not any(s.index == args.session for s in capture.sessions):
        raise UserError(
            f"{args.file} has no session {args.session} "
            f"(it has {len(capture.sessions)} session(s), numbered from 1)"
        )
    if args.json:
        # One item per line, written as it is made: a JSON list a person can grep, and a
        # large capture does not hold its whole document in memory.
        separator = "[\n"
        for item in iter_json(capture, session=args.session, data=args.data):
            sys.stdout.write(separator + json.dumps(item))
            separator = ",\n"
        sys.stdout.write("[]\n" if separator == "[\n" else "\n]\n")
    else:
        sys.stdout.write(render_capture(capture, session=args.session, data=args.data))
    sys.stdout.flush()
    for error in capture.errors:
        print(f"nbd-harness dissect: error: {error}", file=sys.stderr)
    return 1 if capture.errors else 0
