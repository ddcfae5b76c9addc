"""``nbd-harness info`` through ``harness.cli.main``: human output, ``--json``,
``--list``, ``--map`` (checked line for line against ``nbdinfo --map``) and
one-line errors."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from _fixtures_client import Chain, MiB, build_chain, reference_server, start_qemu_nbd

from harness import cli
from harness.process import run_command
from harness.tls import make_test_pki

pytestmark = pytest.mark.peers


@pytest.fixture
def main(monkeypatch):
    """``harness.cli.main`` with the info command registered."""
    if "harness.commands.info" not in cli.COMMAND_MODULES:
        monkeypatch.setattr(cli, "COMMAND_MODULES", [*cli.COMMAND_MODULES, "harness.commands.info"])
    return cli.main


@pytest.fixture
def served(tmp_path: Path, require_programs) -> Iterator[tuple[str, Chain]]:
    require_programs("qemu-img", "qemu-io", "qemu-nbd")
    chain = build_chain(tmp_path / "images")
    process, port = start_qemu_nbd(tmp_path, chain.top, "-A", "-B", "b0", "-x", "top")
    try:
        yield f"nbd://127.0.0.1:{port}/top", chain
    finally:
        process.stop()


def test_human_output(main, served, capsys):
    uri, _ = served
    assert main(["info", uri]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0] == "protocol: fixed-newstyle without TLS, using structured replies"
    # qemu's message text after the reply type is its own business.
    assert any(line.startswith("\tNBD_OPT_EXTENDED_HEADERS -> NBD_REP_ERR_UNSUP") for line in lines)
    assert "\tNBD_OPT_STRUCTURED_REPLY -> NBD_REP_ACK" in lines
    assert 'export="top":' in lines
    assert "\texport-size: 4194304 (4M)" in lines
    assert "\tselected with: NBD_OPT_GO" in lines
    assert "\t\tqemu:allocation-depth" in lines and "\t\tqemu:dirty-bitmap:b0" in lines
    assert "\tcan_trim: true" in lines and "\tis_read_only: false" in lines
    assert "\tblock_size_maximum: 33554432" in lines
    assert "fallbacks:" in lines


def test_json_output(main, served, capsys):
    uri, _ = served
    assert main(["info", "--json", "--context", "qemu:dirty-bitmap:b0", uri]) == 0
    report = json.loads(capsys.readouterr().out)
    neg = report["negotiation"]
    assert report["uri"] == uri
    assert neg["export_size"] == 4 * MiB and neg["structured_replies"] is True
    assert list(neg["contexts"].values()) == ["qemu:dirty-bitmap:b0"]
    assert set(report["contexts_available"]) == {
        "base:allocation",
        "qemu:allocation-depth",
        "qemu:dirty-bitmap:b0",
    }
    assert [o["option"] for o in neg["options"]][-1] == "NBD_OPT_GO"
    assert neg["fallbacks"][0]["kind"] == "extended-headers"
    assert report["capabilities"]["can_flush"] is True


@pytest.mark.parametrize(
    "context", ["qemu:allocation-depth", "qemu:dirty-bitmap:b0", "base:allocation"]
)
def test_map_matches_nbdinfo_line_for_line(main, served, capsys, require_programs, context):
    require_programs("nbdinfo")
    uri, _ = served
    assert main(["info", "--map", context, uri]) == 0
    ours = capsys.readouterr().out
    theirs = run_command(["nbdinfo", f"--map={context}", uri], timeout=30, check=True).stdout
    assert ours == theirs


def test_map_json_extents(main, served, capsys):
    uri, chain = served
    assert main(["info", "--json", "--map", "qemu:allocation-depth", uri]) == 0
    extents = json.loads(capsys.readouterr().out)["map"]["extents"]
    assert [(e["offset"], e["length"], e["type"]) for e in extents] == chain.allocation_depth
    assert extents[0]["description"] == "backing depth 2"
    assert {e["description"] for e in extents[1:]} == {"absent", "local"}


def test_no_structured(main, served, capsys):
    uri, _ = served
    assert main(["info", "--no-structured", "--no-extended", uri]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "protocol: fixed-newstyle without TLS, using simple replies"
    assert "NBD_OPT_STRUCTURED_REPLY" not in out and "contexts selected: none" in out


def test_list(main, tmp_path, capsys):
    exports = [{"name": "a", "size": "1M", "description": "first"}, {"name": "b", "size": "2M"}]
    with reference_server(tmp_path, exports) as server:
        uri = f"nbd://127.0.0.1:{server.address.port}"
        assert main(["info", "--list", uri]) == 0
        lines = capsys.readouterr().out.splitlines()
        assert 'export="a":' in lines and "\tdescription: first" in lines
        assert "\texport-size: 2097152 (2M)" in lines
        assert main(["info", "--list", "--json", uri]) == 0
        listing = json.loads(capsys.readouterr().out)["exports"]
        assert [(e["name"], e["size"]) for e in listing] == [("a", 1 * MiB), ("b", 2 * MiB)]


def test_errors_are_one_line(main, tmp_path, capsys):
    assert main(["info", "nbdx://host/"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown scheme" in err
    with reference_server(tmp_path) as server:
        port = server.address.port
        assert main(["info", f"nbd://127.0.0.1:{port}/missing"]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "no export named 'missing'" in err
    assert main(["info", "--timeout", "5", f"nbd://127.0.0.1:{port}/"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot connect" in err


def test_tls_via_uri(main, tmp_path, capsys):
    pki = make_test_pki(tmp_path / "pki")
    server_options = {"tls": "required", "tls_certificates": str(pki.directory)}
    with reference_server(tmp_path, **server_options) as server:
        port = server.address.port
        uri = f"nbds://127.0.0.1:{port}/disk?tls-certificates={pki.directory}"
        assert main(["info", uri]) == 0
        assert capsys.readouterr().out.startswith("protocol: fixed-newstyle with TLS")
        assert main(["info", f"nbd://127.0.0.1:{port}/disk"]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "NBD_REP_ERR_TLS_REQD" in err and "nbds://" in err


def test_list_on_an_oldstyle_server_is_a_clear_error(main, tmp_path, capsys):
    with reference_server(tmp_path, handshake="oldstyle") as server:
        assert main(["info", "--list", f"nbd://127.0.0.1:{server.address.port}"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "oldstyle negotiation, which has no NBD_OPT_LIST" in err
