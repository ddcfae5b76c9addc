"""NBD URIs (``docs/spec/uri.md``): ``nbd://``, ``nbds://``, ``nbd+unix://``, ``nbds+unix://``.

    nbd://example.com:10809/disk
    nbds://127.0.0.1/disk?tls-certificates=/etc/pki/nbd
    nbd+unix:///disk?socket=/run/nbd.sock
    nbds+unix:///?socket=%00/abstract&tls-hostname=server

:func:`parse_uri` turns text into an :class:`NbdUri`; ``str()`` spells it back
(percent-encoded, so ``parse_uri(str(uri)) == uri``).  The export name is the
path without its leading ``/``, percent-decoded ("hello%20world" is
"hello world", "//disk" is "/disk").  Query parameters the client does not
understand are diagnosed, as the URI spec asks.  ``tls-certificates=DIR`` is
libnbd's name for a directory holding ``ca-cert.pem``, ``client-cert.pem``
and ``client-key.pem``.
"""

from __future__ import annotations

import ipaddress
import urllib.parse
from dataclasses import dataclass

from harness.address import Address
from harness.errors import UserError

DEFAULT_PORT = 10809
"""The IANA-assigned NBD port, used when a TCP URI names none."""

SCHEMES = ("nbd", "nbds", "nbd+unix", "nbds+unix")
TLS_TYPES = ("anon", "x509", "psk")

# Query parameters we understand; anything else is an error (uri.md: "Any other
# query parameters which the client does not understand SHOULD be diagnosed").
_PARAMETERS = (
    "socket",
    "tls-certificates",
    "tls-verify-peer",
    "tls-hostname",
    "tls-username",
    "tls-type",
)


class UriError(UserError, ValueError):
    """An NBD URI that cannot be understood; the message says why."""


@dataclass(frozen=True)
class NbdUri:
    """One parsed NBD URI.

    ``host`` is empty for unix-socket URIs, whose ``socket`` is the path (it may
    start with NUL for the abstract namespace).  ``port`` is None when the URI
    names none (:attr:`effective_port` gives 10809 then).  ``tls_username``
    comes from the userinfo or the ``tls-username`` parameter.
    """

    scheme: str
    host: str = ""
    port: int | None = None
    export: str = ""
    socket: str = ""
    tls_certificates: str | None = None
    tls_verify_peer: bool = True
    tls_hostname: str | None = None
    tls_username: str | None = None
    tls_type: str | None = None

    @property
    def is_unix(self) -> bool:
        return self.scheme.endswith("+unix")

    @property
    def tls_required(self) -> bool:
        """``nbds`` schemes: the connection MUST fail unless TLS is negotiated."""
        return self.scheme.startswith("nbds")

    @property
    def effective_port(self) -> int:
        return DEFAULT_PORT if self.port is None else self.port

    @property
    def address(self) -> Address:
        """Where to connect."""
        if self.is_unix:
            return Address.unix(self.socket)
        return Address.tcp(self.host, self.effective_port)

    @property
    def server_hostname(self) -> str | None:
        """The name to check the server's certificate against: ``tls-hostname`` or the host."""
        return self.tls_hostname or (self.host or None)

    def __str__(self) -> str:
        authority = ""
        if not self.is_unix:
            host = f"[{self.host}]" if ":" in self.host else self.host
            userinfo = ""
            if self.tls_username is not None:
                userinfo = urllib.parse.quote(self.tls_username, safe="") + "@"
            port = "" if self.port is None else f":{self.port}"
            authority = f"{userinfo}{host}{port}"
        path = "/" + urllib.parse.quote(self.export, safe="/")
        query: list[tuple[str, str]] = []
        if self.is_unix:
            query.append(("socket", self.socket))
        if self.tls_certificates is not None:
            query.append(("tls-certificates", self.tls_certificates))
        if not self.tls_verify_peer:
            query.append(("tls-verify-peer", "0"))
        if self.tls_hostname is not None:
            query.append(("tls-hostname", self.tls_hostname))
        if self.tls_username is not None and self.is_unix:  # no authority to hold it
            query.append(("tls-username", self.tls_username))
        if self.tls_type is not None:
            query.append(("tls-type", self.tls_type))
        text = f"{self.scheme}://{authority}{path}"
        if query:
            text += "?" + "&".join(
                f"{key}={urllib.parse.quote(value, safe='/')}" for key, value in query
            )
        return text


def parse_uri(text: str) -> NbdUri:
    """Parse an NBD URI; raise :class:`UriError` with a one-line reason."""
    if not isinstance(text, str) or "://" not in text:
        raise UriError(
            f"{text!r}: not an NBD URI; expected nbd://HOST[:PORT]/EXPORT, nbds://..., "
            "or nbd+unix:///EXPORT?socket=PATH"
        )
    try:
        parts = urllib.parse.urlsplit(text)
    except ValueError as exc:
        raise UriError(f"{text!r}: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise UriError(
            f"{text!r}: unknown scheme {parts.scheme!r}; use one of {', '.join(SCHEMES)}"
        )
    if parts.fragment:
        raise UriError(f"{text!r}: an NBD URI has no #fragment (percent-encode '#' as %23)")
    params = _query(text, parts.query)
    export = _decode(text, parts.path[1:] if parts.path.startswith("/") else parts.path, "export")
    if "\0" in export:
        raise UriError(f"{text!r}: an export name may not contain NUL")
    username = _decode(text, parts.username, "user name") if parts.username is not None else None
    if parts.password is not None:
        raise UriError(f"{text!r}: passwords in the URI are not supported")
    if "tls-username" in params:
        if username is not None:
            raise UriError(f"{text!r}: a user name both in the authority and tls-username=")
        username = params["tls-username"]
    verify = params.get("tls-verify-peer", "1")
    if verify not in ("0", "1"):
        raise UriError(f"{text!r}: tls-verify-peer must be 0 or 1, not {verify!r}")
    tls_type = params.get("tls-type")
    if tls_type is not None and tls_type not in TLS_TYPES:
        raise UriError(f"{text!r}: tls-type must be one of {', '.join(TLS_TYPES)}")
    common = {
        "scheme": scheme,
        "export": export,
        "tls_certificates": params.get("tls-certificates"),
        "tls_verify_peer": verify == "1",
        "tls_hostname": params.get("tls-hostname"),
        "tls_username": username,
        "tls_type": tls_type,
    }
    if scheme.endswith("+unix"):
        if parts.netloc:
            raise UriError(
                f"{text!r}: a unix-socket URI has no host; write {scheme}:///EXPORT?socket=PATH"
            )
        if not params.get("socket"):
            raise UriError(f"{text!r}: {scheme} needs a socket=PATH query parameter")
        return NbdUri(socket=params["socket"], **common)
    if "socket" in params:
        raise UriError(f"{text!r}: socket= is only valid with nbd+unix:// or nbds+unix://")
    host = parts.hostname
    if not host:
        raise UriError(f"{text!r}: {scheme}:// needs a host, e.g. {scheme}://127.0.0.1/EXPORT")
    if "[" in parts.netloc:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise UriError(f"{text!r}: {host!r} in brackets is not an IPv6 address") from None
    try:
        port = parts.port
    except ValueError:
        raise UriError(f"{text!r}: the port must be a number from 1 to 65535") from None
    if port == 0 or (port is None and parts.netloc.endswith(":")):
        raise UriError(f"{text!r}: the port must be a number from 1 to 65535")
    return NbdUri(host=host, port=port, **common)


def _decode(text: str, raw: str, what: str) -> str:
    try:
        return urllib.parse.unquote(raw, errors="strict")
    except UnicodeDecodeError:
        raise UriError(f"{text!r}: the {what} is not valid UTF-8 once percent-decoded") from None


def _query(text: str, query: str) -> dict[str, str]:
    params: dict[str, str] = {}
    if not query:
        return params
    for item in query.split("&"):
        if not item:
            continue
        key, sep, raw_value = item.partition("=")
        key = _decode(text, key, "query parameter name")
        if not sep:
            raise UriError(f"{text!r}: query parameter {key!r} needs a value ({key}=...)")
        if key not in _PARAMETERS:
            raise UriError(
                f"{text!r}: unknown query parameter {key!r}; known: {', '.join(_PARAMETERS)}"
            )
        if key in params:
            raise UriError(f"{text!r}: query parameter {key!r} given twice")
        # '+' is a literal plus in URIs (RFC 3986); only form encoding reads it as a space.
        params[key] = _decode(text, raw_value, f"{key} value")
    return params


__all__ = ["DEFAULT_PORT", "SCHEMES", "NbdUri", "UriError", "parse_uri"]
