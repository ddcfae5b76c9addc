"""``nbd-harness check`` on live broken servers: bounded time, a report, the right findings.

The broken servers are the reference server's fault profiles (``nbd-harness serve
--fault NAME``) and the zoo's real third-party servers; the healthy ones are nbdkit
memory 64M, qemu-nbd 7.2 and the reference server, which must get no fail and no error
(``check`` expects only what the spec says and what the server said of itself).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.cli import main
from harness.paths import REPO

sys.path.insert(0, str(REPO / "tests" / "zoo"))  # tests/zoo holds scripts, not a package
import record
import zoo

pytestmark = pytest.mark.peers

WAIT = 2.0
"""The probes' wait for each answer: short, so that silence costs little."""
REPORTS = ("results.json", "index.html", "junit.xml", "summary.md", "run.json")
PROBES_ONLY = ["--scenarios-dir"]  # with an empty library: the probes alone
START_WAIT = 30.0


@pytest.fixture(scope="module")
def no_scenarios(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A scenario library with no scenario: ``check`` runs its probes only."""
    return tmp_path_factory.mktemp("no-scenarios")


def _uri(address: str, export: str) -> str:
    if address.startswith("unix:"):
        return f"nbd+unix:///{export}?socket={address.removeprefix('unix:')}"
    return f"nbd://{address.removeprefix('tcp://')}/{export}"


def _check(uri: str, out: Path, *extra: str) -> tuple[int, float, list[dict]]:
    clock = time.monotonic()
    code = main(["check", uri, *extra, "--wait", str(WAIT), "--out", str(out)])
    elapsed = time.monotonic() - clock
    for name in REPORTS:
        assert (out / name).is_file(), f"{name} missing from {out}"
    results = json.loads((out / "results.json").read_text())
    return code, elapsed, results["cases"]


def _by_name(cases: list[dict]) -> dict[str, dict]:
    return {case["scenario"]: case for case in cases}


@pytest.fixture
def faulty_server(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[str]:
    """The reference server with the fault ``request.param``; yields its URI."""
    port_file = tmp_path / "port"
    process = subprocess.Popen(
        [sys.executable, "-m", "harness.cli", "serve", "--export", "disk=memory:8M",
         "--fault", request.param, "--port-file", str(port_file)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + START_WAIT
        while not (port_file.exists() and port_file.read_text().strip()):
            assert process.poll() is None and time.monotonic() < deadline, "server did not start"
            time.sleep(0.05)
        yield f"nbd://127.0.0.1:{port_file.read_text().strip()}/disk"
    finally:
        process.kill()
        process.wait(10)


# fault -> (the case that meets it, the rule it reports: an existing conformance id, or the
# id the fault captures' ground truth proposes for a rule still to be written)
FAULT_FINDINGS = {
    "option-unanswered": ("probe:option-set-meta-context", "server.meta-context-replies"),
    "read-unanswered": ("probe:server", "server.read-answered"),
    "disconnect-after-client-flags": ("probe:server", "server.no-hard-disconnect-in-options"),
    "disconnect-on-read": ("probe:server", "server.no-hard-disconnect-in-transmission"),
    "disconnect-on-starttls": ("probe:starttls-without-tls", "server.starttls-reply"),
    "no-opt-go": ("probe:server", "server.baseline-info-go"),
    "no-opt-list": ("probe:server", "server.baseline-list"),
    "no-fixed-newstyle": ("probe:server", "server.baseline-fixed-newstyle"),
    "go-without-info-export": ("probe:server", "server.info-export-before-ack"),
    "undefined-errno": ("probe:unknown-command", "server.error-values-defined"),
    "export-name-option-reply": ("probe:export-name-unknown",
                                 "server.export-name-no-option-reply"),
}


@pytest.mark.parametrize(("faulty_server", "fault"), [(f, f) for f in FAULT_FINDINGS],
                         indirect=["faulty_server"], ids=list(FAULT_FINDINGS))
def test_a_broken_server_gets_a_report_with_its_finding(faulty_server: str, fault: str,
                                                        no_scenarios: Path,
                                                        tmp_path: Path) -> None:
    code, elapsed, cases = _check(faulty_server, tmp_path / "out", *PROBES_ONLY,
                                  str(no_scenarios))
    assert code == 1
    # Every wait is bounded: about 20 probes, each with a few waits of WAIT at most.
    assert elapsed < 120, f"check took {elapsed:.0f} s"
    where, rule = FAULT_FINDINGS[fault]
    case = _by_name(cases)[where]
    assert case["verdict"] == "fail", case["detail"]
    found = [f for f in case["findings"] if f["rule"] == rule]
    assert found and found[0]["frame"] > 0 and found[0]["sentence"], case["findings"]
    # Each class reported once: the probe's own finding on a message the rules already judged
    # (an option left unanswered) is not a second one.
    same = [f["rule"] for f in case["findings"] if f["role"] == "server"
            and (f["session"], f["frame"]) == (found[0]["session"], found[0]["frame"])]
    assert len(same) == len(set(same)), same
    if fault == "option-unanswered":
        assert same == [rule], same
    assert all(c["verdict"] in ("pass", "fail", "unsupported", "error") for c in cases)


@pytest.mark.parametrize("faulty_server", ["disconnect-after-client-flags"], indirect=True)
def test_what_the_first_probe_cannot_learn_excludes_only_what_needs_it(
        faulty_server: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """No size learned: scenarios are not applicable (with why); the option probes still run."""
    code, _elapsed, cases = _check(faulty_server, tmp_path / "out", "unknown-option-unsup")
    assert code == 1
    names = _by_name(cases)
    assert names["probe:unknown-option"]["verdict"] == "fail"
    assert names["probe:bad-client-flags"]["verdict"] == "pass"  # dropping is right there
    assert "probe:read-past-end" not in names and "unknown-option-unsup" not in names
    assert "size unknown" in capsys.readouterr().err


@pytest.mark.parametrize("impl", [i for i in zoo.load() if i.is_server],
                         ids=lambda impl: impl.name)
def test_zoo_servers_get_bounded_checks_and_reports(impl: zoo.Implementation, tmp_path: Path,
                                                    no_scenarios: Path) -> None:
    if not impl.installed():
        pytest.skip(f"{impl} is not installed (scripts/zoo install)")
    with record.zoo_server(impl, tmp_path) as upstream:
        code, elapsed, cases = _check(_uri(upstream.url, upstream.export), tmp_path / "out",
                                      *PROBES_ONLY, str(no_scenarios))
    assert elapsed < 180, f"check took {elapsed:.0f} s"
    assert code == 1  # every zoo server breaks the spec somewhere
    failed = [c for c in cases if c["verdict"] == "fail"]
    assert failed and all(c["findings"] or c["detail"] for c in failed)


def _no_fail_no_error(cases: list[dict]) -> None:
    bad = [(c["scenario"], c["verdict"], c["detail"]) for c in cases
           if c["verdict"] in ("fail", "error")]
    assert not bad, bad
    assert sum(c["scenario"].startswith("probe:") for c in cases) >= 10


def test_nbdkit_memory_gets_no_fail_and_no_error(tmp_path: Path, require_programs) -> None:
    """nbdkit serves any export name and lists "": neither may be held against it."""
    require_programs("nbdkit")
    sock = tmp_path / "server.sock"
    process = subprocess.Popen(["nbdkit", "-f", "-U", str(sock), "memory", "64M"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + START_WAIT
        while not sock.exists():
            assert time.monotonic() < deadline, "nbdkit did not start"
            time.sleep(0.05)
        code, _elapsed, cases = _check(_uri(f"unix:{sock}", ""), tmp_path / "out",
                                       "--allow-writes")
    finally:
        process.kill()
        process.wait(10)
    _no_fail_no_error(cases)
    assert code == 0


def test_qemu_nbd_gets_no_fail_and_no_error(tmp_path: Path, require_programs) -> None:
    require_programs("qemu-nbd", "qemu-img")
    from harness.peers import ExportSpec, resolve_server

    server = resolve_server("qemu-nbd@7.2").start(
        ExportSpec(size=1 << 20, image_format="raw"), tmp_path / "srv")
    with server:
        code, _elapsed, cases = _check(f"nbd://127.0.0.1:{server.address.port}/disk",
                                       tmp_path / "out", "--allow-writes")
    _no_fail_no_error(cases)
    assert code == 0


def test_the_reference_server_gets_no_fail_and_no_error(tmp_path: Path) -> None:
    from harness.client_role import serve_reference
    from harness.peers import ExportSpec
    from harness.scenarios import ExportRequirements

    export = ExportRequirements(ExportSpec(8 << 20, image_format="raw"))
    with serve_reference(export, workdir=tmp_path / "srv") as served:
        code, _elapsed, cases = _check(served.uri(), tmp_path / "out", "--allow-writes")
    _no_fail_no_error(cases)
    assert code == 0


# --- check-client -------------------------------------------------------------------------------

HANGING_CLIENT = """
import socket, sys, time
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=30)
s.recv(18)  # the greeting; then nothing: no client flags, ever
time.sleep(60)
"""


def test_check_client_bounds_a_hanging_client_and_reports_it(tmp_path: Path) -> None:
    script = tmp_path / "hanging_client.py"
    script.write_text(HANGING_CLIENT)
    out = tmp_path / "out"
    clock = time.monotonic()
    code = main(["check-client", f"{sys.executable} {script} {{port}}", "--profile",
                 "reference", "--timeout", "3", "--out", str(out)])
    assert time.monotonic() - clock < 60
    assert code == 1
    for name in REPORTS:
        assert (out / name).is_file(), name
    (case,) = json.loads((out / "results.json").read_text())["cases"]
    assert case["verdict"] == "fail" and "timed out after 3 s" in case["detail"]
    assert case["evidence"].get("capture")
