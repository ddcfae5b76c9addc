"""The reference client against the in-process reference server.

The reference server speaks everything the spec has (extended headers,
block-status payloads, INIT_STATE) and can switch parts off, so the client's
fallbacks are exercised here one by one: every path ends in data written and
read back, or in the exact error the client must give.
"""

from __future__ import annotations

import asyncio
import threading

import pytest
from _fixtures_client import KiB, MiB, arun, pattern, ref_uri, reference_server

from harness.client import (
    Client,
    ConnectOptions,
    NbdClient,
    NbdClientError,
    NbdConnectionError,
    NegotiationError,
    TlsError,
)
from harness.protocol import LocalProtocolError, Phase
from harness.protocol import constants as c
from harness.protocol.codec import option
from harness.protocol.messages import (
    ConnectionClosed,
    EmptyPayload,
    Extent,
    OptionReply,
    Request,
    SimpleReply,
)
from reference_server.features import ALL_OPTIONS, FULL

TF = c.TransmissionFlag
ALL_CONTEXTS = ("base:allocation", "qemu:allocation-depth", "qemu:dirty-bitmap:b0")


def without(*opts: int):
    return FULL.without(options=ALL_OPTIONS - set(opts))


# --- the full feature set ---------------------------------------------------------------


def test_extended_headers_session_reads_writes_and_maps(tmp_path):
    exports = [{"name": "disk", "size": "4M", "bitmaps": ["b0"], "description": "scratch"}]
    with reference_server(tmp_path, exports) as server:

        async def session():
            options = ConnectOptions(meta_contexts=ALL_CONTEXTS)
            async with await NbdClient.connect(ref_uri(server), options=options) as client:
                neg = client.negotiation
                assert neg.extended_headers and not neg.fallbacks
                assert neg.selected_with == "NBD_OPT_GO"
                assert neg.export_size == 4 * MiB and neg.description == "scratch"
                assert neg.canonical_name == "disk"
                assert sorted(neg.meta_contexts.values()) == sorted(ALL_CONTEXTS)
                assert [o.option for o in neg.options] == [
                    c.Opt.EXTENDED_HEADERS,
                    c.Opt.SET_META_CONTEXT,
                    c.Opt.GO,
                ]
                assert neg.block_size is not None and c.Info.BLOCK_SIZE in neg.infos
                data = pattern(64 * KiB, 192 * KiB, seed=7)
                await client.write(64 * KiB, data, fua=True)
                assert await client.read(64 * KiB, 192 * KiB) == data
                assert await client.read(0, 64 * KiB) == bytes(64 * KiB)
                assert await client.map("base:allocation") == [
                    (0, 64 * KiB, 3),
                    (64 * KiB, 192 * KiB, 0),
                    (256 * KiB, 4 * MiB - 256 * KiB, 3),
                ]
                # The extended-headers payload form asks for one context only.
                bitmap_id = client.contexts["qemu:dirty-bitmap:b0"]
                status = await client.block_status(0, 1 * MiB, context_ids=[bitmap_id])
                assert list(status) == ["qemu:dirty-bitmap:b0"]
                assert await client.map("qemu:dirty-bitmap:b0") == [
                    (0, 64 * KiB, 0),
                    (64 * KiB, 192 * KiB, 1),
                    (256 * KiB, 4 * MiB - 256 * KiB, 0),
                ]
                one = await client.block_status(64 * KiB, 1 * MiB, req_one=True)
                assert one["base:allocation"] == [Extent(192 * KiB, 0)]
                await client.flush()
                await client.cache(0, 1 * MiB)

        arun(session())
        record = server.wait_for_records(1)[-1].summary()
        assert record["extended_headers"] and record["end"] == "client sent NBD_CMD_DISC"
        assert record["client_violations"] == []


def test_zero_and_trim_read_back_as_zeroes(tmp_path):
    with reference_server(tmp_path) as server:

        async def session():
            async with await NbdClient.connect(ref_uri(server)) as client:
                await client.write(0, pattern(0, 256 * KiB))
                await client.write_zeroes(16 * KiB, 16 * KiB)
                await client.write_zeroes(48 * KiB, 16 * KiB, no_hole=True, fua=True)
                await client.write_zeroes(96 * KiB, 32 * KiB, fast_zero=True)
                await client.trim(160 * KiB, 32 * KiB, fua=True)
                got = await client.read(0, 256 * KiB)
                expected = bytearray(pattern(0, 256 * KiB))
                for start, size in ((16, 16), (48, 16), (96, 32), (160, 32)):
                    expected[start * KiB : (start + size) * KiB] = bytes(size * KiB)
                assert got == bytes(expected)

        arun(session())


def test_large_reads_and_writes_are_split_at_the_maximum_payload(tmp_path):
    exports = [{"name": "disk", "size": "2M", "max_payload_size": "64k"}]
    with reference_server(tmp_path, exports) as server:

        async def session():
            async with await NbdClient.connect(ref_uri(server)) as client:
                assert client.max_piece == 64 * KiB
                data = pattern(4096, 1 * MiB + 512, seed=3)
                await client.write(4096, data)
                assert await client.read(4096, len(data)) == data

        arun(session())
        commands = server.wait_for_records(1)[-1].summary()["commands"]
        assert commands["NBD_CMD_WRITE"] == 17 and commands["NBD_CMD_READ"] == 17


def test_pipelined_commands_complete_independently(tmp_path):
    with reference_server(tmp_path) as server:

        async def session():
            async with await NbdClient.connect(ref_uri(server)) as client:
                blocks = [(i * 8 * KiB, pattern(i * 8 * KiB, 8 * KiB, seed=i)) for i in range(32)]
                await asyncio.gather(*(client.write(off, data) for off, data in blocks))
                reads = await asyncio.gather(*(client.read(off, len(d)) for off, d in blocks))
                assert reads == [data for _, data in blocks]

        arun(session())


def test_minimum_block_size_is_enforced_locally(tmp_path):
    exports = [{"name": "disk", "size": "1M", "min_block_size": 512}]
    with reference_server(tmp_path, exports) as server:

        async def session():
            async with await NbdClient.connect(ref_uri(server)) as client:
                assert client.negotiation.block_size.minimum == 512
                with pytest.raises(LocalProtocolError) as info:
                    await client.read(100, 512)
                assert info.value.rule == "client.request-alignment"
                await client.write(512, pattern(512, 1024))
                assert await client.read(512, 1024) == pattern(512, 1024)

        arun(session())
        assert server.wait_for_records(1)[-1].summary()["client_violations"] == []


def test_reading_past_the_end_is_refused_before_sending(tmp_path):
    with reference_server(tmp_path) as server:

        async def session():
            async with await NbdClient.connect(ref_uri(server)) as client:
                with pytest.raises(LocalProtocolError) as info:
                    await client.read(4 * MiB - 512, 1024)
                assert info.value.rule == "client.request-within-export"
                assert await client.read(4 * MiB - 512, 512) == bytes(512)

        arun(session())


# --- fallbacks ---------------------------------------------------------------------------


def test_extended_headers_refused_falls_back_to_structured_replies(tmp_path):
    features = FULL.without(options=ALL_OPTIONS - {c.Opt.EXTENDED_HEADERS})
    with reference_server(tmp_path, features=features) as server:

        async def session():
            async with await NbdClient.connect(ref_uri(server)) as client:
                neg = client.negotiation
                assert not neg.extended_headers and neg.structured_replies
                assert neg.fallback_kinds() == ["extended-headers"]
                assert neg.options[0].replies == (c.Rep.ERR_UNSUP,)
                assert neg.meta_contexts == {1: "base:allocation"}
                await client.write(0, pattern(0, 8 * KiB))
                assert await client.read(0, 8 * KiB) == pattern(0, 8 * KiB)
                assert await client.map() == [(0, 8 * KiB, 0), (8 * KiB, 4 * MiB - 8 * KiB, 3)]
                # The payload form of block status exists only with extended headers.
                with pytest.raises(LocalProtocolError) as info:
                    await client.block_status(0, 4096, context_ids=[1])
                assert info.value.rule == "client.compact-no-payload-len"

        arun(session())


def test_no_structured_replies_means_simple_replies_and_no_contexts(tmp_path):
    features = FULL.without(options=ALL_OPTIONS - {c.Opt.EXTENDED_HEADERS, c.Opt.STRUCTURED_REPLY})
    with reference_server(tmp_path, features=features) as server:

        async def session():
            async with await NbdClient.connect(ref_uri(server)) as client:
                neg = client.negotiation
                assert not (neg.extended_headers or neg.structured_replies)
                assert neg.fallback_kinds() == [
                    "extended-headers",
                    "structured-replies",
                    "meta-contexts",
                ]
                assert not neg.meta_contexts
                assert c.Opt.SET_META_CONTEXT not in [o.option for o in neg.options]
                await client.write(0, pattern(0, 4 * KiB))
                assert await client.read(0, 4 * KiB) == pattern(0, 4 * KiB)
                with pytest.raises(LocalProtocolError) as info:
                    await client.block_status(0, 4096)
                assert info.value.rule == "client.block-status-needs-contexts"
                with pytest.raises(NbdClientError, match="not negotiated"):
                    await client.map()

        arun(session())


def test_caller_can_turn_off_extended_and_structured(tmp_path):
    with reference_server(tmp_path) as server:
        options = ConnectOptions(extended_headers=False, structured_replies=False)
        with Client.connect(ref_uri(server), options=options) as client:
            neg = client.negotiation
            assert [o.option for o in neg.options] == [c.Opt.GO]
            assert not (neg.structured_replies or neg.extended_headers or neg.meta_contexts)
            assert neg.fallback_kinds() == ["meta-contexts"]
            client.write(0, b"x" * 512)
            assert client.read(0, 512) == b"x" * 512


def test_go_unsupported_falls_back_to_export_name(tmp_path):
    features = FULL.without(options=ALL_OPTIONS - {c.Opt.GO, c.Opt.INFO, c.Opt.EXTENDED_HEADERS})
    with reference_server(tmp_path, features=features) as server:

        async def session():
            async with await NbdClient.connect(ref_uri(server)) as client:
                neg = client.negotiation
                assert neg.selected_with == "NBD_OPT_EXPORT_NAME"
                assert "go" in neg.fallback_kinds()
                assert neg.export_size == 4 * MiB and neg.block_size is None
                assert neg.meta_contexts == {1: "base:allocation"}  # still valid for the export
                await client.write(0, pattern(0, 4 * KiB))
                assert await client.read(0, 4 * KiB) == pattern(0, 4 * KiB)

        arun(session())


def test_set_meta_context_failure_means_no_contexts(tmp_path):
    features = FULL.without(options=ALL_OPTIONS - {c.Opt.SET_META_CONTEXT})
    with (
        reference_server(tmp_path, features=features) as server,
        Client.connect(ref_uri(server)) as client,
    ):
        assert client.negotiation.meta_contexts == {}
        assert client.negotiation.fallback_kinds() == ["meta-contexts"]
        assert client.read(0, 512) == bytes(512)


def test_unknown_context_is_recorded_as_not_selected(tmp_path):
    with reference_server(tmp_path) as server:
        options = ConnectOptions(meta_contexts=("base:allocation", "x-nope:thing"))
        with Client.connect(ref_uri(server), options=options) as client:
            assert list(client.contexts) == ["base:allocation"]
            assert client.negotiation.fallbacks[-1].what == "the server did not select x-nope:thing"


def test_block_size_required_is_asked_again(tmp_path):
    exports = [{"name": "disk", "size": "1M", "min_block_size": 4096, "block_size_required": True}]
    with reference_server(tmp_path, exports) as server:
        options = ConnectOptions(request_block_size=False)
        with Client.connect(ref_uri(server), options=options) as client:
            neg = client.negotiation
            assert neg.fallback_kinds() == ["block-size"]
            assert [o.final for o in neg.options if o.option == c.Opt.GO] == [
                c.Rep.ERR_BLOCK_SIZE_REQD,
                c.Rep.ACK,
            ]
            assert neg.block_size.minimum == 4096
            client.write(4096, pattern(4096, 8192))
            assert client.read(4096, 8192) == pattern(4096, 8192)


def test_nonfixed_newstyle_server_gets_export_name_only(tmp_path):
    with (
        reference_server(tmp_path, handshake="newstyle") as server,
        Client.connect(ref_uri(server)) as client,
    ):
        neg = client.negotiation
        assert neg.style == "newstyle"
        assert not neg.client_flags & c.ClientFlag.C_FIXED_NEWSTYLE
        assert [o.option for o in neg.options] == [c.Opt.EXPORT_NAME]
        assert neg.fallback_kinds() == ["options", "meta-contexts"]
        client.write(0, b"n" * 1024)
        assert client.read(0, 1024) == b"n" * 1024


def test_client_can_play_a_nonfixed_newstyle_client(tmp_path):
    with reference_server(tmp_path) as server:
        options = ConnectOptions(fixed_newstyle=False, no_zeroes=False)
        with Client.connect(ref_uri(server), options=options) as client:
            assert client.negotiation.client_flags == 0
            assert client.negotiation.selected_with == "NBD_OPT_EXPORT_NAME"
            assert client.read(0, 512) == bytes(512)


def test_oldstyle_server(tmp_path):
    with (
        reference_server(tmp_path, handshake="oldstyle") as server,
        Client.connect(ref_uri(server, export="")) as client,
    ):
        neg = client.negotiation
        assert neg.style == "oldstyle" and neg.selected_with == "oldstyle greeting"
        assert neg.export_size == 4 * MiB and neg.options == []
        client.write(512, b"o" * 512)
        assert client.read(512, 512) == b"o" * 512


# --- the option phase ------------------------------------------------------------------------


def test_list_info_and_meta_contexts_before_go(tmp_path):
    exports = [
        {"name": "disk", "size": "4M", "description": "scratch", "bitmaps": ["b0", "b1"]},
        {"name": "ro", "size": "1M", "read_only": True, "init_state": True},
    ]
    with reference_server(tmp_path, exports) as server:
        options = ConnectOptions(enter_transmission=False)
        with Client.connect(ref_uri(server), options=options) as client:
            assert client.phase is Phase.OPTIONS
            listing = client.list_exports()
            assert [(e.name, e.description) for e in listing] == [("disk", "scratch"), ("ro", "")]
            info = client.info("ro", [c.Info.NAME, c.Info.INIT_STATE])
            assert info.size == 1 * MiB and info.transmission_flags & TF.READ_ONLY
            assert info.canonical_name == "ro" and info.init_state is not None
            assert c.Info.INIT_STATE in info.infos
            assert client.list_meta_contexts("disk", ["qemu:dirty-bitmap:"]) == [
                "qemu:dirty-bitmap:b0",
                "qemu:dirty-bitmap:b1",
            ]
            every = client.list_meta_contexts("disk")
            assert "base:allocation" in every and "qemu:allocation-depth" in every
            with pytest.raises(NegotiationError) as refused:
                client.info("nope")
            assert refused.value.reply_type == c.Rep.ERR_UNKNOWN
            client.enter_transmission()
            assert client.phase is Phase.TRANSMISSION
            client.write(0, b"d" * 4096)
            assert client.read(0, 4096) == b"d" * 4096
        assert [o.option for o in client.negotiation.options][-1] == c.Opt.GO


def test_unknown_export_is_a_clear_error(tmp_path):
    with reference_server(tmp_path) as server:
        with pytest.raises(NegotiationError) as info:
            Client.connect(ref_uri(server, export="nope"))
        assert "no export named 'nope'" in str(info.value)
        assert info.value.reply_type == c.Rep.ERR_UNKNOWN
        # The client ended the handshake politely with NBD_OPT_ABORT.
        records = server.wait_for_records(1)
        assert records[-1].options[-1] == "NBD_OPT_ABORT -> NBD_REP_ACK"


def test_init_state_is_recorded_when_asked(tmp_path):
    exports = [{"name": "disk", "size": "1M", "init_state": True}]
    with reference_server(tmp_path, exports) as server:
        options = ConnectOptions(info_requests=(c.Info.INIT_STATE,))
        with Client.connect(ref_uri(server), options=options) as client:
            assert client.negotiation.init_state is not None
            assert client.negotiation.init_state & c.InitFlag.ZERO


# --- below the happy path -----------------------------------------------------------------


def test_raw_requests_see_the_servers_error_reply(tmp_path):
    exports = [{"name": "ro", "size": "1M", "read_only": True}]
    with reference_server(tmp_path, exports) as server:

        async def session():
            client = await NbdClient.connect(ref_uri(server, export="ro"))
            try:
                with pytest.raises(LocalProtocolError):
                    await client.write(0, b"x" * 512)  # refused before sending
                bad = Request(
                    type=c.Cmd.WRITE,
                    offset=0,
                    length=512,
                    cookie=0xABC,
                    flags=c.CmdFlag.PAYLOAD_LEN,
                    payload=b"x" * 512,
                    extended=True,
                )
                await client.send_request(bad, strict=False)
                reply = await client.recv_event()
                # Extended headers: the error comes as an error chunk.
                assert reply.cookie == 0xABC and reply.done
                assert c.is_error_chunk(reply.type)
                assert await client.read(0, 512) == bytes(512)  # still in sync
            finally:
                await client.disconnect()

        arun(session())


def test_simple_error_reply_raises_nbd_command_error(tmp_path):
    exports = [{"name": "ro", "size": "1M", "read_only": True}]
    features = FULL.without(options=ALL_OPTIONS - {c.Opt.EXTENDED_HEADERS, c.Opt.STRUCTURED_REPLY})
    with reference_server(tmp_path, exports, features=features) as server:

        async def session():
            client = await NbdClient.connect(ref_uri(server, export="ro"))
            try:
                bad = Request(type=c.Cmd.TRIM, offset=0, length=512, cookie=77)
                await client.send_request(bad, strict=False)
                reply = await client.recv_event()
                assert reply == SimpleReply(77, c.Errno.EPERM)
            finally:
                await client.disconnect()

        arun(session())


def test_raw_option_and_garbage(tmp_path):
    with reference_server(tmp_path) as server:

        async def session():
            client = await NbdClient.connect(
                ref_uri(server), options=ConnectOptions(enter_transmission=False)
            )
            try:
                await client.send_option(option(c.Opt.STRUCTURED_REPLY, EmptyPayload()))
                reply = await client.recv_event()
                assert reply == OptionReply(
                    c.Opt.STRUCTURED_REPLY, c.Rep.ERR_EXT_HEADER_REQD, reply.data
                )
                await client.enter_transmission()
                await client.send_raw(b"\xde\xad\xbe\xef" * 8)  # not a request magic
                assert isinstance(await client.recv_event(timeout=10), ConnectionClosed)
                with pytest.raises(NbdConnectionError):
                    await client.read(0, 512)
            finally:
                await client.close()

        arun(session())


# --- TLS ------------------------------------------------------------------------------------


def test_tls_required_server_with_nbds(tmp_path, pki):
    server_options = {"tls": "required", "tls_certificates": str(pki.directory)}
    with reference_server(tmp_path, **server_options) as server:
        query = f"tls-certificates={pki.directory}"
        with Client.connect(ref_uri(server, scheme="nbds", query=query)) as client:
            neg = client.negotiation
            assert neg.tls and neg.options[0].option == c.Opt.STARTTLS
            assert client.tls_version in ("TLSv1.2", "TLSv1.3")
            assert neg.extended_headers  # negotiated again after STARTTLS
            client.write(0, pattern(0, 64 * KiB))
            assert client.read(0, 64 * KiB) == pattern(0, 64 * KiB)
        with pytest.raises(TlsError) as info:
            Client.connect(ref_uri(server))
        assert info.value.reply_type == c.Rep.ERR_TLS_REQD
        assert "nbds://" in str(info.value)


def test_nbds_refuses_a_server_without_tls(tmp_path, pki):
    with reference_server(tmp_path) as server:
        with pytest.raises(TlsError) as info:
            Client.connect(
                ref_uri(server, scheme="nbds", query=f"tls-certificates={pki.directory}")
            )
        assert "refusing to continue in the clear" in str(info.value)
        assert info.value.reply_type == c.Rep.ERR_POLICY
        # Opportunistic TLS goes on in the clear instead.
        options = ConnectOptions(tls="on")
        with Client.connect(ref_uri(server), options=options) as client:
            assert not client.negotiation.tls
            assert client.negotiation.fallback_kinds() == ["starttls"]
            assert client.read(0, 512) == bytes(512)


def test_tls_only_export_on_a_selective_server(tmp_path, pki):
    exports = [{"name": "open", "size": "1M"}, {"name": "secret", "size": "1M", "tls": "required"}]
    server_options = {"tls": "optional", "tls_certificates": str(pki.directory)}
    with reference_server(tmp_path, exports, **server_options) as server:
        with Client.connect(ref_uri(server, export="open")) as client:
            assert not client.negotiation.tls
        with pytest.raises(TlsError) as info:
            Client.connect(ref_uri(server, export="secret"))
        assert info.value.option == c.Opt.GO
        query = f"tls-certificates={pki.directory}"
        with Client.connect(ref_uri(server, "secret", "nbds", query)) as client:
            assert client.negotiation.tls
            client.write(0, b"s" * 4096)
            assert client.read(0, 4096) == b"s" * 4096


# --- the sync facade ---------------------------------------------------------------------------


def test_sync_client_leaves_no_thread_behind(tmp_path):
    before = set(threading.enumerate())
    with reference_server(tmp_path) as server:
        client = Client.connect(ref_uri(server))
        with client:
            client.write(0, b"t" * 512)
            assert client.read(0, 512) == b"t" * 512
        with pytest.raises(NbdConnectionError):
            client.read(0, 512)
        with pytest.raises(NegotiationError):
            Client.connect(ref_uri(server, export="missing"))
    leftover = [t for t in threading.enumerate() if t not in before and t.is_alive()]
    assert leftover == []


def test_connection_refused_is_a_clear_error(tmp_path):
    with reference_server(tmp_path) as server:
        port = server.address.port
    with pytest.raises(NbdConnectionError, match="cannot connect"):
        Client.connect(f"nbd://127.0.0.1:{port}/disk")
