"""Session-level rules: where the spec allows a close or a silence, they stay quiet.

Each breach sample (tests/_conformance_breaches.py) shows a rule firing; these show the
circumstances the spec sets out where the same shapes are no breach, and how the
dissector records the end of each direction.
"""

from __future__ import annotations

import struct
from pathlib import Path

from _conformance_samples import Conv, greeting, name_and_infos, option, pattern, reply, request

from harness.conformance import check_capture
from harness.conformance._silence import PATIENCE
from harness.dissect import decode_capture
from harness.protocol import constants as c

O, R, CMD = c.Opt, c.Rep, c.Cmd  # noqa: E741


def rules_of(conv: Conv, tmp_path: Path) -> list[tuple[str, int]]:
    path = tmp_path / "session.pcapng"
    conv.write(path)
    return [(f.rule, f.frame) for f in check_capture(path)]


def test_the_end_of_each_direction_is_recorded(tmp_path: Path) -> None:
    conv = Conv().ready().c(request(CMD.READ, 1, 0, 512)).wait(2.0).fin("server")
    frames = conv.write(tmp_path / "end.pcapng")
    [session] = decode_capture(tmp_path / "end.pcapng").sessions
    server_end, client_end = session.ends["server"], session.ends["client"]
    assert server_end.frame == frames[-1] and not server_end.reset
    assert client_end.frame > server_end.frame  # the client's FIN answers it
    assert server_end.offset == session.bytes_total["server"]
    assert client_end.time - server_end.time >= 0.9  # stream.close one second later
    # A capture that stops with the connection open records no end.
    Conv().ready().write(tmp_path / "open.pcapng")
    assert decode_capture(tmp_path / "open.pcapng").sessions[0].ends == {}


def test_a_capture_stopped_while_connected_proves_no_silence(tmp_path: Path) -> None:
    assert rules_of(Conv().ready().c(request(CMD.READ, 1, 0, 512)), tmp_path) == []


def test_a_client_that_gives_up_at_once_is_the_one_at_fault(tmp_path: Path) -> None:
    conv = Conv().ready().c(request(CMD.READ, 1, 0, 512)).wait(PATIENCE / 10).fin("client")
    assert [rule for rule, _ in rules_of(conv, tmp_path)] == ["client.disc-before-close"]


def test_after_a_clients_must_breach_the_server_may_close_or_stay_silent(tmp_path: Path) -> None:
    past_end = request(CMD.READ, 1, 1 << 20, 4096)  # the export is 1 MiB
    conv = Conv().ready().c(past_end).fin("server")
    assert [rule for rule, _ in rules_of(conv, tmp_path)] == ["client.request-within-export"]
    # Not answering is the server's right then; the client that closes instead of sending
    # NBD_CMD_DISC still initiates a hard disconnect of its own.
    conv = Conv().ready().c(past_end).wait(2.0).fin("client")
    assert [rule for rule, _ in rules_of(conv, tmp_path)] == [
        "client.request-within-export",
        "client.disc-before-close",
    ]


def test_after_a_servers_must_breach_the_client_may_close(tmp_path: Path) -> None:
    conv = Conv().ready().c(request(CMD.READ, 1, 0, 512))
    conv.s(struct.pack(">IIQ", c.SIMPLE_REPLY_MAGIC, 0, 1) + pattern(512))  # simple reply
    assert [rule for rule, _ in rules_of(conv.fin("client"), tmp_path)] == [
        "server.no-simple-reply-to-read"
    ]


def test_soft_disconnects_and_the_closes_the_spec_sets_out(tmp_path: Path) -> None:
    # NBD_OPT_ABORT, then either side closes.
    for closer in ("client", "server"):
        conv = Conv().newstyle().c(option(O.ABORT)).s(reply(O.ABORT, R.ACK)).fin(closer)
        assert rules_of(conv, tmp_path) == [], closer
    # NBD_CMD_DISC, the server closes.
    assert rules_of(Conv().ready().disc().fin("server"), tmp_path) == []
    # NBD_OPT_EXPORT_NAME for an export the server cannot serve: it must close.
    conv = Conv().newstyle().c(option(O.INFO, name_and_infos(b"disk")))
    conv.s(reply(O.INFO, R.ERR_UNKNOWN)).c(option(O.EXPORT_NAME, b"nope")).fin("server")
    assert rules_of(conv, tmp_path) == []
    # A server with nothing in flight may be shutting down.
    assert rules_of(Conv().ready().fin("server"), tmp_path) == []
    # After NBD_ESHUTDOWN, a server closes.
    conv = Conv().ready().c(request(CMD.READ, 1, 0, 512))
    conv.s(struct.pack(">IHHQI", c.STRUCTURED_REPLY_MAGIC, c.ReplyFlag.DONE, c.ReplyType.ERROR,
                       1, 6) + struct.pack(">IH", c.Errno.ESHUTDOWN, 0))
    assert rules_of(conv.fin("server"), tmp_path) == []


def test_a_client_before_its_flags_or_after_starttls_is_not_judged(tmp_path: Path) -> None:
    assert rules_of(Conv().s(greeting(3)).fin("client"), tmp_path) == []
    conv = Conv().newstyle().c(option(O.STARTTLS)).s(reply(O.STARTTLS, R.ERR_POLICY))
    assert rules_of(conv.fin("client"), tmp_path) == []


def test_go_in_preference_judges_only_clients_that_never_tried_info_or_go(
    tmp_path: Path,
) -> None:
    conv = Conv().newstyle(handshake_flags=1, client_flags=1)
    conv.c(option(O.INFO, name_and_infos(b"disk"))).s(reply(O.INFO, R.ERR_UNKNOWN))
    conv.c(option(O.EXPORT_NAME, b"disk"))
    conv.s(struct.pack(">QH", 1 << 20, 1) + bytes(124))
    assert rules_of(conv.disc(), tmp_path) == []


def test_baseline_options_refused_for_policy_are_no_breach(tmp_path: Path) -> None:
    conv = Conv().newstyle().c(option(O.LIST)).s(reply(O.LIST, R.ERR_POLICY))
    conv.c(option(O.GO, name_and_infos(b"disk"))).s(reply(O.GO, R.ERR_UNKNOWN))
    conv.c(option(O.ABORT)).s(reply(O.ABORT, R.ACK))
    assert rules_of(conv, tmp_path) == []
