"""nbd-server: the reference implementation of the NBD project's own server.

Facts this driver works around:

- nbd-server has no foreground mode that serves more than one client (``-d``
  serves one and exits), so it runs as the daemon it wants to be, inside a PID
  namespace of its own (bwrap on the host, the sandbox of the other providers)
  under a small shell that waits while the daemon lives. Stopping the shell's
  process group ends the namespace, and the daemon with it.
- ``port = 0`` means "serve stdin" (inetd): the port is chosen by the kernel for
  us and written into the configuration file.
- Its daemon reports why it stopped (a port another program took between the
  kernel choosing it and nbd-server binding it) only to syslog, which no sandbox
  has: the supervisor says it is gone, and the start is retried once on a new
  port (recorded in its log). Under many workers this race made
  ``bwrap exited with code 1 before TCP listener`` errors.
- It misreports ``--version`` (3.21 says 3.18; 3.27 says 3.26.1): the version to
  believe is its Debian package's.
- No backing chains, bitmaps or block status: the export's chain is served
  flattened from a sparse raw file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ._base import RunningServer, ServerPeer, Transport
from ._images import write_raw_flat
from .export import ExportSpec

if TYPE_CHECKING:
    from harness.scenarios import ExportRequirements

# Runs the daemon, then stays in the foreground while it lives ($1 config, $2 pid file).
SUPERVISOR = """
nbd-server -C "$1" -p "$2" || exit $?
tries=0
while [ ! -s "$2" ] && [ $tries -lt 200 ]; do sleep 0.05; tries=$((tries + 1)); done
while kill -0 "$(cat "$2")" 2>/dev/null; do sleep 0.2; done
echo "nbd-server (pid $(cat "$2" 2>/dev/null)) is gone (it tells only syslog why)" >&2
exit 1
"""


@dataclass(frozen=True)
class NbdServerOptions:
    """Per-export switches of nbd-server's configuration file (``nbd-server(5)``)."""

    flush: bool = True
    fua: bool = True
    trim: bool = True
    rotational: bool = False
    allow_list: bool = True
    max_connections: int | None = None
    extra_export_lines: tuple[str, ...] = ()


class NbdServer(ServerPeer):
    """``nbd-server`` serving the export's flattened content from a raw file."""

    program = "nbd-server"
    executable = "nbd-server"
    version_argv = ("-V",)
    misreports_version = True
    # nbd-server(5) has no description switch, and nbd-server never sends NBD_INFO_DESCRIPTION
    # (which the spec lets a server leave out): an export's description cannot be served.
    serves_descriptions = False
    represents_family = True
    options_type = NbdServerOptions
    can_refuse_list = True  # allowlist = false
    unexplained_start_retries = 1
    # "generic" is the configuration file's global section; "" is no section name at all.
    reserved_export_names = frozenset({"", "generic"})

    @classmethod
    def options_for(cls, export: ExportRequirements) -> NbdServerOptions | None:
        return None if export.list_exports else NbdServerOptions(allow_list=False)

    def config_text(self, export: ExportSpec, image: Path, options: NbdServerOptions, *,
                    port: int | None = None, socket: Path | None = None) -> str:
        """The configuration file for one export, listening on ``port`` or ``socket``."""
        generic = ["[generic]", "    listenaddr = 127.0.0.1"]
        if socket is not None:
            generic.append(f"    unixsock = {socket}")
        else:
            generic.append(f"    port = {port}")
        generic.append(f"    allowlist = {'true' if options.allow_list else 'false'}")
        if export.tls_dir is not None:
            tls = Path(export.tls_dir)
            generic += [
                f"    certfile = {tls / 'server-cert.pem'}",
                f"    keyfile = {tls / 'server-key.pem'}",
                f"    cacertfile = {tls / 'ca-cert.pem'}",
                "    force_tls = true",
            ]
        section = [f"[{export.name}]", f"    exportname = {image}"]
        switches = {
            "readonly": export.read_only,
            "flush": options.flush,
            "fua": options.fua,
            "trim": options.trim,
            "rotational": options.rotational,
        }
        section += [f"    {key} = {str(value).lower()}" for key, value in switches.items()]
        if options.max_connections is not None:
            section.append(f"    maxconnections = {options.max_connections}")
        section += [f"    {line}" for line in options.extra_export_lines]
        return "\n".join([*generic, "", *section]) + "\n"

    def serve(self, export: ExportSpec, workdir: Path, options: NbdServerOptions, *,
              transport: Transport, ready_timeout: float) -> RunningServer:
        image = write_raw_flat(export, workdir / "export.raw")
        config = workdir / "nbd-server.conf"
        pid_file = workdir / "nbd-server.pid"

        def command(**listen: object) -> list[str]:
            config.write_text(self.config_text(export, image, options, **listen))  # type: ignore[arg-type]
            pid_file.unlink(missing_ok=True)
            return ["sh", "-c", SUPERVISOR, "nbd-server-supervisor", os.fspath(config),
                    os.fspath(pid_file)]

        return self.launch(
            export,
            workdir,
            transport=transport,
            tcp_argv=lambda port: command(port=port),
            unix_argv=lambda path: command(socket=path),
            ready_timeout=ready_timeout,
            pid_namespace=True,
        )


__all__ = ["SUPERVISOR", "NbdServer", "NbdServerOptions"]
