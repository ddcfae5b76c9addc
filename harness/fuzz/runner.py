"""A fuzz campaign: budgets in examples and seconds, seeds, progress, failures written out.

The campaign runs the state machine of :mod:`.machine` in batches, each a hypothesis
run with its own seed (derived from the campaign's), until the example budget or
the time budget is spent.  A batch that fails has been shrunk by hypothesis; its
failure is written out (:mod:`.writer`) once per distinct problem, the peer is
restarted when it died, and the campaign goes on with the next batch.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, Phase, settings
from hypothesis import seed as hypothesis_seed
from hypothesis.stateful import get_state_machine_test

from harness.client.uri import parse_uri

from .machine import ExampleFailed, Failure, FuzzContext, machine_for
from .target import FuzzTarget
from .writer import scenario_document, write_document, write_failure

BATCH = 25
"""Examples per hypothesis run: the granularity of the time budget and of the progress line."""
STEPS_PER_EXAMPLE = 12


@dataclass
class Campaign:
    """What to run: the target, the budgets, the seed, where failures go."""

    target: FuzzTarget
    max_examples: int = 200
    max_time: float | None = None
    seed: int = 0
    timeout: float = 5.0
    out_dir: Path = Path("fuzz-failures")
    steps_per_example: int = STEPS_PER_EXAMPLE
    shrink: bool = True


@dataclass
class FuzzFailure:
    """One distinct problem found, with the files that reproduce it."""

    kind: str
    detail: str
    scenario: Path
    pcapng: Path | None
    steps: int
    findings: list[dict[str, Any]] = field(default_factory=list)
    crash: dict[str, object] | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "detail": self.detail, "scenario": str(self.scenario),
                "pcapng": str(self.pcapng) if self.pcapng else None, "steps": self.steps,
                "findings": self.findings, "crash": self.crash}


@dataclass
class CampaignSummary:
    """What a campaign did and found."""

    target: str
    seed: int
    examples: int = 0
    steps: int = 0
    seconds: float = 0.0
    restarts: int = 0
    failures: list[FuzzFailure] = field(default_factory=list)
    features: list[str] = field(default_factory=list)

    @property
    def examples_per_second(self) -> float:
        return self.examples / self.seconds if self.seconds else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"target": self.target, "seed": self.seed, "examples": self.examples,
                "steps": self.steps, "seconds": round(self.seconds, 3),
                "examples_per_second": round(self.examples_per_second, 2),
                "restarts": self.restarts, "features": self.features,
                "failures": [f.as_dict() for f in self.failures]}

    def describe(self) -> str:
        head = (f"{self.target}: {self.examples} examples, {self.steps} steps in "
                f"{self.seconds:.1f} s ({self.examples_per_second:.1f}/s), seed {self.seed}: "
                f"{len(self.failures)} failure(s)")
        lines = [head]
        for failure in self.failures:
            lines.append(f"  {failure.kind}: {failure.detail}")
            lines.append(f"    scenario: {failure.scenario}  ({failure.steps} steps)")
            if failure.pcapng:
                lines.append(f"    capture:  {failure.pcapng}")
            if failure.crash and failure.crash.get("log_tail"):
                tail = str(failure.crash["log_tail"]).strip().splitlines()[-5:]
                lines += [f"    | {line}" for line in tail]
        return "\n".join(lines)


def _settings(campaign: Campaign, examples: int) -> settings:
    phases = [Phase.explicit, Phase.generate] + ([Phase.shrink] if campaign.shrink else [])
    return settings(max_examples=examples, stateful_step_count=campaign.steps_per_example,
                    deadline=None, database=None, derandomize=False, print_blob=False,
                    report_multiple_bugs=False, phases=phases,
                    suppress_health_check=list(HealthCheck))


def run_campaign(campaign: Campaign,
                 progress: Callable[[CampaignSummary], None] | None = None) -> CampaignSummary:
    """Run ``campaign``; ``progress`` is called after every example with the running totals."""
    target = campaign.target
    profile = target.probe()
    uri = parse_uri(target.uri)
    summary = CampaignSummary(target.label, campaign.seed, features=sorted(profile.present))
    started = time.monotonic()
    seen: set[tuple[str, str]] = set()
    with tempfile.TemporaryDirectory(prefix="nbdh-fuzz-") as scratch_name:
        scratch = Path(scratch_name)
        stub = scenario_document("fuzz-campaign", "the fuzzer's running example", [],
                                 size=profile.size, export=uri.export)
        scenario = write_document(stub, scratch / "fuzz-campaign.yaml")

        def on_example(ctx: FuzzContext) -> None:
            summary.examples = ctx.examples
            summary.steps = ctx.steps
            summary.seconds = time.monotonic() - started
            if progress is not None:
                progress(summary)

        ctx = FuzzContext(target, profile, scenario, scratch, campaign.timeout,
                          on_example=on_example)
        machine = machine_for(ctx)
        batch = 0
        while ctx.examples < campaign.max_examples:
            if campaign.max_time is not None and time.monotonic() - started >= campaign.max_time:
                break
            wanted = min(BATCH, campaign.max_examples - ctx.examples)
            ctx.last_failure = None
            test = _batch_test(machine, campaign, wanted, campaign.seed * 100_003 + batch)
            batch += 1
            try:
                test()
            except Exception as exc:  # ExampleFailed, or hypothesis's Flaky around one
                failure = ctx.last_failure
                if failure is None:
                    raise
                if not isinstance(exc, ExampleFailed):
                    failure.detail += f" (not reproducible: {type(exc).__name__})"
                _record(failure, campaign, summary, seen, profile.size, uri.export)
            finally:
                if target.crashed() is not None:
                    target.restart()
                    summary.restarts += 1
        summary.seconds = time.monotonic() - started
        summary.examples, summary.steps = ctx.examples, ctx.steps
    return summary


def _batch_test(machine: type, campaign: Campaign, examples: int, seed: int) -> Callable[[], None]:
    """One hypothesis run of ``examples`` examples, seeded (the same seed draws the same)."""
    return hypothesis_seed(seed)(get_state_machine_test(machine,
                                                        settings=_settings(campaign, examples)))


def _record(failure: Failure, campaign: Campaign, summary: CampaignSummary,
            seen: set[tuple[str, str]], size: int, export: str) -> None:
    key = (failure.kind, failure.findings[0].rule if failure.findings else
           failure.detail.split(":")[0])
    if key in seen:
        return
    seen.add(key)
    scenario, capture = write_failure(failure, campaign.out_dir, size=size, export=export,
                                      peer=summary.target)
    with contextlib.suppress(OSError):
        if failure.pcapng is not None:
            failure.pcapng.unlink()
    summary.failures.append(FuzzFailure(
        failure.kind, failure.detail, scenario, capture, len(failure.steps),
        [f.to_dict() for f in failure.findings], failure.crash.as_dict()
        if failure.crash else None))


__all__ = ["Campaign", "CampaignSummary", "FuzzFailure", "run_campaign"]
