"""Helpers for the reference client's tests: data patterns, peers on kernel-chosen
ports, the in-process reference server, and a bounded ``asyncio.run``."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from harness.process import ManagedProcess, pick_port_and_start, run_command
from reference_server.config import config_from_dict
from reference_server.features import FULL, ServerFeatures
from reference_server.runner import ServerThread

T = TypeVar("T")

KiB = 1024
MiB = 1024 * KiB

# Upper bound on one test's event loop: the client's own waits are shorter.
RUN_TIMEOUT = 60.0


def pattern(offset: int, length: int, seed: int = 1) -> bytes:
    """Bytes that depend on their absolute offset and a seed: misplaced data shows."""
    out = bytearray()
    block = offset // 8
    while len(out) < (offset % 8) + length:
        out += ((block * 2654435761 + seed) & 0xFFFFFFFFFFFFFFFF).to_bytes(8, "little")
        block += 1
    return bytes(out[offset % 8 : offset % 8 + length])


def arun(coro: Coroutine[Any, Any, T], timeout: float = RUN_TIMEOUT) -> T:
    """Run ``coro`` on a fresh event loop, bounded by ``timeout`` seconds."""

    async def bounded() -> T:
        async with asyncio.timeout(timeout):
            return await coro

    return asyncio.run(bounded())


# --- the in-process reference server --------------------------------------------------


@contextlib.contextmanager
def reference_server(
    tmp_path: Path,
    exports: Sequence[dict[str, Any]] | None = None,
    features: ServerFeatures = FULL,
    **server: Any,
) -> Iterator[ServerThread]:
    """A reference server on 127.0.0.1 (kernel-chosen port), stopped on exit."""
    document: dict[str, Any] = {
        "export": list(exports or [{"name": "disk", "size": "4M"}]),
    }
    if server:
        document["server"] = server
    thread = ServerThread(config_from_dict(document, base_dir=tmp_path), features).start()
    try:
        yield thread
    finally:
        thread.stop()


def ref_uri(
    server: ServerThread, export: str = "disk", scheme: str = "nbd", query: str = ""
) -> str:
    address = server.address
    text = f"{scheme}://127.0.0.1:{address.port}/{export}"
    return f"{text}?{query}" if query else text


# --- real peers -----------------------------------------------------------------------------


def start_qemu_nbd(
    tmp_path: Path, image: Path, *args: str, fmt: str = "qcow2", name: str = "qemu-nbd"
) -> tuple[ManagedProcess, int]:
    """``qemu-nbd -t`` on 127.0.0.1 serving ``image``; returns the process and its port."""
    return pick_port_and_start(
        lambda port: [
            "qemu-nbd",
            "-t",
            "--bind",
            "127.0.0.1",
            "--port",
            str(port),
            "-f",
            fmt,
            *args,
            str(image),
        ],
        log_path=tmp_path / f"{name}.log",
    )


def start_nbdkit(tmp_path: Path, *args: str, name: str = "nbdkit") -> tuple[ManagedProcess, int]:
    """``nbdkit -f`` on 127.0.0.1 with ``args`` (options, then plugin and its parameters)."""
    return pick_port_and_start(
        lambda port: ["nbdkit", "-f", "-p", str(port), "-i", "127.0.0.1", *args],
        log_path=tmp_path / f"{name}.log",
    )


def start_nbdkit_unix(
    tmp_path: Path, *args: str, name: str = "nbdkit"
) -> tuple[ManagedProcess, Path]:
    """``nbdkit -f --unix SOCK`` with ``args``; returns the process and the socket path."""
    sock = tmp_path / f"{name}.sock"
    process = ManagedProcess.start(
        ["nbdkit", "-f", "--unix", str(sock), *args], log_path=tmp_path / f"{name}.log"
    )
    process.wait_for_listening_unix(sock, 10)
    return process, sock


def start_nbd_server(
    tmp_path: Path, image: Path, export: str = "disk"
) -> tuple[ManagedProcess, int]:
    """nbd-server 3.x in the foreground (``-d``) serving ``image`` as ``export``.

    It listens where its config file says, so each attempt writes a config naming the port.
    """

    def argv(port: int) -> list[str]:
        config = tmp_path / f"nbd-server-{port}.conf"
        config.write_text(
            "[generic]\n"
            "listenaddr = 127.0.0.1\n"
            f"port = {port}\n"
            "allowlist = true\n"
            f"[{export}]\n"
            f"exportname = {image}\n"
        )
        return ["nbd-server", "-C", str(config), "-d"]

    return pick_port_and_start(argv, log_path=tmp_path / "nbd-server.log")


# --- a qcow2 backing chain with a dirty bitmap ---------------------------------------------

CHAIN_SIZE = 4 * MiB
CLUSTER = 64 * KiB


@dataclass(frozen=True)
class Chain:
    """``top.qcow2`` over ``base.qcow2``, its expected contents and metadata.

    Layout (64 KiB clusters): base has 0x11 at 0, 0x12 at 2M, 0x13 at 3M; top has
    0x21 at 1M (written before bitmap ``b0`` was added, so clean), then 0x22 at
    1.5M, 0x23 at 3M (over base) and a zeroed cluster at 2M (over base), all dirty.
    """

    top: Path
    base: Path
    data: bytes
    allocation_depth: list[tuple[int, int, int]]
    dirty_bitmap: list[tuple[int, int, int]]
    allocation: list[tuple[int, int, int]]


def _qemu_io(image: Path, command: str) -> None:
    run_command(["qemu-io", "-f", "qcow2", "-c", command, str(image)], timeout=30, check=True)


def _runs(size: int, marks: dict[int, int], default: int) -> list[tuple[int, int, int]]:
    """Merged ``(offset, length, flags)`` runs of per-cluster values."""
    out: list[tuple[int, int, int]] = []
    for offset in range(0, size, CLUSTER):
        value = marks.get(offset, default)
        if out and out[-1][2] == value:
            out[-1] = (out[-1][0], out[-1][1] + CLUSTER, value)
        else:
            out.append((offset, CLUSTER, value))
    return out


def build_chain(directory: Path) -> Chain:
    """Create the chain with qemu-img and qemu-io (both must be installed)."""
    directory.mkdir(parents=True, exist_ok=True)
    base, top = directory / "base.qcow2", directory / "top.qcow2"
    run_command(["qemu-img", "create", "-f", "qcow2", str(base), "4M"], timeout=30, check=True)
    data = bytearray(CHAIN_SIZE)
    for offset, byte in ((0, 0x11), (2 * MiB, 0x12), (3 * MiB, 0x13)):
        _qemu_io(base, f"write -P {byte:#x} {offset} 64k")
        data[offset : offset + CLUSTER] = bytes([byte]) * CLUSTER
    run_command(
        ["qemu-img", "create", "-f", "qcow2", "-b", str(base), "-F", "qcow2", str(top)],
        timeout=30,
        check=True,
    )
    _qemu_io(top, f"write -P 0x21 {1 * MiB} 64k")
    data[1 * MiB : 1 * MiB + CLUSTER] = b"\x21" * CLUSTER
    run_command(["qemu-img", "bitmap", "--add", str(top), "b0"], timeout=30, check=True)
    for offset, byte in ((1536 * KiB, 0x22), (3 * MiB, 0x23)):
        _qemu_io(top, f"write -P {byte:#x} {offset} 64k")
        data[offset : offset + CLUSTER] = bytes([byte]) * CLUSTER
    _qemu_io(top, f"write -z {2 * MiB} 64k")
    data[2 * MiB : 2 * MiB + CLUSTER] = bytes(CLUSTER)
    top_clusters = (1 * MiB, 1536 * KiB, 2 * MiB, 3 * MiB)
    dirty_clusters = (1536 * KiB, 2 * MiB, 3 * MiB)
    data_clusters = (0, 1 * MiB, 1536 * KiB, 3 * MiB)  # the zeroed cluster reads as hole,zero
    return Chain(
        top=top,
        base=base,
        data=bytes(data),
        allocation_depth=_runs(CHAIN_SIZE, {0: 2, **dict.fromkeys(top_clusters, 1)}, 0),
        dirty_bitmap=_runs(CHAIN_SIZE, dict.fromkeys(dirty_clusters, 1), 0),
        allocation=_runs(CHAIN_SIZE, dict.fromkeys(data_clusters, 0), 3),
    )
