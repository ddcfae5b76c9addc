"""A recorded session as the server side will play it: greeting, options with their
replies, requests with their replies, and the facts of the export.

The dissector (:mod:`harness.dissect`) finds the messages, their order and which
reply answers which option or request; the protocol codec re-reads each
message's captured bytes into the events the live connection sends
(:mod:`harness.protocol.messages`), so replies are re-encoded by the same code
that encodes everything else.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

from harness.dissect import Session, WireMessage
from harness.protocol import constants as c
from harness.protocol.codec import (
    decode_block_status_payload,
    decode_client_flags,
    decode_export_name_reply,
    decode_greeting,
    decode_option_payload,
    decode_option_reply,
    decode_option_request,
    decode_reply,
    decode_reply_payload,
    decode_request,
)
from harness.protocol.errors import CodecError
from harness.protocol.messages import (
    ClientFlags,
    ExportNameReply,
    InfoBlockSize,
    InfoDescription,
    InfoExport,
    MetaContextReplyPayload,
    NewstyleGreeting,
    OldstyleGreeting,
    OptionReply,
    OptionRequest,
    RawPayload,
    ReplyChunk,
    Request,
    SimpleReply,
)

Reply = SimpleReply | ReplyChunk


@dataclass
class RecordedOption:
    """One option the recorded client sent and everything the recorded server answered."""

    step: int
    frame: int
    request: OptionRequest
    payload: object
    """The typed payload (:mod:`harness.protocol.messages`); ``RawPayload`` when malformed."""
    replies: list[OptionReply] = field(default_factory=list)
    export_name_reply: ExportNameReply | None = None
    reply_steps: list[int] = field(default_factory=list)

    @property
    def name(self) -> str:
        return c.name_of(c.Opt, self.request.option)

    @property
    def final(self) -> OptionReply | None:
        """The reply that ended the option (ACK or an error), if the recording has it."""
        for reply in self.replies:
            if reply.reply_type == c.Rep.ACK or c.is_rep_error(reply.reply_type):
                return reply
        return None

    @property
    def answered(self) -> bool:
        """False when the recorded server closed (or the capture stopped) without a final
        answer."""
        if self.request.option == c.Opt.EXPORT_NAME:
            return self.export_name_reply is not None
        return self.final is not None


@dataclass
class RecordedRequest:
    """One request the recorded client sent and the replies the recorded server gave."""

    step: int
    frame: int
    request: Request
    replies: list[Reply] = field(default_factory=list)
    reply_frames: list[int] = field(default_factory=list)
    reply_steps: list[int] = field(default_factory=list)
    contexts: dict[int, str] = field(default_factory=dict)
    """Context id -> name for the block status chunks among ``replies``."""

    @property
    def name(self) -> str:
        return c.name_of(c.Cmd, self.request.type)

    @property
    def effect_length(self) -> int:
        """What the request covers: the data's length for a write, the payload's effect
        length for a block status with ``NBD_CMD_FLAG_PAYLOAD_LEN``, else ``length``."""
        return effect_length(self.request)

    @property
    def complete(self) -> bool:
        """True when the recording holds the whole reply."""
        if self.request.type == c.Cmd.DISC:
            return True
        if not self.replies:
            return False
        last = self.replies[-1]
        return isinstance(last, SimpleReply) or last.done

    def describe(self) -> str:
        return describe_request(self.request)


@dataclass
class ExportFacts:
    """What the recorded server showed about its export."""

    name: str = ""
    size: int = 0
    transmission_flags: int = 0
    block_size: InfoBlockSize | None = None
    description: str = ""
    contexts: list[str] = field(default_factory=list)
    """Every metadata context the server offered (META_CONTEXT replies), in order seen."""
    block_size_withheld: bool = False
    """The client asked for NBD_INFO_BLOCK_SIZE and the server did not give it."""
    unflagged_writes_performed: bool = False
    """The server performed extended writes lacking NBD_CMD_FLAG_PAYLOAD_LEN (qemu-nbd)."""

    @property
    def read_only(self) -> bool:
        return bool(self.transmission_flags & c.TransmissionFlag.READ_ONLY)


@dataclass
class Script:
    """The recorded session, ready to play: see the module docstring."""

    session: Session
    greeting: NewstyleGreeting | OldstyleGreeting | None = None
    greeting_step: int = 0
    client_flags: ClientFlags | None = None
    client_flags_step: int = 0
    options: list[RecordedOption] = field(default_factory=list)
    requests: list[RecordedRequest] = field(default_factory=list)
    facts: ExportFacts = field(default_factory=ExportFacts)
    notes: list[str] = field(default_factory=list)
    """What could not be read back from the capture (kept out of the play)."""

    @property
    def index(self) -> int:
        return self.session.index

    @property
    def reply_form(self) -> str:
        """``simple``, ``structured`` or ``extended``: the replies the session negotiated."""
        return self.session.state.reply_form

    @functools.cached_property
    def last_server_step(self) -> int:
        """The step of the recorded server's last message (0 when it sent none)."""
        return max((step for step, message in enumerate(self.session.messages, start=1)
                    if message.direction == "server"), default=0)

    @property
    def end_step(self) -> int:
        """A step number after every recorded message."""
        return len(self.session.messages) + 1

    def option_outcomes(self, option: int) -> list[int]:
        """The final reply types the recorded server gave to ``option``."""
        return [o.final.reply_type for o in self.options
                if o.request.option == option and o.final is not None]


def effect_length(request: Request) -> int:
    """The effect length of ``request`` (see :attr:`RecordedRequest.effect_length`)."""
    if request.type == c.Cmd.WRITE and request.payload:
        return len(request.payload)
    if request.flags & c.CmdFlag.PAYLOAD_LEN and request.type == c.Cmd.BLOCK_STATUS:
        try:
            return decode_block_status_payload(request.payload).effect_length
        except CodecError:
            return 0
    return request.length


def describe_request(request: Request) -> str:
    """``NBD_CMD_READ 131072+8192`` (offset+effect length), ``NBD_CMD_FLUSH``."""
    name = c.name_of(c.Cmd, request.type)
    if request.type in (c.Cmd.FLUSH, c.Cmd.DISC):
        return name
    return f"{name} {request.offset}+{effect_length(request)}"


def build_script(session: Session) -> Script:
    """Read ``session``'s messages back into events (see :class:`Script`)."""
    script = Script(session)
    options: dict[int, RecordedOption] = {}  # id(option WireMessage) -> recorded option
    requests: dict[int, RecordedRequest] = {}  # id(request WireMessage) -> recorded request
    for step, message in enumerate(session.messages, start=1):
        try:
            _add(script, step, message, options, requests)
        except (CodecError, ValueError) as exc:
            script.notes.append(f"recorded message #{step} ({message.name}, frame "
                                f"{message.frame}) could not be read back: {exc}")
    script.facts = _facts(script)
    return script


def _add(script: Script, step: int, message: WireMessage, options: dict[int, RecordedOption],
         requests: dict[int, RecordedRequest]) -> None:
    wire = message.wire
    match message.kind:
        case "oldstyle-greeting" | "newstyle-greeting":
            event = _decoded(decode_greeting(wire))
            assert isinstance(event, NewstyleGreeting | OldstyleGreeting)
            script.greeting, script.greeting_step = event, step
        case "client-flags":
            flags = _decoded(decode_client_flags(wire))
            assert isinstance(flags, ClientFlags)
            script.client_flags, script.client_flags_step = flags, step
        case "option":
            request = _decoded(decode_option_request(wire))
            assert isinstance(request, OptionRequest)
            try:
                payload = decode_option_payload(request.option, request.data)
            except CodecError:
                payload = RawPayload(request.data)
            recorded = RecordedOption(step, message.frame, request, payload)
            options[id(message)] = recorded
            script.options.append(recorded)
        case "option-reply":
            owner = options.get(id(message.option))
            if owner is not None:
                reply = _decoded(decode_option_reply(wire))
                assert isinstance(reply, OptionReply)
                owner.replies.append(reply)
                owner.reply_steps.append(step)
        case "export-name-reply":
            owner = options.get(id(message.option))
            if owner is not None:
                zeroes = len(wire) > 10
                reply = _decoded(decode_export_name_reply(wire, zeroes=zeroes))
                assert isinstance(reply, ExportNameReply)
                owner.export_name_reply = reply
                owner.reply_steps.append(step)
        case "request":
            request = _decoded(decode_request(wire))
            assert isinstance(request, Request)
            recorded_request = RecordedRequest(step, message.frame, request)
            requests[id(message)] = recorded_request
            script.requests.append(recorded_request)
        case "simple-reply" | "chunk":
            owner_request = requests.get(id(message.request))
            if owner_request is None:
                return
            asked = owner_request.request

            def read_length(cookie: int) -> int | None:
                return asked.length if asked.type == c.Cmd.READ else None

            reply = _decoded(decode_reply(wire, read_length))
            assert isinstance(reply, SimpleReply | ReplyChunk)
            owner_request.replies.append(reply)
            owner_request.reply_frames.append(message.last_frame)
            owner_request.reply_steps.append(step)
            name = message.fields.get("context_name")
            if isinstance(reply, ReplyChunk) and isinstance(name, str):
                owner_request.contexts[message.fields.get("context_id", -1)] = name


def _decoded(result: tuple[object, int] | None) -> object:
    if result is None:
        raise ValueError("the captured bytes hold less than the whole message")
    return result[0]


def _facts(script: Script) -> ExportFacts:
    state = script.session.state
    facts = ExportFacts(
        name=state.export_name or "",
        size=state.export_size or 0,
        transmission_flags=state.transmission_flags or 0,
    )
    if isinstance(script.greeting, OldstyleGreeting):
        facts.size, facts.transmission_flags = script.greeting.size, script.greeting.flags & 0xFFFF
    for option in script.options:
        _option_facts(facts, option)
    for recorded in script.requests:
        request = recorded.request
        if (request.type == c.Cmd.WRITE and request.extended
                and not request.flags & c.CmdFlag.PAYLOAD_LEN and succeeded(recorded)):
            facts.unflagged_writes_performed = True
    return facts


def _option_facts(facts: ExportFacts, option: RecordedOption) -> None:
    infos: list[object] = []
    for reply in option.replies:
        try:
            payload = decode_reply_payload(reply.reply_type, reply.data)
        except CodecError:
            continue
        if isinstance(payload, MetaContextReplyPayload) and payload.name not in facts.contexts:
            facts.contexts.append(payload.name)
        infos.append(payload)
    if option.request.option not in (c.Opt.INFO, c.Opt.GO):
        return
    for info in infos:
        if isinstance(info, InfoExport):
            if not facts.size:
                facts.size = info.size
            if not facts.transmission_flags:
                facts.transmission_flags = info.transmission_flags
        elif isinstance(info, InfoBlockSize):
            facts.block_size = info
        elif isinstance(info, InfoDescription):
            facts.description = info.description
    asked = getattr(option.payload, "info_requests", ())
    if c.Info.BLOCK_SIZE in asked and option.final is not None and option.final.reply_type == (
            c.Rep.ACK) and not any(isinstance(info, InfoBlockSize) for info in infos):
        facts.block_size_withheld = True


def succeeded(recorded: RecordedRequest) -> bool:
    """True when the recorded server answered the request without an error."""
    if not recorded.complete:
        return False
    for reply in recorded.replies:
        if isinstance(reply, SimpleReply) and reply.error:
            return False
        if isinstance(reply, ReplyChunk) and c.is_error_chunk(reply.type):
            return False
    return True


__all__ = [
    "ExportFacts",
    "RecordedOption",
    "RecordedRequest",
    "Script",
    "build_script",
    "describe_request",
    "effect_length",
    "succeeded",
]
