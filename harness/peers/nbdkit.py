"""nbdkit: the plugin-based NBD server (memory, file, data, pattern, sh/eval; filters for faults).

nbdkit has no backing chains or dirty bitmaps: an export's chain is served
flattened (``data`` with the ranges loaded from files, or ``file`` over a
sparse raw file), so ``base:allocation`` is exact and the qemu contexts are
absent. Faults come from filters: :meth:`NbdkitOptions.with_errors` (the
``error`` filter) and :meth:`NbdkitOptions.with_delay` (``delay``).

By default the export is served the way ``matrix/peers/nbdkit.toml`` describes
nbdkit: with the ``data`` plugin (nbdkit's memory plugin with initial content:
same allocator, so the same flags: fast zero, and block sizes from 1.38), and
as a *named* export through the ``exportname`` filter (nbdkit 1.24+): listed
under its name, described, and other names refused.  Without the filter nbdkit
serves the same content under any name, lists it as ``''`` and has no
description.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from harness.process import PeerError

from ._base import KiB, RunningServer, ServerPeer, Transport
from ._images import write_raw_flat
from .export import ExportSpec, ExportSpecError

if TYPE_CHECKING:
    from harness.scenarios import ExportRequirements

PLUGINS = ("file", "data", "memory", "pattern", "eval", "sh")
# Plugins whose content the export cannot describe: it must carry no data.
_CONTENT_FREE = ("memory", "pattern", "eval", "sh")


@dataclass(frozen=True)
class NbdkitOptions:
    """How nbdkit serves: plugin, filters and protocol switches.

    ``plugin``: ``data`` (default; the flattened chain held in memory, writable: the
    memory plugin with content), ``file`` (the same as a sparse raw file), ``memory``
    (empty), ``pattern`` (nbdkit's own offset pattern), ``eval`` / ``sh`` (scripts in
    ``plugin_args``).  ``plugin_args`` and ``filter_args`` are ``key=value`` words;
    ``filters`` load in order. ``no_sr`` (``--no-sr``), ``no_mc`` (``--no-mc``, nbdkit
    1.26+), ``mask_handshake`` (``--mask-handshake``) and ``oldstyle`` (``-o``) shape
    the handshake.  ``named_export`` (default) serves the export under its name only,
    with its description, through the ``exportname`` filter (see the module doc).
    """

    plugin: str = "data"
    plugin_args: tuple[str, ...] = ()
    filters: tuple[str, ...] = ()
    filter_args: tuple[str, ...] = ()
    no_sr: bool = False
    no_mc: bool = False
    mask_handshake: int | None = None
    oldstyle: bool = False
    threads: int | None = None
    extra_args: tuple[str, ...] = ()
    named_export: bool = True

    def with_errors(self, rate: float | str = 1.0, error: str = "EIO",
                    trigger_file: Path | None = None) -> NbdkitOptions:
        """Add the ``error`` filter: fail requests with ``error`` at ``rate`` (0..1 or "10%").

        With ``trigger_file``, errors happen only while that file exists (nbdkit's
        ``error-file``), so a test can inject faults at a chosen moment.
        """
        args = [f"error={error}", f"error-rate={rate}"]
        if trigger_file is not None:
            args.append(f"error-file={trigger_file}")
        return replace(self, filters=(*self.filters, "error"),
                       filter_args=(*self.filter_args, *args))

    def with_delay(self, read: str | None = None, write: str | None = None) -> NbdkitOptions:
        """Add the ``delay`` filter (``"100ms"``, ``"2s"``) on reads and/or writes."""
        args = ([f"rdelay={read}"] if read else []) + ([f"wdelay={write}"] if write else [])
        return replace(self, filters=(*self.filters, "delay"),
                       filter_args=(*self.filter_args, *args))


def exportname_filter_args(export: ExportSpec, options: NbdkitOptions) -> tuple[str, ...]:
    """The ``exportname`` filter's parameters that make ``export`` a named export (or ``()``).

    A non-empty name is the only one listed and accepted (``exportname-strict``:
    nbdkit answers other names NBD_REP_ERR_UNKNOWN and closes on an unknown
    NBD_OPT_EXPORT_NAME); the empty name is nbdkit's own default export, which needs
    no filter.  The description goes out as NBD_INFO_DESCRIPTION (``exportdesc``).
    Oldstyle has no export names at all.
    """
    if not options.named_export or options.oldstyle:
        return ()
    args: list[str] = []
    if export.name:
        args += [f"exportname={export.name}", "exportname-list=explicit",
                 "exportname-strict=true"]
    if export.description:
        args.append(f"exportdesc=fixed:{export.description}")
    return tuple(args)


class Nbdkit(ServerPeer):
    """``nbdkit`` serving an export through one of its plugins."""

    program = "nbdkit"
    executable = "nbdkit"
    version_word = "nbdkit"
    represents_family = True
    options_type = NbdkitOptions
    # --oldstyle, and --mask-handshake=0: newstyle without NBD_FLAG_FIXED_NEWSTYLE.
    handshakes = frozenset({"fixed-newstyle", "newstyle", "oldstyle"})
    plugin: ClassVar[str] = "data"
    """The plugin it serves with unless the options say otherwise (see the module doc)."""

    @classmethod
    def default_options(cls) -> NbdkitOptions:
        return NbdkitOptions(plugin=cls.plugin)

    @classmethod
    def options_for(cls, export: ExportRequirements) -> NbdkitOptions | None:
        if export.handshake == "oldstyle":
            return replace(cls.default_options(), oldstyle=True)
        if export.handshake == "newstyle":
            return replace(cls.default_options(), mask_handshake=0)
        return None

    @classmethod
    def probe_export(cls) -> tuple[ExportSpec, NbdkitOptions]:
        # The plugin matrix/peers/nbdkit.toml's claims are written for.
        return ExportSpec(size=1024 * KiB, image_format="raw"), NbdkitOptions(plugin="memory")

    @functools.cached_property
    def help_text(self) -> str:
        """``nbdkit --help``: which switches this version knows."""
        result = self.provider.run([self.executable, "--help"], timeout=30, check=False)
        return f"{result.stdout}\n{result.stderr}"

    def _require_switch(self, switch: str) -> None:
        if switch not in self.help_text:
            raise PeerError(f"nbdkit ({self.provider.name}) has no {switch} option")

    def plugin_argv(self, export: ExportSpec, workdir: Path, options: NbdkitOptions) -> list[str]:
        """The plugin and its parameters (content prepared in ``workdir``)."""
        plugin = options.plugin
        if plugin not in PLUGINS:
            raise ExportSpecError(f"nbdkit plugin {plugin!r} is not one of {', '.join(PLUGINS)}")
        has_data = any(True for _ in export.all_ranges())
        if plugin in _CONTENT_FREE and has_data:
            raise ExportSpecError(
                f"nbdkit's {plugin} plugin cannot hold the export's data: use plugin file or data"
            )
        if plugin == "file":
            path = write_raw_flat(export, workdir / "export.raw")
            return ["file", f"file={path}", *options.plugin_args]
        if plugin == "data":
            words = []
            for number, data in enumerate(export.flattened_ranges()):
                source = workdir / f"data.{number}.bin"
                source.write_bytes(data.data())
                words.append(f"@{data.offset} <{source}")
            return ["data", f"data={' '.join(words)}", f"size={export.size}",
                    *options.plugin_args]
        if plugin in ("memory", "pattern"):
            return [plugin, f"size={export.size}", *options.plugin_args]
        return [plugin, *options.plugin_args]

    def switches(self, export: ExportSpec, options: NbdkitOptions) -> list[str]:
        """nbdkit and its switches, before the plugin (where it listens goes after these)."""
        argv = ["nbdkit", "--foreground", "--exportname", export.name]
        if export.read_only:
            argv.append("--readonly")
        if export.tls_dir is not None:
            argv += ["--tls=require", f"--tls-certificates={export.tls_dir}"]
        if options.no_sr:
            self._require_switch("--no-sr")
            argv.append("--no-sr")
        if options.no_mc:
            self._require_switch("--no-mc")
            argv.append("--no-mc")
        if options.mask_handshake is not None:
            self._require_switch("--mask-handshake")
            argv.append(f"--mask-handshake={options.mask_handshake}")
        if options.oldstyle:
            argv.append("--oldstyle")
        if options.threads is not None:
            argv.append(f"--threads={options.threads}")
        # The exportname filter goes first (outermost): names are settled before any
        # other filter (error, delay) sees a request.
        filters = (("exportname",) if exportname_filter_args(export, options) else ()) \
            + options.filters
        for name in filters:
            argv.append(f"--filter={name}")
        return [*argv, *options.extra_args]

    def serve(self, export: ExportSpec, workdir: Path, options: NbdkitOptions, *,
              transport: Transport, ready_timeout: float) -> RunningServer:
        head = self.switches(export, options)
        tail = [*self.plugin_argv(export, workdir, options),
                *exportname_filter_args(export, options), *options.filter_args]
        return self.launch(
            export,
            workdir,
            transport=transport,
            tcp_argv=lambda port: [*head, "--ipaddr", "127.0.0.1", "--port", str(port), *tail],
            unix_argv=lambda path: [*head, "--unix", os.fspath(path), *tail],
            ready_timeout=ready_timeout,
        )


__all__ = ["PLUGINS", "Nbdkit", "NbdkitOptions", "exportname_filter_args"]
