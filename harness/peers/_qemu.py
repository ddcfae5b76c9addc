"""What qemu's programs share: TLS objects and NBD image options."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from ._base import Endpoint

TLS_ID = "tls0"


def escape_option(value: str) -> str:
    """A value inside qemu's comma-separated options: commas are doubled."""
    return value.replace(",", ",,")


def tls_object(directory: Path, endpoint: Literal["server", "client"]) -> list[str]:
    """``--object tls-creds-x509,...``: the PKI of :func:`harness.tls.make_test_pki`.

    qemu reads ``ca-cert.pem`` and ``server-*.pem`` or ``client-*.pem`` from the
    directory; a server verifies the client's certificate (``verify-peer`` defaults on).
    """
    return [
        "--object",
        f"tls-creds-x509,id={TLS_ID},dir={escape_option(os.fspath(directory))},"
        f"endpoint={endpoint}",
    ]


def nbd_image_opts(endpoint: Endpoint) -> str:
    """``--image-opts`` for qemu's NBD client (TCP or unix socket, TLS when asked)."""
    parts = ["driver=nbd"]
    address = endpoint.address
    if address.kind == "unix":
        parts += ["server.type=unix", f"server.path={escape_option(address.path)}"]
    else:
        parts += ["server.type=inet", f"server.host={address.host}",
                  f"server.port={address.port}"]
    if endpoint.export:
        parts.append(f"export={escape_option(endpoint.export)}")
    if endpoint.tls:
        parts.append(f"tls-creds={TLS_ID}")
        if address.kind == "unix":
            # No host name to check the certificate against: the test PKI names localhost.
            parts.append("tls-hostname=localhost")
    return ",".join(parts)


def client_args(endpoint: Endpoint) -> list[str]:
    """qemu-img/qemu-io arguments naming the NBD export (objects first, then the image)."""
    objects = tls_object(Path(endpoint.tls_dir), "client") if endpoint.tls_dir else []
    return [*objects, "--image-opts", nbd_image_opts(endpoint)]


__all__ = ["TLS_ID", "client_args", "escape_option", "nbd_image_opts", "tls_object"]
