"""Rules of the handshake: greetings, handshake and client flags, EXPORT_NAME, ABORT.

Sections "Oldstyle negotiation", "Newstyle negotiation", "Fixed newstyle
negotiation", "Termination of the session during option haggling",
"Handshake flags" and "Client flags".
"""

from __future__ import annotations

from collections.abc import Iterator

from harness.conformance._rule import Hit, rule
from harness.conformance._view import (
    SessionView,
    bad_magic,
    follows,
    found_zeroes,
    undecoded_after,
    undecoded_at,
)
from harness.dissect.model import CLIENT, SERVER
from harness.protocol import constants as c


def _bad_client_flags(view: SessionView) -> str | None:
    """Why the client flags are unacceptable to the server, or None."""
    flags = view.client_flag_bits
    if flags & ~c.KNOWN_CLIENT_FLAGS:
        return f"unknown client flag bits {flags & ~c.KNOWN_CLIENT_FLAGS:#x}"
    if flags & c.ClientFlag.C_NO_ZEROES and not view.handshake_flags & c.HandshakeFlag.NO_ZEROES:
        return "NBD_FLAG_C_NO_ZEROES although the server did not offer NBD_FLAG_NO_ZEROES"
    return None


@rule(id="server.greeting-magic")
def greeting_magic(view: SessionView) -> Iterator[Hit]:
    """NBDMAGIC is followed by IHAVEOPT (newstyle) or cliserv_magic (oldstyle)."""
    for region in view.undecoded(SERVER):
        if bad_magic(region, "greeting-magic"):
            yield Hit(
                region,
                f"the greeting's second magic is neither IHAVEOPT nor "
                f"cliserv_magic ({region.reason})",
            )


@rule(id="server.handshake-flags-known")
def handshake_flags_known(view: SessionView) -> Iterator[Hit]:
    """The newstyle greeting sets no handshake flag besides FIXED_NEWSTYLE and NO_ZEROES."""
    greeting = view.greeting
    if greeting is not None and greeting.kind == "newstyle-greeting":
        unknown = view.handshake_flags & ~c.KNOWN_HANDSHAKE_FLAGS
        if unknown:
            yield Hit(
                greeting,
                f"handshake flags {view.handshake_flags:#06x} set unknown bits {unknown:#06x}",
            )


@rule(id="server.oldstyle-no-handshake-flags")
def oldstyle_no_handshake_flags(view: SessionView) -> Iterator[Hit]:
    """The oldstyle greeting's 32-bit flags carry no handshake flag (upper 16 bits)."""
    greeting = view.greeting
    if greeting is not None and greeting.kind == "oldstyle-greeting":
        high = int(greeting.fields.get("flags_high", 0))
        if high & c.KNOWN_HANDSHAKE_FLAGS:
            yield Hit(
                greeting, f"oldstyle flags set handshake flag bits {high:#06x} in the upper 16 bits"
            )


@rule(id="client.client-flags-known")
def client_flags_known(view: SessionView) -> Iterator[Hit]:
    """The client flags hold only C_FIXED_NEWSTYLE and C_NO_ZEROES."""
    if view.client_flags is not None and view.client_flag_bits & ~c.KNOWN_CLIENT_FLAGS:
        unknown = view.client_flag_bits & ~c.KNOWN_CLIENT_FLAGS
        yield Hit(
            view.client_flags,
            f"client flags {view.client_flag_bits:#010x} set unknown bits {unknown:#x}",
        )


@rule(id="client.no-zeroes-only-if-offered")
def no_zeroes_only_if_offered(view: SessionView) -> Iterator[Hit]:
    """NBD_FLAG_C_NO_ZEROES only when the server offered NBD_FLAG_NO_ZEROES."""
    if (
        view.client_flags is not None
        and view.client_flag_bits & c.ClientFlag.C_NO_ZEROES
        and not view.handshake_flags & c.HandshakeFlag.NO_ZEROES
    ):
        yield Hit(
            view.client_flags,
            "NBD_FLAG_C_NO_ZEROES set, but the server's handshake flags lack NBD_FLAG_NO_ZEROES",
        )


@rule(id="server.drop-on-bad-client-flags")
def drop_on_bad_client_flags(view: SessionView) -> Iterator[Hit]:
    """After unacceptable client flags the server sends nothing more."""
    if view.client_flags is None:
        return
    why = _bad_client_flags(view)
    if why is None:
        return
    later = follows(view, view.client_flags, SERVER)
    if later:
        yield Hit(later[0], f"the server went on ({later[0].name}) after {why}")


@rule(id="client.fixed-newstyle-flag")
def fixed_newstyle_flag(view: SessionView) -> Iterator[Hit]:
    """A server offering fixed newstyle gets NBD_FLAG_C_FIXED_NEWSTYLE back."""
    if (
        view.client_flags is not None
        and view.handshake_flags & c.HandshakeFlag.FIXED_NEWSTYLE
        and not view.client_flag_bits & c.ClientFlag.C_FIXED_NEWSTYLE
    ):
        yield Hit(
            view.client_flags,
            "the server offered NBD_FLAG_FIXED_NEWSTYLE but the "
            "client flags lack NBD_FLAG_C_FIXED_NEWSTYLE",
        )


@rule(id="client.export-name-only-in-nonfixed")
def export_name_only_in_nonfixed(view: SessionView) -> Iterator[Hit]:
    """With a server that did not offer fixed newstyle, the only option is EXPORT_NAME."""
    if view.greeting is None or view.greeting.kind != "newstyle-greeting":
        return
    if view.handshake_flags & c.HandshakeFlag.FIXED_NEWSTYLE:
        return
    for exchange in view.options:
        if exchange.code != c.Opt.EXPORT_NAME:
            yield Hit(
                exchange.option,
                f"{exchange.option.name} sent to a server that did not offer fixed newstyle",
            )


@rule(id="server.fixed-newstyle-for-options")
def fixed_newstyle_for_options(view: SessionView) -> Iterator[Hit]:
    """A server that answers options other than EXPORT_NAME offered fixed newstyle."""
    if view.greeting is None or view.greeting.kind != "newstyle-greeting":
        return
    if view.handshake_flags & c.HandshakeFlag.FIXED_NEWSTYLE:
        return
    for exchange in view.options:
        if exchange.code != c.Opt.EXPORT_NAME and exchange.replies:
            yield Hit(
                exchange.replies[0],
                f"answers {exchange.option.name} without having offered NBD_FLAG_FIXED_NEWSTYLE",
            )


@rule(id="server.export-name-reply-zeroes")
def export_name_reply_zeroes(view: SessionView) -> Iterator[Hit]:
    """Without NO_ZEROES the export-name reply ends with 124 zero bytes."""
    reply = view.export_name_reply
    if reply is None or view.client_flag_bits & c.ClientFlag.C_NO_ZEROES:
        return
    zeroes = reply.fields.get("zeroes", b"")
    if zeroes != bytes(c.EXPORT_NAME_REPLY_ZEROES):
        nonzero = sum(1 for byte in zeroes if byte)
        yield Hit(
            reply, f"the 124 reserved bytes of the export-name reply hold {nonzero} nonzero byte(s)"
        )


@rule(id="server.no-zeroes-honoured")
def no_zeroes_honoured(view: SessionView) -> Iterator[Hit]:
    """With NO_ZEROES negotiated, no zero padding follows the export-name reply."""
    reply = view.export_name_reply
    if reply is None or not view.client_flag_bits & c.ClientFlag.C_NO_ZEROES:
        return
    region = undecoded_at(view, reply)
    if region is not None and found_zeroes(region):
        yield Hit(
            region,
            "zero bytes follow the export-name reply although the client set NBD_FLAG_C_NO_ZEROES",
        )


@rule(id="server.export-name-no-option-reply")
def export_name_no_option_reply(view: SessionView) -> Iterator[Hit]:
    """NBD_OPT_EXPORT_NAME gets the export-name reply or a closed connection, never an
    option reply."""
    for reply in view.messages_of("option-reply"):
        if reply.direction == SERVER and reply.fields.get("option") == c.Opt.EXPORT_NAME:
            yield Hit(
                reply,
                f"{reply.name} sent in answer to NBD_OPT_EXPORT_NAME, which has no option replies",
            )


@rule(id="client.abort-then-close")
def abort_then_close(view: SessionView) -> Iterator[Hit]:
    """After NBD_OPT_ABORT the client sends nothing more."""
    for exchange in view.options:
        if exchange.code != c.Opt.ABORT:
            continue
        later = follows(view, exchange.option, CLIENT)
        if later:
            yield Hit(later[0], f"{later[0].name} sent after NBD_OPT_ABORT")
        else:
            for region in undecoded_after(view, exchange.option)[:1]:
                yield Hit(region, f"{region.length} more byte(s) sent after NBD_OPT_ABORT")
        return


@rule(id="client.soft-disconnect-on-err-shutdown")
def soft_disconnect_on_err_shutdown(view: SessionView) -> Iterator[Hit]:
    """After NBD_REP_ERR_SHUTDOWN the client's next option is NBD_OPT_ABORT."""
    for exchange in view.options:
        final = exchange.final
        if final is None or exchange.final_type != c.Rep.ERR_SHUTDOWN:
            continue
        later = [m for m in follows(view, final, CLIENT) if m.kind == "option"]
        if later and later[0].fields.get("option") != c.Opt.ABORT:
            yield Hit(
                later[0],
                f"{later[0].name} sent after NBD_REP_ERR_SHUTDOWN instead of NBD_OPT_ABORT",
            )
        return


@rule(id="server.abort-ack")
def abort_ack(view: SessionView) -> Iterator[Hit]:
    """A reply to NBD_OPT_ABORT, if sent, is NBD_REP_ACK."""
    for exchange in view.options:
        if exchange.code == c.Opt.ABORT and exchange.replies:
            first = exchange.replies[0]
            if first.fields.get("reply_type") != c.Rep.ACK:
                yield Hit(first, f"NBD_OPT_ABORT answered with {first.name}")
