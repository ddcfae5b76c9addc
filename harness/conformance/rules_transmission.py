"""Rules of the transmission phase: transmission flags, requests, cookies, DISC, sizes.

Sections "Transmission", "Request message", "Terminating the transmission
phase", "Transmission flags", "Command flags", "Request types", "Size
constraints" and "Baseline".  Replies are in :mod:`rules_structured`,
:mod:`rules_block_status` and :mod:`rules_errors`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from harness.conformance._rule import Hit, rule
from harness.conformance._view import (
    SessionView,
    Transaction,
    bad_magic,
    follows,
    found_zeroes,
    undecoded_after,
    undecoded_at,
)
from harness.dissect.model import CLIENT, SERVER, Undecoded, WireMessage
from harness.protocol import constants as c
from harness.protocol.state import Negotiated

TF = c.TransmissionFlag
CF = c.CmdFlag
_KNOWN_COMMANDS = frozenset(int(cmd) for cmd in c.Cmd)
_PAYLOAD_LEN = int(CF.PAYLOAD_LEN)  # a plain int: IntFlag's own & is slow, used per request


@dataclass(frozen=True)
class _Advertised:
    """Transmission flags as one message advertised them, and what was negotiated then."""

    message: WireMessage
    flags: int
    negotiated: Negotiated
    go: bool


def _advertised(view: SessionView) -> Iterator[_Advertised]:
    """Every place the server sent transmission flags."""
    for exchange in view.options:
        if exchange.code not in (c.Opt.INFO, c.Opt.GO):
            continue
        for reply in exchange.infos():
            if reply.fields.get("info_type") == c.Info.EXPORT and "transmission_flags" in (
                reply.fields
            ):
                yield _Advertised(
                    reply,
                    int(reply.fields["transmission_flags"]),
                    exchange.before,
                    exchange.code == c.Opt.GO,
                )
    reply = view.export_name_reply
    if reply is not None and "transmission_flags" in reply.fields:
        yield _Advertised(
            reply,
            int(reply.fields["transmission_flags"]),
            view.transmission.negotiated,
            True,
        )
    greeting = view.greeting
    if greeting is not None and greeting.kind == "oldstyle-greeting":
        yield _Advertised(
            greeting, int(greeting.fields.get("transmission_flags", 0)), Negotiated(), True
        )


def _requests(view: SessionView, *commands: int) -> Sequence[Transaction]:
    """Requests (of ``commands``) sent in a transmission phase whose flags are known."""
    if view.transmission.flags is None:
        return ()
    return view.transactions_of(*commands)


def _command_name(transaction: Transaction) -> str:
    return transaction.name


# --- magic numbers ---------------------------------------------------------------


@rule(id="client.request-magic", midstream=True)
def request_magic(view: SessionView) -> Iterator[Hit]:
    """Every request starts with NBD_REQUEST_MAGIC (or the extended request magic)."""
    for region in view.undecoded(CLIENT):
        if bad_magic(region, "request") and not _option_after_go(view, region):
            yield Hit(region, f"request without a request magic ({region.reason})")


_IHAVEOPT_HIGH = c.IHAVEOPT >> 32  # what a request-magic reader sees of IHAVEOPT


def _option_after_go(view: SessionView, region: Undecoded) -> bool:
    """The client's transmission bytes start with IHAVEOPT right where the handshake ended."""
    go = view.transmission.go
    return (
        go is not None
        and bad_magic(region, "request")
        and region.found_magic == _IHAVEOPT_HIGH
        and region.offset == go.option.offset + go.option.length
    )


@rule(id="client.no-options-after-go")
def no_options_after_go(view: SessionView) -> Iterator[Hit]:
    """After NBD_REP_ACK to NBD_OPT_GO the client sends requests, not options."""
    for region in view.undecoded(CLIENT):
        if _option_after_go(view, region):
            yield Hit(region, "an option (IHAVEOPT) sent after NBD_OPT_GO succeeded")


def _after_handshake(view: SessionView) -> set[int]:
    """Server stream offsets right after the message that ended the handshake."""
    entered = view.transmission.entered_by
    if entered is None or entered.kind == "oldstyle-greeting":
        return set()
    return {entered.offset + entered.length}


@rule(id="server.reply-magic", midstream=True)
def reply_magic(view: SessionView) -> Iterator[Hit]:
    """Every reply starts with the simple, structured or extended reply magic."""
    skip = _after_handshake(view)
    for region in view.undecoded(SERVER):
        if bad_magic(region, "reply"):
            if region.offset in skip and found_zeroes(region):
                continue  # padding after the end of the handshake: its own rules
            yield Hit(region, f"reply without a reply magic ({region.reason})")


@rule(id="server.no-padding-after-go")
def no_padding_after_go(view: SessionView) -> Iterator[Hit]:
    """No zero bytes follow the NBD_REP_ACK that ends a successful NBD_OPT_GO."""
    go = view.transmission.go
    if go is None or go.final is None:
        return
    region = undecoded_at(view, go.final)
    if region is not None and found_zeroes(region):
        yield Hit(region, "zero padding after the NBD_REP_ACK to NBD_OPT_GO")


# --- transmission flags -------------------------------------------------------------


@rule(id="server.has-flags")
def has_flags(view: SessionView) -> Iterator[Hit]:
    """Every set of transmission flags has NBD_FLAG_HAS_FLAGS."""
    for advertised in _advertised(view):
        if not advertised.flags & TF.HAS_FLAGS:
            yield Hit(
                advertised.message,
                f"transmission flags {advertised.flags:#06x} lack NBD_FLAG_HAS_FLAGS",
            )


@rule(id="server.df-needs-structured")
def df_needs_structured(view: SessionView) -> Iterator[Hit]:
    """NBD_FLAG_SEND_DF only once structured replies or extended headers are negotiated."""
    for advertised in _advertised(view):
        if advertised.flags & TF.SEND_DF and not advertised.negotiated.replies_with_chunks:
            yield Hit(
                advertised.message,
                "NBD_FLAG_SEND_DF set without structured replies or extended headers",
            )


@rule(id="server.fast-zero-needs-write-zeroes")
def fast_zero_needs_write_zeroes(view: SessionView) -> Iterator[Hit]:
    """NBD_FLAG_SEND_FAST_ZERO only with NBD_FLAG_SEND_WRITE_ZEROES."""
    for advertised in _advertised(view):
        if advertised.flags & TF.SEND_FAST_ZERO and not advertised.flags & TF.SEND_WRITE_ZEROES:
            yield Hit(
                advertised.message, "NBD_FLAG_SEND_FAST_ZERO set without NBD_FLAG_SEND_WRITE_ZEROES"
            )


@rule(id="server.block-status-payload-needs-extended")
def block_status_payload_needs_extended(view: SessionView) -> Iterator[Hit]:
    """NBD_FLAG_BLOCK_STATUS_PAYLOAD only with extended headers."""
    for advertised in _advertised(view):
        extended = advertised.negotiated.extended_headers
        if advertised.flags & TF.BLOCK_STATUS_PAYLOAD and not extended:
            yield Hit(
                advertised.message, "NBD_FLAG_BLOCK_STATUS_PAYLOAD set without extended headers"
            )


@rule(id="server.block-status-payload-needs-contexts")
def block_status_payload_needs_contexts(view: SessionView) -> Iterator[Hit]:
    """NBD_FLAG_BLOCK_STATUS_PAYLOAD in the GO reply only when contexts were selected."""
    transmission = view.transmission
    if transmission.go is None or transmission.contexts:
        return
    for advertised in _advertised(view):
        if (
            advertised.go
            and advertised.message.option is transmission.go.option
            and advertised.flags & TF.BLOCK_STATUS_PAYLOAD
            and advertised.negotiated.extended_headers
        ):
            yield Hit(
                advertised.message,
                "NBD_FLAG_BLOCK_STATUS_PAYLOAD advertised to a client "
                "that selected no metadata context",
            )


# --- commands and flags used only when advertised ------------------------------------


def _needs_tflag(view: SessionView, command: int, tflag: int, what: str) -> Iterator[Hit]:
    if view.transmission.flags is None or view.transmission.has(tflag):
        return
    for transaction in view.transactions_of(command):
        yield Hit(
            transaction.request,
            f"{what} sent although {c.spec_name(TF(tflag))} was not advertised",
        )


@rule(id="client.flush-needs-send-flush")
def flush_needs_send_flush(view: SessionView) -> Iterator[Hit]:
    """NBD_CMD_FLUSH only when NBD_FLAG_SEND_FLUSH was advertised."""
    yield from _needs_tflag(view, c.Cmd.FLUSH, TF.SEND_FLUSH, "NBD_CMD_FLUSH")


@rule(id="client.trim-needs-send-trim")
def trim_needs_send_trim(view: SessionView) -> Iterator[Hit]:
    """NBD_CMD_TRIM only when NBD_FLAG_SEND_TRIM was advertised."""
    yield from _needs_tflag(view, c.Cmd.TRIM, TF.SEND_TRIM, "NBD_CMD_TRIM")


@rule(id="client.write-zeroes-needs-send-write-zeroes")
def write_zeroes_needs_flag(view: SessionView) -> Iterator[Hit]:
    """NBD_CMD_WRITE_ZEROES only when NBD_FLAG_SEND_WRITE_ZEROES was advertised."""
    yield from _needs_tflag(view, c.Cmd.WRITE_ZEROES, TF.SEND_WRITE_ZEROES, "NBD_CMD_WRITE_ZEROES")


def _flag_needs_tflag(view: SessionView, flag: int, tflag: int) -> Iterator[Hit]:
    if view.transmission.flags is None or view.transmission.has(tflag):
        return
    bit = int(flag)  # a plain int: IntFlag's own & is slow, and this runs per request
    for transaction in view.transactions:
        if transaction.flags & bit:
            yield Hit(
                transaction.request,
                f"{_command_name(transaction)} with "
                f"{c.spec_name(CF(flag))} although "
                f"{c.spec_name(TF(tflag))} was not advertised",
            )


@rule(id="client.fua-needs-send-fua")
def fua_needs_send_fua(view: SessionView) -> Iterator[Hit]:
    """NBD_CMD_FLAG_FUA (exposed by NBD_FLAG_SEND_FUA) only when advertised."""
    yield from _flag_needs_tflag(view, CF.FUA, TF.SEND_FUA)


@rule(id="client.df-needs-send-df")
def df_needs_send_df(view: SessionView) -> Iterator[Hit]:
    """NBD_CMD_FLAG_DF only when NBD_FLAG_SEND_DF was advertised."""
    yield from _flag_needs_tflag(view, CF.DF, TF.SEND_DF)


@rule(id="client.fast-zero-needs-send-fast-zero")
def fast_zero_needs_flag(view: SessionView) -> Iterator[Hit]:
    """NBD_CMD_FLAG_FAST_ZERO only when NBD_FLAG_SEND_FAST_ZERO was advertised."""
    yield from _flag_needs_tflag(view, CF.FAST_ZERO, TF.SEND_FAST_ZERO)


@rule(id="client.command-flag-documented", midstream=True)
def command_flag_documented(view: SessionView) -> Iterator[Hit]:
    """Each command carries only the flags documented for it."""
    for transaction in view.transactions:
        allowed = c.CMD_ALLOWED_FLAGS.get(transaction.command)
        if allowed is None:
            continue  # unknown commands: their own rule
        extra = transaction.flags & ~int(allowed)
        if extra:
            yield Hit(
                transaction.request,
                f"{_command_name(transaction)} with flag bits "
                f"{c.spec_name(CF(extra))} not documented for it",
            )


@rule(id="client.no-unknown-commands", midstream=True)
def no_unknown_commands(view: SessionView) -> Iterator[Hit]:
    """Only command types the spec defines (no way exists to negotiate others)."""
    for transaction in view.transactions:
        if transaction.command not in _KNOWN_COMMANDS:
            yield Hit(transaction.request, f"unknown command type {transaction.command}")


# --- request header style -------------------------------------------------------------


@rule(id="client.compact-no-payload-len", midstream=True)
def compact_no_payload_len(view: SessionView) -> Iterator[Hit]:
    """NBD_CMD_FLAG_PAYLOAD_LEN never appears in a compact request."""
    for transaction in view.transactions:
        if not transaction.extended and transaction.flags & _PAYLOAD_LEN:
            yield Hit(
                transaction.request,
                f"compact {_command_name(transaction)} with NBD_CMD_FLAG_PAYLOAD_LEN",
            )


@rule(id="client.extended-write-payload-len", midstream=True)
def extended_write_payload_len(view: SessionView) -> Iterator[Hit]:
    """An extended NBD_CMD_WRITE sets NBD_CMD_FLAG_PAYLOAD_LEN."""
    for transaction in view.transactions:
        if (
            transaction.extended
            and transaction.command == c.Cmd.WRITE
            and not transaction.flags & _PAYLOAD_LEN
        ):
            yield Hit(
                transaction.request, "extended NBD_CMD_WRITE without NBD_CMD_FLAG_PAYLOAD_LEN"
            )


@rule(id="client.extended-request-when-negotiated")
def extended_request_when_negotiated(view: SessionView) -> Iterator[Hit]:
    """With extended headers negotiated, every request is an extended request."""
    if not view.transmission.negotiated.extended_headers or view.transmission.entered_by is None:
        return
    for transaction in view.transactions:
        if not transaction.extended:
            yield Hit(
                transaction.request,
                f"compact {_command_name(transaction)} although extended headers were negotiated",
            )


@rule(id="client.compact-request-unless-negotiated")
def compact_request_unless_negotiated(view: SessionView) -> Iterator[Hit]:
    """Without extended headers, every request is a compact request."""
    if view.transmission.negotiated.extended_headers or view.transmission.entered_by is None:
        return
    for transaction in view.transactions:
        if transaction.extended:
            yield Hit(
                transaction.request,
                f"extended {_command_name(transaction)} although "
                "extended headers were not negotiated",
            )


# --- DISC and other fixed fields ----------------------------------------------------


@rule(id="client.disc-fields-zero", midstream=True)
def disc_fields_zero(view: SessionView) -> Iterator[Hit]:
    """NBD_CMD_DISC has offset 0 and length 0."""
    for transaction in view.transactions_of(c.Cmd.DISC):
        length = transaction.length
        if transaction.offset or length:
            yield Hit(
                transaction.request,
                f"NBD_CMD_DISC with offset {transaction.offset} and length {length}",
            )


@rule(id="client.flush-fields-zero", midstream=True)
def flush_fields_zero(view: SessionView) -> Iterator[Hit]:
    """NBD_CMD_FLUSH has offset 0 and length 0."""
    for transaction in view.transactions_of(c.Cmd.FLUSH):
        length = transaction.length
        if transaction.offset or length:
            yield Hit(
                transaction.request,
                f"NBD_CMD_FLUSH with offset {transaction.offset} and length {length}",
            )


def _disc(view: SessionView) -> Transaction | None:
    discs = view.transactions_of(c.Cmd.DISC)
    return discs[0] if discs else None


@rule(id="client.nothing-after-disc", midstream=True)
def nothing_after_disc(view: SessionView) -> Iterator[Hit]:
    """The client sends nothing after NBD_CMD_DISC."""
    disc = _disc(view)
    if disc is None:
        return
    later = follows(view, disc.request, CLIENT)
    if later:
        yield Hit(later[0], f"{later[0].name} sent after NBD_CMD_DISC")
        return
    for region in undecoded_after(view, disc.request)[:1]:
        yield Hit(region, f"{region.length} byte(s) sent after NBD_CMD_DISC")


@rule(id="client.disc-waits-for-replies")
def disc_waits_for_replies(view: SessionView) -> Iterator[Hit]:
    """NBD_CMD_DISC is sent when no request awaits its reply."""
    disc = _disc(view)
    if disc is None:
        return
    waiting = [t for t in view.transactions if t is not disc and t.in_flight_at(disc.position)]
    if waiting:
        names = ", ".join(f"{t.name} (frame {t.request.frame})" for t in waiting[:3])
        yield Hit(
            disc.request,
            f"NBD_CMD_DISC while {len(waiting)} request(s) awaited their reply: {names}",
        )


@rule(id="server.no-reply-to-disc")
def no_reply_to_disc(view: SessionView) -> Iterator[Hit]:
    """The server does not reply to NBD_CMD_DISC."""
    disc = _disc(view)
    if disc is None:
        return
    cookie = disc.cookie
    for reply in view.orphan_replies:
        if reply.fields.get("cookie") == cookie and view.position(reply) > disc.position:
            yield Hit(reply, f"{reply.name} with the cookie of NBD_CMD_DISC")


# --- cookies ------------------------------------------------------------------------


@rule(id="server.reply-cookie-matches")
def reply_cookie_matches(view: SessionView) -> Iterator[Hit]:
    """Every reply carries the cookie of a request that awaits it.

    Once the client's stream stops at a request header with a wrong magic, the
    requests it sent can no longer be framed: a server may still read that header
    and answer with its cookie field (qemu-nbd replies NBD_EINVAL, then closes), so
    replies from then on cannot be matched and are not judged.
    """
    disc = _disc(view)
    disc_cookie = disc.cookie if disc else None
    unframed = [region.frame for region in view.undecoded(CLIENT)
                if bad_magic(region, "request")]
    for reply in view.orphan_replies:
        if disc is not None and reply.fields.get("cookie") == disc_cookie:
            continue  # a reply to NBD_CMD_DISC: its own rule
        if unframed and reply.last_frame >= min(unframed):
            continue  # answers bytes we could not frame as a request
        yield Hit(
            reply,
            f"{reply.name} with cookie {int(reply.fields.get('cookie', 0)):#x}, "
            "which no request awaits",
        )
    for transaction in view.transactions:
        for reply in transaction.late:
            if reply.kind == "simple-reply":
                yield Hit(
                    reply,
                    f"second reply with cookie "
                    f"{int(reply.fields.get('cookie', 0)):#x}, whose request was "
                    "already answered",
                )


@rule(id="client.cookie-distinct")
def cookie_distinct(view: SessionView) -> Iterator[Hit]:
    """A request does not reuse the cookie of a request still in flight."""
    # Per cookie, the earlier requests that may still be in flight, in order: positions only
    # grow, so one completed before this request can be in flight at no later one (linear
    # time on captures of millions of requests that reuse a few cookies).
    open_by_cookie: dict[int, list[Transaction]] = {}
    for transaction in view.transactions:
        cookie = transaction.cookie
        earlier_open = open_by_cookie.setdefault(cookie, [])
        for earlier in earlier_open:
            if earlier.command != c.Cmd.DISC and earlier.in_flight_at(transaction.position):
                yield Hit(
                    transaction.request,
                    f"cookie {cookie:#x} is still in flight "
                    f"(request in frame {earlier.request.frame})",
                )
                break
        earlier_open[:] = [e for e in earlier_open if not _done_by(e, transaction.position)]
        earlier_open.append(transaction)


def _done_by(transaction: Transaction, position: int) -> bool:
    done = transaction.completed_at
    return done is not None and done <= position


# --- size constraints -----------------------------------------------------------------


@rule(id="client.request-within-export")
def request_within_export(view: SessionView) -> Iterator[Hit]:
    """Ranges of READ, WRITE, TRIM, CACHE, WRITE_ZEROES and BLOCK_STATUS end within the
    export."""
    size = view.transmission.size
    if size is None:
        return
    for transaction in _requests(view, *c.RANGE_COMMANDS):
        end = transaction.offset + transaction.effect_length
        if end > size:
            yield Hit(
                transaction.request,
                f"{_command_name(transaction)} of "
                f"{transaction.effect_length} bytes at offset "
                f"{transaction.offset} ends at {end}, past the end of "
                f"the {size}-byte export",
            )


@rule(id="client.request-alignment")
def request_alignment(view: SessionView) -> Iterator[Hit]:
    """After a GO that requested NBD_INFO_BLOCK_SIZE, ranges are aligned to the minimum block
    size (a client that did not ask is not bound by it)."""
    transmission = view.transmission
    minimum = transmission.minimum_block
    if not transmission.block_size_requested or minimum <= 1:
        return
    for transaction in _requests(view, *c.RANGE_COMMANDS):
        if transaction.offset % minimum or transaction.effect_length % minimum:
            yield Hit(
                transaction.request,
                f"{_command_name(transaction)} at offset "
                f"{transaction.offset} length "
                f"{transaction.effect_length} is not aligned to the "
                f"minimum block size {minimum}",
            )


@rule(id="client.request-max-payload")
def request_max_payload(view: SessionView) -> Iterator[Hit]:
    """WRITE (and READ with simple replies) stay within the advertised maximum payload, after a
    GO that requested NBD_INFO_BLOCK_SIZE."""
    transmission = view.transmission
    maximum = transmission.maximum_payload
    if not transmission.block_size_requested or maximum is None:
        return
    simple_replies = not transmission.negotiated.replies_with_chunks
    for transaction in _requests(view, c.Cmd.WRITE, c.Cmd.READ):
        read = transaction.command == c.Cmd.READ and simple_replies
        if (transaction.command == c.Cmd.WRITE or read) and transaction.effect_length > maximum:
            yield Hit(
                transaction.request,
                f"{_command_name(transaction)} of "
                f"{transaction.effect_length} bytes exceeds the "
                f"maximum payload {maximum}",
            )


# --- what the server does with requests -------------------------------------------------


@rule(id="server.read-only-write-errors")
def read_only_write_errors(view: SessionView) -> Iterator[Hit]:
    """On a read-only export, WRITE, TRIM and WRITE_ZEROES fail."""
    if not view.transmission.has(TF.READ_ONLY):
        return
    for transaction in _requests(view, *c.WRITE_COMMANDS):
        if transaction.succeeded:
            yield Hit(
                transaction.replies[-1],
                f"{_command_name(transaction)} succeeded on a read-only export",
            )


@rule(id="client.soft-disconnect-on-eshutdown")
def soft_disconnect_on_eshutdown(view: SessionView) -> Iterator[Hit]:
    """After an NBD_ESHUTDOWN reply, the client's next request is NBD_CMD_DISC."""
    for message, error in view.error_replies:
        if error != c.Errno.ESHUTDOWN:
            continue
        later = [m for m in follows(view, message, CLIENT) if m.kind == "request"]
        if later and later[0].fields.get("type") != c.Cmd.DISC:
            yield Hit(
                later[0],
                f"{later[0].name} sent after an NBD_ESHUTDOWN error instead of NBD_CMD_DISC",
            )
        return
