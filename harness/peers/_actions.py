"""What a client program's output says: :class:`ActionOutput` and the readers of its formats.

``matrix/client-actions.toml`` gives, per program and action, the command line
and the name of its output format; the program's driver module registers the
reader of each format it prints (:func:`output_reader`), and
:func:`harness.peers.actions.perform_action` reads every performed action's output
with it (for the client drivers and the client-role runner alike), so each
program's output is parsed in one place.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

OutputReader = Callable[[str, Path], "ActionOutput"]


@dataclass
class ActionOutput:
    """What an action's output said; only the fields its format has are set."""

    data: bytes | None = None
    extents: list[tuple[int, int, int]] | None = None
    size: int | None = None
    exports: list[str] | None = None
    document: Any = None
    """The whole JSON document an ``info`` or ``list`` format printed (its details)."""


OUTPUT_READERS: dict[str, OutputReader] = {}
"""Output format name -> reader of (stdout, the ``{out}`` file); filled by the modules that
know each format (:func:`output_reader`)."""


def output_reader(name: str) -> Callable[[OutputReader], OutputReader]:
    """Register the decorated function as the reader of the output format ``name``."""
    def register(reader: OutputReader) -> OutputReader:
        known = OUTPUT_READERS.get(name)
        # The same function again is its module imported anew (pytester's in-process runs
        # drop the modules they imported), not a second reader.
        if known is not None and (known.__module__, known.__qualname__) != (
                reader.__module__, reader.__qualname__):
            raise TypeError(f"two readers of the output format {name!r}")
        OUTPUT_READERS[name] = reader
        return reader

    return register


def parse_json(stdout: str) -> Any:
    """A program's JSON output; ValueError (naming the output) when it is not JSON."""
    try:
        return json.loads(stdout)
    except json.JSONDecodeError as exc:
        raise ValueError(f"output is not JSON ({exc}): {stdout[:200]!r}") from None


@output_reader("none")
def _no_output(stdout: str, out: Path) -> ActionOutput:
    return ActionOutput()


@output_reader("file")
def _file(stdout: str, out: Path) -> ActionOutput:
    return ActionOutput(data=out.read_bytes() if out.exists() else b"")


__all__ = ["OUTPUT_READERS", "ActionOutput", "OutputReader", "output_reader", "parse_json"]
