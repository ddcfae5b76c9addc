"""Rules for strings: export names, queries, context names, descriptions, error messages.

Section "Conventions": a string "MUST NOT contain `NUL` characters, SHOULD be no
longer than 256 bytes and MUST be no longer than 4096 bytes".  Which fields are
strings is what the dissector's layers declare as text.
"""

from __future__ import annotations

from collections.abc import Iterator

from harness.conformance._rule import Hit, rule
from harness.conformance._view import SessionView, reply_type, strings_of
from harness.dissect.model import CLIENT, SERVER, WireMessage
from harness.protocol import constants as c

_RECOMMENDED_STRING_LEN = 256


def _strings(
    view: SessionView, direction: str, *, chunks: bool
) -> Iterator[tuple[WireMessage, str, bytes]]:
    for message, name, value in view.strings_from(direction):
        if chunks or message.kind != "chunk":
            yield message, name, value


def _too_long(view: SessionView, direction: str, limit: int, chunks: bool) -> Iterator[Hit]:
    for message, name, value in _strings(view, direction, chunks=chunks):
        if len(value) > limit:
            yield Hit(message, f"{message.name}: {name} is {len(value)} bytes long")


def _with_nul(view: SessionView, direction: str) -> Iterator[Hit]:
    for message, name, value in _strings(view, direction, chunks=True):
        if b"\0" in value:
            yield Hit(message, f"{message.name}: {name} contains a NUL byte at {value.index(0)}")


@rule(id="client.string-max-length", midstream=True)
def client_string_max_length(view: SessionView) -> Iterator[Hit]:
    """Export names and queries the client sends are at most 4096 bytes."""
    yield from _too_long(view, CLIENT, c.MAX_STRING_LEN, chunks=False)


@rule(id="server.string-max-length", midstream=True)
def server_string_max_length(view: SessionView) -> Iterator[Hit]:
    """Names, descriptions, context names and option error messages are at most 4096 bytes
    (error chunk messages have their own rule)."""
    yield from _too_long(view, SERVER, c.MAX_STRING_LEN, chunks=False)


@rule(id="client.string-recommended-length", midstream=True)
def client_string_recommended_length(view: SessionView) -> Iterator[Hit]:
    """Export names and queries the client sends are at most 256 bytes (past 4096 is a
    MUST-level finding instead)."""
    for message, name, value in _strings(view, CLIENT, chunks=False):
        if _RECOMMENDED_STRING_LEN < len(value) <= c.MAX_STRING_LEN:
            yield Hit(message, f"{message.name}: {name} is {len(value)} bytes long")


@rule(id="server.string-recommended-length", midstream=True)
def server_string_recommended_length(view: SessionView) -> Iterator[Hit]:
    """Strings the server sends are at most 256 bytes (past 4096 is a MUST-level finding)."""
    for message, name, value in _strings(view, SERVER, chunks=True):
        if _RECOMMENDED_STRING_LEN < len(value) <= c.MAX_STRING_LEN:
            yield Hit(message, f"{message.name}: {name} is {len(value)} bytes long")


@rule(id="client.string-no-nul", midstream=True)
def client_string_no_nul(view: SessionView) -> Iterator[Hit]:
    """Export names and queries contain no NUL byte."""
    yield from _with_nul(view, CLIENT)


@rule(id="server.string-no-nul", midstream=True)
def server_string_no_nul(view: SessionView) -> Iterator[Hit]:
    """Strings the server sends contain no NUL byte."""
    yield from _with_nul(view, SERVER)


def _not_utf8(view: SessionView, direction: str, skip: int | None = None) -> Iterator[Hit]:
    """Strings from ``direction`` that are not UTF-8 (but those of option replies of type
    ``skip``, which have their own rule)."""
    for message, name, value in _strings(view, direction, chunks=True):
        if skip is not None and message.kind == "option-reply" and reply_type(message) == skip:
            continue
        try:
            value.decode("utf-8")
        except UnicodeDecodeError as exc:
            yield Hit(message, f"{name} is not valid UTF-8 ({exc.reason} at byte {exc.start})")


@rule(id="client.string-utf8", midstream=True)
def client_string_utf8(view: SessionView) -> Iterator[Hit]:
    """Export names and queries the client sends are UTF-8."""
    yield from _not_utf8(view, CLIENT)


@rule(id="server.string-utf8", midstream=True)
def server_string_utf8(view: SessionView) -> Iterator[Hit]:
    """Names, descriptions and error messages the server sends are UTF-8 (metadata context
    names have their own rule)."""
    yield from _not_utf8(view, SERVER, skip=c.Rep.META_CONTEXT)


@rule(id="server.meta-context-name-utf8", midstream=True)
def meta_context_name_utf8(view: SessionView) -> Iterator[Hit]:
    """NBD_REP_META_CONTEXT names are valid UTF-8."""
    for message in view.messages_of("option-reply"):
        if message.direction != SERVER or reply_type(message) != c.Rep.META_CONTEXT:
            continue
        for name, value in strings_of(message):
            try:
                value.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield Hit(message, f"{name} is not valid UTF-8 ({exc.reason} at byte {exc.start})")
