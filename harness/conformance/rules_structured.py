"""Rules of replies: simple vs structured vs extended, chunks, content, errors.

Sections "Simple reply message", "Structured reply chunk message", "Extended
reply chunk message", "Structured and extended header reply flags",
"Structured reply types" and the READ part of "Request types".  Block status
chunks are in :mod:`rules_block_status`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from harness.conformance._rule import Hit, rule
from harness.conformance._view import (
    SessionView,
    Transaction,
    chunk_type,
    follows,
    header_length,
)
from harness.dissect.model import CLIENT, SERVER, WireMessage
from harness.protocol import constants as c

RT = c.ReplyType
_CONTENT = (RT.OFFSET_DATA, RT.OFFSET_HOLE)
_KNOWN_TYPES = frozenset(int(t) for t in RT)
_DF = int(c.CmdFlag.DF)  # a plain int: IntFlag's own & is slow, and rules use it per request


def _chunks(view: SessionView) -> Sequence[WireMessage]:
    return view.messages_of("chunk")


def _extended_chunk(message: WireMessage) -> bool:
    return message.fields.get("magic") == c.EXTENDED_REPLY_MAGIC


def content_range(chunk: WireMessage) -> tuple[int, int] | None:
    """``(start, end)`` of the export a content chunk describes (None if malformed)."""
    fields = chunk.fields
    kind = chunk_type(chunk)
    if kind == RT.OFFSET_DATA and "data_offset" in fields:
        start = int(fields["data_offset"])
        return start, start + len(fields.get("data") or b"")
    if kind == RT.OFFSET_HOLE and "hole_size" in fields:
        start = int(fields["hole_offset"])
        return start, start + int(fields["hole_size"])
    return None


def error_offset(chunk: WireMessage) -> int | None:
    """The offset an NBD_REPLY_TYPE_ERROR_OFFSET chunk reports (None if malformed)."""
    if chunk_type(chunk) != RT.ERROR_OFFSET or "error_offset" not in chunk.fields:
        return None
    return int(chunk.fields["error_offset"])


def _reads(view: SessionView) -> Sequence[Transaction]:
    return view.transactions_of(c.Cmd.READ)


def _failed(view: SessionView) -> Iterator[Transaction]:
    """The transactions with an error among their replies: the only ones with error chunks."""
    return (t for t in view.transactions if t.error)


# --- which reply style --------------------------------------------------------------


@rule(id="server.structured-needs-negotiation")
def structured_needs_negotiation(view: SessionView) -> Iterator[Hit]:
    """Structured reply chunks only after NBD_OPT_STRUCTURED_REPLY succeeded."""
    negotiated = view.transmission.negotiated
    if view.transmission.entered_by is None or negotiated.replies_with_chunks:
        return
    for chunk in _chunks(view):
        if not _extended_chunk(chunk):
            yield Hit(
                chunk,
                f"structured reply chunk {chunk.name} although structured "
                "replies were not negotiated",
            )


@rule(id="server.extended-needs-negotiation")
def extended_needs_negotiation(view: SessionView) -> Iterator[Hit]:
    """Extended reply chunks only after NBD_OPT_EXTENDED_HEADERS succeeded."""
    if view.transmission.entered_by is None or view.transmission.negotiated.extended_headers:
        return
    for chunk in _chunks(view):
        if _extended_chunk(chunk):
            yield Hit(
                chunk,
                f"extended reply chunk {chunk.name} although extended headers were not negotiated",
            )


@rule(id="server.extended-reply-when-negotiated")
def extended_reply_when_negotiated(view: SessionView) -> Iterator[Hit]:
    """With extended headers, no structured (32-bit length) reply chunk."""
    if not view.transmission.negotiated.extended_headers:
        return
    for chunk in _chunks(view):
        if not _extended_chunk(chunk):
            yield Hit(
                chunk,
                f"structured reply chunk {chunk.name} although extended headers were negotiated",
            )


@rule(id="server.simple-reply-with-extended")
def simple_reply_with_extended(view: SessionView) -> Iterator[Hit]:
    """With extended headers, no simple reply."""
    if not view.transmission.negotiated.extended_headers:
        return
    for reply in view.messages_of("simple-reply"):
        if reply.direction == SERVER:
            yield Hit(reply, "simple reply although extended headers were negotiated")


@rule(id="server.no-simple-reply-to-read")
def no_simple_reply_to_read(view: SessionView) -> Iterator[Hit]:
    """With structured replies, NBD_CMD_READ is answered with chunks."""
    negotiated = view.transmission.negotiated
    if not negotiated.structured_replies or negotiated.extended_headers:
        return  # with extended headers every simple reply is wrong: another rule
    for transaction in _reads(view):
        for reply in transaction.replies:
            if reply.kind == "simple-reply":
                yield Hit(
                    reply,
                    "simple reply to NBD_CMD_READ although structured replies were negotiated",
                )


@rule(id="server.structured-errors-preferred")
def structured_errors_preferred(view: SessionView) -> Iterator[Hit]:
    """With structured replies, errors come as error chunks rather than simple replies."""
    negotiated = view.transmission.negotiated
    if not negotiated.structured_replies or negotiated.extended_headers:
        return
    for transaction in view.transactions:
        if transaction.command == c.Cmd.READ:
            continue  # a simple reply to READ is a MUST NOT: another rule
        for reply in transaction.replies:
            if reply.kind == "simple-reply" and reply.fields.get("error"):
                yield Hit(
                    reply,
                    f"{transaction.name} failed with a simple reply "
                    f"({c.name_of(c.Errno, int(reply.fields['error']))})",
                )


# --- chunk sequence and flags --------------------------------------------------------


@rule(id="server.done-last")
def done_last(view: SessionView) -> Iterator[Hit]:
    """No chunk follows the NBD_REPLY_FLAG_DONE chunk of the same reply."""
    for transaction in view.transactions:
        for reply in transaction.late:
            if reply.kind == "chunk":
                yield Hit(
                    reply,
                    f"{reply.name} for {transaction.name} (frame "
                    f"{transaction.request.frame}) after its final chunk",
                )


@rule(id="server.reply-flags-known", midstream=True)
def reply_flags_known(view: SessionView) -> Iterator[Hit]:
    """Reply chunks set no flag but NBD_REPLY_FLAG_DONE."""
    for chunk in _chunks(view):
        extra = int(chunk.fields.get("flags", 0)) & ~int(c.ReplyFlag.DONE)
        if extra:
            yield Hit(chunk, f"{chunk.name} sets unknown reply flag bits {extra:#06x}")


@rule(id="server.none-chunk-done", midstream=True)
def none_chunk_done(view: SessionView) -> Iterator[Hit]:
    """NBD_REPLY_TYPE_NONE is always the final chunk."""
    for chunk in view.chunks_of(RT.NONE):
        if not int(chunk.fields.get("flags", 0)) & c.ReplyFlag.DONE:
            yield Hit(chunk, "NBD_REPLY_TYPE_NONE without NBD_REPLY_FLAG_DONE")


@rule(id="server.none-chunk-length", midstream=True)
def none_chunk_length(view: SessionView) -> Iterator[Hit]:
    """NBD_REPLY_TYPE_NONE has no payload."""
    for chunk in view.chunks_of(RT.NONE):
        if header_length(chunk):
            yield Hit(chunk, f"NBD_REPLY_TYPE_NONE with length {header_length(chunk)}")


# --- content chunks -------------------------------------------------------------------


@rule(id="server.offset-data-length", midstream=True)
def offset_data_length(view: SessionView) -> Iterator[Hit]:
    """NBD_REPLY_TYPE_OFFSET_DATA carries an offset and at least one byte."""
    for chunk in view.chunks_of(RT.OFFSET_DATA):
        if header_length(chunk) < 9:
            yield Hit(chunk, f"NBD_REPLY_TYPE_OFFSET_DATA with length {header_length(chunk)}")


@rule(id="server.offset-hole-length", midstream=True)
def offset_hole_length(view: SessionView) -> Iterator[Hit]:
    """NBD_REPLY_TYPE_OFFSET_HOLE is exactly an offset and a size."""
    for chunk in view.chunks_of(RT.OFFSET_HOLE):
        if header_length(chunk) != 12:
            yield Hit(chunk, f"NBD_REPLY_TYPE_OFFSET_HOLE with length {header_length(chunk)}")


@rule(id="server.hole-size-nonzero", midstream=True)
def hole_size_nonzero(view: SessionView) -> Iterator[Hit]:
    """NBD_REPLY_TYPE_OFFSET_HOLE describes at least one byte."""
    for chunk in view.chunks_of(RT.OFFSET_HOLE):
        span = content_range(chunk)
        if span is not None and span[0] == span[1]:
            yield Hit(chunk, "NBD_REPLY_TYPE_OFFSET_HOLE of size 0")


@rule(id="server.content-only-for-read")
def content_only_for_read(view: SessionView) -> Iterator[Hit]:
    """Content chunks answer NBD_CMD_READ only."""
    for transaction in view.transactions:
        if transaction.command == c.Cmd.READ:
            continue
        for chunk in transaction.chunks:
            if chunk_type(chunk) in _CONTENT:
                yield Hit(chunk, f"{chunk.name} in reply to {transaction.name}")


@rule(id="server.content-within-request")
def content_within_request(view: SessionView) -> Iterator[Hit]:
    """Content chunks lie inside the range the READ asked for."""
    for transaction in _reads(view):
        start, end = transaction.offset, transaction.offset + transaction.effect_length
        for chunk in transaction.chunks:
            span = content_range(chunk)
            if span is not None and (span[0] < start or span[1] > end):
                yield Hit(
                    chunk,
                    f"{chunk.name} describes [{span[0]}, {span[1]}), outside the "
                    f"request [{start}, {end})",
                )


@rule(id="server.content-no-overlap")
def content_no_overlap(view: SessionView) -> Iterator[Hit]:
    """Content chunks of one READ do not overlap each other or an earlier error offset."""
    for transaction in _reads(view):
        if len(transaction.chunks) < 2:
            continue  # nothing came before the only chunk
        spans: list[tuple[int, int]] = []
        errors: list[int] = []
        for chunk in transaction.chunks:
            if chunk_type(chunk) == RT.ERROR_OFFSET:
                at = error_offset(chunk)
                if at is not None:
                    errors.append(at)
                continue
            span = content_range(chunk)
            if span is None:
                continue
            start, end = span
            if any(start < e and s < end for s, e in spans):
                yield Hit(chunk, f"{chunk.name} [{start}, {end}) overlaps an earlier content chunk")
            elif any(start <= at < end for at in errors):
                yield Hit(
                    chunk,
                    f"{chunk.name} [{start}, {end}) covers an offset an earlier "
                    "error chunk reported",
                )
            spans.append(span)


@rule(id="server.read-full-coverage")
def read_full_coverage(view: SessionView) -> Iterator[Hit]:
    """A successful structured READ reply covers every byte asked for."""
    for transaction in _reads(view):
        if not transaction.succeeded or not transaction.chunks:
            continue
        start, end = transaction.offset, transaction.offset + transaction.effect_length
        spans = []  # the content chunks' ranges, clipped to the request
        for chunk in transaction.chunks:
            span = content_range(chunk)
            if span is not None and min(span[1], end) > max(span[0], start):
                spans.append((max(span[0], start), min(span[1], end)))
        spans.sort()
        covered, reach = 0, start
        for s, e in spans:
            if e > reach:
                covered += e - max(s, reach)
                reach = e
        if covered < end - start:
            yield Hit(
                transaction.replies[-1],
                f"successful reply to NBD_CMD_READ (frame "
                f"{transaction.request.frame}) covers {covered} "
                f"of {end - start} bytes",
            )


@rule(id="server.df-single-content-chunk")
def df_single_content_chunk(view: SessionView) -> Iterator[Hit]:
    """A READ with NBD_CMD_FLAG_DF gets at most one content chunk."""
    for transaction in _reads(view):
        if not transaction.flags & _DF:
            continue
        content = [chunk for chunk in transaction.chunks if chunk_type(chunk) in _CONTENT]
        if len(content) > 1:
            yield Hit(
                content[1],
                f"second content chunk for an NBD_CMD_READ with "
                f"NBD_CMD_FLAG_DF (frame {transaction.request.frame})",
            )


@rule(id="server.chunk-payload-max")
def chunk_payload_max(view: SessionView) -> Iterator[Hit]:
    """The data of one NBD_REPLY_TYPE_OFFSET_DATA fits in the advertised maximum payload."""
    maximum = view.transmission.maximum_payload
    if maximum is None:
        return
    for chunk in view.chunks_of(RT.OFFSET_DATA):
        if header_length(chunk) - 8 > maximum:
            yield Hit(
                chunk,
                f"{header_length(chunk) - 8} data bytes in one chunk, more than "
                f"the advertised maximum payload {maximum}",
            )


@rule(id="server.extended-reply-offset")
def extended_reply_offset(view: SessionView) -> Iterator[Hit]:
    """An extended reply chunk repeats its request's offset."""
    for transaction in view.transactions:
        for chunk in transaction.chunks:
            if _extended_chunk(chunk) and chunk.fields.get("offset") != transaction.offset:
                yield Hit(
                    chunk,
                    f"extended reply offset {chunk.fields.get('offset')} does not "
                    f"match the request offset {transaction.offset}",
                )


# --- error chunks -----------------------------------------------------------------------


def _error_chunks(view: SessionView) -> Sequence[WireMessage]:
    return view.error_chunks


@rule(id="server.error-chunk-nonzero", midstream=True)
def error_chunk_nonzero(view: SessionView) -> Iterator[Hit]:
    """Error chunks carry a nonzero error."""
    for chunk in _error_chunks(view):
        if "error" in chunk.fields and not chunk.fields["error"]:
            yield Hit(chunk, f"{chunk.name} with error 0")


@rule(id="server.error-length", midstream=True)
def error_length(view: SessionView) -> Iterator[Hit]:
    """Error chunks hold at least the error and the message length."""
    for chunk in _error_chunks(view):
        if header_length(chunk) < 6:
            yield Hit(chunk, f"{chunk.name} with length {header_length(chunk)}")


@rule(id="server.error-offset-length", midstream=True)
def error_offset_length(view: SessionView) -> Iterator[Hit]:
    """NBD_REPLY_TYPE_ERROR_OFFSET also holds the 64-bit offset."""
    for chunk in view.chunks_of(RT.ERROR_OFFSET):
        if 6 <= header_length(chunk) < 14:
            yield Hit(chunk, f"NBD_REPLY_TYPE_ERROR_OFFSET with length {header_length(chunk)}")


@rule(id="server.error-message-fits", midstream=True)
def error_message_fits(view: SessionView) -> Iterator[Hit]:
    """An error chunk's message length fits inside the chunk (with its fixed fields)."""
    for chunk in _error_chunks(view):
        message_length = chunk.fields.get("message_length")
        if message_length is None:
            continue
        fixed = 14 if chunk_type(chunk) == RT.ERROR_OFFSET else 6
        if header_length(chunk) >= fixed and message_length > header_length(chunk) - fixed:
            yield Hit(
                chunk,
                f"{chunk.name}: message length {message_length} exceeds the "
                f"chunk length {header_length(chunk)} - {fixed}",
            )


@rule(id="server.error-message-max-length", midstream=True)
def error_message_max_length(view: SessionView) -> Iterator[Hit]:
    """Error chunk messages are at most 4096 bytes."""
    for chunk in _error_chunks(view):
        message_length = chunk.fields.get("message_length")
        if message_length is not None and message_length > c.MAX_STRING_LEN:
            yield Hit(chunk, f"{chunk.name}: message of {message_length} bytes")


@rule(id="server.error-offset-within-request")
def error_offset_within_request(view: SessionView) -> Iterator[Hit]:
    """NBD_REPLY_TYPE_ERROR_OFFSET names an offset inside the request."""
    for transaction in _failed(view):
        start = transaction.offset
        end = max(start + transaction.effect_length, start + 1)
        for chunk in transaction.chunks:
            at = error_offset(chunk)
            if at is not None and not start <= at < end:
                yield Hit(
                    chunk,
                    f"error offset {at} lies outside the request [{start}, "
                    f"{start + transaction.effect_length})",
                )


@rule(id="server.error-offset-valid-for")
def error_offset_valid_for(view: SessionView) -> Iterator[Hit]:
    """NBD_REPLY_TYPE_ERROR_OFFSET answers only commands that have a range."""
    for transaction in _failed(view):
        if transaction.command in c.ERROR_OFFSET_COMMANDS:
            continue
        for chunk in transaction.chunks:
            if chunk_type(chunk) == RT.ERROR_OFFSET:
                yield Hit(chunk, f"{chunk.name} in reply to {transaction.name}")


@rule(id="server.error-once")
def error_once(view: SessionView) -> Iterator[Hit]:
    """One reply has at most one NBD_REPLY_TYPE_ERROR chunk."""
    for transaction in _failed(view):
        errors = [chunk for chunk in transaction.chunks if chunk_type(chunk) == RT.ERROR]
        if len(errors) > 1:
            yield Hit(errors[1], f"second NBD_REPLY_TYPE_ERROR for {transaction.name}")


@rule(id="server.error-offset-not-repeated")
def error_offset_not_repeated(view: SessionView) -> Iterator[Hit]:
    """One reply reports each error offset once."""
    for transaction in _failed(view):
        seen: set[int] = set()
        for chunk in transaction.chunks:
            at = error_offset(chunk)
            if at is None:
                continue
            if at in seen:
                yield Hit(chunk, f"error offset {at} reported again")
            seen.add(at)


# --- the client's side ------------------------------------------------------------------


@rule(id="client.disconnect-on-unknown-chunk")
def disconnect_on_unknown_chunk(view: SessionView) -> Iterator[Hit]:
    """After a chunk of an unknown (non-error) type the client sends nothing more."""
    for chunk in _chunks(view):
        kind = chunk_type(chunk)
        if kind in _KNOWN_TYPES or c.is_error_chunk(kind):
            continue
        later = follows(view, chunk, CLIENT)
        if later:
            yield Hit(
                later[0],
                f"{later[0].name} sent after a chunk of unknown type {kind} "
                f"(frame {chunk.frame}) instead of disconnecting",
            )
        return
