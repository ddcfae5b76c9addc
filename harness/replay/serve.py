"""``nbd-harness replay FILE --serve``: play the server side of recorded sessions to live
clients.

Each accepted connection is served from the next selected recorded session (in
order, round robin; with one session selected, every connection plays it): the
live client gets the recorded greeting, the recorded answer to each option and
request it sends like the recorded client did (adapted where the live
negotiation requires), and, where it departs from the recorded client, the
honest answer of a reference server configured like the recorded one, serving
an image reconstructed from the whole capture.  Each connection yields a
:class:`~harness.replay.model.ReplayReport` saying where the live client
departed from the recorded one.

:func:`serve_replay` is the command's blocking loop; :class:`ReplayServerThread`
runs the same server in a background thread for tests and embedding.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TextIO

from harness.address import LOOPBACK_HOST, Address, AddressError, parse_address
from harness.client.options import DEFAULT_TIMEOUT
from harness.client.uri import NbdUri
from harness.loopthread import ServerLoopThread

from ._load import Selection, unreplayable
from ._serve_honest import honest_server
from ._serve_image import build_images
from ._serve_script import build_script
from ._serve_session import Played, Player
from .model import ReplayError, ReplayReport

DEFAULT_LISTEN = f"{LOOPBACK_HOST}:0"

ReportCallback = Callable[[ReplayReport], None]


def parse_listen(text: str | Address) -> Address:
    """``127.0.0.1:PORT``, ``tcp://127.0.0.1:PORT`` (port 0 = kernel-chosen) or
    ``unix:PATH`` (or such an :class:`Address`); anything else raises :class:`ReplayError`.

    The replay server answers as a recorded server did, writes included, and has no
    access control: it listens on loopback or a unix socket only.
    """
    if isinstance(text, Address):
        address = text
    else:
        spelled = text.strip()
        if spelled and not spelled.startswith(("tcp://", "unix:")):
            spelled = "tcp://" + spelled
        try:
            address = parse_address(spelled)
        except AddressError as exc:
            raise ReplayError(f"--listen {text!r}: expected 127.0.0.1:PORT or unix:PATH "
                              f"({exc})") from None
    if address.kind == "tcp" and address.host != LOOPBACK_HOST:
        raise ReplayError(f"--listen {text!r}: the replay server listens on {LOOPBACK_HOST} or a "
                          "unix socket only (it has no access control)")
    return address


class ReplayServer:
    """The asyncio server: one :class:`Player` per accepted connection.

    ``once``: serve one connection per selected session, then stop accepting;
    :attr:`done` is set when they have all finished.
    """

    def __init__(self, selection: Selection, *, listen: Address, timeout: float = DEFAULT_TIMEOUT,
                 export_name: str | None = None, once: bool = False,
                 on_report: ReportCallback | None = None) -> None:
        if not selection.sessions:
            raise ReplayError("no recorded session selected to serve")
        self.listen = listen
        self.timeout = timeout
        self.once = once
        self.on_report = on_report
        self.played = _prepare(selection, export_name)
        self.export_name = self.played[0].export_name
        self.address = listen
        self.reports: list[ReplayReport] = []
        """One report per finished connection, in the order they ended."""
        self.done: asyncio.Event | None = None
        self._server: asyncio.AbstractServer | None = None
        self._accepted = 0
        self._connections: set[asyncio.Task[None]] = set()
        self._players: set[Player] = set()

    @property
    def uri(self) -> str:
        """The NBD URI a client connects to."""
        if self.address.kind == "unix":
            return str(NbdUri("nbd+unix", export=self.export_name, socket=self.address.path))
        return str(NbdUri("nbd", host=self.address.host, port=self.address.port,
                          export=self.export_name))

    async def start(self) -> None:
        """Listen; :attr:`address` then holds the kernel-chosen port."""
        self.done = asyncio.Event()
        if self.listen.kind == "unix":
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.listen.path)
            self._server = await asyncio.start_unix_server(self._accept, self.listen.path)
        else:
            self._server = await asyncio.start_server(self._accept, self.listen.host,
                                                      self.listen.port)
            self.address = self.listen.with_port(self._server.sockets[0].getsockname()[1])

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        number = self._accepted
        self._accepted += 1
        if self.once and number >= len(self.played):
            writer.close()  # a straggler after the last session: nothing left to play
            return
        if self.once and self._accepted == len(self.played) and self._server is not None:
            self._server.close()  # every session has its connection: stop accepting
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            peer = writer.get_extra_info("peername")
            name = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else "unix socket"
            player = Player(self.played[number % len(self.played)], reader, writer, name,
                            self.timeout)
            self._players.add(player)
            try:
                await player.run()
            finally:  # cancelled by stop() too: the report says so
                self._players.discard(player)
                self.reports.append(player.report)
                if self.on_report is not None:
                    with contextlib.suppress(Exception):
                        self.on_report(player.report)
        finally:
            self._connections.discard(task)
            if self.once and len(self.reports) >= len(self.played) and self.done is not None:
                self.done.set()

    async def stop(self) -> None:
        """Stop listening, end every connection, remove the unix socket."""
        if self._server is not None:
            self._server.close()
        for player in list(self._players):
            player.abort()
        for task in list(self._connections):
            task.cancel()
        if self._connections:
            await asyncio.wait(list(self._connections), timeout=5)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)
        if self.listen.kind == "unix":
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.listen.path)


def _prepare(selection: Selection, export_name: str | None) -> list[Played]:
    """Scripts for the selected sessions; images from every replayable session."""
    scripts = {session.index: build_script(session) for session in selection.capture.sessions
               if unreplayable(session) is None}
    for session in selection.sessions:
        scripts.setdefault(session.index, build_script(session))
    images = build_images(scripts.values())
    played = []
    for session in selection.sessions:
        script = scripts[session.index]
        image = images.image(script.facts.name)
        name = script.facts.name if export_name is None else export_name
        played.append(Played(script, image, honest_server(script, image, name), name))
    return played


class ReplayServerThread(ServerLoopThread):
    """A :class:`ReplayServer` on its own event loop in a background thread.

    ``with ReplayServerThread(selection) as server:`` connect a client to
    ``server.uri``, then read ``server.wait_reports(1, timeout)``.  :meth:`stop` ends
    every connection and joins the thread: nothing outlives it.
    """

    def __init__(self, selection: Selection, *, listen: str | Address = DEFAULT_LISTEN,
                 timeout: float = DEFAULT_TIMEOUT, export_name: str | None = None,
                 once: bool = False, on_report: ReportCallback | None = None) -> None:
        address = listen if isinstance(listen, Address) else parse_listen(listen)
        self.server = ReplayServer(selection, listen=address, timeout=timeout,
                                   export_name=export_name, once=once, on_report=on_report)
        super().__init__(self.server, "nbd-replay-server")
        self._done = threading.Event()

    @property
    def address(self) -> Address:
        return self.server.address

    @property
    def uri(self) -> str:
        return self.server.uri

    def reports(self) -> list[ReplayReport]:
        """Reports of the connections finished so far, in the order they ended."""
        return list(self.server.reports)

    def wait_reports(self, count: int, timeout: float) -> list[ReplayReport]:
        """The reports once ``count`` connections have finished; TimeoutError otherwise."""
        deadline = time.monotonic() + timeout
        while len(self.server.reports) < count:
            if time.monotonic() >= deadline:
                raise TimeoutError(f"only {len(self.server.reports)} of {count} replayed "
                                   f"connections ended within {timeout:g} s")
            time.sleep(0.01)
        return self.reports()

    def wait_done(self, timeout: float) -> bool:
        """With ``once``: True once every selected session has been served."""
        return self._done.wait(timeout)

    def _serving(self) -> asyncio.Future[Any] | None:
        assert self.server.done is not None
        done = asyncio.ensure_future(self.server.done.wait())
        done.add_done_callback(lambda _: self._done.set())
        return done


def serve_replay(selection: Selection, *, listen: str | Address = DEFAULT_LISTEN,
                 port_file: Path | str | None = None, timeout: float = DEFAULT_TIMEOUT,
                 export_name: str | None = None, once: bool = False,
                 out: TextIO = sys.stdout,
                 on_report: ReportCallback | None = None) -> list[ReplayReport]:
    """Serve the selected sessions until Ctrl-C / SIGTERM (or, with ``once``, until one
    connection per selected session has finished); return one report per connection.

    Prints ``listening on nbd://127.0.0.1:PORT/EXPORT`` (or an ``nbd+unix`` URI) to
    ``out`` once listening, then writes the port (the socket path for a unix socket) to
    ``port_file``, as soon as it listens. ``timeout`` bounds
    every wait for a live client's next message; ``on_report`` is called (in the
    server's thread) with each report as its connection ends.
    """
    address = parse_listen(listen)
    server = ReplayServerThread(selection, listen=address, timeout=timeout,
                                export_name=export_name, once=once, on_report=on_report)
    with _sigterm_interrupts():
        server.start()
        try:
            print(f"listening on {server.uri}", file=out, flush=True)
            if port_file is not None:
                where = server.address
                _write_atomically(Path(port_file),
                                  str(where.port) if where.kind == "tcp" else where.path)
            finished = False
            while not finished and server.running:  # short waits: Ctrl-C, SIGTERM get through
                finished = server.wait_done(0.5) and once
        except KeyboardInterrupt:
            pass
        finally:
            server.stop()
    return server.reports()


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(f"{text}\n")
    tmp.replace(path)  # atomic: a watcher never reads half a number


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """SIGTERM ends the serving loop like Ctrl-C (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


__all__ = [
    "DEFAULT_LISTEN",
    "DEFAULT_TIMEOUT",
    "ReplayServer",
    "ReplayServerThread",
    "parse_listen",
    "serve_replay",
]
