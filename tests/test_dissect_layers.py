"""The scapy layers: every message builds, serialises and parses back identically."""

from __future__ import annotations

import struct

import pytest
from scapy.packet import Packet, Raw

from harness.dissect import describe_status, fields_of
from harness.dissect import layers as L
from harness.protocol import constants as c

# Each case: a built packet and the wire bytes the spec says it must produce.
CASES: list[tuple[str, Packet, bytes]] = [
    (
        "oldstyle greeting",
        L.NBDOldstyleGreeting(size=1 << 20, transmission_flags=0x4ED),
        struct.pack(">QQQI", c.NBDMAGIC, c.CLISERV_MAGIC, 1 << 20, 0x4ED) + b"\0" * 124,
    ),
    (
        "newstyle greeting",
        L.NBDNewstyleGreeting(handshake_flags=c.HandshakeFlag.FIXED_NEWSTYLE),
        struct.pack(">QQH", c.NBDMAGIC, c.IHAVEOPT, 1),
    ),
    ("client flags", L.NBDClientFlags(client_flags=3), struct.pack(">I", 3)),
    (
        "NBD_OPT_EXPORT_NAME",
        L.NBDOption(option=c.Opt.EXPORT_NAME) / L.NBDOptExportName(export_name=b"disk"),
        struct.pack(">QII", c.IHAVEOPT, 1, 4) + b"disk",
    ),
    (
        "NBD_OPT_GO",
        L.NBDOption(option=c.Opt.GO)
        / L.NBDOptInfoGo(export_name=b"ab", info_requests=[c.Info.NAME, c.Info.BLOCK_SIZE]),
        struct.pack(">QII", c.IHAVEOPT, 7, 12)
        + struct.pack(">I", 2)
        + b"ab"
        + struct.pack(">HHH", 2, 1, 3),
    ),
    (
        "NBD_OPT_INFO, no requests",
        L.NBDOption(option=c.Opt.INFO) / L.NBDOptInfoGo(export_name=b""),
        struct.pack(">QIIIH", c.IHAVEOPT, 6, 6, 0, 0),
    ),
    (
        "NBD_OPT_SET_META_CONTEXT",
        L.NBDOption(option=c.Opt.SET_META_CONTEXT)
        / L.NBDOptMetaContext(
            export_name=b"e",
            queries=[
                L.NBDMetaContextQuery(query=b"base:allocation"),
                L.NBDMetaContextQuery(query=b"qemu:"),
            ],
        ),
        struct.pack(">QII", c.IHAVEOPT, 10, 4 + 1 + 4 + 4 + 15 + 4 + 5)
        + struct.pack(">I", 1)
        + b"e"
        + struct.pack(">I", 2)
        + struct.pack(">I", 15)
        + b"base:allocation"
        + struct.pack(">I", 5)
        + b"qemu:",
    ),
    (
        "NBD_OPT_LIST_META_CONTEXT, no queries",
        L.NBDOption(option=c.Opt.LIST_META_CONTEXT) / L.NBDOptMetaContext(export_name=b""),
        struct.pack(">QIIII", c.IHAVEOPT, 9, 8, 0, 0),
    ),
    *[
        (
            c.spec_name(option),
            L.NBDOption(option=option),
            struct.pack(">QII", c.IHAVEOPT, option, 0),
        )
        for option in (
            c.Opt.ABORT,
            c.Opt.LIST,
            c.Opt.STARTTLS,
            c.Opt.STRUCTURED_REPLY,
            c.Opt.EXTENDED_HEADERS,
        )
    ],
    (
        "unknown option with data",
        L.NBDOption(option=99) / Raw(b"xyz"),
        struct.pack(">QII", c.IHAVEOPT, 99, 3) + b"xyz",
    ),
    (
        "NBD_REP_ACK",
        L.NBDOptionReply(option=c.Opt.GO, reply_type=c.Rep.ACK),
        struct.pack(">QIII", c.OPTION_REPLY_MAGIC, 7, 1, 0),
    ),
    (
        "NBD_REP_SERVER",
        L.NBDOptionReply(option=c.Opt.LIST, reply_type=c.Rep.SERVER)
        / L.NBDRepServer(export_name=b"a", details=b"desc"),
        struct.pack(">QIII", c.OPTION_REPLY_MAGIC, 3, 2, 9) + struct.pack(">I", 1) + b"adesc",
    ),
    (
        "NBD_INFO_EXPORT",
        L.NBDOptionReply(option=c.Opt.GO, reply_type=c.Rep.INFO)
        / L.NBDRepInfo(info_type=c.Info.EXPORT)
        / L.NBDInfoExport(size=12345, transmission_flags=0x4ED),
        struct.pack(">QIIIHQH", c.OPTION_REPLY_MAGIC, 7, 3, 12, 0, 12345, 0x4ED),
    ),
    (
        "NBD_INFO_NAME",
        L.NBDOptionReply(option=c.Opt.INFO, reply_type=c.Rep.INFO)
        / L.NBDRepInfo(info_type=c.Info.NAME)
        / L.NBDInfoName(export_name=b"canon"),
        struct.pack(">QIIIH", c.OPTION_REPLY_MAGIC, 6, 3, 7, 1) + b"canon",
    ),
    (
        "NBD_INFO_DESCRIPTION",
        L.NBDOptionReply(option=c.Opt.INFO, reply_type=c.Rep.INFO)
        / L.NBDRepInfo(info_type=c.Info.DESCRIPTION)
        / L.NBDInfoDescription(description=b"d"),
        struct.pack(">QIIIH", c.OPTION_REPLY_MAGIC, 6, 3, 3, 2) + b"d",
    ),
    (
        "NBD_INFO_BLOCK_SIZE",
        L.NBDOptionReply(option=c.Opt.GO, reply_type=c.Rep.INFO)
        / L.NBDRepInfo(info_type=c.Info.BLOCK_SIZE)
        / L.NBDInfoBlockSize(
            minimum_block_size=512, preferred_block_size=4096, maximum_payload_size=1 << 25
        ),
        struct.pack(">QIIIHIII", c.OPTION_REPLY_MAGIC, 7, 3, 14, 3, 512, 4096, 1 << 25),
    ),
    (
        "NBD_INFO_INIT_STATE",
        L.NBDOptionReply(option=c.Opt.GO, reply_type=c.Rep.INFO)
        / L.NBDRepInfo(info_type=c.Info.INIT_STATE)
        / L.NBDInfoInitState(init_flags=3),
        struct.pack(">QIIIHH", c.OPTION_REPLY_MAGIC, 7, 3, 4, 4, 3),
    ),
    (
        "unknown NBD_INFO",
        L.NBDOptionReply(option=c.Opt.GO, reply_type=c.Rep.INFO)
        / L.NBDRepInfo(info_type=77)
        / Raw(b"??"),
        struct.pack(">QIIIH", c.OPTION_REPLY_MAGIC, 7, 3, 4, 77) + b"??",
    ),
    (
        "NBD_REP_META_CONTEXT",
        L.NBDOptionReply(option=c.Opt.SET_META_CONTEXT, reply_type=c.Rep.META_CONTEXT)
        / L.NBDRepMetaContext(context_id=9, context_name=b"base:allocation"),
        struct.pack(">QIIII", c.OPTION_REPLY_MAGIC, 10, 4, 19, 9) + b"base:allocation",
    ),
    (
        "NBD_REP_ERR_UNSUP with message",
        L.NBDOptionReply(option=c.Opt.STARTTLS, reply_type=c.Rep.ERR_UNSUP)
        / L.NBDRepError(message=b"no tls"),
        struct.pack(">QIII", c.OPTION_REPLY_MAGIC, 5, c.Rep.ERR_UNSUP, 6) + b"no tls",
    ),
    (
        "export name reply",
        L.NBDExportNameReply(size=4096, transmission_flags=1),
        struct.pack(">QH", 4096, 1) + b"\0" * 124,
    ),
    (
        "export name reply, NO_ZEROES",
        L.NBDExportNameReply(size=4096, transmission_flags=1, zeroes=b""),
        struct.pack(">QH", 4096, 1),
    ),
    (
        "NBD_CMD_READ",
        L.NBDRequest(type=c.Cmd.READ, flags=c.CmdFlag.DF, cookie=7, offset=512, length=4096),
        struct.pack(">IHHQQI", c.REQUEST_MAGIC, 4, 0, 7, 512, 4096),
    ),
    (
        "NBD_CMD_WRITE",
        L.NBDRequest(type=c.Cmd.WRITE, flags=c.CmdFlag.FUA, cookie=8, offset=0, data=b"hello"),
        struct.pack(">IHHQQI", c.REQUEST_MAGIC, 1, 1, 8, 0, 5) + b"hello",
    ),
    (
        "extended NBD_CMD_WRITE",
        L.NBDExtendedRequest(
            type=c.Cmd.WRITE, flags=c.CmdFlag.PAYLOAD_LEN, cookie=1, offset=1 << 40, data=b"abcd"
        ),
        struct.pack(">IHHQQQ", c.EXTENDED_REQUEST_MAGIC, 32, 1, 1, 1 << 40, 4) + b"abcd",
    ),
    (
        "extended NBD_CMD_WRITE without PAYLOAD_LEN, data behind (qemu's client)",
        L.NBDExtendedWriteUnflagged(type=c.Cmd.WRITE, cookie=4, offset=512, data=b"qemu"),
        struct.pack(">IHHQQQ", c.EXTENDED_REQUEST_MAGIC, 0, 1, 4, 512, 4) + b"qemu",
    ),
    (
        "extended NBD_CMD_BLOCK_STATUS, payload of an odd length",
        L.NBDExtendedRequest(
            type=c.Cmd.BLOCK_STATUS,
            flags=c.CmdFlag.PAYLOAD_LEN,
            cookie=5,
            length=10,
            data=b"\0" * 10,
        ),
        struct.pack(">IHHQQQ", c.EXTENDED_REQUEST_MAGIC, 32, 7, 5, 0, 10) + b"\0" * 10,
    ),
    (
        "extended NBD_CMD_READ, 64-bit length",
        L.NBDExtendedRequest(type=c.Cmd.READ, cookie=2, offset=0, length=1 << 33),
        struct.pack(">IHHQQQ", c.EXTENDED_REQUEST_MAGIC, 0, 0, 2, 0, 1 << 33),
    ),
    (
        "extended NBD_CMD_BLOCK_STATUS with payload",
        L.NBDExtendedRequest(
            type=c.Cmd.BLOCK_STATUS,
            flags=c.CmdFlag.PAYLOAD_LEN,
            cookie=3,
            effect_length=1 << 35,
            context_ids=[1, 3],
        ),
        struct.pack(">IHHQQQ", c.EXTENDED_REQUEST_MAGIC, 32, 7, 3, 0, 16)
        + struct.pack(">QII", 1 << 35, 1, 3),
    ),
    (
        "simple reply with READ data",
        L.NBDSimpleReply(error=0, cookie=7, data=b"data"),
        struct.pack(">IIQ", c.SIMPLE_REPLY_MAGIC, 0, 7) + b"data",
    ),
    (
        "simple reply with error",
        L.NBDSimpleReply(error=c.Errno.EIO, cookie=7),
        struct.pack(">IIQ", c.SIMPLE_REPLY_MAGIC, 5, 7),
    ),
    (
        "NBD_REPLY_TYPE_NONE",
        L.NBDStructuredReply(flags=c.ReplyFlag.DONE, type=c.ReplyType.NONE, cookie=1),
        struct.pack(">IHHQI", c.STRUCTURED_REPLY_MAGIC, 1, 0, 1, 0),
    ),
    (
        "NBD_REPLY_TYPE_OFFSET_DATA",
        L.NBDStructuredReply(type=c.ReplyType.OFFSET_DATA, cookie=1)
        / L.NBDChunkOffsetData(data_offset=4096, data=b"xyz"),
        struct.pack(">IHHQIQ", c.STRUCTURED_REPLY_MAGIC, 0, 1, 1, 11, 4096) + b"xyz",
    ),
    (
        "NBD_REPLY_TYPE_OFFSET_HOLE",
        L.NBDStructuredReply(type=c.ReplyType.OFFSET_HOLE, cookie=1)
        / L.NBDChunkOffsetHole(hole_offset=0, hole_size=512),
        struct.pack(">IHHQIQI", c.STRUCTURED_REPLY_MAGIC, 0, 2, 1, 12, 0, 512),
    ),
    (
        "NBD_REPLY_TYPE_BLOCK_STATUS",
        L.NBDStructuredReply(flags=1, type=c.ReplyType.BLOCK_STATUS, cookie=1)
        / L.NBDChunkBlockStatus(
            context_id=1,
            descriptors=[
                L.NBDBlockDescriptor(length=4096, status=0),
                L.NBDBlockDescriptor(length=8192, status=3),
            ],
        ),
        struct.pack(">IHHQII", c.STRUCTURED_REPLY_MAGIC, 1, 5, 1, 20, 1)
        + struct.pack(">IIII", 4096, 0, 8192, 3),
    ),
    (
        "NBD_REPLY_TYPE_ERROR",
        L.NBDStructuredReply(flags=1, type=c.ReplyType.ERROR, cookie=1)
        / L.NBDChunkError(error=c.Errno.EINVAL, message=b"bad"),
        struct.pack(">IHHQIIH", c.STRUCTURED_REPLY_MAGIC, 1, 0x8001, 1, 9, 22, 3) + b"bad",
    ),
    (
        "NBD_REPLY_TYPE_ERROR_OFFSET",
        L.NBDStructuredReply(flags=1, type=c.ReplyType.ERROR_OFFSET, cookie=1)
        / L.NBDChunkErrorOffset(error=c.Errno.EIO, message=b"", error_offset=99),
        struct.pack(">IHHQIIHQ", c.STRUCTURED_REPLY_MAGIC, 1, 0x8002, 1, 14, 5, 0, 99),
    ),
    (
        "unknown error chunk type",
        L.NBDStructuredReply(flags=1, type=0x8077, cookie=1)
        / L.NBDChunkError(error=c.Errno.EIO, message=b"m")
        / Raw(b"\x01\x02"),
        struct.pack(">IHHQIIH", c.STRUCTURED_REPLY_MAGIC, 1, 0x8077, 1, 9, 5, 1) + b"m\x01\x02",
    ),
    (
        "unknown chunk type",
        L.NBDStructuredReply(flags=1, type=77, cookie=1) / Raw(b"\x01"),
        struct.pack(">IHHQI", c.STRUCTURED_REPLY_MAGIC, 1, 77, 1, 1) + b"\x01",
    ),
    (
        "extended NBD_REPLY_TYPE_BLOCK_STATUS_EXT",
        L.NBDExtendedReply(flags=1, type=c.ReplyType.BLOCK_STATUS_EXT, cookie=4, offset=512)
        / L.NBDChunkBlockStatusExt(
            context_id=2, descriptors=[L.NBDBlockDescriptorExt(length=1 << 40, status=1)]
        ),
        struct.pack(">IHHQQQ", c.EXTENDED_REPLY_MAGIC, 1, 6, 4, 512, 24)
        + struct.pack(">IIQQ", 2, 1, 1 << 40, 1),
    ),
    (
        "extended NBD_REPLY_TYPE_OFFSET_DATA",
        L.NBDExtendedReply(type=c.ReplyType.OFFSET_DATA, cookie=4, offset=0)
        / L.NBDChunkOffsetData(data_offset=0, data=b"q"),
        struct.pack(">IHHQQQQ", c.EXTENDED_REPLY_MAGIC, 0, 1, 4, 0, 9, 0) + b"q",
    ),
]


@pytest.mark.parametrize(
    ("built", "wire"), [(p, w) for _, p, w in CASES], ids=[n for n, _, _ in CASES]
)
def test_layer_builds_the_spec_bytes_and_parses_back(built: Packet, wire: bytes) -> None:
    assert bytes(built) == wire
    parsed = type(built)(wire)
    assert bytes(parsed) == wire
    assert [type(layer) for layer in parsed.iterpayloads()] == [
        type(layer) for layer in built.iterpayloads()
    ]
    # Every value given (or defaulted) when building reads back; lengths and counts
    # left to be computed (None) read back as what was computed.
    assert _matches(fields_of(parsed), fields_of(built))


def _matches(got: object, expected: object) -> bool:
    """``got == expected``, where ``None`` in ``expected`` (computed on build) matches anything."""
    if expected is None:
        return True
    if isinstance(expected, dict):
        return (
            isinstance(got, dict)
            and got.keys() == expected.keys()
            and all(_matches(got[k], expected[k]) for k in expected)
        )
    if isinstance(expected, list):
        return (
            isinstance(got, list)
            and len(got) == len(expected)
            and all(_matches(g, e) for g, e in zip(got, expected, strict=True))
        )
    return got == expected


def test_every_layer_is_covered_by_a_case() -> None:
    covered = {type(layer) for _, packet, _ in CASES for layer in packet.iterpayloads()}
    covered |= {L.NBDMetaContextQuery, L.NBDBlockDescriptor, L.NBDBlockDescriptorExt}
    assert set(L.ALL_LAYERS) - covered == {L.NBDOpaque}


def test_fields_of_gives_plain_values() -> None:
    packet = L.NBDOption(
        struct.pack(">QII", c.IHAVEOPT, 10, 4 + 1 + 4 + 4 + 15)
        + struct.pack(">I", 1)
        + b"e"
        + struct.pack(">II", 1, 15)
        + b"base:allocation"
    )
    assert fields_of(packet) == {
        "magic": c.IHAVEOPT,
        "option": c.Opt.SET_META_CONTEXT,
        "length": 28,
        "name_length": 1,
        "export_name": "e",
        "query_count": 1,
        "queries": [{"query_length": 15, "query": "base:allocation"}],
    }
    assert all(
        type(v) is int for k, v in fields_of(packet).items() if k not in ("export_name", "queries")
    )


def test_option_data_beyond_its_fields_shows_as_trailing() -> None:
    wire = struct.pack(">QII", c.IHAVEOPT, c.Opt.GO, 9) + struct.pack(">I", 0) + b"\0\0" + b"zzz"
    fields = fields_of(L.NBDOption(wire))
    assert fields["info_requests"] == []
    assert fields["trailing"] == b"zzz"


def test_names_print_in_show() -> None:
    text = L.NBDOption(bytes(L.NBDOption(option=c.Opt.GO) / L.NBDOptInfoGo())).show(dump=True)
    assert "NBD_OPT_GO" in text
    reply = L.NBDRequest(bytes(L.NBDRequest(type=c.Cmd.WRITE, flags=1, data=b"x")))
    shown = reply.show(dump=True)
    assert "NBD_CMD_WRITE" in shown and "FUA" in shown


@pytest.mark.parametrize(
    ("context", "status", "text"),
    [
        ("base:allocation", 0, "allocated"),
        ("base:allocation", 1, "HOLE"),
        ("base:allocation", 3, "HOLE|ZERO"),
        ("base:allocation", 0x13, "HOLE|ZERO|0x10"),
        ("qemu:allocation-depth", 0, "unallocated (depth 0)"),
        ("qemu:allocation-depth", 2, "depth 2"),
        ("qemu:dirty-bitmap:b0", 1, "DIRTY"),
        ("qemu:dirty-bitmap:b0", 0, "clean"),
        ("qemu:dirty-bitmap:b0", 5, "DIRTY|0x4"),
        ("x-vendor:thing", 0x1F, "0x1f"),
        (None, 7, "0x7"),
    ],
)
def test_status_is_described_per_context(context: str | None, status: int, text: str) -> None:
    assert describe_status(context, status) == text
