"""Profile fidelity: does the reference server, in a version profile, answer as the real release?

Two halves, so that the comparison also runs where the real program is not:

- :func:`record_sessions` runs every applicable server scenario against a real
  server (the matrix's own cases: a fresh server per scenario, serving the
  scenario's export, the reference client, the recording proxy), plus a few
  ``nbdinfo`` calls against it, and keeps each capture with the export the
  server served (``manifest.json`` lists them);
- :func:`compare_sessions` replays each recorded session against the reference
  server in the profile, serving the same export (:mod:`harness.replay`: the
  recorded client's messages, compared semantically message by message).

``nbd-harness peers compare qemu-nbd@2.12 qemu-2.12`` does both; ``peers compare
DIR qemu-2.12`` compares a saved recording (``tests/data/qemu-releases/``, which a
test replays so CI checks the profiles without the real binaries).
"""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import itertools
import json
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from harness.address import LOOPBACK
from harness.capture import ProxyThread
from harness.client_role import serve_reference
from harness.errors import UserError
from harness.matrix import ResultStore, expand, installed_peers, parse_peer, reference_client
from harness.matrix._setup import driver_options
from harness.matrix.runner import CAPTURE, run_case
from harness.peers import DRIVERS, Catalog, Endpoint, PeerSpecError, ServerPeer, resolve_client
from harness.peers.export import BitmapSpec, DataRange, ExportSpec, Layer
from harness.replay import (
    ReplayError,
    ReplayReport,
    load_sessions,
    replay_against,
    unreplayable,
)
from harness.scenarios import ExportRequirements, Scenario, find_scenario
from reference_server.profiles import profile as load_profile

MANIFEST = "manifest.json"
NBDINFO_SCENARIO = "contexts/allocation-depth-chain"
"""Whose export the nbdinfo calls see: a two-layer backing chain with data and holes."""
NBDINFO_CALLS: dict[str, tuple[str, ...]] = {
    "nbdinfo-json": ("--json", "{uri}"),
    "nbdinfo-map": ("--json", "--map=base:allocation", "{uri}"),
    "nbdinfo-map-depth": ("--json", "--map=qemu:allocation-depth", "{uri}"),
    "nbdinfo-list": ("--list", "--json", "{uri}"),
}
"""libnbd's view of the server: what ``nbdinfo`` asks (its exit status does not matter)."""
SAVED_CAPTURE_LIMIT = 8 * 1024
"""Captures saved into the repository are at most this large (gzip): negotiations, flags,
block sizes, contexts, errors and maps; the data-heavy sessions stay in the run directory."""

Progress = Callable[[str], None]


class FidelityError(UserError):
    """A comparison that cannot be made (no such recording, a peer that is not a server)."""


@dataclass(frozen=True)
class RecordedSession:
    """One recorded session: its capture and the export (of ``scenario``) the server served."""

    name: str
    capture: Path
    scenario: str
    export: ExportRequirements
    client: str
    verdict: str = ""

    def as_json(self, root: Path) -> dict:
        return {"name": self.name, "capture": str(self.capture.relative_to(root)),
                "scenario": self.scenario, "client": self.client, "verdict": self.verdict,
                "export": export_to_json(self.export)}


# --- the export, as the manifest keeps it ------------------------------------------------------


def _ranges(ranges: Sequence[DataRange]) -> list[list[int]]:
    return [[r.offset, r.length, r.seed] for r in ranges]


def export_to_json(export: ExportRequirements) -> dict:
    """What a server was asked to serve, as JSON without the defaults (:func:`export_from_json`
    reads it back)."""
    spec = export.spec
    document: dict = {"size": spec.size}
    listed = {"layers": [_ranges(layer.ranges) for layer in spec.layers],
              "bitmaps": [[b.name, b.granularity] for b in spec.bitmaps],
              "writes_after_bitmaps": _ranges(spec.writes_after_bitmaps)}
    document.update({key: value for key, value in listed.items() if value})
    for item in dataclasses.fields(spec):
        value = getattr(spec, item.name)
        if item.name not in (*listed, "size", "tls_dir") and value != item.default:
            document[item.name] = value
    around = {item.name: getattr(export, item.name) for item in dataclasses.fields(export)
              if item.name != "spec" and getattr(export, item.name) != item.default}
    if "extra_exports" in around:
        around["extra_exports"] = list(around["extra_exports"])
    return {"spec": document, **around}


def export_from_json(document: dict) -> ExportRequirements:
    spec = dict(document["spec"])
    spec["layers"] = tuple(Layer(tuple(DataRange(*r) for r in layer))
                           for layer in spec.get("layers", ()))
    spec["bitmaps"] = tuple(BitmapSpec(*b) for b in spec.get("bitmaps", ()))
    spec["writes_after_bitmaps"] = tuple(DataRange(*r)
                                         for r in spec.get("writes_after_bitmaps", ()))
    around = {key: value for key, value in document.items() if key != "spec"}
    if "extra_exports" in around:
        around["extra_exports"] = tuple(around["extra_exports"])
    return ExportRequirements(spec=ExportSpec(**spec), **around)


@dataclass
class Recording:
    """What :func:`record_sessions` made (or a saved recording read back)."""

    directory: Path
    real: str
    version: str
    sessions: list[RecordedSession] = field(default_factory=list)

    def save_manifest(self) -> None:
        # One session a line: small, and a re-recording diffs line by line.
        sessions = ",\n".join("  " + json.dumps(s.as_json(self.directory))
                              for s in self.sessions)
        head = json.dumps({"real": self.real, "version": self.version})[:-1]
        (self.directory / MANIFEST).write_text(f'{head},\n "sessions": [\n{sessions}\n]}}\n')


@dataclass
class Comparison:
    """How the profile answered one recorded session."""

    session: RecordedSession
    reports: list[ReplayReport] = field(default_factory=list)
    skipped: str = ""

    @property
    def same(self) -> bool:
        return all(report.same for report in self.reports)

    def as_json(self) -> dict:
        return {"session": self.session.name, "client": self.session.client,
                "capture": str(self.session.capture), "same": self.same,
                "skipped": self.skipped, "replays": [r.to_dict() for r in self.reports]}

    def render(self) -> str:
        if self.skipped:
            return f"skipped  {self.session.name}: {self.skipped}\n"
        if self.same:
            return f"same     {self.session.name}\n"
        lines = [f"DIFFERS  {self.session.name} (recorded with {self.session.client}, "
                 f"{self.session.capture.name})\n"]
        lines += ["  " + report.render().replace("\n", "\n  ").rstrip() + "\n"
                  for report in self.reports if not report.same]
        return "".join(lines)


# --- recording a real server -----------------------------------------------------------------


def _server(real: str) -> tuple[str, ServerPeer]:
    """The real server ``real`` names (``qemu-nbd@2.12``): its matrix name and its driver."""
    try:
        peer = parse_peer(real, "server", installed=installed_peers("server"))
    except (PeerSpecError, ValueError) as exc:
        raise FidelityError(str(exc)) from None
    if peer.reference:
        raise FidelityError(f"{real} is the reference server: compare a real server with it")
    catalog = Catalog.load()
    provider = catalog.provider(peer.provider) if peer.provider else None
    driver = DRIVERS[peer.program](provider) if provider else catalog.resolve(peer.spec)
    if not isinstance(driver, ServerPeer):
        raise FidelityError(f"{real} is not a server")
    return peer.spec, driver


def record_sessions(real: str, scenarios: Sequence[Scenario], out: Path, *,
                    progress: Progress = lambda line: None) -> Recording:
    """Record ``real`` (``qemu-nbd@2.12``) answering ``scenarios`` and the nbdinfo calls."""
    spec, driver = _server(real)
    server = parse_peer(real, "server", installed=installed_peers("server"))
    version = driver.version().version
    recording = Recording(out, spec, version)
    store = ResultStore(out / "run")
    cases = [c for c in expand(scenarios, [server], [reference_client()]).cases
             if c.role == "server"]
    for number, case in enumerate(cases, start=1):
        progress(f"[{number}/{len(cases)}] {case.scenario.id} against {spec}")
        result = run_case(case, store)
        capture = _capture_in(store.case_dir(case.id))
        if capture is not None:
            recording.sessions.append(RecordedSession(
                case.scenario.id, capture, case.scenario.id, case.scenario.export,
                "reference-client", result.verdict))
    exported = find_scenario(NBDINFO_SCENARIO)
    for name, args in NBDINFO_CALLS.items():
        progress(f"{name} against {spec}")
        capture = out / "nbdinfo" / f"{name}.pcapng"
        capture.parent.mkdir(parents=True, exist_ok=True)
        _run_nbdinfo(driver, exported.export, args, capture)
        recording.sessions.append(RecordedSession(name, capture, exported.id, exported.export,
                                                  "nbdinfo " + " ".join(args)))
    recording.save_manifest()
    return recording


def _capture_in(case_dir: Path) -> Path | None:
    for name in (CAPTURE, CAPTURE + ".gz"):
        if (case_dir / name).is_file():
            return case_dir / name
    return None


def _run_nbdinfo(driver: ServerPeer, export: ExportRequirements, args: Sequence[str],
                 capture: Path) -> None:
    """Serve ``export`` with ``driver`` and run nbdinfo through the proxy."""
    nbdinfo = resolve_client("nbdinfo")
    with tempfile.TemporaryDirectory(prefix="nbdh-fidelity-") as workdir:
        running = driver.start(export.export_spec(), Path(workdir) / "server",
                               options=driver_options(driver.program, export))
        try:
            with ProxyThread(LOOPBACK, running.address, capture) as proxy:
                uri = Endpoint(proxy.address, export.spec.name, None).uri()
                nbdinfo.run([arg.replace("{uri}", uri) for arg in args], check=False)
        finally:
            running.stop()


# --- comparing with a profile ----------------------------------------------------------------


def load_recording(directory: Path) -> Recording:
    """A recording saved by :func:`record_sessions` (or :func:`save_recording`)."""
    try:
        document = json.loads((directory / MANIFEST).read_text())
    except (OSError, ValueError) as exc:
        raise FidelityError(f"{directory}: no readable {MANIFEST} ({exc})") from None
    recording = Recording(directory, document["real"], document["version"])
    for entry in document["sessions"]:
        recording.sessions.append(RecordedSession(
            entry["name"], directory / entry["capture"], entry["scenario"],
            export_from_json(entry["export"]), entry["client"], entry.get("verdict", "")))
    return recording


def compare_sessions(recording: Recording, profile_name: str, *,
                     progress: Progress = lambda line: None) -> list[Comparison]:
    """Replay every recorded session against the reference server in ``profile_name``."""
    features = load_profile(profile_name)
    comparisons = []
    for session in recording.sessions:
        progress(f"{session.name} against reference-server@{profile_name}")
        comparison = Comparison(session)
        try:
            selection = load_sessions(session.capture)
        except ReplayError as exc:  # a TLS session: what followed STARTTLS is encrypted
            comparison.skipped = str(exc)
            comparisons.append(comparison)
            continue
        unusable = [why for s in selection.sessions if (why := unreplayable(s))]
        unusable += [_concurrent(selection.sessions)] if _concurrent(selection.sessions) else []
        if not selection.sessions or unusable:
            comparison.skipped = unusable[0] if unusable else "no NBD session in the capture"
        else:
            with _profile_server(session.export, features) as uri:
                comparison.reports = replay_against(selection, uri)
        comparisons.append(comparison)
    return comparisons


_CHANGES = frozenset({"NBD_CMD_WRITE", "NBD_CMD_WRITE_ZEROES", "NBD_CMD_TRIM"})


def _concurrent(sessions: Sequence) -> str:
    """Why sessions that ran at the same time and changed the export cannot be compared
    ("" when they did not): one may have read what the other wrote meanwhile."""
    if not any(m.name in _CHANGES for s in sessions for m in s.messages):
        return ""
    ordered = sorted(sessions, key=lambda session: session.first_frame)
    for earlier, later in itertools.pairwise(ordered):
        if later.first_frame < earlier.last_frame:
            return (f"sessions {earlier.index} and {later.index} ran at the same time; a replay "
                    "plays them one after the other, so what one saw of the other's writes "
                    "cannot be compared")
    return ""


@contextlib.contextmanager
def _profile_server(export: ExportRequirements, features) -> Iterator[str]:
    with serve_reference(export, features) as served:
        # No export in the URI: the replay keeps the recorded names (an unknown one too).
        yield Endpoint(served.address, "", None).uri()


def save_recording(recording: Recording, destination: Path,
                   limit: int = SAVED_CAPTURE_LIMIT) -> Recording:
    """Copy the small sessions of ``recording`` (gzip at most ``limit`` bytes) into
    ``destination`` with their manifest: test data for :func:`compare_sessions`."""
    shutil.rmtree(destination, ignore_errors=True)
    destination.mkdir(parents=True)
    saved = Recording(destination, recording.real, recording.version)
    for session in recording.sessions:
        data = session.capture.read_bytes()
        packed = data if session.capture.suffix == ".gz" else gzip.compress(data, mtime=0)
        if len(packed) > limit:
            continue
        group, _, name = session.name.rpartition("/")
        target = destination / (group or "nbdinfo") / f"{name}.pcapng.gz"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(packed)
        saved.sessions.append(dataclasses.replace(session, capture=target))
    saved.save_manifest()
    return saved


__all__ = ["MANIFEST", "NBDINFO_CALLS", "Comparison", "FidelityError", "RecordedSession",
           "Recording", "compare_sessions", "export_from_json", "export_to_json",
           "load_recording", "record_sessions", "save_recording"]
