"""Version and feature data of the real NBD programs, from ``matrix/``.

``matrix/features.toml`` is the feature vocabulary (id, description, spec
section, the roles it applies to); ``matrix/peers/PROGRAM.toml`` lists one
program's versions (and where each is packaged), its feature claims per role
(``[[server]]`` / ``[[client]]`` tables: ``feature``, ``since``, optional
``until``, ``source``) and its known quirks (``[[quirk]]``).  Every claim and
quirk cites its source; :func:`load_peerdata` checks all of it and raises
:class:`PeerDataError` naming the file and the table at fault.

A claim holds for a version ``v`` when ``since <= v < until``; ``until`` is the
first version without it.  Versions compare numerically (``2.10 > 2.9``), and
trailing zeros do not matter (``1.4 == 1.4.0``).
"""

from __future__ import annotations

import enum
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from harness.errors import UserError
from harness.paths import MATRIX_DIR, shown
from harness.protocol import constants as c
from harness.protocol.rules import CITATIONS

DEFAULT_ROOT = MATRIX_DIR

Role = Literal["server", "client"]
ROLES: tuple[Role, ...] = ("server", "client")

_VERSION_RE = re.compile(r"^\d+(\.\d+)*$")


class PeerDataError(UserError, ValueError):
    """The data in ``matrix/`` is malformed; the message names the file and the key."""


# --- versions ------------------------------------------------------------------------------


def parse_version(text: str) -> tuple[int, ...]:
    """``"10.0.2"`` -> ``(10, 0, 2)``.  Raises ``ValueError`` for anything but digits and dots."""
    if not isinstance(text, str) or not _VERSION_RE.match(text):
        raise ValueError(f"{text!r} is not a version (expected numbers and dots, e.g. \"7.2\")")
    return tuple(int(part) for part in text.split("."))


def _key(version: str | tuple[int, ...]) -> tuple[int, ...]:
    """A comparison key in which trailing zeros do not count (``1.4 == 1.4.0``)."""
    parts = list(parse_version(version) if isinstance(version, str) else version)
    while len(parts) > 1 and parts[-1] == 0:
        parts.pop()
    return tuple(parts)


def version_matches(actual: str, listed: str) -> bool:
    """True when ``actual`` is the listed version or a release of it.

    ``version_matches("7.2.19", "7.2")`` and ``("10.0", "10.0")`` are true;
    ``("7.20", "7.2")`` is not: components compare as numbers.
    """
    actual_parts, listed_parts = parse_version(actual), parse_version(listed)
    return actual_parts[: len(listed_parts)] == listed_parts


def _in_range(version: str, since: str | None, until: str | None) -> bool:
    key = _key(version)
    return (since is None or _key(since) <= key) and (until is None or key < _key(until))


# --- records -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Grant:
    """What a feature turns on in a reference-server version profile (``grants``).

    ``options`` are option names (``NBD_OPT_GO``), ``contexts`` metadata context
    kinds (``qemu:dirty-bitmap:`` for every bitmap), ``switches`` boolean fields of
    :class:`reference_server.features.ServerFeatures`, ``multi_conn`` its level;
    ``note`` says why a grant is empty, or what a reader should know.
    """

    options: tuple[str, ...] = ()
    contexts: tuple[str, ...] = ()
    switches: tuple[str, ...] = ()
    multi_conn: str | None = None
    note: str = ""


@dataclass(frozen=True)
class Feature:
    """One entry of the vocabulary in ``matrix/features.toml``, with what it means.

    ``grants``: what it turns on in the reference server; ``flag``: the
    transmission flag announcing it; ``command_flag``: the command flag using it;
    ``refused_by``: the options a server lacking it answers NBD_REP_ERR_UNSUP;
    ``shapes_wire``: it changes the shape of any conversation;
    ``reference_lacks``: the reference implementations (by role) that cannot play it.
    """

    id: str
    description: str
    spec: str
    roles: tuple[Role, ...]
    grants: Grant = Grant()
    flag: str | None = None
    command_flag: str | None = None
    refused_by: tuple[str, ...] = ()
    shapes_wire: bool = False
    reference_lacks: tuple[Role, ...] = ()
    absent_breaks: tuple[str, ...] = ()
    """Conformance rule ids a peer lacking the feature breaks by its version."""


@dataclass(frozen=True)
class Unjudgeable:
    """Client programs a profile with a quirk cannot judge, ``when`` a named condition
    holds for the scenario, and ``why`` (``{client}`` stands for the program)."""

    clients: tuple[str, ...]
    when: str
    why: str


@dataclass(frozen=True)
class QuirkMeaning:
    """What a quirk id (``[quirk.ID]`` in ``matrix/features.toml``) means.

    ``profile_quirk``: the deviation a version profile reproduces; ``switches_off``:
    what it turns off in a profile; ``read_only_hides``: features a server with it
    does not advertise on a read-only export; ``unjudgeable``: see
    :class:`Unjudgeable`; ``note``: why it needs nothing, or what to know.
    """

    id: str
    profile_quirk: str | None = None
    switches_off: tuple[str, ...] = ()
    read_only_hides: tuple[str, ...] = ()
    unjudgeable: Unjudgeable | None = None
    note: str = ""


@dataclass(frozen=True)
class Packaging:
    """Where a version is packaged: a Debian suite and the package name."""

    suite: str
    package: str


@dataclass(frozen=True)
class VersionInfo:
    """One listed version of a program.

    ``reports`` is what the program's ``--version`` prints when that differs
    from the real version (nbd-server 3.21 says 3.18).
    """

    version: str
    packaged: tuple[Packaging, ...] = ()
    reports: str | None = None


@dataclass(frozen=True)
class Claim:
    """A program has ``feature`` in ``role`` from ``since`` up to (excluding) ``until``."""

    feature: str
    since: str
    until: str | None
    source: str
    role: Role = "server"
    upstream_since: str | None = None
    """Where the program's own documentation puts ``since``, when the claim departs from it
    on evidence (a real release) that its ``source`` gives."""

    def holds_for(self, version: str) -> bool:
        return _in_range(version, self.since, self.until)


@dataclass(frozen=True)
class Quirk:
    """A known deviation or oddity of a program in ``role`` (``since``/``until`` optional)."""

    id: str
    role: Role
    description: str
    source: str
    since: str | None = None
    until: str | None = None

    def holds_for(self, version: str) -> bool:
        return _in_range(version, self.since, self.until)


@dataclass(frozen=True)
class ProgramData:
    """Everything ``matrix/peers/NAME.toml`` says about one program."""

    name: str
    description: str
    versions: list[VersionInfo]
    claims: tuple[Claim, ...]
    quirk_list: tuple[Quirk, ...]
    path: Path = field(default=Path(), compare=False)

    def version_info(self, version: str) -> VersionInfo:
        """The listed version ``version`` is (or is a release of); PeerDataError if none."""
        for info in self.versions:
            if info.version == version:
                return info
        matches = [info for info in self.versions if version_matches(version, info.version)]
        if matches:
            return max(matches, key=lambda info: len(parse_version(info.version)))
        listed = ", ".join(info.version for info in self.versions)
        raise PeerDataError(f"{self.name} {version} is not a listed version (listed: {listed})")

    def features(self, version: str, role: Role) -> dict[str, Claim]:
        """The claims that hold for ``version`` in ``role``, by feature id.

        Any version string works (``"7.2.19"``, ``"2.9"``); the listed versions
        are only the ones the matrix tests.
        """
        _check_version_argument(version)
        return {c.feature: c for c in self.claims if c.role == role and c.holds_for(version)}

    def has(self, feature: str, version: str, role: Role) -> bool:
        return feature in self.features(version, role)

    def quirks(self, version: str) -> list[Quirk]:
        """The quirks that hold for ``version`` (both roles)."""
        _check_version_argument(version)
        return [q for q in self.quirk_list if q.holds_for(version)]

    def roles(self) -> tuple[Role, ...]:
        """The roles the program has any claim in, in :data:`ROLES` order."""
        return tuple(r for r in ROLES if any(c.role == r for c in self.claims))


@dataclass(frozen=True)
class PeerData:
    """The feature vocabulary and every program's data."""

    features: dict[str, Feature]
    programs: dict[str, ProgramData]
    quirks: dict[str, QuirkMeaning] = field(default_factory=dict)
    """What each quirk id means (``[quirk.ID]`` of ``matrix/features.toml``)."""

    def program(self, name: str) -> ProgramData:
        try:
            return self.programs[name]
        except KeyError:
            known = ", ".join(sorted(self.programs))
            raise PeerDataError(f"no peer data for {name!r} (known: {known})") from None


def _check_version_argument(version: str) -> None:
    try:
        parse_version(version)
    except ValueError as exc:
        raise PeerDataError(str(exc)) from None


# --- loading -------------------------------------------------------------------------------


class _Where:
    """Builds messages that start with the file (relative to the repo when inside it)."""

    def __init__(self, path: Path, table: str = "") -> None:
        self.path = path
        self.table = table

    def at(self, table: str) -> _Where:
        return _Where(self.path, table)

    def error(self, message: str) -> PeerDataError:
        where = shown(self.path)
        prefix = f"{where}: {self.table}: " if self.table else f"{where}: "
        return PeerDataError(prefix + message)


def _read_toml(path: Path) -> dict[str, Any]:
    where = _Where(path)
    try:
        with open(path, "rb") as stream:
            return tomllib.load(stream)
    except FileNotFoundError:
        raise where.error("no such file") from None
    except OSError as exc:
        raise where.error(f"cannot read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise where.error(f"not valid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise where.error("not valid TOML: the file is not UTF-8") from None


def _check_keys(where: _Where, table: Mapping[str, Any], required: set[str],
                optional: frozenset[str] | set[str] = frozenset()) -> None:
    for key in table:
        if key not in required | optional:
            known = ", ".join(sorted(required | optional))
            raise where.error(f'unknown key "{key}" (known keys: {known})')
    for key in sorted(required):
        if key not in table:
            raise where.error(f'missing key "{key}"')


def _text(where: _Where, key: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise where.error(f"{key} must be a non-empty string, not {value!r}")
    return value.strip()


def _version(where: _Where, key: str, value: Any) -> str:
    text = _text(where, key, value)
    try:
        parse_version(text)
    except ValueError as exc:
        raise where.error(f"{key} {exc}") from None
    return text


def _table_list(where: _Where, document: Mapping[str, Any], key: str) -> list[dict[str, Any]]:
    value = document.get(key, [])
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise where.error(f"{key} must be an array of tables: write [[{key}]]")
    return value


def _load_features(path: Path) -> tuple[dict[str, Feature], dict[str, QuirkMeaning]]:
    where = _Where(path)
    document = _read_toml(path)
    _check_keys(where, document, {"feature"}, {"quirk"})
    tables = document["feature"]
    if not isinstance(tables, dict) or not tables:
        raise where.error("feature must hold one [feature.ID] table per feature")
    features: dict[str, Feature] = {}
    for feature_id, table in tables.items():
        here = where.at(f"[feature.{feature_id}]")
        if not re.match(r"^[a-z0-9]+(-[a-z0-9]+)*$", feature_id):
            raise here.error("feature ids are lower-case words joined by dashes")
        if not isinstance(table, dict):
            raise here.error("must be a table")
        _check_keys(here, table, {"description", "spec", "roles"}, _FEATURE_MEANINGS)
        roles = _roles(here, "roles", table["roles"])
        if not roles:
            raise here.error(f"roles must list one or both of {list(ROLES)}, not []")
        features[feature_id] = Feature(
            feature_id, _text(here, "description", table["description"]),
            _text(here, "spec", table["spec"]), roles,
            grants=_grant(here, table.get("grants", {})),
            flag=_name(here, "flag", table["flag"], "NBD_FLAG_", c.TransmissionFlag)
            if "flag" in table else None,
            command_flag=_name(here, "command_flag", table["command_flag"], "NBD_CMD_FLAG_",
                               c.CmdFlag) if "command_flag" in table else None,
            refused_by=_names(here, "refused_by", table.get("refused_by", []), "NBD_OPT_",
                              c.Opt),
            shapes_wire=_flag(here, "shapes_wire", table.get("shapes_wire", False)),
            reference_lacks=_roles(here, "reference_lacks", table.get("reference_lacks", [])),
            absent_breaks=_rule_ids(here, table.get("absent_breaks", [])))
    return features, _load_quirk_meanings(where, document.get("quirk", {}), features)


_FEATURE_MEANINGS = frozenset({"grants", "flag", "command_flag", "refused_by", "shapes_wire",
                               "reference_lacks", "absent_breaks"})


def _rule_ids(where: _Where, value: Any) -> tuple[str, ...]:
    """``absent_breaks``: ids of cited conformance rules (harness/protocol/rules.py)."""
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise where.error("absent_breaks must be a list of conformance rule ids")
    unknown = [v for v in value if v not in CITATIONS]
    if unknown:
        raise where.error(f"absent_breaks names rules without a citation: {unknown}")
    return tuple(value)
_GRANT_KEYS = frozenset({"options", "contexts", "switches", "multi_conn", "note"})
_QUIRK_KEYS = frozenset({"profile_quirk", "switches_off", "read_only_hides", "unjudgeable",
                         "note"})
MULTI_CONN_LEVELS = ("never", "read-only", "always")


def _roles(here: _Where, key: str, value: Any) -> tuple[Role, ...]:
    if (not isinstance(value, list) or any(role not in ROLES for role in value)
            or len(set(value)) != len(value)):
        raise here.error(f"{key} must list one or both of {list(ROLES)}, not {value!r}")
    return tuple(value)


def _flag(here: _Where, key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise here.error(f"{key} must be true or false, not {value!r}")
    return value


def _strings(here: _Where, key: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise here.error(f"{key} must be a list of strings, not {value!r}")
    return tuple(_text(here, key, item) for item in value)


def _name(here: _Where, key: str, value: Any, prefix: str, kind: type[enum.Enum]) -> str:
    """A constant's spec name (``NBD_OPT_GO``), checked against the protocol constants."""
    text = _text(here, key, value)
    if not text.startswith(prefix) or text.removeprefix(prefix) not in kind.__members__:
        raise here.error(f"{key}: {text!r} is not a {prefix}* name")
    return text


def _names(here: _Where, key: str, value: Any, prefix: str,
           kind: type[enum.Enum]) -> tuple[str, ...]:
    return tuple(_name(here, key, item, prefix, kind) for item in _strings(here, key, value))


def _grant(here: _Where, table: Any) -> Grant:
    here = here.at(f"{here.table}: grants")
    if not isinstance(table, dict):
        raise here.error("must be a table: grants = { ... }")
    _check_keys(here, table, set(), _GRANT_KEYS)
    multi_conn = table.get("multi_conn")
    if multi_conn is not None and multi_conn not in MULTI_CONN_LEVELS:
        raise here.error(f"multi_conn must be one of {list(MULTI_CONN_LEVELS)}, "
                         f"not {multi_conn!r}")
    return Grant(_names(here, "options", table.get("options", []), "NBD_OPT_", c.Opt),
                 _strings(here, "contexts", table.get("contexts", [])),
                 _strings(here, "switches", table.get("switches", [])), multi_conn,
                 _text(here, "note", table["note"]) if "note" in table else "")


def _load_quirk_meanings(where: _Where, tables: Any,
                         features: Mapping[str, Feature]) -> dict[str, QuirkMeaning]:
    if not isinstance(tables, dict):
        raise where.error("quirk must hold one [quirk.ID] table per quirk")
    meanings: dict[str, QuirkMeaning] = {}
    for quirk_id, table in tables.items():
        here = where.at(f"[quirk.{quirk_id}]")
        if not isinstance(table, dict):
            raise here.error("must be a table")
        _check_keys(here, table, set(), _QUIRK_KEYS)
        hides = _strings(here, "read_only_hides", table.get("read_only_hides", []))
        unknown = [feature for feature in hides if feature not in features]
        if unknown:
            raise here.error(f"read_only_hides: unknown feature {unknown[0]!r}")
        unjudgeable = None
        if "unjudgeable" in table:
            raw = table["unjudgeable"]
            at = where.at(f"[quirk.{quirk_id}.unjudgeable]")
            if not isinstance(raw, dict):
                raise at.error("must be a table")
            _check_keys(at, raw, {"clients", "when", "why"})
            unjudgeable = Unjudgeable(_strings(at, "clients", raw["clients"]),
                                      _text(at, "when", raw["when"]), _text(at, "why", raw["why"]))
        meanings[quirk_id] = QuirkMeaning(
            quirk_id,
            _text(here, "profile_quirk", table["profile_quirk"])
            if "profile_quirk" in table else None,
            _strings(here, "switches_off", table.get("switches_off", [])), hides, unjudgeable,
            _text(here, "note", table["note"]) if "note" in table else "")
    return meanings


def _load_versions(where: _Where, document: Mapping[str, Any]) -> list[VersionInfo]:
    versions: list[VersionInfo] = []
    for number, table in enumerate(_table_list(where, document, "version"), start=1):
        here = where.at(f"[[version]] #{number}")
        _check_keys(here, table, {"version"}, {"packaged", "reports"})
        version = _version(here, "version", table["version"])
        here = where.at(f"[[version]] {version}")
        packaged = table.get("packaged", [])
        if not isinstance(packaged, list):
            raise here.error('packaged must be a list: [{suite = "bookworm", package = "..."}]')
        packages: list[Packaging] = []
        for item in packaged:
            if not isinstance(item, dict):
                raise here.error(f"packaged: {item!r} is not a {{suite, package}} table")
            _check_keys(here.at(f"[[version]] {version}: packaged"), item, {"suite", "package"})
            packages.append(Packaging(_text(here, "suite", item["suite"]),
                                      _text(here, "package", item["package"])))
        reports = _version(here, "reports", table["reports"]) if "reports" in table else None
        if versions and _key(version) <= _key(versions[-1].version):
            raise here.error(f"versions must be listed in increasing order "
                             f"({version} comes after {versions[-1].version})")
        versions.append(VersionInfo(version, tuple(packages), reports))
    if not versions:
        raise where.error("no [[version]] tables: list at least one version")
    return versions


def _check_range(here: _Where, since: str | None, until: str | None) -> None:
    if since is not None and until is not None and _key(until) <= _key(since):
        raise here.error(f"until {until} must be later than since {since}")


def _overlaps(a_since: str | None, a_until: str | None,
              b_since: str | None, b_until: str | None) -> bool:
    low = max(_key(a_since or "0"), _key(b_since or "0"))
    ends = [_key(u) for u in (a_until, b_until) if u is not None]
    return not ends or low < min(ends)


def _load_claims(where: _Where, document: Mapping[str, Any],
                 features: Mapping[str, Feature]) -> tuple[Claim, ...]:
    claims: list[Claim] = []
    for role in ROLES:
        for number, table in enumerate(_table_list(where, document, role), start=1):
            here = where.at(f"[[{role}]] #{number}")
            _check_keys(here, table, {"feature", "since", "source"}, {"until", "upstream_since"})
            feature = _text(here, "feature", table["feature"])
            here = where.at(f'[[{role}]] #{number} (feature "{feature}")')
            if feature not in features:
                raise here.error("unknown feature id (define it in matrix/features.toml)")
            if role not in features[feature].roles:
                raise here.error(f"feature {feature!r} has no {role} role in matrix/features.toml")
            since = _version(here, "since", table["since"])
            until = _version(here, "until", table["until"]) if "until" in table else None
            _check_range(here, since, until)
            upstream = (_version(here, "upstream_since", table["upstream_since"])
                        if "upstream_since" in table else None)
            claim = Claim(feature, since, until, _text(here, "source", table["source"]), role,
                          upstream)
            for other in claims:
                if (other.role == role and other.feature == feature
                        and _overlaps(other.since, other.until, since, until)):
                    raise here.error(f"overlaps an earlier {role} claim of the same feature "
                                     f"(since {other.since})")
            claims.append(claim)
    return tuple(claims)


def _load_quirks(where: _Where, document: Mapping[str, Any]) -> tuple[Quirk, ...]:
    quirks: list[Quirk] = []
    for number, table in enumerate(_table_list(where, document, "quirk"), start=1):
        here = where.at(f"[[quirk]] #{number}")
        _check_keys(here, table, {"id", "role", "description", "source"}, {"since", "until"})
        quirk_id = _text(here, "id", table["id"])
        here = where.at(f'[[quirk]] #{number} (id "{quirk_id}")')
        if table["role"] not in ROLES:
            raise here.error(f"role must be one of {list(ROLES)}, not {table['role']!r}")
        since = _version(here, "since", table["since"]) if "since" in table else None
        until = _version(here, "until", table["until"]) if "until" in table else None
        _check_range(here, since, until)
        for other in quirks:
            if other.id == quirk_id and _overlaps(other.since, other.until, since, until):
                raise here.error("overlaps an earlier quirk with the same id "
                                 "(the same id may only repeat for disjoint versions)")
        quirks.append(Quirk(quirk_id, table["role"], _text(here, "description",
                                                            table["description"]),
                            _text(here, "source", table["source"]), since, until))
    return tuple(quirks)


def _load_program(path: Path, features: Mapping[str, Feature]) -> ProgramData:
    where = _Where(path)
    document = _read_toml(path)
    _check_keys(where, document, {"program", "description", "version"},
                {"server", "client", "quirk"})
    name = _text(where, "program", document["program"])
    if name != path.stem:
        raise where.error(f'program "{name}" must match the file name ({path.stem}.toml)')
    versions = _load_versions(where, document)
    claims = _load_claims(where, document, features)
    return ProgramData(name, _text(where, "description", document["description"]), versions,
                       claims, _load_quirks(where, document), path)


def load_peerdata(root: Path = DEFAULT_ROOT) -> PeerData:
    """Read and validate ``root/features.toml`` and ``root/peers/*.toml``."""
    root = Path(root)
    features, quirk_meanings = _load_features(root / "features.toml")
    peer_files = sorted((root / "peers").glob("*.toml"))
    if not peer_files:
        raise _Where(root / "peers").error("no PROGRAM.toml files")
    programs: dict[str, ProgramData] = {}
    for path in peer_files:
        program = _load_program(path, features)
        programs[program.name] = program
    return PeerData(features, programs, quirk_meanings)


@lru_cache(maxsize=1)
def default_peerdata() -> PeerData:
    """The repository's ``matrix/`` data, loaded once per process."""
    return load_peerdata(DEFAULT_ROOT)


__all__ = [
    "DEFAULT_ROOT",
    "ROLES",
    "Claim",
    "Feature",
    "Grant",
    "Packaging",
    "PeerData",
    "PeerDataError",
    "ProgramData",
    "Quirk",
    "QuirkMeaning",
    "Role",
    "Unjudgeable",
    "VersionInfo",
    "default_peerdata",
    "load_peerdata",
    "parse_version",
    "version_matches",
]
