"""What a scenario is once loaded, and what running one produces.

:class:`Scenario` is one validated scenario file: the behaviour it checks,
the spec sections it cites, the features it needs on each side and what to
expect when one is missing (:class:`Fallback`), the export it needs
(:class:`ExportRequirements`) and its steps (:class:`Step`).  Running it
gives a :class:`ScenarioResult` with a verdict and one :class:`StepResult`
per step.

Step arguments stay as the file wrote them (constant names such as
``NBD_CMD_FLAG_FUA`` stay names, for reports), except that sizes are already
numbers of bytes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from harness.peers.export import ExportSpec, ExportSpecError
from harness.verdict import Verdict

Role = Literal["server", "client"]
ROLES: tuple[Role, ...] = ("server", "client")
Outcome = Literal["unsupported", "expected-fallback"]
StepStatus = Literal["ok", "failed", "skipped", "unsupported", "error"]

DEFAULT_EXPORT_SIZE = 4 * 1024 * 1024
DEFAULT_CONNECTION = "main"


@dataclass(frozen=True)
class Step:
    """One step: an action with its arguments, and what to expect of it.

    ``on`` names the connection it uses (server role); ``line`` is where the
    step starts in its file, for messages.
    """

    action: str
    args: Mapping[str, Any] = field(default_factory=dict)
    expect: Mapping[str, Any] | None = None
    on: str = DEFAULT_CONNECTION
    note: str = ""
    line: int = 0

    def arg(self, key: str, default: Any = None) -> Any:
        return self.args.get(key, default)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {self.action: dict(self.args)}
        if self.expect is not None:
            out["expect"] = dict(self.expect)
        if self.on != DEFAULT_CONNECTION:
            out["on"] = self.on
        if self.note:
            out["note"] = self.note
        return out


@dataclass(frozen=True)
class Fallback:
    """What a missing required feature leads to.

    ``unsupported``: the verdict is unsupported once the side lacking it said so
    correctly.  ``expected-fallback``: the steps go on without the feature
    (steps that need it are skipped) and ``expect`` / ``client_expect`` must
    hold too.
    """

    outcome: Outcome
    why: str = ""
    expect: tuple[Step, ...] = ()
    client_expect: tuple[Step, ...] = ()


TlsMode = Literal["off", "optional", "required"]
Handshake = Literal["fixed-newstyle", "newstyle", "oldstyle"]
Backend = Literal["memory", "layers"]


def default_image_format(backend: Backend, has_bitmaps: bool) -> Literal["raw", "qcow2"]:
    """The image format of a scenario export that names none.

    qcow2 for a backing chain and for dirty bitmaps (a raw image has nowhere to keep
    a persistent bitmap, so qemu's drivers refuse one), raw otherwise.  Servers that
    serve a flattened raw file (nbdkit, nbd-server) build it from the same
    :class:`~harness.peers.export.ExportSpec` whatever this says.
    """
    return "qcow2" if backend == "layers" or has_bitmaps else "raw"


def _default_spec() -> ExportSpec:
    return ExportSpec(DEFAULT_EXPORT_SIZE, image_format="raw")


@dataclass(frozen=True)
class ExportRequirements:
    """What a scenario needs served: the export itself and the server around it.

    ``spec`` is the export (:class:`~harness.peers.export.ExportSpec`, the one
    export model every server driver serves); the rest is not an export:
    ``backend`` is how the reference server stores it (``memory``, or raw
    ``layers`` files for a backing chain); ``tls`` is the server's TLS mode:
    ``off`` (NOTLS), ``optional`` (SELECTIVETLS) or ``required`` (FORCEDTLS);
    ``handshake`` its negotiation style; ``list_exports`` whether it answers
    NBD_OPT_LIST; ``extra_exports`` the names of empty exports served beside it.
    """

    spec: ExportSpec = field(default_factory=_default_spec)
    backend: Backend = "memory"
    tls: TlsMode = "off"
    handshake: Handshake = "fixed-newstyle"
    list_exports: bool = True
    extra_exports: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.spec.bitmaps and self.spec.image_format != "qcow2":
            raise ExportSpecError(f"dirty bitmaps need format qcow2, not "
                                  f"{self.spec.image_format} (a raw image has nowhere to keep "
                                  "them)")

    def export_spec(self, tls_dir: Path | None = None) -> ExportSpec:
        """The :class:`~harness.peers.export.ExportSpec` every server peer serves.

        ``tls_dir`` is the PKI a TLS export is served with (ignored when ``tls``
        is off).
        """
        return replace(self.spec, tls_dir=tls_dir if self.tls != "off" else None)


@dataclass(frozen=True)
class Scenario:
    """One scenario file, validated."""

    name: str
    description: str
    spec: tuple[str, ...]
    roles: tuple[Role, ...]
    export: ExportRequirements = field(default_factory=ExportRequirements)
    requires_server: frozenset[str] = frozenset()
    requires_client: frozenset[str] = frozenset()
    fallback: Fallback | None = None
    steps: tuple[Step, ...] = ()
    client_steps: tuple[Step, ...] = ()
    tags: tuple[str, ...] = ()
    group: str = ""
    """The folder under ``scenarios/`` (``handshake``, ``commands``, ...)."""
    path: Path | None = None

    @property
    def id(self) -> str:
        """``group/name``: unique in a library."""
        return f"{self.group}/{self.name}" if self.group else self.name

    def requires(self, role: Role) -> frozenset[str]:
        return self.requires_server if role == "server" else self.requires_client

    def summary(self) -> dict[str, Any]:
        """A JSON-ready description (``nbd-harness scenarios show --json``)."""
        export, spec = self.export, self.export.spec
        return {
            "name": self.name,
            "id": self.id,
            "group": self.group,
            "path": str(self.path) if self.path else None,
            "description": self.description,
            "spec": list(self.spec),
            "roles": list(self.roles),
            "requires": {
                "server": sorted(self.requires_server),
                "client": sorted(self.requires_client),
            },
            "fallback": None
            if self.fallback is None
            else {
                "outcome": self.fallback.outcome,
                "why": self.fallback.why,
                "expect": [s.as_dict() for s in self.fallback.expect],
                "client_expect": [s.as_dict() for s in self.fallback.client_expect],
            },
            "export": {
                "name": spec.name,
                "size": spec.size,
                "backend": export.backend,
                "format": spec.image_format,
                "layers": [
                    [[r.offset, r.length, r.seed] for r in layer.ranges] for layer in spec.layers
                ],
                "bitmaps": [[b.name, b.granularity] for b in spec.bitmaps],
                "writes_after_bitmaps": [
                    [r.offset, r.length, r.seed] for r in spec.writes_after_bitmaps
                ],
                "read_only": spec.read_only,
                "tls": export.tls,
                "handshake": export.handshake,
                "min_block_size": spec.min_block_size,
                "preferred_block_size": spec.preferred_block_size,
                "max_payload_size": spec.max_payload_size,
                "block_size_required": spec.block_size_required,
                "multi_conn": spec.multi_conn,
                "init_state": spec.init_state,
                "list_exports": export.list_exports,
                "extra_exports": list(export.extra_exports),
            },
            "steps": [s.as_dict() for s in self.steps],
            "client_steps": [s.as_dict() for s in self.client_steps],
            "tags": list(self.tags),
        }


# --- results ---------------------------------------------------------------------------


@dataclass(frozen=True)
class StepResult:
    """What one step did.

    ``status``: ok; failed (an expectation did not hold: ``expected`` vs ``got``);
    skipped (it needs a feature that is missing, in a fallback run); unsupported
    (it found a required feature missing); error (the harness broke).
    ``phase`` says which list the step came from: ``steps``, ``client_steps``,
    ``fallback`` or ``verify`` (the read-back of every write at the end).
    """

    index: int
    action: str
    line: int
    status: StepStatus
    detail: str = ""
    expected: Any = None
    got: Any = None
    phase: str = "steps"
    started: float = 0.0
    """Wall-clock time (``time.time()``) the step began: it places the step among the
    captured messages, whose timestamps come from the same clock."""
    ended: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "index": self.index,
            "action": self.action,
            "line": self.line,
            "status": self.status,
            "phase": self.phase,
        }
        if self.started:
            out["started"] = round(self.started, 6)
            out["ended"] = round(self.ended, 6)
        if self.detail:
            out["detail"] = self.detail
        if self.expected is not None or self.got is not None:
            out["expected"] = _jsonable(self.expected)
            out["got"] = _jsonable(self.got)
        return out


@dataclass(frozen=True)
class ScenarioResult:
    """The verdict of one run of one scenario, with its steps and evidence.

    ``detail`` says why (for a failure: the expectation that failed, expected
    vs got); ``evidence`` holds what was negotiated on each connection, the
    missing features and how they showed, and (client role) the server's
    session records and the programs' output.
    """

    verdict: Verdict
    """A :class:`~harness.verdict.Verdict` (its string value is accepted and converted)."""
    steps: list[StepResult] = field(default_factory=list)
    detail: str = ""
    evidence: dict[str, Any] = field(default_factory=dict)
    scenario: str = ""
    role: Role = "server"

    def __post_init__(self) -> None:
        object.__setattr__(self, "verdict", Verdict(self.verdict))

    def as_dict(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "role": self.role,
            "verdict": self.verdict.value,
            "detail": self.detail,
            "steps": [s.as_dict() for s in self.steps],
            "evidence": _jsonable(self.evidence),
        }

    @property
    def failed_step(self) -> StepResult | None:
        return next((s for s in self.steps if s.status in ("failed", "error")), None)


def describe_missing(missing: Mapping[str, object]) -> str:
    """``feature: how it showed missing; ...`` (sorted by feature), for a verdict's detail."""
    return "; ".join(f"{feature}: {why}" for feature, why in sorted(missing.items()))


def verdict_of_steps(steps: Sequence[StepResult], *, unsupported: str | None = None,
                     fell_back_without: Mapping[str, object] | None = None
                     ) -> tuple[Verdict, str]:
    """The verdict a run's step results come to, and why.

    The first step that errored makes it ``error`` (the harness or the
    environment broke); else the first that failed makes it ``fail`` (with
    what it expected and got); else ``unsupported`` when a required feature
    showed missing and the scenario's fallback says so (``unsupported`` is how
    it showed), ``expected-fallback`` when the run went on without the
    features in ``fell_back_without`` (feature -> how it showed missing), and
    ``pass`` otherwise.
    """
    errors = [step for step in steps if step.status == "error"]
    failures = [step for step in steps if step.status == "failed"]
    if errors:
        return Verdict.ERROR, _where(errors[0])
    if failures:
        first = failures[0]
        detail = _where(first)
        if first.expected is not None or first.got is not None:
            detail += f" (expected {first.expected}, got {first.got})"
        return Verdict.FAIL, detail
    if unsupported is not None:
        return Verdict.UNSUPPORTED, unsupported
    if fell_back_without is not None:
        return Verdict.EXPECTED_FALLBACK, f"without {describe_missing(fell_back_without)}"
    return Verdict.PASS, ""


def _where(step: StepResult) -> str:
    return f"{step.phase}[{step.index}] {step.action} (line {step.line}): {step.detail}"


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return value[:64].hex() + ("..." if len(value) > 64 else "")
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        items = sorted(value, key=str) if isinstance(value, set | frozenset) else value
        return [_jsonable(v) for v in items]
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)


__all__ = [
    "DEFAULT_CONNECTION",
    "DEFAULT_EXPORT_SIZE",
    "ROLES",
    "Backend",
    "ExportRequirements",
    "Fallback",
    "Handshake",
    "Outcome",
    "Role",
    "Scenario",
    "ScenarioResult",
    "Step",
    "StepResult",
    "StepStatus",
    "TlsMode",
    "default_image_format",
    "describe_missing",
    "verdict_of_steps",
]
