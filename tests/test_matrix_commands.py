"""``nbd-harness run``, ``check`` and ``check-client`` end to end."""

from __future__ import annotations

import json
import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from _fixtures_matrix import write_library

from harness.cli import main
from harness.matrix.results import load_results, load_runs

pytestmark = pytest.mark.peers

PEERS = ["--server", "reference-server", "--server", "reference-server@qemu-2.10",
         "--client", "reference-client"]


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_library(tmp_path_factory.mktemp("scenarios"))


ABORT_CASE = "abort-in-the-clear[reference-server@qemu-2.10-vs-reference-client]"


def run(*argv: str) -> int:
    return main(list(argv))


# --- run ----------------------------------------------------------------------------------------


def test_run_list_json(library: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run("run", "--scenarios-dir", str(library), *PEERS, "--list", "--json") == 0
    document = json.loads(capsys.readouterr().out)
    ids = [case["id"] for case in document["cases"]]
    assert ids == sorted(ids) and len(ids) == 6
    fallback = next(c for c in document["cases"]
                    if c["id"] == "sr-read[reference-server@qemu-2.10-vs-reference-client]")
    assert fallback["expected"] == "expected-fallback"
    assert fallback["role"] == "server" and "structured-replies" in fallback["features"]
    assert "lacks structured-replies" in fallback["why"]
    assert document["excluded"] == []


def test_run_writes_results_and_every_report(library: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    # The qemu-2.10 profile answers NBD_OPT_ABORT before STARTTLS with NBD_REP_ERR_TLS_REQD,
    # as the real qemu-nbd does (docs/findings.md #6): that case fails, the rest are good.
    assert run("run", "--scenarios-dir", str(library), *PEERS, "-j", "2", "--out", str(out),
               "--no-progress") == 1
    printed = capsys.readouterr().out
    assert "reference-server@qemu-2.10-vs-reference-client" in printed
    assert "6 cases: 1 fail, 1 expected-fallback, 4 pass" in printed and "wall time" in printed
    results = load_results(out)
    assert len(results) == 6
    assert [r.case_id for r in results if not r.ok] == [ABORT_CASE]
    for name in ("results.json", "junit.xml", "summary.md", "index.html", "run.json",
                 "conformance/README.md"):
        assert (out / name).is_file(), name
    assert ET.parse(out / "junit.xml").getroot().get("tests") == "6"
    (info,) = load_runs(out)
    assert info["cases"] == 6 and info["jobs"] == 2 and info["wall_seconds"] > 0


def test_shards_merge_into_one_result_set(library: Path, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    shard_dirs = [tmp_path / "shard1", tmp_path / "shard2"]
    codes = [run("run", "--scenarios-dir", str(library), *PEERS, "-j", "1", "--shard",
                 f"{index}/2", "--out", str(directory), "--no-progress")
             for index, directory in enumerate(shard_dirs, start=1)]
    # The shard holding ABORT_CASE fails (see test_run_writes_results_and_every_report).
    assert codes == [0 if ABORT_CASE not in {r.case_id for r in load_results(d)} else 1
                     for d in shard_dirs]
    sizes = [len(load_results(d)) for d in shard_dirs]
    assert sizes == [3, 3]
    merged = tmp_path / "merged"
    # The merged set holds ABORT_CASE's failure: exit status 1, like the run itself.
    assert run("run", "--merge", *map(str, shard_dirs), "--out", str(merged)) == 1
    results = load_results(merged)
    assert len({r.case_id for r in results}) == 6
    assert sorted(run_info["shard"] for run_info in load_runs(merged)) == ["1/2", "2/2"]
    for result in results:
        assert (merged / result.evidence["capture"]).is_file()
    assert (merged / "index.html").is_file()
    assert "merged 2 result set(s)" in capsys.readouterr().out


@pytest.mark.parametrize(("argv", "message"), [
    (["--shard", "3/2"], "expected I/N"),
    (["no-such-scenario"], "no scenario matches 'no-such-scenario'"),
    # 2.11: a version no suite carries and no release here is built of (`peers build`).
    (["--server", "qemu-nbd@2.11"], "reference-server@qemu-2.11"),
    (["--merge", "/nonexistent/dir"], "--merge needs --out"),
])
def test_run_usage_errors_are_one_line(library: Path, argv: list[str], message: str,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    assert run("run", "--scenarios-dir", str(library), *argv) == 2
    error = capsys.readouterr().err.strip()
    assert message in error and len(error.splitlines()) == 1


# --- check --------------------------------------------------------------------------------------


def test_check_a_conforming_server(library: Path, tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    from harness.client_role import serve_reference
    from harness.peers import ExportSpec
    from harness.scenarios import ExportRequirements

    export = ExportRequirements(ExportSpec(1 << 20, image_format="raw"))
    with serve_reference(export, workdir=tmp_path / "srv") as served:
        uri = served.uri()
        # Read-only: no scenario of this library applies without writes; the live probes run.
        assert run("check", uri, "--scenarios-dir", str(library),
                   "--out", str(tmp_path / "probes")) == 0
        printed = capsys.readouterr()
        assert "no scenario applies" in printed.err
        assert "pass               probe:read-past-end" in printed.out
        assert run("check", uri, "--scenarios-dir", str(library), "--allow-writes",
                   "--out", str(tmp_path / "out")) == 0
    printed = capsys.readouterr().out
    assert "pass               write-read-back" in printed
    # Every case passed: the scenario and the live probes (nothing failed, errored or else).
    assert re.search(r"\n\d+ pass; evidence and reports in", printed)


def test_check_a_real_server_that_breaks_a_rule(library: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str],
                                                require_programs) -> None:
    """qemu-nbd 7.2 (TLS only) answers NBD_OPT_ABORT with an error: a MUST broken."""
    require_programs("qemu-nbd", "qemu-img")
    from harness.peers import ExportSpec, resolve_server
    from harness.tls import make_test_pki

    pki = make_test_pki(tmp_path / "pki")
    server = resolve_server("qemu-nbd@7.2").start(
        ExportSpec(size=1 << 20, image_format="raw", tls_dir=pki.directory), tmp_path / "srv")
    with server:
        uri = f"nbds://127.0.0.1:{server.address.port}/disk?tls-certificates={pki.directory}"
        code = run("check", uri, "--scenarios-dir", str(library), "--out", str(tmp_path / "o"))
    printed = capsys.readouterr().out
    assert code == 1
    assert "FAIL abort-in-the-clear" in printed
    assert "rule server.abort-ack (MUST, server) at frame" in printed
    assert 'spec, section "Option types": "The server MUST reply with `NBD_REP_ACK`.' in printed
    assert "evidence:" in printed


# --- check-client -------------------------------------------------------------------------------


def test_check_client_across_profiles(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                      require_programs) -> None:
    require_programs("nbdinfo")
    assert run("check-client", "nbdinfo --size {uri}", "--profile", "reference",
               "--profile", "qemu-2.10", "--out", str(tmp_path)) == 0
    printed = capsys.readouterr().out
    lines = [line for line in printed.splitlines() if line.startswith("pass")]
    assert len(lines) == 2
    assert "reference-server@qemu-2.10" in printed and "simple-replies" in printed
    assert "NBD_OPT_STRUCTURED_REPLY -> NBD_REP_ERR_UNSUP" in printed
    assert len(load_results(tmp_path)) == 2


BAD_CLIENT = """
import socket, struct, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=10)
def recv(n):
    data = b""
    while len(data) < n:
        chunk = s.recv(n - len(data))
        if not chunk:
            raise SystemExit("closed")
        data += chunk
    return data
recv(18)
s.sendall(struct.pack(">I", 3))
s.sendall(struct.pack(">QII", 0x49484156454F5054, 1, 4) + b"disk")
recv(10)
# NBD_CMD_BLOCK_STATUS although no metadata context was negotiated: a client MUST NOT.
s.sendall(struct.pack(">IHHQQI", 0x25609513, 0, 7, 1, 0, 4096))
try:
    recv(16)
except Exception:
    pass
s.sendall(struct.pack(">IHHQQI", 0x25609513, 0, 2, 2, 0, 0))
s.close()
"""


def test_check_client_flags_a_client_that_breaks_a_rule(tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    script = tmp_path / "bad_client.py"
    script.write_text(BAD_CLIENT)
    code = run("check-client", f"{sys.executable} {script} {{port}}", "--profile", "reference",
               "--out", str(tmp_path / "out"))
    printed = capsys.readouterr().out
    assert code == 1
    assert "FAIL check-client" in printed
    assert "broke" in printed and "BLOCK_STATUS" in printed


def test_check_client_needs_a_placeholder(capsys: pytest.CaptureFixture[str]) -> None:
    assert run("check-client", "nbdinfo --size nbd://localhost") == 2
    assert "put {uri} where the NBD URI goes" in capsys.readouterr().err
