"""``nbd-harness replay FILE --against URI | --serve``: replay a captured NBD session.

``--against URI`` plays the client side of each recorded session to a live
server (a new connection per session) and reports, message by message, where
the live server's answers differ from the recorded ones: negotiated features,
errors, data, extents, block sizes, with the spec sections involved.  Writes
are replayed too: point it at a scratch export.

``--serve`` plays the server side to a live client instead (see
:mod:`harness.replay.serve`).

Sessions are chosen with ``--session N`` (1-based, as ``nbd-harness dissect``
numbers them) or ``--stream N`` (Wireshark's ``tcp.stream``, 0-based); all
replayable sessions by default.  Exit status: 0 when nothing differs, 1 when
something does (or the live peer broke off), 2 for a usage error.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.client.options import DEFAULT_TIMEOUT
from harness.errors import UserError

if TYPE_CHECKING:  # the replayer loads when the command runs: a fast start-up for the others
    from harness.dissect import Capture
    from harness.replay import ReplayReport, Selection


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``replay`` sub-command."""
    parser = subparsers.add_parser(
        "replay",
        help="replay a captured session against a live server (or to a live client)",
        description="Replay the NBD sessions of a capture (recording proxy, tcpdump or "
        "Wireshark; pcap or pcapng) and report, message by message, where the live peer "
        "differs from the recorded one: negotiated features, errors, data, extents and block "
        "sizes, with the spec sections involved. --against replays writes too: point it at a "
        "scratch export. Exit status: 0 nothing differs, 1 differences, 2 usage error.",
    )
    parser.add_argument("file", metavar="FILE", help="capture file (pcap or pcapng, may be .gz)")
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument(
        "--against", metavar="URI",
        help="replay the recorded client against the server at URI (nbd://HOST:PORT[/EXPORT] "
        "or nbd+unix:///EXPORT?socket=PATH); an export in the URI replaces the recorded one. "
        "Replays writes too: point it at a scratch export",
    )
    mode.add_argument(
        "--serve", action="store_true",
        help="play the recorded server to a live client that connects to --listen",
    )
    parser.add_argument(
        "--session", type=int, action="append", default=[], metavar="N",
        help="replay session N (1-based, as `nbd-harness dissect` numbers them); repeatable",
    )
    parser.add_argument(
        "--stream", type=int, action="append", default=[], metavar="N",
        help="replay the session of Wireshark's TCP stream N (tcp.stream, 0-based); repeatable",
    )
    parser.add_argument(
        "--export", metavar="NAME",
        help="use export NAME wherever the recorded session names an export",
    )
    parser.add_argument(
        "--timeout", type=float, default=DEFAULT_TIMEOUT, metavar="SECONDS",
        help=f"how long any one wait for the live peer may take (default {DEFAULT_TIMEOUT:g})",
    )
    parser.add_argument("--json", action="store_true", help="print the reports as JSON")
    serve = parser.add_argument_group("--serve options")
    serve.add_argument(
        "--listen", metavar="HOST:PORT|unix:PATH", default="127.0.0.1:0",
        help="where to listen for the live client (default 127.0.0.1:0, a free port)",
    )
    serve.add_argument("--port-file", metavar="FILE",
                       help="write the port (or socket path) listened on into FILE")
    serve.add_argument("--once", action="store_true",
                       help="stop once one client connection per session has finished "
                       "(default: serve until Ctrl-C or SIGTERM)")
    parser.set_defaults(func=run)


def _choose(path: str, sessions: list[int], streams: list[int]) -> Selection:
    """The sessions asked for by number and by TCP stream (all replayable ones if none)."""
    from harness.replay import ReplayError, Selection, load_sessions, unreplayable

    if not streams:
        return load_sessions(path, sessions)
    everything = load_sessions(path)
    capture = everything.capture
    wanted = [(index, f"session {index}") for index in sessions]
    wanted += [(session_of_stream(capture, stream, path), f"TCP stream {stream}")
               for stream in streams]
    chosen = Selection(capture=capture)
    by_index = {session.index: session for session in capture.sessions}
    for index, label in wanted:
        session = by_index.get(index)
        if session is None:
            raise ReplayError(f"{path} has no {label} (it has {len(capture.sessions)} "
                              "session(s), numbered from 1; `nbd-harness dissect FILE` lists "
                              "them)")
        why = unreplayable(session)
        if why:
            raise ReplayError(f"{path}: {label} (session {index}) cannot be replayed: {why}")
        if session not in chosen.sessions:
            chosen.sessions.append(session)
    return chosen


def session_of_stream(capture: Capture, stream: int, path: str = "") -> int:
    """The session index (1-based) of Wireshark's ``tcp.stream`` number ``stream``.

    Wireshark numbers TCP conversations from 0 in the order their first frame
    appears, a new SYN on a reused address pair starting a new one; the decoder
    orders sessions the same way, so stream N is session N + 1.
    """
    from harness.replay import ReplayError

    if stream < 0 or stream >= len(capture.sessions):
        count = len(capture.sessions)
        raise ReplayError(f"{path or capture.path} has no TCP stream {stream} (it has "
                          f"{count} TCP connection(s): streams 0 to {count - 1})" if count else
                          f"{path or capture.path} holds no TCP connection")
    ordered = sorted(capture.sessions, key=lambda session: session.index)
    return ordered[stream].index


def _render(reports: list[ReplayReport], selection: Selection, peer: str, serve: bool) -> str:
    lines = [report.render() for report in reports]
    for index, why in selection.skipped:
        lines.append(f"session {index} not replayed: {why}\n")
    differing = sum(1 for report in reports if report.differences)
    stopped = sum(1 for report in reports if report.error)
    where = f"to live clients on {peer}" if serve else f"against {peer}"
    total = (f"{len(reports)} session(s) replayed {where}: "
             + ("no differences" if all(r.same for r in reports)
                else f"{differing} with differences, {stopped} stopped early"))
    lines.append(total + "\n")
    return "".join(lines)


def _as_json(reports: list[ReplayReport], selection: Selection, args: argparse.Namespace,
             peer: str) -> dict[str, Any]:
    return {
        "capture": str(args.file),
        "mode": "serve" if args.serve else "against",
        "peer": peer,
        "same": all(report.same for report in reports),
        "sessions": [report.to_dict() for report in reports],
        "skipped": [{"session": index, "reason": why} for index, why in selection.skipped],
        "capture_errors": list(selection.capture.errors),
    }


def run(args: argparse.Namespace) -> int:
    """Replay, print the reports; 0 when nothing differs, 1 otherwise."""
    if args.timeout <= 0:
        raise UserError(f"--timeout must be a positive number of seconds, not {args.timeout:g}")
    if any(index < 1 for index in args.session):
        raise UserError("--session numbers start at 1 (as `nbd-harness dissect` shows them)")
    if any(stream < 0 for stream in args.stream):
        raise UserError("--stream numbers start at 0 (Wireshark's tcp.stream)")
    if not Path(args.file).exists():
        raise UserError(f"{args.file}: no such file")
    selection = _choose(args.file, args.session, args.stream)
    if args.serve:
        # Part B's module; imported here so --against works without it.
        from harness.replay.serve import serve_replay

        # With --json, stdout carries the JSON document only: the "listening on" line goes
        # to stderr.
        reports = serve_replay(selection, listen=args.listen, port_file=args.port_file,
                               timeout=args.timeout, export_name=args.export, once=args.once,
                               out=sys.stderr if args.json else sys.stdout)
        peer = str(args.listen)
    else:
        from harness.replay.against import replay_against

        reports = replay_against(selection, args.against, timeout=args.timeout,
                                 export_name=args.export)
        peer = reports[0].peer if reports else args.against
    if args.json:
        json.dump(_as_json(reports, selection, args, peer), sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(_render(reports, selection, peer, args.serve))
    for error in selection.capture.errors:
        print(f"nbd-harness replay: capture: {error}", file=sys.stderr)
    sys.stdout.flush()
    return 0 if all(report.same for report in reports) else 1


__all__ = ["register", "run", "session_of_stream"]
