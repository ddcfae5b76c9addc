"""Real qemu releases built from source into the peer cache (``nbd-harness peers build``).

The recipe per era of releases is data (``matrix/qemu-builds.toml``); a build
runs in a Debian build root with bubblewrap, out of tree, and leaves the
tools in ``~/.cache/nbd-harness/qemu/NAME/bin``.
"""

from .builder import BuildReport, QemuBuilder
from .data import BuildData, BuildDataError, default_build_data, load_build_data
from .installed import BuiltRelease, builds_base, installed_builds
from .sources import BuildError, SourceSpec, parse_source

__all__ = [
    "BuildData",
    "BuildDataError",
    "BuildError",
    "BuildReport",
    "BuiltRelease",
    "QemuBuilder",
    "SourceSpec",
    "builds_base",
    "default_build_data",
    "installed_builds",
    "load_build_data",
    "parse_source",
]
