"""Record the fault captures of this directory, each with its ground truth.

    .venv/bin/python tests/data/faults/record.py            # every capture
    .venv/bin/python tests/data/faults/record.py NAME...    # only these

Each :class:`Recipe` says which server runs (the reference server with a fault
profile, the healthy reference server, or nbdkit with a filter), which real
client drives it (nbdinfo, nbdsh, qemu-io from Debian bookworm, or
``nbd-harness info --fault`` where no real client can reach the point), what
the client must see (``fails``, ``hangs`` until it is killed, ``succeeds``)
and where the deviations are: a locator per deviation finds the frame
carrying the first byte of the offending message in the capture (by the bytes
the fault wrote, by the decoded message a client sent, or by a FIN).  The
citation comes from the fault's entry in ``reference_server.faults.FAULTS`` /
``harness.client.faults.CLIENT_FAULTS``, the spec's words verbatim.

Every capture goes through the harness's recording proxy (``ProxyThread``) as
one synthetic TCP conversation with the server on port 10809.
``tests/test_faults.py`` imports this module: it runs the recipes in a
temporary directory to check each client's reaction, and checks the committed
ground truth against the committed captures.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
if str(REPO) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(REPO))

import yaml  # noqa: E402

from harness.address import Address  # noqa: E402
from harness.capture import ProxyThread  # noqa: E402
from harness.client.faults import (  # noqa: E402
    CLIENT_FAULTS,
    SHARED_COOKIE,
    UNKNOWN_COMMAND,
    UNKNOWN_COMMAND_FLAG,
)
from harness.dissect import WireMessage, decode_capture  # noqa: E402
from harness.dissect._capfile import CaptureReader, read_frames  # noqa: E402
from harness.dissect._netlayers import NotTcp, tcp_segment  # noqa: E402
from harness.dissect.stream import reassemble  # noqa: E402
from harness.faults import Fault  # noqa: E402
from harness.pcapformat import TCP_FIN  # noqa: E402
from harness.protocol import constants as c  # noqa: E402
from reference_server.config import config_from_dict  # noqa: E402
from reference_server.faults import FAULTS, GARBAGE, PHANTOM_COOKIE, ServerFaults  # noqa: E402
from reference_server.runner import ServerThread  # noqa: E402

LOCALHOST = Address.tcp("127.0.0.1", 0)
EXPORT_SIZE = 1 << 20
DEBIAN_PATH = "/usr/bin:/bin:/usr/sbin:/sbin"
"""nbdsh runs ``python3`` from PATH: Debian's, which has the ``nbd`` module."""
HANG_TIMEOUT = 4.0
"""How long a client that should hang is given before it is killed."""
RUN_TIMEOUT = 30.0
HARNESS = [sys.executable, "-m", "harness.cli"]

CITATIONS: dict[str, Fault] = {fault.name: fault for fault in (*FAULTS, *CLIENT_FAULTS)}
EXTRA_CITATIONS = (
    # Deviations no fault profile makes on purpose, met in the captures all the same: nbdkit's
    # error filter, and what a real client does to reach a server fault.
    Fault("nbdkit-error-enomem", "server", "wrong-error",
          "nbdkit's error filter answers reads with NBD_ENOMEM", "Error values", "SHOULD NOT",
          "The server SHOULD NOT return `NBD_ENOMEM` if at all possible.", "server.no-enomem"),
    Fault("read-past-end", "client", "client", "a read past the end of the export",
          "Size constraints", "MUST NOT",
          "For those requests, the client MUST NOT use a *length* which, when added to "
          "*offset*, would exceed the export size.", "client.request-within-export"),
    Fault("no-fixed-newstyle-reply", "client", "client",
          "client flags without NBD_FLAG_C_FIXED_NEWSTYLE to a fixed-newstyle server",
          "Fixed newstyle negotiation", "SHOULD",
          "The client SHOULD reply with `NBD_FLAG_C_FIXED_NEWSTYLE` set in its flags field too",
          "client.fixed-newstyle-flag"),
    Fault("write-not-written", "server", "semantic",
          "an acknowledged NBD_CMD_WRITE whose data a later read does not return",
          "Request types", "MUST",
          "The server MUST write the data to disk, and then send the reply message.",
          "server.write-writes-data"),
    Fault("export-name-without-go", "client", "client",
          "NBD_OPT_EXPORT_NAME in fixed newstyle without trying NBD_OPT_GO first",
          "Option types", "SHOULD",
          "A client thus SHOULD use `NBD_OPT_GO` in preference to `NBD_OPT_EXPORT_NAME`",
          "client.go-in-preference"),
)


# --- where a deviation is -------------------------------------------------------------------


class Capture:
    """One recorded capture, read once: decoded messages, byte streams, FIN frames."""

    def __init__(self, path: Path) -> None:
        self.path = path
        decoded = decode_capture(path)
        self.messages = [m for session in decoded.sessions for m in session.messages]
        reader = CaptureReader(path)
        connections = reassemble(reader.frames(), reader.source).connections
        if len(connections) != 1:
            raise ValueError(f"{path.name}: {len(connections)} connections, expected one")
        conn = connections[0]
        self.streams = {
            ("server" if endpoint[1] == 10809 else "client"): stream
            for endpoint, stream in conn.streams.items()
        }
        self.fins: dict[str, int] = {}
        for frame in read_frames(path):
            try:
                segment = tcp_segment(frame.linktype, frame.data)
            except NotTcp:
                continue
            side = "server" if segment.src[1] == 10809 else "client"
            if segment.flags & TCP_FIN and side not in self.fins:
                self.fins[side] = frame.number
        self.frames = max(frame.number for frame in read_frames(path))


Locator = Callable[[Capture], int]


def message(direction: str, name: str | None = None, nth: int = 1, *,
            answering: str | None = None) -> Locator:
    """The ``nth`` decoded message of ``direction`` called ``name`` (any name when None),
    answering option or request ``answering`` when given."""

    def locate(capture: Capture) -> int:
        def answers(m: WireMessage) -> bool:
            asked = m.option or m.request
            return answering is None or (asked is not None and asked.name == answering)

        found = [
            m for m in capture.messages
            if m.direction == direction and (name is None or m.name == name) and answers(m)
        ]
        if len(found) < nth:
            raise LookupError(f"{capture.path.name}: no {direction} message #{nth} "
                              f"{name or ''} {answering or ''}")
        return found[nth - 1].frame

    return locate


def raw(direction: str, pattern: bytes, nth: int = 1, back: int = 0) -> Locator:
    """The frame of the byte ``back`` bytes before the ``nth`` match of ``pattern``."""

    def locate(capture: Capture) -> int:
        stream = capture.streams[direction]
        starts = [m.start() for m in re.finditer(re.escape(pattern), bytes(stream.data))]
        if len(starts) < nth:
            raise LookupError(f"{capture.path.name}: {pattern.hex()} not found {nth}x")
        return stream.frame_at(starts[nth - 1] - back)

    return locate


def at(direction: str, offset: int) -> Locator:
    """The frame carrying byte ``offset`` of ``direction``'s stream."""
    return lambda capture: capture.streams[direction].frame_at(offset)


def fin(direction: str) -> Locator:
    """The frame of the first FIN ``direction`` sent."""
    return lambda capture: capture.fins[direction]


def request_header(cmd: int, flags: int = 0) -> bytes:
    """The first 8 bytes of a compact request: magic, flags, type."""
    return c.REQUEST_MAGIC.to_bytes(4, "big") + flags.to_bytes(2, "big") + cmd.to_bytes(2, "big")


SIMPLE_MAGIC = c.SIMPLE_REPLY_MAGIC.to_bytes(4, "big")
CHUNK_MAGIC = c.STRUCTURED_REPLY_MAGIC.to_bytes(4, "big")
OPTION_REPLY_MAGIC = c.OPTION_REPLY_MAGIC.to_bytes(8, "big")
IHAVEOPT = c.IHAVEOPT.to_bytes(8, "big")


@dataclass(frozen=True)
class Deviation:
    """One expected deviation: which fault entry cites it, where it is, and in words."""

    citation: str
    where: Locator
    what: str
    also_at: tuple[Locator, ...] = ()
    """Other frames where the same deviation may be reported (``frames:``)."""
    also: tuple[str, ...] = ()
    """Rule ids that mean the same deviation of these bytes (``also:``)."""


# --- how each capture is made --------------------------------------------------------------


@dataclass(frozen=True)
class Recipe:
    """One capture: server, client, what the client sees, and the ground truth."""

    name: str
    client: tuple[str, ...]
    """argv; ``{uri}``, ``{port}``, ``{pki}`` are filled in."""
    expect: str  # "fails" | "hangs" | "succeeds"
    deviations: tuple[Deviation, ...]
    faults: tuple[str, ...] = ()
    judged: str = "server"
    read_only: bool = False
    nbdkit: tuple[str, ...] = ()
    """nbdkit arguments (plugin, filters) instead of the reference server."""
    output: str = ""
    """A regular expression the client's output must match (what it saw)."""
    client_name: str = ""
    notes: str = ""


def qemu_io(*commands: str) -> tuple[str, ...]:
    argv = ["qemu-io", "-f", "raw", "{uri}"]
    for command in commands:
        argv += ["-c", command]
    return tuple(argv)


def nbdsh(script: str, *, structured: bool = True, strict: bool = True,
          opt_mode: bool = False, handshake_flags: int | None = None) -> tuple[str, ...]:
    setup = []
    if not structured:
        setup.append("h.set_request_structured_replies(False)")
    if not strict:
        setup.append("h.set_strict_mode(0)")
    if opt_mode:
        setup.append("h.set_opt_mode(True)")
    if handshake_flags is not None:
        setup.append(f"h.set_handshake_flags({handshake_flags})")
    setup.append("h.connect_uri('{uri}')")
    return ("nbdsh", "-c", "\n".join([*setup, script]))


def harness_fault(name: str) -> tuple[str, ...]:
    return (*HARNESS, "info", "--timeout", "2", "--fault", name, "{uri}")


def _phantom_read() -> str:
    header = request_header(c.Cmd.READ) + PHANTOM_COOKIE.to_bytes(8, "big")
    return (header + (0).to_bytes(8, "big") + (512).to_bytes(4, "big")).hex()


READ_4K = qemu_io("read 0 4k")
PAST_END = f"h.pread(4096, {EXPORT_SIZE - 2048})"
CHECK_DATA = ("data = h.pread(4096, 0)\n"
              "print('read back', 'as written' if data == b'\\x55' * 4096 else 'CHANGED')\n"
              "assert data == b'\\x55' * 4096, 'data changed'")


def _server(name: str, where: Locator, what: str, *also: Locator) -> Deviation:
    return Deviation(name, where, what, also)


RECIPES: tuple[Recipe, ...] = (
    Recipe("reply-bad-magic", READ_4K, "fails",
           (_server("reply-bad-magic", raw("server", (0x0BADBEEF).to_bytes(4, "big")),
                    "the reply to NBD_CMD_READ starts with 0x0BADBEEF, not a reply magic"),),
           faults=("reply-bad-magic",)),
    Recipe("hole-chunk-length-long", READ_4K, "hangs",
           (_server("hole-chunk-length-long", raw("server", CHUNK_MAGIC, 1),
                    "NBD_REPLY_TYPE_OFFSET_HOLE chunk with length 16 (it carries 12 bytes)"),),
           faults=("hole-chunk-length-long",)),
    Recipe("hole-chunk-length-short", READ_4K, "fails",
           # Read with the header's length, the chunk leaves 4 bytes where the next reply's
           # magic must be, and its hole does not cover the read: the same bytes, other rules.
           (Deviation("hole-chunk-length-short", raw("server", CHUNK_MAGIC, 1),
                      "NBD_REPLY_TYPE_OFFSET_HOLE chunk with length 8 (it carries 12 bytes)",
                      also=("server.reply-magic", "server.read-full-coverage")),),
           faults=("hole-chunk-length-short",)),
    Recipe("read-reply-long", nbdsh("h.pread(4096, 0)\nh.pread(512, 0)", structured=False),
           "fails",
           # The 512 extra bytes stand where the next reply's magic must be: the same bytes.
           (Deviation("read-reply-long", raw("server", SIMPLE_MAGIC, 1),
                      "simple reply to a 4096-byte NBD_CMD_READ carries 4608 bytes of data",
                      also=("server.reply-magic",)),
            # Every READ reply is long: the second one too (seen once the decoder resyncs).
            Deviation("read-reply-long", raw("server", SIMPLE_MAGIC, 2),
                      "simple reply to a 512-byte NBD_CMD_READ carries 1024 bytes of data",
                      also=("server.reply-magic",))),
           faults=("read-reply-long",)),
    Recipe("garbage-between-replies", qemu_io("read 0 4k", "read 4k 4k"), "fails",
           (_server("garbage-between-replies", raw("server", GARBAGE),
                    "16 bytes of 0xA5 where the next reply's magic should be"),
            # Garbage follows every reply: after the second one too.
            _server("garbage-between-replies", raw("server", GARBAGE, 2),
                    "16 bytes of 0xA5 after the second reply, where a reply's magic must be")),
           faults=("garbage-between-replies",)),
    Recipe("read-reply-short", nbdsh("h.pread(4096, 0)", structured=False), "hangs",
           (_server("read-reply-short", raw("server", SIMPLE_MAGIC, 1),
                    "simple reply to a 4096-byte NBD_CMD_READ carries 2048 bytes, and the "
                    "connection stays open"),),
           faults=("read-reply-short",)),
    Recipe("option-unanswered", ("nbdinfo", "--map", "{uri}"), "hangs",
           (_server("option-unanswered", message("client", "NBD_OPT_SET_META_CONTEXT"),
                    "NBD_OPT_SET_META_CONTEXT is never answered"),),
           faults=("option-unanswered",)),
    Recipe("read-unanswered", READ_4K, "hangs",
           (_server("read-unanswered", message("client", "NBD_CMD_READ"),
                    "NBD_CMD_READ is never answered"),),
           faults=("read-unanswered",)),
    Recipe("disconnect-after-client-flags", ("nbdinfo", "{uri}"), "fails",
           # The close leaves the client's first option unanswered: the same deviation.
           (Deviation("disconnect-after-client-flags", fin("server"),
                      "the server closes the connection after valid client flags",
                      (message("client", "client flags"),),
                      also=("server.no-data-option-replies",)),),
           faults=("disconnect-after-client-flags",)),
    Recipe("disconnect-on-starttls",
           ("nbdinfo", "nbds://127.0.0.1:{port}/disk?tls-certificates={pki}"), "fails",
           (Deviation("disconnect-on-starttls", fin("server"),
                      "the server closes the connection instead of answering NBD_OPT_STARTTLS",
                      (message("client", "NBD_OPT_STARTTLS"),),
                      also=("server.no-hard-disconnect-in-options",)),),
           faults=("disconnect-on-starttls",)),
    Recipe("disconnect-on-read", READ_4K, "fails",
           (Deviation("disconnect-on-read", fin("server"),
                      "the server closes the connection instead of answering NBD_CMD_READ",
                      (message("client", "NBD_CMD_READ"),), also=("server.read-answered",)),),
           faults=("disconnect-on-read",)),
    Recipe("disconnect-on-read-past-end", nbdsh(PAST_END, strict=False), "fails",
           (Deviation("read-past-end", message("client", "NBD_CMD_READ"),
                      "NBD_CMD_READ of 4096 bytes at 1046528 runs past the 1 MiB export"),),
           faults=("disconnect-on-read-past-end",), judged="both",
           notes="The client's read past the end breaks a MUST NOT (Size constraints), so the "
           "server MAY hard-disconnect (Terminating the transmission phase): the server's "
           "close is no deviation, the client's read is."),
    Recipe("disconnect-on-unknown-command", harness_fault("unknown-command"), "succeeds",
           (Deviation("unknown-command", raw("client", request_header(UNKNOWN_COMMAND)),
                      "a request of the undefined command type 66"),),
           faults=("disconnect-on-unknown-command",), output="closed the connection",
           judged="both",
           notes="An unknown command breaks the client's MUST (Baseline: negotiate more "
           "messages first), so the server MAY hard-disconnect: the server's close is no "
           "deviation, the client's command is."),
    Recipe("write-payload-not-consumed",
           nbdsh(f"h.pwrite(bytes.fromhex('{_phantom_read()}'), 0)\nh.pread(512, 0)"), "fails",
           (_server("write-payload-not-consumed",
                    raw("server", PHANTOM_COOKIE.to_bytes(8, "big"), back=8),
                    "a reply to cookie 0xbad0c0ffee, which the client only wrote as data"),
            # It never wrote the payload (it read it as requests), so the read returns zeroes.
            _server("write-not-written", message("server", answering="NBD_CMD_READ"),
                    "the read after the acknowledged NBD_CMD_WRITE (reply at frame 12) returns a "
                    "hole (zeroes) where the write put 0x25 0x60 ...; the server never wrote the "
                    "payload, it read it as requests")),
           faults=("write-payload-not-consumed",)),
    Recipe("trim-length-as-payload",
           nbdsh("h.aio_trim(65536, 0)\nh.aio_pread(nbd.Buffer(512), 0)\n"
                 "while h.aio_in_flight() > 0:\n    h.poll(-1)", structured=False), "hangs",
           # The NBD_CMD_READ it swallowed goes unanswered too: the same misparse.
           (Deviation("trim-length-as-payload", message("client", "NBD_CMD_TRIM"),
                      "NBD_CMD_TRIM is never answered: the server reads the next request as its "
                      "data", also=("server.read-answered",)),),
           faults=("trim-length-as-payload",)),
    Recipe("no-fixed-newstyle", ("nbdinfo", "{uri}"), "succeeds",
           (_server("no-fixed-newstyle", message("server", "newstyle greeting"),
                    "the greeting lacks NBD_FLAG_FIXED_NEWSTYLE"),),
           faults=("no-fixed-newstyle",)),
    Recipe("no-opt-go", ("nbdinfo", "{uri}"), "succeeds",
           (_server("no-opt-go",
                    message("server", "NBD_REP_ERR_UNSUP", answering="NBD_OPT_INFO"),
                    "NBD_OPT_INFO (and then NBD_OPT_GO) answered NBD_REP_ERR_UNSUP",
                    message("server", "NBD_REP_ERR_UNSUP", answering="NBD_OPT_GO")),),
           faults=("no-opt-go",)),
    Recipe("no-opt-list", ("nbdinfo", "--list", "{uri}"), "fails",
           (_server("no-opt-list", message("server", "NBD_REP_ERR_UNSUP", answering="NBD_OPT_LIST"),
                    "NBD_OPT_LIST answered NBD_REP_ERR_UNSUP"),),
           faults=("no-opt-list",)),
    Recipe("go-without-info-export", ("nbdinfo", "{uri}"), "fails",
           (_server("go-without-info-export",
                    message("server", "NBD_REP_ACK", answering="NBD_OPT_INFO"),
                    "NBD_REP_ACK ends NBD_OPT_INFO without any NBD_INFO_EXPORT"),),
           faults=("go-without-info-export",)),
    Recipe("eio-read-past-end", nbdsh(PAST_END, strict=False), "fails",
           (Deviation("read-past-end", message("client", "NBD_CMD_READ"),
                      "NBD_CMD_READ of 4096 bytes at 1046528 runs past the 1 MiB export"),
            _server("eio-read-past-end", message("server", answering="NBD_CMD_READ"),
                    "a read past the end fails with NBD_EIO"),
            Deviation("close-without-disc", fin("client"),
                      "nbdsh's script ends without h.shutdown(): the client closes the "
                      "connection without NBD_CMD_DISC (the server broke only a SHOULD)")),
           faults=("eio-read-past-end",), judged="both"),
    Recipe("eio-block-status-no-context", harness_fault("block-status-without-context"),
           "succeeds",
           (Deviation("block-status-without-context",
                      raw("client", request_header(c.Cmd.BLOCK_STATUS)),
                      "NBD_CMD_BLOCK_STATUS with no metadata context selected"),
            _server("eio-block-status-no-context",
                    message("server", answering="NBD_CMD_BLOCK_STATUS"),
                    "NBD_CMD_BLOCK_STATUS without a context fails with NBD_EIO")),
           faults=("eio-block-status-no-context",), judged="both", output=r"error 5 \(NBD_EIO\)"),
    Recipe("undefined-errno", nbdsh(PAST_END, strict=False), "fails",
           (Deviation("read-past-end", message("client", "NBD_CMD_READ"),
                      "NBD_CMD_READ of 4096 bytes at 1046528 runs past the 1 MiB export"),
            _server("undefined-errno", message("server", answering="NBD_CMD_READ"),
                    "the error reply carries error value 127"),
            _server("eio-read-past-end", message("server", answering="NBD_CMD_READ"),
                    "a read past the end fails with error value 127, not NBD_EINVAL")),
           faults=("undefined-errno",), judged="both"),
    Recipe("enotsup-write-zeroes", qemu_io("write -z 0 4k"), "succeeds",
           (_server("enotsup-write-zeroes",
                    message("server", answering="NBD_CMD_WRITE_ZEROES"),
                    "NBD_CMD_WRITE_ZEROES without NBD_CMD_FLAG_FAST_ZERO fails with "
                    "NBD_ENOTSUP"),),
           faults=("enotsup-write-zeroes",)),
    Recipe("cache-changes-data",
           nbdsh(f"h.pwrite(b'\\x55' * 4096, 0)\nh.cache(4096, 0)\n{CHECK_DATA}"), "fails",
           (_server("cache-changes-data", message("server", answering="NBD_CMD_READ"),
                    "the read after NBD_CMD_CACHE returns zeroes where 0x55 was written",
                    message("server", answering="NBD_CMD_CACHE")),),
           faults=("cache-changes-data",), output="CHANGED", judged="both",
           notes="The script's assert finds the read changed (a MUST NOT the server broke) and "
           "nbdsh exits without h.shutdown(): a client MAY hard-disconnect when it detects a "
           "violation of a mandatory condition (Terminating the transmission phase), so the "
           "close without NBD_CMD_DISC is no deviation."),
    Recipe("read-only-write-accepted",
           nbdsh("h.pwrite(b'\\x55' * 4096, 0)\nprint('write accepted')", strict=False),
           "succeeds",
           (_server("read-only-write-accepted", message("server", answering="NBD_CMD_WRITE"),
                    "NBD_CMD_WRITE on a READ_ONLY export gets a success reply"),),
           faults=("read-only-write-accepted",), read_only=True, output="write accepted"),
    Recipe("write-zeroes-not-zeroing",
           qemu_io("write -P 0x55 0 4k", "write -z 0 4k", "read -P 0 0 4k"), "fails",
           (_server("write-zeroes-not-zeroing", message("server", answering="NBD_CMD_READ"),
                    "the read after NBD_CMD_WRITE_ZEROES returns 0x55, not zeroes",
                    message("server", answering="NBD_CMD_WRITE_ZEROES")),),
           faults=("write-zeroes-not-zeroing",), output="Pattern verification failed"),
    Recipe("info-go-disagree",
           nbdsh("h.opt_info()\ninfo_size = h.get_size()\nh.opt_go()\n"
                 "print('INFO size', info_size, 'GO size', h.get_size())\n"
                 "assert info_size == h.get_size(), 'sizes differ'", opt_mode=True), "fails",
           (_server("info-go-disagree",
                    message("server", "NBD_REP_INFO", answering="NBD_OPT_GO"),
                    "NBD_OPT_GO's NBD_INFO_EXPORT says 524288 bytes, NBD_OPT_INFO's said "
                    "1048576"),),
           faults=("info-go-disagree",), output="INFO size 1048576 GO size 524288"),
    Recipe("export-name-option-reply", nbdsh("print(h.get_size())", handshake_flags=0),
           "hangs",
           (Deviation("no-fixed-newstyle-reply", message("client", "client flags"),
                      "client flags 0 (the client was told to, to send NBD_OPT_EXPORT_NAME "
                      "at once)"),
            _server("export-name-option-reply", raw("server", OPTION_REPLY_MAGIC, 1),
                    "NBD_OPT_EXPORT_NAME answered with an NBD_REP_ERR_UNKNOWN option reply")),
           faults=("export-name-option-reply",), judged="both"),
    # --- the reference client's faults, against the healthy reference server ------------------
    Recipe("client-bad-client-flags", harness_fault("bad-client-flags"), "succeeds",
           (Deviation("bad-client-flags", at("client", 0),
                      "client flags with the undefined bit 0x80"),),
           judged="client", output="closed the connection"),
    Recipe("client-request-before-go", harness_fault("request-before-go"), "succeeds",
           (Deviation("request-before-go", at("client", 4),
                      "an NBD_CMD_READ request where an option (IHAVEOPT) must be"),),
           judged="client"),
    Recipe("client-option-after-export-name", harness_fault("option-after-export-name"),
           "succeeds",
           (Deviation("option-after-export-name",
                      raw("client", IHAVEOPT + int(c.Opt.LIST).to_bytes(4, "big")),
                      "NBD_OPT_LIST sent in transmission, where a request must be"),
            Deviation("export-name-without-go", message("client", "NBD_OPT_EXPORT_NAME"),
                      "the fault script goes to NBD_OPT_EXPORT_NAME without trying NBD_OPT_GO")),
           judged="client"),
    Recipe("client-write-without-data", harness_fault("write-without-data"), "succeeds",
           (Deviation("write-without-data", raw("client", request_header(c.Cmd.WRITE)),
                      "NBD_CMD_WRITE of 4096 bytes followed by a request instead of its data"),),
           judged="client"),
    Recipe("client-close-without-disc", harness_fault("close-without-disc"), "succeeds",
           (Deviation("close-without-disc", fin("client"),
                      "the client closes the connection without NBD_CMD_DISC"),),
           judged="client"),
    Recipe("client-close-without-abort", harness_fault("close-without-abort"), "succeeds",
           (Deviation("close-without-abort", fin("client"),
                      "the client closes the connection in negotiation without NBD_OPT_ABORT"),),
           judged="client"),
    Recipe("client-unknown-command-flags", harness_fault("unknown-command-flags"), "succeeds",
           (Deviation("unknown-command-flags",
                      raw("client", request_header(c.Cmd.READ, UNKNOWN_COMMAND_FLAG)),
                      "NBD_CMD_READ with the undefined command flag 0x1000"),),
           judged="client"),
    Recipe("client-overlapping-cookies", harness_fault("overlapping-cookies"), "succeeds",
           (Deviation("overlapping-cookies",
                      raw("client", request_header(c.Cmd.READ)
                          + SHARED_COOKIE.to_bytes(8, "big"), nth=2),
                      "a second NBD_CMD_READ with cookie 7 while the first is in flight"),
            Deviation("close-without-disc", fin("client"),
                      "the fault script closes the connection without NBD_CMD_DISC")),
           judged="client"),
    Recipe("client-unknown-command", harness_fault("unknown-command"), "succeeds",
           (Deviation("unknown-command", raw("client", request_header(UNKNOWN_COMMAND)),
                      "a request of the undefined command type 66"),),
           judged="client"),
    Recipe("client-block-status-without-context", harness_fault("block-status-without-context"),
           "succeeds",
           (Deviation("block-status-without-context",
                      raw("client", request_header(c.Cmd.BLOCK_STATUS)),
                      "NBD_CMD_BLOCK_STATUS with no metadata context selected"),),
           judged="client"),
    # --- healthy controls: the same clients against the healthy reference server ----------------
    Recipe("healthy-qemu-io", qemu_io("write -P 0x55 0 4k", "write -z 4k 4k", "read -P 0x55 0 4k",
                                      "read -P 0 4k 4k", "discard 0 4k"), "succeeds", (),
           notes="The healthy reference server: no deviation; a test of false findings."),
    Recipe("healthy-nbdinfo-map", ("nbdinfo", "--map", "{uri}"), "succeeds", (),
           notes="The healthy reference server: no deviation; a test of false findings."),
    # --- nbdkit's error and delay filters ---------------------------------------------------------
    Recipe("nbdkit-error-eio", READ_4K, "fails", (),
           nbdkit=("--filter=error", "memory", "1M", "error-pread=EIO",
                   "error-pread-rate=100%"),
           notes="NBD_EIO for a failed read is allowed ('Which error to return in any other "
           "case is not specified'): no deviation; a test of false findings."),
    Recipe("nbdkit-error-enomem", READ_4K, "fails",
           (Deviation("nbdkit-error-enomem", message("server", answering="NBD_CMD_READ"),
                      "the read fails with NBD_ENOMEM"),),
           nbdkit=("--filter=error", "memory", "1M", "error-pread=ENOMEM",
                   "error-pread-rate=100%")),
    Recipe("nbdkit-delay", READ_4K, "succeeds", (),
           nbdkit=("--filter=delay", "memory", "1M", "rdelay=2"),
           notes="Every read answered after 2 s: a bounded wait, not a deviation."),
)
RECIPE_BY_NAME = {recipe.name: recipe for recipe in RECIPES}
CITATIONS.update({fault.name: fault for fault in EXTRA_CITATIONS})


# --- running a recipe ------------------------------------------------------------------------


@dataclass
class Outcome:
    """What the client did: ``fails``, ``hangs`` or ``succeeds``, and what it printed."""

    result: str
    output: str
    seconds: float
    client: str = ""
    extra: dict = field(default_factory=dict)


def _version(argv0: str) -> str:
    if argv0 == "nbdsh" or argv0 == "nbdinfo":
        out = subprocess.run([argv0, "--version"], capture_output=True, text=True, timeout=10,
                             env={**os.environ, "PATH": DEBIAN_PATH})
        return out.stdout.splitlines()[0].strip() if out.stdout else argv0
    if argv0.startswith("qemu"):
        out = subprocess.run([argv0, "--version"], capture_output=True, text=True, timeout=10)
        return out.stdout.splitlines()[0].strip()
    return "nbd-harness info --fault (the reference client)"


def _run_client(argv: list[str], timeout: float) -> tuple[str, str, float]:
    start = time.monotonic()
    env = {**os.environ, "PATH": f"{DEBIAN_PATH}:{os.environ.get('PATH', '')}",
           "PYTHONPATH": str(REPO)}
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, env=env, start_new_session=True, cwd=REPO)
    try:
        output, _ = process.communicate(timeout=timeout)
        result = "succeeds" if process.returncode == 0 else "fails"
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate(timeout=10)
        result = "hangs"
    return result, output, time.monotonic() - start


class _Nbdkit:
    """nbdkit in the foreground on a unix socket, killed at the end."""

    def __init__(self, args: tuple[str, ...], directory: Path) -> None:
        self.socket = directory / "nbdkit.sock"
        self.socket.unlink(missing_ok=True)  # a previous nbdkit's socket must not look ready
        with open(directory / "nbdkit.log", "wb") as log:
            self.process = subprocess.Popen(
                ["nbdkit", "-f", "-U", str(self.socket), "--exportname=disk", *args],
                stdout=subprocess.DEVNULL, stderr=log, start_new_session=True)
        deadline = time.monotonic() + 10
        while not self.socket.exists():
            if time.monotonic() > deadline or self.process.poll() is not None:
                self.stop()
                raise RuntimeError(f"nbdkit {' '.join(args)} did not start")
            time.sleep(0.05)

    @property
    def address(self) -> Address:
        return Address.unix(str(self.socket))

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
        self.process.wait(10)


def run_recipe(recipe: Recipe, directory: Path, scratch: Path) -> Outcome:
    """Serve, record and run the client of ``recipe``; the capture is ``directory/NAME.pcapng``.

    ``scratch`` holds what must not be committed (sockets, the test PKI).
    """
    directory.mkdir(parents=True, exist_ok=True)
    scratch.mkdir(parents=True, exist_ok=True)
    capture = directory / f"{recipe.name}.pcapng"
    if recipe.nbdkit:
        server = _Nbdkit(recipe.nbdkit, scratch)
        stop = server.stop
        upstream = server.address
    else:
        document = {"server": {"listen": "tcp://127.0.0.1:0"},
                    "export": [{"name": "disk", "size": EXPORT_SIZE,
                                "read_only": recipe.read_only}]}
        thread = ServerThread(config_from_dict(document))
        thread.server.faults = ServerFaults.from_names(recipe.faults)
        thread.start()
        stop = thread.stop
        upstream = thread.address
    pki = scratch / "pki"
    if "{pki}" in " ".join(recipe.client) and not pki.exists():
        from harness.tls import make_test_pki

        make_test_pki(pki)
    try:
        with ProxyThread(LOCALHOST, upstream, capture) as proxy:
            port = proxy.address.port
            argv = [part.format(uri=f"nbd://127.0.0.1:{port}/disk", port=port, pki=pki)
                    for part in recipe.client]
            timeout = HANG_TIMEOUT if recipe.expect == "hangs" else RUN_TIMEOUT
            result, output, seconds = _run_client(argv, timeout)
            deadline = time.monotonic() + 10
            while proxy.stats.closed < proxy.stats.accepted and time.monotonic() < deadline:
                time.sleep(0.05)
    finally:
        stop()
    return Outcome(result, output, seconds, _version(recipe.client[0]))


# --- ground truth -----------------------------------------------------------------------------


def ground_truth(recipe: Recipe, capture_path: Path, client: str) -> dict:
    """The ``NAME.deviations.yaml`` document for a recorded capture."""
    capture = Capture(capture_path)
    if recipe.nbdkit:
        server = f"nbdkit 1.32 {' '.join(recipe.nbdkit)}"
    elif recipe.faults:
        server = f"nbd-harness serve --fault {' --fault '.join(recipe.faults)}"
    else:
        server = "nbd-harness serve (healthy reference server)"
    deviations = []
    for deviation in recipe.deviations:
        cited = CITATIONS[deviation.citation]
        entry = {
            "frame": deviation.where(capture),
            "sender": cited.role,
            "what": deviation.what,
            "level": cited.level,
            "section": cited.section,
            "sentence": cited.sentence,
            "rule": cited.rule,
        }
        if deviation.also_at:
            entry["frames"] = [locate(capture) for locate in deviation.also_at]
        if deviation.also:
            entry["also"] = list(deviation.also)
        deviations.append(entry)
    document = {
        "capture": capture_path.name,
        "produced_by": f"{server} (1 MiB export 'disk') driven by {client}: "
                       + " ".join(recipe.client).replace(" ".join(HARNESS), "nbd-harness"),
        "judged": recipe.judged,
        "deviations": deviations,
    }
    if recipe.notes:
        document["notes"] = recipe.notes
    return document


def record(recipe: Recipe, directory: Path, scratch: Path) -> Outcome:
    """Record ``recipe`` into ``directory`` and write its ground truth beside the capture."""
    outcome = run_recipe(recipe, directory, scratch)
    truth = ground_truth(recipe, directory / f"{recipe.name}.pcapng", outcome.client)
    text = yaml.safe_dump(truth, sort_keys=False, width=100, allow_unicode=True)
    (directory / f"{recipe.name}.deviations.yaml").write_text(text)
    return outcome


def saw_as_documented(recipe: Recipe, outcome: Outcome) -> bool:
    """True when the client ended as the recipe says and printed what it should."""
    return outcome.result == recipe.expect and re.search(recipe.output, outcome.output) is not None


def main(names: list[str]) -> int:
    chosen = [RECIPE_BY_NAME[name] for name in names] if names else list(RECIPES)
    with tempfile.TemporaryDirectory() as scratch:
        for recipe in chosen:
            outcome = record(recipe, HERE, Path(scratch))
            mark = "ok" if saw_as_documented(recipe, outcome) else (
                f"UNEXPECTED (want {recipe.expect}, output matching {recipe.output!r})")
            print(f"{recipe.name}: client {outcome.result} in {outcome.seconds:.1f} s {mark}")
            if mark != "ok":
                print("   " + outcome.output.strip().replace("\n", "\n   ")[:2000])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
