"""Server-role steps of the transmission phase: commands, raw requests, raw bytes.

Every command checks its outcome (success, an expected error) and its data
against the model of the export; raw ``request`` steps send what the
reference client would refuse to, and then check the server is still in step.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct

from harness.client import (
    NbdClient,
    NbdCommandError,
    NbdConnectionError,
    NbdTimeoutError,
)
from harness.peers.export import merge_extents, pattern
from harness.protocol import RemoteProtocolError
from harness.protocol import constants as c
from harness.protocol.codec import decode_chunk_payload
from harness.protocol.messages import (
    ChunkError,
    ChunkErrorOffset,
    ConnectionClosed,
    ReplyChunk,
    Request,
    SimpleReply,
)
from harness.scenarios import spec_names
from harness.scenarios.expect import (
    Failed,
    check_data,
    check_extents,
    command_outcome,
    errno_label,
)
from harness.scenarios.model import Step

from ._base import (
    RAW_COOKIE_BASE,
    RAW_PAYLOAD_SEED,
    ZERO_CHECK_BUDGET,
    RunState,
)


class CommandSteps(RunState):
    """Handlers of the transmission-phase actions."""

    async def _do_read(self, index: int, step: Step) -> str:
        client = self._client(step)
        offset, length = step.args["offset"], step.args["length"]
        flags = spec_names.flag_value("CmdFlag", step.args.get("flags", []))
        try:
            data = await client.read(offset, length, flags=flags)
        except NbdCommandError as exc:
            command_outcome(exc.errno_name, step.expect, f"read {offset}+{length}")
            return f"failed as expected: {exc.errno_name}"
        command_outcome("ok", step.expect, f"read {offset}+{length}")
        check_data(data, (step.expect or {}).get("data"), offset, length, self.model, self.spec,
                   f"read {offset}+{length}")
        return f"{len(data)} bytes as expected"

    async def _do_write(self, index: int, step: Step) -> str:
        client = self._client(step)
        offset, length = step.args["offset"], step.args["length"]
        seed = step.args.get("seed", 100 + index)
        try:
            await client.write(offset, pattern(offset, length, seed),
                               fua=bool(step.args.get("fua")))
        except NbdCommandError as exc:
            command_outcome(exc.errno_name, step.expect, f"write {offset}+{length}")
            return f"failed as expected: {exc.errno_name}"
        command_outcome("ok", step.expect, f"write {offset}+{length}")
        self.model.write(offset, length, seed)
        return f"wrote {length} bytes (seed {seed})"

    async def _do_zero(self, index: int, step: Step) -> str:
        client = self._client(step)
        args = step.args
        offset, length = args["offset"], args["length"]
        try:
            await client.write_zeroes(offset, length, no_hole=bool(args.get("no_hole")),
                                      fast_zero=bool(args.get("fast_zero")),
                                      fua=bool(args.get("fua")))
        except NbdCommandError as exc:
            command_outcome(exc.errno_name, step.expect, f"write zeroes {offset}+{length}")
            return f"failed as expected: {exc.errno_name}"
        command_outcome("ok", step.expect, f"write zeroes {offset}+{length}")
        self.model.zero(offset, length)
        return "zeroed"

    async def _do_trim(self, index: int, step: Step) -> str:
        client = self._client(step)
        offset, length = step.args["offset"], step.args["length"]
        try:
            await client.trim(offset, length, fua=bool(step.args.get("fua")))
        except NbdCommandError as exc:
            command_outcome(exc.errno_name, step.expect, f"trim {offset}+{length}")
            return f"failed as expected: {exc.errno_name}"
        command_outcome("ok", step.expect, f"trim {offset}+{length}")
        self.model.forget(offset, length)
        return "trimmed"

    async def _do_flush(self, index: int, step: Step) -> str:
        client = self._client(step)
        try:
            await client.flush()
        except NbdCommandError as exc:
            command_outcome(exc.errno_name, step.expect, "flush")
            return f"failed as expected: {exc.errno_name}"
        command_outcome("ok", step.expect, "flush")
        return "flushed"

    async def _do_cache(self, index: int, step: Step) -> str:
        client = self._client(step)
        offset, length = step.args["offset"], step.args["length"]
        try:
            await client.cache(offset, length)
        except NbdCommandError as exc:
            command_outcome(exc.errno_name, step.expect, f"cache {offset}+{length}")
            return f"failed as expected: {exc.errno_name}"
        command_outcome("ok", step.expect, f"cache {offset}+{length}")
        return "cached"

    async def _do_block_status(self, index: int, step: Step) -> str:
        client = self._client(step)
        args = step.args
        offset, length = args["offset"], args["length"]
        ids = None
        if args.get("payload_contexts") is not None:
            selected = client.contexts
            unknown = [n for n in args["payload_contexts"] if n not in selected]
            if unknown:
                raise Failed(f"block status payload names {unknown}, which are not selected",
                             sorted(selected), unknown)
            ids = [selected[name] for name in args["payload_contexts"]]
        what = f"block status {offset}+{length}"
        try:
            status = await client.block_status(offset, length,
                                               req_one=bool(args.get("req_one")),
                                               context_ids=ids)
        except NbdCommandError as exc:
            command_outcome(exc.errno_name, step.expect, what)
            return f"failed as expected: {exc.errno_name}"
        expect = step.expect or {}
        command_outcome("ok", {k: v for k, v in expect.items() if k in ("error",)}, what)
        if "contexts" in expect and sorted(expect["contexts"]) != sorted(status):
            raise Failed(f"{what}: contexts answered", sorted(expect["contexts"]), sorted(status))
        for name, extents in status.items():
            if not extents:
                raise Failed(f"{what}: no extents for {name}")
            if "max_extents" in expect and len(extents) > expect["max_extents"]:
                raise Failed(f"{what}: {name} has {len(extents)} extents",
                             f"at most {expect['max_extents']}", len(extents))
            total = sum(extent.length for extent in extents)
            if expect.get("within_request") and total > length:
                raise Failed(f"{what}: {name} extents reach past the request",
                             f"at most {length}", total)
        for name, wanted in (expect.get("extents") or {}).items():
            if name not in status:
                raise Failed(f"{what}: no extents for {name}", name, sorted(status))
            got = []
            position = offset
            for extent in status[name]:
                got.append((position, extent.length, extent.flags))
                position += extent.length
            expected = merge_extents(tuple(e) for e in wanted)
            if merge_extents(got) != expected:
                raise Failed(f"{what}: {name} extents differ", [list(e) for e in expected],
                             [list(e) for e in merge_extents(got)])
        return ", ".join(f"{name}: {len(extents)} extent(s)" for name, extents in status.items())

    async def _do_map(self, index: int, step: Step) -> str:
        client = self._client(step)
        args = step.args
        context = args["context"]
        offset = args.get("offset", 0)
        length = args.get("length", client.export_size - offset)
        extents = await client.map(context, offset, length)
        expect = step.expect or {}
        wanted = expect.get("extents")
        match = expect.get("match", "exact" if wanted is not None else "safe")
        check_extents(extents, wanted, match, context, offset, length, self.model, self.spec,
                      f"map {context}")
        if context == c.BASE_ALLOCATION:
            await self._zero_claims_read_zero(client, extents)
        return f"{len(extents)} extent(s)"

    async def _zero_claims_read_zero(self, client: NbdClient,
                                     extents: list[tuple[int, int, int]]) -> None:
        """What base:allocation calls NBD_STATE_ZERO must read as zeroes (even after a trim)."""
        budget = ZERO_CHECK_BUDGET
        for start, size, flags in extents:
            if not flags & c.StateFlag.ZERO or budget <= 0:
                continue
            length = min(size, budget)
            budget -= length
            data = await client.read(start, length)
            if any(data):
                where = start + next(i for i, byte in enumerate(data) if byte)
                raise Failed(f"map base:allocation: {start}+{size} is reported NBD_STATE_ZERO "
                             f"but offset {where} reads as non-zero", "zeroes",
                             data[where - start : where - start + 16].hex())

    async def _do_request(self, index: int, step: Step) -> str:
        conn = self._conn(step)
        client = conn.client
        args = step.args
        command = spec_names.value("Cmd", args["command"])
        raw_flags = args.get("flags", [])
        flags = raw_flags if isinstance(raw_flags, int) else spec_names.flag_value("CmdFlag",
                                                                                raw_flags)
        offset = args.get("offset", 0)
        payload = pattern(offset, args["payload"], RAW_PAYLOAD_SEED) if args.get("payload") \
            else b""
        extended = client.connection.negotiated.extended_headers
        if payload and extended and not isinstance(raw_flags, int):
            flags |= c.CmdFlag.PAYLOAD_LEN
        length = args.get("length", len(payload))
        self._raw_cookies += 1
        cookie = RAW_COOKIE_BASE + self._raw_cookies
        request = Request(type=command, offset=offset, length=length, cookie=cookie,
                          flags=flags, payload=payload, extended=extended)
        what = f"{c.name_of(c.Cmd, command)} {offset}+{length} flags {flags:#x}"
        got = await self._raw_reply(client, request)
        expect = step.expect
        command_outcome(got, expect, what)
        if got == "closed":
            self.conns.pop(step.on, None)
            return "the server closed the connection"
        if got == "ok":
            if command == c.Cmd.WRITE and payload and length == len(payload):
                self.model.write(offset, length, RAW_PAYLOAD_SEED)
            elif command == c.Cmd.WRITE_ZEROES:
                self.model.zero(offset, length)
            elif command == c.Cmd.TRIM:
                self.model.forget(offset, length)
        if args.get("sync_check", True):
            await self._sync_check(client, f"after {what}")
        return f"{what} -> {got}"

    async def _raw_reply(self, client: NbdClient, request: Request) -> str:
        """Send a request as given and wait for all of its reply: ok, an errno, or closed."""
        try:
            await client.send_request(request, strict=False)
        except NbdConnectionError:
            return "closed"
        error = 0
        while True:
            try:
                event = await client.recv_event(self.timeout)
            except NbdConnectionError:
                return "closed"
            if isinstance(event, ConnectionClosed):
                return "closed"
            if isinstance(event, SimpleReply):
                if event.cookie != request.cookie:
                    raise Failed(f"reply for cookie {event.cookie:#x}, expected "
                                 f"{request.cookie:#x}")
                return "ok" if not event.error else errno_label(event.error)
            if isinstance(event, ReplyChunk):
                if event.cookie != request.cookie:
                    raise Failed(f"reply chunk for cookie {event.cookie:#x}, expected "
                                 f"{request.cookie:#x}")
                payload = decode_chunk_payload(event.type, event.payload)
                if isinstance(payload, ChunkError | ChunkErrorOffset) and not error:
                    error = payload.error
                if event.done:
                    return "ok" if not error else errno_label(error)
                continue
            raise Failed(f"unexpected {type(event).__name__} in transmission")

    async def _sync_check(self, client: NbdClient, when: str) -> None:
        """A plain read must still work and return the right data."""
        size = client.export_size
        block = client.connection.negotiated.min_block
        length = min(size, max(block, 4096))
        length -= length % block
        if length <= 0:
            return
        try:
            data = await client.read(0, length)
        except NbdCommandError as exc:
            raise Failed(f"the server is out of sync {when}: a plain read failed with "
                         f"{exc.errno_name}") from None
        except (NbdConnectionError, NbdTimeoutError, RemoteProtocolError) as exc:
            raise Failed(f"the server is out of sync {when}: {exc}") from None
        check_data(data, "model", 0, length, self.model, self.spec, f"read-back {when}")

    async def _do_raw(self, index: int, step: Step) -> str:
        """Bytes the state machine never sees; the server must end the session.

        A server may first answer the garbage with an error reply (qemu does), so
        replies carrying an error are allowed before the close; a success reply,
        or the connection staying open, fails.
        """
        conn = self._conn(step)
        data = bytes.fromhex("".join(step.args["hex"].split()))
        # The garbage desynchronises our own state machine: judge what follows leniently.
        conn.client.connection.strict_remote = False
        await conn.client.send_raw(data)
        if not (step.expect or {}).get("closed", True):
            return f"sent {len(data)} raw bytes"
        answered = 0
        while True:
            try:
                event = await conn.client.recv_event(self.timeout)
            except NbdConnectionError:
                break
            except NbdTimeoutError:
                raise Failed("the server kept the connection open after the raw bytes",
                             "closed", "open") from None
            except RemoteProtocolError as exc:
                raise Failed(f"the server answered the raw bytes with something invalid: "
                             f"{exc}", "closed", "invalid data") from None
            if isinstance(event, ConnectionClosed):
                break
            if (isinstance(event, SimpleReply) and event.error) or \
                    (isinstance(event, ReplyChunk) and c.is_error_chunk(event.type)):
                answered += 1
                continue
            raise Failed("the server answered the raw bytes with a success reply instead of "
                         "closing", "closed", type(event).__name__)
        self.conns.pop(step.on, None)
        return ("the server closed the connection"
                + (f" after {answered} error repl{'y' if answered == 1 else 'ies'}"
                   if answered else ""))

    async def _do_raw_handshake(self, index: int, step: Step) -> str:
        address = self.uri.address
        expect = step.expect or {}
        async with asyncio.timeout(self.timeout):
            if address.kind == "unix":
                reader, writer = await asyncio.open_unix_connection(address.path)
            else:
                reader, writer = await asyncio.open_connection(address.host, address.port)
        try:
            async with asyncio.timeout(self.timeout):
                head = await reader.readexactly(16)
                magic, second = struct.unpack(">QQ", head)
                if magic != c.NBDMAGIC:
                    raise Failed("greeting does not start with NBDMAGIC", hex(c.NBDMAGIC),
                                 hex(magic))
                if second == c.IHAVEOPT:
                    style = "newstyle"
                    await reader.readexactly(2)
                elif second == c.CLISERV_MAGIC:
                    style = "oldstyle"
                    await reader.readexactly(c.OLDSTYLE_GREETING_LEN - 16)
                else:
                    raise Failed("unknown greeting magic", "IHAVEOPT or cliserv_magic",
                                 hex(second))
            if "greeting" in expect and expect["greeting"] != style:
                raise Failed("greeting style", expect["greeting"], style)
            out = b""
            if "client_flags" in step.args:
                out += struct.pack(">I", step.args["client_flags"])
            out += bytes.fromhex("".join(step.args.get("hex", "").split()))
            if out:
                writer.write(out)
                await writer.drain()
            if expect.get("closed"):
                try:
                    async with asyncio.timeout(self.timeout):
                        extra = await reader.read(4096)
                        while extra and len(extra) < 1 << 16:
                            more = await reader.read(4096)
                            if not more:
                                break
                            extra += more
                except TimeoutError:
                    raise Failed("the server kept the connection open", "closed",
                                 "open") from None
                except (ConnectionError, OSError):
                    extra = b""
                if extra:
                    raise Failed("the server sent data instead of closing", "closed",
                                 extra[:32].hex())
                return f"{style} greeting; the server closed the connection"
            return f"{style} greeting"
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 2)

    async def _do_expect_in_sync(self, index: int, step: Step) -> str:
        await self._sync_check(self._client(step), "")
        return "in sync"

    async def _do_verify_data(self, index: int, step: Step) -> str:
        client = self._client(step)
        offset, length = step.args["offset"], step.args["length"]
        data = await client.read(offset, length)
        check_data(data, "model", offset, length, self.model, self.spec,
                   f"read {offset}+{length}")
        return "as expected"


__all__ = ["CommandSteps"]
