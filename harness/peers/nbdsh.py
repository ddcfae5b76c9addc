"""nbdsh: libnbd's Python shell, scripted with ``-c`` (read, write, map any context, size)."""

from __future__ import annotations

from pathlib import Path

from harness.process import PeerError

from ._actions import ActionOutput, output_reader, parse_json
from ._base import ClientPeer, Endpoint, scratch_dir
from ._libnbd import (
    map_script,
    parse_map_output,
    read_script,
    size_script,
    write_script,
)
from .export import Extents

# What the nbdsh scripts of matrix/client-actions.toml print.


@output_reader("json-size")
def read_size(stdout: str, out: Path) -> ActionOutput:
    return ActionOutput(size=parse_json(stdout)["size"])


@output_reader("json-list")
def read_list(stdout: str, out: Path) -> ActionOutput:
    return ActionOutput(exports=list(parse_json(stdout)))


@output_reader("json-extents")
def read_extents(stdout: str, out: Path) -> ActionOutput:
    return ActionOutput(extents=[tuple(e) for e in parse_json(stdout)])  # type: ignore[misc]


class LibnbdScripted(ClientPeer):
    """A libnbd client driven by Python scripts (shared by ``nbdsh`` and the bindings)."""

    capabilities = frozenset({"read", "write", "map", "map-contexts", "size"})

    def command(self, script: str) -> list[str]:
        """The arguments that run ``script`` with a fresh handle ``h``."""
        raise NotImplementedError

    def _script(self, endpoint: Endpoint, script: str, *, input: bytes | None = None,
                text: bool = True, check: bool = True):
        with scratch_dir() as scratch:
            return self.run(self.command(script), binds=[*endpoint.binds(), scratch],
                            input=input, text=text, check=check)

    def read(self, endpoint: Endpoint, offset: int, length: int) -> bytes:
        result = self._script(endpoint, read_script(endpoint.uri(), offset, length), text=False)
        data = bytes(result.stdout)
        if len(data) != length:
            raise PeerError(f"{self.program} read {len(data)} bytes, not {length}")
        return data

    def write(self, endpoint: Endpoint, offset: int, data: bytes) -> None:
        self._script(endpoint, write_script(endpoint.uri(), offset), input=data)

    def map(self, endpoint: Endpoint, context: str = "base:allocation") -> Extents:
        result = self._script(endpoint, map_script(endpoint.uri(), context), check=False)
        if result.returncode != 0:
            raise PeerError(f"{self.program} could not map {context}: "
                            f"{str(result.stderr).strip()[-500:]}")
        return parse_map_output(str(result.stdout))

    def size(self, endpoint: Endpoint) -> int:
        return int(str(self._script(endpoint, size_script(endpoint.uri())).stdout).split()[-1])


class Nbdsh(LibnbdScripted):
    """``nbdsh -c SCRIPT`` (nbdsh makes the handle ``h``)."""

    program = "nbdsh"
    executable = "nbdsh"
    version_word = "libnbd"

    def command(self, script: str) -> list[str]:
        return ["-c", script]


__all__ = ["LibnbdScripted", "Nbdsh"]
