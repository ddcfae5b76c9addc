"""A program the user built under test: ``--server qemu-nbd=PATH[@VERSION]`` (issue 11, item 2).

Stand-ins for "a build" are the host's own programs, copied or linked into a
directory the way a build tree or an install prefix holds them.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import pytest

from harness.cli import main
from harness.errors import UserError
from harness.matrix.at_path import claimed_release, path_peer, place
from harness.matrix.cases import MatrixError, expect
from harness.peers import Catalog, ExportSpec
from harness.peers.at_path import PathProvider, find_in_directory, parse_path_spec
from harness.process import PeerError

QEMU_NBD = shutil.which("qemu-nbd")
NBD_SERVER = shutil.which("nbd-server", path="/usr/sbin:/usr/bin")
needs_qemu = pytest.mark.skipif(QEMU_NBD is None, reason="qemu-nbd is not installed")


def _host():
    return Catalog.load(("host",)).host()


def _fake_program(path: Path, version_output: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!/bin/sh\necho '{version_output}'\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


# --- names ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "program", "location", "version"), [
    ("qemu-nbd=/build/qemu-nbd", "qemu-nbd", "/build/qemu-nbd", None),
    ("qemu-nbd=/build/qemu-nbd@8.2", "qemu-nbd", "/build/qemu-nbd", "8.2"),
    ("nbdinfo=~/libnbd/info@v1.21.3-4-gabc", "nbdinfo", "~/libnbd/info", "v1.21.3-4-gabc"),
    ("qemu-nbd=/a@b/qemu-nbd", "qemu-nbd", "/a@b/qemu-nbd", None),
])
def test_path_specs_are_read(text: str, program: str, location: str,
                             version: str | None) -> None:
    spec = parse_path_spec(text)
    assert spec is not None
    assert (spec.program, spec.location, spec.version) == (program, location, version)
    assert str(spec) == text


def test_a_peer_name_is_no_path_spec() -> None:
    assert parse_path_spec("qemu-nbd@8.2") is None


# --- versions on the data ------------------------------------------------------------------------


@pytest.mark.parametrize(("family", "version", "release"), [
    ("qemu", "7.2.19", "7.2.19"),
    ("qemu", "8.1.50", "8.1"),
    ("qemu", "8.1.91", "8.1"),
    ("qemu", "v8.1.0-1234-gabcdef0", "8.1.0"),
    ("qemu", "v9.0.0-rc2-7-g1234abc-dirty", "9.0.0"),
    ("libnbd", "1.21.3", "1.20"),
    ("nbdkit", "1.48.2", "1.48.2"),
])
def test_the_release_a_version_claims(family: str, version: str, release: str) -> None:
    assert claimed_release(family, version)[0] == release


def test_a_development_tree_gets_its_releases_features_not_the_next() -> None:
    from harness.matrix.cases import data_features

    dev = place("qemu", "8.1.50")
    assert dev.release == "8.1" and "development tree after 8.1" in dev.note
    # qemu 8.2 added extended headers; a tree after 8.1 claims 8.1, so it does not get them
    assert "extended-headers" in data_features("qemu", "8.2", "server")
    assert "extended-headers" not in data_features("qemu", dev.release, "server")
    assert place("qemu", "7.2.19").release == "7.2"
    assert place("qemu", "11.1.50").release == "11.1"  # after the newest series: still 11.1


@pytest.mark.parametrize("version", ["12.0", "12.0.50", "2.5", "v99.0.0-3-gabc"])
def test_versions_outside_the_data_are_unknown(version: str) -> None:
    placement = place("qemu", version)
    assert placement.release is None
    assert "unknown to matrix/peers/qemu.toml" in placement.note
    assert "it lists 2.6 to" in placement.note


def test_a_string_without_a_version_is_refused() -> None:
    with pytest.raises(MatrixError, match="is not a version"):
        claimed_release("qemu", "main")


# --- the provider --------------------------------------------------------------------------------


def test_a_directory_holds_programs_by_name(tmp_path: Path) -> None:
    tree = tmp_path / "build"
    nbd = _fake_program(tree / "qemu-nbd", "qemu-nbd 8.1.50")
    daemon = _fake_program(tree / "storage-daemon" / "qemu-storage-daemon", "x 8.1.50")
    img = _fake_program(tmp_path / "prefix" / "bin" / "qemu-img", "qemu-img 8.1.50")
    assert find_in_directory(tree, "qemu-nbd") == nbd
    assert find_in_directory(tree, "qemu-storage-daemon") == daemon
    assert find_in_directory(tmp_path / "prefix", "qemu-img") == img
    assert find_in_directory(tree, "nbdkit") is None
    provider = PathProvider(tree, base=_host())
    assert provider.program_path("qemu-nbd") == nbd
    assert provider.program_path("qemu-img") is None  # the host's runs instead
    assert provider.name == f"path:{tree}"


def test_a_renamed_file_is_its_program_and_its_siblings_come_along(tmp_path: Path) -> None:
    mine = _fake_program(tmp_path / "my-qemu-nbd", "qemu-nbd 8.1.50")
    img = _fake_program(tmp_path / "qemu-img", "qemu-img 8.1.50")
    provider = PathProvider(mine, executable="qemu-nbd", base=_host())
    assert provider.name == f"path:qemu-nbd={mine}"
    assert provider.program_path("qemu-nbd") == mine
    assert provider.program_path("qemu-img") == img
    again = Catalog.load(("host",)).provider(provider.name)
    assert isinstance(again, PathProvider) and again.programs == provider.programs
    # commands that start the program by name (a supervising shell) find it first on PATH
    shim = Path(provider.environment()["PATH"].split(":")[0])
    assert os.readlink(shim / "qemu-nbd") == os.fspath(mine)
    words = provider.wrap(["qemu-nbd", "--version"])
    assert words[:2] == [os.fspath(mine), "--version"]


@pytest.mark.parametrize(("text", "message"), [
    ("qemu-nbd=/nonexistent/qemu-nbd", "no such file or directory"),
    ("nbdinfo=/usr/bin/nbdinfo", "nbdinfo is not a server"),
    ("reference-server=/usr/bin/qemu-nbd", "is not a program the harness drives"),
])
def test_bad_paths_are_one_line_errors(text: str, message: str) -> None:
    with pytest.raises(UserError, match=message):
        path_peer(text, "server")


def test_an_unreadable_version_asks_for_one(tmp_path: Path) -> None:
    program = _fake_program(tmp_path / "qemu-nbd", "built from my branch")
    with pytest.raises(MatrixError, match=r"cannot tell its version .*qemu-nbd=.*@VERSION"):
        path_peer(f"qemu-nbd={program}", "server")
    peer = path_peer(f"qemu-nbd={program}@8.2", "server")
    assert peer.spec == "qemu-nbd@8.2" and "extended-headers" in peer.features
    assert "(version given)" in peer.note


def test_a_detected_development_version_is_placed(tmp_path: Path) -> None:
    program = _fake_program(tmp_path / "bin" / "qemu-nbd",
                            "qemu-nbd 8.1.50 (v8.1.0-1234-gabcdef0)")
    peer = path_peer(f"qemu-nbd={tmp_path}", "server")
    assert peer.spec == "qemu-nbd@8.1.50" and peer.version == "8.1.50"
    assert peer.family_version == "8.1" and peer.provider == f"path:{tmp_path}"
    assert "structured-replies" in peer.features and "extended-headers" not in peer.features
    assert "version from `qemu-nbd --version`" in peer.note
    assert program.exists()


def test_an_unknown_version_predicts_nothing(tmp_path: Path) -> None:
    from harness.matrix.cases import reference_client
    from harness.scenarios import LIBRARY, load_library

    program = _fake_program(tmp_path / "qemu-nbd", "qemu-nbd 12.0.50")
    peer = path_peer(f"qemu-nbd={program}", "server")
    assert peer.family_version is None and peer.features == frozenset()
    scenario = next(s for s in load_library(LIBRARY) if "server" in s.roles)
    expectation = expect(scenario, peer, reference_client())
    assert expectation.verdict is None and "nothing is predicted" in expectation.why


# --- real programs -------------------------------------------------------------------------------


@needs_qemu
@pytest.mark.peers
def test_run_names_the_binary_and_its_version(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    build = tmp_path / "build"
    build.mkdir()
    os.symlink(QEMU_NBD, build / "qemu-nbd")
    out = tmp_path / "out"
    code = main(["run", "handshake/greeting-then-go", "--server", f"qemu-nbd={build}",
                 "--out", str(out), "-j", "1", "--no-progress"])
    assert code == 0, capsys.readouterr()
    host_version = Catalog.load(("host",)).resolve("qemu-nbd").version().version
    document = json.loads((out / "results.json").read_text())
    entry = next(p for p in document["peers"] if p["program"] == "qemu-nbd")
    assert entry["spec"] == f"qemu-nbd@{host_version}"
    assert entry["provider"] == f"path:{build}" and entry["binary"] == str(build / "qemu-nbd")
    assert f"qemu {host_version}: a release" in entry["note"]
    assert [c["verdict"] for c in document["cases"]] == ["pass"]
    summary = (out / "summary.md").read_text()
    assert f"| qemu-nbd@{host_version} | `{build / 'qemu-nbd'}` |" in summary


@pytest.mark.skipif(NBD_SERVER is None, reason="nbd-server is not installed")
@pytest.mark.peers
def test_a_renamed_server_started_by_a_shell_runs(tmp_path: Path) -> None:
    """nbd-server starts under a supervising shell that names it: the build, not the host's,
    must be what runs."""
    assert NBD_SERVER is not None
    mine = tmp_path / "bin" / "nbd-server-dev"
    mine.parent.mkdir()
    shutil.copy(NBD_SERVER, mine)
    peer = Catalog.load(("host",)).resolve(f"nbd-server={mine}")
    assert peer.provider.name == f"path:nbd-server={mine}"
    with peer.start(ExportSpec(size=1 << 20), tmp_path / "work") as server:
        assert server.is_running() and server.process is not None
        programs = set()
        for pid in server.process.tree_pids():
            try:
                programs.add(Path(f"/proc/{pid}/exe").resolve())
            except OSError:
                continue
        assert mine.resolve() in programs


QSD = shutil.which("qemu-storage-daemon")


@pytest.mark.skipif(QSD is None, reason="qemu-storage-daemon is not installed")
@pytest.mark.peers
def test_a_daemon_that_ends_silently_at_start_is_started_again(tmp_path: Path) -> None:
    """qemu-storage-daemon that dies before its QMP session without a word in its log (seen
    once in a full matrix run under load) is started again once, and its log says so; a
    second silent death is the error."""
    assert QSD is not None
    marker = tmp_path / "died-once"
    daemon = tmp_path / "bin" / "qemu-storage-daemon"
    daemon.parent.mkdir()
    daemon.write_text(
        "#!/bin/sh\n"
        f'case "$1" in --version|-V|-h|--help) exec {QSD} "$@";; esac\n'
        f'if [ ! -e {marker} ]; then touch {marker}; exit 1; fi\n'
        f'exec {QSD} "$@"\n'
    )
    daemon.chmod(0o755)
    peer = Catalog.load(("host",)).resolve(f"qemu-storage-daemon={daemon}")
    work = tmp_path / "work"
    with peer.start(ExportSpec(size=1 << 20), work) as server:
        assert server.is_running() and marker.exists()
    log = (work / "qemu-storage-daemon.log").read_text()
    assert "ended before serving, without a word" in log and "started again" in log

    always = tmp_path / "bin2" / "qemu-storage-daemon"
    always.parent.mkdir()
    always.write_text(
        "#!/bin/sh\n"
        f'case "$1" in --version|-V|-h|--help) exec {QSD} "$@";; esac\n'
        "exit 1\n"
    )
    always.chmod(0o755)
    peer = Catalog.load(("host",)).resolve(f"qemu-storage-daemon={always}")
    with pytest.raises(PeerError, match="ended before serving"):
        peer.start(ExportSpec(size=1 << 20), tmp_path / "work2")
