"""The session state machine: a client and a server Connection talk to each
other in memory, and each refuses what the spec forbids at that point."""

from __future__ import annotations

import pytest

from harness.protocol import NEED_DATA, Connection, Phase, Role
from harness.protocol import constants as c
from harness.protocol.codec import chunk, option, option_reply
from harness.protocol.errors import LocalProtocolError, RemoteProtocolError
from harness.protocol.messages import (
    ChunkBlockStatus,
    ChunkNone,
    ChunkOffsetData,
    ChunkOffsetHole,
    ClientFlags,
    ConnectionClosed,
    EmptyPayload,
    ExportNameReply,
    Extent,
    InfoExport,
    InfoRequestPayload,
    MetaContextPayload,
    MetaContextReplyPayload,
    NewstyleGreeting,
    OptionReply,
    Request,
    SimpleReply,
)

TF = c.TransmissionFlag
FLAGS = TF.HAS_FLAGS | TF.SEND_FLUSH | TF.SEND_FUA | TF.SEND_TRIM | TF.SEND_DF


def pipe(sender: Connection, receiver: Connection, event):
    """Send ``event`` from one end and return what the other end decodes."""
    receiver.receive_data(sender.send(event))
    got = receiver.next_event()
    assert got == event
    return got


def handshake(
    structured=True, extended=False, contexts=("base:allocation",), size=1 << 20, flags=FLAGS
):
    client = Connection(Role.CLIENT)
    server = Connection(Role.SERVER, strict_remote=False)
    pipe(
        server, client, NewstyleGreeting(c.HandshakeFlag.FIXED_NEWSTYLE | c.HandshakeFlag.NO_ZEROES)
    )
    pipe(client, server, ClientFlags(c.ClientFlag.C_FIXED_NEWSTYLE | c.ClientFlag.C_NO_ZEROES))
    if extended:
        pipe(client, server, option(c.Opt.EXTENDED_HEADERS, EmptyPayload()))
        pipe(server, client, option_reply(c.Opt.EXTENDED_HEADERS, c.Rep.ACK))
    elif structured:
        pipe(client, server, option(c.Opt.STRUCTURED_REPLY, EmptyPayload()))
        pipe(server, client, option_reply(c.Opt.STRUCTURED_REPLY, c.Rep.ACK))
    if contexts:
        pipe(client, server, option(c.Opt.SET_META_CONTEXT, MetaContextPayload("disk", contexts)))
        for index, name in enumerate(contexts, start=1):
            pipe(
                server,
                client,
                option_reply(
                    c.Opt.SET_META_CONTEXT, c.Rep.META_CONTEXT, MetaContextReplyPayload(index, name)
                ),
            )
        pipe(server, client, option_reply(c.Opt.SET_META_CONTEXT, c.Rep.ACK))
    pipe(client, server, option(c.Opt.GO, InfoRequestPayload("disk", ())))
    pipe(server, client, option_reply(c.Opt.GO, c.Rep.INFO, InfoExport(size, flags)))
    pipe(server, client, option_reply(c.Opt.GO, c.Rep.ACK))
    assert client.phase is server.phase is Phase.TRANSMISSION
    return client, server


def test_full_session_structured_read_and_block_status():
    client, server = handshake()
    neg = client.negotiated
    assert (
        neg.structured_replies
        and neg.export_size == 1 << 20
        and neg.meta_contexts == {1: "base:allocation"}
    )
    pipe(client, server, Request(type=c.Cmd.READ, offset=0, length=1024, cookie=1))
    pipe(server, client, chunk(1, ChunkOffsetData(0, b"a" * 512)))
    pipe(server, client, chunk(1, ChunkOffsetHole(512, 512), done=True))
    assert not client.in_flight
    pipe(client, server, Request(type=c.Cmd.BLOCK_STATUS, offset=0, length=4096, cookie=2))
    pipe(server, client, chunk(2, ChunkBlockStatus(1, (Extent(4096, 3),)), done=True))
    pipe(client, server, Request(type=c.Cmd.DISC, cookie=3))
    assert client.phase is Phase.CLOSED
    client.receive_data(b"")
    assert isinstance(client.next_event(), ConnectionClosed)


def test_partial_data_needs_more():
    client = Connection(Role.CLIENT)
    client.receive_data(b"NBDMAGIC")
    assert client.next_event() is NEED_DATA
    client.receive_data(b"IHAVEOPT\x00\x01")
    assert client.next_event() == NewstyleGreeting(1)


@pytest.mark.parametrize(
    ("chunks", "rule"),
    [
        ([chunk(1, ChunkOffsetData(0, b"a" * 512), done=True)], "server.read-full-coverage"),
        ([chunk(1, ChunkOffsetData(1024, b"a" * 512), done=True)], "server.content-within-request"),
        (
            [
                chunk(1, ChunkOffsetData(0, b"a" * 600)),
                chunk(1, ChunkOffsetHole(512, 512), done=True),
            ],
            "server.content-no-overlap",
        ),
        ([chunk(1, ChunkOffsetHole(0, 1024))], None),
        ([chunk(1, ChunkNone())], "server.none-chunk-done"),
        ([chunk(2, ChunkNone(), done=True)], "server.reply-cookie-matches"),
        ([SimpleReply(1, 0, b"x" * 1024)], "server.no-simple-reply-to-read"),
    ],
)
def test_strict_client_rejects_bad_read_replies(chunks, rule):
    client, server = handshake()
    pipe(client, server, Request(type=c.Cmd.READ, offset=0, length=1024, cookie=1))
    server.strict_local = False
    error = None
    for reply in chunks:
        client.receive_data(server.send(reply))
        try:
            client.next_event()
        except RemoteProtocolError as exc:
            error = exc
            break
    if rule is None:
        assert error is None
    else:
        assert error is not None and error.rule == rule and error.section


def test_extended_headers_forbid_simple_replies_and_want_ext_status():
    client, server = handshake(extended=True)
    pipe(client, server, Request(type=c.Cmd.FLUSH, cookie=5, extended=True))
    server.strict_local = False
    client.receive_data(server.send(SimpleReply(5)))
    with pytest.raises(RemoteProtocolError) as info:
        client.next_event()
    assert info.value.rule == "server.simple-reply-with-extended"


def test_block_status_wrong_chunk_type_under_extended_headers():
    client, server = handshake(extended=True)
    pipe(client, server, Request(type=c.Cmd.BLOCK_STATUS, length=4096, cookie=5, extended=True))
    server.strict_local = False
    bad = chunk(5, ChunkBlockStatus(1, (Extent(4096, 0),)), done=True, extended=True)
    client.receive_data(server.send(bad))
    with pytest.raises(RemoteProtocolError) as info:
        client.next_event()
    assert info.value.rule == "server.status-chunk-type"
    good = chunk(5, ChunkBlockStatus(1, (Extent(4096, 0),), wide=True), done=True, extended=True)
    client2, server2 = handshake(extended=True)
    pipe(client2, server2, Request(type=c.Cmd.BLOCK_STATUS, length=4096, cookie=5, extended=True))
    pipe(server2, client2, good)


def test_server_records_client_violations_and_stays_in_sync():
    client, server = handshake(flags=TF.HAS_FLAGS | TF.READ_ONLY)
    client.strict_local = False
    server.receive_data(client.send(Request(type=c.Cmd.TRIM, offset=0, length=512, cookie=9)))
    event = server.next_event()
    rules = {v.rule for v in server.last_violations}
    assert rules == {"client.trim-needs-send-trim", "server.read-only-write-errors"}
    assert event.type == c.Cmd.TRIM
    errnos = {v.errno for v in server.last_violations}
    assert c.Errno.EPERM in errnos
    pipe(server, client, SimpleReply(9, c.Errno.EPERM))
    server.receive_data(
        client.send(Request(type=c.Cmd.READ, offset=(1 << 20), length=512, cookie=10))
    )
    server.next_event()
    assert [v.rule for v in server.last_violations] == ["client.request-within-export"]


def test_local_violations_are_refused():
    client, _server = handshake(contexts=())
    with pytest.raises(LocalProtocolError) as info:
        client.send(Request(type=c.Cmd.BLOCK_STATUS, length=512, cookie=1))
    assert info.value.rule == "client.block-status-needs-contexts"
    with pytest.raises(LocalProtocolError):
        client.send(Request(type=c.Cmd.WRITE_ZEROES, length=512, cookie=1))


def test_option_reply_must_answer_the_option_and_go_needs_export_info():
    client = Connection(Role.CLIENT)
    server = Connection(Role.SERVER, strict_remote=False, strict_local=False)
    pipe(server, client, NewstyleGreeting(1))
    pipe(client, server, ClientFlags(1))
    pipe(client, server, option(c.Opt.GO, InfoRequestPayload("x")))
    client.receive_data(server.send(OptionReply(c.Opt.INFO, c.Rep.ACK)))
    with pytest.raises(RemoteProtocolError) as info:
        client.next_event()
    assert {info.value.rule} <= {
        "server.option-reply-answers-option",
        "server.info-export-before-ack",
    }


def test_export_name_fallback_and_zero_padding():
    client = Connection(Role.CLIENT)
    server = Connection(Role.SERVER)
    pipe(server, client, NewstyleGreeting(1))
    pipe(client, server, ClientFlags(1))
    pipe(client, server, option(c.Opt.EXPORT_NAME, None))
    reply = ExportNameReply(4096, TF.HAS_FLAGS, zeroes=True)
    raw = server.send(reply)
    assert len(raw) == 134
    client.receive_data(raw)
    assert client.next_event() == reply
    assert client.phase is Phase.TRANSMISSION


def test_nonfixed_newstyle_allows_only_export_name():
    client = Connection(Role.CLIENT)
    server = Connection(Role.SERVER, strict_remote=False)
    pipe(server, client, NewstyleGreeting(0))
    pipe(client, server, ClientFlags(0))
    with pytest.raises(LocalProtocolError) as info:
        client.send(option(c.Opt.LIST, EmptyPayload()))
    assert info.value.rule == "client.export-name-only-in-nonfixed"


def test_starttls_resets_negotiation():
    client, server = Connection(Role.CLIENT), Connection(Role.SERVER)
    pipe(server, client, NewstyleGreeting(1))
    pipe(client, server, ClientFlags(1))
    pipe(client, server, option(c.Opt.STRUCTURED_REPLY, EmptyPayload()))
    pipe(server, client, option_reply(c.Opt.STRUCTURED_REPLY, c.Rep.ACK))
    pipe(client, server, option(c.Opt.STARTTLS, EmptyPayload()))
    pipe(server, client, option_reply(c.Opt.STARTTLS, c.Rep.ACK))
    assert client.phase is Phase.TLS_HANDSHAKE
    assert not client.negotiated.structured_replies
    client.start_tls_done()
    assert client.phase is Phase.OPTIONS and client.negotiated.tls


def test_out_of_turn_bytes_are_a_remote_error():
    client = Connection(Role.CLIENT)
    server = Connection(Role.SERVER)
    pipe(server, client, NewstyleGreeting(1))
    client.receive_data(b"\x00" * 8)  # server talks while the client should send its flags
    with pytest.raises(RemoteProtocolError) as info:
        client.next_event()
    assert info.value.rule == "server.option-reply-answers-option"


def test_undefined_flag_bits_are_violations():
    """Bits the spec does not define at all (not just other known flags) are caught."""
    client, server = handshake()
    client.strict_local = False
    server.receive_data(client.send(Request(type=c.Cmd.READ, length=512, cookie=1, flags=0x8000)))
    server.next_event()
    assert [v.rule for v in server.last_violations] == ["client.command-flag-documented"]
    server.strict_local = False
    client.strict_local = True
    bad = chunk(1, ChunkOffsetHole(0, 512), done=True)
    bad = type(bad)(bad.cookie, bad.type, bad.flags | 0x10, bad.payload)
    client.receive_data(server.send(bad))
    with pytest.raises(RemoteProtocolError) as info:
        client.next_event()
    assert info.value.rule == "server.reply-flags-known"
    fresh = Connection(Role.SERVER, strict_remote=False)
    fresh.send(NewstyleGreeting(1))
    fresh.receive_data(b"\x00\x00\x01\x01")
    fresh.next_event()
    assert [v.rule for v in fresh.last_violations] == ["client.client-flags-known"]


def test_tables_agree_on_turns():
    """Each side that may send in a phase has a reader, and each message it may send
    there has a transition: the three tables describe one machine."""
    from harness.protocol.connection import READERS, TRANSITIONS, TURNS

    assert {p: set(sides) for p, sides in READERS.items()} == {
        p: set(sides) for p, sides in TURNS.items()
    }
    for phase, sides in TURNS.items():
        allowed = {kind for kinds in sides.values() for kind in kinds}
        assert set(TRANSITIONS[phase]) == allowed, phase


def test_every_rule_id_the_protocol_package_names_is_cited():
    """The state machine speaks the conformance rules' vocabulary: each id it names in its
    checks, codec and tables has a citation (and so a conformance rule reading it)."""
    import re
    from pathlib import Path

    from harness.protocol import connection
    from harness.protocol.rules import CITATIONS

    package = Path(connection.__file__).parent
    named = {
        rule_id
        for path in package.glob("*.py")
        if path.name != "rules.py"
        for rule_id in re.findall(r'"((?:client|server)\.[a-z0-9-]+)"', path.read_text())
    }
    assert len(named) > 60
    assert named <= set(CITATIONS), named - set(CITATIONS)
    assert set(connection.OUT_OF_TURN.values()) <= set(CITATIONS)
