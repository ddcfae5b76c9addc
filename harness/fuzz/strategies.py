"""Hypothesis strategies for the fuzzer's steps, each a scenario step (action, args, expect).

A step is what ``scenarios run`` replays, so every draw here is something the
scenario format can say: ``connect`` choices, ``option`` with valid or mutated
payloads, commands inside the data window (read back against the model), raw
``request`` steps around the export's end, ``raw`` bytes (a pipelined burst of
valid requests, or one request mutated at the byte level) and disconnects.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

from hypothesis import strategies as st

from harness.protocol import constants as c
from harness.protocol.codec import encode
from harness.protocol.messages import Request

StepDict = tuple[str, dict[str, Any], dict[str, Any] | None]
"""(action, args, expect) of one scenario step."""

ANY_OUTCOME = {"one_of": ["ok", "error"]}
"""A command the server may refuse with any error, but must answer."""
ANY_RAW_OUTCOME = {"one_of": ["ok", "error", "closed"]}
"""A request the client's rules forbid: the server may also end the session."""
DATA_COMMANDS = frozenset({c.Cmd.WRITE, c.Cmd.TRIM, c.Cmd.WRITE_ZEROES})
"""Commands that change data: a mutated request must never become one (the model would lie)."""
SAFE_COMMANDS = (c.Cmd.READ, c.Cmd.FLUSH, c.Cmd.CACHE, c.Cmd.BLOCK_STATUS, c.Cmd.DISC)
UNSAFE_OPTIONS = frozenset({c.Opt.STARTTLS})
"""Options a mutated draw never sends: an accepted STARTTLS turns the rest into TLS noise."""
RAW_COOKIE = 0xF0F0_0000_0000
CONTEXTS = (c.BASE_ALLOCATION,)


@dataclass(frozen=True)
class Target:
    """What the fuzzer knows of the export under test (from a probe before the campaign)."""

    size: int
    present: frozenset[str]
    """Feature ids of matrix/features.toml the server showed."""
    window: int
    """Bytes at the start of the export the campaign writes and reads back."""
    block: int = 1
    read_only: bool = False

    def has(self, feature: str) -> bool:
        return feature in self.present


def _aligned(draw: st.DrawFn, target: Target, limit: int) -> int:
    block = max(target.block, 1)
    return draw(st.integers(0, max(limit // block, 0))) * block


@st.composite
def connect_step(draw: st.DrawFn, target: Target) -> StepDict:
    """A ``connect`` with drawn negotiation choices (only features the server has)."""
    args: dict[str, Any] = {}
    structured = target.has("structured-replies") and draw(st.booleans())
    args["structured_replies"] = structured
    args["extended_headers"] = target.has("extended-headers") and draw(st.booleans())
    if target.has("opt-go"):
        # NBD_OPT_EXPORT_NAME after extended headers breaks a client MUST: GO then.
        args["use_go"] = args["extended_headers"] or draw(st.booleans())
    if target.has("no-zeroes"):
        args["no_zeroes"] = draw(st.booleans())
    if target.has("info-block-size") and args.get("use_go", False):
        args["request_block_size"] = draw(st.booleans())
    wants_contexts = (structured or args["extended_headers"]) and target.has("base-allocation")
    args["contexts"] = list(CONTEXTS) if wants_contexts and draw(st.booleans()) else []
    args["enter_transmission"] = draw(st.booleans())
    return "connect", args, None


@st.composite
def option_step(draw: st.DrawFn, target: Target) -> StepDict:
    """An option in the option phase: well-formed, or with a mutated payload / option code."""
    kind = draw(st.sampled_from(["info", "list", "meta", "structured", "mutated", "unknown"]))
    if kind == "info" and target.has("opt-go"):
        infos = draw(st.lists(st.sampled_from(["NBD_INFO_EXPORT", "NBD_INFO_NAME",
                                               "NBD_INFO_DESCRIPTION", "NBD_INFO_BLOCK_SIZE"]),
                              max_size=3))
        return "option", {"option": "NBD_OPT_INFO", "info": infos}, {"final": "any"}
    if kind == "list" and target.has("list-exports"):
        return "option", {"option": "NBD_OPT_LIST"}, {"final": "any"}
    if kind == "meta" and target.has("structured-replies"):
        queries = draw(st.lists(st.sampled_from(["base:", "base:allocation", "qemu:", "x:y",
                                                 "nocolon"]), max_size=3))
        return "option", {"option": "NBD_OPT_LIST_META_CONTEXT", "queries": queries}, \
            {"final": "any"}
    if kind == "structured" and target.has("structured-replies"):
        return "option", {"option": "NBD_OPT_STRUCTURED_REPLY"}, {"final": "any"}
    if kind == "unknown":
        code = draw(st.integers(11, 0xFFFF))
        data = draw(st.binary(max_size=24))
        return "option", {"option": code, "data": data.hex()}, {"final": "any"}
    # A known option with garbage data: lengths that overrun, truncated strings...
    opt = draw(st.sampled_from([o for o in c.Opt if o not in UNSAFE_OPTIONS
                                and o not in (c.Opt.EXPORT_NAME, c.Opt.GO, c.Opt.ABORT)]))
    data = draw(st.binary(max_size=32))
    return "option", {"option": c.name_of(c.Opt, opt), "data": data.hex()}, {"final": "any"}


def _range(draw: st.DrawFn, target: Target) -> tuple[int, int]:
    offset = _aligned(draw, target, target.window - target.block)
    length = max(_aligned(draw, target, min(target.window - offset, 64 * 1024)), target.block)
    return offset, min(length, target.window - offset)


@st.composite
def command_step(draw: st.DrawFn, target: Target, seed: int, contexts: bool) -> StepDict:
    """A command inside the data window: its outcome checked, its data against the model.

    Block status only when the connection selected a context (else an error is right)."""
    choices = ["read", "block_status"] if contexts else ["read"]
    if not target.read_only:
        choices.append("write")
        choices += [name for name, feature in (("zero", "write-zeroes"), ("trim", "trim"),
                                               ("flush", "flush"), ("cache", "cache"))
                    if target.has(feature)]
    action = draw(st.sampled_from(choices))
    if action == "flush":
        return "flush", {}, None
    offset, length = _range(draw, target)
    args: dict[str, Any] = {"offset": offset, "length": length}
    if action == "write":
        args["seed"] = seed
    if action in ("write", "zero", "trim") and target.has("fua"):
        args["fua"] = draw(st.booleans())
    if action == "read":
        return "read", args, {"one_of": ["ok"], "data": "model"}
    return action, args, None


@st.composite
def edge_request_step(draw: st.DrawFn, target: Target) -> StepDict:
    """A raw request around the export's end, with odd flags, or of an unknown type."""
    command = draw(st.sampled_from([c.Cmd.READ, c.Cmd.CACHE, c.Cmd.BLOCK_STATUS,
                                    c.Cmd.FLUSH, 99]))
    size = target.size
    offset = draw(st.sampled_from([size, size - 1, size + 4096, 2**63 - 1, 2**64 - 1,
                                   max(size - 512, 0)]))
    length = draw(st.sampled_from([0, 1, 512, 4096, 2**32 - 1]))
    # Every flag but NBD_CMD_FLAG_PAYLOAD_LEN: that one would make our own framing a lie.
    flags = draw(st.sampled_from([0, 0, 1 << 9, 0xFFFF & ~c.CmdFlag.PAYLOAD_LEN]))
    args: dict[str, Any] = {"command": int(command), "offset": offset, "length": length,
                            "flags": flags}
    return "request", args, ANY_RAW_OUTCOME


def _header(request: Request) -> bytes:
    return encode(request)


@st.composite
def burst_step(draw: st.DrawFn, target: Target, extended: bool) -> StepDict:
    """Several valid reads/flushes sent back to back before any reply (pipelining).

    Sent raw: the runner does not read their replies, so the connection is dropped
    right after (the machine follows with an abrupt disconnect)."""
    count = draw(st.integers(2, 8))
    out = b""
    for index in range(count):
        offset, length = _range(draw, target)
        command = draw(st.sampled_from([c.Cmd.READ, c.Cmd.READ, c.Cmd.FLUSH]))
        if command == c.Cmd.FLUSH and not target.has("flush"):
            command = c.Cmd.READ
        if command == c.Cmd.FLUSH:
            offset = length = 0
        out += _header(Request(type=command, offset=offset, length=length,
                               cookie=RAW_COOKIE + index, extended=extended))
    return "raw", {"hex": out.hex()}, {"closed": False}


@st.composite
def mutated_request_step(draw: st.DrawFn, target: Target, extended: bool) -> StepDict:
    """One valid request with bytes flipped, cut short or extended (never a data command)."""
    command = draw(st.sampled_from(SAFE_COMMANDS[:4]))
    offset, length = _range(draw, target)
    wire = bytearray(_header(Request(type=command, offset=offset, length=length,
                                     cookie=RAW_COOKIE, extended=extended)))
    for _ in range(draw(st.integers(1, 4))):
        position = draw(st.integers(0, len(wire) - 1))
        wire[position] = draw(st.integers(0, 255))
    how = draw(st.sampled_from(["flip", "truncate", "extend"]))
    if how == "truncate":
        wire = wire[: draw(st.integers(1, len(wire) - 1))]
    elif how == "extend":
        wire += draw(st.binary(min_size=1, max_size=16))
    kind = struct.unpack(">H", bytes(wire[6:8]))[0] if len(wire) >= 8 else 0
    if kind in DATA_COMMANDS:
        wire[6:8] = struct.pack(">H", command)  # the model cannot follow a hidden write
    return "raw", {"hex": bytes(wire).hex()}, {"closed": False}


__all__ = [
    "ANY_OUTCOME",
    "StepDict",
    "Target",
    "burst_step",
    "command_step",
    "connect_step",
    "edge_request_step",
    "mutated_request_step",
    "option_step",
]
