"""Wireshark 4.6 reads our captures as our dissector does, field by field.

Debian sid's tshark 4.6 (in the sid root filesystem, run with bubblewrap) is the
first Wireshark whose NBD dissector reads the handshake, the options and their
replies and structured replies, not only requests.  It reads every capture in
``tests/data/captures`` and two fresh ones with error replies and a hole
(qemu-nbd 7.2 with structured replies, nbd-server with simple ones), with
``-2 -T json``; each NBD message it decodes is paired with ours (same TCP
connection, same direction, a frame our message's bytes arrived in, a kind
that fits) and every field it shows must equal our reading of the same bytes.

Fields compared (tshark's names; each against our field of the same meaning):

- handshake: ``nbd.hnd.magic`` (NBDMAGIC, IHAVEOPT, cliserv magic),
  ``nbd.hnd.flags`` (handshake flags: tshark reads them only when they arrive in
  a segment of their own), ``nbd.cli.flags`` (client flags);
- options: ``nbd.hnd.magic``, ``nbd.hnd.opt`` (option type), ``nbd.len``
  (option length), ``nbd.export.name.len``, ``nbd.export.name``,
  ``nbd.info.num`` and each ``nbd.info`` (information requests),
  ``nbd.query.num``, ``nbd.query``, ``nbd.data`` (data of other options),
  ``nbd.response_in`` (the frame of its last reply);
- option replies: ``nbd.hnd.magic``, ``nbd.hnd.opt``, ``nbd.hnd.reply`` (reply
  type), ``nbd.len``, ``nbd.export.name.len`` and ``nbd.export.name``
  (``NBD_REP_SERVER``, ``NBD_INFO_NAME``), ``nbd.info`` (information type),
  ``nbd.export.size``, ``nbd.export.trans.flags``, ``nbd.export.description``,
  ``nbd.block_size.min``, ``nbd.block_size.prefer``, ``nbd.payload_size.max``,
  ``nbd.meta_context.id``, ``nbd.meta_context.name``, ``nbd.error_msg``,
  ``nbd.data``, ``nbd.response_to`` (the frame of the option it answers);
- the export-name reply: ``nbd.export.size``, ``nbd.export.trans.flags``,
  ``nbd.reserved`` (the 124 zeroes), ``nbd.hnd.opt`` and ``nbd.response_to``
  (the ``NBD_OPT_EXPORT_NAME`` it answers);
- requests: ``nbd.magic``, ``nbd.cmd.flags``, ``nbd.type``, ``nbd.handle``
  (cookie), ``nbd.from`` (offset), ``nbd.len``, ``nbd.data`` (WRITE data),
  ``nbd.response_in``;
- simple replies: ``nbd.magic``, ``nbd.error``, ``nbd.handle``, ``nbd.type``
  (the type of the request it answers), ``nbd.data`` (READ data),
  ``nbd.response_to``;
- structured reply chunks: ``nbd.magic``, ``nbd.reply.flags``,
  ``nbd.reply.type``, ``nbd.handle``, ``nbd.len`` (the chunk's length, then each
  block descriptor's), ``nbd.from`` (the offset of OFFSET_DATA, OFFSET_HOLE,
  ERROR_OFFSET), ``nbd.data``, ``nbd.hole_size``, ``nbd.meta_context.id``,
  ``nbd.status_flags`` (each descriptor's status), ``nbd.error``,
  ``nbd.error_msg.len``, ``nbd.error_msg``, ``nbd.response_to``.

``nbd.time`` (a duration) is not compared.  Where tshark 4.6 itself misreads the
wire the comparison models its mistake, so it still has to agree on the bytes:

- it reads each metadata context query with a 16-bit length prefix where the
  spec has 32 bits, so ``nbd.query`` is what that reading of our bytes gives;
- it does not step over the message of an error chunk, so ``nbd.data`` repeats
  the bytes after the error and the message length;
- it knows the server only by port 10809: in captures on other ports a
  separately sent server greeting part is read as the client's.

Wireshark decodes no extended headers: their frames show as NBD without a single
field.  There we assert only that tshark does not contradict us: no field, or
fields that agree (extended sessions still have their handshake compared).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import struct
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from harness.address import Address
from harness.capture import ProxyThread
from harness.dissect import CLIENT, SERVER, Capture, Session, WireMessage, decode_capture
from harness.peers import Catalog, DataRange, Endpoint, ExportSpec, Layer
from harness.peers.rootfs import RootfsProvider, mounted_anywhere
from harness.peers.suites import load_suites
from harness.process import ManagedProcess, run_command
from harness.protocol import constants as c


def peers(test: Callable[..., None]) -> Callable[..., None]:
    """Needs the sid root filesystem (and, for the fresh captures, the host's peers)."""
    return pytest.mark.peers(pytest.mark.slow(test))


CAPTURES = Path(__file__).parent / "data" / "captures"
STORED = sorted(p.name for p in CAPTURES.iterdir() if p.suffix in (".pcap", ".pcapng"))
TSHARK_TIMEOUT = 120.0

# Left out of the comparison (a duration); any other field without a reader in
# FIELD_READERS fails the test.
NOT_COMPARED = {"nbd.time"}


# --- running sid's tshark ------------------------------------------------------------


@pytest.fixture(scope="module")
def sid() -> RootfsProvider:
    """Debian sid's root filesystem with tshark: provisioning rebuilds a cached one that
    predates tshark in its package list (the recipe digest changed)."""
    provider = RootfsProvider(load_suites().suite("sid"))
    provider.provision(lambda line: None)
    assert provider.ready() and provider.has_program("tshark")
    return provider


@dataclass
class TsharkPdu:
    """One NBD message as tshark decoded it: where, and its fields (repeated ones as lists)."""

    frame: int
    source_port: int
    destination_port: int
    fields: dict[str, Any]


def run_tshark(provider: RootfsProvider, capture: Path) -> list[TsharkPdu]:
    """tshark's NBD messages of ``capture``, in frame order."""
    # bwrap binds a directory at the same path inside, which must be creatable there:
    # under /tmp (a tmpfs inside) it is, the repository's path is not.
    with tempfile.TemporaryDirectory(prefix="nbdh-tshark-", dir="/tmp") as directory:
        local = Path(directory) / capture.name
        shutil.copyfile(capture, local)
        result = _tshark(provider, local)
    pdus: list[TsharkPdu] = []
    for packet in json.loads(str(result.stdout) or "[]"):
        layers = packet["_source"]["layers"]
        frame = int(layers["frame"]["frame.number"])
        ports = int(layers["tcp"]["tcp.srcport"]), int(layers["tcp"]["tcp.dstport"])
        for item in _nbd_items(layers["nbd"]):
            pdus.append(TsharkPdu(frame, *ports, item))
    return pdus


def _tshark(provider: RootfsProvider, local: Path) -> subprocess.CompletedProcess:
    return provider.run(
        [
            "tshark",
            "-r",
            str(local),
            "-2",  # two passes: response_in is known on the first message
            "-Y",
            "nbd",
            "-T",
            "json",
            "--no-duplicate-keys",  # repeated fields become lists
            "-J",
            "frame tcp nbd",
        ],
        timeout=TSHARK_TIMEOUT,
        binds=[local.parent],
    )


def _nbd_items(value: Any) -> Iterator[dict[str, Any]]:
    """Each NBD protocol item of a frame, as a flat field dict (``{}``: no fields)."""
    if isinstance(value, list):
        for item in value:
            yield from _nbd_items(item)
    elif isinstance(value, dict):
        if set(value) == {"nbd"}:  # an item nested in an empty one (export-name reply)
            yield from _nbd_items(value["nbd"])
            return
        yield {
            key: item
            for key, item in value.items()
            if key.startswith("nbd.") and not key.endswith("_tree") and key not in NOT_COMPARED
        }
    else:
        yield {}  # "Network Block Device": recognised, nothing decoded


# --- pairing tshark's messages with ours ------------------------------------------------


def _magic(pdu: TsharkPdu, name: str) -> int | None:
    value = pdu.fields.get(name)
    return int(value, 16) if isinstance(value, str) else None


def tshark_kind(pdu: TsharkPdu) -> set[str]:
    """Which of our message kinds this tshark message can be."""
    fields = pdu.fields
    if not fields:
        return set()
    magic = _magic(pdu, "nbd.magic")
    if magic is not None:
        return {
            c.REQUEST_MAGIC: {"request"},
            c.SIMPLE_REPLY_MAGIC: {"simple-reply"},
            c.STRUCTURED_REPLY_MAGIC: {"chunk"},
        }[magic]
    hnd = _magic(pdu, "nbd.hnd.magic")
    if hnd == c.NBDMAGIC:
        return {"newstyle-greeting", "oldstyle-greeting"}
    if hnd == c.IHAVEOPT:
        return {"option"} if "nbd.hnd.opt" in fields else {"newstyle-greeting"}
    if hnd == c.OPTION_REPLY_MAGIC:
        return {"option-reply"}
    if hnd == c.CLISERV_MAGIC:
        return {"oldstyle-greeting"}
    if "nbd.export.size" in fields:
        return {"export-name-reply"}
    if "nbd.cli.flags" in fields:
        return {"client-flags", "newstyle-greeting"}  # see the module docstring
    if "nbd.hnd.flags" in fields:
        return {"newstyle-greeting"}
    raise AssertionError(f"frame {pdu.frame}: unknown tshark NBD message {fields}")


def _session_of(capture: Capture, pdu: TsharkPdu) -> tuple[Session, str]:
    for session in capture.sessions:
        ports = {session.client[1], session.server[1]}
        if ports == {pdu.source_port, pdu.destination_port} and (
            session.first_frame <= pdu.frame <= session.last_frame
        ):
            direction = SERVER if pdu.source_port == session.server[1] else CLIENT
            return session, direction
    raise AssertionError(f"frame {pdu.frame}: tshark sees NBD in a connection we do not")


@dataclass
class Agreement:
    """What comparing one capture found."""

    compared: dict[str, int] = field(default_factory=dict)
    """tshark field -> how many values agreed."""
    empty: list[WireMessage] = field(default_factory=list)
    """Our messages under tshark messages without a single field."""
    disagreements: list[str] = field(default_factory=list)
    capture: Capture | None = None
    """Our decode of the capture (the messages above are its)."""


def compare(capture: Capture, pdus: list[TsharkPdu]) -> Agreement:
    """Pair each tshark message with one of ours and compare every field it has."""
    agreement = Agreement(capture=capture)
    used: set[tuple[int, int]] = set()
    for pdu in pdus:
        session, direction = _session_of(capture, pdu)
        candidates = [
            m
            for m in session.messages
            if m.direction == direction and m.frame <= pdu.frame <= m.last_frame
        ]
        kinds = tshark_kind(pdu)
        if not kinds:
            # tshark recognised NBD and decoded nothing (extended messages; parts of a
            # message it lost track of): nothing to contradict us.
            agreement.empty.extend(candidates)
            continue
        # One of ours per tshark message, except that tshark shows each part of a
        # message sent in parts (a greeting) on its own.
        ours = next(
            (m for m in candidates if m.kind in kinds and (id(m), pdu.frame) not in used), None
        )
        if ours is None:
            agreement.disagreements.append(
                f"frame {pdu.frame}: tshark decodes {sorted(kinds)} {pdu.fields}, we have "
                f"{[m.name for m in candidates]}"
            )
            continue
        used.add((id(ours), pdu.frame))
        for name, theirs in pdu.fields.items():
            _compare_field(agreement, pdu, ours, session, name, theirs)
    return agreement


def _extended(message: WireMessage) -> bool:
    return message.fields.get("magic") in (c.EXTENDED_REQUEST_MAGIC, c.EXTENDED_REPLY_MAGIC)


def _compare_field(
    agreement: Agreement,
    pdu: TsharkPdu,
    ours: WireMessage,
    session: Session,
    name: str,
    theirs: Any,
) -> None:
    reader = FIELD_READERS.get(name)
    if reader is None:
        agreement.disagreements.append(f"frame {pdu.frame}: no comparison for {name}={theirs}")
        return
    expected = reader(ours, session)
    got = _parse(name, theirs)
    if got != expected:
        agreement.disagreements.append(
            f"frame {pdu.frame} {ours.name} (offset {ours.offset}): {name} is {got!r} "
            f"for tshark, {expected!r} for us"
        )
    else:
        agreement.compared[name] = agreement.compared.get(name, 0) + 1


# tshark's JSON values are the "show" strings: hex for BASE_HEX, decimal otherwise,
# colon-separated hex for bytes.
_BYTES = {"nbd.data", "nbd.reserved"}
_STRINGS = {
    "nbd.export.name",
    "nbd.export.description",
    "nbd.meta_context.name",
    "nbd.error_msg",
    "nbd.query",
}


def _parse(name: str, value: Any) -> Any:
    if isinstance(value, list):
        return [_parse(name, item) for item in value]
    if name in _BYTES:
        return bytes.fromhex(value.replace(":", ""))
    if name in _STRINGS:
        return value
    return int(value, 16) if value.startswith("0x") else int(value)


def _single_or_list(values: list[Any]) -> Any:
    """How tshark's JSON shows a field: one value alone, several as a list."""
    return values[0] if len(values) == 1 else values


def _wire_after(message: WireMessage, header: int) -> bytes:
    return message.wire[header:]


# Our value of each tshark field, for the message it was paired with.
Reader = Callable[[WireMessage, Session], Any]


@dataclass(frozen=True)
class OneOf:
    """Our value when tshark may show any of several (it sees one segment of a message)."""

    values: frozenset[int]

    def __eq__(self, other: object) -> bool:
        return other in self.values

    def __hash__(self) -> int:
        return hash(self.values)


def _hnd_magic(m: WireMessage, s: Session) -> Any:
    if m.kind in ("newstyle-greeting", "oldstyle-greeting") and m.frame != m.last_frame:
        # A greeting sent in parts: tshark reads the magic at the start of each part
        # (NBDMAGIC, then IHAVEOPT or the cliserv magic).
        return OneOf(frozenset(struct.unpack_from(">QQ", m.wire)))
    return int(m.fields["magic"])


def _hnd_opt(m: WireMessage, s: Session) -> int:
    if m.kind == "export-name-reply":
        assert m.option is not None
        return int(m.option.fields["option"])
    return int(m.fields["option"])


def _length(m: WireMessage, s: Session) -> Any:
    if m.kind == "chunk" and "descriptors" in m.fields:
        return [m.fields["length"], *(d["length"] for d in m.fields["descriptors"])]
    return m.fields["length"]


def _info(m: WireMessage, s: Session) -> Any:
    if m.kind == "option":
        return _single_or_list(list(m.fields["info_requests"]))
    return m.fields["info_type"]


def _queries(m: WireMessage, s: Session) -> Any:
    """What tshark 4.6 shows as the queries: it reads a 16-bit length prefix (the spec's
    is 32 bits) and steps over what it read."""
    payload = _wire_after(m, c.OPTION_HEADER_LEN)
    (name_length,) = struct.unpack_from(">I", payload)
    at = 4 + name_length + 4
    shown = []
    for _ in range(m.fields["query_count"]):
        (length,) = struct.unpack_from(">H", payload, at)
        shown.append(payload[at + 2 : at + 2 + length].decode("utf-8", "replace"))
        at += 2 + length
    return _single_or_list(shown)


def _data(m: WireMessage, s: Session) -> bytes:
    if m.kind == "chunk" and c.is_error_chunk(int(m.fields["type"])):
        header = len(m.wire) - m.fields["length"]
        return _wire_after(m, header + 6)  # tshark does not step over the message
    if m.kind == "option-reply":
        return _wire_after(m, c.OPTION_REPLY_HEADER_LEN)
    if m.kind == "option":
        return _wire_after(m, c.OPTION_HEADER_LEN)
    return bytes(m.fields["data"])


def _from(m: WireMessage, s: Session) -> int:
    if m.kind == "request":
        return int(m.fields["offset"])
    [key] = [k for k in ("data_offset", "hole_offset", "error_offset") if k in m.fields]
    return int(m.fields[key])


def _type(m: WireMessage, s: Session) -> int:
    if m.kind == "simple-reply":
        assert m.request is not None
        return int(m.request.fields["type"])
    return int(m.fields["type"])


def _flags(m: WireMessage, s: Session) -> int:
    if m.kind == "newstyle-greeting":
        return int(m.fields["handshake_flags"])
    return int(m.fields["client_flags"])


def _status_flags(m: WireMessage, s: Session) -> Any:
    return _single_or_list([d["status"] for d in m.fields["descriptors"]])


def _response_to(m: WireMessage, s: Session) -> int:
    asked = m.option if m.kind in ("option-reply", "export-name-reply") else m.request
    assert asked is not None, m.name
    return asked.last_frame


def _response_in(m: WireMessage, s: Session) -> int:
    link = "option" if m.kind == "option" else "request"
    replies = [r for r in s.messages if getattr(r, link) is m]
    return max(r.last_frame for r in replies)


def _field(name: str) -> Reader:
    return lambda m, s: m.fields[name]


FIELD_READERS: dict[str, Reader] = {
    "nbd.hnd.magic": _hnd_magic,
    "nbd.hnd.flags": _flags,
    "nbd.cli.flags": _flags,
    "nbd.hnd.opt": _hnd_opt,
    "nbd.hnd.reply": _field("reply_type"),
    "nbd.len": _length,
    "nbd.export.name.len": _field("name_length"),
    "nbd.export.name": _field("export_name"),
    "nbd.info.num": _field("info_count"),
    "nbd.info": _info,
    "nbd.query.num": _field("query_count"),
    "nbd.query": _queries,
    "nbd.export.size": _field("size"),
    "nbd.export.trans.flags": _field("transmission_flags"),
    "nbd.export.description": _field("description"),
    "nbd.block_size.min": _field("minimum_block_size"),
    "nbd.block_size.prefer": _field("preferred_block_size"),
    "nbd.payload_size.max": _field("maximum_payload_size"),
    "nbd.meta_context.id": _field("context_id"),
    "nbd.meta_context.name": _field("context_name"),
    "nbd.error_msg.len": _field("message_length"),
    "nbd.error_msg": _field("message"),
    "nbd.reserved": _field("zeroes"),
    "nbd.data": _data,
    "nbd.magic": _field("magic"),
    "nbd.cmd.flags": _field("flags"),
    "nbd.reply.flags": _field("flags"),
    "nbd.type": _type,
    "nbd.reply.type": _field("type"),
    "nbd.handle": _field("cookie"),
    "nbd.from": _from,
    "nbd.error": _field("error"),
    "nbd.hole_size": _field("hole_size"),
    "nbd.status_flags": _status_flags,
    "nbd.response_to": _response_to,
    "nbd.response_in": _response_in,
}


def assert_agrees(provider: RootfsProvider, path: Path) -> Agreement:
    """tshark decodes NBD in ``path`` and agrees with us on every field it shows."""
    capture = decode_capture(path)
    pdus = run_tshark(provider, path)
    assert pdus, f"tshark decoded no NBD in {path.name}"
    agreement = compare(capture, pdus)
    assert agreement.disagreements == [], "\n".join(agreement.disagreements)
    return agreement


# --- tests ----------------------------------------------------------------------------


@peers
def test_sid_has_tshark_4_6(sid: RootfsProvider) -> None:
    result = sid.run(["tshark", "--version"], timeout=TSHARK_TIMEOUT)
    assert str(result.stdout).startswith("TShark (Wireshark) 4.6.")
    assert sid.installed_packages()["tshark"].startswith("4.6.")


@peers
@pytest.mark.parametrize("name", STORED)
def test_tshark_agrees_on_stored_capture(name: str, sid: RootfsProvider) -> None:
    agreement = assert_agrees(sid, CAPTURES / name)
    capture = agreement.capture
    assert capture is not None
    extended = any(s.state.extended_headers for s in capture.sessions)
    # Something of every phase was compared: the handshake (when captured) and requests
    # (compact ones only: tshark reads no extended message).
    assert "nbd.hnd.magic" in agreement.compared
    if extended:
        # Every extended request and reply shows as NBD without a field, and only those.
        extended_messages = [m for m in capture.messages if _extended(m)]
        assert {id(m) for m in agreement.empty} == {id(m) for m in extended_messages}
        assert "nbd.handle" not in agreement.compared
        assert {"nbd.hnd.opt", "nbd.hnd.reply", "nbd.meta_context.name"} <= set(agreement.compared)
    else:
        assert not any(_extended(m) for m in agreement.empty)
        assert {"nbd.magic", "nbd.handle", "nbd.type", "nbd.from"} <= set(agreement.compared)


@peers
def test_all_fields_were_compared_over_the_stored_captures(sid: RootfsProvider) -> None:
    compared: set[str] = set()
    for name in STORED:
        compared |= set(assert_agrees(sid, CAPTURES / name).compared)
    # The stored captures have no error chunk, no hole, no description...: the fresh
    # captures below bring those.
    assert {
        "nbd.hnd.magic",
        "nbd.cli.flags",
        "nbd.hnd.opt",
        "nbd.hnd.reply",
        "nbd.len",
        "nbd.export.name",
        "nbd.info",
        "nbd.query",
        "nbd.export.size",
        "nbd.export.trans.flags",
        "nbd.meta_context.id",
        "nbd.meta_context.name",
        "nbd.reserved",
        "nbd.magic",
        "nbd.cmd.flags",
        "nbd.type",
        "nbd.handle",
        "nbd.from",
        "nbd.data",
        "nbd.error",
        "nbd.reply.flags",
        "nbd.reply.type",
        "nbd.status_flags",
        "nbd.response_to",
        "nbd.response_in",
    } <= compared


ERRORS_SCRIPT = """
h.set_strict_mode(0)
h.connect_uri({uri!r})
size = h.get_size()
assert h.pread(4096, 0) == {data!r}
assert h.pread(8192, 65536 + 4096) == bytes(8192)  # a hole
for call in (
    lambda: h.pread(4096, size - 512),
    lambda: h.pwrite(b"x" * 4096, size - 512),
    lambda: h.block_status(4096, size - 512, lambda *args: 0),
):
    try:
        call()
    except nbd.Error as error:
        print(error.errno)
h.shutdown()
"""
ERRORS_EXPORT = ExportSpec(size=1 << 20, layers=(Layer((DataRange(0, 65536, 4),)),))


@peers
@pytest.mark.parametrize(
    ("server", "errors", "fields"),
    [
        (
            "qemu-nbd",
            ["EINVAL", "EINVAL", "EINVAL"],
            {"nbd.hole_size", "nbd.error_msg", "nbd.error_msg.len", "nbd.block_size.min"},
        ),
        # (nbd.hnd.flags too, when the greeting's flags happen to get a segment of their own)
        ("nbd-server", ["EINVAL", "ENOSPC", "EINVAL"], {"nbd.error_msg"}),
    ],
)
def test_tshark_agrees_on_errors_and_holes(
    server: str,
    errors: list[str],
    fields: set[str],
    sid: RootfsProvider,
    tmp_path: Path,
    require_programs: Callable[..., object],
) -> None:
    """qemu-nbd 7.2 answers with structured replies (OFFSET_DATA, OFFSET_HOLE, ERROR
    chunks), nbd-server 3.24 with simple replies carrying errors."""
    require_programs(server, "nbdsh")
    host = Catalog.load(kinds=("host",))
    path = tmp_path / f"{server}-errors.pcapng"
    with (
        host.resolve(server).start(ERRORS_EXPORT, tmp_path / "server") as running,
        ProxyThread(Address.tcp("127.0.0.1", 0), running.address, path) as proxy,
    ):
        endpoint = Endpoint(Address.tcp("127.0.0.1", proxy.address.port), "disk")
        script = ERRORS_SCRIPT.format(uri=endpoint.uri(), data=ERRORS_EXPORT.read(0, 4096))
        flags = ["--base-allocation"] if server == "qemu-nbd" else []
        result = host.resolve("nbdsh").run([*flags, "-c", script])
        proxy.wait_closed(1, 30)
    assert str(result.stdout).split() == errors
    capture = decode_capture(path)
    [session] = capture.sessions
    assert session.undecoded == [] and session.notes == []
    replies = [m for m in session.messages if m.kind in ("chunk", "simple-reply")]
    if server == "qemu-nbd":
        assert {m.name for m in replies} >= {
            "NBD_REPLY_TYPE_OFFSET_DATA",
            "NBD_REPLY_TYPE_OFFSET_HOLE",
            "NBD_REPLY_TYPE_ERROR",
        }
    else:
        assert {m.fields["error"] for m in replies} == {0, c.Errno.EINVAL, c.Errno.ENOSPC}
    agreement = assert_agrees(sid, path)
    assert fields <= set(agreement.compared)
    assert {"nbd.error", "nbd.data", "nbd.response_to"} <= set(agreement.compared)


# --- the sid cache follows its recipe (no peers: a fake build) ------------------------------


SID = load_suites().suite("sid")
WITHOUT_TSHARK = dataclasses.replace(SID, packages=tuple(p for p in SID.packages if p != "tshark"))


def fake_build(marker: str) -> Callable[[RootfsProvider, str, Callable[[str], None]], None]:
    """A stand-in for mmdebstrap: a tarball holding one file named after the build."""

    def build(provider: RootfsProvider, digest: str, progress: Callable[[str], None]) -> None:
        tree = provider.base / "tree"
        shutil.rmtree(tree, ignore_errors=True)
        (tree / "etc").mkdir(parents=True)
        (tree / "etc" / "built").write_text(marker)
        run_command(
            ["tar", "-C", str(tree), "--zstd", "-cf", str(provider.tarball), "."], timeout=60
        )
        (provider.base / f"{provider.suite.name}.tar.zst.recipe").write_text(digest + "\n")

    return build


def test_sid_recipe_has_tshark_and_a_cache_without_it_is_stale(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert "tshark" in SID.packages and SID.package_of("tshark") == "tshark"
    monkeypatch.setenv("NBD_HARNESS_DEBIAN_MIRROR", "http://mirror.example/debian")
    old = RootfsProvider(WITHOUT_TSHARK, tmp_path)
    new = RootfsProvider(SID, tmp_path)
    assert old.digest() != new.digest()  # the package list is part of the cache key
    monkeypatch.setattr(RootfsProvider, "_build", fake_build("without tshark"))
    old.provision(lambda line: None)
    assert old.ready() and not new.ready()  # a cache built before tshark is not ready
    monkeypatch.setattr(RootfsProvider, "_build", fake_build("with tshark"))
    report = new.provision(lambda line: None)
    assert report.built and new.ready() and not old.ready()
    assert (new.root / "etc" / "built").read_text() == "with tshark"
    # Nobody ran from the old root: it is gone, not left beside the new one.
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["sid", "tree"]
    assert new.provision(lambda line: None).detail == "cached"


def test_rebuilding_keeps_the_old_root_while_a_sandbox_runs_from_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NBD_HARNESS_DEBIAN_MIRROR", "http://mirror.example/debian")
    monkeypatch.setattr(RootfsProvider, "_build", fake_build("without tshark"))
    old = RootfsProvider(WITHOUT_TSHARK, tmp_path)
    old.provision(lambda line: None)
    # A peer still running from the old root (bound read-only, as bwrap binds a root).
    sandbox = ManagedProcess.start(
        [
            "bwrap",
            "--ro-bind",
            "/",
            "/",
            "--ro-bind",
            str(old.root),
            "/mnt",
            "--dev",
            "/dev",
            "--proc",
            "/proc",
            "--unshare-pid",
            "--die-with-parent",
            "sleep",
            "60",
        ],
        log_path=tmp_path / "sandbox.log",
    )
    try:
        sandbox.wait_ready(lambda: mounted_anywhere(old.root), 10, "sandbox")
        monkeypatch.setattr(RootfsProvider, "_build", fake_build("with tshark"))
        new = RootfsProvider(SID, tmp_path)
        lines: list[str] = []
        new.provision(lines.append)
        [kept] = [p for p in tmp_path.iterdir() if p.name.startswith(".sid.old-")]
        assert (kept / "etc" / "built").read_text() == "without tshark"
        assert any("keeping the previous root" in line for line in lines)
        assert (new.root / "etc" / "built").read_text() == "with tshark"
        # Its sandbox still sees its files, under the name they were moved to.
        assert mounted_anywhere(kept) and sandbox.is_running()
    finally:
        sandbox.stop()
    # Once no sandbox uses it, the next provisioning removes it.
    monkeypatch.setattr(RootfsProvider, "ready", lambda self: False)
    new.provision(lambda line: None)
    assert not any(p.name.startswith(".sid.old-") for p in tmp_path.iterdir())
