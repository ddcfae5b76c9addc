"""The stateful fuzzer: a hypothesis ``RuleBasedStateMachine`` whose rules are scenario steps.

Each example is one :class:`ExampleRun`: an event loop, a recording proxy in front
of the server (so the example is a pcapng), and a
:class:`~harness.server_role.ServerRun` that plays each drawn step at once through
the handlers ``scenarios run`` uses (outcomes checked, reads compared with the
model of the export).  A step that fails, a server that died, or a MUST-level
finding of the conformance rules over the example's capture raises
:class:`ExampleFailed`, which hypothesis shrinks; the steps of the last failing
example (the shrunk one, replayed last by hypothesis) are kept on the context.
"""

from __future__ import annotations

import asyncio
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, precondition, rule

from harness.address import Address
from harness.capture.proxy import RecordingProxy
from harness.client.uri import parse_uri
from harness.conformance import check_capture
from harness.conformance.findings import Finding
from harness.dissect import CaptureError
from harness.protocol import Phase
from harness.scenarios.model import Scenario, Step, StepResult
from harness.server_role import ServerRun

from . import strategies as s
from .target import Crash, FuzzTarget

MAIN = "main"
FIRST_WRITE_SEED = 7
"""Seed of the write that gives the data window known contents at the start of an example."""


class ExampleFailed(AssertionError):
    """One example found a problem: ``kind`` is crash, hang, step, finding or corruption."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail


@dataclass
class Failure:
    """What the last failing example left: its steps, its capture, why it failed."""

    kind: str
    detail: str
    steps: list[Step]
    pcapng: Path | None
    findings: list[Finding] = field(default_factory=list)
    crash: Crash | None = None


@dataclass
class FuzzContext:
    """What every example of a campaign shares."""

    target: FuzzTarget
    profile: s.Target
    scenario: Scenario
    scratch: Path
    timeout: float
    examples: int = 0
    steps: int = 0
    last_failure: Failure | None = None
    on_example: Any = None
    """Called after each example (the progress line)."""


def _hang(result: StepResult) -> bool:
    text = result.detail.lower()
    return "did not finish" in text or "timed out" in text or "timeout" in text


class ExampleRun:
    """One example: its loop, its recording proxy and its step runner."""

    def __init__(self, ctx: FuzzContext) -> None:
        self.ctx = ctx
        if ctx.target.crashed() is not None:  # shrinking replays a crash: start it again
            ctx.target.restart()
        self.loop = asyncio.new_event_loop()
        self.pcapng = ctx.scratch / f"example-{ctx.examples}.pcapng"
        uri = parse_uri(ctx.target.uri)
        upstream = Address.unix(uri.socket) if uri.is_unix else \
            Address.tcp(uri.host or "127.0.0.1", uri.effective_port)
        self.proxy = RecordingProxy(Address.tcp("127.0.0.1", 0), upstream, self.pcapng,
                                    connect_timeout=ctx.timeout)
        self.loop.run_until_complete(self.proxy.start())
        address = self.proxy.address
        self.run = ServerRun(ctx.scenario, f"nbd://{address.host}:{address.port}/{uri.export}",
                             features_client=None, timeout=ctx.timeout, tls_dir=None)
        self.steps: list[Step] = []
        self.closed = False
        self.failed = False
        self._kept: Path | None = None

    def play(self, action: str, args: dict[str, Any], expect: dict[str, Any] | None) -> None:
        """Run one step now; raise :class:`ExampleFailed` when it shows a problem."""
        step = Step(action, args, expect)
        self.steps.append(step)
        self.ctx.steps += 1
        result = self.loop.run_until_complete(self.run.run_step(step))
        crash = self.ctx.target.crashed()
        if crash is not None:
            raise self.fail("crash", crash.describe(), crash=crash)
        if result.status == "failed":
            raise self.fail("hang" if _hang(result) else "step", f"{action}: {result.detail}")
        if result.status == "error":
            raise self.fail("harness-error", f"{action}: {result.detail}")

    def phase(self) -> Phase | None:
        conn = self.run.conns.get(MAIN)
        if conn is None or conn.client.closed:
            return None
        return conn.client.phase

    def contexts(self) -> bool:
        """True when the main connection selected a metadata context."""
        conn = self.run.conns.get(MAIN)
        return bool(conn and conn.client.contexts)

    def extended(self) -> bool:
        conn = self.run.conns.get(MAIN)
        return bool(conn and conn.client.connection.negotiated.extended_headers)

    def finish(self) -> None:
        """Read back the writes, close, judge the capture; raise on a problem."""
        if self.closed:
            return
        self.closed = True
        try:
            verify = self.loop.run_until_complete(self.run.finish())
        finally:
            self.loop.run_until_complete(self.proxy.stop())
            self.loop.close()
        crash = self.ctx.target.crashed()
        if crash is not None:
            raise self.fail("crash", crash.describe(), crash=crash)
        for result in verify:
            if result.status != "ok":
                raise self.fail("corruption", result.detail)
        try:
            findings = [f for f in check_capture(self.pcapng)
                        if f.mandatory and f.role == "server"]
        except CaptureError as exc:
            raise self.fail("harness-error", f"the capture cannot be decoded: {exc}") from None
        if findings:
            raise self.fail("finding", findings[0].describe(), findings=findings)
        self.pcapng.unlink(missing_ok=True)

    def abandon(self) -> None:
        """Clean up after a failure raised by a step (the capture is kept on the failure)."""
        if self.closed:
            return
        self.closed = True
        try:
            self.loop.run_until_complete(self.run.finish())
        except Exception:  # the example already failed; closing is best effort
            pass
        finally:
            self.loop.run_until_complete(self.proxy.stop())
            self.loop.close()

    def fail(self, kind: str, detail: str, *, findings: list[Finding] | None = None,
             crash: Crash | None = None) -> ExampleFailed:
        self.failed = True
        self._kept = self.ctx.scratch / "last-failure.pcapng"
        self.ctx.last_failure = Failure(kind, detail, list(self.steps), self._kept,
                                        findings or [], crash)
        return ExampleFailed(kind, detail)

    def keep_capture(self) -> None:
        """Move a failing example's capture where its :class:`Failure` says it is."""
        if self._kept is not None and self.pcapng.exists():
            shutil.move(self.pcapng, self._kept)


def machine_for(ctx: FuzzContext) -> type[RuleBasedStateMachine]:
    """The state machine class of a campaign (its strategies follow what the server has)."""
    target = ctx.profile
    writable = not target.read_only and target.window > 0

    class ProtocolMachine(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.example = ExampleRun(ctx)
            self.seed = 200
            self.window_known = not writable

        def _play(self, step: s.StepDict) -> None:
            self.example.play(*step)

        def _in(self, phase: Phase) -> bool:
            return self.example.phase() is phase

        def _after_connect(self) -> None:
            if self._in(Phase.TRANSMISSION) and not self.window_known:
                self._play(("write", {"offset": 0, "length": target.window,
                                      "seed": FIRST_WRITE_SEED}, None))
                self.window_known = True

        @initialize(step=s.connect_step(target))
        def connect(self, step: s.StepDict) -> None:
            self._play(step)
            self._after_connect()

        @precondition(lambda self: self.example.phase() is None)
        @rule(step=s.connect_step(target))
        def reconnect(self, step: s.StepDict) -> None:
            self._play(step)
            self._after_connect()

        @precondition(lambda self: self._in(Phase.OPTIONS))
        @rule(step=s.option_step(target))
        def option(self, step: s.StepDict) -> None:
            self._play(step)
            self._after_connect()

        @precondition(lambda self: self._in(Phase.OPTIONS))
        @rule()
        def enter_transmission(self) -> None:
            self._play(("enter_transmission", {}, None))
            self._after_connect()

        @precondition(lambda self: self._in(Phase.TRANSMISSION) and self.window_known)
        @rule(data=st.data())
        def command(self, data: st.DataObject) -> None:
            self.seed += 1
            self._play(data.draw(s.command_step(target, self.seed, self.example.contexts())))

        @precondition(lambda self: self._in(Phase.TRANSMISSION) and self.window_known)
        @rule(step=s.edge_request_step(target))
        def edge_request(self, step: s.StepDict) -> None:
            self._play(step)

        @precondition(lambda self: self._in(Phase.TRANSMISSION) and self.window_known)
        @rule(data=st.data(), mutated=st.booleans())
        def raw_then_drop(self, data: st.DataObject, mutated: bool) -> None:
            extended = self.example.extended()
            strategy = s.mutated_request_step if mutated else s.burst_step
            self._play(data.draw(strategy(target, extended)))
            self._play(("disconnect", {"how": "abrupt"}, None))

        @precondition(lambda self: self.example.phase() is not None)
        @rule(how=st.sampled_from(["polite", "abrupt"]))
        def disconnect(self, how: str) -> None:
            self._play(("disconnect", {"how": how}, None))

        def teardown(self) -> None:
            try:
                if self.example.failed:
                    self.example.abandon()
                else:
                    self.example.finish()
            finally:
                self.example.keep_capture()
                ctx.examples += 1
                if ctx.on_example is not None:
                    ctx.on_example(ctx)

    ProtocolMachine.__name__ = "ProtocolMachine"
    return ProtocolMachine


__all__ = ["ExampleFailed", "ExampleRun", "Failure", "FuzzContext", "machine_for"]
