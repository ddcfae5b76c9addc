"""Active probes of a live server: what only a live check can ask (``nbd-harness check``).

Each probe is a short conversation on fresh connections, recorded through a
proxy like every case, that puts one question to the server the spec answers:
a read past the end, an unknown command, a command the server did not
advertise, ``NBD_CMD_CACHE`` then a read back, client flags the server cannot
know, ``NBD_OPT_STARTTLS`` to a server without TLS, an export name nobody
listed on ``NBD_OPT_EXPORT_NAME`` and on ``NBD_OPT_GO``, and options a server
may not implement.  Every wait is bounded (``wait`` seconds): no answer is a
finding, not a hang, and a server that hangs or drops the connection gets its
verdict while the next probe starts on a new connection.

What is expected comes only from the spec and from what the server itself said
in the same run (:class:`ServerFacts`, learned by :func:`learn_server`, the
first probe): where the spec allows several answers, each passes.  A probe's
own findings carry the rule ids of the conformance layer (or, for rules still
to be written, the ids the ground truth of the fault captures proposes), and
the capture is checked by every conformance rule as well.
"""

from __future__ import annotations

import secrets
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

from harness.address import Address
from harness.protocol import constants as c
from harness.protocol.messages import (
    ExportNameReply,
    OldstyleGreeting,
    OptionReply,
    Request,
    SimpleReply,
)
from harness.verdict import Verdict

from ._probe_wire import (
    ANSWER,
    CLOSED,
    ERROR,
    GARBLED,
    SILENT,
    RawSession,
    Reaction,
    go_data,
    info_export,
)

PROBE_WAIT = 10.0
"""Seconds a probe waits for each answer before it counts as never coming."""
UNKNOWN_OPTION = 0x4E42_4801
"""An option number no version of the spec defines."""
UNKNOWN_COMMAND = 66
UNKNOWN_CLIENT_FLAG = 1 << 7
DISC_COOKIE = 0xD15C
READ_BACK = 4096
"""How much of the export's start a probe reads (or less when the export is smaller)."""

F = c.TransmissionFlag


@dataclass(frozen=True)
class ProbeFinding:
    """A finding a probe makes itself: the rule, what happened, where (session, message)."""

    rule: str
    message: str
    session: int
    about: str
    """The name of the client message the finding is about (``NBD_OPT_GO``...): its frame."""


@dataclass
class ProbeOutcome:
    """What one probe came to: its verdict, why, and its own findings."""

    verdict: Verdict
    detail: str
    findings: list[ProbeFinding] = field(default_factory=list)


@dataclass
class ServerFacts:
    """What the server said about itself in this run (only that is expected of it later)."""

    export: str
    greeted: bool = False
    fixed_newstyle: bool = False
    listed: tuple[str, ...] | None = None
    """The names ``NBD_OPT_LIST`` gave (None: no list)."""
    go: bool = False
    """``NBD_OPT_GO`` selected the URI's export."""
    selected_with: str = ""
    """``NBD_OPT_GO``, ``NBD_OPT_EXPORT_NAME`` or ``oldstyle``: how transmission was reached."""
    size: int | None = None
    flags: int = 0
    reads: bool = False
    """A read of the export's start was answered."""
    problems: list[str] = field(default_factory=list)
    """What could not be learned, and why."""

    def can(self, flag: int) -> bool:
        return bool(self.flags & flag)

    @property
    def transmission(self) -> bool:
        return self.size is not None


class Prober:
    """Opens the connections of one probe (numbered as the capture's sessions)."""

    def __init__(self, address: Address, wait: float) -> None:
        self.address = address
        self.wait = wait
        self.sessions: list[RawSession] = []

    def open(self) -> tuple[RawSession, Reaction]:
        session = RawSession(self.address, self.wait, len(self.sessions) + 1)
        self.sessions.append(session)
        return session, session.open()

    def close(self) -> None:
        for session in self.sessions:
            session.close()


# --- judging one reaction -------------------------------------------------------------------


def _stem(name: str) -> str:
    """``NBD_OPT_SET_META_CONTEXT`` -> ``set-meta-context`` (the ground truth's rule names)."""
    for prefix in ("NBD_OPT_", "NBD_CMD_"):
        name = name.removeprefix(prefix)
    return name.lower().replace("_", "-")


def unanswered(session: RawSession, name: str, reaction: Reaction,
               phase: str) -> ProbeFinding | None:
    """The finding for a message the server did not answer (None when it did, or erred)."""
    if reaction.kind == SILENT:
        return ProbeFinding(f"server.{_stem(name)}-answered",
                            f"{name} got no answer: {reaction.detail}", session.index, name)
    if reaction.kind == CLOSED:
        rule = ("server.no-hard-disconnect-in-options" if phase == "options"
                else "server.no-hard-disconnect-in-transmission")
        return ProbeFinding(rule, f"{name}: {reaction.detail} instead of answering",
                            session.index, name)
    return None


def _bad_end(session: RawSession, name: str, reaction: Reaction,
             phase: str) -> ProbeOutcome | None:
    """A fail for no answer or a hard disconnect, an error verdict for garbled bytes."""
    finding = unanswered(session, name, reaction, phase)
    if finding is not None:
        return ProbeOutcome(Verdict.FAIL, finding.message, [finding])
    if reaction.kind == GARBLED:
        return ProbeOutcome(Verdict.FAIL, f"{name}: {reaction.detail}")
    return None


# --- reaching transmission -------------------------------------------------------------------


def to_options(prober: Prober) -> tuple[RawSession, ProbeOutcome | None]:
    """A new connection in the option phase (or the outcome that stopped it)."""
    session, greeting = prober.open()
    if greeting.kind != ANSWER:
        return session, ProbeOutcome(Verdict.FAIL if greeting.kind != "unreachable"
                                     else Verdict.ERROR, greeting.detail)
    if isinstance(session.greeting, OldstyleGreeting):
        return session, ProbeOutcome(Verdict.UNSUPPORTED, "an oldstyle server has no options")
    session.client_flags()
    return session, None


def to_transmission(prober: Prober, facts: ServerFacts) -> tuple[RawSession, ProbeOutcome | None]:
    """A new connection in transmission, the way the first probe got there."""
    session, stop = to_options(prober) if facts.selected_with != "oldstyle" else (None, None)
    if facts.selected_with == "oldstyle":
        session, greeting = prober.open()
        return session, None if greeting.kind == ANSWER else ProbeOutcome(Verdict.FAIL,
                                                                           greeting.detail)
    assert session is not None
    if stop is not None:
        return session, stop
    if facts.selected_with == "NBD_OPT_GO":
        reaction = session.option(c.Opt.GO, go_data(facts.export))
        bad = _bad_end(session, "NBD_OPT_GO", reaction, "options")
        if bad is None and reaction.kind != ANSWER:
            bad = ProbeOutcome(Verdict.FAIL, f"NBD_OPT_GO {facts.export!r} worked once, now: "
                                              f"{reaction.detail}")
    else:
        reaction = session.option(c.Opt.EXPORT_NAME, facts.export.encode())
        bad = _bad_end(session, "NBD_OPT_EXPORT_NAME", reaction, "options")
    return session, bad


def disconnect(session: RawSession) -> None:
    """NBD_CMD_DISC and close (the probes end every session politely when they can)."""
    session.send(Request(type=c.Cmd.DISC, cookie=DISC_COOKIE))
    session.close()


def abort(session: RawSession) -> None:
    """NBD_OPT_ABORT, its answer (bounded), and close."""
    session.option(c.Opt.ABORT)
    session.close()


# --- the first probe: what the server says about itself ---------------------------------------


def learn_server(prober: Prober, export: str) -> tuple[ServerFacts, ProbeOutcome]:
    """Greeting, NBD_OPT_LIST, NBD_OPT_GO (or NBD_OPT_EXPORT_NAME), one read; judged.

    Each step that fails is recorded (a finding when the spec says the server
    must answer) and the probe goes on with what it can still learn, on a new
    connection when the last one is gone.
    """
    facts = ServerFacts(export)
    findings: list[ProbeFinding] = []
    session, greeting = prober.open()
    if greeting.kind == "unreachable":
        return facts, ProbeOutcome(Verdict.ERROR, greeting.detail)
    if greeting.kind != ANSWER:
        facts.problems.append(f"no greeting: {greeting.detail}")
        return facts, ProbeOutcome(Verdict.FAIL, greeting.detail)
    facts.greeted = True
    if isinstance(session.greeting, OldstyleGreeting):
        facts.selected_with, facts.size = "oldstyle", session.greeting.size
        facts.flags = session.greeting.flags & 0xFFFF
    else:
        facts.fixed_newstyle = bool(session.handshake_flags & c.HandshakeFlag.FIXED_NEWSTYLE)
        if not facts.fixed_newstyle:
            findings.append(ProbeFinding("server.baseline-fixed-newstyle",
                                         "the greeting lacks NBD_FLAG_FIXED_NEWSTYLE",
                                         session.index, "newstyle greeting"))
        session.client_flags()
        session = _learn_list(prober, session, facts, findings)
        session = _learn_export(prober, session, facts, findings)
    if facts.transmission and session.sock is not None:
        _learn_read(session, facts, findings)
    verdict = Verdict.FAIL if findings else Verdict.PASS
    learned = (f"size {facts.size}, flags {facts.flags:#06x} via {facts.selected_with}"
               if facts.transmission else "transmission not reached")
    detail = "; ".join([learned, *facts.problems])
    return facts, ProbeOutcome(verdict, detail, findings)


def _learn_list(prober: Prober, session: RawSession, facts: ServerFacts,
                findings: list[ProbeFinding]) -> RawSession:
    if not facts.fixed_newstyle:
        return session
    reaction = session.option(c.Opt.LIST)
    if reaction.kind == ANSWER:
        facts.listed = tuple(_listed_name(e) for e in reaction.events
                             if isinstance(e, OptionReply) and e.reply_type == c.Rep.SERVER)
        return session
    facts.problems.append(f"NBD_OPT_LIST: {reaction.detail}")
    last = reaction.last
    if reaction.kind == ERROR and isinstance(last, OptionReply) \
            and last.reply_type == c.Rep.ERR_UNSUP:
        findings.append(ProbeFinding("server.baseline-list", "NBD_OPT_LIST is not supported",
                                     session.index, "NBD_OPT_LIST"))
        return session
    return _replace_if_lost(prober, session, "NBD_OPT_LIST", reaction, "options", findings)


def _listed_name(reply: OptionReply) -> str:
    length = int.from_bytes(reply.data[:4], "big")
    return reply.data[4:4 + length].decode(errors="replace")


def _replace_if_lost(prober: Prober, session: RawSession, name: str, reaction: Reaction,
                     phase: str, findings: list[ProbeFinding]) -> RawSession:
    """After no answer or a disconnect: the finding, and a new connection in options."""
    finding = unanswered(session, name, reaction, phase)
    if finding is None and reaction.kind != GARBLED:
        return session
    if finding is not None:
        findings.append(finding)
    session.close()
    fresh, stop = to_options(prober)
    if stop is not None:
        fresh.close()
    return fresh


def _learn_export(prober: Prober, session: RawSession, facts: ServerFacts,
                  findings: list[ProbeFinding]) -> RawSession:
    if session.sock is None:
        return session
    if facts.fixed_newstyle:
        reaction = session.option(c.Opt.GO, go_data(facts.export))
        exported = info_export(reaction.events)
        if reaction.kind == ANSWER and exported is not None:
            facts.go, facts.selected_with = True, "NBD_OPT_GO"
            facts.size, facts.flags = exported
            return session
        facts.problems.append(f"NBD_OPT_GO {facts.export!r}: {reaction.detail}")
        last = reaction.last
        if reaction.kind == ERROR and isinstance(last, OptionReply):
            if last.reply_type == c.Rep.ERR_UNSUP:
                findings.append(ProbeFinding("server.baseline-info-go",
                                             "NBD_OPT_GO is not supported", session.index,
                                             "NBD_OPT_GO"))
            else:  # the URI's export is refused: nothing further to learn about it
                return session
        session = _replace_if_lost(prober, session, "NBD_OPT_GO", reaction, "options", findings)
        if reaction.kind == ANSWER:  # an ACK without NBD_INFO_EXPORT: the rules say which MUST
            session.close()
            session, _stop = to_options(prober)
        if session.sock is None:
            return session
    reaction = session.option(c.Opt.EXPORT_NAME, facts.export.encode())
    last = reaction.last
    if reaction.kind == ANSWER and isinstance(last, ExportNameReply):
        facts.selected_with, facts.size, facts.flags = ("NBD_OPT_EXPORT_NAME", last.size,
                                                        last.transmission_flags)
        return session
    facts.problems.append(f"NBD_OPT_EXPORT_NAME {facts.export!r}: {reaction.detail}")
    if reaction.kind == SILENT:
        findings.append(ProbeFinding("server.export-name-answered",
                                     f"NBD_OPT_EXPORT_NAME got no answer: {reaction.detail}",
                                     session.index, "NBD_OPT_EXPORT_NAME"))
    session.close()
    return session


def _learn_read(session: RawSession, facts: ServerFacts, findings: list[ProbeFinding]) -> None:
    assert facts.size is not None
    length = min(READ_BACK, facts.size)
    if length:
        reaction = session.request(c.Cmd.READ, 0, length)
        finding = unanswered(session, "NBD_CMD_READ", reaction, "transmission")
        if finding is not None:
            findings.append(finding)
            facts.problems.append(f"NBD_CMD_READ: {reaction.detail}")
            session.close()
            return
        facts.reads = reaction.kind == ANSWER
    disconnect(session)


# --- the probes -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Probe:
    """One question to the server: its name, what it asks, the spec's section, how."""

    name: str
    description: str
    section: str
    run: Callable[[Prober, ServerFacts], ProbeOutcome]
    needs: Callable[[ServerFacts, bool], str | None]
    """Why the probe cannot run (None: it can), given the facts and whether writes are allowed."""


def _options_needed(facts: ServerFacts, _writes: bool) -> str | None:
    if not facts.greeted:
        return "the server sent no greeting"
    return None if facts.fixed_newstyle else "needs a fixed-newstyle server"


def _transmission_needed(facts: ServerFacts, _writes: bool) -> str | None:
    if not facts.transmission:
        return "needs transmission, which the first probe could not reach"
    return None if facts.size else "needs a non-empty export"


def _unadvertised(flag: int, writes: bool = False) -> Callable[[ServerFacts, bool], str | None]:
    def needs(facts: ServerFacts, allow_writes: bool) -> str | None:
        reason = _transmission_needed(facts, allow_writes)
        if reason:
            return reason
        if facts.can(flag):
            return f"the server advertises {c.spec_name(F(flag))}"
        if writes and (facts.can(F.READ_ONLY) or not allow_writes):
            return "writes (use --allow-writes on a writable export)"
        return None
    return needs


def _advertised(flag: int) -> Callable[[ServerFacts, bool], str | None]:
    def needs(facts: ServerFacts, allow_writes: bool) -> str | None:
        reason = _transmission_needed(facts, allow_writes)
        if reason:
            return reason
        return None if facts.can(flag) else f"the server does not advertise " \
                                             f"{c.spec_name(F(flag))}"
    return needs


def _option_probe(option: int, data: bytes = b"", first: tuple[int, ...] = (),
                  export_query: bool = False) -> Callable[[Prober, ServerFacts], ProbeOutcome]:
    """Any final answer passes (the server may not implement it); silence or a drop fails.

    ``export_query``: the data is the URI's export name and one query, ``base:allocation``.
    """
    name = c.name_of(c.Opt, option)

    def run(prober: Prober, facts: ServerFacts) -> ProbeOutcome:
        nonlocal data
        if export_query:
            data = meta_context_data(facts.export, c.BASE_ALLOCATION)
        session, stop = to_options(prober)
        if stop is not None:
            return stop
        for earlier in first:
            before = session.option(earlier)
            bad = _bad_end(session, c.name_of(c.Opt, earlier), before, "options")
            if bad is not None:
                return bad
        reaction = session.option(option, data)
        bad = _bad_end(session, name, reaction, "options")
        if bad is not None:
            return bad
        findings = []
        last = reaction.last
        if option in (c.Opt.INFO, c.Opt.GO) and isinstance(last, OptionReply) \
                and last.reply_type == c.Rep.ERR_UNSUP:
            findings.append(ProbeFinding("server.baseline-info-go",
                                         f"{name} is not supported", session.index, name))
        abort(session)
        return ProbeOutcome(Verdict.FAIL if findings else Verdict.PASS,
                            f"{name}: {reaction.detail}", findings)
    return run


def meta_context_data(export: str, *queries: str) -> bytes:
    """The data of ``NBD_OPT_{LIST,SET}_META_CONTEXT``: export name, then the queries."""
    name = export.encode()
    encoded = [query.encode() for query in queries]
    return (struct.pack(">I", len(name)) + name + struct.pack(">I", len(encoded))
            + b"".join(struct.pack(">I", len(query)) + query for query in encoded))


def _unknown_option(prober: Prober, facts: ServerFacts) -> ProbeOutcome:
    session, stop = to_options(prober)
    if stop is not None:
        return stop
    reaction = session.option(UNKNOWN_OPTION)
    name = f"option {UNKNOWN_OPTION:#x}"
    bad = _bad_end(session, name, reaction, "options")
    if bad is not None:
        if bad.findings and bad.findings[0].rule.endswith("-answered"):
            bad.findings[0] = ProbeFinding("server.unsupported-option-err-unsup",
                                           bad.findings[0].message, session.index, "")
        return bad
    last = reaction.last
    abort(session)
    if isinstance(last, OptionReply) and last.reply_type == c.Rep.ERR_UNSUP:
        return ProbeOutcome(Verdict.PASS, f"{name}: NBD_REP_ERR_UNSUP")
    return ProbeOutcome(Verdict.FAIL, f"{name}: {reaction.detail}", [ProbeFinding(
        "server.unsupported-option-err-unsup", f"an unknown option got {reaction.detail}",
        session.index, "")])


def _starttls_without_tls(prober: Prober, facts: ServerFacts) -> ProbeOutcome:
    session, stop = to_options(prober)
    if stop is not None:
        return stop
    reaction = session.option(c.Opt.STARTTLS)
    if reaction.kind in (SILENT, CLOSED):
        return ProbeOutcome(Verdict.FAIL, f"NBD_OPT_STARTTLS: {reaction.detail}", [ProbeFinding(
            "server.starttls-reply", f"NBD_OPT_STARTTLS: {reaction.detail}", session.index,
            "NBD_OPT_STARTTLS")])
    bad = _bad_end(session, "NBD_OPT_STARTTLS", reaction, "options")
    if bad is not None:
        return bad
    session.close()  # after an ACK the server waits for a TLS handshake we do not start
    return ProbeOutcome(Verdict.PASS, f"NBD_OPT_STARTTLS: {reaction.detail}")


def _bad_client_flags(prober: Prober, facts: ServerFacts) -> ProbeOutcome:
    session, greeting = prober.open()
    if greeting.kind != ANSWER:
        return ProbeOutcome(Verdict.FAIL, greeting.detail)
    session.client_flags(UNKNOWN_CLIENT_FLAG)
    reaction = session.react("the server to drop the connection")
    session.close()
    if reaction.kind == CLOSED:
        return ProbeOutcome(Verdict.PASS, "the server dropped the connection")
    return ProbeOutcome(Verdict.FAIL, f"client flags with bit {UNKNOWN_CLIENT_FLAG:#x}: "
                                      f"{reaction.detail}", [ProbeFinding(
        "server.drop-on-bad-client-flags",
        f"the connection stayed open after unknown client flags ({reaction.detail})",
        session.index, "client flags")])


def _no_such_export(facts: ServerFacts) -> str:
    """A name the server did not list (nor the URI named)."""
    taken = {facts.export, *(facts.listed or ())}
    while True:
        name = f"nbd-harness-no-such-export-{secrets.token_hex(4)}"
        if name not in taken:
            return name


def _export_name_unknown(prober: Prober, facts: ServerFacts) -> ProbeOutcome:
    session, stop = to_options(prober)
    if stop is not None:
        return stop
    name = _no_such_export(facts)
    reaction = session.option(c.Opt.EXPORT_NAME, name.encode())
    if reaction.kind == CLOSED:  # the one way to refuse NBD_OPT_EXPORT_NAME
        return ProbeOutcome(Verdict.PASS, f"{name!r} refused by closing the connection")
    if reaction.kind == SILENT:
        return ProbeOutcome(Verdict.FAIL, f"NBD_OPT_EXPORT_NAME {name!r}: {reaction.detail}",
                            [ProbeFinding("server.export-name-answered",
                                          f"NBD_OPT_EXPORT_NAME got no answer: "
                                          f"{reaction.detail}", session.index,
                                          "NBD_OPT_EXPORT_NAME")])
    if isinstance(reaction.last, ExportNameReply):
        disconnect(session)
        return ProbeOutcome(Verdict.PASS, f"{name!r} served ({reaction.detail}): the server "
                                          "serves names it does not list")
    session.close()
    return ProbeOutcome(Verdict.FAIL, f"NBD_OPT_EXPORT_NAME {name!r}: {reaction.detail}",
                        [ProbeFinding("server.export-name-no-option-reply",
                                      f"NBD_OPT_EXPORT_NAME answered with {reaction.detail}",
                                      session.index, "NBD_OPT_EXPORT_NAME")])


def _go_unknown_export(prober: Prober, facts: ServerFacts) -> ProbeOutcome:
    session, stop = to_options(prober)
    if stop is not None:
        return stop
    name = _no_such_export(facts)
    reaction = session.option(c.Opt.GO, go_data(name))
    bad = _bad_end(session, "NBD_OPT_GO", reaction, "options")
    if bad is not None:
        return bad
    if reaction.kind == ANSWER:
        disconnect(session)
        return ProbeOutcome(Verdict.PASS, f"{name!r} served ({reaction.detail}): the server "
                                          "serves names it does not list")
    # Refused: the session must go on, and NBD_OPT_GO for the URI's export still work.
    again = session.option(c.Opt.GO, go_data(facts.export))
    bad = _bad_end(session, "NBD_OPT_GO", again, "options")
    if bad is not None:
        bad.detail = f"{name!r}: {reaction.detail}; then {bad.detail}"
        return bad
    if again.kind != ANSWER:
        session.close()
        return ProbeOutcome(Verdict.FAIL, f"{name!r}: {reaction.detail}; then NBD_OPT_GO "
                                          f"{facts.export!r}, which worked before: "
                                          f"{again.detail}")
    disconnect(session)
    return ProbeOutcome(Verdict.PASS, f"{name!r}: {reaction.detail}; then {facts.export!r} "
                                      "selected on the same connection")


def _command_probe(command: int, *, label: str = "",
                   offset: Callable[[ServerFacts], int] = lambda facts: 0, length: int = 0,
                   flags: int = 0, payload: Callable[[bytes], bytes] | None = None,
                   ) -> Callable[[Prober, ServerFacts], ProbeOutcome]:
    """A request the client must not send: an error or a disconnect passes (the spec lets
    a server drop a client that broke a rule); silence fails; then the session must be
    in step (a read of the export's start is answered)."""
    name = c.name_of(c.Cmd, command)
    stem = label or _stem(name)

    def run(prober: Prober, facts: ServerFacts) -> ProbeOutcome:
        session, stop = to_transmission(prober, facts)
        if stop is not None:
            return stop
        data = b""
        if payload is not None:
            before = session.request(c.Cmd.READ, 0, min(READ_BACK, facts.size or 0))
            if not isinstance(before.last, SimpleReply) or before.kind != ANSWER:
                session.close()
                return ProbeOutcome(Verdict.ERROR, f"reading the data to write back: "
                                                   f"{before.detail}")
            data = payload(before.last.data)
        reaction = session.request(command, offset(facts), len(data) or length, flags=flags,
                                   payload=data)
        if reaction.kind == CLOSED:
            return ProbeOutcome(Verdict.PASS, f"{name}: {reaction.detail} (allowed: the "
                                              "client broke a rule first)")
        if reaction.kind == SILENT:
            return ProbeOutcome(Verdict.FAIL, f"{name}: {reaction.detail}", [ProbeFinding(
                f"server.{stem}-answered", f"{name} got no answer: {reaction.detail}",
                session.index, name)])
        if reaction.kind == GARBLED:
            return ProbeOutcome(Verdict.FAIL, f"{name}: {reaction.detail}")
        after = session.request(c.Cmd.READ, 0, min(READ_BACK, facts.size or 0))
        lost = _bad_end(session, "NBD_CMD_READ", after, "transmission")
        if lost is not None:
            lost.detail = f"{name}: {reaction.detail}; then {lost.detail}"
            return lost
        disconnect(session)
        return ProbeOutcome(Verdict.PASS, f"{name}: {reaction.detail}; the session stays in step")
    return run


def _cache_read_back(prober: Prober, facts: ServerFacts) -> ProbeOutcome:
    session, stop = to_transmission(prober, facts)
    if stop is not None:
        return stop
    length = min(READ_BACK, facts.size or 0)
    steps = [("NBD_CMD_READ", session.request(c.Cmd.READ, 0, length))]
    if steps[-1][1].kind == ANSWER:
        steps.append(("NBD_CMD_CACHE", session.request(c.Cmd.CACHE, 0, length)))
    if steps[-1][1].kind in (ANSWER, ERROR):
        steps.append(("NBD_CMD_READ", session.request(c.Cmd.READ, 0, length)))
    for name, reaction in steps:
        bad = _bad_end(session, name, reaction, "transmission")
        if bad is not None:
            return bad
    disconnect(session)
    first, last = steps[0][1].last, steps[-1][1].last
    if isinstance(first, SimpleReply) and isinstance(last, SimpleReply) and \
            not last.error and first.data != last.data:
        return ProbeOutcome(Verdict.FAIL, "the data changed across NBD_CMD_CACHE", [ProbeFinding(
            "server.cache-keeps-data", f"the first {length} bytes read differently after "
            "NBD_CMD_CACHE", session.index, "NBD_CMD_CACHE")])
    return ProbeOutcome(Verdict.PASS, " then ".join(f"{n}: {r.detail}" for n, r in steps))


def _past_end(facts: ServerFacts) -> int:
    return facts.size or 0


def _same(data: bytes) -> bytes:
    return data


PROBES: tuple[Probe, ...] = (
    Probe("unknown-option", "an option no spec defines gets NBD_REP_ERR_UNSUP",
          "Option types", _unknown_option, _options_needed),
    Probe("option-info", "NBD_OPT_INFO is answered (the baseline: servers MUST support it)",
          "Baseline", _option_probe(c.Opt.INFO, go_data("")), _options_needed),
    Probe("option-structured-reply", "NBD_OPT_STRUCTURED_REPLY is answered, ACK or an error",
          "Option types", _option_probe(c.Opt.STRUCTURED_REPLY), _options_needed),
    Probe("option-extended-headers", "NBD_OPT_EXTENDED_HEADERS is answered, ACK or an error",
          "Option types", _option_probe(c.Opt.EXTENDED_HEADERS), _options_needed),
    Probe("option-list-meta-context", "NBD_OPT_LIST_META_CONTEXT (after structured replies) is "
          "answered", "Option types",
          _option_probe(c.Opt.LIST_META_CONTEXT, b"\0\0\0\0\0\0\0\0",
                        first=(c.Opt.STRUCTURED_REPLY,)), _options_needed),
    Probe("option-set-meta-context", "NBD_OPT_SET_META_CONTEXT for base:allocation (after "
          "structured replies) is answered", "Option types",
          _option_probe(c.Opt.SET_META_CONTEXT, b"", first=(c.Opt.STRUCTURED_REPLY,),
                        export_query=True), _options_needed),
    Probe("starttls-without-tls", "NBD_OPT_STARTTLS in the clear gets an answer (an error, or "
          "ACK from a server that offers TLS), not a drop", "NOTLS mode", _starttls_without_tls,
          _options_needed),
    Probe("bad-client-flags", "client flags with an unknown bit make the server drop the "
          "connection", "Client flags", _bad_client_flags, _options_needed),
    Probe("export-name-unknown", "NBD_OPT_EXPORT_NAME for a name nobody listed: the server "
          "closes or serves it, never an option reply or silence", "Option types",
          _export_name_unknown, _options_needed),
    Probe("go-unknown-export", "NBD_OPT_GO for a name nobody listed: an error reply and the "
          "session goes on (or the server serves it)", "Option types", _go_unknown_export,
          lambda facts, writes: _options_needed(facts, writes) or (
              None if facts.go else "needs a server whose NBD_OPT_GO worked")),
    Probe("read-past-end", "a read past the end of the export gets an error (NBD_EINVAL) or a "
          "disconnect, and the session stays in step", "Size constraints",
          _command_probe(c.Cmd.READ, offset=_past_end, length=512), _transmission_needed),
    Probe("unknown-command", f"command type {UNKNOWN_COMMAND} gets an error (NBD_EINVAL) or a "
          "disconnect", "Error values", _command_probe(UNKNOWN_COMMAND, label="unknown-command"),
          _transmission_needed),
    Probe("unadvertised-flush", "NBD_CMD_FLUSH without NBD_FLAG_SEND_FLUSH: an error or a "
          "disconnect", "Request types", _command_probe(c.Cmd.FLUSH),
          _unadvertised(F.SEND_FLUSH)),
    Probe("unadvertised-cache", "NBD_CMD_CACHE without NBD_FLAG_SEND_CACHE: an error or a "
          "disconnect", "Request types", _command_probe(c.Cmd.CACHE, length=512),
          _unadvertised(F.SEND_CACHE)),
    Probe("unadvertised-trim", "NBD_CMD_TRIM without NBD_FLAG_SEND_TRIM: an error or a "
          "disconnect", "Request types", _command_probe(c.Cmd.TRIM, length=4096),
          _unadvertised(F.SEND_TRIM, writes=True)),
    Probe("unadvertised-write-zeroes", "NBD_CMD_WRITE_ZEROES without "
          "NBD_FLAG_SEND_WRITE_ZEROES: an error or a disconnect", "Request types",
          _command_probe(c.Cmd.WRITE_ZEROES, length=4096),
          _unadvertised(F.SEND_WRITE_ZEROES, writes=True)),
    Probe("unadvertised-fua", "NBD_CMD_WRITE with NBD_CMD_FLAG_FUA without NBD_FLAG_SEND_FUA "
          "(writing back what was read): an error or a disconnect", "Transmission flags",
          _command_probe(c.Cmd.WRITE, flags=c.CmdFlag.FUA, payload=_same),
          _unadvertised(F.SEND_FUA, writes=True)),
    Probe("cache-read-back", "NBD_CMD_CACHE leaves the data as it was (read, cache, read back)",
          "Request types", _cache_read_back, _advertised(F.SEND_CACHE)),
)
"""Every active probe, in the order ``check`` runs them."""


__all__ = ["PROBES", "PROBE_WAIT", "Probe", "ProbeFinding", "ProbeOutcome", "Prober",
           "ServerFacts", "learn_server"]
