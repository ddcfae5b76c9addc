"""Start a server peer and see what it offers; compare peers with the matrix data.

:func:`probe_server` serves the small export each driver is probed with, the
way ``matrix/peers`` describes the program (:meth:`ServerPeer.probe_export`:
qemu with a qcow2 chain, a bitmap and ``-A``; nbdkit's memory plugin;
nbd-server with flush/FUA/trim on), connects the reference client and turns
what was negotiated into feature ids of ``matrix/features.toml``
(:mod:`harness.peers._observe`).
:func:`check_peer` is one line of ``peers doctor``: the version the program
reports against ``matrix/suites.toml`` and ``matrix/peers``, and the features
it advertises against the claims for that version.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from harness.peerdata import version_matches
from harness.process import PeerError

from ._base import ClientPeer, Peer, PeerVersion, ServerPeer
from ._observe import CONTEXT_FEATURES, FLAG_FEATURES, OBSERVABLE, PROBE_BITMAP, Observed, observe
from .export import ExportSpec
from .reference import ReferenceServerPeer


def probe_export(peer: ServerPeer) -> tuple[ExportSpec, object | None]:
    """The export (and driver options) a program is probed with, as the data describes it."""
    return peer.probe_export()


def probe_server(peer: ServerPeer, workdir: Path | None = None, *,
                 export_of: ServerPeer | None = None) -> Observed:
    """Serve the probe export with ``peer`` and observe it; the server is always stopped.

    ``export_of`` serves the probe export of another program (the profile of that program
    is probed with the same export as the real one).
    """
    return peer.advertised(workdir, probe_of=type(export_of) if export_of else None)


@dataclass
class PeerCheck:
    """One peer's line in ``peers doctor``."""

    peer: str
    provider: str
    version: PeerVersion | None = None
    expected_version: str | None = None
    mismatches: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    features: list[str] = field(default_factory=list)
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.mismatches and not self.error

    def as_json(self) -> dict:
        version = self.version
        return {
            "peer": self.peer,
            "provider": self.provider,
            "reported_version": version.reported if version else None,
            "package_version": version.package if version else None,
            "version": version.version if version else None,
            "expected_version": self.expected_version,
            "features": sorted(self.features),
            "mismatches": self.mismatches,
            "notes": self.notes,
            "error": self.error,
            "ok": self.ok,
        }


def _version_matches(actual: str, listed: str) -> bool:
    try:
        return version_matches(actual, listed)
    except ValueError:
        return False


def check_peer(peer: Peer, peerdata: object | None, *, probe: bool = True,
               workdir: Path | None = None) -> PeerCheck:
    """Version and features of one peer against ``matrix/suites.toml`` and ``matrix/peers``."""
    family = peer.family
    check = PeerCheck(peer.program, peer.provider.name)
    try:
        version = check.version = peer.version()
    except PeerError as exc:
        check.error = f"no version: {str(exc).splitlines()[0]}"
        return check
    if version.note:
        check.notes.append(version.note)
    expected = peer.provider.data_version(family) if family else None
    check.expected_version = expected
    if expected and not _version_matches(version.version, expected):
        check.mismatches.append(
            f"version {version.version} is not {expected} (matrix/suites.toml "
            f"[suite.{peer.provider.suite.name}.versions] {family})"
        )
    program_data = _program_data(peerdata, family)
    if program_data is None:
        if family:
            check.notes.append(f"no matrix/peers data for {family}")
        return check
    try:
        info = program_data.version_info(version.version)
    except ValueError as exc:
        check.mismatches.append(str(exc))
        return check
    if version.reported != version.version:
        if not info.reports or not _version_matches(version.reported, info.reports):
            check.mismatches.append(
                f"reports version {version.reported}; matrix/peers says it reports "
                f"{info.reports or 'its real version'}"
            )
    elif info.reports and not _version_matches(version.reported, version.version):
        check.mismatches.append(f"matrix/peers says it reports {info.reports}")
    if probe and isinstance(peer, ServerPeer):
        _compare_features(check, peer, program_data, version.version, workdir)
    return check


def _program_data(peerdata: object | None, family: str | None):
    if peerdata is None or family is None:
        return None
    return getattr(peerdata, "programs", {}).get(family)


def expected_observation(peer: ServerPeer, version: str, workdir: Path | None) -> Observed:
    """What the data says the probe should see: the reference server with the version's
    profile (built from ``matrix/peers`` by ``reference_server.profiles``) serving the same
    probe export, observed the same way."""

    return probe_server(ReferenceServerPeer(profile=f"{peer.family}-{version}"), workdir,
                        export_of=peer)


def _compare_features(check: PeerCheck, peer: ServerPeer, program_data: object,
                      version: str, workdir: Path | None) -> None:
    try:
        observed = probe_server(peer, workdir)
    except (PeerError, OSError) as exc:
        check.error = f"probe failed: {str(exc).splitlines()[0]}"
        return
    except Exception as exc:  # the reference client refusing the peer is a finding too
        check.error = f"probe failed: {type(exc).__name__}: {str(exc).splitlines()[0]}"
        return
    check.features = sorted(observed.present)
    expected = expected_observation(peer, version, workdir)
    profile = f"profile {peer.family}-{version}"
    for feature in sorted(OBSERVABLE):
        offered = feature in observed.present
        wanted = feature in expected.present
        if offered and not wanted:
            check.mismatches.append(f"offers {feature}; matrix/peers ({profile}) says it does not")
        elif wanted and not offered:
            check.mismatches.append(f"does not offer {feature}; matrix/peers ({profile}) says "
                                    "it does")
    claimed = set(program_data.features(version, "server"))  # type: ignore[attr-defined]
    hidden = sorted((claimed & OBSERVABLE) - expected.present)
    if hidden:
        check.notes.append("claimed but hidden by a quirk or the probe's export: "
                           + ", ".join(hidden))


def is_client(peer: Peer) -> bool:
    return isinstance(peer, ClientPeer)


__all__ = ["CONTEXT_FEATURES", "FLAG_FEATURES", "OBSERVABLE", "PROBE_BITMAP", "Observed",
           "PeerCheck", "check_peer", "observe", "probe_export", "probe_server"]
