"""Start swiftnbd's NBD server on a kernel-chosen port of 127.0.0.1, storage in memory.

swiftnbd (PyPI 0.11, asyncio of Python 3.4-3.6: run it with Python 3.6) stores the disk as
objects of an OpenStack Swift container.  Its NBD code (`swiftnbd.server.Server`) and its
storage (`swiftnbd.swift.SwiftStorage`, object split, cache, lock) run unmodified; only the
Swift service is replaced, by an in-memory `swiftclient.client.Connection` stand-in (the
object store, not the NBD peer).  The command `swiftnbd` itself needs a Swift account.

Prints "LISTENING tcp://127.0.0.1:PORT EXPORT" then serves until killed.
Usage: python3.6 swiftnbd_server.py SWIFTNBD_SOURCE_DIR SIZE_BYTES
"""
import asyncio
import hashlib
import sys
import types

EXPORT = "disk"
OBJECT_SIZE = 4096


class ClientException(Exception):
    """What swiftclient raises; swiftnbd reads `http_status` (404: object never written)."""

    def __init__(self, message, http_status=500):
        super().__init__(message)
        self.http_status = http_status


class Connection:
    """A Swift account in memory: containers of named objects, metadata headers."""

    containers = {}

    def __init__(self, **auth):
        self.auth = auth

    def get_container(self, name):
        headers, _ = self.containers.setdefault(name, ({}, {}))
        return dict(headers), []

    def put_container(self, name, headers=None):
        stored = self.containers.setdefault(name, ({}, {}))[0]
        stored.update(headers or {})

    def get_object(self, container, name):
        objects = self.containers.setdefault(container, ({}, {}))[1]
        if name not in objects:
            raise ClientException("404 Not Found", http_status=404)
        return {}, objects[name]

    def put_object(self, container, name, data):
        self.containers.setdefault(container, ({}, {}))[1][name] = bytes(data)
        return hashlib.md5(data).hexdigest()


def install_swift_stand_in():
    """Make `from swiftclient import client` find the in-memory account."""
    package = types.ModuleType("swiftclient")
    client = types.ModuleType("swiftclient.client")
    client.Connection = Connection
    client.ClientException = ClientException
    package.client = client
    sys.modules["swiftclient"] = package
    sys.modules["swiftclient.client"] = client


def main():
    source, size = sys.argv[1], int(sys.argv[2])
    sys.path.insert(0, source)
    install_swift_stand_in()
    from swiftnbd.server import Server
    from swiftnbd.swift import SwiftStorage

    store = SwiftStorage({}, EXPORT, OBJECT_SIZE, size // OBJECT_SIZE)
    server = Server(("127.0.0.1", 0), {EXPORT: store})
    loop = asyncio.get_event_loop()
    listener = loop.run_until_complete(asyncio.start_server(server.handler, "127.0.0.1", 0))
    port = listener.sockets[0].getsockname()[1]
    print(f"LISTENING tcp://127.0.0.1:{port} {EXPORT}", flush=True)
    loop.run_forever()


if __name__ == "__main__":
    main()
