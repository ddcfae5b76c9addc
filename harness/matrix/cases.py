"""Expanding scenarios x server peer@version x client peer@version into cases.

Each case has an expected outcome that follows from the matrix data alone
(``matrix/peers/*.toml`` through :mod:`harness.peerdata`, and the reference
server's profiles built from the same data):

- every feature the scenario requires is present on both sides: ``pass``;
- one is missing: the scenario's ``fallback.outcome`` (``unsupported`` or
  ``expected-fallback``).  A qemu-2.10 server makes a client that wants
  structured replies fall back to simple replies, and that is a good case
  when it does.

Two kinds of case:

- server role: a server (a real peer such as ``qemu-nbd@7.2``, or the
  reference server in a version profile, ``reference-server@qemu-2.10``)
  serves the scenario's export and the reference client runs its steps;
- client role: a real client program (``nbdinfo@1.14``, ``qemu-img@10.0``)
  runs the scenario's client steps against the reference server in a profile.

Combinations that cannot be run at all (the reference client cannot play
TLS-PSK; a program has no way to perform an action) are not cases: they are
listed as :class:`Excluded` with the reason, so nothing is skipped silently.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Literal

from harness.client_role import client_can_run
from harness.errors import UserError
from harness.peerdata import PeerDataError, default_peerdata, version_matches
from harness.peers import DRIVERS, Catalog, list_peers, parse_peer_spec
from harness.peers.actions import ClientProgram, default_client_actions
from harness.peers.suites import load_suites
from harness.scenarios import REFERENCE_CLIENT_LACKS, Scenario, server_has
from harness.verdict import Verdict
from reference_server.profiles import (
    FEATURE_GRANTS,
    QUIRK_EFFECTS,
    list_profiles,
    profile,
    split_profile_name,
)

from ._setup import unservable

Role = Literal["server", "client"]

REFERENCE_SERVER = "reference-server"
REFERENCE_CLIENT = "reference-client"
REFERENCE_PROFILE = "reference"

CASE_TIMEOUT = 180.0
"""Seconds one case may take from provisioning to verdict."""
DISCONNECT_GROUP = "disconnect"
"""The generated group of disconnect-at-every-point cases (:mod:`harness.matrix.disconnect`):
named like a scenario group (``nbd-harness run disconnect``), in the default matrix for the
host's peers."""


class MatrixError(UserError, ValueError):
    """A matrix request that cannot be expanded (unknown peer, scenario, shard)."""


# --- peers ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PeerRef:
    """One side of a case: a program at a version, with the features the data gives it.

    ``spec`` is the ``PROGRAM@VERSION`` name cases and reports use
    (``qemu-nbd@7.2``, ``reference-server@qemu-2.10``, ``reference-client``);
    ``family``/``family_version`` locate it in ``matrix/peers`` (None for the
    full reference implementation); ``features`` are the feature ids it has in
    the role it plays; ``provider`` says where it runs from (``host``,
    ``rootfs:sid``, ``builtin``).
    """

    spec: str
    program: str
    role: Role
    version: str | None = None
    family: str | None = None
    family_version: str | None = None
    features: frozenset[str] = frozenset()
    provider: str = ""
    quirks: frozenset[str] = frozenset()
    """Ids of the known quirks (``[[quirk]]`` in ``matrix/peers``) of this version in its role."""
    note: str = ""
    """How a program at a path (``qemu-nbd=PATH``) was placed on the data (reports show it)."""

    @property
    def reference(self) -> bool:
        return self.program in (REFERENCE_SERVER, REFERENCE_CLIENT)

    @property
    def profile(self) -> str | None:
        """The reference server's profile name (None for other peers)."""
        if self.program != REFERENCE_SERVER:
            return None
        return self.version or REFERENCE_PROFILE

    def __str__(self) -> str:
        return self.spec


def _version_matches(actual: str, wanted: str) -> bool:
    try:
        return version_matches(actual, wanted)
    except ValueError:
        return False


def _families() -> dict[str, str]:
    return dict(load_suites().families)


@cache
def _vocabulary(role: Role) -> frozenset[str]:
    return frozenset(f.id for f in default_peerdata().features.values() if role in f.roles)


def _listed_version(family: str, version: str) -> str:
    """The version as ``matrix/peers`` lists it (``7.2.19`` -> ``7.2``)."""
    program = default_peerdata().program(family)
    try:
        return program.version_info(version).version
    except PeerDataError:
        return version


def data_features(family: str, version: str, role: Role) -> frozenset[str]:
    """The features ``matrix/peers/FAMILY.toml`` gives ``version`` in ``role``.

    For servers, a quirk that turns a feature's switches off (nbdkit's memory
    plugin sends no block sizes) removes that feature, exactly as the version
    profile does.
    """

    program = default_peerdata().program(family)
    features = set(program.features(version, role))
    if role == "server":
        switched_off: set[str] = set()
        for quirk in program.quirks(version):
            effect = QUIRK_EFFECTS.get(quirk.id)
            if quirk.role == "server" and effect is not None:
                switched_off |= effect.switches_off
        for feature in list(features):
            grant = FEATURE_GRANTS.get(feature)
            if grant is not None and grant.switches and grant.switches <= switched_off:
                features.discard(feature)
    return frozenset(features)


def reference_server(profile_name: str | None = None) -> PeerRef:
    """The reference server in ``profile_name`` (None or ``reference``: the full protocol)."""

    name = profile_name or REFERENCE_PROFILE
    features = profile(name)  # raises ProfileError (a UserError) for an unknown name
    family = family_version = None
    if name != REFERENCE_PROFILE:
        family, family_version = split_profile_name(name)
        name = f"{family}-{family_version}"
    has = frozenset(f for f in _vocabulary("server") if server_has(features, f))
    spec = REFERENCE_SERVER if name == REFERENCE_PROFILE else f"{REFERENCE_SERVER}@{name}"
    return PeerRef(spec, REFERENCE_SERVER, "server", None if name == REFERENCE_PROFILE else name,
                   family, family_version, has, "builtin", frozenset(features.quirks))


def reference_client() -> PeerRef:
    """The reference client: every client feature but what it cannot play (TLS-PSK)."""

    return PeerRef(REFERENCE_CLIENT, REFERENCE_CLIENT, "client", None, None, None,
                   _vocabulary("client") - REFERENCE_CLIENT_LACKS, "builtin")


def real_peer(program: str, version: str, role: Role, provider: str = "") -> PeerRef:
    """A real program at ``version`` in ``role``, with the features the data gives it."""
    family = _families().get(program)
    if family is None:
        raise MatrixError(f"{program}: no version family in matrix/suites.toml")
    listed = _listed_version(family, version)
    features = data_features(family, listed, role)
    quirks = frozenset(q.id for q in default_peerdata().program(family).quirks(listed)
                       if q.role == role)
    return PeerRef(f"{program}@{listed}", program, role, listed, family, listed, features,
                   provider, quirks)


def parse_peer(text: str, role: Role, *, installed: Sequence[PeerRef] = ()) -> PeerRef:
    """A peer from ``PROGRAM[@VERSION]``: the reference peers, a profile, or a real program.

    ``reference-server@qemu-2.10`` is a profile; ``qemu-nbd@7.2`` a real peer
    (it must be installed when the case runs); ``qemu-nbd`` alone means every
    installed version is wanted, so it needs ``installed`` to choose from and
    the first installed one is returned.
    """

    spec = parse_peer_spec(text)
    if spec.program == REFERENCE_SERVER:
        if role != "server":
            raise MatrixError(f"{text}: the reference server is not a client")
        return reference_server(spec.version)
    if spec.program == REFERENCE_CLIENT:
        if role != "client":
            raise MatrixError(f"{text}: the reference client is not a server")
        return reference_client()

    driver = DRIVERS.get(spec.program)
    if driver is None:
        raise MatrixError(f"unknown peer program {spec.program!r} "
                          f"(known: {', '.join(sorted(DRIVERS))})")
    if role not in driver.roles:
        raise MatrixError(f"{text} is not a {role}")
    if spec.version is None:
        for peer in installed:
            if peer.program == spec.program:
                return peer
        raise MatrixError(f"{text}: no installed version (run `nbd-harness peers list`)")
    version = spec.version
    # A suite name (qemu-nbd@trixie) stands for the version that suite carries; a version
    # names the installed peer of that version, so a client runs from its own provider
    # (without one it would run the host's program).
    for peer in installed:
        if peer.program == spec.program and peer.provider.endswith(f":{version}"):
            return peer
    for peer in installed:
        if peer.program == spec.program and peer.version is not None and \
                _version_matches(peer.version, version):
            return peer
    try:
        return real_peer(spec.program, version, role)
    except ValueError as exc:
        raise MatrixError(f"{text}: {exc}") from None


def installed_peers(role: Role | None = None,
                    kinds: Sequence[str] = ()) -> list[PeerRef]:
    """Every real peer some ready provider has (host first), one per ``program@version``;
    ``kinds`` keeps only providers of those kinds (``docker``: every peer in containers)."""

    catalog = Catalog.load(tuple(kinds)) if kinds else None
    found: dict[str, PeerRef] = {}
    for row in list_peers(catalog, unpackaged=False):
        if not row.provided or row.program in (REFERENCE_SERVER, REFERENCE_CLIENT):
            continue
        for peer_role in row.roles:
            if role is not None and peer_role != role:
                continue
            peer = real_peer(row.program, row.version, peer_role, row.provider or "")
            found.setdefault(f"{peer.role}:{peer.spec}", peer)
    return list(found.values())


def reference_profiles(distinct: bool = False) -> list[PeerRef]:
    """The reference server in every profile (``distinct``: one per distinct behaviour).

    Profiles whose server features are equal behave the same on the wire; with
    ``distinct`` only the first of each such group is kept (``reference`` first,
    then the data's order: oldest versions first).
    """

    peers: list[PeerRef] = []
    seen: set[object] = set()
    for name in list_profiles():
        features = profile(name)
        key = (features.options, features.context_kinds, features.multi_conn, features.quirks,
               tuple(sorted((k, v) for k, v in vars(features).items() if isinstance(v, bool))))
        if distinct and key in seen:
            continue
        seen.add(key)
        peers.append(reference_server(name))
    return peers


# --- cases ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Expectation:
    """What the data predicts for one scenario and pair of peers, and why."""

    verdict: Verdict | None
    """None: nothing is predicted (an external server), any good verdict will do."""
    missing_server: tuple[str, ...] = ()
    missing_client: tuple[str, ...] = ()
    why: str = ""


READ_ONLY_HIDES: dict[str, frozenset[str]] = {
    quirk.id: frozenset(quirk.read_only_hides)
    for quirk in default_peerdata().quirks.values() if quirk.read_only_hides
}
"""Server quirk -> the features it does not advertise on a read-only export
(``read_only_hides`` in ``matrix/features.toml``)."""


def server_features_for(scenario: Scenario, server: PeerRef) -> frozenset[str]:
    """The features ``server`` shows for ``scenario``'s export (quirks of read-only exports)."""
    features = server.features
    if scenario.export.spec.read_only:
        for quirk in server.quirks:
            features -= READ_ONLY_HIDES.get(quirk, frozenset())
    return features


def expect(scenario: Scenario, server: PeerRef, client: PeerRef) -> Expectation:
    """The expected verdict of ``scenario`` between ``server`` and ``client``."""
    for peer in (server, client):
        if peer.family is not None and peer.family_version is None:  # a build the data lacks
            return Expectation(None, why=f"{peer.spec}: version unknown to matrix/peers/"
                               f"{peer.family}.toml, nothing is predicted")
    missing_server = tuple(sorted(scenario.requires_server - server_features_for(scenario,
                                                                                  server)))
    missing_client = tuple(sorted(scenario.requires_client - client.features))
    if not missing_server and not missing_client:
        return Expectation(Verdict.PASS)
    reasons = []
    if missing_server:
        hidden = set(missing_server) - (scenario.requires_server - server.features)
        reasons.append(f"{server.spec} lacks {', '.join(missing_server)}"
                       + (" on a read-only export (a known quirk)" if hidden else ""))
    if missing_client:
        reasons.append(f"{client.spec} lacks {', '.join(missing_client)}")
    outcome = scenario.fallback.outcome if scenario.fallback else "unsupported"
    why = "; ".join(reasons)
    if scenario.fallback and scenario.fallback.why:
        why += f" ({scenario.fallback.why})"
    return Expectation(Verdict.parse(outcome), missing_server, missing_client, why)


def known_breaches(scenario: Scenario, peer: PeerRef) -> frozenset[str]:
    """The rules ``peer`` is known to break in ``scenario`` for reasons the case does not
    judge: by its version (features it lacks whose ``absent_breaks`` in
    ``matrix/features.toml`` name rules the spec's "Baseline" added later), or because the
    scenario configures its server that way (an oldstyle or plain newstyle handshake,
    NBD_OPT_LIST refused).  The findings stay in the reports.  A peer the data does not
    know (an external server, an unknown version) has none: it is judged by the spec alone.
    """
    known: set[str] = set()
    if peer.role == "server":
        if scenario.export.handshake != "fixed-newstyle":
            known.add("server.baseline-fixed-newstyle")
        if not scenario.export.list_exports:
            known.add("server.baseline-list")
    if peer.family_version is not None or peer.profile is not None:
        for feature in default_peerdata().features.values():
            if peer.role in feature.roles and feature.id not in peer.features:
                known.update(feature.absent_breaks)
    return frozenset(known)


@dataclass(frozen=True)
class Case:
    """One scenario between one server and one client, with its expected outcome."""

    scenario: Scenario = field(compare=False, hash=False, repr=False)
    scenario_id: str
    role: Role
    server: PeerRef
    client: PeerRef
    expectation: Expectation
    timeout: float = CASE_TIMEOUT

    @property
    def id(self) -> str:
        """``allocation-depth[qemu-nbd@7.2-vs-reference-client]``."""
        return f"{self.scenario.name}[{self.server.spec}-vs-{self.client.spec}]"

    @property
    def expected(self) -> Verdict | None:
        return self.expectation.verdict

    @property
    def under_test(self) -> PeerRef:
        return self.server if self.role == "server" else self.client

    def known_breaches(self) -> frozenset[str]:
        """The rules either side breaks here for reasons the case does not judge
        (:func:`known_breaches`; rule ids name the role they bind)."""
        return (known_breaches(self.scenario, self.server)
                | known_breaches(self.scenario, self.client))

    def features(self) -> tuple[str, ...]:
        """Every feature the scenario requires, on either side (pytest markers, reports)."""
        return tuple(sorted(self.scenario.requires_server | self.scenario.requires_client))


@dataclass(frozen=True)
class Excluded:
    """A scenario and peer that make no case, and why (listed, never silently dropped)."""

    scenario: str
    peer: str
    reason: str


@dataclass
class Expansion:
    """The cases of a matrix request, and the combinations it could not make cases of."""

    cases: list[Case]
    excluded: list[Excluded] = field(default_factory=list)

    def shard(self, index: int, count: int) -> Expansion:
        """Shard ``index`` (1-based) of ``count``: every count-th case, so shards balance."""
        if count < 1 or not 1 <= index <= count:
            raise MatrixError(f"shard {index}/{count}: expected I/N with 1 <= I <= N")
        return Expansion(self.cases[index - 1 :: count], self.excluded if index == 1 else [])


WIRE_SHAPE = frozenset(f.id for f in default_peerdata().features.values() if f.shapes_wire)
"""Server features that change the shape of any conversation: how the export is selected
(GO or EXPORT_NAME) and how replies are framed (simple, structured, extended);
``shapes_wire`` in ``matrix/features.toml``."""


def relevant_profiles(scenario: Scenario, profiles: Sequence[PeerRef]) -> list[PeerRef]:
    """One profile per distinct behaviour *for this scenario*.

    Two profiles behave alike for a scenario when they agree on every feature the
    scenario requires, on the features that shape the wire for any client
    (:data:`WIRE_SHAPE`) and on their quirks; the first of each group is kept
    (``reference`` first, then the oldest versions), so the version boundaries the
    scenario depends on stay in the matrix.
    """
    relevant = scenario.requires_server | scenario.requires_client | WIRE_SHAPE
    chosen: list[PeerRef] = []
    seen: set[tuple[frozenset[str], frozenset[str]]] = set()
    for peer in profiles:
        quirks = peer.quirks - frozenset(READ_ONLY_HIDES)  # those show in the features already
        key = (server_features_for(scenario, peer) & relevant, quirks)
        if key not in seen:
            seen.add(key)
            chosen.append(peer)
    return chosen


def _server_exclusion(scenario: Scenario, server: PeerRef, client: PeerRef) -> str | None:
    unplayable = scenario.requires_client - client.features
    if client.reference and unplayable:
        return f"the reference client cannot play {', '.join(sorted(unplayable))}"
    if server.reference and scenario.requires_server & {"starttls-psk"}:
        return "the reference server cannot play starttls-psk"
    if not server.reference:
        return unservable(server.program, scenario.export, server.version)
    return None


def _judges(action: str, expectation: str) -> Callable[[Scenario], bool]:
    """A condition: some client step (fallback included) runs the client's ``action`` and
    judges its ``expectation``."""

    def condition(scenario: Scenario) -> bool:
        steps = list(scenario.client_steps)
        if scenario.fallback is not None:
            steps += list(scenario.fallback.client_expect)
        return any(step.action == "client_action" and step.arg("action") == action
                   and expectation in (step.expect or {}) for step in steps)

    return condition


SCENARIO_CONDITIONS: dict[str, Callable[[Scenario], bool]] = {
    # the size a client's ``info`` action reports
    "checks-info-size": _judges("info", "size"),
    # the export names a client's ``list`` action shows
    "checks-listed-names": _judges("list", "exports_include"),
}
"""The conditions ``unjudgeable.when`` of ``matrix/features.toml`` names, by name."""


def _unjudgeable() -> dict[str, tuple[Callable[[Scenario, PeerRef], bool], str]]:
    table: dict[str, tuple[Callable[[Scenario, PeerRef], bool], str]] = {}
    for quirk in default_peerdata().quirks.values():
        entry = quirk.unjudgeable
        if entry is None:
            continue
        condition = SCENARIO_CONDITIONS.get(entry.when)
        if condition is None:
            raise MatrixError(f"matrix/features.toml: [quirk.{quirk.id}.unjudgeable]: when "
                              f"{entry.when!r} is not one of {', '.join(SCENARIO_CONDITIONS)}")

        def applies(scenario: Scenario, client: PeerRef, clients: tuple[str, ...] = entry.clients,
                    condition: Callable[[Scenario], bool] = condition) -> bool:
            return client.program in clients and condition(scenario)

        table[quirk.id] = (applies, entry.why)
    return table


INFO_SIZE_FROM_OPT_INFO = frozenset(
    client for quirk in default_peerdata().quirks.values()
    if quirk.unjudgeable and quirk.unjudgeable.when == "checks-info-size"
    for client in quirk.unjudgeable.clients)
"""Client programs whose ``info`` action shows the size NBD_OPT_INFO gave (nbdinfo
describes an export with libnbd's ``nbd_opt_info``); the others show NBD_OPT_GO's."""

CLIENT_UNJUDGEABLE: dict[str, tuple[Callable[[Scenario, PeerRef], bool], str]] = _unjudgeable()
"""Server quirk -> (predicate over scenario and client, why): against a profile reproducing
the quirk, the client steps the predicate picks would blame the client under test for the
server's deviation.  The deviation itself is judged by the server-role scenarios.  Read from
``unjudgeable`` in ``matrix/features.toml``."""


def _client_profile_exclusion(scenario: Scenario, server: PeerRef,
                              client: PeerRef) -> str | None:
    """Why a client-role ``scenario`` cannot judge ``client`` against the profile ``server``."""
    for quirk in sorted(server.quirks):
        entry = CLIENT_UNJUDGEABLE.get(quirk)
        if entry is not None and entry[0](scenario, client):
            return f"{server.spec} {entry[1].format(client=client.program)}"
    return None


def client_program(client: PeerRef) -> ClientProgram | str:
    """How ``client`` performs client actions: its program's forms at its release."""
    program = default_client_actions().get(client.program)
    return program.at(client.version) if program is not None else client.program


def _client_exclusion(scenario: Scenario, client: PeerRef) -> str | None:
    runnable, why = client_can_run(scenario, client_program(client))
    return None if runnable else why


def expand(
    scenarios: Iterable[Scenario],
    servers: Sequence[PeerRef],
    clients: Sequence[PeerRef],
    *,
    client_profiles: Sequence[PeerRef] | None = None,
    relevant_only: bool = False,
    timeout: float = CASE_TIMEOUT,
) -> Expansion:
    """Every case of ``scenarios`` between ``servers`` and ``clients``.

    Server-role scenarios run against each server with the reference client
    (when it is among ``clients``); client-role scenarios run each real client
    against the reference servers among ``servers`` (or ``client_profiles``
    when given); with ``relevant_only``, only the profiles that behave differently
    for the scenario (:func:`relevant_profiles`).  Cases come sorted by id, so
    every worker and shard sees the same order.
    """
    cases: list[Case] = []
    excluded: list[Excluded] = []
    reference_clients = [c for c in clients if c.program == REFERENCE_CLIENT]
    real_clients = [c for c in clients if not c.reference]
    profiles = list(client_profiles) if client_profiles is not None else [
        s for s in servers if s.program == REFERENCE_SERVER]
    for scenario in scenarios:
        if "server" in scenario.roles:
            for client in reference_clients:
                for server in servers:
                    reason = _server_exclusion(scenario, server, client)
                    if reason:
                        excluded.append(Excluded(scenario.name, server.spec, reason))
                        continue
                    cases.append(Case(scenario, scenario.id, "server", server, client,
                                      expect(scenario, server, client), timeout))
        if "client" in scenario.roles:
            for client in real_clients:
                reason = _client_exclusion(scenario, client)
                if reason:
                    excluded.append(Excluded(scenario.name, client.spec, reason))
                    continue
                chosen = relevant_profiles(scenario, profiles) if relevant_only else profiles
                for server in chosen:
                    reason = _client_profile_exclusion(scenario, server, client)
                    if reason:
                        excluded.append(Excluded(scenario.name, f"{client.spec} vs {server.spec}",
                                                 reason))
                        continue
                    cases.append(Case(scenario, scenario.id, "client", server, client,
                                      expect(scenario, server, client), timeout))
    cases.sort(key=lambda case: case.id)
    duplicates = _duplicates(cases)
    if duplicates:
        raise MatrixError(f"two scenarios make the same case id: {sorted(duplicates)[0]} "
                          "(scenario names must be unique)")
    return Expansion(cases, excluded)


def _duplicates(cases: Sequence[Case]) -> set[str]:
    seen: set[str] = set()
    twice: set[str] = set()
    for case in cases:
        (twice if case.id in seen else seen).add(case.id)
    return twice


def select_scenarios(scenarios: Sequence[Scenario], wanted: Sequence[str]) -> list[Scenario]:
    """The scenarios named in ``wanted`` (a name, ``group/name``, a group, or a glob)."""

    if not wanted:
        return list(scenarios)
    chosen: list[Scenario] = []
    for pattern in wanted:
        matches = [s for s in scenarios
                   if pattern in (s.name, s.id, s.group)
                   or fnmatch.fnmatchcase(s.name, pattern) or fnmatch.fnmatchcase(s.id, pattern)]
        if not matches:
            raise MatrixError(f"no scenario matches {pattern!r} "
                              "(see `nbd-harness scenarios list`)")
        chosen += [s for s in matches if s not in chosen]
    return chosen


def peer_matches(peer: PeerRef, wanted: str) -> bool:
    """True when ``peer`` is what ``wanted`` (``PROGRAM`` or ``PROGRAM@VERSION``) names."""
    program, _, version = wanted.partition("@")
    if program != peer.program:
        return False
    if not version:
        return True
    if peer.version == version or peer.provider.endswith(f":{version}"):
        return True
    try:
        return peer.version is not None and version_matches(peer.version, version)
    except ValueError:
        return False


__all__ = [
    "CASE_TIMEOUT",
    "CLIENT_UNJUDGEABLE",
    "DISCONNECT_GROUP",
    "INFO_SIZE_FROM_OPT_INFO",
    "REFERENCE_CLIENT",
    "REFERENCE_SERVER",
    "Case",
    "Excluded",
    "Expansion",
    "Expectation",
    "MatrixError",
    "PeerRef",
    "data_features",
    "expand",
    "expect",
    "installed_peers",
    "known_breaches",
    "parse_peer",
    "peer_matches",
    "real_peer",
    "reference_client",
    "reference_profiles",
    "reference_server",
    "relevant_profiles",
    "select_scenarios",
]
