"""The export as the recording shows it: the image unrecorded requests are served from.

Every recorded session on one export adds what it saw, in capture order: data
that READs returned (holes included), data that successful WRITEs stored,
ranges that WRITE_ZEROES and TRIM cleared, and the extents BLOCK_STATUS
reported for each metadata context.  What the recording never shows reads as
zeros (the image counts those bytes, so a report can say so) and, unless a
recorded extent says otherwise, is a hole.

:class:`ReplayImage` is a reference-server memory backend, so the reference
server's option and command code answers from it unchanged; live writes land in
it like in any export (and mark its dirty bitmaps), so a client reads back what
it wrote.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from harness.protocol import constants as c
from harness.protocol.codec import decode_chunk_payload
from harness.protocol.errors import CodecError
from harness.protocol.messages import (
    ChunkBlockStatus,
    ChunkOffsetData,
    ChunkOffsetHole,
    ReplyChunk,
    SimpleReply,
)
from reference_server import RangeMap, merge_runs, overlay_runs
from reference_server.storage import Extent, MemoryBackend

from ._serve_script import RecordedRequest, Script, succeeded

MAX_GRANULARITY = 64 * 1024
"""qemu's default bitmap granularity: the coarsest a reconstructed bitmap marks writes with."""
MIN_GRANULARITY = 512


class ReplayImage(MemoryBackend):
    """A sparse memory export with what a recording knows about it; see the module doc.

    ``contexts`` are the metadata contexts the recorded server offered: only those
    are answered (``metadata_contexts``).
    """

    def __init__(self, size: int, contexts: Iterable[str] = (),
                 granularity: dict[str, int] | None = None) -> None:
        super().__init__(size, read_only=False)
        self.contexts = list(dict.fromkeys(contexts))
        self.known: RangeMap[bool] = RangeMap(size, False)
        """Which bytes the recording (or a live write) showed."""
        self.recorded_status: dict[str, RangeMap[int | None]] = {
            name: RangeMap(size, None) for name in self.contexts
        }
        """Per context, the status value the recording last reported for each byte
        (None: never reported, or written since)."""
        granularity = granularity or {}
        for name in self.contexts:
            if name.startswith(c.QEMU_DIRTY_BITMAP_PREFIX):
                self.add_bitmap(name[len(c.QEMU_DIRTY_BITMAP_PREFIX):],
                                granularity.get(name, MAX_GRANULARITY))

    # --- what the recording shows (no bitmap marking: a read changes nothing) -----------

    def learn_data(self, offset: int, data: bytes) -> None:
        """Bytes a recorded read returned at ``offset``."""
        length = min(len(data), self.size - offset)
        if offset < 0 or length <= 0:
            return
        with self._lock:
            MemoryBackend._write(self, offset, bytes(data[:length]))
            self.known.set(offset, offset + length, True)

    def learn_hole(self, offset: int, length: int) -> None:
        """A range a recorded read reported as a hole (reads as zeros)."""
        length = min(length, self.size - offset)
        if offset < 0 or length <= 0:
            return
        with self._lock:
            MemoryBackend._zero(self, offset, length, int(c.StateFlag.HOLE | c.StateFlag.ZERO))
            self.known.set(offset, offset + length, True)

    def learn_status(self, context: str, offset: int, extents: Iterable[tuple[int, int]]) -> None:
        """Extents ``(length, status)`` a recorded block status reported from ``offset``."""
        status = self.recorded_status.get(context)
        if status is None:
            return
        position = offset
        for length, value in extents:
            status.set(position, min(position + length, self.size), value)
            position += length
            if position >= self.size:
                break

    def unknown_bytes(self, offset: int, length: int) -> int:
        """How many bytes of the range neither the recording nor a live write showed."""
        return sum(end - start for start, end, value in
                   self.known.runs(offset, offset + length) if not value)

    @property
    def known_bytes(self) -> int:
        return self.size - self.unknown_bytes(0, self.size)

    # --- changes (recorded or live writes): the recorded status no longer holds ------------

    def _changed(self, offset: int, length: int) -> None:
        for name, status in self.recorded_status.items():
            start, end = offset, offset + length
            bitmap = self.bitmaps.get(name[len(c.QEMU_DIRTY_BITMAP_PREFIX):])
            if name.startswith(c.QEMU_DIRTY_BITMAP_PREFIX) and bitmap is not None:
                # The bitmap marks whole granules: the recorded status gives way over them.
                start -= start % bitmap.granularity
                end = -(-end // bitmap.granularity) * bitmap.granularity
            status.set(start, end, None)
        self.known.set(offset, offset + length, True)

    def _write(self, offset: int, data: bytes) -> None:
        super()._write(offset, data)
        self._changed(offset, len(data))

    def _trim(self, offset: int, length: int) -> None:
        super()._trim(offset, length)
        self._changed(offset, length)

    def _write_zeroes(self, offset: int, length: int, *, may_trim: bool, fast: bool) -> None:
        super()._write_zeroes(offset, length, may_trim=may_trim, fast=fast)
        self._changed(offset, length)

    # --- status: the recorded values over what the memory holds ----------------------------

    def metadata_contexts(self) -> list[str]:
        return list(self.contexts)

    def _overlaid(self, context: str, runs: list[tuple[int, int, int]], start: int,
                  end: int) -> list[tuple[int, int, int]]:
        status = self.recorded_status.get(context)
        if status is None:
            return runs
        return overlay_runs(runs, list(status.runs(start, end)))

    def _allocation_runs(self, start: int, end: int) -> list[tuple[int, int, int]]:
        return self._overlaid(c.BASE_ALLOCATION, super()._allocation_runs(start, end), start, end)

    def _depth_runs(self, start: int, end: int) -> list[tuple[int, int, int]]:
        return self._overlaid(c.QEMU_ALLOCATION_DEPTH, super()._depth_runs(start, end), start,
                              end)

    def segments(self, offset: int, length: int) -> list[tuple[int, int, bool]]:
        # Reads follow the bytes held, never a recorded status: a hole the recording
        # reported before a write must not hide the written data.
        self._check_range(offset, length)
        result: list[tuple[int, int, bool]] = []
        with self._lock:
            runs = merge_runs(MemoryBackend._allocation_runs(self, offset, offset + length))
        for start, end, value in runs:
            is_zero = bool(value & c.StateFlag.ZERO)
            if result and result[-1][2] == is_zero:
                result[-1] = (result[-1][0], result[-1][1] + end - start, is_zero)
            else:
                result.append((start, end - start, is_zero))
        return result

    def block_status(self, context: str, offset: int, length: int) -> list[Extent]:
        if context not in self.recorded_status:
            raise KeyError(f"unknown metadata context {context!r}")
        if context in (c.BASE_ALLOCATION, c.QEMU_ALLOCATION_DEPTH):
            return super().block_status(context, offset, length)
        self._check_range(offset, length)
        if length == 0:
            return []
        bitmap = (self.bitmaps.get(context[len(c.QEMU_DIRTY_BITMAP_PREFIX):])
                  if context.startswith(c.QEMU_DIRTY_BITMAP_PREFIX) else None)
        below = bitmap.extents(offset, length) if bitmap is not None else [Extent(length, 0)]
        runs, position = [], offset
        for extent in below:
            runs.append((position, position + extent.length, extent.flags))
            position += extent.length
        with self._lock:
            merged = self._overlaid(context, runs, offset, offset + length)
        return [Extent(end - start, value) for start, end, value in merge_runs(merged)]


@dataclass
class ImageSet:
    """One reconstructed image per recorded export name."""

    images: dict[str, ReplayImage]

    def image(self, export: str) -> ReplayImage:
        return self.images[export]


def build_images(scripts: Iterable[Script]) -> ImageSet:
    """Reconstruct every export the scripts use, from all of them in capture order."""
    groups: dict[str, list[Script]] = {}
    for script in scripts:
        groups.setdefault(script.facts.name, []).append(script)
    return ImageSet({name: _build(group) for name, group in groups.items()})


def _build(scripts: list[Script]) -> ReplayImage:
    size = max(script.facts.size for script in scripts)
    contexts = [name for script in scripts for name in script.facts.contexts]
    observed = sorted(
        ((recorded.reply_frames[-1], script.index, recorded.step, recorded)
         for script in scripts for recorded in script.requests
         if recorded.complete and recorded.reply_frames),
        key=lambda item: item[:3],
    )
    image = ReplayImage(size, contexts, _granularities(r for *_, r in observed))
    for *_, recorded in observed:
        _learn(image, recorded)
    image.read_only = any(script.facts.read_only for script in scripts)
    return image


def _chunks(recorded: RecordedRequest) -> list[object]:
    payloads: list[object] = []
    for reply in recorded.replies:
        if isinstance(reply, ReplyChunk):
            try:
                payloads.append(decode_chunk_payload(reply.type, reply.payload))
            except CodecError:
                continue
    return payloads


def _granularities(observed: Iterable[RecordedRequest]) -> dict[str, int]:
    """Per dirty bitmap context, the largest power of two (512 to 64 KiB) that divides every
    boundary the recording reported: how finely a live write should mark it."""
    found: dict[str, int] = {}
    for recorded in observed:
        if recorded.request.type != c.Cmd.BLOCK_STATUS:
            continue
        for payload in _chunks(recorded):
            if not isinstance(payload, ChunkBlockStatus):
                continue
            name = recorded.contexts.get(payload.context_id, "")
            if not name.startswith(c.QEMU_DIRTY_BITMAP_PREFIX):
                continue
            granularity = found.get(name, MAX_GRANULARITY)
            position = recorded.request.offset
            for extent in payload.extents[:-1]:
                position += extent.length
                while granularity > MIN_GRANULARITY and position % granularity:
                    granularity //= 2
            found[name] = granularity
    return found


def _learn(image: ReplayImage, recorded: RecordedRequest) -> None:
    request = recorded.request
    try:
        match request.type:
            case c.Cmd.READ:
                for reply in recorded.replies:
                    if isinstance(reply, SimpleReply) and not reply.error:
                        image.learn_data(request.offset, reply.data)
                for payload in _chunks(recorded):
                    if isinstance(payload, ChunkOffsetData):
                        image.learn_data(payload.offset, payload.data)
                    elif isinstance(payload, ChunkOffsetHole):
                        image.learn_hole(payload.offset, payload.length)
            case c.Cmd.WRITE if succeeded(recorded):
                image.write(request.offset, request.payload)
            case c.Cmd.WRITE_ZEROES if succeeded(recorded):
                image.write_zeroes(request.offset, request.length,
                                   may_trim=not request.flags & c.CmdFlag.NO_HOLE)
            case c.Cmd.TRIM if succeeded(recorded):
                image.trim(request.offset, request.length)
            case c.Cmd.BLOCK_STATUS:
                for payload in _chunks(recorded):
                    if isinstance(payload, ChunkBlockStatus):
                        name = recorded.contexts.get(payload.context_id)
                        if name is not None:
                            image.learn_status(name, request.offset,
                                               ((e.length, e.flags) for e in payload.extents))
    except ValueError:
        # A recorded request outside the export (the server refused it, or the size is
        # unknown): it tells nothing about the image.
        return


__all__ = ["ImageSet", "ReplayImage", "build_images"]
