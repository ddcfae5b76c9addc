"""The server under a fuzz campaign: where it listens, whether it died, and how to restart it.

:class:`LiveTarget` is a server someone else runs (``fuzz URI``): the campaign
cannot see its process, so a crash shows as connections refused.
:class:`PeerTarget` is a peer the harness starts through its catalog
(``fuzz --server nbdkit@1.32``): its exit status or signal and its log are the
crash report, and it is started again after a crash so the campaign goes on.
:class:`ReferenceTarget` is the reference server in this process, optionally with
fault profiles (the "broken peer" that proves the fuzzer finds breaches).
"""

from __future__ import annotations

import shutil
import signal
import tempfile
from dataclasses import dataclass
from pathlib import Path

from harness.client import Client, ConnectOptions
from harness.peers import RunningServer
from harness.peers.catalog import resolve_server
from harness.peers.export import ExportSpec
from harness.peers.probe import observe
from harness.peers.reference import reference_config
from harness.protocol import constants as c
from harness.scenarios import ExportRequirements
from reference_server.faults import ServerFaults
from reference_server.profiles import profile
from reference_server.runner import ServerThread

from .strategies import Target

FUZZ_EXPORT_SIZE = 1024 * 1024
"""The export a started peer serves: small, so a read-back of all of it stays cheap."""
WINDOW = 256 * 1024
"""Bytes at the start of the export the campaign writes and checks."""


@dataclass(frozen=True)
class Crash:
    """How a peer process ended: exit status or signal, and the tail of its log."""

    peer: str
    returncode: int | None
    log_tail: str

    @property
    def signal_name(self) -> str | None:
        if self.returncode is None or self.returncode >= 0:
            return None
        try:
            return signal.Signals(-self.returncode).name
        except ValueError:
            return f"signal {-self.returncode}"

    def describe(self) -> str:
        how = self.signal_name or f"exit status {self.returncode}"
        return f"{self.peer} died ({how})"

    def as_dict(self) -> dict[str, object]:
        return {"peer": self.peer, "returncode": self.returncode, "signal": self.signal_name,
                "log_tail": self.log_tail}


class FuzzTarget:
    """A server under fuzz; subclasses know whether they can see its process."""

    label = "server"

    @property
    def uri(self) -> str:
        raise NotImplementedError

    def crashed(self) -> Crash | None:
        """The crash report once the server has died, else None (checked after each step)."""
        return None

    def restart(self) -> None:
        """Start the server again after a crash (a live server cannot be restarted)."""

    def close(self) -> None:
        """Stop what the target started."""

    def probe(self) -> Target:
        """What the export offers, from a probe connection before the campaign."""
        observed = observe(self.uri)
        with Client.connect(self.uri, options=ConnectOptions(meta_contexts=(), timeout=20)) \
                as client:
            size = client.export_size
            block = client.connection.negotiated.min_block
            read_only = client.can(c.TransmissionFlag.READ_ONLY)
        window = min(WINDOW, size - size % max(block, 1))
        return Target(size=size, present=frozenset(observed.present), window=window,
                      block=block, read_only=read_only)


class LiveTarget(FuzzTarget):
    """A server at a URI the campaign did not start."""

    def __init__(self, uri: str) -> None:
        self._uri = uri
        self.label = uri

    @property
    def uri(self) -> str:
        return self._uri


class PeerTarget(FuzzTarget):
    """A real server peer started (and restarted) through the catalog's drivers."""

    def __init__(self, spec: str, workdir: Path | None = None) -> None:
        self.spec = spec
        self.label = spec
        self._owned = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="nbdh-fuzz-peer-"))
        self.driver = resolve_server(spec, log_dir=self.workdir)
        self.restarts = 0
        self.server = self._start()

    def _start(self) -> RunningServer:
        export = ExportSpec(size=FUZZ_EXPORT_SIZE, image_format="raw")
        # Served as a shareable export (qemu-nbd -e N): the read-back connection opens while
        # an example's own connection may still be negotiating; a one-client qemu-nbd would
        # never greet it.
        options = self.driver.options_for(ExportRequirements(spec=export))
        return self.driver.start(export, self.workdir / f"run{self.restarts}", options=options)

    @property
    def uri(self) -> str:
        return self.server.uri

    def crashed(self) -> Crash | None:
        process = self.server.process
        if process is None or process.poll() is None:
            return None
        return Crash(self.spec, process.returncode, process.log_tail())

    def restart(self) -> None:
        self.server.stop()
        self.restarts += 1
        self.server = self._start()

    def close(self) -> None:
        self.server.stop()
        if self._owned:
            shutil.rmtree(self.workdir, ignore_errors=True)


class ReferenceTarget(FuzzTarget):
    """The reference server in this process (profile ``profile``), with ``faults`` applied."""

    def __init__(self, profile_name: str = "reference", faults: tuple[str, ...] = ()) -> None:
        self.label = "reference-server" + (f" --fault {','.join(faults)}" if faults else "")
        self._scratch = tempfile.TemporaryDirectory(prefix="nbdh-fuzz-ref-")
        export = ExportSpec(size=FUZZ_EXPORT_SIZE, image_format="raw")
        config = reference_config(export, Path(self._scratch.name), storage="memory")
        self.thread = ServerThread(config, profile(profile_name))
        self.thread.server.faults = ServerFaults.from_names(faults)
        self.thread.start()
        self._uri = f"nbd://{self.thread.address.host}:{self.thread.address.port}/{export.name}"

    @property
    def uri(self) -> str:
        return self._uri

    def close(self) -> None:
        self.thread.stop()
        self._scratch.cleanup()


__all__ = ["WINDOW", "Crash", "FuzzTarget", "LiveTarget", "PeerTarget", "ReferenceTarget"]
