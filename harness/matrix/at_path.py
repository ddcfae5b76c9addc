"""A program the user built as a side of the matrix: ``--server qemu-nbd=PATH[@VERSION]``.

The program's version is read from the program (its driver's ``--version``
reading), unless the user gives it. It is then placed on the matrix data
(``matrix/peers/FAMILY.toml``) by the release it claims to be:

- a release (``7.2.19``) is that release;
- a development tree between two releases is the release it grew from: qemu's
  ``8.1.50`` (micro 50 and up: after 8.1, release candidates of the next from
  90) and a ``git describe`` (``v8.1.0-1234-gabc``) are 8.1; libnbd's and
  nbdkit's odd minor versions (``1.47.3``) are their development series after
  the even one before (1.46). The data knows releases only: a tree that holds
  a feature before its release does not get it, and a case that shows it is
  judged by the wire all the same.
- a release outside what the data lists (older than its oldest, newer than
  its newest series) is *unknown*: the peer has no features from the data,
  nothing is predicted (any good verdict will do, as for ``check URI``), and
  the reports say so.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from harness.peerdata import default_peerdata, parse_version, version_matches

from .cases import MatrixError, PeerRef, Role, data_features

_GIT_DESCRIBE = re.compile(
    r"^v?(?P<release>\d+(?:\.\d+)+)(?:-rc\d+)?(?:-(?P<commits>\d+)-g[0-9a-f]+)?(?:-dirty)?$")

DEVELOPMENT_SERIES: dict[str, str] = {
    "qemu": "micro",
    "libnbd": "odd-minor",
    "nbdkit": "odd-minor",
}
"""How a family numbers its development trees: qemu's ``x.y.50`` and up come after ``x.y``
(qemu's docs/devel/release-process: "x.y.50" after a release, "x.y.9N" for candidates);
libnbd's and nbdkit's odd minor versions are development series (their README: "even
numbers are stable")."""


@dataclass(frozen=True)
class Placement:
    """Where a built program's version falls in the data."""

    version: str
    """What the program says (or the user gave)."""
    release: str | None
    """The release whose data it gets; None when the data does not know it."""
    note: str
    """One sentence for the reports: how the version was read and placed."""


def _key(parts: tuple[int, ...]) -> tuple[int, ...]:
    trimmed = list(parts)
    while len(trimmed) > 1 and trimmed[-1] == 0:
        trimmed.pop()
    return tuple(trimmed)


def claimed_release(family: str, version: str) -> tuple[str, str]:
    """(the release ``version`` claims, how) for a version string of ``family``.

    Raises :class:`MatrixError` for a string that holds no version.
    """
    match = _GIT_DESCRIBE.match(version.strip())
    if match is None:
        raise MatrixError(f"{version!r} is not a version (expected e.g. 8.2, 8.1.50 or "
                          f"v8.1.0-12-gabcdef)")
    release = match.group("release")
    parts = parse_version(release)
    if match.group("commits"):
        return release, f"a git tree {match.group('commits')} commits after v{release}"
    scheme = DEVELOPMENT_SERIES.get(family)
    if scheme == "micro" and len(parts) >= 3 and parts[2] >= 50:
        base = f"{parts[0]}.{parts[1]}"
        kind = "a release candidate" if parts[2] >= 90 else "a development tree"
        return base, f"{kind} after {base}"
    if scheme == "odd-minor" and len(parts) >= 2 and parts[1] % 2 == 1:
        base = f"{parts[0]}.{parts[1] - 1}"
        return base, f"the development series after {base}"
    return release, "a release"


def place(family: str, version: str) -> Placement:
    """Place ``version`` of ``family`` on ``matrix/peers/FAMILY.toml``."""
    program = default_peerdata().program(family)
    release, how = claimed_release(family, version)
    oldest, newest = program.versions[0].version, program.versions[-1].version
    key = _key(parse_version(release))
    if key < _key(parse_version(oldest)) or (
            key > _key(parse_version(newest)) and not version_matches(release, newest)):
        return Placement(version, None, f"{family} {version} ({how}) is unknown to "
                         f"matrix/peers/{family}.toml (it lists {oldest} to {newest}): "
                         "no features are assumed, nothing is predicted")
    listed = next((info.version for info in program.versions
                   if version_matches(release, info.version)), release)
    return Placement(version, listed, f"{family} {version}: {how}; the data's features "
                     f"of {listed}")


def path_peer(text: str, role: Role) -> PeerRef:
    """The side of a case ``text`` (``PROGRAM=PATH[@VERSION]``) names, in ``role``."""
    from harness.peers import Catalog
    from harness.peers.at_path import parse_path_spec
    from harness.process import PeerError

    spec = parse_path_spec(text)
    if spec is None:
        raise MatrixError(f"{text!r} names no program path (expected PROGRAM=PATH[@VERSION])")
    peer = Catalog.load().at_path(spec)
    if role not in peer.roles:
        raise MatrixError(f"{text}: {spec.program} is not a {role}")
    family = peer.family
    if family is None:
        raise MatrixError(f"{spec.program}: no version family in matrix/suites.toml")
    version = spec.version
    how_read = "given"
    if version is None:
        try:
            version = peer.version().version
        except PeerError as exc:
            raise MatrixError(f"{text}: cannot tell its version ({exc}); give it: "
                              f"{spec.program}={spec.location}@VERSION") from None
        how_read = f"from `{spec.program} {' '.join(peer.version_argv)}`"
    placement = place(family, version)
    features: frozenset[str] = frozenset()
    quirks: frozenset[str] = frozenset()
    if placement.release is not None:
        features = data_features(family, placement.release, role)
        quirks = frozenset(q.id for q in default_peerdata().program(family)
                           .quirks(placement.release) if q.role == role)
    return PeerRef(f"{spec.program}@{version}", spec.program, role, version, family,
                   placement.release, features, peer.provider.name, quirks,
                   note=f"{placement.note} (version {how_read})")


__all__ = ["DEVELOPMENT_SERIES", "Placement", "claimed_release", "path_peer", "place"]
