"""A bare synchronous NBD client for negative tests of servers.

It sends whatever it is told (the local state machine is not strict) and
judges every reply strictly, so a server that answers a bad request wrongly
fails the test with the rule it broke.
"""

from __future__ import annotations

import socket

from harness.protocol import NEED_DATA, Connection, Role
from harness.protocol.messages import ConnectionClosed, Event

TIMEOUT = 10.0


class RawClient:
    def __init__(self, host: str, port: int) -> None:
        self.sock = socket.create_connection((host, port), timeout=TIMEOUT)
        self.conn = Connection(Role.CLIENT, strict_local=False)

    def send(self, *events: Event) -> None:
        for event in events:
            self.sock.sendall(self.conn.send(event))

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def recv(self) -> Event:
        while True:
            event = self.conn.next_event()
            if event is not NEED_DATA:
                return event  # type: ignore[return-value]
            self.conn.receive_data(self.sock.recv(1 << 20))

    def closed_by_peer(self) -> bool:
        try:
            return isinstance(self.recv(), ConnectionClosed)
        except (ConnectionResetError, BrokenPipeError):
            return True

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
