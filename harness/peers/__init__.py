"""Real peers: a driver per program, providers per Debian suite, ``PROGRAM@VERSION`` names.

    server = resolve_server("qemu-nbd@5.2").start(ExportSpec(size=1 << 20), workdir)
    with server:
        data = resolve_client("nbdinfo@1.24").map(server.endpoint, "qemu:allocation-depth")

Servers: qemu-nbd, qemu-storage-daemon (over QMP), nbdkit, nbd-server, the
reference server (any profile). Clients: nbdinfo, nbdsh, nbdcopy, libnbd's
Python bindings (``libnbd``), qemu-img, qemu-io, the reference client; the real
clients perform the forms of ``matrix/client-actions.toml`` (:mod:`.actions`).
Providers: ``host`` (this machine's packages), ``rootfs`` (a suite's root
filesystem under bubblewrap), ``docker`` (an image per suite).
"""

from ._actions import OUTPUT_READERS, ActionOutput, output_reader, parse_json
from ._base import (
    DRIVERS,
    ClientPeer,
    Endpoint,
    Peer,
    PeerSpec,
    PeerSpecError,
    PeerVersion,
    RunningServer,
    ServerPeer,
    parse_peer_spec,
)
from ._provider import Provider, ProvisionReport
from .catalog import (
    Catalog,
    PeerListing,
    list_peers,
    resolve_client,
    resolve_peer,
    resolve_server,
)
from .export import BitmapSpec, DataRange, ExportSpec, ExportSpecError, Layer, pattern
from .nbd_server import NbdServerOptions
from .nbdkit import NbdkitOptions
from .qemu_nbd import QemuNbdOptions
from .qemu_storage_daemon import LiveBitmap, QemuStorageDaemonOptions

__all__ = [
    "DRIVERS",
    "OUTPUT_READERS",
    "ActionOutput",
    "BitmapSpec",
    "Catalog",
    "ClientPeer",
    "DataRange",
    "Endpoint",
    "ExportSpec",
    "ExportSpecError",
    "Layer",
    "LiveBitmap",
    "NbdServerOptions",
    "NbdkitOptions",
    "Peer",
    "PeerListing",
    "PeerSpec",
    "PeerSpecError",
    "PeerVersion",
    "Provider",
    "ProvisionReport",
    "QemuNbdOptions",
    "QemuStorageDaemonOptions",
    "RunningServer",
    "ServerPeer",
    "list_peers",
    "output_reader",
    "parse_json",
    "parse_peer_spec",
    "pattern",
    "resolve_client",
    "resolve_peer",
    "resolve_server",
]
