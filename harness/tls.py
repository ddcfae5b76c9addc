"""Throw-away X.509 PKIs for TLS tests (``nbds://`` and ``NBD_OPT_STARTTLS``).

:func:`make_test_pki` writes a CA, a server and a client certificate into one
directory, in the layout that GnuTLS users expect: qemu's
``tls-creds-x509,dir=DIR``, nbdkit's ``--tls-certificates=DIR`` and libnbd's
``tls-certificates=DIR`` all read the same file names. The extensions are the
ones qemu's ``crypto/tlscredsx509.c`` insists on (it refuses to start with a
CA lacking ``keyCertSign`` or a server certificate lacking ``serverAuth``).
Python's :mod:`ssl` can use the same files through
:meth:`TestPKI.ssl_server_context` and :meth:`TestPKI.ssl_client_context`.

Each call makes a new, unrelated CA: a test that needs a certificate the
server must refuse makes a second PKI with another ``ca_name``.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["TestPKI", "make_test_pki"]

# ECDSA P-256: accepted by every GnuTLS and OpenSSL we meet, and generated in well under a
# millisecond where a 2048-bit RSA key takes a tenth of a second or more (tests make many
# PKIs). qemu demands the keyEncipherment bit on leaf certificates; for an EC key the bit is
# meaningless but harmless, and GnuTLS and OpenSSL accept it.
_CURVE = ec.SECP256R1()
# Certificates start an hour in the past so a peer with a slightly slow clock accepts them.
_CLOCK_SKEW = datetime.timedelta(hours=1)


@dataclass(frozen=True)
class TestPKI:
    """Paths of one PKI's files, all in :attr:`directory` (pass it as qemu's ``dir=``)."""

    __test__ = False  # not a pytest test class, despite the name

    directory: Path
    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    ca_name: str
    hostnames: tuple[str, ...]
    ips: tuple[str, ...]

    def ssl_server_context(self, require_client_cert: bool = True) -> ssl.SSLContext:
        """A server context with this PKI's server certificate.

        With ``require_client_cert`` the handshake fails unless the client presents a
        certificate signed by this PKI's CA; without it no client certificate is asked for.
        """
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.server_cert, self.server_key)
        context.load_verify_locations(cafile=self.ca_cert)
        context.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_NONE
        return context

    def ssl_client_context(self, with_client_cert: bool = True) -> ssl.SSLContext:
        """A client context trusting this PKI's CA (hostname checked), with its client cert."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.load_verify_locations(cafile=self.ca_cert)
        if with_client_cert:
            context.load_cert_chain(self.client_cert, self.client_key)
        return context


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(_CURVE)


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "nbd-harness"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _key_usage(*, signing: bool) -> x509.KeyUsage:
    """keyCertSign+cRLSign for a CA, digitalSignature+keyEncipherment for a leaf."""
    return x509.KeyUsage(
        digital_signature=not signing,
        content_commitment=False,
        key_encipherment=not signing,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=signing,
        crl_sign=signing,
        encipher_only=False,
        decipher_only=False,
    )


def _builder(
    subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey, days: int
) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )


def _leaf_certificate(
    *,
    common_name: str,
    usage: x509.ObjectIdentifier,
    hostnames: Sequence[str],
    ips: Sequence[str],
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    days: int,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _new_key()
    alt_names: list[x509.GeneralName] = [x509.DNSName(name) for name in hostnames]
    alt_names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
    builder = (
        _builder(_name(common_name), ca_cert.subject, key.public_key(), days)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(signing=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    if alt_names:
        builder = builder.add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
    return builder.sign(ca_key, hashes.SHA256()), key


def _write(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` to ``path`` with exactly ``mode``, whatever the umask or an old file."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(descriptor, "wb") as stream:
        os.fchmod(stream.fileno(), mode)
        stream.write(data)


def _pem_cert(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def make_test_pki(
    directory: Path,
    *,
    hostnames: Sequence[str] = ("localhost",),
    ips: Sequence[str] = ("127.0.0.1", "::1"),
    days: int = 2,
    ca_name: str = "nbd-harness test CA",
) -> TestPKI:
    """Create a CA and a server and client certificate signed by it, in ``directory``.

    Writes ``ca-cert.pem``, ``ca-key.pem``, ``server-cert.pem``, ``server-key.pem``,
    ``client-cert.pem`` and ``client-key.pem`` (keys unencrypted PKCS#8, mode 0600;
    certificates 0644). The server and client certificates name ``hostnames`` and ``ips``
    in their subjectAltName and are valid for ``days`` days.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    hostnames = tuple(hostnames)
    ips = tuple(str(ipaddress.ip_address(ip)) for ip in ips)

    ca_key = _new_key()
    ca_subject = _name(ca_name)
    ca_cert = (
        _builder(ca_subject, ca_subject, ca_key.public_key(), days)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(_key_usage(signing=True), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    server_cert, server_key = _leaf_certificate(
        common_name=hostnames[0] if hostnames else (ips[0] if ips else "server"),
        usage=ExtendedKeyUsageOID.SERVER_AUTH,
        hostnames=hostnames,
        ips=ips,
        ca_cert=ca_cert,
        ca_key=ca_key,
        days=days,
    )
    client_cert, client_key = _leaf_certificate(
        common_name="nbd-harness client",
        usage=ExtendedKeyUsageOID.CLIENT_AUTH,
        hostnames=hostnames,
        ips=ips,
        ca_cert=ca_cert,
        ca_key=ca_key,
        days=days,
    )

    pki = TestPKI(
        directory=directory,
        ca_cert=directory / "ca-cert.pem",
        ca_key=directory / "ca-key.pem",
        server_cert=directory / "server-cert.pem",
        server_key=directory / "server-key.pem",
        client_cert=directory / "client-cert.pem",
        client_key=directory / "client-key.pem",
        ca_name=ca_name,
        hostnames=hostnames,
        ips=ips,
    )
    _write(pki.ca_cert, _pem_cert(ca_cert), 0o644)
    _write(pki.ca_key, _pem_key(ca_key), 0o600)
    _write(pki.server_cert, _pem_cert(server_cert), 0o644)
    _write(pki.server_key, _pem_key(server_key), 0o600)
    _write(pki.client_cert, _pem_cert(client_cert), 0o644)
    _write(pki.client_key, _pem_key(client_key), 0o600)
    return pki
