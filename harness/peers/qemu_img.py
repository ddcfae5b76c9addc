"""qemu-img as an NBD client: ``convert`` (read), ``map`` (base:allocation), ``info`` (size)."""

from __future__ import annotations

import json
import os

from harness.process import PeerError

from ._base import ClientPeer, Endpoint, scratch_dir
from ._qemu import client_args
from .export import DATA_FLAGS, Extents, merge_extents

# NBD_STATE_HOLE and NBD_STATE_ZERO, as qemu-img map's "data"/"zero" describe them.
_HOLE, _ZERO = 1, 2


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
            rows = json.loads(str(result.stdout))
        except ValueError as exc:
            raise PeerError(f"qemu-img map printed no JSON: {str(result.stdout)[:200]!r}") from exc
        return merge_extents(
            (
                row["start"],
                row["length"],
                DATA_FLAGS if row["data"] else _HOLE | (_ZERO if row["zero"] else 0),
            )
            for row in rows
        )

    def size(self, endpoint: Endpoint) -> int:
        result = self.run(["info", "--output=json", *client_args(endpoint)],
                          binds=endpoint.binds())
        return int(json.loads(str(result.stdout))["virtual-size"])

    def info(self, endpoint: Endpoint) -> dict:
        """``qemu-img info --output=json``."""
        result = self.run(["info", "--output=json", *client_args(endpoint)],
                          binds=endpoint.binds())
        return json.loads(str(result.stdout))


__all__ = ["QemuImg"]
