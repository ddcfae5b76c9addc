"""Version profiles: the reference server as a given qemu, nbdkit or nbd-server would be.

``profile("qemu-2.10")`` is a :class:`ServerFeatures` built from the server
claims and quirks of that version in ``matrix/`` (see :mod:`harness.peerdata`),
never written by hand.  A profile starts from a bare newstyle server that
knows only ``NBD_OPT_EXPORT_NAME`` and ``NBD_OPT_ABORT``; each feature the
version has turns on what :data:`FEATURE_GRANTS` says, and each of its quirks
applies what :data:`QUIRK_EFFECTS` says.  Both tables are read from
``matrix/features.toml`` (``grants``, ``[quirk.ID]``), the one table of feature
semantics that the scenarios and the matrix read too.

What a profile does not decide is per-export or per-server configuration:
export sizes and block sizes, bitmaps, read-only, whether an export is
shareable (``multi_conn``), TLS certificates and the handshake style.
``reference`` is the full protocol (:data:`~reference_server.features.FULL`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from harness.errors import UserError
from harness.peerdata import (
    Feature,
    PeerData,
    QuirkMeaning,
    default_peerdata,
    version_matches,
)
from harness.protocol import constants as c

from .features import FULL, MultiConn, ServerFeatures

REFERENCE = "reference"
BASELINE_OPTIONS = frozenset({c.Opt.EXPORT_NAME, c.Opt.ABORT})
"""What every newstyle server understands, whatever its version."""

SWITCHES = ("no_zeroes", "info_block_size", "write_zeroes", "fast_zero", "trim", "flush", "fua",
            "cache", "df", "block_status_payload", "init_state")
"""The boolean :class:`ServerFeatures` fields a feature can turn on (all off in a bare server)."""

PROGRAM_ORDER = ("qemu", "nbdkit", "nbd-server")
"""Programs listed first, in this order; any other program with server claims follows."""


class ProfileError(UserError, ValueError):
    """An unknown profile name; the message lists the known ones."""


@dataclass(frozen=True)
class Grant:
    """What one feature turns on in the reference server.

    ``note`` says why a grant is empty (the feature is real, but it is not a
    wire switch of this server) or anything a reader of the table should know.
    """

    options: frozenset[int] = frozenset()
    context_kinds: frozenset[str] = frozenset()
    switches: frozenset[str] = frozenset()
    multi_conn: MultiConn | None = None
    note: str = ""


@dataclass(frozen=True)
class QuirkEffect:
    """What one quirk changes: a named deviation, switches it turns off, or nothing."""

    quirk: str | None = None  # name in ServerFeatures.quirks / features.KNOWN_QUIRKS
    switches_off: frozenset[str] = frozenset()
    note: str = ""


def _option(name: str) -> int:
    return c.Opt[name.removeprefix("NBD_OPT_")]


def _grant(feature: Feature) -> Grant:
    grant = feature.grants
    unknown = sorted(set(grant.switches) - set(SWITCHES))
    if unknown:
        raise ProfileError(f"matrix/features.toml: [feature.{feature.id}]: grants: switch "
                           f"{unknown[0]!r} is not one of {', '.join(SWITCHES)}")
    return Grant(options=frozenset(_option(name) for name in grant.options),
                 context_kinds=frozenset(grant.contexts), switches=frozenset(grant.switches),
                 multi_conn=grant.multi_conn,  # type: ignore[arg-type]
                 note=grant.note)


def _effect(meaning: QuirkMeaning) -> QuirkEffect:
    return QuirkEffect(quirk=meaning.profile_quirk, switches_off=frozenset(meaning.switches_off),
                       note=meaning.note)


FEATURE_GRANTS: dict[str, Grant] = {
    feature_id: _grant(feature) for feature_id, feature in default_peerdata().features.items()
}
"""Feature id -> what it turns on: read from ``grants`` in ``matrix/features.toml``."""

QUIRK_EFFECTS: dict[str, QuirkEffect] = {
    quirk_id: _effect(meaning) for quirk_id, meaning in default_peerdata().quirks.items()
}
"""Quirk id (``[[quirk]]`` in ``matrix/peers``) -> its effect: read from ``[quirk.ID]`` in
``matrix/features.toml``."""

_MULTI_CONN_RANK: dict[MultiConn, int] = {"never": 0, "read-only": 1, "always": 2}


def bare_server(name: str) -> ServerFeatures:
    """A newstyle server with nothing optional: the start of every version profile."""
    return replace(FULL, name=name, options=BASELINE_OPTIONS, context_kinds=frozenset(),
                   multi_conn="never", quirks=frozenset(),
                   **dict.fromkeys(SWITCHES, False))


def features_for(name: str, feature_ids: set[str] | frozenset[str],
                 quirk_ids: set[str] | frozenset[str] = frozenset()) -> ServerFeatures:
    """A :class:`ServerFeatures` with exactly ``feature_ids`` and ``quirk_ids`` applied."""
    options, contexts, switches = set(BASELINE_OPTIONS), set(), set()
    multi_conn: MultiConn = "never"
    quirks: set[str] = set()
    for feature_id in sorted(feature_ids):
        grant = FEATURE_GRANTS.get(feature_id)
        if grant is None:
            raise ProfileError(f"profile {name}: feature {feature_id!r} has no entry in "
                               "reference_server.profiles.FEATURE_GRANTS")
        options |= grant.options
        contexts |= grant.context_kinds
        switches |= grant.switches
        if grant.multi_conn and _MULTI_CONN_RANK[grant.multi_conn] > _MULTI_CONN_RANK[multi_conn]:
            multi_conn = grant.multi_conn
    for quirk_id in sorted(quirk_ids):
        effect = QUIRK_EFFECTS.get(quirk_id)
        if effect is None:
            raise ProfileError(f"profile {name}: quirk {quirk_id!r} has no entry in "
                               "reference_server.profiles.QUIRK_EFFECTS")
        switches -= effect.switches_off
        if effect.quirk:
            quirks.add(effect.quirk)
    return replace(bare_server(name), options=frozenset(options), context_kinds=frozenset(contexts),
                   multi_conn=multi_conn, quirks=frozenset(quirks),
                   **{switch: True for switch in switches})


def _server_programs(data: PeerData) -> list[str]:
    with_server = [name for name, program in data.programs.items() if "server" in program.roles()]
    ordered = [name for name in PROGRAM_ORDER if name in with_server]
    return ordered + sorted(set(with_server) - set(ordered))


def list_profiles(data: PeerData | None = None) -> list[str]:
    """``reference`` and ``PROGRAM-VERSION`` for every listed version of every server."""
    data = data or default_peerdata()
    names = [REFERENCE]
    for program in _server_programs(data):
        names += [f"{program}-{info.version}" for info in data.programs[program].versions]
    return names


def split_profile_name(name: str, data: PeerData | None = None) -> tuple[str, str]:
    """``"nbd-server-3.24"`` -> ``("nbd-server", "3.24")`` (the listed version it names).

    A release of a listed version works too: ``qemu-10.0.2`` is ``qemu-10.0``.
    """
    data = data or default_peerdata()
    for program in _server_programs(data):
        prefix = f"{program}-"
        if not name.startswith(prefix):
            continue
        wanted = name[len(prefix):]
        for info in data.programs[program].versions:
            try:
                if wanted == info.version or version_matches(wanted, info.version):
                    return program, info.version
            except ValueError:
                break
    known = ", ".join(list_profiles(data))
    raise ProfileError(f"unknown profile {name!r} (known profiles: {known})")


def profile(name: str, data: PeerData | None = None) -> ServerFeatures:
    """The :class:`ServerFeatures` of profile ``name`` (see :func:`list_profiles`)."""
    if name == REFERENCE:
        return FULL
    data = data or default_peerdata()
    program_name, version = split_profile_name(name, data)
    program = data.programs[program_name]
    feature_ids = set(program.features(version, "server"))
    quirk_ids = {quirk.id for quirk in program.quirks(version) if quirk.role == "server"}
    return features_for(f"{program_name}-{version}", feature_ids, quirk_ids)


__all__ = [
    "FEATURE_GRANTS",
    "QUIRK_EFFECTS",
    "REFERENCE",
    "Grant",
    "ProfileError",
    "QuirkEffect",
    "bare_server",
    "features_for",
    "list_profiles",
    "profile",
    "split_profile_name",
]
