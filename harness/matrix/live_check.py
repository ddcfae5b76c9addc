"""``nbd-harness check URI`` as a whole: learn, probe, run the scenarios, keep every result.

1. The first probe (``probe:server``) learns what the server says about itself
   (greeting, ``NBD_OPT_LIST``, ``NBD_OPT_GO`` or ``NBD_OPT_EXPORT_NAME``, one
   read), recorded and judged like every case.  When it cannot learn something
   (no answer, a dropped connection, a refusal), that is its verdict and its
   findings, and the check goes on with what does not depend on it.
2. The active probes (:data:`harness.matrix.probes.PROBES`) each put one
   question the spec answers, on new connections, every wait bounded.
3. The scenarios that fit an export of unknown contents run as before
   (:func:`harness.matrix.external.external_cases`), when the first probe learned
   the export's size and flags.

Whatever happens, every result is in the store, so the reports can be written.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from harness.address import Address
from harness.client import parse_uri
from harness.scenarios import Scenario

from .cases import Excluded
from .external import ExternalError, ExternalExport, external_cases, from_facts
from .pool import run_cases
from .probe_cases import PROBE_PREFIX, ProbeCase, run_probe_case
from .probes import PROBES, ProbeOutcome, Prober, ServerFacts, learn_server
from .results import CaseResult, ResultStore

LEARN = "server"
"""The first probe's name (``probe:server``)."""


@dataclass
class LiveCheck:
    """What ``check`` came to: the facts, every result, what did not apply and why."""

    facts: ServerFacts
    export: ExternalExport | None
    results: list[CaseResult] = field(default_factory=list)
    excluded: list[Excluded] = field(default_factory=list)
    planned: list[str] = field(default_factory=list)
    """What runs, by name: the probes, then the scenarios."""
    interrupted: bool = False


def _learn_tls(uri: str, wait: float, facts: ServerFacts):
    """The first probe over TLS: the reference client (the raw probes speak in the clear)."""
    def body(prober: Prober) -> ProbeOutcome:
        from harness.client import Client, ConnectOptions
        from harness.client.errors import NbdClientError
        from harness.peers import Endpoint
        from harness.protocol import ProtocolError
        from harness.verdict import Verdict

        parsed = parse_uri(uri)
        front = Endpoint(prober.address, parsed.export, parsed.tls_certificates).uri()
        options = ConnectOptions(timeout=wait, connect_timeout=wait)
        try:
            with Client.connect(front, options=options) as client:
                facts.greeted = facts.fixed_newstyle = True
                facts.size, facts.flags = client.export_size, client.negotiation.transmission_flags
                facts.selected_with = "NBD_OPT_GO"
        except (NbdClientError, ProtocolError, OSError) as exc:
            facts.problems.append(str(exc))
            return ProbeOutcome(Verdict.FAIL, f"cannot reach transmission over TLS: {exc}")
        return ProbeOutcome(Verdict.PASS, f"size {facts.size}, flags {facts.flags:#06x} over TLS")
    return body


def learn(uri: str, store: ResultStore, wait: float) -> tuple[ServerFacts, CaseResult]:
    """The first probe: what the server says about itself, recorded and judged."""
    parsed = parse_uri(uri)  # a bad URI is a one-line usage error
    _listening(parsed.address, wait, uri)
    facts = ServerFacts(parsed.export)

    def body(prober: Prober) -> ProbeOutcome:
        learned, outcome = learn_server(prober, parsed.export)
        facts.__dict__.update(learned.__dict__)
        return outcome

    if parsed.tls_required:
        body = _learn_tls(uri, wait, facts)
    probe = ProbeCase(LEARN, "what the server says about itself: greeting, NBD_OPT_LIST, "
                      "NBD_OPT_GO (or NBD_OPT_EXPORT_NAME) for the URI's export, one read",
                      "Baseline", body)
    return facts, run_probe_case(probe, parsed.address, server_name(uri), store, wait)


def _listening(address: Address, wait: float, uri: str) -> None:
    """Nothing listening at the URI's address is a usage error (exit 2), not a finding."""
    import socket

    family = socket.AF_UNIX if address.kind == "unix" else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.settimeout(wait)
        try:
            probe.connect(address.path if address.kind == "unix" else
                          (address.host, address.port))
        except OSError as exc:
            raise ExternalError(f"cannot use {uri}: nothing answers at {address}: {exc}") \
                from None


def server_name(uri: str) -> str:
    return f"external:{uri}"


def applicable_probes(facts: ServerFacts, uri: str, allow_writes: bool
                      ) -> tuple[list[ProbeCase], list[Excluded]]:
    """The probes that can ask their question of this server (the rest, with why not)."""
    tls = parse_uri(uri).tls_required
    run: list[ProbeCase] = []
    excluded: list[Excluded] = []
    for probe in PROBES:
        reason = probe.needs(facts, allow_writes)
        if reason is None and tls and probe.name != "bad-client-flags":
            reason = "the URI uses TLS: this probe speaks in the clear"
        if reason is None and probe.name == "starttls-without-tls" and tls:
            reason = "the URI uses TLS"
        if reason:
            excluded.append(Excluded(f"{PROBE_PREFIX}{probe.name}", server_name(uri), reason))
            continue
        run.append(ProbeCase(probe.name, probe.description, probe.section,
                             lambda prober, probe=probe: probe.run(prober, facts)))
    return run, excluded


def check_live(uri: str, scenarios: Sequence[Scenario], store: ResultStore, *,
               allow_writes: bool, wait: float, jobs: int, timeout: float,
               list_only: bool = False) -> LiveCheck:
    """Learn, probe and run the scenarios against the server at ``uri`` (see the module)."""
    facts, first = learn(uri, store, wait)
    export = from_facts(uri, facts)
    store.append(first)
    check = LiveCheck(facts, export, [first])
    probes, check.excluded = applicable_probes(facts, uri, allow_writes)
    if export is not None:
        expansion = external_cases(scenarios, export, allow_writes=allow_writes, timeout=timeout)
        cases = expansion.cases
        check.excluded += expansion.excluded
    else:
        cases = []
        why = "needs the export's size and flags, which the first probe could not learn"
        check.excluded += [Excluded(s.name, server_name(uri), why) for s in scenarios]
    check.planned = [f"{PROBE_PREFIX}{p.name}" for p in probes] + [c.scenario.name
                                                                   for c in cases]
    if list_only:
        return check
    address = parse_uri(uri).address
    try:
        for probe in probes:
            result = run_probe_case(probe, address, server_name(uri), store, wait)
            store.append(result)
            check.results.append(result)
    except KeyboardInterrupt:
        check.interrupted = True
        return check
    if cases:
        pool = run_cases(cases, store, jobs=jobs)
        check.results += pool.results
        check.interrupted = pool.interrupted
    return check


__all__ = ["LEARN", "LiveCheck", "applicable_probes", "check_live", "learn", "server_name"]
