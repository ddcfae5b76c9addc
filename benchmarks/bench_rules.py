#!/usr/bin/env python3
"""What the conformance rules cost on a capture, apart from decoding it.

The capture is decoded once; then ``check_capture`` runs ``--rounds`` times, each timed in
CPU seconds (wall time says little on a shared machine).  With ``--top N``, the N costliest
parts of one more pass: building each session's view, its content model, and each rule.

    .venv/bin/python benchmarks/bench_rules.py ~/.cache/nbd-harness/bench/small-100000.pcapng \\
        [--rounds 3] [--top 15]

The captures of ``bench_decoder.py`` (in ``~/.cache/nbd-harness/bench``) are the usual
inputs: ``small-N`` for the per-message cost, ``copy-SIZE`` for bulk data.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from harness.conformance import SessionView, all_rules, check_capture  # noqa: E402
from harness.dissect import Capture, decode_capture  # noqa: E402


def breakdown(capture: Capture) -> Counter[str]:
    """CPU seconds per part of one pass over every session (collector off, as in a check)."""
    spent: Counter[str] = Counter()
    enabled = gc.isenabled()
    gc.disable()
    try:
        for session in capture.sessions:
            if not session.nbd:
                continue
            began = time.process_time()
            view = SessionView(session, capture.sessions)
            spent["(view)"] += time.process_time() - began
            began = time.process_time()
            _ = view.content
            spent["(content model)"] += time.process_time() - began
            for item in all_rules():
                if session.joined_midstream and not item.midstream:
                    continue
                began = time.process_time()
                item.check(view)
                spent[item.id] += time.process_time() - began
    finally:
        if enabled:
            gc.enable()
    return spent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("capture", type=Path)
    parser.add_argument("--rounds", type=int, default=1, help="timed passes of all the rules")
    parser.add_argument("--top", type=int, default=0, metavar="N", help="the N costliest parts")
    args = parser.parse_args()
    began = time.process_time()
    capture = decode_capture(args.capture)
    messages = sum(len(session.messages) for session in capture.sessions)
    print(f"decode: {time.process_time() - began:.2f} s CPU, {messages} messages")
    for _ in range(args.rounds):
        began = time.process_time()
        findings = check_capture(capture)
        spent = time.process_time() - began
        per_message = spent / messages * 1e6 if messages else 0.0
        print(
            f"rules: {spent:.2f} s CPU ({per_message:.1f} µs a message), "
            f"{len(findings)} finding(s)"
        )
    if args.top:
        for part, seconds in breakdown(capture).most_common(args.top):
            print(f"{seconds:8.3f} s  {part}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
