"""qemu-io as an NBD client: ``read -v`` (a hex dump) and ``write -s FILE``.

(``length`` prints a rounded human size, so qemu-io does not tell sizes.)
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Sequence
from pathlib import Path

from harness.process import PeerError

from ._base import ClientPeer, Endpoint, scratch_dir, version_in
from ._qemu import client_args

_DUMP_LINE = re.compile(r"^([0-9a-f]{8}):((?:\s+[0-9a-f]{2}){1,16})", re.MULTILINE)


def parse_hexdump(text: str, offset: int, length: int) -> bytes:
    """The bytes of qemu-io's ``read -v`` dump (``OFFSET:  xx xx ...  ascii``)."""
    data = bytearray()
    expected = offset
    for match in _DUMP_LINE.finditer(text):
        if int(match.group(1), 16) != expected:
            raise PeerError(f"qemu-io dump jumps to {match.group(1)} (expected {expected:08x})")
        line = bytes(int(word, 16) for word in match.group(2).split())
        data += line
        expected += len(line)
    if len(data) != length:
        raise PeerError(f"qemu-io dumped {len(data)} bytes, not {length}")
    return bytes(data)


class QemuIo(ClientPeer):
    """qemu's own NBD client, through ``qemu-io`` commands."""

    program = "qemu-io"
    executable = "qemu-io"
    capabilities = frozenset({"read", "write"})

    def parse_version(self, output: str) -> str:
        return version_in(output, "qemu-io")

    def commands(self, endpoint: Endpoint, *commands: str, binds: Sequence[Path] = (),
                 read_only: bool = False) -> subprocess.CompletedProcess:
        """Run qemu-io commands (``-c``) against the endpoint (opened ``-r`` if read-only)."""
        args = client_args(endpoint)
        words = [word for command in commands for word in ("-c", command)]
        mode = ["-r"] if read_only else []
        return self.run([*mode, *args[:-1], *words, args[-1]],
                        binds=[*endpoint.binds(), *binds])

    def read(self, endpoint: Endpoint, offset: int, length: int) -> bytes:
        result = self.commands(endpoint, f"read -v {offset} {length}", read_only=True)
        return parse_hexdump(str(result.stdout), offset, length)

    def write(self, endpoint: Endpoint, offset: int, data: bytes) -> None:
        with scratch_dir() as scratch:
            source = scratch / "data.bin"
            source.write_bytes(data)
            self.commands(endpoint, f"write -s {os.fspath(source)} {offset} {len(data)}",
                          "flush", binds=[scratch])


__all__ = ["QemuIo", "parse_hexdump"]
