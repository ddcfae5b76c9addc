"""qemu-storage-daemon: qemu's block layer without a VM, driven over QMP (``qemu.qmp``).

The daemon starts with only a QMP monitor on a unix socket; the export is then
built live, as a management application would: ``blockdev-add`` opens the
qcow2 chain (persistent bitmaps load with it), ``block-dirty-bitmap-add``
adds bitmaps live, ``nbd-server-start`` listens and ``block-export-add``
exports the node with its bitmaps and ``allocation-depth`` (qemu 5.2+).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from harness.address import Address
from harness.process import PeerError, attempt_log, note_restart

from ._base import Endpoint, RunningServer, ServerPeer, Transport
from ._qemu import TLS_ID, build_image, probe_chain, tls_object
from .export import DEFAULT_GRANULARITY, ExportSpec

QMP_TIMEOUT = 30.0
"""Seconds one QMP command may take."""
QMP_CONNECT_TIMEOUT = 10.0
"""Seconds one QMP connection attempt (greeting and negotiation) may take."""
QMP_CONNECT_ATTEMPTS = 5
QMP_RETRY_DELAY = 0.2
"""Seconds before the second connection attempt (growing with each attempt)."""
NODE = "export-node"
EXPORT_ID = "export0"
_PORT_ATTEMPTS = 5
_T = TypeVar("_T")


@dataclass(frozen=True)
class LiveBitmap:
    """A bitmap added with ``block-dirty-bitmap-add`` once the daemon runs (clean at first)."""

    name: str
    granularity: int = DEFAULT_GRANULARITY
    persistent: bool = True


@dataclass(frozen=True)
class QemuStorageDaemonOptions:
    """``live_bitmaps`` are added over QMP before the export; ``allocation_depth`` and
    ``bitmaps`` say what ``block-export-add`` exports (the export's persistent bitmaps
    and the live ones)."""

    live_bitmaps: tuple[LiveBitmap, ...] = ()
    allocation_depth: bool = True
    bitmaps: bool = True


class QmpSession:
    """A QMP connection (``qemu.qmp``'s asyncio client on a private event loop), closed on exit.

    Every wait is bounded: the connection (greeting and capabilities negotiation)
    by ``connect_timeout`` per attempt, each command by ``timeout``.  A daemon that
    has just started may drop the first connection during negotiation (seen as
    ``ConnectError: ... Negotiation failed`` or ``EOFError`` under load): the
    connection is retried ``attempts`` times, a little later each time, as long as
    ``alive()`` says the daemon still runs.
    """

    def __init__(self, path: Path, timeout: float = QMP_TIMEOUT, *,
                 connect_timeout: float = QMP_CONNECT_TIMEOUT,
                 attempts: int = QMP_CONNECT_ATTEMPTS,
                 alive: Callable[[], bool] | None = None) -> None:
        try:  # only this driver speaks QMP: the other peers do not pay for importing it
            from qemu.qmp import QMPClient
        except ImportError as exc:  # pragma: no cover - a dependency of the project
            raise PeerError("the qemu.qmp package is missing: run scripts/bootstrap") from exc
        self.timeout = timeout
        self._loop = asyncio.new_event_loop()
        self._client: Any = None
        failures: list[str] = []
        try:
            for attempt in range(max(attempts, 1)):
                client = QMPClient("qemu-storage-daemon")
                try:
                    self._run(client.connect(os.fspath(path)), connect_timeout)
                except Exception as exc:  # ConnectError, EOFError, OSError, TimeoutError
                    failures.append(f"{type(exc).__name__}: {exc}".strip())
                    with contextlib.suppress(Exception):
                        self._run(client.disconnect(), connect_timeout)
                    if alive is not None and not alive():
                        raise PeerError("qemu-storage-daemon exited before its QMP session "
                                        f"started ({failures[-1]})") from exc
                    time.sleep(QMP_RETRY_DELAY * (attempt + 1))
                    continue
                self._client = client
                return
            raise PeerError(f"QMP at {path}: no session after {len(failures)} attempt(s) "
                            f"(last: {failures[-1]})")
        except BaseException:
            self._loop.close()
            raise

    def _run(self, awaitable: Awaitable[_T], timeout: float) -> _T:
        return self._loop.run_until_complete(asyncio.wait_for(awaitable, timeout))

    def command(self, name: str, /, **arguments: Any) -> Any:
        """Run a QMP command; a QMP error raises :class:`PeerError` with qemu's message."""
        from qemu.qmp import ExecuteError  # not at the top: see __init__

        try:
            return self._run(self._client.execute(name, arguments or None), self.timeout)
        except ExecuteError as exc:
            raise PeerError(f"QMP {name} failed: {exc.error.error.desc}") from None
        except TimeoutError:
            raise PeerError(f"QMP {name}: no answer within {self.timeout:g} s") from None

    def close(self) -> None:
        if self._loop.is_closed():
            return
        if self._client is not None:
            with contextlib.suppress(Exception):
                self._run(self._client.disconnect(), QMP_CONNECT_TIMEOUT)
        self._loop.close()

    def __enter__(self) -> QmpSession:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class _EndedSilently(PeerError):
    """The daemon ended before it served, and its log says nothing about why."""


class QemuStorageDaemon(ServerPeer):
    """``qemu-storage-daemon`` exporting a qcow2 chain over NBD, configured over QMP."""

    program = "qemu-storage-daemon"
    executable = "qemu-storage-daemon"
    version_word = "qemu-storage-daemon"
    options_type = QemuStorageDaemonOptions

    @classmethod
    def probe_export(cls) -> tuple[ExportSpec, None]:
        return probe_chain(), None

    unexplained_start_retries = 1

    def serve(self, export: ExportSpec, workdir: Path, options: QemuStorageDaemonOptions, *,
              transport: Transport, ready_timeout: float) -> RunningServer:
        """Start the daemon, export over QMP; a daemon that ended before serving without a
        word in its log (seen once in 18,702 matrix cases under load) is started again
        once, and the first log says so."""
        log_path = workdir / f"{self.program}.log"
        for attempt in range(self.unexplained_start_retries + 1):
            try:
                return self._serve_once(export, workdir, options, transport=transport,
                                        ready_timeout=ready_timeout,
                                        log_path=attempt_log(log_path, attempt))
            except _EndedSilently as exc:
                if attempt == self.unexplained_start_retries:
                    raise PeerError(str(exc)) from None
                note_restart(log_path, attempt, str(exc))
        raise AssertionError("unreachable")  # pragma: no cover

    def _serve_once(self, export: ExportSpec, workdir: Path, options: QemuStorageDaemonOptions,
                    *, transport: Transport, ready_timeout: float,
                    log_path: Path) -> RunningServer:
        image = build_image(self, export, workdir, live_bitmaps=bool(options.live_bitmaps))
        qmp_path, qmp_dir = self.socket_path(workdir)
        qmp_path = qmp_path.with_name("qmp.sock")
        argv = [
            self.executable,
            "--chardev", f"socket,id=qmp,path={qmp_path},server=on,wait=off",
            "--monitor", "chardev=qmp",
        ]
        if export.tls_dir is not None:
            argv += tls_object(export.tls_dir, "server")
        binds = [workdir, qmp_dir, *([export.tls_dir] if export.tls_dir else [])]
        label = self.label()
        process = self.provider.start(argv, log_path=log_path, binds=binds, cwd=workdir,
                                      label=label)
        placeholder = Endpoint(Address.unix(os.fspath(qmp_path)), export.name, export.tls_dir)
        server = RunningServer(f"{self.program} ({self.provider.name})", placeholder, log_path,
                               process, export)
        server.add_cleanup(lambda: self.provider.cleanup(label))
        if qmp_dir != workdir:
            server.add_cleanup(lambda: shutil.rmtree(qmp_dir, ignore_errors=True))
        try:
            self.provider.wait_unix(process, qmp_path, ready_timeout)
            with QmpSession(qmp_path, alive=lambda: process.poll() is None) as qmp:
                self._configure(qmp, export, image, options)
                server.endpoint = self._listen(qmp, export, options, transport, qmp_dir)
        except PeerError as exc:
            ended_silently = process.poll() is not None and not process.log_text().strip()
            server.stop()  # (stopping it ends it: asked before)
            if ended_silently:
                raise _EndedSilently(f"{self.program} ended before serving, without a word "
                                     f"({str(exc).splitlines()[0]})") from exc
            raise
        except BaseException:
            server.stop()
            raise
        return server

    def _configure(self, qmp: QmpSession, export: ExportSpec, image: Path,
                   opts: QemuStorageDaemonOptions) -> None:
        qmp.command(
            "blockdev-add",
            **{
                "driver": export.image_format,
                "node-name": NODE,
                "read-only": export.read_only,
                "file": {"driver": "file", "filename": os.fspath(image)},
            },
        )
        for bitmap in opts.live_bitmaps:
            qmp.command("block-dirty-bitmap-add", node=NODE, name=bitmap.name,
                        granularity=bitmap.granularity, persistent=bitmap.persistent)

    def _listen(self, qmp: QmpSession, export: ExportSpec, opts: QemuStorageDaemonOptions,
                transport: Transport, socket_dir: Path) -> Endpoint:
        tls = {"tls-creds": TLS_ID} if export.tls_dir is not None else {}
        if transport == "unix":
            path = socket_dir / "nbd.sock"
            qmp.command("nbd-server-start", addr={"type": "unix", "data": {"path": str(path)}},
                        **tls)
            address = Address.unix(os.fspath(path))
        else:
            # QMP cannot tell which port the kernel chose for port 0: pick one, retry if taken.
            for attempt in range(_PORT_ATTEMPTS):
                port = _free_port()
                try:
                    qmp.command(
                        "nbd-server-start",
                        addr={"type": "inet", "data": {"host": "127.0.0.1", "port": str(port)}},
                        **tls,
                    )
                    break
                except PeerError as exc:
                    if "in use" not in str(exc) or attempt == _PORT_ATTEMPTS - 1:
                        raise
            address = Address.tcp("127.0.0.1", port)
        self._export(qmp, export, opts)
        return Endpoint(address, export.name, export.tls_dir)

    def _export(self, qmp: QmpSession, export: ExportSpec,
                opts: QemuStorageDaemonOptions) -> None:
        arguments: dict[str, Any] = {
            "type": "nbd",
            "id": EXPORT_ID,
            "node-name": NODE,
            "name": export.name,
            "writable": not export.read_only,
        }
        if export.description:
            arguments["description"] = export.description
        if opts.bitmaps:
            names = [b.name for b in export.bitmaps] + [b.name for b in opts.live_bitmaps]
            if names:
                arguments["bitmaps"] = names
        if opts.allocation_depth:
            arguments["allocation-depth"] = True
        qmp.command("block-export-add", **arguments)


__all__ = ["LiveBitmap", "QemuStorageDaemon", "QemuStorageDaemonOptions", "QmpSession"]
