"""Disconnect at every point, as matrix cases (the generated group ``disconnect``).

Two directions, as qemu's iotest 083 does for its own client:

- client role (``disconnect-read``, ``disconnect-write``): the reference server's
  stream is cut (closed) after every message boundary of a clean session and
  after every byte of its first two messages, while a real client performs an
  action of ``matrix/client-actions.toml`` (:func:`harness.peers.actions.perform_action`).
  Each cut is judged by :func:`harness.fuzz.clients.judge_ran`: the client ends
  within the timeout, not by a signal, and when it exits 0 it reports nothing a
  clean session does not; after a write it claimed, the server holds the data.
- server role (``disconnect-client-drops``): the reference client's stream is cut
  at every message boundary of a session (write, read, flush) against a real
  server, and after each drop a second, well-behaved connection must be served
  (a pattern written and read back).

One case per client action (or server) holds all its cuts: its detail names the
cuts that went wrong with the client's stderr, and ``cuts.json`` in its case
directory has every cut (offset, exit status, seconds, problem, stderr).  The
default matrix has these cases for the host's peers; naming the group
(``nbd-harness run disconnect``) takes every installed version.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from harness.address import Address
from harness.client import Client, ConnectOptions
from harness.fuzz.clients import (
    CLIENT_EXPORT,
    CutOutcome,
    Invoke,
    Ran,
    clean_session,
    cut_with,
    served_reference,
)
from harness.fuzz.cut import Cut
from harness.peers import Catalog, Endpoint, Provider
from harness.peers.actions import ClientProgram, client_program, perform_action
from harness.peers.export import pattern
from harness.process import PeerError
from harness.scenarios import Scenario
from harness.verdict import Verdict

from .cases import (
    DISCONNECT_GROUP,
    Case,
    Excluded,
    Expectation,
    PeerRef,
    reference_client,
    reference_server,
)
from .results import CaseResult, ResultStore

CUT_TIMEOUT = 10.0
"""Seconds one client run (or one dropped session) may take after a cut."""
MAX_HANGS = 3
"""Hangs after which a case stops cutting (each costs :data:`CUT_TIMEOUT`)."""
CLIENTS = ("nbdinfo", "nbdcopy", "qemu-img", "qemu-io", "nbdsh")
"""The real clients cut at every point (issue 12)."""
READ_ACTIONS = ("info", "read", "copy-out")
"""A client's read-like action: the first of these its table has."""
WRITE_AT, WRITE_LENGTH = 128 * 1024, 4096
"""Where the write action writes (a hole of :data:`CLIENT_EXPORT`)."""
SPEC = ("Terminating the transmission phase", "Option haggling")

SCENARIOS = {
    "disconnect-read": Scenario(
        "disconnect-read", "The reference server closes the connection after every message "
        "boundary and every byte of its first two messages while the client performs its "
        "read-like action (info, read or copy-out): it must end within the timeout, not by a "
        "signal, and report nothing a clean session does not.", SPEC, ("client",),
        group=DISCONNECT_GROUP),
    "disconnect-write": Scenario(
        "disconnect-write", "As disconnect-read, while the client writes 4 KiB: when it exits "
        "0 the server must hold the data (no write claimed that was not made).", SPEC,
        ("client",), group=DISCONNECT_GROUP),
    "disconnect-client-drops": Scenario(
        "disconnect-client-drops", "The reference client's connection is dropped at every "
        "message boundary of a session (write, read, flush); after each drop a second "
        "connection must be served (data written and read back).", SPEC, ("server",),
        group=DISCONNECT_GROUP),
}


def _action(program: ClientProgram, scenario: str) -> str | None:
    if scenario == "disconnect-write":
        return "write" if "write" in program.actions else None
    return next((a for a in READ_ACTIONS if a in program.actions), None)


def generated_selection(wanted: Sequence[str],
                        library: Sequence[Scenario]) -> tuple[list[str], bool]:
    """Split a run's scenario patterns: (those for the scenario library, whether the
    disconnect cases are wanted).  A pattern names them by the group, a generated
    scenario's name or id, or a glob; a glob that also matches library scenarios goes to
    both.  No pattern: the default matrix, which has them (for the host's peers)."""
    if not wanted:
        return [], True

    def matches(scenario: Scenario, pattern: str) -> bool:
        return pattern in (scenario.name, scenario.id, scenario.group) or \
            fnmatch.fnmatchcase(scenario.name, pattern) or fnmatch.fnmatchcase(scenario.id,
                                                                              pattern)

    for_library: list[str] = []
    chosen = False
    for text in wanted:
        generated = any(matches(s, text) for s in SCENARIOS.values())
        chosen = chosen or generated
        if not generated or any(matches(s, text) for s in library):
            for_library.append(text)
    return for_library, chosen


def expand_disconnect(servers: Sequence[PeerRef], clients: Sequence[PeerRef], *,
                      host_only: bool, timeout: float) -> tuple[list[Case], list[Excluded]]:
    """The disconnect cases of ``servers`` and ``clients`` (``host_only``: the host's peers
    only, the default matrix's share)."""
    cases: list[Case] = []
    excluded: list[Excluded] = []
    expectation = Expectation(Verdict.PASS, why="every cut ends cleanly")

    def wanted(peer: PeerRef) -> bool:
        return not peer.reference and peer.program != "external" and \
            (not host_only or peer.provider in ("", "host"))

    for client in clients:
        if client.role != "client" or client.program not in CLIENTS or not wanted(client):
            continue
        program = client_program(client.program)
        for name in ("disconnect-read", "disconnect-write"):
            if _action(program, name) is None:
                excluded.append(Excluded(name, client.spec, f"{client.program} has no "
                                         "such action in matrix/client-actions.toml"))
                continue
            cases.append(Case(SCENARIOS[name], SCENARIOS[name].id, "client",
                              reference_server(), client, expectation, timeout))
    if any(client.program == "reference-client" for client in clients):
        scenario = SCENARIOS["disconnect-client-drops"]
        for server in servers:
            if server.role == "server" and wanted(server):
                cases.append(Case(scenario, scenario.id, "server", server, reference_client(),
                                  expectation, timeout))
    return cases, excluded


# --- the client under test ------------------------------------------------------------------


def _provider(peer: PeerRef) -> Provider:
    catalog = Catalog.load()
    return catalog.provider(peer.provider or "host")


def _text(value: str | bytes) -> bytes:
    return value.encode() if isinstance(value, str) else value


def action_invoker(peer: PeerRef, action: str, workdir: Path, timeout: float) -> Invoke:
    """Runs ``peer``'s form of ``action`` against an address; stdout and the data it wrote
    to its ``{out}`` file are its output."""
    program, provider = client_program(peer.program), _provider(peer)
    data = pattern(WRITE_AT, WRITE_LENGTH, 7) if action == "write" else None

    def invoke(address: Address) -> Ran:
        started = time.monotonic()
        try:
            run = perform_action(program, action, Endpoint(address, CLIENT_EXPORT.name),
                                 provider, workdir=workdir, timeout=timeout, offset=WRITE_AT,
                                 length=WRITE_LENGTH, data=data, size=CLIENT_EXPORT.size)
        except PeerError as exc:
            if "timed out" not in str(exc):
                raise
            return Ran(None, b"", str(exc), time.monotonic() - started)
        written = run.data_out.read_bytes() if run.data_out.exists() else b""
        run.data_out.unlink(missing_ok=True)
        return Ran(run.completed.returncode, _text(run.completed.stdout) + written,
                   str(run.completed.stderr), time.monotonic() - started)

    return invoke


def _uri(address: Address, export: str) -> str:
    return Endpoint(address, export).uri()


def _reset(upstream: Address) -> None:
    with Client.connect(_uri(upstream, CLIENT_EXPORT.name),
                        options=ConnectOptions(meta_contexts=(), timeout=CUT_TIMEOUT)) as client:
        client.write(WRITE_AT, bytes(WRITE_LENGTH))


def _holds_write(upstream: Address) -> bool:
    with Client.connect(_uri(upstream, CLIENT_EXPORT.name),
                        options=ConnectOptions(meta_contexts=(), timeout=CUT_TIMEOUT)) as client:
        return client.read(WRITE_AT, WRITE_LENGTH) == pattern(WRITE_AT, WRITE_LENGTH, 7)


def client_cuts(peer: PeerRef, action: str, workdir: Path) -> list[CutOutcome]:
    """Cut ``peer`` performing ``action`` at every point; one outcome per cut."""
    workdir.mkdir(parents=True, exist_ok=True)
    invoke = action_invoker(peer, action, workdir, CUT_TIMEOUT)
    outcomes: list[CutOutcome] = []
    with served_reference() as upstream:
        clean = clean_session(invoke, upstream, timeout=CUT_TIMEOUT)
        for at in clean.points():
            if action == "write":
                _reset(upstream)
            outcome = cut_with(invoke, upstream, Cut(at), timeout=CUT_TIMEOUT,
                               clean=clean.output)
            if action == "write" and outcome.problem is None and outcome.returncode == 0 \
                    and not _holds_write(upstream):
                outcome = dataclasses.replace(outcome, problem="exit 0, yet the server does "
                                              "not hold the data written")
            outcomes.append(outcome)
            if sum(o.returncode is None for o in outcomes) >= MAX_HANGS:
                break
    return outcomes


# --- the server under test ------------------------------------------------------------------


def _session(uri: str) -> None:
    """The reference client's session whose stream is dropped: write, read, flush, DISC."""
    with Client.connect(uri, options=ConnectOptions(meta_contexts=(), timeout=CUT_TIMEOUT)) \
            as client:
        client.write(0, pattern(0, 4096, 11))
        client.read(0, 4096)
        client.flush()


def session_invoker(export: str) -> Invoke:
    """The reference client's :func:`_session` as an :data:`Invoke` (any error: exit 1)."""
    def invoke(address: Address) -> Ran:
        started = time.monotonic()
        try:
            _session(_uri(address, export))
        except Exception as exc:
            return Ran(1, b"", f"{type(exc).__name__}: {exc}", time.monotonic() - started)
        return Ran(0, b"", "", time.monotonic() - started)

    return invoke


def still_served(address: Address, export: str, seed: int) -> str | None:
    """None when a new connection writes a pattern and reads it back; else what failed."""
    data = pattern(8192, 4096, seed)
    try:
        with Client.connect(_uri(address, export),
                            options=ConnectOptions(meta_contexts=(), timeout=CUT_TIMEOUT)) \
                as client:
            client.write(8192, data)
            if client.read(8192, 4096) != data:
                return "a later connection read back other data than it wrote"
    except Exception as exc:
        return f"a later connection was not served: {type(exc).__name__}: {exc}"
    return None


def server_drops(address: Address, export: str) -> list[CutOutcome]:
    """Drop the reference client at every message boundary of its session against the server
    at ``address``; after each drop, a new connection must be served."""
    invoke = session_invoker(export)
    clean = clean_session(invoke, address, timeout=CUT_TIMEOUT, stream="client")
    outcomes = []
    for at in clean.points():
        cut = Cut(at, "close", "client")
        dropped = cut_with(invoke, address, cut, timeout=CUT_TIMEOUT)
        problem = still_served(address, export, at + 1)
        outcomes.append(dataclasses.replace(dropped, problem=problem))
    return outcomes


# --- the case -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Judged:
    verdict: Verdict
    detail: str


def _judge(outcomes: list[CutOutcome], role: str) -> _Judged:
    bad = [o for o in outcomes if o.problem]
    if not outcomes:
        return _Judged(Verdict.ERROR, "no cut point found")
    if not bad and role == "server":
        return _Judged(Verdict.PASS, f"{len(outcomes)} drops of the reference client: after "
                       "each, a new connection wrote and read back its data")
    if not bad:
        errors = sum(o.returncode not in (0, None) for o in outcomes)
        return _Judged(Verdict.PASS, f"{len(outcomes)} cuts: every one ended cleanly "
                       f"({errors} with an error, {len(outcomes) - errors} with exit 0 and "
                       "nothing claimed it did not get)")
    shown = "; ".join(f"{o.cut.describe()}: {o.problem} (exit {o.returncode}, stderr: "
                      f"{o.stderr.strip()[-200:]!r})" for o in bad[:5])
    more = f"; and {len(bad) - 5} more (cuts.json)" if len(bad) > 5 else ""
    return _Judged(Verdict.FAIL, f"{len(bad)} of {len(outcomes)} cuts went wrong: {shown}{more}")


def _outcomes(case: Case, case_dir: Path) -> list[CutOutcome]:
    if case.role == "client":
        action = _action(client_program(case.client.program), case.scenario.name)
        assert action is not None  # expand_disconnect made only cases with an action
        return client_cuts(case.client, action, case_dir / "client")
    from .runner import _serve, _Watchdog

    with _Watchdog(case.timeout) as watchdog, _serve(case, case_dir, watchdog) as (
            address, export, _tls):
        return server_drops(address, export)


def run_disconnect_case(case: Case, store: ResultStore, *, shard: str = "",
                        worker: str = "") -> CaseResult:
    """Run a disconnect case; never raises for what a peer does."""
    started, clock = time.time(), time.monotonic()
    case_dir = store.case_dir(case.id)
    try:
        outcomes = _outcomes(case, case_dir)
        judged = _judge(outcomes, case.role)
    except Exception as exc:
        outcomes, judged = [], _Judged(Verdict.ERROR, f"{type(exc).__name__}: {exc}")
    cuts = case_dir / "cuts.json"
    cuts.write_text(json.dumps([o.as_dict() for o in outcomes], indent=1) + "\n")
    return CaseResult(
        case_id=case.id, scenario=case.scenario.name, group=DISCONNECT_GROUP, role=case.role,
        server=case.server.spec, client=case.client.spec, verdict=judged.verdict.value,
        observed=judged.verdict.value, expected=Verdict.PASS.value, detail=judged.detail,
        description=case.scenario.description, spec=SPEC, expectation=case.expectation.why,
        duration=round(time.monotonic() - clock, 3), started=started,
        evidence={"directory": str(case_dir.relative_to(store.directory)),
                  "cuts": str(cuts.relative_to(store.directory))},
        versions={"server": case.server.spec, "client": case.client.spec}, shard=shard,
        worker=worker)


__all__ = ["CLIENTS", "DISCONNECT_GROUP", "SCENARIOS", "action_invoker", "client_cuts",
           "expand_disconnect", "generated_selection", "run_disconnect_case", "server_drops",
           "still_served"]
