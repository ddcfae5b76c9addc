"""Where the harness finds its data: every location the code reads, named once.

The data (scenario files, the matrix data, the peer recipes, the spec copies)
lives in the repository, where people edit it: ``scenarios/``, ``matrix/`` and
``docs/spec/``.  The package reaches it as package data under
``harness/_data/``: in a checkout (or an editable install) those are symbolic
links to the repository's folders; in a built wheel they are copies of them.
So the same code runs from a checkout and from an installed wheel, and every
reader takes its location from here.
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path


def _data(name: str) -> Path:
    """The package-data folder ``name``, resolved (in a checkout: the repository's folder)."""
    return Path(str(importlib.resources.files("harness") / "_data" / name)).resolve()


SCENARIOS_DIR = _data("scenarios")
"""The scenario library: one YAML file per behaviour, in a folder per group."""

MATRIX_DIR = _data("matrix")
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

SPEC_DIR = _data("spec")
"""The copies of the NBD spec the scenarios and rules cite (``docs/spec/`` in the repository)."""
EXTENDED_SPEC_FILE = SPEC_DIR / "proto-extended-headers.md"
"""The spec with extended headers (a superset of proto.md's headings): scenarios cite it."""

_PACKAGE_PARENT = Path(__file__).resolve().parents[1]
REPO: Path | None = (_PACKAGE_PARENT if SCENARIOS_DIR == _PACKAGE_PARENT / "scenarios"
                     else None)
"""The checkout the package runs from (git reads its commit here for reports), or None for an
installed wheel (its data then lives inside the package)."""

REPORTS_DIR = REPO / "reports" if REPO else Path("reports")
"""Where runs write their reports unless told otherwise: the checkout's ``reports/``, or, for an
installed package, ``reports/`` under the current directory."""


def default_out_help(leaf: str) -> str:
    """The default result directory ``REPORTS_DIR/leaf`` as ``--help`` shows it."""
    if REPO:
        return str(REPORTS_DIR / leaf)
    return f"./reports/{leaf}, under the current directory"


def shown(path: Path) -> str:
    """``path`` as messages show it: relative to the checkout, or to the package data
    (``scenarios/...``, ``matrix/...``), else as given."""
    resolved, base = path.resolve(), REPO or SCENARIOS_DIR.parent
    return str(resolved.relative_to(base)) if resolved.is_relative_to(base) else str(path)


__all__ = ["CLIENT_ACTIONS_FILE", "DOCKER_DIR", "EXTENDED_SPEC_FILE", "MATRIX_DIR",
           "QEMU_BUILDS_FILE", "REPO", "REPORTS_DIR", "SCENARIOS_DIR", "SPEC_DIR", "SUITES_FILE",
           "default_out_help", "shown"]
