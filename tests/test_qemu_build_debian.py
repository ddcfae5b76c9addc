"""qemu 5.2 built from Debian bullseye's source package, then served to the reference client.

The build goes through ``nbd-harness peers build qemu 5.2 --source debian:bullseye``
exactly as a user runs it: the harness writes its own deb-src entry (into a scratch
sources list in the build cache), ``apt-get source qemu`` fetches the package, and the
tools are built out of tree in the bullseye build root. The result is cached in
``~/.cache/nbd-harness/qemu/`` ($NBD_HARNESS_CACHE), outside the repository, so only
the first run on a machine builds (about 3 minutes for the build root and 2-3 for the
tools); a rerun finds it and only checks it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.cli import main
from harness.peers import Catalog
from harness.peers.qemu_build import installed_builds
from harness.scenarios import find_scenario
from harness.server_role import run_server_scenario

pytestmark = [pytest.mark.peers, pytest.mark.slow]

NAME = "5.2.0+debian-bullseye"


@pytest.fixture(scope="module")
def debian_build():
    """The build, made (or found in the cache) by the command a user runs."""
    assert main(["peers", "build", "qemu", "5.2", "--source", "debian:bullseye"]) == 0
    build = next((b for b in installed_builds() if b.name == NAME), None)
    assert build is not None, f"no {NAME} in the build cache after peers build"
    return build


def test_the_debian_build_is_a_peer_of_qemu_5_2(debian_build) -> None:
    assert debian_build.version == "5.2.0" and debian_build.series == "5.2"
    assert "5.2+dfsg" in debian_build.source and debian_build.identity == "debian:bullseye"
    assert set(debian_build.programs) == {"qemu-nbd", "qemu-img", "qemu-io",
                                          "qemu-storage-daemon"}
    catalog = Catalog.load()
    provider = catalog.provider(f"build:qemu-{NAME}")
    provider.runner.provision(lambda line: None)  # bullseye's peer root filesystem
    assert provider.ready()
    qemu_nbd = catalog.resolve(f"qemu-nbd@{provider.suite.name}")
    assert qemu_nbd.provider is provider
    version = qemu_nbd.version()
    assert (version.reported, version.version) == ("5.2.0", "5.2.0")


def test_the_debian_build_serves_a_scenario(debian_build, tmp_path: Path) -> None:
    provider = Catalog.load().provider(f"build:qemu-{NAME}")
    provider.runner.provision(lambda line: None)
    qemu_nbd = Catalog.load().resolve(f"qemu-nbd@{provider.suite.name}")
    # Data and holes at odd offsets, read back byte for byte through qemu 5.2's server.
    scenario = find_scenario("commands/read-initial-data")
    running = qemu_nbd.start(scenario.export.export_spec(), tmp_path / "server")
    try:
        result = run_server_scenario(scenario, running.endpoint.uri(), timeout=30.0)
    finally:
        running.stop()
    assert result.verdict == "pass", result.detail


def test_a_failing_build_names_the_step_and_shows_the_log_tail(debian_build, tmp_path: Path
                                                                ) -> None:
    # The same build root (found through a link), a tree whose configure fails.
    from harness.peers.qemu_build import BuildError, QemuBuilder, builds_base, parse_source

    base = tmp_path / "qemu"
    base.mkdir()
    (base / "roots").symlink_to(builds_base() / "roots")
    tree = tmp_path / "qemu-6.2.0"
    tree.mkdir()
    (tree / "VERSION").write_text("6.2.0\n")
    (tree / "configure").write_text("#!/bin/sh\necho 'ERROR: glib-2.56 gthread-2.0 is required'\n"
                                    "exit 3\n")
    (tree / "configure").chmod(0o755)
    with pytest.raises(BuildError) as caught:
        QemuBuilder(base=base).build(None, parse_source(str(tree)))
    message = str(caught.value)
    assert message.startswith("configure failed (exit 3)")
    assert "ERROR: glib-2.56 gthread-2.0 is required" in message
    assert str(base / "logs" / "6.2.0-configure.log") in message
    assert not (base / "6.2.0").exists(), "a failed build leaves no build behind"
