"""nbdkit-memory: nbdkit's ``memory`` plugin, an empty sparse RAM disk, as a server of its own.

It is the plugin ``matrix/peers/nbdkit.toml``'s server claims are written for,
so it shares nbdkit's version family and data; everything else is
:class:`~harness.peers.nbdkit.Nbdkit`'s (switches, handshakes, the named
export). It starts empty: scenarios that need preset content are not its cases.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .nbdkit import Nbdkit

if TYPE_CHECKING:
    from harness.scenarios import ExportRequirements


class NbdkitMemory(Nbdkit):
    """``nbdkit memory SIZE`` serving an export that starts as zeroes."""

    program = "nbdkit-memory"
    represents_family = False
    plugin = "memory"

    @classmethod
    def unservable(cls, export: ExportRequirements, version: str | None = None) -> str | None:
        if any(export.spec.layers) or export.spec.writes_after_bitmaps:
            return f"{cls.program} starts empty: it cannot hold the scenario's preset data"
        return super().unservable(export, version)


__all__ = ["NbdkitMemory"]
