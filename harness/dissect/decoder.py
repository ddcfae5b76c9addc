"""Entry points: a capture file (or two byte streams) in, decoded sessions out."""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from harness.dissect._capfile import CaptureReader, Frame
from harness.dissect._session import SessionDecoder
from harness.dissect.errors import CaptureError
from harness.dissect.model import CLIENT, SERVER, Capture, Session, StreamEnd, Undecoded
from harness.dissect.stream import DirectionStream, TcpConnection, reassemble
from harness.gcpause import collector_paused
from harness.protocol import constants as c

StreamInput = bytes | Sequence[tuple[int, bytes]]
"""A direction's bytes: all at once, or ``(frame, chunk)`` pairs in stream order."""

_CLIENT_START_MAGICS8 = {c.IHAVEOPT}
_SERVER_START_MAGICS8 = {c.OPTION_REPLY_MAGIC}
_CLIENT_START_MAGICS4 = {c.REQUEST_MAGIC, c.EXTENDED_REQUEST_MAGIC}
_SERVER_START_MAGICS4 = {c.SIMPLE_REPLY_MAGIC, c.STRUCTURED_REPLY_MAGIC, c.EXTENDED_REPLY_MAGIC}


def decode_capture(path: str | Path) -> Capture:
    """Decode every TCP session of a pcap or pcapng file.

    Raises :class:`CaptureError` only when nothing can be read (missing file,
    not a capture, broken before the first frame).  A file that breaks later
    is decoded up to the break, and the problem is in ``Capture.errors``.

    The frames are read once, in order, and not kept: the streams hold the places of
    their bytes in the file, which the decoded messages read when asked (the file stays
    open while the capture is in use).
    """
    errors: list[str] = []
    reader = CaptureReader(path)
    with collector_paused():
        reassembly = reassemble(_until_damage(reader.frames(), errors), reader.source)
        capture = Capture(path=str(path), frames=reassembly.frames, errors=errors)
        capture.notes.extend(reassembly.notes)
        for index, connection in enumerate(reassembly.connections, start=1):
            capture.sessions.append(_decode_connection(index, connection))
    return capture


def _until_damage(frames: Iterable[Frame], errors: list[str]) -> Iterator[Frame]:
    """The frames before any damage; the damage goes to ``errors`` (raised when no frame
    could be read at all)."""
    count = 0
    try:
        for frame in frames:
            count += 1
            yield frame
    except CaptureError as exc:
        if not count:
            raise
        errors.append(str(exc))


def decode_streams(
    client_data: StreamInput,
    server_data: StreamInput,
    *,
    client: tuple[str, int] = ("client", 0),
    server: tuple[str, int] = ("server", 0),
    index: int = 1,
    frame_times: Sequence[float] = (),
    joined_midstream: bool = False,
    closed: bool = False,
    ends: dict[str, StreamEnd] | None = None,
) -> Session:
    """Decode one session from its two directions' bytes (for tests and the proxy).

    ``closed``: both sides closed their stream after these bytes (a FIN each), so a
    message cut short at the end is its sender's doing, not the capture's.

    Give each direction as plain bytes, or as ``(frame, chunk)`` pairs so that
    the two directions interleave in the order the chunks were seen (plain
    bytes are all "frame 1": the client's messages then go first whenever both
    sides have one ready, which is the causal order of NBD).  ``ends`` says how each
    direction ended (:attr:`Session.ends`), when the caller knows.
    """
    streams = {
        CLIENT: _direction_stream(client_data, frame_times),
        SERVER: _direction_stream(server_data, frame_times),
    }
    for stream in streams.values():
        stream.fin_seen = closed
    session = Session(index=index, client=client, server=server, joined_midstream=joined_midstream)
    session.ends.update(ends or {})
    frames = [f for s in streams.values() for f in s.run_frames]
    session.first_frame, session.last_frame = (min(frames), max(frames)) if frames else (0, 0)
    decoder = SessionDecoder(session, streams)
    if joined_midstream and not streams[SERVER].data.startswith(_NBDMAGIC_BYTES):
        decoder.start_midstream()
    return decoder.run()


_NBDMAGIC_BYTES = struct.pack(">Q", c.NBDMAGIC)


def _direction_stream(data: StreamInput, frame_times: Sequence[float]) -> DirectionStream:
    if isinstance(data, bytes | bytearray | memoryview):
        return DirectionStream.from_chunks([(1, bytes(data))], frame_times)
    return DirectionStream.from_chunks(data, frame_times)


def _decode_connection(index: int, connection: TcpConnection) -> Session:
    roles = _roles(connection)
    first, second = connection.endpoints
    if roles is None:
        client_ep = connection.initiator or first
        server_ep = second if client_ep == first else first
    else:
        client_ep, server_ep, _how = roles
    streams = {CLIENT: connection.streams[client_ep], SERVER: connection.streams[server_ep]}
    session = Session(
        index=index,
        client=client_ep,
        server=server_ep,
        joined_midstream=connection.joined_midstream,
        first_frame=connection.first_frame,
        last_frame=connection.last_frame,
    )
    for direction, stream in streams.items():
        if stream.end_frame:
            session.ends[direction] = StreamEnd(
                index,
                direction,
                stream.end_frame,
                stream.total,
                stream.time_of(stream.end_frame),
                stream.end_reset,
            )
    if roles is None:
        return _not_nbd(session, streams)
    decoder = SessionDecoder(session, streams)
    if roles[2] == "midstream":
        decoder.start_midstream()
    return decoder.run()


def _roles(connection: TcpConnection) -> tuple[tuple[str, int], tuple[str, int], str] | None:
    """(client, server, how) from the bytes: whoever sent NBDMAGIC is the server."""
    first, second = connection.endpoints
    for server_ep, client_ep in ((first, second), (second, first)):
        if connection.streams[server_ep].data.startswith(_NBDMAGIC_BYTES):
            return client_ep, server_ep, "greeting"
    if not connection.joined_midstream:
        return None
    # Joined after the greeting: recognise either side by the magic it starts with.
    for ep, peer in ((first, second), (second, first)):
        head = connection.streams[ep].data.read(0, 8)
        magic8 = struct.unpack_from(">Q", head)[0] if len(head) >= 8 else None
        magic4 = struct.unpack_from(">I", head)[0] if len(head) >= 4 else None
        if magic8 in _SERVER_START_MAGICS8 or magic4 in _SERVER_START_MAGICS4:
            return peer, ep, "midstream"
        if magic8 in _CLIENT_START_MAGICS8 or magic4 in _CLIENT_START_MAGICS4:
            return ep, peer, "midstream"
    return None


def _not_nbd(session: Session, streams: dict[str, DirectionStream]) -> Session:
    session.phase = "not-nbd"
    reason = (
        "not NBD: joined mid-stream and neither side starts with an NBD magic"
        if session.joined_midstream
        else "not NBD: neither side starts with the NBDMAGIC greeting"
    )
    for direction, stream in streams.items():
        session.bytes_total[direction] = stream.total
        why = reason
        if stream.gaps and stream.gaps[0][0] == 0:
            # Not necessarily foreign: the start that would have told is missing.
            missing = stream.gaps[0][1]
            why += f" (the first {missing} bytes of the {direction} stream were not captured)"
        regions = [(0, len(stream.data)), *stream.islands]
        for offset, length in regions:
            if length:
                frame = stream.frame_at(offset)
                session.undecoded.append(
                    Undecoded(session.index, direction, offset, length, frame, why, kind="not-nbd")
                )
    return session
