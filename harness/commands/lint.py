"""``nbd-harness lint FILE``: check the NBD sessions of a capture against the spec's rules.

Prints one finding per line (where, level, rule, what happened) followed by the
section and sentence of the spec it breaks; ``--json`` prints one JSON document
instead (:data:`JSON_FORMAT`)::

    {"format": "nbd-harness-lint/2", "capture": "s.pcapng", "complete": true,
     "errors": [], "sessions": 1, "findings": [{"rule": ..., "frame": ...}, ...]}

``complete`` is false when the file broke part-way (``errors`` says how): the
findings then cover only what was read.  Exit status, first match wins:

- 2: the input is unreadable, or truncated/corrupt part-way (also when findings
  were made before the damage: the verdict is incomplete, and the text, the JSON
  and the status all say so);
- 1: a MUST or MUST NOT rule is broken;
- 0: otherwise (SHOULD-level findings alone do not fail).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING

from harness.errors import UserError

if TYPE_CHECKING:  # the decoder and the rules load when the command runs: a fast --help
    from harness.conformance import Finding
    from harness.dissect import Capture

_ARROW = {"client": "client→server", "server": "server→client"}
JSON_FORMAT = "nbd-harness-lint/2"
"""The ``format`` of ``lint --json``'s document (version 1 was a bare list of findings)."""
EXIT_CLEAN, EXIT_MUST, EXIT_INPUT = 0, 1, 2


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``lint`` sub-command."""
    parser = subparsers.add_parser(
        "lint",
        help="check the NBD sessions of a pcap/pcapng capture against the spec",
        description="Decode every NBD session of a capture and check it against the "
        "conformance rules (each cites a sentence of the NBD spec). Exit status: 2 when the "
        "file is unreadable or truncated (even with findings), else 1 when a MUST-level rule "
        "is broken, else 0.",
    )
    parser.add_argument("file", metavar="FILE", help="capture file (pcap or pcapng)")
    parser.add_argument(
        "--json",
        action="store_true",
        help=f"print one JSON document ({JSON_FORMAT}: findings, and whether the file was "
        "read completely) instead of text",
    )
    parser.add_argument(
        "--session", type=int, metavar="N", help="check only session N (1-based, in file order)"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Decode, check, print; the exit status says whether the file was read whole and, if
    so, whether a MUST-level rule was broken (see the module docstring)."""
    from harness.conformance import check_capture
    from harness.dissect import decode_capture

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
        json.dump(_document(capture, findings), sys.stdout, indent=1, ensure_ascii=False)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(_render(capture, findings))
    sys.stdout.flush()
    for error in capture.errors:
        print(f"nbd-harness lint: error: {error}", file=sys.stderr)
    return exit_status(capture, findings)


def exit_status(capture: Capture, findings: list[Finding]) -> int:
    """2 for a damaged file (it wins: the verdict is incomplete), else 1 for a MUST-level
    finding, else 0."""
    if capture.errors:
        return EXIT_INPUT
    return EXIT_MUST if any(f.mandatory for f in findings) else EXIT_CLEAN


def _document(capture: Capture, findings: list[Finding]) -> dict[str, object]:
    return {
        "format": JSON_FORMAT,
        "capture": capture.path,
        "complete": not capture.errors,
        "errors": list(capture.errors),
        "sessions": sum(1 for s in capture.sessions if s.nbd),
        "findings": [f.to_dict() for f in findings],
    }


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
    for error in capture.errors:
        lines.append(f"incomplete: {error}; the findings cover only what was read before it")
    lines.append(
        f"{len(findings)} finding(s), {mandatory} at MUST level, in {nbd} NBD session(s) "
        f"of {capture.path}" + (" (incomplete: the file is damaged)" if capture.errors else "")
    )
    return "\n".join(lines) + "\n"
