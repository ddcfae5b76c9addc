"""TCP reassembly: frames in, one byte stream per connection and direction out.

Per direction the segments are placed by sequence number, in capture order, so
that out-of-order segments land where they belong and the first copy of a
retransmitted or overlapping byte wins (a retransmission that carries
*different* bytes is noted).  Each direction keeps, for every byte offset, the
frame it arrived in.  Missing bytes are gaps: the stream handed to the NBD
decoder stops at the first one, and what was captured after it is kept as
"islands" so that every captured byte is still accounted for.

A connection whose SYN is not in the capture is "joined mid-stream": its
stream starts at the lowest sequence number seen.

Bytes are not copied: a piece of a stream is the place of its bytes in the capture
(:mod:`harness.dissect._bytes`), so reassembling a large capture costs memory per frame,
not per byte.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from harness.dissect._bytes import Source, StreamBytes
from harness.dissect._capfile import Frame
from harness.dissect._netlayers import NotTcp, tcp_segment
from harness.pcapformat import TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN

Endpoint = tuple[str, int]

_SEQ_SPACE = 1 << 32
_HALF_SEQ_SPACE = 1 << 31


@dataclass
class DirectionStream:
    """One direction of a connection, reassembled.

    ``data`` holds the bytes from offset 0 up to the first gap (read from the capture
    when asked for).  ``total`` counts every captured byte, including the islands after
    gaps.
    """

    data: StreamBytes
    total: int
    gaps: list[tuple[int, int]]
    """(offset, number of missing bytes), in stream order."""
    islands: list[tuple[int, int]]
    """(offset, length) of captured bytes after the first gap."""
    run_starts: list[int]
    run_frames: list[int]
    frame_times: Sequence[float]
    """Capture time of each frame, indexed by frame number (index 0 unused)."""
    notes: list[str] = field(default_factory=list)
    syn_seen: bool = False
    fin_seen: bool = False
    reset_seen: bool = False
    end_frame: int = 0
    """The frame of this direction's first FIN or RST (0 when the capture shows none)."""
    end_reset: bool = False
    """That frame was an RST."""

    def frame_at(self, offset: int) -> int:
        """Frame number in which the byte at ``offset`` arrived (0 if none)."""
        index = bisect.bisect_right(self.run_starts, offset) - 1
        return self.run_frames[index] if index >= 0 else 0

    def completing_frame(self, start: int, end: int) -> int:
        """The frame that completed bytes ``[start, end)``: the latest one they arrived in.

        With out-of-order segments this is not the frame of the last byte.
        """
        first = max(bisect.bisect_right(self.run_starts, start) - 1, 0)
        if self._within_run(first, end):
            return self.run_frames[first]
        last = bisect.bisect_left(self.run_starts, end)
        return max(self.run_frames[first:last], default=0)

    def starting_frame(self, start: int, end: int) -> int:
        """The first frame any of bytes ``[start, end)`` arrived in (with segments out of
        order, not always the frame of the first byte)."""
        first = max(bisect.bisect_right(self.run_starts, start) - 1, 0)
        if self._within_run(first, end):
            return self.run_frames[first]
        last = bisect.bisect_left(self.run_starts, end)
        return min(self.run_frames[first:last], default=0)

    def _within_run(self, index: int, end: int) -> bool:
        """Bytes from run ``index`` up to ``end`` all arrived in that run (the usual case:
        answered without slicing the frame list)."""
        starts = self.run_starts
        return (
            index < len(starts)
            and starts[index] < end
            and (index + 1 == len(starts) or end <= starts[index + 1])
        )

    def time_of(self, frame: int) -> float:
        """Capture time of a frame (0.0 when unknown)."""
        return self.frame_times[frame] if 0 < frame < len(self.frame_times) else 0.0

    @classmethod
    def from_chunks(
        cls, chunks: Iterable[tuple[int, bytes]], frame_times: Sequence[float] = ()
    ) -> DirectionStream:
        """A gap-free stream from ``(frame, bytes)`` chunks in stream order."""
        parts: list[bytes | bytearray | memoryview] = []
        starts: list[int] = []
        frames: list[int] = []
        offset = 0
        for frame, chunk in chunks:
            if not chunk:
                continue
            starts.append(offset)
            frames.append(frame)
            parts.append(chunk)
            offset += len(chunk)
        return cls(StreamBytes.of(b"".join(parts)), offset, [], [], starts, frames, frame_times)


@dataclass
class TcpConnection:
    """A TCP connection seen in a capture, with both directions reassembled."""

    endpoints: tuple[Endpoint, Endpoint]
    """(first sender seen, its peer)."""
    initiator: Endpoint | None
    """The endpoint that sent the SYN, when the capture shows it."""
    streams: dict[Endpoint, DirectionStream]
    """Keyed by the sending endpoint; both endpoints are always present."""
    first_frame: int
    last_frame: int
    joined_midstream: bool


@dataclass
class _Piece:
    start: int
    """Stream offset of the piece's first byte."""
    length: int
    at: int
    """Where its bytes are in the capture's source."""
    frame: int

    @property
    def end(self) -> int:
        return self.start + self.length


class _DirectionBuilder:
    """Collects one direction's segments, then places them by sequence number."""

    def __init__(self) -> None:
        # (frame, seq, flags, payload place in the source, its length, bytes missing from
        # the frame)
        self.segments: list[tuple[int, int, int, int, int, int]] = []
        self.syn_seq: int | None = None
        self.fin_seen = False
        self.reset_seen = False
        self.end_frame = 0
        self.end_reset = False

    def add(self, frame: int, seq: int, flags: int, at: int, length: int, missing: int) -> None:
        if flags & TCP_SYN and self.syn_seq is None:
            self.syn_seq = seq
        if flags & (TCP_FIN | TCP_RST) and not self.end_frame:
            self.end_frame = frame
            self.end_reset = not flags & TCP_FIN
        if flags & TCP_FIN:
            self.fin_seen = True
        if flags & TCP_RST:
            self.reset_seen = True
        if length or missing:
            self.segments.append((frame, seq, flags, at, length, missing))

    def _base(self) -> int | None:
        if self.syn_seq is not None:
            return (self.syn_seq + 1) % _SEQ_SPACE
        if not self.segments:
            return None
        # Joined mid-stream: start at the lowest sequence number seen, judged
        # relative to the first one (sequence numbers wrap).
        first = self.segments[0][1]
        return min(
            (s[1] for s in self.segments),
            key=lambda seq: (seq - first + _HALF_SEQ_SPACE) % _SEQ_SPACE,
        )

    def build(self, frame_times: Sequence[float], source: Source) -> DirectionStream:
        base = self._base()
        notes: list[str] = []
        pieces: list[_Piece] = []
        starts: list[int] = []
        high = 0
        announced_end = 0
        dropped_before_start = 0
        differing = 0
        first_differing: tuple[int, int] | None = None
        for frame, seq, flags, at, length, missing in self.segments:
            assert base is not None
            relative = (seq - base + (1 if flags & TCP_SYN else 0)) % _SEQ_SPACE
            # Unwrap: pick the offset nearest to the highest one seen so far.
            start = relative + ((high - relative + _HALF_SEQ_SPACE) // _SEQ_SPACE) * _SEQ_SPACE
            announced_end = max(announced_end, start + length + missing)
            if start < 0:
                cut = min(-start, length)
                dropped_before_start += cut
                at, length, start = at + cut, length - cut, start + cut
            if not length:
                continue
            high = max(high, start + length)
            new = _Piece(start, length, at, frame)
            for overlap_start, overlap_end in _place(pieces, starts, new):
                existing = _read(pieces, starts, overlap_start, overlap_end, source)
                copy = source.read(at + overlap_start - start, overlap_end - overlap_start)
                if existing != copy:
                    differences = [
                        i for i, (a, b) in enumerate(zip(existing, copy, strict=True)) if a != b
                    ]
                    differing += len(differences)
                    if first_differing is None:
                        first_differing = (overlap_start + differences[0], frame)
        if dropped_before_start:
            notes.append(
                f"{dropped_before_start} bytes retransmitted from before the start of the "
                "captured stream were dropped"
            )
        if first_differing is not None:
            notes.append(
                f"retransmitted bytes differ from the first copy: {differing} bytes, first at "
                f"offset {first_differing[0]} (frame {first_differing[1]}); the first copy wins"
            )
        return self._finish(pieces, announced_end, frame_times, notes, source)

    def _finish(
        self,
        pieces: list[_Piece],
        announced_end: int,
        frame_times: Sequence[float],
        notes: list[str],
        source: Source,
    ) -> DirectionStream:
        contiguous: list[_Piece] = []
        gaps: list[tuple[int, int]] = []
        islands: list[tuple[int, int]] = []
        position = 0
        for piece in pieces:
            if piece.start > position:
                gaps.append((position, piece.start - position))
            if gaps:
                if islands and islands[-1][0] + islands[-1][1] == piece.start:
                    islands[-1] = (islands[-1][0], islands[-1][1] + piece.length)
                else:
                    islands.append((piece.start, piece.length))
            else:
                contiguous.append(piece)
            position = piece.end
        # Bytes the IP header announced but the capture cut (snapshot length)
        # and that nothing later supplied are a gap at the very end.
        if announced_end > position:
            gaps.append((position, announced_end - position))
        data = StreamBytes(
            source,
            [piece.start for piece in contiguous],
            [piece.at for piece in contiguous],
            contiguous[-1].end if contiguous else 0,
        )
        return DirectionStream(
            data=data,
            total=sum(piece.length for piece in pieces),
            gaps=gaps,
            islands=islands,
            run_starts=[piece.start for piece in pieces],
            run_frames=[piece.frame for piece in pieces],
            frame_times=frame_times,
            notes=notes,
            syn_seen=self.syn_seq is not None,
            fin_seen=self.fin_seen,
            reset_seen=self.reset_seen,
            end_frame=self.end_frame,
            end_reset=self.end_reset,
        )


def _place(pieces: list[_Piece], starts: list[int], new: _Piece) -> list[tuple[int, int]]:
    """Insert the parts of ``new`` not yet covered; return the covered (overlap) ranges."""
    overlaps: list[tuple[int, int]] = []
    position = new.start
    index = max(bisect.bisect_right(starts, new.start) - 1, 0)
    while position < new.end:
        while index < len(pieces) and pieces[index].end <= position:
            index += 1
        if index < len(pieces) and pieces[index].start <= position:
            covered_end = min(pieces[index].end, new.end)
            overlaps.append((position, covered_end))
            position = covered_end
            continue
        next_start = pieces[index].start if index < len(pieces) else new.end
        free_end = min(next_start, new.end)
        piece = _Piece(position, free_end - position, new.at + position - new.start, new.frame)
        pieces.insert(index, piece)
        starts.insert(index, position)
        index += 1
        position = free_end
    return overlaps


def _read(pieces: list[_Piece], starts: list[int], start: int, end: int, source: Source) -> bytes:
    """Bytes ``[start, end)``, which the pieces fully cover."""
    index = bisect.bisect_right(starts, start) - 1
    parts: list[bytes] = []
    position = start
    while position < end:
        piece = pieces[index]
        parts.append(source.read(piece.at + position - piece.start, min(piece.end, end) - position))
        position = min(piece.end, end)
        index += 1
    return b"".join(parts)


class _ConnectionBuilder:
    def __init__(self, src: Endpoint, dst: Endpoint, frame: int) -> None:
        self.endpoints = (src, dst)
        self.directions = {src: _DirectionBuilder(), dst: _DirectionBuilder()}
        self.initiator: Endpoint | None = None
        self.first_frame = frame
        self.last_frame = frame

    def is_new_connection(self, src: Endpoint, seq: int, flags: int) -> bool:
        """A fresh SYN on a reused address pair starts a new connection."""
        if not flags & TCP_SYN or flags & TCP_ACK:
            return False
        direction = self.directions[src]
        if direction.syn_seq is None:
            # Data from this side before any SYN: that was an earlier
            # connection joined mid-stream.
            return bool(direction.segments)
        return direction.syn_seq != seq

    def add(
        self,
        frame: int,
        src: Endpoint,
        dst: Endpoint,
        seq: int,
        flags: int,
        at: int,
        length: int,
        missing: int,
    ) -> None:
        if flags & TCP_SYN and self.initiator is None:
            self.initiator = dst if flags & TCP_ACK else src
        self.directions[src].add(frame, seq, flags, at, length, missing)
        self.last_frame = frame

    def build(self, frame_times: Sequence[float], source: Source) -> TcpConnection:
        streams = {
            ep: builder.build(frame_times, source) for ep, builder in self.directions.items()
        }
        midstream = (
            any(
                builder.syn_seq is None and builder.segments for builder in self.directions.values()
            )
            or self.initiator is None
        )
        return TcpConnection(
            endpoints=self.endpoints,
            initiator=self.initiator,
            streams=streams,
            first_frame=self.first_frame,
            last_frame=self.last_frame,
            joined_midstream=midstream,
        )


@dataclass
class Reassembly:
    """Every TCP connection of a capture, in order of first appearance."""

    connections: list[TcpConnection]
    frames: int
    frame_times: list[float]
    notes: list[str]


def reassemble(frames: Iterable[Frame], source: Source) -> Reassembly:
    """Reassemble every TCP connection found in ``frames`` (their bytes read from
    ``source``, where ``Frame.at`` places them).

    Frames that carry no TCP (ARP, UDP, IP fragments, unknown link types) are
    skipped; unusual reasons are summarised in ``notes``.
    """
    frame_times: list[float] = [0.0]
    active: dict[frozenset[Endpoint], _ConnectionBuilder] = {}
    finished: list[_ConnectionBuilder] = []
    skipped: dict[str, int] = {}
    count = 0
    for frame in frames:
        count = frame.number
        frame_times.append(frame.time)
        try:
            segment = tcp_segment(frame.linktype, frame.data)
        except NotTcp as why:
            reason = str(why)
            if "fragment" in reason or "unsupported" in reason or "short" in reason:
                skipped[reason] = skipped.get(reason, 0) + 1
            continue
        key = frozenset((segment.src, segment.dst))
        connection = active.get(key)
        if connection is not None and connection.is_new_connection(
            segment.src, segment.seq, segment.flags
        ):
            finished.append(connection)
            connection = None
        if connection is None:
            connection = _ConnectionBuilder(segment.src, segment.dst, frame.number)
            active[key] = connection
        connection.add(
            frame.number,
            segment.src,
            segment.dst,
            segment.seq,
            segment.flags,
            frame.at + segment.payload_at,
            len(segment.payload),
            segment.missing,
        )
    builders = sorted([*finished, *active.values()], key=lambda b: b.first_frame)
    notes = [f"{n} frame(s) skipped: {reason}" for reason, n in sorted(skipped.items())]
    return Reassembly(
        connections=[builder.build(frame_times, source) for builder in builders],
        frames=count,
        frame_times=frame_times,
        notes=notes,
    )
