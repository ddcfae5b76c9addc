"""Reading one case's evidence for the reports: texts, the wire log in blocks, what to mark.

The runner leaves per case a decoded wire log (``wire.txt``) and its index
(``wire-index.json``: where each message is, with its session, direction,
stream offset, frames and capture time), the steps with their wall-clock
times, the findings and a copy of the scenario file; passing cases keep them
gzip'd.  :class:`CaseEvidence` reads them whichever way they are stored and
answers the questions a report asks: which block of the wire log is the
message a finding points at, which messages a failed step exchanged, and what
to quote around them.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import shlex
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.matrix.results import CaseResult

TIME_SLACK = 0.0
"""Seconds a message's capture time may fall outside a step's window and still count as the
step's.  None needed: the proxy stamps a request after the client sent it (inside the window)
and a reply before the client got it (inside the window too)."""
AROUND = 3
"""Blocks quoted before and after the message a finding points at."""
STEP_QUOTE_LIMIT = 12
"""At most this many of a failed step's messages are quoted (the first and last halves)."""


@dataclass
class WireBlock:
    """A piece of the wire log: a message (or undecoded region) with its index entry, or the
    text between messages (capture and session headers: ``entry`` is None)."""

    lines: list[str]
    entry: dict[str, Any] | None = None
    marks: set[str] = field(default_factory=set)
    """``finding`` (a finding points at it), ``step`` (the failed step exchanged it)."""
    findings: list[int] = field(default_factory=list)
    """Indexes into the case's findings that point at this block."""

    @property
    def anchor(self) -> str:
        """An HTML id: ``m-SESSION-DIRECTION-OFFSET``."""
        if self.entry is None:
            return ""
        return f"m-{self.entry['session']}-{self.entry['direction']}-{self.entry['offset']}"

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


def read_text(path: Path) -> str | None:
    """A text file's contents, gzip'd or not (None when it is missing or unreadable)."""
    with contextlib.suppress(OSError, EOFError, UnicodeDecodeError, gzip.BadGzipFile):
        if path.name.endswith(".gz"):
            with gzip.open(path, "rt", encoding="utf-8") as stream:
                return stream.read()
        return path.read_text(encoding="utf-8")
    return None


class CaseEvidence:
    """The evidence of ``result``, whose paths are relative to ``root`` (the results dir)."""

    def __init__(self, root: Path, result: CaseResult) -> None:
        self.root = Path(root)
        self.result = result

    def path(self, name: str) -> Path | None:
        """The file behind evidence ``name`` (``capture``, ``wire``...), if it exists."""
        relative = self.result.evidence.get(name)
        if not relative:
            return None
        path = self.root / relative
        return path if path.exists() else None

    def text(self, name: str) -> str | None:
        path = self.path(name)
        return read_text(path) if path is not None else None

    def scenario_text(self) -> str | None:
        return self.text("scenario")

    def index(self) -> list[dict[str, Any]]:
        text = self.text("wire-index")
        if not text:
            return []
        try:
            entries = json.loads(text)
        except json.JSONDecodeError:
            return []
        return entries if isinstance(entries, list) else []

    def failed_step(self) -> dict[str, Any] | None:
        """The step that decided a non-passing verdict (the last failed, error or unsupported
        one), or None."""
        for step in reversed(self.result.steps):
            if step.get("status") in ("failed", "error", "unsupported"):
                return step
        return None

    def blocks(self) -> list[WireBlock]:
        """The wire log in blocks, each message marked when a finding or the failed step is
        about it.  Empty when the case has no wire log."""
        text = self.text("wire")
        if text is None:
            return []
        lines = text.rstrip("\n").split("\n")
        entries = sorted(self.index(), key=lambda e: e.get("line", 0))
        blocks: list[WireBlock] = []
        position = 0
        for entry in entries:
            start = int(entry.get("line", 0)) - 1
            count = int(entry.get("lines", 1))
            if start < position or start >= len(lines):
                continue  # an index that does not match the log: show the log unmarked
            if start > position:
                blocks.append(WireBlock(lines[position:start]))
            blocks.append(WireBlock(lines[start:start + count], entry))
            position = start + count
        if position < len(lines):
            blocks.append(WireBlock(lines[position:]))
        self._mark(blocks)
        return blocks

    def _mark(self, blocks: list[WireBlock]) -> None:
        messages = [block for block in blocks if block.entry is not None]
        for number, finding in enumerate(self.result.findings):
            block = _block_of(messages, finding)
            if block is not None:
                block.marks.add("finding")
                block.findings.append(number)
        step = self.failed_step()
        if step and step.get("started"):
            low = float(step["started"]) - TIME_SLACK
            high = float(step.get("ended") or step["started"]) + TIME_SLACK
            for block in messages:
                moment = block.entry.get("time") if block.entry else None
                if isinstance(moment, (int, float)) and low <= moment <= high:
                    block.marks.add("step")

    def quote_finding(self, finding: dict[str, Any], blocks: list[WireBlock] | None = None,
                      around: int = AROUND) -> list[WireBlock]:
        """The message ``finding`` points at with ``around`` messages on each side."""
        blocks = self.blocks() if blocks is None else blocks
        messages = [block for block in blocks if block.entry is not None]
        target = _block_of(messages, finding)
        if target is None:
            return []
        where = messages.index(target)
        return messages[max(0, where - around):where + around + 1]

    def quote_step(self, blocks: list[WireBlock] | None = None,
                   limit: int = STEP_QUOTE_LIMIT) -> list[WireBlock]:
        """The messages the failed step exchanged (at most ``limit``: its first and last)."""
        blocks = self.blocks() if blocks is None else blocks
        marked = [block for block in blocks if "step" in block.marks]
        if len(marked) > limit:
            marked = marked[:limit // 2] + marked[-(limit - limit // 2):]
        return marked

    def message_count(self) -> int:
        return len(self.index())


def _block_of(messages: list[WireBlock], finding: dict[str, Any]) -> WireBlock | None:
    """The block a finding points at: same session, direction and stream offset; else the
    message of that direction that covers the offset; else the first one of its frame."""
    session, direction = finding.get("session"), finding.get("direction")
    offset, frame = finding.get("offset"), finding.get("frame")
    same = [b for b in messages if b.entry and b.entry.get("session") == session
            and b.entry.get("direction") == direction]
    for block in same:
        if block.entry and block.entry.get("offset") == offset:
            return block
    covering = [b for b in same if b.entry and isinstance(offset, int)
                and b.entry.get("offset", 0) <= offset]
    if covering:
        return max(covering, key=lambda b: b.entry.get("offset", 0) if b.entry else 0)
    return next((b for b in same if b.entry and b.entry.get("frame") == frame), None)


def reproduce_command(result: CaseResult, runs: list[dict[str, Any]] | None = None) -> str:
    """The one command that runs this case again (as the matrix ran it)."""
    if result.group:
        return shlex.join(["nbd-harness", "run", f"{result.group}/{result.scenario}",
                           "--server", result.server, "--client", result.client])
    for run in runs or ():
        if run.get("command"):
            return shlex.join(run["command"])
    return shlex.join(["nbd-harness", "run", result.scenario, "--server", result.server,
                       "--client", result.client])


def dissect_command(result: CaseResult, root: Path) -> str | None:
    """The command that decodes the case's capture into its wire log (None: no capture)."""
    relative = result.evidence.get("capture")
    if not relative or not (Path(root) / relative).exists():
        return None
    return shlex.join(["nbd-harness", "dissect", str((Path(root) / relative).resolve())])


def replay_command(result: CaseResult, root: Path) -> str | None:
    """The command that replays the case's capture against another build of the peer under
    test (None when there is no capture, or its sessions switched to TLS)."""
    relative = result.evidence.get("capture")
    if not relative or any(session.get("tls") for session in result.sessions):
        return None
    capture = str((Path(root) / relative).resolve())
    if result.role == "server":
        return shlex.join(["nbd-harness", "replay", capture, "--against",
                           "nbd://127.0.0.1:PORT/EXPORT"])
    return shlex.join(["nbd-harness", "replay", capture, "--serve", "--once"])


def relative_link(target: Path, page_dir: Path) -> str:
    """A relative URL from a page in ``page_dir`` to ``target`` (both on this machine)."""
    return os.path.relpath(target, page_dir).replace(os.sep, "/")


def peer_under_test(result: CaseResult) -> str:
    """The peer the case judges: the server in server-role cases, else the client."""
    return result.server if result.role == "server" else result.client


@dataclass
class RuleBreach:
    """One rule the side under test broke, and the cases it broke it in."""

    rule: str
    level: str
    section: str
    sentence: str
    cases: list[CaseResult] = field(default_factory=list)
    findings: list[dict[str, Any]] = field(default_factory=list)
    """The first finding of the rule in each case (parallel to ``cases``)."""


def rule_breaches(cases: Iterable[CaseResult]) -> list[RuleBreach]:
    """The rules the side under test broke in ``cases`` (see :func:`findings_of_peer`),
    in the order first seen, each case counted once per rule."""
    breaches: dict[str, RuleBreach] = {}
    for case in cases:
        seen = set()
        for finding in findings_of_peer(case):
            rule = str(finding.get("rule", "?"))
            if rule in seen:
                continue
            seen.add(rule)
            breach = breaches.setdefault(rule, RuleBreach(
                rule, str(finding.get("level", "?")), str(finding.get("section", "")),
                str(finding.get("sentence", ""))))
            breach.cases.append(case)
            breach.findings.append(finding)
    return list(breaches.values())


def findings_of_peer(result: CaseResult) -> list[dict[str, Any]]:
    """The findings that break rules of the side under test (not the deliberate breaches of the
    reference peer in negative scenarios)."""
    role = "server" if result.role == "server" else "client"
    return [finding for finding in result.findings if finding.get("role") == role]


__all__ = [
    "AROUND",
    "CaseEvidence",
    "RuleBreach",
    "WireBlock",
    "dissect_command",
    "findings_of_peer",
    "peer_under_test",
    "read_text",
    "relative_link",
    "replay_command",
    "reproduce_command",
    "rule_breaches",
]
