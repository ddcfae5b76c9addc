"""Run a scenario's client steps: a real client program against the reference server.

The reference server serves the scenario's export in the profile the case
needs; each ``client_action`` runs the program's command line from
``matrix/client-actions.toml``; expectations are checked on what the program
produced (data, extents, size, export names), on what the server recorded
of each connection (:class:`~reference_server.server.SessionRecord`: options,
negotiated replies and contexts, commands, rules the client broke) and on
the data the server ends up with.  A client that breaks a protocol rule
fails, whatever else it did.

Two seams let a caller (the matrix runner) change where the program runs and
what it talks to, without changing any check: a :data:`ListenWrapper` puts
something in front of the reference server (a recording proxy) and names the
address the program is given instead of the server's; a
:class:`~harness.peers.Provider` runs each action's command from its suite
(``bwrap`` into a root filesystem, ``docker run``) instead of on this machine.
The server's session records and storage, which the checks read, stay the
server's own.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import subprocess
import tempfile
import time
import traceback
from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.address import Address
from harness.client.options import DEFAULT_TIMEOUT
from harness.peers import Catalog, Endpoint
from harness.peers.actions import (
    ActionOutput,
    ClientProgram,
    default_client_actions,
    perform_action,
)
from harness.peers.export import ExportSpec, pattern
from harness.process import MissingProgramError, PeerError
from harness.protocol import constants as c
from harness.scenarios import spec_names
from harness.scenarios.content import ContentModel, verify_pieces
from harness.scenarios.expect import (
    Failed,
    HarnessLimit,
    check_data,
    check_extents,
)
from harness.scenarios.features import server_has, step_needs
from harness.scenarios.model import (
    Scenario,
    ScenarioResult,
    Step,
    StepResult,
    describe_missing,
    verdict_of_steps,
)
from harness.tls import make_test_pki
from harness.verdict import Verdict
from reference_server.features import FULL, ServerFeatures

from .actions import lacking_actions
from .reference import ServedExport, serve_reference

if TYPE_CHECKING:
    from harness.peers import Provider

ListenWrapper = Callable[[Address], AbstractContextManager[Address]]
"""Puts something in front of the reference server: called with the server's address once
it listens, it returns a context whose value is the address the client program is given
(a recording proxy's); the context is left before the server stops."""

SESSION_SETTLE = 0.2
"""How long the server's session list must stay unchanged after a client exits."""
SESSION_WAIT = 10.0


@functools.cache
def _host_provider() -> Provider:
    """This machine's programs (Debian's first on PATH): where actions run by default."""
    return Catalog.load(kinds=("host",)).provider("host")


def _option_names(record: Any) -> list[str]:
    return [entry.split(" ->")[0].strip() for entry in record.options]


class ClientRun:
    """The state of one client-role run; :meth:`run` gives the result.

    ``listen_wrapper`` and ``provider`` are the seams of
    :func:`~harness.scenarios.run_client_scenario` (see there).
    """

    def __init__(self, scenario: Scenario, program: ClientProgram,
                 server_features: ServerFeatures, workdir: Path, *,
                 features_client: Iterable[str] | None, timeout: float,
                 listen_wrapper: ListenWrapper | None = None,
                 provider: Provider | None = None) -> None:
        self.scenario = scenario
        self.program = program
        self.server_features = server_features
        self.workdir = Path(workdir)
        self.features_client = None if features_client is None else set(features_client)
        self.timeout = timeout
        self.listen_wrapper = listen_wrapper
        self.provider = provider
        self.spec: ExportSpec = scenario.export.export_spec()
        self.model = ContentModel.of(self.spec)
        self.missing: dict[str, str] = {}
        self.results: list[StepResult] = []
        self.runs: list[dict[str, Any]] = []
        self.served: ServedExport | None = None
        self.client_address: Address | None = None
        """Where the program connects: the server's address, or what the wrapper put there."""
        self.pki: Path | None = None
        self.fallback_mode = False
        self.unsupported_mode = False

    # --- the run ---------------------------------------------------------------------------

    def run(self) -> ScenarioResult:
        scenario = self.scenario
        for feature in sorted(scenario.requires_server):
            if not server_has(self.server_features, feature):
                self.missing[feature] = f"the server profile {self.server_features.name} " \
                                        "lacks it"
        if self.features_client is not None:
            for feature in sorted(scenario.requires_client - self.features_client):
                self.missing[feature] = f"{self.program.name} lacks it"
        if self.missing:
            assert scenario.fallback is not None  # the loader insists on one
            if scenario.fallback.outcome == "unsupported":
                self.unsupported_mode = True
            else:
                self.fallback_mode = True
        lacking = self._lacking_actions()
        if lacking:
            return self._result(Verdict.UNSUPPORTED, f"{self.program.name} cannot perform "
                                                     f"{', '.join(lacking)} (no form in "
                                                     "matrix/client-actions.toml)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        needs_tls = scenario.export.tls != "off" or any(
            step.args.get("tls") == "require" for step in self._all_client_steps())
        try:
            if needs_tls:
                self.pki = make_test_pki(self.workdir / "pki").directory
            with contextlib.ExitStack() as stack:
                served = stack.enter_context(serve_reference(
                    scenario.export, self.server_features, self.workdir, tls_dir=self.pki))
                self.served = served
                self.client_address = served.address if self.listen_wrapper is None \
                    else stack.enter_context(self.listen_wrapper(served.address))
                stopped = self._run_list(scenario.client_steps, "client_steps")
                if not stopped and self.fallback_mode and scenario.fallback is not None:
                    stopped = self._run_list(scenario.fallback.client_expect, "fallback")
                if not stopped and not self.unsupported_mode:
                    self._verify_server_data()
                self._check_violations_at_end()
        except (OSError, PeerError) as exc:
            self.results.append(StepResult(0, "serve", 0, "error", f"environment: {exc}",
                                           phase="setup"))
        except Exception as exc:  # the reference server would not start: never a pass
            self.results.append(StepResult(0, "serve", 0, "error",
                                           f"harness error: {type(exc).__name__}: {exc}",
                                           phase="setup"))
        return self._verdict()

    def _all_client_steps(self) -> list[Step]:
        fallback = self.scenario.fallback
        return [*self.scenario.client_steps, *(fallback.client_expect if fallback else ())]

    def _lacking_actions(self) -> list[str]:
        return sorted(lacking_actions(self.scenario, self.program))

    def _run_list(self, steps: tuple[Step, ...], phase: str) -> bool:
        for index, step in enumerate(steps):
            started = time.time()
            result = self._step(index, step, phase)
            result = dataclasses.replace(result, started=started, ended=time.time())
            self.results.append(result)
            if result.status in ("failed", "error"):
                return True
        return False

    def _step(self, index: int, step: Step, phase: str) -> StepResult:
        def result(status: str, detail: str = "", expected: Any = None,
                   got: Any = None) -> StepResult:
            return StepResult(index, step.action, step.line, status, detail,  # type: ignore[arg-type]
                              expected, got, phase)

        lacking = sorted(step_needs(step.action, step.args) & set(self.missing))
        lenient = self.unsupported_mode or (self.fallback_mode and phase != "fallback")
        if lacking and self.fallback_mode:
            return result("skipped", f"needs {', '.join(lacking)}, which is missing")
        if lenient and step.action in ("expect_sessions", "expect_server_data"):
            return result("skipped", "a check of the feature that is missing")
        try:
            if step.action == "client_action":
                detail = self._client_action(index, step, check=not self.unsupported_mode)
            elif step.action == "expect_sessions":
                detail = self._expect_sessions(step)
            elif step.action == "expect_server_data":
                detail = self._expect_server_data(step)
            else:
                raise HarnessLimit(f"no handler for client step {step.action!r}")
        except Failed as exc:
            return result("failed", exc.message, exc.expected, exc.got)
        except MissingProgramError as exc:
            return result("error", str(exc))
        except (HarnessLimit, PeerError, OSError) as exc:
            return result("error", str(exc))
        except Exception as exc:  # a bug in the harness: never a pass
            tail = traceback.format_exc(limit=-3).strip().splitlines()[-3:]
            return result("error", f"harness error: {type(exc).__name__}: {exc} "
                                   f"({' / '.join(tail)})")
        return result("ok", detail)

    # --- actions ----------------------------------------------------------------------------

    def _endpoint(self, step: Step, tls: bool) -> Endpoint:
        """The step's export at the address the program is given (with the PKI for TLS)."""
        assert self.client_address is not None
        if tls and self.pki is None:
            raise HarnessLimit("a TLS action, but no PKI was made for this run")
        export = step.args.get("export", self.spec.name)
        if self.scenario.export.handshake == "oldstyle":
            export = ""  # oldstyle has no export names: clients must not ask for one
        return Endpoint(self.client_address, export, self.pki if tls else None)

    def _client_action(self, index: int, step: Step, *, check: bool) -> str:
        served = self.served
        assert served is not None
        args = step.args
        action = args["action"]
        expect = step.expect or {}
        tls = (args.get("tls") or ("require" if self.scenario.export.tls != "off"
                                   else "off")) == "require"
        label = f"{len(self.runs) + 1:02d}-{action}"
        seed = args.get("seed", 100 + index)
        offset, length = args.get("offset", 0), args.get("length", 0)
        data = None  # what the program writes: the pattern the content model expects
        if action == "write":
            data = pattern(offset, length, seed)
        elif action == "copy-in":
            data = pattern(0, self.spec.size, seed)
        before = len(served.records)
        started = time.monotonic()
        try:
            performed = perform_action(
                self.program, action, self._endpoint(step, tls),
                self.provider or _host_provider(), workdir=self.workdir,
                timeout=self.timeout * 4, log_path=self.workdir / f"{label}.log",
                offset=offset, length=length, context=args.get("context"),
                size=self.spec.size, data=data, label=label)
        except PeerError as exc:
            if "timed out" in str(exc):
                raise Failed(f"{self.program.name} {action}: {exc}") from None
            raise
        completed = performed.completed
        sessions = self._sessions_since(before)
        run = {
            "action": action, "argv": performed.argv, **self._where(completed),
            "returncode": completed.returncode,
            "seconds": round(time.monotonic() - started, 3),
            "stdout": str(completed.stdout)[-2000:], "stderr": str(completed.stderr)[-2000:],
            "sessions": [record.summary() for record in sessions],
        }
        self.runs.append(run)
        violations = [v for record in sessions for v in record.client_violations]
        if violations:
            raise Failed(f"{self.program.name} broke the protocol: {violations[0]}",
                         "no violations", violations)
        failed = performed.failed
        what = f"{self.program.name} {action}"
        if not check:
            return f"exit {completed.returncode} ({len(sessions)} connection(s))"
        if expect.get("fails"):
            if not failed:
                raise Failed(f"{what}: expected the program to fail, it exited 0",
                             "non-zero exit", 0)
            return f"failed as expected (exit {completed.returncode})"
        if failed:
            raise Failed(f"{what}: {performed.failure()}", 0, completed.returncode)
        try:
            output = performed.output()
        except (ValueError, KeyError, TypeError) as exc:
            raise Failed(f"{what}: cannot read its output ({performed.output_format}): "
                         f"{exc}") from None
        self._apply(action, offset, length, seed)
        self._check_output(step, action, output, offset, length, what)
        return f"exit 0 ({len(sessions)} connection(s))"

    def _where(self, completed: subprocess.CompletedProcess) -> dict[str, Any]:
        """Evidence of where an action ran: the provider and the whole command, if wrapped."""
        if self.provider is None:
            return {}
        return {"provider": self.provider.name, "command": [str(w) for w in completed.args]}

    def _apply(self, action: str, offset: int, length: int, seed: int) -> None:
        if action == "write":
            self.model.write(offset, length, seed)
        elif action == "copy-in":
            self.model.write(0, self.spec.size, seed)
        elif action in ("zero", "fast-zero"):
            self.model.zero(offset, length)
        elif action == "trim":
            self.model.forget(offset, length)

    def _check_output(self, step: Step, action: str, output: ActionOutput, offset: int,
                      length: int, what: str) -> None:
        expect = step.expect or {}
        size = self.spec.size
        if action == "read":
            check_data(output.data or b"", expect.get("data"), offset, length, self.model,
                       self.spec, what)
        elif action == "copy-out":
            check_data(output.data or b"", expect.get("data"), 0, size, self.model, self.spec,
                       what)
        elif action == "map":
            context = step.args.get("context", c.BASE_ALLOCATION)
            extents = [e for e in (output.extents or []) if e[1] > 0]
            wanted = expect.get("extents")
            match = expect.get("match", "exact" if wanted is not None else "safe")
            if (match == "exact" and context == c.BASE_ALLOCATION
                    and "flat-image-no-hole-bit" in self.server_features.quirks
                    and self.spec.image_format == "raw"):
                # The profile reports a raw image's holes without NBD_STATE_HOLE, as qemu
                # 2.12-5.x did: the client can only be judged on the rest.
                match = "hole-optional"
            check_extents(extents, wanted, match, context, 0, size, self.model, self.spec,
                          what)
        if "size" in expect:
            wanted_size = size if expect["size"] == "export" else expect["size"]
            if output.size != wanted_size:
                raise Failed(f"{what}: export size", wanted_size, output.size)
        for name in expect.get("exports_include", []):
            if name not in (output.exports or []):
                raise Failed(f"{what}: {name!r} not listed", name, output.exports)

    def _sessions_since(self, before: int) -> list[Any]:
        """The server's records of the connections made since ``before``, once settled."""
        served = self.served
        assert served is not None
        deadline = time.monotonic() + SESSION_WAIT
        count = len(served.records)
        stable_since = time.monotonic()
        while time.monotonic() < deadline:
            time.sleep(0.02)
            now = len(served.records)
            if now != count:
                count, stable_since = now, time.monotonic()
            elif count > before and time.monotonic() - stable_since >= SESSION_SETTLE:
                break
            elif count == before and time.monotonic() - stable_since >= 1.0:
                break  # the program made no connection (or it is still open: see below)
        return list(served.records[before:])

    # --- checks on the server's side ---------------------------------------------------------

    def _expect_sessions(self, step: Step) -> str:
        served = self.served
        assert served is not None
        records = list(served.records)
        args = step.args
        problems: list[str] = []
        if "count_min" in args and len(records) < args["count_min"]:
            problems.append(f"{len(records)} connection(s), expected at least {args['count_min']}")
        if "count_max" in args and len(records) > args["count_max"]:
            problems.append(f"{len(records)} connection(s), expected at most {args['count_max']}")
        which = args.get("which", "all")
        chosen = {"all": records, "any": records, "first": records[:1],
                  "last": records[-1:]}[which]
        if not chosen:
            raise Failed("no connection reached the server", "a connection", 0)
        verdicts = [self._session_problems(record, args) for record in chosen]
        if which == "any":
            if all(verdicts):
                problems.append("no connection matches: " + "; ".join(verdicts[0]))
        else:
            for number, found in enumerate(verdicts, start=1):
                problems += [f"connection {number}: {problem}" for problem in found]
        if problems:
            raise Failed("sessions: " + "; ".join(problems), None,
                         [record.summary() for record in chosen])
        return f"{len(chosen)} connection(s) as expected"

    @staticmethod
    def _session_problems(record: Any, args: Mapping[str, Any]) -> list[str]:
        summary = record.summary()
        problems = []
        simple = {
            "style": summary["style"],
            "tls": summary["tls"],
            "structured_replies": summary["structured_replies"] or summary["extended_headers"],
            "extended_headers": summary["extended_headers"],
            "no_zeroes": summary["no_zeroes"],
            "block_size_requested": summary["block_size_requested"],
        }
        for key, got in simple.items():
            if key in args and args[key] != got:
                problems.append(f"{key}: expected {args[key]}, got {got}")
        options = _option_names(record)
        for name in args.get("options_include", []):
            wanted = c.name_of(c.Opt, spec_names.value("Opt", name))
            if wanted not in options:
                problems.append(f"{wanted} not sent (sent: {options})")
        for name in args.get("options_exclude", []):
            wanted = c.name_of(c.Opt, spec_names.value("Opt", name))
            if wanted in options:
                problems.append(f"{wanted} sent")
        contexts = summary["meta_contexts"]
        for name in args.get("contexts_include", []):
            if name not in contexts:
                problems.append(f"context {name} not selected (selected: {contexts})")
        for name in args.get("contexts_exclude", []):
            if name in contexts:
                problems.append(f"context {name} selected")
        commands = summary["commands"]
        for name in args.get("commands_include", []):
            wanted = c.name_of(c.Cmd, spec_names.value("Cmd", name))
            if not commands.get(wanted):
                problems.append(f"{wanted} not used (commands: {commands})")
        for name in args.get("commands_exclude", []):
            wanted = c.name_of(c.Cmd, spec_names.value("Cmd", name))
            if commands.get(wanted):
                problems.append(f"{wanted} used")
        return problems

    def _expect_server_data(self, step: Step) -> str:
        served = self.served
        assert served is not None
        offset, length = step.args["offset"], step.args["length"]
        data = served.backend().read(offset, length)
        check_data(data, step.args.get("data"), offset, length, self.model, self.spec,
                   f"server data {offset}+{length}")
        return "as expected"

    def _verify_server_data(self) -> None:
        served = self.served
        assert served is not None
        written = self.model.written()
        if not written:
            return
        line = self.scenario.client_steps[-1].line if self.scenario.client_steps else 0
        try:
            for offset, length in verify_pieces(written):
                data = served.backend().read(offset, length)
                check_data(data, "model", offset, length, self.model, self.spec,
                           f"server data {offset}+{length}")
        except Failed as exc:
            self.results.append(StepResult(0, "verify_data", line, "failed", exc.message,
                                           exc.expected, exc.got, "verify"))
            return
        self.results.append(StepResult(0, "verify_data", line, "ok",
                                       f"{len(written)} written range(s) on the server",
                                       phase="verify"))

    def _check_violations_at_end(self) -> None:
        served = self.served
        assert served is not None
        violations = [v for record in served.records for v in record.client_violations]
        seen = {v for run in self.runs for s in run["sessions"] for v in s["client_violations"]}
        late = [v for v in violations if v not in seen]
        if late:
            self.results.append(StepResult(0, "client_violations", 0, "failed",
                                           f"the client broke the protocol: {late[0]}",
                                           "no violations", late, "verify"))

    # --- verdict --------------------------------------------------------------------------------

    def _verdict(self) -> ScenarioResult:
        missing = describe_missing(self.missing)
        return self._result(*verdict_of_steps(
            self.results, unsupported=missing if self.unsupported_mode else None,
            fell_back_without=self.missing if self.fallback_mode else None))

    def _result(self, verdict: Verdict, detail: str) -> ScenarioResult:
        served = self.served
        evidence = {
            "program": self.program.name,
            "server_profile": self.server_features.name,
            "missing_features": dict(self.missing),
            "runs": self.runs,
            "sessions": [record.summary() for record in served.records] if served else [],
        }
        return ScenarioResult(verdict, list(self.results), detail, evidence,
                              self.scenario.id, "client")


def run_client_scenario(
    scenario: Scenario,
    client_program: str | ClientProgram,
    server_features: ServerFeatures = FULL,
    workdir: Path | None = None,
    *,
    features_client: Iterable[str] | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    listen_wrapper: ListenWrapper | None = None,
    provider: Provider | None = None,
) -> ScenarioResult:
    """Run ``scenario.client_steps`` with ``client_program`` against the reference server.

    ``client_program`` is a program of ``matrix/client-actions.toml`` (``nbdinfo``,
    ``qemu-img``...) or a :class:`ClientProgram`; ``server_features`` the
    reference server's profile (``reference_server.profiles.profile("qemu-2.10")``).
    ``workdir`` receives the data files, logs and PKI (a temporary directory
    when None).  ``features_client``, when given, are the program's feature ids
    (from ``matrix/peers``): requiring one outside them makes the case
    unsupported or a fallback, as the scenario says.

    ``listen_wrapper`` (None: the program talks to the server directly) is
    called with the server's address once it listens and returns a context
    manager whose value is the address the program is given instead (every
    URI, host, port and socket in its command line names it); the context is
    left before the server stops.  To record the conversation::

        @contextlib.contextmanager
        def recorded(upstream: Address) -> Iterator[Address]:
            with ProxyThread(LOOPBACK, upstream, capture) as proxy:
                yield proxy.address

    ``provider`` (a :class:`harness.peers.Provider`; None: this machine's
    programs, Debian's first on PATH) runs each action's command from its suite,
    with ``workdir`` (data, PKI) and a unix socket's directory visible inside.
    The session records and data the checks read are the server's either way.
    """
    if "client" not in scenario.roles:
        return ScenarioResult(Verdict.ERROR, [], f"{scenario.id} has no client role",
                              scenario=scenario.id, role="client")
    if isinstance(client_program, str):
        programs = default_client_actions()
        program = programs.get(client_program)
        if program is None:
            return ScenarioResult(
                Verdict.ERROR, [], f"unknown client program {client_program!r} (known: "
                             f"{', '.join(sorted(programs))})", scenario=scenario.id,
                role="client")
    else:
        program = client_program
    with contextlib.ExitStack() as stack:
        if workdir is None:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(
                prefix="nbdh-client-")))
        return ClientRun(scenario, program, server_features, Path(workdir),
                         features_client=features_client, timeout=timeout,
                         listen_wrapper=listen_wrapper, provider=provider).run()


__all__ = ["ClientRun", "ListenWrapper", "run_client_scenario"]
