"""The test PKI: file layout, certificate contents, and acceptance by OpenSSL, GnuTLS,
Python's ssl module, qemu-nbd (server) and libnbd (client)."""

from __future__ import annotations

import json
import socket
import ssl
import stat
import struct
import threading
import urllib.parse
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from harness.process import pick_port_and_start, run_command
from harness.tls import TestPKI, make_test_pki

_FILES = ("ca-cert.pem", "ca-key.pem", "server-cert.pem", "server-key.pem",
          "client-cert.pem", "client-key.pem")  # fmt: skip


def _load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_files_and_modes(pki: TestPKI, tmp_path: Path) -> None:
    assert pki.directory == tmp_path / "pki"
    assert sorted(p.name for p in pki.directory.iterdir()) == sorted(_FILES)
    for name in _FILES:
        mode = stat.S_IMODE((pki.directory / name).stat().st_mode)
        assert mode == (0o600 if name.endswith("-key.pem") else 0o644), name
    for key_path in (pki.ca_key, pki.server_key, pki.client_key):
        assert key_path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
        serialization.load_pem_private_key(key_path.read_bytes(), password=None)


def test_certificate_extensions(pki: TestPKI) -> None:
    ca = _load(pki.ca_cert)
    constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca
    usage = ca.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical and usage.value.key_cert_sign and usage.value.crl_sign
    assert not usage.value.digital_signature

    for path, purpose in (
        (pki.server_cert, ExtendedKeyUsageOID.SERVER_AUTH),
        (pki.client_cert, ExtendedKeyUsageOID.CLIENT_AUTH),
    ):
        cert = _load(path)
        assert cert.issuer == ca.subject
        assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage)
        assert usage.critical and usage.value.digital_signature and usage.value.key_encipherment
        assert not usage.value.key_cert_sign
        assert list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
            purpose
        ]
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert names.get_values_for_type(x509.DNSName) == ["localhost"]
        assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == [
            "127.0.0.1",
            "::1",
        ]


def test_custom_names_and_unrelated_ca(tmp_path: Path) -> None:
    first = make_test_pki(tmp_path / "a", hostnames=("nbd.test", "other.test"), ips=())
    second = make_test_pki(tmp_path / "b", ca_name="another CA")
    assert _load(first.ca_cert).subject != _load(second.ca_cert).subject
    names = _load(first.server_cert).extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert names.value.get_values_for_type(x509.DNSName) == ["nbd.test", "other.test"]
    assert names.value.get_values_for_type(x509.IPAddress) == []


def test_openssl_verifies(pki: TestPKI, tmp_path: Path, require_programs) -> None:
    require_programs("openssl")
    result = run_command(
        ["openssl", "verify", "-CAfile", pki.ca_cert, pki.server_cert, pki.client_cert],
        timeout=30,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines() == [f"{pki.server_cert}: OK", f"{pki.client_cert}: OK"]
    stranger = make_test_pki(tmp_path / "stranger", ca_name="stranger CA")
    refused = run_command(
        ["openssl", "verify", "-CAfile", pki.ca_cert, stranger.server_cert], timeout=30
    )
    assert refused.returncode != 0


def test_gnutls_certtool_verifies(pki: TestPKI, tmp_path: Path, require_programs) -> None:
    require_programs("certtool")
    for cert in (pki.server_cert, pki.client_cert):
        result = run_command(
            ["certtool", "--verify", "--load-ca-certificate", pki.ca_cert, "--infile", cert],
            timeout=30,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert "The certificate is trusted" in result.stdout
    stranger = make_test_pki(tmp_path / "stranger", ca_name="stranger CA")
    refused = run_command(
        ["certtool", "--verify", "--load-ca-certificate", pki.ca_cert, "--infile",
         stranger.client_cert],
        timeout=30,
    )  # fmt: skip
    assert refused.returncode != 0


# -- Python ssl ------------------------------------------------------------------------


def _handshake(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext, server_hostname: str
) -> tuple[BaseException | None, BaseException | None, dict | None]:
    """Run a TLS handshake and one round trip over a socketpair.

    Returns the server's error, the client's error, and the client certificate the server saw.
    """
    server_sock, client_sock = socket.socketpair()
    server_sock.settimeout(10)
    client_sock.settimeout(10)
    outcome: dict[str, object] = {}

    def serve() -> None:
        try:
            with server_context.wrap_socket(server_sock, server_side=True) as tls:
                outcome["peer"] = tls.getpeercert()
                data = tls.recv(5)
                tls.sendall(data[::-1])
        except (OSError, ssl.SSLError) as exc:
            outcome["server_error"] = exc
            server_sock.close()

    thread = threading.Thread(target=serve)
    thread.start()
    client_error: BaseException | None = None
    try:
        with client_context.wrap_socket(client_sock, server_hostname=server_hostname) as tls:
            tls.sendall(b"hello")
            reply = b""
            while len(reply) < 5:
                chunk = tls.recv(5 - len(reply))
                if not chunk:
                    raise ConnectionError("server closed the connection")
                reply += chunk
            assert reply == b"olleh"
    except (OSError, ssl.SSLError) as exc:
        client_error = exc
        client_sock.close()
    finally:
        thread.join(timeout=30)
    assert not thread.is_alive()
    server_error = outcome.get("server_error")
    assert server_error is None or isinstance(server_error, BaseException)
    peer = outcome.get("peer")
    return server_error, client_error, peer if isinstance(peer, dict) else None


def _common_name(peer_cert: dict) -> str:
    return dict(item[0] for item in peer_cert["subject"])["commonName"]


@pytest.mark.parametrize("server_hostname", ["localhost", "127.0.0.1"])
def test_ssl_mutual_auth(session_pki: TestPKI, server_hostname: str) -> None:
    server_error, client_error, peer = _handshake(
        session_pki.ssl_server_context(require_client_cert=True),
        session_pki.ssl_client_context(),
        server_hostname,
    )
    assert server_error is None and client_error is None
    assert peer is not None and _common_name(peer) == "nbd-harness client"


def test_ssl_without_client_cert(session_pki: TestPKI) -> None:
    server_error, client_error, peer = _handshake(
        session_pki.ssl_server_context(require_client_cert=False),
        session_pki.ssl_client_context(with_client_cert=False),
        "localhost",
    )
    assert server_error is None and client_error is None
    assert not peer

    server_error, _, _ = _handshake(
        session_pki.ssl_server_context(require_client_cert=True),
        session_pki.ssl_client_context(with_client_cert=False),
        "localhost",
    )
    assert isinstance(server_error, ssl.SSLError)


def test_ssl_refuses_client_cert_from_another_ca(session_pki: TestPKI, tmp_path: Path) -> None:
    stranger = make_test_pki(tmp_path / "stranger", ca_name="stranger CA")
    client_context = session_pki.ssl_client_context(with_client_cert=False)
    client_context.load_cert_chain(stranger.client_cert, stranger.client_key)
    server_error, client_error, peer = _handshake(
        session_pki.ssl_server_context(require_client_cert=True), client_context, "localhost"
    )
    assert isinstance(server_error, ssl.SSLError)
    assert "certificate verify failed" in str(server_error)
    assert client_error is not None  # TLS 1.3: the client learns it on its first read
    assert peer is None


def test_ssl_client_refuses_server_of_another_ca(session_pki: TestPKI, tmp_path: Path) -> None:
    stranger = make_test_pki(tmp_path / "stranger", ca_name="stranger CA")
    _, client_error, _ = _handshake(
        session_pki.ssl_server_context(require_client_cert=False),
        stranger.ssl_client_context(),
        "localhost",
    )
    assert isinstance(client_error, ssl.SSLCertVerificationError)


def test_ssl_client_checks_hostname(session_pki: TestPKI) -> None:
    _, client_error, _ = _handshake(
        session_pki.ssl_server_context(require_client_cert=False),
        session_pki.ssl_client_context(),
        "not-in-the-certificate.example",
    )
    assert isinstance(client_error, ssl.SSLCertVerificationError)


# -- real peers: qemu-nbd serves with these files, libnbd connects with them ---------------

_IMAGE_SIZE = 1024 * 1024
_SEED = 0x5EED_0F_7E57


def _pattern(offset: int, length: int, seed: int) -> bytes:
    """Bytes derived from the offset and a seed: each 8-byte word is (offset ^ seed)."""
    return b"".join(struct.pack(">Q", (word ^ seed) & (2**64 - 1))
                    for word in range(offset, offset + length, 8))  # fmt: skip


def _nbds_uri(port: int, certificates: Path) -> str:
    query = urllib.parse.urlencode({"tls-certificates": str(certificates)})
    return f"nbds://127.0.0.1:{port}/?{query}"


@pytest.fixture
def qemu_nbd_tls(pki: TestPKI, tmp_path: Path, require_programs: Callable[..., dict[str, str]]):
    """qemu-nbd serving a patterned raw image over TLS with ``pki``; yields (port, image)."""
    require_programs("qemu-nbd", "nbdinfo")
    image = tmp_path / "disk.raw"
    image.write_bytes(_pattern(0, _IMAGE_SIZE, _SEED))
    process, port = pick_port_and_start(
        lambda port: [
            "qemu-nbd",
            "--object",
            f"tls-creds-x509,id=tls0,dir={pki.directory},endpoint=server",
            "--tls-creds",
            "tls0",
            "-t",
            "--bind",
            "127.0.0.1",
            "--port",
            str(port),
            "-f",
            "raw",
            str(image),
        ],
        log_path=tmp_path / "qemu-nbd.log",
    )
    with process:
        yield port, image
        assert process.is_running(), process.log_text()


@pytest.mark.peers
def test_qemu_nbd_accepts_the_pki(pki: TestPKI, qemu_nbd_tls) -> None:
    port, _ = qemu_nbd_tls
    result = run_command(["nbdinfo", "--json", _nbds_uri(port, pki.directory)], timeout=60)
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["TLS"] is True
    assert [export["export-size"] for export in info["exports"]] == [_IMAGE_SIZE]


@pytest.mark.peers
def test_qemu_nbd_refuses_plain_nbd(qemu_nbd_tls) -> None:
    port, _ = qemu_nbd_tls
    result = run_command(["nbdinfo", "--json", f"nbd://127.0.0.1:{port}/"], timeout=60)
    assert result.returncode != 0
    assert "export-size" not in result.stdout


@pytest.mark.peers
def test_qemu_nbd_refuses_client_of_another_ca(qemu_nbd_tls, tmp_path: Path) -> None:
    port, _ = qemu_nbd_tls
    stranger = make_test_pki(tmp_path / "stranger", ca_name="stranger CA")
    result = run_command(["nbdinfo", "--json", _nbds_uri(port, stranger.directory)], timeout=60)
    assert result.returncode != 0
    assert "export-size" not in result.stdout


@pytest.mark.peers
def test_data_round_trip_over_tls(pki: TestPKI, qemu_nbd_tls) -> None:
    """libnbd reads the image through TLS, writes a new pattern, and the file holds it."""
    try:
        import nbd  # Debian's python3-libnbd, visible through --system-site-packages
    except ImportError:
        pytest.fail("python3-libnbd is not installed: run scripts/bootstrap", pytrace=False)
    port, image = qemu_nbd_tls
    handle = nbd.NBD()  # libnbd 1.14's handle has no close(): it closes when collected
    handle.set_tls(nbd.TLS_REQUIRE)
    handle.set_tls_certificates(str(pki.directory))
    handle.connect_tcp("127.0.0.1", str(port))
    assert handle.get_tls_negotiated()
    assert handle.get_size() == _IMAGE_SIZE
    assert handle.pread(_IMAGE_SIZE, 0) == _pattern(0, _IMAGE_SIZE, _SEED)
    offset, length, new_seed = 64 * 1024, 128 * 1024, 0xA5A5
    handle.pwrite(_pattern(offset, length, new_seed), offset)
    handle.flush()
    assert handle.pread(length, offset) == _pattern(offset, length, new_seed)
    handle.shutdown()
    del handle
    expected = bytearray(_pattern(0, _IMAGE_SIZE, _SEED))
    expected[offset : offset + length] = _pattern(offset, length, new_seed)
    assert image.read_bytes() == bytes(expected)
