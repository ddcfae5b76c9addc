"""The stream decoder after misframed bytes: it finds the next message boundary again.

Hand-made streams with garbage, wrong magics, messages cut short and messages split
across TCP segments at every byte of their headers: the decode says where it skipped
and why, the messages after the bad bytes are read as what they are (a reply pairs
with its request, an option stays an option), and segmentation changes nothing.
"""

from __future__ import annotations

import itertools
import struct

import pytest
from _conformance_samples import (
    FLAGS,
    SIZE,
    TF,
    client_flags_of,
    greeting,
    info_export,
    name_and_infos,
    option,
    reply,
    request,
    simple,
)

from harness.conformance import SessionView, all_rules
from harness.dissect import CLIENT, SERVER, Session, decode_streams
from harness.protocol import constants as c

Message = tuple[str, bytes]
GARBAGE = b"\xa5" * 16
EXPORT = info_export(SIZE, FLAGS & ~TF.SEND_DF)  # simple replies only


def handshake() -> list[Message]:
    """Fixed newstyle, NO_ZEROES, GO for "disk" with NBD_INFO_EXPORT, ACK."""
    return [
        (SERVER, greeting()),
        (CLIENT, client_flags_of()),
        (CLIENT, option(c.Opt.GO, name_and_infos(b"disk"))),
        (SERVER, reply(c.Opt.GO, c.Rep.INFO, EXPORT)),
        (SERVER, reply(c.Opt.GO, c.Rep.ACK)),
    ]


def decode(messages: list[Message], *, closed: bool = False) -> Session:
    """One frame per message, in conversation order."""
    chunks: dict[str, list[tuple[int, bytes]]] = {CLIENT: [], SERVER: []}
    for frame, (direction, wire) in enumerate(messages, start=1):
        chunks[direction].append((frame, wire))
    return decode_streams(chunks[CLIENT], chunks[SERVER], closed=closed)


def names(session: Session) -> list[tuple[str, str]]:
    return [(m.direction, m.name) for m in session.messages]


def findings(session: Session) -> set[tuple[str, int]]:
    view = SessionView(session)
    return {(f.rule, f.offset) for r in all_rules() for f in r.check(view)}


def read_request(cookie: int, offset: int = 0, length: int = 512) -> bytes:
    return request(c.Cmd.READ, cookie, offset, length)


# --- skipping bad bytes ----------------------------------------------------------------------


def test_garbage_between_replies_is_skipped_and_the_next_reply_pairs() -> None:
    data = bytes(range(256)) * 2
    session = decode(
        [
            *handshake(),
            (CLIENT, read_request(1)),
            (CLIENT, read_request(2, 512)),
            (SERVER, simple(1, data=data)),
            (SERVER, GARBAGE),
            (SERVER, simple(2, data=data)),
        ]
    )
    [region] = session.undecoded
    before = len(greeting()) + len(reply(c.Opt.GO, c.Rep.INFO, EXPORT)) + 20
    first_reply_end = before + 16 + 512
    assert (region.direction, region.offset, region.length) == (SERVER, first_reply_end, 16)
    assert region.kind == "bad-magic" and region.expected == "reply"
    assert region.found_magic == 0xA5A5A5A5
    assert region.resumed_at == first_reply_end + 16
    assert region.reason == (
        "expected a reply magic, found 0xa5a5a5a5; 16 byte(s) skipped: decoding resumed at "
        f"offset {first_reply_end + 16} on a simple reply with cookie 0x2, which a request in "
        "flight carries"
    )
    replies = [m for m in session.messages if m.kind == "simple-reply"]
    assert [r.request.fields["cookie"] for r in replies if r.request] == [1, 2]
    assert [len(r.fields["data"]) for r in replies] == [512, 512]
    assert session.accounted(SERVER)
    # The garbage is a finding of its own; the second READ is answered, nothing else.
    assert findings(session) == {("server.reply-magic", first_reply_end)}


def test_a_reply_magic_with_a_cookie_nobody_awaits_is_not_a_boundary() -> None:
    decoy = struct.pack(">IIQ", c.SIMPLE_REPLY_MAGIC, 0, 0xDEAD)
    session = decode(
        [
            *handshake(),
            (CLIENT, request(c.Cmd.FLUSH, 7)),
            (SERVER, b"\x00" * 4 + decoy + b"\x01" * 8),
            (SERVER, simple(7)),
        ]
    )
    [region] = session.undecoded
    assert region.length == 4 + len(decoy) + 8
    assert "on a simple reply with cookie 0x7" in region.reason
    [answer] = [m for m in session.messages if m.kind == "simple-reply"]
    assert answer.request is not None and answer.request.name == "NBD_CMD_FLUSH"


def test_read_data_that_holds_a_reply_magic_stays_data() -> None:
    # Framed by its request, READ data is never searched for magics.
    inner = struct.pack(">IIQ", c.SIMPLE_REPLY_MAGIC, 0, 2) * 32
    session = decode(
        [
            *handshake(),
            (CLIENT, read_request(1)),
            (CLIENT, read_request(2)),
            (SERVER, simple(1, data=inner)),
            (SERVER, simple(2, data=bytes(512))),
        ]
    )
    assert session.undecoded == []
    replies = [m for m in session.messages if m.kind == "simple-reply"]
    assert [r.fields["data"] for r in replies] == [inner, bytes(512)]
    assert [r.request.fields["cookie"] for r in replies if r.request] == [1, 2]


def test_request_garbage_is_skipped_to_a_plausible_request() -> None:
    implausible = request(c.Cmd.READ, 3, offset=1 << 40)  # far past the 1 MiB export
    session = decode(
        [
            *handshake(),
            (CLIENT, b"\x00" * 8 + implausible),
            (CLIENT, read_request(4)),
            (SERVER, simple(4, data=bytes(512))),
        ]
    )
    [region] = session.undecoded
    assert (region.direction, region.length) == (CLIENT, 8 + len(implausible))
    assert "on a request header (NBD_CMD_READ) at a plausible offset" in region.reason
    [read] = [m for m in session.messages if m.kind == "request"]
    assert read.fields["cookie"] == 4
    assert read is next(m for m in session.messages if m.kind == "simple-reply").request


def test_option_garbage_is_skipped_to_the_next_option() -> None:
    session = decode(
        [
            (SERVER, greeting()),
            (CLIENT, client_flags_of()),
            (CLIENT, b"junkjunkjunk"),
            (CLIENT, option(c.Opt.LIST)),
            (SERVER, reply(c.Opt.LIST, c.Rep.ACK)),
        ]
    )
    [region] = session.undecoded
    assert (region.direction, region.offset, region.length) == (CLIENT, 4, 12)
    assert region.expected == "option" and "an option header (NBD_OPT_LIST)" in region.reason
    assert names(session)[-2:] == [(CLIENT, "NBD_OPT_LIST"), (SERVER, "NBD_REP_ACK")]
    assert ("client.option-magic", 4) in findings(session)


def test_nothing_plausible_after_bad_bytes_stops_that_direction() -> None:
    session = decode([*handshake(), (CLIENT, read_request(1)), (SERVER, GARBAGE * 3)])
    [region] = session.undecoded
    assert region.length == 48 and region.resumed_at is None
    assert region.reason == "expected a reply magic, found 0xa5a5a5a5"


# --- the negotiation phase stays honest ----------------------------------------------------


def test_export_name_refused_with_an_option_reply_leaves_the_client_negotiating() -> None:
    session = decode(
        [
            (SERVER, greeting()),
            (CLIENT, client_flags_of()),
            (CLIENT, option(c.Opt.EXPORT_NAME, b"nope")),
            (SERVER, reply(c.Opt.EXPORT_NAME, c.Rep.ERR_UNKNOWN)),
            (CLIENT, option(c.Opt.GO, name_and_infos(b"disk"))),
            (SERVER, reply(c.Opt.GO, c.Rep.INFO, EXPORT)),
            (SERVER, reply(c.Opt.GO, c.Rep.ACK)),
            (CLIENT, read_request(1)),
            (SERVER, simple(1, data=bytes(512))),
        ]
    )
    assert session.undecoded == []
    assert [n for n in names(session) if n[0] == CLIENT] == [
        (CLIENT, "client flags"),
        (CLIENT, "NBD_OPT_EXPORT_NAME"),
        (CLIENT, "NBD_OPT_GO"),
        (CLIENT, "NBD_CMD_READ"),
    ]
    assert session.phase == "transmission"
    rules = {rule for rule, _offset in findings(session)}
    # The fixed-newstyle client asks EXPORT_NAME before any GO: the SHOULD of Option types
    # ("A client thus SHOULD use NBD_OPT_GO in preference to NBD_OPT_EXPORT_NAME").
    assert rules == {"server.export-name-no-option-reply", "client.go-in-preference"}


# --- messages cut short ------------------------------------------------------------------------


def test_write_cut_short_by_the_next_request() -> None:
    session = decode(
        [
            *handshake(),
            (CLIENT, request(c.Cmd.WRITE, 1, 0, 4096)),  # no data follows
            (CLIENT, read_request(2)),
            (SERVER, simple(2, data=bytes(512))),
        ]
    )
    assert session.undecoded == []
    write, read = (m for m in session.messages if m.kind == "request")
    assert (write.name, write.length, write.missing, write.truncated) == (
        "NBD_CMD_WRITE",
        28,
        4096,
        True,
    )
    assert write.fields["data"] == b""
    assert "cut short at 28 of 4124 bytes: the next message" in write.notes[-1]
    assert read.fields["cookie"] == 2 and not read.truncated
    assert [r for r, _ in findings(session)] == ["client.write-data-follows"]


def test_option_reply_cut_short_at_close_keeps_the_fields_that_arrived() -> None:
    # PyPXE's reply: magic, then 0x80000001 where the option goes, then 0, then it stops.
    short = struct.pack(">QII", c.OPTION_REPLY_MAGIC, c.Rep.ERR_UNSUP, 0)
    messages = [
        (SERVER, greeting()),
        (CLIENT, client_flags_of()),
        (CLIENT, option(c.Opt.STRUCTURED_REPLY)),
        (SERVER, short),
    ]
    session = decode(messages, closed=True)
    assert session.undecoded == []
    answer = session.messages[-1]
    assert (answer.kind, answer.missing, answer.option.name) == (
        "option-reply",
        4,
        "NBD_OPT_STRUCTURED_REPLY",
    )
    assert answer.fields == {
        "magic": c.OPTION_REPLY_MAGIC,
        "option": c.Rep.ERR_UNSUP,
        "reply_type": 0,
    }
    assert findings(session) == {
        ("server.option-reply-answers-option", 18),
        ("server.no-data-option-replies", 18),
    }
    # Without the close, the capture may have cut it: it stays an incomplete region.
    open_session = decode(messages)
    [region] = open_session.undecoded
    assert (region.kind, region.expected, region.length) == ("incomplete", "option-reply", 16)


def test_a_chunk_cut_short_at_close_is_judged_by_its_header() -> None:
    hole = struct.pack(">IHHQI", c.STRUCTURED_REPLY_MAGIC, 1, c.ReplyType.OFFSET_HOLE, 1, 16)
    messages = [
        (SERVER, greeting()),
        (CLIENT, client_flags_of()),
        (CLIENT, option(c.Opt.STRUCTURED_REPLY)),
        (SERVER, reply(c.Opt.STRUCTURED_REPLY, c.Rep.ACK)),
        *handshake()[2:],
        (CLIENT, read_request(1)),
        (SERVER, hole + struct.pack(">QI", 0, 512)),  # 12 of the 16 bytes announced
    ]
    session = decode(messages, closed=True)
    chunk = session.messages[-1]
    assert (chunk.kind, chunk.missing, chunk.fields["hole_size"]) == ("chunk", 4, 512)
    assert "server.offset-hole-length" in {rule for rule, _ in findings(session)}


# --- segmentation changes nothing --------------------------------------------------------------


def _conversation() -> list[Message]:
    return [
        *handshake(),
        (CLIENT, request(c.Cmd.WRITE, 1, 0, 64, data=bytes(range(64)))),
        (SERVER, simple(1)),
        (CLIENT, read_request(2, 0, 64)),
        (SERVER, simple(2, data=bytes(range(64)))),
        (CLIENT, request(c.Cmd.DISC, 3)),
    ]


def _decode_split(messages: list[Message], index: int, cuts: tuple[int, ...]) -> Session:
    """Message ``index`` in several segments (cut at ``cuts``), each its own frame."""
    chunks: dict[str, list[tuple[int, bytes]]] = {CLIENT: [], SERVER: []}
    frame = 0
    for position, (direction, wire) in enumerate(messages):
        bounds = [0, *cuts, len(wire)] if position == index else [0, len(wire)]
        for start, end in itertools.pairwise(bounds):
            frame += 1
            chunks[direction].append((frame, wire[start:end]))
    return decode_streams(chunks[CLIENT], chunks[SERVER])


def _summary(session: Session) -> list[tuple[str, str, int, int, dict]]:
    return [(m.direction, m.name, m.offset, m.length, m.fields) for m in session.messages]


@pytest.mark.parametrize("index", range(len(_conversation())))
def test_a_message_split_anywhere_in_its_header_decodes_the_same(index: int) -> None:
    messages = _conversation()
    whole = _summary(decode(messages))
    header = min(len(messages[index][1]), 32)
    for cut in range(1, header):
        split = _decode_split(messages, index, (cut,))
        assert split.undecoded == [], (index, cut)
        assert _summary(split) == whole, (index, cut)


def test_a_message_in_many_segments_decodes_the_same() -> None:
    messages = _conversation()
    whole = _summary(decode(messages))
    for index, (_direction, wire) in enumerate(messages):
        byte_by_byte = tuple(range(1, len(wire)))
        split = _decode_split(messages, index, byte_by_byte)
        assert _summary(split) == whole, index
        message = next(m for m in split.messages if m.offset == whole[index][2]
                       and m.direction == whole[index][0])
        assert message.last_frame - message.frame == len(wire) - 1
