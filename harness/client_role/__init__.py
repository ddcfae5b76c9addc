"""The client-role runner: a real client program performs a scenario's client steps.

:func:`run_client_scenario` hosts the reference server (:func:`serve_reference`)
with the scenario's export in a version profile, runs each ``client_action``
with the program's command line from ``matrix/client-actions.toml``
(performed by :func:`harness.peers.actions.perform_action`, as the client drivers
perform theirs) and checks what the program produced and what the server
recorded; it returns a :class:`~harness.scenarios.ScenarioResult` with the
same verdicts as the server role.  :func:`client_can_run` says whether a
program can perform every action of a scenario.  The matrix runner uses the
two seams of :func:`run_client_scenario`: ``listen_wrapper``
(:data:`ListenWrapper`, a recording proxy in front of the reference server)
and ``provider`` (the program run from its Debian suite).
"""

from harness.peers.actions import ClientProgram, default_client_actions

from ._run import ListenWrapper, run_client_scenario
from .actions import client_can_run
from .reference import ServedExport, serve_reference

__all__ = [
    "ClientProgram",
    "ListenWrapper",
    "ServedExport",
    "client_can_run",
    "default_client_actions",
    "run_client_scenario",
    "serve_reference",
]
