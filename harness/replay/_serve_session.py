"""One live connection played from one recorded session: the server side of the replay.

The live client's messages are matched to the recorded client's: options by
type, in order; requests by command, offset and length (in any order, since
clients with several requests in flight reorder them), else by command alone.
A matched message gets the recorded server's answer, adapted where it must be
(:mod:`._serve_reply`); anything else gets the honest answer of a reference
server configured like the recorded one (:mod:`._serve_honest`), served from
the image reconstructed from the recording.  Every way the live client departs
from the recorded one becomes a :class:`Difference`; the connection goes on
wherever it sensibly can.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict, deque
from dataclasses import dataclass

from harness.protocol import NEED_DATA, Connection, Phase, Role
from harness.protocol import constants as c
from harness.protocol.codec import decode_block_status_payload, decode_option_payload
from harness.protocol.errors import CodecError, ProtocolError, RemoteProtocolError
from harness.protocol.messages import (
    ClientFlags,
    ConnectionClosed,
    Event,
    ExportNamePayload,
    InfoRequestPayload,
    MetaContextPayload,
    NewstyleGreeting,
    OldstyleGreeting,
    OptionRequest,
    RawPayload,
    Request,
)
from reference_server.storage import StorageError

from . import _serve_reply as adapt
from ._serve_honest import HonestServer
from ._serve_image import ReplayImage
from ._serve_script import (
    RecordedOption,
    RecordedRequest,
    Script,
    describe_request,
    effect_length,
    succeeded,
)
from .model import Difference, ReplayReport

READ_CHUNK = 1 << 20
MAX_REQUEST_PAYLOAD = 64 << 20
"""As the reference server: a larger request payload ends the connection."""
MAX_MISSING_LISTED = 50
"""Missing messages listed one by one; more are summed up in one difference."""

OPTION_SECTIONS = ("Option types",)
REQUEST_SECTIONS = ("Request types",)
DISC_SECTIONS = ("Terminating the transmission phase", "Request types")


class _Closed(Exception):
    """The connection ends here (the reason is in the report already, or needs none)."""


class _Idle(Exception):
    """The live client sent nothing within the timeout."""


@dataclass
class Played:
    """What a connection plays: one recorded session, its image and its honest server."""

    script: Script
    image: ReplayImage
    honest: HonestServer
    export_name: str
    """The name the live client asks for (the recorded one, or ``--export``)."""


class Player:
    """Serves one live connection from :class:`Played`; :meth:`run` returns the report."""

    def __init__(self, played: Played, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter, peer: str, timeout: float) -> None:
        self.played = played
        self.script = played.script
        self.reader = reader
        self.writer = writer
        self.timeout = timeout
        self.conn = Connection(Role.SERVER, strict_remote=False, strict_local=False,
                               max_payload=MAX_REQUEST_PAYLOAD)
        self.report = ReplayReport(session=played.script.index, mode="serve", peer=peer)
        self._notes: dict[str, None] = {}
        self._options_used: set[int] = set()
        self._options_blamed: set[int] = set()
        self._last_option = -1
        self._requests = _Pending(played.script.requests)
        self._position = 0  # step of the last recorded message matched
        self._flags_sent = False  # the live client sent its client flags
        self._note(*played.script.notes)
        recorded_name = played.script.facts.name
        self._rename = ((recorded_name, played.export_name)
                        if played.export_name != recorded_name else None)

    # --- the connection ------------------------------------------------------------------

    async def run(self) -> ReplayReport:
        """Play the session to the live client until one side ends it."""
        try:
            if await self._handshake():
                await self._transmission()
        except _Closed:
            pass
        except _Idle:
            self.report.error = (f"the client sent nothing for {self.timeout:g} s "
                                 f"({self._waiting_for()})")
        except RemoteProtocolError as exc:
            step, name, frame = self._blame_next()
            self._differ(step, name, "malformed message", name, exc.message,
                         (exc.section,) if exc.section else (), frame)
            self.report.error = f"the client broke the protocol: {exc}"
        except ProtocolError as exc:
            self.report.error = f"protocol error: {exc}"
        except (ConnectionError, OSError) as exc:
            self.report.error = f"connection lost: {exc}"
        except asyncio.CancelledError:
            if not self.report.error:
                self.report.error = "the replay server stopped"
            raise
        except Exception as exc:
            # A bug of the replay itself: the report says so, other connections go on.
            self.report.error = f"the replay failed: {type(exc).__name__}: {exc}"
        finally:
            self._missing_at_end()
            # In the recorded session's order (found in the live client's order).
            self.report.differences.sort(key=lambda difference: difference.step)
            self.report.notes = list(self._notes)
            self.writer.close()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(5):
                    await self.writer.wait_closed()
        return self.report

    async def _next(self) -> Event:
        while True:
            event = self.conn.next_event()
            if event is not NEED_DATA:
                if isinstance(event, ConnectionClosed):
                    raise _Closed
                return event  # type: ignore[return-value]
            # asyncio.timeout, not wait_for: Python 3.11's wait_for can swallow a
            # cancellation (stop()) that arrives as the awaited read completes.
            try:
                async with asyncio.timeout(self.timeout):
                    data = await self.reader.read(READ_CHUNK)
            except TimeoutError:
                raise _Idle from None
            self.conn.receive_data(data)

    async def _send(self, *events: Event) -> None:
        for event in events:
            self.writer.write(self.conn.send(event))
        try:
            async with asyncio.timeout(self.timeout):
                await self.writer.drain()
        except TimeoutError:
            raise _Idle from None

    def abort(self) -> None:
        """Drop the connection now (the server is stopping): a pending read ends."""
        if not self.report.error:
            self.report.error = "the replay server stopped"
        self.writer.transport.abort()

    def _note(self, *notes: str) -> None:
        for note in notes:
            self._notes.setdefault(note, None)

    def _differ(self, step: int, message: str, aspect: str, recorded: str, live: str,
                sections: tuple[str, ...], frame: int | None = None) -> None:
        self.report.differences.append(
            Difference(step, message, aspect, recorded, live, sections, frame))

    def _blame_next(self) -> tuple[int, str, int | None]:
        """The next recorded client message not yet matched, taken as the one the live
        client sent in its place: ``(step, name, frame)``."""
        if not self._flags_sent and self.script.client_flags is not None:
            self._flags_sent = True
            step = self.script.client_flags_step
            return step, "client flags", self.script.session.messages[step - 1].frame
        options = [(o.step, i) for i, o in enumerate(self.script.options)
                   if i not in self._options_used and i not in self._options_blamed]
        requests = [(self.script.requests[i].step, i) for i in self._requests.left()]
        if options and (not requests or options[0] < requests[0]):
            index = options[0][1]
            self._options_blamed.add(index)
            option = self.script.options[index]
            return option.step, option.name, option.frame
        if requests:
            index = requests[0][1]
            self._requests.blamed.add(index)
            request = self.script.requests[index]
            return request.step, request.describe(), request.frame
        return self.script.end_step, "the end of the recorded session", None

    def _waiting_for(self) -> str:
        phase = self.conn.phase
        if phase is Phase.CLIENT_FLAGS:
            return "waiting for the client flags"
        if phase in (Phase.OPTIONS, Phase.OPTION_REPLY):
            return "waiting for an option"
        return "waiting for a request"

    # --- handshake ---------------------------------------------------------------------

    async def _handshake(self) -> bool:
        """Greeting and options; True when the live client reaches transmission."""
        script = self.script
        greeting = script.greeting
        if greeting is None:
            self.report.error = "the recording holds no greeting"
            raise _Closed
        await self._send(greeting)
        self.report.replayed += 1
        self._position = script.greeting_step
        if isinstance(greeting, OldstyleGreeting):
            return True
        assert isinstance(greeting, NewstyleGreeting)
        flags = await self._next()
        assert isinstance(flags, ClientFlags)
        self._flags_sent = True
        recorded = script.client_flags
        if recorded is None:
            self._note("the recording ends after the greeting: the connection is closed there")
            raise _Closed
        self.report.replayed += 1
        self._position = script.client_flags_step
        if flags.flags != recorded.flags:
            self._differ(script.client_flags_step, "client flags", "flags",
                         _flag_names(c.ClientFlag, recorded.flags),
                         _flag_names(c.ClientFlag, flags.flags), ("Client flags",))
        while True:
            option = await self._next()
            assert isinstance(option, OptionRequest)
            await self._option(option)
            if self.conn.phase is Phase.TRANSMISSION:
                self._options_done()
                return True
            if self.conn.phase is Phase.CLOSED:
                raise _Closed

    async def _option(self, live: OptionRequest) -> None:
        index = self._match_option(live.option)
        if index is None:
            self._unmatched_option(live)
            await self._honest_option(live)
            return
        recorded = self.script.options[index]
        self._options_used.add(index)
        self._last_option = index
        self._position = recorded.step
        self.report.replayed += 1
        if not self._same_option(recorded, live):
            await self._honest_option(live, f"differs from the recorded one (step "
                                            f"{recorded.step})")
            return
        if not recorded.answered:
            replies = adapt.option_replies(recorded, self.conn.negotiated, self._rename)
            await self._send(*replies.replies)
            self._note(f"the recorded server did not answer {recorded.name} (step "
                       f"{recorded.step}): it closed the connection, and so does the replay")
            raise _Closed
        if live.option == c.Opt.EXPORT_NAME:
            assert recorded.export_name_reply is not None
            adapted = adapt.export_name_reply(recorded.export_name_reply, self.conn.negotiated)
        else:
            adapted = adapt.option_replies(recorded, self.conn.negotiated, self._rename)
        self._note(*adapted.notes)
        await self._send(*adapted.replies)
        self.report.replayed += len(adapted.replies)
        self._position = recorded.reply_steps[-1] if recorded.reply_steps else recorded.step

    def _match_option(self, option: int) -> int | None:
        """The next recorded option of this type, after the last one matched; the recorded
        options skipped to reach it are missing from the live client."""
        options = self.script.options
        found = next((i for i in range(self._last_option + 1, len(options))
                      if i not in self._options_used and options[i].request.option == option),
                     None)
        if found is None:
            return None
        for skipped in range(self._last_option + 1, found):
            if skipped not in self._options_used and skipped not in self._options_blamed:
                self._missing_option(skipped)
        return found

    def _missing_option(self, index: int) -> None:
        recorded = self.script.options[index]
        self._options_used.add(index)
        self._differ(recorded.step, recorded.name, "missing message",
                     f"{_describe_option(recorded.request, recorded.payload)} sent",
                     "not sent", OPTION_SECTIONS, recorded.frame)

    def _unmatched_option(self, live: OptionRequest) -> None:
        options = self.script.options
        expected = next((i for i in range(self._last_option + 1, len(options))
                         if i not in self._options_used and i not in self._options_blamed),
                        None)
        described = _describe_option(live, _payload(live))
        if expected is None:
            self._differ(self._position, f"{c.name_of(c.Opt, live.option)} (not recorded)",
                         "extra message", "no further option", described, OPTION_SECTIONS)
            return
        recorded = options[expected]
        self._options_blamed.add(expected)
        self._differ(recorded.step, recorded.name, "option",
                     _describe_option(recorded.request, recorded.payload), described,
                     OPTION_SECTIONS, recorded.frame)

    def _same_option(self, recorded: RecordedOption, live: OptionRequest) -> bool:
        """Report how the live option's data differs; False when the recorded answer would
        not fit it (then the honest answer is given)."""
        ours, theirs = recorded.payload, _payload(live)
        step, name, frame = recorded.step, recorded.name, recorded.frame
        if type(theirs) is not type(ours):  # the live option's data is malformed (or ours)
            self._differ(step, name, "option data", f"{len(recorded.request.data)} bytes",
                         f"{len(live.data)} bytes that do not decode", OPTION_SECTIONS, frame)
            return False
        if isinstance(ours, InfoRequestPayload | MetaContextPayload | ExportNamePayload):
            fits = True
            expected = self._expected_name(ours.name)
            if theirs.name != expected:
                self._differ(step, name, "export name", repr(expected), repr(theirs.name),
                             OPTION_SECTIONS, frame)
                config = self.played.honest.config
                fits = config.export(theirs.name) is config.export(expected)
            if (isinstance(ours, InfoRequestPayload) and isinstance(theirs, InfoRequestPayload)
                    and ours.info_requests != theirs.info_requests):
                self._differ(step, name, "info requests", _infos(ours.info_requests),
                             _infos(theirs.info_requests), OPTION_SECTIONS, frame)
            if (isinstance(ours, MetaContextPayload) and isinstance(theirs, MetaContextPayload)
                    and ours.queries != theirs.queries):
                self._differ(step, name, "queries", _queries(ours.queries),
                             _queries(theirs.queries), ("Metadata querying", *OPTION_SECTIONS),
                             frame)
                fits = False
            return fits
        if recorded.request.data != live.data:
            self._differ(step, name, "option data", f"{len(recorded.request.data)} bytes",
                         f"{len(live.data)} bytes" + (", other values" if len(
                             live.data) == len(recorded.request.data) else ""),
                         OPTION_SECTIONS, frame)
        return True

    def _expected_name(self, recorded_name: str) -> str:
        if self._rename and recorded_name == self._rename[0]:
            return self._rename[1]
        return recorded_name

    async def _honest_option(self, live: OptionRequest, why: str = "is not in the recording"
                             ) -> None:
        honest, neg = self.played.honest, self.conn.negotiated
        violations = self.conn.last_violations
        if live.option == c.Opt.EXPORT_NAME:
            reply = honest.answer_export_name(neg, violations)
            if reply is None:
                self._note(f"NBD_OPT_EXPORT_NAME for {neg.export_name!r} cannot be served: "
                           "the connection is closed, as the spec requires")
                raise _Closed
            await self._send(reply)
            return
        replies, close = honest.answer_option(live, neg, violations)
        self._note(f"{_describe_option(live, _payload(live))} {why}: answered as a reference "
                   "server configured like the recorded one would")
        await self._send(*replies)
        if close:
            raise _Closed

    def _options_done(self) -> None:
        """The live client left the handshake: recorded options it never sent are missing."""
        for index in range(len(self.script.options)):
            if index not in self._options_used and index not in self._options_blamed:
                self._missing_option(index)

    # --- transmission ----------------------------------------------------------------------

    async def _transmission(self) -> None:
        while True:
            request = await self._next()
            assert isinstance(request, Request)
            await self._request(request)
            if request.type == c.Cmd.DISC or self.conn.phase is Phase.CLOSED:
                raise _Closed

    async def _request(self, live: Request) -> None:
        index, exact = self._match_request(live)
        if index is None:
            self._unmatched_request(live)
            await self._honest_request(live)
            return
        recorded = self.script.requests[index]
        self._requests.used.add(index)
        self._position = recorded.step
        self.report.replayed += 1
        self._compare_request(recorded, live)
        if live.type == c.Cmd.DISC:
            return
        if not recorded.complete:
            last_said = recorded.reply_steps[-1] if recorded.reply_steps else recorded.step
            if last_said >= self.script.last_server_step:
                # The recorded server never said more: it closed (or the capture stops).
                self._note(f"the recorded server sent nothing more after {recorded.describe()} "
                           f"(step {recorded.step}): the replay closes the connection there")
                raise _Closed
            self._note(f"the recording holds no complete reply to {recorded.describe()} "
                       f"(step {recorded.step}): answered from the reconstructed image")
            await self._honest_request(live)
            return
        if not exact and succeeded(recorded):
            await self._honest_request(live)
            return
        if not exact:
            self._note(f"{describe_request(live)} gets the error the recorded server gave to "
                       f"{recorded.describe()} (step {recorded.step})")
        adapted = adapt.request_replies(recorded, live, self.conn.negotiated, self.played.image,
                                        self.script.reply_form)
        self._note(*adapted.notes)
        await self._send(*adapted.replies)
        self.report.replayed += len(recorded.replies)
        if exact and succeeded(recorded):
            self._apply(live)

    def _match_request(self, live: Request) -> tuple[int | None, bool]:
        """The recorded request answering ``live``: same command, offset and length (in any
        order), else the first unmatched one of the same command; and whether exact."""
        exact = self._requests.exact(live)
        if exact is not None:
            return exact, True
        return self._requests.same_command(live.type), False

    def _compare_request(self, recorded: RecordedRequest, live: Request) -> None:
        asked = recorded.request
        step, name, frame = recorded.step, recorded.describe(), recorded.frame
        sections = ("Request message", *REQUEST_SECTIONS)
        if asked.offset != live.offset:
            self._differ(step, name, "offset", str(asked.offset), str(live.offset), sections,
                         frame)
        if recorded.effect_length != effect_length(live):
            self._differ(step, name, "length", str(recorded.effect_length),
                         str(effect_length(live)), sections, frame)
        mask = ~0 if asked.extended == live.extended else ~c.CmdFlag.PAYLOAD_LEN
        if asked.flags & mask != live.flags & mask:
            self._differ(step, name, "flags", _flag_names(c.CmdFlag, asked.flags & mask),
                         _flag_names(c.CmdFlag, live.flags & mask), ("Command flags",), frame)
        if (asked.type == c.Cmd.WRITE and asked.offset == live.offset
                and len(asked.payload) == len(live.payload) and asked.payload != live.payload):
            self._differ(step, name, "written data", f"{len(asked.payload)} bytes",
                         _data_difference(asked.payload, live.payload), REQUEST_SECTIONS, frame)
        if asked.type == c.Cmd.BLOCK_STATUS and asked.flags & live.flags & c.CmdFlag.PAYLOAD_LEN:
            recorded_names = _context_names(self.script, recorded)
            live_names = [self.conn.negotiated.meta_contexts.get(i, f"id {i}")
                          for i in adapt.live_context_ids(live, self.conn.negotiated)]
            if recorded_names is not None and recorded_names != live_names:
                self._differ(step, name, "contexts", ", ".join(recorded_names) or "none",
                             ", ".join(live_names) or "none", ("Metadata querying",
                                                               *REQUEST_SECTIONS), frame)

    def _unmatched_request(self, live: Request) -> None:
        requests = self.script.requests
        expected = self._requests.first()
        sections = DISC_SECTIONS if live.type == c.Cmd.DISC else REQUEST_SECTIONS
        if expected is None:
            self._differ(self._position, f"{describe_request(live)} (not recorded)",
                         "extra message", "no further request", describe_request(live), sections)
            return
        recorded = requests[expected]
        self._requests.blamed.add(expected)
        self._differ(recorded.step, recorded.describe(), "request", recorded.describe(),
                     describe_request(live), sections, recorded.frame)

    async def _honest_request(self, live: Request) -> None:
        if live.type == c.Cmd.DISC:
            return
        image = self.played.image
        replies = self.played.honest.execute(live, self.conn.negotiated,
                                             self.conn.last_violations)
        what = describe_request(live)
        note = f"{what} was served from the image reconstructed from the recording"
        if live.type == c.Cmd.READ and 0 <= live.offset < image.size:
            unknown = image.unknown_bytes(live.offset, min(live.length, image.size - live.offset))
            if unknown:
                note += (f"; {unknown} of its bytes were never seen in the recording and "
                         "read as zeros")
        if live.type == c.Cmd.BLOCK_STATUS:
            note += ("; extents the recording never reported follow the image (data where "
                     "data was seen, holes elsewhere)")
        self._note(note)
        await self._send(*replies)

    def _apply(self, live: Request) -> None:
        """A matched request succeeded as recorded: the image changes as the live client
        asked (its data, not the recorded data)."""
        image = self.played.image
        try:
            match live.type:
                case c.Cmd.WRITE:
                    image.write(live.offset, live.payload)
                case c.Cmd.WRITE_ZEROES:
                    image.write_zeroes(live.offset, live.length,
                                       may_trim=not live.flags & c.CmdFlag.NO_HOLE)
                case c.Cmd.TRIM:
                    image.trim(live.offset, live.length)
        except (StorageError, ValueError):
            return  # the recorded server allowed what this image does not: nothing to keep

    # --- the end ---------------------------------------------------------------------------

    def _missing_at_end(self) -> None:
        """Recorded client messages the live client never sent, once it is gone."""
        missing = [(o.step, o.frame, o.name, "Option", index)
                   for index, o in enumerate(self.script.options)
                   if index not in self._options_used and index not in self._options_blamed]
        if self.conn.phase is not Phase.GREETING and self.script.greeting is not None:
            requests = self.script.requests
            missing += [(requests[index].step, requests[index].frame, requests[index].describe(),
                         "Request", index) for index in self._requests.left()]
        recorded_flags = self.script.client_flags
        if recorded_flags is not None and not self._flags_sent and self.script.greeting:
            step = self.script.client_flags_step
            missing.append((step, self.script.session.messages[step - 1].frame, "client flags",
                            "Client flags", 0))
        missing.sort()
        for step, frame, name, kind, _ in missing[:MAX_MISSING_LISTED]:
            sections = (DISC_SECTIONS if name == "NBD_CMD_DISC" else
                        ("Client flags",) if kind == "Client flags" else
                        OPTION_SECTIONS if kind == "Option" else REQUEST_SECTIONS)
            self._differ(step, name, "missing message", "sent", "not sent", sections, frame)
        if len(missing) > MAX_MISSING_LISTED:
            rest = missing[MAX_MISSING_LISTED:]
            self._differ(rest[0][0], f"{len(rest)} more recorded messages", "missing message",
                         "sent", "not sent", REQUEST_SECTIONS, rest[0][1])


class _Pending:
    """The recorded requests not matched yet, found by command, offset and effect length,
    or by command alone, without scanning the whole recording for each live request."""

    def __init__(self, requests: list[RecordedRequest]) -> None:
        self.count = len(requests)
        self.used: set[int] = set()
        self.blamed: set[int] = set()
        """Recorded requests a different live request stood for (reported once)."""
        self._by_key: dict[tuple[int, int, int], deque[int]] = defaultdict(deque)
        self._by_command: dict[int, deque[int]] = defaultdict(deque)
        for index, recorded in enumerate(requests):
            key = (recorded.request.type, recorded.request.offset, recorded.effect_length)
            self._by_key[key].append(index)
            self._by_command[recorded.request.type].append(index)
        self._first = 0

    def _head(self, queue: deque[int] | None) -> deque[int] | None:
        while queue and queue[0] in self.used:
            queue.popleft()
        return queue

    def exact(self, live: Request) -> int | None:
        """The first unmatched recorded request with the same command, offset and length."""
        queue = self._head(self._by_key.get((live.type, live.offset, effect_length(live))))
        return queue[0] if queue else None

    def same_command(self, command: int) -> int | None:
        """The first recorded request of ``command`` neither matched nor blamed."""
        queue = self._head(self._by_command.get(command))
        return next((index for index in queue or () if index not in self.blamed), None)

    def first(self) -> int | None:
        """The first recorded request neither matched nor blamed."""
        while self._first < self.count and (self._first in self.used
                                             or self._first in self.blamed):
            self._first += 1
        return self._first if self._first < self.count else None

    def left(self) -> list[int]:
        """Every recorded request neither matched nor blamed, in recorded order."""
        return [index for index in range(self.count)
                if index not in self.used and index not in self.blamed]


def _payload(option: OptionRequest) -> object:
    try:
        return decode_option_payload(option.option, option.data)
    except CodecError:
        return RawPayload(option.data)


def _describe_option(option: OptionRequest, payload: object) -> str:
    name = c.name_of(c.Opt, option.option)
    match payload:
        case InfoRequestPayload(name=export, info_requests=infos):
            return f"{name} for {export!r} asking {_infos(infos)}"
        case MetaContextPayload(name=export, queries=queries):
            return f"{name} for {export!r} with {_queries(queries)}"
        case ExportNamePayload(name=export):
            return f"{name} {export!r}"
    return name


def _infos(infos: tuple[int, ...]) -> str:
    return "[" + ", ".join(c.name_of(c.Info, i) for i in infos) + "]"


def _queries(queries: tuple[str, ...]) -> str:
    return "queries [" + ", ".join(queries) + "]"


def _flag_names(kind: type, flags: int) -> str:
    return c.spec_name(kind(flags)) if flags else "none"


def _data_difference(recorded: bytes, live: bytes) -> str:
    if len(recorded) != len(live):
        return f"{len(live)} bytes"
    first = next(i for i, (a, b) in enumerate(zip(recorded, live, strict=True)) if a != b)
    count = sum(a != b for a, b in zip(recorded, live, strict=True))
    return f"{len(live)} bytes, {count} differ, the first at byte {first}"


def _context_names(script: Script, recorded: RecordedRequest) -> list[str] | None:
    """Names of the contexts a recorded block status payload asked about, when known."""
    try:
        ids = decode_block_status_payload(recorded.request.payload).context_ids
    except CodecError:
        return None
    names = dict(script.session.state.meta_contexts)
    names.update(recorded.contexts)
    return [names.get(i, f"id {i}") for i in ids]


__all__ = ["Played", "Player"]
