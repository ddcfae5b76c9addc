"""The protocol package's errors.

Two questions decide which error: *who* broke the protocol (the remote peer,
or our own side trying to send something the spec forbids at that point), and
*what* broke (bytes that cannot be decoded at all are a :class:`CodecError`).
Every error can carry the spec section and the sentence it enforces, so a
strict client failing on a bad server names the rule it applied.
"""

from __future__ import annotations

from .rules import CITATIONS


class ProtocolError(Exception):
    """Base of every protocol error.

    ``rule`` is the id of the broken rule (:mod:`.rules`, the ids the conformance
    rules report); ``section`` the heading of ``proto.md`` (or the extended-headers
    branch) it lives under, taken from the rule's citation when not given.
    """

    def __init__(self, message: str, *, section: str = "", rule: str = "") -> None:
        super().__init__(message)
        self.message = message
        cited = CITATIONS.get(rule)
        self.section = section or (cited.section if cited else "")
        self.rule = rule

    def __str__(self) -> str:
        cite = ""
        if self.rule or self.section:
            parts = [
                p
                for p in (self.rule, f'spec section "{self.section}"' if self.section else "")
                if p
            ]
            cite = f" [{'; '.join(parts)}]"
        return f"{self.message}{cite}"


class CodecError(ProtocolError):
    """Bytes that do not decode as the message expected at this point.

    Decoding arbitrary bytes raises this and nothing else.
    """


class RemoteProtocolError(ProtocolError):
    """The peer sent something the spec forbids at this point."""


class LocalProtocolError(ProtocolError):
    """We were about to send something the spec forbids at this point."""
