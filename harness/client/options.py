"""What a client asks for when it connects: :class:`ConnectOptions`, and TLS contexts."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from harness.protocol import constants as c

from .errors import TlsError
from .uri import NbdUri, UriError

TlsMode = Literal["off", "on", "require"]

DEFAULT_TIMEOUT = 30.0
"""Seconds any one network wait may take: the reference client's connect and each reply
(scenario steps and replays run through it), and the replay server's wait for a live client."""


@dataclass(frozen=True)
class ConnectOptions:
    """How to connect and what to negotiate; every field has the spec-abiding default.

    ``export_name`` None means "the URI's export" (or "" for a bare address).
    ``tls`` None means "as the URI says": ``require`` for ``nbds``, else ``off``;
    ``on`` tries ``NBD_OPT_STARTTLS`` and goes on in the clear when refused.
    ``tls_context`` replaces the context built from the URI's TLS parameters.
    ``meta_contexts`` are the queries for ``NBD_OPT_SET_META_CONTEXT`` (empty =
    none sent).  ``info_requests`` are the ``NBD_INFO_*`` asked for with
    ``NBD_OPT_GO``/``NBD_OPT_INFO``; ``request_block_size`` adds
    ``NBD_INFO_BLOCK_SIZE`` (a promise to honour the constraints, which this
    client always does).  ``fixed_newstyle=False`` behaves as a client of the
    original newstyle protocol (only ``NBD_OPT_EXPORT_NAME``); ``use_go=False``
    skips ``NBD_OPT_GO`` for ``NBD_OPT_EXPORT_NAME``.  ``enter_transmission=False``
    stops in the option phase, after TLS and structured/extended negotiation,
    so that ``list_exports``/``info``/``list_meta_contexts`` can run before
    :meth:`NbdClient.enter_transmission`.  ``strict_remote=False`` records the
    server's violations on the connection instead of raising.
    ``connect_timeout`` bounds opening the socket; ``timeout`` every other wait
    (each option reply, TLS handshake, command reply, send).
    """

    export_name: str | None = None
    structured_replies: bool = True
    extended_headers: bool = True
    meta_contexts: tuple[str, ...] = (c.BASE_ALLOCATION,)
    request_block_size: bool = True
    info_requests: tuple[int, ...] = (c.Info.NAME, c.Info.DESCRIPTION)
    tls: TlsMode | None = None
    tls_context: ssl.SSLContext | None = None
    tls_hostname: str | None = None
    no_zeroes: bool = True
    fixed_newstyle: bool = True
    use_go: bool = True
    enter_transmission: bool = True
    strict_remote: bool = True
    connect_timeout: float = DEFAULT_TIMEOUT
    timeout: float = DEFAULT_TIMEOUT

    def go_info_requests(self) -> tuple[int, ...]:
        """The information requests of ``NBD_OPT_GO``/``NBD_OPT_INFO``, without duplicates."""
        wanted = list(dict.fromkeys(self.info_requests))
        if self.request_block_size and c.Info.BLOCK_SIZE not in wanted:
            wanted.append(c.Info.BLOCK_SIZE)
        return tuple(wanted)


def tls_context_for(uri: NbdUri | None) -> ssl.SSLContext:
    """A client context from the URI's TLS parameters (libnbd's spelling).

    ``tls-certificates=DIR``: trust ``DIR/ca-cert.pem`` and present
    ``DIR/client-cert.pem`` + ``DIR/client-key.pem`` when they exist; without it
    the system's CAs are trusted.  ``tls-verify-peer=0`` turns verification off.
    The hostname is checked when the URI gives one (its host or ``tls-hostname``).
    """
    if uri is not None and uri.tls_type in ("psk", "anon"):
        raise TlsError(
            f"tls-type={uri.tls_type} is not supported: Python's ssl module (3.11) does X.509 only"
        )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2  # proto.md "TLS versions"
    directory = Path(uri.tls_certificates) if uri and uri.tls_certificates else None
    if directory is not None:
        if not directory.is_dir():
            raise UriError(f"tls-certificates={directory}: no such directory")
        ca = directory / "ca-cert.pem"
        if ca.exists():
            context.load_verify_locations(cafile=ca)
        else:
            context.load_default_certs()
        cert, key = directory / "client-cert.pem", directory / "client-key.pem"
        if cert.exists() and key.exists():
            context.load_cert_chain(cert, key)
    else:
        context.load_default_certs()
    if uri is not None and not uri.tls_verify_peer:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    elif uri is None or uri.server_hostname is None:
        # No name to check (a unix socket without tls-hostname): the chain is still verified.
        context.check_hostname = False
    return context


__all__ = ["DEFAULT_TIMEOUT", "ConnectOptions", "TlsMode", "tls_context_for"]
