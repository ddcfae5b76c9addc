"""Python's cyclic garbage collector paused around bulk work that makes no cycles.

Decoding a capture and judging its sessions make a few objects per message that all
live until the work is done (messages, fields, transactions, facts) and form no
reference cycles to speak of.  Each time enough of them pile up, the collector walks
every object alive, the whole decoded capture included, and frees nothing: on a capture
of 100,000 requests that cost as much as the decoding (or the rules) itself.  Reference
counting still frees what dies young while the collector is paused.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def collector_paused() -> Iterator[None]:
    """The cyclic collector off inside the block, and back on after it (if it was on)."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
