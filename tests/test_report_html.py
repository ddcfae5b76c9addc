"""The HTML report: index, case and peer pages from a result set, and a real browser's view.

The unit tests build a result set with real evidence files in ``tmp_path`` and
read the pages back: every link resolves, every cell links to its case, the
case page quotes the spec and marks the offending wire messages.  The browser
test runs a real selection with ``nbd-harness run``, opens its ``index.html``
in headless Chromium, clicks a red cell and reads the case page it lands on.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import urllib.parse
from collections.abc import Callable, Iterator
from html.parser import HTMLParser
from pathlib import Path

import pytest
from _cdp import Chromium, Page

from harness.matrix.results import CaseResult, case_slug
from harness.report.html import write_html
from harness.report.store import RunResults

REPO = Path(__file__).resolve().parents[1]
SCREENSHOTS = REPO / "reports" / "screenshots"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
WIDTH, HEIGHT = 1400, 1000

SENTENCE = "Finally, it SHOULD return `NBD_EPERM` if it receives a write or trim request."
SERVER_FINDING = {"rule": "server.read-only-eperm", "level": "SHOULD", "role": "server",
                  "section": "Error values", "sentence": SENTENCE, "session": 1, "frame": 6,
                  "offset": 20, "direction": "server",
                  "message": "NBD_CMD_WRITE on a read-only export failed with NBD_EINVAL"}
CLIENT_FINDING = {"rule": "client.command-flag-documented", "level": "MUST NOT",
                  "role": "client", "section": "Command flags",
                  "sentence": "Clients MUST NOT set a command flag bit that is not documented",
                  "session": 1, "frame": 5, "offset": 4, "direction": "client",
                  "message": "NBD_CMD_WRITE with flag bits NBD_CMD_FLAG_REQ_ONE"}

SCENARIO = """name: write-read-only
description: a write to a read-only export fails with NBD_EPERM
roles: [server]
steps:
  - connect: {}
  - request: {command: NBD_CMD_WRITE, offset: 0, payload: 4k}
    expect: {error: NBD_EPERM}
"""

# A wire log and its index as the runner writes them: three messages, the reply at line 10.
WIRE = """capture capture.pcapng: 6 frames, 1 session(s)

=== session 1: client 127.0.0.1:40000  server 127.0.0.1:10809  (frames 1-6)
frame 4  [session 1] server→client  newstyle greeting
    magic: 0x4e42444d41474943 (NBDMAGIC)
frame 5  [session 1] client→server  NBD_CMD_WRITE
    type: 1 (NBD_CMD_WRITE)
    length: 4096
frame 6  [session 1] server→client  simple reply, answers NBD_CMD_WRITE (frame 5)
    error: 22 (NBD_EINVAL) <&>
"""
T0 = 1_700_000_000.0
INDEX = [
    {"line": 4, "lines": 2, "session": 1, "direction": "server", "offset": 0, "frame": 4,
     "time": T0 + 0.1},
    {"line": 6, "lines": 3, "session": 1, "direction": "client", "offset": 4, "frame": 5,
     "time": T0 + 1.0},
    {"line": 9, "lines": 2, "session": 1, "direction": "server", "offset": 20, "frame": 6,
     "time": T0 + 1.01},
]
STEPS = (
    {"action": "connect", "line": 5, "status": "ok", "phase": "steps", "detail": "GO",
     "started": T0, "ended": T0 + 0.5},
    {"action": "request", "line": 6, "status": "failed", "phase": "steps",
     "detail": "expected the error NBD_EPERM, got NBD_EINVAL", "expected": "NBD_EPERM",
     "got": "NBD_EINVAL", "started": T0 + 0.9, "ended": T0 + 1.1},
)


def write_evidence(root: Path, case_id: str, *, gz: bool = False, wire: str = WIRE,
                   index: list[dict] | None = None, logs: bool = True) -> dict[str, str]:
    """Evidence files of a case under ``root/cases/SLUG`` (gzip'd as for a passing case)."""
    relative = f"cases/{case_slug(case_id)}"
    directory = root / relative
    (directory / "server").mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if gz else ""

    def put(name: str, text: str) -> str:
        path = directory / (name + suffix if name in ("wire.txt", "wire-index.json",
                                                      "capture.pcapng") else name)
        data = text.encode()
        path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)
        return f"{relative}/{path.relative_to(directory)}"

    evidence = {"directory": relative, "wire": put("wire.txt", wire),
                "wire-index": put("wire-index.json", json.dumps(INDEX if index is None
                                                                else index)),
                "capture": put("capture.pcapng", "not really a capture"),
                "scenario": put("scenario.yaml", SCENARIO),
                "steps": put("steps.json", "[]"), "findings": put("findings.json", "[]")}
    if logs:
        evidence["log:server/qemu-nbd"] = put("server/qemu-nbd.log", "qemu-nbd started\n")
    return evidence


def make_case(root: Path, scenario: str, server: str, verdict: str, *,
              client: str = "reference-client", role: str = "server", group: str = "negative",
              gz: bool | None = None, **extra: object) -> CaseResult:
    case_id = f"{scenario}[{server}-vs-{client}]"
    values: dict = dict(case_id=case_id, scenario=scenario, role=role, server=server,
                        client=client, verdict=verdict, observed=verdict, group=group,
                        expected="pass" if verdict in ("pass", "fail", "error") else verdict,
                        description=f"what {scenario} checks", spec=("Error values",),
                        duration=0.25)
    values.update(extra)
    values["evidence"] = write_evidence(root, case_id, gz=verdict == "pass" if gz is None
                                        else gz)
    return CaseResult(**values)


@pytest.fixture
def results(tmp_path: Path) -> RunResults:
    root = tmp_path / "run"
    cases = [
        make_case(root, "write-read-only", "qemu-nbd@7.2", "fail",
                  detail="steps[1] request (line 6): expected the error NBD_EPERM, got "
                         "NBD_EINVAL",
                  findings=(SERVER_FINDING, CLIENT_FINDING), steps=STEPS),
        make_case(root, "write-read-only", "qemu-nbd@10.0", "pass"),
        make_case(root, "write-read-only", "reference-server@qemu-2.6", "unsupported"),
        make_case(root, "write <b>", "nbdkit@1.32", "error", group="options",
                  detail="nbdkit would not start <&>"),
        make_case(root, "sr-read", "reference-server@qemu-2.10", "expected-fallback",
                  group="structured", expectation="qemu 2.10 lacks structured-replies"),
        make_case(root, "list-exports", "reference-server", "pass", client="nbdinfo@1.14",
                  role="client", group="client",
                  sessions=({"style": "fixed-newstyle", "structured_replies": True,
                             "options": ["NBD_OPT_LIST -> NBD_REP_ACK"], "export": "disk",
                             "commands": {"NBD_CMD_READ": 2}},)),
    ]
    (root / "conformance").mkdir()
    (root / "conformance" / "qemu-nbd@7.2.md").write_text("# qemu-nbd@7.2\n")
    (root / "junit.xml").write_text("<testsuites/>\n")
    peers = [{"spec": "qemu-nbd@7.2", "program": "qemu-nbd", "version": "7.2",
              "family": "qemu", "family_version": "7.2", "provider": "host",
              "package": "qemu-utils", "package_version": "1:7.2+dfsg-7",
              "roles": ["server"], "quirks": ["read-only-hides-write-flags"]}]
    environment = {"host": "testhost", "os": "Debian GNU/Linux 12 (bookworm)",
                   "kernel": "6.1.0", "harness": {"version": "0.1.0", "commit": "a" * 40,
                                                   "modified": True}}
    runs = [{"command": ["nbd-harness", "run", "negative"], "cases": 6, "finished": 6,
             "wall_seconds": 12.5, "jobs": 2, "host": "testhost",
             "excluded": [{"scenario": "misaligned-read", "peer": "qemu-nbd@7.2",
                           "reason": "no block size constraints"}]}]
    return RunResults(directory=root, cases=sorted(cases, key=lambda r: r.case_id), runs=runs,
                      environment=environment, peers=peers, generated="2026-01-02T03:04:05Z")


# --- reading pages back -------------------------------------------------------------------------


_BLOCKS = frozenset({"p", "li", "td", "th", "dt", "dd", "div", "br", "tr", "h1", "h2", "h3",
                     "blockquote", "pre", "section", "table"})


class _Page(HTMLParser):
    """Links, ids, cells and text of one page."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.links: list[str] = []
        self.ids: set[str] = set()
        self.cells: list[tuple[str, str, str]] = []  # (td class, href, title) in the matrix
        self.text: list[str] = []
        self._td_class: str | None = None
        self._in_matrix = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {name: value or "" for name, value in attrs}
        if tag in _BLOCKS:
            self.text.append(" ")
        if "id" in values:
            self.ids.add(values["id"])
        if tag == "table":
            self._in_matrix = "matrix" in values.get("class", "").split()
        if tag == "td":
            self._td_class = values.get("class", "")
        if tag in ("a", "link") and "href" in values:
            self.links.append(values["href"])
            if tag == "a" and self._in_matrix and self._td_class is not None:
                self.cells.append((self._td_class, values["href"], values.get("title", "")))

    def handle_endtag(self, tag: str) -> None:
        if tag == "td":
            self._td_class = None

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    @property
    def words(self) -> str:
        """The page's text with runs of white space as one space (blocks apart)."""
        return " ".join("".join(self.text).split())


def parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


def every_link_resolves(site: Path) -> int:
    """Check every relative link of every page under ``site``; return how many were checked."""
    pages = {path: parse(path) for path in site.rglob("*.html")}
    checked = 0
    for path, page in pages.items():
        for href in page.links:
            target, _, fragment = href.partition("#")
            resolved = (path.parent / urllib.parse.unquote(target)).resolve() if target else path
            assert resolved.exists(), f"{path.relative_to(site)}: {href} leads nowhere"
            if fragment and resolved.suffix == ".html":
                ids = pages[resolved].ids if resolved in pages else parse(resolved).ids
                assert fragment in ids, f"{path.relative_to(site)}: no #{fragment} in {href}"
            checked += 1
    return checked


# --- the index ---------------------------------------------------------------------------------


def test_index_links_every_case_once_with_its_verdict(results: RunResults) -> None:
    index = write_html(results, results.directory)
    assert index == results.directory / "index.html"
    page = parse(index)
    classes = {"pass": "p", "fail": "f", "unsupported": "u", "expected-fallback": "b",
               "error": "e"}
    expected = {f"cases/{case_slug(r.case_id)}/index.html": r for r in results.cases}
    assert sorted(href for _, href, _ in page.cells) == sorted(expected)
    for css, href, title in page.cells:
        result = expected[href]
        assert css == classes[result.verdict]
        assert title == f"{result.verdict}; expected {result.expected}"
        assert (results.directory / href).is_file()
    assert every_link_resolves(results.directory) > 50
    text = index.read_text()
    assert "write &lt;b&gt;" in text and "write <b>" not in text
    assert "would not start &lt;&amp;&gt;" in text
    assert (results.directory / "report.css").is_file()


def test_index_overview_failures_and_environment(results: RunResults) -> None:
    index = write_html(results, results.directory)
    text = index.read_text()
    page = parse(index)
    words = page.words
    assert "6 cases: 1 error, 1 fail, 1 expected-fallback, 1 unsupported, 2 pass" in words
    # Overview: the pair qemu-nbd@7.2 x reference-client is red and links to its column.
    anchor = "pair-" + case_slug("qemu-nbd@7.2-vs-reference-client")
    assert f'<td class="f"><a href="#{anchor}"' in text and anchor in page.ids
    # Failures first: the error, then the fail, each with its reason.
    error_at = words.index("write <b>[nbdkit@1.32-vs-reference-client]: nbdkit would not start")
    fail_at = words.index("write-read-only[qemu-nbd@7.2-vs-reference-client]: steps[1]")
    assert error_at < fail_at
    # Clients' tables: real clients first; groups in the library's order.
    groups = re.findall(r'<tr class="grp"><th colspan="\d+">([^<]*)</th>', text)
    assert groups == ["client", "options", "structured", "negative"]
    assert "commit aaaaaaaaaaaa (with uncommitted changes)" in words
    assert "wall time 12.5 s" in words and "nbd-harness run negative" in words
    assert "misaligned-read qemu-nbd@7.2 no block size constraints" in words
    assert 'href="junit.xml"' in text and 'href="summary.md"' not in text  # only what exists


# --- a case page -------------------------------------------------------------------------------


def case_page(results: RunResults, site: Path, case_id: str) -> tuple[Path, str, _Page]:
    path = site / "cases" / case_slug(case_id) / "index.html"
    return path, path.read_text(encoding="utf-8"), parse(path)


def test_case_page_quotes_the_spec_and_marks_the_wire(results: RunResults) -> None:
    write_html(results, results.directory)
    path, text, page = case_page(results, results.directory,
                                 "write-read-only[qemu-nbd@7.2-vs-reference-client]")
    words = page.words
    # The finding against the peer, quoting the spec with its code spans as code.
    assert ('<blockquote class="sentence">Finally, it SHOULD return <code>NBD_EPERM</code> if'
            in text)
    assert "Findings against qemu-nbd@7.2 (1)" in words
    # The reference client's deliberate breach is shown apart, never as the peer's fault.
    peer_part, _, other_part = text.partition("Breaches by the client reference-client "
                                              "(deliberate")
    assert "client.command-flag-documented" in other_part
    assert "client.command-flag-documented" not in peer_part
    # The wire: the reply the finding points at is red, with the finding beside it; the
    # failed step's messages are amber.
    assert ('<div class="msg finding step" id="m-1-server-20"><pre>frame 6  [session 1] '
            "server→client  simple reply" in text)
    assert "error: 22 (NBD_EINVAL) &lt;&amp;&gt;" in text
    assert '<a href="#m-1-server-20">the message in the wire log</a>' in text
    assert '<a href="#finding-0">SHOULD server.read-only-eperm: NBD_CMD_WRITE on' in text
    assert '<div class="msg finding step" id="m-1-client-4">' in text
    assert "the failed step (scenario line 6) exchanged these messages" in text
    assert '<div class="msg" id="m-1-server-0">' in text
    # The failed step and its scenario line are highlighted.
    assert '<tr class="st-failed decisive">' in text
    assert '<span id="L6" class="hl"><i>6</i>  - request: {command: NBD_CMD_WRITE' in text
    # Evidence: local links (the page sits in the case's evidence directory).
    for name in ("capture.pcapng", "wire.txt", "findings.json", "steps.json",
                 "scenario.yaml", "server/qemu-nbd.log"):
        assert f'href="{name}"' in text, name
    assert ("nbd-harness run negative/write-read-only --server qemu-nbd@7.2 --client "
            "reference-client") in words
    assert every_link_resolves(path.parent) > 10


def test_passing_case_reads_gzipped_evidence(results: RunResults) -> None:
    write_html(results, results.directory)
    _, text, page = case_page(results, results.directory,
                              "write-read-only[qemu-nbd@10.0-vs-reference-client]")
    assert 'href="wire.txt.gz"' in text and 'href="capture.pcapng.gz"' in text
    assert "frame 5  [session 1] client→server  NBD_CMD_WRITE" in text
    words = page.words
    assert "None: on qemu-nbd@10.0's side the wire broke no rule." in words


def test_client_case_shows_what_was_negotiated(results: RunResults) -> None:
    write_html(results, results.directory)
    _, _, page = case_page(results, results.directory,
                           "list-exports[reference-server-vs-nbdinfo@1.14]")
    words = page.words
    assert "fixed-newstyle, structured-replies, export='disk'" in words
    assert "NBD_OPT_LIST -> NBD_REP_ACK" in words
    assert "NBD_CMD_READ \N{MULTIPLICATION SIGN}2" in words
    assert "nbdinfo@1.14 (the client)" in words


def test_long_wire_log_is_cut_around_the_marked_message(tmp_path: Path) -> None:
    root = tmp_path / "run"
    count = 4000
    lines = ["capture big.pcapng", ""]
    index = []
    for number in range(count):
        index.append({"line": len(lines) + 1, "lines": 2, "session": 1,
                      "direction": "client", "offset": number * 28, "frame": number + 4,
                      "time": T0 + number})
        lines += [f"frame {number + 4}  [session 1] client→server  NBD_CMD_READ",
                  f"    cookie: {number}"]
    finding = dict(SERVER_FINDING, direction="client", offset=2000 * 28, frame=2004)
    case_id = "big[qemu-nbd@7.2-vs-reference-client]"
    result = CaseResult(case_id=case_id, scenario="big", role="server", server="qemu-nbd@7.2",
                        client="reference-client", verdict="fail", observed="fail",
                        expected="pass", findings=(finding,),
                        evidence=write_evidence(root, case_id, wire="\n".join(lines) + "\n",
                                                index=index))
    write_html(RunResults(directory=root, cases=[result]), root)
    text = (root / "cases" / case_slug(case_id) / "index.html").read_text()
    assert f"{count} messages, 611 shown here" in text
    assert text.count('<p class="gap">') == 2
    assert '<div class="msg finding" id="m-1-client-56000">' in text
    assert "cookie: 1994" not in text and "cookie: 1995" in text
    assert "cookie: 2005" in text and "cookie: 2006" not in text
    assert "cookie: 0</pre>" in text and f"cookie: {count - 1}</pre>" in text


# --- peers -------------------------------------------------------------------------------------


def test_peer_pages(results: RunResults) -> None:
    write_html(results, results.directory)
    peers = results.directory / "peers"
    assert sorted(p.name for p in peers.iterdir()) == sorted(
        f"{spec}.html" for spec in ("qemu-nbd@7.2", "qemu-nbd@10.0", "nbdkit@1.32",
                                    "reference-server@qemu-2.6", "reference-server@qemu-2.10",
                                    "reference-server", "reference-client", "nbdinfo@1.14"))
    text = (peers / "qemu-nbd@7.2.html").read_text()
    page = parse(peers / "qemu-nbd@7.2.html")
    words = page.words
    assert "package qemu-utils 1:7.2+dfsg-7" in words and "provider host" in words
    assert "read-only-hides-write-flags" in words
    assert 'href="../conformance/qemu-nbd@7.2.md"' in text
    assert "server.read-only-eperm" in words and "Finally, it SHOULD return NBD_EPERM" in words
    link = f'href="../cases/{case_slug("write-read-only[qemu-nbd@7.2-vs-reference-client]")}'
    assert link in text
    # The reference client's deliberate breach is no rule the server broke...
    assert "client.command-flag-documented" not in words
    # ...nor one the reference client broke: it is not the peer under test there.
    reference = parse(peers / "reference-client.html").words
    assert "Rules it broke (0)" in reference and "0 cases test reference-client" in reference
    assert "(as the other side)" in reference
    assert every_link_resolves(results.directory) > 50


def test_other_output_directory_links_back_to_the_evidence(results: RunResults,
                                                           tmp_path: Path) -> None:
    site = tmp_path / "site"
    index = write_html(results, site)
    assert index == site / "index.html" and (site / "report.css").is_file()
    assert not (results.directory / "index.html").exists()
    _, text, _ = case_page(results, site, "write-read-only[qemu-nbd@7.2-vs-reference-client]")
    slug = case_slug("write-read-only[qemu-nbd@7.2-vs-reference-client]")
    assert f'href="../../../run/cases/{slug}/capture.pcapng"' in text
    assert 'href="../run/junit.xml"' in index.read_text()
    assert every_link_resolves(site) > 50


# --- in a real browser -------------------------------------------------------------------------

RUN_SELECTION = ["negative/write-read-only-eperm", "negative/trim-read-only-eperm",
                 "negative/read-past-end", "negative/zero-length-read",
                 "--server", "qemu-nbd@7.2", "--server", "reference-server",
                 "--client", "reference-client"]
FAILING_CASE = "write-read-only-eperm[qemu-nbd@7.2-vs-reference-client]"
RUN_TIMEOUT = 300


@pytest.fixture(scope="module")
def real_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real result directory (with its HTML report) from ``nbd-harness run``."""
    out = tmp_path_factory.mktemp("html-run") / "results"
    completed = subprocess.run(
        [sys.executable, "-m", "harness.cli", "run", *RUN_SELECTION, "--out", str(out),
         "-j", "2", "--no-progress"],
        capture_output=True, text=True, timeout=RUN_TIMEOUT, cwd=REPO, check=False)
    assert (out / "index.html").is_file(), completed.stdout + completed.stderr
    return out


@pytest.fixture
def browser(tmp_path: Path,
            require_programs: Callable[..., dict[str, str]]) -> Iterator[Chromium]:
    binary = require_programs("chromium")["chromium"]
    with Chromium(binary, tmp_path / "chromium-profile", width=WIDTH, height=HEIGHT) as chrome:
        yield chrome


def file_of(url: str) -> Path:
    """The file a ``file://`` URL names."""
    parsed = urllib.parse.urlparse(url)
    assert parsed.scheme == "file", url
    return Path(urllib.parse.unquote(parsed.path))


def save_screenshot(page: Page, tmp_path: Path, name: str) -> Path:
    """A PNG of the viewport in the test's directory and in reports/screenshots/."""
    path = page.screenshot(tmp_path / name)
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE), f"{name} is not a PNG"
    assert data[12:16] == b"IHDR" and struct.unpack(">II", data[16:24]) == (WIDTH, HEIGHT)
    assert len(data) > 20_000, f"{name}: {len(data)} bytes, a blank page?"
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(path, SCREENSHOTS / name)
    return path


@pytest.mark.peers
@pytest.mark.slow
def test_chromium_renders_the_matrix_and_a_click_leads_to_the_case(
        real_run: Path, browser: Chromium, tmp_path: Path) -> None:
    page = browser.new_page()
    page.navigate((real_run / "index.html").as_uri())
    title = page.evaluate("document.title")
    assert title.startswith("nbd-harness: 8 cases") and "1 fail" in title, title
    assert page.evaluate("document.querySelectorAll('table.matrix').length") == 1
    assert page.evaluate("document.querySelectorAll('table.matrix td a').length") == 8
    total = page.evaluate("document.querySelector('p.total').innerText")
    assert total.startswith("8 cases: 1 fail"), total
    # The stylesheet applies: a failed cell is red, a passing one green.
    colours = page.evaluate(
        "['f', 'p'].map(c => getComputedStyle(document.querySelector("
        "'table.matrix td.' + c)).backgroundColor)")
    assert colours == ["rgb(198, 40, 40)", "rgb(46, 125, 50)"], colours
    # Every cell's link leads to an existing case page.
    hrefs = page.evaluate("[...document.querySelectorAll('table.matrix td a')].map(a => a.href)")
    for href in hrefs:
        assert file_of(href).is_file(), href
    save_screenshot(page, tmp_path, "report-index.png")

    # The CSS-only filter hides the scenarios where everything is good.
    page.evaluate("document.querySelector('label[for=only-problems]').click()")
    visible = page.evaluate("[...document.querySelectorAll('table.matrix tbody tr:not(.grp)')]"
                            ".filter(row => row.offsetParent !== null)"
                            ".map(row => row.querySelector('th').innerText)")
    assert visible == ["write-read-only-eperm"], visible
    page.evaluate("document.querySelector('label[for=only-problems]').click()")

    # Click the red cell with the mouse, as a person would.
    box = page.evaluate(
        "(() => { const a = document.querySelector('table.matrix td.f a');"
        " a.scrollIntoView({block: 'center'}); const r = a.getBoundingClientRect();"
        " return {x: r.x + r.width / 2, y: r.y + r.height / 2, href: a.href}; })()")
    browser.drop_events("Page.loadEventFired")
    page.click_at(box["x"], box["y"])
    page.wait_load()
    location = page.evaluate("location.href")
    expected = real_run / "cases" / case_slug(FAILING_CASE) / "index.html"
    assert file_of(location) == file_of(box["href"]) == expected, location
    heading = page.evaluate("document.querySelector('h1').innerText")
    assert FAILING_CASE in heading and "fail" in heading
    detail = page.evaluate("document.querySelector('dd.detail').innerText")
    assert "expected the error NBD_EPERM, got NBD_EINVAL" in detail
    sentence = page.evaluate("document.querySelector('#findings blockquote.sentence').innerText")
    assert "SHOULD return NBD_EPERM" in sentence, sentence
    marked = page.evaluate("[...document.querySelectorAll('.wire .msg.finding')]"
                           ".map(block => block.innerText)")
    assert len(marked) == 1 and "NBD_EINVAL" in marked[0], marked
    assert page.evaluate("document.querySelectorAll('.wire .msg.step').length") >= 2
    assert page.evaluate("getComputedStyle(document.querySelector('.wire .msg.finding'))"
                         ".backgroundColor") == "rgb(253, 228, 228)"
    save_screenshot(page, tmp_path, "report-case.png")
    # Follow the finding's link to the highlighted message, and picture that too.
    page.evaluate("document.querySelector('#findings a[href^=\"#m-\"]').click()")
    target = page.evaluate("location.hash")
    assert target.startswith("#m-1-server-")
    top = page.evaluate(f"document.getElementById('{target[1:]}').getBoundingClientRect().top")
    assert 0 <= top < HEIGHT
    save_screenshot(page, tmp_path, "report-case-wire.png")


@pytest.mark.peers
def test_real_run_pages_link_only_to_existing_files(real_run: Path) -> None:
    assert every_link_resolves(real_run) > 100
    assert (real_run / "peers" / "qemu-nbd@7.2.html").is_file()
    assert os.path.getsize(real_run / "index.html") > 5_000


def test_unknown_verdict_shows_as_error(tmp_path: Path) -> None:
    root = tmp_path / "run"
    result = make_case(root, "odd", "qemu-nbd@7.2", "pass")
    odd = CaseResult.from_dict(dict(result.to_dict(), verdict="bogus"))
    index = write_html(RunResults(directory=root, cases=[odd]), root)
    page = parse(index)
    assert [(css, title) for css, _, title in page.cells] == [("e", "bogus; expected pass")]
    assert "Failures and errors (1)" in page.words
    assert "odd[qemu-nbd@7.2-vs-reference-client]: observed pass" in page.words
