"""What the HTML index shows, as plain data: the overview, the full matrix, the failures.

The templates only lay these out; every decision (which server is a column,
which verdict colours a cell, which rows hold only good verdicts) is made here,
once, in Python.  A full run has about 10 000 cases, so a matrix cell is a
tuple of short strings and the markup per cell stays a few dozen bytes.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from harness.matrix.results import CaseResult, case_slug
from harness.scenarios.loader import GROUPS
from harness.verdict import ORDER, SYMBOLS, Verdict, worst

from ._summary import citation, problems, verdict_of
from .evidence import findings_of_peer

VERDICT_CLASS = {
    Verdict.PASS: "p",
    Verdict.FAIL: "f",
    Verdict.UNSUPPORTED: "u",
    Verdict.EXPECTED_FALLBACK: "b",
    Verdict.ERROR: "e",
}
"""The CSS class of each verdict (one letter: the matrix holds thousands of cells)."""

REASON_LIMIT = 240
"""Characters of a failure's one-line reason on the index."""

_NUMBER = re.compile(r"(\d+)")


def is_good(result: CaseResult) -> bool:
    """A benign verdict (pass, unsupported, expected-fallback)."""
    return verdict_of(result).benign


def natural_key(text: str) -> tuple[Any, ...]:
    """Sort key that puts ``qemu-2.6`` before ``qemu-2.10``."""
    return tuple(int(part) if part.isdigit() else part for part in _NUMBER.split(text))


def program_of(spec: str) -> str:
    return spec.partition("@")[0]


def version_label(spec: str) -> str:
    """The column heading under the program: the version or profile, ``default`` if none."""
    return spec.partition("@")[2] or "default"


def spec_key(spec: str) -> tuple[Any, ...]:
    """Real peers first, the reference peers after them; versions in numeric order."""
    program, _, version = spec.partition("@")
    return (program.startswith("reference-"), program, version != "", natural_key(version))


def group_key(group: str) -> tuple[int, str]:
    """Scenario groups in the library's order (handshake, options, ...), unknown ones after."""
    if group in GROUPS:
        return (GROUPS.index(group), group)
    return (len(GROUPS) + (not group), group)


def peer_slug(spec: str) -> str:
    """The file name stem of a peer's page (``peers/SLUG.html``)."""
    return case_slug(spec)


def pair_anchor(server: str, client: str) -> str:
    """The HTML id of a pair's column in the full matrix."""
    return "pair-" + case_slug(f"{server}-vs-{client}")


def client_anchor(client: str) -> str:
    return "client-" + case_slug(client)


def case_href(result: CaseResult, prefix: str = "") -> str:
    """The link to a case's page from a page ``prefix`` away from the report's root."""
    return f"{prefix}cases/{case_slug(result.case_id)}/index.html"


def cell_title(result: CaseResult) -> str:
    """A matrix cell's tooltip: verdict and what was expected."""
    return f"{result.verdict}; expected {result.expected or 'any good verdict'}"


@dataclass(frozen=True)
class Column:
    """A server column (or a client in the overview): its spec and headings."""

    spec: str
    program: str
    label: str
    page: str
    """``peers/SLUG.html`` (relative to the report root)."""


@dataclass(frozen=True)
class Span:
    """A program heading above its version columns."""

    program: str
    width: int


@dataclass(frozen=True)
class Cell:
    """One matrix cell: CSS class, symbol, link, tooltip."""

    css: str
    symbol: str
    href: str
    title: str


@dataclass(frozen=True)
class Row:
    scenario: str
    description: str
    cells: tuple[Cell | None, ...]
    ok: bool
    """Every case of the row has a good verdict (a CSS switch can hide such rows)."""


@dataclass(frozen=True)
class GroupRows:
    group: str
    rows: tuple[Row, ...]

    @property
    def ok(self) -> bool:
        return all(row.ok for row in self.rows)


@dataclass(frozen=True)
class ClientTable:
    """The full matrix of one client: scenarios (grouped) x servers."""

    client: str
    anchor: str
    page: str
    spans: tuple[Span, ...]
    columns: tuple[Column, ...]
    anchors: tuple[str, ...]
    """The id of each column's heading (the target of the overview's links)."""
    groups: tuple[GroupRows, ...]
    cases: int

    @property
    def ok(self) -> bool:
        return all(group.ok for group in self.groups)


@dataclass(frozen=True)
class PairCell:
    """An overview cell: the pair's worst verdict and its counts."""

    css: str
    counts: tuple[tuple[str, int], ...]
    """(symbol, number) per verdict present, worst first."""
    href: str
    title: str


@dataclass(frozen=True)
class OverviewRow:
    server: Column
    first_of_program: int
    """How many rows the program heading spans (0 for all but the program's first row)."""
    cells: tuple[PairCell | None, ...]


@dataclass(frozen=True)
class Overview:
    clients: tuple[Column, ...]
    rows: tuple[OverviewRow, ...]


@dataclass(frozen=True)
class Problem:
    """A failed or errored case and why, in one line."""

    css: str
    symbol: str
    verdict: str
    case_id: str
    href: str
    reason: str


def column(spec: str, peers: dict[str, dict[str, Any]]) -> Column:
    entry = peers.get(spec, {})
    program = str(entry.get("program") or program_of(spec))
    return Column(spec, program, version_label(spec), f"peers/{peer_slug(spec)}.html")


def spans_of(columns: Sequence[Column]) -> tuple[Span, ...]:
    spans: list[Span] = []
    for col in columns:
        if spans and spans[-1].program == col.program:
            spans[-1] = Span(col.program, spans[-1].width + 1)
        else:
            spans.append(Span(col.program, 1))
    return tuple(spans)


def _cell(result: CaseResult) -> Cell:
    verdict = verdict_of(result)
    return Cell(VERDICT_CLASS[verdict], SYMBOLS[verdict], case_href(result), cell_title(result))


def client_table(client: str, members: Sequence[CaseResult],
                 peers: dict[str, dict[str, Any]]) -> ClientTable:
    """The full matrix of ``client``: a row per scenario under its group, a column per server."""
    servers = sorted({r.server for r in members}, key=spec_key)
    columns = tuple(column(server, peers) for server in servers)
    position = {server: number for number, server in enumerate(servers)}
    by_scenario: dict[tuple[str, str], list[CaseResult | None]] = {}
    descriptions: dict[tuple[str, str], str] = {}
    for result in members:
        key = (result.group, result.scenario)
        slots = by_scenario.setdefault(key, [None] * len(servers))
        slots[position[result.server]] = result
        if result.description:
            descriptions.setdefault(key, result.description)
    groups: dict[str, list[Row]] = {}
    for key in sorted(by_scenario, key=lambda k: (group_key(k[0]), k[1])):
        slots = by_scenario[key]
        cells = tuple(None if r is None else _cell(r) for r in slots)
        ok = all(r is None or is_good(r) for r in slots)
        groups.setdefault(key[0], []).append(Row(key[1], descriptions.get(key, ""), cells, ok))
    return ClientTable(
        client=client, anchor=client_anchor(client), page=f"peers/{peer_slug(client)}.html",
        spans=spans_of(columns), columns=columns,
        anchors=tuple(pair_anchor(server, client) for server in servers),
        groups=tuple(GroupRows(group, tuple(rows)) for group, rows in groups.items()),
        cases=len(members))


def client_tables(results: Iterable[CaseResult],
                  peers: dict[str, dict[str, Any]]) -> list[ClientTable]:
    by_client: dict[str, list[CaseResult]] = {}
    for result in results:
        by_client.setdefault(result.client, []).append(result)
    return [client_table(client, by_client[client], peers)
            for client in sorted(by_client, key=spec_key)]


def _pair_cell(server: str, client: str, verdicts: Counter[Verdict]) -> PairCell:
    counts = tuple((SYMBOLS[v], verdicts[v]) for v in ORDER if verdicts[v])
    title = f"{server} vs {client}: " + ", ".join(
        f"{verdicts[v]} {v.value}" for v in ORDER if verdicts[v])
    return PairCell(VERDICT_CLASS[worst(list(verdicts))], counts,
                    "#" + pair_anchor(server, client), title)


def overview(results: Iterable[CaseResult], peers: dict[str, dict[str, Any]]) -> Overview:
    """Servers (rows, grouped by program) x clients (columns): each pair's worst verdict."""
    pairs: dict[tuple[str, str], Counter[Verdict]] = {}
    for result in results:
        pairs.setdefault((result.server, result.client), Counter())[verdict_of(result)] += 1
    servers = sorted({server for server, _ in pairs}, key=spec_key)
    clients = sorted({client for _, client in pairs}, key=spec_key)
    rows = []
    for number, server in enumerate(servers):
        program = column(server, peers).program
        span = 0
        if number == 0 or column(servers[number - 1], peers).program != program:
            span = sum(1 for s in servers[number:] if column(s, peers).program == program)
        cells = tuple(_pair_cell(server, client, pairs[(server, client)])
                      if (server, client) in pairs else None for client in clients)
        rows.append(OverviewRow(column(server, peers), span, cells))
    return Overview(tuple(column(client, peers) for client in clients), tuple(rows))


def one_line_reason(result: CaseResult) -> str:
    """Why a case is not good, in one line: its detail, else its first finding."""
    text = result.detail.strip().splitlines()[0] if result.detail.strip() else ""
    if not text:
        findings = findings_of_peer(result) or list(result.findings)
        text = citation(findings[0]) if findings else f"observed {result.observed}"
    if len(text) > REASON_LIMIT:
        text = text[:REASON_LIMIT - 1] + "…"
    return text


def problem_list(results: Iterable[CaseResult], prefix: str = "") -> list[Problem]:
    """The failed and errored cases, worst first, then by id."""
    return [Problem(VERDICT_CLASS[verdict_of(r)], SYMBOLS[verdict_of(r)], r.verdict, r.case_id,
                    case_href(r, prefix), one_line_reason(r)) for r in problems(results)]


def legend(counts: dict[str, int]) -> list[tuple[str, str, str, int]]:
    """(css, symbol, verdict, count) for every verdict, worst first."""
    return [(VERDICT_CLASS[v], SYMBOLS[v], v.value, counts.get(v.value, 0)) for v in ORDER]


__all__ = [
    "VERDICT_CLASS",
    "ClientTable",
    "Overview",
    "Problem",
    "case_href",
    "client_tables",
    "is_good",
    "legend",
    "natural_key",
    "one_line_reason",
    "overview",
    "peer_slug",
    "problem_list",
    "spec_key",
    "verdict_of",
]
