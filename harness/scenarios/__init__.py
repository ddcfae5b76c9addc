"""Scenarios: one behaviour of the NBD protocol each, as data.

This package is the scenario format: a scenario file (YAML, under
``scenarios/``) names the behaviour, the spec sections it exercises, the
features it needs on each side and what to expect without them, the export it
needs, the roles it can test, and its steps.  :func:`load_scenario` /
:func:`load_library` validate files against ``scenario.schema.yaml`` and the
cross-checks of :mod:`.loader` (every error says ``file:line: what is
wrong``) and give :class:`Scenario` objects; a run of one gives a
:class:`ScenarioResult` with a verdict: pass, fail, unsupported,
expected-fallback or error.  What the two runners share also lives here:
which features a step needs and how a missing one shows (:mod:`.features`),
the spec's constant names (:mod:`.spec_names`), the model of the export's
contents (:mod:`.content`) and the checks of an outcome against a step's
expectation (:mod:`.expect`).

The runners are packages of their own: :mod:`harness.server_role`
(:func:`~harness.server_role.run_server_scenario`, the reference client
against a server under test) and :mod:`harness.client_role`
(:func:`~harness.client_role.run_client_scenario`, a real client against the
reference server).

Callers that run scenarios across versions (the matrix) use three more
things from here: :func:`server_has`, whether a reference-server profile has
a feature, and :data:`REFERENCE_CLIENT_LACKS` / :data:`REFERENCE_SERVER_LACKS`,
the features the reference implementations never have; and
:meth:`ExportRequirements.export_spec`, the export exactly as every server
peer serves it.
"""

from ._yaml import ScenarioError
from .features import REFERENCE_CLIENT_LACKS, REFERENCE_SERVER_LACKS, server_has
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

__all__ = [
    "LIBRARY",
    "REFERENCE_CLIENT_LACKS",
    "REFERENCE_SERVER_LACKS",
    "ExportRequirements",
    "Fallback",
    "Scenario",
    "ScenarioError",
    "ScenarioResult",
    "Step",
    "StepResult",
    "find_scenario",
    "load_library",
    "load_scenario",
    "scenario_files",
    "server_has",
    "validate_library",
]
