"""``replay --against URI``: play a recorded client to a live server and compare the answers.

The recorded session's messages are walked in causal order.  A client message
(client flags, an option, a request) is sent again, re-encoded by the protocol
codec in the form the live negotiation requires; a server message is waited
for (every wait bounded by the timeout) and compared, semantically, with the
live server's counterpart: option replies option by option, transmission
replies request by request (matched by cookie: the recorded cookies are
reused).  Requests the recorded client pipelined are pipelined again: a
request recorded before a reply is sent before waiting for that reply.

Only what must adapt does (and the report's notes say so): the export name
when asked, the request header form, metadata context ids, client flags the
live server does not offer.  When the live server refuses an option the
recorded one accepted, the replay does what a real client does
(``NBD_OPT_EXTENDED_HEADERS`` -> ``NBD_OPT_STRUCTURED_REPLY``, ``NBD_OPT_GO``
-> ``NBD_OPT_EXPORT_NAME``, ``NBD_REP_ERR_BLOCK_SIZE_REQD`` -> ask again with
``NBD_INFO_BLOCK_SIZE``...), reports it as a ``fallback`` difference and goes
on in the form the live server speaks.  A request the live negotiation cannot
express is reported and skipped, never sent blindly.

Replaying writes modifies the live export: point it at a scratch export.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from harness.address import Address
from harness.client.options import DEFAULT_TIMEOUT
from harness.client.uri import NbdUri, parse_uri
from harness.dissect import Session, WireMessage
from harness.protocol import Negotiated, Phase, RemoteProtocolError
from harness.protocol import constants as c
from harness.protocol.codec import decode_option_payload, option
from harness.protocol.errors import CodecError
from harness.protocol.messages import (
    ClientFlags,
    ConnectionClosed,
    EmptyPayload,
    Event,
    ExportNamePayload,
    ExportNameReply,
    InfoRequestPayload,
    NewstyleGreeting,
    OldstyleGreeting,
    OptionReply,
    OptionRequest,
    ReplyChunk,
    Request,
    SimpleReply,
)

from ._against_adapt import (
    adapt_request,
    option_export_name,
    recorded_option,
    recorded_request,
    rename_export,
)
from ._against_io import LiveServer, LiveTimeout
from ._compare import (
    Mismatch,
    OptionReplyView,
    compare_export,
    compare_option_replies,
    compare_replies,
    describe_reply,
    flag_change,
    option_reply_from_event,
    option_reply_from_wire,
    reply_from_events,
    reply_from_wire,
)
from ._load import Selection
from .model import Difference, ReplayError, ReplayReport

_GREETINGS = ("oldstyle-greeting", "newstyle-greeting")
_OPTION_ANSWERS = ("option-reply", "export-name-reply")
_REPLIES = ("simple-reply", "chunk")
_META_OPTIONS = (c.Opt.LIST_META_CONTEXT, c.Opt.SET_META_CONTEXT)
_MAX_VIOLATION_NOTES = 10
_FORM_NAMES = {"simple": "simple replies", "structured": "structured replies",
               "extended": "extended headers"}


class _Stop(Exception):
    """The replay cannot go on; the message says why (it becomes ReplayReport.error)."""


@dataclass
class _Exchange:
    """One replayed request: what was sent and both answers so far."""

    step: int
    label: str
    message: WireMessage
    sent: Request
    live_contexts: dict[int, str]
    forms_comparable: bool
    recorded: list[WireMessage] = field(default_factory=list)
    live: list[SimpleReply | ReplyChunk] = field(default_factory=list)
    compared: bool = False

    @property
    def live_done(self) -> bool:
        return any(isinstance(e, SimpleReply) or e.done for e in self.live)


def _outcome(replies: Sequence[OptionReply]) -> str:
    return c.name_of(c.Rep, replies[-1].reply_type) if replies else "no reply"


class _SessionReplay:
    """The replay of one recorded session on one new connection."""

    def __init__(self, session: Session, address: Address, peer: str, *, timeout: float,
                 export_name: str | None, truncated: bool) -> None:
        self.session = session
        self.address = address
        self.timeout = timeout
        self.export_name = export_name
        self.truncated = truncated
        self.report = ReplayReport(session=session.index, mode="against", peer=peer)
        self.recorded = Negotiated()  # what the recorded handshake settled so far
        self.renamed: dict[str, str] = {}
        self.exchanges: dict[int, _Exchange] = {}  # id(recorded request) -> exchange
        self.in_flight: dict[int, _Exchange] = {}  # live cookie -> exchange
        self.step = 0
        self.waiting = ""
        self.live: LiveServer | None = None

    # --- reporting -----------------------------------------------------------------------

    def note(self, text: str) -> None:
        if text not in self.report.notes:
            self.report.notes.append(text)

    def differ(self, step: int, message: WireMessage | None, label: str,
               mismatch: Mismatch) -> None:
        self.report.differences.append(Difference(
            step=step, message=label, aspect=mismatch.aspect, recorded=mismatch.recorded,
            live=mismatch.live, sections=mismatch.sections,
            frame=message.frame if message is not None else None))

    # --- the walk ------------------------------------------------------------------------

    async def run(self) -> ReplayReport:
        self._note_capture_gaps()
        try:
            self.live = await LiveServer.connect(self.address, self.timeout)
        except TimeoutError:
            self.report.error = f"could not connect to {self.address} within {self.timeout:g} s"
            return self.report
        except OSError as exc:  # the client's NbdConnectionError says where and why
            self.report.error = str(exc)
            return self.report
        try:
            await self._walk()
        except _Stop as stop:
            self.report.error = str(stop)
        except LiveTimeout as exc:
            self.report.error = f"{exc} (waiting for {self.waiting})"
        except RemoteProtocolError as exc:
            self.report.error = (f"the live server broke the protocol so that its bytes cannot "
                                 f"be read any more: {exc} (waiting for {self.waiting})")
        finally:
            await self.live.close()
        self._finish()
        return self.report

    async def _walk(self) -> None:
        messages = self.session.messages
        consumed: set[int] = set()
        for step, message in enumerate(messages, start=1):
            if id(message) in consumed:
                continue
            self.step = step
            try:
                await self._play(step, message, messages, consumed)
            except CodecError as exc:
                raise _Stop(f"the recorded {message.name} at frame {message.frame} cannot be "
                            f"read back: {exc.message}") from None

    async def _play(self, step: int, message: WireMessage, messages: list[WireMessage],
                    consumed: set[int]) -> None:
        """Send or wait for one recorded message (with an option: its replies too)."""
        kind = message.kind
        if kind in _GREETINGS:
            await self._greeting(step, message)
        elif kind == "client-flags":
            await self._client_flags(message)
        elif kind == "option":
            answers = []
            for later in messages[step:]:
                if later.kind not in _OPTION_ANSWERS or later.option is not message:
                    break
                answers.append(later)
            consumed.update(id(answer) for answer in answers)
            last = step + len(answers) == len(messages)
            await self._option(step, message, answers, last=last)
        elif kind in _OPTION_ANSWERS:
            self.note(f"#{step} {message.name} answers no recorded option: not compared")
        elif kind == "request":
            await self._request(step, message)
        elif kind in _REPLIES:
            await self._reply(step, message)

    # --- handshake -----------------------------------------------------------------------

    async def _next(self, waiting: str) -> Event:
        assert self.live is not None
        self.waiting = waiting
        return await self.live.next_event()

    async def _greeting(self, step: int, message: WireMessage) -> None:
        event = await self._next("the greeting")
        if isinstance(event, ConnectionClosed):
            self.differ(step, message, message.name, Mismatch(
                "missing reply", "a greeting", "the connection closed", ("Handshake",)))
            raise _Stop("the live server closed the connection before its greeting")
        recorded_style = "oldstyle" if message.kind == "oldstyle-greeting" else "newstyle"
        live_style = "oldstyle" if isinstance(event, OldstyleGreeting) else "newstyle"
        fields = message.fields
        if recorded_style != live_style:
            self.differ(step, message, message.name, Mismatch(
                "greeting style", f"{recorded_style} negotiation", f"{live_style} negotiation",
                ("Handshake", "Oldstyle negotiation", "Newstyle negotiation")))
            raise _Stop(f"the live server speaks {live_style} negotiation and the recorded "
                        f"session {recorded_style}: the rest cannot be replayed")
        self.report.replayed += 1
        if isinstance(event, OldstyleGreeting):
            recorded_flags = int(fields.get("transmission_flags", 0))
            self.recorded.transmission_flags = recorded_flags
            for mismatch in compare_export(fields.get("size"), recorded_flags, event.size,
                                           event.flags & 0xFFFF, ("Oldstyle negotiation",)):
                self.differ(step, message, message.name, mismatch)
            return
        assert isinstance(event, NewstyleGreeting)
        recorded_flags = int(fields.get("handshake_flags", 0))
        if recorded_flags != event.handshake_flags:
            recorded_text, live_text = flag_change(c.HandshakeFlag, recorded_flags,
                                                   event.handshake_flags)
            self.differ(step, message, message.name, Mismatch(
                "handshake flags", recorded_text, live_text,
                ("Handshake flags", "Newstyle negotiation")))

    async def _client_flags(self, message: WireMessage) -> None:
        assert self.live is not None
        recorded_flags = int(message.fields.get("client_flags", 0))
        self.recorded.client_flags = recorded_flags
        offered = self.live.conn.negotiated.handshake_flags
        flags = recorded_flags
        masks = ((c.ClientFlag.C_FIXED_NEWSTYLE, c.HandshakeFlag.FIXED_NEWSTYLE),
                 (c.ClientFlag.C_NO_ZEROES, c.HandshakeFlag.NO_ZEROES))
        for client_flag, server_flag in masks:
            if flags & client_flag and not offered & server_flag:
                flags &= ~client_flag
                self.note(f"client flag {c.spec_name(client_flag)} not sent: the live server "
                          f"does not offer {c.spec_name(server_flag)}")
        self.live.send(ClientFlags(flags))
        await self.live.flush()
        self.report.replayed += 1

    def _why_not_option(self, opt: int) -> tuple[str, tuple[str, ...]]:
        """Why a real client would not send ``opt`` on the live connection ("" if it would),
        and the spec sections that say so."""
        assert self.live is not None
        live = self.live.conn.negotiated
        recorded_fixed = self.recorded.client_flags & c.ClientFlag.C_FIXED_NEWSTYLE
        if recorded_fixed and not live.client_flags & c.ClientFlag.C_FIXED_NEWSTYLE \
                and opt != c.Opt.EXPORT_NAME:
            return ("the live server is not fixed-newstyle: NBD_OPT_EXPORT_NAME is the only "
                    "option it knows", ("Newstyle negotiation", "Fixed newstyle negotiation"))
        if (opt in _META_OPTIONS and self.recorded.reply_form != "simple"
                and live.reply_form == "simple"):
            return ("it needs structured replies or extended headers, which the live "
                    "negotiation lacks", ("Option types", "Metadata querying"))
        return "", ()

    async def _option(self, step: int, message: WireMessage, answers: list[WireMessage], *,
                      last: bool) -> None:
        assert self.live is not None
        opt = int(message.fields.get("option", 0))
        label = message.name
        request = recorded_option(message)
        recorded_name = option_export_name(request)
        request = rename_export(request, self.export_name)
        if recorded_name is not None and self.export_name is not None \
                and recorded_name != self.export_name:
            self.renamed[recorded_name] = self.export_name
            self.note(f"export {recorded_name!r} replaced by {self.export_name!r}, as asked")
        recorded_views = [option_reply_from_wire(m) for m in answers
                          if m.kind == "option-reply"]
        why_not, sections = self._why_not_option(opt)
        if why_not:
            went_in = bool(recorded_views) and recorded_views[-1].reply_type == c.Rep.ACK
            if opt == c.Opt.GO and went_in:
                await self._go_fallback_export_name(step, message, request, recorded_views,
                                                    f"not sent: {why_not}")
            else:
                self.differ(step, message, label, Mismatch(
                    "skipped", "sent", f"not sent: {why_not}", sections))
            self._track_option(opt, recorded_views)
            return
        if opt == c.Opt.EXPORT_NAME:
            await self._export_name(step, message, request, answers, last=last)
            return
        live_replies, closed = await self._exchange(request, label)
        self.report.replayed += 1 + len(answers)
        live_views = [option_reply_from_event(r) for r in live_replies]
        if not answers and last and self.truncated:
            self.note(f"#{step} {label}: the capture ends before its reply; the live "
                      f"{_outcome(live_replies)} is not compared")
        else:
            for mismatch in compare_option_replies(recorded_views, live_views,
                                                   renamed=self.renamed):
                if closed and not live_replies and mismatch.aspect == "reply type":
                    mismatch = Mismatch(mismatch.aspect, mismatch.recorded,
                                        "the server closed the connection", mismatch.sections)
                self.differ(step, message, label, mismatch)
        self._track_option(opt, recorded_views)
        recorded_ok = bool(recorded_views) and recorded_views[-1].reply_type == c.Rep.ACK
        live_ok = bool(live_replies) and live_replies[-1].reply_type == c.Rep.ACK
        if opt == c.Opt.STARTTLS and live_ok:
            raise _Stop("the live server accepted NBD_OPT_STARTTLS, which the recorded server "
                        "refused: what follows would need TLS; the replay stops here")
        if closed:
            if opt == c.Opt.ABORT or (not answers and last):
                return  # the session ends here either way
            raise _Stop(f"the live server closed the connection after {label}")
        if recorded_ok and not live_ok:
            await self._fall_back(step, message, opt, request, live_views, recorded_views)

    async def _exchange(self, request: OptionRequest, label: str) -> tuple[list[OptionReply], bool]:
        """Send one option; its live replies up to the final one, and whether the live
        server closed the connection instead."""
        assert self.live is not None
        self.live.send(request)
        await self.live.flush()
        replies: list[OptionReply] = []
        while True:
            event = await self._next(f"the reply to {label}")
            if isinstance(event, ConnectionClosed):
                return replies, True
            if not isinstance(event, OptionReply):
                raise _Stop(f"the live server answered {label} with {type(event).__name__}")
            replies.append(event)
            if event.reply_type == c.Rep.ACK or c.is_rep_error(event.reply_type):
                return replies, False

    def _track_option(self, opt: int, views: list[OptionReplyView]) -> None:
        """Follow what the recorded handshake settled with this option."""
        final = views[-1].reply_type if views and views[-1].final else None
        ok = final == c.Rep.ACK
        if opt == c.Opt.STRUCTURED_REPLY and ok:
            self.recorded.structured_replies = True
        elif opt == c.Opt.EXTENDED_HEADERS and ok:
            self.recorded.extended_headers = True
        elif opt == c.Opt.SET_META_CONTEXT and final is not None:
            self.recorded.meta_contexts = {v.context_id or 0: v.context_name or "" for v in views
                                      if v.reply_type == c.Rep.META_CONTEXT} if ok else {}
        elif opt == c.Opt.GO and ok:
            for view in views:
                if view.info_type == c.Info.EXPORT and view.transmission_flags is not None:
                    self.recorded.transmission_flags = view.transmission_flags

    async def _export_name(self, step: int, message: WireMessage, request: OptionRequest,
                           answers: list[WireMessage], *, last: bool) -> None:
        assert self.live is not None
        label = message.name
        self.live.send(request)
        await self.live.flush()
        event = await self._next(f"the reply to {label}")
        self.report.replayed += 1 + len(answers)
        if answers:
            recorded = answers[0].fields
            recorded_flags = int(recorded.get("transmission_flags", 0))
            self.recorded.transmission_flags = recorded_flags
            if not isinstance(event, ExportNameReply):
                self.differ(step, message, label, Mismatch(
                    "reply", f"size {recorded.get('size')}", "the server closed the connection",
                    ("Option types",)))
                raise _Stop(f"the live server closed the connection after {label}")
            for mismatch in compare_export(recorded.get("size"), recorded_flags, event.size,
                                           event.transmission_flags, ("Option types",)):
                self.differ(step, message, label, mismatch)
            return
        if last and self.truncated:
            self.note(f"#{step} {label}: the capture ends before its reply; the live answer "
                      "is not compared")
        elif isinstance(event, ExportNameReply):
            self.differ(step, message, label, Mismatch(
                "reply", "the server closed the connection", f"size {event.size}",
                ("Option types",)))

    # --- fallbacks -----------------------------------------------------------------------

    async def _fall_back(self, step: int, message: WireMessage, opt: int, request: OptionRequest,
                         live_views: list[OptionReplyView],
                         recorded_views: list[OptionReplyView]) -> None:
        """The live server refused what the recorded one accepted: do what a client does."""
        assert self.live is not None
        live = self.live.conn.negotiated
        refusal = describe_reply(live_views[-1] if live_views else None)
        label = message.name
        if opt == c.Opt.EXTENDED_HEADERS:
            if live.structured_replies:
                self.differ(step, message, label, Mismatch(
                    "fallback", "extended headers",
                    f"{refusal}: compact headers with the structured replies already "
                    "negotiated", ("Option types", "Structured reply chunk message")))
                return
            replies, closed = await self._exchange(
                option(c.Opt.STRUCTURED_REPLY, EmptyPayload()), "NBD_OPT_STRUCTURED_REPLY")
            outcome = _outcome(replies)
            result = ("structured replies with compact headers" if outcome == "NBD_REP_ACK"
                      else "simple replies with compact headers")
            self.differ(step, message, label, Mismatch(
                "fallback", "extended headers",
                f"NBD_OPT_STRUCTURED_REPLY sent instead: {outcome}, {result}",
                ("Option types", "Structured reply chunk message", "Request message")))
            if closed:
                raise _Stop("the live server closed the connection after NBD_OPT_STRUCTURED_REPLY")
        elif opt == c.Opt.STRUCTURED_REPLY:
            self.differ(step, message, label, Mismatch(
                "fallback", "structured replies",
                "simple replies: no metadata contexts, no block status",
                ("Option types", "Simple reply message")))
        elif opt == c.Opt.GO:
            final = live_views[-1].reply_type if live_views else None
            if final == c.Rep.ERR_UNSUP:
                await self._go_fallback_export_name(step, message, request, recorded_views,
                                                    refusal)
            elif final == c.Rep.ERR_BLOCK_SIZE_REQD:
                await self._go_again_with_block_size(step, message, request, recorded_views)
            if self.live.conn.phase is not Phase.TRANSMISSION:
                raise _Stop(f"the live server refused {label} ({refusal}): there is no "
                            "transmission phase to replay")

    async def _go_fallback_export_name(self, step: int, message: WireMessage,
                                       request: OptionRequest,
                                       recorded_views: list[OptionReplyView],
                                       why: str) -> None:
        """``NBD_OPT_EXPORT_NAME`` instead of a ``NBD_OPT_GO`` the live server cannot take."""
        assert self.live is not None
        label = message.name
        if self.live.conn.negotiated.extended_headers:
            self.differ(step, message, label, Mismatch(
                "fallback", "NBD_OPT_GO", f"{why}; NBD_OPT_EXPORT_NAME is not allowed after "
                "extended headers", ("Option types",)))
            raise _Stop(f"no way into transmission on the live server after {label}")
        name = ""
        try:
            payload = decode_option_payload(request.option, request.data)
            if isinstance(payload, InfoRequestPayload):
                name = payload.name
        except CodecError:
            pass
        self.live.send(option(c.Opt.EXPORT_NAME, ExportNamePayload(name)))
        await self.live.flush()
        event = await self._next("the reply to NBD_OPT_EXPORT_NAME (fallback)")
        if not isinstance(event, ExportNameReply):
            self.differ(step, message, label, Mismatch(
                "fallback", "NBD_OPT_GO", f"{why}; NBD_OPT_EXPORT_NAME {name!r} sent instead: "
                "the server closed the connection", ("Option types",)))
            raise _Stop(f"the live server closed the connection after NBD_OPT_EXPORT_NAME "
                        f"{name!r} (fallback for {label})")
        self.differ(step, message, label, Mismatch(
            "fallback", "NBD_OPT_GO", f"{why}; NBD_OPT_EXPORT_NAME {name!r} sent instead",
            ("Option types",)))
        self.report.replayed += 1 + len(recorded_views)
        export = next((v for v in recorded_views if v.info_type == c.Info.EXPORT), None)
        if export is not None:
            for mismatch in compare_export(export.size, export.transmission_flags, event.size,
                                           event.transmission_flags):
                self.differ(step, message, label, mismatch)

    async def _go_again_with_block_size(self, step: int, message: WireMessage,
                                        request: OptionRequest,
                                        recorded_views: list[OptionReplyView]) -> None:
        """``NBD_REP_ERR_BLOCK_SIZE_REQD``: ask again, promising to obey block sizes."""
        try:
            payload = decode_option_payload(request.option, request.data)
        except CodecError:
            return
        if not isinstance(payload, InfoRequestPayload) or c.Info.BLOCK_SIZE in \
                payload.info_requests:
            return
        again = option(c.Opt.GO, InfoRequestPayload(
            payload.name, (*payload.info_requests, c.Info.BLOCK_SIZE)))
        replies, closed = await self._exchange(again, f"{message.name} (asked again)")
        self.differ(step, message, message.name, Mismatch(
            "fallback", "NBD_OPT_GO", f"asked again with NBD_INFO_BLOCK_SIZE: {_outcome(replies)}",
            ("Option types", "Size constraints")))
        if closed:
            raise _Stop(f"the live server closed the connection after {message.name}")
        live_views = [option_reply_from_event(r) for r in replies]
        for mismatch in compare_option_replies(recorded_views, live_views, renamed=self.renamed):
            self.differ(step, message, message.name, mismatch)

    # --- transmission ----------------------------------------------------------------------

    async def _request(self, step: int, message: WireMessage) -> None:
        assert self.live is not None
        recorded = recorded_request(message)
        label = f"{message.name} cookie {recorded.cookie:#x}"
        live = self.live.conn.negotiated
        if self.live.conn.phase not in (Phase.TRANSMISSION, Phase.DISCONNECTING):
            raise _Stop(f"the live session is not in transmission at {label}")
        plan = adapt_request(recorded, self.recorded, live)
        if plan.request is None:
            self.differ(step, message, label, Mismatch(
                "skipped", "sent", f"not sent: {plan.skip_reason}", plan.sections))
            return
        for text in plan.notes:
            self.note(text)
        sent = plan.request
        if sent.extended != recorded.extended:
            form = "extended" if sent.extended else "compact"
            self.note(f"requests sent with {form} headers, as the live negotiation requires"
                      + (" (writes with NBD_CMD_FLAG_PAYLOAD_LEN)" if sent.extended else ""))
        self.live.send(sent)
        await self.live.flush()
        self.report.replayed += 1
        if sent.type == c.Cmd.DISC:
            return
        live_form = live.reply_form
        if live_form != self.recorded.reply_form:
            self.note(f"replies are compared by meaning, not form: the live negotiation has "
                      f"{_FORM_NAMES[live_form]}, the recorded one "
                      f"{_FORM_NAMES[self.recorded.reply_form]}")
        exchange = _Exchange(step, label, message, sent, dict(live.meta_contexts),
                             forms_comparable=live_form == self.recorded.reply_form)
        self.exchanges[id(message)] = exchange
        self.in_flight[sent.cookie] = exchange

    async def _reply(self, step: int, message: WireMessage) -> None:
        request = message.request
        if request is None:
            self.note(f"#{step} {message.name} answers no recorded request: not compared")
            return
        exchange = self.exchanges.get(id(request))
        if exchange is None:
            return  # its request was skipped (a difference already) or not replayed
        exchange.recorded.append(message)
        final = message.kind == "simple-reply" or bool(
            int(message.fields.get("flags", 0)) & c.ReplyFlag.DONE)
        if final:
            await self._pump(lambda: exchange.live_done, exchange)
            self._compare(exchange)
        else:
            await self._pump(
                lambda: exchange.live_done or len(exchange.live) >= len(exchange.recorded),
                exchange)
        self.report.replayed += 1

    async def _pump(self, done: Callable[[], bool], exchange: _Exchange) -> None:
        """Read live replies (sorting them by cookie) until ``done()``."""
        while not done():
            try:
                event = await self._next(f"the reply to {exchange.label}")
            except LiveTimeout as exc:
                self.differ(exchange.step, exchange.message, exchange.label, Mismatch(
                    "missing reply", "a reply", f"nothing within {self.timeout:g} s",
                    ("Transmission",)))
                raise _Stop(f"{exc} (waiting for the reply to {exchange.label})") from None
            if isinstance(event, ConnectionClosed):
                self.differ(exchange.step, exchange.message, exchange.label, Mismatch(
                    "missing reply", "a reply", "the server closed the connection",
                    ("Transmission", "Terminating the transmission phase")))
                raise _Stop(f"the live server closed the connection while the replay waited "
                            f"for the reply to {exchange.label}")
            if not isinstance(event, SimpleReply | ReplyChunk):
                continue
            owner = self.in_flight.get(event.cookie)
            if owner is None or owner.live_done:
                kind = "simple reply" if isinstance(event, SimpleReply) else \
                    c.name_of(c.ReplyType, event.type)
                self.report.differences.append(Difference(
                    step=self.step, message=f"{kind} cookie {event.cookie:#x}",
                    aspect="extra message", recorded="nothing",
                    live=f"a {kind} for a cookie with no request in flight",
                    sections=("Transmission",)))
                continue
            owner.live.append(event)

    def _compare(self, exchange: _Exchange) -> None:
        recorded = reply_from_wire(exchange.message, exchange.recorded)
        live = reply_from_events(exchange.sent.offset, exchange.live, exchange.live_contexts)
        sent = exchange.sent
        for mismatch in compare_replies(sent.type, sent.offset, sent.length, recorded, live,
                                        forms_comparable=exchange.forms_comparable):
            self.differ(exchange.step, exchange.message, exchange.label, mismatch)
        exchange.compared = True

    # --- the end ----------------------------------------------------------------------------

    def _note_capture_gaps(self) -> None:
        for region in self.session.undecoded:
            if region.kind in ("incomplete", "after-gap"):
                self.note(f"the capture misses part of this session ({region.reason}, "
                          f"frame {region.frame}): replayed what it holds")
        if self.truncated:
            self.note("the capture file ends part-way through this session: replayed what it "
                      "holds")

    def _finish(self) -> None:
        for exchange in self.exchanges.values():
            if not exchange.compared and not self.report.error:
                self.note(f"#{exchange.step} {exchange.label}: the capture holds no complete "
                          "reply; the live one is not compared")
        if self.live is None:
            return
        seen = []
        for violation in self.live.violations:
            text = f"the live server broke a rule: {violation.message} [{violation.section}]"
            if text not in seen:
                seen.append(text)
        for text in seen[:_MAX_VIOLATION_NOTES]:
            self.note(text)
        if len(seen) > _MAX_VIOLATION_NOTES:
            self.note(f"... and {len(seen) - _MAX_VIOLATION_NOTES} more rules broken")


# --- public entry points ------------------------------------------------------------------


def target_of(uri: str | NbdUri, export_name: str | None = None) -> tuple[NbdUri, str | None]:
    """The parsed URI and the export name to use instead of the recorded ones (or None).

    ``--export`` wins; otherwise a URI that names an export replaces the recorded
    export names with it; ``nbd://HOST:PORT`` (empty export) keeps them.  TLS URIs are
    refused: the replay speaks the recorded session, which was in the clear.
    """
    target = parse_uri(uri) if isinstance(uri, str) else uri
    if target.tls_required:
        raise ReplayError(f"{target}: replay speaks the recorded session in the clear and "
                          "does not do TLS; give an nbd:// or nbd+unix:// URI")
    if export_name is not None and target.export and target.export != export_name:
        raise ReplayError(f"the URI names export {target.export!r} and --export names "
                          f"{export_name!r}: give only one of them")
    return target, export_name if export_name is not None else (target.export or None)


async def replay_session(session: Session, uri: str | NbdUri, *,
                         timeout: float = DEFAULT_TIMEOUT, export_name: str | None = None,
                         truncated: bool = False) -> ReplayReport:
    """Replay the client side of ``session`` against the server at ``uri``.

    ``truncated`` says the capture file ended while this session was still going.
    Never raises for what the live server does: that is in the report.
    """
    target, export = target_of(uri, export_name)
    replay = _SessionReplay(session, target.address, str(target), timeout=timeout,
                            export_name=export, truncated=truncated)
    return await replay.run()


def _cut_short(selection: Selection, session: Session) -> bool:
    """True when the capture file broke off while ``session`` was still going."""
    capture = selection.capture
    return bool(capture.errors) and session.last_frame >= capture.frames


def replay_against(selection: Selection, uri: str | NbdUri, *,
                   timeout: float = DEFAULT_TIMEOUT,
                   export_name: str | None = None) -> list[ReplayReport]:
    """Replay every selected session, each on a new connection, one after the other.

    Raises :class:`ReplayError` (a user mistake: a TLS URI, two export names) before
    connecting; what the live server does is reported, never raised.
    """
    target, _ = target_of(uri, export_name)

    async def replay_all() -> list[ReplayReport]:
        return [await replay_session(session, target, timeout=timeout, export_name=export_name,
                                     truncated=_cut_short(selection, session))
                for session in selection.sessions]

    return asyncio.run(replay_all())


__all__ = ["DEFAULT_TIMEOUT", "replay_against", "replay_session", "target_of"]
