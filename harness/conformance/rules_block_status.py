"""Rules of NBD_CMD_BLOCK_STATUS: contexts, status chunks and their descriptors.

Sections "Metadata querying", "`base:allocation` metadata context",
"Structured reply types" (the status chunk types) and the BLOCK_STATUS part of
"Request types".
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from harness.conformance._rule import Hit, rule
from harness.conformance._view import SessionView, Transaction, chunk_type, header_length
from harness.dissect.model import WireMessage
from harness.protocol import constants as c

RT = c.ReplyType
_STATUS = (RT.BLOCK_STATUS, RT.BLOCK_STATUS_EXT)
_RESERVED_LOW_BITS = 0xFFFF_FFFF & ~int(c.StateFlag.HOLE | c.StateFlag.ZERO)


def _block_status(view: SessionView) -> Sequence[Transaction]:
    return view.transactions_of(c.Cmd.BLOCK_STATUS)


def _all_status_chunks(view: SessionView) -> Sequence[WireMessage]:
    """Every status chunk of the session (whatever it answers), in causal order."""
    return view.chunks_of(*_STATUS)


def _status_chunks(transaction: Transaction) -> list[WireMessage]:
    return [chunk for chunk in transaction.chunks if chunk_type(chunk) in _STATUS]


def _context_id(chunk: WireMessage) -> int | None:
    """The context id of a status chunk (None when its payload is too short for one)."""
    context_id = chunk.fields.get("context_id")
    return None if context_id is None else int(context_id)


def descriptors(chunk: WireMessage) -> list[tuple[int, int]]:
    """``(length, status)`` of every whole descriptor of a status chunk, as decoded (the
    descriptors after the extended chunk's count, whatever the count says)."""
    return [
        (int(d["length"]), int(d["status"]))
        for d in chunk.fields.get("descriptors") or []
        if "length" in d and "status" in d
    ]


def payload_context_ids(transaction: Transaction) -> list[int] | None:
    """The context ids a payload-form BLOCK_STATUS names (None for the plain form)."""
    if not transaction.payload_form:
        return None
    fields = transaction.request.fields
    if "context_ids" in fields:
        return [int(i) for i in fields["context_ids"]]
    # A payload that is not 8 + n*4 bytes is decoded as raw data: its whole 32-bit
    # groups after the effect length are still the ids the server reads.
    data = fields.get("data") or b""
    return [int.from_bytes(data[at : at + 4], "big") for at in range(8, len(data) - 3, 4)]


def _selected(view: SessionView, transaction: Transaction) -> set[int]:
    """The context ids a BLOCK_STATUS request asks about."""
    ids = payload_context_ids(transaction)
    return set(view.transmission.contexts) if ids is None else set(ids)


def _context_name(view: SessionView, chunk: WireMessage) -> str | None:
    context_id = _context_id(chunk)
    return None if context_id is None else view.transmission.contexts.get(context_id)


# --- the client's side ------------------------------------------------------------------


@rule(id="client.block-status-needs-contexts")
def block_status_needs_contexts(view: SessionView) -> Iterator[Hit]:
    """NBD_CMD_BLOCK_STATUS only after SET_META_CONTEXT selected contexts for this export."""
    transmission = view.transmission
    if transmission.entered_by is None or transmission.contexts_usable:
        return
    exchange = transmission.contexts_exchange
    if exchange is None:
        why = "no NBD_OPT_SET_META_CONTEXT was sent"
    elif not transmission.contexts:
        why = "the last NBD_OPT_SET_META_CONTEXT selected no context"
    else:
        why = (
            f"the last NBD_OPT_SET_META_CONTEXT named export {exchange.export_name!r}, "
            f"transmission uses {transmission.export_name!r}"
        )
    for transaction in _block_status(view):
        yield Hit(transaction.request, f"NBD_CMD_BLOCK_STATUS although {why}")
        return


@rule(id="client.block-status-payload-needs-flag")
def block_status_payload_needs_flag(view: SessionView) -> Iterator[Hit]:
    """The payload form of BLOCK_STATUS only when NBD_FLAG_BLOCK_STATUS_PAYLOAD was advertised."""
    if view.transmission.flags is None or view.transmission.has(
        c.TransmissionFlag.BLOCK_STATUS_PAYLOAD
    ):
        return
    for transaction in _block_status(view):
        if transaction.payload_form:
            yield Hit(
                transaction.request,
                "NBD_CMD_BLOCK_STATUS with NBD_CMD_FLAG_PAYLOAD_LEN "
                "although NBD_FLAG_BLOCK_STATUS_PAYLOAD was not "
                "advertised",
            )


@rule(id="client.block-status-payload-size", midstream=True)
def block_status_payload_size(view: SessionView) -> Iterator[Hit]:
    """The BLOCK_STATUS payload is an effect length and whole 32-bit context ids."""
    for transaction in _block_status(view):
        if not transaction.payload_form:
            continue
        length = transaction.length
        if length < 8 or (length - 8) % 4:
            yield Hit(
                transaction.request,
                f"NBD_CMD_BLOCK_STATUS payload of {length} bytes is not 8 + n*4",
            )


# --- what the server answers --------------------------------------------------------------


@rule(id="server.block-status-payload-bad-ids")
def block_status_payload_bad_ids(view: SessionView) -> Iterator[Hit]:
    """A payload-form BLOCK_STATUS naming duplicate or unknown ids, or sent to a server that
    does not advertise the form, fails with NBD_EINVAL."""
    advertised = view.transmission.has(c.TransmissionFlag.BLOCK_STATUS_PAYLOAD)
    for transaction in _block_status(view):
        ids = payload_context_ids(transaction)
        if ids is None or not transaction.complete:
            continue
        bad = len(set(ids)) != len(ids) or not set(ids) <= set(view.transmission.contexts)
        if (bad or not advertised) and transaction.error != c.Errno.EINVAL:
            outcome = "succeeded" if not transaction.error else "failed with another error"
            why = "names duplicate or unknown context ids" if bad else "is not advertised"
            yield Hit(
                transaction.replies[-1],
                f"the payload form of NBD_CMD_BLOCK_STATUS {why} {ids}, yet the request {outcome}",
            )


@rule(id="server.block-status-einval-without-context")
def block_status_einval_without_context(view: SessionView) -> Iterator[Hit]:
    """BLOCK_STATUS without selected contexts fails with NBD_EINVAL."""
    transmission = view.transmission
    if transmission.entered_by is None or transmission.contexts:
        return
    for transaction in _block_status(view):
        if transaction.complete and transaction.error != c.Errno.EINVAL:
            yield Hit(
                transaction.replies[-1],
                "NBD_CMD_BLOCK_STATUS without selected contexts not answered with NBD_EINVAL",
            )


@rule(id="server.block-status-via-chunks")
def block_status_via_chunks(view: SessionView) -> Iterator[Hit]:
    """A successful BLOCK_STATUS is never a simple reply."""
    for transaction in _block_status(view):
        for reply in transaction.replies:
            if reply.kind == "simple-reply" and not reply.fields.get("error"):
                yield Hit(reply, "successful NBD_CMD_BLOCK_STATUS answered with a simple reply")


@rule(id="server.status-chunk-type")
def status_chunk_type(view: SessionView) -> Iterator[Hit]:
    """32-bit status chunks with structured replies, 64-bit ones with extended headers."""
    if view.transmission.entered_by is None:
        return
    extended = view.transmission.negotiated.extended_headers
    expected = RT.BLOCK_STATUS_EXT if extended else RT.BLOCK_STATUS
    for transaction in _block_status(view):
        for chunk in _status_chunks(transaction):
            if chunk_type(chunk) != expected:
                yield Hit(chunk, f"{chunk.name} where {c.spec_name(expected)} is required")


@rule(id="server.status-one-chunk-per-context")
def status_one_chunk_per_context(view: SessionView) -> Iterator[Hit]:
    """A successful BLOCK_STATUS has one status chunk for each selected context, no more."""
    for transaction in _block_status(view):
        if not transaction.succeeded or not transaction.chunks:
            continue  # (a simple reply to BLOCK_STATUS is another rule)
        selected = _selected(view, transaction)
        seen: set[int] = set()
        for chunk in _status_chunks(transaction):
            context_id = _context_id(chunk)
            if context_id in seen:
                yield Hit(chunk, f"second status chunk for context id {context_id}")
            if context_id is not None:
                seen.add(context_id)
        missing = selected - seen
        if missing:
            yield Hit(
                transaction.replies[-1],
                f"successful NBD_CMD_BLOCK_STATUS (frame "
                f"{transaction.request.frame}) lacks a status "
                f"chunk for context id(s) {sorted(missing)}",
            )


@rule(id="server.status-selected-contexts-only")
def status_selected_contexts_only(view: SessionView) -> Iterator[Hit]:
    """Status chunks only for the contexts the request selected."""
    for transaction in _block_status(view):
        selected = _selected(view, transaction)
        for chunk in _status_chunks(transaction):
            context_id = _context_id(chunk)
            if context_id is not None and context_id not in selected:
                yield Hit(
                    chunk,
                    f"status chunk for context id {context_id}, which the request "
                    f"did not select (selected: {sorted(selected)})",
                )


@rule(id="server.status-chunk-length", midstream=True)
def status_chunk_length(view: SessionView) -> Iterator[Hit]:
    """NBD_REPLY_TYPE_BLOCK_STATUS: a context id and whole 8-byte descriptors."""
    for chunk in view.chunks_of(RT.BLOCK_STATUS):
        length = header_length(chunk)
        if length < 4 or (length - 4) % 8:
            yield Hit(chunk, f"NBD_REPLY_TYPE_BLOCK_STATUS of length {length}")


@rule(id="server.status-ext-chunk-length", midstream=True)
def status_ext_chunk_length(view: SessionView) -> Iterator[Hit]:
    """NBD_REPLY_TYPE_BLOCK_STATUS_EXT: id, count and whole 16-byte descriptors."""
    for chunk in view.chunks_of(RT.BLOCK_STATUS_EXT):
        length = header_length(chunk)
        if length < 8 or (length - 8) % 16:
            yield Hit(chunk, f"NBD_REPLY_TYPE_BLOCK_STATUS_EXT of length {length}")


@rule(id="server.status-at-least-one-descriptor", midstream=True)
def status_at_least_one_descriptor(view: SessionView) -> Iterator[Hit]:
    """Every status chunk has at least one descriptor."""
    for chunk in _all_status_chunks(view):
        if not descriptors(chunk):
            yield Hit(chunk, f"{chunk.name} without any descriptor")


@rule(id="server.status-ext-count", midstream=True)
def status_ext_count(view: SessionView) -> Iterator[Hit]:
    """NBD_REPLY_TYPE_BLOCK_STATUS_EXT counts its descriptors right."""
    for chunk in view.chunks_of(RT.BLOCK_STATUS_EXT):
        count = chunk.fields.get("count")
        if count is None:
            continue
        actual = len(descriptors(chunk))
        if count != actual:
            yield Hit(chunk, f"descriptor count {count}, but {actual} descriptor(s) follow")


@rule(id="server.status-descriptor-nonzero", midstream=True)
def status_descriptor_nonzero(view: SessionView) -> Iterator[Hit]:
    """Every descriptor covers at least one byte."""
    for chunk in _all_status_chunks(view):
        zero = [i for i, (length, _status) in enumerate(descriptors(chunk)) if length == 0]
        if zero:
            yield Hit(chunk, f"{chunk.name}: descriptor(s) {zero} have length 0")


@rule(id="server.req-one-single-descriptor")
def req_one_single_descriptor(view: SessionView) -> Iterator[Hit]:
    """With NBD_CMD_FLAG_REQ_ONE, each status chunk has exactly one descriptor."""
    for transaction in _block_status(view):
        if not transaction.flags & c.CmdFlag.REQ_ONE:
            continue
        for chunk in _status_chunks(transaction):
            count = len(descriptors(chunk))
            if count > 1:
                yield Hit(chunk, f"{count} descriptors despite NBD_CMD_FLAG_REQ_ONE")


@rule(id="server.req-one-length")
def req_one_length(view: SessionView) -> Iterator[Hit]:
    """With NBD_CMD_FLAG_REQ_ONE, the descriptor does not reach past the request."""
    for transaction in _block_status(view):
        if not transaction.flags & c.CmdFlag.REQ_ONE:
            continue
        for chunk in _status_chunks(transaction):
            found = descriptors(chunk)
            if found and found[0][0] > transaction.effect_length:
                yield Hit(
                    chunk,
                    f"descriptor of {found[0][0]} bytes for a request of "
                    f"{transaction.effect_length} with NBD_CMD_FLAG_REQ_ONE",
                )


@rule(id="server.status-sum-below-length")
def status_sum_below_length(view: SessionView) -> Iterator[Hit]:
    """Only the last descriptor of a chunk may reach past the requested length."""
    for transaction in _block_status(view):
        if transaction.flags & c.CmdFlag.REQ_ONE:
            continue
        for chunk in _status_chunks(transaction):
            found = descriptors(chunk)
            before_last = sum(length for length, _status in found[:-1])
            if len(found) > 1 and before_last >= transaction.effect_length:
                yield Hit(
                    chunk,
                    f"the first {len(found) - 1} descriptors already cover "
                    f"{before_last} bytes of a {transaction.effect_length}-byte "
                    "request",
                )


@rule(id="server.status-descriptor-min-block")
def status_descriptor_min_block(view: SessionView) -> Iterator[Hit]:
    """Descriptor lengths are multiples of the advertised minimum block size."""
    minimum = view.transmission.minimum_block
    if minimum <= 1:
        return
    for transaction in _block_status(view):
        for chunk in _status_chunks(transaction):
            odd = [length for length, _status in descriptors(chunk) if length % minimum]
            if odd:
                yield Hit(
                    chunk,
                    f"descriptor length {odd[0]} is not a multiple of the minimum "
                    f"block size {minimum}",
                )


@rule(id="server.status-upper-bits-zero")
def status_upper_bits_zero(view: SessionView) -> Iterator[Hit]:
    """64-bit statuses of ``base:`` contexts fit in 32 bits."""
    for transaction in _block_status(view):
        for chunk in _status_chunks(transaction):
            name = _context_name(view, chunk)
            if chunk_type(chunk) != RT.BLOCK_STATUS_EXT or not (name or "").startswith("base:"):
                continue
            wide = [status for _length, status in descriptors(chunk) if status >> 32]
            if wide:
                yield Hit(chunk, f"{name} status {wide[0]:#x} uses the upper 32 bits")


@rule(id="server.status-extents-cap", midstream=True)
def status_extents_cap(view: SessionView) -> Iterator[Hit]:
    """At most 2^20 descriptors in one status chunk."""
    limit = c.MAX_EXTENTS_PER_CHUNK
    for chunk in _all_status_chunks(view):
        count = len(descriptors(chunk))
        if count > limit:
            yield Hit(chunk, f"{count} descriptors in one chunk (more than {limit})")


@rule(id="server.base-allocation-reserved-bits")
def base_allocation_reserved_bits(view: SessionView) -> Iterator[Hit]:
    """``base:allocation`` statuses use only NBD_STATE_HOLE and NBD_STATE_ZERO."""
    for transaction in _block_status(view):
        for chunk in _status_chunks(transaction):
            if _context_name(view, chunk) != c.BASE_ALLOCATION:
                continue
            # (the upper 32 bits of a 64-bit status are a MUST: another rule)
            odd = [s for _length, s in descriptors(chunk) if s & _RESERVED_LOW_BITS]
            if odd:
                yield Hit(chunk, f"base:allocation status {odd[0]:#x} sets reserved bits")
