"""Run the rules: a decoded capture (or session) in, findings out."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from harness.conformance._rule import REGISTRY, Rule
from harness.conformance._view import SessionView
from harness.conformance.findings import Finding
from harness.dissect import Capture, Session, decode_capture
from harness.gcpause import collector_paused

_MODULE_ORDER = (
    "rules_handshake",
    "rules_options",
    "rules_strings",
    "rules_tls",
    "rules_block_size",
    "rules_transmission",
    "rules_structured",
    "rules_block_status",
    "rules_errors",
    "rules_baseline",
    "rules_session",
)


def all_rules() -> list[Rule]:
    """Every registered rule: module by module in protocol order (handshake first), each
    module's rules in definition order."""

    def place(item: Rule) -> int:
        module = item.function.__module__.rsplit(".", 1)[-1]
        return _MODULE_ORDER.index(module) if module in _MODULE_ORDER else len(_MODULE_ORDER)

    return sorted(REGISTRY.values(), key=place)


def check_session(
    session: Session, rules: Iterable[Rule] | None = None, others: Sequence[Session] = ()
) -> list[Finding]:
    """Every breach ``rules`` (default: all) find in one session, in wire order.

    Sessions that carry no NBD give nothing.  A session captured after it
    started is judged only by the rules that need nothing from the handshake
    (``Rule.midstream``): what it negotiated is unknown.  ``others`` are the capture's
    other connections (another connection may write to the same export).
    """
    if not session.nbd:
        return []
    with collector_paused():  # the view and content model make objects per message
        view = SessionView(session, others)
        findings: list[Finding] = []
        for item in all_rules() if rules is None else rules:
            if session.joined_midstream and not item.midstream:
                continue
            findings.extend(item.check(view))
    return sorted(findings, key=_order)


def check_capture(
    capture: Capture | str | Path, rules: Iterable[Rule] | None = None
) -> list[Finding]:
    """Every breach in every session of ``capture`` (a decoded :class:`Capture` or a path).

    A path is decoded first; :class:`~harness.dissect.CaptureError` comes out
    when the file cannot be read at all.
    """
    decoded = capture if isinstance(capture, Capture) else decode_capture(capture)
    chosen = None if rules is None else list(rules)
    findings: list[Finding] = []
    for session in decoded.sessions:
        findings.extend(check_session(session, chosen, decoded.sessions))
    return findings


def _order(finding: Finding) -> tuple[int, int, str, int, str]:
    return (finding.session, finding.frame, finding.direction, finding.offset, finding.rule)
