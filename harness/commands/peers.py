"""``nbd-harness peers``: list, install and check the real peers of every version.

    nbd-harness peers list [--json]          every known PROGRAM@VERSION, provided or not
    nbd-harness peers install [SUITE|all]    build/unpack root filesystems (or docker images)
    nbd-harness peers doctor [PEER ...]      start and probe installed peers, compare with data
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from harness.errors import UserError

INSTALL_ALL = "all"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "peers",
        help="list, install and check real peers (qemu, nbdkit, libnbd, nbd-server)",
        description="Real peers by version: PROGRAM@VERSION (qemu-nbd@5.2, nbdkit@1.48, "
        "libnbd@1.24, nbd-server@3.26), provided by this machine's packages (host), by a "
        "Debian suite's root filesystem run with bubblewrap (rootfs) or by a docker image.",
    )
    actions = parser.add_subparsers(dest="peers_action", metavar="ACTION")

    listing = actions.add_parser("list", help="every known peer@version and where it comes from")
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.set_defaults(func=run_list)

    install = actions.add_parser(
        "install", help="provision a Debian suite's peers (root filesystem or docker image)"
    )
    install.add_argument("suite", nargs="?", default=INSTALL_ALL,
                         help="a suite of matrix/suites.toml, or 'all' (default)")
    install.add_argument("--docker", action="store_true",
                         help="build (or pull) the docker image instead of a root filesystem")
    install.set_defaults(func=run_install)

    doctor = actions.add_parser(
        "doctor", help="start and probe each installed peer; print mismatches with the data"
    )
    doctor.add_argument("peers", nargs="*", metavar="PEER",
                        help="only these (PROGRAM or PROGRAM@VERSION); default: every one")
    doctor.add_argument("--provider", action="append", default=[], metavar="NAME",
                        help="only this provider (host, rootfs:sid, ...); repeatable")
    doctor.add_argument("--no-probe", action="store_true",
                        help="check versions only; do not start servers")
    doctor.add_argument("--json", action="store_true", help="print JSON")
    doctor.set_defaults(func=run_doctor)

    parser.set_defaults(func=lambda args: _usage(parser))


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


# --- list --------------------------------------------------------------------------------------


def run_list(args: argparse.Namespace) -> int:
    from harness.peers import list_peers

    rows = list_peers()
    if args.json:
        json.dump({"peers": [row.as_json() for row in rows]}, sys.stdout, indent=2)
        print()
        return 0
    width = max(len(row.peer) for row in rows)
    print(f"{'PEER':<{width}}  {'SUITE':<19} {'PROVIDED':<8}  FROM / HOW")
    for row in rows:
        provided = "yes" if row.provided else "no"
        if row.provided:
            where = row.provider or ""
            versions = {p.version for p in row.providers if p.ready and p.version}
            if versions:
                where += f" ({', '.join(sorted(versions))})"
        else:
            where = row.hint
        print(f"{row.peer:<{width}}  {row.suite or '-':<19} {provided:<8}  {where}")
    return 0


# --- install -----------------------------------------------------------------------------------


def _human_bytes(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{count} B"


def run_install(args: argparse.Namespace) -> int:
    from harness.peers import Catalog

    kind = "docker" if args.docker else "rootfs"
    catalog = Catalog.load(kinds=(kind,))
    if args.suite == INSTALL_ALL:
        providers = [p for p in catalog.providers if p.suite.name in _install_all(catalog, kind)]
    else:
        catalog.data.suite(args.suite)  # a clear error for an unknown suite
        providers = [p for p in catalog.providers if p.suite.name == args.suite]
        if not providers:
            raise UserError(f"suite {args.suite} has no {kind} provider in matrix/suites.toml")

    def progress(line: str) -> None:
        print(f"  {line}", file=sys.stderr, flush=True)

    started = time.monotonic()
    total = 0
    for provider in providers:
        print(f"{provider.name}: installing ...", file=sys.stderr, flush=True)
        report = provider.provision(progress)
        total += report.disk_bytes
        print(f"{provider.name}: {report.detail} in {report.seconds:.1f} s, "
              f"{_human_bytes(report.disk_bytes)} on disk", flush=True)
    if len(providers) > 1:
        print(f"all: {time.monotonic() - started:.1f} s, {_human_bytes(total)} on disk",
              flush=True)
    return 0


def _install_all(catalog, kind: str) -> list[str]:
    """``all``: every suite the host does not already provide."""
    from harness.peers.host import host_codename

    host = host_codename()
    return [s.name for s in catalog.data.suites.values()
            if kind in s.providers and not (s.name == host and "host" in s.providers)]


# --- doctor ----------------------------------------------------------------------------------


def run_doctor(args: argparse.Namespace) -> int:
    from harness.peers import DRIVERS, Catalog, parse_peer_spec
    from harness.peers.catalog import BUILTIN_PROGRAMS
    from harness.peers.probe import check_peer

    catalog = Catalog.load()
    wanted = [parse_peer_spec(text) for text in args.peers]
    for spec in wanted:
        if spec.program not in DRIVERS:
            raise UserError(f"unknown peer program {spec.program!r}; known: "
                            f"{', '.join(sorted(DRIVERS))}")
    providers = [p for p in catalog.providers if p.kind != "docker" or p.ready()]
    if args.provider:
        for name in args.provider:
            catalog.provider(name)  # a clear error for an unknown provider
        providers = [p for p in providers if p.name in args.provider]
    peerdata = _peerdata()
    checks = []
    for provider in providers:
        if not provider.ready():
            continue
        for program, driver in DRIVERS.items():
            if program in BUILTIN_PROGRAMS:
                continue
            if wanted and not any(s.program == program and catalog.carries(provider, s)
                                  for s in wanted):
                continue
            peer = driver(provider)
            if not catalog.carries(provider, parse_peer_spec(program)) or not peer.available():
                continue
            check = check_peer(peer, peerdata, probe=not args.no_probe)
            checks.append(check)
            if not args.json:
                _print_check(check)
    if args.json:
        json.dump({"checks": [c.as_json() for c in checks],
                   "ok": all(c.ok for c in checks)}, sys.stdout, indent=2)
        print()
    else:
        bad = [c for c in checks if not c.ok]
        print(f"{len(checks)} peers checked, {len(bad)} with mismatches or errors")
    if not checks:
        raise UserError("no installed peer matched: see `nbd-harness peers list`")
    return 0 if all(c.ok for c in checks) else 1


def _peerdata():
    try:
        from harness.peerdata import load_peerdata
    except ImportError:
        return None
    return load_peerdata()


def _print_check(check) -> None:
    version = check.version
    shown = version.version if version else "?"
    if version and version.reported != version.version:
        shown += f" (reports {version.reported})"
    status = "ok" if check.ok else "MISMATCH" if check.mismatches else "ERROR"
    print(f"{status:<8} {check.peer}@{shown} from {check.provider}", flush=True)
    for mismatch in check.mismatches:
        print(f"         - {mismatch}")
    if check.error:
        print(f"         - {check.error}")
    for note in check.notes:
        print(f"         note: {note}")
