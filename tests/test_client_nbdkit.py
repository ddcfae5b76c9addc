"""The reference client against nbdkit 1.32's ``memory`` plugin.

TCP and unix sockets; write/read-back, zero, trim, ``base:allocation``, FUA,
flush and cache; and nbdkit's switches that make it look older: ``--no-sr``
(simple replies only), ``--mask-handshake=0`` (non-fixed newstyle) and
``--oldstyle``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from _fixtures_client import KiB, MiB, arun, pattern, start_nbdkit, start_nbdkit_unix

from harness.client import Client, NbdClient
from harness.protocol import LocalProtocolError
from harness.protocol import constants as c

pytestmark = pytest.mark.peers

TF = c.TransmissionFlag
SIZE = 16 * MiB


@pytest.fixture
def nbdkit(tmp_path: Path, require_programs):
    """Start nbdkit with extra options on a kernel-chosen port; every one is stopped."""
    require_programs("nbdkit")
    started = []

    def start(*options: str) -> str:
        process, port = start_nbdkit(
            tmp_path, *options, "memory", "16M", name=f"nbdkit{len(started)}"
        )
        started.append(process)
        return f"nbd://127.0.0.1:{port}/"

    try:
        yield start
    finally:
        for process in started:
            process.stop()


@pytest.fixture
def nbdkit_unix(tmp_path: Path, require_programs) -> Iterator[str]:
    require_programs("nbdkit")
    process, sock = start_nbdkit_unix(tmp_path, "memory", "16M")
    try:
        yield f"nbd+unix:///?socket={sock}"
    finally:
        process.stop()


def test_memory_plugin_write_zero_trim_and_allocation(nbdkit):
    uri = nbdkit()

    async def session() -> None:
        async with await NbdClient.connect(uri) as client:
            neg = client.negotiation
            assert neg.structured_replies and not neg.extended_headers
            assert neg.fallback_kinds() == ["extended-headers"]
            assert neg.export_size == SIZE
            assert list(neg.meta_contexts.values()) == ["base:allocation"]
            for flag in (
                TF.SEND_FLUSH,
                TF.SEND_FUA,
                TF.SEND_TRIM,
                TF.SEND_WRITE_ZEROES,
                TF.SEND_CACHE,
            ):
                assert client.can(flag), c.spec_name(flag)
            assert await client.map() == [(0, SIZE, 3)]
            data = pattern(1 * MiB, 256 * KiB, seed=11)
            await client.write(1 * MiB, data, fua=True)
            assert await client.read(1 * MiB, 256 * KiB) == data
            assert await client.map() == [
                (0, 1 * MiB, 3),
                (1 * MiB, 256 * KiB, 0),
                (1 * MiB + 256 * KiB, SIZE - 1 * MiB - 256 * KiB, 3),
            ]
            await client.write_zeroes(1 * MiB, 64 * KiB, fua=True)
            await client.trim(1 * MiB + 192 * KiB, 64 * KiB)
            await client.flush()
            await client.cache(0, 2 * MiB)
            expected = bytes(64 * KiB) + data[64 * KiB : 192 * KiB] + bytes(64 * KiB)
            assert await client.read(1 * MiB, 256 * KiB) == expected
            # Unaligned pieces and many in flight at once.
            pieces = [(5 * MiB + i * 1000, pattern(5 * MiB + i * 1000, 1000, i)) for i in range(40)]
            await asyncio.gather(*(client.write(off, d) for off, d in pieces))
            assert await client.read(5 * MiB, 40_000) == b"".join(d for _, d in pieces)

    arun(session())


def test_unix_socket(nbdkit_unix):
    with Client.connect(nbdkit_unix) as client:
        assert client.export_size == SIZE
        client.write(0, pattern(0, 4096))
        assert client.read(0, 4096) == pattern(0, 4096)


def test_no_sr_forces_simple_replies(nbdkit):
    with Client.connect(nbdkit("--no-sr")) as client:
        neg = client.negotiation
        assert not (neg.structured_replies or neg.extended_headers)
        assert neg.fallback_kinds() == ["extended-headers", "structured-replies", "meta-contexts"]
        assert [o.final for o in neg.options[:2]] == [c.Rep.ERR_UNSUP, c.Rep.ERR_UNSUP]
        assert not client.can(TF.SEND_DF)  # DF needs structured replies
        data = pattern(0, 3 * MiB, seed=2)
        client.write(0, data)
        assert client.read(0, 3 * MiB) == data
        with pytest.raises(LocalProtocolError):
            client.block_status(0, 4096)


def test_mask_handshake_zero_is_nonfixed_newstyle(nbdkit):
    with Client.connect(nbdkit("--mask-handshake=0")) as client:
        neg = client.negotiation
        assert neg.style == "newstyle" and neg.handshake_flags == 0 and neg.client_flags == 0
        assert neg.selected_with == "NBD_OPT_EXPORT_NAME"
        assert [o.option for o in neg.options] == [c.Opt.EXPORT_NAME]
        client.write(4096, b"m" * 4096)
        assert client.read(4096, 4096) == b"m" * 4096


def test_mask_handshake_without_no_zeroes_reads_the_padding(nbdkit):
    with Client.connect(nbdkit("--mask-handshake=1")) as client:
        neg = client.negotiation
        assert neg.style == "fixed-newstyle"
        assert neg.client_flags == c.ClientFlag.C_FIXED_NEWSTYLE
        assert client.read(0, 512) == bytes(512)


def test_oldstyle(nbdkit):
    with Client.connect(nbdkit("--oldstyle")) as client:
        neg = client.negotiation
        assert neg.style == "oldstyle" and neg.export_size == SIZE
        client.write(0, pattern(0, 8192))
        assert client.read(0, 8192) == pattern(0, 8192)
