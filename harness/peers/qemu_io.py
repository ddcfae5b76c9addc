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

from ._actions import ActionOutput, output_reader
from ._base import ClientPeer, Endpoint, scratch_dir
from ._qemu import client_args

# qemu-io's dump_buffer(): "OFFSET:  xx xx ... xx  ascii" (16 bytes a line, the last one
# shorter, unpadded): the bytes end at the first double space.
_DUMP_LINE = re.compile(r"^([0-9a-f]{8}):\s+((?:[0-9a-f]{2} ?)+?)\s{2,}", re.MULTILINE)


class HexdumpError(PeerError, ValueError):
    """qemu-io's output is not the dump that was asked for."""


def parse_hexdump(text: str, offset: int | None = None, length: int | None = None) -> bytes:
    """The bytes of qemu-io's ``read -v`` dump: the one reader of qemu-io's output.

    With ``offset`` the dump must start there and have no gaps; with ``length`` it must
    hold exactly that many bytes. A read qemu-io reports as failed is an error.
    """
    data = bytearray()
    expected = offset
    for match in _DUMP_LINE.finditer(text):
        start = int(match.group(1), 16)
        if expected is not None and start != expected:
            raise HexdumpError(f"qemu-io dump jumps to {match.group(1)} "
                               f"(expected {expected:08x})")
        line = bytes.fromhex(match.group(2).replace(" ", ""))
        data += line
        if offset is not None:
            expected = start + len(line)
    if "failed" in text.lower() and not data:
        raise HexdumpError(f"qemu-io read failed: {text.strip()[:200]}")
    if length is not None and len(data) != length:
        raise HexdumpError(f"qemu-io dumped {len(data)} bytes, not {length}")
    return bytes(data)


@output_reader("qemu-io-dump")
def read_dump(stdout: str, out: Path) -> ActionOutput:
    """``qemu-io -c 'read -v ...'``: the bytes it dumped."""
    return ActionOutput(data=parse_hexdump(stdout))


class QemuIo(ClientPeer):
    """qemu's own NBD client, through ``qemu-io`` commands."""

    program = "qemu-io"
    executable = "qemu-io"
    version_word = "qemu-io"
    capabilities = frozenset({"read", "write"})

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


__all__ = ["HexdumpError", "QemuIo", "parse_hexdump", "read_dump"]
