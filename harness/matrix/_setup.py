"""How a real server driver is asked to serve a scenario's export, or why it cannot be.

A scenario's :class:`~harness.scenarios.ExportRequirements` holds the export
(an :class:`~harness.peers.export.ExportSpec`) and what the server around it
must do (extra exports, TLS modes, handshake styles); not every program can be
configured for all of it (block size constraints, for one).  What a real program can be configured
for, it gets through its driver's options; what it cannot, makes the
combination not a case (listed with this reason): a qemu-nbd that was never
asked for a 4 KiB minimum block size cannot be blamed for not having one.
The export itself is :meth:`ExportRequirements.export_spec`, as every driver
serves it.
"""

from __future__ import annotations

from harness.scenarios import ExportRequirements

# Programs that can serve a handshake style other than fixed newstyle, and how.
_HANDSHAKES = {
    "oldstyle": {"nbdkit"},
    "newstyle": {"nbdkit"},  # --mask-handshake=0: newstyle without NBD_FLAG_FIXED_NEWSTYLE
}
_TLS_OPTIONAL: set[str] = set()
_LIST_DISABLED = {"nbd-server"}


def unservable(program: str, export: ExportRequirements) -> str | None:
    """Why ``program`` cannot serve ``export`` as the scenario describes it (None: it can)."""
    from harness.peers import DRIVERS

    driver = DRIVERS.get(program)
    spec = export.spec
    if spec.description and driver is not None and not driver.serves_descriptions:
        return f"{program} cannot be given an export description"
    if program == "nbd-server" and spec.name in ("", "generic"):
        return f"nbd-server cannot name an export {spec.name!r}"
    if export.handshake != "fixed-newstyle" and program not in _HANDSHAKES[export.handshake]:
        return f"{program} cannot be started with a {export.handshake} handshake"
    if spec.block_sizes_set or spec.block_size_required:
        return f"{program} cannot be given the scenario's block size constraints"
    if export.extra_exports:
        return f"{program} serves one export here; the scenario needs {len(export.extra_exports)}" \
               " more"
    if export.tls == "optional" and program not in _TLS_OPTIONAL:
        return f"{program} is not driven with optional TLS (only required)"
    if not export.list_exports and program not in _LIST_DISABLED:
        return f"{program} cannot refuse NBD_OPT_LIST by configuration"
    if not spec.multi_conn:
        return f"{program} is not driven with a non-shareable export"
    return None


def driver_options(program: str, export: ExportRequirements) -> object | None:
    """The driver options that make ``program`` serve ``export`` (None: the defaults)."""
    if program == "nbdkit":
        from harness.peers import NbdkitOptions

        if export.handshake == "oldstyle":
            return NbdkitOptions(oldstyle=True)
        if export.handshake == "newstyle":
            return NbdkitOptions(mask_handshake=0)
        return None
    if program == "qemu-nbd" and export.spec.multi_conn:
        from harness.peers import QemuNbdOptions

        # qemu-nbd advertises CAN_MULTI_CONN only when it accepts several clients at once.
        return QemuNbdOptions(shared=8)
    if program == "nbd-server" and not export.list_exports:
        from harness.peers import NbdServerOptions

        return NbdServerOptions(allow_list=False)
    return None


__all__ = ["driver_options", "unservable"]
