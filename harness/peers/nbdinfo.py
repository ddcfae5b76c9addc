"""nbdinfo: libnbd's inspector (size, ``--map`` of any context, ``--json`` details, ``--list``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from harness.process import PeerError

from ._actions import ActionOutput, output_reader, parse_json
from ._base import ClientPeer, Endpoint
from .export import Extents, merge_extents


@output_reader("nbdinfo-json")
def read_info(stdout: str, out: Path) -> ActionOutput:
    """``nbdinfo --json URI``: the size of the (first) export."""
    exports = parse_json(stdout).get("exports", [])
    return ActionOutput(size=exports[0].get("export-size") if exports else None)


@output_reader("nbdinfo-list-json")
def read_list(stdout: str, out: Path) -> ActionOutput:
    """``nbdinfo --list --json``: the names of the exports."""
    return ActionOutput(exports=[e["export-name"] for e in parse_json(stdout).get("exports", [])])


@output_reader("nbdinfo-map-json")
def read_map(stdout: str, out: Path) -> ActionOutput:
    """``nbdinfo --json --map=CONTEXT``: the extents, as nbdinfo printed them."""
    return ActionOutput(extents=[(e["offset"], e["length"], e["type"])
                                 for e in parse_json(stdout)])


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
            extents = read_map(str(result.stdout), Path()).extents or []
        except ValueError as exc:
            raise PeerError(f"nbdinfo --map printed no JSON: {str(result.stdout)[:200]!r}") from exc
        return merge_extents(extents)

    def info(self, endpoint: Endpoint) -> dict[str, Any]:
        """``nbdinfo --json URI``: the export's details as libnbd saw them."""
        result = self.run(["--json", endpoint.uri()], binds=endpoint.binds())
        return json.loads(str(result.stdout))

    def list_exports(self, endpoint: Endpoint) -> dict[str, Any]:
        """``nbdinfo --list --json``: every export the server lists."""
        result = self.run(["--list", "--json", endpoint.uri()], binds=endpoint.binds())
        return json.loads(str(result.stdout))


__all__ = ["Nbdinfo", "read_info", "read_list", "read_map"]
