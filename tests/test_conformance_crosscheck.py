"""Two independent readings of the same bytes: the dissector + conformance rules, and the
reference implementation's state machine (``harness.protocol.Connection``, whose
``_checks`` judge both sides).  This is the one test module that imports
``harness.protocol`` beyond its constants.

For every hand-made conversation (clean and breaching) and every checked-in real capture,
each message the dissector cut is fed to a ``Connection`` on its own: the two readings must
agree on where every message ends.  Then the MUST-level verdicts are compared: both readings
name a broken rule by the same id (:mod:`harness.protocol.rules`), so every rule the state
machine finds must be among the MUST-level conformance findings.  Where they differ the
difference is listed below with the reason (``KNOWN_DISAGREEMENTS``), so that a new one
fails loudly and is looked at.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import _conformance_breaches  # noqa: F401 (registers the breach samples)
import pytest
from _conformance_samples import CLEAN, SAMPLES

from harness.conformance import check_session
from harness.dissect import Session, decode_capture
from harness.protocol import NEED_DATA, Connection, ProtocolError, Role

REPO = Path(__file__).resolve().parents[1]
CAPTURES = REPO / "tests" / "data" / "captures"

# Where the readings differ, by case, and why.  "theirs" lists rules the state machine finds
# and no MUST-level conformance finding names; "boundaries" a message the codec cuts elsewhere.
KNOWN_DISAGREEMENTS: dict[str, dict[str, object]] = {
    "client.extended-write-payload-len": {
        "boundaries": "NBD_CMD_WRITE",
        "why": "the sample's unflagged extended write has no data behind it; the codec, like "
        "qemu-nbd, reads `length` bytes of data after any write (qemu's clients send it), while "
        "the dissector looks at the bytes that follow and sees the next request",
    },
    "client.cookie-distinct": {
        "theirs": {
            "server.content-within-request",
            "server.read-full-coverage",
            "server.done-last",
        },
        "why": "the state machine keeps one request per cookie, so after a reused cookie the "
        "replies look wrong to it; the spec only says 'Clients SHOULD use a cookie that is "
        "distinct from all other currently pending transactions' (SHOULD level)",
    },
    "client.block-status-payload-needs-flag": {
        "theirs": {"client.block-status-payload-needs-flag"},
        "why": "the codec makes the unadvertised payload form a violation; the spec: "
        '"clients SHOULD NOT set the NBD_CMD_FLAG_PAYLOAD_LEN flag for NBD_CMD_BLOCK_STATUS '
        'unless this transmission flag is set" (SHOULD NOT level)',
    },
    "server.read-only-eperm": {
        "theirs": {"server.read-only-write-errors"},
        "why": "the codec judges a client that writes to a read-only export (to answer "
        "EPERM); the spec puts no requirement on that client, only on the server's answer",
    },
    "server.info-export-length": {
        "theirs": {"server.info-export-before-ack"},
        "why": "the codec drops an NBD_INFO_EXPORT of the wrong length, then also finds the ACK "
        "without one; the conformance rules report the length once and count the reply as "
        "the NBD_INFO_EXPORT it says it is",
    },
    "client.write-data-follows": {
        "boundaries": "NBD_CMD_WRITE",
        "why": "a WRITE header with no data behind it: the codec, like any server, takes the "
        "next `length` bytes as its data, while the dissector sees a plausible request start "
        "inside them and reads the WRITE as cut short there (resynchronising)",
    },
    "server.export-name-no-option-reply": {
        "boundaries": "NBD_REP_ERR_UNKNOWN",
        "why": "an option reply to NBD_OPT_EXPORT_NAME: the dissector recognises its magic and "
        "frames it as an option reply, the codec expects the export-name reply",
    },
}


@dataclass
class Reading:
    """What the reference state machine made of a session's messages."""

    theirs: set[str] = field(default_factory=set)
    boundaries: str | None = None
    """Name of the first message the codec would cut elsewhere (None: all agree)."""


def judge(session: Session) -> Reading:
    """Feed each dissected message to a Connection; collect violations and boundary errors."""
    # The server-side connection reads the client's bytes and is told what the server
    # sent; the client-side one the other way round.  Each judges both sides: one is enough.
    server_side = Connection(Role.SERVER, strict_remote=False, strict_local=False)
    client_side = Connection(Role.CLIENT, strict_remote=False, strict_local=False)
    reading = Reading()
    last_of = {m.direction: m for m in session.messages}
    for message in session.messages:
        if message.kind == "tls":
            break
        receiver, sender = (
            (server_side, client_side)
            if message.direction == "client"
            else (client_side, server_side)
        )
        receiver.receive_data(message.wire)
        try:
            event = receiver.next_event()
        except ProtocolError as exc:
            reading.theirs.add(exc.rule or "codec")
            break
        if event is NEED_DATA and message.truncated and last_of[message.direction] is message:
            # Cut short by the end of its sender's stream: the dissector decodes it as far as
            # it goes, the codec waits for the rest; both read it as unfinished.
            break
        if event is NEED_DATA or receiver.buffered:
            reading.boundaries = message.name
            break
        try:
            sender.send(event)
        except ProtocolError as exc:  # pragma: no cover - not strict: only codec trouble
            reading.theirs.add(exc.rule or "codec")
            break
    reading.theirs |= {violation.rule for _role, violation in server_side.violations}
    return reading


def disagreement(session: Session) -> dict[str, object]:
    """The differences between the two readings of one session (empty when they agree)."""
    mine = {f.rule for f in check_session(session) if f.mandatory}
    reading = judge(session)
    unmatched = reading.theirs - mine
    out: dict[str, object] = {}
    if unmatched:
        out["theirs"] = unmatched
    if reading.boundaries is not None:
        out["boundaries"] = reading.boundaries
    return out


def _sessions_of(conv, tmp_path: Path) -> list[Session]:
    conv.write(tmp_path / "case.pcapng")
    return decode_capture(tmp_path / "case.pcapng").sessions


@pytest.mark.parametrize("rule_id", sorted(SAMPLES))
def test_breach_samples_read_alike(rule_id: str, tmp_path: Path) -> None:
    [session] = _sessions_of(SAMPLES[rule_id]().conv, tmp_path)
    found = disagreement(session)
    known = {k: v for k, v in KNOWN_DISAGREEMENTS.get(rule_id, {}).items() if k != "why"}
    assert found == known, f"{rule_id}: the two readings differ: {found}"


@pytest.mark.parametrize("name", sorted(CLEAN))
def test_clean_conversations_read_alike(name: str, tmp_path: Path) -> None:
    [session] = _sessions_of(CLEAN[name](), tmp_path)
    assert judge(session) == Reading()
    assert check_session(session) == []


# Real captures the two readings frame differently on purpose: capture -> session -> reading.
# qemu 11.1's client sends an extended NBD_CMD_WRITE without NBD_CMD_FLAG_PAYLOAD_LEN and
# its data right behind (qemu-nbd reads it).  Both readings take the data as its payload
# and both report the missing flag (client.extended-write-payload-len).
KNOWN_IN_CAPTURES: dict[str, dict[int, Reading]] = {
    "qemu-nbd11-qemu-io11-extended.pcapng": {
        1: Reading({"client.extended-write-payload-len"}, None),
    },
}


@pytest.mark.parametrize(
    "name", sorted(p.name for p in CAPTURES.glob("*.pcap*")) if CAPTURES.exists() else []
)
def test_real_captures_read_alike(name: str) -> None:
    known = KNOWN_IN_CAPTURES.get(name, {})
    for session in decode_capture(CAPTURES / name).sessions:
        reading = judge(session)
        expected = known.get(session.index, Reading())
        assert reading.boundaries == expected.boundaries, f"session {session.index}"
        assert reading.theirs == expected.theirs, f"session {session.index}: {reading.theirs}"


def test_the_known_disagreements_name_existing_rules() -> None:
    from harness.conformance import REGISTRY

    assert set(KNOWN_DISAGREEMENTS) <= set(REGISTRY)
    for known in KNOWN_DISAGREEMENTS.values():
        assert set(known.get("theirs", set())) <= set(REGISTRY)  # type: ignore[call-overload]
    for readings in KNOWN_IN_CAPTURES.values():
        for reading in readings.values():
            assert reading.theirs <= set(REGISTRY)
