"""Running one case: provision -> serve -> record -> run the steps -> stop -> decode -> lint.

:func:`run_case` never raises for what a case does: whatever breaks becomes
the ``error`` verdict with the reason, and every peer, proxy and server it
started is stopped (and every process reaped) before it returns, also when a
watchdog ends a case that outlived its timeout.

A server-role case serves the scenario's export with the server under test
(a real program through its driver and provider, or the reference server in
a profile), puts a recording proxy in front of it and runs the steps with the
reference client through the proxy.  A client-role case runs the real client
program (through its provider) against the reference server in the case's
profile, also through a recording proxy.  The capture is then decoded by the
dissector and checked by every conformance rule: a MUST broken by the peer
under test fails the case; one broken by our own side is a harness error,
unless the scenario breaks the rules on purpose (negative scenarios send
malformed options and requests).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from harness.address import LOOPBACK, Address
from harness.capture import ProxyThread
from harness.client import parse_uri
from harness.client_role import run_client_scenario, serve_reference
from harness.peers import DRIVERS, Catalog, Endpoint, Provider, ServerPeer
from harness.process import PeerError
from harness.scenarios import Scenario, ScenarioResult
from harness.server_role import run_server_scenario
from harness.tls import make_test_pki
from reference_server.profiles import profile

from ._keep import DEFAULT_EVIDENCE, SHARED_SCENARIOS, keep, share_scenario
from ._recorded import recording_proxy
from ._setup import driver_options
from .cases import DISCONNECT_GROUP, Case, PeerRef, client_program
from .results import CaseResult, ResultStore
from .verdict import judge_case

CAPTURE = "capture.pcapng"
SCENARIO_COPY = "scenario.yaml"
WIRE_LOG = "wire.txt"
WIRE_INDEX = "wire-index.json"
"""Where each message of the wire log is (line, session, direction, offset, frame, time)."""
STEP_TIMEOUT = 10.0
"""Seconds each network wait of a step may take (the scenario runner's ``timeout``)."""

# Steps that make the reference client send what the spec forbids, on purpose.
_RULE_BREAKING_ACTIONS = frozenset({"option", "raw", "raw_handshake", "request"})


class _Watchdog:
    """Calls every registered stopper once ``seconds`` have passed (unless cancelled)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.fired = False
        self._stoppers: list[Callable[[], object]] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._fire)
        self._timer.daemon = True

    def add(self, stopper: Callable[[], object]) -> None:
        with self._lock:
            self._stoppers.append(stopper)
            fired = self.fired
        if fired:
            with contextlib.suppress(Exception):
                stopper()

    def _fire(self) -> None:
        with self._lock:
            self.fired = True
            stoppers = list(self._stoppers)
        for stopper in reversed(stoppers):
            with contextlib.suppress(Exception):
                stopper()

    def __enter__(self) -> _Watchdog:
        self._timer.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._timer.cancel()


def breaks_rules_on_purpose(scenario: Scenario) -> bool:
    """True when the scenario's steps may make the reference client break the spec.

    An abrupt ``disconnect`` is a hard disconnect nothing justified (client.disc-before-close,
    client.abort-before-close): a scenario asks for one to see what the server keeps."""
    return scenario.group == "negative" or any(
        step.action in _RULE_BREAKING_ACTIONS
        or (step.action == "disconnect" and step.arg("how") == "abrupt")
        for step in scenario.steps)


# --- serving ----------------------------------------------------------------------------------


def _driver(peer: PeerRef, log_dir: Path) -> ServerPeer:
    catalog = Catalog.load()
    if peer.provider and peer.provider != "builtin":
        provider = catalog.provider(peer.provider)
        return DRIVERS[peer.program](provider, log_dir=log_dir)
    return catalog.resolve(peer.spec, log_dir=log_dir)


@contextlib.contextmanager
def _serve(case: Case, workdir: Path, watchdog: _Watchdog) -> Iterator[tuple[Address, str,
                                                                            Path | None]]:
    """Serve the case's export with its server; yield (address, export name, PKI dir)."""
    scenario = case.scenario
    requirements = scenario.export
    tls_dir = None
    if requirements.tls != "off" and case.server.program != "external":
        tls_dir = make_test_pki(workdir / "pki").directory
    if case.server.program == "external":
        uri = parse_uri(case.server.spec.removeprefix("external:"))
        yield uri.address, uri.export, Path(uri.tls_certificates) if uri.tls_certificates \
            else None
        return
    if case.server.reference:
        features = profile(case.server.profile or "reference")
        with serve_reference(requirements, features, workdir / "server", tls_dir=tls_dir) as srv:
            watchdog.add(srv.thread.stop)
            yield srv.address, requirements.spec.name, tls_dir
        return
    driver = _driver(case.server, workdir)
    spec = requirements.export_spec(tls_dir)
    running = driver.start(spec, workdir / "server", options=driver_options(
        case.server.program, requirements))
    watchdog.add(running.stop)
    try:
        yield running.address, spec.name, tls_dir
    finally:
        running.stop()


def _uri(address: Address, export: str, tls_dir: Path | None) -> str:
    return Endpoint(address, export, tls_dir).uri()


def _run_server_role(case: Case, workdir: Path, capture: Path,
                     watchdog: _Watchdog) -> ScenarioResult:
    with _serve(case, workdir, watchdog) as (address, export, tls_dir):
        proxy = ProxyThread(LOOPBACK, address, capture).start()
        watchdog.add(proxy.stop)
        try:
            return run_server_scenario(case.scenario, _uri(proxy.address, export, tls_dir),
                                       features_client=sorted(case.client.features),
                                       timeout=STEP_TIMEOUT, tls_dir=tls_dir)
        finally:
            proxy.stop()


def _client_provider(peer: PeerRef) -> Provider | None:
    """The provider ``peer`` runs from (None: the harness's own program, run as it is)."""
    if not peer.provider or peer.provider == "builtin":
        return None
    provider = Catalog.load().provider(peer.provider)
    if not provider.ready():  # a sandbox that cannot start is no failure of the client
        raise PeerError(f"{provider.name} is not installed: run `{provider.install_hint()}`")
    return provider


def _run_client_role(case: Case, workdir: Path, capture: Path,
                     watchdog: _Watchdog) -> ScenarioResult:
    workdir = workdir / "client"
    workdir.mkdir(parents=True, exist_ok=True)
    return run_client_scenario(case.scenario, client_program(case.client),
                               profile(case.server.profile or "reference"), workdir,
                               features_client=sorted(case.client.features),
                               timeout=STEP_TIMEOUT,
                               listen_wrapper=recording_proxy(capture, watchdog.add),
                               provider=_client_provider(case.client))


# --- judging the wire -------------------------------------------------------------------------


def _sessions_from_capture(capture: Any) -> list[dict[str, Any]]:
    """What each connection negotiated, as the dissector read it."""
    sessions = []
    for session in capture.sessions:
        state = session.state
        options = []
        for message in session.messages:
            if message.kind == "option" and message.direction == "client":
                replies = [m.name for m in session.messages
                           if m.kind in ("option-reply", "export-name-reply")
                           and m.option is message]
                options.append(f"{message.name} -> {replies[-1]}" if replies else message.name)
        commands = Counter(m.name for m in session.messages
                           if m.kind == "request" and m.direction == "client")
        sessions.append({
            "style": state.style or None, "tls": state.tls,  # no greeting seen: null
            "structured_replies": state.structured_replies,
            "extended_headers": state.extended_headers, "no_zeroes": state.no_zeroes,
            "export": state.export_name, "meta_contexts": sorted(state.meta_contexts.values()),
            "options": options, "commands": dict(commands), "phase": session.phase,
        })
    return sessions


def _lint(capture_path: Path, case_dir: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]],
                                                       list[str]]:
    """Decode and check the capture; write wire.txt and findings.json.

    Returns (findings, sessions, problems with the capture itself).
    """
    # Here, not at the top: the dissector and the rules load scapy (seconds on a busy machine),
    # which the CLI and the pool's parent process need not pay for to import the runner.
    from harness.conformance import check_capture
    from harness.dissect import decode_capture, render_capture_indexed

    if not capture_path.exists():
        return [], [], []
    capture = decode_capture(capture_path)
    text, index = render_capture_indexed(capture)
    (case_dir / WIRE_LOG).write_text(text, encoding="utf-8")
    (case_dir / WIRE_INDEX).write_text(json.dumps(index) + "\n", encoding="utf-8")
    findings = [finding.to_dict() for finding in check_capture(capture)]
    (case_dir / "findings.json").write_text(json.dumps(findings, indent=2) + "\n")
    return findings, _sessions_from_capture(capture), list(capture.errors)


def reference_breaches_deliberate(case: Case) -> bool:
    """True when the reference side of ``case`` may break a MUST on purpose.

    A server-role scenario that breaks the rules on purpose makes the reference
    client do so; a reference-server profile with quirks reproduces a real
    server's deviations.  Either way its breaches are no harness bug.
    """
    if case.role == "server":
        return breaks_rules_on_purpose(case.scenario)
    return bool(profile(case.server.profile or "reference").quirks)


def lint_capture(capture_path: Path, case_dir: Path) -> tuple[list[dict[str, Any]],
                                                               list[dict[str, Any]], str | None]:
    """Decode and check the capture (see :func:`_lint`): (findings, sessions, problem).

    ``problem`` says why the capture cannot evidence the case (damaged, or
    decoding or checking it failed); None when it can.
    """
    try:
        findings, sessions, errors = _lint(capture_path, case_dir)
    except Exception as exc:
        return [], [], f"decoding or checking the capture failed: {type(exc).__name__}: {exc}"
    return findings, sessions, f"the capture is damaged: {errors[0]}" if errors else None


# --- evidence -----------------------------------------------------------------------------------


def _relative(path: Path, root: Path) -> str:
    return os.path.relpath(path, root)


def _shared_scenario(case: Case, root: Path) -> Path:
    """Where a good case's scenario copy is kept, once per scenario."""
    scenario = case.scenario
    return root / SHARED_SCENARIOS / (scenario.group or ".") / f"{scenario.name}.yaml"


def _collect_evidence(case_dir: Path, root: Path,
                      shared_scenario: Path | None = None) -> dict[str, str]:
    """The evidence paths of a case (``shared_scenario``: the scenario copy a good case
    shares with the others of its scenario, when it kept none of its own)."""
    evidence: dict[str, str] = {"directory": _relative(case_dir, root)}
    if (not (case_dir / SCENARIO_COPY).exists() and shared_scenario is not None
            and shared_scenario.exists()):
        evidence["scenario"] = _relative(shared_scenario, root)
    named = {"capture": CAPTURE, "wire": WIRE_LOG, "wire-index": WIRE_INDEX,
             "findings": "findings.json", "steps": "steps.json", "scenario": SCENARIO_COPY}
    for name, file_name in named.items():
        for candidate in (file_name, f"{file_name}.gz"):  # passing cases keep it compressed
            if (case_dir / candidate).exists():
                evidence[name] = _relative(case_dir / candidate, root)
    for log in sorted([*case_dir.rglob("*.log"), *case_dir.rglob("*.log.gz")]):
        key = _relative(log, case_dir).replace(os.sep, "/").removesuffix(".gz")
        evidence[f"log:{key.removesuffix('.log')}"] = _relative(log, root)
    return evidence


def _versions(case: Case) -> dict[str, str]:
    return {"server": case.server.spec, "client": case.client.spec}


# --- the case -----------------------------------------------------------------------------------


def run_case(case: Case, store: ResultStore, *, shard: str = "", worker: str = "",
             keep_data: bool = False, evidence: str = DEFAULT_EVIDENCE) -> CaseResult:
    """Run ``case`` and return its result (evidence in ``store.case_dir(case.id)``; a good
    case keeps what ``evidence`` says, :mod:`harness.matrix._keep`).

    The result is not appended to ``store``: the caller decides (a pool's
    parent process writes every worker's results).
    """
    if case.scenario.group == DISCONNECT_GROUP:  # generated cases run their own way
        from .disconnect import run_disconnect_case

        return run_disconnect_case(case, store, shard=shard, worker=worker)
    started = time.time()
    clock = time.monotonic()
    case_dir = store.case_dir(case.id)
    capture = case_dir / CAPTURE
    with contextlib.suppress(FileNotFoundError):
        capture.unlink()  # a re-run must not decode the previous capture
    runner = _run_server_role if case.role == "server" else _run_client_role
    with _Watchdog(case.timeout) as watchdog:
        try:
            outcome = runner(case, case_dir, capture, watchdog)
        except Exception as exc:
            tail = " / ".join(traceback.format_exc(limit=-4).strip().splitlines()[-4:])
            outcome = ScenarioResult("error", [], f"{type(exc).__name__}: {exc} ({tail})",
                                     scenario=case.scenario_id, role=case.role)
    if watchdog.fired:
        outcome = ScenarioResult("error", outcome.steps,
                                 f"the case did not finish within {case.timeout:g} s "
                                 f"(stopped; last: {outcome.detail})",
                                 outcome.evidence, case.scenario_id, case.role)
    (case_dir / "steps.json").write_text(json.dumps(outcome.as_dict(), indent=2) + "\n")
    if case.scenario.path is not None:  # the case page and the conformance report quote it
        with contextlib.suppress(OSError):
            shutil.copyfile(case.scenario.path, case_dir / SCENARIO_COPY)
    findings, wire_sessions, capture_problem = lint_capture(capture, case_dir)
    sessions = list(outcome.evidence.get("sessions", []) or []) or wire_sessions
    final = judge_case(outcome.verdict, outcome.detail, findings, under_test=case.role,
                       peer=case.under_test.spec, expected=case.expected,
                       capture_problem=capture_problem,
                       reference_breaches_deliberate=reference_breaches_deliberate(case),
                       known_breaches=case.known_breaches(),
                       evidenced=case.role != "server" or capture.exists())
    if final.ok:
        if evidence != "full" and not keep_data:
            share_scenario(case_dir / SCENARIO_COPY, _shared_scenario(case, store.directory))
        keep(case_dir, evidence, keep_data)
    return CaseResult(
        case_id=case.id,
        scenario=case.scenario.name,
        group=case.scenario.group,
        role=case.role,
        server=case.server.spec,
        client=case.client.spec,
        verdict=final.verdict.value,
        observed=final.observed.value,
        expected=case.expected.value if case.expected else None,
        detail=final.detail,
        description=case.scenario.description,
        spec=tuple(case.scenario.spec),
        features=case.features(),
        expectation=case.expectation.why,
        duration=round(time.monotonic() - clock, 3),
        started=started,
        findings=tuple(findings),
        steps=tuple(step.as_dict() for step in outcome.steps),
        sessions=tuple(sessions),
        evidence=_collect_evidence(case_dir, store.directory,
                                   _shared_scenario(case, store.directory)),
        versions=_versions(case),
        shard=shard,
        worker=worker,
    )


__all__ = ["STEP_TIMEOUT", "breaks_rules_on_purpose", "lint_capture",
           "reference_breaches_deliberate", "run_case"]
