"""Server-role scenarios against real servers: Debian bookworm's qemu-nbd 7.2 and nbdkit 1.32.

Each server is started on a kernel-chosen port with
:func:`harness.process.pick_port_and_start`, serving a raw image built from
the scenario's export (the same pattern data the scenario expects), and
stopped and reaped after the scenario. Verdicts are exact: pass, the
expected fallback where the version lacks a feature, and the known
deviations spelled out below.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from harness.peers.export import pattern
from harness.process import pick_port_and_start
from harness.scenarios import Scenario, ScenarioResult, load_library
from harness.server_role import run_server_scenario

pytestmark = pytest.mark.peers

TIMEOUT = 15.0
SCENARIOS = {s.name: s for s in load_library()}

CHOSEN = [
    "fixed-newstyle-greeting", "unknown-client-flags-close", "export-name-unknown-closes",
    "data-persists-across-connections", "abort-in-option-phase", "greeting-then-go",
    "info-export", "go-unknown-export-recovers", "unknown-option-unsup", "structured-reply-ack",
    "list-exports-with-data", "info-description",
    "write-read-roundtrip", "read-initial-data", "write-fua", "flush-durable-after-abrupt-close",
    "trim-then-rewrite", "write-zeroes", "cache", "multi-conn-flush-visible",
    "base-allocation-map", "block-status-req-one", "base-allocation-after-writes",
    "read-data-chunks", "read-df", "extended-headers-negotiated",
    "read-past-end", "write-past-end", "unknown-command", "many-errors-in-a-row",
    "bad-request-magic", "write-read-only-eperm", "zero-length-write",
    "server-2.10-opt-go", "server-8.2-extended-headers",
]

# Where a real peer's verdict is not "pass", and why (matched against the detail).
KNOWN: dict[tuple[str, str], tuple[str, str]] = {
    # Neither bookworm server has extended headers (qemu 8.2+, never nbdkit): the client
    # falls back to compact headers and the data checks still hold.
    ("qemu-nbd", "extended-headers-negotiated"): ("expected-fallback", "extended-headers"),
    ("qemu-nbd", "server-8.2-extended-headers"): ("expected-fallback", "extended-headers"),
    ("nbdkit", "extended-headers-negotiated"): ("expected-fallback", "extended-headers"),
    ("nbdkit", "server-8.2-extended-headers"): ("expected-fallback", "extended-headers"),
    # qemu answers every request it refuses before running it with NBD_EINVAL, also a
    # write to a read-only export, where the spec says the server SHOULD use NBD_EPERM.
    ("qemu-nbd", "write-read-only-eperm"): ("fail", "expected the error NBD_EPERM, got NBD_EINVAL"),
}


def write_image(scenario: Scenario, path: Path) -> None:
    """The export as a flat raw image (top layers written last)."""
    with open(path, "wb") as image:
        image.truncate(scenario.export.spec.size)
        for layer in scenario.export.spec.layers:
            for data in layer.ranges:
                os.pwrite(image.fileno(), pattern(data.offset, data.length, data.seed),
                          data.offset)


def qemu_nbd_argv(scenario: Scenario, image: Path) -> Callable[[int], Sequence[str]]:
    export = scenario.export.spec
    extra = ["-r"] if export.read_only else []
    if export.description:
        extra += ["-D", export.description]
    # -t: keep serving after a client leaves; -e 8: shareable (multi-conn).
    return lambda port: ["qemu-nbd", "-f", "raw", "-x", export.name, "-t", "-e", "8",
                         "-b", "127.0.0.1", "-p", str(port), *extra, str(image)]


def nbdkit_argv(scenario: Scenario, image: Path) -> Callable[[int], Sequence[str]]:
    export = scenario.export.spec
    extra = ["-r"] if export.read_only else []
    # The exportname filter makes nbdkit know one export name (the file plugin serves any).
    names = [f"exportname={export.name}", "exportname-strict=true", "exportname-list=explicit"]
    if export.description:
        names.append(f"exportdesc=fixed:{export.description}")
    return lambda port: ["nbdkit", "-f", "-i", "127.0.0.1", "-p", str(port), *extra,
                         "--filter=exportname", "file", str(image), *names]


ARGV = {"qemu-nbd": qemu_nbd_argv, "nbdkit": nbdkit_argv}


def run_against(peer: str, scenario: Scenario, tmp_path: Path) -> ScenarioResult:
    image = tmp_path / "disk.raw"
    write_image(scenario, image)
    process, port = pick_port_and_start(ARGV[peer](scenario, image),
                                        log_path=tmp_path / f"{peer}.log")
    try:
        return run_server_scenario(scenario, f"nbd://127.0.0.1:{port}/{scenario.export.spec.name}",
                                   timeout=TIMEOUT)
    finally:
        process.stop()


@pytest.mark.parametrize("peer", ["qemu-nbd", "nbdkit"])
@pytest.mark.parametrize("name", CHOSEN)
def test_scenario_against_real_server(peer: str, name: str, tmp_path: Path,
                                      require_programs: Callable[..., dict[str, str]]) -> None:
    require_programs(peer)
    scenario = SCENARIOS[name]
    result = run_against(peer, scenario, tmp_path)
    verdict, words = KNOWN.get((peer, name), ("pass", ""))
    steps = "\n".join(f"  {s.phase}[{s.index}] line {s.line} {s.action}: {s.status} {s.detail}"
                      for s in result.steps)
    assert result.verdict == verdict, f"{result.verdict}: {result.detail}\n{steps}"
    assert words in result.detail
