#!/usr/bin/env python3
"""A fingerprint of what ``nbd-harness lint --json`` says about each capture: proof that a
refactor of the rules (or of the decoder) changed no finding.

For every capture (``*.pcap``, ``*.pcapng`` and their ``.gz`` forms under the paths given,
recursively; by default ``tests/data`` and the two benchmark captures of ``bench_decoder.py``
when they exist), lint runs in this process (``harness.cli.main(["lint", "--json", FILE])``, the
command's own code path) and its JSON document, with the volatile ``capture`` path removed
and the exit status added, is hashed (sha256 of the canonical JSON).  One line per capture::

    <sha256>  <exit status>  <findings>  <path>

Save a run before a change and one after, then compare them::

    .venv/bin/python benchmarks/lint_fingerprint.py > /tmp/before.txt
    ... change the rules ...
    .venv/bin/python benchmarks/lint_fingerprint.py > /tmp/after.txt
    .venv/bin/python benchmarks/lint_fingerprint.py --compare /tmp/before.txt /tmp/after.txt

``--keep DIR`` also writes each capture's normalised document (``DIR/<path>.json``), so a
changed fingerprint can be diffed finding by finding.  ``--compare`` exits 1 when a capture's
fingerprint differs or a capture is missing from either run, 0 when all are identical.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import sys
from collections.abc import Iterable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from harness.cli import main as harness_main  # noqa: E402

CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "nbd-harness" / "bench"
BENCH_CAPTURES = (CACHE / "copy-1024M.pcapng", CACHE / "small-100000.pcapng")
SUFFIXES = (".pcap", ".pcapng", ".pcap.gz", ".pcapng.gz")
VOLATILE = ("capture",)
"""Top-level keys of lint's JSON document that depend on how the file was named."""


def captures_under(paths: Iterable[Path]) -> list[Path]:
    """Every capture file named, or found below a named directory, sorted per directory."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found.extend(sorted(p for p in path.rglob("*") if p.name.endswith(SUFFIXES)))
        elif path.exists():
            found.append(path)
    return found


def lint_document(capture: Path) -> dict[str, object]:
    """Lint's JSON document for ``capture`` without its volatile fields, plus ``exit``."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = harness_main(["lint", "--json", str(capture)])
    text = out.getvalue()
    document: dict[str, object] = json.loads(text) if text.strip() else {"stderr": err.getvalue()}
    for key in VOLATILE:
        document.pop(key, None)
    document["exit"] = status
    return document


def fingerprint(document: dict[str, object]) -> str:
    canonical = json.dumps(document, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def shown(path: Path) -> str:
    """``path`` relative to the repository when it lies inside it (runs from two worktrees
    compare), else as given."""
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def run(paths: list[Path], keep: Path | None) -> int:
    for capture in captures_under(paths):
        document = lint_document(capture)
        name = shown(capture)
        findings = document.get("findings")
        count = len(findings) if isinstance(findings, list) else "-"
        print(f"{fingerprint(document)}  {document['exit']}  {count}  {name}", flush=True)
        if keep is not None:
            target = keep / (name.lstrip("/") + ".json")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(json.dumps(document, indent=1, ensure_ascii=False) + "\n")
    return 0


def load(saved: Path) -> dict[str, str]:
    """A saved run: path -> the rest of its line (fingerprint, status, count)."""
    runs: dict[str, str] = {}
    for line in saved.read_text().splitlines():
        if line.strip():
            digest, status, count, name = line.split(None, 3)
            runs[name] = f"{digest}  {status}  {count}"
    return runs


def compare(before_file: Path, after_file: Path) -> int:
    before, after = load(before_file), load(after_file)
    differ = 0
    for name in sorted(before.keys() | after.keys()):
        old, new = before.get(name), after.get(name)
        if old != new:
            differ += 1
            print(f"{name}:\n  before {old or 'missing'}\n  after  {new or 'missing'}")
    total = len(before.keys() | after.keys())
    print(f"{total - differ} of {total} capture(s) identical, {differ} differ")
    return 1 if differ else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "paths",
        nargs="*",
        type=Path,
        help="captures or directories (default: tests/data and the benchmark captures)",
    )
    parser.add_argument("--keep", type=Path, metavar="DIR", help="also write each document")
    parser.add_argument(
        "--compare", nargs=2, type=Path, metavar=("BEFORE", "AFTER"), help="compare two runs"
    )
    args = parser.parse_args()
    if args.compare:
        return compare(*args.compare)
    paths = args.paths or [REPO / "tests" / "data", *BENCH_CAPTURES]
    return run(paths, args.keep)


if __name__ == "__main__":
    sys.exit(main())
