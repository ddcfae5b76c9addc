"""qemu-img as an NBD client: ``convert`` (read), ``map`` (base:allocation), ``info`` (size)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from harness.process import PeerError
from harness.protocol import constants as c

from ._actions import ActionOutput, output_reader, parse_json
from ._base import ClientPeer, Endpoint, scratch_dir
from ._qemu import client_args
from .export import Extents, merge_extents


@output_reader("qemu-img-info-json")
def read_info(stdout: str, out: Path) -> ActionOutput:
    """``qemu-img info --output=json``: the virtual size."""
    return ActionOutput(size=parse_json(stdout)["virtual-size"])


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
    """qemu's own NBD client, through ``qemu-img``."""

    program = "qemu-img"
    executable = "qemu-img"
    version_word = "qemu-img"
    capabilities = frozenset({"read", "map", "size"})

    def _binds(self, endpoint: Endpoint) -> list:
        return endpoint.binds()

    def read(self, endpoint: Endpoint, offset: int, length: int) -> bytes:
        with scratch_dir() as scratch:
            copy = scratch / "export.raw"
            args = client_args(endpoint)
            # convert's options go before the source: objects, --image-opts, then -O.
            self.run(["convert", *args[:-1], "-O", "raw", args[-1], os.fspath(copy)],
                     binds=[*endpoint.binds(), scratch])
            with open(copy, "rb") as image:
                image.seek(offset)
                return image.read(length)

    def map(self, endpoint: Endpoint, context: str = "base:allocation") -> Extents:
        if context != "base:allocation":
            raise PeerError(f"qemu-img maps base:allocation only, not {context}")
        result = self.run(["map", "--output=json", *client_args(endpoint)],
                          binds=endpoint.binds())
        try:
            extents = read_map(str(result.stdout), Path()).extents or []
        except ValueError as exc:
            raise PeerError(f"qemu-img map printed no JSON: {str(result.stdout)[:200]!r}") from exc
        return merge_extents(extents)

    def size(self, endpoint: Endpoint) -> int:
        return int(self.info(endpoint)["virtual-size"])

    def info(self, endpoint: Endpoint) -> dict:
        """``qemu-img info --output=json``."""
        result = self.run(["info", "--output=json", *client_args(endpoint)],
                          binds=endpoint.binds())
        return json.loads(str(result.stdout))


__all__ = ["QemuImg", "read_dirty_map", "read_info", "read_map"]
