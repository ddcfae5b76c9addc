"""``nbd-harness lint``: exit status, text and JSON output, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import _conformance_breaches  # noqa: F401 (registers the breach samples)
import pytest
from _conformance_samples import CLEAN, SAMPLES

from harness.cli import main
from harness.conformance import REGISTRY

FINDING_KEYS = {
    "rule",
    "level",
    "role",
    "section",
    "sentence",
    "session",
    "frame",
    "offset",
    "direction",
    "message",
}


def write(tmp_path: Path, name: str, conv) -> tuple[Path, list[int]]:
    path = tmp_path / f"{name}.pcapng"
    return path, conv.write(path)


def test_clean_capture_exits_0(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path, _frames = write(tmp_path, "clean", CLEAN["structured"]())
    assert main(["lint", str(path)]) == 0
    out = capsys.readouterr().out
    assert out.strip().splitlines() == [
        f"0 finding(s), 0 at MUST level, in 1 NBD session(s) of {path}"
    ]


def test_must_violation_exits_1_and_names_frame_rule_and_citation(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sample = SAMPLES["server.no-simple-reply-to-read"]()
    path, frames = write(tmp_path, "breach", sample.conv)
    assert main(["lint", str(path)]) == 1
    lines = capsys.readouterr().out.splitlines()
    frame = frames[sample.conv.marked]
    assert lines[0].startswith(f"frame {frame}  [session 1] server→client offset ")
    assert lines[0].endswith("MUST NOT server.no-simple-reply-to-read")
    assert "simple reply to NBD_CMD_READ" in lines[1]
    assert lines[2] == (
        '    spec, "Structured reply chunk message": '
        '"and MUST NOT use a simple reply for `NBD_CMD_READ`"'
    )
    assert lines[-1].startswith("1 finding(s), 1 at MUST level, in 1 NBD session(s)")


def test_should_findings_alone_exit_0(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path, _frames = write(tmp_path, "should", SAMPLES["server.structured-errors-preferred"]().conv)
    assert main(["lint", str(path)]) == 0
    assert "SHOULD server.structured-errors-preferred" in capsys.readouterr().out


def test_json_is_a_document_with_the_findings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sample = SAMPLES["client.df-needs-send-df"]()
    path, frames = write(tmp_path, "breach", sample.conv)
    assert main(["lint", "--json", str(path)]) == 1
    document = json.loads(capsys.readouterr().out)
    assert {k: v for k, v in document.items() if k != "findings"} == {
        "format": "nbd-harness-lint/2",
        "capture": str(path),
        "complete": True,
        "errors": [],
        "sessions": 1,
    }
    findings = document["findings"]
    assert isinstance(findings, list) and len(findings) == 1
    [finding] = findings
    assert set(finding) == FINDING_KEYS
    rule = REGISTRY["client.df-needs-send-df"]
    assert finding["rule"] == rule.id
    assert (finding["level"], finding["role"], finding["section"], finding["sentence"]) == (
        rule.level,
        rule.role,
        rule.section,
        rule.sentence,
    )
    assert (finding["frame"], finding["session"], finding["direction"]) == (
        frames[sample.conv.marked],
        1,
        "client",
    )


def test_json_of_a_clean_capture_is_empty(tmp_path: Path, capsys) -> None:
    path, _frames = write(tmp_path, "clean", CLEAN["extended"]())
    assert main(["lint", "--json", str(path)]) == 0
    assert json.loads(capsys.readouterr().out)["findings"] == []


def test_session_option_selects_one_session(tmp_path: Path, capsys) -> None:
    path, _frames = write(tmp_path, "clean", CLEAN["tls"]())
    assert main(["lint", "--session", "1", str(path)]) == 0
    capsys.readouterr()
    assert main(["lint", "--session", "2", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"nbd-harness lint: error: {path} has no session 2 (it has 1 session(s), numbered from 1)"
    ]


def test_missing_file_is_a_one_line_error(tmp_path: Path, capsys) -> None:
    assert main(["lint", str(tmp_path / "nope.pcapng")]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    [line] = captured.err.strip().splitlines()
    assert line.startswith("nbd-harness lint: error: ") and "nope.pcapng" in line


def test_corrupt_file_is_a_one_line_error(tmp_path: Path, capsys) -> None:
    path = tmp_path / "junk.pcapng"
    path.write_bytes(b"this is not a capture file at all" * 10)
    assert main(["lint", str(path)]) == 2
    captured = capsys.readouterr()
    [line] = captured.err.strip().splitlines()
    assert line.startswith("nbd-harness lint: error: ")


def test_truncated_file_reports_what_it_read_and_fails(tmp_path: Path, capsys) -> None:
    path, _frames = write(tmp_path, "clean", CLEAN["structured"]())
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 37])  # the last block is cut short
    assert main(["lint", str(path)]) == 2
    captured = capsys.readouterr()
    assert "finding(s)" in captured.out
    assert captured.err.startswith("nbd-harness lint: error: ")


def _truncated_breach(tmp_path: Path) -> Path:
    """A capture with a MUST-level breach early on whose last block is cut short."""
    conv = SAMPLES["server.no-simple-reply-to-read"]().conv
    path, _frames = write(tmp_path, "breach", conv)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 37])
    return path


def test_truncated_file_with_findings_says_so_and_exits_2(tmp_path: Path, capsys) -> None:
    """Exit 2 wins over 1: the findings are printed, but the verdict is incomplete."""
    path = _truncated_breach(tmp_path)
    assert main(["lint", str(path)]) == 2
    captured = capsys.readouterr()
    assert "MUST NOT server.no-simple-reply-to-read" in captured.out
    lines = captured.out.splitlines()
    assert lines[-2].startswith("incomplete: ")
    assert lines[-1].endswith("(incomplete: the file is damaged)")
    assert lines[-1].startswith("1 finding(s), 1 at MUST level")
    assert captured.err.startswith("nbd-harness lint: error: ")
    assert main(["lint", "--json", str(path)]) == 2
    document = json.loads(capsys.readouterr().out)
    assert document["complete"] is False and document["errors"]
    assert [f["rule"] for f in document["findings"]] == ["server.no-simple-reply-to-read"]
