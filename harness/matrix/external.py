"""Checking a server the harness did not start: ``nbd-harness check URI``.

The export behind the URI is whatever it is: its size, its contents and its
configuration are unknown.  So the server is probed first (size, read-only,
TLS: :func:`harness.matrix.probes.learn_server`, then :func:`from_facts`), and
only the server-role scenarios whose expectations hold whatever the export
holds are run: a plain export (no preset layers, bitmaps, block sizes, extra
exports, special handshake), every read of data the scenario wrote itself
first, no exact extent maps, every request inside the export (or the export
exactly the scenario's size when it tests the end), no expectation about an
export name the server was not asked about.  Scenarios that write run only
with ``allow_writes``.  Each runs with the reference client through a
recording proxy, and the capture is checked by every rule; nothing is
predicted, so any of pass, unsupported and expected-fallback is good, and fail
(an expectation broke, a MUST was broken on the wire) or error is not.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass

from harness.client import parse_uri
from harness.client.uri import NbdUri
from harness.errors import UserError
from harness.scenarios import Scenario, Step

from .cases import (
    CASE_TIMEOUT,
    Case,
    Excluded,
    Expansion,
    Expectation,
    PeerRef,
    reference_client,
)
from .probes import ServerFacts

WRITING_ACTIONS = frozenset({"write", "zero", "trim", "raw"})
WRITING_COMMANDS = frozenset({"NBD_CMD_WRITE", "NBD_CMD_WRITE_ZEROES", "NBD_CMD_TRIM", "1", "6",
                              "4"})
_RANGED_ACTIONS = frozenset({"read", "write", "zero", "trim", "cache", "block_status", "map",
                             "request", "verify_data"})
_KNOWN_DATA = ("write", "zero")
SECOND_CLIENT_WAIT = 3.0
"""Seconds a second client waits for the greeting when the probe checks concurrency."""
SYNC_READ = 4096
"""How much of the export's start an in-sync check reads back (the scenario runner's read)."""


class ExternalError(UserError, ValueError):
    """The external server cannot be reached or understood; the message says why."""


@dataclass(frozen=True)
class ExternalExport:
    """What a probe of the server behind a URI found."""

    uri: str
    parsed: NbdUri
    size: int
    read_only: bool
    tls: bool
    concurrent: bool = True
    """False when a second client got no greeting while the first was connected."""

    @property
    def peer(self) -> PeerRef:
        """The server as the side of a case (``external``; reports show the URI)."""
        return PeerRef(spec=f"external:{self.uri}", program="external", role="server",
                       provider="external")


def from_facts(uri: str, facts: ServerFacts) -> ExternalExport | None:
    """The export as the first probe learned it (None: it learned no size)."""
    from harness.protocol import constants as c

    if facts.size is None:
        return None
    parsed = parse_uri(uri)
    return ExternalExport(uri, parsed, facts.size,
                          bool(facts.flags & c.TransmissionFlag.READ_ONLY), parsed.tls_required,
                          _greets_while_one_is_connected(parsed))


def _greets_while_one_is_connected(parsed: NbdUri) -> bool:
    """Whether a second client is greeted while a first one (greeted too) is connected."""
    import contextlib
    import socket

    address = parsed.address
    family = socket.AF_UNIX if address.kind == "unix" else (
        socket.AF_INET6 if ":" in address.host else socket.AF_INET)
    with socket.socket(family, socket.SOCK_STREAM) as first:
        first.settimeout(SECOND_CLIENT_WAIT)
        with contextlib.suppress(OSError):
            first.connect(address.path if address.kind == "unix" else
                          (address.host, address.port))
            first.recv(8)
        return _greets_a_second_client(parsed)


def _greets_a_second_client(parsed: NbdUri, wait: float = SECOND_CLIENT_WAIT) -> bool:
    """Whether the server greets a second connection while the first one is open."""
    import socket

    address = parsed.address
    family = socket.AF_UNIX if address.kind == "unix" else (
        socket.AF_INET6 if ":" in address.host else socket.AF_INET)
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.settimeout(wait)
        try:
            probe.connect(address.path if address.kind == "unix" else
                          (address.host, address.port))
            return len(probe.recv(8)) > 0
        except OSError:
            return False


def _range(step: Step) -> tuple[int, int] | None:
    if step.action not in _RANGED_ACTIONS:
        return None
    offset, length = step.args.get("offset"), step.args.get("length")
    if offset is None or length is None:
        return None
    return int(offset), int(length)


def _covered(ranges: list[tuple[int, int]], offset: int, length: int) -> bool:
    """True when ``ranges`` (offset, end) cover [offset, offset+length)."""
    position, end = offset, offset + length
    for start, stop in sorted(ranges):
        if start <= position < stop:
            position = stop
        if position >= end:
            return True
    return position >= end


def _second_connection(step: Step) -> bool:
    return (step.action == "connect" and step.args.get("as", "main") != "main") \
        or step.on != "main"


def _literal_size(step: Step) -> bool:
    """True when the step expects a size given as a number (not ``export``)."""
    for table in (step.args, step.expect or {}):
        size = table.get("size")
        if size is not None and size != "export":
            return True
    return False


def _other_names(step: Step, export: str) -> str | None:
    """An export name the step expects something of, other than the URI's (None: none).

    What a server does with a name it was not asked about is its own business (it may
    serve any name, or list what it likes): the probes judge that, with both answers.
    """
    named = step.args.get("name", step.args.get("export"))
    if named is not None and str(named) != export and (step.expect or {}):
        return str(named)
    included = (step.expect or {}).get("include") if step.action == "list_exports" else None
    others = [str(name) for name in included or () if str(name) != export]
    return others[0] if others else None


def _writes(step: Step) -> bool:
    if step.action in WRITING_ACTIONS:
        return True
    return step.action == "request" and str(step.args.get("command")) in WRITING_COMMANDS


def not_applicable(scenario: Scenario, export: ExternalExport, allow_writes: bool) -> str | None:
    """Why ``scenario`` cannot judge an unknown export (None: it can)."""
    if "server" not in scenario.roles:
        return "client-role scenario"
    serving = scenario.export
    wanted = serving.spec
    if wanted.layers or wanted.bitmaps or wanted.writes_after_bitmaps:
        return "needs preset export contents or bitmaps"
    if serving.handshake != "fixed-newstyle":
        return f"needs a {serving.handshake} server"
    if wanted.block_sizes_set or wanted.block_size_required:
        return "needs configured block size constraints"
    if serving.extra_exports or not serving.list_exports or wanted.init_state:
        return "needs a configured export list or INIT_STATE"
    if wanted.description:
        return "expects a configured export description"
    if not wanted.multi_conn:
        return "needs a non-shareable export"
    if (serving.tls != "off") != export.tls or serving.tls == "optional":
        return f"needs TLS {serving.tls}, the URI {'uses' if export.tls else 'does not use'} TLS"
    if wanted.read_only != export.read_only:
        return f"needs a {'read-only' if wanted.read_only else 'writable'} export"
    steps = [*scenario.steps, *(scenario.fallback.expect if scenario.fallback else ())]
    other = next((name for step in steps if (name := _other_names(step, export.parsed.export))
                  is not None), None)
    if other is not None:
        return (f"expects something of the export name {other!r}, which this server was not "
                "asked about (the probes judge unknown names)")
    if not export.concurrent and any(_second_connection(step) for step in steps):
        return "opens a second connection; the server greets one client at a time"
    if not allow_writes and any(_writes(step) for step in steps):
        return "writes (use --allow-writes)"
    if export.size != wanted.size and any(_literal_size(step) for step in steps):
        return f"expects the size of a {wanted.size}-byte export"
    known: list[tuple[int, int]] = []
    sync_span = (0, min(export.size, SYNC_READ))
    for step in steps:
        span = _range(step)
        if span is not None:
            offset, length = span
            if offset + length > wanted.size and export.size != wanted.size:
                return f"tests the end of a {wanted.size}-byte export"
            if offset + length > export.size and offset + length <= wanted.size:
                return f"needs at least {offset + length} bytes (the export has {export.size})"
        expect = step.expect or {}
        # Every read is compared with what the scenario believes the export holds, and a
        # request (unless sync_check is off) or an in-sync check reads the first block back.
        reads: tuple[int, int] | None = None
        if step.action in ("read", "verify_data") and not expect.get("error"):
            reads = span
        elif (step.action == "request" and step.args.get("sync_check", True)) \
                or step.action == "expect_in_sync":
            reads = sync_span
        if reads is not None and reads[1] and not _covered(known, *reads):
            return "reads data it did not write"
        if step.action in ("map", "block_status") and expect.get("extents") not in (None, {}):
            return "expects exact extents"
        if step.action in _KNOWN_DATA and span is not None and not expect.get("error"):
            known.append((span[0], span[0] + span[1]))
        elif step.action in ("trim", "request", "raw") and span is not None:
            known = [(a, b) for a, b in known if b <= span[0] or a >= span[0] + span[1]]
    return None


def external_cases(scenarios: Iterable[Scenario], export: ExternalExport, *,
                   allow_writes: bool = False, timeout: float = CASE_TIMEOUT) -> Expansion:
    """Cases of the applicable scenarios against ``export`` (the rest listed as excluded)."""
    cases: list[Case] = []
    excluded: list[Excluded] = []
    server, client = export.peer, reference_client()
    for scenario in scenarios:
        reason = not_applicable(scenario, export, allow_writes)
        if reason:
            excluded.append(Excluded(scenario.name, server.spec, reason))
            continue
        fitted = dataclasses.replace(scenario, export=dataclasses.replace(
            scenario.export, spec=dataclasses.replace(scenario.export.spec, size=export.size,
                                                      name=export.parsed.export)))
        cases.append(Case(fitted, scenario.id, "server", server, client,
                          Expectation(None, why="an external server: any good verdict"),
                          timeout))
    cases.sort(key=lambda case: case.id)
    return Expansion(cases, excluded)


def tls_dir_of(export: ExternalExport) -> str | None:
    return export.parsed.tls_certificates


__all__ = ["ExternalError", "ExternalExport", "external_cases", "from_facts", "not_applicable",
           "tls_dir_of"]
