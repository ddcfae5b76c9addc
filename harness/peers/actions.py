"""How real client programs perform actions: ``matrix/client-actions.toml``, the one place.

The data says, per program and action, the command line (a template with
``{placeholders}``) and the output format; this module loads and checks it
(:func:`load_client_actions`), fills templates in (:func:`render`, with the
values of an :class:`~harness.peers.Endpoint`: :func:`action_values`) and
performs an action through a provider (:func:`perform_action`), whose output
is read back into an :class:`ActionOutput` by the reader registered for its
format (each program's formats are read in its driver module).

Both users go through :func:`perform_action`: a :class:`~harness.peers.ClientPeer`
(``perform``, and its ``read``/``write``/``map``... built on it) and the
client-role runner (``harness.client_role``), which adds its checks of the
server's side around each run.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.errors import UserError
from harness.paths import CLIENT_ACTIONS_FILE
from harness.process import PeerError
from harness.protocol import constants as c

from ._actions import OUTPUT_READERS, ActionOutput

if TYPE_CHECKING:
    from ._base import Endpoint
    from ._provider import Provider

ACTIONS_FILE = CLIENT_ACTIONS_FILE

ACTIONS = ("info", "size", "list", "read", "write", "zero", "fast-zero", "trim", "flush",
           "cache", "map", "copy-in", "copy-out")
"""Every action a client may perform; a scenario's client steps name those its schema lists
(``size`` is the drivers' only: the size as the program tells it once connected)."""

_PLACEHOLDER = re.compile(r"\{([a-z_]+)\}")
PLACEHOLDERS = frozenset({
    "uri", "uri_server", "host", "port", "socket", "export", "server_opts", "tls_dir",
    "offset", "length", "end", "size", "context", "in", "out", "workdir", "python",
    "uri_repr", "uri_server_repr", "in_repr", "out_repr", "context_repr",
})
"""The placeholders a command line may use (described at the top of the table)."""

_PROGRAM_KEYS = ("description", "uri_tls")
"""Keys of a program's table that are not actions."""

DERIVED_CAPABILITIES = {"read": "copy-out", "size": "info"}
"""Capability -> the action that gives it when the program has no action of that name: a
whole-export copy holds every range; every ``info`` format tells the size."""


class ClientActionsError(UserError, ValueError):
    """``matrix/client-actions.toml`` is malformed; the message says where."""


class ActionUnavailable(PeerError):
    """The program has no form of the action (for that context, or for TLS)."""


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
        """Whether this form maps ``context`` (a prefix ending in ``:`` covers a family)."""
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

    def action_for(self, capability: str) -> str | None:
        """The action that gives ``capability`` (itself, or what
        :data:`DERIVED_CAPABILITIES` derives it from); None when none does."""
        if capability in self.actions:
            return capability
        source = DERIVED_CAPABILITIES.get(capability)
        return source if source in self.actions else None

    def capabilities(self) -> frozenset[str]:
        """Its actions, ``map-contexts`` when a map form takes any context, and what
        :data:`DERIVED_CAPABILITIES` derives from them."""
        found = set(self.actions)
        if any(form.contexts is None for form in self.actions.get("map", ())):
            found.add("map-contexts")
        found |= {wanted for wanted, source in DERIVED_CAPABILITIES.items() if source in found}
        return frozenset(found)


def _strings(where: str, key: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise ClientActionsError(f"{where}: {key} must be a non-empty list of strings")
    for word in value:
        for name in _PLACEHOLDER.findall(word):
            if name not in PLACEHOLDERS:
                raise ClientActionsError(f"{where}: {key} uses unknown placeholder {{{name}}} "
                                         f"(known: {', '.join(sorted(PLACEHOLDERS))})")
    return tuple(value)


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


def _form(here: str, form: dict[str, Any]) -> ActionForm:
    unknown = set(form) - {"argv", "argv_tls", "output", "contexts", "since", "tls_since"}
    if unknown:
        raise ClientActionsError(f"{here}: unknown key(s) {sorted(unknown)}")
    if form.get("output") not in OUTPUT_READERS:
        raise ClientActionsError(f"{here}: output must be one of "
                                 f"{', '.join(sorted(OUTPUT_READERS))}")
    return ActionForm(
        argv=_strings(here, "argv", form.get("argv")),
        output=form["output"],
        argv_tls=_strings(here, "argv_tls", form["argv_tls"]) if "argv_tls" in form else None,
        contexts=_strings(here, "contexts", form["contexts"]) if "contexts" in form else None,
        since=_release_text(here, "since", form.get("since")),
        tls_since=_release_text(here, "tls_since", form.get("tls_since")),
    )


def load_client_actions(path: Path = ACTIONS_FILE) -> dict[str, ClientProgram]:
    """Read and check the client-action table (the drivers' output readers must be loaded:
    importing :mod:`harness.peers` loads them)."""
    path = Path(path)
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
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
            actions[key] = tuple(_form(f"{where}: {key} #{number}", form)
                                 for number, form in enumerate(value, start=1))
        programs[name] = ClientProgram(name, str(table.get("description", "")),
                                       bool(table.get("uri_tls", False)), actions)
    return programs


@cache
def default_client_actions() -> dict[str, ClientProgram]:
    """The repository's table, loaded once."""
    return load_client_actions()


def client_program(name: str) -> ClientProgram:
    """The repository's table's program ``name``; a program without actions when absent."""
    return default_client_actions().get(name) or ClientProgram(name, "", False)


def render(argv: tuple[str, ...], values: Mapping[str, object]) -> list[str]:
    """Fill ``{placeholders}`` in; other braces (Python code in nbdsh -c) stay as they are."""
    def fill(match: re.Match[str]) -> str:
        key = match.group(1)
        if key not in values:
            return match.group(0)
        return str(values[key])

    return [_PLACEHOLDER.sub(fill, word) for word in argv]


def _server_options(endpoint: Endpoint) -> str:
    """qemu's ``server.type=...`` image options for the endpoint's address (commas in a
    socket path doubled; over a unix socket with TLS, the host name the test PKI names)."""
    address = endpoint.address
    if address.kind == "unix":
        options = f"server.type=unix,server.path={address.path.replace(',', ',,')}"
        return options + (",tls-hostname=localhost" if endpoint.tls else "")
    return f"server.type=inet,server.host={address.host},server.port={address.port}"


def action_values(endpoint: Endpoint, *, workdir: Path, data_in: Path, data_out: Path,
                  offset: int = 0, length: int = 0, context: str = c.BASE_ALLOCATION,
                  size: int | None = None) -> dict[str, object]:
    """The value of every placeholder for an action on ``endpoint`` (``size``, the export's
    size, only when known)."""
    address = endpoint.address
    uri = endpoint.uri()
    server_uri = type(endpoint)(address, "", endpoint.tls_dir).uri()
    values: dict[str, object] = {
        "uri": uri, "uri_server": server_uri, "host": address.host, "port": address.port,
        "socket": address.path, "export": endpoint.export,
        "server_opts": _server_options(endpoint), "tls_dir": str(endpoint.tls_dir or ""),
        "offset": offset, "length": length, "end": offset + length, "context": context,
        "in": str(data_in), "out": str(data_out), "workdir": str(workdir),
        "python": sys.executable, "uri_repr": repr(uri), "uri_server_repr": repr(server_uri),
        "in_repr": repr(str(data_in)), "out_repr": repr(str(data_out)),
        "context_repr": repr(context),
    }
    if size is not None:
        values["size"] = size
    return values


@dataclass
class ActionRun:
    """One performed action: its command line, how the program ended, and its output."""

    program: str
    action: str
    argv: list[str]
    completed: subprocess.CompletedProcess
    output_format: str
    data_out: Path

    @property
    def failed(self) -> bool:
        return self.completed.returncode != 0

    def failure(self) -> str:
        """``exit N: the tail of its stderr (or stdout)``."""
        tail = (str(self.completed.stderr) or str(self.completed.stdout)).strip()[-300:]
        return f"exit {self.completed.returncode}: {tail}"

    def output(self) -> ActionOutput:
        """What the output says, read by its format's reader (ValueError, KeyError or
        TypeError when it is not that format)."""
        return OUTPUT_READERS[self.output_format](str(self.completed.stdout), self.data_out)


def perform_action(
    program: ClientProgram,
    action: str,
    endpoint: Endpoint,
    provider: Provider,
    *,
    workdir: Path,
    timeout: float,
    log_path: Path | None = None,
    offset: int = 0,
    length: int = 0,
    context: str | None = None,
    size: int | None = None,
    data: bytes | None = None,
    label: str | None = None,
    adapt: Callable[[list[str]], list[str]] | None = None,
) -> ActionRun:
    """Run ``program``'s form of ``action`` on ``endpoint`` through ``provider``.

    The form is the first whose contexts fit ``context`` (for ``map``), its ``argv_tls``
    when the endpoint needs TLS and the program takes no ``nbds://`` URI. ``data`` goes
    into the ``{in}`` file, ``{in}`` and ``{out}`` are ``workdir/LABEL.in`` and ``.out``
    (``workdir``, the socket's and the PKI's directories are visible to the program);
    ``adapt`` rewrites the rendered command (a driver that runs another program's forms).
    A non-zero exit is returned, not raised; :class:`ActionUnavailable` when there is no
    form, :class:`PeerError` when the program does not run or times out.
    """
    context = context or c.BASE_ALLOCATION
    form = program.form(action, context if action == "map" else None)
    if form is None:
        what = f"{action} {context}" if action == "map" else action
        raise ActionUnavailable(f"{program.name} cannot {what} (no form in "
                                "matrix/client-actions.toml)")
    template = form.argv
    if endpoint.tls and not program.uri_tls:
        if form.argv_tls is None:
            raise ActionUnavailable(f"{program.name} {action}: no argv_tls in "
                                    "matrix/client-actions.toml, and the program takes no "
                                    "nbds:// URIs")
        template = form.argv_tls
    label = label or action
    workdir = Path(workdir)
    data_in, data_out = workdir / f"{label}.in", workdir / f"{label}.out"
    if data is not None:
        data_in.write_bytes(data)
    argv = render(template, action_values(endpoint, workdir=workdir, data_in=data_in,
                                          data_out=data_out, offset=offset, length=length,
                                          context=context, size=size))
    if adapt is not None:
        argv = adapt(argv)
    completed = provider.run(argv, timeout=timeout, binds=[workdir, *endpoint.binds()],
                             cwd=workdir, log_path=log_path, check=False)
    return ActionRun(program.name, action, argv, completed, form.output, data_out)


__all__ = [
    "ACTIONS",
    "ACTIONS_FILE",
    "DERIVED_CAPABILITIES",
    "OUTPUT_READERS",
    "PLACEHOLDERS",
    "ActionForm",
    "ActionOutput",
    "ActionRun",
    "ActionUnavailable",
    "ClientActionsError",
    "ClientProgram",
    "action_values",
    "client_program",
    "default_client_actions",
    "load_client_actions",
    "perform_action",
    "render",
]
