"""Version profiles: the reference server as a given qemu, nbdkit or nbd-server would be.

``profile("qemu-2.10")`` is a :class:`ServerFeatures` built from the server
claims and quirks of that version in ``matrix/`` (see :mod:`harness.peerdata`),
never written by hand.  A profile starts from a bare newstyle server that
knows only ``NBD_OPT_EXPORT_NAME`` and ``NBD_OPT_ABORT``; each feature the
version has turns on what :data:`FEATURE_GRANTS` says, and each of its quirks
applies what :data:`QUIRK_EFFECTS` says.  Those two tables are the only place
that knows how a feature id becomes server behaviour.

What a profile does not decide is per-export or per-server configuration:
export sizes and block sizes, bitmaps, read-only, whether an export is
shareable (``multi_conn``), TLS certificates and the handshake style.
``reference`` is the full protocol (:data:`~reference_server.features.FULL`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from harness.errors import UserError
from harness.peerdata import PeerData, default_peerdata, version_matches
from harness.protocol import constants as c

from .features import FULL, MultiConn, ServerFeatures

REFERENCE = "reference"
META_OPTIONS = frozenset({c.Opt.LIST_META_CONTEXT, c.Opt.SET_META_CONTEXT})
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


def _on(*names: str) -> frozenset[str]:
    return frozenset(names)


FEATURE_GRANTS: dict[str, Grant] = {
    "oldstyle": Grant(note="the handshake style is server configuration (--handshake oldstyle)"),
    "no-zeroes": Grant(switches=_on("no_zeroes")),
    "starttls-x509": Grant(options=frozenset({c.Opt.STARTTLS}),
                           note="TLS itself needs --tls and certificates"),
    "starttls-psk": Grant(note="the reference server's TLS uses X.509 certificates only"),
    "list-exports": Grant(options=frozenset({c.Opt.LIST})),
    "opt-go": Grant(options=frozenset({c.Opt.INFO, c.Opt.GO}),
                    note="without it GO and INFO get ERR_UNSUP: clients fall back to EXPORT_NAME"),
    "info-block-size": Grant(switches=_on("info_block_size")),
    "structured-replies": Grant(options=frozenset({c.Opt.STRUCTURED_REPLY})),
    "base-allocation": Grant(options=META_OPTIONS, context_kinds=_on(c.BASE_ALLOCATION)),
    "dirty-bitmap": Grant(options=META_OPTIONS, context_kinds=_on(c.QEMU_DIRTY_BITMAP_PREFIX)),
    "allocation-depth": Grant(options=META_OPTIONS, context_kinds=_on(c.QEMU_ALLOCATION_DEPTH)),
    "meta-context-list-query": Grant(
        note="always answered; only servers with qemu: contexts differ, and all of them have it"),
    "write-zeroes": Grant(switches=_on("write_zeroes")),
    "trim": Grant(switches=_on("trim")),
    "flush": Grant(switches=_on("flush")),
    "fua": Grant(switches=_on("fua")),
    "cache": Grant(switches=_on("cache")),
    "df": Grant(switches=_on("df"), note="advertised only once structured replies are on"),
    "fast-zero": Grant(switches=_on("fast_zero")),
    "multi-conn-read-only": Grant(multi_conn="read-only",
                                  note="on exports configured multi_conn = true (shareable)"),
    "multi-conn-writable": Grant(multi_conn="always",
                                 note="on exports configured multi_conn = true (shareable)"),
    "extended-headers": Grant(options=frozenset({c.Opt.EXTENDED_HEADERS})),
    "block-status-payload": Grant(switches=_on("block_status_payload")),
    "init-state": Grant(switches=_on("init_state"),
                        note="still only on exports configured init_state = true"),
}
"""Feature id (``matrix/features.toml``) -> what it turns on.  Every id has an entry."""

QUIRK_EFFECTS: dict[str, QuirkEffect] = {
    "info-size-zero": QuirkEffect(quirk="info-size-zero"),
    "unflagged-extended-write": QuirkEffect(quirk="unflagged-extended-write"),
    "sends-unflagged-extended-write": QuirkEffect(
        note="a client quirk: the conformance rules report it; servers need no switch"),
    "abort-without-ack": QuirkEffect(quirk="abort-without-ack"),
    "read-only-hides-write-flags": QuirkEffect(quirk="read-only-hides-write-flags"),
    "read-only-hides-fua": QuirkEffect(quirk="read-only-hides-fua"),
    "info-block-status-payload": QuirkEffect(quirk="info-block-status-payload"),
    "description-unasked": QuirkEffect(quirk="description-unasked"),
    "memory-plugin-no-block-size": QuirkEffect(switches_off=_on("info_block_size")),
    "no-multi-conn-writable": QuirkEffect(note="already expressed by the multi-conn claims"),
    "multi-conn-needs-shared": QuirkEffect(
        note="an export's multi_conn setting stands for qemu-nbd's --shared > 1"),
    "no-extended-headers": QuirkEffect(note="already expressed by the missing claim"),
    "list-needs-allowlist": QuirkEffect(
        note="server configuration: list_exports = false stands for allowlist = false"),
    "foreground-single-client": QuirkEffect(note="process behaviour, not on the wire"),
    "misreports-version": QuirkEffect(note="--version output, not on the wire"),
}
"""Quirk id (``[[quirk]]`` in ``matrix/peers``) -> its effect.  Every id has an entry."""

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
