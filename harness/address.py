"""Where something listens or connects: a TCP host/port or a unix socket path.

One spelling for the whole project (server ``listen =``, proxy ``--listen`` and
``--upstream``): ``tcp://127.0.0.1:0``, ``tcp://[::1]:10809``, ``unix:/path/to.sock``
(also ``unix:///path/to.sock``).  Port 0 means "let the kernel choose".
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass
from typing import Literal

from harness.errors import UserError

LOOPBACK_HOST = "127.0.0.1"
"""The host every peer, proxy and reference server of the harness listens on: loopback only."""


class AddressError(UserError, ValueError):
    """An address string that cannot be understood; the message says why."""


@dataclass(frozen=True)
class Address:
    """A TCP endpoint (``host``, ``port``) or a unix socket (``path``)."""

    kind: Literal["tcp", "unix"]
    host: str = ""
    port: int = 0
    path: str = ""

    @classmethod
    def tcp(cls, host: str, port: int) -> Address:
        return cls("tcp", host=host, port=port)

    @classmethod
    def unix(cls, path: str) -> Address:
        return cls("unix", path=str(path))

    def __str__(self) -> str:
        if self.kind == "unix":
            return f"unix:{self.path}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"tcp://{host}:{self.port}"

    def with_port(self, port: int) -> Address:
        """The same TCP address with the port the kernel actually chose."""
        return Address.tcp(self.host, port)


LOOPBACK = Address.tcp(LOOPBACK_HOST, 0)
"""A kernel-chosen port on loopback: where a recording proxy or a server of a case listens."""


def parse_address(text: str) -> Address:
    """Parse ``tcp://HOST:PORT`` or ``unix:PATH``; raise :class:`AddressError`."""
    if text.startswith("unix:"):
        path = text[len("unix:") :]
        if path.startswith("//"):
            path = path[2:]
        if not path:
            raise AddressError(f"{text!r}: a unix address needs a path, e.g. unix:/tmp/nbd.sock")
        return Address.unix(path)
    if text.startswith("tcp://"):
        parsed = urllib.parse.urlsplit(text)
        try:
            port = parsed.port
        except ValueError as exc:
            raise AddressError(f"{text!r}: bad port ({exc})") from None
        if not parsed.hostname:
            raise AddressError(f"{text!r}: a tcp address needs a host, e.g. tcp://127.0.0.1:0")
        if parsed.path not in ("", "/") or parsed.query:
            raise AddressError(f"{text!r}: a tcp address is only tcp://HOST:PORT")
        return Address.tcp(parsed.hostname, port or 0)
    raise AddressError(
        f"{text!r}: expected tcp://HOST:PORT (port 0 = kernel-chosen) or unix:/PATH"
    )
