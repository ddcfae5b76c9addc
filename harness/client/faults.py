"""Fault profiles of the reference client: scripted sessions that break the spec on purpose.

``nbd-harness info URI --fault NAME`` runs one of :data:`CLIENT_FAULTS` against
a server and prints how the server reacted, so that the server's handling of a
broken client can be recorded and judged (and the rules that judge clients
tested).  Each session is short, bounded by the timeout at every wait, and
ends by closing the socket; the handshake-breaking ones talk bytes through the
same codec as the client, the others use :class:`NbdClient` and its
below-the-happy-path methods (``send_request(strict=False)``, ``send_raw``,
``close`` without ``NBD_CMD_DISC``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

from harness.faults import Fault, select_faults
from harness.protocol import ProtocolError
from harness.protocol import constants as c
from harness.protocol.codec import encode
from harness.protocol.messages import (
    ClientFlags,
    ConnectionClosed,
    Event,
    OptionRequest,
    ReplyChunk,
    Request,
    SimpleReply,
)

from ._session import NbdClient, Target, _resolve_target
from .errors import NbdClientError
from .options import ConnectOptions

UNKNOWN_CLIENT_FLAG = 1 << 7
UNKNOWN_COMMAND_FLAG = 1 << 12
UNKNOWN_COMMAND = 66
SHARED_COOKIE = 7
GREETING_LENGTH = 18  # NBDMAGIC, IHAVEOPT, 16-bit handshake flags

CLIENT_FAULTS: tuple[Fault, ...] = (
    Fault("bad-client-flags", "client", "client",
          f"sends client flags with the undefined bit {UNKNOWN_CLIENT_FLAG:#x} set",
          "Client flags", "MUST NOT", "Clients MUST NOT set any other flags",
          "client.client-flags-known", "any fixed-newstyle server"),
    Fault("request-before-go", "client", "client",
          "sends an NBD_CMD_READ request right after the client flags, before any option",
          "Newstyle negotiation", "MUST",
          "C: 64 bits, `0x49484156454F5054` (ASCII '`IHAVEOPT`') (note same newstyle "
          "handshake's magic number)",
          "client.option-magic", "any newstyle server"),
    Fault("option-after-export-name", "client", "client",
          "sends NBD_OPT_LIST after NBD_OPT_EXPORT_NAME's reply, in transmission",
          "Request message", "MUST", "C: 32 bits, 0x25609513, magic (`NBD_REQUEST_MAGIC`)",
          "client.request-magic", "any newstyle server"),
    Fault("write-without-data", "client", "client",
          "sends an NBD_CMD_WRITE header of 4096 bytes without its data, then an NBD_CMD_READ",
          "Request types", "MUST",
          "The client MUST follow the request header with *length* number of bytes to be "
          "written to the device.",
          "client.write-data-follows", "any writable export"),
    Fault("close-without-disc", "client", "client",
          "reads once, then closes the connection without NBD_CMD_DISC",
          "Terminating the transmission phase", "MUST NOT",
          "The client and the server MUST NOT initiate any form of disconnect other than in one "
          "of the above circumstances.",
          "client.disc-before-close", "any server"),
    Fault("close-without-abort", "client", "client",
          "asks NBD_OPT_INFO, then closes the connection without NBD_OPT_ABORT",
          "Termination of the session during option haggling", "MUST",
          "In the client's case, if it wishes to do so it MUST use soft disconnect.",
          "client.abort-before-close", "any fixed-newstyle server"),
    Fault("unknown-command-flags", "client", "client",
          f"sends NBD_CMD_READ with the undefined command flag {UNKNOWN_COMMAND_FLAG:#x}",
          "Command flags", "MUST NOT",
          "Clients MUST NOT set a command flag bit that is not documented for the particular "
          "command",
          "client.command-flag-documented", "any server"),
    Fault("overlapping-cookies", "client", "client",
          f"sends two NBD_CMD_READ requests with the same cookie ({SHARED_COOKIE}) before "
          "either is answered",
          "Transmission", "SHOULD",
          "Clients SHOULD use a cookie that is distinct from all other currently pending "
          "transactions",
          "client.cookie-distinct", "any server"),
    Fault("unknown-command", "client", "client",
          f"sends a request of the undefined command type {UNKNOWN_COMMAND}",
          "Baseline", "MUST",
          "Clients that wish to use more messages MUST negotiate them during the handshake "
          "phase, first.",
          "client.no-unknown-commands", "any server"),
    Fault("block-status-without-context", "client", "client",
          "sends NBD_CMD_BLOCK_STATUS without having selected a metadata context",
          "Metadata querying", "MUST NOT",
          "A client MUST NOT use `NBD_CMD_BLOCK_STATUS` unless it selected a nonzero number of "
          "metadata contexts during negotiation, and used the same export name for the "
          "subsequent `NBD_OPT_GO` (or `NBD_OPT_EXPORT_NAME`).",
          "client.block-status-needs-contexts", "a server with structured replies"),
)
"""Every client fault: what it sends, the sentence it breaks and the rule that means it."""

Script = Callable[[Target, float], Awaitable[list[str]]]


async def _raw_handshake(target: Target, timeout: float,
                         ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]:
    address, _uri = _resolve_target(target)
    async with asyncio.timeout(timeout):
        if address.kind == "unix":
            reader, writer = await asyncio.open_unix_connection(address.path)
        else:
            reader, writer = await asyncio.open_connection(address.host, address.port)
        greeting = await reader.readexactly(GREETING_LENGTH)
    return reader, writer, greeting


async def _server_reaction(reader: asyncio.StreamReader, timeout: float) -> str:
    """What the server sent back before closing, or that it kept quiet."""
    received = b""
    try:
        async with asyncio.timeout(timeout):
            while chunk := await reader.read(65536):
                received += chunk
    except TimeoutError:
        return f"server sent {len(received)} bytes and kept the connection open for {timeout:g} s"
    except OSError as exc:
        return f"server sent {len(received)} bytes, then the connection broke: {exc}"
    return f"server sent {len(received)} bytes and closed the connection"


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()


async def _bad_client_flags(target: Target, timeout: float) -> list[str]:
    reader, writer, greeting = await _raw_handshake(target, timeout)
    flags = int(c.ClientFlag.C_FIXED_NEWSTYLE) | UNKNOWN_CLIENT_FLAG
    if greeting[16:18] == b"\0\3":
        flags |= c.ClientFlag.C_NO_ZEROES
    writer.write(encode(ClientFlags(flags)))
    try:
        return [f"sent client flags {flags:#x}", await _server_reaction(reader, timeout)]
    finally:
        await _close(writer)


async def _request_before_go(target: Target, timeout: float) -> list[str]:
    reader, writer, _greeting = await _raw_handshake(target, timeout)
    writer.write(encode(ClientFlags(int(c.ClientFlag.C_FIXED_NEWSTYLE))))
    writer.write(encode(Request(type=c.Cmd.READ, offset=0, length=512, cookie=1)))
    try:
        return ["sent NBD_CMD_READ right after the client flags",
                await _server_reaction(reader, timeout)]
    finally:
        await _close(writer)


async def _connect(target: Target, timeout: float, **changes: object) -> NbdClient:
    options = ConnectOptions(timeout=timeout, connect_timeout=timeout, **changes)  # type: ignore[arg-type]
    return await NbdClient.connect(target, options=options)


def describe(event: Event) -> str:
    """A server message in words: the reply type and error value, or the close."""
    match event:
        case ConnectionClosed():
            return "the server closed the connection"
        case SimpleReply(error=error, cookie=cookie):
            return f"simple reply to cookie {cookie}, error {_errno(error)}"
        case ReplyChunk(type=chunk_type, cookie=cookie, payload=payload):
            text = f"{c.name_of(c.ReplyType, chunk_type)} chunk to cookie {cookie}"
            if c.is_error_chunk(chunk_type) and len(payload) >= 4:
                text += f", error {_errno(int.from_bytes(payload[:4], 'big'))}"
            return text
    return type(event).__name__


def _errno(value: int) -> str:
    return f"{value} ({c.name_of(c.Errno, value)})" if value else "0"


async def _unclaimed_reply(client: NbdClient, timeout: float) -> str:
    try:
        return f"server answered: {describe(await client.recv_event(timeout))}"
    except (NbdClientError, OSError) as exc:
        return f"no answer: {exc}"
    except ProtocolError as exc:  # e.g. a second reply to a cookie we sent twice
        return f"a reply the client's state machine refused: {exc}"


async def _option_after_export_name(target: Target, timeout: float) -> list[str]:
    client = await _connect(target, timeout, use_go=False, structured_replies=False,
                            extended_headers=False, meta_contexts=())
    try:
        await client.send_raw(encode(OptionRequest(c.Opt.LIST)))
        return ["entered transmission with NBD_OPT_EXPORT_NAME, then sent NBD_OPT_LIST",
                await _unclaimed_reply(client, timeout)]
    finally:
        await client.close()


async def _write_without_data(target: Target, timeout: float) -> list[str]:
    client = await _connect(target, timeout, extended_headers=False)
    try:
        write = Request(type=c.Cmd.WRITE, offset=0, length=4096, cookie=1)
        await client.send_raw(encode(write)[:28])  # the header alone
        await client.send_raw(encode(Request(type=c.Cmd.READ, offset=0, length=512, cookie=2)))
        return ["sent a 4096-byte NBD_CMD_WRITE header without data, then NBD_CMD_READ",
                await _unclaimed_reply(client, timeout)]
    finally:
        await client.close()


async def _close_without_disc(target: Target, timeout: float) -> list[str]:
    client = await _connect(target, timeout)
    await client.read(0, 512)
    await client.close()
    return ["read 512 bytes, then closed without NBD_CMD_DISC"]


async def _close_without_abort(target: Target, timeout: float) -> list[str]:
    client = await _connect(target, timeout, enter_transmission=False)
    info = await client.info()
    await client.close()
    return [f"asked NBD_OPT_INFO (size {info.size}), then closed without NBD_OPT_ABORT"]


async def _one_request(target: Target, timeout: float, request: Request, what: str,
                       **changes: object) -> list[str]:
    client = await _connect(target, timeout, extended_headers=False, **changes)
    try:
        await client.send_request(request, strict=False)
        return [what, await _unclaimed_reply(client, timeout)]
    finally:
        await client.disconnect()


async def _unknown_command_flags(target: Target, timeout: float) -> list[str]:
    request = Request(type=c.Cmd.READ, length=512, cookie=1, flags=UNKNOWN_COMMAND_FLAG)
    return await _one_request(target, timeout, request,
                              f"sent NBD_CMD_READ with command flag {UNKNOWN_COMMAND_FLAG:#x}")


async def _unknown_command(target: Target, timeout: float) -> list[str]:
    request = Request(type=UNKNOWN_COMMAND, length=512, cookie=1)
    return await _one_request(target, timeout, request, f"sent command type {UNKNOWN_COMMAND}")


async def _block_status_without_context(target: Target, timeout: float) -> list[str]:
    request = Request(type=c.Cmd.BLOCK_STATUS, length=4096, cookie=1)
    return await _one_request(target, timeout, request,
                              "sent NBD_CMD_BLOCK_STATUS with no metadata context selected",
                              meta_contexts=())


async def _overlapping_cookies(target: Target, timeout: float) -> list[str]:
    client = await _connect(target, timeout, extended_headers=False)
    try:
        read = Request(type=c.Cmd.READ, length=512, cookie=SHARED_COOKIE)
        second = Request(type=c.Cmd.READ, offset=512, length=512, cookie=SHARED_COOKIE)
        # Both leave before either can be answered (no wait between them).
        await client.send_request(read, strict=False)
        await client.send_request(second, strict=False)
        return [f"sent two NBD_CMD_READ with cookie {SHARED_COOKIE}",
                await _unclaimed_reply(client, timeout), await _unclaimed_reply(client, timeout)]
    finally:
        await client.close()


SCRIPTS: dict[str, Script] = {
    "bad-client-flags": _bad_client_flags,
    "request-before-go": _request_before_go,
    "option-after-export-name": _option_after_export_name,
    "write-without-data": _write_without_data,
    "close-without-disc": _close_without_disc,
    "close-without-abort": _close_without_abort,
    "unknown-command-flags": _unknown_command_flags,
    "overlapping-cookies": _overlapping_cookies,
    "unknown-command": _unknown_command,
    "block-status-without-context": _block_status_without_context,
}
if set(SCRIPTS) != {fault.name for fault in CLIENT_FAULTS}:
    raise AssertionError("every client fault needs exactly one script")


async def run_client_fault(name: str, target: Target, timeout: float = 10.0) -> list[str]:
    """Run the scripted session of the client fault ``name``; lines saying what happened."""
    (fault,) = select_faults([name], CLIENT_FAULTS, "client")
    return await SCRIPTS[fault.name](target, timeout)


__all__ = ["CLIENT_FAULTS", "run_client_fault"]
