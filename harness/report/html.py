"""``index.html``: the static matrix page, generated from the results (never edited by hand).

One table per client peer: a row per scenario, a column per server peer, a
cell per case showing its verdict (colour and symbol; the tooltip says the
expected and observed verdicts and the detail).  Every cell that is not a
plain pass links to the case's details further down: findings with their
spec citation and frame, what each connection negotiated, and the evidence
files (capture, decoded wire log, peer logs).
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

from harness.matrix.results import CaseResult, case_slug
from harness.matrix.verdict import ORDER, SYMBOLS, Verdict

from ._summary import citation, counts_line, negotiated_text, summarize

_COLOURS = {
    Verdict.PASS: "#2e7d32",
    Verdict.FAIL: "#c62828",
    Verdict.UNSUPPORTED: "#757575",
    Verdict.EXPECTED_FALLBACK: "#1565c0",
    Verdict.ERROR: "#e65100",
}

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; margin-bottom: 2em; }
th, td { border: 1px solid #ccc; padding: 2px 6px; font-size: 13px; }
th.col { writing-mode: vertical-rl; transform: rotate(180deg); white-space: nowrap; }
td.cell { text-align: center; font-weight: bold; color: white; }
td.cell a { color: white; text-decoration: none; display: block; }
td.none { background: #f4f4f4; }
.legend span { padding: 2px 8px; color: white; margin-right: 6px; }
.case { border-left: 4px solid #ccc; padding-left: 1em; margin-bottom: 1.5em; }
code { background: #f4f4f4; }
"""


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _verdict(result: CaseResult) -> Verdict:
    try:
        return result.final
    except ValueError:
        return Verdict.ERROR


def _tooltip(result: CaseResult) -> str:
    text = (f"{result.case_id}\nverdict {result.verdict} (observed {result.observed}, "
            f"expected {result.expected or 'any good verdict'})")
    if result.detail:
        text += f"\n{result.detail[:400]}"
    return text


def _cell(result: CaseResult | None) -> str:
    if result is None:
        return '<td class="none"></td>'
    verdict = _verdict(result)
    symbol = _e(SYMBOLS[verdict])
    colour = _COLOURS[verdict]
    link = f'<a href="#{_e(case_slug(result.case_id))}">{symbol}</a>'
    return (f'<td class="cell" style="background:{colour}" title="{_e(_tooltip(result))}">'
            f"{link}</td>")


def _table(client: str, members: Sequence[CaseResult]) -> list[str]:
    servers = sorted({r.server for r in members})
    scenarios = sorted({r.scenario for r in members})
    by_key = {(r.scenario, r.server): r for r in members}
    out = [f"<h2>client: {_e(client)}</h2>", "<table>", "<tr><th>scenario</th>"]
    out += [f'<th class="col">{_e(server)}</th>' for server in servers]
    out.append("</tr>")
    for scenario in scenarios:
        out.append(f"<tr><td>{_e(scenario)}</td>")
        out += [_cell(by_key.get((scenario, server))) for server in servers]
        out.append("</tr>")
    out.append("</table>")
    return out


def _details(result: CaseResult) -> list[str]:
    verdict = _verdict(result)
    out = [f'<div class="case" id="{_e(case_slug(result.case_id))}" '
           f'style="border-color:{_COLOURS[verdict]}">',
           f"<h3>{_e(result.case_id)}: {_e(result.verdict)}</h3>"]
    if result.description:
        out.append(f"<p>{_e(result.description)}</p>")
    out.append("<ul>")
    out.append(f"<li>expected {_e(result.expected or 'any good verdict')}"
               + (f" ({_e(result.expectation)})" if result.expectation else "")
               + f"; observed {_e(result.observed)}</li>")
    if result.detail:
        out.append(f"<li>detail: {_e(result.detail)}</li>")
    if result.spec:
        out.append(f"<li>spec: {_e('; '.join(result.spec))}</li>")
    out += [f"<li>finding: {_e(citation(f))}</li>" for f in result.findings]
    for number, session in enumerate(result.sessions, start=1):
        options = "; ".join(session.get("options", []))
        out.append(f"<li>connection {number}: {_e(negotiated_text(session))}"
                   + (f"; options: <code>{_e(options)}</code>" if options else "") + "</li>")
    for name, path in sorted(result.evidence.items()):
        out.append(f'<li>{_e(name)}: <a href="{_e(path)}">{_e(path)}</a></li>')
    out.append("</ul></div>")
    return out


def render_html(results: Sequence[CaseResult], runs: Sequence[dict[str, Any]] = ()) -> str:
    """The matrix page as HTML text."""
    summary = summarize(results)
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           "<title>nbd-harness matrix</title>", f"<style>{_STYLE}</style></head><body>",
           "<h1>nbd-harness matrix</h1>",
           f"<p>{summary.total} cases: {_e(counts_line(summary))}.</p>"]
    for run in runs:
        wall = f", wall time {run['wall_seconds']:.1f} s" if "wall_seconds" in run else ""
        shard = f" shard {run['shard']}" if run.get("shard") else ""
        out.append(f"<p>run{_e(shard)}: {_e(run.get('cases', '?'))} cases{_e(wall)}</p>")
    out.append('<p class="legend">' + "".join(
        f'<span style="background:{_COLOURS[v]}">{_e(SYMBOLS[v])} {_e(v.value)}</span>'
        for v in ORDER) + "</p>")
    by_client: dict[str, list[CaseResult]] = {}
    for result in results:
        by_client.setdefault(result.client, []).append(result)
    for client, members in sorted(by_client.items()):
        out += _table(client, members)
    out.append("<h2>Cases</h2>")
    interesting = [r for r in results if _verdict(r) != Verdict.PASS or r.findings]
    plain = [r for r in results if r not in interesting]
    for result in sorted(interesting, key=lambda r: r.case_id) + sorted(
            plain, key=lambda r: r.case_id):
        out += _details(result)
    out.append("</body></html>")
    return "\n".join(out) + "\n"


__all__ = ["render_html"]
