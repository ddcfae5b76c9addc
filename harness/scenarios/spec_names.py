"""Protocol constants by the spec's names, as scenario files write them.

Scenarios say ``NBD_REP_ERR_UNSUP``, ``NBD_EINVAL``, ``NBD_CMD_FLAG_FUA``,
``NBD_FLAG_SEND_FLUSH``; this module maps those names (built from
:mod:`harness.protocol.constants` with :func:`~harness.protocol.constants.spec_name`,
never typed again here) to numbers, one table per constant type.
"""

from __future__ import annotations

import enum
from functools import cache

from harness.protocol import constants as c

KINDS: dict[str, type[enum.Enum]] = {
    "Opt": c.Opt,
    "Rep": c.Rep,
    "Info": c.Info,
    "Cmd": c.Cmd,
    "CmdFlag": c.CmdFlag,
    "Errno": c.Errno,
    "TransmissionFlag": c.TransmissionFlag,
    "HandshakeFlag": c.HandshakeFlag,
    "ClientFlag": c.ClientFlag,
    "InitFlag": c.InitFlag,
}
"""The constant types a schema may name with ``x-const``."""


@cache
def names_of(kind: str) -> dict[str, int]:
    """Spec name -> value for every member of constant type ``kind``."""
    enum_type = KINDS[kind]
    out: dict[str, int] = {}
    for member in enum_type:
        single_bit = member.value and not member.value & (member.value - 1)
        if isinstance(member, enum.Flag) and not single_bit:
            continue  # only single bits have a name of their own
        out[c.spec_name(member)] = int(member.value)
    return out


def lookup(kind: str, value: object) -> int | None:
    """The number a scenario value stands for: a spec name or a plain integer; None if neither."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        return names_of(kind).get(value)
    return None


def flag_value(kind: str, values: list[object] | int) -> int:
    """OR of a list of flag names (or one integer), already validated."""
    if isinstance(values, int):
        return values
    total = 0
    for item in values:
        number = lookup(kind, item)
        assert number is not None, f"unvalidated {kind} {item!r}"
        total |= number
    return total


def value(kind: str, item: object) -> int:
    """One validated constant's number."""
    number = lookup(kind, item)
    assert number is not None, f"unvalidated {kind} {item!r}"
    return number


__all__ = ["KINDS", "flag_value", "lookup", "names_of", "value"]
