"""nbdinfo: libnbd's inspector (size, ``--map`` of any context, ``--json`` details, ``--list``)."""

from __future__ import annotations

import json
from typing import Any

from harness.process import PeerError

from ._base import ClientPeer, Endpoint
from .export import Extents, merge_extents


class Nbdinfo(ClientPeer):
    """``nbdinfo`` against an endpoint; JSON output where the version has it."""

    program = "nbdinfo"
    executable = "nbdinfo"
    version_word = "nbdinfo"
    capabilities = frozenset({"map", "map-contexts", "size", "info", "list"})

    def size(self, endpoint: Endpoint) -> int:
        result = self.run(["--size", endpoint.uri()], binds=endpoint.binds())
        return int(str(result.stdout).split()[-1])

    def map(self, endpoint: Endpoint, context: str = "base:allocation") -> Extents:
        result = self.run(["--json", f"--map={context}", endpoint.uri()], binds=endpoint.binds(),
                          check=False)
        if result.returncode != 0:
            raise PeerError(f"nbdinfo could not map {context}: "
                            f"{str(result.stderr).strip()[-500:]}")
        try:
            rows = json.loads(str(result.stdout))
        except ValueError as exc:
            raise PeerError(f"nbdinfo --map printed no JSON: {str(result.stdout)[:200]!r}") from exc
        return merge_extents((row["offset"], row["length"], row["type"]) for row in rows)

    def info(self, endpoint: Endpoint) -> dict[str, Any]:
        """``nbdinfo --json URI``: the export's details as libnbd saw them."""
        result = self.run(["--json", endpoint.uri()], binds=endpoint.binds())
        return json.loads(str(result.stdout))

    def list_exports(self, endpoint: Endpoint) -> dict[str, Any]:
        """``nbdinfo --list --json``: every export the server lists."""
        result = self.run(["--list", "--json", endpoint.uri()], binds=endpoint.binds())
        return json.loads(str(result.stdout))


__all__ = ["Nbdinfo"]
