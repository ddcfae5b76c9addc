"""Server-role steps of the option phase: checks of the negotiation, and options.

``expect_negotiated``, ``list_exports``, ``info``, ``list_meta_contexts``,
``set_meta_contexts`` and raw ``option`` exchanges.  A refusal that shows a
required feature missing (``NBD_REP_ERR_UNSUP``, no context returned) raises
:class:`~harness.scenarios.expect.FeatureMissing`; any other unexpected answer fails the step.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from harness.client import (
    NbdConnectionError,
    NegotiationError,
)
from harness.protocol import Phase
from harness.protocol import constants as c
from harness.protocol.codec import decode_reply_payload
from harness.protocol.codec import option as make_option
from harness.protocol.messages import (
    ConnectionClosed,
    EmptyPayload,
    ErrorReplyPayload,
    ExportNamePayload,
    ExportNameReply,
    InfoRequestPayload,
    MetaContextPayload,
    MetaContextReplyPayload,
    OptionReply,
    OptionRequest,
)
from harness.scenarios import spec_names
from harness.scenarios.expect import (
    Failed,
    FeatureMissing,
    option_error_matches,
)
from harness.scenarios.features import OPTION_FEATURES, context_feature, missing_on_wire
from harness.scenarios.model import Step

from ._base import Conn, RunState, Skipped, query_features, rep


class OptionSteps(RunState):
    """Handlers of the option-phase actions."""

    async def _do_expect_negotiated(self, index: int, step: Step) -> str:
        conn = self._conn(step)
        neg = conn.client.negotiation
        state = conn.client.connection.negotiated
        args = step.args
        problems: list[str] = []

        def compare(key: str, expected: object, got: object) -> None:
            if expected != got:
                problems.append(f"{key}: expected {expected}, got {got}")

        simple = {
            "style": neg.style,
            "tls": neg.tls,
            "structured_replies": state.structured_replies or state.extended_headers,
            "extended_headers": state.extended_headers,
            "selected_with": neg.selected_with,
            "description": neg.description,
            "canonical_name": neg.canonical_name,
        }
        for key, got in simple.items():
            if key in args:
                compare(key, args[key], got)
        if "size" in args:
            size = self.spec.size if args["size"] == "export" else args["size"]
            compare("size", size, neg.export_size if neg.export_size is not None
                    else state.export_size)
        flag_sets = {
            "flags": ("TransmissionFlag", state.transmission_flags),
            "handshake_flags": ("HandshakeFlag", neg.handshake_flags),
            "client_flags": ("ClientFlag", neg.client_flags),
        }
        for key, (kind, value) in flag_sets.items():
            for name in args.get(key, []):
                if not value & spec_names.value(kind, name):
                    problems.append(f"{key}: {name} expected, not set")
            for name in args.get(f"{key}_absent", []):
                if value & spec_names.value(kind, name):
                    problems.append(f"{key}: {name} set, expected absent")
        selected = sorted(conn.client.contexts)
        if "contexts" in args:
            compare("contexts", sorted(args["contexts"]), selected)
        for name in args.get("contexts_include", []):
            if name not in selected:
                problems.append(f"contexts: {name} not selected (selected: {selected})")
        for name in args.get("contexts_exclude", []):
            if name in selected:
                problems.append(f"contexts: {name} selected, expected not")
        block = state.block_size
        if "block_size_present" in args:
            compare("block_size_present", args["block_size_present"], block is not None)
        if "block_size" in args:
            wanted = args["block_size"]
            if wanted is None:
                compare("block_size", None, block)
            elif block is None:
                problems.append(f"block_size: expected {wanted}, got none")
            else:
                for key in ("minimum", "preferred", "maximum"):
                    if key in wanted:
                        compare(f"block_size.{key}", wanted[key], getattr(block, key))
        init = state.init_state
        if "init_state_present" in args:
            compare("init_state_present", args["init_state_present"], init is not None)
        if "init_state" in args:
            compare("init_state", spec_names.flag_value("InitFlag", args["init_state"]), init)
        kinds = neg.fallback_kinds()
        for kind in args.get("fallbacks", []):
            if kind not in kinds:
                problems.append(f"fallbacks: {kind} expected (got {kinds})")
        for kind in args.get("fallbacks_absent", []):
            if kind in kinds:
                problems.append(f"fallbacks: {kind} taken, expected not")
        sent = [exchange.option for exchange in neg.options]
        for name in args.get("options_sent", []):
            if spec_names.value("Opt", name) not in sent:
                problems.append(f"options: {name} not sent")
        for name in args.get("options_not_sent", []):
            if spec_names.value("Opt", name) in sent:
                problems.append(f"options: {name} sent")
        if problems:
            raise Failed("negotiated: " + "; ".join(problems), None, neg.as_dict())
        return "as expected"

    async def _do_list_exports(self, index: int, step: Step) -> str:
        conn = self._conn(step)
        try:
            entries = await conn.client.list_exports()
        except NegotiationError as exc:
            self._refusal(exc, step.expect, "NBD_OPT_LIST", {"list-exports"})
            return "refused as expected"
        self._refusal(None, step.expect, "NBD_OPT_LIST", set())
        names = [entry.name for entry in entries]
        expect = step.expect or {}
        for name in expect.get("include", []):
            if name not in names:
                raise Failed(f"NBD_OPT_LIST: {name!r} not listed", name, names)
        if "exact" in expect and sorted(expect["exact"]) != sorted(names):
            raise Failed("NBD_OPT_LIST: exports differ", sorted(expect["exact"]), sorted(names))
        return f"exports: {names}"

    async def _do_info(self, index: int, step: Step) -> str:
        conn = self._conn(step)
        export = step.args.get("export")
        requests = None
        if "requests" in step.args:
            requests = [spec_names.value("Info", i) for i in step.args["requests"]]
        try:
            info = await conn.client.info(export, requests)
        except NegotiationError as exc:
            self._refusal(exc, step.expect, "NBD_OPT_INFO", {"opt-go"})
            return "refused as expected"
        self._refusal(None, step.expect, "NBD_OPT_INFO", set())
        expect = step.expect or {}
        required = self.scenario.requires_server
        if info.init_state is None and "init-state" in required and (
                expect.get("init_state") or expect.get("init_state_present")):
            raise FeatureMissing("init-state", "no NBD_INFO_INIT_STATE in the NBD_OPT_INFO reply")
        if info.block_size is None and "info-block-size" in required and (
                expect.get("block_size") or expect.get("block_size_present")):
            raise FeatureMissing("info-block-size",
                                 "no NBD_INFO_BLOCK_SIZE in the NBD_OPT_INFO reply")
        self._check_facts(step.expect or {}, info.size, info.transmission_flags,
                          info.block_size, info.description, info.canonical_name,
                          info.init_state, list(info.infos), "NBD_OPT_INFO")
        return f"size {info.size}"

    def _check_facts(self, expect: Mapping[str, Any], size: int | None, flags: int,
                     block: Any, description: str | None, canonical: str | None,
                     init_state: int | None, infos: list[int], what: str) -> None:
        problems = []
        if "size" in expect:
            wanted = self.spec.size if expect["size"] == "export" else expect["size"]
            if size != wanted:
                problems.append(f"size: expected {wanted}, got {size}")
        for name in expect.get("flags", []):
            if not flags & spec_names.value("TransmissionFlag", name):
                problems.append(f"{name} not set")
        for name in expect.get("flags_absent", []):
            if flags & spec_names.value("TransmissionFlag", name):
                problems.append(f"{name} set, expected absent")
        if "block_size_present" in expect and (block is not None) != expect["block_size_present"]:
            problems.append(f"block size {'missing' if block is None else 'present'}")
        if "block_size" in expect:
            wanted = expect["block_size"]
            if wanted is None and block is not None:
                problems.append(f"block size: expected none, got {block}")
            elif wanted is not None:
                if block is None:
                    problems.append(f"block size: expected {wanted}, got none")
                else:
                    for key, value in wanted.items():
                        if getattr(block, key) != value:
                            problems.append(f"block size {key}: expected {value}, got "
                                            f"{getattr(block, key)}")
        if "description" in expect and description != expect["description"]:
            problems.append(f"description: expected {expect['description']!r}, "
                            f"got {description!r}")
        if "canonical_name" in expect and canonical != expect["canonical_name"]:
            problems.append(f"name: expected {expect['canonical_name']!r}, got {canonical!r}")
        if "init_state_present" in expect and \
                (init_state is not None) != expect["init_state_present"]:
            problems.append(f"init state {'missing' if init_state is None else 'present'}")
        if "init_state" in expect:
            wanted = spec_names.flag_value("InitFlag", expect["init_state"])
            if init_state != wanted:
                problems.append(f"init state: expected {wanted}, got {init_state}")
        for name in expect.get("infos_include", []):
            if spec_names.value("Info", name) not in infos:
                problems.append(f"{name} not sent")
        if problems:
            raise Failed(f"{what}: " + "; ".join(problems))

    def _needs_structured(self, conn: Conn, what: str, queries: list[str]) -> None:
        """Metadata-context options need structured replies or extended headers first.

        Without them, a required context feature is missing: the server said so by
        refusing structured replies (or the client lacks them, in a fallback run).
        """
        record = conn.client.negotiation
        if record.structured_replies or record.extended_headers:
            return
        lacking = sorted({"structured-replies", "extended-headers"} & set(self.missing))
        if self.fallback_mode and lacking:
            raise Skipped(f"{what} needs structured replies ({', '.join(lacking)} missing)")
        features = self._context_features(queries, c.Opt.SET_META_CONTEXT)
        why = missing_on_wire("structured-replies", record,
                                        {"structured_replies": True})
        for feature in sorted(features & self.scenario.requires_server):
            raise FeatureMissing(feature, f"no structured replies, so no metadata contexts "
                                          f"({why or 'not negotiated'})")
        raise Failed(f"{what} needs structured replies or extended headers, which this "
                     "connection has not negotiated")

    def _context_features(self, queries: list[str], opt: int) -> set[str]:
        return query_features(queries) or set(OPTION_FEATURES[opt])

    async def _do_list_meta_contexts(self, index: int, step: Step) -> str:
        conn = self._conn(step)
        queries = list(step.args.get("queries") or [])
        self._needs_structured(conn, "NBD_OPT_LIST_META_CONTEXT", queries)
        try:
            names = await conn.client.list_meta_contexts(step.args.get("export"), queries)
        except NegotiationError as exc:
            self._refusal(exc, step.expect, "NBD_OPT_LIST_META_CONTEXT",
                          self._context_features(queries, c.Opt.LIST_META_CONTEXT))
            return "refused as expected"
        self._refusal(None, step.expect, "NBD_OPT_LIST_META_CONTEXT", set())
        try:
            self._check_names(step.expect or {}, names, "contexts", "NBD_OPT_LIST_META_CONTEXT")
        except Failed:
            self._missing_contexts(queries, names, step.expect or {},
                                   "NBD_OPT_LIST_META_CONTEXT")
            raise
        return f"contexts: {names}"

    def _missing_contexts(self, queries: list[str], names: list[str],
                          expect: Mapping[str, Any], what: str) -> None:
        """An expectation on contexts failed: is it because a required feature is missing?"""
        for query in queries:
            feature = context_feature(query)
            if query == "qemu:":
                feature = "meta-context-list-query"
            if feature is None or feature not in self.scenario.requires_server:
                continue
            prefix = query if query.endswith(":") else None
            found = [n for n in names if (n.startswith(prefix) if prefix else n == query)]
            if not found:
                raise FeatureMissing(feature, f"{what} returned nothing for {query!r}")
        wanted = [*expect.get("contexts", []), *expect.get("selected", []),
                  *expect.get("include", [])]
        for name in wanted:
            feature = context_feature(name)
            if name not in names and feature in self.scenario.requires_server:
                raise FeatureMissing(feature, f"{what} did not return {name!r}")

    @staticmethod
    def _check_names(expect: Mapping[str, Any], names: list[str], key: str, what: str) -> None:
        if key in expect and sorted(expect[key]) != sorted(names):
            raise Failed(f"{what}: {key} differ", sorted(expect[key]), sorted(names))
        for name in expect.get("include", []):
            if name not in names:
                raise Failed(f"{what}: {name!r} missing", name, names)
        for name in expect.get("exclude", []):
            if name in names:
                raise Failed(f"{what}: {name!r} present, expected not", None, names)

    async def _exchange(self, conn: Conn, request: OptionRequest,
                        strict: bool) -> tuple[list[tuple[OptionReply, object]], bool, object]:
        """Send one option; its replies up to the final one, whether the server closed,
        and (for NBD_OPT_EXPORT_NAME) the export-name reply."""
        client = conn.client
        await client.send_option(request, strict=strict)
        replies: list[tuple[OptionReply, object]] = []
        while True:
            try:
                event = await client.recv_event(self.timeout)
            except NbdConnectionError:
                return replies, True, None
            if isinstance(event, ConnectionClosed):
                return replies, True, None
            if isinstance(event, ExportNameReply):
                return replies, False, event
            assert isinstance(event, OptionReply)
            try:
                payload = decode_reply_payload(event.reply_type, event.data)
            except Exception:  # the state machine already judged it (strict client)
                payload = None
            replies.append((event, payload))
            if event.reply_type == c.Rep.ACK or c.is_rep_error(event.reply_type):
                return replies, False, None

    async def _do_set_meta_contexts(self, index: int, step: Step) -> str:
        conn = self._conn(step)
        export = step.args.get("export", conn.client.negotiation.export_name)
        queries = tuple(step.args.get("queries") or ())
        self._needs_structured(conn, "NBD_OPT_SET_META_CONTEXT", list(queries))
        request = make_option(c.Opt.SET_META_CONTEXT, MetaContextPayload(export, queries))
        replies, closed, _ = await self._exchange(conn, request, strict=True)
        if closed:
            raise Failed("NBD_OPT_SET_META_CONTEXT: the server closed the connection")
        final = replies[-1][0].reply_type
        if final != c.Rep.ACK:
            message = replies[-1][1].message if isinstance(replies[-1][1],
                                                           ErrorReplyPayload) else ""
            exc = NegotiationError(f"{rep(final)} {message}".strip(),
                                   option=c.Opt.SET_META_CONTEXT, reply_type=final)
            conn.contexts = []
            self._refusal(exc, step.expect, "NBD_OPT_SET_META_CONTEXT",
                          self._context_features(list(queries), c.Opt.SET_META_CONTEXT))
            return "refused as expected"
        self._refusal(None, step.expect, "NBD_OPT_SET_META_CONTEXT", set())
        names = [p.name for _, p in replies if isinstance(p, MetaContextReplyPayload)]
        conn.contexts = list(queries)
        try:
            self._check_names(step.expect or {}, names, "selected", "NBD_OPT_SET_META_CONTEXT")
        except Failed:
            self._missing_contexts(list(queries), names, step.expect or {},
                                   "NBD_OPT_SET_META_CONTEXT")
            raise
        return f"selected: {names}"

    async def _do_option(self, index: int, step: Step) -> str:
        conn = self._conn(step)
        args = step.args
        opt = spec_names.value("Opt", args["option"])
        if "data" in args:
            request = OptionRequest(opt, bytes.fromhex(args["data"]))
        else:
            name = args.get("name", "")
            if opt in (c.Opt.INFO, c.Opt.GO):
                infos = tuple(spec_names.value("Info", i) for i in args.get("info", []))
                payload: object = InfoRequestPayload(name, infos)
            elif opt in (c.Opt.LIST_META_CONTEXT, c.Opt.SET_META_CONTEXT):
                payload = MetaContextPayload(name, tuple(args.get("queries") or ()))
            elif opt == c.Opt.EXPORT_NAME:
                payload = ExportNamePayload(name)
            else:
                payload = EmptyPayload()
            request = make_option(opt, payload)
        replies, closed, export_reply = await self._exchange(conn, request,
                                                             strict=args.get("strict", False))
        types = [rep(reply.reply_type) for reply, _ in replies]
        expect = step.expect or {}
        got = "closed" if closed else (types[-1] if types else "export-name reply")
        if expect.get("closed") and not closed:
            raise Failed(f"{c.name_of(c.Opt, opt)}: expected the server to close", "closed", got)
        if "closed" in expect and not expect["closed"] and closed:
            raise Failed(f"{c.name_of(c.Opt, opt)}: the server closed the connection",
                         "a reply", "closed")
        if "final" in expect and not option_error_matches(expect["final"], {got}):
            if replies:
                self._unsupported_option(replies[-1][0].reply_type, c.name_of(c.Opt, opt),
                                         set(OPTION_FEATURES.get(opt, ())), False)
            raise Failed(f"{c.name_of(c.Opt, opt)}: final reply", expect["final"], got)
        if "replies" in expect:
            wanted = [rep(spec_names.value("Rep", r)) for r in expect["replies"]]
            if wanted != types:
                raise Failed(f"{c.name_of(c.Opt, opt)}: replies differ", wanted, types)
        for name in expect.get("replies_include", []):
            if rep(spec_names.value("Rep", name)) not in types:
                raise Failed(f"{c.name_of(c.Opt, opt)}: no {name} reply", name, types)
        if not expect and closed:
            raise Failed(f"{c.name_of(c.Opt, opt)}: the server closed the connection",
                         "a reply", "closed")
        if closed:
            self.conns.pop(step.on, None)
        in_transmission = export_reply is not None or conn.client.phase is Phase.TRANSMISSION
        if in_transmission and self.first_connect is None:
            self.first_connect = (conn.options, conn.asked)
        return f"{c.name_of(c.Opt, opt)} -> {got}"


__all__ = ["OptionSteps"]
