"""Run a scenario's steps against a server under test, with the reference client.

One :class:`ServerRun` per run: it keeps the named connections, the model of
what the export must contain (:class:`~harness.scenarios.content.ContentModel`), the required
features found missing, and one :class:`~harness.scenarios.model.StepResult` per step.  Every
write is read back at the end (the ``verify`` phase), on a fresh connection
when none is left open.  Step handlers are in :mod:`._options` and
:mod:`._commands`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import threading
import time
import traceback
from collections.abc import Awaitable, Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from harness.client import (
    ConnectOptions,
    NbdClient,
    NbdClientError,
    NbdCommandError,
    NbdConnectionError,
    NbdTimeoutError,
    NegotiationError,
    TlsError,
    tls_context_for,
)
from harness.client.options import DEFAULT_TIMEOUT
from harness.client.uri import NbdUri
from harness.protocol import LocalProtocolError, Phase, RemoteProtocolError
from harness.protocol import constants as c
from harness.scenarios import spec_names
from harness.scenarios.content import verify_pieces
from harness.scenarios.expect import (
    Failed,
    FeatureMissing,
    HarnessLimit,
    check_data,
    option_error_matches,
)
from harness.scenarios.features import REFERENCE_CLIENT_LACKS, step_needs
from harness.scenarios.model import Scenario, ScenarioResult, Step, StepResult, verdict_of_steps
from harness.verdict import Verdict

from ._base import (
    ALWAYS_RUN,
    CONNECT_FEATURES,
    Conn,
    Skipped,
    negotiation_labels,
)
from ._commands import CommandSteps
from ._options import OptionSteps


class ServerRun(OptionSteps, CommandSteps):
    """The state of one server-role run; :meth:`run` gives the result."""

    async def run(self) -> ScenarioResult:
        scenario = self.scenario
        lacking_client = sorted(scenario.requires_client - self.client_features_wanted)
        harness_lacks = sorted((scenario.requires_client | scenario.requires_server)
                               & REFERENCE_CLIENT_LACKS
                               & self.client_features_wanted)
        if harness_lacks:
            return self._result(Verdict.ERROR, f"the reference client cannot use "
                                               f"{', '.join(harness_lacks)} (Python's ssl module "
                                               "has no TLS-PSK): this scenario cannot run "
                                               "against a server with it")
        if lacking_client:
            fallback = scenario.fallback
            assert fallback is not None  # the loader insists on one
            for feature in lacking_client:
                self.missing[feature] = "the client lacks it"
            if fallback.outcome == "unsupported":
                return self._result(Verdict.UNSUPPORTED, "the client lacks "
                                    f"{', '.join(lacking_client)}")
            self.fallback_mode = True
        try:
            stopped = await self._run_list(scenario.steps, "steps")
            if not stopped and self.fallback_mode and scenario.fallback is not None:
                stopped = await self._run_list(scenario.fallback.expect, "fallback")
            if not stopped:
                await self._verify_writes()
        finally:
            await self._close_all()
        return self._verdict()

    async def run_step(self, step: Step) -> StepResult:
        """Run one more step now, outside the scenario's list (the fuzzer drives a run this
        way, a step at a time, through the same handlers ``scenarios run`` uses)."""
        started = time.time()
        result = await self._step(len(self.results), step, "steps")
        result = dataclasses.replace(result, started=started, ended=time.time())
        self.results.append(result)
        return result

    async def finish(self) -> list[StepResult]:
        """Read back what the steps wrote, close every connection; the verify results."""
        before = len(self.results)
        try:
            await self._verify_writes()
        finally:
            await self._close_all()
        return self.results[before:]

    async def _run_list(self, steps: tuple[Step, ...], phase: str) -> bool:
        """Run steps in order; True when the run must stop (failure, error, unsupported)."""
        for index, step in enumerate(steps):
            started = time.time()
            result = await self._step(index, step, phase)
            result = dataclasses.replace(result, started=started, ended=time.time())
            self.results.append(result)
            if result.status in ("failed", "error", "unsupported"):
                return True
        return False

    def _handler(self, action: str) -> Callable[[int, Step], Awaitable[str]]:
        handler = getattr(self, f"_do_{action}", None)
        if handler is None:
            raise HarnessLimit(f"no handler for action {action!r}")
        return handler

    async def _step(self, index: int, step: Step, phase: str) -> StepResult:
        def result(status: str, detail: str = "", expected: Any = None,
                   got: Any = None) -> StepResult:
            return StepResult(index, step.action, step.line, status, detail,  # type: ignore[arg-type]
                              expected, got, phase)

        conn = self.conns.get(step.on)
        needs = step_needs(step.action, step.args, conn.contexts if conn else (),
                                     step.expect)
        lacking = sorted(needs & set(self.missing))
        # Connecting is never skipped: connecting without the missing feature is the fallback.
        if lacking and self.fallback_mode and step.action not in ALWAYS_RUN:
            return result("skipped", f"needs {', '.join(lacking)}, which is missing "
                                     f"({self.missing[lacking[0]]})")
        if self.fallback_mode and phase == "steps" and step.action == "expect_negotiated":
            return result("skipped", "a check of the feature that is missing; "
                                     "fallback.expect says what holds instead")
        try:
            async with asyncio.timeout(self.timeout * 6 + 10):
                detail = await self._handler(step.action)(index, step)
        except Failed as exc:
            return result("failed", exc.message, exc.expected, exc.got)
        except Skipped as exc:
            return result("skipped", str(exc))
        except FeatureMissing as exc:
            return self._on_missing(exc, result)
        except RemoteProtocolError as exc:
            return result("failed", f"the server broke the protocol: {exc}")
        except NbdCommandError as exc:
            return result("failed", f"unexpected error: {exc}", "ok", exc.errno_name)
        except (NbdConnectionError, NbdTimeoutError, NegotiationError) as exc:
            return result("failed", f"{type(exc).__name__}: {exc}")
        except TimeoutError:
            return result("failed", f"the step did not finish within {self.timeout * 6 + 10:g} s")
        except LocalProtocolError as exc:
            return result("error", f"the scenario asks the reference client to break a rule "
                                   f"outside a raw step: {exc}")
        except (HarnessLimit, NbdClientError) as exc:
            return result("error", str(exc))
        except OSError as exc:
            return result("error", f"environment: {exc}")
        except Exception as exc:  # a bug in the harness: never a pass
            tail = traceback.format_exc(limit=-3).strip().splitlines()[-3:]
            return result("error", f"harness error: {type(exc).__name__}: {exc} "
                                   f"({' / '.join(tail)})")
        return result("ok", detail)

    def _on_missing(self, exc: FeatureMissing,
                    result: Callable[..., StepResult]) -> StepResult:
        self.missing.setdefault(exc.feature, exc.evidence)
        fallback = self.scenario.fallback
        if fallback is None:
            return result("failed", f"{exc} (the scenario does not require it, so it is "
                                    "a failure)")
        if fallback.outcome == "unsupported":
            self.unsupported = exc
            return result("unsupported", str(exc))
        self.fallback_mode = True
        return result("ok", f"fallback: {exc}")

    def _verdict(self) -> ScenarioResult:
        return self._result(*verdict_of_steps(
            self.results,
            unsupported=str(self.unsupported) if self.unsupported is not None else None,
            fell_back_without=self.missing if self.fallback_mode else None))

    def _result(self, verdict: Verdict, detail: str) -> ScenarioResult:
        for conn in self.conns.values():
            self._remember(conn)
        evidence = {
            "uri": str(self.uri),
            "connections": {name: [record.as_dict() for record in records]
                            for name, records in self.negotiations.items()},
            "missing_features": dict(self.missing),
        }
        return ScenarioResult(verdict, list(self.results), detail, evidence,
                              self.scenario.id, "server")

    def _wants(self, feature: str, explicit: object) -> bool:
        wanted = True if explicit is None else bool(explicit)
        return wanted and feature in self.client_features

    def _connect_options(self, args: Mapping[str, Any]) -> tuple[ConnectOptions, dict[str, Any]]:
        export = self.scenario.export
        tls = args.get("tls") or ("require" if export.tls != "off" else "off")
        if tls != "off" and args.get("tls_type") == "psk":
            raise HarnessLimit("the reference client cannot do TLS-PSK (Python's ssl module)")
        tls_context = None
        if tls != "off":
            if self.tls_dir is not None:
                tls_context = tls_context_for(NbdUri("nbds", host="127.0.0.1",
                                                     tls_certificates=str(self.tls_dir)))
            else:
                tls_context = tls_context_for(self.uri)
        wanted = {key: self._wants(feature, args.get(key))
                  for key, feature in CONNECT_FEATURES.items()}
        contexts = tuple(args.get("contexts") or ())
        info = tuple(spec_names.value("Info", i) for i in args.get("info", [])) \
            if "info" in args else (c.Info.NAME, c.Info.DESCRIPTION)
        options = ConnectOptions(
            export_name=args.get("export", self.uri.export),
            structured_replies=wanted["structured_replies"],
            extended_headers=wanted["extended_headers"],
            meta_contexts=contexts,
            request_block_size=wanted["request_block_size"],
            info_requests=info,
            tls=tls,
            tls_context=tls_context,
            tls_hostname=self.uri.tls_hostname or ("localhost" if self.uri.is_unix else None),
            no_zeroes=wanted["no_zeroes"],
            fixed_newstyle=args.get("fixed_newstyle", True),
            use_go=wanted["use_go"],
            enter_transmission=args.get("enter_transmission", True),
            strict_remote=True,
            connect_timeout=self.timeout,
            timeout=self.timeout,
        )
        asked = {
            **wanted,
            "contexts": list(contexts),
            "tls": tls != "off",
            "init_state": export.spec.init_state,
            "oldstyle": export.handshake == "oldstyle",
        }
        return options, asked

    async def _open(self, name: str, options: ConnectOptions,
                    asked: dict[str, Any]) -> Conn:
        client = await NbdClient.connect(self.uri.address, options=options)
        conn = Conn(name, client, options, asked, list(options.meta_contexts))
        self.conns[name] = conn
        self._remember(conn)
        if self.first_connect is None and client.phase is Phase.TRANSMISSION:
            self.first_connect = (options, asked)
        return conn

    def _missing_from_failure(self, exc: BaseException, asked: Mapping[str, Any]) -> None:
        """A refused handshake that shows a required feature missing (said correctly)."""
        required = self.scenario.requires_server
        if isinstance(exc, TlsError) and asked.get("tls"):
            feature = "starttls-x509" if "starttls-x509" in required else None
            if feature and exc.option in (0, c.Opt.STARTTLS) and \
                    exc.reply_type in (0, c.Rep.ERR_POLICY, c.Rep.ERR_UNSUP):
                raise FeatureMissing(feature, str(exc))
        if isinstance(exc, NegotiationError) and exc.option == c.Opt.GO and \
                exc.reply_type == c.Rep.ERR_UNSUP and "opt-go" in required:
            raise FeatureMissing("opt-go", "NBD_OPT_GO answered NBD_REP_ERR_UNSUP")

    async def _do_connect(self, index: int, step: Step) -> str:
        if step.on in self.conns:
            await self._close(step.on)
        options, asked = self._connect_options(step.args)
        wanted = (step.expect or {}).get("error")
        try:
            conn = await self._open(step.on, options, asked)
        except (NegotiationError, NbdConnectionError) as exc:
            if not self.negotiations and str(exc).startswith("cannot connect to"):
                # Nothing listens where the runner said the server is: the environment broke.
                raise HarnessLimit(f"environment: {exc}") from None
            labels = negotiation_labels(exc)
            if wanted is not None:
                if option_error_matches(wanted, labels):
                    return f"refused as expected: {exc}"
                raise Failed(f"connect: expected {wanted}, got {sorted(labels)}: {exc}",
                             wanted, sorted(labels)) from None
            self._missing_from_failure(exc, asked)
            raise Failed(f"connect failed: {exc}", "a connection", sorted(labels)) from None
        if wanted is not None:
            await self._close(step.on)
            raise Failed(f"connect: expected the server to refuse ({wanted}), but it accepted",
                         wanted, "accepted")
        self._note_missing(conn)
        neg = conn.client.negotiation
        return f"{neg.style}, selected with {neg.selected_with or '(option phase)'}"

    async def _do_enter_transmission(self, index: int, step: Step) -> str:
        conn = self._conn(step)
        wanted = (step.expect or {}).get("error")
        try:
            await conn.client.enter_transmission(step.args.get("export"))
        except (NegotiationError, NbdConnectionError) as exc:
            labels = negotiation_labels(exc)
            if wanted is not None and option_error_matches(wanted, labels):
                return f"refused as expected: {exc}"
            if wanted is None:
                self._missing_from_failure(exc, conn.asked)
            raise Failed(f"enter_transmission: {exc}", wanted or "success",
                         sorted(labels)) from None
        if wanted is not None:
            raise Failed(f"enter_transmission: expected {wanted}, but the server accepted",
                         wanted, "accepted")
        if self.first_connect is None:
            self.first_connect = (conn.options, conn.asked)
        self._remember(conn)
        self._note_missing(conn)
        return f"selected with {conn.client.negotiation.selected_with}"

    async def _do_reconnect(self, index: int, step: Step) -> str:
        conn = self._conn(step)
        await self._close(step.on)
        new = await self._open(step.on, conn.options, conn.asked)
        self._note_missing(new)
        return "reconnected"

    async def _do_disconnect(self, index: int, step: Step) -> str:
        how = step.args.get("how", "polite")
        await self._close(step.on, polite=how == "polite")
        return how

    async def _close(self, name: str, *, polite: bool = True) -> None:
        conn = self.conns.pop(name, None)
        if conn is None:
            return
        self._remember(conn)
        with contextlib.suppress(Exception):
            if polite:
                await conn.client.disconnect()
            else:
                await conn.client.close()

    async def _close_all(self) -> None:
        for name in list(self.conns):
            await self._close(name)

    async def _verify_writes(self) -> None:
        """Read back every range the scenario wrote (head and tail of long ones)."""
        written = self.model.written()
        if not written:
            return
        line = self.scenario.steps[-1].line if self.scenario.steps else 0
        conn = next((conn for name, conn in sorted(self.conns.items(),
                                                    key=lambda kv: kv[0] != "main")
                     if conn.client.phase is Phase.TRANSMISSION and not conn.client.closed), None)
        opened = False
        try:
            if conn is None:
                if self.first_connect is None:
                    return
                options, asked = self.first_connect
                # The first connection may have entered transmission by a later step: the
                # read-back connection goes straight there.
                options = dataclasses.replace(options, enter_transmission=True)
                conn = await self._open("verify", options, asked)
                opened = True
            for offset, length in verify_pieces(written):
                data = await conn.client.read(offset, length)
                check_data(data, "model", offset, length, self.model, self.spec,
                           f"read-back of {offset}+{length}")
            self.results.append(StepResult(0, "verify_data", line, "ok",
                                           f"{len(written)} written range(s) read back",
                                           phase="verify"))
        except Failed as exc:
            self.results.append(StepResult(0, "verify_data", line, "failed", exc.message,
                                           exc.expected, exc.got, "verify"))
        except (NbdClientError, RemoteProtocolError, OSError) as exc:
            self.results.append(StepResult(0, "verify_data", line, "failed",
                                           f"read-back of the writes: {exc}", phase="verify"))
        finally:
            if opened:
                await self._close("verify")


async def run_server_async(scenario: Scenario, uri: str, *,
                           features_client: Iterable[str] | None = None,
                           timeout: float = DEFAULT_TIMEOUT,
                           tls_dir: Path | None = None) -> ScenarioResult:
    """The asyncio form of :func:`run_server_scenario`."""
    run = ServerRun(scenario, uri, features_client=features_client, timeout=timeout,
                    tls_dir=tls_dir)
    return await run.run()


def _overall_bound(scenario: Scenario, timeout: float) -> float:
    steps = len(scenario.steps) + len(scenario.fallback.expect if scenario.fallback else ())
    return timeout * (steps + 4) * 2 + 30


def run_server_scenario(
    scenario: Scenario,
    uri: str,
    *,
    features_client: Iterable[str] | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    tls_dir: Path | None = None,
) -> ScenarioResult:
    """Run ``scenario.steps`` with the reference client against the server at ``uri``.

    ``uri`` names the server and the export (``nbd://127.0.0.1:PORT/disk``,
    ``nbd+unix:///disk?socket=...``); ``tls_dir`` is the PKI directory (from
    :func:`harness.tls.make_test_pki`) when the export uses TLS (or give
    ``tls-certificates=`` in the URI).  ``features_client`` are the feature ids
    the client side has (None: all the reference client can do); a scenario
    requiring a client feature outside them is unsupported, or runs as a
    fallback.  ``timeout`` bounds each network wait.
    """
    if "server" not in scenario.roles:
        return ScenarioResult(Verdict.ERROR, [], f"{scenario.id} has no server role",
                              scenario=scenario.id, role="server")
    coroutine = run_server_async(scenario, uri, features_client=features_client,
                                 timeout=timeout, tls_dir=tls_dir)
    bound = _overall_bound(scenario, timeout)

    async def bounded() -> ScenarioResult:
        try:
            async with asyncio.timeout(bound):
                return await coroutine
        except TimeoutError:
            return ScenarioResult(Verdict.ERROR, [],
                                  f"the scenario did not finish within {bound:g} s",
                                  scenario=scenario.id, role="server")

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(bounded())
    # Called from inside an event loop (an async test or plugin): run on a thread of its own.
    box: list[ScenarioResult | BaseException] = []

    def target() -> None:
        try:
            box.append(asyncio.run(bounded()))
        except BaseException as exc:  # handed to the caller below
            box.append(exc)

    thread = threading.Thread(target=target, name=f"scenario-{scenario.name}", daemon=True)
    thread.start()
    thread.join(bound + 30)
    if not box:
        return ScenarioResult(Verdict.ERROR, [], "the scenario thread did not finish",
                              scenario=scenario.id, role="server")
    if isinstance(box[0], BaseException):
        raise box[0]
    return box[0]


__all__ = ["ServerRun", "run_server_async", "run_server_scenario"]
