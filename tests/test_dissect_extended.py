"""Extended headers on the wire: real peers that negotiate them, and the decoder's fixes.

Real peers (marked ``peers`` and ``slow``): sid's qemu-nbd 11.1 serves a qcow2
backing chain with a persistent dirty bitmap (``-A -B b0``, the chain of
``_fixtures_peers.CHAIN``) through the capture proxy to sid's libnbd 1.24 clients
(``nbdinfo --map`` for each of the three contexts, ``nbdsh`` writing and reading
back and asking block status in both forms, ``nbdcopy``) and to sid's qemu-io and
qemu-img 11.1; qemu 11.1's clients are also recorded against the reference
server.  Every one negotiates ``NBD_OPT_EXTENDED_HEADERS``.  Each capture must
decode with every byte accounted for and none undecodable, extended requests
and replies and ``NBD_REPLY_TYPE_BLOCK_STATUS_EXT`` chunks must carry the right
context names and exactly the extents the export has, data read must equal what
was written, and the conformance rules must find nothing but what the peers
really do wrong.

One such thing: qemu 11.1's client sends ``NBD_CMD_WRITE`` without
``NBD_CMD_FLAG_PAYLOAD_LEN`` (its data follows anyway).  The extended-headers
spec says "The command `NBD_CMD_WRITE` MUST use the flag
`NBD_CMD_FLAG_PAYLOAD_LEN` in this mode"; qemu-nbd reads the data all the same,
our reference server follows the spec and fails the write with ``NBD_EINVAL``.

Two captures are stored in ``tests/data/captures`` (see its README) and checked
here without any peer; regenerate them with::

    .venv/bin/python tests/test_dissect_extended.py --regenerate

The first tests need no peer: they pin the decoder's fixes (causal order of
messages, an odd block status payload, the unflagged qemu write, structured
``Undecoded`` fields) on hand-made streams.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import re
import struct
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from _fixtures_peers import CHAIN, expected_map
from scapy.packet import Packet

from harness.address import Address
from harness.capture import ProxyThread
from harness.cli import main
from harness.conformance import Finding, check_capture, check_session
from harness.dissect import (
    CLIENT,
    SERVER,
    Capture,
    Session,
    WireMessage,
    decode_capture,
    decode_streams,
)
from harness.dissect import layers as L
from harness.peers import DRIVERS, Catalog, DataRange, Endpoint
from harness.peers.rootfs import RootfsProvider
from harness.peers.suites import load_suites
from harness.process import PeerError
from harness.protocol import constants as c

CAPTURES = Path(__file__).parent / "data" / "captures"
LIBNBD_CAPTURE = "qemu-nbd11-libnbd124-extended.pcapng"
QEMU_CAPTURE = "qemu-nbd11-qemu-io11-extended.pcapng"
PATTERN = bytes((i * 7 + 3) % 251 for i in range(8192))  # written, then read back
WRITE_AT = 128 * 1024
CONTEXTS = ("base:allocation", "qemu:allocation-depth", "qemu:dirty-bitmap:b0")
WAIT = 30.0

# The extents each context reports once PATTERN is written at WRITE_AT: the write dirties
# its whole 64 KiB bitmap granule (and lands where the top layer already has data).
AFTER_WRITE = dataclasses.replace(
    CHAIN, writes_after_bitmaps=(*CHAIN.writes_after_bitmaps, DataRange(WRITE_AT, 64 * 1024))
)

QEMU_WRITE_SENTENCE = (
    "The command `NBD_CMD_WRITE` MUST use the flag `NBD_CMD_FLAG_PAYLOAD_LEN` in this mode"
)


# --- the decoder's fixes, on hand-made streams (no peers) ---------------------------


def option(opt: int, payload: Packet | None = None) -> bytes:
    packet = L.NBDOption(option=opt)
    return bytes(packet / payload if payload is not None else packet)


def rep(opt: int, reply_type: int, payload: Packet | None = None) -> bytes:
    packet = L.NBDOptionReply(option=opt, reply_type=reply_type)
    return bytes(packet / payload if payload is not None else packet)


GREETING = bytes(L.NBDNewstyleGreeting(handshake_flags=3))
CLIENT_FLAGS = bytes(L.NBDClientFlags(client_flags=3))


def extended_opening() -> list[tuple[str, bytes]]:
    """The messages, in order, of a handshake that ends in transmission with extended
    headers and the three qemu contexts (ids 1, 2, 3)."""
    queries = [L.NBDMetaContextQuery(query=q.encode()) for q in CONTEXTS]
    return [
        (SERVER, GREETING),
        (CLIENT, CLIENT_FLAGS),
        (CLIENT, option(c.Opt.EXTENDED_HEADERS)),
        (SERVER, rep(c.Opt.EXTENDED_HEADERS, c.Rep.ACK)),
        (CLIENT, option(c.Opt.SET_META_CONTEXT, L.NBDOptMetaContext(queries=queries))),
        *(
            (
                SERVER,
                rep(
                    c.Opt.SET_META_CONTEXT,
                    c.Rep.META_CONTEXT,
                    L.NBDRepMetaContext(context_id=i, context_name=name.encode()),
                ),
            )
            for i, name in enumerate(CONTEXTS, start=1)
        ),
        (SERVER, rep(c.Opt.SET_META_CONTEXT, c.Rep.ACK)),
        (CLIENT, option(c.Opt.GO, L.NBDOptInfoGo(export_name=b"disk"))),
        (
            SERVER,
            rep(
                c.Opt.GO,
                c.Rep.INFO,
                L.NBDRepInfo(info_type=c.Info.EXPORT)
                / L.NBDInfoExport(size=1 << 20, transmission_flags=0x1DED),
            ),
        ),
        (SERVER, rep(c.Opt.GO, c.Rep.ACK)),
    ]


def framed(messages: list[tuple[str, bytes]]) -> dict[str, list[tuple[int, bytes]]]:
    """Each message in a frame of its own, numbered from 1 in order."""
    chunks: dict[str, list[tuple[int, bytes]]] = {CLIENT: [], SERVER: []}
    for frame, (direction, wire) in enumerate(messages, start=1):
        chunks[direction].append((frame, wire))
    return chunks


def ext_request(kind: int, cookie: int, length: int, flags: int = 0, payload: bytes = b"") -> bytes:
    header = struct.pack(">IHHQQQ", c.EXTENDED_REQUEST_MAGIC, flags, kind, cookie, 0, length)
    return header + payload


def ext_done(cookie: int) -> bytes:
    return bytes(L.NBDExtendedReply(flags=c.ReplyFlag.DONE, type=c.ReplyType.NONE, cookie=cookie))


def decode_extended(client_tail: list[bytes], server_tail: list[bytes]) -> Session:
    """The opening, then the given requests and replies (decoded without frame numbers:
    the client's go first)."""
    opening = extended_opening()
    client = [wire for direction, wire in opening if direction == CLIENT] + client_tail
    server = [wire for direction, wire in opening if direction == SERVER] + server_tail
    return decode_streams(b"".join(client), b"".join(server))


def rules_found(session: Session) -> list[tuple[str, str]]:
    return [(f.rule, f.level) for f in check_session(session)]


def test_a_reply_sent_before_its_option_is_complete_still_answers_it() -> None:
    # nbdkit with --tls=require refuses an option as soon as its header is in, while
    # the option's data is still on its way: the reply's frame precedes the data's.
    go = option(c.Opt.GO, L.NBDOptInfoGo(export_name=b"disk", info_requests=[c.Info.NAME]))
    refusal = rep(c.Opt.GO, c.Rep.ERR_TLS_REQD, L.NBDRepError(message=b"TLS required"))
    abort = option(c.Opt.ABORT)
    client = [(2, CLIENT_FLAGS), (3, go[:16]), (5, go[16:]), (6, abort)]
    server = [(1, GREETING), (4, refusal), (7, rep(c.Opt.ABORT, c.Rep.ACK))]
    session = decode_streams(client, server)
    assert [(m.direction, m.name, m.frame, m.last_frame) for m in session.messages] == [
        (SERVER, "newstyle greeting", 1, 1),
        (CLIENT, "client flags", 2, 2),
        (CLIENT, "NBD_OPT_GO", 3, 5),
        (SERVER, "NBD_REP_ERR_TLS_REQD", 4, 4),
        (CLIENT, "NBD_OPT_ABORT", 6, 6),
        (SERVER, "NBD_REP_ACK", 7, 7),
    ]
    go_message, refused = session.messages[2], session.messages[3]
    assert refused.option is go_message and session.messages[5].option is session.messages[4]
    assert all(m.notes == () for m in session.messages)
    assert session.undecoded == [] and session.phase == "aborted"
    assert rules_found(session) == []


def test_a_request_counts_from_its_first_frame() -> None:
    # A long WRITE still arriving while replies to earlier requests go out: the
    # replies that complete during it come after it, and pair by cookie all the same.
    chunks = framed(extended_opening())  # frames 1-12
    client, server = chunks[CLIENT], chunks[SERVER]
    write = ext_request(c.Cmd.WRITE, 2, len(PATTERN), c.CmdFlag.PAYLOAD_LEN, PATTERN)
    client += [(30, ext_request(c.Cmd.FLUSH, 1, 0)), (31, write[:1000]), (33, write[1000:])]
    server += [(32, ext_done(1)), (34, ext_done(2))]
    session = decode_streams(client, server)
    tail = [(m.name, m.frame, m.last_frame) for m in session.messages[-4:]]
    assert tail == [
        ("NBD_CMD_FLUSH", 30, 30),
        ("NBD_CMD_WRITE", 31, 33),
        ("NBD_REPLY_TYPE_NONE", 32, 32),
        ("NBD_REPLY_TYPE_NONE", 34, 34),
    ]
    assert session.messages[-2].request is session.messages[-4]
    assert session.messages[-1].request is session.messages[-3]
    assert session.messages[-3].fields["data"] == PATTERN
    assert rules_found(session) == []


def test_block_status_payload_of_an_odd_length_shows_header_and_raw_payload() -> None:
    odd = struct.pack(">Q", 1 << 20) + b"\x00\x00\x00\x02\x00\x00"  # 8 + 6 bytes
    session = decode_extended(
        [
            ext_request(c.Cmd.BLOCK_STATUS, 1, len(odd), c.CmdFlag.PAYLOAD_LEN, odd),
            ext_request(c.Cmd.READ, 2, 512),
        ],
        [
            bytes(
                L.NBDExtendedReply(flags=1, type=c.ReplyType.ERROR, cookie=1)
                / L.NBDChunkError(error=c.Errno.EINVAL, message=b"bad payload")
            ),
            bytes(
                L.NBDExtendedReply(flags=1, type=c.ReplyType.OFFSET_DATA, cookie=2)
                / L.NBDChunkOffsetData(data_offset=0, data=bytes(512))
            ),
        ],
    )
    assert session.undecoded == []
    status = next(m for m in session.messages if m.name == "NBD_CMD_BLOCK_STATUS")
    assert {k: status.fields[k] for k in ("flags", "type", "cookie", "offset", "length")} == {
        "flags": c.CmdFlag.PAYLOAD_LEN,
        "type": c.Cmd.BLOCK_STATUS,
        "cookie": 1,
        "offset": 0,
        "length": 14,
    }
    assert status.fields["data"] == odd and "context_ids" not in status.fields
    assert status.notes == (
        "block status payload of 14 bytes is not an 8-byte effect length and 4-byte "
        "context ids: shown as raw data",
    )
    read = next(m for m in session.messages if m.name == "NBD_CMD_READ")
    assert [m.name for m in session.messages if m.request is read] == ["NBD_REPLY_TYPE_OFFSET_DATA"]
    assert ("client.block-status-payload-size", "MUST") in rules_found(session)


def test_unflagged_extended_write_is_framed_by_what_follows() -> None:
    # qemu's client: WRITE without NBD_CMD_FLAG_PAYLOAD_LEN, its data right behind.
    session = decode_extended(
        [ext_request(c.Cmd.WRITE, 1, len(PATTERN), 0, PATTERN), ext_request(c.Cmd.FLUSH, 2, 0)],
        [ext_done(1), ext_done(2)],
    )
    assert session.undecoded == []
    write = next(m for m in session.messages if m.name == "NBD_CMD_WRITE")
    assert isinstance(write.packet, L.NBDExtendedWriteUnflagged)
    assert (write.fields["flags"], write.fields["data"]) == (0, PATTERN)
    assert write.length == c.EXTENDED_REQUEST_LEN + len(PATTERN)
    assert write.notes == (
        "NBD_CMD_WRITE without NBD_CMD_FLAG_PAYLOAD_LEN, yet its data follows (as qemu's "
        "client sends it): read as its payload",
    )
    flush, done_write, done_flush = session.messages[-3:]
    assert [m.name for m in (flush, done_write, done_flush)] == [
        "NBD_CMD_FLUSH",
        "NBD_REPLY_TYPE_NONE",
        "NBD_REPLY_TYPE_NONE",
    ]
    assert (done_write.request, done_flush.request) == (write, flush)
    [finding] = check_session(session)
    assert (finding.rule, finding.level, finding.frame) == (
        "client.extended-write-payload-len",
        "MUST",
        write.frame,
    )
    assert finding.sentence.startswith(QEMU_WRITE_SENTENCE)


def test_unflagged_extended_write_without_data_has_no_payload() -> None:
    # By the spec the length is then an effect length: the next request follows at once.
    session = decode_extended(
        [ext_request(c.Cmd.WRITE, 1, 4096), ext_request(c.Cmd.FLUSH, 2, 0)],
        [ext_done(1), ext_done(2)],
    )
    assert session.undecoded == []
    write = next(m for m in session.messages if m.name == "NBD_CMD_WRITE")
    assert type(write.packet) is L.NBDExtendedRequest and "data" not in write.fields
    assert write.length == c.EXTENDED_REQUEST_LEN and write.notes == ()


def test_undecoded_regions_say_what_was_expected_and_found() -> None:
    bad_reply = struct.pack(">I", 0xDEADBEEF) + bytes(28)
    session = decode_extended([ext_request(c.Cmd.READ, 1, 512)], [bad_reply])
    [region] = session.undecoded
    assert (region.direction, region.kind, region.expected) == (SERVER, "bad-magic", "reply")
    assert region.expected_magic == (
        c.SIMPLE_REPLY_MAGIC,
        c.STRUCTURED_REPLY_MAGIC,
        c.EXTENDED_REPLY_MAGIC,
    )
    assert region.found_magic == 0xDEADBEEF
    assert region.reason == "expected a reply magic, found 0xdeadbeef"

    session = decode_extended([ext_request(c.Cmd.READ, 1, 512)[:20]], [])
    [region] = session.undecoded
    assert (region.kind, region.expected, region.found_magic) == ("incomplete", "request", None)
    assert (
        region.reason
        == "incomplete extended request header: 20 of 32 bytes at the end of the capture"
    )

    session = decode_streams(CLIENT_FLAGS + struct.pack(">QII", 0x1122334455667788, 1, 0), GREETING)
    [region] = session.undecoded
    assert (region.kind, region.expected) == ("bad-magic", "option")
    assert (region.expected_magic, region.found_magic) == ((c.IHAVEOPT,), 0x1122334455667788)

    session = decode_streams(b"", struct.pack(">QQH", c.NBDMAGIC, 42, 3))
    [region] = session.undecoded
    assert (region.kind, region.expected) == ("bad-magic", "greeting-magic")
    assert (region.expected_magic, region.found_magic) == ((c.CLISERV_MAGIC, c.IHAVEOPT), 42)
    assert [f.rule for f in check_session(session)] == ["server.greeting-magic"]

    session = decode_streams(
        CLIENT_FLAGS + option(c.Opt.ABORT) + b"more",
        GREETING + rep(c.Opt.ABORT, c.Rep.ACK),
    )
    [region] = session.undecoded
    assert (region.direction, region.kind, region.expected, region.length) == (
        CLIENT,
        "unexpected",
        None,
        4,
    )


# --- real peers: recording -------------------------------------------------------------


@pytest.fixture(scope="module")
def sid() -> RootfsProvider:
    """Debian sid's root filesystem (built, or rebuilt when its recipe changed)."""
    return provision_sid()


def provision_sid() -> RootfsProvider:
    provider = RootfsProvider(load_suites().suite("sid"))
    provider.provision(lambda line: None)
    assert provider.ready()
    return provider


@contextlib.contextmanager
def recording(server_address: Address, path: Path) -> Iterator[tuple[ProxyThread, Endpoint]]:
    """The capture proxy in front of a server; yields it and the endpoint clients use.

    On the way out it waits until every connection it accepted has finished, so the
    file holds every byte.
    """
    with ProxyThread(Address.tcp("127.0.0.1", 0), server_address, path) as proxy:
        yield proxy, Endpoint(Address.tcp("127.0.0.1", proxy.address.port), CHAIN.name)
        proxy.wait_closed(proxy.stats.accepted, WAIT)
        assert proxy.errors == []


LIBNBD_SCRIPT = """
import json, sys
data = bytes((i * 7 + 3) % 251 for i in range(8192))
for context in {contexts!r}:
    h.add_meta_context(context)
h.connect_uri({uri!r})
assert h.can_block_status_payload()
h.pwrite(data, {offset})
assert h.pread(len(data), {offset}) == data
seen = []
def collect(context, offset, entries, error):
    seen.append((context, offset, [list(entry) for entry in entries]))
    return 0
h.block_status_filter({size}, 0, ["qemu:dirty-bitmap:b0"], collect)
h.block_status_64({size}, 0, collect)
h.shutdown()
print(json.dumps(seen))
"""


def record_libnbd(path: Path, work: Path, sid: RootfsProvider) -> None:
    """sid's nbdinfo maps each context; nbdsh writes, reads back and asks block status
    filtered to the bitmap (the payload form) and for every context."""
    with (
        DRIVERS["qemu-nbd"](sid).start(CHAIN, work / "server") as server,
        recording(server.address, path) as (_proxy, endpoint),
    ):
        nbdinfo = DRIVERS["nbdinfo"](sid, log_dir=work)
        for context in CONTEXTS:
            assert nbdinfo.map(endpoint, context) == expected_map(CHAIN, context)
        script = LIBNBD_SCRIPT.format(
            contexts=CONTEXTS, uri=endpoint.uri(), offset=WRITE_AT, size=CHAIN.size
        )
        result = DRIVERS["nbdsh"](sid, log_dir=work).run(["-c", script])
    seen = json.loads(str(result.stdout))
    assert [(context, offset) for context, offset, _ in seen] == [
        ("qemu:dirty-bitmap:b0", 0),
        *((context, 0) for context in CONTEXTS),
    ]
    for context, _offset, entries in seen:
        assert merge([(length, flags) for length, flags in entries]) == expected_map(
            AFTER_WRITE, context
        )


def record_qemu_clients(path: Path, work: Path, sid: RootfsProvider) -> None:
    """sid's qemu-io writes and reads back, qemu-img maps base:allocation (qemu-nbd 11.1)."""
    with (
        DRIVERS["qemu-nbd"](sid).start(CHAIN, work / "server") as server,
        recording(server.address, path) as (_proxy, endpoint),
    ):
        qemu_io = DRIVERS["qemu-io"](sid, log_dir=work)
        qemu_io.write(endpoint, WRITE_AT, PATTERN)
        assert qemu_io.read(endpoint, WRITE_AT, len(PATTERN)) == PATTERN
        qemu_img = DRIVERS["qemu-img"](sid, log_dir=work)
        assert qemu_img.map(endpoint) == expected_map(AFTER_WRITE, "base:allocation")


# --- checking ----------------------------------------------------------------------------


def merge(entries: list[tuple[int, int]], start: int = 0) -> list[tuple[int, int, int]]:
    """(length, status) runs from ``start`` as merged (offset, length, status) extents."""
    extents: list[tuple[int, int, int]] = []
    offset = start
    for length, status in entries:
        if extents and extents[-1][2] == status and extents[-1][0] + extents[-1][1] == offset:
            first, run, _ = extents[-1]
            extents[-1] = (first, run + length, status)
        else:
            extents.append((offset, length, status))
        offset += length
    return extents


def extended_sessions(capture: Capture, count: int) -> list[Session]:
    """The capture's sessions (exactly ``count``), each with extended headers negotiated,
    every byte decoded, nothing noted, every message extended and every reply paired."""
    assert capture.errors == []
    assert len(capture.sessions) == count, [s.phase for s in capture.sessions]
    for session in capture.sessions:
        check_extended_session(session)
    return capture.sessions


def check_extended_session(session: Session) -> None:
    """One session: see :func:`extended_sessions`."""
    assert session.undecoded == [], session.undecoded
    for direction in (CLIENT, SERVER):
        assert session.accounted(direction)
        assert session.bytes_decoded[direction] == session.bytes_total[direction] > 0
    assert session.notes == []
    state = session.state
    assert (state.style, state.extended_headers, session.phase) == (
        "fixed-newstyle",
        True,
        "transmission",
    )
    assert state.export_size == CHAIN.size
    for message in session.messages:
        if message.kind == "request":
            assert message.fields["magic"] == c.EXTENDED_REQUEST_MAGIC
        elif message.kind in ("chunk", "simple-reply"):
            assert message.fields["magic"] == c.EXTENDED_REPLY_MAGIC
            assert message.request is not None
            # An extended reply repeats the offset of the request it answers.
            assert message.fields["offset"] == message.request.fields["offset"]


def requests(session: Session, name: str) -> list[WireMessage]:
    return [m for m in session.messages if m.kind == "request" and m.name == name]


def replies_to(session: Session, request: WireMessage) -> list[WireMessage]:
    return [m for m in session.messages if m.request is request]


def status_extents(session: Session, request: WireMessage) -> dict[str, list]:
    """Context name -> merged extents of the BLOCK_STATUS_EXT chunks answering ``request``."""
    found: dict[str, list[tuple[int, int]]] = {}
    for chunk in replies_to(session, request):
        assert chunk.name == "NBD_REPLY_TYPE_BLOCK_STATUS_EXT", chunk.name
        assert chunk.fields["count"] == len(chunk.fields["descriptors"])
        found.setdefault(chunk.fields["context_name"], []).extend(
            (d["length"], d["status"]) for d in chunk.fields["descriptors"]
        )
    return {name: merge(entries, request.fields["offset"]) for name, entries in found.items()}


def read_data(session: Session, read: WireMessage) -> bytes:
    """What a READ returned, assembled from its chunks (holes read as zeroes)."""
    start, length = read.fields["offset"], read.fields["length"]
    buffer = bytearray(length)
    for chunk in replies_to(session, read):
        fields = chunk.fields
        if fields["type"] == c.ReplyType.OFFSET_DATA:
            at = fields["data_offset"] - start
            buffer[at : at + len(fields["data"])] = fields["data"]
        else:
            assert fields["type"] in (c.ReplyType.OFFSET_HOLE, c.ReplyType.NONE), chunk.name
    return bytes(buffer)


def only_finding_is_qemu_write(findings: list[Finding], writes: int) -> None:
    """The findings are exactly qemu's unflagged writes (a real deviation of qemu 11.1)."""
    assert [f.rule for f in findings] == ["client.extended-write-payload-len"] * writes, "\n".join(
        f.describe() for f in findings
    )
    for finding in findings:
        assert finding.level == "MUST" and finding.role == "client"
        assert finding.sentence.startswith(QEMU_WRITE_SENTENCE), finding.sentence


def check_libnbd(capture: Capture) -> None:
    sessions = extended_sessions(capture, 4)
    for session, context in zip(sessions[:3], CONTEXTS, strict=True):
        # nbdinfo --map: the one context asked for, its extents exactly.
        [status] = requests(session, "NBD_CMD_BLOCK_STATUS")
        assert list(session.state.meta_contexts.values()) == [context]
        assert status.fields["flags"] == 0 and status.fields["length"] == CHAIN.size
        assert status_extents(session, status) == {context: expected_map(CHAIN, context)}
    nbdsh = sessions[3]
    assert sorted(nbdsh.state.meta_contexts.values()) == sorted(CONTEXTS)
    assert nbdsh.state.transmission_flags & c.TransmissionFlag.BLOCK_STATUS_PAYLOAD
    [write] = requests(nbdsh, "NBD_CMD_WRITE")
    assert write.fields["flags"] == c.CmdFlag.PAYLOAD_LEN
    assert (write.fields["offset"], write.fields["length"], write.fields["data"]) == (
        WRITE_AT,
        len(PATTERN),
        PATTERN,
    )
    assert [m.name for m in replies_to(nbdsh, write)] == ["NBD_REPLY_TYPE_NONE"]
    [read] = requests(nbdsh, "NBD_CMD_READ")
    assert read_data(nbdsh, read) == PATTERN
    filtered, plain = requests(nbdsh, "NBD_CMD_BLOCK_STATUS")
    # The payload form: an effect length and the one context id asked for.
    assert filtered.fields["flags"] == c.CmdFlag.PAYLOAD_LEN and filtered.fields["length"] == 12
    assert filtered.fields["effect_length"] == CHAIN.size
    assert filtered.fields["context_names"] == ["qemu:dirty-bitmap:b0"]
    bitmap = "qemu:dirty-bitmap:b0"
    assert status_extents(nbdsh, filtered) == {bitmap: expected_map(AFTER_WRITE, bitmap)}
    assert status_extents(nbdsh, plain) == {
        context: expected_map(AFTER_WRITE, context) for context in CONTEXTS
    }
    assert check_capture(capture) == []


def check_qemu_clients(capture: Capture) -> None:
    writer, reader, mapper = extended_sessions(capture, 3)
    [write] = requests(writer, "NBD_CMD_WRITE")
    assert write.fields["flags"] & c.CmdFlag.PAYLOAD_LEN == 0  # qemu's deviation
    assert (write.fields["offset"], write.fields["length"], write.fields["data"]) == (
        WRITE_AT,
        len(PATTERN),
        PATTERN,
    )
    assert "without NBD_CMD_FLAG_PAYLOAD_LEN" in write.notes[0]
    assert [m.name for m in replies_to(writer, write)] == ["NBD_REPLY_TYPE_NONE"]
    reads = [m for m in requests(reader, "NBD_CMD_READ") if m.fields["offset"] == WRITE_AT]
    assert [read_data(reader, m) for m in reads] == [PATTERN]
    assert mapper.state.meta_contexts == {0: "base:allocation"}
    statuses = requests(mapper, "NBD_CMD_BLOCK_STATUS")
    assert statuses
    extents: list[tuple[int, int]] = []
    for status in statuses:
        [(name, found)] = status_extents(mapper, status).items()
        assert name == "base:allocation"
        extents += [(length, flags) for _offset, length, flags in found]
    assert merge(extents) == expected_map(AFTER_WRITE, "base:allocation")
    only_finding_is_qemu_write(check_capture(capture), writes=1)


@dataclass(frozen=True)
class Scenario:
    """How to record one stored capture, and what its decode must show."""

    name: str
    file_name: str
    record: Callable[[Path, Path, RootfsProvider], None]
    check: Callable[[Capture], None]


SCENARIOS = [
    Scenario("libnbd", LIBNBD_CAPTURE, record_libnbd, check_libnbd),
    Scenario("qemu-clients", QEMU_CAPTURE, record_qemu_clients, check_qemu_clients),
]


_ACCOUNTING = re.compile(
    r"^    (client|server) bytes: (\d+) \((\d+) decoded, (\d+) TLS, (\d+) undecoded\)$", re.M
)


def assert_dissect_accounts_for_every_byte(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``nbd-harness dissect`` reads every byte of every session of ``path`` as NBD."""
    code = main(["dissect", str(path)])
    out, err = capsys.readouterr()
    assert (code, err) == (0, "")
    sessions = out.count("=== session ")
    counts = _ACCOUNTING.findall(out)
    assert sessions > 0 and len(counts) == 2 * sessions
    for direction, total, decoded, tls, undecoded in counts:
        assert int(total) == int(decoded) and (tls, undecoded) == ("0", "0"), direction
        # Every session has server bytes; a client may have sent none (qemu's retry).
        assert int(total) > 0 or direction == "client"
    assert "UNDECODED" not in out


# --- tests: stored captures (no peers), fresh captures (peers) ---------------------------


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
def test_stored_capture(scenario: Scenario) -> None:
    path = CAPTURES / scenario.file_name
    assert path.stat().st_size < 200 * 1024
    scenario.check(decode_capture(path))


@pytest.mark.parametrize("name", sorted(p.name for p in CAPTURES.glob("*.pcap*")))
def test_dissect_command_accounts_for_every_stored_byte(
    name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert_dissect_accounts_for_every_byte(CAPTURES / name, capsys)


@pytest.mark.peers
@pytest.mark.slow
@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
def test_fresh_capture(
    scenario: Scenario,
    sid: RootfsProvider,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = tmp_path / scenario.file_name
    scenario.record(path, tmp_path, sid)
    scenario.check(decode_capture(path))
    assert_dissect_accounts_for_every_byte(path, capsys)


@pytest.mark.peers
@pytest.mark.slow
def test_nbdcopy_copies_the_chain_over_extended_headers(
    sid: RootfsProvider, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "nbdcopy.pcapng"
    copy = tmp_path / "copy.raw"
    with (
        DRIVERS["qemu-nbd"](sid).start(CHAIN, tmp_path / "server") as server,
        recording(server.address, path) as (_proxy, endpoint),
    ):
        DRIVERS["nbdcopy"](sid, log_dir=tmp_path).copy_from(endpoint, copy)
    assert copy.read_bytes() == CHAIN.read(0, CHAIN.size)
    capture = decode_capture(path)
    sessions = extended_sessions(capture, len(capture.sessions))
    # nbdcopy reads what block status calls data and leaves the rest a hole: the reads
    # it sent, put together, are the chain's data.
    image = bytearray(CHAIN.size)
    for session in sessions:
        for read in requests(session, "NBD_CMD_READ"):
            start = read.fields["offset"]
            image[start : start + read.fields["length"]] = read_data(session, read)
    assert bytes(image) == CHAIN.read(0, CHAIN.size)
    assert any(requests(s, "NBD_CMD_BLOCK_STATUS") for s in sessions)
    assert check_capture(capture) == []
    assert_dissect_accounts_for_every_byte(path, capsys)


@pytest.mark.peers
@pytest.mark.slow
def test_qemu_11_clients_of_the_reference_server(
    sid: RootfsProvider, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """qemu 11.1's reads work; its write fails: it lacks NBD_CMD_FLAG_PAYLOAD_LEN, and the
    reference server, which follows the spec, answers NBD_EINVAL, reads the data that follows
    (as qemu-nbd does) and stays in sync."""
    path = tmp_path / "reference.pcapng"
    reference = Catalog.load(kinds=()).resolve("reference-server")
    qemu_io = DRIVERS["qemu-io"](sid, log_dir=tmp_path)
    qemu_img = DRIVERS["qemu-img"](sid, log_dir=tmp_path)
    with (
        reference.start(CHAIN, tmp_path / "server") as server,
        recording(server.address, path) as (_proxy, endpoint),
    ):
        with pytest.raises(PeerError, match="write failed: Invalid argument"):
            qemu_io.write(endpoint, WRITE_AT, PATTERN)
        assert qemu_io.read(endpoint, WRITE_AT, len(PATTERN)) == CHAIN.read(WRITE_AT, 8192)
        assert qemu_img.read(endpoint, 0, CHAIN.size) == CHAIN.read(0, CHAIN.size)
        assert qemu_img.map(endpoint) == expected_map(CHAIN, "base:allocation")
    capture = decode_capture(path)
    # Connections in order: qemu-io writing, then maybe its reconnection once the server
    # hung up (how far that one gets depends on timing), qemu-io reading, qemu-img
    # converting, qemu-img mapping.
    writer, *retries = capture.sessions[:-3]
    readers = capture.sessions[-3:]
    assert len(retries) <= 1
    for retry in retries:
        assert retry.undecoded == [] and retry.accounted(CLIENT) and retry.accounted(SERVER)
        assert not requests(retry, "NBD_CMD_WRITE")
    for session in (writer, *readers):
        check_extended_session(session)
    [write] = requests(writer, "NBD_CMD_WRITE")
    assert write.fields["data"] == PATTERN
    [refusal] = replies_to(writer, write)
    assert (refusal.name, refusal.fields["error"]) == ("NBD_REPLY_TYPE_ERROR", c.Errno.EINVAL)
    # The server stayed in sync after the refusal: qemu's next request got its answer.
    assert [m for m in writer.messages if m.direction == SERVER][-1] is not refusal
    assert writer.undecoded == []
    image = bytearray(CHAIN.size)
    for session in readers:
        for read in requests(session, "NBD_CMD_READ"):
            start = read.fields["offset"]
            image[start : start + read.fields["length"]] = read_data(session, read)
    assert bytes(image) == CHAIN.read(0, CHAIN.size)
    only_finding_is_qemu_write(check_capture(capture), writes=1)
    assert_dissect_accounts_for_every_byte(path, capsys)


# --- regenerating the stored captures -------------------------------------------------------


def regenerate(directory: Path = CAPTURES) -> None:
    """Record every stored scenario again into ``directory`` (checking each)."""
    import tempfile

    provider = provision_sid()
    for scenario in SCENARIOS:
        with tempfile.TemporaryDirectory(dir="/tmp") as work:
            path = directory / scenario.file_name
            scenario.record(path, Path(work), provider)
            scenario.check(decode_capture(path))
            print(f"{path}: {path.stat().st_size} bytes")


if __name__ == "__main__":
    if sys.argv[1:] != ["--regenerate"]:
        sys.exit("usage: test_dissect_extended.py --regenerate")
    regenerate()
