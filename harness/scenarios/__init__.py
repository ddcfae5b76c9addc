"""Scenarios: one behaviour of the NBD protocol each, as data, and the step runner.

A scenario file (YAML, under ``scenarios/``) names the behaviour, the spec
sections it exercises, the features it needs on each side and what to expect
without them, the export it needs, the roles it can test, and its steps.
:func:`load_scenario` / :func:`load_library` validate files against
``scenario.schema.yaml`` and the cross-checks of :mod:`.loader` (every error
says ``file:line: what is wrong``); :func:`run_server_scenario` and
:func:`run_client_scenario` run one scenario against one peer and return a
:class:`ScenarioResult` with a verdict: pass, fail, unsupported,
expected-fallback or error.

Callers that run scenarios across versions (the matrix) use three more
things from here: :func:`run_client_scenario`'s seams (``listen_wrapper``: a
recording proxy in front of the reference server; ``provider``: the program
run from its Debian suite); :func:`server_has`, whether a reference-server
profile has a feature, and :data:`REFERENCE_CLIENT_LACKS` /
:data:`REFERENCE_SERVER_LACKS`, the features the reference implementations
never have; and :meth:`ExportRequirements.export_spec`, the export exactly as
every server peer serves it.
"""

from ._features import REFERENCE_CLIENT_LACKS, REFERENCE_SERVER_LACKS, server_has
from ._yaml import ScenarioError
from .loader import (
    LIBRARY,
    find_scenario,
    load_library,
    load_scenario,
    scenario_files,
    validate_library,
)
from .model import (
    ExportRequirements,
    Fallback,
    Scenario,
    ScenarioResult,
    Step,
    StepResult,
)
from .reference import ServedExport, serve_reference
from .steps import ListenWrapper, client_can_run, run_client_scenario, run_server_scenario

__all__ = [
    "LIBRARY",
    "REFERENCE_CLIENT_LACKS",
    "REFERENCE_SERVER_LACKS",
    "ExportRequirements",
    "Fallback",
    "ListenWrapper",
    "Scenario",
    "ScenarioError",
    "ScenarioResult",
    "ServedExport",
    "Step",
    "StepResult",
    "client_can_run",
    "find_scenario",
    "load_library",
    "load_scenario",
    "run_client_scenario",
    "run_server_scenario",
    "scenario_files",
    "serve_reference",
    "server_has",
    "validate_library",
]
