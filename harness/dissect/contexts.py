"""What a block status value means, per metadata context.

A descriptor's ``status`` is only meaningful with the context its chunk's id
was negotiated for (section "Metadata querying"; qemu's ``nbd.rst`` for the
``qemu:`` namespace).
"""

from __future__ import annotations

import enum

from harness.protocol import constants as c


def _flag_text(flag_type: type[enum.IntFlag], status: int) -> str:
    names = [str(m.name) for m in flag_type if m.value and status & m.value == m.value]
    rest = status & ~sum(m.value for m in flag_type)
    if rest:
        names.append(f"{rest:#x}")
    return "|".join(names) if names else "0"


def describe_status(context_name: str | None, status: int) -> str:
    """Human-readable status: ``"HOLE|ZERO"``, ``"depth 1"``, ``"DIRTY"``, or hex.

    - ``base:allocation``: the ``NBD_STATE_HOLE`` / ``NBD_STATE_ZERO`` bits
      (``"allocated"`` when neither is set);
    - ``qemu:allocation-depth``: the whole value is a depth, 0 = unallocated;
    - ``qemu:dirty-bitmap:NAME``: ``DIRTY`` or ``clean`` (other bits in hex);
    - any other or unknown context: the value in hex.
    """
    if context_name == c.BASE_ALLOCATION:
        return _flag_text(c.StateFlag, status) if status else "allocated"
    if context_name == c.QEMU_ALLOCATION_DEPTH:
        return "unallocated (depth 0)" if status == 0 else f"depth {status}"
    if context_name is not None and context_name.startswith(c.QEMU_DIRTY_BITMAP_PREFIX):
        text = "DIRTY" if status & c.DirtyFlag.DIRTY else "clean"
        rest = status & ~int(c.DirtyFlag.DIRTY)
        return f"{text}|{rest:#x}" if rest else text
    return f"{status:#x}"
