"""The harness's own version, as its installed package metadata says.

Reports record it (``results.json`` under ``environment``) and the reference
peers report it as their version: both read it here.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

PACKAGE = "nbd-harness"
UNKNOWN = "0+unknown"
"""The version of a checkout that was never installed (no package metadata)."""


def harness_version() -> str:
    """The installed ``nbd-harness`` package's version (:data:`UNKNOWN` when not installed)."""
    try:
        return version(PACKAGE)
    except PackageNotFoundError:
        return UNKNOWN


__all__ = ["PACKAGE", "UNKNOWN", "harness_version"]
