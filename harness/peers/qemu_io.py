"""qemu-io as an NBD client: ``read -v`` (a hex dump), ``write -s FILE``, zeroes, discards.

(``length`` prints a rounded human size, so qemu-io does not tell sizes.)
"""

from __future__ import annotations

import re
from pathlib import Path

from harness.process import PeerError

from ._actions import ActionOutput, output_reader
from ._base import ClientPeer

# qemu-io's dump_buffer(): "OFFSET:  xx xx ... xx  ascii" (16 bytes a line, the last one
# shorter, unpadded): the bytes end at the first double space.
_DUMP_LINE = re.compile(r"^([0-9a-f]{8}):\s+((?:[0-9a-f]{2} ?)+?)\s{2,}", re.MULTILINE)


class HexdumpError(PeerError, ValueError):
    """qemu-io's output is not the dump that was asked for."""


def parse_hexdump(text: str, offset: int | None = None, length: int | None = None) -> bytes:
    """The bytes of qemu-io's ``read -v`` dump: the one reader of qemu-io's output.

    The dump must have no gaps (and start at ``offset``, when given); with ``length`` it
    must hold exactly that many bytes. A read qemu-io reports as failed is an error.
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
    """qemu's own NBD client, through ``qemu-io`` commands (``[qemu-io]`` of
    ``matrix/client-actions.toml``)."""

    program = "qemu-io"
    executable = "qemu-io"
    version_word = "qemu-io"


__all__ = ["HexdumpError", "QemuIo", "parse_hexdump", "read_dump"]
