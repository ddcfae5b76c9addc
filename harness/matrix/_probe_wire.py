"""A bounded raw NBD session for the live probes of ``nbd-harness check``.

The probes must meet servers that break the protocol: ones that never answer,
drop the connection or send bytes that make no message.  So this session is
blocking and small: every wait has its own deadline, and what came back is
always one :class:`Reaction` (an answer, an error, the connection closed, no
answer within the wait, or bytes the codec refused), never an exception.  The
state machine is lenient on both sides (the probes break client rules on
purpose; the server's breaches are the conformance rules' job, on the capture).
"""

from __future__ import annotations

import socket
import struct
import time
from dataclasses import dataclass, field

from harness.address import Address
from harness.protocol import NEED_DATA, Connection, ProtocolError, Role
from harness.protocol import constants as c
from harness.protocol.messages import (
    ClientFlags,
    ConnectionClosed,
    Event,
    ExportNameReply,
    NewstyleGreeting,
    OldstyleGreeting,
    OptionReply,
    OptionRequest,
    ReplyChunk,
    Request,
    SimpleReply,
)

ANSWER = "answer"
"""The server answered (an option's final reply, a command's reply, a greeting)."""
ERROR = "error"
"""The server answered with an error (an ``NBD_REP_ERR_*`` or a nonzero NBD error)."""
CLOSED = "closed"
"""The server closed (or reset) the connection."""
SILENT = "no-answer"
"""Nothing within the wait: the probe gives up on this connection."""
GARBLED = "garbled"
"""Bytes that make no message where one was due."""
UNREACHABLE = "unreachable"
"""The connection could not be opened at all."""

_INFO_EXPORT_LENGTH = 12  # 16-bit type, 64-bit size, 16-bit flags


@dataclass
class Reaction:
    """What the server did about one message: ``kind`` (above), its messages, in words."""

    kind: str
    detail: str
    events: list[Event] = field(default_factory=list)

    @property
    def last(self) -> Event | None:
        return self.events[-1] if self.events else None


def describe_reply(reply: OptionReply) -> str:
    return c.name_of(c.Rep, reply.reply_type)


def describe_event(event: Event) -> str:
    """A server message in a few words (for details and findings)."""
    match event:
        case OptionReply():
            return describe_reply(event)
        case ExportNameReply(size=size, transmission_flags=flags):
            return f"export size {size}, transmission flags {flags:#06x}"
        case SimpleReply(error=error):
            return f"simple reply, error {c.name_of(c.Errno, error)}" if error \
                else "simple reply, success"
        case ReplyChunk(type=chunk_type):
            return f"{c.name_of(c.ReplyType, chunk_type)} chunk"
        case NewstyleGreeting(handshake_flags=flags):
            return f"newstyle greeting, handshake flags {flags:#06x}"
        case OldstyleGreeting(size=size):
            return f"oldstyle greeting, size {size}"
    return type(event).__name__


def go_data(name: str, infos: tuple[int, ...] = (c.Info.NAME, c.Info.BLOCK_SIZE)) -> bytes:
    """The data of ``NBD_OPT_GO``/``NBD_OPT_INFO``: the name and the information requests."""
    raw = name.encode()
    return (struct.pack(">I", len(raw)) + raw + struct.pack(">H", len(infos))
            + b"".join(struct.pack(">H", info) for info in infos))


def info_export(replies: list[Event]) -> tuple[int, int] | None:
    """(size, transmission flags) from the ``NBD_INFO_EXPORT`` among ``replies``."""
    for reply in replies:
        if isinstance(reply, OptionReply) and reply.reply_type == c.Rep.INFO \
                and len(reply.data) >= _INFO_EXPORT_LENGTH \
                and int.from_bytes(reply.data[:2], "big") == c.Info.EXPORT:
            size, flags = struct.unpack(">QH", reply.data[2:_INFO_EXPORT_LENGTH])
            return size, flags
    return None


class RawSession:
    """One connection to the server, every wait bounded by ``wait`` seconds.

    Open it with :meth:`open` (which never raises: a failure is a reaction of
    kind :data:`UNREACHABLE`); :attr:`index` is its 1-based place among the
    connections of one probe (the session number in the probe's capture).
    """

    def __init__(self, address: Address, wait: float, index: int) -> None:
        self.address = address
        self.wait = wait
        self.index = index
        self.conn = Connection(Role.CLIENT, strict_remote=False, strict_local=False)
        self.sock: socket.socket | None = None
        self.greeting: Event | None = None
        self._cookie = 0

    # --- opening ----------------------------------------------------------------------------

    def open(self) -> Reaction:
        """Connect and read the greeting."""
        family = socket.AF_UNIX if self.address.kind == "unix" else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.settimeout(self.wait)
        try:
            sock.connect(self.address.path if self.address.kind == "unix"
                         else (self.address.host, self.address.port))
        except OSError as exc:
            sock.close()
            return Reaction(UNREACHABLE, f"cannot connect to {self.address}: {exc}")
        self.sock = sock
        reaction = self.react("the greeting")
        if reaction.kind == ANSWER:
            self.greeting = reaction.last
        return reaction

    @property
    def handshake_flags(self) -> int:
        greeting = self.greeting
        return greeting.handshake_flags if isinstance(greeting, NewstyleGreeting) else 0

    def client_flags(self, extra: int = 0) -> None:
        """Send client flags: fixed newstyle (and no zeroes when offered), plus ``extra``."""
        flags = int(c.ClientFlag.C_FIXED_NEWSTYLE) | extra
        if self.handshake_flags & c.HandshakeFlag.NO_ZEROES:
            flags |= c.ClientFlag.C_NO_ZEROES
        self.send(ClientFlags(flags))

    # --- talking ----------------------------------------------------------------------------

    def send(self, event: Event) -> bool:
        """Send ``event`` (even one the spec forbids); False when the socket is gone."""
        if self.sock is None:
            return False
        try:
            self.sock.sendall(self.conn.send(event))
        except ProtocolError:
            from harness.protocol.codec import encode

            try:
                self.sock.sendall(encode(event))
            except OSError:
                return False
        except OSError:
            return False
        return True

    def next_event(self, deadline: float) -> Event | Reaction:
        """The next server message, or the reaction that ends the wait for it."""
        assert self.sock is not None
        while True:
            try:
                event = self.conn.next_event()
            except ProtocolError as exc:
                return Reaction(GARBLED, f"bytes that make no message: {exc}")
            if isinstance(event, ConnectionClosed):
                return Reaction(CLOSED, "the server closed the connection")
            if event is not NEED_DATA:
                return event  # type: ignore[return-value]
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return Reaction(SILENT, f"no answer within {self.wait:g} s")
            self.sock.settimeout(remaining)
            try:
                data = self.sock.recv(1 << 20)
            except TimeoutError:
                return Reaction(SILENT, f"no answer within {self.wait:g} s")
            except OSError as exc:  # a reset is a close, told as it happened
                return Reaction(CLOSED, f"the connection broke: {exc}")
            self.conn.receive_data(data)

    def react(self, what: str) -> Reaction:
        """Wait for one message (``what`` is what was waited for, for the detail)."""
        if self.sock is None:
            return Reaction(CLOSED, "no connection")
        outcome = self.next_event(time.monotonic() + self.wait)
        if isinstance(outcome, Reaction):
            outcome.detail = f"waiting for {what}: {outcome.detail}"
            return outcome
        return Reaction(_kind(outcome), describe_event(outcome), [outcome])

    def option(self, option: int, data: bytes = b"") -> Reaction:
        """Send an option and read its replies up to the final one (bounded per reply)."""
        name = c.name_of(c.Opt, option)
        if not self.send(OptionRequest(option, data)):
            return Reaction(CLOSED, f"the connection was gone before {name} could be sent")
        if option == c.Opt.EXPORT_NAME:
            return self.react(f"the answer to {name}")
        events: list[Event] = []
        while True:
            reaction = self.react(f"the answer to {name}")
            events += reaction.events
            reaction.events = events
            reply = reaction.last
            if reaction.kind not in (ANSWER, ERROR) or not isinstance(reply, OptionReply):
                return reaction
            if reply.reply_type == c.Rep.ACK or c.is_rep_error(reply.reply_type):
                reaction.detail = " + ".join(_compact(describe_event(e) for e in events))
                return reaction

    def request(self, command: int, offset: int = 0, length: int = 0, *, flags: int = 0,
                payload: bytes = b"") -> Reaction:
        """Send a request and read its (simple) reply."""
        self._cookie += 1
        name = c.name_of(c.Cmd, command)
        sent = self.send(Request(type=command, offset=offset, length=length, cookie=self._cookie,
                                 flags=flags, payload=payload))
        if not sent:
            return Reaction(CLOSED, f"the connection was gone before {name} could be sent")
        return self.react(f"the reply to {name}")

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def _kind(event: Event) -> str:
    if isinstance(event, OptionReply) and c.is_rep_error(event.reply_type):
        return ERROR
    if isinstance(event, SimpleReply) and event.error:
        return ERROR
    return ANSWER


def _compact(texts: object) -> list[str]:
    """Runs of the same words once, with a count: ``NBD_REP_SERVER x3``."""
    out: list[str] = []
    counts: list[int] = []
    for text in texts:  # type: ignore[attr-defined]
        if out and out[-1] == text:
            counts[-1] += 1
        else:
            out.append(text)
            counts.append(1)
    return [f"{text} x{count}" if count > 1 else text for text, count in zip(out, counts,
                                                                           strict=True)]


__all__ = ["ANSWER", "CLOSED", "ERROR", "GARBLED", "SILENT", "UNREACHABLE", "RawSession",
           "Reaction", "describe_event", "go_data", "info_export"]
