"""Recorded server replies, adapted to what the live connection requires.

Only what must change changes, and each change is said in a note:

* option replies: the export name when ``--export`` renames it (``NBD_INFO_NAME``,
  ``NBD_REP_SERVER``); transmission flags the live negotiation does not allow
  (``NBD_FLAG_SEND_DF`` without structured replies, ``NBD_FLAG_BLOCK_STATUS_PAYLOAD``
  without extended headers);
* transmission replies: the live request's cookie (and offset, in extended
  headers); the reply form the live negotiation requires (simple, structured or
  extended); metadata context ids, mapped by context name from the recorded
  negotiation to the live one (contexts the recording did not answer come from
  the reconstructed image); ``NBD_CMD_FLAG_DF`` and ``NBD_CMD_FLAG_REQ_ONE`` of
  the live request.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from harness.protocol import constants as c
from harness.protocol.codec import (
    chunk,
    decode_block_status_payload,
    decode_chunk_payload,
    decode_reply_payload,
    encode_info,
    encode_reply_payload,
)
from harness.protocol.errors import CodecError
from harness.protocol.messages import (
    ChunkBlockStatus,
    ChunkError,
    ChunkErrorOffset,
    ChunkNone,
    ChunkOffsetData,
    ChunkOffsetHole,
    ChunkPayload,
    ExportNameReply,
    Extent,
    InfoExport,
    InfoName,
    OptionReply,
    ReplyChunk,
    Request,
    ServerPayload,
    SimpleReply,
)
from harness.protocol.state import Negotiated

from ._serve_image import ReplayImage
from ._serve_script import RecordedOption, RecordedRequest

Reply = SimpleReply | ReplyChunk
TF = c.TransmissionFlag
MAX_NARROW_LENGTH = 0xFFFFFFFF & ~0xFFF
"""The longest extent a 32-bit block status descriptor says (4 KiB aligned)."""


@dataclass
class Adapted:
    """Replies for the live peer, and what was adapted to make them."""

    replies: list = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


# --- handshake ------------------------------------------------------------------------------


def allowed_flags(flags: int, neg: Negotiated) -> tuple[int, list[str]]:
    """``flags`` without the bits the live negotiation forbids, and notes saying which."""
    notes = []
    if flags & TF.SEND_DF and not (neg.structured_replies or neg.extended_headers):
        flags &= ~TF.SEND_DF
        notes.append("NBD_FLAG_SEND_DF dropped from the recorded transmission flags: the live "
                     "client negotiated neither structured replies nor extended headers")
    if flags & TF.BLOCK_STATUS_PAYLOAD and not neg.extended_headers:
        flags &= ~TF.BLOCK_STATUS_PAYLOAD
        notes.append("NBD_FLAG_BLOCK_STATUS_PAYLOAD dropped from the recorded transmission "
                     "flags: the live client did not negotiate extended headers")
    return flags, notes


def option_replies(recorded: RecordedOption, neg: Negotiated,
                   rename: tuple[str, str] | None) -> Adapted:
    """The recorded replies to an option, up to its final one, adapted (see module doc).

    ``rename`` is ``(recorded export name, live export name)`` when they differ.
    """
    out = Adapted()
    for reply in recorded.replies:
        out.replies.append(_option_reply(reply, neg, rename, out.notes))
        if reply.reply_type == c.Rep.ACK or c.is_rep_error(reply.reply_type):
            break
    return out


def _option_reply(reply: OptionReply, neg: Negotiated, rename: tuple[str, str] | None,
                  notes: list[str]) -> OptionReply:
    try:
        payload = decode_reply_payload(reply.reply_type, reply.data)
    except CodecError:
        return reply  # replayed as recorded, malformed or not: that may be the bug to show
    match payload:
        case InfoExport(size=size, transmission_flags=flags):
            allowed, why = allowed_flags(flags, neg)
            notes += why
            if allowed != flags:
                return OptionReply(reply.option, reply.reply_type,
                                   encode_info(InfoExport(size, allowed)))
        case InfoName(name=name) if rename and name == rename[0]:
            notes.append(_rename_note(rename))
            return OptionReply(reply.option, reply.reply_type, encode_info(InfoName(rename[1])))
        case ServerPayload(name=name, details=details) if rename and name == rename[0]:
            notes.append(_rename_note(rename))
            return OptionReply(reply.option, reply.reply_type,
                               encode_reply_payload(ServerPayload(rename[1], details)))
    return reply


def _rename_note(rename: tuple[str, str]) -> str:
    return f"the recorded export {rename[0]!r} is served as {rename[1]!r} (--export)"


def export_name_reply(recorded: ExportNameReply, neg: Negotiated) -> Adapted:
    """The recorded ``NBD_OPT_EXPORT_NAME`` answer, with the zeroes the live client asked for."""
    flags, notes = allowed_flags(recorded.transmission_flags, neg)
    zeroes = not neg.no_zeroes
    if zeroes != recorded.zeroes:
        notes.append("the export-name reply " + ("gets" if zeroes else "loses")
                     + " its 124 zero bytes, as the live client's NBD_FLAG_C_NO_ZEROES says")
    return Adapted([ExportNameReply(recorded.size, flags, zeroes)], notes)


# --- transmission ---------------------------------------------------------------------------


def recorded_form(recorded: RecordedRequest) -> str:
    for reply in recorded.replies:
        if isinstance(reply, ReplyChunk):
            return "extended" if reply.extended else "structured"
    return "simple"


def recorded_payloads(recorded: RecordedRequest) -> list[ChunkPayload]:
    """The recorded replies as chunk payloads (a simple reply becomes the equivalent chunk)."""
    request = recorded.request
    payloads: list[ChunkPayload] = []
    for reply in recorded.replies:
        if isinstance(reply, SimpleReply):
            if reply.error:
                payloads.append(ChunkError(reply.error, ""))
            elif request.type == c.Cmd.READ:
                payloads.append(ChunkOffsetData(request.offset, reply.data))
            else:
                payloads.append(ChunkNone())
            continue
        try:
            payloads.append(decode_chunk_payload(reply.type, reply.payload))
        except CodecError:
            continue
    return payloads


def first_error(payloads: list[ChunkPayload]) -> ChunkError | ChunkErrorOffset | None:
    return next((p for p in payloads if isinstance(p, ChunkError | ChunkErrorOffset)), None)


def request_replies(recorded: RecordedRequest, live: Request, neg: Negotiated,
                    image: ReplayImage, recorded_negotiation: str) -> Adapted:
    """The recorded replies to ``recorded``, made into replies to ``live`` (module doc).

    ``recorded_negotiation`` is the reply form the recorded session negotiated
    (:func:`harness.protocol.state.reply_form`).
    """
    out = Adapted()
    payloads = recorded_payloads(recorded)
    now = neg.reply_form
    if recorded_negotiation != now:
        out.notes.append(f"the recorded session negotiated {recorded_negotiation} replies, the "
                         f"live client {now} replies: recorded replies are re-encoded so")
    if live.type == c.Cmd.BLOCK_STATUS and first_error(payloads) is None:
        payloads = _status_for_live(recorded, payloads, live, neg, image, out.notes)
    out.replies = encode_replies(live, payloads, neg,
                                 simple_before=recorded_form(recorded) == "simple")
    return out


def encode_replies(live: Request, payloads: list[ChunkPayload], neg: Negotiated,
                   simple_before: bool = False) -> list[Reply]:
    """Replies to ``live`` carrying ``payloads``, in the form the negotiation requires.

    ``simple_before``: the recording answered with a simple reply, which structured
    replies still allow for commands other than reads.
    """
    error = first_error(payloads)
    read = live.type == c.Cmd.READ
    if not (neg.structured_replies or neg.extended_headers):
        if error is not None:
            return [SimpleReply(live.cookie, error.error)]
        if read:
            return [SimpleReply(live.cookie, 0, assemble(live.offset, live.length, payloads))]
        return [SimpleReply(live.cookie)]
    if simple_before and not neg.extended_headers and not read:
        return [SimpleReply(live.cookie, error.error if error is not None else 0)]
    if read and live.flags & c.CmdFlag.DF and error is None:
        payloads = _one_content_chunk(live, payloads)
    payloads = [_status_width(p, neg.extended_headers) for p in payloads] or [ChunkNone()]
    last = len(payloads) - 1
    return [chunk(live.cookie, payload, done=index == last, extended=neg.extended_headers,
                  offset=live.offset) for index, payload in enumerate(payloads)]


def assemble(offset: int, length: int, payloads: list[ChunkPayload]) -> bytes:
    """The bytes a read's chunks carry over ``offset+length`` (holes and gaps as zeros)."""
    buffer = bytearray(length)
    for payload in payloads:
        if isinstance(payload, ChunkOffsetData):
            start = payload.offset - offset
            piece = payload.data[max(0, -start): max(0, length - start)]
            buffer[max(0, start): max(0, start) + len(piece)] = piece
    return bytes(buffer)


def _one_content_chunk(live: Request, payloads: list[ChunkPayload]) -> list[ChunkPayload]:
    content = [p for p in payloads if isinstance(p, ChunkOffsetData | ChunkOffsetHole)]
    if len(content) <= 1:
        return payloads
    # NBD_CMD_FLAG_DF: "the server MUST NOT fragment the reply"; the recording's chunks
    # are joined into one.
    if all(isinstance(p, ChunkOffsetHole) for p in content):
        return [ChunkOffsetHole(live.offset, live.length)]
    return [ChunkOffsetData(live.offset, assemble(live.offset, live.length, content))]


def _status_width(payload: ChunkPayload, wide: bool) -> ChunkPayload:
    if not isinstance(payload, ChunkBlockStatus) or payload.wide == wide:
        return payload
    if wide:
        return ChunkBlockStatus(payload.context_id, payload.extents, wide=True)
    extents = []
    for extent in payload.extents:
        if extent.length > MAX_NARROW_LENGTH:
            extents.append(Extent(MAX_NARROW_LENGTH, extent.flags & 0xFFFFFFFF))
            break  # a shorter answer is allowed; what follows no longer lines up
        extents.append(Extent(extent.length, extent.flags & 0xFFFFFFFF))
    return ChunkBlockStatus(payload.context_id, tuple(extents), wide=False)


def live_context_ids(live: Request, neg: Negotiated) -> tuple[int, ...]:
    """The contexts a live block status asks about (its payload's ids, or all negotiated)."""
    if live.flags & c.CmdFlag.PAYLOAD_LEN:
        try:
            return decode_block_status_payload(live.payload).context_ids
        except CodecError:
            return ()
    return tuple(neg.meta_contexts)


def _status_for_live(recorded: RecordedRequest, payloads: list[ChunkPayload], live: Request,
                     neg: Negotiated, image: ReplayImage, notes: list[str]) -> list[ChunkPayload]:
    by_name = {}
    for payload in payloads:
        if isinstance(payload, ChunkBlockStatus):
            name = recorded.contexts.get(payload.context_id)
            if name is not None:
                by_name.setdefault(name, payload)
    out: list[ChunkPayload] = []
    for context_id in live_context_ids(live, neg):
        name = neg.meta_contexts.get(context_id)
        if name is None:
            continue
        found = by_name.get(name)
        if found is None:
            notes.append(f"the recording has no {name} extents for this request: they come "
                         "from the reconstructed image")
            extents = image_extents(image, name, live)
        else:
            if found.context_id != context_id:
                notes.append(f"metadata context {name} has id {context_id} here "
                             f"(recorded id {found.context_id})")
            extents = found.extents
        if live.flags & c.CmdFlag.REQ_ONE:
            extents = extents[:1]
        out.append(ChunkBlockStatus(context_id, tuple(extents), wide=neg.extended_headers))
    return out


def image_extents(image: ReplayImage, context: str, live: Request) -> tuple[Extent, ...]:
    """Extents of ``context`` from the reconstructed image for a live block status."""
    length = live.length
    if live.flags & c.CmdFlag.PAYLOAD_LEN:
        try:
            length = decode_block_status_payload(live.payload).effect_length
        except CodecError:
            length = 0
    length = max(0, min(length, image.size - live.offset))
    if length == 0:
        return ()
    try:
        extents = image.block_status(context, live.offset, length)
    except (KeyError, ValueError):
        return ()
    return tuple(Extent(e.length, e.flags) for e in extents[: c.MAX_EXTENTS_PER_CHUNK])


__all__ = [
    "Adapted",
    "allowed_flags",
    "assemble",
    "encode_replies",
    "export_name_reply",
    "first_error",
    "image_extents",
    "live_context_ids",
    "option_replies",
    "recorded_form",
    "recorded_payloads",
    "request_replies",
]
