"""The rule type, the registry, and the ``@rule`` decorator that fills it.

A rule is one function, named by the id of the sentence it checks::

    @rule(id="server.option-reply-answers-option")
    def option_reply_answers_option(view: SessionView) -> Iterator[Hit]:
        \"\"\"An option reply names the option it answers.\"\"\"
        ...
        yield Hit(reply, "reply names NBD_OPT_LIST but answers NBD_OPT_GO")

The function reads a :class:`~harness.conformance._view.SessionView` (the
decoded session plus what every rule needs: option exchanges, request/reply
transactions, the negotiated transmission settings) and yields a :class:`Hit`
per breach; :meth:`Rule.check` turns hits into :class:`Finding` objects that
carry the citation.  The citation (level, section, verbatim sentence) lives once,
in :mod:`harness.protocol.rules`, where the reference state machine's checks read
it too; the sentence must appear (whitespace-normalised) under its section in
``proto.md`` or ``proto-extended-headers.md``: a test holds every rule to that, so
no citation is invented.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

from harness.conformance.findings import Finding, Pointer
from harness.dissect.model import StreamEnd, Undecoded, WireMessage
from harness.protocol.rules import (
    LEVELS,
    MANDATORY_LEVELS,
    MUST,
    MUST_NOT,
    ROLES,
    SHOULD,
    SHOULD_NOT,
    cite,
)

if TYPE_CHECKING:
    from harness.conformance._view import SessionView

__all__ = [
    "LEVELS",
    "MANDATORY_LEVELS",
    "MUST",
    "MUST_NOT",
    "REGISTRY",
    "ROLES",
    "SHOULD",
    "SHOULD_NOT",
    "CheckFunction",
    "Hit",
    "Rule",
    "rule",
]

class Hit(NamedTuple):
    """What a rule function yields: the offending message (or region, or the FIN/RST of a
    close that should not have happened) and what it did."""

    at: WireMessage | Undecoded | StreamEnd
    message: str
    related: WireMessage | None = None
    """The earlier message ``at`` contradicts, when the rule compares two messages."""


CheckFunction = Callable[["SessionView"], Iterable[Hit]]


@dataclass(frozen=True)
class Rule:
    """One normative sentence of the spec, as a check over a decoded session."""

    id: str
    level: str
    role: str
    """Who the rule binds: ``"client"`` or ``"server"`` (the party blamed)."""
    section: str
    """The spec heading the sentence sits under (markdown stripped)."""
    sentence: str
    """The words of the spec the rule enforces, verbatim."""
    summary: str
    """What the check looks at, in one line (the function's docstring)."""
    function: CheckFunction
    midstream: bool = False
    """True when the check needs nothing from the handshake, so it also runs on
    sessions captured after they started."""

    @property
    def mandatory(self) -> bool:
        return self.level in MANDATORY_LEVELS

    def check(self, view: SessionView) -> list[Finding]:
        """Run the check on one session; one finding per hit.  The check runs once per
        session: asked again (the session-level rules ask which mandatory rules a party
        broke), the rule answers from :attr:`SessionView.findings`."""
        found = view.findings.get(self.id)
        if found is None:
            found = view.findings[self.id] = self._run(view)
        return list(found)

    def _run(self, view: SessionView) -> list[Finding]:
        return [
            Finding(
                rule=self.id,
                level=self.level,
                role=self.role,
                section=self.section,
                sentence=self.sentence,
                session=view.session.index,
                frame=hit.at.frame,
                offset=hit.at.offset,
                direction=hit.at.direction,
                message=hit.message,
                related=None if hit.related is None else _pointer(hit.related),
            )
            for hit in self.function(view)
        ]


def _pointer(message: WireMessage) -> Pointer:
    return Pointer(
        session=message.session,
        frame=message.frame,
        offset=message.offset,
        direction=message.direction,
    )


REGISTRY: dict[str, Rule] = {}
"""Every rule by id, in definition order (module by module)."""


def rule(*, id: str, midstream: bool = False) -> Callable[[CheckFunction], CheckFunction]:
    """Register the decorated function as the check of rule ``id`` (cited in
    :mod:`harness.protocol.rules`); returns the function unchanged."""
    citation = cite(id)
    if id in REGISTRY:
        raise ValueError(f"rule {id} is defined twice")

    def register(function: CheckFunction) -> CheckFunction:
        doc = (function.__doc__ or "").strip()
        if not doc:
            raise ValueError(f"rule {id}: the check function needs a docstring")
        REGISTRY[id] = Rule(
            id=id,
            level=citation.level,
            role=citation.role,
            section=citation.section,
            sentence=citation.sentence,
            summary=" ".join(doc.split("\n\n")[0].split()),
            function=function,
            midstream=midstream,
        )
        return function

    return register
