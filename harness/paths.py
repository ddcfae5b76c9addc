"""Where the harness finds its data: every location the code reads, named once.

The data (scenario files, the matrix data, the peer recipes, the spec copies)
lives in the repository beside the ``harness`` package, which runs from a
checkout or an editable install.  Moving the data into the package (to ship it
in a wheel) means editing this module only: every reader takes its location
from here.
"""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
"""The repository the package runs from (git reads its commit here for reports)."""

SCENARIOS_DIR = REPO / "scenarios"
"""The scenario library: one YAML file per behaviour, in a folder per group."""

MATRIX_DIR = REPO / "matrix"
"""The matrix data: ``features.toml`` and ``peers/`` (one file per program: versions,
features, quirks), read together by :mod:`harness.peerdata`, and the files below."""
SUITES_FILE = MATRIX_DIR / "suites.toml"
"""The Debian suites (and what each carries) the peers come from."""
CLIENT_ACTIONS_FILE = MATRIX_DIR / "client-actions.toml"
"""How each client program performs each client-role scenario action."""
DOCKER_DIR = MATRIX_DIR / "docker"
"""The Dockerfiles of the docker provider."""
QEMU_BUILDS_FILE = MATRIX_DIR / "qemu-builds.toml"
"""How qemu releases are built from source (``nbd-harness peers build qemu``)."""

SPEC_DIR = REPO / "docs" / "spec"
"""The copies of the NBD spec the scenarios and rules cite."""
EXTENDED_SPEC_FILE = SPEC_DIR / "proto-extended-headers.md"
"""The spec with extended headers (a superset of proto.md's headings): scenarios cite it."""

REPORTS_DIR = REPO / "reports"
"""Where runs write their reports unless told otherwise."""

__all__ = ["CLIENT_ACTIONS_FILE", "DOCKER_DIR", "EXTENDED_SPEC_FILE", "MATRIX_DIR",
           "QEMU_BUILDS_FILE", "REPO", "REPORTS_DIR", "SCENARIOS_DIR", "SPEC_DIR", "SUITES_FILE"]
