"""Load scenario files: YAML with line numbers, the schema, then the cross-checks.

:func:`load_scenario` reads one file and returns a :class:`~.model.Scenario`,
or raises :class:`ScenarioError` with ``file:line: what is wrong``.
:func:`load_library` loads every ``*.yaml`` under ``scenarios/`` (one scenario
per file, grouped in folders) and also checks that names are unique.

Beyond the schema (:mod:`.schema`), a scenario must:

- be named like its file, and have steps for each role it lists (and only those);
- name only known feature ids (``matrix/features.toml``) that apply to the side
  that requires them, and say what happens when one is missing (``fallback``);
- cite spec sections that exist (headings of ``docs/spec/proto-extended-headers.md``,
  or ``qemu-nbd.rst: HEADING``);
- describe an export the servers can build (aligned data, valid block sizes);
- list in ``requires.server`` every feature its steps need (a ``trim`` step needs
  ``trim``, a ``base:allocation`` context needs ``base-allocation``...);
- open a connection (``connect: {as: NAME}``) before a step uses it (``on: NAME``).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterator, Mapping
from functools import cache
from pathlib import Path
from typing import Any

from harness.paths import EXTENDED_SPEC_FILE, SCENARIOS_DIR, shown
from harness.peers.export import DEFAULT_CLUSTER_SIZE as CLUSTER
from harness.peers.export import BitmapSpec, DataRange, ExportSpec, ExportSpecError, Layer
from harness.peers.reference import reference_config
from harness.protocol import constants as c
from reference_server.config import ConfigError

from ._yaml import Lines, Path_, ScenarioError, read_document, show_path
from .features import known_features, step_needs
from .model import (
    DEFAULT_CONNECTION,
    DEFAULT_EXPORT_SIZE,
    ExportRequirements,
    Fallback,
    Scenario,
    Step,
    default_image_format,
)
from .schema import validate

LIBRARY = SCENARIOS_DIR
"""The scenario library of this repository."""
SPEC_FILE = EXTENDED_SPEC_FILE

QEMU_DOC = "qemu-nbd.rst"
QEMU_HEADINGS = ("QEMU NBD protocol support", "Metadata namespaces", "qemu namespace",
                 "Features by version")
"""Headings of qemu's docs/interop/nbd.rst (docs/spec/qemu-nbd.rst), cited as
``qemu-nbd.rst: HEADING``."""

GROUPS = ("handshake", "options", "commands", "contexts", "tls", "structured", "extended",
          "negative", "qemu-features", "client")
"""The folders of the library, by subject."""

_HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*$")


@cache
def spec_headings() -> frozenset[str]:
    """Every heading a scenario may cite (backticks dropped)."""
    headings = set()
    for line in SPEC_FILE.read_text(encoding="utf-8").splitlines():
        match = _HEADING.match(line)
        if match:
            headings.add(match.group(1).replace("`", ""))
    headings |= {f"{QEMU_DOC}: {heading}" for heading in QEMU_HEADINGS}
    return frozenset(headings)


# --- building the model ------------------------------------------------------------------


def _ranges(items: list[Mapping[str, Any]] | None) -> tuple[DataRange, ...]:
    return tuple(DataRange(r["offset"], r["length"], r.get("seed", 1)) for r in items or ())


def _check_ranges(raw: Mapping[str, Any], lines: Lines) -> None:
    """Every data range inside the export and aligned, each error at its own line."""
    size = raw.get("size", DEFAULT_EXPORT_SIZE)
    places: list[tuple[Path_, Any]] = []
    for key in ("data", "writes_after_bitmaps"):
        places += [(("export", key, i), item) for i, item in enumerate(raw.get(key, []))]
    for j, layer in enumerate(raw.get("layers", [])):
        places += [(("export", "layers", j, i), item) for i, item in enumerate(layer)]
    for where, item in places:
        offset, length = item["offset"], item["length"]
        if length <= 0 or offset + length > size:
            raise lines.error(where, f"{show_path(where)}: {offset}+{length} is not inside the "
                                     f"{size}-byte export")
        if offset % CLUSTER or length % CLUSTER:
            raise lines.error(where, f"{show_path(where)}: {offset}+{length} is not aligned to "
                                     f"{CLUSTER // 1024} KiB (every server must report the same "
                                     "extents)")


def _export(document: Mapping[str, Any], lines: Lines) -> ExportRequirements:
    raw = document.get("export") or {}
    _check_ranges(raw, lines)
    path: Path_ = ("export",)
    backend = raw.get("backend", "memory")
    if "data" in raw and "layers" in raw:
        raise lines.error((*path, "data"), "export: give data (one layer) or layers, not both")
    if "data" in raw:
        if backend != "memory":
            raise lines.error((*path, "data"), "export.data is for backend memory; "
                                               "a layers export lists layers")
        layers = (_ranges(raw["data"]),)
    else:
        layers = tuple(_ranges(layer) for layer in raw.get("layers", []))
    if backend == "memory" and len(layers) > 1:
        raise lines.error((*path, "layers"), "a memory export has one layer; use backend: layers "
                                             "for a backing chain")
    if backend == "layers" and not layers:
        raise lines.error(path, "backend: layers needs layers: [[...base ranges], [...top]]")
    bitmaps = []
    for item in raw.get("bitmaps", []):
        if isinstance(item, str):
            bitmaps.append(BitmapSpec(item))
        else:
            bitmaps.append(BitmapSpec(item["name"], item.get("granularity", 64 * 1024)))
    try:
        export = ExportRequirements(
            spec=ExportSpec(
                size=raw.get("size", DEFAULT_EXPORT_SIZE),
                name=raw.get("name", "disk"),
                image_format=raw.get("format") or default_image_format(backend, bool(bitmaps)),
                layers=tuple(Layer(ranges) for ranges in layers),
                bitmaps=tuple(bitmaps),
                writes_after_bitmaps=_ranges(raw.get("writes_after_bitmaps")),
                read_only=raw.get("read_only", False),
                description=raw.get("description", ""),
                min_block_size=raw.get("min_block_size"),
                preferred_block_size=raw.get("preferred_block_size"),
                max_payload_size=raw.get("max_payload_size"),
                block_size_required=raw.get("block_size_required", False),
                multi_conn=raw.get("multi_conn", True),
                init_state=raw.get("init_state", False),
            ),
            backend=backend,
            tls=raw.get("tls", "off"),
            handshake=raw.get("handshake", "fixed-newstyle"),
            list_exports=raw.get("list_exports", True),
            extra_exports=tuple(raw.get("extra_exports", [])),
        )
    except ExportSpecError as exc:
        raise lines.error(path, f"export: {exc}") from None
    _check_export(export, lines)
    return export


def _check_export(export: ExportRequirements, lines: Lines) -> None:
    path: Path_ = ("export",)
    spec = export.spec
    if export.tls != "off" and export.handshake != "fixed-newstyle":
        raise lines.error((*path, "tls"), "export: TLS needs handshake fixed-newstyle "
                                          "(spec: TLS support)")
    if spec.name in export.extra_exports:
        raise lines.error((*path, "extra_exports"), f"export: {spec.name!r} is listed in "
                                                    "extra_exports too")
    # The reference server's own checks of sizes and block sizes, on the configuration it
    # will be hosted with.
    try:
        reference_config(spec, Path(), storage="memory")
    except ConfigError as exc:
        raise lines.error(path, f"export: {exc}") from None


def _steps(raw: list[Mapping[str, Any]] | None, path: Path_, lines: Lines) -> tuple[Step, ...]:
    steps = []
    for index, item in enumerate(raw or []):
        action = next(key for key in item if key not in ("expect", "on", "note"))
        args = item[action] or {}
        steps.append(Step(
            action=action,
            args=args,
            expect=item.get("expect"),
            on=args.get("as", DEFAULT_CONNECTION) if action == "connect" else
            item.get("on", DEFAULT_CONNECTION),
            note=item.get("note", ""),
            line=lines.line((*path, index)),
        ))
    return tuple(steps)


# --- the cross-checks ----------------------------------------------------------------------


def _check_features(document: Mapping[str, Any], lines: Lines) -> None:
    known = known_features()
    for role in ("server", "client"):
        for index, feature in enumerate((document.get("requires") or {}).get(role, [])):
            where: Path_ = ("requires", role, index)
            if feature not in known:
                close = [f for f in known if f.startswith(feature[:4])][:3]
                hint = f" (did you mean {', '.join(close)}?)" if close else ""
                raise lines.error(where, f"unknown feature id {feature!r}{hint}; ids are in "
                                         "matrix/features.toml")
            if role not in known[feature].roles:
                raise lines.error(where, f"feature {feature!r} has no {role} role in "
                                         "matrix/features.toml")


def _check_spec(document: Mapping[str, Any], lines: Lines) -> None:
    headings = spec_headings()
    for index, section in enumerate(document["spec"]):
        if section.replace("`", "") not in headings:
            raise lines.error(("spec", index), f"{section!r} is not a section heading of "
                                               f"proto-extended-headers.md (or "
                                               f"'{QEMU_DOC}: HEADING')")


def _check_roles(document: Mapping[str, Any], lines: Lines) -> None:
    roles = document["roles"]
    for role, key in (("server", "steps"), ("client", "client_steps")):
        if role in roles and key not in document:
            raise lines.error(("roles",), f"roles lists {role} but there are no {key}")
        if key in document and role not in roles:
            raise lines.error((key,), f"{key} given but roles does not list {role}")
    requires = document.get("requires") or {}
    fallback = document.get("fallback")
    if (requires.get("server") or requires.get("client")) and fallback is None:
        raise lines.error(("requires",), "requires features, so say what happens without "
                                         "them: fallback: {outcome: unsupported} or "
                                         "{outcome: expected-fallback, expect: [...]}")
    if fallback is not None:
        if not (requires.get("server") or requires.get("client")):
            raise lines.error(("fallback",), "a fallback without requires can never apply")
        if fallback.get("expect") and "server" not in roles:
            raise lines.error(("fallback", "expect"), "fallback.expect is for the server role")
        if fallback.get("client_expect") and "client" not in roles:
            raise lines.error(("fallback", "client_expect"),
                              "fallback.client_expect is for the client role")
        if fallback["outcome"] == "expected-fallback" and not (
            fallback.get("expect") or fallback.get("client_expect")
        ):
            raise lines.error(("fallback",), "an expected-fallback says what still must hold: "
                                             "give expect (server role) or client_expect")


def _check_server_steps(steps: tuple[Step, ...], key: Path_, requires: frozenset[str],
                        export: ExportRequirements, lines: Lines,
                        opened: dict[str, list[str]] | None = None) -> None:
    """Connections opened before use; needed features listed; export extents computable."""
    opened = {} if opened is None else opened
    for index, step in enumerate(steps):
        where: Path_ = (*key, index)
        if step.action == "connect":
            opened[step.on] = list(step.args.get("contexts") or [])
        elif step.action not in ("raw_handshake",) and step.on not in opened:
            raise lines.error(where, f"{show_path(where)}: {step.action!r} uses connection "
                                     f"{step.on!r}, which no earlier step opens (add "
                                     f"- connect: {{as: {step.on}}})")
        needs = step_needs(step.action, step.args, opened.get(step.on, ()),
                                         step.expect)
        lacking = sorted(needs - requires)
        if lacking:
            raise lines.error(where, f"{show_path(where)}: {step.action!r} needs the server "
                                     f"feature(s) {', '.join(lacking)}: list them in "
                                     "requires.server")
        _check_extents_source(step, export, lines, where)


def _check_client_steps(steps: tuple[Step, ...], key: Path_, requires: frozenset[str],
                        export: ExportRequirements, lines: Lines) -> None:
    for index, step in enumerate(steps):
        where: Path_ = (*key, index)
        lacking = sorted(step_needs(step.action, step.args) - requires)
        if lacking:
            raise lines.error(where, f"{show_path(where)}: this client action needs the server "
                                     f"feature(s) {', '.join(lacking)}: list them in "
                                     "requires.server")
        if step.action == "client_action":
            action = step.args["action"]
            if action in ("read", "write", "zero", "fast-zero", "trim", "cache") and (
                "offset" not in step.args or "length" not in step.args
            ):
                raise lines.error(where, f"{show_path(where)}: client action {action!r} needs "
                                         "offset and length")
            if action == "map" and "context" not in step.args:
                raise lines.error(where, f"{show_path(where)}: client action 'map' needs a "
                                         "context")
        _check_extents_source(step, export, lines, where)


def _check_extents_source(step: Step, export: ExportRequirements, lines: Lines,
                          where: Path_) -> None:
    if not step.expect or step.expect.get("extents") != "export":
        return
    context = step.args.get("context", "")
    bitmaps = [b.name for b in export.spec.bitmaps]
    if context in (c.BASE_ALLOCATION, c.QEMU_ALLOCATION_DEPTH):
        return
    if context.startswith(c.QEMU_DIRTY_BITMAP_PREFIX):
        if context[len(c.QEMU_DIRTY_BITMAP_PREFIX):] in bitmaps:
            return
        raise lines.error(where, f"{show_path(where)}: extents: export for {context!r}, but "
                                 f"the export has no such bitmap (bitmaps: {bitmaps})")
    raise lines.error(where, f"{show_path(where)}: extents: export cannot be computed for "
                             f"context {context!r}")


def scenario_from_document(document: Any, lines: Lines, *, path: Path | None = None,
                           group: str = "") -> Scenario:
    """Validate a parsed document and build the :class:`Scenario`."""
    document = validate(document, lines)
    _check_roles(document, lines)
    _check_features(document, lines)
    _check_spec(document, lines)
    if path is not None and document["name"] != path.stem:
        raise lines.error(("name",), f"name {document['name']!r} must match the file name "
                                     f"({path.stem}.yaml)")
    export = _export(document, lines)
    requires = document.get("requires") or {}
    requires_server = frozenset(requires.get("server", []))
    requires_client = frozenset(requires.get("client", []))
    steps = _steps(document.get("steps"), ("steps",), lines)
    client_steps = _steps(document.get("client_steps"), ("client_steps",), lines)
    fallback = None
    if document.get("fallback") is not None:
        raw = document["fallback"]
        fallback = Fallback(
            outcome=raw["outcome"],
            why=raw.get("why", ""),
            expect=_steps(raw.get("expect"), ("fallback", "expect"), lines),
            client_expect=_steps(raw.get("client_expect"), ("fallback", "client_expect"),
                                 lines),
        )
    opened: dict[str, list[str]] = {}
    _check_server_steps(steps, ("steps",), requires_server, export, lines, opened)
    _check_client_steps(client_steps, ("client_steps",), requires_server, export, lines)
    if fallback is not None:
        # Fallback checks run on the connections the steps left open; they may not
        # need anything the fallback is about.
        _check_server_steps(fallback.expect, ("fallback", "expect"), requires_server, export,
                            lines, dict(opened))
        _check_client_steps(fallback.client_expect, ("fallback", "client_expect"),
                            requires_server, export, lines)
    return Scenario(
        name=document["name"],
        description=document["description"],
        spec=tuple(document["spec"]),
        roles=tuple(document["roles"]),
        export=export,
        requires_server=requires_server,
        requires_client=requires_client,
        fallback=fallback,
        steps=steps,
        client_steps=client_steps,
        tags=tuple(document.get("tags", [])),
        group=group,
        path=path,
    )


def load_scenario(path: Path | str, *, root: Path | None = None) -> Scenario:
    """Load and check one scenario file; raise :class:`ScenarioError` (``file:line: ...``).

    ``root`` is the library folder the file's group is taken from (default:
    the file's parent folder name).
    """
    path = Path(path)
    document, lines = read_document(path, shown(path))
    if root is not None:
        try:
            relative = path.resolve().relative_to(Path(root).resolve())
            group = "/".join(relative.parts[:-1])
        except ValueError:
            group = path.parent.name
    else:
        group = path.parent.name
    return scenario_from_document(document, lines, path=path, group=group)


def scenario_files(root: Path = LIBRARY) -> Iterator[Path]:
    """Every scenario file under ``root``, sorted."""
    yield from sorted(Path(root).rglob("*.yaml"))


def load_library(root: Path = LIBRARY) -> list[Scenario]:
    """Every scenario under ``root``; raise at the first bad file or duplicate name."""
    scenarios: list[Scenario] = []
    seen: dict[str, Path] = {}
    for path in scenario_files(root):
        scenario = load_scenario(path, root=root)
        if scenario.name in seen:
            raise ScenarioError(f"{shown(path)}:1: scenario name {scenario.name!r} is also "
                                f"used by {shown(seen[scenario.name])}")
        seen[scenario.name] = path
        scenarios.append(scenario)
    return scenarios


def validate_library(root: Path = LIBRARY) -> tuple[list[Scenario], list[ScenarioError]]:
    """Load every file, collecting every error instead of stopping at the first."""
    scenarios: list[Scenario] = []
    errors: list[ScenarioError] = []
    seen: dict[str, Path] = {}
    for path in scenario_files(root):
        try:
            scenario = load_scenario(path, root=root)
        except ScenarioError as exc:
            errors.append(exc)
            continue
        if scenario.name in seen:
            errors.append(ScenarioError(f"{shown(path)}:1: scenario name {scenario.name!r} "
                                        f"is also used by {shown(seen[scenario.name])}"))
            continue
        seen[scenario.name] = path
        scenarios.append(scenario)
    return scenarios, errors


def find_scenario(name: str, root: Path = LIBRARY) -> Scenario:
    """The scenario called ``name`` (or ``group/name``, or a path to a file)."""
    candidate = Path(name)
    if candidate.suffix == ".yaml" and candidate.exists():
        return load_scenario(candidate, root=root)
    wanted = name.split("/")[-1]
    for path in scenario_files(root):
        if path.stem == wanted and (("/" not in name) or path.parent.name == name.split("/")[0]):
            return load_scenario(path, root=root)
    names = [p.stem for p in scenario_files(root)]
    close = difflib.get_close_matches(wanted, names, n=3)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    raise ScenarioError(f"no scenario named {name!r} in {shown(Path(root))}{hint}")


__all__ = [
    "GROUPS",
    "LIBRARY",
    "ScenarioError",
    "find_scenario",
    "load_library",
    "load_scenario",
    "scenario_files",
    "scenario_from_document",
    "spec_headings",
    "validate_library",
]
