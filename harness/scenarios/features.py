"""Feature ids (``matrix/features.toml``) as scenarios use them.

What each feature means is data (``matrix/features.toml``: ``flag``,
``command_flag``, ``refused_by``, ``reference_lacks``); the tables here are read
from it.  Three questions are answered here and nowhere else:

- which server features a step needs (:func:`step_needs`), so the loader can
  insist that a scenario lists them in ``requires.server`` and a fallback run
  can skip the steps that cannot work without them;
- how a server showed on the wire that it lacks a feature
  (:func:`missing_on_wire`), e.g. ``NBD_FLAG_SEND_TRIM`` not advertised or
  ``NBD_OPT_GO`` answered with ``NBD_REP_ERR_UNSUP``;
- whether a reference-server profile has a feature (:func:`server_has`).

:func:`server_has`, :data:`REFERENCE_CLIENT_LACKS` and
:data:`REFERENCE_SERVER_LACKS` are public: import them from
:mod:`harness.scenarios`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from functools import cache
from typing import Any

from harness.client.records import Negotiation
from harness.peerdata import Feature, default_peerdata
from harness.protocol import constants as c
from reference_server.features import ServerFeatures
from reference_server.profiles import FEATURE_GRANTS

TF = c.TransmissionFlag


def _features() -> dict[str, Feature]:
    return dict(default_peerdata().features)


def _opt(name: str) -> int:
    return c.Opt[name.removeprefix("NBD_OPT_")]


FLAG_FEATURES: dict[str, TF] = {
    feature.id: TF[feature.flag.removeprefix("NBD_FLAG_")]
    for feature in _features().values() if feature.flag
}
"""Features a server announces with one transmission flag (``flag`` in features.toml)."""

OPTION_FEATURES: dict[int, frozenset[str]] = {
    option: frozenset(f.id for f in _features().values() if option in map(_opt, f.refused_by))
    for option in dict.fromkeys(_opt(name) for f in _features().values()
                                for name in f.refused_by)
}
"""Features whose absence a server shows by answering the option NBD_REP_ERR_UNSUP
(``refused_by`` in features.toml)."""

CMD_FLAG_FEATURES: dict[str, str] = {
    feature.command_flag: feature.id for feature in _features().values() if feature.command_flag
}
"""Command flag name -> the feature a request with it needs (``command_flag``)."""

REFERENCE_SERVER_LACKS = frozenset(
    f.id for f in _features().values() if "server" in f.reference_lacks)
"""Features no reference-server profile has (``reference_lacks`` in features.toml: Python's
ssl module does X.509 only)."""

REFERENCE_CLIENT_LACKS = frozenset(
    f.id for f in _features().values() if "client" in f.reference_lacks)
"""Features the reference client cannot use (same reason): the reference client has every
feature of ``matrix/features.toml`` but these."""


@cache
def known_features() -> dict[str, Feature]:
    """The vocabulary of ``matrix/features.toml``."""
    return dict(default_peerdata().features)


def context_feature(name: str) -> str | None:
    """The feature id a metadata context (or a LIST query for it) belongs to."""
    if name == c.BASE_ALLOCATION or name == "base:":
        return "base-allocation"
    if name == c.QEMU_ALLOCATION_DEPTH:
        return "allocation-depth"
    if name.startswith(c.QEMU_DIRTY_BITMAP_PREFIX):
        return "dirty-bitmap"
    return None


def _query_features(queries: Iterable[str]) -> set[str]:
    needs: set[str] = set()
    for query in queries:
        if query in ("qemu:", c.QEMU_DIRTY_BITMAP_PREFIX):
            needs.add("meta-context-list-query")
            if query == c.QEMU_DIRTY_BITMAP_PREFIX:
                needs.add("dirty-bitmap")
            continue
        feature = context_feature(query)
        if feature is not None:
            needs.add(feature)
    return needs


def step_needs(action: str, args: Mapping[str, Any], contexts: Iterable[str] = (),
               expect: Mapping[str, Any] | None = None) -> set[str]:
    """The server features step ``action`` cannot work without.

    ``contexts`` are the metadata contexts the step's connection asked for
    (block status needs the features behind them).  A connect that expects to
    be refused needs no TLS: the refusal is the point.
    """
    needs: set[str] = set()
    flags = args.get("flags") or []
    if isinstance(flags, list):
        needs |= {CMD_FLAG_FEATURES[f] for f in flags if f in CMD_FLAG_FEATURES}
    match action:
        case "connect":
            needs |= _query_features(args.get("contexts") or [])
            if args.get("tls") in ("on", "require") and not (expect or {}).get("error"):
                needs.add("starttls-psk" if args.get("tls_type") == "psk" else "starttls-x509")
            if args.get("structured_replies") is True:
                needs.add("structured-replies")
            if args.get("extended_headers") is True:
                needs.add("extended-headers")
            if args.get("use_go") is True:
                needs.add("opt-go")
        case "info":
            needs.add("opt-go")
        case "list_exports":
            needs.add("list-exports")
        case "list_meta_contexts" | "set_meta_contexts":
            needs |= _query_features(args.get("queries") or [])
        case "write":
            if args.get("fua"):
                needs.add("fua")
        case "zero":
            needs.add("write-zeroes")
            if args.get("fast_zero"):
                needs.add("fast-zero")
            if args.get("fua"):
                needs.add("fua")
        case "trim":
            needs.add("trim")
            if args.get("fua"):
                needs.add("fua")
        case "flush":
            needs.add("flush")
        case "cache":
            needs.add("cache")
        case "block_status":
            needs |= _query_features(contexts)
            if args.get("payload_contexts") is not None:
                needs.add("block-status-payload")
        case "map":
            needs |= _query_features([args.get("context", "")])
        case "client_action":
            needs |= _client_action_needs(args)
    return needs


def _client_action_needs(args: Mapping[str, Any]) -> set[str]:
    # A client copes without most features (zeroes by writing, skips trim and flush);
    # only a map of a context, and a listing, cannot be had without the server's help.
    match args.get("action"):
        case "map":
            return _query_features([args.get("context") or c.BASE_ALLOCATION])
        case "list":
            return {"list-exports"}
    return set()


# --- how a server shows that it lacks a feature ----------------------------------------


def _refused(record: Negotiation, option: int) -> str | None:
    for exchange in record.options:
        if exchange.option == option and exchange.final is not None and exchange.final != c.Rep.ACK:
            return f"{c.name_of(c.Opt, option)} answered {c.name_of(c.Rep, exchange.final)}"
    return None


def missing_on_wire(
    feature: str, record: Negotiation, asked: Mapping[str, Any]
) -> str | None:
    """How the server said it lacks ``feature`` on a connection, or None if it did not.

    ``record`` is the connection's negotiation; ``asked`` what the client asked
    for (``structured_replies``, ``extended_headers``, ``use_go``,
    ``request_block_size``, ``contexts``, ``tls``, ``init_state``: booleans or
    lists).  Only what the client asked for can be found missing.  Options a step
    sends on its own (NBD_OPT_LIST, NBD_OPT_INFO...) are judged by that step, which
    knows whether a refusal was expected.
    """
    in_transmission = bool(record.selected_with)
    if feature in FLAG_FEATURES:
        flag = FLAG_FEATURES[feature]
        if feature == "df" and not (record.structured_replies or record.extended_headers):
            return None  # DF is only advertised with structured replies
        if feature == "block-status-payload" and not (
            record.extended_headers and record.meta_contexts
        ):
            return None
        if in_transmission and not record.transmission_flags & flag:
            return f"{c.spec_name(flag)} not advertised"
        return None
    match feature:
        case "structured-replies":
            if asked.get("structured_replies") and not (
                record.structured_replies or record.extended_headers
            ):
                return _refused(record, c.Opt.STRUCTURED_REPLY) or "structured replies refused"
        case "extended-headers":
            if asked.get("extended_headers") and not record.extended_headers:
                return _refused(record, c.Opt.EXTENDED_HEADERS) or "extended headers refused"
        case "opt-go":
            if asked.get("use_go") and record.selected_with == "NBD_OPT_EXPORT_NAME":
                return _refused(record, c.Opt.GO) or "NBD_OPT_GO not used"
        case "info-block-size":
            if not asked.get("request_block_size") or record.block_size is not None:
                return None
            if record.selected_with == "NBD_OPT_GO":
                return "no NBD_INFO_BLOCK_SIZE in the NBD_OPT_GO reply"
            if record.selected_with:
                return f"selected with {record.selected_with}, which carries no block sizes"
        case "base-allocation" | "dirty-bitmap" | "allocation-depth":
            wanted = [q for q in asked.get("contexts", ()) if context_feature(q) == feature]
            if wanted and record.style != "oldstyle":
                selected = set(record.meta_contexts.values())
                lacking = [q for q in wanted if q not in selected]
                if lacking:
                    why = _refused(record, c.Opt.SET_META_CONTEXT)
                    return f"{', '.join(lacking)} not selected" + (f" ({why})" if why else "")
                if not (record.structured_replies or record.extended_headers):
                    return "no structured replies, so no metadata contexts"
        case "no-zeroes":
            if record.style in ("newstyle", "fixed-newstyle") and not (
                record.handshake_flags & c.HandshakeFlag.NO_ZEROES
            ):
                return "NBD_FLAG_NO_ZEROES not offered"
        case "multi-conn-read-only" | "multi-conn-writable":
            if in_transmission and not record.transmission_flags & TF.CAN_MULTI_CONN:
                return "NBD_FLAG_CAN_MULTI_CONN not advertised"
        case "init-state":
            if asked.get("init_state") and in_transmission and record.init_state is None:
                return "no NBD_INFO_INIT_STATE in the NBD_OPT_GO reply"
        case "starttls-x509" | "starttls-psk":
            if asked.get("tls") and not record.tls:
                return _refused(record, c.Opt.STARTTLS) or "TLS not negotiated"
        case "oldstyle":
            if asked.get("oldstyle") and record.style and record.style != "oldstyle":
                return f"the server speaks {record.style} negotiation"
    return None


# --- reference-server profiles -----------------------------------------------------------


def server_has(features: ServerFeatures, feature: str) -> bool:
    """Whether a reference-server profile offers ``feature`` (an id of ``matrix/features.toml``).

    Read from the profile's options, contexts and switches as
    :data:`reference_server.profiles.FEATURE_GRANTS` maps them; ``oldstyle`` is
    always there (the scenario's export configures it), the features of
    :data:`REFERENCE_SERVER_LACKS` never are.
    """

    if feature in REFERENCE_SERVER_LACKS:
        return False
    if feature == "oldstyle":
        return True  # a matter of the server's configuration, which the scenario sets
    grant = FEATURE_GRANTS.get(feature)
    if grant is None:
        return False
    if not grant.options <= features.options:
        return False
    if not all(features.offers_context(kind) for kind in grant.context_kinds):
        return False
    if not all(getattr(features, switch) for switch in grant.switches):
        return False
    if grant.multi_conn is not None:
        rank = {"never": 0, "read-only": 1, "always": 2}
        return rank[features.multi_conn] >= rank[grant.multi_conn]
    return True


__all__ = [
    "FLAG_FEATURES",
    "OPTION_FEATURES",
    "REFERENCE_CLIENT_LACKS",
    "REFERENCE_SERVER_LACKS",
    "context_feature",
    "known_features",
    "missing_on_wire",
    "server_has",
    "step_needs",
]
