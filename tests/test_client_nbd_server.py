"""The reference client against nbd-server 3.24 (Debian bookworm).

nbd-server has no structured replies before 3.26 and no block status, so the
client falls back to simple replies and no contexts.  Its known quirk: it
answers ``NBD_OPT_INFO`` with an export size of 0, while ``NBD_OPT_GO`` on the
same connection reports the real size.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from _fixtures_client import KiB, MiB, pattern, start_nbd_server

from harness.client import Client, ConnectOptions
from harness.protocol import constants as c

pytestmark = pytest.mark.peers

SIZE = 4 * MiB


@pytest.fixture
def nbd_server(tmp_path: Path, require_programs) -> Iterator[str]:
    require_programs("nbd-server")
    image = tmp_path / "disk.img"
    with open(image, "wb") as handle:
        handle.truncate(SIZE)
    process, port = start_nbd_server(tmp_path, image, export="disk")
    try:
        yield f"nbd://127.0.0.1:{port}/disk"
    finally:
        process.stop()


def test_read_write_read_back_and_the_info_size_quirk(nbd_server):
    options = ConnectOptions(enter_transmission=False)
    with Client.connect(nbd_server, options=options) as client:
        neg = client.negotiation
        assert neg.style == "fixed-newstyle"
        assert neg.fallback_kinds() == ["extended-headers", "structured-replies"]
        assert [e.name for e in client.list_exports()] == ["disk"]
        # The quirk: NBD_OPT_INFO says 0 bytes ...
        info = client.info("disk")
        assert info.size == 0
        client.enter_transmission()
        # ... and NBD_OPT_GO, right after, the real size.
        assert neg.selected_with == "NBD_OPT_GO" and neg.export_size == SIZE
        assert "meta-contexts" in neg.fallback_kinds() and not neg.meta_contexts
        data = pattern(0, 1 * MiB + 3, seed=4)
        client.write(123, data)
        assert client.read(123, len(data)) == data
        assert client.can(c.TransmissionFlag.SEND_WRITE_ZEROES)
        client.write_zeroes(64 * KiB, 64 * KiB)
        assert client.read(64 * KiB, 64 * KiB) == bytes(64 * KiB)
        assert client.read(SIZE - 4096, 4096) == bytes(4096)
