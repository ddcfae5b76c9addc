"""nbdinfo: libnbd's inspector (``--json`` details, ``--size``, ``--list``, ``--map`` of any
context).

Its actions are ``[nbdinfo]`` of ``matrix/client-actions.toml``; this module reads the
formats they print.
"""

from __future__ import annotations

from pathlib import Path

from ._actions import ActionOutput, output_reader, parse_json
from ._base import ClientPeer


@output_reader("nbdinfo-json")
def read_info(stdout: str, out: Path) -> ActionOutput:
    """``nbdinfo --json URI``: the size of the (first) export, and the whole document."""
    document = parse_json(stdout)
    exports = document.get("exports", [])
    return ActionOutput(size=exports[0].get("export-size") if exports else None,
                        document=document)


@output_reader("nbdinfo-size")
def read_size(stdout: str, out: Path) -> ActionOutput:
    """``nbdinfo --size URI``: the size, alone on its line."""
    return ActionOutput(size=int(stdout.split()[-1]))


@output_reader("nbdinfo-list-json")
def read_list(stdout: str, out: Path) -> ActionOutput:
    """``nbdinfo --list --json``: the names of the exports, and the whole document."""
    document = parse_json(stdout)
    return ActionOutput(exports=[e["export-name"] for e in document.get("exports", [])],
                        document=document)


@output_reader("nbdinfo-map-json")
def read_map(stdout: str, out: Path) -> ActionOutput:
    """``nbdinfo --json --map=CONTEXT``: the extents, as nbdinfo printed them."""
    return ActionOutput(extents=[(e["offset"], e["length"], e["type"])
                                 for e in parse_json(stdout)])


class Nbdinfo(ClientPeer):
    """``nbdinfo`` against an endpoint."""

    program = "nbdinfo"
    executable = "nbdinfo"
    version_word = "nbdinfo"


__all__ = ["Nbdinfo", "read_info", "read_list", "read_map", "read_size"]
