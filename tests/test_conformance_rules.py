"""The conformance rules: each one flags its hand-made breach (and only that) at the right
frame and offset, clean conversations give nothing, every citation is real spec text, and
the generated rules table is up to date.
"""

from __future__ import annotations

import hashlib
import importlib.util
import struct
from pathlib import Path

import _conformance_breaches  # noqa: F401 (registers the breach samples)
import pytest
from _conformance_breaches import PATCHES
from _conformance_samples import CLEAN, SAMPLES, Conv, chunk, option, pattern, request
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.conformance import (
    LEVELS,
    MUST,
    REGISTRY,
    all_rules,
    check_capture,
    check_session,
    rule,
)
from harness.conformance.spec_coverage import (
    SPEC_FILES,
    cited_in,
    normalise,
    read_spec,
    read_specs,
    render,
)
from harness.dissect import decode_capture, decode_streams
from harness.protocol import constants as c
from harness.protocol.rules import CITATIONS, Citation

REPO = Path(__file__).resolve().parents[1]
SPEC_DIR = REPO / "docs" / "spec"


MISSING_ANSWER_RULES = {"server.read-answered", "server.simple-reply-to-all"}
"""Rules about an answer that never came: the finding points at the other party's message."""


def stream_offset(conv: Conv, index: int) -> int:
    """Where segment ``index`` starts in its direction's byte stream."""
    direction = conv.segments[index][0]
    return sum(len(data) for d, data in conv.segments[:index] if d == direction)


# --- one breach per rule ----------------------------------------------------------------------


def test_every_rule_has_a_breach_sample() -> None:
    assert set(SAMPLES) == set(REGISTRY)


@pytest.mark.parametrize("rule_id", sorted(REGISTRY))
def test_breach_is_flagged_with_its_rule_at_its_frame(
    rule_id: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sample = SAMPLES[rule_id]()
    conv = sample.conv
    assert conv.marked is not None, "the sample marks the breaching segment"
    frames = conv.write(tmp_path / "breach.pcapng")
    if rule_id in PATCHES:
        name, value = PATCHES[rule_id]
        monkeypatch.setattr(c, name, value)
    findings = check_capture(tmp_path / "breach.pcapng")
    assert {f.rule for f in findings} == {rule_id} | sample.also, [f.describe() for f in findings]
    mine = [f for f in findings if f.rule == rule_id]
    direction = conv.segments[conv.marked][0]
    offset = stream_offset(conv, conv.marked)
    for finding in mine:
        assert (finding.frame, finding.direction, finding.offset) == (
            frames[conv.marked],
            direction,
            offset,
        ), finding.describe()
        spec = REGISTRY[rule_id]
        assert (finding.level, finding.role, finding.section, finding.sentence) == (
            spec.level,
            spec.role,
            spec.section,
            spec.sentence,
        )
        if rule_id in MISSING_ANSWER_RULES:  # points at what was left unanswered
            assert finding.role != finding.direction
        else:  # the party that sent it is the one blamed
            assert finding.role == finding.direction
        assert finding.message


@pytest.mark.parametrize("name", sorted(CLEAN))
def test_clean_conversations_break_nothing(name: str, tmp_path: Path) -> None:
    CLEAN[name]().write(tmp_path / "clean.pcapng")
    capture = decode_capture(tmp_path / "clean.pcapng")
    [session] = capture.sessions
    assert session.undecoded == []
    assert check_capture(capture) == []


def test_breach_samples_are_otherwise_clean_conversations() -> None:
    # The samples share the clean building blocks, so removing the marked segment of a
    # server-side breach of a reply-level rule should not break the others: spot-check one.
    conv = SAMPLES["server.reply-flags-known"]().conv
    assert conv.marked is not None
    del conv.segments[conv.marked]
    session = decode_streams(
        [(i + 1, d) for i, (w, d) in enumerate(conv.segments) if w == "client"],
        [(i + 1, d) for i, (w, d) in enumerate(conv.segments) if w == "server"],
    )
    # Without its reply the READ is simply unanswered when DISC goes: only a SHOULD remains.
    assert [f.rule for f in check_session(session)] == ["client.disc-waits-for-replies"]


# --- sessions joined mid-stream, and robustness ---------------------------------------------


def test_midstream_sessions_run_only_rules_that_need_no_handshake() -> None:
    client = request(c.Cmd.READ, 1, 1 << 40, 512)  # past any export: unknown here
    server = chunk(
        1,
        c.ReplyType.OFFSET_DATA,
        struct.pack(">Q", 1 << 40) + bytes(512),
        flags=c.ReplyFlag.DONE | 0x10,
    )
    session = decode_streams(client, server, joined_midstream=True)
    assert session.joined_midstream
    assert [f.rule for f in check_session(session)] == ["server.reply-flags-known"]
    assert all(REGISTRY[f.rule].midstream for f in check_session(session))


def test_sessions_that_are_not_nbd_give_no_findings(tmp_path: Path) -> None:
    conv = Conv().c(b"GET / HTTP/1.1\r\n\r\n").s(b"HTTP/1.1 200 OK\r\n\r\n")
    conv.write(tmp_path / "http.pcapng")
    capture = decode_capture(tmp_path / "http.pcapng")
    assert [s.nbd for s in capture.sessions] == [False]
    assert check_capture(capture) == []
    # Garbage where a greeting should be is not a rule's business either.
    assert check_session(decode_streams(b"GET /", b"HTTP/1.1 200 OK")) == []


def test_a_reply_to_a_header_with_a_bad_magic_is_not_a_cookie_breach(tmp_path: Path) -> None:
    """qemu-nbd reads a request header with a wrong magic, answers NBD_EINVAL with the cookie
    field it found there, then closes: the header cannot be framed, so its reply cannot be
    matched (the client broke the rule; the server's answer is not judged)."""
    bad = struct.pack(">IHHQQI", 0x12345678, 0, c.Cmd.READ, 1, 0, 4096)
    conv = Conv().ready().c(bad).s(struct.pack(">IIQ", c.SIMPLE_REPLY_MAGIC, c.Errno.EINVAL, 1))
    conv.write(tmp_path / "bad-magic.pcapng")
    assert [f.rule for f in check_capture(tmp_path / "bad-magic.pcapng")] == [
        "client.request-magic"]
    # A reply nobody asked for before the bad header is still one.
    conv = Conv().ready().s(struct.pack(">IIQ", c.SIMPLE_REPLY_MAGIC, 0, 7)).c(bad)
    conv.write(tmp_path / "orphan-first.pcapng")
    rules = {f.rule for f in check_capture(tmp_path / "orphan-first.pcapng")}
    assert rules == {"client.request-magic", "server.reply-cookie-matches"}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    name=st.sampled_from(sorted(CLEAN)),
    cut=st.integers(min_value=0, max_value=400),
    flips=st.lists(st.tuples(st.integers(min_value=0), st.integers(1, 255)), max_size=4),
)
def test_rules_never_raise_on_damaged_sessions(name: str, cut: int, flips: list) -> None:
    conv = CLEAN[name]()
    directions = {"client": bytearray(), "server": bytearray()}
    for direction, data in conv.segments:
        directions[direction] += data
    for position, xor in flips:
        target = directions["server" if position % 2 else "client"]
        if target:
            target[position % len(target)] ^= xor
    server = bytes(directions["server"])
    session = decode_streams(bytes(directions["client"]), server[: max(len(server) - cut, 0)])
    for finding in check_session(session):
        assert finding.rule in REGISTRY and finding.frame >= 0


# --- the rules themselves ---------------------------------------------------------------------


def test_rule_metadata() -> None:
    rules = all_rules()
    assert len(rules) >= 50
    assert len({r.id for r in rules}) == len(rules)
    for item in rules:
        assert item.level in LEVELS
        assert item.id.startswith(item.role + ".")
        assert item.summary and item.sentence.strip() == item.sentence
    assert {r.role for r in rules} == {"client", "server"}
    assert {r.level for r in rules} == set(LEVELS)


@pytest.mark.parametrize("rule_id", sorted(REGISTRY))
def test_rule_sentence_is_spec_text_under_its_section(rule_id: str) -> None:
    item = REGISTRY[rule_id]
    assert cited_in(item, read_specs(SPEC_DIR)), (
        f"{rule_id}: {item.sentence!r} is not under {item.section!r} in docs/spec"
    )


def test_spec_copies_are_the_pinned_texts() -> None:
    """The copies in docs/spec are verbatim upstream texts: SHA256SUMS pins them."""
    pinned = dict(
        reversed(line.split(maxsplit=1))
        for line in (SPEC_DIR / "SHA256SUMS").read_text().splitlines()
    )
    assert set(pinned) >= set(SPEC_FILES)
    for name, digest in pinned.items():
        assert hashlib.sha256((SPEC_DIR / name).read_bytes()).hexdigest() == digest, name


def test_decorator_refuses_bad_metadata() -> None:
    def check(view):  # pragma: no cover - never registered
        """Nothing."""
        return iter(())

    with pytest.raises(ValueError, match="must be"):
        Citation("Bad Id", MUST, "x", "y")
    with pytest.raises(ValueError, match="level"):
        Citation("server.x", "MAY", "x", "y")
    with pytest.raises(ValueError, match="no citation"):
        rule(id="server.never-cited")(check)
    with pytest.raises(ValueError, match="twice"):
        rule(id="server.greeting-magic")(check)


def test_every_citation_is_checked_by_one_rule() -> None:
    """The citations and the conformance rules are the same ids, and a rule reports
    exactly what its citation says."""
    assert list(CITATIONS) == list(REGISTRY)
    for rule_id, citation in CITATIONS.items():
        item = REGISTRY[rule_id]
        assert (item.level, item.role, item.section, item.sentence) == (
            citation.level,
            citation.role,
            citation.section,
            citation.sentence,
        )


# --- the spec reader and the generated table ------------------------------------------------


def test_normalise_drops_markup_but_keeps_arithmetic() -> None:
    assert normalise("*length* MUST be `12`") == "length MUST be 12"
    assert normalise("8 + n*4 bytes,\n   n * 32 bits") == "8 + n*4 bytes, n * 32 bits"


def test_spec_reader_finds_normative_sentences_per_section() -> None:
    spec = read_spec(SPEC_DIR / "proto-extended-headers.md")
    by_text = {s.text: s for s in spec.sentences}
    sentence = by_text["If extended headers have been negotiated, a simple reply MUST NOT be used."]
    assert sentence.section == "Simple reply message"
    assert sentence.keywords == ("MUST NOT",)
    assert "Extended reply chunk message" in spec.sections
    # The RFC 2119 boilerplate quotes the key words; it is not a requirement.
    assert not any('"MUST"' in s.text for s in spec.sentences)
    # Abbreviations do not cut sentences.
    assert any(
        s.text.startswith("Note that when extended headers are in use") for s in spec.sentences
    )


def test_generated_rules_table_is_up_to_date() -> None:
    text = render(all_rules(), read_specs(SPEC_DIR))
    current = (REPO / "docs" / "conformance-rules.md").read_text(encoding="utf-8")
    assert current == text, "docs/conformance-rules.md is stale: run scripts/gen-rules-table"
    for item in all_rules():
        assert f"`{item.id}`" in current


def test_gen_rules_table_script_check_mode(capsys: pytest.CaptureFixture[str]) -> None:
    path = REPO / "scripts" / "gen-rules-table"
    loader = importlib.machinery.SourceFileLoader("gen_rules_table", str(path))
    spec = importlib.util.spec_from_loader("gen_rules_table", loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    assert module.main(["--check"]) == 0
    out = capsys.readouterr().out
    assert f"{len(REGISTRY)} rules" in out
    assert "proto-extended-headers.md:" in out and "normative sentences covered" in out


def test_pattern_helper_is_deterministic() -> None:
    assert pattern(16) == pattern(16) and pattern(16) != pattern(16, seed=2)
    assert option(c.Opt.LIST)[:8] == struct.pack(">Q", c.IHAVEOPT)


# --- the real captures checked into the repository ---------------------------------------------

CAPTURES = REPO / "tests" / "data" / "captures"
EXPECTED_IN_CAPTURES = {
    # The last session is nbdsh told to send handshake flags 0 (to show non-fixed newstyle):
    # a deliberate deviation.  Fixed newstyle negotiation: "The client SHOULD reply with
    # NBD_FLAG_C_FIXED_NEWSTYLE set in its flags field too".
    "nbdkit-list-qemu-io-convert.pcap": [("client.fixed-newstyle-flag", 4)],
    # A real deviation of qemu 11.1's client: its extended NBD_CMD_WRITE lacks the flag.
    # Request message: "The command `NBD_CMD_WRITE` MUST use the flag
    # `NBD_CMD_FLAG_PAYLOAD_LEN` in this mode".
    "qemu-nbd11-qemu-io11-extended.pcapng": [("client.extended-write-payload-len", 1)],
}


@pytest.mark.parametrize(
    "name", sorted(p.name for p in CAPTURES.glob("*.pcap*")) if CAPTURES.exists() else []
)
def test_checked_in_real_captures_have_no_false_findings(name: str) -> None:
    capture = decode_capture(CAPTURES / name)
    assert all(s.undecoded == [] for s in capture.sessions)
    findings = check_capture(capture)
    assert [(f.rule, f.session) for f in findings] == EXPECTED_IN_CAPTURES.get(name, [])
