"""``nbd-harness peers``: list, install and check the real peers of every version.

    nbd-harness peers list [--json]          every known PROGRAM@VERSION, provided or not
    nbd-harness peers install [SUITE|all]    build/unpack root filesystems (or docker images)
    nbd-harness peers doctor [PEER ...]      start and probe installed peers, compare with data
    nbd-harness peers build qemu VERSION [--source DIR|TARBALL|URL|debian:SUITE]
                                             build a qemu release's tools into the peer cache
    nbd-harness peers compare REAL|DIR PROFILE   a real server (or its saved sessions) vs a
                                             reference-server profile, message by message
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

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

    build = actions.add_parser(
        "build", help="build a qemu release's tools from source into the peer cache",
        description="Build qemu-nbd, qemu-img, qemu-io (and qemu-storage-daemon from 5.2) of "
        "a qemu release, out of tree, in the Debian build root of its era "
        "(matrix/qemu-builds.toml), into ~/.cache/nbd-harness/qemu/VERSION/. Without "
        "--source the official release tarball is downloaded and checked against its SHA-256.",
    )
    build.add_argument("family", choices=["qemu"], help="what to build (qemu)")
    build.add_argument("version", nargs="?",
                       help="2.12 or 2.12.1; optional with --source (the tree's VERSION)")
    build.add_argument("--source", metavar="DIR|TARBALL|URL|debian:SUITE",
                       help="a source tree, a release tarball, its URL, or debian:SUITE for "
                       "that Debian suite's qemu source package")
    build.add_argument("--rebuild", action="store_true", help="build even when cached")
    build.add_argument("--jobs", "-j", type=int, metavar="N",
                       help="parallel compile jobs (default: matrix/qemu-builds.toml, 2)")
    build.set_defaults(func=run_build)

    compare = actions.add_parser(
        "compare", help="does a reference-server profile answer as the real server does?",
        description="Record the real server REAL (qemu-nbd@2.12) answering every applicable "
        "server scenario (a fresh server per scenario, the reference client, as the matrix runs "
        "them) and a few nbdinfo calls, then replay each session against the reference server "
        "in PROFILE (qemu-2.12) serving the same export, and show every difference with the "
        "messages. REAL may also be a saved recording (a directory with manifest.json, e.g. "
        "tests/data/qemu-releases/2.12).",
    )
    compare.add_argument("real", metavar="REAL|DIR", help="a real server peer, or a recording")
    compare.add_argument("profile", metavar="PROFILE", help="a reference-server profile")
    compare.add_argument("scenarios", nargs="*", metavar="SCENARIO",
                         help="only these scenarios (name, group/name, group or glob)")
    compare.add_argument("--out", type=Path, metavar="DIR",
                         help="where the recording goes (default: reports/compare-DATE-TIME)")
    compare.add_argument("--save", type=Path, metavar="DIR",
                         help="also save the small sessions as a recording (test data)")
    compare.add_argument("--json", action="store_true", help="print JSON")
    compare.set_defaults(func=run_compare)

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


# --- build ------------------------------------------------------------------------------------


class _StatusLine:
    """One line that a build keeps rewriting on a terminal (a line every 30 s otherwise)."""

    def __init__(self, stream=None, interval: float = 30.0) -> None:
        self.stream = stream or sys.stderr  # the current one (pytest swaps it per test)
        self.tty = self.stream.isatty()
        self.interval = interval
        self.shown_at = 0.0
        self.width = 0

    def status(self, text: str) -> None:
        now = time.monotonic()
        if self.tty:
            line = text[:110]
            self.stream.write("\r" + line.ljust(self.width))
            self.width = len(line)
            self.stream.flush()
        elif now - self.shown_at >= self.interval:
            print(f"  {text}", file=self.stream, flush=True)
            self.shown_at = now

    def line(self, text: str) -> None:
        self.clear()
        print(text, file=self.stream, flush=True)

    def clear(self) -> None:
        if self.tty and self.width:
            self.stream.write("\r" + " " * self.width + "\r")
            self.width = 0


def run_build(args: argparse.Namespace) -> int:
    from harness.peers.qemu_build import QemuBuilder, parse_source

    if args.version is None and args.source is None:
        raise UserError("give a VERSION (e.g. 2.12) or --source DIR|TARBALL|URL|debian:SUITE")
    if args.jobs is not None and args.jobs < 1:
        raise UserError("--jobs must be 1 or more")
    source = parse_source(args.source)
    line = _StatusLine()
    builder = QemuBuilder(progress=line.line, status=line.status, jobs=args.jobs)
    try:
        report = builder.build(args.version, source, rebuild=args.rebuild)
    finally:
        line.clear()
    build = report.build
    if report.cached:
        print(f"qemu {build.name}: already built in {build.directory} (from {build.source}, "
              f"{build.seconds:.0f} s); --rebuild builds it again")
    else:
        print(f"qemu {build.name}: built in {report.seconds:.0f} s from {build.source}")
    print(f"  programs: {', '.join(sorted(build.programs))} in {build.bin_dir}")
    for note in report.notes:
        print(f"  {note}")
    return 0


# --- compare ----------------------------------------------------------------------------------


def run_compare(args: argparse.Namespace) -> int:
    from harness import fidelity
    from harness.matrix import select_scenarios
    from harness.paths import REPORTS_DIR
    from harness.scenarios import load_library
    from reference_server.profiles import profile

    profile(args.profile)  # a clear error for an unknown profile, before recording anything

    def progress(line: str) -> None:
        print(f"  {line}", file=sys.stderr, flush=True)

    source = Path(args.real)
    if (source / fidelity.MANIFEST).is_file():
        recording = fidelity.load_recording(source)
    else:
        out = args.out or REPORTS_DIR / f"compare-{time.strftime('%Y%m%d-%H%M%S')}"
        scenarios = select_scenarios(load_library(), args.scenarios)
        print(f"recording {args.real} into {out} ...", file=sys.stderr, flush=True)
        recording = fidelity.record_sessions(args.real, scenarios, out, progress=progress)
    if args.save:
        saved = fidelity.save_recording(recording, args.save)
        print(f"saved {len(saved.sessions)} of {len(recording.sessions)} sessions in "
              f"{args.save}", file=sys.stderr)
    comparisons = fidelity.compare_sessions(recording, args.profile, progress=progress)
    differing = [c for c in comparisons if not c.same]
    if args.json:
        json.dump({"real": recording.real, "version": recording.version,
                   "profile": args.profile, "same": not differing,
                   "sessions": [c.as_json() for c in comparisons]}, sys.stdout, indent=2)
        print()
    else:
        for comparison in comparisons:
            print(comparison.render(), end="")
        skipped = sum(1 for c in comparisons if c.skipped)
        print(f"{recording.real} ({recording.version}) vs reference-server@{args.profile}: "
              f"{len(comparisons)} sessions, {len(differing)} with differences"
              + (f", {skipped} skipped" if skipped else ""))
    return 1 if differing else 0


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
