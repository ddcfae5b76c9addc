"""A peer is one module: ``nbdkit-memory`` (harness/peers/nbdkit_memory.py plus two lines of
matrix/suites.toml) is found, started, probed and planned like every other server."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.matrix._setup import driver_options, unservable
from harness.matrix.cases import expand, real_peer, reference_client
from harness.peerdata import load_peerdata
from harness.peers import (
    DRIVERS,
    Catalog,
    ClientPeer,
    DataRange,
    ExportSpec,
    Layer,
    NbdkitOptions,
    ServerPeer,
    pattern,
)
from harness.peers.probe import check_peer
from harness.scenarios import ExportRequirements, Scenario, Step

pytestmark = pytest.mark.peers

KiB = 1024


@pytest.fixture(scope="module")
def memory_server() -> ServerPeer:
    peer = Catalog.load(kinds=("host",)).resolve("nbdkit-memory")
    assert isinstance(peer, ServerPeer)
    return peer


def test_it_registers_itself_in_nbdkits_family(memory_server: ServerPeer) -> None:
    assert DRIVERS["nbdkit-memory"] is type(memory_server)
    assert memory_server.family == "nbdkit"
    assert memory_server.package == "nbdkit"
    assert memory_server.version().version == Catalog.load(kinds=("host",)).resolve(
        "nbdkit").version().version
    assert memory_server.default_options() == NbdkitOptions(plugin="memory")


def test_it_serves_what_a_client_writes(memory_server: ServerPeer, tmp_path: Path) -> None:
    host = Catalog.load(kinds=("host",))
    reader, writer = host.resolve("nbdsh"), host.resolve("reference-client")
    assert isinstance(reader, ClientPeer) and isinstance(writer, ClientPeer)
    data = pattern(64 * KiB, 8 * KiB, 7)
    with memory_server.start(ExportSpec(size=1024 * KiB, image_format="raw"),
                             tmp_path / "server") as server:
        assert reader.read(server.endpoint, 64 * KiB, 8 * KiB) == bytes(8 * KiB)
        writer.write(server.endpoint, 64 * KiB, data)
        assert reader.read(server.endpoint, 64 * KiB, 8 * KiB) == data
        assert reader.read(server.endpoint, 0, 4 * KiB) == bytes(4 * KiB)


def test_peers_doctor_checks_it_against_nbdkits_data(memory_server: ServerPeer,
                                                      tmp_path: Path) -> None:
    check = check_peer(memory_server, load_peerdata(), workdir=tmp_path)
    assert check.ok, check.mismatches or check.error
    assert "fast-zero" in check.features


def test_the_matrix_plans_it_without_preset_content() -> None:
    empty = ExportRequirements()
    preset = ExportRequirements(spec=ExportSpec(size=64 * KiB,
                                                layers=(Layer((DataRange(0, 64 * KiB),)),)))
    oldstyle = ExportRequirements(handshake="oldstyle")
    assert unservable("nbdkit-memory", empty) is None
    assert "cannot hold the scenario's preset data" in str(unservable("nbdkit-memory", preset))
    assert unservable("nbdkit", preset) is None
    assert driver_options("nbdkit-memory", oldstyle) == NbdkitOptions(plugin="memory",
                                                                      oldstyle=True)
    assert driver_options("nbdkit", oldstyle) == NbdkitOptions(oldstyle=True)
    server = real_peer("nbdkit-memory", "1.32", "server", "host")
    assert (server.family, server.features) == ("nbdkit", real_peer("nbdkit", "1.32",
                                                                     "server").features)
    steps = (Step("connect"),)
    scenarios = [Scenario(name=name, description=name, spec=("Option types",),
                          roles=("server",), export=export, steps=steps)
                 for name, export in (("empty", empty), ("preset", preset))]
    expansion = expand(scenarios, [server], [reference_client()])
    assert [case.id for case in expansion.cases] == [
        "empty[nbdkit-memory@1.32-vs-reference-client]"]
    assert [(e.scenario, e.peer) for e in expansion.excluded] == [
        ("preset", "nbdkit-memory@1.32")]
