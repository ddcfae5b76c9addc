"""How real client programs perform scenario actions: ``matrix/client-actions.toml``.

The data says, per program and action, the command line (a template with
``{placeholders}``) and the output format; this module loads and checks it,
fills templates in (:func:`render`) and reads outputs back into a
:class:`ActionOutput` (:data:`OUTPUT_READERS`, each program's formats read in
its driver module): bytes, extents, a size or export names.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from functools import cache
from pathlib import Path
from typing import Any

from harness.errors import UserError
from harness.paths import CLIENT_ACTIONS_FILE
from harness.peers._actions import OUTPUT_READERS, ActionOutput, output_reader, parse_json

ACTIONS_FILE = CLIENT_ACTIONS_FILE

ACTIONS = ("info", "list", "read", "write", "zero", "fast-zero", "trim", "flush", "cache",
           "map", "copy-in", "copy-out")
"""Every action a client step may name."""

_PLACEHOLDER = re.compile(r"\{([a-z_]+)\}")
PLACEHOLDERS = frozenset({
    "uri", "uri_server", "host", "port", "socket", "export", "server_opts", "tls_dir",
    "offset", "length", "end", "size", "context", "in", "out", "workdir", "python",
    "uri_repr", "uri_server_repr", "in_repr", "out_repr", "context_repr",
})


_PROGRAM_KEYS = ("description", "uri_tls")
"""Keys of a program's table that are not actions."""


class ClientActionsError(UserError, ValueError):
    """``matrix/client-actions.toml`` is malformed; the message says where."""


@dataclass(frozen=True)
class ActionForm:
    """One way a program performs an action."""

    argv: tuple[str, ...]
    output: str
    argv_tls: tuple[str, ...] | None = None
    contexts: tuple[str, ...] | None = None
    since: str | None = None
    """The first release of the program with this form (None: every release)."""
    tls_since: str | None = None
    """The first release whose ``argv_tls`` works (None: every release)."""

    def fits(self, context: str | None) -> bool:
        if self.contexts is None or context is None:
            return True
        return any(context == known or (known.endswith(":") and context.startswith(known))
                   for known in self.contexts)


@dataclass(frozen=True)
class ClientProgram:
    """A client program and the actions it can perform."""

    name: str
    description: str
    uri_tls: bool
    actions: dict[str, tuple[ActionForm, ...]] = field(default_factory=dict)

    def at(self, version: str | None) -> ClientProgram:
        """The program as release ``version`` has it: forms it lacks left out (None: as
        the table has it, the newest release's)."""
        if version is None:
            return self

        def before(first: str | None) -> bool:
            try:
                return first is not None and _release(version) < _release(first)
            except ValueError:
                return False

        actions = {
            action: tuple(replace(form, argv_tls=None) if before(form.tls_since) else form
                          for form in forms if not before(form.since))
            for action, forms in self.actions.items()
        }
        return replace(self, actions={a: f for a, f in actions.items() if f})

    def form(self, action: str, context: str | None = None) -> ActionForm | None:
        """The form of ``action`` that fits ``context`` (a map's context), or None."""
        for form in self.actions.get(action, ()):
            if form.fits(context):
                return form
        return None


def _release(version: str) -> tuple[int, ...]:
    """``2.12.1`` -> ``(2, 12, 1)``; raise ValueError for what is not a version."""
    return tuple(int(part) for part in version.split("+")[0].split("."))


def _release_text(where: str, key: str, value: Any) -> str | None:
    if value is None:
        return None
    try:
        _release(value)
    except (ValueError, AttributeError):
        raise ClientActionsError(f"{where}: {key} must be a release like \"5.0\"") from None
    return value


def _strings(where: str, key: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise ClientActionsError(f"{where}: {key} must be a non-empty list of strings")
    for word in value:
        for name in _PLACEHOLDER.findall(word):
            if name not in PLACEHOLDERS:
                raise ClientActionsError(f"{where}: {key} uses unknown placeholder {{{name}}} "
                                         f"(known: {', '.join(sorted(PLACEHOLDERS))})")
    return tuple(value)


def load_client_actions(path: Path = ACTIONS_FILE) -> dict[str, ClientProgram]:
    """Read and check the client-action table."""
    try:
        document = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ClientActionsError(f"{path}: no such file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ClientActionsError(f"{path}: not valid TOML: {exc}") from None
    programs: dict[str, ClientProgram] = {}
    for name, table in document.items():
        where = f"{path.name}: [{name}]"
        if not isinstance(table, dict):
            raise ClientActionsError(f"{where}: must be a table")
        actions: dict[str, tuple[ActionForm, ...]] = {}
        for key, value in table.items():
            if key in _PROGRAM_KEYS:
                continue
            if key not in ACTIONS:
                raise ClientActionsError(f"{where}: unknown action {key!r} (actions: "
                                         f"{', '.join(ACTIONS)})")
            if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
                raise ClientActionsError(f"{where}: write each form of {key} as [[{name}.{key}]]")
            forms = []
            for number, form in enumerate(value, start=1):
                here = f"{where}: {key} #{number}"
                unknown = set(form) - {"argv", "argv_tls", "output", "contexts", "since",
                                       "tls_since"}
                if unknown:
                    raise ClientActionsError(f"{here}: unknown key(s) {sorted(unknown)}")
                if form.get("output") not in OUTPUT_READERS:
                    raise ClientActionsError(f"{here}: output must be one of "
                                             f"{', '.join(sorted(OUTPUT_READERS))}")
                forms.append(ActionForm(
                    argv=_strings(here, "argv", form.get("argv")),
                    output=form["output"],
                    argv_tls=_strings(here, "argv_tls", form["argv_tls"])
                    if "argv_tls" in form else None,
                    contexts=_strings(here, "contexts", form["contexts"])
                    if "contexts" in form else None,
                    since=_release_text(here, "since", form.get("since")),
                    tls_since=_release_text(here, "tls_since", form.get("tls_since")),
                ))
            actions[key] = tuple(forms)
        programs[name] = ClientProgram(name, str(table.get("description", "")),
                                       bool(table.get("uri_tls", False)), actions)
    return programs


@cache
def default_client_actions() -> dict[str, ClientProgram]:
    """The repository's table, loaded once."""
    return load_client_actions()


def render(argv: tuple[str, ...], values: Mapping[str, object]) -> list[str]:
    """Fill ``{placeholders}`` in; other braces (Python code in nbdsh -c) stay as they are."""
    def fill(match: re.Match[str]) -> str:
        key = match.group(1)
        if key not in values:
            return match.group(0)
        return str(values[key])

    return [_PLACEHOLDER.sub(fill, word) for word in argv]


# --- reading outputs ---------------------------------------------------------------------
# Each program's formats are read in its driver module (harness/peers); the reference
# client's `nbd-harness info --json` is read here.


@output_reader("harness-info-json")
def _harness_info(stdout: str, out: Path) -> ActionOutput:
    return ActionOutput(size=parse_json(stdout)["negotiation"]["export_size"])


@output_reader("harness-list-json")
def _harness_list(stdout: str, out: Path) -> ActionOutput:
    return ActionOutput(exports=[e["name"] for e in parse_json(stdout)["exports"]])


@output_reader("harness-map-json")
def _harness_map(stdout: str, out: Path) -> ActionOutput:
    return ActionOutput(extents=[(e["offset"], e["length"], e["type"])
                                 for e in parse_json(stdout)["map"]["extents"]])


__all__ = [
    "ACTIONS",
    "ACTIONS_FILE",
    "OUTPUT_READERS",
    "ActionForm",
    "ActionOutput",
    "ClientActionsError",
    "ClientProgram",
    "default_client_actions",
    "load_client_actions",
    "render",
]
