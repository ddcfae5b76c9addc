"""Decoded captures as text (like ``tshark -V``) and as JSON-ready data.

Text: per session a header (endpoints, negotiated state, byte accounting), then
per message a line ``frame N  [session S] client→server  NBD_OPT_GO`` and its
fields indented, enums and flags with their spec names, data as a length and
the first 16 bytes (all of it with ``data=True``), block status descriptors one
per line with their status decoded for their context.  Undecoded regions show
with their reason.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from typing import Any

from scapy.fields import (
    ConditionalField,
    EnumField,
    Field,
    FieldListField,
    FlagsField,
    PacketListField,
    StrField,
)
from scapy.packet import NoPayload, Packet, Padding, Raw

from harness.dissect._bytes import CapturedData
from harness.dissect.layers import MAGIC_NAMES, TextField, TextLenField
from harness.dissect.model import CLIENT, Capture, Session, Undecoded, WireMessage
from harness.protocol import constants as c

_PREVIEW = 16
_ARROW = {CLIENT: "client→server", "server": "server→client"}


def render_capture(capture: Capture, *, session: int | None = None, data: bool = False) -> str:
    """The whole capture (or one session of it) as readable text."""
    return render_capture_indexed(capture, session=session, data=data)[0]


def render_capture_indexed(capture: Capture, *, session: int | None = None,
                           data: bool = False) -> tuple[str, list[dict[str, Any]]]:
    """:func:`render_capture`, and where each message and undecoded region is in the text.

    The index has one entry per block, in text order: ``line`` (1-based) and
    ``lines`` (how many), ``session``, ``direction``, ``offset`` (in the
    direction's byte stream: what a finding points at), ``frame``,
    ``last_frame``, ``time`` (capture timestamp of the first frame, Unix time),
    ``kind`` and ``name``.  Reports use it to highlight the messages a finding or
    a scenario step is about.
    """
    lines = [f"capture {capture.path}: {capture.frames} frames, {len(capture.sessions)} session(s)"]
    lines.extend(f"note: {note}" for note in capture.notes)
    index: list[dict[str, Any]] = []
    for item in capture.sessions:
        if session is None or item.index == session:
            lines.append("")
            lines.extend(_render_session(item, data, index, len(lines)))
    return "\n".join(lines) + "\n", index


def render_session(session: Session, *, data: bool = False) -> list[str]:
    """Header, messages and undecoded regions of one session, as lines."""
    return _render_session(session, data, [], 0)


def _render_session(session: Session, data: bool, index: list[dict[str, Any]],
                    before: int) -> list[str]:
    lines = _session_header(session)
    for message in session.messages:
        block = render_message(message, data=data)
        index.append({"line": before + len(lines) + 1, "lines": len(block),
                      "session": session.index, "direction": message.direction,
                      "offset": message.offset, "frame": message.frame,
                      "last_frame": message.last_frame, "time": message.time,
                      "kind": message.kind, "name": message.name})
        lines.extend(block)
    for region in sorted(session.undecoded, key=lambda u: (u.direction, u.offset)):
        index.append({"line": before + len(lines) + 1, "lines": 1, "session": session.index,
                      "direction": region.direction, "offset": region.offset,
                      "frame": region.frame, "last_frame": region.frame, "time": None,
                      "kind": "undecoded", "name": f"UNDECODED ({region.kind})"})
        lines.append(_undecoded_line(region))
    return lines


def _session_header(session: Session) -> list[str]:
    state = session.state
    client = f"{session.client[0]}:{session.client[1]}"
    server = f"{session.server[0]}:{session.server[1]}"
    lines = [
        f"=== session {session.index}: client {client}  server {server}  "
        f"(frames {session.first_frame}-{session.last_frame})"
    ]
    if not session.nbd:
        lines.append("    not NBD")
    else:
        negotiated = [state.style or "style unknown"]
        if state.no_zeroes:
            negotiated.append("no zeroes")
        if state.structured_replies:
            negotiated.append("structured replies")
        if state.extended_headers:
            negotiated.append("extended headers")
        if state.tls:
            negotiated.append("TLS")
        lines.append(f"    {', '.join(negotiated)}; phase {session.phase}")
        if state.meta_contexts:
            contexts = ", ".join(
                f"{i}={name}" for i, name in sorted(state.meta_contexts.items())
            )
            lines.append(f"    metadata contexts: {contexts}")
        if state.export_size is not None or state.export_name is not None:
            # The flags come with the size (oldstyle greeting, NBD_INFO_EXPORT,
            # export-name reply): without a size they were never seen.
            flags = state.transmission_flags if state.export_size is not None else None
            lines.append(
                f"    export {state.export_name!r}: size {state.export_size}, transmission "
                f"flags {_flags_text(flags, c.TransmissionFlag) if flags is not None else '?'}"
            )
    if session.joined_midstream:
        lines.append("    joined mid-stream (no SYN captured)")
    for direction in (CLIENT, "server"):
        undecoded = sum(u.length for u in session.undecoded if u.direction == direction)
        lines.append(
            f"    {direction} bytes: {session.bytes_total[direction]} "
            f"({session.bytes_decoded[direction]} decoded, {session.bytes_tls[direction]} TLS, "
            f"{undecoded} undecoded)"
        )
    lines.extend(f"    note: {note}" for note in session.notes)
    return lines


def render_message(message: WireMessage, *, data: bool = False) -> list[str]:
    """One message: its heading line, then one indented line per field."""
    lines = [_heading(message)]
    for label, text in _field_lines(message, data):
        lines.append(f"    {label}: {text}" if label else f"    {text}")
    lines.extend(f"    note: {note}" for note in message.notes)
    if message.truncated:
        lines.append(f"    note: cut short: {message.missing} byte(s) promised never came")
    return lines


def _heading(message: WireMessage) -> str:
    title = message.name
    fields = message.fields
    if message.kind == "option-reply" and "info_type" in fields:
        title += f" ({c.name_of(c.Info, fields['info_type'])})"
    if message.kind == "chunk" and fields.get("flags", 0) & c.ReplyFlag.DONE:
        title += " DONE"
    answered = message.request or message.option
    if answered is not None:
        title += f", answers {answered.name} (frame {answered.frame})"
    frames = (
        f"frame {message.frame}"
        if message.frame == message.last_frame
        else f"frames {message.frame}-{message.last_frame}"
    )
    return f"{frames}  [session {message.session}] {_ARROW[message.direction]}  {title}"


def _undecoded_line(region: Undecoded) -> str:
    return (
        f"frame {region.frame}  [session {region.session}] {_ARROW[region.direction]}  "
        f"UNDECODED {region.length} bytes at offset {region.offset}: {region.reason}"
    )


def _present_fields(packet: Packet) -> Iterator[tuple[Field[Any, Any] | None, Packet]]:
    """Every field present on the wire, layer by layer (``None`` for Raw/Padding)."""
    layer: Packet = packet
    while not isinstance(layer, NoPayload):
        if isinstance(layer, Raw | Padding):
            yield None, layer
        else:
            cut_short = getattr(layer, "cut_short", False)
            for field in layer.fields_desc:
                if cut_short and field.name not in layer.fields:
                    continue  # a message cut short before this field
                if isinstance(field, ConditionalField):
                    if not field._evalcond(layer):
                        continue
                    field = field.fld
                yield field, layer
        layer = layer.payload


def _field_lines(message: WireMessage, data: bool) -> Iterator[tuple[str, str]]:
    for field, layer in _present_fields(message.packet):
        if field is None:
            yield "trailing", _bytes_text(bytes(layer.load), data)
            continue
        value = layer.getfieldval(field.name)
        label = field.name.replace("_", " ")
        if isinstance(field, PacketListField):
            elements = message.fields.get(field.name, [])
            yield label, str(len(elements))
            for element in elements:
                yield "", "  " + _element_text(element)
        elif isinstance(field, FieldListField):
            yield label, _list_text(field, value, message)
        else:
            yield label, _value_text(field, value, message, data)


def _value_text(field: Field[Any, Any], value: Any, message: WireMessage, data: bool) -> str:
    if isinstance(field, TextField | TextLenField):
        return repr((value or b"").decode("utf-8", errors="replace"))
    if isinstance(field, FlagsField):
        return _flags_text(int(value), _flag_type(field.name, message))
    if isinstance(field, EnumField):
        number = int(value)
        name = field.i2s.get(number) if field.i2s else None
        return f"{number} ({name})" if name else f"{number} (unknown)"
    if isinstance(field, StrField):
        return _bytes_text(value or b"", data)
    number = int(value)
    if "magic" in field.name:
        return f"{number:#x} ({MAGIC_NAMES.get(number, 'unknown magic')})"
    if field.name == "cookie":
        return f"{number:#x}"
    if field.name == "context_id" and "context_name" in message.fields:
        return f"{number} ({message.fields['context_name'] or 'not negotiated'})"
    if field.name == "status":
        return f"{number:#x}"
    return str(number)


_FLAG_TYPES = {
    "handshake_flags": c.HandshakeFlag,
    "client_flags": c.ClientFlag,
    "transmission_flags": c.TransmissionFlag,
    "init_flags": c.InitFlag,
}


def _flag_type(name: str, message: WireMessage) -> type[enum.IntFlag]:
    if name in _FLAG_TYPES:
        return _FLAG_TYPES[name]
    return c.ReplyFlag if message.kind == "chunk" else c.CmdFlag


def _flags_text(value: int, flag_type: type[enum.IntFlag]) -> str:
    names = [str(m.name) for m in flag_type if m.value and value & m.value == m.value]
    rest = value & ~sum(m.value for m in flag_type)
    if rest:
        names.append(f"{rest:#x}")
    return f"{value:#x} ({'|'.join(names)})" if names else f"{value:#x}"


def _list_text(field: FieldListField, value: Any, message: WireMessage) -> str:
    items = [int(v) for v in value or []]
    if field.name == "info_requests":
        return "[" + ", ".join(c.name_of(c.Info, i) for i in items) + "]"
    if field.name == "context_ids":
        names = message.fields.get("context_names") or [None] * len(items)
        return (
            "["
            + ", ".join(
                f"{i} ({n or 'not negotiated'})" for i, n in zip(items, names, strict=False)
            )
            + "]"
        )
    return str(items)


def _element_text(element: dict[str, Any]) -> str:
    if "query" in element:
        return f"query {element['query']!r}"
    text = f"length {element.get('length')}  status {element.get('status', 0):#x}"
    if "status_text" in element:
        text += f" ({element['status_text']})"
    return text


def _bytes_text(value: bytes, data: bool) -> str:
    if value and not value.strip(b"\0"):
        return f"{len(value)} bytes, all zero"
    shown = value if data else value[:_PREVIEW]
    more = "" if len(shown) == len(value) else " ..."
    return f"{len(value)} bytes: {shown.hex(' ')}{more}" if value else "0 bytes"


# --- JSON -----------------------------------------------------------------------


def render_json(
    capture: Capture, *, session: int | None = None, data: bool = False
) -> list[dict[str, Any]]:
    """Messages (and undecoded regions, ``kind: "undecoded"``) as JSON-ready dicts.

    Each item has an ``id``; replies name the ``request`` / ``option`` they
    answer by that id.  Bytes become ``{"length": N, "hex": ..., "complete":
    bool}`` with the first 16 bytes unless ``data`` is true.
    """
    return list(iter_json(capture, session=session, data=data))


def iter_json(
    capture: Capture, *, session: int | None = None, data: bool = False
) -> Iterator[dict[str, Any]]:
    """:func:`render_json`'s items one at a time (to write them out as they come)."""
    count = 0
    ids: dict[int, int] = {}
    for item in capture.sessions:
        if session is not None and item.index != session:
            continue
        for message in item.messages:
            ids[id(message)] = count
            count += 1
            yield (
                {
                    "id": count - 1,
                    "session": message.session,
                    "direction": message.direction,
                    "kind": message.kind,
                    "name": message.name,
                    "frame": message.frame,
                    "last_frame": message.last_frame,
                    "offset": message.offset,
                    "length": message.length,
                    "time": message.time,
                    "request": ids.get(id(message.request)) if message.request else None,
                    "option": ids.get(id(message.option)) if message.option else None,
                    "fields": _jsonable(message.fields, data),
                    "notes": list(message.notes),
                    "missing": message.missing,
                }
            )
        for region in item.undecoded:
            count += 1
            yield (
                {
                    "id": count - 1,
                    "session": region.session,
                    "direction": region.direction,
                    "kind": "undecoded",
                    "frame": region.frame,
                    "offset": region.offset,
                    "length": region.length,
                    "reason": region.reason,
                    "undecoded_kind": region.kind,
                    "expected": region.expected,
                    "expected_magic": list(region.expected_magic),
                    "found_magic": region.found_magic,
                    "resumed_at": region.resumed_at,
                }
            )


def _jsonable(value: Any, data: bool) -> Any:
    if isinstance(value, bytes | CapturedData):  # bulk data: only the preview is read
        shown = value if data else value[:_PREVIEW]
        return {"length": len(value), "hex": shown.hex(), "complete": len(shown) == len(value)}
    if isinstance(value, dict):
        return {key: _jsonable(item, data) for key, item in value.items()}
    if isinstance(value, list):
        return [_jsonable(item, data) for item in value]
    return value
