"""The hot path of transmission: well-formed reads and writes without message objects.

Every request is judged.  The state machine (:class:`harness.protocol.Connection`)
does it by decoding a :class:`~harness.protocol.messages.Request`, running every
rule of "Request message", "Command flags", "Size constraints" and "Request
types" over it and tracking it in flight; that costs tens of microseconds and
several objects per request.  For a connection in transmission the
negotiation is settled, so the rules a READ or WRITE header can break reduce to
a few integer comparisons, computed once from the same tables the state
machine uses (:data:`~harness.protocol.constants.CMD_ALLOWED_FLAGS`,
``FLAG_REQUIRES_TFLAG``, ``CMD_REQUIRES_TFLAG``, ``WRITE_COMMANDS``):

- the header style is the negotiated one (compact or extended magic);
- the command needs no transmission flag that was not advertised, and a write
  is not on a read-only export;
- every flag is documented for the command and its transmission flag was
  advertised; ``NBD_CMD_FLAG_PAYLOAD_LEN`` is set exactly when an extended
  write needs it;
- the length is not zero, within the maximum payload, the range inside the
  export, both aligned to the minimum block size.

A header that passes all of them breaks no rule, so :class:`FastPath` serves
it directly: the payload is received straight into a reused buffer, the data
copied once into the backend, and the reply packed into a reused buffer in
front of the data read.  Any other header (unknown command, stray flag,
misaligned, past the end, the wrong magic, any other command) goes to the
state machine unchanged and is answered as before.  ``tests/test_fastpath.py``
checks that "accepted here" implies "no violation from the state machine" over
every flag combination, and that the replies are byte for byte the ones the
:class:`~._commands.Executor` builds.
"""

from __future__ import annotations

import struct

from harness.protocol import constants as c
from harness.protocol.codec import encode
from harness.protocol.messages import Request
from harness.protocol.state import Negotiated

from ._commands import BACKEND_ERRORS, Executor
from .storage import Backend

_REQUEST = struct.Struct(">IHHQQI")
_EXT_REQUEST = struct.Struct(">IHHQQQ")
_SIMPLE_REPLY = struct.Struct(">IIQ")
_STRUCTURED_DATA = struct.Struct(">IHHQIQ")  # chunk header + the data chunk's offset
_EXTENDED_DATA = struct.Struct(">IHHQQQQ")
_EXTENDED_NONE = struct.Struct(">IHHQQQ")
REPLY_ROOM = _EXTENDED_DATA.size
"""Bytes reserved in front of the read data for the largest reply header."""

REUSE_LIMIT = 1 << 20
"""Largest payload or reply buffer a connection keeps between requests."""

READ, WRITE = int(c.Cmd.READ), int(c.Cmd.WRITE)
FUA = int(c.CmdFlag.FUA)
PAYLOAD_LEN = int(c.CmdFlag.PAYLOAD_LEN)
DONE = int(c.ReplyFlag.DONE)
OFFSET_DATA = int(c.ReplyType.OFFSET_DATA)
NONE = int(c.ReplyType.NONE)


def optional_flags(cmd: int, neg: Negotiated) -> int | None:
    """Command flags ``cmd`` may carry on this session without breaking a rule.

    ``None`` when the command itself may not be sent (its transmission flag was
    not advertised, or it writes to a read-only export).  ``PAYLOAD_LEN`` is
    left out: whether it must be set depends on the header style.
    """
    needed = c.CMD_REQUIRES_TFLAG.get(cmd)
    if needed is not None and not neg.has(needed):
        return None
    if cmd in c.WRITE_COMMANDS and neg.has(c.TransmissionFlag.READ_ONLY):
        return None
    allowed = int(c.CMD_ALLOWED_FLAGS.get(cmd, 0))
    for flag, tflag in c.FLAG_REQUIRES_TFLAG.items():
        if not neg.has(tflag):
            allowed &= ~int(flag)
    return allowed & ~PAYLOAD_LEN


class FastPath:
    """Judges and serves the READ and WRITE requests of one connection in transmission.

    ``max_request_payload`` is the largest write payload or read length the
    server accepts at all (the session ends above it).
    """

    def __init__(self, neg: Negotiated, backend: Backend, executor: Executor,
                 max_request_payload: int) -> None:
        self.backend = backend
        self.executor = executor
        self.extended = neg.extended_headers
        self.header = _EXT_REQUEST if self.extended else _REQUEST
        self.magic = c.EXTENDED_REQUEST_MAGIC if self.extended else c.REQUEST_MAGIC
        self.chunked = neg.structured_replies or neg.extended_headers
        assert neg.export_size is not None
        self.size = neg.export_size
        self.min_block = neg.min_block
        self.read_limit = min(neg.max_payload, max_request_payload)
        self.write_limit = min(neg.max_payload, max_request_payload)
        self.read_flags = optional_flags(READ, neg)
        self.write_flags = optional_flags(WRITE, neg)
        # "NBD_CMD_WRITE MUST use the flag NBD_CMD_FLAG_PAYLOAD_LEN" with extended headers,
        # and a compact request must not set it.
        self.write_required = PAYLOAD_LEN if self.extended else 0
        self._payload = bytearray(0)
        self._reply = bytearray(0)

    # --- judging ------------------------------------------------------------------------

    def accepts(self, flags: int, cmd: int, offset: int, length: int) -> bool:
        """True when the request breaks no rule and is a read or write this path serves."""
        if cmd == READ:
            optional, required, limit = self.read_flags, 0, self.read_limit
        elif cmd == WRITE:
            optional, required, limit = self.write_flags, self.write_required, self.write_limit
        else:
            return False
        if optional is None or flags & ~optional != required:
            return False
        if not 0 < length <= limit or offset + length > self.size:
            return False
        block = self.min_block
        return block <= 1 or not (offset % block or length % block)

    # --- buffers ------------------------------------------------------------------------

    def payload_buffer(self, length: int) -> memoryview:
        """A view of ``length`` bytes of the connection's reusable write buffer.

        Only buffers up to :data:`REUSE_LIMIT` are kept for the next request: a
        larger one is the server's in-flight budget's to bound, and is freed after use.
        """
        if length > REUSE_LIMIT:
            return memoryview(bytearray(length))
        if len(self._payload) < length:
            self._payload = bytearray(length)
        return memoryview(self._payload)[:length]

    def _reply_buffer(self, length: int) -> memoryview:
        if length > REUSE_LIMIT:
            return memoryview(bytearray(REPLY_ROOM + length))
        if len(self._reply) < REPLY_ROOM + length:
            self._reply = bytearray(REPLY_ROOM + length)
        return memoryview(self._reply)

    # --- serving ------------------------------------------------------------------------

    def write(self, flags: int, cookie: int, offset: int, data: memoryview) -> bytes:
        """Store an accepted write; the reply's bytes."""
        try:
            self.backend.write(offset, data, fua=bool(flags & FUA))
        except BACKEND_ERRORS as exc:
            request = self._request(WRITE, flags, cookie, offset, len(data), bytes(data))
            return _encode(self.executor.backend_failure(request, exc))
        if self.extended:
            return _EXTENDED_NONE.pack(c.EXTENDED_REPLY_MAGIC, DONE, NONE, cookie, offset, 0)
        return _SIMPLE_REPLY.pack(c.SIMPLE_REPLY_MAGIC, 0, cookie)

    def read(self, flags: int, cookie: int, offset: int, length: int) -> memoryview | bytes:
        """The reply to an accepted read: a view of the reusable reply buffer, or bytes.

        The view is valid until the next call; write it out before then.
        """
        if self.chunked and not self.backend.is_plain_data(offset, length):
            # Holes or known zeroes: the executor chooses the chunks (hole chunks, DF).
            request = self._request(READ, flags, cookie, offset, length)
            return _encode(self.executor.execute(request, []))
        buffer = self._reply_buffer(length)
        try:
            self.backend.read_into(offset, buffer[REPLY_ROOM : REPLY_ROOM + length])
        except BACKEND_ERRORS as exc:
            request = self._request(READ, flags, cookie, offset, length)
            return _encode(self.executor.backend_failure(request, exc))
        if not self.chunked:
            start = REPLY_ROOM - _SIMPLE_REPLY.size
            _SIMPLE_REPLY.pack_into(buffer, start, c.SIMPLE_REPLY_MAGIC, 0, cookie)
        elif self.extended:
            start = REPLY_ROOM - _EXTENDED_DATA.size
            _EXTENDED_DATA.pack_into(buffer, start, c.EXTENDED_REPLY_MAGIC, DONE, OFFSET_DATA,
                                     cookie, offset, 8 + length, offset)
        else:
            start = REPLY_ROOM - _STRUCTURED_DATA.size
            _STRUCTURED_DATA.pack_into(buffer, start, c.STRUCTURED_REPLY_MAGIC, DONE,
                                       OFFSET_DATA, cookie, 8 + length, offset)
        return buffer[start : REPLY_ROOM + length]

    def _request(self, cmd: int, flags: int, cookie: int, offset: int, length: int,
                 payload: bytes = b"") -> Request:
        """The message object, built only off the hot path (errors, reads with holes)."""
        return Request(type=cmd, offset=offset, length=length, cookie=cookie, flags=flags,
                       payload=payload, extended=self.extended)


def _encode(replies: list) -> bytes:
    return b"".join(encode(reply) for reply in replies)
