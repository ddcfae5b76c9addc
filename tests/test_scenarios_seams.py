"""The scenario runner's public seams: what the matrix builds on, without private parts.

- ``run_client_scenario(listen_wrapper=...)`` puts a recording proxy in front of
  the reference server; the program talks to the proxy, the checks read the server.
- ``run_client_scenario(provider=...)`` runs each action through a provider.
- ``server_has`` / ``REFERENCE_CLIENT_LACKS`` are public.
- ``ExportRequirements.export_spec()`` is servable by every driver as it is.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from harness.address import Address
from harness.capture import ProxyThread
from harness.client_role import ServedExport, run_client_scenario
from harness.dissect import decode_capture
from harness.peers import BitmapSpec, Endpoint, ExportSpec, ExportSpecError
from harness.scenarios import (
    REFERENCE_CLIENT_LACKS,
    REFERENCE_SERVER_LACKS,
    ExportRequirements,
    Scenario,
    ScenarioError,
    features,
    load_library,
    load_scenario,
    server_has,
)
from harness.scenarios.model import DEFAULT_EXPORT_SIZE, default_image_format
from reference_server.features import FULL
from reference_server.profiles import profile

TIMEOUT = 20.0


@pytest.fixture(scope="module")
def map_scenario() -> Scenario:
    return next(s for s in load_library() if s.name == "map-base-allocation")


@contextlib.contextmanager
def short_dir() -> Iterator[Path]:
    """A directory short enough for a unix socket path (sun_path holds 108 bytes)."""
    directory = Path(tempfile.mkdtemp(prefix="nbdh-", dir="/tmp"))
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def recording(capture: Path, listen: Address, seen: list[Address]) -> Callable[..., Any]:
    @contextlib.contextmanager
    def wrapper(upstream: Address) -> Iterator[Address]:
        seen.append(upstream)
        with ProxyThread(listen, upstream, capture) as proxy:
            yield proxy.address

    return wrapper


# --- public names ----------------------------------------------------------------------------


def test_feature_helpers_are_public_and_the_same_objects() -> None:
    assert server_has is features.server_has
    assert REFERENCE_CLIENT_LACKS is features.REFERENCE_CLIENT_LACKS
    assert frozenset({"starttls-psk"}) == REFERENCE_SERVER_LACKS
    assert server_has(FULL, "structured-replies")
    assert not server_has(profile("qemu-2.10"), "structured-replies")
    assert not any(server_has(FULL, feature) for feature in REFERENCE_SERVER_LACKS)


# --- the export every server peer serves -----------------------------------------------------


@pytest.mark.parametrize(("backend", "bitmaps", "fmt"), [
    ("memory", (), "raw"),
    ("memory", (BitmapSpec("b0"),), "qcow2"),
    ("layers", (), "qcow2"),
])
def test_the_export_spec_has_the_format_its_drivers_need(backend: str, bitmaps: tuple,
                                                         fmt: str) -> None:
    assert default_image_format(backend, bool(bitmaps)) == fmt  # type: ignore[arg-type]
    export = ExportRequirements(ExportSpec(DEFAULT_EXPORT_SIZE, image_format=fmt,
                                           bitmaps=bitmaps), backend)  # type: ignore[arg-type]
    spec = export.export_spec()
    assert spec.image_format == fmt
    assert spec.bitmaps == export.spec.bitmaps


def test_a_scenario_format_overrides_the_default(tmp_path: Path) -> None:
    path = tmp_path / "qcow2-plain.yaml"
    path.write_text(
        "name: qcow2-plain\ndescription: a plain export in qcow2\n"
        'spec: ["Metadata querying"]\nroles: [server]\n'
        "export:\n  format: qcow2\n"
        "steps:\n  - connect: {}\n")
    assert load_scenario(path).export.export_spec().image_format == "qcow2"


def test_a_raw_export_with_bitmaps_is_refused_when_loaded(tmp_path: Path) -> None:
    with pytest.raises(ExportSpecError, match="dirty bitmaps need format qcow2"):
        ExportRequirements(ExportSpec(DEFAULT_EXPORT_SIZE, image_format="raw",
                                      bitmaps=(BitmapSpec("b0"),)))
    path = tmp_path / "raw-bitmaps.yaml"
    path.write_text(
        "name: raw-bitmaps\ndescription: a raw export cannot keep a bitmap\n"
        'spec: ["Metadata querying"]\nroles: [server]\n'
        "export:\n  format: raw\n  bitmaps: [{name: b0}]\n"
        "steps:\n  - connect: {}\n")
    with pytest.raises(ScenarioError, match=r"raw-bitmaps.yaml:\d+: .*dirty bitmaps need format "
                                            "qcow2"):
        load_scenario(path)


# --- URIs at another address -----------------------------------------------------------------


@pytest.mark.parametrize("address", [Address.tcp("127.0.0.1", 10999),
                                     Address.unix("/tmp/nbdh-x/s.sock")])
@pytest.mark.parametrize("tls", [False, True])
def test_endpoint_uris_are_the_served_exports_uris(address: Address, tls: bool) -> None:
    """The client run names the wrapper's address with Endpoint; nothing else changes."""
    export = ExportRequirements(tls="required" if tls else "off")
    pki = Path("/tmp/nbdh-pki")
    served = ServedExport(SimpleNamespace(address=address), export, pki)  # type: ignore[arg-type]
    for name in ("disk", ""):
        assert Endpoint(address, name, pki if tls else None).uri() == served.uri(name, tls=tls)


# --- listen_wrapper ----------------------------------------------------------------------------


def test_a_listen_wrapper_records_the_programs_conversation(
        map_scenario: Scenario, tmp_path: Path, require_programs: Callable[..., object]) -> None:
    require_programs("nbdinfo")
    capture = tmp_path / "capture.pcapng"
    seen: list[Address] = []
    result = run_client_scenario(
        map_scenario, "nbdinfo", FULL, tmp_path / "run", timeout=TIMEOUT,
        listen_wrapper=recording(capture, Address.tcp("127.0.0.1", 0), seen))
    assert result.verdict == "pass", result.detail
    assert len(seen) == 1 and seen[0].kind == "tcp"
    run = result.evidence["runs"][0]
    assert f":{seen[0].port}/" not in " ".join(run["argv"]), "the program got the proxy's port"
    # The server's records (which the checks read) and the capture show the same session.
    assert "base:allocation" in result.evidence["sessions"][0]["meta_contexts"]
    names = {message.name for message in decode_capture(capture).messages}
    assert {"NBD_OPT_SET_META_CONTEXT", "NBD_CMD_BLOCK_STATUS"} <= names
    assert "provider" not in run and "command" not in run


def test_a_broken_listen_wrapper_is_an_error_never_a_pass(map_scenario: Scenario,
                                                          tmp_path: Path) -> None:
    @contextlib.contextmanager
    def broken(upstream: Address) -> Iterator[Address]:
        raise OSError("cannot bind the proxy")
        yield upstream  # pragma: no cover

    result = run_client_scenario(map_scenario, "nbdinfo", FULL, tmp_path, timeout=TIMEOUT,
                                 listen_wrapper=broken)
    assert result.verdict == "error"
    assert "cannot bind the proxy" in result.detail


# --- provider ----------------------------------------------------------------------------------


def test_actions_run_through_the_provider(map_scenario: Scenario, tmp_path: Path,
                                          require_programs: Callable[..., object]) -> None:
    require_programs("nbdinfo")
    from harness.peers import Catalog
    from harness.peers.host import HostProvider

    calls: list[tuple[list[str], list[Path], Path | None]] = []

    class Recorded(HostProvider):
        def wrap(self, argv: Any, *, binds: Any = (), cwd: Path | None = None,
                 **options: Any) -> list[str]:
            calls.append(([str(word) for word in argv], list(binds), cwd))
            return super().wrap(argv, binds=binds, cwd=cwd, **options)

    provider = Recorded(Catalog.load().provider("host").suite)
    workdir = tmp_path / "run"
    result = run_client_scenario(map_scenario, "nbdinfo", FULL, workdir, timeout=TIMEOUT,
                                 provider=provider)
    assert result.verdict == "pass", result.detail
    assert len(calls) == 1
    argv, binds, cwd = calls[0]
    assert argv[0] == "nbdinfo" and any(word.startswith("--map") for word in argv)
    assert binds == [workdir] and cwd == workdir
    run = result.evidence["runs"][0]
    assert run["argv"] == argv and run["provider"] == "host"
    assert run["command"][0].endswith("/nbdinfo")


def test_a_sandboxed_client_reaches_a_unix_socket_wrapper(map_scenario: Scenario,
                                                          tmp_path: Path) -> None:
    """sid's nbdinfo under bwrap, given a proxy on a unix socket: the socket's directory
    is bound into the sandbox."""
    from harness.peers import Catalog

    provider = Catalog.load().provider("rootfs:sid")
    provider.provision(lambda line: None)  # cached after the first time
    seen: list[Address] = []
    with short_dir() as directory:
        capture = tmp_path / "capture.pcapng"
        result = run_client_scenario(
            map_scenario, "nbdinfo", FULL, tmp_path / "run", timeout=TIMEOUT,
            listen_wrapper=recording(capture, Address.unix(str(directory / "p.sock")), seen),
            provider=provider)
        assert result.verdict == "pass", result.detail
    run = result.evidence["runs"][0]
    assert run["provider"] == "rootfs:sid" and run["command"][0].endswith("bwrap")
    assert str(directory) in run["command"]  # bound at the same path
    assert "nbd+unix://" in " ".join(run["argv"])
    assert decode_capture(capture).sessions
