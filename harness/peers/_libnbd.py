"""Python scripts run by libnbd's bindings (``python3`` or ``nbdsh``) in a provider.

The bindings are the suite's own (``python3-libnbd`` inside the root
filesystem), so what runs is that libnbd version's client. Values are
embedded with :func:`repr`; results come back on stdout (raw bytes or JSON).
"""

from __future__ import annotations

import json

from harness.process import PeerError

from .export import Extents, merge_extents

# Block status requests ask for at most this much (the count is 32 bits).
_STATUS_SPAN = 1 << 30

_READ = """
import sys
h.set_uri_allow_local_file(True)  # tls-certificates=DIR is a local file
h.connect_uri({uri!r})
offset, remaining = {offset!r}, {length!r}
while remaining:
    piece = min(remaining, 16 << 20)
    sys.stdout.buffer.write(h.pread(piece, offset))
    offset += piece
    remaining -= piece
sys.stdout.buffer.flush()
h.shutdown()
"""

_WRITE = """
import sys
data = sys.stdin.buffer.read()
h.set_uri_allow_local_file(True)  # tls-certificates=DIR is a local file
h.connect_uri({uri!r})
offset = {offset!r}
for start in range(0, len(data), 16 << 20):
    h.pwrite(data[start:start + (16 << 20)], offset + start)
h.flush()
h.shutdown()
"""

_MAP = """
import json, sys
h.add_meta_context({context!r})
h.set_uri_allow_local_file(True)  # tls-certificates=DIR is a local file
h.connect_uri({uri!r})
if not h.can_meta_context({context!r}):
    sys.stderr.write("the server does not offer {context}\\n")
    sys.exit(3)
size = h.get_size()
offset, found = 0, []
def collect(metacontext, start, entries, err):
    if metacontext == {context!r}:
        found.append((start, entries))
    return 0
while offset < size:
    found.clear()
    h.block_status(min(size - offset, {span!r}), offset, collect)
    position = offset
    for start, entries in found:
        for index in range(0, len(entries), 2):
            length = min(entries[index], size - position)
            if length > 0:
                print(json.dumps([position, length, entries[index + 1]]))
                position += length
    if position == offset:
        sys.stderr.write("block status made no progress at %d\\n" % offset)
        sys.exit(4)
    offset = position
h.shutdown()
"""

_SIZE = """
h.set_uri_allow_local_file(True)  # tls-certificates=DIR is a local file
h.connect_uri({uri!r})
print(h.get_size())
h.shutdown()
"""

_VERSION = """
import nbd
handle = nbd.NBD()
print("libnbd", handle.get_version() if hasattr(handle, "get_version") else nbd.__version__)
"""

PYTHON_PRELUDE = "import nbd\nh = nbd.NBD()\n"
"""What ``python3 -c`` runs first (``nbdsh`` makes ``h`` itself)."""


def read_script(uri: str, offset: int, length: int) -> str:
    return _READ.format(uri=uri, offset=offset, length=length)


def write_script(uri: str, offset: int) -> str:
    return _WRITE.format(uri=uri, offset=offset)


def map_script(uri: str, context: str) -> str:
    return _MAP.format(uri=uri, context=context, span=_STATUS_SPAN)


def size_script(uri: str) -> str:
    return _SIZE.format(uri=uri)


def version_script() -> str:
    return _VERSION


def parse_map_output(text: str) -> Extents:
    """The ``[offset, length, flags]`` lines a map script prints, merged."""
    try:
        rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    except ValueError as exc:
        raise PeerError(f"unexpected map output: {text[:200]!r}") from exc
    return merge_extents((int(a), int(b), int(c)) for a, b, c in rows)


__all__ = [
    "PYTHON_PRELUDE",
    "map_script",
    "parse_map_output",
    "read_script",
    "size_script",
    "version_script",
    "write_script",
]
