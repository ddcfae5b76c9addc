"""One hand-made conversation per conformance rule, breaking exactly that rule.

Each function builds on the clean building blocks of :mod:`_conformance_samples`
and ``mark()``s the segment that breaks the rule.  Where a breach cannot
happen alone (a server's answer to a client's mistake), ``also`` names the
other rule the conversation breaks.
"""

from __future__ import annotations

import struct

from _conformance_samples import (
    BLOCK,
    CF,
    DONE,
    FLAGS,
    RT,
    SIZE,
    TF,
    Conv,
    KiB,
    MiB,
    chunk,
    client_flags_of,
    error_payload,
    ext_chunk,
    ext_request,
    ext_status,
    greeting,
    info_block,
    info_export,
    meta_context,
    name_and_infos,
    name_and_queries,
    offset_data,
    offset_hole,
    option,
    pattern,
    reply,
    request,
    sample,
    simple,
    status,
)

from harness.protocol import constants as c

O = c.Opt  # noqa: E741 (short names keep the conversations readable)
R = c.Rep
CMD = c.Cmd
E = c.Errno
BASE = c.BASE_ALLOCATION.encode()
BITMAP = b"qemu:dirty-bitmap:b0"
DATA = pattern(512)


def ready(**go: object) -> Conv:
    return Conv().ready(**go)


def extended(**go: object) -> Conv:
    return Conv().ready_extended(**go)


def write(conv: Conv, cookie: int = 1, offset: int = 0, data: bytes = DATA) -> Conv:
    if conv.extended:
        return conv.c(ext_request(CMD.WRITE, cookie, offset, len(data), CF.PAYLOAD_LEN, data))
    return conv.c(request(CMD.WRITE, cookie, offset, len(data), data=data))


def err(cookie: int, error: int, message: bytes = b"") -> bytes:
    return chunk(cookie, RT.ERROR, error_payload(error, message))


def bs_payload(effect: int, *ids: int) -> bytes:
    return struct.pack(f">Q{len(ids)}I", effect, *ids)


# --- handshake ---------------------------------------------------------------------------


@sample("server.greeting-magic")
def _greeting_magic() -> Conv:
    return Conv().mark().s(struct.pack(">QQH", c.NBDMAGIC, 0x1122334455667788, 3))


@sample("server.handshake-flags-known")
def _handshake_flags_known() -> Conv:
    return Conv().mark().newstyle(handshake_flags=0x7).sr().go().disc()


@sample("server.oldstyle-no-handshake-flags")
def _oldstyle_no_handshake_flags() -> Conv:
    conv = Conv().mark()
    conv.s(struct.pack(">QQQHH", c.NBDMAGIC, c.CLISERV_MAGIC, SIZE, 1, TF.HAS_FLAGS) + bytes(124))
    return conv.disc()


@sample("client.client-flags-known")
def _client_flags_known() -> Conv:
    return Conv().s(greeting(3)).mark().c(client_flags_of(0x7))


@sample("client.no-zeroes-only-if-offered")
def _no_zeroes_only_if_offered() -> Conv:
    return Conv().s(greeting(1)).mark().c(client_flags_of(3))


@sample("server.drop-on-bad-client-flags", also=["client.client-flags-known"])
def _drop_on_bad_client_flags() -> Conv:
    conv = Conv().s(greeting(3)).c(client_flags_of(0x7)).c(option(O.STRUCTURED_REPLY))
    return conv.mark().s(reply(O.STRUCTURED_REPLY, R.ACK))


@sample("client.fixed-newstyle-flag")
def _fixed_newstyle_flag() -> Conv:
    return Conv().s(greeting(3)).mark().c(client_flags_of(2))


@sample("client.export-name-only-in-nonfixed", also=["server.baseline-fixed-newstyle"])
def _export_name_only_in_nonfixed() -> Conv:
    conv = Conv().newstyle(handshake_flags=0, client_flags=0)
    return conv.mark().c(option(O.GO, name_and_infos(b"disk")))


@sample(
    "server.fixed-newstyle-for-options",
    also=["client.export-name-only-in-nonfixed", "server.baseline-fixed-newstyle"],
)
def _fixed_newstyle_for_options() -> Conv:
    conv = Conv().newstyle(handshake_flags=0, client_flags=0)
    conv.c(option(O.GO, name_and_infos(b"disk")))
    return conv.mark().s(reply(O.GO, R.ERR_UNSUP))


@sample("server.export-name-reply-zeroes", also=["client.go-in-preference"])
def _export_name_reply_zeroes() -> Conv:
    conv = Conv().newstyle(1, 1).c(option(O.EXPORT_NAME, b"disk"))
    conv.mark().s(struct.pack(">QH", SIZE, conv.default_flags()) + b"\x01" * 124)
    return conv.disc()


@sample("server.no-zeroes-honoured", also=["client.go-in-preference"])
def _no_zeroes_honoured() -> Conv:
    conv = Conv().newstyle().c(option(O.EXPORT_NAME, b"disk"))
    conv.s(struct.pack(">QH", SIZE, conv.default_flags()))
    return conv.mark().s(bytes(124)).disc()


@sample("server.export-name-no-option-reply", also=["client.go-in-preference"])
def _export_name_no_option_reply() -> Conv:
    conv = Conv().newstyle().c(option(O.EXPORT_NAME, b"nope"))
    return conv.mark().s(reply(O.EXPORT_NAME, R.ERR_UNKNOWN))


@sample("client.abort-then-close")
def _abort_then_close() -> Conv:
    conv = Conv().newstyle().c(option(O.ABORT)).s(reply(O.ABORT, R.ACK))
    return conv.mark().c(option(O.LIST))


@sample("client.soft-disconnect-on-err-shutdown")
def _soft_disconnect_on_err_shutdown() -> Conv:
    conv = Conv().newstyle().c(option(O.GO, name_and_infos(b"disk")))
    conv.s(reply(O.GO, R.ERR_SHUTDOWN))
    conv.mark().c(option(O.LIST)).s(reply(O.LIST, R.ERR_SHUTDOWN))
    return conv.c(option(O.ABORT)).s(reply(O.ABORT, R.ACK))


@sample("server.abort-ack")
def _abort_ack() -> Conv:
    return Conv().newstyle().c(option(O.ABORT)).mark().s(reply(O.ABORT, R.ERR_INVALID))


# --- options -------------------------------------------------------------------------------


@sample("client.option-magic")
def _option_magic() -> Conv:
    return Conv().newstyle().mark().c(struct.pack(">QII", 0xDEADBEEF, O.GO, 0))


@sample("server.option-reply-magic")
def _option_reply_magic() -> Conv:
    conv = Conv().newstyle().c(option(O.STRUCTURED_REPLY))
    return conv.mark().s(struct.pack(">QIII", 0x1234, O.STRUCTURED_REPLY, R.ACK, 0))


@sample("client.no-option-before-final-reply")
def _no_option_before_final_reply() -> Conv:
    conv = Conv().newstyle().c(option(O.STRUCTURED_REPLY)).mark().c(option(O.LIST))
    return conv.s(reply(O.STRUCTURED_REPLY, R.ACK)).s(reply(O.LIST, R.ACK))


@sample("server.option-reply-answers-option")
def _option_reply_answers_option() -> Conv:
    conv = Conv().newstyle().c(option(O.STRUCTURED_REPLY))
    return conv.mark().s(reply(O.LIST, R.ACK))


@sample("server.unsupported-option-err-unsup")
def _unsupported_option_err_unsup() -> Conv:
    return Conv().newstyle().c(option(99)).mark().s(reply(99, R.ERR_INVALID))


@sample("client.no-data-with-option")
def _no_data_with_option() -> Conv:
    conv = Conv().newstyle().mark().c(option(O.STRUCTURED_REPLY, b"x"))
    return conv.s(reply(O.STRUCTURED_REPLY, R.ERR_INVALID))


@sample("client.abort-no-data")
def _abort_no_data() -> Conv:
    return Conv().newstyle().mark().c(option(O.ABORT, b"x")).s(reply(O.ABORT, R.ACK))


@sample("server.reject-option-data", also=["client.no-data-with-option"])
def _reject_option_data() -> Conv:
    return Conv().newstyle().c(option(O.LIST, b"x")).mark().s(reply(O.LIST, R.ACK))


@sample("server.info-export-before-ack")
def _info_export_before_ack() -> Conv:
    conv = Conv().newstyle().c(option(O.INFO, name_and_infos(b"disk")))
    return conv.mark().s(reply(O.INFO, R.ACK))


@sample("server.info-export-length")
def _info_export_length() -> Conv:
    conv = Conv().newstyle().c(option(O.INFO, name_and_infos(b"disk")))
    conv.mark().s(reply(O.INFO, R.INFO, info_export(flags=1) + b"\0\0"))
    return conv.s(reply(O.INFO, R.ACK))


@sample("server.info-block-size-length")
def _info_block_size_length() -> Conv:
    conv = Conv().newstyle().c(option(O.INFO, name_and_infos(b"disk", [c.Info.BLOCK_SIZE])))
    conv.s(reply(O.INFO, R.INFO, info_export(flags=1)))
    conv.mark().s(reply(O.INFO, R.INFO, info_block(*BLOCK) + b"\0\0"))
    return conv.s(reply(O.INFO, R.ACK))


@sample("server.info-length-at-least-2")
def _info_length_at_least_2() -> Conv:
    conv = Conv().newstyle().c(option(O.INFO, name_and_infos(b"disk")))
    conv.mark().s(reply(O.INFO, R.INFO, b""))
    return conv.s(reply(O.INFO, R.INFO, info_export(flags=1))).s(reply(O.INFO, R.ACK))


@sample("server.info-once")
def _info_once() -> Conv:
    conv = Conv().newstyle().c(option(O.INFO, name_and_infos(b"disk")))
    conv.s(reply(O.INFO, R.INFO, info_export(flags=1)))
    conv.mark().s(reply(O.INFO, R.INFO, info_export(flags=1)))
    return conv.s(reply(O.INFO, R.ACK))


@sample("server.no-info-for-unknown-export")
def _no_info_for_unknown_export() -> Conv:
    conv = Conv().newstyle().c(option(O.INFO, name_and_infos(b"nope")))
    conv.mark().s(reply(O.INFO, R.INFO, info_export(flags=1)))
    return conv.s(reply(O.INFO, R.ERR_UNKNOWN))


@sample("server.go-consistent-with-info")
def _go_consistent_with_info() -> Conv:
    conv = Conv().newstyle().go(code=O.INFO)
    return conv.go(size=SIZE // 2, mark="ack").disc()


@sample("server.block-size-reqd-not-if-requested")
def _block_size_reqd_not_if_requested() -> Conv:
    conv = Conv().newstyle().c(option(O.GO, name_and_infos(b"disk", [c.Info.BLOCK_SIZE])))
    return conv.mark().s(reply(O.GO, R.ERR_BLOCK_SIZE_REQD))


@sample("server.go-not-unsup-after-extended", also=["server.baseline-info-go"])
def _go_not_unsup_after_extended() -> Conv:
    conv = Conv().newstyle().eh().c(option(O.GO, name_and_infos(b"disk")))
    return conv.mark().s(reply(O.GO, R.ERR_UNSUP))


@sample("client.info-request-once")
def _info_request_once() -> Conv:
    conv = Conv().newstyle().sr().meta(BASE)
    conv.mark()
    return conv.go(infos=[c.Info.BLOCK_SIZE, c.Info.BLOCK_SIZE]).disc()


@sample("client.info-name-length")
def _info_name_length() -> Conv:
    conv = Conv().newstyle().mark().c(option(O.INFO, struct.pack(">I", 5) + b"abcdef"))
    return conv.s(reply(O.INFO, R.ERR_INVALID))


@sample("server.rep-server-name-length")
def _rep_server_name_length() -> Conv:
    conv = Conv().newstyle().c(option(O.LIST))
    conv.mark().s(reply(O.LIST, R.SERVER, struct.pack(">I", 10) + b"disk"))
    return conv.s(reply(O.LIST, R.ACK))


@sample("client.no-export-name-after-extended", also=["client.go-in-preference"])
def _no_export_name_after_extended() -> Conv:
    return Conv().newstyle().eh().mark().c(option(O.EXPORT_NAME, b"disk"))


@sample("client.set-meta-context-needs-structured")
def _set_meta_context_needs_structured() -> Conv:
    conv = Conv().newstyle().mark().c(option(O.SET_META_CONTEXT, name_and_queries(b"disk", [BASE])))
    return conv.s(reply(O.SET_META_CONTEXT, R.ERR_INVALID))


@sample("client.list-meta-context-needs-structured")
def _list_meta_context_needs_structured() -> Conv:
    conv = Conv().newstyle().mark()
    conv.c(option(O.LIST_META_CONTEXT, name_and_queries(b"disk", [b"base:"])))
    conv.s(reply(O.LIST_META_CONTEXT, R.META_CONTEXT, meta_context(0, BASE)))
    return conv.s(reply(O.LIST_META_CONTEXT, R.ACK))


@sample("server.set-meta-context-unnegotiated", also=["client.set-meta-context-needs-structured"])
def _set_meta_context_unnegotiated() -> Conv:
    conv = Conv().newstyle().c(option(O.SET_META_CONTEXT, name_and_queries(b"disk", [BASE])))
    conv.s(reply(O.SET_META_CONTEXT, R.META_CONTEXT, meta_context(1, BASE)))
    return conv.mark().s(reply(O.SET_META_CONTEXT, R.ACK))


@sample("server.meta-context-replies")
def _meta_context_replies() -> Conv:
    conv = Conv().newstyle().sr()
    conv.c(option(O.SET_META_CONTEXT, name_and_queries(b"disk", [BASE])))
    conv.mark().s(reply(O.SET_META_CONTEXT, R.SERVER, struct.pack(">I", 4) + b"disk"))
    return conv.s(reply(O.SET_META_CONTEXT, R.ACK))


@sample("server.meta-context-ids-unique")
def _meta_context_ids_unique() -> Conv:
    conv = Conv().newstyle().sr()
    conv.c(option(O.SET_META_CONTEXT, name_and_queries(b"disk", [BASE, BITMAP])))
    conv.s(reply(O.SET_META_CONTEXT, R.META_CONTEXT, meta_context(1, BASE)))
    conv.mark().s(reply(O.SET_META_CONTEXT, R.META_CONTEXT, meta_context(1, BITMAP)))
    return conv.s(reply(O.SET_META_CONTEXT, R.ACK))


@sample("server.list-meta-context-id-zero")
def _list_meta_context_id_zero() -> Conv:
    conv = Conv().newstyle().sr()
    conv.c(option(O.LIST_META_CONTEXT, name_and_queries(b"disk", [b"base:"])))
    conv.mark().s(reply(O.LIST_META_CONTEXT, R.META_CONTEXT, meta_context(5, BASE)))
    return conv.s(reply(O.LIST_META_CONTEXT, R.ACK))


@sample("server.set-meta-context-no-queries")
def _set_meta_context_no_queries() -> Conv:
    conv = Conv().newstyle().sr()
    conv.c(option(O.SET_META_CONTEXT, name_and_queries(b"disk", [])))
    conv.mark().s(reply(O.SET_META_CONTEXT, R.META_CONTEXT, meta_context(1, BASE)))
    return conv.s(reply(O.SET_META_CONTEXT, R.ACK))


@sample("server.meta-context-name-syntax")
def _meta_context_name_syntax() -> Conv:
    conv = Conv().newstyle().sr()
    conv.c(option(O.LIST_META_CONTEXT, name_and_queries(b"disk", [b"base:"])))
    conv.mark().s(reply(O.LIST_META_CONTEXT, R.META_CONTEXT, meta_context(0, b"allocation")))
    return conv.s(reply(O.LIST_META_CONTEXT, R.ACK))


@sample("client.meta-context-query-syntax")
def _meta_context_query_syntax() -> Conv:
    conv = Conv().newstyle().sr().mark()
    conv.c(option(O.LIST_META_CONTEXT, name_and_queries(b"disk", [b"allocation"])))
    return conv.s(reply(O.LIST_META_CONTEXT, R.ACK))


@sample("server.ext-header-reqd-not-for-base")
def _ext_header_reqd_not_for_base() -> Conv:
    conv = Conv().newstyle().sr()
    conv.c(option(O.SET_META_CONTEXT, name_and_queries(b"disk", [BASE])))
    return conv.mark().s(reply(O.SET_META_CONTEXT, R.ERR_EXT_HEADER_REQD))


@sample("server.list-ext-header-reqd-not-for-base")
def _list_ext_header_reqd_not_for_base() -> Conv:
    conv = Conv().newstyle().sr()
    conv.c(option(O.LIST_META_CONTEXT, name_and_queries(b"disk", [b"base:"])))
    conv.s(reply(O.LIST_META_CONTEXT, R.META_CONTEXT, meta_context(0, BASE)))
    return conv.mark().s(reply(O.LIST_META_CONTEXT, R.ERR_EXT_HEADER_REQD))


@sample("server.list-replies")
def _list_replies() -> Conv:
    conv = Conv().newstyle().c(option(O.LIST))
    conv.mark().s(reply(O.LIST, R.INFO, info_export(flags=1)))
    return conv.s(reply(O.LIST, R.ACK))


@sample("server.info-go-replies")
def _info_go_replies() -> Conv:
    conv = Conv().newstyle().c(option(O.INFO, name_and_infos(b"disk")))
    conv.s(reply(O.INFO, R.INFO, info_export(flags=1)))
    conv.mark().s(reply(O.INFO, R.SERVER, struct.pack(">I", 4) + b"disk"))
    return conv.s(reply(O.INFO, R.ACK))


@sample("server.no-data-option-replies")
def _no_data_option_replies() -> Conv:
    conv = Conv().newstyle().c(option(O.STRUCTURED_REPLY))
    conv.mark().s(reply(O.STRUCTURED_REPLY, R.SERVER, struct.pack(">I", 4) + b"disk"))
    return conv.s(reply(O.STRUCTURED_REPLY, R.ACK))


# --- strings ----------------------------------------------------------------------------------


@sample("client.string-max-length")
def _client_string_max_length() -> Conv:
    conv = Conv().newstyle().mark().c(option(O.GO, name_and_infos(b"a" * 5000)))
    return conv.s(reply(O.GO, R.ERR_INVALID))


@sample("server.string-max-length")
def _server_string_max_length() -> Conv:
    conv = Conv().newstyle().c(option(O.LIST))
    conv.mark().s(reply(O.LIST, R.SERVER, struct.pack(">I", 4) + b"disk" + b"d" * 5000))
    return conv.s(reply(O.LIST, R.ACK))


@sample("client.string-recommended-length")
def _client_string_recommended_length() -> Conv:
    conv = Conv().newstyle().mark().c(option(O.GO, name_and_infos(b"a" * 300)))
    return conv.s(reply(O.GO, R.ERR_UNKNOWN))


@sample("server.string-recommended-length")
def _server_string_recommended_length() -> Conv:
    conv = Conv().newstyle().c(option(O.LIST))
    conv.mark().s(reply(O.LIST, R.SERVER, struct.pack(">I", 4) + b"disk" + b"d" * 300))
    return conv.s(reply(O.LIST, R.ACK))


@sample("client.string-no-nul")
def _client_string_no_nul() -> Conv:
    conv = Conv().newstyle().mark().c(option(O.GO, name_and_infos(b"di\0sk")))
    return conv.s(reply(O.GO, R.ERR_UNKNOWN))


@sample("server.string-no-nul")
def _server_string_no_nul() -> Conv:
    conv = Conv().newstyle().c(option(O.GO, name_and_infos(b"disk")))
    return conv.mark().s(reply(O.GO, R.ERR_UNKNOWN, b"no\0such export"))


@sample("client.string-utf8")
def _client_string_utf8() -> Conv:
    conv = Conv().newstyle().mark().c(option(O.GO, name_and_infos(b"d\xffsk")))
    return conv.s(reply(O.GO, R.ERR_UNKNOWN))


@sample("server.string-utf8")
def _server_string_utf8() -> Conv:
    conv = Conv().newstyle().c(option(O.GO, name_and_infos(b"disk")))
    return conv.mark().s(reply(O.GO, R.ERR_UNKNOWN, b"no such export \xff"))


@sample("server.meta-context-name-utf8")
def _meta_context_name_utf8() -> Conv:
    conv = Conv().newstyle().sr()
    conv.c(option(O.LIST_META_CONTEXT, name_and_queries(b"disk", [b"base:"])))
    conv.mark().s(reply(O.LIST_META_CONTEXT, R.META_CONTEXT, meta_context(0, b"base:\xff\xfe")))
    return conv.s(reply(O.LIST_META_CONTEXT, R.ACK))


# --- TLS -------------------------------------------------------------------------------------


@sample("client.starttls-needs-fixed-newstyle", also=["client.fixed-newstyle-flag"])
def _starttls_needs_fixed_newstyle() -> Conv:
    conv = Conv().newstyle(client_flags=2).mark().c(option(O.STARTTLS))
    return conv.s(reply(O.STARTTLS, R.ERR_POLICY))


@sample("server.notls-without-fixed-newstyle", also=["client.fixed-newstyle-flag"])
def _notls_without_fixed_newstyle() -> Conv:
    conv = Conv().newstyle(client_flags=2).c(option(O.GO, name_and_infos(b"disk")))
    return conv.mark().s(reply(O.GO, R.ERR_TLS_REQD))


@sample("server.notls-no-tls-reqd")
def _notls_no_tls_reqd() -> Conv:
    conv = Conv().newstyle().c(option(O.STARTTLS)).s(reply(O.STARTTLS, R.ERR_POLICY))
    return conv.c(option(O.LIST)).mark().s(reply(O.LIST, R.ERR_TLS_REQD))


@sample("server.starttls-ack-when-tls-required")
def _starttls_ack_when_tls_required() -> Conv:
    conv = Conv().newstyle().c(option(O.GO, name_and_infos(b"disk")))
    conv.s(reply(O.GO, R.ERR_TLS_REQD)).c(option(O.STARTTLS))
    return conv.mark().s(reply(O.STARTTLS, R.ERR_POLICY))


@sample("server.forcedtls-errors-options")
def _forcedtls_errors_options() -> Conv:
    conv = Conv().newstyle().c(option(O.LIST)).s(reply(O.LIST, R.ERR_TLS_REQD))
    return conv.c(option(O.STRUCTURED_REPLY)).mark().s(reply(O.STRUCTURED_REPLY, R.ACK))


@sample("server.starttls-reply")
def _starttls_reply() -> Conv:
    conv = Conv().newstyle().c(option(O.STARTTLS))
    conv.mark().s(reply(O.STARTTLS, R.SERVER, struct.pack(">I", 4) + b"disk"))
    return conv.s(reply(O.STARTTLS, R.ERR_POLICY))


@sample("client.defer-stateful-options")
def _defer_stateful_options() -> Conv:
    conv = Conv().newstyle().mark().sr()
    return conv.c(option(O.STARTTLS)).s(reply(O.STARTTLS, R.ERR_POLICY))


@sample("client.tls-after-starttls-ack")
def _tls_after_starttls_ack() -> Conv:
    conv = Conv().newstyle().c(option(O.STARTTLS)).s(reply(O.STARTTLS, R.ACK))
    return conv.mark().c(option(O.LIST))


@sample("server.tls-after-starttls-ack")
def _server_tls_after_starttls_ack() -> Conv:
    conv = Conv().newstyle().c(option(O.STARTTLS)).s(reply(O.STARTTLS, R.ACK))
    conv.c(bytes.fromhex("160301002a") + bytes(42))
    return conv.mark().s(reply(O.LIST, R.ACK))


# --- transmission: magic numbers, flags, commands ---------------------------------------------


@sample("client.request-magic")
def _request_magic() -> Conv:
    return ready().mark().c(struct.pack(">IHHQQI", 0x12345678, 0, CMD.READ, 1, 0, 512))


@sample("client.no-options-after-go")
def _no_options_after_go() -> Conv:
    return ready().mark().c(option(O.LIST))


@sample("server.reply-magic")
def _reply_magic() -> Conv:
    conv = ready().c(request(CMD.READ, 1, 0, 512))
    return conv.mark().s(struct.pack(">IIQ", 0x11111111, 0, 1))


@sample("server.no-padding-after-go")
def _no_padding_after_go() -> Conv:
    return ready().mark().s(bytes(124)).disc()


@sample("server.has-flags")
def _has_flags() -> Conv:
    return Conv().newstyle().sr().go(flags=FLAGS & ~TF.HAS_FLAGS, mark="info").disc()


@sample("server.df-needs-structured")
def _df_needs_structured() -> Conv:
    return Conv().newstyle().go(flags=FLAGS, mark="info").disc()


@sample("server.fast-zero-needs-write-zeroes")
def _fast_zero_needs_write_zeroes() -> Conv:
    flags = FLAGS & ~TF.SEND_WRITE_ZEROES
    return Conv().newstyle().sr().go(flags=flags, mark="info").disc()


@sample("server.block-status-payload-needs-extended")
def _block_status_payload_needs_extended() -> Conv:
    conv = Conv().newstyle().sr().meta(BASE)
    return conv.go(flags=FLAGS | TF.BLOCK_STATUS_PAYLOAD, mark="info").disc()


@sample("server.block-status-payload-needs-contexts")
def _block_status_payload_needs_contexts() -> Conv:
    conv = Conv().newstyle().eh()
    return conv.go(flags=FLAGS | TF.BLOCK_STATUS_PAYLOAD, mark="info").disc()


@sample("client.flush-needs-send-flush")
def _flush_needs_send_flush() -> Conv:
    conv = ready(flags=FLAGS & ~TF.SEND_FLUSH)
    return conv.mark().c(request(CMD.FLUSH, 1)).s(simple(1)).disc()


@sample("client.trim-needs-send-trim")
def _trim_needs_send_trim() -> Conv:
    conv = ready(flags=FLAGS & ~TF.SEND_TRIM)
    return conv.mark().c(request(CMD.TRIM, 1, 0, 4096)).s(simple(1)).disc()


@sample("client.write-zeroes-needs-send-write-zeroes")
def _write_zeroes_needs_flag() -> Conv:
    conv = ready(flags=FLAGS & ~(TF.SEND_WRITE_ZEROES | TF.SEND_FAST_ZERO))
    return conv.mark().c(request(CMD.WRITE_ZEROES, 1, 0, 4096)).s(simple(1)).disc()


@sample("client.fua-needs-send-fua")
def _fua_needs_send_fua() -> Conv:
    conv = ready(flags=FLAGS & ~TF.SEND_FUA).mark()
    conv.c(request(CMD.WRITE, 1, 0, len(DATA), flags=CF.FUA, data=DATA))
    return conv.s(simple(1)).disc()


@sample("client.df-needs-send-df")
def _df_needs_send_df() -> Conv:
    conv = ready(flags=FLAGS & ~TF.SEND_DF).mark().c(request(CMD.READ, 1, 0, 512, flags=CF.DF))
    return conv.s(chunk(1, RT.OFFSET_DATA, offset_data(0, DATA))).disc()


@sample("client.fast-zero-needs-send-fast-zero")
def _fast_zero_needs_flag() -> Conv:
    conv = ready(flags=FLAGS & ~TF.SEND_FAST_ZERO).mark()
    conv.c(request(CMD.WRITE_ZEROES, 1, 0, 4096, flags=CF.FAST_ZERO))
    return conv.s(simple(1)).disc()


@sample("client.command-flag-documented")
def _command_flag_documented() -> Conv:
    conv = ready().mark().c(request(CMD.READ, 1, 0, 512, flags=CF.NO_HOLE))
    return conv.s(err(1, E.EINVAL)).disc()


@sample("client.no-unknown-commands")
def _no_unknown_commands() -> Conv:
    return ready().mark().c(request(42, 1)).s(err(1, E.EINVAL)).disc()


@sample("client.compact-no-payload-len")
def _compact_no_payload_len() -> Conv:
    conv = ready().mark().c(request(CMD.WRITE, 1, 0, 512, flags=CF.PAYLOAD_LEN, data=DATA))
    return conv.s(err(1, E.EINVAL)).disc()


@sample("client.extended-write-payload-len")
def _extended_write_payload_len() -> Conv:
    conv = extended().mark().c(ext_request(CMD.WRITE, 1, 0, 512))
    return conv.s(ext_chunk(1, 0, RT.ERROR, error_payload(E.EINVAL))).disc()


@sample("client.extended-request-when-negotiated")
def _extended_request_when_negotiated() -> Conv:
    conv = extended().mark().c(request(CMD.READ, 1, 0, 512))
    return conv.s(ext_chunk(1, 0, RT.OFFSET_DATA, offset_data(0, DATA))).disc()


@sample("client.compact-request-unless-negotiated")
def _compact_request_unless_negotiated() -> Conv:
    conv = ready().mark().c(ext_request(CMD.READ, 1, 0, 512))
    return conv.s(chunk(1, RT.OFFSET_DATA, offset_data(0, DATA))).disc()


@sample("client.disc-fields-zero")
def _disc_fields_zero() -> Conv:
    return ready().mark().c(request(CMD.DISC, 9, 0, 512))


@sample("client.flush-fields-zero")
def _flush_fields_zero() -> Conv:
    return ready().mark().c(request(CMD.FLUSH, 1, 0, 512)).s(simple(1)).disc()


@sample("client.nothing-after-disc")
def _nothing_after_disc() -> Conv:
    return ready().disc().mark().c(request(CMD.READ, 1, 0, 512))


@sample("client.disc-waits-for-replies")
def _disc_waits_for_replies() -> Conv:
    conv = ready().c(request(CMD.READ, 1, 0, 512)).mark().disc()
    return conv.s(chunk(1, RT.OFFSET_DATA, offset_data(0, DATA)))


@sample("server.no-reply-to-disc")
def _no_reply_to_disc() -> Conv:
    return ready().disc(9).mark().s(simple(9))


@sample("server.reply-cookie-matches")
def _reply_cookie_matches() -> Conv:
    conv = ready().c(request(CMD.READ, 1, 0, 512)).mark().s(chunk(77, RT.NONE))
    return conv.s(chunk(1, RT.OFFSET_DATA, offset_data(0, DATA))).disc()


@sample("client.cookie-distinct")
def _cookie_distinct() -> Conv:
    conv = ready().c(request(CMD.READ, 1, 0, 512)).mark().c(request(CMD.READ, 1, 512, 512))
    conv.s(chunk(1, RT.OFFSET_DATA, offset_data(0, DATA)))
    return conv.s(chunk(1, RT.OFFSET_DATA, offset_data(512, DATA))).disc()


@sample("client.request-within-export")
def _request_within_export() -> Conv:
    conv = ready().mark().c(request(CMD.READ, 1, SIZE - 512, 1024))
    return conv.s(err(1, E.EINVAL)).disc()


@sample("client.request-alignment")
def _request_alignment() -> Conv:
    conv = ready(block=(512, 4096, 32 * MiB)).mark().c(request(CMD.READ, 1, 100, 512))
    return conv.s(err(1, E.EINVAL)).disc()


@sample("client.request-max-payload")
def _request_max_payload() -> Conv:
    conv = ready(block=(1, 4096, 64 * KiB), size=512 * KiB).mark()
    data = pattern(128 * KiB)
    conv.c(request(CMD.WRITE, 1, 0, len(data), data=data))
    return conv.s(err(1, E.EINVAL)).disc()


@sample("server.read-only-write-errors")
def _read_only_write_errors() -> Conv:
    conv = write(ready(flags=FLAGS | TF.READ_ONLY))
    return conv.mark().s(simple(1)).disc()


@sample("client.soft-disconnect-on-eshutdown")
def _soft_disconnect_on_eshutdown() -> Conv:
    conv = ready().c(request(CMD.READ, 1, 0, 512)).s(err(1, E.ESHUTDOWN))
    return conv.mark().c(request(CMD.READ, 2, 0, 512)).s(err(2, E.ESHUTDOWN)).disc()


# --- replies: style, chunks, content, errors ---------------------------------------------------


@sample("server.structured-needs-negotiation")
def _structured_needs_negotiation() -> Conv:
    conv = Conv().newstyle().go().c(request(CMD.READ, 1, 0, 512))
    return conv.mark().s(chunk(1, RT.OFFSET_DATA, offset_data(0, DATA))).disc()


@sample("server.extended-needs-negotiation")
def _extended_needs_negotiation() -> Conv:
    conv = ready().c(request(CMD.READ, 1, 0, 512))
    return conv.mark().s(ext_chunk(1, 0, RT.OFFSET_DATA, offset_data(0, DATA))).disc()


@sample("server.extended-reply-when-negotiated")
def _extended_reply_when_negotiated() -> Conv:
    conv = extended().c(ext_request(CMD.READ, 1, 0, 512))
    return conv.mark().s(chunk(1, RT.OFFSET_DATA, offset_data(0, DATA))).disc()


@sample("server.simple-reply-with-extended")
def _simple_reply_with_extended() -> Conv:
    return write(extended()).mark().s(simple(1)).disc()


@sample("server.no-simple-reply-to-read")
def _no_simple_reply_to_read() -> Conv:
    conv = ready().c(request(CMD.READ, 1, 0, 512))
    return conv.mark().s(simple(1, data=DATA)).disc()


@sample("server.structured-errors-preferred")
def _structured_errors_preferred() -> Conv:
    return write(ready()).mark().s(simple(1, error=E.EIO)).disc()


@sample("server.done-last")
def _done_last() -> Conv:
    conv = ready().c(request(CMD.READ, 1, 0, 512))
    conv.s(chunk(1, RT.OFFSET_DATA, offset_data(0, DATA)))
    return conv.mark().s(chunk(1, RT.NONE)).disc()


@sample("server.reply-flags-known")
def _reply_flags_known() -> Conv:
    conv = ready().c(request(CMD.READ, 1, 0, 512)).mark()
    return conv.s(chunk(1, RT.OFFSET_DATA, offset_data(0, DATA), flags=DONE | 0x8)).disc()


@sample("server.none-chunk-done")
def _none_chunk_done() -> Conv:
    conv = write(ready()).mark().s(chunk(1, RT.NONE, flags=0))
    return conv.s(chunk(1, RT.NONE)).disc()


@sample("server.none-chunk-length")
def _none_chunk_length() -> Conv:
    return write(ready()).mark().s(chunk(1, RT.NONE, b"xxxx")).disc()


@sample("server.offset-data-length")
def _offset_data_length() -> Conv:
    conv = ready().c(request(CMD.READ, 1, 0, 512))
    conv.mark().s(chunk(1, RT.OFFSET_DATA, offset_data(0, b""), flags=0))
    return conv.s(chunk(1, RT.OFFSET_DATA, offset_data(0, DATA))).disc()


@sample("server.offset-hole-length")
def _offset_hole_length() -> Conv:
    conv = ready().c(request(CMD.READ, 1, 0, 512))
    return conv.mark().s(chunk(1, RT.OFFSET_HOLE, offset_hole(0, 512) + b"xx")).disc()


@sample("server.hole-size-nonzero")
def _hole_size_nonzero() -> Conv:
    conv = ready().c(request(CMD.READ, 1, 0, 512))
    conv.mark().s(chunk(1, RT.OFFSET_HOLE, offset_hole(0, 0), flags=0))
    return conv.s(chunk(1, RT.OFFSET_DATA, offset_data(0, DATA))).disc()


@sample("server.content-only-for-read")
def _content_only_for_read() -> Conv:
    conv = write(ready())
    return conv.mark().s(chunk(1, RT.OFFSET_DATA, offset_data(0, DATA))).disc()


@sample("server.content-within-request")
def _content_within_request() -> Conv:
    conv = ready().c(request(CMD.READ, 1, 0, 512))
    return conv.mark().s(chunk(1, RT.OFFSET_DATA, offset_data(0, DATA + DATA))).disc()


@sample("server.content-no-overlap")
def _content_no_overlap() -> Conv:
    conv = ready().c(request(CMD.READ, 1, 0, 1024))
    conv.s(chunk(1, RT.OFFSET_DATA, offset_data(0, DATA), flags=0))
    conv.mark().s(chunk(1, RT.OFFSET_DATA, offset_data(0, DATA), flags=0))
    return conv.s(chunk(1, RT.OFFSET_DATA, offset_data(512, DATA))).disc()


@sample("server.read-full-coverage")
def _read_full_coverage() -> Conv:
    conv = ready().c(request(CMD.READ, 1, 0, 1024))
    return conv.mark().s(chunk(1, RT.OFFSET_DATA, offset_data(0, DATA))).disc()


@sample("server.df-single-content-chunk")
def _df_single_content_chunk() -> Conv:
    conv = ready().c(request(CMD.READ, 1, 0, 1024, flags=CF.DF))
    conv.s(chunk(1, RT.OFFSET_DATA, offset_data(0, DATA), flags=0))
    return conv.mark().s(chunk(1, RT.OFFSET_DATA, offset_data(512, DATA))).disc()


@sample("server.chunk-payload-max")
def _chunk_payload_max() -> Conv:
    conv = ready(block=(1, 4096, 64 * KiB), size=512 * KiB)
    conv.c(request(CMD.READ, 1, 0, 128 * KiB))
    return conv.mark().s(chunk(1, RT.OFFSET_DATA, offset_data(0, pattern(128 * KiB)))).disc()


@sample("server.extended-reply-offset")
def _extended_reply_offset() -> Conv:
    conv = extended().c(ext_request(CMD.READ, 1, 4096, 512))
    return conv.mark().s(ext_chunk(1, 0, RT.OFFSET_DATA, offset_data(4096, DATA))).disc()


@sample("server.error-chunk-nonzero")
def _error_chunk_nonzero() -> Conv:
    return write(ready()).mark().s(err(1, 0)).disc()


@sample("server.error-length")
def _error_length() -> Conv:
    return write(ready()).mark().s(chunk(1, RT.ERROR, struct.pack(">I", E.EIO))).disc()


@sample("server.error-offset-length")
def _error_offset_length() -> Conv:
    conv = write(ready()).mark()
    return conv.s(chunk(1, RT.ERROR_OFFSET, error_payload(E.EIO) + b"\0\0\0\0")).disc()


@sample("server.error-message-fits")
def _error_message_fits() -> Conv:
    conv = write(ready()).mark()
    return conv.s(chunk(1, RT.ERROR, struct.pack(">IH", E.EIO, 10) + b"abc")).disc()


@sample("server.error-message-max-length")
def _error_message_max_length() -> Conv:
    return write(ready()).mark().s(err(1, E.EIO, b"m" * 5000)).disc()


@sample("server.error-offset-within-request")
def _error_offset_within_request() -> Conv:
    conv = write(ready()).mark()
    return conv.s(chunk(1, RT.ERROR_OFFSET, error_payload(E.EIO, b"", 4096))).disc()


@sample("server.error-offset-valid-for")
def _error_offset_valid_for() -> Conv:
    conv = ready().c(request(CMD.FLUSH, 1))
    return conv.mark().s(chunk(1, RT.ERROR_OFFSET, error_payload(E.EIO, b"", 0))).disc()


@sample("server.error-once")
def _error_once() -> Conv:
    conv = write(ready()).s(chunk(1, RT.ERROR, error_payload(E.EIO), flags=0))
    return conv.mark().s(err(1, E.EIO)).disc()


@sample("server.error-offset-not-repeated")
def _error_offset_not_repeated() -> Conv:
    conv = write(ready(), data=pattern(1024))
    conv.s(chunk(1, RT.ERROR_OFFSET, error_payload(E.EIO, b"", 0), flags=0))
    return conv.mark().s(chunk(1, RT.ERROR_OFFSET, error_payload(E.EIO, b"", 0))).disc()


@sample("client.disconnect-on-unknown-chunk")
def _disconnect_on_unknown_chunk() -> Conv:
    conv = write(ready()).s(chunk(1, 3, b""))
    conv.mark().c(request(CMD.READ, 2, 0, 512))
    return conv.s(chunk(2, RT.OFFSET_DATA, offset_data(0, DATA))).disc()


# --- block status ---------------------------------------------------------------------------


@sample("client.block-status-needs-contexts")
def _block_status_needs_contexts() -> Conv:
    conv = Conv().newstyle().sr().go().mark().c(request(CMD.BLOCK_STATUS, 1, 0, 4096))
    return conv.s(err(1, E.EINVAL)).disc()


@sample("client.block-status-payload-needs-flag")
def _block_status_payload_needs_flag() -> Conv:
    conv = extended(flags=FLAGS).mark()
    body = bs_payload(SIZE, 1)
    conv.c(ext_request(CMD.BLOCK_STATUS, 1, 0, len(body), CF.PAYLOAD_LEN, body))
    return conv.s(ext_chunk(1, 0, RT.ERROR, error_payload(E.EINVAL))).disc()


@sample("client.block-status-payload-size")
def _block_status_payload_size() -> Conv:
    conv = extended().mark()
    body = bs_payload(SIZE, 1) + b"\0\0"
    conv.c(ext_request(CMD.BLOCK_STATUS, 1, 0, len(body), CF.PAYLOAD_LEN, body))
    return conv.s(ext_chunk(1, 0, RT.ERROR, error_payload(E.EINVAL))).disc()


@sample("server.block-status-payload-bad-ids")
def _block_status_payload_bad_ids() -> Conv:
    conv = extended()
    body = bs_payload(SIZE, 1, 1)
    conv.c(ext_request(CMD.BLOCK_STATUS, 1, 0, len(body), CF.PAYLOAD_LEN, body))
    return conv.mark().s(ext_chunk(1, 0, RT.BLOCK_STATUS_EXT, ext_status(1, (SIZE, 0)))).disc()


@sample("server.block-status-einval-without-context", also=["client.block-status-needs-contexts"])
def _block_status_einval_without_context() -> Conv:
    conv = Conv().newstyle().sr().go().c(request(CMD.BLOCK_STATUS, 1, 0, 4096))
    return conv.mark().s(err(1, E.EIO)).disc()


@sample("server.block-status-via-chunks")
def _block_status_via_chunks() -> Conv:
    return ready().c(request(CMD.BLOCK_STATUS, 1, 0, SIZE)).mark().s(simple(1)).disc()


@sample("server.status-chunk-type")
def _status_chunk_type() -> Conv:
    conv = extended().c(ext_request(CMD.BLOCK_STATUS, 1, 0, SIZE))
    return conv.mark().s(ext_chunk(1, 0, RT.BLOCK_STATUS, status(1, (SIZE, 0)))).disc()


def _block_status(conv: Conv, length: int = SIZE, flags: int = 0) -> Conv:
    return conv.c(request(CMD.BLOCK_STATUS, 1, 0, length, flags=flags))


@sample("server.status-one-chunk-per-context")
def _status_one_chunk_per_context() -> Conv:
    conv = _block_status(Conv().ready(BASE, BITMAP))
    conv.s(chunk(1, RT.BLOCK_STATUS, status(1, (SIZE, 0)), flags=0))
    return conv.mark().s(chunk(1, RT.BLOCK_STATUS, status(1, (SIZE, 0)))).disc()


@sample("server.status-selected-contexts-only")
def _status_selected_contexts_only() -> Conv:
    conv = _block_status(ready())
    conv.s(chunk(1, RT.BLOCK_STATUS, status(1, (SIZE, 0)), flags=0))
    return conv.mark().s(chunk(1, RT.BLOCK_STATUS, status(7, (SIZE, 0)))).disc()


@sample("server.status-chunk-length")
def _status_chunk_length() -> Conv:
    conv = _block_status(ready()).mark()
    return conv.s(chunk(1, RT.BLOCK_STATUS, status(1, (SIZE, 0)) + b"\0\0\0")).disc()


@sample("server.status-ext-chunk-length")
def _status_ext_chunk_length() -> Conv:
    conv = extended().c(ext_request(CMD.BLOCK_STATUS, 1, 0, SIZE)).mark()
    conv.s(ext_chunk(1, 0, RT.BLOCK_STATUS_EXT, ext_status(1, (SIZE, 0)) + b"\0\0\0"))
    return conv.disc()


@sample("server.status-at-least-one-descriptor")
def _status_at_least_one_descriptor() -> Conv:
    return _block_status(ready()).mark().s(chunk(1, RT.BLOCK_STATUS, status(1))).disc()


@sample("server.status-ext-count")
def _status_ext_count() -> Conv:
    conv = extended().c(ext_request(CMD.BLOCK_STATUS, 1, 0, SIZE)).mark()
    conv.s(ext_chunk(1, 0, RT.BLOCK_STATUS_EXT, ext_status(1, (SIZE, 0), count=2)))
    return conv.disc()


@sample("server.status-descriptor-nonzero")
def _status_descriptor_nonzero() -> Conv:
    conv = _block_status(ready()).mark()
    return conv.s(chunk(1, RT.BLOCK_STATUS, status(1, (0, 0), (SIZE, 3)))).disc()


@sample("server.req-one-single-descriptor")
def _req_one_single_descriptor() -> Conv:
    conv = _block_status(ready(), 8192, CF.REQ_ONE).mark()
    return conv.s(chunk(1, RT.BLOCK_STATUS, status(1, (4096, 0), (4096, 3)))).disc()


@sample("server.req-one-length")
def _req_one_length() -> Conv:
    conv = _block_status(ready(), 4096, CF.REQ_ONE).mark()
    return conv.s(chunk(1, RT.BLOCK_STATUS, status(1, (8192, 0)))).disc()


@sample("server.status-sum-below-length")
def _status_sum_below_length() -> Conv:
    conv = _block_status(ready(), 4096).mark()
    return conv.s(chunk(1, RT.BLOCK_STATUS, status(1, (4096, 0), (4096, 3)))).disc()


@sample("server.status-descriptor-min-block")
def _status_descriptor_min_block() -> Conv:
    conv = _block_status(ready(block=(512, 4096, 32 * MiB))).mark()
    return conv.s(chunk(1, RT.BLOCK_STATUS, status(1, (100, 0), (SIZE - 100, 3)))).disc()


@sample("server.status-upper-bits-zero")
def _status_upper_bits_zero() -> Conv:
    conv = extended().c(ext_request(CMD.BLOCK_STATUS, 1, 0, SIZE)).mark()
    conv.s(ext_chunk(1, 0, RT.BLOCK_STATUS_EXT, ext_status(1, (SIZE, 1 << 33))))
    return conv.disc()


@sample("server.status-extents-cap")
def _status_extents_cap() -> Conv:
    # The test lowers the 2^20 cap (see PATCHES): 2^20 + 1 descriptors would make a 8 MiB chunk.
    conv = _block_status(ready()).mark()
    return conv.s(chunk(1, RT.BLOCK_STATUS, status(1, *[(4096, 0)] * 5))).disc()


@sample("server.base-allocation-reserved-bits")
def _base_allocation_reserved_bits() -> Conv:
    return _block_status(ready()).mark().s(chunk(1, RT.BLOCK_STATUS, status(1, (SIZE, 4)))).disc()


# --- error values ----------------------------------------------------------------------------


@sample("server.error-values-defined")
def _error_values_defined() -> Conv:
    return write(ready()).mark().s(err(1, 2)).disc()  # ENOENT is not an NBD error


@sample("server.read-only-eperm")
def _read_only_eperm() -> Conv:
    return write(ready(flags=FLAGS | TF.READ_ONLY)).mark().s(err(1, E.EIO)).disc()


@sample("server.enospc-write-beyond-end", also=["client.request-within-export"])
def _enospc_write_beyond_end() -> Conv:
    return write(ready(), offset=SIZE - 256).mark().s(err(1, E.EIO)).disc()


@sample("server.einval-beyond-end-or-unaligned", also=["client.request-within-export"])
def _einval_beyond_end_or_unaligned() -> Conv:
    conv = ready().c(request(CMD.READ, 1, SIZE - 256, 512))
    return conv.mark().s(err(1, E.EIO)).disc()


@sample("server.einval-unknown-command", also=["client.no-unknown-commands"])
def _einval_unknown_command() -> Conv:
    return ready().c(request(42, 1)).mark().s(err(1, E.EIO)).disc()


@sample("server.einval-unknown-flag", also=["client.command-flag-documented"])
def _einval_unknown_flag() -> Conv:
    conv = ready().c(request(CMD.READ, 1, 0, 512, flags=0x100))
    return conv.mark().s(chunk(1, RT.OFFSET_DATA, offset_data(0, DATA))).disc()


@sample("server.einval-inapplicable-flag", also=["client.command-flag-documented"])
def _einval_inapplicable_flag() -> Conv:
    conv = ready().c(request(CMD.READ, 1, 0, 512, flags=CF.NO_HOLE))
    return conv.mark().s(chunk(1, RT.OFFSET_DATA, offset_data(0, DATA))).disc()


@sample("server.eoverflow-only-documented")
def _eoverflow_only_documented() -> Conv:
    return write(ready()).mark().s(err(1, E.EOVERFLOW)).disc()


@sample("server.enotsup-only-fast-zero")
def _enotsup_only_fast_zero() -> Conv:
    return write(ready()).mark().s(err(1, E.ENOTSUP)).disc()


@sample("server.no-enotsup-without-fast-zero")
def _no_enotsup_without_fast_zero() -> Conv:
    conv = ready().c(request(CMD.WRITE_ZEROES, 1, 0, 4096))
    return conv.mark().s(err(1, E.ENOTSUP)).disc()


@sample("server.no-enomem")
def _no_enomem() -> Conv:
    return write(ready()).mark().s(err(1, E.ENOMEM)).disc()


# --- block size constraints --------------------------------------------------------------------


@sample("server.block-size-minimum")
def _block_size_minimum() -> Conv:
    return Conv().newstyle().sr().go(block=(128 * KiB, 128 * KiB, 32 * MiB), mark="block").disc()


@sample("server.block-size-preferred")
def _block_size_preferred() -> Conv:
    return Conv().newstyle().sr().go(block=(512, 1000, 32 * MiB), mark="block").disc()


@sample("server.block-size-maximum")
def _block_size_maximum() -> Conv:
    conv = Conv().newstyle().sr()
    return conv.go(block=(512, 4096, 2048), size=512 * KiB, mark="block").disc()


@sample("server.export-size-multiple-of-minimum")
def _export_size_multiple_of_minimum() -> Conv:
    conv = Conv().newstyle().sr()
    return conv.go(block=(512, 4096, 32 * MiB), size=SIZE + 1, mark="block").disc()


@sample("server.maximum-payload-at-least-1m")
def _maximum_payload_at_least_1m() -> Conv:
    return Conv().newstyle().sr().go(block=(512, 4096, 64 * KiB), mark="block").disc()


# --- baseline and the session as a whole (rules_baseline.py, rules_session.py) ------------------


def _export_name_reply(conv: Conv) -> bytes:
    """The export-name reply without the 124 zeroes (the client set NBD_FLAG_C_NO_ZEROES)."""
    return struct.pack(">QH", SIZE, conv.default_flags())


@sample("server.baseline-fixed-newstyle")
def _baseline_fixed_newstyle() -> Conv:
    conv = Conv().mark().newstyle(handshake_flags=2, client_flags=2)
    return conv.c(option(O.EXPORT_NAME, b"disk")).s(_export_name_reply(conv)).disc()


@sample("server.baseline-info-go")
def _baseline_info_go() -> Conv:
    conv = Conv().newstyle().c(option(O.INFO, name_and_infos(b"disk")))
    return conv.mark().s(reply(O.INFO, R.ERR_UNSUP)).c(option(O.ABORT)).s(reply(O.ABORT, R.ACK))


@sample("server.baseline-list")
def _baseline_list() -> Conv:
    conv = Conv().newstyle().c(option(O.LIST))
    return conv.mark().s(reply(O.LIST, R.ERR_UNSUP)).c(option(O.ABORT)).s(reply(O.ABORT, R.ACK))


@sample("client.go-in-preference")
def _go_in_preference() -> Conv:
    conv = Conv().newstyle().mark().c(option(O.EXPORT_NAME, b"disk"))
    return conv.s(_export_name_reply(conv)).disc()


@sample("server.read-answered")
def _read_answered() -> Conv:
    return ready().mark().c(request(CMD.READ, 1, 0, 512)).wait(2.0).fin("client")


@sample("server.simple-reply-to-all")
def _simple_reply_to_all() -> Conv:
    conv = Conv().newstyle().go()
    return conv.mark().c(request(CMD.FLUSH, 1)).wait(2.0).fin("client")


@sample("server.simple-read-data-length")
def _simple_read_data_length() -> Conv:
    conv = Conv().newstyle().go().c(request(CMD.READ, 1, 0, 4096))
    return conv.mark().s(simple(1, data=pattern(2048))).wait(2.0).fin("client")


# --- framing (resync) -----------------------------------------------------------------------


@sample("client.write-data-follows")
def _write_data_follows() -> Conv:
    # The header announces 512 bytes; the next request follows at once.
    return ready().mark().c(request(CMD.WRITE, 1, 0, 512)).s(simple(1)).disc()


@sample("server.no-hard-disconnect-in-options", also=["server.list-replies"])
def _no_hard_disconnect_in_options() -> Conv:
    return Conv().newstyle().c(option(O.LIST)).mark().fin("server")


@sample("client.abort-before-close")
def _abort_before_close() -> Conv:
    conv = Conv().newstyle().c(option(O.LIST))
    conv.s(reply(O.LIST, R.SERVER, struct.pack(">I", 4) + b"disk")).s(reply(O.LIST, R.ACK))
    return conv.mark().fin("client")


@sample("server.no-hard-disconnect-in-transmission", also=["server.read-answered"])
def _no_hard_disconnect_in_transmission() -> Conv:
    return ready().c(request(CMD.READ, 1, 0, 512)).mark().fin("server")


@sample("client.disc-before-close")
def _disc_before_close() -> Conv:
    return write(ready()).s(simple(1)).mark().fin("client")


PATCHES = {"server.status-extents-cap": ("MAX_EXTENTS_PER_CHUNK", 4)}
"""Constants a sample needs lowered (``harness.protocol.constants`` attribute, value)."""


# --- the export's content (rules_semantics) --------------------------------------------------


def _read(conv: Conv, cookie: int, offset: int = 0, length: int = 512) -> Conv:
    return conv.c(request(CMD.READ, cookie, offset, length))


@sample("server.write-writes-data")
def _write_writes_data() -> Conv:
    conv = _read(write(ready()).s(simple(1)), 2).mark()
    return conv.s(chunk(2, RT.OFFSET_DATA, offset_data(0, pattern(512, seed=9)))).disc()


@sample("server.write-zeroes-zeroes")
def _write_zeroes_zeroes() -> Conv:
    conv = ready().c(request(CMD.WRITE_ZEROES, 1, 0, 512)).s(simple(1))
    return _read(conv, 2).mark().s(chunk(2, RT.OFFSET_DATA, offset_data(0, DATA))).disc()


@sample("server.cache-keeps-data")
def _cache_keeps_data() -> Conv:
    conv = write(ready()).s(simple(1)).c(request(CMD.CACHE, 2, 0, 512)).s(simple(2))
    return _read(conv, 3).mark().s(chunk(3, RT.OFFSET_HOLE, offset_hole(0, 512))).disc()


@sample("server.status-zero-reads-zero")
def _status_zero_reads_zero() -> Conv:
    conv = ready().c(request(CMD.BLOCK_STATUS, 1, 0, 4096))
    conv.s(chunk(1, RT.BLOCK_STATUS, status(1, (4096, c.StateFlag.HOLE | c.StateFlag.ZERO))))
    return _read(conv, 2).mark().s(chunk(2, RT.OFFSET_DATA, offset_data(0, DATA))).disc()


@sample("server.fast-zero-refusal-keeps-data")
def _fast_zero_refusal_keeps_data() -> Conv:
    conv = write(ready()).s(simple(1))
    conv.c(request(CMD.WRITE_ZEROES, 2, 0, 512, flags=CF.FAST_ZERO)).s(err(2, E.ENOTSUP))
    return _read(conv, 3).mark().s(chunk(3, RT.OFFSET_HOLE, offset_hole(0, 512))).disc()
