"""What a case page shows, as plain data: findings, steps, scenario, wire log, evidence links.

The case page answers "why is this cell red?": the verdict and its reason, the
findings quoting the spec, the step that failed, the scenario line behind it,
and the decoded wire log with the offending messages highlighted and the
finding written beside them.  Links go to the raw evidence (capture, logs).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from harness.matrix.results import CaseResult
from harness.verdict import SYMBOLS

from ._html_matrix import VERDICT_CLASS, peer_slug, verdict_of
from ._summary import negotiated_text
from .evidence import (
    CaseEvidence,
    WireBlock,
    dissect_command,
    peer_under_test,
    replay_command,
    reproduce_command,
)

WIRE_MESSAGE_LIMIT = 1500
"""A wire log with more messages than this is shown in part: its start and end, and every
marked message with :data:`KEEP_AROUND` neighbours (the whole log stays one link away)."""
KEEP_EDGE = 300
"""Messages kept at each end of a long wire log."""
KEEP_AROUND = 5
"""Messages kept on each side of a marked message in a long wire log."""

EVIDENCE_ORDER = ("capture", "wire", "wire-index", "findings", "steps", "scenario")
EVIDENCE_LABELS = {
    "capture": "capture",
    "wire": "decoded wire log",
    "wire-index": "wire log index",
    "findings": "findings (JSON)",
    "steps": "steps (JSON)",
    "scenario": "scenario file",
}


@dataclass(frozen=True)
class FindingView:
    number: int
    """Its index in the case's findings (the wire log's notes refer to it)."""
    level: str
    rule: str
    section: str
    sentence: str
    message: str
    where: str
    """``frame 12, session 1, client→server``."""
    anchor: str
    """The id of its block in the wire log ("" when no block matches)."""


@dataclass(frozen=True)
class StepView:
    number: int
    phase: str
    line: int | None
    action: str
    status: str
    detail: str
    expected: str
    got: str
    decisive: bool
    """The step that decided the verdict (highlighted)."""


@dataclass(frozen=True)
class BlockView:
    """A piece of the wire log as shown: a message (with its id) or text between messages."""

    text: str
    anchor: str = ""
    css: str = ""
    notes: tuple[tuple[str, str], ...] = ()
    """(link, text) written beside a marked message."""
    omitted: int = 0
    """When > 0 this is a placeholder for that many messages left out of a long log."""


@dataclass(frozen=True)
class SessionView:
    number: int
    negotiated: str
    options: tuple[str, ...]
    commands: str
    end: str


@dataclass
class CaseView:
    """Everything the case template shows."""

    result: CaseResult
    css: str
    symbol: str
    under_test: str
    other: str
    other_label: str
    """How the findings of the side not under test are headed."""
    peer_findings: list[FindingView]
    other_findings: list[FindingView]
    steps: list[StepView]
    scenario_lines: list[tuple[int, str, bool]]
    """(number, text, highlighted)."""
    sessions: list[SessionView]
    blocks: list[BlockView]
    wire_messages: int
    wire_shown: int
    evidence: list[tuple[str, str, str]]
    """(label, file name, link)."""
    reproduce: str
    replay: str | None
    """``nbd-harness replay`` of the capture against another build (None: not replayable)."""
    dissect: str | None = None
    """``nbd-harness dissect`` of the capture, when its wire log was not kept."""
    pages: dict[str, str] = field(default_factory=dict)
    """Links: ``index``, ``server``, ``client``, ``css``."""


def _where(finding: dict[str, Any]) -> str:
    parts = []
    if finding.get("frame") is not None:
        parts.append(f"frame {finding['frame']}")
    if finding.get("session") is not None:
        parts.append(f"session {finding['session']}")
    direction = finding.get("direction")
    if direction == "client":
        parts.append("client→server")
    elif direction == "server":
        parts.append("server→client")
    if finding.get("offset") is not None:
        parts.append(f"stream offset {finding['offset']}")
    return ", ".join(parts)


def _finding(number: int, finding: dict[str, Any], anchors: dict[int, str]) -> FindingView:
    return FindingView(number, str(finding.get("level", "?")), str(finding.get("rule", "?")),
                       str(finding.get("section", "")), str(finding.get("sentence", "")),
                       str(finding.get("message", "")), _where(finding), anchors.get(number, ""))


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def _steps(result: CaseResult, decisive: dict[str, Any] | None) -> list[StepView]:
    views = []
    for number, step in enumerate(result.steps):
        line = step.get("line")
        views.append(StepView(number, _text(step.get("phase")),
                              line if isinstance(line, int) else None,
                              _text(step.get("action")), _text(step.get("status")),
                              _text(step.get("detail")), _text(step.get("expected")),
                              _text(step.get("got")), step is decisive))
    return views


def _sessions(result: CaseResult) -> list[SessionView]:
    views = []
    for number, session in enumerate(result.sessions, start=1):
        commands = session.get("commands") or {}
        counted = ", ".join(f"{name} \N{MULTIPLICATION SIGN}{count}"
                            for name, count in sorted(commands.items()))
        views.append(SessionView(number, negotiated_text(session),
                                 tuple(str(o) for o in session.get("options") or ()),
                                 counted, _text(session.get("end"))))
    return views


def _kept_messages(blocks: list[WireBlock]) -> set[int] | None:
    """Which message blocks a long log keeps (None: keep all)."""
    messages = [number for number, block in enumerate(blocks) if block.entry is not None]
    if len(messages) <= WIRE_MESSAGE_LIMIT:
        return None
    kept = set(messages[:KEEP_EDGE]) | set(messages[-KEEP_EDGE:])
    for position, number in enumerate(messages):
        if blocks[number].marks:
            kept.update(messages[max(0, position - KEEP_AROUND):position + KEEP_AROUND + 1])
    return kept


def _block_view(block: WireBlock, result: CaseResult, step_line: int | None,
                first_of_step: bool) -> BlockView:
    if block.entry is None:
        return BlockView(block.text)
    notes = []
    for number in block.findings:
        finding = result.findings[number]
        notes.append((f"#finding-{number}",
                      f"{finding.get('level', '?')} {finding.get('rule', '?')}: "
                      f"{finding.get('message', '')}"))
    if first_of_step:
        # One note where the failed step's messages begin; the colour marks the rest.
        where = f" (scenario line {step_line})" if step_line else ""
        notes.append(("#steps", f"the failed step{where} exchanged these messages"))
    css = " ".join(sorted(block.marks))
    return BlockView(block.text, block.anchor, css, tuple(notes))


def wire_view(blocks: list[WireBlock], result: CaseResult,
              step_line: int | None) -> tuple[list[BlockView], int]:
    """The blocks to show (a long log in part, gaps as placeholders) and the messages shown."""
    kept = _kept_messages(blocks)
    views: list[BlockView] = []
    omitted = 0
    shown = 0
    in_step = False
    for number, block in enumerate(blocks):
        if kept is not None and block.entry is not None and number not in kept:
            omitted += 1
            in_step = False
            continue
        if omitted:
            views.append(BlockView("", omitted=omitted))
            omitted = 0
        first_of_step = False
        if block.entry is not None:
            shown += 1
            first_of_step = "step" in block.marks and not in_step
            in_step = "step" in block.marks
        views.append(_block_view(block, result, step_line, first_of_step))
    if omitted:
        views.append(BlockView("", omitted=omitted))
    return views, shown


def _evidence_names(evidence: dict[str, str]) -> list[str]:
    first = [name for name in EVIDENCE_ORDER if name in evidence]
    logs = sorted(name for name in evidence if name.startswith("log:"))
    rest = sorted(name for name in evidence
                  if name not in first and name not in logs and name != "directory")
    return first + logs + rest


def _label(name: str) -> str:
    if name.startswith("log:"):
        return "log " + name[4:]
    return EVIDENCE_LABELS.get(name, name)


def case_view(result: CaseResult, evidence: CaseEvidence, runs: list[dict[str, Any]],
              link: Callable[[str], str]) -> CaseView:
    """The case page's data; ``link`` turns an evidence path (relative to the results
    directory) into a link from the page."""
    verdict = verdict_of(result)
    blocks = evidence.blocks()
    anchors = {n: block.anchor for block in blocks for n in block.findings}
    role = "server" if result.role == "server" else "client"
    under_test = peer_under_test(result)
    other = result.client if role == "server" else result.server
    peer_findings = [_finding(n, f, anchors) for n, f in enumerate(result.findings)
                     if f.get("role") == role]
    other_findings = [_finding(n, f, anchors) for n, f in enumerate(result.findings)
                      if f.get("role") != role]
    other_role = "client" if role == "server" else "server"
    if other.startswith("reference-"):
        other_label = (f"Breaches by the {other_role} {other} (deliberate: the scenario makes "
                       "the reference peer break these rules to test the peer's answer)")
    else:
        other_label = f"Findings about the {other_role} {other} (not the peer under test)"
    decisive = evidence.failed_step()
    step_line = decisive.get("line") if decisive else None
    scenario_text = evidence.scenario_text()
    scenario_lines = []
    if scenario_text is not None:
        scenario_lines = [(number, line, number == step_line)
                          for number, line in enumerate(scenario_text.splitlines(), start=1)]
    wire, shown = wire_view(blocks, result, step_line if isinstance(step_line, int) else None)
    files = []
    for name in _evidence_names(result.evidence):
        if evidence.path(name) is not None:
            relative = result.evidence[name]
            files.append((_label(name), relative.rpartition("/")[2], link(relative)))
    if result.evidence.get("directory") and evidence.path("directory") is not None:
        files.append(("evidence folder", "", link(result.evidence["directory"]) + "/"))
    return CaseView(
        result=result, css=VERDICT_CLASS[verdict], symbol=SYMBOLS[verdict],
        under_test=under_test, other=other, other_label=other_label,
        peer_findings=peer_findings, other_findings=other_findings,
        steps=_steps(result, decisive), scenario_lines=scenario_lines,
        sessions=_sessions(result), blocks=wire,
        wire_messages=sum(1 for b in blocks if b.entry is not None), wire_shown=shown,
        evidence=files, reproduce=reproduce_command(result, runs),
        replay=replay_command(result, evidence.root),
        dissect=dissect_command(result, evidence.root) if not blocks else None,
        pages={"server": f"../../peers/{peer_slug(result.server)}.html",
               "client": f"../../peers/{peer_slug(result.client)}.html"})


__all__ = ["CaseView", "case_view", "wire_view"]
