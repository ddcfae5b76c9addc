"""Which cases a run asks for: scenarios, servers, clients and profiles -> an :class:`Expansion`.

The default matrix is every scenario x every installed real peer (host and
provisioned root filesystems, ``nbd-harness peers list``) + the reference
server in every version profile + the reference client.  Server-role
scenarios run against every server with the reference client; client-role
scenarios run every real client against every reference-server profile.

``--server``/``--client`` narrow it: ``qemu-nbd`` means every installed
version of it, ``qemu-nbd@10.0`` one version (or ``qemu-nbd@trixie``, a
suite), ``reference-server@qemu-2.10`` a profile, ``reference-server`` the full
protocol, ``reference-client`` our client.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from .cases import (
    CASE_TIMEOUT,
    REFERENCE_CLIENT,
    REFERENCE_SERVER,
    Expansion,
    MatrixError,
    PeerRef,
    expand,
    installed_peers,
    parse_peer,
    peer_matches,
    reference_client,
    reference_profiles,
    select_scenarios,
)

Profiles = Literal["relevant", "all", "distinct", "none"]
PROFILE_CHOICES: tuple[Profiles, ...] = ("relevant", "all", "distinct", "none")
"""Which reference-server profiles a run uses:

``relevant`` (default): every profile as a server under test (they run in-process
and cost little); for client-role scenarios, one profile per behaviour that
matters to the scenario (:func:`~harness.matrix.cases.relevant_profiles`).
``all``: every profile for both roles.  ``distinct``: one profile per distinct
server behaviour, for both roles.  ``none``: no profiles (so no client-role cases).
"""


@dataclass(frozen=True)
class MatrixRequest:
    """What a run (or a pytest session) asks for; empty lists mean the default matrix."""

    scenarios: Sequence[str] = ()
    servers: Sequence[str] = ()
    clients: Sequence[str] = ()
    profiles: Profiles = "relevant"
    timeout: float = CASE_TIMEOUT
    library: Path | None = None


def _client_programs() -> set[str]:
    from harness.scenarios.client_actions import default_client_actions

    return set(default_client_actions())


def _check_provided(peer: PeerRef) -> None:
    """Fail early (one line) for a real peer no ready provider has."""
    if peer.reference:
        return
    from harness.peers import Catalog

    Catalog.load().resolve(peer.spec)  # raises PeerSpecError saying what to run


def _pick(wanted: Sequence[str], role: Literal["server", "client"],
          installed: Sequence[PeerRef]) -> list[PeerRef]:
    chosen: list[PeerRef] = []
    for text in wanted:
        program, _, version = text.partition("@")
        if not version and program not in (REFERENCE_SERVER, REFERENCE_CLIENT):
            matches = [p for p in installed if peer_matches(p, text)]
            if not matches:
                parse_peer(text, role, installed=installed)  # raises with the reason
            chosen += [p for p in matches if p not in chosen]
            continue
        peer = parse_peer(text, role, installed=installed)
        _check_provided(peer)
        if peer not in chosen:
            chosen.append(peer)
    return chosen


def servers_for(request: MatrixRequest) -> list[PeerRef]:
    installed = installed_peers("server")
    if request.servers:
        return _pick(request.servers, "server", installed)
    profiles = [] if request.profiles == "none" else reference_profiles(
        distinct=request.profiles == "distinct")
    return installed + profiles


def clients_for(request: MatrixRequest) -> list[PeerRef]:
    installed = installed_peers("client")
    if request.clients:
        return _pick(request.clients, "client", installed)
    actionable = _client_programs()
    return [p for p in installed if p.program in actionable] + [reference_client()]


def build_matrix(request: MatrixRequest) -> Expansion:
    """Expand ``request`` into cases (sorted by id) and the combinations that make none."""
    from harness.scenarios import LIBRARY, load_library

    library = load_library(request.library or LIBRARY)
    if not library:
        raise MatrixError(f"no scenarios in {request.library or LIBRARY}")
    scenarios = select_scenarios(library, request.scenarios)
    return expand(scenarios, servers_for(request), clients_for(request),
                  relevant_only=request.profiles == "relevant", timeout=request.timeout)


__all__ = ["PROFILE_CHOICES", "MatrixRequest", "build_matrix", "clients_for", "servers_for"]
