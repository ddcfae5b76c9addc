"""``nbd-harness info``: what a server offers and what the reference client negotiated.

    nbd-harness info nbd://127.0.0.1:10809/disk
    nbd-harness info --list nbd://127.0.0.1:10809
    nbd-harness info --map qemu:allocation-depth nbd+unix:///?socket=/tmp/nbd.sock
    nbd-harness info --json nbds://localhost/disk?tls-certificates=/path/to/pki

Like ``nbdinfo``, but it also shows every option sent with the reply types
received and each fallback the client took.  ``--map`` prints
``offset length flags description`` lines in ``nbdinfo --map``'s layout.
Exit status: 0; 1 when the server cannot be reached, refuses, or breaks the
protocol (one line on stderr); 2 for a bad URI or arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from harness.client import (
    ConnectOptions,
    NbdClient,
    NbdClientError,
    NegotiationError,
    parse_uri,
)
from harness.client.options import DEFAULT_TIMEOUT
from harness.client.uri import NbdUri
from harness.errors import UserError
from harness.protocol import Phase, ProtocolError
from harness.protocol import constants as c

TF = c.TransmissionFlag

# nbdinfo's boolean lines, in its order, and the transmission flag each reads.
_CAPABILITIES: tuple[tuple[str, TF], ...] = (
    ("is_rotational", TF.ROTATIONAL),
    ("is_read_only", TF.READ_ONLY),
    ("can_block_status_payload", TF.BLOCK_STATUS_PAYLOAD),
    ("can_cache", TF.SEND_CACHE),
    ("can_df", TF.SEND_DF),
    ("can_fast_zero", TF.SEND_FAST_ZERO),
    ("can_flush", TF.SEND_FLUSH),
    ("can_fua", TF.SEND_FUA),
    ("can_multi_conn", TF.CAN_MULTI_CONN),
    ("can_resize", TF.SEND_RESIZE),
    ("can_trim", TF.SEND_TRIM),
    ("can_zero", TF.SEND_WRITE_ZEROES),
)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``info`` sub-command."""
    parser = subparsers.add_parser(
        "info",
        help="show what an NBD server offers and what the reference client negotiated",
        description="Connect with the reference client and print the handshake (options "
        "sent, replies, fallbacks) and the export's properties; or list exports; or map "
        "a metadata context like `nbdinfo --map`.",
    )
    parser.add_argument(
        "uri",
        metavar="URI",
        nargs="?",
        help="nbd://HOST[:PORT]/EXPORT, nbds://..., nbd+unix:///EXPORT?socket=PATH",
    )
    parser.add_argument("--list", action="store_true", help="list the server's exports")
    parser.add_argument(
        "--map",
        metavar="CONTEXT",
        help="print the extents of a metadata context, e.g. base:allocation",
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument(
        "--no-structured", action="store_true", help="do not ask for structured replies"
    )
    parser.add_argument(
        "--no-extended", action="store_true", help="do not ask for extended headers"
    )
    parser.add_argument(
        "--context",
        action="append",
        default=[],
        metavar="NAME",
        help="metadata context to select (repeatable; default base:allocation)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help=f"limit for connecting and for each reply (default {DEFAULT_TIMEOUT:g})",
    )
    parser.add_argument(
        "--fault",
        metavar="NAME",
        help="run the reference client's scripted fault NAME against the server instead "
        "(it breaks the spec on purpose; see --list-faults and docs/faults.md)",
    )
    parser.add_argument(
        "--list-faults", action="store_true", help="print the client fault names and exit"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Connect, gather, print; return the exit status."""
    if args.list_faults or args.fault:
        return _run_fault(args)
    if args.uri is None:
        raise UserError("give the server's URI, e.g. nbd://127.0.0.1:10809/disk")
    uri = parse_uri(args.uri)  # a UriError is a UserError: one line, exit 2
    contexts = list(dict.fromkeys(([args.map] if args.map else []) + args.context))
    options = ConnectOptions(
        structured_replies=not args.no_structured,
        extended_headers=not args.no_extended,
        meta_contexts=tuple(contexts or [c.BASE_ALLOCATION]),
        enter_transmission=False,
        timeout=args.timeout,
        connect_timeout=args.timeout,
    )
    try:
        report = asyncio.run(_gather(uri, options, args))
    except (NbdClientError, ProtocolError, OSError) as exc:
        print(f"nbd-harness info: error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        _print_human(report, args)
    return 0


async def _gather(uri: NbdUri, options: ConnectOptions, args: argparse.Namespace) -> dict:
    client = await NbdClient.connect(uri, options=options)
    try:
        report: dict[str, Any] = {"uri": str(uri)}
        if args.list:
            if not client.negotiation.client_flags & c.ClientFlag.C_FIXED_NEWSTYLE:
                raise NbdClientError(
                    f"cannot list exports: the server speaks {client.negotiation.style} "
                    "negotiation, which has no NBD_OPT_LIST"
                )
            report["exports"] = await _list(client)
            report["negotiation"] = client.negotiation.as_dict()
            return report
        neg = client.negotiation
        available = None
        if client.phase is Phase.OPTIONS and (neg.structured_replies or neg.extended_headers):
            try:
                available = await client.list_meta_contexts(neg.export_name, ())
            except NegotiationError as exc:
                available = None
                report["contexts_available_error"] = str(exc)
        await client.enter_transmission()
        report["contexts_available"] = available
        if args.map:
            extents = await client.map(args.map)
            report["map"] = {
                "context": args.map,
                "extents": [
                    {
                        "offset": offset,
                        "length": length,
                        "type": flags,
                        "description": describe(args.map, flags),
                    }
                    for offset, length, flags in extents
                ],
            }
        report["tls_version"] = client.tls_version
        report["negotiation"] = neg.as_dict()
        report["capabilities"] = {label: neg.has(flag) for label, flag in _CAPABILITIES}
        return report
    finally:
        await client.disconnect()


async def _list(client: NbdClient) -> list[dict[str, Any]]:
    entries = []
    for export in await client.list_exports():
        entry: dict[str, Any] = {"name": export.name, "description": export.description}
        try:
            info = await client.info(export.name)
        except NegotiationError as exc:
            entry["info_error"] = str(exc)
        else:
            entry["size"] = info.size
            entry["transmission_flags"] = info.transmission_flags
            if info.description is not None and not export.description:
                entry["description"] = info.description
        entries.append(entry)
    return entries


def describe(context: str, flags: int) -> str:
    """``nbdinfo --map``'s words for a status value of ``context``."""
    if context == c.BASE_ALLOCATION:
        words = []
        if flags & c.StateFlag.HOLE:
            words.append("hole")
        if flags & c.StateFlag.ZERO:
            words.append("zero")
        if flags & ~(c.StateFlag.HOLE | c.StateFlag.ZERO):
            words.append(hex(flags & ~(c.StateFlag.HOLE | c.StateFlag.ZERO)))
        return ",".join(words) or "data"
    if context.startswith(c.QEMU_DIRTY_BITMAP_PREFIX):
        return {0: "clean", c.DirtyFlag.DIRTY: "dirty"}.get(flags, hex(flags))
    if context == c.QEMU_ALLOCATION_DEPTH:
        # qemu-nbd.rst: 0 unallocated, 1 this layer, N the (N-1)th backing file.
        return {0: "absent", 1: "local"}.get(flags, f"backing depth {flags}")
    return ""


def human_size(size: int) -> str:
    """``4194304`` -> ``4M`` when exact, else the plain number (as nbdinfo shows it)."""
    units = "KMGTPE"
    unit = ""
    for letter in units:
        if size < 1024 or size % 1024:
            break
        size //= 1024
        unit = letter
    return f"{size}{unit}"


def _flags(names: list[str]) -> str:
    return "|".join(names) if names else "0"


def _run_fault(args: argparse.Namespace) -> int:
    """``--list-faults`` or ``--fault NAME``: one scripted broken session, told line by line."""
    from harness.client.faults import CLIENT_FAULTS, run_client_fault
    from harness.faults import list_lines

    if args.list_faults:
        print(list_lines(CLIENT_FAULTS))
        return 0
    if args.uri is None:
        raise UserError("give the server's URI after --fault NAME")
    uri = parse_uri(args.uri)
    try:
        lines = asyncio.run(run_client_fault(args.fault, uri, args.timeout))
    except (NbdClientError, ProtocolError, OSError, TimeoutError) as exc:
        print(f"nbd-harness info: error: {exc}", file=sys.stderr)
        return 1
    for line in lines:
        print(f"fault {args.fault}: {line}")
    return 0


def _print_human(report: dict[str, Any], args: argparse.Namespace) -> None:
    neg = report["negotiation"]
    if args.map and not args.list:
        for extent in report["map"]["extents"]:
            print(
                f"{extent['offset']:10d}  {extent['length']:10d}  {extent['type']:3d}  "
                f"{extent['description']}".rstrip()
            )
        return
    print(_protocol_line(neg))
    print(f"handshake flags: {_flags(neg['handshake_flags'])}")
    print(f"client flags: {_flags(neg['client_flags'])}")
    if neg["options"]:
        print("options:")
        for exchange in neg["options"]:
            replies = ", ".join(exchange["replies"]) or exchange.get("outcome", "")
            extra = f" {exchange['argument']}" if exchange.get("argument") else ""
            message = f" ({exchange['message']})" if exchange.get("message") else ""
            print(f"\t{exchange['option']}{extra} -> {replies}{message}")
    if neg["fallbacks"]:
        print("fallbacks:")
        for fallback in neg["fallbacks"]:
            print(f"\t{fallback['kind']}: {fallback['what']}")
    if args.list:
        for export in report["exports"]:
            print(f"export={json.dumps(export['name'])}:")
            if export.get("description"):
                print(f"\tdescription: {export['description']}")
            if export.get("size") is not None:
                print(f"\texport-size: {export['size']} ({human_size(export['size'])})")
            if export.get("info_error"):
                print(f"\tinfo: {export['info_error']}")
        return
    print(f"export={json.dumps(neg['export_name'])}:")
    if neg["export_size"] is not None:
        print(f"\texport-size: {neg['export_size']} ({human_size(neg['export_size'])})")
    print(f"\tselected with: {neg['selected_with']}")
    if neg["canonical_name"] is not None:
        print(f"\tcanonical name: {json.dumps(neg['canonical_name'])}")
    if neg["description"] is not None:
        print(f"\tdescription: {neg['description']}")
    print(f"\turi: {report['uri']}")
    print(f"\ttransmission flags: {_flags(neg['transmission_flags'])}")
    if report["contexts_available"] is not None:
        print("\tcontexts available:")
        for name in report["contexts_available"]:
            print(f"\t\t{name}")
    print("\tcontexts selected:" + ("" if neg["contexts"] else " none"))
    for cid, name in neg["contexts"].items():
        print(f"\t\t{name} (id {cid})")
    for label, value in report["capabilities"].items():
        print(f"\t{label}: {str(value).lower()}")
    block = neg["block_size"]
    if block is not None:
        print(f"\tblock_size_minimum: {block['minimum']}")
        print(f"\tblock_size_preferred: {block['preferred']}")
        print(f"\tblock_size_maximum: {block['maximum']}")
    if neg["init_state"] is not None:
        print(f"\tinit_state: {_flags(neg['init_state'])}")


def _protocol_line(neg: dict[str, Any]) -> str:
    tls = "with TLS" if neg["tls"] else "without TLS"
    if neg["extended_headers"]:
        replies = "using extended headers"
    elif neg["structured_replies"]:
        replies = "using structured replies"
    else:
        replies = "using simple replies"
    return f"protocol: {neg['style']} {tls}, {replies}"
