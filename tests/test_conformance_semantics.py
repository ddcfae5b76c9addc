"""The export-content model and the semantic rules: what the server says the export holds
must agree with itself, within one connection, where nothing between could change it.

Hand-made conversations (tests/_conformance_samples.py) cover what the model must judge
and what it must leave alone (concurrency, TRIM, failures, unstable holes, other
connections); the fault captures and the healthy real-peer captures hold it to real bytes.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from _conformance_samples import (
    DONE,
    FLAGS,
    RT,
    TF,
    Conv,
    chunk,
    error_payload,
    offset_data,
    offset_hole,
    pattern,
    request,
    simple,
    status,
)

from harness.capture import PcapngWriter
from harness.conformance import Finding, SessionView, check_capture, check_session
from harness.conformance._content import Extents, first_difference, subtract
from harness.dissect import decode_capture, decode_streams
from harness.protocol import constants as c

REPO = Path(__file__).resolve().parents[1]
CMD = c.Cmd
HOLE, ZERO = int(c.StateFlag.HOLE), int(c.StateFlag.ZERO)
SEMANTIC = {
    "server.write-writes-data",
    "server.write-zeroes-zeroes",
    "server.cache-keeps-data",
    "server.status-zero-reads-zero",
    "server.fast-zero-refusal-keeps-data",
}
OLD, NEW = pattern(512, seed=1), pattern(512, seed=2)


def semantic(conv: Conv, tmp_path: Path) -> tuple[list[Finding], list[int]]:
    """The semantic findings of ``conv`` and the first frame of each of its segments."""
    frames = conv.write(tmp_path / "session.pcapng")
    findings = check_capture(tmp_path / "session.pcapng")
    return [f for f in findings if f.rule in SEMANTIC], frames


def write(conv: Conv, cookie: int, data: bytes, offset: int = 0) -> Conv:
    return conv.c(request(CMD.WRITE, cookie, offset, len(data), data=data))


def read(conv: Conv, cookie: int, offset: int = 0, length: int = 512) -> Conv:
    return conv.c(request(CMD.READ, cookie, offset, length))


def data(cookie: int, payload: bytes, offset: int = 0, flags: int = DONE) -> bytes:
    """An NBD_REPLY_TYPE_OFFSET_DATA chunk (final unless ``flags`` is 0)."""
    return chunk(cookie, RT.OFFSET_DATA, offset_data(offset, payload), flags=flags)


# --- the pieces ---------------------------------------------------------------------------------


def test_extents_split_replace_and_forget() -> None:
    extents: Extents[str] = Extents()
    extents.assign(0, 100, "a")
    extents.assign(40, 60, "b")
    assert extents.overlapping(0, 100) == [(0, 40, "a"), (40, 60, "b"), (60, 100, "a")]
    extents.assign(30, 70, None)
    assert extents.overlapping(0, 100) == [(0, 30, "a"), (70, 100, "a")]
    assert extents.overlapping(25, 75) == [(25, 30, "a"), (70, 75, "a")]
    extents.assign(0, 200, "c")
    assert extents.overlapping(50, 250) == [(50, 200, "c")]
    assert extents.overlapping(200, 300) == []


def test_subtract_and_first_difference() -> None:
    assert subtract((0, 100), [(10, 20), (90, 200)]) == [(0, 10), (20, 90)]
    assert subtract((0, 100), [(0, 100)]) == []
    assert first_difference(b"abc", b"abd", 3) == 2
    assert first_difference(None, b"\0\0\x07", 3) == 2
    assert first_difference(b"\0\0", None, 2) is None
    assert first_difference(b"same", b"same", 4) is None


# --- what the rules flag --------------------------------------------------------------------------


def test_a_read_that_confirms_a_write_is_no_finding(tmp_path: Path) -> None:
    conv = read(write(Conv().ready(), 1, OLD).s(simple(1)), 2).s(data(2, OLD)).disc()
    findings, _frames = semantic(conv, tmp_path)
    assert findings == []
    [session] = decode_capture(tmp_path / "session.pcapng").sessions
    content = SessionView(session).content
    [(_start, _end, fact)] = content.facts.overlapping(0, 512)
    assert fact.kind == "write" and fact.confirmed_by is not None


def test_a_later_read_that_lost_a_write_points_at_both(tmp_path: Path) -> None:
    conv = write(Conv().ready(), 1, OLD).s(simple(1))
    read(conv, 2).s(data(2, OLD))  # read back intact once
    read(conv, 3).mark().s(data(3, OLD[:100] + b"\xff" + OLD[101:])).disc()
    [finding], frames = semantic(conv, tmp_path)
    assert finding.rule == "server.write-writes-data"
    assert finding.frame == frames[conv.marked]
    write_reply = frames[conv.marked - 4]
    assert finding.related is not None and finding.related.frame == write_reply
    assert finding.related.direction == "server"
    assert "offset 100" in finding.message and f"frame {write_reply}" in finding.message
    assert "read back intact" in finding.message


def test_simple_replies_and_reordered_chunks_are_compared_byte_for_byte(tmp_path: Path) -> None:
    conv = Conv().newstyle().go()  # no structured replies
    write(conv, 1, OLD + NEW).s(simple(1))
    read(conv, 2, 0, 1024).mark().s(simple(2, data=OLD + bytes(512))).disc()
    [finding], frames = semantic(conv, tmp_path)
    assert (finding.rule, finding.frame) == ("server.write-writes-data", frames[conv.marked])
    assert "offset 512" in finding.message

    conv = write(Conv().ready(), 1, OLD + NEW).s(simple(1))
    read(conv, 2, 0, 1536).s(data(2, NEW, 512, flags=0)).s(
        chunk(2, RT.OFFSET_HOLE, offset_hole(1024, 512), flags=0))
    conv.mark().s(data(2, OLD[:-1] + b"\0", 0, flags=0)).s(chunk(2, RT.NONE)).disc()
    [finding], frames = semantic(conv, tmp_path)
    assert finding.frame == frames[conv.marked] and "offset 511" in finding.message


def test_write_zeroes_must_read_as_zeroes(tmp_path: Path) -> None:
    conv = write(Conv().ready(), 1, OLD).s(simple(1))
    conv.c(request(CMD.WRITE_ZEROES, 2, 256, 256)).s(simple(2))
    read(conv, 3).mark().s(data(3, OLD[:256] + bytes(255) + b"\x01")).disc()
    [finding], frames = semantic(conv, tmp_path)
    assert finding.rule == "server.write-zeroes-zeroes"
    assert finding.related is not None and finding.related.frame == frames[conv.marked - 2]
    assert "offset 511" in finding.message


def test_a_cache_between_takes_the_blame(tmp_path: Path) -> None:
    # What a read showed, then a cache, then other bytes: the cache changed them.
    conv = read(Conv().ready(), 1).s(data(1, OLD))
    conv.c(request(CMD.CACHE, 2, 0, 4096)).s(simple(2))
    read(conv, 3).mark().s(data(3, NEW)).disc()
    [finding], frames = semantic(conv, tmp_path)
    assert finding.rule == "server.cache-keeps-data"
    assert finding.related is not None and finding.related.frame == frames[conv.marked - 2]
    assert finding.to_dict()["related"]["frame"] == frames[conv.marked - 2]


def test_a_refused_fast_zero_keeps_the_data(tmp_path: Path) -> None:
    def conv(after: bytes) -> Conv:
        conv = write(Conv().ready(), 1, OLD).s(simple(1))
        conv.c(request(CMD.WRITE_ZEROES, 2, 0, 512, flags=c.CmdFlag.FAST_ZERO))
        conv.s(chunk(2, RT.ERROR, error_payload(c.Errno.ENOTSUP)))
        return read(conv, 3).mark().s(data(3, after)).disc()

    assert semantic(conv(OLD), tmp_path)[0] == []
    [finding], frames = semantic(conv(bytes(512)), tmp_path)
    assert (finding.rule, finding.level) == ("server.fast-zero-refusal-keeps-data", "SHOULD NOT")
    assert finding.related is not None and finding.related.frame == frames[-4]  # ENOTSUP


def test_zero_status_over_written_data_and_data_under_zero_status(tmp_path: Path) -> None:
    conv = write(Conv().ready(), 1, OLD).s(simple(1))
    conv.c(request(CMD.BLOCK_STATUS, 2, 0, 4096))
    conv.mark().s(chunk(2, RT.BLOCK_STATUS, status(1, (4096, HOLE | ZERO)))).disc()
    [finding], frames = semantic(conv, tmp_path)
    assert finding.rule == "server.status-zero-reads-zero"
    assert finding.frame == frames[conv.marked]
    assert finding.related is not None and finding.related.frame == frames[conv.marked - 2]

    # A hole reported as not known to be zero says nothing about the bytes.
    conv = write(Conv().ready(), 1, OLD).s(simple(1))
    conv.c(request(CMD.BLOCK_STATUS, 2, 0, 4096))
    conv.s(chunk(2, RT.BLOCK_STATUS, status(1, (4096, HOLE)))).disc()
    assert semantic(conv, tmp_path)[0] == []


# --- what the rules leave alone ---------------------------------------------------------------


def _concurrent_read() -> Conv:
    """A read sent before the overlapping write's reply may see either content."""
    conv = read(Conv().ready(), 1).s(data(1, OLD))
    write(conv, 2, NEW)
    read(conv, 3).s(data(3, OLD)).s(simple(2))
    return read(conv, 4).s(data(4, NEW)).disc()


def _racing_writes() -> Conv:
    """Two overlapping writes in flight together: the spec does not order them."""
    conv = write(write(Conv().ready(), 1, OLD), 2, NEW).s(simple(2)).s(simple(1))
    return read(conv, 3).s(data(3, NEW)).disc()


def _trim() -> Conv:
    conv = write(Conv().ready(), 1, OLD).s(simple(1))
    conv.c(request(CMD.TRIM, 2, 0, 512)).s(simple(2))
    return read(conv, 3).s(data(3, NEW)).disc()


def _failed_write() -> Conv:
    conv = write(Conv().ready(), 1, OLD).s(simple(1))
    write(conv, 2, NEW).s(chunk(2, RT.ERROR, error_payload(c.Errno.EIO)))
    return read(conv, 3).s(data(3, NEW[:256] + OLD[256:])).disc()


def _unwritten_bytes_read_twice() -> Conv:
    conv = read(Conv().ready(), 1).s(data(1, OLD))
    return read(conv, 2).s(data(2, NEW)).disc()


def _unstable_hole() -> Conv:
    conv = Conv().ready().c(request(CMD.BLOCK_STATUS, 1, 0, 4096))
    conv.s(chunk(1, RT.BLOCK_STATUS, status(1, (4096, HOLE))))
    read(conv, 2).s(data(2, OLD)).c(request(CMD.CACHE, 3, 0, 512)).s(simple(3))
    return read(conv, 4).s(data(4, NEW)).disc()


def _unknown_command() -> Conv:
    conv = write(Conv().ready(), 1, OLD).s(simple(1))
    conv.c(request(66, 2)).s(simple(2))
    return read(conv, 3).s(data(3, NEW)).disc()


def _reused_cookie() -> Conv:
    conv = write(Conv().ready(), 1, OLD).s(simple(1))
    write(conv, 2, NEW).c(request(CMD.READ, 2, 0, 512)).s(simple(2)).s(data(2, OLD))
    return read(conv, 3).s(data(3, OLD)).disc()


def _read_only_write_accepted() -> Conv:
    conv = read(Conv().ready(flags=FLAGS | TF.READ_ONLY), 1).s(data(1, OLD))
    write(conv, 2, NEW).s(simple(2))
    return read(conv, 3).s(data(3, OLD)).disc()


@pytest.mark.parametrize(
    "build",
    [
        _concurrent_read,
        _racing_writes,
        _trim,
        _failed_write,
        _unwritten_bytes_read_twice,
        _unstable_hole,
        _unknown_command,
        _reused_cookie,
        _read_only_write_accepted,
    ],
    ids=lambda build: build.__name__.strip("_"),
)
def test_what_the_spec_leaves_open_is_no_finding(build, tmp_path: Path) -> None:
    findings, _frames = semantic(build(), tmp_path)
    assert findings == [], [f.describe() for f in findings]


def test_a_write_on_a_read_only_export_is_only_its_own_rule(tmp_path: Path) -> None:
    _read_only_write_accepted().write(tmp_path / "ro.pcapng")
    rules = {f.rule for f in check_capture(tmp_path / "ro.pcapng")}
    assert rules == {"server.read-only-write-errors"}


# --- other connections ------------------------------------------------------------------------


def _two_connections(path: Path, other_offset: int) -> None:
    """Connection A writes OLD at 0 and reads NEW back; connection B writes NEW at
    ``other_offset`` in between."""
    a = write(Conv().ready(), 1, OLD).s(simple(1))
    a_tail = read(Conv(), 2).s(data(2, NEW)).disc()
    b = write(Conv().ready(), 1, NEW, other_offset).s(simple(1)).disc()
    clock = iter(range(1000))
    with PcapngWriter(path) as writer:
        first = writer.open_stream(timestamp=1_700_000_000.0)
        second = writer.open_stream(timestamp=1_700_000_000.0)
        for stream, conv in ((first, a), (second, b), (first, a_tail)):
            for direction, segment in conv.segments:
                stream.record(direction, segment, timestamp=1_700_000_000.0 + next(clock) / 1000)
        first.close("client", timestamp=1_700_000_002.0)
        second.close("client", timestamp=1_700_000_002.0)


def test_another_connection_may_have_written_the_bytes(tmp_path: Path) -> None:
    _two_connections(tmp_path / "overlap.pcapng", other_offset=0)
    assert not [f for f in check_capture(tmp_path / "overlap.pcapng") if f.rule in SEMANTIC]
    _two_connections(tmp_path / "apart.pcapng", other_offset=65536)
    findings = [f for f in check_capture(tmp_path / "apart.pcapng") if f.rule in SEMANTIC]
    assert [(f.rule, f.session) for f in findings] == [("server.write-writes-data", 1)]


def _midstream(orphan: bool) -> list[Finding]:
    """A capture joined mid-stream: a write, its reply, maybe the reply to a request sent
    before the capture began, then a read with other bytes."""
    segments = [
        ("client", request(CMD.WRITE, 2, 0, 512, data=OLD)),
        ("server", simple(2)),
        *([("server", simple(1))] if orphan else []),
        ("client", request(CMD.READ, 3, 0, 512)),
        ("server", simple(3, data=NEW)),
    ]
    numbered = list(enumerate(segments, start=1))
    session = decode_streams(
        [(frame, chunk) for frame, (side, chunk) in numbered if side == "client"],
        [(frame, chunk) for frame, (side, chunk) in numbered if side == "server"],
        joined_midstream=True,
    )
    return [f for f in check_session(session) if f.rule in SEMANTIC]


def test_a_reply_to_a_request_before_the_capture_may_have_changed_anything() -> None:
    assert [f.rule for f in _midstream(orphan=False)] == ["server.write-writes-data"]
    assert _midstream(orphan=True) == []


# --- the JSON shape ----------------------------------------------------------------------------


def test_related_is_added_only_where_there_is_one(tmp_path: Path) -> None:
    conv = write(Conv().ready(), 1, OLD).s(simple(1))
    read(conv, 2).s(data(2, NEW)).c(request(CMD.READ, 3, 0, 0, flags=0x1000))
    conv.s(simple(3, error=c.Errno.EINVAL)).disc()
    conv.write(tmp_path / "two.pcapng")
    by_rule = {f.rule: f.to_dict() for f in check_capture(tmp_path / "two.pcapng")}
    plain = by_rule.pop("client.command-flag-documented")
    assert list(plain) == ["rule", "level", "role", "section", "sentence", "session", "frame",
                           "offset", "direction", "message"]
    related = by_rule["server.write-writes-data"]["related"]
    assert set(related) == {"session", "frame", "offset", "direction"}


# --- real bytes ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "rule", "frame", "earlier"),
    [
        ("cache-changes-data", "server.cache-keeps-data", 14, 12),
        ("write-zeroes-not-zeroing", "server.write-zeroes-zeroes", 19, 17),
        ("write-payload-not-consumed", "server.write-writes-data", 15, 12),
    ],
)
def test_fault_captures_are_flagged_at_both_messages(
    name: str, rule: str, frame: int, earlier: int
) -> None:
    findings = check_capture(REPO / "tests" / "data" / "faults" / f"{name}.pcapng")
    [finding] = [f for f in findings if f.rule in SEMANTIC]
    assert (finding.rule, finding.frame) == (rule, frame)
    assert finding.related is not None and finding.related.frame == earlier


HEALTHY = sorted(
    [
        *(REPO / "tests" / "data" / "captures").glob("*.pcap*"),
        *(REPO / "tests" / "data" / "zoo" / "qemu-nbd").glob("*.pcapng"),
        *(REPO / "tests" / "data" / "zoo" / "nbdkit").glob("*.pcapng"),
        *(REPO / "tests" / "data" / "faults").glob("healthy-*.pcapng"),
    ]
)


@pytest.mark.parametrize("path", HEALTHY, ids=lambda path: f"{path.parent.name}/{path.name}")
def test_healthy_real_peers_contradict_nothing(path: Path) -> None:
    assert [f.describe() for f in check_capture(path) if f.rule in SEMANTIC] == []


def test_healthy_captures_do_exercise_the_model() -> None:
    """The real captures above are a test of the model, not of an empty one: written bytes
    are read back and confirmed there."""
    path = REPO / "tests" / "data" / "captures" / "qemu-nbd-contexts-write-read.pcapng"
    capture = decode_capture(path)
    confirmed = [
        fact
        for session in capture.sessions
        if session.nbd
        for _start, _end, fact in SessionView(session, capture.sessions).content.facts.overlapping(
            0, 1 << 64
        )
        if fact.kind == "write" and fact.confirmed_by is not None
    ]
    assert confirmed
