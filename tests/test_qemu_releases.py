"""The qemu version profiles answer as the real releases did.

``tests/data/qemu-releases/VERSION/`` holds sessions of real qemu-nbd releases
(built from source with ``nbd-harness peers build qemu``, or Debian's packages),
recorded by ``nbd-harness peers compare qemu-nbd@VERSION qemu-VERSION --save DIR``:
the reference client running every applicable server scenario, and nbdinfo.
Each session is replayed against the reference server in the release's profile,
serving the same export; every message must be answered the same way. So CI
checks the profiles' fidelity without the binaries.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.fidelity import compare_sessions, load_recording
from harness.peers.qemu_build.data import series_name

DATA = Path(__file__).parent / "data" / "qemu-releases"
RECORDINGS = sorted(p.parent for p in DATA.glob("*/manifest.json"))
RELEASES = {"2.8", "2.10", "2.12", "3.1", "4.1", "5.2", "6.2", "7.2", "8.2", "10.0", "11.1"}
"""Built from source (2.8-8.2 but 5.2 and 7.2) or packaged by Debian (5.2, 7.2, 10.0, 11.1)."""


def test_every_release_has_a_recording() -> None:
    assert {p.name for p in RECORDINGS} == RELEASES


@pytest.mark.parametrize("directory", RECORDINGS, ids=lambda p: p.name)
def test_the_profile_answers_as_the_release_did(directory: Path) -> None:
    recording = load_recording(directory)
    assert series_name(recording.version) == directory.name
    assert recording.real == f"qemu-nbd@{directory.name}"
    # Negotiation, flags, block sizes, contexts, errors and maps: dozens of sessions.
    assert len(recording.sessions) >= 40
    assert {s.name for s in recording.sessions} >= {"nbdinfo-json", "nbdinfo-map",
                                                     "nbdinfo-list"}
    comparisons = compare_sessions(recording, f"qemu-{directory.name}")
    compared = [c for c in comparisons if not c.skipped]
    assert len(compared) >= 40
    differing = [c.render() for c in compared if not c.same]
    assert not differing, "".join(differing)


def test_a_difference_is_reported_with_the_messages() -> None:
    # The same 2.10 sessions against 2.12's profile: 2.10 names its export "" in
    # NBD_INFO_NAME and refuses NBD_OPT_INFO that did not ask for block sizes.
    recording = load_recording(DATA / "2.10")
    comparisons = compare_sessions(recording, "qemu-2.12")
    rendered = "".join(c.render() for c in comparisons if not c.same)
    assert "export name differs: recorded ''; live 'disk'" in rendered
    assert "NBD_OPT_GO" in rendered and "[spec: " in rendered
