"""The step runner: one scenario, one role, one peer -> a :class:`~.model.ScenarioResult`.

Two entry points, one per role the scenario can test:

- :func:`run_server_scenario`: the server under test listens at ``uri``
  (the matrix runner started it, serving the scenario's export); the
  reference client runs ``steps`` against it, behaving as a client with
  ``features_client`` would.
- :func:`run_client_scenario`: the reference server serves the scenario's
  export in the profile ``server_features`` (a version profile, see
  :mod:`reference_server.profiles`); the real program ``client_program``
  performs ``client_steps``, on this machine or through a provider, talking
  to the server directly or to what ``listen_wrapper`` puts in front of it
  (the matrix runner's recording proxy).

Verdicts: ``pass``; ``fail`` (the expectation that failed, expected vs got,
is in ``detail`` and in the step's result); ``unsupported`` (a required
feature is missing and the side lacking it said so correctly: a flag not
advertised, ``NBD_REP_ERR_UNSUP``...); ``expected-fallback`` (the scenario's
fallback expectations held); ``error`` (the harness or the environment broke,
including a scenario the reference client cannot play, such as TLS-PSK).
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from harness.client.options import DEFAULT_TIMEOUT
from harness.verdict import Verdict
from reference_server.features import FULL, ServerFeatures

from ._client_run import ClientRun, ListenWrapper
from ._server_run import run_server_async
from .client_actions import ClientProgram, default_client_actions
from .model import Scenario, ScenarioResult, StepResult

if TYPE_CHECKING:
    from harness.peers import Provider



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


def client_can_run(scenario: Scenario, client_program: str | ClientProgram) -> tuple[bool, str]:
    """Whether ``client_program`` has a form for every action of ``scenario`` (and why not)."""
    program = (default_client_actions().get(client_program)
               if isinstance(client_program, str) else client_program)
    if program is None:
        return False, f"unknown client program {client_program!r}"
    steps = [*scenario.client_steps, *(scenario.fallback.client_expect if scenario.fallback
                                       else ())]
    for step in steps:
        if step.action != "client_action":
            continue
        action = step.args["action"]
        context = step.args.get("context") if action == "map" else None
        form = program.form(action, context)
        if form is None:
            return False, f"{program.name} cannot {action}" + (f" {context}" if context else "")
        tls = step.args.get("tls") or ("require" if scenario.export.tls != "off" else "off")
        if tls == "require" and form.argv_tls is None and not program.uri_tls:
            return False, f"{program.name} cannot {action} over TLS"
    return True, ""


__all__ = [
    "DEFAULT_TIMEOUT",
    "ListenWrapper",
    "ScenarioResult",
    "StepResult",
    "client_can_run",
    "run_client_scenario",
    "run_server_scenario",
]
