"""The reference server's configuration: a TOML file, or exports given on the command line.

A file has one ``[server]`` table, an optional ``[limits]`` table and any
number of ``[[export]]`` tables::

    [server]
    listen = "tcp://127.0.0.1:0"      # or "unix:/path/to.sock", "tcp://[::1]:0"
    tls = "off"                        # "off" | "optional" | "required"
    handshake = "fixed-newstyle"       # | "newstyle" | "oldstyle"

    [limits]                           # resource bounds (docs/server-limits.md)
    max_connections = 1024
    handshake_timeout = 10             # seconds for the whole handshake

    [[export]]
    name = "chain"
    backend = "layers"                 # "memory" | "file" | "layers"
    layers = ["top.raw", "base.raw"]   # top first, relative to this file

Every key is listed in :data:`SERVER_KEYS`, :data:`LIMIT_KEYS` and :data:`EXPORT_KEYS` with its
meaning; an unknown key is an error (typo protection).  Every mistake raises
:class:`ConfigError` with one line naming the file, the table and the key.

The typed values (:class:`ServerConfig`, :class:`ServerLimits`, :class:`ExportConfig`,
:class:`BitmapConfig`) are the configuration: code builds them directly and
checks them with their ``validated()`` (:func:`block_sizes` fills in default
block sizes); :func:`config_from_dict` and :func:`load_config` only parse user
input (a TOML file, the command line) into the same objects, with the same checks.
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from harness.address import Address, AddressError, parse_address
from harness.errors import UserError
from harness.protocol.constants import (
    DEFAULT_MAX_PAYLOAD,
    DEFAULT_MIN_BLOCK,
    DEFAULT_PREFERRED_BLOCK,
    MAX_MIN_BLOCK_SIZE,
    MAX_STRING_LEN,
    QEMU_DIRTY_BITMAP_PREFIX,
    is_power_of_two,
)


class ConfigError(UserError, ValueError):
    """A mistake in the server configuration; the message says where and how to fix it."""


ListenAddress = Address
"""Where the server listens: ``kind`` "tcp" (``host``, ``port``) or "unix" (``path``)."""

TlsMode = Literal["off", "optional", "required"]
ExportTls = Literal["inherit", "required"]
Handshake = Literal["fixed-newstyle", "newstyle", "oldstyle"]
BackendKind = Literal["memory", "file", "layers"]

TLS_MODES: tuple[TlsMode, ...] = ("off", "optional", "required")
"""``off`` = NOTLS, ``optional`` = SELECTIVETLS, ``required`` = FORCEDTLS (spec "TLS support")."""
EXPORT_TLS_MODES: tuple[ExportTls, ...] = ("inherit", "required")
HANDSHAKES: tuple[Handshake, ...] = ("fixed-newstyle", "newstyle", "oldstyle")
BACKENDS: tuple[BackendKind, ...] = ("memory", "file", "layers")

TLS_CA_CERT = "ca-cert.pem"
TLS_SERVER_CERT = "server-cert.pem"
TLS_SERVER_KEY = "server-key.pem"

MAX_EXPORT_SIZE = (1 << 63) - 1
"""Largest export size we accept (qemu's limit; the wire field is 64 bits)."""
MAX_PAYLOAD_LIMIT = 0xFFFFFFFF
"""Largest maximum payload the 32-bit ``NBD_INFO_BLOCK_SIZE`` field can say ("no limit")."""
MIN_BITMAP_GRANULARITY = 512
MAX_BITMAP_GRANULARITY = 1 << 31
"""qemu's bounds on a dirty bitmap's granularity."""
DEFAULT_BITMAP_GRANULARITY = 64 * 1024

SIZE_HINT = "(use e.g. 4096, 64k, 8M, 1G)"


# --- values ------------------------------------------------------------------------------


@dataclass(frozen=True)
class BitmapConfig:
    """A dirty bitmap exported as ``qemu:dirty-bitmap:NAME``."""

    name: str
    granularity: int = DEFAULT_BITMAP_GRANULARITY

    def validated(self) -> BitmapConfig:
        """This bitmap, or :class:`ConfigError` saying what is wrong with it."""
        if not self.name:
            raise ConfigError("bitmaps: every bitmap needs a non-empty name")
        if len((QEMU_DIRTY_BITMAP_PREFIX + self.name).encode()) > MAX_STRING_LEN:
            raise ConfigError(f'bitmap "{self.name[:40]}...": name too long for a context name')
        if not (
            is_power_of_two(self.granularity)
            and MIN_BITMAP_GRANULARITY <= self.granularity <= MAX_BITMAP_GRANULARITY
        ):
            raise ConfigError(f'bitmap "{self.name}": granularity {self.granularity} must be a '
                              "power of two from 512 to 2G")
        return self


def block_sizes(minimum: int | None = None, preferred: int | None = None,
                maximum: int | None = None) -> tuple[int, int, int]:
    """The three block size constraints, each None one at its default.

    The defaults follow the ones given: minimum 1, preferred 4096 (at least the
    minimum), maximum payload 32 MiB (at least the preferred size).  Whether they
    make sense together, :meth:`ExportConfig.validated` says.
    """
    minimum = DEFAULT_MIN_BLOCK if minimum is None else minimum
    if preferred is None:
        preferred = max(DEFAULT_PREFERRED_BLOCK, minimum)
    if maximum is None:
        maximum = max(DEFAULT_MAX_PAYLOAD, preferred)
    return minimum, preferred, maximum


@dataclass(frozen=True)
class ExportConfig:
    """One export, validated, with sizes resolved to bytes and paths made absolute."""

    name: str
    size: int
    backend: BackendKind = "memory"
    path: Path | None = None
    layers: tuple[Path, ...] = ()
    read_only: bool = False
    bitmaps: tuple[BitmapConfig, ...] = ()
    description: str = ""
    min_block_size: int = DEFAULT_MIN_BLOCK
    preferred_block_size: int = DEFAULT_PREFERRED_BLOCK
    max_payload_size: int = DEFAULT_MAX_PAYLOAD
    block_size_configured: bool = False
    """True when the config set any of the three block sizes (else they are the defaults)."""
    block_size_required: bool = False
    multi_conn: bool = True
    tls: ExportTls = "inherit"
    init_state: bool = False
    rotational: bool = False
    fast_zero: bool = True
    allocation_depth: bool = True
    """Offer ``qemu:allocation-depth`` (qemu-nbd offers it only with ``-A``)."""
    flat_image: bool = False
    """The export stands for one raw image file (no backing chain); a qemu profile then
    reports it allocated everywhere, as qemu does (quirk flat-image-depth-one)."""

    def validated(self) -> ExportConfig:
        """This export, or :class:`ConfigError` saying what is wrong with it.

        The checks every export must pass however it was made (a TOML file, the
        command line, the harness hosting a scenario's export): backend and its
        files, size, block size constraints (spec "Size constraints"), bitmaps.
        Messages name the key but not the export (callers add where it is).
        """
        if self.backend not in BACKENDS:
            raise ConfigError(f"backend {_show(self.backend)} is not one of "
                              + ", ".join(_show(choice) for choice in BACKENDS))
        if self.backend == "file" and self.path is None:
            raise ConfigError('backend = "file" needs path = "FILE"')
        if self.backend != "file" and self.path is not None:
            raise ConfigError(f'path is only for backend = "file" (this export has '
                              f'"{self.backend}")')
        if self.backend == "layers":
            if not self.layers:
                raise ConfigError('backend = "layers" needs layers = ["top.raw", "base.raw", ...]')
            if len({layer.resolve() for layer in self.layers}) != len(self.layers):
                raise ConfigError("layers lists the same file twice (each layer is a different "
                                  "file)")
        elif self.layers:
            raise ConfigError(f'layers is only for backend = "layers" (this export has '
                              f'"{self.backend}")')
        if self.size > MAX_EXPORT_SIZE:
            raise ConfigError(f"size {self.size} is larger than the largest export size "
                              "(2^63 - 1)")
        self._check_block_sizes()
        if self.size % self.min_block_size:
            raise ConfigError(
                f"size {self.size} is not a multiple of min_block_size {self.min_block_size} "
                '(the client could not reach the last bytes; spec "Size constraints")'
            )
        names: set[str] = set()
        for bitmap in self.bitmaps:
            bitmap.validated()
            if bitmap.name in names:
                raise ConfigError(f'bitmap "{bitmap.name}" is listed twice')
            names.add(bitmap.name)
        return self

    def _check_block_sizes(self) -> None:
        minimum, preferred = self.min_block_size, self.preferred_block_size
        maximum = self.max_payload_size
        if not is_power_of_two(minimum) or minimum > MAX_MIN_BLOCK_SIZE:
            raise ConfigError(
                f"min_block_size {minimum} must be a power of two from 1 to {MAX_MIN_BLOCK_SIZE}"
            )
        floor = max(minimum, 512)
        if not is_power_of_two(preferred) or preferred < floor:
            raise ConfigError(
                f"preferred_block_size {preferred} must be a power of two of at least {floor} "
                "(at least 512 and min_block_size)"
            )
        if maximum < preferred or maximum > MAX_PAYLOAD_LIMIT:
            raise ConfigError(
                f"max_payload_size {maximum} must be from preferred_block_size ({preferred}) "
                f"to {MAX_PAYLOAD_LIMIT:#x}"
            )
        if maximum % minimum and maximum != MAX_PAYLOAD_LIMIT:
            raise ConfigError(
                f"max_payload_size {maximum} must be a multiple of min_block_size {minimum}"
            )

    @property
    def has_default_block_sizes(self) -> bool:
        """True when the constraints are the spec's defaults (1, 4096, 32 MiB)."""
        return (self.min_block_size, self.preferred_block_size, self.max_payload_size) == (
            DEFAULT_MIN_BLOCK,
            DEFAULT_PREFERRED_BLOCK,
            DEFAULT_MAX_PAYLOAD,
        )


MIN_OPTION_LENGTH = 2 * MAX_STRING_LEN
"""The smallest ``max_option_length``: room for an export name of the spec's maximum
length with a few information requests (NBD_OPT_GO) or queries."""
SPEC_DOS_FLOOR = 1 << 25
"""Section "Size constraints": a payload up to 2^25 bytes "SHOULD NOT be considered a
denial of service attack", so the hard payload limit is never below it."""


@dataclass(frozen=True)
class ServerLimits:
    """Bounds on what clients may make the server hold, per connection and in total.

    Each is a ``[limits]`` key (:data:`LIMIT_KEYS`); docs/server-limits.md says
    what a client sees when it reaches one.
    """

    max_connections: int = 1024
    """Connections served at once; one more is accepted and closed at once."""
    listen_backlog: int = 1024
    """Connections the kernel queues before the server accepts them (a burst)."""
    handshake_timeout: float = 10.0
    """Seconds from accept to the end of negotiation, in total (qemu-nbd's default too)."""
    idle_timeout: float = 3600.0
    """Seconds a connection in transmission may send nothing."""
    reply_timeout: float = 60.0
    """Seconds a reply may wait for the client to read it before the session ends."""
    max_option_length: int = 64 * 1024
    """Bytes of one option's data; longer ones get NBD_REP_ERR_TOO_BIG unread."""
    max_meta_context_queries: int = 1024
    """Queries in one NBD_OPT_LIST/SET_META_CONTEXT; more get NBD_REP_ERR_TOO_BIG."""
    max_request_payload: int = 64 << 20
    """A request payload (or read length) above this ends the session (hard disconnect)."""
    max_inflight_bytes: int = 128 << 20
    """Request and reply data buffered across all connections; above it, large requests
    wait (the server stops reading from their clients) until others finish."""

    def validated(self) -> ServerLimits:
        """These limits, or :class:`ConfigError` naming the key that is out of range."""
        for key in ("max_connections", "listen_backlog", "max_meta_context_queries"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key} {getattr(self, key)} must be at least 1")
        for key in ("handshake_timeout", "idle_timeout", "reply_timeout"):
            if not getattr(self, key) > 0:
                raise ConfigError(f"{key} {getattr(self, key)} must be a positive number of "
                                  "seconds")
        if self.max_option_length < MIN_OPTION_LENGTH:
            raise ConfigError(f"max_option_length {self.max_option_length} must be at least "
                              f"{MIN_OPTION_LENGTH} (an option carries strings of up to "
                              f"{MAX_STRING_LEN} bytes)")
        if not SPEC_DOS_FLOOR <= self.max_request_payload <= MAX_PAYLOAD_LIMIT:
            raise ConfigError(f"max_request_payload {self.max_request_payload} must be from "
                              f"{SPEC_DOS_FLOOR} (32M: the spec says a payload that size "
                              f"SHOULD NOT be taken for a denial of service) to "
                              f"{MAX_PAYLOAD_LIMIT:#x}")
        if self.max_inflight_bytes < self.max_request_payload:
            raise ConfigError(f"max_inflight_bytes {self.max_inflight_bytes} must be at least "
                              f"max_request_payload ({self.max_request_payload}): one request "
                              "must always fit")
        return self


@dataclass(frozen=True)
class ServerConfig:
    """The whole server: where it listens, TLS, handshake style and its exports."""

    listen: ListenAddress = field(default_factory=lambda: Address.tcp("127.0.0.1", 0))
    tls: TlsMode = "off"
    tls_certificates: Path | None = None
    tls_verify_peer: bool = False
    handshake: Handshake = "fixed-newstyle"
    port_file: Path | None = None
    default_export: str = ""
    """Export served for the empty name; "" means the first export."""
    list_exports: bool = True
    limits: ServerLimits = field(default_factory=ServerLimits)
    exports: tuple[ExportConfig, ...] = ()
    source: Path | None = None
    """The file this configuration was read from (None when built in code)."""

    def validated(self) -> ServerConfig:
        """This server, or :class:`ConfigError` saying what is wrong with it.

        Checks what spans the server and its exports (TLS needs fixed newstyle and
        certificates, default export, unique names); each export checks itself
        (:meth:`ExportConfig.validated`).  Messages name the key, not the table.
        """
        duplicate = _duplicate_name(self.exports)
        if duplicate is not None:
            raise ConfigError(duplicate)
        try:
            self.limits.validated()
        except ConfigError as exc:
            raise ConfigError(f"limits: {exc}") from None
        for export in self.exports:
            try:
                export.validated()
            except ConfigError as exc:
                raise ConfigError(f'export "{export.name}": {exc}') from None
        if self.tls != "off":
            if self.handshake != "fixed-newstyle":
                raise ConfigError(
                    f'tls = "{self.tls}" needs handshake = "fixed-newstyle" '
                    f'(spec: TLS requires fixed newstyle negotiation), not "{self.handshake}"'
                )
            _check_certificates(self)
        if self.tls_verify_peer and self.tls == "off":
            raise ConfigError('tls_verify_peer = true needs tls = "optional" or "required"')
        if self.port_file is not None and self.listen.kind != "tcp":
            raise ConfigError("port_file only makes sense with a tcp:// listen address")
        if self.default_export and self.default is None:
            names = ", ".join(f'"{e.name}"' for e in self.exports) or "none"
            raise ConfigError(
                f'default_export "{self.default_export}" is not an export (exports: {names})'
            )
        for export in self.exports:
            if export.tls == "required" and self.tls == "off":
                raise ConfigError(
                    f'export "{export.name}" has tls = "required" but the server has tls = "off"'
                )
        return self

    def export(self, name: str) -> ExportConfig | None:
        """The export a client asking for ``name`` gets: exact name first, then
        for the empty name the default export; None when there is none."""
        for export in self.exports:
            if export.name == name:
                return export
        if name == "":
            return self.default
        return None

    @property
    def default(self) -> ExportConfig | None:
        """The default export (``default_export``, else the first one)."""
        if self.default_export:
            return next((e for e in self.exports if e.name == self.default_export), None)
        return self.exports[0] if self.exports else None


# --- scalar parsers -------------------------------------------------------------------

_SIZE_RE = re.compile(r"^\s*(\d+)\s*(?:([kmgtpe])(?:i?b)?|b)?\s*$", re.IGNORECASE)
_SIZE_SHIFT = {"": 0, "k": 10, "m": 20, "g": 30, "t": 40, "p": 50, "e": 60}


def parse_size(text: int | str) -> int:
    """Bytes for ``512``, ``"4k"``, ``"8M"``, ``"1G"``, ``"1T"``, ``"64KiB"``, ``"512B"``.

    Units are binary (k = 1024) and case-insensitive.  Raises :class:`ConfigError`.
    """
    if isinstance(text, bool) or not isinstance(text, int | str):
        raise ConfigError(f"{_show(text)} is not a size {SIZE_HINT}")
    if isinstance(text, int):
        if text < 0:
            raise ConfigError(f"{text} is not a size: it is negative")
        return text
    match = _SIZE_RE.match(text)
    if not match:
        raise ConfigError(f"{_show(text)} is not a size {SIZE_HINT}")
    return int(match.group(1)) << _SIZE_SHIFT[(match.group(2) or "").lower()]


def parse_listen(url: str) -> ListenAddress:
    """``tcp://HOST:PORT`` (port 0 = kernel-chosen, ``[::1]`` for IPv6) or ``unix:/PATH``."""
    try:
        return parse_address(url)
    except AddressError as exc:
        raise ConfigError(str(exc)) from None


def _show(value: object) -> str:
    """A value as the user wrote it in TOML: strings in double quotes."""
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)


# --- loading ---------------------------------------------------------------------------


class _Where:
    """Prefix for messages ("server.toml: export "a": ") and the base for relative paths."""

    def __init__(self, prefix: str, base_dir: Path) -> None:
        self.prefix = prefix
        self.base_dir = base_dir

    def child(self, part: str) -> _Where:
        return _Where(f"{self.prefix}: {part}" if self.prefix else part, self.base_dir)

    def error(self, message: str) -> ConfigError:
        return ConfigError(f"{self.prefix}: {message}" if self.prefix else message)


def _boolean(where: _Where, key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise where.error(f"{key} must be true or false, not {_show(value)}")
    return value


def _string(where: _Where, key: str, value: Any) -> str:
    if not isinstance(value, str):
        raise where.error(f"{key} must be a string, not {_show(value)}")
    if len(value.encode()) > MAX_STRING_LEN:
        raise where.error(f"{key} is longer than {MAX_STRING_LEN} bytes (spec limit on strings)")
    return value


def _choice(where: _Where, key: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        options = ", ".join(_show(choice) for choice in choices)
        raise where.error(f"{key} {_show(value)} is not one of {options}")
    return value


def _size(where: _Where, key: str, value: Any) -> int:
    try:
        return parse_size(value)
    except ConfigError as exc:
        raise where.error(f"{key} {exc}") from None


def _path(where: _Where, key: str, value: Any) -> Path:
    if not isinstance(value, str) or not value:
        raise where.error(f"{key} must be a non-empty path string, not {_show(value)}")
    path = Path(os.path.expanduser(value))
    return path if path.is_absolute() else where.base_dir / path


def _check_keys(where: _Where, table: Mapping[str, Any], known: Mapping[str, str]) -> None:
    for key in table:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f'did you mean "{close[0]}"? ' if close else ""
            names = ", ".join(known)
            raise where.error(f'unknown key "{key}" ({hint}known keys: {names})')


SERVER_KEYS: dict[str, str] = {
    "listen": 'where to listen: "tcp://HOST:PORT" (port 0 = kernel-chosen) or "unix:/PATH"',
    "tls": '"off" (NOTLS), "optional" (SELECTIVETLS) or "required" (FORCEDTLS)',
    "tls_certificates": f"directory with {TLS_CA_CERT}, {TLS_SERVER_CERT}, {TLS_SERVER_KEY}",
    "tls_verify_peer": "require and verify client certificates (needs ca-cert.pem)",
    "handshake": '"fixed-newstyle", "newstyle" or "oldstyle"',
    "port_file": "file to write the chosen TCP port to",
    "default_export": 'export served for the empty name ("" = the first export)',
    "list_exports": "answer NBD_OPT_LIST (false: NBD_REP_ERR_POLICY)",
}
"""Keys of ``[server]`` and what they mean."""

LIMIT_KEYS: dict[str, str] = {
    "max_connections": "connections served at once; more are accepted and closed at once",
    "listen_backlog": "connections the kernel queues until accepted (bursts of connects)",
    "handshake_timeout": "seconds for the whole handshake, from accept to transmission",
    "idle_timeout": "seconds a connection in transmission may send nothing",
    "reply_timeout": "seconds a reply may wait for the client to read it",
    "max_option_length": "bytes of one option's data (more: NBD_REP_ERR_TOO_BIG, unread)",
    "max_meta_context_queries": "queries in one *_META_CONTEXT option (more: ERR_TOO_BIG)",
    "max_request_payload": "request payload or read length that ends the session (>= 32M)",
    "max_inflight_bytes": "request/reply data buffered in total; large requests wait above it",
}
"""Keys of ``[limits]`` and what they mean (defaults: :class:`ServerLimits`)."""
LIMIT_SIZES = ("max_option_length", "max_request_payload", "max_inflight_bytes")
LIMIT_SECONDS = ("handshake_timeout", "idle_timeout", "reply_timeout")

BLOCK_SIZE_KEYS = ("min_block_size", "preferred_block_size", "max_payload_size")

EXPORT_KEYS: dict[str, str] = {
    "name": "export name (may be empty: the default export)",
    "size": "export size: 512, 4k, 8M, 1G... (optional for file and layers)",
    "backend": '"memory", "file" or "layers"',
    "path": "raw image file (backend = file); created sparse when missing",
    "layers": "backing chain of raw files, top first (backend = layers)",
    "read_only": "refuse writes (NBD_FLAG_READ_ONLY)",
    "bitmaps": 'dirty bitmaps: ["b0"] or [{name = "b0", granularity = "64k"}]',
    "description": "NBD_INFO_DESCRIPTION text",
    "min_block_size": "minimum block size (power of two, at most 64k)",
    "preferred_block_size": "preferred block size (power of two, at least 512 and min)",
    "max_payload_size": "maximum payload size (at least preferred, multiple of min)",
    "block_size_required": "refuse NBD_OPT_GO without an NBD_INFO_BLOCK_SIZE request",
    "multi_conn": "advertise NBD_FLAG_CAN_MULTI_CONN",
    "tls": '"inherit" or "required" (TLS-only export when server tls = "optional")',
    "init_state": "advertise the experimental NBD_INFO_INIT_STATE",
    "rotational": "advertise NBD_FLAG_ROTATIONAL",
    "fast_zero": "advertise NBD_FLAG_SEND_FAST_ZERO when the backend can zero fast",
    "allocation_depth": "offer the qemu:allocation-depth context (qemu-nbd -A)",
}
"""Keys of ``[[export]]`` and what they mean."""

BITMAP_KEYS: dict[str, str] = {
    "name": "bitmap name (context qemu:dirty-bitmap:NAME)",
    "granularity": "bytes per bit: power of two from 512 to 2G (default 64k)",
}


def load_config(path: Path | str) -> ServerConfig:
    """Read and validate a TOML configuration file; raise :class:`ConfigError`."""
    path = Path(path)
    try:
        with open(path, "rb") as stream:
            document = tomllib.load(stream)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such configuration file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not valid TOML: the file is not UTF-8") from None
    return config_from_dict(document, base_dir=path.absolute().parent, source=path)


def config_from_dict(
    document: Mapping[str, Any], *, base_dir: Path | None = None, source: Path | None = None
) -> ServerConfig:
    """Validate an already parsed document (the shape of the TOML file).

    Relative paths are relative to ``base_dir`` (default: the current directory);
    messages start with ``source`` when given.
    """
    where = _Where(str(source) if source else "", base_dir or Path.cwd())
    _check_keys(where, document, {"server": "[server] table", "limits": "[limits] table",
                                  "export": "[[export]] tables"})
    server_table = document.get("server", {})
    if not isinstance(server_table, dict):
        raise where.error("server must be a table: write [server]")
    limits_table = document.get("limits", {})
    if not isinstance(limits_table, dict):
        raise where.error("limits must be a table: write [limits]")
    limits = _limits_from_table(limits_table, where.child("limits"))
    export_tables = document.get("export", [])
    if not isinstance(export_tables, list) or not all(isinstance(t, dict) for t in export_tables):
        raise where.error("export must be an array of tables: write [[export]] (two brackets)")

    exports: list[ExportConfig] = []
    for number, table in enumerate(export_tables, start=1):
        exports.append(_export_from_table(table, where, number))
        duplicate = _duplicate_name(tuple(exports))
        if duplicate is not None:
            raise where.error(duplicate)
    return _server_from_table(server_table, where.child("server"), tuple(exports), source,
                              limits)


def _limits_from_table(table: Mapping[str, Any], where: _Where) -> ServerLimits:
    _check_keys(where, table, LIMIT_KEYS)
    values: dict[str, Any] = {}
    for key, value in table.items():
        if key in LIMIT_SIZES:
            values[key] = _size(where, key, value)
        elif key in LIMIT_SECONDS:
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise where.error(f"{key} must be a number of seconds, not {_show(value)}")
            values[key] = float(value)
        elif isinstance(value, bool) or not isinstance(value, int):
            raise where.error(f"{key} must be a whole number, not {_show(value)}")
        else:
            values[key] = value
    try:
        return ServerLimits(**values).validated()
    except ConfigError as exc:
        raise where.error(str(exc)) from None


def _server_from_table(
    table: Mapping[str, Any], where: _Where, exports: tuple[ExportConfig, ...], source: Path | None,
    limits: ServerLimits | None = None,
) -> ServerConfig:
    _check_keys(where, table, SERVER_KEYS)
    values: dict[str, Any] = {}
    if "listen" in table:
        listen = _string(where, "listen", table["listen"])
        try:
            values["listen"] = parse_listen(listen)
        except ConfigError as exc:
            raise where.error(f"listen {exc}") from None
    if "tls" in table:
        values["tls"] = _choice(where, "tls", table["tls"], TLS_MODES)
    if "tls_verify_peer" in table:
        values["tls_verify_peer"] = _boolean(where, "tls_verify_peer", table["tls_verify_peer"])
    if "tls_certificates" in table:
        values["tls_certificates"] = _path(where, "tls_certificates", table["tls_certificates"])
    if "handshake" in table:
        values["handshake"] = _choice(where, "handshake", table["handshake"], HANDSHAKES)
    if "port_file" in table:
        values["port_file"] = _path(where, "port_file", table["port_file"])
    if "default_export" in table:
        values["default_export"] = _string(where, "default_export", table["default_export"])
    if "list_exports" in table:
        values["list_exports"] = _boolean(where, "list_exports", table["list_exports"])
    try:
        return ServerConfig(exports=exports, source=source, limits=limits or ServerLimits(),
                            **values).validated()
    except ConfigError as exc:
        raise where.error(str(exc)) from None


def _duplicate_name(exports: tuple[ExportConfig, ...]) -> str | None:
    """The message for the first export name given twice (None: names are unique)."""
    seen: set[str] = set()
    for export in exports:
        if export.name in seen:
            return f'export "{export.name}" is defined twice (export names are unique)'
        seen.add(export.name)
    return None


def _check_certificates(config: ServerConfig) -> None:
    directory = config.tls_certificates
    if directory is None:
        raise ConfigError(
            f'tls = "{config.tls}" needs tls_certificates = "DIR" '
            f"(with {TLS_SERVER_CERT} and {TLS_SERVER_KEY})"
        )
    if not directory.is_dir():
        raise ConfigError(f"tls_certificates {directory}: no such directory")
    needed = [TLS_SERVER_CERT, TLS_SERVER_KEY] + ([TLS_CA_CERT] if config.tls_verify_peer else [])
    for name in needed:
        if not (directory / name).is_file():
            raise ConfigError(f"tls_certificates {directory}: {name} is missing")


def _export_from_table(table: Mapping[str, Any], where: _Where, number: int) -> ExportConfig:
    if "name" not in table:
        raise where.error(f'export #{number} needs a name = "..." key')
    name = _string(where.child(f"export #{number}"), "name", table["name"])
    where = where.child(f'export "{name}"')
    _check_keys(where, table, EXPORT_KEYS)
    get = table.get

    backend = _choice(where, "backend", get("backend", "memory"), BACKENDS)
    read_only = _boolean(where, "read_only", get("read_only", False))
    path = _path(where, "path", table["path"]) if "path" in table else None
    raw_layers = get("layers", [])
    layers = tuple(_path(where, "layers", layer) for layer in raw_layers) \
        if isinstance(raw_layers, list) else (Path(),)
    # The size of a file or layers export may come from its files: check those first.
    _validated(where, ExportConfig(name=name, size=0, backend=backend, path=path,
                                   layers=layers if backend != "layers" or raw_layers else (),
                                   read_only=read_only))
    size = _export_size(where, table, backend, path, layers, read_only)
    sizes = {key: _size(where, key, table[key]) for key in BLOCK_SIZE_KEYS if key in table}
    minimum, preferred, maximum = block_sizes(*(sizes.get(key) for key in BLOCK_SIZE_KEYS))
    return _validated(where, ExportConfig(
        name=name,
        size=size,
        backend=backend,
        path=path,
        layers=layers,
        read_only=read_only,
        bitmaps=_bitmaps(where, get("bitmaps", [])),
        description=_string(where, "description", get("description", "")),
        min_block_size=minimum,
        preferred_block_size=preferred,
        max_payload_size=maximum,
        block_size_configured=bool(sizes),
        block_size_required=_boolean(
            where, "block_size_required", get("block_size_required", False)
        ),
        multi_conn=_boolean(where, "multi_conn", get("multi_conn", True)),
        tls=_choice(where, "tls", get("tls", "inherit"), EXPORT_TLS_MODES),
        init_state=_boolean(where, "init_state", get("init_state", False)),
        rotational=_boolean(where, "rotational", get("rotational", False)),
        fast_zero=_boolean(where, "fast_zero", get("fast_zero", True)),
        allocation_depth=_boolean(where, "allocation_depth", get("allocation_depth", True)),
    ))


def _validated(where: _Where, export: ExportConfig) -> ExportConfig:
    try:
        return export.validated()
    except ConfigError as exc:
        raise where.error(str(exc)) from None


def _export_size(
    where: _Where,
    table: Mapping[str, Any],
    backend: str,
    path: Path | None,
    layers: tuple[Path, ...],
    read_only: bool,
) -> int:
    size = _size(where, "size", table["size"]) if "size" in table else None
    if size is not None and size > MAX_EXPORT_SIZE:  # before a file is created that large
        raise where.error(f"size {size} is larger than the largest export size (2^63 - 1)")
    if backend == "memory":
        if size is None:
            raise where.error('backend = "memory" needs a size (e.g. size = "64M")')
        return size
    if backend == "file":
        assert path is not None
        if path.is_dir():
            raise where.error(f"path {path}: is a directory, not a raw image file")
        if path.exists():
            return size if size is not None else path.stat().st_size
        if read_only:
            raise where.error(f"path {path}: no such file (a read-only export cannot create it)")
        if not path.parent.is_dir():
            raise where.error(f"path {path}: directory {path.parent} does not exist")
        if size is None:
            raise where.error(f"path {path}: no such file; give a size to create it sparse")
        return size
    for index, layer in enumerate(layers, start=1):
        if not layer.is_file():
            what = "no such file" if not layer.exists() else "not a regular file"
            raise where.error(f"layers[{index}] {layer}: {what} (layer files are never created)")
    return size if size is not None else max(layer.stat().st_size for layer in layers)


def _bitmaps(where: _Where, raw: Any) -> tuple[BitmapConfig, ...]:
    if not isinstance(raw, list):
        raise where.error('bitmaps must be a list: ["b0"] or [{name = "b0", granularity = "64k"}]')
    bitmaps: list[BitmapConfig] = []
    for item in raw:
        if isinstance(item, str):
            item = {"name": item}
        if not isinstance(item, dict):
            raise where.error(
                f"bitmaps: {_show(item)} is neither a name nor a {{name = ...}} table"
            )
        _check_keys(where.child("bitmaps"), item, BITMAP_KEYS)
        name = item.get("name")
        if not isinstance(name, str) or not name:
            raise where.error("bitmaps: every bitmap needs a non-empty name")
        granularity = _size(
            where.child(f'bitmap "{name[:40]}"'),
            "granularity",
            item.get("granularity", DEFAULT_BITMAP_GRANULARITY),
        )
        bitmaps.append(BitmapConfig(name, granularity))  # checked by ExportConfig.validated
    return tuple(bitmaps)


# --- exports on the command line -----------------------------------------------------------

EXPORT_SPEC_HELP = (
    "NAME=memory:SIZE, NAME=file:PATH[:SIZE] or NAME=layers:TOP,BASE[,...][:SIZE], "
    "each optionally ending in :ro"
)


def parse_export_spec(spec: str, base_dir: Path | None = None) -> ExportConfig:
    """An export from a command-line spec: ``NAME=memory:64M``, ``NAME=file:PATH``,
    ``NAME=file:PATH:64M`` (size to create a missing file), ``NAME=layers:TOP,BASE``;
    a trailing ``:ro`` makes it read-only.  Relative paths are relative to
    ``base_dir`` (default: the current directory)."""
    where = _Where(f"export spec {_show(spec)}", (base_dir or Path.cwd()).resolve())
    name, equals, rest = spec.partition("=")
    kind, colon, argument = rest.partition(":")
    if not equals or not colon or kind not in BACKENDS:
        raise where.error(f"expected {EXPORT_SPEC_HELP}")
    table: dict[str, Any] = {"name": name, "backend": kind}
    if argument.endswith(":ro") or argument == "ro":
        table["read_only"] = True
        argument = argument[: -len(":ro")] if argument.endswith(":ro") else ""
    if kind == "memory":
        table["size"] = argument
    else:
        head, colon, last = argument.rpartition(":")
        if colon and head and _SIZE_RE.match(last):
            table["size"], argument = last, head
        if not argument:
            raise where.error(f"{kind} needs a path: {EXPORT_SPEC_HELP}")
        if kind == "file":
            table["path"] = argument
        else:
            table["layers"] = argument.split(",")
    return _export_from_table(table, where, 1)


__all__ = [
    "BACKENDS",
    "BLOCK_SIZE_KEYS",
    "EXPORT_KEYS",
    "LIMIT_KEYS",
    "SERVER_KEYS",
    "BitmapConfig",
    "ConfigError",
    "ExportConfig",
    "ListenAddress",
    "ServerConfig",
    "ServerLimits",
    "block_sizes",
    "config_from_dict",
    "load_config",
    "parse_export_spec",
    "parse_listen",
    "parse_size",
]
