"""What must adapt when a recorded client message is sent to a live server, and nothing else.

A recorded option or request is read back with the protocol codec into a
semantic message; then only these change:

- the export name, when the user asked for another one (``--export``);
- the request header form, when the live negotiation differs from the
  recorded one (compact vs extended headers; a write then gains or loses
  ``NBD_CMD_FLAG_PAYLOAD_LEN``, as each form requires);
- the metadata context ids in a block status payload, mapped by name to the
  ids the live server assigned.

A request the live negotiation cannot express (a 64-bit length without
extended headers, a flag or command the live server does not offer although
the recorded one did, a context the live server did not select) is not sent:
:func:`adapt_request` says why.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from harness.dissect import WireMessage
from harness.protocol import Negotiated
from harness.protocol import constants as c
from harness.protocol.codec import (
    decode_block_status_payload,
    decode_option_payload,
    decode_option_request,
    decode_request,
    encode_block_status_payload,
    encode_option_payload,
)
from harness.protocol.errors import CodecError
from harness.protocol.messages import (
    BlockStatusRequestPayload,
    ExportNamePayload,
    InfoRequestPayload,
    MetaContextPayload,
    OptionRequest,
    Request,
)

TF = c.TransmissionFlag
_MAX_COMPACT_LENGTH = 0xFFFFFFFF


def recorded_option(message: WireMessage) -> OptionRequest:
    """The recorded option as the codec reads it."""
    decoded = decode_option_request(message.wire)
    if decoded is None:  # the dissector framed it whole, so this does not happen
        raise CodecError(f"{message.name} at frame {message.frame} is incomplete")
    request, _ = decoded
    assert isinstance(request, OptionRequest)
    return request


def recorded_request(message: WireMessage) -> Request:
    """The recorded request as the codec reads it."""
    decoded = decode_request(message.wire)
    if decoded is None:
        raise CodecError(f"{message.name} at frame {message.frame} is incomplete")
    request, _ = decoded
    assert isinstance(request, Request)
    return request


def option_export_name(request: OptionRequest) -> str | None:
    """The export an option names (EXPORT_NAME, INFO, GO, *_META_CONTEXT), if any."""
    try:
        payload = decode_option_payload(request.option, request.data)
    except CodecError:
        return None
    if isinstance(payload, ExportNamePayload | InfoRequestPayload | MetaContextPayload):
        return payload.name
    return None


def rename_export(request: OptionRequest, export_name: str | None) -> OptionRequest:
    """``request`` naming ``export_name`` instead of its recorded export (None: unchanged)."""
    if export_name is None:
        return request
    try:
        payload = decode_option_payload(request.option, request.data)
    except CodecError:
        return request  # sent as recorded: its data does not even parse
    if not isinstance(payload, ExportNamePayload | InfoRequestPayload | MetaContextPayload):
        return request
    renamed = replace(payload, name=export_name)
    return OptionRequest(request.option, encode_option_payload(renamed))


@dataclass(frozen=True)
class RequestPlan:
    """What to send for one recorded request, or why nothing is sent."""

    request: Request | None
    skip_reason: str = ""
    sections: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()


def _skip(reason: str, *sections: str) -> RequestPlan:
    return RequestPlan(None, reason, tuple(sections))


def adapt_request(request: Request, recorded: Negotiated, live: Negotiated) -> RequestPlan:
    """The request to send live for ``request``, given both negotiations.

    Something the recorded server offered but the live one does not makes the
    request unsendable; something the recorded client used without the recorded
    server offering it is sent as recorded (the live server judges it as the
    recorded one did).
    """
    name = c.name_of(c.Cmd, request.type)
    required = c.CMD_REQUIRES_TFLAG.get(request.type)
    if (required and recorded.transmission_flags & required
            and not live.transmission_flags & required):
        return _skip(f"the live server does not offer {c.spec_name(required)}",
                     "Transmission flags", "Request types")
    for flag, needed in c.FLAG_REQUIRES_TFLAG.items():
        if (request.flags & flag and recorded.transmission_flags & needed
                and not live.transmission_flags & needed):
            return _skip(f"it sets {c.spec_name(c.CmdFlag(flag))}, and the live server does not "
                         f"offer {c.spec_name(needed)}", "Transmission flags", "Command flags")
    if (request.flags & c.CmdFlag.DF and recorded.reply_form != "simple"
            and live.reply_form == "simple"):
        return _skip("it sets NBD_CMD_FLAG_DF, which needs structured replies; the live "
                     "negotiation has none", "Command flags", "Option types")
    notes: list[str] = []
    if request.type == c.Cmd.BLOCK_STATUS:
        if recorded.meta_contexts and not live.meta_contexts:
            return _skip("no metadata context was selected live", "Metadata querying",
                         "Request types")
        if request.flags & c.CmdFlag.PAYLOAD_LEN and request.extended and live.extended_headers:
            if (recorded.transmission_flags & TF.BLOCK_STATUS_PAYLOAD
                    and not live.transmission_flags & TF.BLOCK_STATUS_PAYLOAD):
                return _skip("it asks for chosen metadata contexts (NBD_CMD_FLAG_PAYLOAD_LEN), "
                             "and the live server does not offer "
                             "NBD_FLAG_BLOCK_STATUS_PAYLOAD", "Transmission flags",
                             "Request types")
            plan = _remap_contexts(request, recorded, live)
            if plan.request is None:
                return plan
            request, notes = plan.request, list(plan.notes)
    if request.extended and not live.extended_headers:
        return _to_compact(request, name, notes)
    if not request.extended and live.extended_headers:
        flags = request.flags | (c.CmdFlag.PAYLOAD_LEN if request.type == c.Cmd.WRITE else 0)
        return RequestPlan(replace(request, flags=flags, extended=True), notes=tuple(notes))
    return RequestPlan(request, notes=tuple(notes))


def _to_compact(request: Request, name: str, notes: list[str]) -> RequestPlan:
    flags = request.flags
    if flags & c.CmdFlag.PAYLOAD_LEN:
        if request.type == c.Cmd.BLOCK_STATUS:
            return _skip("it asks for chosen metadata contexts (NBD_CMD_FLAG_PAYLOAD_LEN), "
                         "which needs extended headers", "Request types", "Request message")
        if request.type != c.Cmd.WRITE:
            return _skip(f"{name} carries a payload (NBD_CMD_FLAG_PAYLOAD_LEN), which needs "
                         "extended headers", "Request message")
        flags &= ~c.CmdFlag.PAYLOAD_LEN
    length = len(request.payload) if request.type == c.Cmd.WRITE else request.length
    if length > _MAX_COMPACT_LENGTH:
        return _skip(f"its length of {length} bytes needs 64-bit lengths (extended headers)",
                     "Request message", "Size constraints")
    compact = replace(request, flags=flags, length=length, extended=False)
    return RequestPlan(compact, notes=tuple(notes))


def _remap_contexts(request: Request, recorded: Negotiated, live: Negotiated) -> RequestPlan:
    """A block status payload naming the live ids of the recorded contexts."""
    try:
        payload = decode_block_status_payload(request.payload)
    except CodecError:
        return RequestPlan(request)  # sent as recorded: the live server judges it
    live_ids = {context_name: cid for cid, context_name in live.meta_contexts.items()}
    mapped, notes = [], []
    for cid in payload.context_ids:
        context_name = recorded.meta_contexts.get(cid)
        if context_name is None:
            mapped.append(cid)  # an id the recorded server never assigned: kept as recorded
            continue
        if context_name not in live_ids:
            return _skip(f"it asks for {context_name}, which the live server did not select",
                         "Metadata querying", "Request types")
        mapped.append(live_ids[context_name])
        if live_ids[context_name] != cid:
            notes.append(f"context id {cid} ({context_name}) sent as the live id "
                         f"{live_ids[context_name]}")
    if mapped == list(payload.context_ids):
        return RequestPlan(request)
    data = encode_block_status_payload(BlockStatusRequestPayload(payload.effect_length,
                                                                 tuple(mapped)))
    return RequestPlan(replace(request, payload=data, length=len(data)), notes=tuple(notes))


__all__ = [
    "RequestPlan",
    "adapt_request",
    "option_export_name",
    "recorded_option",
    "recorded_request",
    "rename_export",
]
