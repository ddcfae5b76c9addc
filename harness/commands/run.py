"""``nbd-harness run``: the main job.

Until the scenario matrix lands, it starts the reference server with a
memory export and a two-layer chain (with a dirty bitmap), points every real
client listed in ``matrix/smoke-clients.toml`` at it, and prints what each
negotiated, as the server saw it (handshake, options and their answers,
structured replies / extended headers, metadata contexts, commands), plus
any rule the client broke.  A JSON report goes to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

from harness.errors import UserError

REPO = Path(__file__).resolve().parents[2]
CLIENTS_FILE = REPO / "matrix" / "smoke-clients.toml"
CLIENT_TIMEOUT = 120.0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "run",
        help="run the main job: real clients against the reference server",
        description="Start the reference server, run every real client of "
        "matrix/smoke-clients.toml against it, and print what each negotiated "
        "(as the server saw it) with a pass/fail verdict.",
    )
    parser.add_argument("--clients", type=Path, default=CLIENTS_FILE,
                        help="TOML list of client commands (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=REPO / "reports",
                        help="directory for the JSON report (default: %(default)s)")
    parser.set_defaults(func=run)


def _load_clients(path: Path) -> list[dict]:
    try:
        document = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{path}: not valid TOML: {exc}") from None
    clients = document.get("client", [])
    for number, client in enumerate(clients, start=1):
        missing = {"name", "program", "argv"} - set(client)
        if missing:
            raise UserError(f"{path}: client #{number} lacks {', '.join(sorted(missing))}")
    return clients


def _layer_files(directory: Path) -> None:
    size = 4 << 20
    with open(directory / "base.raw", "wb") as base:
        base.truncate(size)
        os.pwrite(base.fileno(), b"\x11" * (256 << 10), 0)
        os.pwrite(base.fileno(), b"\x22" * (128 << 10), 2 << 20)
    with open(directory / "top.raw", "wb") as top:
        top.truncate(size)
        os.pwrite(top.fileno(), b"\x33" * (128 << 10), 128 << 10)


def _env() -> dict[str, str]:
    # nbdsh runs `python3` from PATH and needs Debian's interpreter for its `nbd` module.
    return {**os.environ, "PATH": "/usr/bin:/bin:" + os.environ.get("PATH", "")}


def _version(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10, env=_env())
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    line = (out.stdout or out.stderr).strip().splitlines()
    return line[0] if line else "?"


def run(args: argparse.Namespace) -> int:
    from reference_server.config import config_from_dict
    from reference_server.runner import ServerThread

    started = time.monotonic()
    clients = _load_clients(args.clients)
    results = []
    with tempfile.TemporaryDirectory(prefix="nbd-harness-run-") as scratch:
        directory = Path(scratch)
        _layer_files(directory)
        config = config_from_dict({"export": [
            {"name": "disk", "size": "64M", "description": "memory export"},
            {"name": "chain", "backend": "layers", "layers": ["top.raw", "base.raw"],
             "bitmaps": ["b0"], "description": "two-layer chain"},
        ]}, base_dir=directory)
        with ServerThread(config) as server:
            uri = f"nbd://127.0.0.1:{server.address.port}"
            print(f"reference server listening on {server.address}", flush=True)
            for client in clients:
                results.append(_run_client(client, uri, directory, server))
    wall = time.monotonic() - started
    _print_table(results)
    args.out.mkdir(parents=True, exist_ok=True)
    report = args.out / f"smoke-{time.strftime('%Y%m%d-%H%M%S')}.json"
    report.write_text(json.dumps({"wall_seconds": round(wall, 2), "results": results}, indent=2))
    failed = [r for r in results if r["verdict"] != "pass"]
    print(f"\n{len(results) - len(failed)} passed, {len(failed)} failed "
          f"(wall time {wall:.1f} s; report {report})")
    return 1 if failed else 0


def _run_client(client: dict, uri: str, directory: Path, server) -> dict:
    program = client["program"]
    result = {"client": client["name"], "program": program, "verdict": "error", "detail": ""}
    if shutil.which(program, path=_env()["PATH"]) is None:
        result["detail"] = f"{program} is not installed: run scripts/bootstrap"
        return result
    result["version"] = _version(client.get("version", [program, "--version"]))
    argv = [part.replace("{uri}", uri).replace("{dir}", str(directory))
            for part in client["argv"]]
    before = len(server.server.records)
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=CLIENT_TIMEOUT,
                              env=_env(), stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        result["detail"] = f"timed out after {CLIENT_TIMEOUT:.0f} s"
        return result
    # Sessions end asynchronously on the server's thread; give them a moment.
    deadline = time.monotonic() + 5
    while len(server.server.records) == before and time.monotonic() < deadline:
        time.sleep(0.02)
    sessions = [record.summary() for record in server.server.records[before:]]
    result["sessions"] = sessions
    output = proc.stdout + proc.stderr
    broken = [v for s in sessions for v in s["client_violations"]]
    bad_output = [text for text in client.get("fail_if", []) if text in output]
    if proc.returncode != 0:
        result.update(verdict="fail", detail=f"exit {proc.returncode}: {output.strip()[-300:]}")
    elif bad_output or broken:
        result.update(verdict="fail", detail="; ".join(bad_output + broken))
    elif not sessions:
        result.update(verdict="error", detail="the server saw no connection")
    else:
        result.update(verdict="pass")
    return result


def _print_table(results: list[dict]) -> None:
    print()
    header = f"{'client':38} {'verdict':7} {'conns':5} {'negotiated (first connection)'}"
    print(header)
    print("-" * len(header))
    for result in results:
        sessions = result.get("sessions", [])
        first = sessions[0] if sessions else {}
        negotiated = ", ".join(filter(None, [
            first.get("style", ""),
            "TLS" if first.get("tls") else "",
            "extended-headers" if first.get("extended_headers") else (
                "structured-replies" if first.get("structured_replies") else "simple-replies"),
            ("contexts=" + "+".join(first["meta_contexts"])) if first.get("meta_contexts") else "",
        ])) if first else result.get("detail", "")
        print(f"{result['client']:38} {result['verdict']:7} {len(sessions):5} {negotiated}")
        if first:
            print(f"{'':52}options: {'; '.join(first['options'])}")
            print(f"{'':52}commands: {first['commands']}")
        if result["verdict"] != "pass" and result.get("detail"):
            print(f"{'':52}detail: {result['detail']}")


if __name__ == "__main__":
    sys.exit(run(argparse.Namespace(clients=CLIENTS_FILE, out=REPO / "reports")))
