"""Rules of option haggling: option replies, INFO/GO, metadata contexts, data lengths.

Sections "Newstyle negotiation", "Fixed newstyle negotiation", "Option types",
"Option reply types", "Metadata querying" and "Baseline".
"""

from __future__ import annotations

from collections.abc import Iterator

from harness.conformance._rule import Hit, rule
from harness.conformance._silence import unanswered_options
from harness.conformance._view import (
    OptionMessages,
    SessionView,
    bad_magic,
    body_fields,
    header_length,
    reply_type,
)
from harness.dissect.model import CLIENT, SERVER, WireMessage
from harness.protocol import constants as c

_REJECT_DATA_OPTIONS = (c.Opt.LIST, c.Opt.STRUCTURED_REPLY, c.Opt.EXTENDED_HEADERS)
_DEFINED_OPTIONS = frozenset(int(o) for o in c.Opt) - {int(c.Opt.PEEK_EXPORT)}


def _queries(exchange: OptionMessages) -> list[str]:
    return [q.get("query", "") for q in exchange.option.fields.get("queries") or []]


def _context_names(exchange: OptionMessages) -> list[str]:
    return [
        str(r.fields.get("context_name", "")) for r in exchange.replies_of_type(c.Rep.META_CONTEXT)
    ]


def _info_replies(view: SessionView) -> Iterator[WireMessage]:
    """Every NBD_REP_INFO the server sent."""
    for reply in view.messages_of("option-reply"):
        if reply.direction == SERVER and reply_type(reply) == c.Rep.INFO:
            yield reply


def _info_type(reply: WireMessage) -> int | None:
    """The information type of an NBD_REP_INFO, as decoded (None if too short for one)."""
    info_type = reply.fields.get("info_type")
    return None if info_type is None else int(info_type)


def _replies_outside(view: SessionView, allowed: int) -> Iterator[Hit]:
    """Replies to the options ``allowed`` answers that are neither ``allowed``, NBD_REP_ACK
    nor an error."""
    for exchange in view.options:
        if exchange.code not in c.OPTIONS_ANSWERED_WITH[allowed]:
            continue
        for reply in exchange.replies:
            rep = reply_type(reply)
            if rep not in (allowed, c.Rep.ACK) and not c.is_rep_error(rep):
                yield Hit(reply, f"{reply.name} in reply to {exchange.option.name}")


@rule(id="client.option-magic", midstream=True)
def option_magic(view: SessionView) -> Iterator[Hit]:
    """Every option starts with IHAVEOPT."""
    for region in view.undecoded(CLIENT):
        if bad_magic(region, "option"):
            yield Hit(region, f"option without the IHAVEOPT magic ({region.reason})")


@rule(id="server.option-reply-magic", midstream=True)
def option_reply_magic(view: SessionView) -> Iterator[Hit]:
    """Every option reply starts with the option reply magic."""
    for region in view.undecoded(SERVER):
        if bad_magic(region, "option-reply"):
            yield Hit(region, f"option reply without its magic ({region.reason})")


@rule(id="client.no-option-before-final-reply")
def no_option_before_final_reply(view: SessionView) -> Iterator[Hit]:
    """Options go one at a time: the next only after the previous one's final reply."""
    for earlier, later in zip(view.options, view.options[1:], strict=False):
        if earlier.code == c.Opt.EXPORT_NAME:
            continue
        final_at = earlier.final_position
        if final_at is None or final_at > later.position:
            yield Hit(
                later.option,
                f"{later.option.name} sent before {earlier.option.name} had its final reply",
            )


@rule(id="server.option-reply-answers-option")
def option_reply_answers_option(view: SessionView) -> Iterator[Hit]:
    """An option reply names the option it answers, and answers a pending option."""
    for exchange in view.options:
        for reply in exchange.replies:
            named = reply.fields.get("option")
            if named != exchange.code:
                yield Hit(
                    reply,
                    f"reply names {c.name_of(c.Opt, int(named or 0))} but answers "
                    f"{exchange.option.name}",
                )
    for reply in view.orphan_option_replies:
        if reply.fields.get("option") != c.Opt.EXPORT_NAME:  # that is another rule
            yield Hit(
                reply,
                f"{reply.name} for {c.name_of(c.Opt, int(reply.fields.get('option', 0)))}"
                " answers no option the client sent",
            )


@rule(id="server.unsupported-option-err-unsup")
def unsupported_option_err_unsup(view: SessionView) -> Iterator[Hit]:
    """An option the spec does not define, if refused, is refused with NBD_REP_ERR_UNSUP.

    ``NBD_REP_ERR_TLS_REQD`` is also right before TLS (FORCEDTLS errors every
    option that way), and ``NBD_REP_ERR_SHUTDOWN`` when the server is going down.
    """
    for exchange in view.options:
        if exchange.code in _DEFINED_OPTIONS or exchange.final is None:
            continue
        final_type = exchange.final_type
        allowed = {c.Rep.ERR_UNSUP, c.Rep.ERR_SHUTDOWN}
        if not exchange.before.tls:
            allowed.add(c.Rep.ERR_TLS_REQD)
        if final_type is not None and c.is_rep_error(final_type) and final_type not in allowed:
            yield Hit(
                exchange.final,
                f"unknown option {exchange.option.name} refused with "
                f"{exchange.final.name} instead of NBD_REP_ERR_UNSUP",
            )


@rule(id="client.no-data-with-option", midstream=True)
def no_data_with_option(view: SessionView) -> Iterator[Hit]:
    """LIST, STARTTLS, STRUCTURED_REPLY and EXTENDED_HEADERS carry no data."""
    for exchange in view.options:
        if exchange.code in c.NO_DATA_OPTIONS and header_length(exchange.option):
            yield Hit(
                exchange.option,
                f"{exchange.option.name} carries {header_length(exchange.option)} byte(s) of data",
            )


@rule(id="client.abort-no-data", midstream=True)
def abort_no_data(view: SessionView) -> Iterator[Hit]:
    """NBD_OPT_ABORT carries no data."""
    for exchange in view.options:
        if exchange.code == c.Opt.ABORT and header_length(exchange.option):
            yield Hit(
                exchange.option,
                f"NBD_OPT_ABORT carries {header_length(exchange.option)} byte(s) of data",
            )


@rule(id="server.reject-option-data")
def reject_option_data(view: SessionView) -> Iterator[Hit]:
    """LIST, STRUCTURED_REPLY or EXTENDED_HEADERS with data are refused with ERR_INVALID."""
    for exchange in view.options:
        if (
            exchange.code in _REJECT_DATA_OPTIONS
            and header_length(exchange.option)
            and exchange.final is not None
            and exchange.final_type not in (c.Rep.ERR_INVALID, c.Rep.ERR_TLS_REQD)
        ):
            yield Hit(
                exchange.final,
                f"{exchange.option.name} with data answered with {exchange.final.name}",
            )


@rule(id="server.info-export-before-ack")
def info_export_before_ack(view: SessionView) -> Iterator[Hit]:
    """A successful NBD_OPT_INFO or NBD_OPT_GO includes NBD_INFO_EXPORT."""
    for exchange in view.options:
        if (
            exchange.code in (c.Opt.INFO, c.Opt.GO)
            and exchange.succeeded
            and not any(_info_type(r) == c.Info.EXPORT for r in exchange.infos())
        ):
            yield Hit(
                exchange.final,
                f"{exchange.option.name} succeeded without an NBD_INFO_EXPORT reply",
            )


@rule(id="server.info-export-length", midstream=True)
def info_export_length(view: SessionView) -> Iterator[Hit]:
    """NBD_INFO_EXPORT is exactly 12 bytes long."""
    for reply in _info_replies(view):
        if _info_type(reply) == c.Info.EXPORT and header_length(reply) != 12:
            yield Hit(reply, f"NBD_INFO_EXPORT of length {header_length(reply)}")


@rule(id="server.info-block-size-length", midstream=True)
def info_block_size_length(view: SessionView) -> Iterator[Hit]:
    """NBD_INFO_BLOCK_SIZE is exactly 14 bytes long."""
    for reply in _info_replies(view):
        if _info_type(reply) == c.Info.BLOCK_SIZE and header_length(reply) != 14:
            yield Hit(reply, f"NBD_INFO_BLOCK_SIZE of length {header_length(reply)}")


@rule(id="server.info-length-at-least-2", midstream=True)
def info_length_at_least_2(view: SessionView) -> Iterator[Hit]:
    """An NBD_REP_INFO carries at least its 16-bit information type."""
    for reply in _info_replies(view):
        if header_length(reply) < 2:
            yield Hit(reply, f"NBD_REP_INFO of length {header_length(reply)}")


@rule(id="server.info-once")
def info_once(view: SessionView) -> Iterator[Hit]:
    """One reply to NBD_OPT_INFO/GO sends each information type once."""
    for exchange in view.options:
        seen: set[int] = set()
        for reply in exchange.infos():
            info = _info_type(reply)
            if info is None:
                continue
            if info in seen:
                yield Hit(
                    reply,
                    f"{c.name_of(c.Info, info)} sent more than once in reply to "
                    f"{exchange.option.name}",
                )
            seen.add(info)


@rule(id="server.no-info-for-unknown-export")
def no_info_for_unknown_export(view: SessionView) -> Iterator[Hit]:
    """NBD_REP_ERR_UNKNOWN comes without NBD_REP_INFO replies before it."""
    for exchange in view.options:
        if exchange.code in (c.Opt.INFO, c.Opt.GO) and exchange.final_type == c.Rep.ERR_UNKNOWN:
            infos = exchange.infos()
            if infos:
                yield Hit(
                    infos[0],
                    f"NBD_REP_INFO sent for an export the server then calls "
                    f"unknown ({exchange.option.name})",
                )


@rule(id="server.go-consistent-with-info")
def go_consistent_with_info(view: SessionView) -> Iterator[Hit]:
    """A GO right after a successful INFO with the same parameters gets the same information."""
    for info, go in zip(view.options, view.options[1:], strict=False):
        if info.code != c.Opt.INFO or go.code != c.Opt.GO:
            continue
        if not (info.succeeded and go.succeeded):
            continue
        if body_fields(info.option) != body_fields(go.option):
            continue  # different name or information requests: the server may differ
        before = sorted((body_fields(r) for r in info.infos()), key=repr)
        after = sorted((body_fields(r) for r in go.infos()), key=repr)
        if before != after:
            yield Hit(
                go.final,
                "NBD_OPT_GO answered with other information than the "
                "NBD_OPT_INFO with the same parameters just before",
            )


@rule(id="server.block-size-reqd-not-if-requested")
def block_size_reqd_not_if_requested(view: SessionView) -> Iterator[Hit]:
    """NBD_REP_ERR_BLOCK_SIZE_REQD never answers a request that asked for the block size."""
    for exchange in view.options:
        if exchange.code not in (c.Opt.INFO, c.Opt.GO):
            continue
        requests = exchange.option.fields.get("info_requests") or []
        if exchange.final_type == c.Rep.ERR_BLOCK_SIZE_REQD and c.Info.BLOCK_SIZE in requests:
            yield Hit(
                exchange.final,
                f"NBD_REP_ERR_BLOCK_SIZE_REQD although "
                f"{exchange.option.name} requested NBD_INFO_BLOCK_SIZE",
            )


@rule(id="server.go-not-unsup-after-extended")
def go_not_unsup_after_extended(view: SessionView) -> Iterator[Hit]:
    """Once extended headers are acknowledged, NBD_OPT_GO is not refused as unsupported."""
    for exchange in view.options:
        if (
            exchange.code == c.Opt.GO
            and exchange.before.extended_headers
            and exchange.final_type == c.Rep.ERR_UNSUP
        ):
            yield Hit(
                exchange.final,
                "NBD_OPT_GO refused with NBD_REP_ERR_UNSUP after "
                "NBD_OPT_EXTENDED_HEADERS was acknowledged",
            )


@rule(id="client.info-request-once", midstream=True)
def info_request_once(view: SessionView) -> Iterator[Hit]:
    """NBD_OPT_INFO/GO list each information request once."""
    for exchange in view.options:
        requests = exchange.option.fields.get("info_requests") or []
        if exchange.code in (c.Opt.INFO, c.Opt.GO) and len(set(requests)) != len(requests):
            repeated = sorted({r for r in requests if requests.count(r) > 1})
            names = ", ".join(c.name_of(c.Info, r) for r in repeated)
            yield Hit(exchange.option, f"{exchange.option.name} requests {names} more than once")


@rule(id="client.info-name-length", midstream=True)
def info_name_length(view: SessionView) -> Iterator[Hit]:
    """NBD_OPT_INFO/GO: the name length leaves room for the information request count."""
    for exchange in view.options:
        if exchange.code not in (c.Opt.INFO, c.Opt.GO):
            continue
        name_length = exchange.option.fields.get("name_length")
        if name_length is None:
            yield Hit(
                exchange.option,
                f"{exchange.option.name} data of {header_length(exchange.option)} byte(s) "
                "cannot hold a name length",
            )
            continue
        if name_length > header_length(exchange.option) - 6:
            yield Hit(
                exchange.option,
                f"name length {name_length} exceeds the option data "
                f"length {header_length(exchange.option)} - 6",
            )


@rule(id="server.rep-server-name-length", midstream=True)
def rep_server_name_length(view: SessionView) -> Iterator[Hit]:
    """NBD_REP_SERVER: the name length fits in the reply."""
    for reply in view.messages_of("option-reply"):
        if reply.direction != SERVER or reply_type(reply) != c.Rep.SERVER:
            continue
        name_length = reply.fields.get("name_length")
        if name_length is None or name_length > header_length(reply) - 4:
            yield Hit(
                reply,
                f"NBD_REP_SERVER name length {name_length} does not fit in a "
                f"reply of length {header_length(reply)}",
            )


@rule(id="client.no-export-name-after-extended")
def no_export_name_after_extended(view: SessionView) -> Iterator[Hit]:
    """No NBD_OPT_EXPORT_NAME once NBD_OPT_EXTENDED_HEADERS was acknowledged."""
    for exchange in view.options:
        if exchange.code == c.Opt.EXPORT_NAME and exchange.before.extended_headers:
            yield Hit(exchange.option, "NBD_OPT_EXPORT_NAME after extended headers were negotiated")


@rule(id="client.set-meta-context-needs-structured")
def set_meta_context_needs_structured(view: SessionView) -> Iterator[Hit]:
    """NBD_OPT_SET_META_CONTEXT only after structured replies or extended headers."""
    for exchange in view.options:
        if exchange.code == c.Opt.SET_META_CONTEXT and not exchange.before.replies_with_chunks:
            yield Hit(
                exchange.option,
                "NBD_OPT_SET_META_CONTEXT before structured replies or "
                "extended headers were negotiated",
            )


@rule(id="client.list-meta-context-needs-structured")
def list_meta_context_needs_structured(view: SessionView) -> Iterator[Hit]:
    """NBD_OPT_LIST_META_CONTEXT preferably after structured replies or extended headers."""
    for exchange in view.options:
        if exchange.code == c.Opt.LIST_META_CONTEXT and not exchange.before.replies_with_chunks:
            yield Hit(
                exchange.option,
                "NBD_OPT_LIST_META_CONTEXT before structured replies or "
                "extended headers were negotiated",
            )


@rule(id="server.set-meta-context-unnegotiated")
def set_meta_context_unnegotiated(view: SessionView) -> Iterator[Hit]:
    """NBD_OPT_SET_META_CONTEXT too early is refused with ERR_INVALID or ERR_EXT_HEADER_REQD."""
    for exchange in view.options:
        if (
            exchange.code == c.Opt.SET_META_CONTEXT
            and not exchange.before.replies_with_chunks
            and exchange.final is not None
            and exchange.final_type
            not in (c.Rep.ERR_INVALID, c.Rep.ERR_EXT_HEADER_REQD, c.Rep.ERR_TLS_REQD)
        ):
            yield Hit(
                exchange.final,
                f"premature NBD_OPT_SET_META_CONTEXT answered with {exchange.final.name}",
            )


@rule(id="server.meta-context-replies")
def meta_context_replies(view: SessionView) -> Iterator[Hit]:
    """LIST/SET_META_CONTEXT get NBD_REP_META_CONTEXT replies, then ACK or an error (and
    are answered at all: see harness.conformance.rules_session.silence)."""
    yield from _replies_outside(view, c.Rep.META_CONTEXT)
    yield from unanswered_options(view, (c.Opt.SET_META_CONTEXT, c.Opt.LIST_META_CONTEXT))


@rule(id="server.meta-context-ids-unique")
def meta_context_ids_unique(view: SessionView) -> Iterator[Hit]:
    """NBD_OPT_SET_META_CONTEXT gives every selected context its own id."""
    for exchange in view.options:
        if exchange.code != c.Opt.SET_META_CONTEXT:
            continue
        seen: dict[int, str] = {}
        for reply in exchange.replies_of_type(c.Rep.META_CONTEXT):
            context_id = int(reply.fields.get("context_id", 0))
            if context_id in seen:
                yield Hit(
                    reply,
                    f"context id {context_id} given to "
                    f"{reply.fields.get('context_name')!r} was already given to "
                    f"{seen[context_id]!r}",
                )
            seen[context_id] = str(reply.fields.get("context_name", ""))


@rule(id="server.list-meta-context-id-zero")
def list_meta_context_id_zero(view: SessionView) -> Iterator[Hit]:
    """NBD_OPT_LIST_META_CONTEXT replies carry context id 0."""
    for exchange in view.options:
        if exchange.code != c.Opt.LIST_META_CONTEXT:
            continue
        for reply in exchange.replies_of_type(c.Rep.META_CONTEXT):
            if reply.fields.get("context_id", 0):
                yield Hit(
                    reply,
                    f"listed context {reply.fields.get('context_name')!r} has id "
                    f"{reply.fields.get('context_id')}",
                )


@rule(id="server.set-meta-context-no-queries")
def set_meta_context_no_queries(view: SessionView) -> Iterator[Hit]:
    """NBD_OPT_SET_META_CONTEXT without queries selects nothing."""
    for exchange in view.options:
        if exchange.code == c.Opt.SET_META_CONTEXT and "queries" in exchange.option.fields:
            selected = exchange.replies_of_type(c.Rep.META_CONTEXT)
            if not _queries(exchange) and selected:
                yield Hit(
                    selected[0],
                    f"context {selected[0].fields.get('context_name')!r} "
                    "selected by an NBD_OPT_SET_META_CONTEXT without queries",
                )


@rule(id="server.meta-context-name-syntax", midstream=True)
def meta_context_name_syntax(view: SessionView) -> Iterator[Hit]:
    """Context names are ``namespace:leaf-name`` with a non-empty namespace."""
    for reply in view.messages_of("option-reply"):
        if reply.direction == SERVER and reply_type(reply) == c.Rep.META_CONTEXT:
            name = str(reply.fields.get("context_name", ""))
            namespace, colon, _leaf = name.partition(":")
            if not colon or not namespace:
                yield Hit(reply, f"context name {name!r} lacks a namespace and a colon")


@rule(id="client.meta-context-query-syntax", midstream=True)
def meta_context_query_syntax(view: SessionView) -> Iterator[Hit]:
    """Metadata context queries start with ``namespace:``."""
    for exchange in view.options:
        if exchange.code not in (c.Opt.LIST_META_CONTEXT, c.Opt.SET_META_CONTEXT):
            continue
        for query in _queries(exchange):
            namespace, colon, _leaf = query.partition(":")
            if not colon or not namespace:
                yield Hit(
                    exchange.option, f"query {query!r} does not start with a namespace and a colon"
                )


@rule(id="server.ext-header-reqd-not-for-base")
def ext_header_reqd_not_for_base(view: SessionView) -> Iterator[Hit]:
    """SET_META_CONTEXT asking only for ``base:`` contexts is not refused with
    NBD_REP_ERR_EXT_HEADER_REQD."""
    for exchange in view.options:
        queries = _queries(exchange)
        if (
            exchange.code == c.Opt.SET_META_CONTEXT
            and queries
            and all(q.startswith("base:") for q in queries)
            and exchange.final_type == c.Rep.ERR_EXT_HEADER_REQD
        ):
            yield Hit(
                exchange.final,
                "NBD_REP_ERR_EXT_HEADER_REQD for a request limited to the base: namespace",
            )


@rule(id="server.list-ext-header-reqd-not-for-base")
def list_ext_header_reqd_not_for_base(view: SessionView) -> Iterator[Hit]:
    """LIST_META_CONTEXT whose answer is only ``base:`` contexts does not end with
    NBD_REP_ERR_EXT_HEADER_REQD."""
    for exchange in view.options:
        names = _context_names(exchange)
        queries = _queries(exchange)
        limited = all(n.startswith("base:") for n in names) and (
            bool(names) or (bool(queries) and all(q.startswith("base:") for q in queries))
        )
        if (
            exchange.code == c.Opt.LIST_META_CONTEXT
            and limited
            and exchange.final_type == c.Rep.ERR_EXT_HEADER_REQD
        ):
            yield Hit(
                exchange.final,
                "NBD_REP_ERR_EXT_HEADER_REQD ends a listing limited to the base: namespace",
            )


@rule(id="server.list-replies")
def list_replies(view: SessionView) -> Iterator[Hit]:
    """NBD_OPT_LIST gets NBD_REP_SERVER replies, then ACK or an error (and an answer at all)."""
    yield from _replies_outside(view, c.Rep.SERVER)
    yield from unanswered_options(view, (c.Opt.LIST,))


@rule(id="server.info-go-replies")
def info_go_replies(view: SessionView) -> Iterator[Hit]:
    """NBD_OPT_INFO/GO get NBD_REP_INFO replies, then ACK or an error (and an answer at all)."""
    yield from _replies_outside(view, c.Rep.INFO)
    yield from unanswered_options(view, (c.Opt.INFO, c.Opt.GO))


@rule(id="server.no-data-option-replies")
def no_data_option_replies(view: SessionView) -> Iterator[Hit]:
    """NBD_OPT_STRUCTURED_REPLY and NBD_OPT_EXTENDED_HEADERS get only NBD_REP_ACK or an error
    (and an answer at all)."""
    for exchange in view.options:
        if exchange.code not in (c.Opt.STRUCTURED_REPLY, c.Opt.EXTENDED_HEADERS):
            continue
        for reply in exchange.replies:
            rep = reply_type(reply)
            if rep != c.Rep.ACK and not c.is_rep_error(rep):
                yield Hit(reply, f"{reply.name} in reply to {exchange.option.name}")
    yield from unanswered_options(view, (c.Opt.STRUCTURED_REPLY, c.Opt.EXTENDED_HEADERS))
