"""The zoo of third-party NBD implementations stays runnable, and its ground truth stays valid.

Live part: `scripts/zoo install` (from a clean machine: CI calls it through this test), then
each zoo server started and driven by a real client through the recording proxy, and each zoo
client run against the reference server through the proxy; every recorded session must
decode into NBD messages up to the transmission phase.

Data part: every tests/data/zoo/**/NAME.deviations.yaml is checked against its capture and
the spec (the format: tests/data/zoo/README.md): the frame exists, the sentence is the spec's,
verbatim, under the section named, the rule id exists (or is proposed as `new:`).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from harness.conformance import LEVELS, all_rules
from harness.dissect import decode_capture
from harness.paths import SPEC_DIR

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "zoo"))
import record  # noqa: E402 (tests/zoo is scripts, not a package)
import zoo  # noqa: E402

ZOO_DATA = REPO / "tests" / "data" / "zoo"
SPEC_FILES = ("proto.md", "proto-extended-headers.md")
TRUTH_FILES = sorted(ZOO_DATA.rglob("*.deviations.yaml"))
HEALTHY = ("qemu-nbd", "nbdkit")
IMPLEMENTATIONS = zoo.load()


@pytest.fixture(scope="module")
def installed_zoo() -> None:
    """Install every zoo implementation (idempotent: fast once cached)."""
    completed = subprocess.run([str(REPO / "scripts" / "zoo"), "install"],
                               capture_output=True, text=True, timeout=900)
    assert completed.returncode == 0, completed.stderr


def _transmission_reached(capture: Path) -> list[str]:
    """The names of the messages of the capture's one NBD session, which reached transmission."""
    decoded = decode_capture(capture)
    assert [s.nbd for s in decoded.sessions] == [True], decoded.sessions
    session = decoded.sessions[0]
    assert session.state.transmission_flags is not None, session.state
    return [message.name for message in session.messages]


@pytest.mark.parametrize("impl", [i for i in IMPLEMENTATIONS if i.is_server], ids=str)
def test_zoo_server_serves_a_real_client(impl: zoo.Implementation, installed_zoo: None,
                                         tmp_path: Path) -> None:
    """The server starts, and a real client's session through the proxy decodes up to its
    first request and the reply to it (the rust client: it needs only NBD_OPT_EXPORT_NAME,
    which every zoo server speaks; the session may end badly, a zoo server is broken)."""
    client = next(i for i in IMPLEMENTATIONS if i.name == "rust-nbd")
    capture = tmp_path / "live.pcapng"
    with record.zoo_server(impl, tmp_path) as upstream:
        record.record(upstream, capture, record.client_argv(client), tmp_path)
    names = _transmission_reached(capture)
    assert names[names.index("NBD_OPT_EXPORT_NAME") + 1] == "export name reply"
    assert names[names.index("NBD_CMD_WRITE") + 1] == "simple reply"


@pytest.mark.parametrize("impl", [i for i in IMPLEMENTATIONS if i.is_client], ids=str)
def test_zoo_client_against_the_reference_server(impl: zoo.Implementation, installed_zoo: None,
                                                 tmp_path: Path) -> None:
    """The client runs to its end against the reference server; its session decodes."""
    capture = tmp_path / "live.pcapng"
    with record.reference_server(tmp_path) as upstream:
        code = record.record(upstream, capture, record.client_argv(impl), tmp_path)
    assert code == 0, (tmp_path / "live.log").read_text()
    assert "NBD_CMD_READ" in _transmission_reached(capture)


# --- ground truth ------------------------------------------------------------------------

def _heading_text(line: str) -> str:
    """A markdown heading as the truth files name it: no #, no backticks, no emphasis."""
    return re.sub(r"[`*_]", "", line.lstrip("#").strip())


def _sections() -> dict[str, list[str]]:
    """Section heading -> its texts (whitespace-normalized), from both spec files."""
    sections: dict[str, list[str]] = {}
    for name in SPEC_FILES:
        lines = (SPEC_DIR / name).read_text().splitlines()
        headings = [(i, len(line) - len(line.lstrip("#"))) for i, line in enumerate(lines)
                    if line.startswith("#")]
        for position, (start, level) in enumerate(headings):
            end = next((i for i, lvl in headings[position + 1:] if lvl <= level), len(lines))
            body = " ".join(" ".join(lines[start + 1:end]).split())
            sections.setdefault(_heading_text(lines[start]), []).append(body)
    return sections


SECTIONS = _sections()
RULE_IDS = {rule.id for rule in all_rules()}


def test_every_zoo_implementation_and_healthy_peer_has_ground_truth() -> None:
    """Each implementation's folder and each healthy peer's holds judged captures."""
    folders = {path.parent.name for path in TRUTH_FILES}
    assert {i.name for i in IMPLEMENTATIONS} | set(HEALTHY) <= folders


@pytest.mark.parametrize("truth_file", TRUTH_FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_ground_truth_is_valid(truth_file: Path) -> None:
    """Every deviation points at an existing frame and quotes the spec where it says it does."""
    assert SECTIONS, f"no spec under {SPEC_DIR}"
    truth = yaml.safe_load(truth_file.read_text())
    capture = truth_file.with_name(truth["capture"])
    assert capture.is_file()
    assert truth["capture"] == truth_file.name.replace(".deviations.yaml", ".pcapng")
    assert truth["judged"] in ("server", "client", "both")
    assert truth["produced_by"]
    decoded = decode_capture(capture)
    last_frame = max(session.last_frame for session in decoded.sessions)
    deviations = truth["deviations"] or []
    if truth_file.parent.name in HEALTHY:
        assert deviations == [], "a healthy peer's capture lists no deviation"
    for deviation in deviations:
        where = f"{truth_file.name} frame {deviation['frame']}"
        for frame in [deviation["frame"], *deviation.get("frames", [])]:
            assert 1 <= frame <= last_frame, where
        assert deviation["sender"] in ("server", "client"), where
        assert deviation["level"] in LEVELS, where
        assert deviation["what"].strip(), where
        bodies = SECTIONS.get(deviation["section"])
        assert bodies, f"{where}: no spec section {deviation['section']!r}"
        sentence = " ".join(deviation["sentence"].split())
        assert any(sentence in body for body in bodies), f"{where}: not verbatim: {sentence!r}"
        for rule in [deviation["rule"], *deviation.get("also", [])]:
            assert rule in RULE_IDS or rule.startswith("new:"), f"{where}: unknown rule {rule}"
