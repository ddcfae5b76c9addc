"""Transmission-phase commands: one request in, the reply events out.

Reply shapes follow what was negotiated: simple replies without structured
replies; with structured replies, reads (and every error) use chunks and
holes go out as ``NBD_REPLY_TYPE_OFFSET_HOLE``; with extended headers every
reply is an extended chunk.  Client violations found by the protocol state
machine become error replies with the errno the spec names, so the server
stays in sync.
"""

from __future__ import annotations

from harness.protocol import constants as c
from harness.protocol.codec import chunk, decode_block_status_payload
from harness.protocol.messages import (
    ChunkBlockStatus,
    ChunkError,
    ChunkNone,
    ChunkOffsetData,
    ChunkOffsetHole,
    ChunkPayload,
    Extent,
    ReplyChunk,
    Request,
    SimpleReply,
)
from harness.protocol.state import Negotiated, Violation

from ._types import StorageError, nbd_errno
from .config import ExportConfig
from .storage import Backend

Reply = SimpleReply | ReplyChunk
MAX_READ = 1 << 25
"""Reads up to 2^25 bytes are served even above an advertised smaller maximum
("SHOULD NOT be considered a denial of service attack"); longer ones get EOVERFLOW."""


BACKEND_ERRORS = (StorageError, ValueError, MemoryError)
"""What a backend raises for a request it cannot serve (see :func:`nbd_errno`)."""


class CommandError(Exception):
    """A command failed with an NBD errno and a message for the client's user."""

    def __init__(self, errno: int, message: str) -> None:
        super().__init__(message)
        self.errno = errno
        self.message = message


class Executor:
    """Runs the commands of one connection against its export's backend."""

    def __init__(self, negotiated: Negotiated, export: ExportConfig, backend: Backend,
                 quirks: frozenset[str] = frozenset()) -> None:
        self.neg = negotiated
        self.export = export
        self.backend = backend
        self.quirks = quirks

    # --- reply construction -------------------------------------------------------

    @property
    def chunked(self) -> bool:
        return self.neg.structured_replies or self.neg.extended_headers

    def _chunk(self, req: Request, payload: ChunkPayload, done: bool) -> ReplyChunk:
        return chunk(req.cookie, payload, done=done, extended=self.neg.extended_headers,
                     offset=req.offset)

    def success(self, req: Request) -> list[Reply]:
        if self.neg.extended_headers:
            return [self._chunk(req, ChunkNone(), True)]
        return [SimpleReply(req.cookie)]

    def failure(self, req: Request, errno: int, message: str) -> list[Reply]:
        # Structured replies: "SHOULD prefer sending errors via a structured reply";
        # reads MUST NOT get a simple reply.
        if self.chunked:
            return [self._chunk(req, ChunkError(errno, message[:4096]), True)]
        return [SimpleReply(req.cookie, errno)]

    # --- dispatch -----------------------------------------------------------------

    def execute(self, req: Request, violations: list[Violation]) -> list[Reply]:
        violations = [v for v in violations if v.rule not in self._tolerated]
        if violations:
            first = violations[0]
            return self.failure(req, self._errno(req, first),
                                f"{first.message} (spec: {first.section})")
        try:
            return self._run(req)
        except CommandError as exc:
            return self.failure(req, exc.errno, exc.message)
        except BACKEND_ERRORS as exc:
            return self.backend_failure(req, exc)

    @property
    def _tolerated(self) -> frozenset[str]:
        """Client violations a profile's server serves anyway, as that version did."""
        tolerated = set()
        if "unflagged-extended-write" in self.quirks:
            tolerated.add("client.extended-write-payload-len")
        if "sector-min-block" in self.quirks and self.export.has_default_block_sizes:
            tolerated.add("client.request-alignment")  # the 512 it advertises, never enforced
        return frozenset(tolerated)

    def _errno(self, req: Request, violation: Violation) -> int:
        """The errno a refused request gets: the spec's, or the one the profile's version
        sent (qemu 2.12+: NBD_EINVAL for every request it refuses before running it)."""
        if "request-errors-einval" in self.quirks:
            return c.Errno.EINVAL
        if ("zeroes-past-end-einval" in self.quirks and req.type == c.Cmd.WRITE_ZEROES
                and violation.rule == "client.request-within-export"):
            return c.Errno.EINVAL
        return violation.errno

    def backend_failure(self, req: Request, exc: BaseException) -> list[Reply]:
        """The error reply for a backend failure while serving ``req``.

        One mapping for every backend failure (EPERM read-only, ENOTSUP fast zero,
        ENOSPC full disk, EIO, EINVAL range).
        """
        return self.failure(req, nbd_errno(exc), str(exc) or type(exc).__name__)

    def _run(self, req: Request) -> list[Reply]:
        backend, flags = self.backend, req.flags
        fua = bool(flags & c.CmdFlag.FUA)
        match req.type:
            case c.Cmd.READ:
                return self._read(req)
            case c.Cmd.WRITE:
                backend.write(req.offset, req.payload, fua=fua)
            case c.Cmd.FLUSH:
                backend.flush()
            case c.Cmd.TRIM:
                if "trim-ignored" not in self.quirks:  # qemu-nbd's default --discard=ignore
                    backend.trim(req.offset, req.length, fua=fua)
            case c.Cmd.CACHE:
                backend.cache(req.offset, req.length)
            case c.Cmd.WRITE_ZEROES if "zeroes-stay-allocated" in self.quirks and \
                    not flags & c.CmdFlag.FAST_ZERO:
                # qemu 10+ writes the zeroes: the range stays allocated, mapped as data.
                backend.write(req.offset, bytes(req.length), fua=fua)
            case c.Cmd.WRITE_ZEROES:
                backend.write_zeroes(req.offset, req.length,
                                     may_trim=not flags & c.CmdFlag.NO_HOLE,
                                     fast=bool(flags & c.CmdFlag.FAST_ZERO), fua=fua)
            case c.Cmd.BLOCK_STATUS:
                return self._block_status(req)
            case _:
                raise CommandError(c.Errno.EINVAL, f"unsupported command {req.type}")
        return self.success(req)

    def _read(self, req: Request) -> list[Reply]:
        if req.length == 0:
            if "zero-length-read-ok" in self.quirks:
                return ([self._chunk(req, ChunkNone(), True)] if self.chunked
                        else [SimpleReply(req.cookie, 0, b"")])
            raise CommandError(c.Errno.EINVAL, "read of length 0")
        if req.length > max(self.neg.max_payload, MAX_READ):
            # "A server MAY reject a client's request with the error NBD_EOVERFLOW".
            raise CommandError(c.Errno.EOVERFLOW, f"read of {req.length} bytes exceeds the "
                               f"maximum payload {self.neg.max_payload}")
        if not self.chunked:
            return [SimpleReply(req.cookie, 0, self.backend.read(req.offset, req.length))]
        if req.flags & c.CmdFlag.DF:
            # Don't fragment: exactly one content chunk.
            segments = self.backend.segments(req.offset, req.length)
            if len(segments) == 1 and segments[0][2]:
                return [self._chunk(req, ChunkOffsetHole(req.offset, req.length), True)]
            data = self.backend.read(req.offset, req.length)
            return [self._chunk(req, ChunkOffsetData(req.offset, data), True)]
        payloads: list[ChunkPayload] = []
        for offset, length, is_zero in self.backend.segments(req.offset, req.length):
            if is_zero:
                payloads.append(ChunkOffsetHole(offset, length))
            else:
                payloads.append(ChunkOffsetData(offset, self.backend.read(offset, length)))
        return [self._chunk(req, p, i == len(payloads) - 1) for i, p in enumerate(payloads)]

    def _block_status(self, req: Request) -> list[Reply]:
        neg = self.neg
        length, ids = req.length, tuple(neg.meta_contexts)
        if req.flags & c.CmdFlag.PAYLOAD_LEN:
            payload = decode_block_status_payload(req.payload)
            length, ids = payload.effect_length, payload.context_ids
        if length == 0:
            raise CommandError(c.Errno.EINVAL, "block status of length 0")
        # The length is a hint: clip to the export, answer at least one extent.
        length = min(length, self.backend.size - req.offset)
        replies: list[Reply] = []
        for index, context_id in enumerate(ids):
            name = neg.meta_contexts[context_id]
            extents = self._extents(name, req.offset, length, bool(req.flags & c.CmdFlag.REQ_ONE))
            extents = align_extents(extents, neg.min_block, name)
            extents = extents[: c.MAX_EXTENTS_PER_CHUNK]
            if req.flags & c.CmdFlag.REQ_ONE:
                extents = extents[:1]
            status = ChunkBlockStatus(context_id, tuple(Extent(e.length, e.flags) for e in extents),
                                      wide=neg.extended_headers)
            replies.append(self._chunk(req, status, index == len(ids) - 1))
        return replies


    def _extents(self, name: str, offset: int, length: int, one: bool) -> list[Extent]:
        """The extents of context ``name`` over the request, as the profile's version
        reported them (qemu's quirks; the reference's own map otherwise)."""
        quirks, backend = self.quirks, self.backend
        if name == c.QEMU_ALLOCATION_DEPTH and "flat-image-depth-one" in quirks \
                and self.export.flat_image:
            return [Extent(length, 1)]  # a raw image is its own (only) layer everywhere
        if name.startswith(c.QEMU_DIRTY_BITMAP_PREFIX) and not one \
                and "bitmap-extents-past-request" in quirks:
            # Each run of dirty or clean granules is reported whole, past the request's end.
            whole = backend.block_status(name, offset, backend.size - offset)
            kept, covered = [], 0
            for extent in whole:
                kept.append(Extent(extent.length, extent.flags))
                covered += extent.length
                if covered >= length:
                    break
            return kept
        extents = [Extent(e.length, e.flags) for e in backend.block_status(name, offset, length)]
        if name == c.BASE_ALLOCATION:
            if "flat-image-no-hole-bit" in quirks and self.export.flat_image:
                extents = merge_equal([Extent(e.length, e.flags & ~c.StateFlag.HOLE)
                                       for e in extents])
            if "one-extent-per-status" in quirks:
                extents = extents[:1]
        return extents


def merge_equal(extents: list[Extent]) -> list[Extent]:
    """Adjacent extents of the same status as one (a server reports runs, not pieces)."""
    merged: list[Extent] = []
    for extent in extents:
        if merged and merged[-1].flags == extent.flags:
            merged[-1] = Extent(merged[-1].length + extent.length, extent.flags)
        else:
            merged.append(extent)
    return merged


def align_extents(extents: list, block: int, context: str) -> list[Extent]:
    """Merge extents so every length is a multiple of the minimum block size.

    "The server MUST use descriptor lengths that are an integer multiple of
    any advertised minimum block size."  A block that mixes states takes the
    state that is safe to report: for ``base:allocation`` only the bits set
    over the whole block (0 is always safe); for dirty bitmaps dirty if any
    part is; for allocation depth the first part's depth.
    """
    if block <= 1:
        return [Extent(e.length, e.flags) for e in extents]
    combine_or = context.startswith(c.QEMU_DIRTY_BITMAP_PREFIX)
    combine_and = context == c.BASE_ALLOCATION
    out: list[Extent] = []

    def emit(length: int, value: int) -> None:
        if out and out[-1].flags == value:
            out[-1] = Extent(out[-1].length + length, value)
        else:
            out.append(Extent(length, value))

    pos = 0
    partial: int | None = None  # combined status of the block being assembled
    partial_len = 0
    for extent in extents:
        length, value = extent.length, extent.flags
        if partial is not None:
            # Finish the block started by an earlier extent.
            take = min(length, block - partial_len)
            partial = (partial & value if combine_and else partial | value if combine_or
                       else partial)
            partial_len += take
            length -= take
            pos += take
            if partial_len == block:
                emit(block, partial)
                partial, partial_len = None, 0
        whole = length - length % block
        if whole:
            emit(whole, value)
            length -= whole
            pos += whole
        if length:
            partial, partial_len = value, length
            pos += length
    if partial is not None:
        emit(partial_len, partial)  # the export's unaligned tail
    return out
