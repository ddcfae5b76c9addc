"""The terminal side of a run: a progress line while cases run, a summary table at the end.

On a terminal the progress is one line redrawn in place (a bar, counts per
verdict, elapsed time and an estimate of what is left); otherwise (CI logs)
a plain line every :data:`PLAIN_EVERY` seconds.  Failures and errors are
printed as they happen in both cases, so a long run shows its problems early.
"""

from __future__ import annotations

import shutil
import sys
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any, TextIO

from harness.matrix.results import CaseResult
from harness.verdict import ORDER, SYMBOLS, Verdict

from ._summary import citation, counts_line, negotiated_text, problems, summarize

PLAIN_EVERY = 15.0
BAR_WIDTH = 24


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 60}:{seconds % 60:02d}"


class Progress:
    """Tracks finished cases and draws the progress line on ``stream`` (stderr)."""

    def __init__(self, total: int, stream: TextIO | None = None, *, enabled: bool = True) -> None:
        self.total = total
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = enabled and self.stream.isatty()
        self.counts: Counter[str] = Counter()
        self.started = time.monotonic()
        self._last_plain = self.started
        self._drawn = False

    @property
    def done(self) -> int:
        return sum(self.counts.values())

    def _line(self) -> str:
        done = self.done
        filled = int(BAR_WIDTH * done / self.total) if self.total else BAR_WIDTH
        bar = "#" * filled + "." * (BAR_WIDTH - filled)
        counts = " ".join(f"{SYMBOLS[v]}{self.counts[v.value]}" for v in ORDER
                          if self.counts[v.value])
        elapsed = time.monotonic() - self.started
        eta = ""
        if 0 < done < self.total:
            eta = f" eta {_clock(elapsed / done * (self.total - done))}"
        return f"[{bar}] {done}/{self.total} {counts} {_clock(elapsed)}{eta}"

    def _clear(self) -> None:
        if self.tty and self._drawn:
            width = shutil.get_terminal_size((100, 20)).columns
            self.stream.write("\r" + " " * (width - 1) + "\r")
            self._drawn = False

    def draw(self) -> None:
        if not self.enabled:
            return
        if self.tty:
            width = shutil.get_terminal_size((100, 20)).columns
            self.stream.write("\r" + self._line()[: width - 1])
            self._drawn = True
        elif time.monotonic() - self._last_plain >= PLAIN_EVERY:
            self._last_plain = time.monotonic()
            self.stream.write(self._line() + "\n")
        self.stream.flush()

    def result(self, result: CaseResult) -> None:
        """Count a finished case; print it at once when it is not good."""
        self.counts[result.verdict] += 1
        if self.enabled and not result.ok:
            self._clear()
            self.stream.write(f"{SYMBOLS[Verdict.parse(result.verdict)]} {result.verdict}: "
                              f"{result.case_id}: {result.detail[:300]}\n")
        self.draw()

    def finish(self) -> None:
        if self.enabled:
            self._clear()
            self.stream.flush()


def summary_table(results: Sequence[CaseResult], *, failures: int = 25) -> str:
    """The end-of-run summary: counts per pair of peers, problems with their citations, and what
    each real client negotiated with the full reference server."""
    summary = summarize(results)
    verdicts = [v.value for v in ORDER]
    width = max([len("server vs client"), *(len(pair) for pair in summary.pairs)])
    header = f"{'server vs client':{width}}  " + " ".join(f"{v:>9}" for v in verdicts)
    lines = [header, "-" * len(header)]
    for pair, counts in summary.pair_counts.items():
        lines.append(f"{pair:{width}}  " + " ".join(f"{counts[v]:>9}" for v in verdicts))
    lines += ["-" * len(header),
              f"{'total':{width}}  " + " ".join(f"{summary.counts[v]:>9}" for v in verdicts)]
    negotiated = _negotiated_lines(results)
    if negotiated:
        lines += ["", "What each client negotiated with the reference server (full protocol), "
                      "as the server saw it:", *negotiated]
    bad = problems(results)
    if bad:
        lines += ["", f"Failures and errors ({len(bad)}):"]
        for result in bad[:failures]:
            lines.append(f"  {result.verdict}: {result.case_id}")
            lines.append(f"    {result.detail[:400]}")
            lines += [f"    {citation(f)}" for f in result.mandatory_findings()[:3]]
            if "directory" in result.evidence:
                lines.append(f"    evidence: {result.evidence['directory']}")
        if len(bad) > failures:
            lines.append(f"  ... and {len(bad) - failures} more (see summary.md)")
    lines += ["", f"{summary.total} cases: {counts_line(summary)}"]
    return "\n".join(lines)


def _negotiated_lines(results: Sequence[CaseResult]) -> list[str]:
    """One line per real client: the union of what its connections negotiated."""
    seen: dict[str, dict[str, Any]] = {}
    for result in results:
        if result.role != "client" or result.server != "reference-server":
            continue
        entry = seen.setdefault(result.client, {"styles": set(), "replies": set(),
                                                "contexts": set(), "options": set(),
                                                "connections": 0})
        for session in result.sessions:
            entry["connections"] += 1
            text = negotiated_text({**session, "meta_contexts": [], "export": None})
            parts = text.split(", ")
            entry["styles"].add(parts[0] if parts else "")
            entry["replies"].update(p for p in parts[1:] if p.endswith("replies")
                                    or p in ("extended-headers", "TLS"))
            entry["contexts"].update(session.get("meta_contexts") or [])
            entry["options"].update(o.split(" ->")[0] for o in session.get("options", []))
    lines = []
    for client, entry in sorted(seen.items()):
        contexts = "+".join(sorted(entry["contexts"])) or "none"
        lines.append(f"  {client:22} {entry['connections']:3} connection(s): "
                     f"{'/'.join(sorted(s for s in entry['styles'] if s))}; "
                     f"{'/'.join(sorted(entry['replies']))}; contexts {contexts}; options "
                     f"{', '.join(sorted(o.removeprefix('NBD_OPT_') for o in entry['options']))}")
    return lines


__all__ = ["Progress", "summary_table"]
