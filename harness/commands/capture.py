"""``nbd-harness capture``: run the recording proxy in the foreground.

    nbd-harness capture --listen tcp://127.0.0.1:0 --upstream tcp://127.0.0.1:10809 \\
        --out session.pcapng [--count N]

Prints the address clients should use (with the real port), then records until
Ctrl-C (or SIGTERM) or until N connections have finished, and prints a summary.
Exit status: 0, or 1 when a connection could not reach the upstream.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys

from harness.address import Address, parse_address
from harness.errors import UserError


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``capture`` sub-command."""
    parser = subparsers.add_parser(
        "capture",
        help="record NBD sessions through a proxy into a pcapng file",
        description="Forward connections from --listen to --upstream byte-exact and record "
        "them into a pcapng file that Wireshark (port 10809: NBD) and `nbd-harness dissect` "
        "read.  Stops on Ctrl-C or after --count connections.",
    )
    parser.add_argument(
        "--listen",
        required=True,
        metavar="URL",
        help="where clients connect: tcp://127.0.0.1:0 (0 = kernel-chosen port) or unix:/PATH",
    )
    parser.add_argument(
        "--upstream",
        required=True,
        metavar="URL",
        help="the real server: tcp://HOST:PORT or unix:/PATH",
    )
    parser.add_argument(
        "--out", required=True, metavar="FILE.pcapng", help="the capture file to write"
    )
    parser.add_argument(
        "--count",
        type=int,
        metavar="N",
        help="stop after N connections have finished (default: run until Ctrl-C)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the proxy until Ctrl-C/SIGTERM or ``--count`` connections; print a summary."""
    listen = parse_address(args.listen)
    upstream = parse_address(args.upstream)
    if args.count is not None and args.count < 1:
        raise UserError(f"--count {args.count}: must be at least 1")
    return asyncio.run(_capture(listen, upstream, args.out, args.count))


async def _capture(listen: Address, upstream: Address, out: str, count: int | None) -> int:
    from harness.capture.proxy import RecordingProxy  # here: a fast start-up for the others

    proxy = RecordingProxy(listen, upstream, out, on_error=_print_error)
    try:
        await proxy.start()
    except OSError as exc:
        if exc.filename:  # opening the capture file failed
            raise UserError(f"cannot write {exc.filename}: {exc.strerror or exc}") from None
        raise UserError(f"cannot listen on {listen}: {exc.strerror or exc}") from None

    loop = asyncio.get_running_loop()
    interrupted = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, interrupted.set)
    print(
        f"listening on {proxy.address}, forwarding to {upstream}, recording to {out}",
        flush=True,
    )
    print(f"NBD clients connect to {_nbd_uri(proxy.address)}", flush=True)
    try:
        waiters = [asyncio.ensure_future(interrupted.wait())]
        if count is not None:
            waiters.append(asyncio.ensure_future(proxy.wait_closed(count)))
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
            await asyncio.gather(*waiters, return_exceptions=True)
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(signum)
        await proxy.stop()

    stats = proxy.stats
    reason = "interrupted" if interrupted.is_set() else f"{count} connection(s) finished"
    print(
        f"{reason}: {stats.accepted} connection(s), {stats.failed} failed; "
        f"{stats.client_to_server} bytes client->server, "
        f"{stats.server_to_client} bytes server->client; wrote {out}",
        flush=True,
    )
    return 1 if proxy.errors else 0


def _print_error(message: str) -> None:
    print(f"nbd-harness capture: {message}", file=sys.stderr, flush=True)


def _nbd_uri(address: Address) -> str:
    """The NBD URI (spec/uri.md) of the default export at ``address``."""
    if address.kind == "unix":
        return f"nbd+unix:///?socket={address.path}"
    host = f"[{address.host}]" if ":" in address.host else address.host
    return f"nbd://{host}:{address.port}"
