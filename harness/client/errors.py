"""Errors of the reference client.

Protocol violations are not here: a server breaking a rule raises the
state machine's :class:`~harness.protocol.RemoteProtocolError` (it names the
rule and the spec section), and the client hard-disconnects.  What is here
is everything else that can end a call: the server refused an option we
needed, a command failed with an NBD error, the connection went away, or a
wait ran out of time.
"""

from __future__ import annotations

from harness.protocol import constants as c


class NbdClientError(Exception):
    """Base of every error the client raises besides protocol violations."""


class NegotiationError(NbdClientError):
    """The handshake cannot go on: the server refused an option the client needed.

    ``option`` and ``reply_type`` are the option sent and the error reply received
    (0 when the failure was not an option reply, e.g. the server closed the socket);
    ``server_message`` is the text the server attached to its error reply.
    """

    def __init__(
        self, message: str, *, option: int = 0, reply_type: int = 0, server_message: str = ""
    ) -> None:
        super().__init__(message)
        self.option = option
        self.reply_type = reply_type
        self.server_message = server_message


class TlsError(NegotiationError):
    """TLS is required but cannot be had, or the TLS handshake failed."""


class NbdCommandError(NbdClientError):
    """A transmission command failed with an NBD error value.

    ``errno`` is the NBD error (an :class:`~harness.protocol.constants.Errno` when
    the spec knows it), ``command`` the request type and ``server_message`` the
    text of a structured error chunk, when the server sent one.
    """

    def __init__(
        self, command: int, errno: int, server_message: str = "", offset: int | None = None
    ):
        self.command = command
        self.errno = errno
        self.server_message = server_message
        self.offset = offset
        where = f" at offset {offset}" if offset is not None else ""
        text = f"{c.name_of(c.Cmd, command)} failed with {c.name_of(c.Errno, errno)}{where}"
        if server_message:
            text += f": {server_message}"
        super().__init__(text)

    @property
    def errno_name(self) -> str:
        """The spec's name of the error, e.g. ``NBD_EINVAL``."""
        return c.name_of(c.Errno, self.errno)


class NbdConnectionError(NbdClientError, ConnectionError):
    """The connection is gone (closed by the server, reset, or closed by us)."""


class NbdTimeoutError(NbdClientError, TimeoutError):
    """A wait ran out of time; the client has hard-disconnected."""
