"""Which cases a run asks for: scenarios, servers, clients and profiles -> an :class:`Expansion`.

The default matrix is every scenario x every installed real peer (host and
provisioned root filesystems, ``nbd-harness peers list``) + the reference
server in every version profile + the reference client.  Server-role
scenarios run against every server with the reference client; client-role
scenarios run every real client against every reference-server profile.

``--server``/``--client`` narrow it: ``qemu-nbd`` means every installed
version of it, ``qemu-nbd@10.0`` one version (or ``qemu-nbd@trixie``, a
suite), ``qemu-nbd=PATH[@VERSION]`` a program the user built (a file or a
directory of programs, :mod:`harness.matrix.at_path`),
``reference-server@qemu-2.10`` a profile, ``reference-server`` the full
protocol, ``reference-client`` our client.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from harness.client_role import default_client_actions
from harness.peers import Catalog
from harness.scenarios import LIBRARY, load_library

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
    providers: Sequence[str] = ()
    """Provider kinds real peers may come from (``docker``); empty: any, host first."""


def _client_programs() -> set[str]:
    return set(default_client_actions())


def _provided(peer: PeerRef, kinds: Sequence[str]) -> PeerRef:
    """``peer`` bound to the provider that will run it; fails early (one line) for a real
    peer no ready provider (of ``kinds``) has."""
    if peer.reference or peer.provider:
        return peer

    catalog = Catalog.load(tuple(kinds)) if kinds else Catalog.load()
    found = catalog.resolve(peer.spec)  # raises PeerSpecError saying what to run
    return dataclasses.replace(peer, provider=found.provider.name) if kinds else peer


def _pick(wanted: Sequence[str], role: Literal["server", "client"],
          installed: Sequence[PeerRef], kinds: Sequence[str] = ()) -> list[PeerRef]:
    from .at_path import path_peer

    chosen: list[PeerRef] = []
    for text in wanted:
        if "=" in text:
            _add(chosen, path_peer(text, role))
            continue
        program, _, version = text.partition("@")
        if not version and program not in (REFERENCE_SERVER, REFERENCE_CLIENT):
            matches = [p for p in installed if peer_matches(p, text)]
            if not matches:
                parse_peer(text, role, installed=installed)  # raises with the reason
            chosen += [p for p in matches if p not in chosen]
            continue
        _add(chosen, _provided(parse_peer(text, role, installed=installed), kinds))
    return chosen


def _add(chosen: list[PeerRef], peer: PeerRef) -> None:
    """Add ``peer`` unless it is chosen already; two different programs under one name
    (a build and a package of the same version) would make the same case ids."""
    for other in chosen:
        if other.spec == peer.spec and other.provider != peer.provider:
            raise MatrixError(f"two peers are named {peer.spec} ({other.provider or 'installed'}"
                              f" and {peer.provider}): give the build another version, "
                              f"PROGRAM=PATH@VERSION")
    if peer not in chosen:
        chosen.append(peer)


def servers_for(request: MatrixRequest) -> list[PeerRef]:
    installed = installed_peers("server", request.providers)
    if request.servers:
        return _pick(request.servers, "server", installed, request.providers)
    profiles = [] if request.profiles == "none" else reference_profiles(
        distinct=request.profiles == "distinct")
    return installed + profiles


def clients_for(request: MatrixRequest) -> list[PeerRef]:
    installed = installed_peers("client", request.providers)
    if request.clients:
        return _pick(request.clients, "client", installed, request.providers)
    actionable = _client_programs()
    return [p for p in installed if p.program in actionable] + [reference_client()]


def build_matrix(request: MatrixRequest) -> Expansion:
    """Expand ``request`` into cases (sorted by id) and the combinations that make none."""

    library = load_library(request.library or LIBRARY)
    if not library:
        raise MatrixError(f"no scenarios in {request.library or LIBRARY}")
    from .disconnect import expand_disconnect, generated_selection

    patterns, disconnect = generated_selection(request.scenarios, library)
    scenarios = select_scenarios(library, patterns) if patterns or not request.scenarios \
        else []
    servers, clients = servers_for(request), clients_for(request)
    expansion = expand(scenarios, servers, clients,
                       relevant_only=request.profiles == "relevant", timeout=request.timeout)
    if disconnect:  # generated cases: every installed version when the group is named
        cases, excluded = expand_disconnect(servers, clients, host_only=not request.scenarios,
                                            timeout=request.timeout)
        expansion.cases = sorted(expansion.cases + cases, key=lambda case: case.id)
        expansion.excluded += excluded
    return expansion


__all__ = ["PROFILE_CHOICES", "MatrixRequest", "build_matrix", "clients_for", "servers_for"]
