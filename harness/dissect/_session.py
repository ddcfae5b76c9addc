"""Stateful NBD decoding of one session: two reassembled streams in, messages out.

Both directions are read together, in causal order: at each step the next
complete message of each direction is cut (framed) with what the session has
negotiated so far, and the one that came first is decoded and applied.  A
client message counts from the frame of its first byte, a server message from
the frame that completed it: a server answers only what it has started to
receive (it may answer before the rest arrives, as nbdkit refuses an option
with NBD_REP_ERR_TLS_REQD on seeing its header), and a client reacts only to
what it has received whole.  So a reply never comes before what it answers,
and the client's next option or request never before the reply it waited for.

Cutting depends on state (a simple reply carries data only after a READ; the
export-name reply has 124 zeroes unless NO_ZEROES), and state changes only by
applying messages, so this is the order in which the peers themselves learned
things.  A direction that cannot be cut now (bad magic, or client bytes that
only make sense once the server's pending reply is applied) waits while the
other side can progress.  Bytes with a wrong magic are skipped up to the next
plausible message boundary (:mod:`harness.dissect._resync`), left behind as an
undecoded region that says where decoding resumed and why; a message its sender
cut short (the next plausible message starts inside it, or the sender closed
first) is decoded as far as it goes and marked ``missing``.  When nothing can
move any more, what is left is reported as undecoded with its reason.  Nothing
here raises on bad input.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

from scapy.packet import Packet

from harness.dissect import layers as L
from harness.dissect._bytes import StreamBytes
from harness.dissect._fast import Fields, fast_fields
from harness.dissect._resync import Expectation, next_boundary
from harness.dissect.contexts import describe_status
from harness.dissect.model import (
    CLIENT,
    DIRECTIONS,
    KINDS,
    SERVER,
    Session,
    Undecoded,
    WireMessage,
)
from harness.dissect.stream import DirectionStream
from harness.protocol import constants as c
from harness.protocol.messages import InfoBlockSize

_OK, _NEED, _BAD, _BLOCKED, _END = range(5)

_HANDLERS = {kind: "_on_" + kind.replace("-", "_") for kind in KINDS}
"""The decoder's method that applies each kind of message."""

# Per-direction reading positions (finer than Session.phase: the client
# is in transmission as soon as it sent EXPORT_NAME, the server once it replied).
_AWAIT_GREETING = "await-greeting"
_GREETING = "greeting"
_FLAGS = "client-flags"
_HANDSHAKE = "handshake"
_TRANSMISSION = "transmission"
_TLS = "tls"
_ABORTED = "aborted"


@dataclass(slots=True)
class _Cut:
    """The next message of a direction, or why there is none yet."""

    status: int
    kind: str = ""
    length: int = 0  # _OK: message length; _NEED: bytes needed
    layer: type[Packet] | None = None
    reason: str = ""
    end_frame: int = 0
    # _BAD: what should have started here, the magics valid there and what was found
    expected: str | None = None
    expected_magic: tuple[int, ...] = ()
    found_magic: int | None = None
    # _NEED: the message kind its magic already tells (empty when unknown yet), so that a
    # message its sender cut short can still be decoded as far as it goes
    message: str = ""
    # _OK: bytes the message promised beyond ``length`` (a message cut short)
    missing: int = 0


def _bad(expected: str, magics: tuple[int, ...], found: int, reason: str) -> _Cut:
    return _Cut(_BAD, reason=reason, expected=expected, expected_magic=magics, found_magic=found)


_REQUEST_MAGICS = {c.REQUEST_MAGIC, c.EXTENDED_REQUEST_MAGIC}
_RESYNC_EXPECTED = ("option", "option-reply", "request", "reply")
"""Messages after which the decoder looks for the next boundary when the magic is wrong."""


def _data_follows(data: StreamBytes, at: int, length: int) -> bool:
    """An extended WRITE without ``NBD_CMD_FLAG_PAYLOAD_LEN`` is followed by its data anyway.

    By the spec its length is then an effect length and no payload follows, but
    qemu's client (seen in 11.1) sends the data all the same and qemu-nbd reads
    it.  Judged by what the bytes say: no request starts right after the
    header, and the data fills the stream up to its end or to the next request.
    """
    end = at + c.EXTENDED_REQUEST_LEN
    after = end + length
    if length == 0 or after > len(data) or _magic4(data, end) in _REQUEST_MAGICS:
        return False
    return after == len(data) or _magic4(data, after) in _REQUEST_MAGICS


def _magic4(data: StreamBytes, at: int) -> int | None:
    return _U32.unpack(data.read(at, at + 4))[0] if len(data) >= at + 4 else None


_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_PAYLOAD_LEN = int(c.CmdFlag.PAYLOAD_LEN)  # plain ints: flag arithmetic on enums is slow
_DONE = int(c.ReplyFlag.DONE)
_CHUNK_HEADERS: dict[int, tuple[type[Packet], int, struct.Struct, str]] = {
    c.STRUCTURED_REPLY_MAGIC: (
        L.NBDStructuredReply, c.STRUCTURED_REPLY_HEADER_LEN, _U32, "structured reply"
    ),
    c.EXTENDED_REPLY_MAGIC: (
        L.NBDExtendedReply, c.EXTENDED_REPLY_HEADER_LEN, _U64, "extended reply"
    ),
}
"""Chunk header by magic: its layer, length, length field (the header's last) and name."""


def _ok(kind: str, length: int, layer: type[Packet], available: int, what: str = "") -> _Cut:
    if available < length:
        return _need(kind, layer, what or kind, length)
    return _Cut(_OK, kind, length, layer)


def _need(kind: str, layer: type[Packet], what: str, length: int) -> _Cut:
    """``length`` bytes are needed for a message whose magic says it is a ``kind``."""
    return _Cut(_NEED, what, length, layer, message=kind)


class SessionDecoder:
    """Decodes one session into ``session`` (messages, undecoded, state, accounting)."""

    def __init__(self, session: Session, streams: dict[str, DirectionStream]) -> None:
        self.session = session
        self.state = session.state
        self.streams = streams
        self.cursor = dict.fromkeys(DIRECTIONS, 0)
        self.reading = {CLIENT: _AWAIT_GREETING, SERVER: _GREETING}
        self.finished = dict.fromkeys(DIRECTIONS, False)
        self.pending_options: list[WireMessage] = []
        self.export_name_option: WireMessage | None = None
        self.export_info: dict[str, Any] = {}
        self.in_flight: dict[int, list[WireMessage]] = {}
        self._failed_skips: dict[str, tuple[int, Expectation]] = {}
        self._cuts: dict[str, tuple[tuple[int, str, int], _Cut]] = {}
        self._client_messages = 0
        """Client messages applied so far (the server's cut depends on them)."""
        for direction in DIRECTIONS:
            session.bytes_total[direction] = streams[direction].total

    # --- driving ----------------------------------------------------------------

    def start_midstream(self) -> None:
        """Guess where each side is when the capture joined after the greeting."""
        server = self.streams[SERVER].data
        client = self.streams[CLIENT].data
        server_magic4 = _magic4(server, 0)
        client_magic4 = _magic4(client, 0)
        server_magic8 = _U64.unpack(server.read(0, 8))[0] if len(server) >= 8 else None
        client_magic8 = _U64.unpack(client.read(0, 8))[0] if len(client) >= 8 else None
        in_handshake = server_magic8 == c.OPTION_REPLY_MAGIC or client_magic8 == c.IHAVEOPT
        phase = _HANDSHAKE if in_handshake else _TRANSMISSION
        self.reading = {CLIENT: phase, SERVER: phase}
        self.session.phase = phase
        self.state.structured_replies = server_magic4 == c.STRUCTURED_REPLY_MAGIC
        self.state.extended_headers = (
            server_magic4 == c.EXTENDED_REPLY_MAGIC or client_magic4 == c.EXTENDED_REQUEST_MAGIC
        )
        self.session.notes.append(
            f"joined mid-stream in the {phase} phase: the handshake was not captured, "
            "so negotiated state is guessed from the first messages"
        )

    def run(self) -> Session:
        """Decode both directions to the end; return the filled-in session."""
        while True:
            cuts = {d: self._cached_cut(d) for d in DIRECTIONS if not self.finished[d]}
            ready = [
                (self._causal_frame(d, cut), self._tie_order(d), d)
                for d, cut in cuts.items()
                if cut.status == _OK
            ]
            if ready:
                first = min(ready)
                if self._skip_first(cuts, first[0]):
                    continue
                self._apply(first[2], cuts[first[2]])
                continue
            if self._recover(cuts):
                continue
            for direction, cut in cuts.items():
                self._stop(direction, cut)
            break
        for direction in DIRECTIONS:
            self._report_gaps(direction)
        return self.session

    def _causal_frame(self, direction: str, cut: _Cut) -> int:
        """When a message counts as sent: the client's from its first byte, the
        server's once complete (see the module docstring)."""
        if direction == CLIENT:
            at = self.cursor[CLIENT]
            return self.streams[CLIENT].starting_frame(at, at + cut.length)
        return cut.end_frame

    def _tie_order(self, direction: str) -> int:
        """Who goes first when both messages complete in the same frame.

        Only streams given without frame numbers tie.  NBD is causal: during
        option haggling a pending option's replies come before the client's
        next option; otherwise the client's request comes before its reply.
        """
        server_first = self.reading[SERVER] == _HANDSHAKE and bool(
            self.pending_options or self.export_name_option is not None
        )
        return int((direction == SERVER) != server_first)

    # --- cutting ----------------------------------------------------------------

    def _cached_cut(self, direction: str) -> _Cut:
        """:meth:`_cut`, cut again only when what it depends on changed: the direction's
        position and reading state, and for the server what the client sent since (its
        requests frame READ replies, its flags and EXPORT_NAME frame the handshake's end).
        Each step applies one message, so this halves the cutting."""
        key = (
            self.cursor[direction],
            self.reading[direction],
            self._client_messages if direction == SERVER else 0,
        )
        cached = self._cuts.get(direction)
        if cached is not None and cached[0] == key:
            return cached[1]
        cut = self._cut(direction)
        self._cuts[direction] = (key, cut)
        return cut

    def _cut(self, direction: str) -> _Cut:
        data = self.streams[direction].data
        position = self.cursor[direction]
        available = len(data) - position
        if available == 0:
            return _Cut(_END)
        reading = self.reading[direction]
        if reading == _TLS:
            cut = _Cut(_OK, "tls", available, L.NBDOpaque)
        elif direction == SERVER:
            cut = self._cut_server(reading, data, position, available)
        else:
            cut = self._cut_client(reading, data, position, available)
        if cut.status == _OK:
            cut.end_frame = self.streams[direction].completing_frame(
                position, position + cut.length
            )
        return cut

    def _cut_server(self, reading: str, data: StreamBytes, at: int, available: int) -> _Cut:
        if reading == _GREETING:
            if available < 16:
                return _Cut(_NEED, "greeting", 16)
            magic, second = struct.unpack(">QQ", data.read(at, at + 16))
            if magic != c.NBDMAGIC:
                return _bad(
                    "greeting",
                    (c.NBDMAGIC,),
                    magic,
                    f"expected the NBDMAGIC greeting, found {magic:#018x}",
                )
            if second == c.CLISERV_MAGIC:
                return _ok(
                    "oldstyle-greeting", c.OLDSTYLE_GREETING_LEN, L.NBDOldstyleGreeting, available
                )
            if second == c.IHAVEOPT:
                return _ok(
                    "newstyle-greeting", c.NEWSTYLE_GREETING_LEN, L.NBDNewstyleGreeting, available
                )
            return _bad(
                "greeting-magic",
                (c.CLISERV_MAGIC, c.IHAVEOPT),
                second,
                f"NBDMAGIC followed by an unknown magic {second:#018x}",
            )
        if reading == _HANDSHAKE:
            if self.export_name_option is not None and not self._looks_like_option_reply(
                data, at, available
            ):
                zeroes = 0 if self.state.no_zeroes else c.EXPORT_NAME_REPLY_ZEROES
                return _ok("export-name-reply", 10 + zeroes, L.NBDExportNameReply, available)
            if available < 8:
                return _Cut(_NEED, "option reply header", c.OPTION_REPLY_HEADER_LEN)
            (magic,) = _U64.unpack(data.read(at, at + 8))
            if magic != c.OPTION_REPLY_MAGIC:
                return _bad(
                    "option-reply",
                    (c.OPTION_REPLY_MAGIC,),
                    magic,
                    f"expected an option reply magic, found {magic:#018x}",
                )
            if available < c.OPTION_REPLY_HEADER_LEN:
                return _need(
                    "option-reply",
                    L.NBDOptionReply,
                    "option reply header",
                    c.OPTION_REPLY_HEADER_LEN,
                )
            (length,) = _U32.unpack(data.read(at + 16, at + 20))
            return _ok(
                "option-reply", c.OPTION_REPLY_HEADER_LEN + length, L.NBDOptionReply, available
            )
        if reading == _TRANSMISSION:
            return self._cut_reply(data, at, available)
        return _Cut(_BAD, reason=f"server data after the session was {reading}")

    def _looks_like_option_reply(self, data: StreamBytes, at: int, available: int) -> bool:
        """An option reply to EXPORT_NAME (not valid, but framed as what it is)."""
        if available < 12:
            return False
        magic, option = struct.unpack(">QI", data.read(at, at + 12))
        return magic == c.OPTION_REPLY_MAGIC and option == c.Opt.EXPORT_NAME

    def _cut_reply(self, data: StreamBytes, at: int, available: int) -> _Cut:
        if available < 4:
            return _Cut(_NEED, "reply magic", 4)
        head = data.read(at, at + c.EXTENDED_REPLY_HEADER_LEN)  # the longest reply header
        (magic,) = _U32.unpack_from(head)
        if magic == c.SIMPLE_REPLY_MAGIC:
            if available < c.SIMPLE_REPLY_LEN:
                return _need("simple-reply", L.NBDSimpleReply, "simple reply", c.SIMPLE_REPLY_LEN)
            error, cookie = struct.unpack_from(">IQ", head, 4)
            request = self._request_for(cookie)
            read_length = 0
            if error == 0 and request is not None and request.fields.get("type") == c.Cmd.READ:
                read_length = request.fields.get("length", 0)
            return _ok(
                "simple-reply",
                c.SIMPLE_REPLY_LEN + read_length,
                L.NBDSimpleReply,
                available,
                "simple reply with READ data",
            )
        chunk = _CHUNK_HEADERS.get(magic)
        if chunk is not None:
            layer, header, length_field, what = chunk
            if available < header:
                return _need("chunk", layer, f"{what} header", header)
            (length,) = length_field.unpack_from(head, header - length_field.size)
            return _ok("chunk", header + length, layer, available, f"{what} chunk")
        return _bad(
            "reply",
            (c.SIMPLE_REPLY_MAGIC, c.STRUCTURED_REPLY_MAGIC, c.EXTENDED_REPLY_MAGIC),
            magic,
            f"expected a reply magic, found {magic:#010x}",
        )

    def _cut_client(self, reading: str, data: StreamBytes, at: int, available: int) -> _Cut:
        if reading == _AWAIT_GREETING:
            return _Cut(_BLOCKED, reason="client data, but no server greeting was decoded")
        if reading == _FLAGS:
            return _ok("client-flags", 4, L.NBDClientFlags, available)
        if reading == _HANDSHAKE:
            if available < 8:
                return _Cut(_NEED, "option header", c.OPTION_HEADER_LEN)
            (magic,) = _U64.unpack(data.read(at, at + 8))
            if magic != c.IHAVEOPT:
                return _bad(
                    "option",
                    (c.IHAVEOPT,),
                    magic,
                    f"expected an option (IHAVEOPT), found {magic:#018x}",
                )
            if available < c.OPTION_HEADER_LEN:
                return _need("option", L.NBDOption, "option header", c.OPTION_HEADER_LEN)
            (length,) = _U32.unpack(data.read(at + 12, at + 16))
            return _ok("option", c.OPTION_HEADER_LEN + length, L.NBDOption, available)
        if reading == _TRANSMISSION:
            return self._cut_request(data, at, available)
        return _Cut(_BAD, reason=f"client data after the session was {reading}")

    def _cut_request(self, data: StreamBytes, at: int, available: int) -> _Cut:
        if available < 4:
            return _Cut(_NEED, "request magic", 4)
        head = data.read(at, at + c.EXTENDED_REQUEST_LEN)  # the longest request header
        (magic,) = _U32.unpack_from(head)
        if magic == c.REQUEST_MAGIC:
            if available < c.REQUEST_LEN:
                return _need("request", L.NBDRequest, "request header", c.REQUEST_LEN)
            _flags, kind, _cookie, _offset, length = struct.unpack_from(">HHQQI", head, 4)
            payload = length if kind == c.Cmd.WRITE else 0
            return _ok(
                "request", c.REQUEST_LEN + payload, L.NBDRequest, available, "request with its data"
            )
        if magic == c.EXTENDED_REQUEST_MAGIC:
            if available < c.EXTENDED_REQUEST_LEN:
                return _need(
                    "request",
                    L.NBDExtendedRequest,
                    "extended request header",
                    c.EXTENDED_REQUEST_LEN,
                )
            flags, kind, _cookie, _offset, length = struct.unpack_from(">HHQQQ", head, 4)
            payload = length if flags & _PAYLOAD_LEN else 0
            layer: type[Packet] = L.NBDExtendedRequest
            if kind == c.Cmd.WRITE and not payload and _data_follows(data, at, length):
                payload, layer = length, L.NBDExtendedWriteUnflagged
            return _ok(
                "request",
                c.EXTENDED_REQUEST_LEN + payload,
                layer,
                available,
                "extended request with its payload",
            )
        return _bad(
            "request",
            (c.REQUEST_MAGIC, c.EXTENDED_REQUEST_MAGIC),
            magic,
            f"expected a request magic, found {magic:#010x}",
        )

    # --- applying ---------------------------------------------------------------

    def _apply(self, direction: str, cut: _Cut) -> None:
        data = self.streams[direction].data
        at = self.cursor[direction]
        assert cut.layer is not None
        notes: list[str] = []
        packet: Packet | None = None
        # Requests, replies and data chunks are read straight from their headers, their
        # bulk data left in the capture; scapy dissects the rest (and these on demand).
        fields = None if cut.missing else fast_fields(cut.layer, data, at, cut.length)
        if fields is None:
            packet, notes = L.dissect(cut.layer, data.read(at, at + cut.length), cut.missing > 0)
            fields = L.fields_of(packet)
        if cut.missing:
            notes.append(cut.reason)
        handler = getattr(self, _HANDLERS[cut.kind])
        handler(direction, cut, packet, fields, notes)

    def _emit(
        self,
        direction: str,
        cut: _Cut,
        packet: Packet | None,
        fields: dict[str, Any],
        notes: list[str],
        name: str,
        request: WireMessage | None = None,
        option: WireMessage | None = None,
    ) -> WireMessage:
        stream = self.streams[direction]
        at = self.cursor[direction]
        frame = stream.frame_at(at)
        message = WireMessage(
            session=self.session.index,
            direction=direction,
            kind=cut.kind,
            name=name,
            frame=frame,
            last_frame=cut.end_frame,
            offset=at,
            length=cut.length,
            time=stream.time_of(frame),
            layer=cut.layer or L.NBDOpaque,
            raw=stream.data.data(at, at + cut.length),
            dissected=packet,
            request=request,
            option=option,
            fields=fields,
            notes=tuple(notes),
            missing=cut.missing,
        )
        self.session.messages.append(message)
        self.cursor[direction] = at + cut.length
        if direction == CLIENT:
            self._client_messages += 1
        if cut.kind == "tls":
            self.session.bytes_tls[direction] += cut.length
        else:
            self.session.bytes_decoded[direction] += cut.length
        return message

    def _on_oldstyle_greeting(
        self, direction: str, cut: _Cut, packet: Packet | None, fields: Fields, notes: list[str]
    ) -> None:
        self._emit(direction, cut, packet, fields, notes, "oldstyle greeting")
        self.state.style = "oldstyle"
        self._settle_export(fields)
        self._enter(_TRANSMISSION)

    def _on_newstyle_greeting(
        self, direction: str, cut: _Cut, packet: Packet | None, fields: Fields, notes: list[str]
    ) -> None:
        self._emit(direction, cut, packet, fields, notes, "newstyle greeting")
        self.state.style = "newstyle"
        self.state.handshake_flags = fields.get("handshake_flags", 0)
        self.session.phase = "handshake"
        self.reading[SERVER] = _HANDSHAKE
        self.reading[CLIENT] = _FLAGS

    def _on_client_flags(
        self, direction: str, cut: _Cut, packet: Packet | None, fields: Fields, notes: list[str]
    ) -> None:
        self._emit(direction, cut, packet, fields, notes, "client flags")
        flags = fields.get("client_flags", 0)
        self.state.client_flags = flags
        if flags & c.ClientFlag.C_FIXED_NEWSTYLE and (
            self.state.handshake_flags & c.HandshakeFlag.FIXED_NEWSTYLE
        ):
            self.state.style = "fixed-newstyle"
        # The server honours what the client asked (a server that did not offer
        # NO_ZEROES must close instead), so the client's flag (state.no_zeroes)
        # decides the framing.
        self.reading[CLIENT] = _HANDSHAKE

    def _on_option(
        self, direction: str, cut: _Cut, packet: Packet | None, fields: Fields, notes: list[str]
    ) -> None:
        option = fields.get("option", -1)
        if self.pending_options:
            waiting = self.pending_options[0].name
            notes.append(f"sent while {waiting} still awaited its final reply")
        message = self._emit(direction, cut, packet, fields, notes, c.name_of(c.Opt, option))
        if option == c.Opt.EXPORT_NAME:
            self.export_name_option = message
            self.state.export_name = fields.get("export_name")
            self.reading[CLIENT] = _TRANSMISSION  # no reply on failure: the server hangs up
            return
        self.pending_options.append(message)
        if option in (c.Opt.GO, c.Opt.INFO):
            self.export_info = {}
        elif option == c.Opt.SET_META_CONTEXT:
            # "Issuing this command replaces all previously-set metadata contexts"
            self.state.meta_contexts = {}
        elif option == c.Opt.ABORT:
            self.reading[CLIENT] = _ABORTED
            self.session.phase = "aborted"

    def _on_option_reply(
        self, direction: str, cut: _Cut, packet: Packet | None, fields: Fields, notes: list[str]
    ) -> None:
        reply_type = fields.get("reply_type", 0)
        if fields.get("option") == c.Opt.EXPORT_NAME and self.export_name_option is not None:
            answered: WireMessage | None = self.export_name_option
        else:
            answered = self._match_option(fields.get("option", -1), notes)
        self._emit(
            direction, cut, packet, fields, notes, c.name_of(c.Rep, reply_type), option=answered
        )
        final = reply_type == c.Rep.ACK or c.is_rep_error(reply_type)
        if final and answered in self.pending_options:
            self.pending_options.remove(answered)
        option = fields.get("option")
        if answered is not None and answered is self.export_name_option and final:
            # NBD_OPT_EXPORT_NAME refused with an option reply (which it may not get): the
            # client did not enter transmission, it is still negotiating.
            self.export_name_option = None
            self.reading[CLIENT] = _HANDSHAKE
            return
        if answered is not None and answered.fields.get("option") != option:
            return  # a reply naming another option than it answers changes nothing
        if reply_type == c.Rep.META_CONTEXT and option == c.Opt.SET_META_CONTEXT:
            self.state.meta_contexts[fields.get("context_id", 0)] = fields.get("context_name", "")
        elif reply_type == c.Rep.INFO and option in (c.Opt.GO, c.Opt.INFO):
            self._note_info(fields)
        elif reply_type == c.Rep.ACK:
            self._on_ack(option, answered)
        elif c.is_rep_error(reply_type) and option == c.Opt.SET_META_CONTEXT:
            self.state.meta_contexts = {}

    def _note_info(self, fields: dict[str, Any]) -> None:
        info_type = fields.get("info_type")
        if info_type == c.Info.EXPORT:
            self.export_info["size"] = fields.get("size")
            self.export_info["transmission_flags"] = fields.get("transmission_flags")
        elif info_type == c.Info.BLOCK_SIZE:
            sizes = [
                fields.get(name)
                for name in ("minimum_block_size", "preferred_block_size", "maximum_payload_size")
            ]
            if None not in sizes:
                self.export_info["block_size"] = InfoBlockSize(*sizes)

    def _settle_export(self, fields: dict[str, Any]) -> None:
        """Size and transmission flags, as the oldstyle greeting, the export-name
        reply or ``NBD_INFO_EXPORT`` gave them (a size of None: never given)."""
        self.state.export_size = fields.get("size")
        self.state.transmission_flags = fields.get("transmission_flags") or 0

    def _on_ack(self, option: int | None, answered: WireMessage | None) -> None:
        if option == c.Opt.STRUCTURED_REPLY:
            self.state.structured_replies = True
        elif option == c.Opt.EXTENDED_HEADERS:
            self.state.extended_headers = True
        elif option == c.Opt.STARTTLS:
            # Nothing negotiated before STARTTLS survives it, and nothing after
            # it can be read.
            self.state.tls = True
            self.state.structured_replies = False
            self.state.extended_headers = False
            self.state.meta_contexts = {}
            self.reading[CLIENT] = self.reading[SERVER] = _TLS
            self.session.phase = "tls"
        elif option == c.Opt.GO:
            if answered is not None:
                self.state.export_name = answered.fields.get("export_name")
            self._settle_export(self.export_info)
            self.state.block_size = self.export_info.get("block_size")
            self._enter(_TRANSMISSION)
        elif option == c.Opt.ABORT:
            self.reading[SERVER] = _ABORTED

    def _match_option(self, option: int, notes: list[str]) -> WireMessage | None:
        """The pending option this reply answers (replies come in option order)."""
        if not self.pending_options:
            notes.append("no option was awaiting a reply")
            return None
        head = self.pending_options[0]
        if head.fields.get("option") == option:
            return head
        for pending in self.pending_options[1:]:
            if pending.fields.get("option") == option:
                notes.append(f"answers {pending.name} before the earlier {head.name}")
                return pending
        notes.append(f"names {c.name_of(c.Opt, option)} but {head.name} awaits the reply")
        return head

    def _on_export_name_reply(
        self, direction: str, cut: _Cut, packet: Packet | None, fields: Fields, notes: list[str]
    ) -> None:
        self._emit(
            direction,
            cut,
            packet,
            fields,
            notes,
            "export name reply",
            option=self.export_name_option,
        )
        self.export_name_option = None
        self._settle_export(fields)
        self._enter(_TRANSMISSION)

    def _on_request(
        self, direction: str, cut: _Cut, packet: Packet | None, fields: Fields, notes: list[str]
    ) -> None:
        kind = fields.get("type", -1)
        cookie = fields.get("cookie", 0)
        extended = fields.get("magic") == c.EXTENDED_REQUEST_MAGIC
        if extended != self.state.extended_headers:
            notes.append(
                ("extended" if extended else "compact")
                + " request, framed by its magic although extended headers were "
                + ("not " if not self.state.extended_headers else "")
                + "negotiated"
            )
        earlier = self.in_flight.get(cookie)
        if earlier:
            notes.append(
                f"cookie {cookie:#x} is still in flight (request in frame {earlier[0].frame})"
            )
        if "context_ids" in fields:
            names = self.state.meta_contexts
            fields["context_names"] = [names.get(i) for i in fields["context_ids"]]
        if cut.layer is L.NBDExtendedWriteUnflagged and (
            packet is None or isinstance(packet, L.NBDExtendedWriteUnflagged)
        ):
            notes.append(
                "NBD_CMD_WRITE without NBD_CMD_FLAG_PAYLOAD_LEN, yet its data follows "
                "(as qemu's client sends it): read as its payload"
            )
        elif kind == c.Cmd.BLOCK_STATUS and extended and "data" in fields:
            notes.append(
                f"block status payload of {len(fields['data'])} bytes is not an 8-byte effect "
                "length and 4-byte context ids: shown as raw data"
            )
        message = self._emit(direction, cut, packet, fields, notes, c.name_of(c.Cmd, kind))
        if kind != c.Cmd.DISC:  # NBD_CMD_DISC has no reply
            self.in_flight.setdefault(cookie, []).append(message)

    def _on_simple_reply(
        self, direction: str, cut: _Cut, packet: Packet | None, fields: Fields, notes: list[str]
    ) -> None:
        cookie = fields.get("cookie", 0)
        request = self._request_for(cookie)
        if request is None:
            notes.append(
                f"no request with cookie {cookie:#x} is in flight: header only (READ data, "
                "if any, cannot be framed)"
            )
        else:
            self._retire(cookie)
        self._emit(direction, cut, packet, fields, notes, "simple reply", request=request)

    def _on_chunk(
        self, direction: str, cut: _Cut, packet: Packet | None, fields: Fields, notes: list[str]
    ) -> None:
        cookie = fields.get("cookie", 0)
        request = self._request_for(cookie)
        if request is None:
            notes.append(f"no request with cookie {cookie:#x} is in flight")
        if "descriptors" in fields and "context_id" in fields:
            name = self.state.meta_contexts.get(fields["context_id"])
            fields["context_name"] = name
            for descriptor in fields["descriptors"]:
                descriptor["status_text"] = describe_status(name, descriptor.get("status", 0))
        chunk_type = fields.get("type", -1)
        self._emit(
            direction,
            cut,
            packet,
            fields,
            notes,
            c.name_of(c.ReplyType, chunk_type),
            request=request,
        )
        if request is not None and fields.get("flags", 0) & _DONE:
            self._retire(cookie)

    def _on_tls(
        self, direction: str, cut: _Cut, packet: Packet | None, fields: Fields, notes: list[str]
    ) -> None:
        self._emit(direction, cut, packet, fields, notes, "TLS")

    def _enter(self, phase: str) -> None:
        self.reading[CLIENT] = self.reading[SERVER] = phase
        self.session.phase = phase

    def _request_for(self, cookie: int) -> WireMessage | None:
        waiting = self.in_flight.get(cookie)
        return waiting[0] if waiting else None

    def _retire(self, cookie: int) -> None:
        waiting = self.in_flight.get(cookie)
        if waiting:
            waiting.pop(0)
            if not waiting:
                del self.in_flight[cookie]

    # --- recovering from what could not be read ---------------------------------

    def _recover(self, cuts: dict[str, _Cut]) -> bool:
        """Get a stuck direction moving again; False when none can.

        Two ways, for the direction whose stuck bytes came first: bytes with a wrong
        magic are skipped up to the next plausible message boundary (left behind as an
        undecoded region that says where decoding resumed and why); a message its sender
        cut short (it closed its stream, or the next plausible message starts inside the
        length it promised) is decoded as far as it goes, marked ``missing``.
        """
        stuck = sorted(
            (self.streams[d].frame_at(self.cursor[d]), d)
            for d, cut in cuts.items()
            if self._skippable(cut) or (cut.status == _NEED and cut.message)
        )
        for _frame, direction in stuck:
            cut = cuts[direction]
            if cut.status == _BAD and self._skip(direction, cut):
                return True
            if cut.status == _NEED and self._cut_short(direction, cut):
                return True
        return False

    def _skip_first(self, cuts: dict[str, _Cut], next_frame: int) -> bool:
        """Skip bad bytes that came before the other side's next message, if a plausible
        boundary follows them: a reply after garbage must not be read before the request
        it answers, which comes after the client's own garbage."""
        for direction, cut in cuts.items():
            short = cut.status == _NEED and bool(cut.message)
            if not (self._skippable(cut) or short):
                continue
            if self.streams[direction].frame_at(self.cursor[direction]) >= next_frame:
                continue
            attempt = (self.cursor[direction], self._expectation(direction))
            if self._failed_skips.get(direction) == attempt:
                continue  # nothing changed since the last search found nothing
            if (
                self._cut_short(direction, cut, at_close=False)
                if short
                else self._skip(direction, cut)
            ):
                return True
            self._failed_skips[direction] = attempt
        return False

    @staticmethod
    def _skippable(cut: _Cut) -> bool:
        return cut.status == _BAD and cut.expected in _RESYNC_EXPECTED

    def _expectation(self, direction: str) -> Expectation:
        pending = {int(m.fields.get("option", -1)) for m in self.pending_options}
        if self.export_name_option is not None:
            pending.add(c.Opt.EXPORT_NAME)
        return Expectation(
            server=direction == SERVER,
            handshake=self.reading[direction] == _HANDSHAKE,
            pending_options=frozenset(pending),
            cookies=frozenset(self.in_flight),
            export_size=self.state.export_size,
        )

    def _skip(self, direction: str, cut: _Cut) -> bool:
        """Skip bad bytes up to the next plausible message boundary, if there is one."""
        if self.reading[direction] not in (_HANDSHAKE, _TRANSMISSION):
            return False
        at = self.cursor[direction]
        found = next_boundary(self.streams[direction].data, at + 1, self._expectation(direction))
        if found is None:
            return False
        boundary, what = found
        self._undecoded(
            direction,
            at,
            boundary - at,
            f"{cut.reason}; {boundary - at} byte(s) skipped: decoding resumed at offset "
            f"{boundary} on {what}",
            "bad-magic",
            cut.expected,
            cut.expected_magic,
            cut.found_magic,
            resumed_at=boundary,
        )
        self.cursor[direction] = boundary
        return True

    def _cut_short(self, direction: str, cut: _Cut, at_close: bool = True) -> bool:
        """Decode a message its sender cut short: the next plausible message starts
        inside it, or (``at_close``) the sender closed its stream (FIN) before its end."""
        stream = self.streams[direction]
        at = self.cursor[direction]
        available = len(stream.data) - at
        found = next_boundary(stream.data, at + 1, self._expectation(direction))
        if found is not None:
            length = found[0] - at
            why = f"the next message ({found[1]}) starts at offset {found[0]}"
        elif at_close and stream.fin_seen and not stream.gaps:
            length, why = available, "its sender closed the connection"
        else:
            return False  # the capture, not the sender, may have cut it
        assert cut.layer is not None
        short = _Cut(
            _OK,
            cut.message,
            length,
            cut.layer,
            missing=cut.length - length,
            reason=f"{cut.kind} cut short at {length} of {cut.length} bytes: {why}",
        )
        short.end_frame = stream.completing_frame(at, at + length)
        self._apply(direction, short)
        return True

    # --- what could not be read --------------------------------------------------

    def _stop(self, direction: str, cut: _Cut) -> None:
        self.finished[direction] = True
        if cut.status == _END:
            return
        stream = self.streams[direction]
        at = self.cursor[direction]
        rest = len(stream.data) - at
        if cut.status == _NEED:
            where = (
                f"before {stream.gaps[0][1]} missing bytes at offset {stream.gaps[0][0]}"
                if stream.gaps and stream.gaps[0][0] == len(stream.data)
                else "at the end of the capture"
            )
            reason = f"incomplete {cut.kind}: {rest} of {cut.length} bytes {where}"
            expected = self._expected_here(direction, cut)
            self._undecoded(direction, at, rest, reason, "incomplete", expected)
        elif cut.status == _BAD and cut.expected is not None:
            self._undecoded(
                direction,
                at,
                rest,
                cut.reason,
                "bad-magic",
                cut.expected,
                cut.expected_magic,
                cut.found_magic,
            )
        else:
            self._undecoded(direction, at, rest, cut.reason, "unexpected")

    def _expected_here(self, direction: str, cut: _Cut) -> str | None:
        """The message an incomplete region was to be (one of ``model.EXPECTED``)."""
        reading = self.reading[direction]
        if direction == SERVER:
            if reading == _HANDSHAKE:
                return "export-name-reply" if cut.kind == "export-name-reply" else "option-reply"
            return {_GREETING: "greeting", _TRANSMISSION: "reply"}.get(reading)
        return {_FLAGS: "client-flags", _HANDSHAKE: "option", _TRANSMISSION: "request"}.get(reading)

    def _report_gaps(self, direction: str) -> None:
        stream = self.streams[direction]
        for offset, missing in stream.gaps:
            self.session.notes.append(
                f"{direction}: {missing} bytes missing at offset {offset} (not captured); "
                "decoding of this direction stops there"
            )
        if stream.islands:
            first_gap = stream.gaps[0]
            for offset, length in stream.islands:
                self._undecoded(
                    direction,
                    offset,
                    length,
                    f"captured after {first_gap[1]} missing bytes at offset {first_gap[0]}",
                    "after-gap",
                )
        self.session.notes.extend(f"{direction}: {note}" for note in stream.notes)

    def _undecoded(
        self,
        direction: str,
        offset: int,
        length: int,
        reason: str,
        kind: str,
        expected: str | None = None,
        expected_magic: tuple[int, ...] = (),
        found_magic: int | None = None,
        resumed_at: int | None = None,
    ) -> None:
        if length <= 0:
            return
        frame = self.streams[direction].frame_at(offset)
        self.session.undecoded.append(
            Undecoded(
                self.session.index,
                direction,
                offset,
                length,
                frame,
                reason,
                kind=kind,
                expected=expected,
                expected_magic=expected_magic,
                found_magic=found_magic,
                resumed_at=resumed_at,
            )
        )
