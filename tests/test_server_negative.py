"""A hostile or broken client gets the answer the spec names, and the
reference server stays in sync (or closes where the spec says it must)."""

from __future__ import annotations

import struct
from collections.abc import Iterator

import pytest
from _raw_client import RawClient

from harness.protocol import constants as c
from harness.protocol.codec import decode_chunk_payload, option
from harness.protocol.messages import (
    ChunkError,
    ClientFlags,
    EmptyPayload,
    InfoRequestPayload,
    MetaContextPayload,
    NewstyleGreeting,
    OptionReply,
    OptionRequest,
    ReplyChunk,
    Request,
    SimpleReply,
)
from reference_server.config import config_from_dict
from reference_server.runner import ServerThread

FIXED = c.ClientFlag.C_FIXED_NEWSTYLE | c.ClientFlag.C_NO_ZEROES


@pytest.fixture
def server(tmp_path) -> Iterator[ServerThread]:
    config = config_from_dict(
        {
            "export": [
                {"name": "disk", "size": "1M", "min_block_size": 512},
                {"name": "ro", "size": "64k", "read_only": True},
            ]
        },
        base_dir=tmp_path,
    )
    with ServerThread(config) as thread:
        yield thread


def connect(server: ServerThread) -> RawClient:
    client = RawClient("127.0.0.1", server.address.port)
    greeting = client.recv()
    assert isinstance(greeting, NewstyleGreeting)
    assert greeting.handshake_flags == c.HandshakeFlag.FIXED_NEWSTYLE | c.HandshakeFlag.NO_ZEROES
    client.send(ClientFlags(FIXED))
    return client


def ask(client: RawClient, request: OptionRequest) -> list[OptionReply]:
    client.send(request)
    replies = []
    while True:
        reply = client.recv()
        assert isinstance(reply, OptionReply)
        replies.append(reply)
        if reply.reply_type == c.Rep.ACK or c.is_rep_error(reply.reply_type):
            return replies


def go(client: RawClient, export: str = "disk", structured: bool = True) -> None:
    if structured:
        assert ask(client, option(c.Opt.STRUCTURED_REPLY, EmptyPayload()))[-1].reply_type == (
            c.Rep.ACK
        )
        ask(
            client, option(c.Opt.SET_META_CONTEXT, MetaContextPayload(export, ("base:allocation",)))
        )
    replies = ask(client, option(c.Opt.GO, InfoRequestPayload(export, (c.Info.BLOCK_SIZE,))))
    assert replies[-1].reply_type == c.Rep.ACK


def test_unknown_option_gets_unsup_and_the_server_stays_in_sync(server):
    with connect(server) as client:
        replies = ask(client, OptionRequest(0x4242, b"some payload"))
        assert [r.reply_type for r in replies] == [c.Rep.ERR_UNSUP]
        replies = ask(client, OptionRequest(c.Opt.PEEK_EXPORT, b""))
        assert [r.reply_type for r in replies] == [c.Rep.ERR_UNSUP]
        go(client)


@pytest.mark.parametrize(
    "request_, expected",
    [
        (OptionRequest(c.Opt.LIST, b"junk"), c.Rep.ERR_INVALID),
        (OptionRequest(c.Opt.GO, struct.pack(">I", 100) + b"x"), c.Rep.ERR_INVALID),
        (OptionRequest(c.Opt.STRUCTURED_REPLY, b"x"), c.Rep.ERR_INVALID),
        (
            option(c.Opt.SET_META_CONTEXT, MetaContextPayload("disk", ("base:allocation",))),
            c.Rep.ERR_INVALID,
        ),  # before structured replies
        (option(c.Opt.INFO, InfoRequestPayload("nope")), c.Rep.ERR_UNKNOWN),
        (option(c.Opt.STARTTLS, EmptyPayload()), c.Rep.ERR_POLICY),  # NOTLS
    ],
)
def test_bad_options_get_the_right_error(server, request_, expected):
    with connect(server) as client:
        replies = ask(client, request_)
        assert replies[-1].reply_type == expected
        assert all(r.option == request_.option for r in replies)
        go(client)  # still in sync


def test_list_meta_context_queries(server):
    with connect(server) as client:
        ask(client, option(c.Opt.STRUCTURED_REPLY, EmptyPayload()))
        replies = ask(
            client, option(c.Opt.LIST_META_CONTEXT, MetaContextPayload("disk", ("qemu:",)))
        )
        from harness.protocol.codec import decode_reply_payload

        names = [decode_reply_payload(r.reply_type, r.data).name for r in replies[:-1]]
        assert names == ["qemu:allocation-depth"]
        replies = ask(
            client, option(c.Opt.LIST_META_CONTEXT, MetaContextPayload("disk", ("x-unknown:foo",)))
        )
        assert [r.reply_type for r in replies] == [c.Rep.ACK]  # unknown namespace ignored
        replies = ask(
            client, option(c.Opt.LIST_META_CONTEXT, MetaContextPayload("disk", ("nocolon",)))
        )
        assert replies[-1].reply_type == c.Rep.ERR_INVALID


def test_bad_requests_get_errors_and_the_server_stays_in_sync(server):
    with connect(server) as client:
        go(client)
        cases = [
            (Request(type=c.Cmd.READ, offset=1 << 20, length=512, cookie=1), c.Errno.EINVAL),
            (Request(type=c.Cmd.READ, offset=1, length=512, cookie=2), c.Errno.EINVAL),
            (
                Request(
                    type=c.Cmd.WRITE,
                    offset=(1 << 20) - 512,
                    length=1024,
                    cookie=3,
                    payload=b"\x01" * 1024,
                ),
                c.Errno.ENOSPC,
            ),
            (Request(type=0x99, offset=0, length=512, cookie=4), c.Errno.EINVAL),
            (
                Request(type=c.Cmd.READ, offset=0, length=512, cookie=5, flags=c.CmdFlag.NO_HOLE),
                c.Errno.EINVAL,
            ),
        ]
        for request, errno in cases:
            client.send(request)
            reply = client.recv()
            assert isinstance(reply, ReplyChunk) and reply.done, reply
            payload = decode_chunk_payload(reply.type, reply.payload)
            assert isinstance(payload, ChunkError) and payload.error == errno, (request, payload)
            assert payload.message  # a human-readable reason
        data = bytes(range(256)) * 2
        client.send(Request(type=c.Cmd.WRITE, offset=512, length=512, cookie=6, payload=data))
        assert client.recv() == SimpleReply(6)
        client.send(Request(type=c.Cmd.READ, offset=512, length=512, cookie=7))
        chunk = client.recv()
        assert decode_chunk_payload(chunk.type, chunk.payload).data == data


def test_simple_replies_carry_errors_without_structured_replies(server):
    with connect(server) as client:
        go(client, "ro", structured=False)
        client.send(
            Request(type=c.Cmd.WRITE, offset=0, length=512, cookie=1, payload=b"\x00" * 512)
        )
        assert client.recv() == SimpleReply(1, c.Errno.EPERM)
        client.send(Request(type=c.Cmd.READ, offset=0, length=512, cookie=2))
        assert client.recv() == SimpleReply(2, 0, bytes(512))


def test_unknown_client_flags_close_the_connection(server):
    client = RawClient("127.0.0.1", server.address.port)
    with client:
        client.recv()
        client.send(ClientFlags(0x80))
        assert client.closed_by_peer()


def test_export_name_for_unknown_export_closes(server):
    with connect(server) as client:
        client.send(OptionRequest(c.Opt.EXPORT_NAME, b"missing"))
        assert client.closed_by_peer()


def test_garbage_instead_of_an_option_closes_without_harm(server):
    with connect(server) as client:
        client.send_raw(b"NOTMAGIC" + bytes(8))
        assert client.closed_by_peer()
    with connect(server) as client:  # the server still serves others
        go(client)


def test_oversized_requests_are_refused_without_buffering(server):
    with connect(server) as client:
        go(client)
        client.send(Request(type=c.Cmd.READ, offset=0, length=(1 << 25) + 512, cookie=1))
        reply = client.recv()
        payload = decode_chunk_payload(reply.type, reply.payload)
        assert isinstance(payload, ChunkError) and payload.error in (
            c.Errno.EOVERFLOW,
            c.Errno.EINVAL,
        )
    with connect(server) as client:
        go(client)
        # A 3 GiB write header with no intent to send the data: hard disconnect.
        client.send_raw(struct.pack(">IHHQQI", c.REQUEST_MAGIC, 0, c.Cmd.WRITE, 2, 0, 3 << 30))
        assert client.closed_by_peer()


def test_allocation_depth_can_be_withheld_per_export(tmp_path):
    from harness.protocol.codec import decode_reply_payload

    config = config_from_dict(
        {"export": [{"name": "plain", "size": "1M", "allocation_depth": False, "bitmaps": ["b0"]}]},
        base_dir=tmp_path,
    )
    with ServerThread(config) as thread, connect(thread) as client:
        ask(client, option(c.Opt.STRUCTURED_REPLY, EmptyPayload()))
        replies = ask(client, option(c.Opt.LIST_META_CONTEXT, MetaContextPayload("plain", ())))
        names = [decode_reply_payload(r.reply_type, r.data).name for r in replies[:-1]]
        assert names == ["base:allocation", "qemu:dirty-bitmap:b0"]
        replies = ask(
            client,
            option(c.Opt.SET_META_CONTEXT, MetaContextPayload("plain", ("qemu:allocation-depth",))),
        )
        assert [r.reply_type for r in replies] == [c.Rep.ACK]  # nothing selected


def test_abort_with_data_is_acknowledged(server):
    """ "a server SHOULD ignore any data sent by the client rather than rejecting the request"."""
    with connect(server) as client:
        replies = ask(client, OptionRequest(c.Opt.ABORT, b"bye"))
        assert [(r.option, r.reply_type) for r in replies] == [(c.Opt.ABORT, c.Rep.ACK)]
        assert client.closed_by_peer()


@pytest.mark.parametrize(("profile_name", "accepted"), [("reference", False), ("qemu-11.1", True)])
def test_extended_write_without_payload_len_flag(tmp_path, profile_name, accepted):
    """qemu's client omits NBD_CMD_FLAG_PAYLOAD_LEN on extended writes (a MUST): the strict
    server refuses with EINVAL, a qemu profile performs it like qemu-nbd; both stay in sync."""
    from reference_server.profiles import profile

    config = config_from_dict({"export": [{"name": "disk", "size": "1M"}]}, base_dir=tmp_path)
    with ServerThread(config, profile(profile_name)) as thread, connect(thread) as client:
        assert ask(client, option(c.Opt.EXTENDED_HEADERS, EmptyPayload()))[-1].reply_type == (
            c.Rep.ACK
        )
        assert ask(client, option(c.Opt.GO, InfoRequestPayload("disk")))[-1].reply_type == (
            c.Rep.ACK
        )
        data = bytes(range(256)) * 16
        client.send(
            Request(
                type=c.Cmd.WRITE,
                offset=4096,
                length=len(data),
                cookie=1,
                payload=data,
                extended=True,
            )
        )
        reply = client.recv()
        payload = decode_chunk_payload(reply.type, reply.payload)
        if accepted:
            assert reply.done and reply.type == c.ReplyType.NONE
        else:
            assert isinstance(payload, ChunkError) and payload.error == c.Errno.EINVAL
        client.send(
            Request(type=c.Cmd.READ, offset=4096, length=len(data), cookie=2, extended=True)
        )
        chunk = client.recv()
        got = decode_chunk_payload(chunk.type, chunk.payload)
        if accepted:
            assert got.data == data
        else:
            assert got.length == len(data)  # still a hole: nothing was written
