"""Which of a scenario's client actions a program has no form of.

The forms themselves, their loading and their performing live in
:mod:`harness.peers.actions` (``matrix/client-actions.toml``); this module looks
at a scenario's client steps against them.
"""

from __future__ import annotations

from harness.peers.actions import ClientProgram, default_client_actions
from harness.scenarios.model import Scenario


def lacking_actions(scenario: Scenario, program: ClientProgram) -> list[str]:
    """The client actions of ``scenario`` (fallback steps too) that ``program`` has no
    form of, in step order, each once (``map CONTEXT`` for a map)."""
    fallback = scenario.fallback
    lacking: list[str] = []
    for step in (*scenario.client_steps, *(fallback.client_expect if fallback else ())):
        if step.action != "client_action":
            continue
        action = step.args["action"]
        context = step.args.get("context") if action == "map" else None
        what = f"{action} {context}" if context else action
        form = program.form(action, context)
        tls = step.args.get("tls") or ("require" if scenario.export.tls != "off" else "off")
        if form is not None and tls == "require" and form.argv_tls is None \
                and not program.uri_tls:
            what += " over TLS"  # the release has no TLS form of it (and no nbds:// URIs)
            form = None
        if form is None and what not in lacking:
            lacking.append(what)
    return lacking


def client_can_run(scenario: Scenario, client_program: str | ClientProgram) -> tuple[bool, str]:
    """Whether ``client_program`` has a form for every action of ``scenario`` (and why not)."""
    program = (default_client_actions().get(client_program)
               if isinstance(client_program, str) else client_program)
    if program is None:
        return False, f"unknown client program {client_program!r}"
    lacking = lacking_actions(scenario, program)
    if lacking:
        return False, f"{program.name} cannot {lacking[0]}"
    return True, ""


__all__ = ["client_can_run", "lacking_actions"]
