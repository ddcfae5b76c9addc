"""nbdcopy: libnbd's copying tool (whole exports to and from files)."""

from __future__ import annotations

import os
from pathlib import Path

from ._base import ClientPeer, Endpoint, scratch_dir


class Nbdcopy(ClientPeer):
    """``nbdcopy`` between an endpoint and a local file; reads are whole-export copies."""

    program = "nbdcopy"
    executable = "nbdcopy"
    version_word = "nbdcopy"
    capabilities = frozenset({"read", "copy"})

    def copy_from(self, endpoint: Endpoint, destination: Path) -> None:
        """Copy the whole export into the file ``destination``."""
        destination = Path(destination).absolute()
        self.run([endpoint.uri(), os.fspath(destination)],
                 binds=[*endpoint.binds(), destination.parent])

    def copy_to(self, endpoint: Endpoint, source: Path) -> None:
        """Copy the file ``source`` over the whole export (sizes must match)."""
        source = Path(source).absolute()
        self.run([os.fspath(source), endpoint.uri()], binds=[*endpoint.binds(), source.parent])

    def read(self, endpoint: Endpoint, offset: int, length: int) -> bytes:
        with scratch_dir() as scratch:
            copy = scratch / "export.raw"
            self.copy_from(endpoint, copy)
            with open(copy, "rb") as image:
                image.seek(offset)
                return image.read(length)


__all__ = ["Nbdcopy"]
