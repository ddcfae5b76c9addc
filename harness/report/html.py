"""The HTML report: one self-contained page set over a run's evidence folder.

    write_html(results, directory)      # -> directory/index.html

writes, into ``directory`` (by default the result directory itself)::

    index.html              counts, overview (servers x clients), failures, the full
                            matrix (one linked cell per case), peers, environment
    cases/SLUG/index.html   a page per case: verdict and why, findings quoting the spec,
                            steps, scenario, the decoded wire log with the offending
                            messages highlighted, links to the capture and logs
    peers/SLUG.html         a page per peer@version: its package, counts, rules broken
    report.css              the one stylesheet

A case's page lives in the case's evidence directory when ``directory`` is the
result directory, so its evidence links are plain file names; rendered
elsewhere (``nbd-harness report RESULTS --html DIR``), the links lead back to
the result directory.  No JavaScript: the pages work from ``file://`` and in
any browser.  Templates (``templates/*.j2``) are loaded once per process.
"""

from __future__ import annotations

import functools
import re
import shlex
import shutil
import time
import urllib.parse
from pathlib import Path
from typing import Any

import jinja2
from markupsafe import Markup, escape

from harness.matrix.results import CASES_DIR, case_slug

from ._html_case import case_view
from ._html_matrix import (
    client_tables,
    legend,
    overview,
    peer_slug,
    problem_list,
    spec_key,
)
from ._html_peer import peer_view
from ._summary import counts_line, summarize
from .evidence import CaseEvidence, relative_link
from .store import RESULTS_JSON, RunResults

TEMPLATES = Path(__file__).with_name("templates")
CSS_FILE = "report.css"
INDEX_FILE = "index.html"
PEERS_DIR = "peers"
CONFORMANCE_DIR = "conformance"
REPORT_LINKS = ((RESULTS_JSON, RESULTS_JSON), ("junit.xml", "junit.xml"),
                ("summary.md", "summary.md"), (f"{CONFORMANCE_DIR}/", CONFORMANCE_DIR))
"""(label, path in the result directory) of the other reports the index links to."""

_SAFE = "/@+=,"
"""Characters left as they are in links to evidence (besides letters, digits and ``_.-~``)."""
_BACKTICKS = re.compile(r"`([^`]+)`")


def _spec_markup(text: object) -> Markup:
    """A spec sentence with its Markdown ``code`` spans as <code> (everything else escaped)."""
    escaped = str(escape(str(text)))
    return Markup(_BACKTICKS.sub(r"<code>\1</code>", escaped))


@functools.cache
def _templates() -> jinja2.Environment:
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True, trim_blocks=True,
        lstrip_blocks=True, undefined=jinja2.StrictUndefined)
    environment.filters["spec"] = _spec_markup
    return environment


def _harness_text(harness: dict[str, Any]) -> str:
    text = str(harness.get("version", "unknown"))
    if harness.get("commit"):
        text += f", commit {str(harness['commit'])[:12]}"
        if harness.get("modified"):
            text += " (with uncommitted changes)"
    return text


def environment_facts(environment: dict[str, Any]) -> list[tuple[str, str]]:
    """(name, value) lines of where the run ran."""
    facts = []
    if environment.get("harness"):
        facts.append(("nbd-harness", _harness_text(environment["harness"])))
    for key, name in (("host", "host"), ("os", "OS"), ("kernel", "kernel"), ("arch", "arch"),
                      ("python", "Python"), ("cpus", "CPUs")):
        if environment.get(key) not in (None, ""):
            facts.append((name, str(environment[key])))
    if environment.get("memory_bytes"):
        facts.append(("memory", f"{environment['memory_bytes'] / 2**30:.1f} GiB"))
    return facts


def _when(seconds: Any) -> str:
    if not isinstance(seconds, (int, float)):
        return str(seconds)
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(seconds))


def run_view(number: int, run: dict[str, Any], count: int) -> dict[str, Any]:
    """One run (or shard) of the result set: what it was and how long it took."""
    title = f"Shard {run['shard']}" if run.get("shard") else (
        f"Run {number}" if count > 1 else "Run")
    facts = []
    if run.get("host"):
        facts.append(("host", str(run["host"])))
    if run.get("started"):
        facts.append(("started", _when(run["started"])))
    if "wall_seconds" in run:
        facts.append(("wall time", f"{float(run['wall_seconds']):.1f} s"))
    cases = run.get("cases")
    if cases is not None:
        finished = run.get("finished")
        text = str(cases) if finished in (None, cases) else f"{finished} of {cases} finished"
        facts.append(("cases", text))
    if run.get("jobs"):
        facts.append(("workers", str(run["jobs"])))
    if run.get("interrupted"):
        facts.append(("interrupted", "yes: the results are incomplete"))
    command = run.get("command")
    excluded = [item for item in run.get("excluded") or () if isinstance(item, dict)]
    return {"title": title, "facts": facts,
            "command": shlex.join(str(a) for a in command) if command else "",
            "excluded": [{"scenario": item.get("scenario", ""), "peer": item.get("peer", ""),
                          "reason": item.get("reason", "")} for item in excluded]}


class _Site:
    """Where the pages go and how they link to the results directory's files."""

    def __init__(self, results: RunResults, directory: Path) -> None:
        self.results = results
        self.root = Path(results.directory).resolve()
        self.out = Path(directory).resolve()
        self.same = self.root == self.out

    def case_dir(self, case_id: str) -> Path:
        return self.out / CASES_DIR / case_slug(case_id)

    def link(self, relative: str, page_dir: Path) -> str:
        """A link from a page in ``page_dir`` to ``relative`` (a path in the results dir)."""
        # Quoted: a '#', '?' or '%' in a file name must not end the path part of the URL.
        return urllib.parse.quote(relative_link(self.root / relative, page_dir), safe=_SAFE)

    def existing(self, relative: str, page_dir: Path) -> str:
        """Like :meth:`link`, but "" when the file is not there."""
        return self.link(relative, page_dir) if (self.root / relative).exists() else ""


def _write(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8")


def _write_peers(site: _Site, specs: list[str], entries: dict[str, dict[str, Any]],
                 generated: str) -> list[dict[str, Any]]:
    """Write a page per peer; return the index's row of each."""
    peers_dir = site.out / PEERS_DIR
    peers_dir.mkdir(exist_ok=True)
    template = _templates().get_template("peer.html.j2")
    rows = []
    for spec in specs:
        entry = entries.get(spec, {"spec": spec})
        report = f"{CONFORMANCE_DIR}/{case_slug(spec)}.md"
        view = peer_view(spec, entry, site.results.cases, site.existing(report, peers_dir))
        _write(peers_dir / f"{peer_slug(spec)}.html",
               template.render(peer=view, legend=legend({}), index=f"../{INDEX_FILE}",
                               css=f"../{CSS_FILE}", generated=generated))
        package = " ".join(str(entry[k]) for k in ("package", "package_version") if entry.get(k))
        rows.append({"spec": spec, "page": f"{PEERS_DIR}/{peer_slug(spec)}.html",
                     "package": package, "provider": entry.get("provider") or "",
                     "roles": ", ".join(entry.get("roles") or ()), "judged": view.judged,
                     "problems": sum(1 for _, tested in view.problems if tested),
                     "conformance": site.existing(report, site.out)})
    return rows


def _write_cases(site: _Site, generated: str) -> None:
    """Write a page per case (the costly part: each reads its wire log)."""
    template = _templates().get_template("case.html.j2")
    for result in site.results.cases:
        page_dir = site.case_dir(result.case_id)
        page_dir.mkdir(parents=True, exist_ok=True)
        view = case_view(result, CaseEvidence(site.root, result), site.results.runs,
                         functools.partial(site.link, page_dir=page_dir))
        _write(page_dir / INDEX_FILE,
               template.render(case=view, index=f"../../{INDEX_FILE}",
                               css=f"../../{CSS_FILE}", generated=generated))


def write_html(results: RunResults, directory: Path) -> Path:
    """Write the HTML report of ``results`` into ``directory``; return its ``index.html``."""
    site = _Site(results, directory)
    site.out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(TEMPLATES / CSS_FILE, site.out / CSS_FILE)
    generated = results.generated or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    entries = {str(entry.get("spec")): entry for entry in results.peers if entry.get("spec")}
    specs = set(entries) | {r.server for r in results.cases} | {r.client for r in results.cases}
    peer_rows = _write_peers(site, sorted(specs, key=spec_key), entries, generated)
    _write_cases(site, generated)

    summary = summarize(results.cases)
    problems = problem_list(results.cases)
    files = [(label, link) for label, relative in REPORT_LINKS
             if (link := site.existing(relative, site.out))]
    index = site.out / INDEX_FILE
    _write(index, _templates().get_template("index.html.j2").render(
        total=summary.total, counts_text=counts_line(summary), ok=not problems,
        legend=legend(summary.counts), overview=overview(results.cases, entries),
        problems=problems, tables=client_tables(results.cases, entries), peers=peer_rows,
        environment=environment_facts(results.environment),
        runs=[run_view(n, run, len(results.runs)) for n, run in enumerate(results.runs, 1)],
        files=files, css=CSS_FILE, generated=generated))
    return index


__all__ = ["CSS_FILE", "environment_facts", "write_html"]
