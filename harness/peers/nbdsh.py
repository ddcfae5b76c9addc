"""nbdsh: libnbd's Python shell, scripted with ``-c``.

Its actions are ``[nbdsh]`` of ``matrix/client-actions.toml`` (each a script that
connects its handle ``h`` itself); this module reads what those scripts print.
"""

from __future__ import annotations

from pathlib import Path

from ._actions import ActionOutput, output_reader, parse_json
from ._base import ClientPeer


@output_reader("json-size")
def read_size(stdout: str, out: Path) -> ActionOutput:
    document = parse_json(stdout)
    return ActionOutput(size=document["size"], document=document)


@output_reader("json-list")
def read_list(stdout: str, out: Path) -> ActionOutput:
    document = parse_json(stdout)
    return ActionOutput(exports=list(document), document=document)


@output_reader("json-extents")
def read_extents(stdout: str, out: Path) -> ActionOutput:
    return ActionOutput(extents=[tuple(e) for e in parse_json(stdout)])  # type: ignore[misc]


class Nbdsh(ClientPeer):
    """``nbdsh -c SCRIPT`` (nbdsh makes the handle ``h``)."""

    program = "nbdsh"
    executable = "nbdsh"
    version_word = "libnbd"


__all__ = ["Nbdsh", "read_extents", "read_list", "read_size"]
