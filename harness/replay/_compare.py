"""Semantic comparison of a recorded server answer with a live one.

Both sides are first turned into the same small views, whatever they came
from: a recorded :class:`~harness.dissect.WireMessage` (the dissector's
reading of a capture) or a live message of :mod:`harness.protocol.messages`
(the codec's reading of a socket).  The comparison then looks at what the
answer means, never at its bytes:

- option replies: the final reply type, the presence of an error message,
  every ``NBD_INFO_*`` item by type (size, transmission flags by name, block
  sizes, name, description), the metadata contexts by name (ids are the
  server's choice and are never compared), the export list;
- transmission replies: errors by name, READ data byte for byte (holes read
  as zeroes; chunks assembled), block status extents per context name (with
  a word when two lists are the same after merging adjacent extents of equal
  status), and the reply form when the caller says forms are comparable.

Each difference is a :class:`Mismatch` naming the spec sections involved
(headings of ``proto-extended-headers.md``); the caller places it in the
session.
"""

from __future__ import annotations

import enum
import operator
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from harness.dissect import WireMessage, describe_status
from harness.protocol import constants as c
from harness.protocol.codec import decode_chunk_payload, decode_reply_payload
from harness.protocol.errors import CodecError
from harness.protocol.extents import merge_descriptors
from harness.protocol.messages import (
    ChunkBlockStatus,
    ChunkError,
    ChunkErrorOffset,
    ChunkNone,
    ChunkOffsetData,
    ChunkOffsetHole,
    ErrorReplyPayload,
    InfoBlockSize,
    InfoDescription,
    InfoExport,
    InfoInitState,
    InfoName,
    InfoUnknown,
    MetaContextReplyPayload,
    OptionReply,
    ReplyChunk,
    ServerPayload,
    SimpleReply,
)

OPTION_SECTIONS = ("Option types", "Option reply types")
ERROR_SECTIONS = ("Error values", "Request types")
DATA_SECTIONS = ("Request types", "Structured reply types")
EXTENT_SECTIONS = ("Metadata querying", "Structured reply types")
FORM_SECTIONS = (
    "Simple reply message",
    "Structured reply chunk message",
    "Extended reply chunk message",
)
_MAX_RANGES = 4  # data ranges spelled out before "and N more"


@dataclass(frozen=True)
class Mismatch:
    """One semantic difference, before the caller says where in the session it is."""

    aspect: str
    recorded: str
    live: str
    sections: tuple[str, ...] = ()


def flag_change(enum_type: type[enum.IntFlag], recorded: int, live: int) -> tuple[str, str]:
    """``("with A, without B", "without A, with B")``: flag differences by name."""
    only_recorded = recorded & ~live
    only_live = live & ~recorded

    def names(value: int) -> str:
        return c.spec_name(enum_type(value))

    recorded_text, live_text = [], []
    if only_recorded:
        recorded_text.append(f"with {names(only_recorded)}")
        live_text.append(f"without {names(only_recorded)}")
    if only_live:
        recorded_text.append(f"without {names(only_live)}")
        live_text.append(f"with {names(only_live)}")
    return ", ".join(recorded_text), ", ".join(live_text)


# --- option replies ------------------------------------------------------------------------


@dataclass(frozen=True)
class OptionReplyView:
    """What one option reply says, from either reading of the wire."""

    reply_type: int
    info_type: int | None = None
    size: int | None = None
    transmission_flags: int | None = None
    block_size: tuple[int, int, int] | None = None
    text: str | None = None
    """``NBD_INFO_NAME`` / ``NBD_INFO_DESCRIPTION`` text."""
    init_state: int | None = None
    context_id: int | None = None
    context_name: str | None = None
    export: tuple[str, str] | None = None
    """``NBD_REP_SERVER``: name and details."""
    message: str | None = None
    """An error reply's message ("" when it has none)."""
    raw: bytes = b""
    """Data of a reply or information type nobody knows (or that did not decode)."""

    @property
    def final(self) -> bool:
        return self.reply_type == c.Rep.ACK or c.is_rep_error(self.reply_type)


def option_reply_from_wire(message: WireMessage) -> OptionReplyView:
    """The view of a recorded option reply (the dissector's fields)."""
    fields = message.fields
    reply_type = int(fields.get("reply_type", 0))
    if c.is_rep_error(reply_type):
        return OptionReplyView(reply_type, message=str(fields.get("message", "")))
    if reply_type == c.Rep.META_CONTEXT:
        return OptionReplyView(reply_type, context_id=fields.get("context_id"),
                               context_name=fields.get("context_name"))
    if reply_type == c.Rep.SERVER:
        return OptionReplyView(reply_type, export=(str(fields.get("export_name", "")),
                                                   str(fields.get("details", ""))))
    if reply_type != c.Rep.INFO:
        return OptionReplyView(reply_type, raw=bytes(fields.get("data", b"")))
    info_type = fields.get("info_type")
    match info_type:
        case c.Info.EXPORT:
            return OptionReplyView(reply_type, info_type, size=fields.get("size"),
                                   transmission_flags=fields.get("transmission_flags"))
        case c.Info.NAME:
            return OptionReplyView(reply_type, info_type, text=fields.get("export_name"))
        case c.Info.DESCRIPTION:
            return OptionReplyView(reply_type, info_type, text=fields.get("description"))
        case c.Info.BLOCK_SIZE:
            sizes = (fields.get("minimum_block_size"), fields.get("preferred_block_size"),
                     fields.get("maximum_payload_size"))
            return OptionReplyView(reply_type, info_type, block_size=sizes)  # type: ignore[arg-type]
        case c.Info.INIT_STATE:
            return OptionReplyView(reply_type, info_type, init_state=fields.get("init_flags"))
    return OptionReplyView(reply_type, info_type, raw=bytes(fields.get("data", b"")))


def option_reply_from_event(reply: OptionReply) -> OptionReplyView:
    """The view of a live option reply (the codec's reading)."""
    try:
        payload = decode_reply_payload(reply.reply_type, reply.data)
    except CodecError:
        return OptionReplyView(reply.reply_type, raw=reply.data)
    rtype = reply.reply_type
    match payload:
        case ErrorReplyPayload(message=message):
            return OptionReplyView(rtype, message=message)
        case MetaContextReplyPayload(context_id=cid, name=name):
            return OptionReplyView(rtype, context_id=cid, context_name=name)
        case ServerPayload(name=name, details=details):
            return OptionReplyView(rtype, export=(name, details))
        case InfoExport(size=size, transmission_flags=flags):
            return OptionReplyView(rtype, c.Info.EXPORT, size=size, transmission_flags=flags)
        case InfoName(name=name):
            return OptionReplyView(rtype, c.Info.NAME, text=name)
        case InfoDescription(description=text):
            return OptionReplyView(rtype, c.Info.DESCRIPTION, text=text)
        case InfoBlockSize(minimum=lo, preferred=pref, maximum=hi):
            return OptionReplyView(rtype, c.Info.BLOCK_SIZE, block_size=(lo, pref, hi))
        case InfoInitState(flags=flags):
            return OptionReplyView(rtype, c.Info.INIT_STATE, init_state=flags)
        case InfoUnknown(info_type=info_type, data=data):
            return OptionReplyView(rtype, info_type, raw=data)
    return OptionReplyView(rtype, raw=reply.data)


def describe_reply(view: OptionReplyView | None) -> str:
    """``NBD_REP_ERR_UNSUP ('Unsupported option')``, or "no reply"."""
    if view is None:
        return "no reply"
    text = c.name_of(c.Rep, view.reply_type)
    if view.message:
        text += f" ({view.message!r})"
    return text


def describe_block_size(sizes: tuple[int, int, int] | None) -> str:
    if sizes is None:
        return "none"
    return f"minimum {sizes[0]}, preferred {sizes[1]}, maximum payload {sizes[2]}"


def compare_export(recorded_size: int | None, recorded_flags: int | None,
                   live_size: int | None, live_flags: int | None,
                   sections: tuple[str, ...] = OPTION_SECTIONS) -> list[Mismatch]:
    """Export size and transmission flags (by name), wherever they were said."""
    out = []
    if recorded_size != live_size:
        out.append(Mismatch("export size", str(recorded_size), str(live_size), sections))
    if recorded_flags is not None and live_flags is not None and recorded_flags != live_flags:
        recorded_text, live_text = flag_change(c.TransmissionFlag, recorded_flags, live_flags)
        out.append(Mismatch("transmission flags", recorded_text, live_text,
                            (*sections, "Transmission flags")))
    return out


def _info_mismatches(info_type: int, recorded: OptionReplyView, live: OptionReplyView,
                     renamed: Mapping[str, str]) -> list[Mismatch]:
    name = c.name_of(c.Info, info_type)
    match info_type:
        case c.Info.EXPORT:
            return compare_export(recorded.size, recorded.transmission_flags, live.size,
                                  live.transmission_flags)
        case c.Info.BLOCK_SIZE if recorded.block_size != live.block_size:
            return [Mismatch("block size", describe_block_size(recorded.block_size),
                             describe_block_size(live.block_size),
                             ("Option reply types", "Size constraints"))]
        case c.Info.NAME if renamed.get(recorded.text or "", recorded.text) != live.text:
            return [Mismatch("export name", repr(recorded.text), repr(live.text),
                             OPTION_SECTIONS)]
        case c.Info.DESCRIPTION if recorded.text != live.text:
            return [Mismatch("description", repr(recorded.text), repr(live.text),
                             OPTION_SECTIONS)]
        case c.Info.INIT_STATE if recorded.init_state != live.init_state:
            recorded_text, live_text = flag_change(c.InitFlag, recorded.init_state or 0,
                                                   live.init_state or 0)
            return [Mismatch("init state", recorded_text, live_text,
                             ("Experimental extensions",))]
    if info_type not in (c.Info.EXPORT, c.Info.BLOCK_SIZE, c.Info.NAME, c.Info.DESCRIPTION,
                         c.Info.INIT_STATE) and recorded.raw != live.raw:
        return [Mismatch("information", f"{name} of {len(recorded.raw)} bytes",
                         f"{name} of {len(live.raw)} bytes, different", OPTION_SECTIONS)]
    return []


def _names(items: Iterable[str]) -> str:
    listed = list(items)
    return f"{len(listed)}: {', '.join(listed)}" if listed else "none"


def compare_option_replies(recorded: Sequence[OptionReplyView], live: Sequence[OptionReplyView],
                           *, renamed: Mapping[str, str] | None = None) -> list[Mismatch]:
    """How the live replies to one option depart from the recorded ones.

    ``renamed`` maps recorded export names to the names used live (``--export``), so a
    canonical ``NBD_INFO_NAME`` that followed the rename is not a difference.  The contents
    (information, contexts, exports) are compared only when both final replies agree:
    after a refusal there is nothing more to say.
    """
    renamed = renamed or {}
    recorded_final = recorded[-1] if recorded and recorded[-1].final else None
    live_final = live[-1] if live and live[-1].final else None
    recorded_type = recorded_final.reply_type if recorded_final else None
    live_type = live_final.reply_type if live_final else None
    if recorded_type != live_type:
        return [Mismatch("reply type", describe_reply(recorded_final), describe_reply(live_final),
                         OPTION_SECTIONS)]
    out: list[Mismatch] = []
    if (recorded_final and live_final and c.is_rep_error(recorded_type or 0)
            and bool(recorded_final.message) != bool(live_final.message)):
        out.append(Mismatch(
            "error message",
            "with a message" if recorded_final.message else "without a message",
            "with a message" if live_final.message else "without a message",
            ("Option reply types",)))
    recorded_infos = {v.info_type: v for v in recorded if v.reply_type == c.Rep.INFO}
    live_infos = {v.info_type: v for v in live if v.reply_type == c.Rep.INFO}
    for info_type in sorted(set(recorded_infos) | set(live_infos), key=lambda t: t or 0):
        rec, liv = recorded_infos.get(info_type), live_infos.get(info_type)
        if rec is None or liv is None:
            name = c.name_of(c.Info, info_type or 0)
            out.append(Mismatch("information", name if rec else f"no {name}",
                                name if liv else f"no {name}", ("Option reply types",)))
            continue
        out += _info_mismatches(info_type or 0, rec, liv, renamed)
    recorded_contexts = [v.context_name or "" for v in recorded
                         if v.reply_type == c.Rep.META_CONTEXT]
    live_contexts = [v.context_name or "" for v in live if v.reply_type == c.Rep.META_CONTEXT]
    if Counter(recorded_contexts) != Counter(live_contexts):
        out.append(Mismatch("metadata contexts", _names(recorded_contexts),
                            _names(live_contexts), ("Option types", "Metadata querying")))
    recorded_exports = [v.export for v in recorded if v.reply_type == c.Rep.SERVER]
    live_exports = [v.export for v in live if v.reply_type == c.Rep.SERVER]
    if Counter(recorded_exports) != Counter(live_exports):
        out.append(Mismatch("export list",
                            _names(_export_text(e) for e in recorded_exports if e),
                            _names(_export_text(e) for e in live_exports if e),
                            ("Option types", "Option reply types")))
    known = (c.Rep.ACK, c.Rep.INFO, c.Rep.META_CONTEXT, c.Rep.SERVER)
    recorded_other = Counter(v.reply_type for v in recorded
                             if v.reply_type not in known and not c.is_rep_error(v.reply_type))
    live_other = Counter(v.reply_type for v in live
                         if v.reply_type not in known and not c.is_rep_error(v.reply_type))
    if recorded_other != live_other:
        out.append(Mismatch("reply type",
                            _names(c.name_of(c.Rep, t) for t in recorded_other.elements()),
                            _names(c.name_of(c.Rep, t) for t in live_other.elements()),
                            ("Option reply types",)))
    return out


def _export_text(export: tuple[str, str]) -> str:
    name, details = export
    return f"{name!r}" + (f" ({details!r})" if details else "")


# --- transmission replies ----------------------------------------------------------------


@dataclass(frozen=True)
class ReplyView:
    """What the whole answer to one request says, from either reading of the wire."""

    form: str
    """``simple``, ``structured`` or ``extended`` (of the first message; "" when none)."""
    complete: bool
    """A simple reply, or a chunk with ``NBD_REPLY_FLAG_DONE``, was seen."""
    errors: tuple[tuple[int, str], ...] = ()
    """(error value, message) of every error the answer carries."""
    data: tuple[tuple[int, bytes], ...] = ()
    """(export offset, bytes) of every piece of data."""
    holes: tuple[tuple[int, int], ...] = ()
    """(export offset, length) of every hole (reads as zeroes)."""
    extents: tuple[tuple[str, tuple[tuple[int, int], ...]], ...] = ()
    """(context name, ((length, status), ...)) of every block status chunk."""
    unknown: tuple[int, ...] = ()
    """Chunk types nobody knows."""


def reply_from_wire(request: WireMessage, replies: Sequence[WireMessage]) -> ReplyView:
    """The view of a recorded answer: ``replies`` are the messages answering ``request``."""
    offset = int(request.fields.get("offset", 0))
    form = ""
    complete = False
    errors: list[tuple[int, str]] = []
    data: list[tuple[int, bytes]] = []
    holes: list[tuple[int, int]] = []
    extents: list[tuple[str, tuple[tuple[int, int], ...]]] = []
    unknown: list[int] = []
    for message in replies:
        fields = message.fields
        if message.kind == "simple-reply":
            form = form or "simple"
            complete = True
            if fields.get("error"):
                errors.append((int(fields["error"]), ""))
            elif fields.get("data"):
                data.append((offset, bytes(fields["data"])))
            continue
        extended = fields.get("magic") == c.EXTENDED_REPLY_MAGIC
        form = form or ("extended" if extended else "structured")
        complete = complete or bool(int(fields.get("flags", 0)) & c.ReplyFlag.DONE)
        chunk_type = int(fields.get("type", 0))
        if chunk_type == c.ReplyType.OFFSET_DATA:
            data.append((int(fields.get("data_offset", 0)), bytes(fields.get("data", b""))))
        elif chunk_type == c.ReplyType.OFFSET_HOLE:
            holes.append((int(fields.get("hole_offset", 0)), int(fields.get("hole_size", 0))))
        elif chunk_type in (c.ReplyType.BLOCK_STATUS, c.ReplyType.BLOCK_STATUS_EXT):
            name = fields.get("context_name") or f"context id {fields.get('context_id')}"
            descriptors = tuple((int(d["length"]), int(d["status"]))
                                for d in fields.get("descriptors", ()))
            extents.append((name, descriptors))
        elif c.is_error_chunk(chunk_type):
            errors.append((int(fields.get("error", c.Errno.EIO)), str(fields.get("message", ""))))
        elif chunk_type != c.ReplyType.NONE:
            unknown.append(chunk_type)
    return ReplyView(form, complete, tuple(errors), tuple(data), tuple(holes), tuple(extents),
                     tuple(unknown))


def reply_from_events(offset: int, events: Sequence[SimpleReply | ReplyChunk],
                      contexts: Mapping[int, str]) -> ReplyView:
    """The view of a live answer to a request at ``offset``; ``contexts`` maps the live
    context ids to names."""
    form = ""
    complete = False
    errors: list[tuple[int, str]] = []
    data: list[tuple[int, bytes]] = []
    holes: list[tuple[int, int]] = []
    extents: list[tuple[str, tuple[tuple[int, int], ...]]] = []
    unknown: list[int] = []
    for event in events:
        if isinstance(event, SimpleReply):
            form = form or "simple"
            complete = True
            if event.error:
                errors.append((event.error, ""))
            elif event.data:
                data.append((offset, event.data))
            continue
        form = form or ("extended" if event.extended else "structured")
        complete = complete or event.done
        try:
            payload = decode_chunk_payload(event.type, event.payload)
        except CodecError as exc:
            errors.append((c.Errno.EIO, f"undecodable {c.name_of(c.ReplyType, event.type)}: "
                                        f"{exc.message}"))
            continue
        match payload:
            case ChunkOffsetData(offset=at, data=chunk_data):
                data.append((at, chunk_data))
            case ChunkOffsetHole(offset=at, length=length):
                holes.append((at, length))
            case ChunkBlockStatus(context_id=cid, extents=found):
                name = contexts.get(cid, f"context id {cid}")
                extents.append((name, tuple((e.length, e.flags) for e in found)))
            case ChunkError(error=error, message=message):
                errors.append((error, message))
            case ChunkErrorOffset(error=error, message=message):
                errors.append((error, message))
            case ChunkNone():
                pass
            case _:
                unknown.append(event.type)
    return ReplyView(form, complete, tuple(errors), tuple(data), tuple(holes), tuple(extents),
                     tuple(unknown))


def _describe_errors(errors: Sequence[tuple[int, str]]) -> str:
    if not errors:
        return "success"
    names = [c.name_of(c.Errno, error) + (f" ({message!r})" if message else "")
             for error, message in errors]
    return ", ".join(names)


def _merge_intervals(intervals: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for start, end in sorted(i for i in intervals if i[1] > i[0]):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def _assemble(view: ReplyView, offset: int, length: int) -> tuple[bytearray, list[tuple[int, int]]]:
    """The bytes a read answer holds over [offset, offset+length), and which it covers."""
    buffer = bytearray(length)
    covered = []
    for at, chunk in view.data:
        start, end = max(at, offset), min(at + len(chunk), offset + length)
        if end > start:
            buffer[start - offset:end - offset] = chunk[start - at:end - at]
            covered.append((start, end))
    for at, size in view.holes:
        start, end = max(at, offset), min(at + size, offset + length)
        if end > start:
            buffer[start - offset:end - offset] = bytes(end - start)
            covered.append((start, end))
    return buffer, _merge_intervals(covered)


def _intersect(a: list[tuple[int, int]], b: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out = []
    for start_a, end_a in a:
        for start_b, end_b in b:
            start, end = max(start_a, start_b), min(end_a, end_b)
            if end > start:
                out.append((start, end))
    return _merge_intervals(out)


def _subtract(a: list[tuple[int, int]], b: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out = []
    for start, end in a:
        pieces = [(start, end)]
        for cut_start, cut_end in b:
            pieces = [piece for s, e in pieces
                      for piece in ((s, min(e, cut_start)), (max(s, cut_end), e))
                      if piece[1] > piece[0]]
        out += pieces
    return _merge_intervals(out)


_BLOCK = 64 * 1024
_NONZERO = re.compile(rb"[^\x00]+")


def _differing_ranges(recorded: bytes | bytearray, live: bytes | bytearray, base: int,
                      within: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Export ranges [start, end) inside ``within`` where the two buffers differ."""
    found: list[tuple[int, int]] = []
    for start, end in within:
        position = start
        while position < end:
            stop = min(position + _BLOCK, end)
            lo, hi = position - base, stop - base
            if recorded[lo:hi] != live[lo:hi]:
                xored = bytes(map(operator.xor, recorded[lo:hi], live[lo:hi]))
                found += [(base + lo + m.start(), base + lo + m.end())
                          for m in _NONZERO.finditer(xored)]
            position = stop
    return _merge_intervals(found)


def _spell_ranges(ranges: list[tuple[int, int]]) -> str:
    """``offsets 100..199, 5000..5000 (101 bytes)``; many ranges are summed up by their
    span, with the first few spelled out."""
    total = sum(end - start for start, end in ranges)
    size = f"{total} byte{'s' if total != 1 else ''}"
    if len(ranges) <= _MAX_RANGES:
        return f"offsets {', '.join(f'{s}..{e - 1}' for s, e in ranges)} ({size})"
    first = ", ".join(f"{s}..{e - 1}" for s, e in ranges[:_MAX_RANGES])
    return (f"offsets {ranges[0][0]}..{ranges[-1][1] - 1} ({size} in {len(ranges)} ranges, "
            f"starting {first}...)")


def _compare_read(offset: int, length: int, recorded: ReplyView,
                  live: ReplyView) -> list[Mismatch]:
    recorded_bytes, recorded_covered = _assemble(recorded, offset, length)
    live_bytes, live_covered = _assemble(live, offset, length)
    out = []
    if not recorded.errors and not live.errors:
        missing = _subtract(recorded_covered, live_covered)
        extra = _subtract(live_covered, recorded_covered)
        if missing or extra:
            out.append(Mismatch(
                "data coverage",
                "data or holes for "
                + (_spell_ranges(recorded_covered) if recorded_covered else "nothing"),
                (f"nothing for {_spell_ranges(missing)}" if missing else "")
                + ("; " if missing and extra else "")
                + (f"also {_spell_ranges(extra)}" if extra else ""),
                DATA_SECTIONS))
    differing = _differing_ranges(recorded_bytes, live_bytes, offset,
                                  _intersect(recorded_covered, live_covered))
    if differing:
        out.append(Mismatch("data", f"{length} bytes at offset {offset}",
                            f"differs at {_spell_ranges(differing)}", DATA_SECTIONS))
    return out


def _describe_extents(context: str, extents: Sequence[tuple[int, int]], start: int,
                      index: int) -> str:
    total = sum(length for length, _ in extents)
    text = f"{len(extents)} extent{'s' if len(extents) != 1 else ''} over {total} bytes"
    if index < len(extents):
        length, status = extents[index]
        text += (f"; at offset {start}: {length} bytes "
                 f"{describe_status(context, status)}")
    else:
        text += f"; nothing from offset {start}"
    return text


def _compare_extents(offset: int, recorded: ReplyView, live: ReplyView) -> list[Mismatch]:
    out = []
    recorded_by_name = dict(recorded.extents)
    live_by_name = dict(live.extents)
    if sorted(recorded_by_name) != sorted(live_by_name):
        out.append(Mismatch("metadata contexts", _names(sorted(recorded_by_name)),
                            _names(sorted(live_by_name)), EXTENT_SECTIONS))
    for name in sorted(set(recorded_by_name) & set(live_by_name)):
        rec, liv = list(recorded_by_name[name]), list(live_by_name[name])
        if rec == liv:
            continue
        index, at = 0, offset
        while index < min(len(rec), len(liv)) and rec[index] == liv[index]:
            at += rec[index][0]
            index += 1
        live_text = _describe_extents(name, liv, at, index)
        if merge_descriptors(rec) == merge_descriptors(liv):
            live_text += ("; the same after merging adjacent extents of equal status "
                          "(split differently)")
        out.append(Mismatch(f"extents of {name}", _describe_extents(name, rec, at, index),
                            live_text, EXTENT_SECTIONS))
    return out


def compare_replies(command: int, offset: int, length: int, recorded: ReplyView,
                    live: ReplyView, *, forms_comparable: bool = True) -> list[Mismatch]:
    """How the live answer to one request departs from the recorded one.

    ``command``, ``offset`` and ``length`` are the request's (a read's data is placed
    with them); ``forms_comparable`` is False when the two negotiations differ (then a
    simple reply against a structured one is expected, not a difference).
    """
    out = []
    recorded_errors = sorted(e for e, _ in recorded.errors)
    live_errors = sorted(e for e, _ in live.errors)
    if recorded_errors != live_errors:
        out.append(Mismatch("error", _describe_errors(recorded.errors),
                            _describe_errors(live.errors), ERROR_SECTIONS))
    if command == c.Cmd.READ:
        out += _compare_read(offset, length, recorded, live)
    if command == c.Cmd.BLOCK_STATUS and not recorded.errors and not live.errors:
        out += _compare_extents(offset, recorded, live)
    if forms_comparable and recorded.form and live.form and recorded.form != live.form:
        out.append(Mismatch("reply form", f"{recorded.form} reply", f"{live.form} reply",
                            FORM_SECTIONS))
    if Counter(recorded.unknown) != Counter(live.unknown):
        out.append(Mismatch(
            "chunk types",
            _names(c.name_of(c.ReplyType, t) for t in recorded.unknown),
            _names(c.name_of(c.ReplyType, t) for t in live.unknown),
            ("Structured reply types",)))
    return out


__all__ = [
    "Mismatch",
    "OptionReplyView",
    "ReplyView",
    "compare_export",
    "compare_option_replies",
    "compare_replies",
    "describe_block_size",
    "describe_reply",
    "flag_change",
    "option_reply_from_event",
    "option_reply_from_wire",
    "reply_from_events",
    "reply_from_wire",
]
