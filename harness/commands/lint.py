"""``nbd-harness lint FILE``: check the NBD sessions of a capture against the spec's rules.

Prints one finding per line (where, level, rule, what happened) followed by the
section and sentence of the spec it breaks; ``--json`` prints a list of
findings instead.  Exit status: 1 when a MUST or MUST NOT rule is broken, 2
when the file cannot be read (or broke part-way and nothing mandatory was
found), 0 otherwise (SHOULD-level findings alone do not fail).
"""

from __future__ import annotations

import argparse
import json
import sys

from harness.conformance import Finding, check_capture
from harness.dissect import Capture, decode_capture
from harness.errors import UserError

_ARROW = {"client": "client→server", "server": "server→client"}


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``lint`` sub-command."""
    parser = subparsers.add_parser(
        "lint",
        help="check the NBD sessions of a pcap/pcapng capture against the spec",
        description="Decode every NBD session of a capture and check it against the "
        "conformance rules (each cites a sentence of the NBD spec). Exits 1 when a MUST-level "
        "rule is broken.",
    )
    parser.add_argument("file", metavar="FILE", help="capture file (pcap or pcapng)")
    parser.add_argument(
        "--json", action="store_true", help="print a JSON list of findings instead of text"
    )
    parser.add_argument(
        "--session", type=int, metavar="N", help="check only session N (1-based, in file order)"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Decode, check, print; the exit status says whether a MUST-level rule was broken."""
    capture = decode_capture(args.file)
    if args.session is not None:
        chosen = [s for s in capture.sessions if s.index == args.session]
        if not chosen:
            raise UserError(
                f"{args.file} has no session {args.session} "
                f"(it has {len(capture.sessions)} session(s), numbered from 1)"
            )
        capture.sessions = chosen
    findings = check_capture(capture)
    if args.json:
        json.dump([f.to_dict() for f in findings], sys.stdout, indent=1, ensure_ascii=False)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(_render(capture, findings))
    sys.stdout.flush()
    for error in capture.errors:
        print(f"nbd-harness lint: error: {error}", file=sys.stderr)
    if any(f.mandatory for f in findings):
        return 1
    return 2 if capture.errors else 0


def _render(capture: Capture, findings: list[Finding]) -> str:
    lines = []
    for finding in findings:
        lines.append(
            f"frame {finding.frame}  [session {finding.session}] {_ARROW[finding.direction]} "
            f"offset {finding.offset}  {finding.level} {finding.rule}"
        )
        lines.append(f"    {finding.message}")
        lines.append(f'    spec, "{finding.section}": "{" ".join(finding.sentence.split())}"')
    for session in capture.sessions:
        for region in session.undecoded:
            lines.append(
                f"note: session {session.index}: {region.length} {region.direction} byte(s) at "
                f"offset {region.offset} (frame {region.frame}) not decoded: {region.reason}"
            )
    nbd = sum(1 for s in capture.sessions if s.nbd)
    mandatory = sum(1 for f in findings if f.mandatory)
    lines.append(
        f"{len(findings)} finding(s), {mandatory} at MUST level, in {nbd} NBD session(s) "
        f"of {capture.path}"
    )
    return "\n".join(lines) + "\n"
