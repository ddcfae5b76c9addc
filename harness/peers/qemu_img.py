"""qemu-img as an NBD client: ``info``, ``map`` (base:allocation, a dirty bitmap) and
``convert`` (whole-export copies, which reads are cut from); this module reads its formats."""

from __future__ import annotations

from pathlib import Path

from harness.protocol import constants as c

from ._actions import ActionOutput, output_reader, parse_json
from ._base import ClientPeer


@output_reader("qemu-img-info-json")
def read_info(stdout: str, out: Path) -> ActionOutput:
    """``qemu-img info --output=json``: the virtual size, and the whole document."""
    document = parse_json(stdout)
    return ActionOutput(size=document["virtual-size"], document=document)


@output_reader("qemu-img-map-json")
def read_map(stdout: str, out: Path) -> ActionOutput:
    """``qemu-img map --output=json`` of base:allocation: qemu's "data" is the absence of
    NBD_STATE_HOLE, its "zero" NBD_STATE_ZERO."""
    extents = []
    for entry in parse_json(stdout):
        flags = (0 if entry["data"] else c.StateFlag.HOLE) | (c.StateFlag.ZERO if entry["zero"]
                                                              else 0)
        extents.append((entry["start"], entry["length"], int(flags)))
    return ActionOutput(extents=extents)


@output_reader("qemu-img-dirty-map-json")
def read_dirty_map(stdout: str, out: Path) -> ActionOutput:
    """``qemu-img map`` with ``x-dirty-bitmap``: qemu reads NBD_STATE_DIRTY as "not data"."""
    return ActionOutput(extents=[(e["start"], e["length"],
                                  0 if e["data"] else int(c.DirtyFlag.DIRTY))
                                 for e in parse_json(stdout)])


class QemuImg(ClientPeer):
    """qemu's own NBD client, through ``qemu-img`` (``[qemu-img]`` of
    ``matrix/client-actions.toml``: info, map, whole-export conversions)."""

    program = "qemu-img"
    executable = "qemu-img"
    version_word = "qemu-img"


__all__ = ["QemuImg", "read_dirty_map", "read_info", "read_map"]
