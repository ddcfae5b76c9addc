"""Finding the next message boundary after bytes that cannot be read.

When a direction's stream holds bytes that are not the message the session
expects (a wrong magic, garbage between replies, a reply longer or shorter than
its request allows), the decoder does not give up on the rest: it looks further
on for the first offset where a message of the expected kind plausibly starts.
A magic number alone is not enough (READ data and write payloads may hold any
bytes), so each candidate must also fit what the session knows: an option reply
names an option that awaits its reply, a transmission reply carries the cookie of
a request in flight, a request names a known command with known flags inside the
export.  Nothing here changes state; :mod:`harness.dissect._session` skips to the
offset found and says so in the undecoded region it leaves behind.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

from harness.dissect._bytes import StreamBytes
from harness.protocol import constants as c

_MAX_OPTION_DATA = 1 << 20
"""Longer option data is implausible: options carry names and queries (strings of at
most 4096 bytes each, a handful of them)."""
_MAX_CHUNK_PAYLOAD = (1 << 25) + 4096
"""A chunk's payload: at most the largest READ (32 MiB, the spec's largest maximum
payload) plus its offset; larger lengths are not a chunk header."""
_KNOWN_CMD_FLAGS = int(sum(c.CmdFlag))
_KNOWN_REPLY_FLAGS = int(sum(c.ReplyFlag))
_COMMANDS = frozenset(int(cmd) for cmd in c.Cmd)
_OPTIONS = frozenset(int(opt) for opt in c.Opt)
_REPLY_TYPES = frozenset(int(rep) for rep in c.Rep)
_CHUNK_TYPES = frozenset(int(kind) for kind in c.ReplyType)
_ERRNOS = frozenset(int(errno) for errno in c.Errno) | {0}


@dataclass(frozen=True)
class Expectation:
    """What may start the next message of one direction, as the session knows it."""

    server: bool
    """True for the server's direction (replies), False for the client's."""
    handshake: bool
    """True while options are haggled, False in transmission."""
    pending_options: frozenset[int] = frozenset()
    """Options awaiting a reply (server, handshake)."""
    cookies: frozenset[int] = frozenset()
    """Cookies of requests in flight (server, transmission)."""
    export_size: int | None = None
    """The export's size once known (client, transmission)."""


def next_boundary(
    data: StreamBytes | bytes, start: int, expect: Expectation
) -> tuple[int, str] | None:
    """The first offset at or after ``start`` where a message of the kind ``expect``
    allows plausibly begins, and what was found there; ``None`` when there is none."""
    if not isinstance(data, StreamBytes):
        data = StreamBytes.of(data)
    checks = _CHECKS[(expect.server, expect.handshake)]
    best: tuple[int, str] | None = None
    for magic, check in checks:
        position = data.find(magic, start)
        while position >= 0 and (best is None or position < best[0]):
            found = check(data, position, expect)
            if found is not None:
                best = (position, found)
                break
            position = data.find(magic, position + 1)
    return best


def _option_reply(data: StreamBytes, at: int, expect: Expectation) -> str | None:
    if len(data) < at + c.OPTION_REPLY_HEADER_LEN:
        return None
    _magic, option, reply, length = struct.unpack_from(">QIII", data.read(at, at + 20))
    if option not in expect.pending_options or length > _MAX_OPTION_DATA:
        return None
    if reply not in _REPLY_TYPES and not c.is_rep_error(reply):
        return None
    return f"an option reply to {c.name_of(c.Opt, option)}, which awaited one"


def _simple_reply(data: StreamBytes, at: int, expect: Expectation) -> str | None:
    if len(data) < at + c.SIMPLE_REPLY_LEN:
        return None
    _magic, error, cookie = struct.unpack_from(">IIQ", data.read(at, at + 16))
    if cookie not in expect.cookies or error not in _ERRNOS:
        return None
    return f"a simple reply with cookie {cookie:#x}, which a request in flight carries"


def _chunk(data: StreamBytes, at: int, expect: Expectation, extended: bool) -> str | None:
    header = c.EXTENDED_REPLY_HEADER_LEN if extended else c.STRUCTURED_REPLY_HEADER_LEN
    if len(data) < at + header:
        return None
    head = data.read(at, at + header)
    _magic, flags, kind, cookie = struct.unpack_from(">IHHQ", head)
    length_format = ">Q" if extended else ">I"
    (length,) = struct.unpack_from(length_format, head, header - struct.calcsize(length_format))
    if cookie not in expect.cookies or flags & ~_KNOWN_REPLY_FLAGS or length > _MAX_CHUNK_PAYLOAD:
        return None
    if kind not in _CHUNK_TYPES and not c.is_error_chunk(kind):
        return None
    what = "an extended reply chunk" if extended else "a structured reply chunk"
    return f"{what} with cookie {cookie:#x}, which a request in flight carries"


def _option(data: StreamBytes, at: int, expect: Expectation) -> str | None:
    if len(data) < at + c.OPTION_HEADER_LEN:
        return None
    _magic, option, length = struct.unpack_from(">QII", data.read(at, at + 16))
    if option not in _OPTIONS or length > _MAX_OPTION_DATA:
        return None
    return f"an option header ({c.name_of(c.Opt, option)})"


def _request(data: StreamBytes, at: int, expect: Expectation, extended: bool) -> str | None:
    header = c.EXTENDED_REQUEST_LEN if extended else c.REQUEST_LEN
    if len(data) < at + header:
        return None
    head = data.read(at, at + header)
    flags, kind, _cookie, offset = struct.unpack_from(">HHQQ", head, 4)
    length = struct.unpack_from(">Q" if extended else ">I", head, 24)[0]
    if kind not in _COMMANDS or flags & ~_KNOWN_CMD_FLAGS:
        return None
    if kind != c.Cmd.DISC and expect.export_size is not None and offset > expect.export_size:
        return None
    if offset >= 1 << 63 or (length >= 1 << 32 and not extended):
        return None
    return f"a request header ({c.name_of(c.Cmd, kind)}) at a plausible offset"


_Check = Callable[[StreamBytes, int, Expectation], str | None]


def _packed(fmt: str, value: int) -> bytes:
    return struct.pack(fmt, value)


_CHECKS: dict[tuple[bool, bool], list[tuple[bytes, _Check]]] = {
    (True, True): [(_packed(">Q", c.OPTION_REPLY_MAGIC), _option_reply)],
    (True, False): [
        (_packed(">I", c.SIMPLE_REPLY_MAGIC), _simple_reply),
        (_packed(">I", c.STRUCTURED_REPLY_MAGIC), lambda d, a, e: _chunk(d, a, e, False)),
        (_packed(">I", c.EXTENDED_REPLY_MAGIC), lambda d, a, e: _chunk(d, a, e, True)),
    ],
    (False, True): [(_packed(">Q", c.IHAVEOPT), _option)],
    (False, False): [
        (_packed(">I", c.REQUEST_MAGIC), lambda d, a, e: _request(d, a, e, False)),
        (_packed(">I", c.EXTENDED_REQUEST_MAGIC), lambda d, a, e: _request(d, a, e, True)),
    ],
}
