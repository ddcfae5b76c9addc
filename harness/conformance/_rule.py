"""The rule type, the registry, and the ``@rule`` decorator that fills it.

A rule is one function with its citation next to it::

    @rule(id="server.option-reply-answers-option", level=MUST, role=SERVER,
          section="Fixed newstyle negotiation",
          sentence="the option as sent by the client to which this is a reply")
    def option_reply_answers_option(view: SessionView) -> Iterator[Hit]:
        \"\"\"An option reply names the option it answers.\"\"\"
        ...
        yield Hit(reply, "reply names NBD_OPT_LIST but answers NBD_OPT_GO")

The function reads a :class:`~harness.conformance._view.SessionView` (the
decoded session plus what every rule needs: option exchanges, request/reply
transactions, the negotiated transmission settings) and yields a :class:`Hit`
per breach; :meth:`Rule.check` turns hits into :class:`Finding` objects that
carry the citation.  ``sentence`` must appear verbatim (whitespace-normalised)
under ``section`` in ``proto.md`` or ``proto-extended-headers.md``: a test
holds every rule to that, so no citation is invented.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

from harness.conformance.findings import Finding
from harness.dissect.model import CLIENT, SERVER, Undecoded, WireMessage

if TYPE_CHECKING:
    from harness.conformance._view import SessionView

MUST = "MUST"
MUST_NOT = "MUST NOT"
SHOULD = "SHOULD"
SHOULD_NOT = "SHOULD NOT"
LEVELS = (MUST, MUST_NOT, SHOULD, SHOULD_NOT)
"""The spec's key words a rule can enforce, strongest first."""
MANDATORY_LEVELS = frozenset({MUST, MUST_NOT})
ROLES = (CLIENT, SERVER)

_ID = re.compile(r"^(client|server)\.[a-z0-9]+(-[a-z0-9]+)*$")


class Hit(NamedTuple):
    """What a rule function yields: the offending message (or region) and what it did."""

    at: WireMessage | Undecoded
    message: str


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
        """Run the check on one session; one finding per hit."""
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
            )
            for hit in self.function(view)
        ]


REGISTRY: dict[str, Rule] = {}
"""Every rule by id, in definition order (module by module)."""


def rule(
    *,
    id: str,
    level: str,
    role: str,
    section: str,
    sentence: str,
    midstream: bool = False,
) -> Callable[[CheckFunction], CheckFunction]:
    """Register the decorated function as a rule; returns the function unchanged."""
    if not _ID.match(id) or not id.startswith(role + "."):
        raise ValueError(f"rule id {id!r} must be '{role}.words-with-dashes'")
    if level not in LEVELS:
        raise ValueError(f"rule {id}: level {level!r} is not one of {LEVELS}")
    if role not in ROLES:
        raise ValueError(f"rule {id}: role {role!r} is not one of {ROLES}")
    if id in REGISTRY:
        raise ValueError(f"rule {id} is defined twice")

    def register(function: CheckFunction) -> CheckFunction:
        doc = (function.__doc__ or "").strip()
        if not doc:
            raise ValueError(f"rule {id}: the check function needs a docstring")
        REGISTRY[id] = Rule(
            id=id,
            level=level,
            role=role,
            section=section,
            sentence=sentence,
            summary=" ".join(doc.split("\n\n")[0].split()),
            function=function,
            midstream=midstream,
        )
        return function

    return register
