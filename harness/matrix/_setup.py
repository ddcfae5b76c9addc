"""How a real server driver is asked to serve a scenario's export, or why it cannot be.

A scenario's :class:`~harness.scenarios.ExportRequirements` holds the export
(an :class:`~harness.peers.export.ExportSpec`) and what the server around it
must do (extra exports, TLS modes, handshake styles); not every program can be
configured for all of it (block size constraints, for one).  What a real program can be configured
for, it gets through its driver's options; what it cannot, makes the
combination not a case (listed with this reason): a qemu-nbd that was never
asked for a 4 KiB minimum block size cannot be blamed for not having one.
Both answers come from the program's driver (:meth:`ServerPeer.unservable`,
:meth:`ServerPeer.options_for`); the export itself is
:meth:`ExportRequirements.export_spec`, as every driver serves it.
"""

from __future__ import annotations

from harness.peers import DRIVERS, ServerPeer
from harness.scenarios import ExportRequirements


def _server_driver(program: str) -> type[ServerPeer] | None:
    driver = DRIVERS.get(program)
    return driver if driver is not None and issubclass(driver, ServerPeer) else None


def unservable(program: str, export: ExportRequirements, version: str | None = None
                ) -> str | None:
    """Why ``program`` (at ``version``) cannot serve ``export`` as the scenario describes it
    (None: it can)."""
    driver = _server_driver(program)
    if driver is None:
        return f"{program} has no server driver"
    return driver.unservable(export, version)


def driver_options(program: str, export: ExportRequirements) -> object | None:
    """The driver options that make ``program`` serve ``export`` (None: the defaults)."""
    driver = _server_driver(program)
    return driver.options_for(export) if driver is not None else None


__all__ = ["driver_options", "unservable"]
