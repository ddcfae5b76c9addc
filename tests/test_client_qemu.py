"""The reference client against qemu-nbd (Debian bookworm: qemu 7.2).

A qcow2 backing chain with a persistent dirty bitmap, served with ``-A``
(``qemu:allocation-depth``) and ``-B b0`` (``qemu:dirty-bitmap:b0``): data and
every context's extents are checked exactly, then writes, zeroes and trims
are read back.  TLS: ``nbds://`` with the test PKI, a plain connection refused
with ``NBD_REP_ERR_TLS_REQD``, and a certificate from another CA.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from _fixtures_client import (
    CHAIN_SIZE,
    Chain,
    KiB,
    MiB,
    arun,
    build_chain,
    pattern,
    start_qemu_nbd,
)

from harness.client import Client, ConnectOptions, NbdClient, TlsError
from harness.protocol import constants as c
from harness.tls import make_test_pki

pytestmark = pytest.mark.peers

CONTEXTS = ("base:allocation", "qemu:allocation-depth", "qemu:dirty-bitmap:b0")


@pytest.fixture
def chain(tmp_path: Path, require_programs) -> Chain:
    require_programs("qemu-img", "qemu-io", "qemu-nbd")
    return build_chain(tmp_path / "images")


@pytest.fixture
def served_chain(tmp_path: Path, chain: Chain) -> Iterator[tuple[str, Chain]]:
    process, port = start_qemu_nbd(tmp_path, chain.top, "-A", "-B", "b0", "-D", "chain top")
    try:
        yield f"nbd://127.0.0.1:{port}/", chain
    finally:
        process.stop()


def test_chain_data_and_every_context_exactly(served_chain):
    uri, chain = served_chain
    with Client.connect(uri, options=ConnectOptions(meta_contexts=CONTEXTS)) as client:
        neg = client.negotiation
        assert neg.style == "fixed-newstyle" and neg.structured_replies
        assert neg.fallback_kinds() == ["extended-headers"]  # qemu 7.2 predates them
        assert neg.options[0].replies == (c.Rep.ERR_UNSUP,)
        assert sorted(neg.meta_contexts.values()) == sorted(CONTEXTS)
        assert neg.export_size == CHAIN_SIZE and neg.description == "chain top"
        assert client.read(0, CHAIN_SIZE) == chain.data
        assert client.map("qemu:allocation-depth") == chain.allocation_depth
        assert client.map("qemu:dirty-bitmap:b0") == chain.dirty_bitmap
        assert client.map("base:allocation") == chain.allocation
        # A map of a sub-range is clipped to it.
        assert client.map("qemu:allocation-depth", 32 * KiB, 64 * KiB) == [
            (32 * KiB, 32 * KiB, 2),
            (64 * KiB, 32 * KiB, 0),
        ]


def test_list_meta_contexts_with_qemu_queries(served_chain):
    uri, _ = served_chain
    options = ConnectOptions(enter_transmission=False)
    with Client.connect(uri, options=options) as client:
        assert sorted(client.list_meta_contexts("", ["qemu:"])) == [
            "qemu:allocation-depth",
            "qemu:dirty-bitmap:b0",
        ]
        assert client.list_meta_contexts("", ["qemu:dirty-bitmap:"]) == ["qemu:dirty-bitmap:b0"]
        assert set(client.list_meta_contexts("")) == set(CONTEXTS)
        assert [e.name for e in client.list_exports()] == [""]
        info = client.info("")
        assert info.size == CHAIN_SIZE and info.description == "chain top"
        client.enter_transmission()
        assert client.read(0, 64 * KiB) == b"\x11" * 64 * KiB


def test_write_zero_trim_read_back(served_chain):
    uri, chain = served_chain

    async def session() -> None:
        options = ConnectOptions(meta_contexts=CONTEXTS)
        async with await NbdClient.connect(uri, options=options) as client:
            expected = bytearray(chain.data)
            data = pattern(512 * KiB, 256 * KiB + 512, seed=5)
            await client.write(512 * KiB, data, fua=True)
            expected[512 * KiB : 512 * KiB + len(data)] = data
            await client.write_zeroes(1 * MiB, 32 * KiB)
            expected[1 * MiB : 1 * MiB + 32 * KiB] = bytes(32 * KiB)
            await client.write_zeroes(0, 4096, no_hole=True, fua=True)
            expected[0:4096] = bytes(4096)
            await client.trim(3 * MiB, 64 * KiB)
            # A trim leaves unspecified contents; qemu reads the backing file's through
            # a trimmed top cluster, so overwrite it with zeroes to pin it down.
            await client.write_zeroes(3 * MiB, 64 * KiB, fast_zero=False)
            expected[3 * MiB : 3 * MiB + 64 * KiB] = bytes(64 * KiB)
            await client.flush()
            await client.cache(0, 1 * MiB)
            assert await client.read(0, CHAIN_SIZE) == bytes(expected)
            dirty = await client.map("qemu:dirty-bitmap:b0")
            assert (512 * KiB, 320 * KiB, 1) in dirty  # 512K..832K, cluster-rounded

    arun(session())


# --- TLS ------------------------------------------------------------------------------------


@pytest.fixture
def tls_server(tmp_path: Path, chain: Chain) -> Iterator[tuple[int, Path]]:
    pki = make_test_pki(tmp_path / "pki")
    process, port = start_qemu_nbd(
        tmp_path,
        chain.top,
        "--object",
        f"tls-creds-x509,id=tls0,dir={pki.directory},endpoint=server",
        "--tls-creds",
        "tls0",
    )
    try:
        yield port, pki.directory
    finally:
        process.stop()


def test_tls_read_write_with_nbds(tls_server, chain):
    port, pki = tls_server
    with Client.connect(f"nbds://127.0.0.1:{port}/?tls-certificates={pki}") as client:
        neg = client.negotiation
        assert neg.tls and neg.options[0].option == c.Opt.STARTTLS
        assert neg.options[0].replies == (c.Rep.ACK,)
        assert neg.structured_replies and neg.meta_contexts == {0: "base:allocation"}
        assert client.tls_version in ("TLSv1.2", "TLSv1.3")
        assert client.read(0, 128 * KiB) == chain.data[: 128 * KiB]
        data = pattern(256 * KiB, 64 * KiB, seed=9)
        client.write(256 * KiB, data)
        assert client.read(256 * KiB, 64 * KiB) == data


def test_tls_required_server_refuses_plain_connections(tls_server):
    port, _ = tls_server
    with pytest.raises(TlsError) as info:
        Client.connect(f"nbd://127.0.0.1:{port}/")
    assert info.value.reply_type == c.Rep.ERR_TLS_REQD
    message = str(info.value)
    assert "NBD_REP_ERR_TLS_REQD" in message and "nbds://" in message and "\n" not in message


def test_certificate_from_another_ca_fails_cleanly(tls_server, tmp_path, chain):
    port, good = tls_server
    other = make_test_pki(tmp_path / "other-pki", ca_name="some other CA")
    with pytest.raises(TlsError, match="TLS handshake failed"):
        Client.connect(f"nbds://127.0.0.1:{port}/?tls-certificates={other.directory}")
    # The server is unharmed and still serves a client with the right certificates.
    with Client.connect(f"nbds://127.0.0.1:{port}/?tls-certificates={good}") as client:
        assert client.read(0, 4096) == chain.data[:4096]
