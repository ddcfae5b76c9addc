"""The driver protocol every peer follows, the driver registry, and peer names.

A driver is a class per real program, in a module of its own: everything the
harness knows about the program lives there. Bound to a :class:`Provider`
(which suite's copy of the program runs, and how), it reports its version and,
as a :class:`ServerPeer`, says what it can be configured for and serves an
:class:`~harness.peers.export.ExportSpec` (returning a :class:`RunningServer`),
or, as a :class:`ClientPeer`, reads, writes and maps an :class:`Endpoint`.

A driver registers itself in :data:`DRIVERS` when its class is defined (a
class that sets ``program``); :func:`load_drivers` imports every module of
this package, so a new peer is one new module (and its lines of data).
"""

from __future__ import annotations

import contextlib
import importlib
import itertools
import os
import pkgutil
import re
import shutil
import subprocess
import tempfile
import time
from abc import ABC
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from harness.address import Address
from harness.client.uri import NbdUri
from harness.errors import UserError
from harness.process import ManagedProcess, PeerError

from ._actions import ActionOutput
from ._observe import Observed, observe
from .actions import ClientProgram, client_program, perform_action
from .export import DataRange, ExportSpec, Extents, Layer, merge_extents
from .suites import default_suites

if TYPE_CHECKING:
    from harness.scenarios import ExportRequirements

    from ._provider import Provider

Role = Literal["server", "client"]
Transport = Literal["tcp", "unix"]
VERSION_TIMEOUT = 30.0
CLIENT_TIMEOUT = 120.0
READY_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
# sun_path holds 108 bytes; longer socket paths go to a short directory under /tmp.
_MAX_SOCKET_PATH = 100
_labels = itertools.count(1)


class PeerSpecError(UserError, ValueError):
    """A peer name that cannot be understood or provided; the message says what to do."""


_SPEC = re.compile(r"^(?P<program>[a-z][a-z0-9-]*)(?:@(?P<version>[A-Za-z0-9.+~_-]+))?$")


@dataclass(frozen=True)
class PeerSpec:
    """``PROGRAM@VERSION``: ``qemu-nbd@5.2``, ``nbdkit@1.48``, ``libnbd@1.24``.

    ``version`` may also name a Debian suite (``qemu-nbd@trixie``) or, for the reference
    server, a profile (``reference-server@qemu-2.10``); None means "whatever is at hand,
    the host's first".
    """

    program: str
    version: str | None = None

    def __str__(self) -> str:
        return self.program if self.version is None else f"{self.program}@{self.version}"


def parse_peer_spec(text: str) -> PeerSpec:
    """Parse ``PROGRAM[@VERSION]``; raise :class:`PeerSpecError` on a malformed name."""
    match = _SPEC.match(text.strip())
    if not match:
        raise PeerSpecError(
            f"{text!r} is not a peer name: expected PROGRAM@VERSION, e.g. qemu-nbd@5.2"
        )
    return PeerSpec(match.group("program"), match.group("version"))


@dataclass(frozen=True)
class PeerVersion:
    """What a program says its version is, and the version to believe."""

    program: str
    reported: str
    """Parsed from the program's own ``--version`` output."""
    package: str | None
    """The upstream version of the Debian package it came from, when known."""
    version: str
    """The version to believe: ``reported``, unless the program misreports itself."""
    note: str = ""


def version_in(text: str, after: str = "") -> str:
    """The first dotted version number in ``text`` (after the word ``after``, if given)."""
    pattern = (re.escape(after) + r"\D*?" if after else "") + r"(\d+(?:\.\d+)+)"
    match = re.search(pattern, text)
    if not match:
        raise PeerError(f"no version number in {text.strip()[:200]!r}")
    return match.group(1)


@dataclass(frozen=True)
class Endpoint:
    """Where a client connects: an address, an export name, and the PKI for TLS."""

    address: Address
    export: str = ""
    tls_dir: Path | None = None

    @property
    def tls(self) -> bool:
        return self.tls_dir is not None

    def uri(self) -> str:
        """The libnbd-style URI (``nbd://``, ``nbds://``, ``nbd+unix://``, ``nbds+unix://``)."""

        scheme = "nbds" if self.tls else "nbd"
        tls_dir = os.fspath(self.tls_dir) if self.tls_dir is not None else None
        if self.address.kind == "unix":
            uri = NbdUri(
                f"{scheme}+unix",
                export=self.export,
                socket=self.address.path,
                tls_certificates=tls_dir,
                tls_hostname="localhost" if self.tls else None,
            )
        else:
            uri = NbdUri(
                scheme,
                host=self.address.host,
                port=self.address.port,
                export=self.export,
                tls_certificates=tls_dir,
            )
        return str(uri)

    def binds(self) -> list[Path]:
        """Directories a sandboxed client must see: the socket's and the PKI's."""
        found = []
        if self.address.kind == "unix":
            found.append(Path(self.address.path).parent)
        if self.tls_dir is not None:
            found.append(Path(self.tls_dir))
        return found


@dataclass
class RunningServer:
    """A server peer serving one export until :meth:`stop` (also a context manager)."""

    peer: str
    endpoint: Endpoint
    log_path: Path
    process: ManagedProcess | None = None
    export: ExportSpec | None = None
    _cleanups: list[Callable[[], None]] = field(default_factory=list)
    _stopped: bool = False

    @property
    def address(self) -> Address:
        return self.endpoint.address

    @property
    def uri(self) -> str:
        return self.endpoint.uri()

    def add_cleanup(self, action: Callable[[], None]) -> None:
        """Run ``action`` after the process stops (last added, first run)."""
        self._cleanups.append(action)

    def is_running(self) -> bool:
        return not self._stopped and (self.process is None or self.process.is_running())

    def stop(self) -> int | None:
        """Stop the server and its whole process tree, reap it, keep its log; idempotent."""
        if self._stopped:
            return self.process.returncode if self.process is not None else None
        self._stopped = True
        code = None
        try:
            if self.process is not None:
                tree = self.process.tree_pids()
                code = self.process.stop()
                # A PID namespace's init (bwrap) outlives the leader briefly while the kernel
                # kills what it contains: wait until the whole tree is gone.
                wait_gone(tree, STOP_TIMEOUT)
        finally:
            while self._cleanups:
                with contextlib.suppress(Exception):
                    self._cleanups.pop()()
        return code

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def __enter__(self) -> RunningServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def wait_gone(pids: Sequence[int], timeout: float) -> bool:
    """Wait until none of ``pids`` runs any more (gone or a zombie); False on timeout."""
    deadline = time.monotonic() + timeout
    while any(_alive(pid) for pid in pids):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)
    return True


DRIVERS: dict[str, type[Peer]] = {}
"""Every driver by the program name users write (``qemu-nbd``, ``libnbd``, ...): servers
first, then clients, our own (builtin) peers last in each role. Filled by the drivers
themselves (:meth:`Peer.__init_subclass__`); :func:`load_drivers` imports them all."""


def _listing_order(driver: type[Peer]) -> tuple[bool, bool, str]:
    return "server" not in driver.roles, driver.builtin, driver.program


def load_drivers() -> dict[str, type[Peer]]:
    """Import every module of this package (each driver registers itself); :data:`DRIVERS`."""
    package = __name__.rpartition(".")[0]
    for module in pkgutil.iter_modules([os.fspath(Path(__file__).parent)]):
        if not module.name.startswith("_"):
            importlib.import_module(f"{package}.{module.name}")
    ordered = sorted(DRIVERS.values(), key=_listing_order)
    DRIVERS.clear()
    DRIVERS.update((driver.program, driver) for driver in ordered)
    return DRIVERS


class Peer(ABC):
    """A real program (or our reference implementation) bound to the provider that runs it."""

    program: ClassVar[str]
    """The name users write before ``@`` (``qemu-nbd``); a class that sets it is a driver."""
    executable: ClassVar[str]
    """The file that runs (``python3`` for libnbd's bindings)."""
    roles: ClassVar[tuple[Role, ...]]
    version_argv: ClassVar[tuple[str, ...]] = ("--version",)
    """The arguments that make the program print its version (:meth:`version`)."""
    version_word: ClassVar[str] = ""
    """The word the version number follows in that output (``qemu-nbd``); "" for the first."""
    misreports_version: ClassVar[bool] = False
    """True when ``--version`` lies: the Debian package's version is believed instead."""
    builtin: ClassVar[bool] = False
    """True for our own peers: they run in this process, no provider or suite carries them."""
    represents_family: ClassVar[bool] = False
    """True for the program that stands for its version family in ``peers list`` rows of
    versions no suite carries (``qemu-nbd`` for qemu)."""

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if "program" not in cls.__dict__:
            return  # a base shared by drivers, not a driver itself
        known = DRIVERS.get(cls.program)
        if known is not None and known.__qualname__ != cls.__qualname__:
            raise TypeError(f"two drivers for {cls.program!r}: {known.__module__}."
                            f"{known.__qualname__} and {cls.__module__}.{cls.__qualname__}")
        DRIVERS[cls.program] = cls

    def __init__(self, provider: Provider, *, log_dir: Path | None = None) -> None:
        self.provider = provider
        self.log_dir = log_dir

    @classmethod
    def in_process(cls, version: str | None, *, log_dir: Path | None = None) -> Peer:
        """A builtin peer for ``PROGRAM@VERSION`` (only drivers with ``builtin`` set)."""
        raise PeerSpecError(f"{cls.program} is not built in: a provider must carry it")

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.program} from {self.provider.name}>"

    @property
    def family(self) -> str | None:
        """The version family in ``matrix/peers`` (``qemu`` for every qemu program)."""

        return default_suites().family_of(self.program)

    @property
    def package(self) -> str | None:
        """The Debian package that ships the program in this provider's suite."""
        return self.provider.suite.program_packages.get(self.program)

    def label(self) -> str:
        return f"{self.program}-{os.getpid()}-{next(_labels)}"

    def available(self) -> bool:
        """True when this provider has the program (and the package that ships it)."""
        installed = self.provider.installed_packages()
        if self.package and installed and self.package not in installed:
            return False
        return self.provider.has_program(self.executable)

    def log_path(self, workdir: Path | None, what: str) -> Path | None:
        directory = workdir if workdir is not None else self.log_dir
        return None if directory is None else Path(directory) / f"{self.program}-{what}.log"

    def parse_version(self, output: str) -> str:
        """The version in the program's ``--version`` output (after :attr:`version_word`)."""
        return version_in(output, self.version_word)

    def version(self) -> PeerVersion:
        """Run the program's ``--version`` and say which version to believe."""
        result = self.provider.run(
            [self.executable, *self.version_argv], timeout=VERSION_TIMEOUT, check=False
        )
        output = f"{result.stdout}\n{result.stderr}"
        reported = self.parse_version(output)
        package = self.provider.package_version(self.package) if self.package else None
        if (self.misreports_version or self.provider.knows_versions) and package is not None:
            note = (f"{self.program} reports {reported} but its package is {package}"
                    if package != reported else "")
            return PeerVersion(self.program, reported, package, package, note)
        return PeerVersion(self.program, reported, package, reported)


KiB = 1024
TLS_MODES = ("off", "optional", "required")


class ServerPeer(Peer):
    """A peer that serves exports, and what it can be configured for.

    The class attributes and classmethods describe the program without running it
    (the matrix asks them which scenarios a program can serve, and with which
    options); :meth:`start` serves an export: it settles the options and the work
    directory, then calls the driver's :meth:`serve`.
    """

    roles = ("server",)
    options_type: ClassVar[type | None] = None
    """The driver's options class (``QemuNbdOptions``); None when it takes none."""
    serves_descriptions: ClassVar[bool] = True
    """Whether the program can be given the export's description (NBD_INFO_DESCRIPTION)."""
    handshakes: ClassVar[frozenset[str]] = frozenset({"fixed-newstyle"})
    """The handshake styles it can be started with (``fixed-newstyle``, ``newstyle``,
    ``oldstyle``)."""
    tls_modes: ClassVar[frozenset[str]] = frozenset({"off", "required"})
    """The TLS modes it is driven with (``off``, ``optional``, ``required``)."""
    can_refuse_list: ClassVar[bool] = False
    """Whether it can be configured to refuse NBD_OPT_LIST."""
    reserved_export_names: ClassVar[frozenset[str]] = frozenset()
    """Export names it cannot serve under."""
    unexplained_start_retries: ClassVar[int] = 0
    """Starts on a new port after it ended before listening without saying why (a daemon
    that reports a port taken in the meantime only to syslog); recorded in its log."""

    # --- what it can be configured for ---------------------------------------------------

    @classmethod
    def default_options(cls) -> object | None:
        """The options :meth:`start` uses when given none of :attr:`options_type`."""
        return cls.options_type() if cls.options_type is not None else None

    @classmethod
    def options_for(cls, export: ExportRequirements) -> object | None:
        """The options that make this program serve a scenario's ``export`` (None: the
        defaults)."""
        return None

    @classmethod
    def unservable(cls, export: ExportRequirements, version: str | None = None) -> str | None:
        """Why this program cannot serve a scenario's ``export`` as it is described (None:
        it can, with :meth:`options_for`); ``version`` is the release that would serve it
        (major.minor), for switches that came in some release."""
        program = cls.program
        spec = export.spec
        if spec.description and not cls.serves_descriptions:
            return f"{program} cannot be given an export description"
        if spec.name in cls.reserved_export_names:
            return f"{program} cannot name an export {spec.name!r}"
        if export.handshake not in cls.handshakes:
            return f"{program} cannot be started with a {export.handshake} handshake"
        if spec.block_sizes_set or spec.block_size_required:
            return f"{program} cannot be given the scenario's block size constraints"
        if export.extra_exports:
            return f"{program} serves one export here; the scenario needs " \
                   f"{len(export.extra_exports)} more"
        if export.tls not in cls.tls_modes:
            driven = " or ".join(m for m in TLS_MODES if m in cls.tls_modes and m != "off")
            return f"{program} is not driven with {export.tls} TLS (only {driven})"
        if not export.list_exports and not cls.can_refuse_list:
            return f"{program} cannot refuse NBD_OPT_LIST by configuration"
        if not spec.multi_conn:
            return f"{program} is not driven with a non-shareable export"
        return None

    @classmethod
    def probe_export(cls) -> tuple[ExportSpec, object | None]:
        """The export (and options) this program is probed with (:meth:`advertised`): the
        way ``matrix/peers`` describes it. By default 1 MiB of raw data and a hole."""
        return ExportSpec(size=1024 * KiB, image_format="raw",
                          layers=(Layer((DataRange(0, 64 * KiB),)),)), None

    # --- serving --------------------------------------------------------------------------

    def start(
        self,
        export: ExportSpec,
        workdir: Path,
        *,
        transport: Transport = "tcp",
        options: object | None = None,
        ready_timeout: float = READY_TIMEOUT,
    ) -> RunningServer:
        """Prepare ``export`` in ``workdir`` and serve it; return once it accepts clients.

        ``options`` of another driver's type are ignored (the defaults are used).
        """
        if export.name in self.reserved_export_names:
            names = " and ".join(repr(name) for name in sorted(self.reserved_export_names))
            raise ValueError(f"{self.program} needs an export name other than {names}")
        options_type = self.options_type
        chosen = options if options_type is not None and isinstance(options, options_type) \
            else self.default_options()
        workdir = Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        return self.serve(export, workdir, chosen, transport=transport,
                          ready_timeout=ready_timeout)

    def serve(self, export: ExportSpec, workdir: Path, options: Any, *, transport: Transport,
              ready_timeout: float) -> RunningServer:
        """Serve ``export`` from the existing ``workdir`` with ``options`` (of
        :attr:`options_type`, or None); each driver implements it (:meth:`start` calls it)."""
        raise NotImplementedError(f"{type(self).__name__} serves nothing")

    def advertised(self, workdir: Path | None = None, *,
                   probe_of: type[ServerPeer] | None = None) -> Observed:
        """Start this server on its probe export and report the features it advertises
        (ids of ``matrix/features.toml``); the server is always stopped.

        ``probe_of`` serves the probe export of another program, with this server's
        default options (the profile of that program is probed with the same export as
        the real one).
        """
        export, options = (probe_of or self).probe_export()
        if probe_of is not None:
            options = None
        directory = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="nbdh-probe-"))
        try:
            with self.start(export, directory / self.program, options=options) as server:
                return observe(server.uri)
        finally:
            if workdir is None:
                shutil.rmtree(directory, ignore_errors=True)

    def launch(
        self,
        export: ExportSpec,
        workdir: Path,
        *,
        transport: Transport,
        tcp_argv: Callable[[int], Sequence[str]],
        unix_argv: Callable[[Path], Sequence[str]],
        binds: Sequence[Path] = (),
        ready_timeout: float = READY_TIMEOUT,
        pid_namespace: bool = False,
    ) -> RunningServer:
        """Start the program through the provider and wait until it listens.

        ``tcp_argv(port)`` is the command for a kernel-chosen 127.0.0.1 port (retried when
        the port got taken), ``unix_argv(path)`` the one for a unix socket.
        """
        workdir = Path(workdir)
        log_path = workdir / f"{self.program}.log"
        label = self.label()
        binds = [workdir, *binds, *([export.tls_dir] if export.tls_dir else [])]
        if transport == "unix":
            socket, socket_dir = self.socket_path(workdir)
            process = self.provider.start(
                unix_argv(socket), log_path=log_path, binds=[*binds, socket_dir], cwd=workdir,
                pid_namespace=pid_namespace, label=label,
            )
            address = Address.unix(os.fspath(socket))
        else:
            socket_dir = workdir
            process, port = self.provider.start_tcp(
                tcp_argv, log_path=log_path, binds=binds, cwd=workdir,
                pid_namespace=pid_namespace, label=label, ready_timeout=ready_timeout,
                unexplained_retries=self.unexplained_start_retries,
            )
            address = Address.tcp("127.0.0.1", port)
        server = RunningServer(f"{self.program} ({self.provider.name})",
                               Endpoint(address, export.name, export.tls_dir),
                               log_path, process, export)
        server.add_cleanup(lambda: self.provider.cleanup(label))
        if socket_dir != workdir:
            server.add_cleanup(lambda: shutil.rmtree(socket_dir, ignore_errors=True))
        if transport == "unix":
            try:
                self.provider.wait_unix(process, socket, ready_timeout)
            except BaseException:
                server.stop()
                raise
        return server

    def socket_path(self, workdir: Path) -> tuple[Path, Path]:
        """A unix socket path for this server and the directory to bind for it.

        Long work directories would overflow ``sun_path``: then a short private
        directory under /tmp is made (the caller removes it with the server).
        """
        path = Path(workdir) / f"{self.program}.sock"
        if len(os.fspath(path)) <= _MAX_SOCKET_PATH:
            return path, Path(workdir)
        short = Path(tempfile.mkdtemp(prefix="nbdh-", dir="/tmp"))
        return short / "s.sock", short


class ClientPeer(Peer):
    """A peer that connects to servers and performs actions on an :class:`Endpoint`.

    What a real client program can do, and the command line of each action, is its
    program's table in ``matrix/client-actions.toml`` (:attr:`actions_program`);
    :meth:`perform` runs one action, and :meth:`read`, :meth:`write`, :meth:`map`,
    :meth:`size`, :meth:`info`, :meth:`list_exports`, :meth:`copy_from` and :meth:`copy_to`
    are built on it. ``capabilities`` is what the table gives it (``map-contexts``: maps any
    metadata context; ``read`` also from a whole-export copy, ``size`` from ``info``).
    """

    roles = ("client",)
    actions_program: ClassVar[str | None] = None
    """The program of ``matrix/client-actions.toml`` whose forms it performs (None: its own
    :attr:`~Peer.program`)."""

    @property
    def client_program(self) -> ClientProgram:
        """Its table in ``matrix/client-actions.toml`` (empty when the table has none)."""
        return client_program(self.actions_program or self.program)

    @property
    def capabilities(self) -> frozenset[str]:
        """What it can do: its table's actions, and what they give (``read``, ``size``,
        ``map-contexts``)."""
        return self.client_program.capabilities()

    def can(self, capability: str) -> bool:
        return capability in self.capabilities

    def command(self, argv: list[str]) -> list[str]:
        """The command that runs a rendered form (the form itself; a driver that performs
        another program's forms rewrites it)."""
        return argv

    def perform(self, action: str, endpoint: Endpoint, *, offset: int = 0, length: int = 0,
                context: str | None = None, data: bytes | None = None,
                timeout: float = CLIENT_TIMEOUT) -> ActionOutput:
        """Perform ``action`` (an action of ``matrix/client-actions.toml``) on ``endpoint``
        and return what its output says; :class:`PeerError` when it fails or the program
        has no form of it."""
        with scratch_dir() as workdir:
            run = perform_action(self.client_program, action, endpoint, self.provider,
                                 workdir=workdir, timeout=timeout,
                                 log_path=self.log_path(None, "client"), offset=offset,
                                 length=length, context=context, data=data, adapt=self.command)
            what = f"{self.program} {action}" + (f" {context}" if context else "")
            if run.failed:
                raise PeerError(f"{what}: {run.failure()}")
            try:
                return run.output()
            except (ValueError, KeyError, TypeError) as exc:
                raise PeerError(f"{what}: cannot read its output ({run.output_format}): "
                                f"{exc}") from None

    def read(self, endpoint: Endpoint, offset: int, length: int) -> bytes:
        """``length`` bytes at ``offset`` (cut from a whole-export copy when it only copies)."""
        if self.client_program.action_for("read") == "copy-out":
            return (self.perform("copy-out", endpoint).data or b"")[offset:offset + length]
        data = self.perform("read", endpoint, offset=offset, length=length).data or b""
        if len(data) != length:
            raise PeerError(f"{self.program} read {len(data)} bytes, not {length}")
        return data

    def write(self, endpoint: Endpoint, offset: int, data: bytes) -> None:
        self.perform("write", endpoint, offset=offset, length=len(data), data=data)

    def map(self, endpoint: Endpoint, context: str = "base:allocation") -> Extents:
        """The extents of ``context``, consecutive equal ones merged."""
        return merge_extents(self.perform("map", endpoint, context=context).extents or [])

    def size(self, endpoint: Endpoint) -> int:
        """The export's size, as the program tells it (``size``, else ``info``)."""
        action = self.client_program.action_for("size") or "size"
        size = self.perform(action, endpoint).size
        if size is None:
            raise PeerError(f"{self.program} {action} told no size")
        return size

    def info(self, endpoint: Endpoint) -> Any:
        """The program's own description of the export (its JSON document)."""
        return self.perform("info", endpoint).document

    def list_exports(self, endpoint: Endpoint) -> Any:
        """The program's own listing of the server's exports (its JSON document)."""
        return self.perform("list", endpoint).document

    def copy_from(self, endpoint: Endpoint, destination: Path) -> None:
        """Copy the whole export into the file ``destination``."""
        Path(destination).write_bytes(self.perform("copy-out", endpoint).data or b"")

    def copy_to(self, endpoint: Endpoint, source: Path) -> None:
        """Copy the file ``source`` over the whole export (sizes must match)."""
        self.perform("copy-in", endpoint, data=Path(source).read_bytes())

    def run(
        self,
        args: Sequence[str],
        *,
        binds: Sequence[Path] = (),
        timeout: float = CLIENT_TIMEOUT,
        input: str | bytes | None = None,
        check: bool = True,
        text: bool = True,
    ) -> subprocess.CompletedProcess:
        """Run the program with ``args`` (through its provider) and return its output."""
        return self.provider.run(
            [self.executable, *args],
            timeout=timeout,
            binds=binds,
            log_path=self.log_path(None, "client"),
            input=input,
            check=check,
            text=text,
        )


@contextlib.contextmanager
def scratch_dir() -> Iterator[Path]:
    """A private directory under /tmp (visible inside every provider), removed after."""
    directory = Path(tempfile.mkdtemp(prefix="nbdh-", dir="/tmp"))
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


__all__ = [
    "CLIENT_TIMEOUT",
    "DRIVERS",
    "READY_TIMEOUT",
    "ClientPeer",
    "Endpoint",
    "Peer",
    "PeerSpec",
    "PeerSpecError",
    "PeerVersion",
    "Role",
    "RunningServer",
    "ServerPeer",
    "Transport",
    "load_drivers",
    "parse_peer_spec",
    "scratch_dir",
    "version_in",
]
