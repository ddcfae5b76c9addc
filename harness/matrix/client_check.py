"""Checking any client command against the reference server: ``nbd-harness check-client``.

The command (``'nbdinfo --map {uri}'``) runs once per reference-server
profile, against an export with something to find in it: data in a two-layer
chain (so ``base:allocation`` and ``qemu:allocation-depth`` have extents) and
a dirty bitmap ``b0`` with dirty granules.  The reference server checks
everything the client sends (its session records list every rule the client
broke), a recording proxy captures the conversation, and the capture is
checked by the conformance rules.

Verdicts per profile: ``fail`` when the client broke a rule (by the server's
account or on the wire), or exited non-zero against the full protocol;
``unsupported`` when it exited non-zero against a profile that lacks features
the full protocol has, without breaking a rule (it may need one of them;
``strict_exit`` makes that a fail too); ``error`` when the harness broke;
``pass`` otherwise.  The wire and the server's account are weighed by
:func:`harness.matrix.verdict.judge_case`, as for every matrix case.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from harness.address import LOOPBACK
from harness.capture import ProxyThread
from harness.client_role import serve_reference
from harness.errors import UserError
from harness.peers.export import BitmapSpec, DataRange, ExportSpec, Layer
from harness.process import PeerError, run_command
from harness.scenarios import ExportRequirements
from harness.tls import make_test_pki
from harness.verdict import Verdict
from reference_server.profiles import profile

from .cases import PeerRef, reference_profiles, reference_server
from .results import CaseResult, ResultStore
from .runner import CAPTURE, _collect_evidence, lint_capture
from .verdict import judge_case

SCENARIO = "check-client"
PLACEHOLDERS = ("{uri}", "{uri_server}", "{host}", "{port}", "{export}", "{tls_dir}")
SETTLE = 0.3
SESSION_WAIT = 10.0
_SYSTEM_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
_MIB = 1 << 20

CHECK_EXPORT = ExportRequirements(
    ExportSpec(
        name="disk",
        size=16 * _MIB,
        image_format="qcow2",
        layers=(
            Layer((DataRange(0, _MIB, 1), DataRange(4 * _MIB, 2 * _MIB, 2))),
            Layer((DataRange(_MIB // 2, _MIB, 3), DataRange(10 * _MIB, _MIB, 4))),
        ),
        bitmaps=(BitmapSpec("b0"),),
        writes_after_bitmaps=(DataRange(12 * _MIB, 256 * 1024, 5),),
        description="nbd-harness check-client export",
    ),
    backend="layers",
)
"""A 16 MiB two-layer chain with data in both layers, holes, and a dirty bitmap ``b0``."""


class ClientCheckError(UserError, ValueError):
    """A command that cannot be checked (no placeholder, unknown profile...)."""


@dataclass(frozen=True)
class ClientCommand:
    """The command under test: its words (with placeholders) and a short name for reports."""

    words: tuple[str, ...]

    @classmethod
    def parse(cls, text: str) -> ClientCommand:
        try:
            words = tuple(shlex.split(text))
        except ValueError as exc:
            raise ClientCheckError(f"cannot split the command {text!r}: {exc}") from None
        if not words:
            raise ClientCheckError("the command is empty")
        if not any(p in word for word in words for p in PLACEHOLDERS):
            raise ClientCheckError(
                f"the command names no server: put {{uri}} where the NBD URI goes "
                f"(placeholders: {', '.join(PLACEHOLDERS)})")
        return cls(words)

    @property
    def program(self) -> str:
        return os.path.basename(self.words[0])

    def render(self, values: dict[str, str]) -> list[str]:
        out = []
        for word in self.words:
            for key, value in values.items():
                word = word.replace("{" + key + "}", value)
            out.append(word)
        return out


def profiles_for(names: Sequence[str], every: bool = False) -> list[PeerRef]:
    """The reference servers to check against: ``names``, every profile, or one per behaviour."""
    if names:
        return [reference_server(name) for name in names]
    return reference_profiles(distinct=not every)


def _environment() -> dict[str, str]:
    environment = {**os.environ, "PATH": _SYSTEM_PATH + ":" + os.environ.get("PATH", "")}
    environment.pop("LIBNBD_DEBUG", None)
    return environment


def _settled(records: list[Any], before: int) -> list[Any]:
    """The session records since ``before``, once no new one arrived for :data:`SETTLE` s."""
    deadline = time.monotonic() + SESSION_WAIT
    count, stable_since = len(records), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.02)
        if len(records) != count:
            count, stable_since = len(records), time.monotonic()
        elif time.monotonic() - stable_since >= SETTLE:
            break
    return list(records[before:])


def _lacks(server: PeerRef) -> list[str]:
    return sorted(reference_server().features - server.features)


def check_client(command: ClientCommand, server: PeerRef, store: ResultStore, *,
                 timeout: float = 120.0, tls: bool = False,
                 strict_exit: bool = False) -> CaseResult:
    """Run ``command`` against the reference server in ``server``'s profile; judge it."""
    case_id = f"{SCENARIO}[{server.spec}-vs-{command.program}]"
    case_dir = store.case_dir(case_id)
    capture = case_dir / CAPTURE
    with contextlib.suppress(FileNotFoundError):
        capture.unlink()
    started, clock = time.time(), time.monotonic()
    export = CHECK_EXPORT if not tls else ExportRequirements(
        **{**CHECK_EXPORT.__dict__, "tls": "required"})
    tls_dir = None
    if tls:
        tls_dir = make_test_pki(case_dir / "pki").directory
    features = profile(server.profile or "reference")
    observed, detail = Verdict.PASS, ""
    sessions: list[dict[str, Any]] = []
    completed = None
    argv: list[str] = []
    try:
        with serve_reference(export, features, case_dir / "server", tls_dir=tls_dir) as served:
            proxy = ProxyThread(LOOPBACK, served.address, capture).start()
            try:
                front = served.behind(proxy.address)
                values = {"uri": front.uri(), "uri_server": front.uri(""),
                          "host": proxy.address.host, "port": str(proxy.address.port),
                          "export": export.spec.name, "tls_dir": str(tls_dir or "")}
                argv = command.render(values)
                completed = run_command(argv, timeout=timeout, env=_environment(),
                                        cwd=case_dir, log_path=case_dir / "client.log")
                records = _settled(served.records, 0)
            finally:
                proxy.stop()
            sessions = [record.summary() for record in records]
    except PeerError as exc:
        observed, detail = (Verdict.FAIL if "timed out" in str(exc) else Verdict.ERROR), str(exc)
    except Exception as exc:
        observed, detail = Verdict.ERROR, f"{type(exc).__name__}: {exc}"
    findings, _, capture_problem = lint_capture(capture, case_dir)
    # Only a check that ran to its end is weighed against the wire and the server's account
    # (a harness error or a timeout stands as it came to); only then does the exit matter.
    ran = observed == Verdict.PASS and capture_problem is None and completed is not None
    violations = [v for session in sessions for v in session.get("client_violations", [])]
    outcome = judge_case(observed, detail, findings if ran else (), under_test="client",
                         peer=command.program, capture_problem=capture_problem,
                         peer_faults=violations if ran else (),
                         reference_breaches_deliberate=bool(features.quirks))
    observed, detail = outcome.verdict, outcome.detail
    if ran and observed == Verdict.PASS and completed is not None:
        observed, detail = _exit_verdict(completed.returncode, sessions, server, strict_exit,
                                         str(completed.stderr or completed.stdout))
    return CaseResult(
        case_id=case_id, scenario=SCENARIO, role="client", server=server.spec,
        client=command.program, verdict=observed.value, observed=observed.value, expected=None,
        detail=detail, description=f"{shlex.join(argv) if argv else ' '.join(command.words)}",
        spec=(), features=(), duration=round(time.monotonic() - clock, 3), started=started,
        findings=tuple(findings), steps=(), sessions=tuple(sessions),
        evidence=_collect_evidence(case_dir, store.directory),
        versions={"server": server.spec, "client": command.program},
    )


def _exit_verdict(returncode: int, sessions: list[dict[str, Any]], server: PeerRef,
                  strict_exit: bool, output: str) -> tuple[Verdict, str]:
    """What the command's exit came to, once the wire showed nobody at fault.

    A non-zero exit against a profile that lacks features the full protocol has
    is ``unsupported`` (the command may need one of them), unless ``strict_exit``.
    """
    if returncode != 0:
        tail = output.strip().splitlines()[-1:] or [""]
        lacks = _lacks(server)
        if lacks and not strict_exit:
            return Verdict.UNSUPPORTED, (f"exit {returncode}: {tail[0][:200]} (this server "
                                         f"lacks {', '.join(lacks)})")
        return Verdict.FAIL, f"exit {returncode}: {tail[0][:300]}"
    if not sessions:
        return Verdict.ERROR, "the command exited 0 but never connected to the server"
    return Verdict.PASS, ""


__all__ = ["CHECK_EXPORT", "SCENARIO", "ClientCheckError", "ClientCommand", "check_client",
           "profiles_for"]
