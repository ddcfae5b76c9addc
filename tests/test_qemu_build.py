"""``nbd-harness peers build qemu``: the recipe data, the sources, the cache, the errors.

Nothing here compiles qemu (tests/test_qemu_build_debian.py builds 5.2 from
Debian's source package); these check what a user sees before and around a build.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
from pathlib import Path

import pytest

from harness.cli import main
from harness.peers.qemu_build import (
    BuildError,
    BuiltRelease,
    QemuBuilder,
    default_build_data,
    installed_builds,
    load_build_data,
    parse_source,
)
from harness.peers.qemu_build.data import BuildDataError, series_name
from harness.peers.qemu_build.sources import (
    copy_tree,
    lost_exec_bits,
    read_tree_version,
    restore_exec_bits,
)

# The releases issue 18 asks to build; each needs a recipe.
RELEASES = ["2.8.1", "2.10.0", "2.12.1", "3.1.0", "4.1.1", "5.2.0", "6.2.0", "8.2.2"]


def _tree(directory: Path, version: str, *, executable: bool = True) -> Path:
    directory.mkdir(parents=True)
    (directory / "VERSION").write_text(version + "\n")
    configure = directory / "configure"
    configure.write_text("#!/bin/sh\nexit 0\n")
    (directory / "scripts").mkdir()
    (directory / "scripts" / "tool.py").write_text("#!/usr/bin/env python3\n")
    (directory / "scripts" / "data.txt").write_text("not a script\n")
    (directory / "roms").mkdir()
    (directory / "roms" / "big.bin").write_bytes(b"\0" * 10)
    if executable:
        configure.chmod(0o755)
        (directory / "scripts" / "tool.py").chmod(0o755)
    return directory


def test_every_release_has_a_recipe_and_a_checked_tarball():
    data = default_build_data()
    for version in RELEASES:
        era = data.era_for(version)
        assert era.programs["qemu-nbd"] == "qemu-nbd"
        assert {"qemu-img", "qemu-io"} <= set(era.programs)
        release = data.release_for(series_name(version))
        assert release is not None and release.version == version
        assert release.url.startswith("https://download.qemu.org/qemu-" + version + ".tar.")
        assert len(release.sha256) == 64 and release.sha256_from


def test_eras_carry_the_recipe_facts_of_issue_18():
    data = default_build_data()
    assert data.era_for("2.8.1").python.endswith("python2.7")
    assert data.era_for("3.1.0").python.endswith("python2.7")
    assert data.era_for("4.1.1").python.endswith("python3")
    assert "sys/memfd.h" in data.era_for("2.10.0").compat_headers
    assert not data.era_for("2.12.1").compat_headers
    assert all("--disable-werror" in data.era_for(v).configure for v in RELEASES)
    assert "-fcommon" in data.era_for("4.1.1").cflags
    assert data.era_for("5.2.0").build_system == "meson"
    assert data.era_for("4.1.1").build_system == "make"
    assert "qemu-storage-daemon" in data.era_for("6.2.0").programs
    assert "qemu-storage-daemon" not in data.era_for("3.1.0").programs
    assert data.era_for("8.2.2").environment.get("PIP_NO_INDEX") == "1"
    assert data.jobs == 2


def test_eras_do_not_overlap():
    eras = default_build_data().eras
    for earlier, later in itertools.pairwise(eras):
        assert earlier.until == later.since


def test_a_version_without_a_recipe_is_a_clear_error():
    with pytest.raises(BuildDataError, match=r"no build recipe for qemu 1\.7"):
        default_build_data().era_for("1.7.0")


def test_malformed_data_names_the_key(tmp_path):
    path = tmp_path / "builds.toml"
    path.write_text('[root.r]\nsuite = "bullseye"\npackages = ["gcc"]\n[[era]]\nsince = "2.5"\n'
                    'until = "3.0"\nroot = "r"\npython = "p"\nbuild_system = "scons"\n'
                    'programs = { qemu-nbd = "qemu-nbd" }\n')
    with pytest.raises(BuildDataError, match="build_system must be one of make, meson"):
        load_build_data(path)


def test_source_kinds(tmp_path):
    tree = _tree(tmp_path / "qemu", "2.12.1")
    tarball = tmp_path / "qemu-2.12.1.tar.xz"
    tarball.write_bytes(b"x")
    assert parse_source(None).kind == "release"
    assert parse_source(os.fspath(tree)).kind == "dir"
    assert parse_source(os.fspath(tarball)).kind == "tarball"
    assert parse_source("https://example.org/qemu-2.12.1.tar.xz").kind == "url"
    assert parse_source("debian:bullseye").value == "bullseye"
    with pytest.raises(BuildError, match="no such directory or file"):
        parse_source(os.fspath(tmp_path / "missing"))
    with pytest.raises(BuildError, match="expected debian:SUITE"):
        parse_source("debian:")


def test_a_tree_reports_its_version_and_a_non_tree_is_refused(tmp_path):
    assert read_tree_version(_tree(tmp_path / "qemu", "6.2.0")) == "6.2.0"
    (tmp_path / "other").mkdir()
    with pytest.raises(BuildError, match="is not a qemu source tree"):
        read_tree_version(tmp_path / "other")


def test_a_tree_that_lost_its_executable_bits_gets_them_back_on_scripts_only(tmp_path):
    tree = _tree(tmp_path / "qemu", "2.8.1", executable=False)
    assert lost_exec_bits(tree)
    copy = tmp_path / "copy"
    copy_tree(tree, copy)
    assert not (copy / "roms").exists()
    assert restore_exec_bits(copy) == 2
    assert os.access(copy / "configure", os.X_OK)
    assert os.access(copy / "scripts" / "tool.py", os.X_OK)
    assert not os.access(copy / "scripts" / "data.txt", os.X_OK)
    assert not os.access(tree / "configure", os.X_OK), "the user's tree is left alone"


def _cached_build(base: Path, version: str, identity: str) -> BuiltRelease:
    data = default_build_data()
    era = data.era_for(version)
    directory = base / version
    (directory / "bin").mkdir(parents=True)
    for program in era.programs:
        (directory / "bin" / program).write_text("#!/bin/sh\n")
        (directory / "bin" / program).chmod(0o755)
    build = BuiltRelease(name=version, version=version, run_suite="bullseye",
                         source="test", identity=identity,
                         recipe=era.digest(data.root_of(era)), seconds=1.0,
                         built_at="2026-01-01T00:00:00+00:00",
                         programs={p: p for p in era.programs}, directory=directory)
    build.save()
    return build


def test_a_built_release_is_not_built_again(tmp_path):
    tree = _tree(tmp_path / "src", "2.12.1")
    _cached_build(tmp_path / "cache", "2.12.1", "dir:elsewhere")
    lines: list[str] = []
    report = QemuBuilder(base=tmp_path / "cache", progress=lines.append).build(
        "2.12", parse_source(os.fspath(tree)))
    assert report.cached and report.build.version == "2.12.1"
    assert report.build.series == "2.12"
    assert [b.name for b in installed_builds(tmp_path / "cache")] == ["2.12.1"]


def test_a_build_with_a_stale_recipe_is_not_reused(tmp_path):
    build = _cached_build(tmp_path / "cache", "2.12.1", "x")
    document = json.loads((build.directory / "build.json").read_text())
    document["recipe"] = "0" * 16
    (build.directory / "build.json").write_text(json.dumps(document))
    builder = QemuBuilder(base=tmp_path / "cache")
    assert builder._cached("2.12.1", None) is None


def test_an_unfinished_build_does_not_count(tmp_path):
    build = _cached_build(tmp_path / "cache", "6.2.0", "x")
    (build.bin_dir / "qemu-nbd").unlink()
    assert installed_builds(tmp_path / "cache") == []


def test_a_tree_of_another_version_is_refused(tmp_path):
    tree = _tree(tmp_path / "src", "3.1.0")
    with pytest.raises(BuildError, match=r"is qemu 3\.1\.0, not 2\.12"):
        QemuBuilder(base=tmp_path / "cache").build("2.12", parse_source(os.fspath(tree)))


def test_a_tarball_that_is_not_the_release_is_refused(tmp_path):
    tree = _tree(tmp_path / "qemu-2.12.1", "2.12.1")
    tarball = tmp_path / "qemu-2.12.1.tar.xz"
    subprocess.run(["tar", "-cJf", tarball, "-C", tmp_path, tree.name], check=True)
    with pytest.raises(BuildError, match=r"is not the 2\.12\.1 release's"):
        QemuBuilder(base=tmp_path / "cache").build(None, parse_source(os.fspath(tarball)))


def test_an_unreachable_download_says_so_in_one_line_and_points_at_source(tmp_path):
    with pytest.raises(BuildError) as caught:
        QemuBuilder(base=tmp_path / "cache").build(
            None, parse_source("http://127.0.0.1:9/qemu-2.12.1.tar.xz"))
    message = str(caught.value)
    assert message.startswith("cannot download http://127.0.0.1:9/qemu-2.12.1.tar.xz")
    assert "--source" in message and "\n" not in message


def test_the_command_reports_a_cached_build_and_user_mistakes_in_one_line(
        tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("NBD_HARNESS_CACHE", os.fspath(tmp_path / "cache"))
    tree = _tree(tmp_path / "src", "2.12.1")
    _cached_build(tmp_path / "cache" / "qemu", "2.12.1", f"dir:{tree}")
    assert main(["peers", "build", "qemu", "--source", os.fspath(tree)]) == 0
    out = capsys.readouterr().out
    assert "qemu 2.12.1: already built" in out and "qemu-nbd" in out
    assert main(["peers", "build", "qemu"]) == 2
    assert main(["peers", "build", "qemu", "2.12", "--source", os.fspath(tmp_path)]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert errors == [
        "nbd-harness peers: error: give a VERSION (e.g. 2.12) or --source "
        "DIR|TARBALL|URL|debian:SUITE",
        f"nbd-harness peers: error: {tmp_path} is not a qemu source tree "
        "(it needs configure and VERSION)",
    ]


# --- built releases as peers ------------------------------------------------------------------


def test_a_built_release_is_a_peer_of_its_series_with_only_the_programs_it_has(
        tmp_path, monkeypatch):
    from harness.peers import Catalog, PeerSpec

    monkeypatch.setenv("NBD_HARNESS_CACHE", os.fspath(tmp_path / "cache"))
    _cached_build(tmp_path / "cache" / "qemu", "2.12.1", "x")
    catalog = Catalog.load(kinds=("build",))
    provider = catalog.provider("build:qemu-2.12.1")
    assert provider.suite.versions == {"qemu": "2.12.1"}
    assert catalog.carries(provider, PeerSpec("qemu-nbd", "2.12"))
    assert catalog.carries(provider, PeerSpec("qemu-io", "2.12.1"))
    assert not catalog.carries(provider, PeerSpec("qemu-nbd", "2.10"))
    assert not catalog.carries(provider, PeerSpec("qemu-storage-daemon", None))
    assert not catalog.carries(provider, PeerSpec("nbdkit", None))
    # It runs in bullseye's peer root filesystem, which this cache does not have yet.
    assert not provider.ready()
    assert provider.install_hint() == "nbd-harness peers install bullseye"
    assert provider.knows_versions


def test_a_built_release_runs_its_own_programs_first_in_its_suites_root(tmp_path, monkeypatch):
    from harness.peers import Catalog

    monkeypatch.setenv("NBD_HARNESS_CACHE", os.fspath(tmp_path / "cache"))
    build = _cached_build(tmp_path / "cache" / "qemu", "6.2.0", "x")
    provider = Catalog.load(kinds=("build",)).provider("build:qemu-6.2.0")
    assert provider.environment()["PATH"].startswith(f"{build.bin_dir}:")
    command = provider.wrap(["qemu-nbd", "--version"], binds=[tmp_path / "work"])
    assert command[0].endswith("bwrap")
    assert os.fspath(build.bin_dir) in command and os.fspath(tmp_path / "work") in command
    assert command[-2:] == ["qemu-nbd", "--version"]
    assert provider.has_program("qemu-storage-daemon")
