"""Running one live probe as a case: recorded through a proxy, linted, judged, reported.

A probe (:mod:`harness.matrix.probes`) talks to the server through a recording
proxy, so its conversation is evidence like any case's: ``capture.pcapng``,
``wire.txt`` and ``findings.json`` in its case directory.  The verdict weighs
what the probe saw (its own findings: no answer, a dropped connection, an
answer the spec does not allow) with every conformance rule over the capture
(:func:`harness.matrix.verdict.judge_case`; the probes break client rules on
purpose, so the reference client's own breaches are no harness bug).  Nothing
here raises for what the server does: a probe that cannot finish is an
``error`` with the reason, and the next probe starts on a new connection.
"""

from __future__ import annotations

import contextlib
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.address import LOOPBACK, Address
from harness.capture import ProxyThread
from harness.verdict import Verdict

from .probes import ProbeFinding, ProbeOutcome, Prober
from .results import CaseResult, ResultStore
from .runner import CAPTURE, _collect_evidence, lint_capture
from .verdict import judge_case

PROBE_GROUP = "probes"
PROBE_PREFIX = "probe:"
"""Probe cases are named ``probe:NAME`` in reports (scenarios have plain names)."""
CLIENT_NAME = "reference-client"


@dataclass(frozen=True)
class ProbeCase:
    """One probe to run: its name, what it asks, the spec section, and the conversation."""

    name: str
    description: str
    section: str
    body: Callable[[Prober], ProbeOutcome]


def citation_of(rule_id: str) -> tuple[str, str, str]:
    """(level, section, sentence) of ``rule_id``: from the rules table, or, for a rule still
    to be written, from the fault profile whose ground truth proposes it."""
    from harness.protocol.rules import CITATIONS
    from reference_server.faults import FAULTS

    citation = CITATIONS.get(rule_id)
    if citation is not None:
        return citation.level, citation.section, citation.sentence
    for fault in FAULTS:
        if fault.rule.removeprefix("new:") == rule_id:
            return fault.level, fault.section, fault.sentence
    return "MUST", "", ""  # a rule named by a probe alone: the message says what broke


def _frames(capture: Path) -> dict[tuple[int, str], tuple[int, int]]:
    """(session, client message name) -> (frame, offset) of the last such message."""
    from harness.dissect import decode_capture

    located: dict[tuple[int, str], tuple[int, int]] = {}
    try:
        decoded = decode_capture(capture)
    except Exception:
        return located
    for position, session in enumerate(decoded.sessions, start=1):
        for message in session.messages:
            if message.direction == "client":
                located[(position, message.name)] = (message.frame, message.offset)
                located[(position, "")] = (message.frame, message.offset)
    return located


def probe_findings(found: list[ProbeFinding], capture: Path,
                   linted: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The probe's own findings as finding dicts, less those the rules already made: the
    same rule, or a server finding on the same client message (the rules judge an
    unanswered message under the rule for that message, e.g. ``server.meta-context-replies``
    for NBD_OPT_SET_META_CONTEXT: that id, with its citation, is the one reported)."""
    if not found:
        return []
    frames = _frames(capture) if capture.exists() else {}
    already = {finding["rule"] for finding in linted}
    judged_at = {(finding["session"], finding["frame"]) for finding in linted
                 if finding["role"] == "server"}
    out = []
    for finding in found:
        frame, offset = frames.get((finding.session, finding.about),
                                   frames.get((finding.session, ""), (0, 0)))
        if finding.rule in already or (finding.session, frame) in judged_at:
            continue
        level, section, sentence = citation_of(finding.rule)
        out.append({"rule": finding.rule, "level": level, "role": "server", "section": section,
                    "sentence": sentence, "session": finding.session, "frame": frame,
                    "offset": offset, "direction": "client", "message": finding.message})
    return out


def run_probe_case(probe: ProbeCase, upstream: Address, server_spec: str, store: ResultStore,
                   wait: float) -> CaseResult:
    """Run ``probe`` against the server at ``upstream``; never raises for the server's doing."""
    case_id = f"{PROBE_PREFIX}{probe.name}[{server_spec}-vs-{CLIENT_NAME}]"
    case_dir = store.case_dir(case_id)
    capture = case_dir / CAPTURE
    with contextlib.suppress(FileNotFoundError):
        capture.unlink()
    started, clock = time.time(), time.monotonic()
    prober = Prober(upstream, wait)
    try:
        proxy = ProxyThread(LOOPBACK, upstream, capture, connect_timeout=wait).start()
    except Exception as exc:
        outcome = ProbeOutcome(Verdict.ERROR, f"cannot start the recording proxy: {exc}")
    else:
        try:
            prober.address = proxy.address
            outcome = probe.body(prober)
        except Exception as exc:
            tail = " / ".join(traceback.format_exc(limit=-3).strip().splitlines()[-3:])
            outcome = ProbeOutcome(Verdict.ERROR, f"{type(exc).__name__}: {exc} ({tail})")
        finally:
            prober.close()
            proxy.stop()
    linted, sessions, problem = lint_capture(capture, case_dir)
    findings = linted + probe_findings(outcome.findings, capture, linted)
    final = judge_case(outcome.verdict, outcome.detail, findings, under_test="server",
                       peer=server_spec, capture_problem=problem,
                       reference_breaches_deliberate=True,
                       evidenced=capture.exists() or outcome.verdict == Verdict.ERROR)
    detail = final.detail
    if final.verdict != outcome.verdict and outcome.detail and outcome.detail not in detail:
        detail = f"{detail}; probe: {outcome.detail}"
    return CaseResult(
        case_id=case_id, scenario=f"{PROBE_PREFIX}{probe.name}", group=PROBE_GROUP,
        role="server", server=server_spec, client=CLIENT_NAME, verdict=final.verdict.value,
        observed=final.observed.value, expected=None, detail=detail,
        description=probe.description, spec=(probe.section,) if probe.section else (),
        expectation="a live probe: what the spec allows, and what the server said of itself",
        duration=round(time.monotonic() - clock, 3), started=started, findings=tuple(findings),
        sessions=tuple(sessions), evidence=_collect_evidence(case_dir, store.directory),
        versions={"server": server_spec, "client": CLIENT_NAME},
    )


__all__ = ["PROBE_GROUP", "PROBE_PREFIX", "ProbeCase", "citation_of", "probe_findings",
           "run_probe_case"]
