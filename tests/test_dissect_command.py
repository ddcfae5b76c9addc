"""``nbd-harness dissect``: text and JSON output, session selection, broken files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.cli import main

CAPTURES = Path(__file__).parent / "data" / "captures"
QEMU = CAPTURES / "qemu-nbd-contexts-write-read.pcapng"
NBD_SERVER = CAPTURES / "nbd-server-write-read.pcapng"


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["dissect", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_text_output_names_everything(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, str(QEMU))
    assert (code, err) == (0, "")
    assert out.startswith(f"capture {QEMU}: ")
    assert out.count("=== session ") == 4
    assert "server→client  newstyle greeting" in out
    assert "    handshake flags: 0x3 (FIXED_NEWSTYLE|NO_ZEROES)" in out
    assert "    option: 7 (NBD_OPT_GO)" in out
    assert "    info requests: [NBD_INFO_BLOCK_SIZE]" in out
    assert "    metadata contexts: " in out
    assert "    context id: " in out and "(qemu:allocation-depth)" in out
    assert "      length 65536  status 0x1 (depth 1)" in out
    assert "      length 983040  status 0x0 (clean)" in out
    assert "      length 983040  status 0x3 (HOLE|ZERO)" in out
    # READ/WRITE data: a length and the first 16 bytes only.
    assert "    data: 8192 bytes: 03 0a 11 18 1f 26 2d 34 3b 42 49 50 57 5e 65 6c ..." in out
    assert "UNDECODED" not in out


def test_data_flag_shows_data_in_full(capsys: pytest.CaptureFixture[str]) -> None:
    _, out, _ = run(capsys, str(NBD_SERVER), "--data")
    line = next(x for x in out.splitlines() if x.startswith("    data: 8192 bytes: "))
    assert len(line.split(": ", 1)[1].split(" ", 2)[2].split()) == 8192


def test_session_selection(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, str(QEMU), "--session", "2")
    assert code == 0
    assert out.count("=== session ") == 1 and "=== session 2:" in out
    assert "[session 1]" not in out and "[session 2]" in out


def test_unknown_session_is_a_one_line_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, str(NBD_SERVER), "--session", "5")
    assert (code, out) == (2, "")
    assert err == (
        f"nbd-harness dissect: error: {NBD_SERVER} has no session 5 (it has 1 session(s), "
        "numbered from 1)\n"
    )


def test_json_output(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, str(NBD_SERVER), "--json")
    assert code == 0
    items = json.loads(out)
    assert [item["id"] for item in items] == list(range(len(items)))
    kinds = {item["kind"] for item in items}
    assert "undecoded" not in kinds and {"option", "request", "simple-reply"} <= kinds
    write = next(item for item in items if item.get("name") == "NBD_CMD_WRITE")
    assert write["fields"]["data"] == {
        "length": 8192,
        "hex": "030a11181f262d343b424950575e656c",
        "complete": False,
    }
    assert write["fields"]["offset"] == 12288 and write["direction"] == "client"
    replies = [item for item in items if item["request"] == write["id"]]
    assert [r["kind"] for r in replies] == ["simple-reply"]
    go = next(item for item in items if item.get("name") == "NBD_OPT_GO")
    assert go["fields"]["export_name"] == "disk"
    assert all(
        item["option"] == go["id"]
        for item in items
        if item["kind"] == "option-reply" and item["fields"]["option"] == 7
    )


def test_json_with_data_has_every_byte(capsys: pytest.CaptureFixture[str]) -> None:
    _, out, _ = run(capsys, str(NBD_SERVER), "--json", "--data")
    items = json.loads(out)
    write = next(item for item in items if item.get("name") == "NBD_CMD_WRITE")
    data = bytes.fromhex(write["fields"]["data"]["hex"])
    assert len(data) == 8192 and write["fields"]["data"]["complete"]
    read_reply = next(
        i for i in items if i["kind"] == "simple-reply" and i["fields"]["data"]["length"]
    )
    assert bytes.fromhex(read_reply["fields"]["data"]["hex"]) == data


def test_missing_file_is_a_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, str(tmp_path / "nope.pcap"))
    assert (code, out) == (2, "")
    assert err == (
        f"nbd-harness dissect: error: cannot read capture {tmp_path / 'nope.pcap'}: "
        "No such file or directory\n"
    )


def test_not_a_capture_is_a_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "x.pcap"
    path.write_text("just text\n")
    code, out, err = run(capsys, str(path))
    assert (code, out) == (2, "")
    assert err.count("\n") == 1 and "not a pcap or pcapng capture" in err


def test_truncated_file_prints_what_was_decoded_then_the_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "cut.pcapng"
    whole = NBD_SERVER.read_bytes()
    path.write_bytes(whole[: len(whole) // 2])
    code, out, err = run(capsys, str(path))
    assert code == 1
    assert "server→client  newstyle greeting" in out
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"nbd-harness dissect: error: {path}: truncated")
