"""A small scenario library and helpers for the matrix, report and plugin tests.

The scenarios are written here (not taken from ``scenarios/``), so these tests
pin the runner's behaviour, not the library's contents.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

SCENARIOS = {
    "options/sr-read.yaml": """\
name: sr-read
description: structured replies are negotiated and reads come back right
spec: ["Option types", "Structured reply chunk message"]
requires: {server: [structured-replies], client: [structured-replies]}
fallback:
  outcome: expected-fallback
  why: without structured replies the client uses simple replies; data stays correct
  expect:
    - expect_negotiated: {structured_replies: false}
    - read: {offset: 0, length: 256k}
export:
  data: [{offset: 64k, length: 64k, seed: 3}]
roles: [server]
steps:
  - connect: {structured_replies: true, extended_headers: false}
  - expect_negotiated: {structured_replies: true, extended_headers: false}
  - read: {offset: 0, length: 256k}
""",
    "commands/write-read-back.yaml": """\
name: write-read-back
description: data written is read back unchanged
spec: ["Request types"]
roles: [server]
steps:
  - connect: {}
  - write: {offset: 64k, length: 64k, seed: 7}
  - read: {offset: 64k, length: 64k}
    expect: {data: model}
""",
    "tls/abort-in-the-clear.yaml": """\
name: abort-in-the-clear
description: a client may abort in the clear on a TLS-only server; the server acknowledges
spec: ["FORCEDTLS mode", "Option types"]
requires: {server: [starttls-x509]}
fallback: {outcome: unsupported, why: the server has no TLS}
export: {tls: required}
roles: [server]
steps:
  - connect:
      tls: "off"
      enter_transmission: false
      structured_replies: false
      extended_headers: false
  - option: {option: NBD_OPT_ABORT}
    expect: {final: [NBD_REP_ACK, closed]}
""",
    "client/client-sr.yaml": """\
name: client-sr
description: the client asks for structured replies, and falls back to simple ones
spec: ["Structured reply chunk message"]
requires: {server: [structured-replies], client: [structured-replies]}
fallback:
  outcome: expected-fallback
  why: a server without structured replies gets simple replies
  client_expect:
    - expect_sessions: {which: last, structured_replies: false}
export: {size: 1M}
roles: [client]
client_steps:
  - client_action: {action: info}
    expect: {size: export}
  - expect_sessions: {which: last, structured_replies: true}
""",
}


def write_library(directory: Path, names: tuple[str, ...] | None = None) -> Path:
    """Write the test scenarios (all, or those whose file stem is in ``names``)."""
    for relative, text in SCENARIOS.items():
        if names is not None and Path(relative).stem not in names:
            continue
        path = directory / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return directory


@contextlib.contextmanager
def silent_server() -> Iterator[int]:
    """A TCP server on a kernel-chosen port that accepts and never says a word."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.settimeout(0.2)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            held.append(connection)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join(5)
        listener.close()
        for connection in held:
            connection.close()
