"""A worker process of :mod:`harness.matrix.pool`: runs the cases it is sent, one at a time.

Started as ``python -m harness.matrix._worker DIRECTORY SHARD NAME KEEP``.  It
reads framed pickles ``(index, case)`` from stdin (an empty frame: no more
work) and answers each with a framed pickle ``("done", index, result dict)``
(or ``("crash", index, text)`` for a bug that escaped :func:`run_case`) on
the stdout it had at start; its own fd 1 is pointed at stderr first, so that
nothing printed by a library can corrupt the frames.
"""

from __future__ import annotations

import os
import pickle
import signal
import struct
import sys
from pathlib import Path
from typing import Any, BinaryIO

_HEADER = struct.Struct(">Q")


def write_frame(stream: BinaryIO, payload: Any) -> None:
    data = pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_HEADER.pack(len(data)) + data)
    stream.flush()


def read_frame(stream: BinaryIO) -> Any | None:
    """The next frame's object; None at end of stream or for an empty frame."""
    header = stream.read(_HEADER.size)
    if len(header) < _HEADER.size:
        return None
    (length,) = _HEADER.unpack(header)
    if length == 0:
        return None
    data = stream.read(length)
    if len(data) < length:
        return None
    return pickle.loads(data)


def main(argv: list[str]) -> int:
    directory, shard, name, keep, evidence = argv
    # The parent decides about interruptions; SIGTERM (from the parent) stops our peers
    # through harness.process's handler and ends us.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    replies = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    # Imported only now: output printed while importing cannot corrupt the frames, and the
    # pool's parent, which imports this module for its framing, never loads the runner.
    from .results import ResultStore
    from .runner import run_case

    store = ResultStore(Path(directory))
    tasks = sys.stdin.buffer
    while True:
        item = read_frame(tasks)
        if item is None:
            return 0
        index, case = item
        try:
            result = run_case(case, store, shard=shard, worker=name, keep_data=keep == "1",
                              evidence=evidence)
            write_frame(replies, ("done", index, result.to_dict()))
        except Exception as exc:  # run_case turns failures into results: this is a bug
            write_frame(replies, ("crash", index, f"{type(exc).__name__}: {exc}"))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
