"""The pieces behind the step runner: content model, client-action table, feature helpers, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.cli import main
from harness.client.records import Negotiation
from harness.peers.actions import (
    OUTPUT_READERS,
    ClientActionsError,
    default_client_actions,
    load_client_actions,
    render,
)
from harness.peers.export import DataRange, ExportSpec, Layer, pattern
from harness.protocol import constants as c
from harness.protocol.state import OptionExchange
from harness.scenarios.content import ContentModel, first_difference, verify_pieces
from harness.scenarios.expect import Failed, check_extents, command_outcome
from harness.scenarios.features import missing_on_wire, server_has, step_needs
from harness.scenarios.model import ExportRequirements, StepResult, verdict_of_steps
from harness.verdict import Verdict
from reference_server.features import FULL
from reference_server.profiles import bare_server, profile

# --- the content model --------------------------------------------------------------------


def test_model_tracks_writes_zeroes_and_trims() -> None:
    model = ContentModel(1 << 20, [DataRange(0, 65536, 2)])
    model.write(4096, 100, 7)
    model.zero(60000, 10000)
    model.forget(200000, 4096)
    data, unknown = model.expected(0, 1 << 20)
    assert data[:4096] == pattern(0, 4096, 2)
    assert data[4096:4196] == pattern(4096, 100, 7)
    assert data[60000:70000] == bytes(10000)
    assert unknown == [(200000, 4096)]
    assert model.written() == [(4096, 100), (60000, 10000)]
    model.write(200000, 4096, 9)  # written again: known again
    assert model.expected(200000, 4096) == (pattern(200000, 4096, 9), [])
    assert model.known_zero(60000, 10000) and not model.known_zero(0, 10)


def test_first_difference_skips_unknown_bytes() -> None:
    expected = bytes(100)
    got = bytearray(100)
    got[50] = 1
    assert first_difference(bytes(got), expected, [], 1000) == 1050
    assert first_difference(bytes(got), expected, [(1040, 20)], 1000) is None
    got[90] = 1
    assert first_difference(bytes(got), expected, [(1040, 20)], 1000) == 1090


def test_long_ranges_are_read_back_by_head_and_tail() -> None:
    piece = 8 << 20
    assert verify_pieces([(0, 4096)]) == [(0, 4096)]
    assert verify_pieces([(0, 5 << 30)]) == [(0, piece), ((5 << 30) - piece, piece)]


# --- expectations -------------------------------------------------------------------------


def test_command_outcomes() -> None:
    command_outcome("ok", None, "read")
    command_outcome("NBD_EINVAL", {"error": "NBD_EINVAL"}, "read")
    command_outcome("NBD_ENOSPC", {"error": ["NBD_EINVAL", "NBD_ENOSPC"]}, "write")
    command_outcome("NBD_EIO", {"one_of": ["ok", "error"]}, "write")
    command_outcome("closed", {"one_of": ["closed", "NBD_EINVAL"]}, "write")
    with pytest.raises(Failed, match="expected the error NBD_EPERM, got ok"):
        command_outcome("ok", {"error": "NBD_EPERM"}, "write")
    with pytest.raises(Failed, match="expected success, got NBD_EIO"):
        command_outcome("NBD_EIO", {}, "read")


def test_extents_exact_and_safe() -> None:
    export = ExportRequirements(ExportSpec(1 << 20, image_format="raw",
                                           layers=(Layer((DataRange(0, 65536),)),)))
    spec = export.export_spec()
    model = ContentModel.of(spec)
    hole = int(c.StateFlag.HOLE | c.StateFlag.ZERO)
    good = [(0, 65536, 0), (65536, (1 << 20) - 65536, hole)]
    check_extents(good, "export", "exact", "base:allocation", 0, 1 << 20, model, spec, "map")
    # Reporting everything as data is always safe, never exact.
    check_extents([(0, 1 << 20, 0)], None, "safe", "base:allocation", 0, 1 << 20, model, spec,
                  "map")
    with pytest.raises(Failed, match="extents differ"):
        check_extents([(0, 1 << 20, 0)], "export", "exact", "base:allocation", 0, 1 << 20,
                      model, spec, "map")
    with pytest.raises(Failed, match="NBD_STATE_ZERO but holds data"):
        check_extents([(0, 1 << 20, hole)], None, "safe", "base:allocation", 0, 1 << 20, model,
                      spec, "map")
    with pytest.raises(Failed, match="not contiguous"):
        check_extents([(0, 4096, 0), (8192, (1 << 20) - 8192, 0)], None, "safe",
                      "base:allocation", 0, 1 << 20, model, spec, "map")


def test_extents_hole_optional() -> None:
    """NBD_STATE_HOLE may be clear (qemu 5.2 counts a qcow2's zero space as allocated);
    NBD_STATE_ZERO must be exactly where the export reads as zeroes."""
    export = ExportRequirements(ExportSpec(1 << 20, image_format="raw",
                                           layers=(Layer((DataRange(262144, 131072),)),)))
    spec = export.export_spec()
    model = ContentModel.of(spec)
    both = int(c.StateFlag.HOLE | c.StateFlag.ZERO)
    zero = int(c.StateFlag.ZERO)
    qemu_5_2 = [(0, 262144, zero), (262144, 131072, 0), (393216, 655360, zero)]
    exact = [(0, 262144, both), (262144, 131072, 0), (393216, 655360, both)]
    for got in (exact, qemu_5_2, [(0, 131072, both), (131072, 131072, zero),
                                  (262144, 131072, 0), (393216, 655360, both)]):
        check_extents(got, "export", "hole-optional", "base:allocation", 0, 1 << 20, model,
                      spec, "map")
    with pytest.raises(Failed, match="extents differ"):
        check_extents(qemu_5_2, "export", "exact", "base:allocation", 0, 1 << 20, model,
                      spec, "map")
    wrong = [
        [(0, 1 << 20, 0)],  # ZERO left out where the export reads as zeroes
        [(0, 262144, both), (262144, 131072, zero), (393216, 655360, both)],  # ZERO over data
        [(0, 262144, both), (262144, 131072, int(c.StateFlag.HOLE)),
         (393216, 655360, both)],  # HOLE over data
        [(0, 262144, both), (262144, 131072, 0), (393216, 655360 - 4096, both),
         (1044480, 4096, 0)],  # the tail is data, it says
    ]
    for got in wrong:
        with pytest.raises(Failed, match="extents differ"):
            check_extents(got, "export", "hole-optional", "base:allocation", 0, 1 << 20,
                          model, spec, "map")


# --- the client-action table --------------------------------------------------------------


def test_the_table_covers_the_programs_and_actions() -> None:
    programs = default_client_actions()
    assert {"nbdinfo", "nbdsh", "nbdcopy", "qemu-img", "qemu-io", "nbd-harness"} <= set(programs)
    assert programs["qemu-img"].form("map", "qemu:dirty-bitmap:b0").output == \
        "qemu-img-dirty-map-json"
    assert programs["qemu-img"].form("map", "base:allocation").output == "qemu-img-map-json"
    assert programs["qemu-img"].form("map", "qemu:allocation-depth") is None
    assert programs["nbdinfo"].form("write") is None
    assert programs["nbdinfo"].uri_tls and not programs["qemu-img"].uri_tls


def test_render_fills_known_placeholders_only() -> None:
    argv = render(("nbdsh", "-c", "x = {'a': 1}; h.pread({length}, {offset}); open({out_repr})"),
                  {"length": 4096, "offset": 0, "out_repr": repr("/tmp/o")})
    assert argv == ["nbdsh", "-c", "x = {'a': 1}; h.pread(4096, 0); open('/tmp/o')"]


@pytest.mark.parametrize(("text", "words"), [
    ('[x]\n[[x.read]]\nargv = ["x"]\noutput = "nope"\n', "output must be one of"),
    ('[x]\n[[x.reed]]\nargv = ["x"]\noutput = "none"\n', "unknown action 'reed'"),
    ('[x]\n[[x.read]]\nargv = ["x", "{bogus}"]\noutput = "none"\n', "unknown placeholder {bogus}"),
    ('[x]\n[x.read]\nargv = ["x"]\n', "write each form of read as [[x.read]]"),
])
def test_table_errors(tmp_path: Path, text: str, words: str) -> None:
    path = tmp_path / "actions.toml"
    path.write_text(text)
    with pytest.raises(ClientActionsError, match=words.replace("[", r"\[").replace("{", r"\{")):
        load_client_actions(path)


def test_output_readers(tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert OUTPUT_READERS["nbdinfo-map-json"](
        '[{"offset": 0, "length": 4096, "type": 3, "description": "hole,zero"}]', out
    ).extents == [(0, 4096, 3)]
    qemu_map = ('[{ "start": 0, "length": 65536, "depth": 0, "present": true, "zero": true, '
                '"data": false, "offset": 0},\n{ "start": 65536, "length": 4096, "depth": 0, '
                '"present": true, "zero": false, "data": true, "offset": 65536}]')
    assert OUTPUT_READERS["qemu-img-map-json"](qemu_map, out).extents == [
        (0, 65536, 3), (65536, 4096, 0)]
    assert OUTPUT_READERS["qemu-img-dirty-map-json"](qemu_map, out).extents == [
        (0, 65536, 1), (65536, 4096, 0)]
    dump = ("00010000:  00 01 02 03 04 05 06 07 08 09 0a 0b 0c 0d 0e 0f  ................\n"
            "read 16/16 bytes at offset 65536\n")
    assert OUTPUT_READERS["qemu-io-dump"](dump, out).data == bytes(range(16))
    listing = "exports available: 2\n export: 'disk'\n  size:  1\n export: 'b'\n"
    assert OUTPUT_READERS["qemu-nbd-list"](listing, out).exports == ["disk", "b"]
    with pytest.raises(ValueError, match="not JSON"):
        OUTPUT_READERS["json-size"]("oops", out)


# --- features -------------------------------------------------------------------------------


def test_step_needs() -> None:
    assert step_needs("trim", {"offset": 0, "length": 1, "fua": True}) == {"trim", "fua"}
    assert step_needs("read", {"flags": ["NBD_CMD_FLAG_DF"]}) == {"df"}
    assert step_needs("connect", {"contexts": ["qemu:dirty-bitmap:b0"], "tls": "require"}) == {
        "dirty-bitmap", "starttls-x509"}
    assert step_needs("connect", {"tls": "require"}, expect={"error": "tls"}) == set()
    assert step_needs("block_status", {"payload_contexts": []}, ["base:allocation"]) == {
        "base-allocation", "block-status-payload"}
    assert step_needs("list_meta_contexts", {"queries": ["qemu:"]}) == {"meta-context-list-query"}
    assert step_needs("client_action", {"action": "zero"}) == set()


def test_server_has_follows_the_profiles() -> None:
    assert server_has(FULL, "extended-headers") and not server_has(FULL, "starttls-psk")
    old = profile("qemu-2.10")
    assert server_has(old, "opt-go") and not server_has(old, "structured-replies")
    assert server_has(profile("qemu-4.2"), "multi-conn-read-only")
    assert not server_has(profile("qemu-4.2"), "multi-conn-writable")
    assert not server_has(bare_server("bare"), "flush")


def test_missing_on_wire_says_how() -> None:
    record = Negotiation(style="fixed-newstyle", selected_with="NBD_OPT_EXPORT_NAME",
                         transmission_flags=int(c.TransmissionFlag.HAS_FLAGS))
    record.options.append(OptionExchange(c.Opt.GO, (c.Rep.ERR_UNSUP,)))
    asked = {"use_go": True, "request_block_size": True, "contexts": []}
    assert missing_on_wire("opt-go", record, asked) == "NBD_OPT_GO answered NBD_REP_ERR_UNSUP"
    assert missing_on_wire("trim", record, asked) == "NBD_FLAG_SEND_TRIM not advertised"
    assert "carries no block sizes" in missing_on_wire("info-block-size", record, asked)
    assert missing_on_wire("df", record, asked) is None  # only with structured replies
    assert missing_on_wire("opt-go", record, {"use_go": False}) is None


# --- the command ------------------------------------------------------------------------------


def test_cli_run_against_the_reference_server(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["scenarios", "run", "negative/read-past-end", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["verdict"] == "pass" and result["role"] == "server"
    assert main(["scenarios", "run", "commands/cache", "--profile", "qemu-2.10"]) == 0
    assert "commands/cache (server): unsupported: server lacks cache" in capsys.readouterr().out
    assert main(["scenarios", "run", "client/copy-out"]) == 2
    assert "has no server role (give --client PROGRAM)" in capsys.readouterr().err


# --- the verdict of a run's steps -------------------------------------------------------------


def step(status: str, index: int = 0, **extra: object) -> StepResult:
    return StepResult(index, "read", 3 + index, status, f"step {index}", **extra)  # type: ignore[arg-type]


def test_verdict_of_steps_error_before_failure_before_fallback() -> None:
    steps = [step("ok"), step("failed", 1, expected=1, got=2), step("error", 2)]
    assert verdict_of_steps(steps) == (Verdict.ERROR, "steps[2] read (line 5): step 2")
    assert verdict_of_steps(steps[:2], unsupported="x") == (
        Verdict.FAIL, "steps[1] read (line 4): step 1 (expected 1, got 2)")
    assert verdict_of_steps(steps[:1], unsupported="no BLOCK_STATUS",
                            fell_back_without={"b": "y"}) == (Verdict.UNSUPPORTED,
                                                                "no BLOCK_STATUS")
    assert verdict_of_steps(steps[:1], fell_back_without={"b": "y", "a": "x"}) == (
        Verdict.EXPECTED_FALLBACK, "without a: x; b: y")
    assert verdict_of_steps(steps[:1]) == (Verdict.PASS, "")
