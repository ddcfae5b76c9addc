"""Fault profiles: deliberate protocol breaches of the reference server and client.

A :class:`Fault` is one named, documented way to break the spec on demand, so
that the harness's decoder and rules can be tested against broken peers made
here (``nbd-harness serve --fault NAME``, ``nbd-harness info --fault NAME``).
The server's faults are listed in :mod:`reference_server.faults`, the client's
in :mod:`harness.client.faults`; this module holds what both share: the record,
the classes, and the markdown table ``docs/faults.md`` is generated from.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from harness.errors import UserError

FaultRole = Literal["server", "client"]

FAULT_CLASSES: dict[str, str] = {
    "misframing": "bytes that make a decoder lose its place in the stream",
    "no-answer": "a message that never gets its answer",
    "hard-disconnect": "a dropped connection where the spec wants an error reply or a soft "
    "disconnect",
    "short-reply": "a reply that carries less than the request asked for, without a disconnect",
    "misparse": "a peer that cuts the other side's stream in the wrong places",
    "baseline": "a requirement of the spec's Baseline section missing",
    "wrong-error": "an error value the spec does not allow there",
    "semantic": "a well-formed answer that says something untrue",
    "negotiation": "an answer the negotiation phase does not allow",
    "client": "a client message the spec forbids at that point",
}
"""Each class of fault, with what it means on the wire."""


@dataclass(frozen=True)
class Fault:
    """One named breach of the spec, with the sentence it breaks.

    ``rule`` is the conformance rule id that means the same thing, or
    ``new:ROLE.name`` when no rule exists yet.  ``sentence`` is quoted from
    ``section`` of ``docs/spec/proto.md`` (or the extended-headers copy);
    ``level`` is its key word (MAY, with ``deviation=False``, for an allowed
    behaviour that looks like a fault).  ``trigger`` says what a client (or, for a
    client fault, the server) must do to meet the fault.
    """

    name: str
    role: FaultRole
    fault_class: str
    description: str
    section: str
    level: str
    sentence: str
    rule: str
    trigger: str = ""
    deviation: bool = True
    """False for behaviour the spec allows, kept as a test of false findings."""

    def __post_init__(self) -> None:
        if self.fault_class not in FAULT_CLASSES:
            raise ValueError(f"fault {self.name}: unknown class {self.fault_class!r}")


def select_faults(names: Iterable[str], table: Sequence[Fault], what: str) -> tuple[Fault, ...]:
    """The faults of ``table`` named in ``names``, in table order; a user error for a typo."""
    known = {fault.name: fault for fault in table}
    wanted = list(dict.fromkeys(names))
    unknown = [name for name in wanted if name not in known]
    if unknown:
        raise UserError(f"unknown {what} fault {unknown[0]!r} (known: {', '.join(known)})")
    return tuple(fault for fault in table if fault.name in wanted)


def markdown_table(faults: Sequence[Fault]) -> str:
    """The faults as a markdown table: name, class, what it does, the spec it breaks."""
    lines = [
        "| name | class | what it does | trigger | section | level | rule |",
        "|---|---|---|---|---|---|---|",
    ]
    for fault in faults:
        cells = [f"`{fault.name}`", fault.fault_class, fault.description, fault.trigger,
                 fault.section, fault.level, f"`{fault.rule}`" if fault.rule else "none"]
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(lines) + "\n"


def list_lines(faults: Sequence[Fault]) -> str:
    """``NAME  CLASS  DESCRIPTION`` lines for ``--list-faults``."""
    width = max((len(fault.name) for fault in faults), default=0)
    return "\n".join(
        f"{fault.name:<{width}}  {fault.fault_class:<15}  {fault.description}" for fault in faults
    )


__all__ = ["FAULT_CLASSES", "Fault", "FaultRole", "list_lines", "markdown_table", "select_faults"]
