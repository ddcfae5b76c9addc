"""``nbd-harness serve``: run the reference server in the foreground."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from dataclasses import replace
from pathlib import Path

from harness.errors import UserError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="run the reference NBD server",
        description="Run the strict reference NBD server. Exports come from a TOML file "
        "(--config) or from --export NAME=memory:64M (also NAME=file:PATH, "
        "NAME=layers:TOP,BASE; add :ro for read-only). It listens on a kernel-chosen "
        "127.0.0.1 port unless told otherwise, and prints the address it listens on.",
    )
    parser.add_argument("--config", type=Path,
                        help="TOML file with [server], [limits] (docs/server-limits.md) and "
                        "[[export]]")
    parser.add_argument("--export", action="append", default=[], metavar="NAME=KIND:ARG",
                        help="add an export, e.g. disk=memory:64M (repeatable)")
    parser.add_argument("--listen", metavar="URL",
                        help="tcp://HOST:PORT (port 0 = kernel-chosen) or unix:/PATH")
    parser.add_argument("--port-file", type=Path, help="write the chosen TCP port here")
    parser.add_argument("--tls", choices=["off", "optional", "required"],
                        help="TLS mode: NOTLS, SELECTIVETLS or FORCEDTLS")
    parser.add_argument("--tls-certificates", type=Path, metavar="DIR",
                        help="dir with ca-cert.pem, server-cert.pem, server-key.pem")
    parser.add_argument("--handshake", choices=["fixed-newstyle", "newstyle", "oldstyle"])
    parser.add_argument("--profile", metavar="NAME",
                        help="behave on the wire as that server version would, e.g. qemu-2.10, "
                        "nbdkit-1.32, nbd-server-3.24 (default: reference, the full protocol)")
    parser.add_argument("--list-profiles", action="store_true",
                        help="print the profile names and exit")
    parser.add_argument("--fault", action="append", default=[], metavar="NAME",
                        help="break the spec on purpose in the way NAME says (repeatable; "
                        "also fault = [...] in [server]; see --list-faults, docs/faults.md)")
    parser.add_argument("--list-faults", action="store_true",
                        help="print the fault names, classes and descriptions and exit")
    parser.add_argument("--verbose", "-v", action="store_true", help="log every session")
    parser.set_defaults(func=run)


def build_config(args: argparse.Namespace):
    """The server configuration the command line describes.

    Command-line settings override the file's ``[server]`` table and go through
    the same validation, so a mistake gets the same one-line message either way.
    """
    import tomllib

    from reference_server.config import ConfigError, config_from_dict, parse_export_spec

    if args.config is None and not args.export:
        raise UserError("give --config FILE or at least one --export NAME=memory:SIZE")
    document: dict = {}
    base_dir = Path.cwd()
    if args.config is not None:
        try:
            document = tomllib.loads(args.config.read_text())
        except FileNotFoundError:
            raise ConfigError(f"{args.config}: no such configuration file") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{args.config}: cannot read: {exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{args.config}: not valid TOML: {exc}") from None
        base_dir = args.config.absolute().parent
    server = dict(document.get("server", {})) if isinstance(document.get("server"), dict) else (
        document.get("server", {}))
    if isinstance(server, dict):
        server.pop("fault", None)  # the faults are not configuration: resolve_faults reads them
    overrides = {"listen": args.listen, "port_file": args.port_file, "tls": args.tls,
                 "tls_certificates": args.tls_certificates, "handshake": args.handshake}
    for key, value in overrides.items():
        if value is not None:
            server[key] = str(Path(value).absolute()) if isinstance(value, Path) else value
    if server or "server" in document:
        document = {**document, "server": server}
    config = config_from_dict(document, base_dir=base_dir, source=args.config)
    extra = [parse_export_spec(spec) for spec in args.export]
    names = [e.name for e in config.exports] + [e.name for e in extra]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"export {duplicates[0]!r} is defined twice (export names are unique)")
    return replace(config, exports=config.exports + tuple(extra))


def run(args: argparse.Namespace) -> int:
    from reference_server.server import ReferenceServer

    if getattr(args, "list_profiles", False):
        from reference_server.profiles import list_profiles

        print("\n".join(list_profiles()))
        return 0
    if getattr(args, "list_faults", False):
        from harness.faults import list_lines
        from reference_server.faults import FAULTS

        print(list_lines(FAULTS))
        return 0
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(message)s")
    features = resolve_features(args)
    config = build_config(args)
    faults = resolve_faults(args)

    async def main() -> None:
        # No session records: nothing reads them here, and a long run would grow them.
        server = ReferenceServer(config, features, faults, keep_records=False)
        await server.start()
        names = ", ".join(repr(e.name) for e in config.exports)
        broken = f"; faults: {', '.join(sorted(faults.names))}" if faults else ""
        print(f"nbd-harness serve: listening on {server.address} (exports: {names}; "
              f"profile: {features.name}{broken})", flush=True)
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await server.stop()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
    return 0


def resolve_features(args: argparse.Namespace):
    """The feature set to serve with: the full protocol, or ``--profile NAME``'s.

    An unknown name is a user error listing the known profiles.
    """
    from reference_server.features import FULL
    from reference_server.profiles import profile

    name = getattr(args, "profile", None)
    return FULL if name is None else profile(name)


def resolve_faults(args: argparse.Namespace):
    """The faults to serve with: ``--fault`` names and the config's ``fault = [...]``.

    None (the healthy server) when there are none; an unknown name is a user error.
    """
    import tomllib

    from reference_server.config import ConfigError
    from reference_server.faults import ServerFaults

    names = list(getattr(args, "fault", []) or [])
    if getattr(args, "config", None) is not None:
        server = tomllib.loads(args.config.read_text()).get("server", {})
        listed = server.get("fault", []) if isinstance(server, dict) else []
        if not isinstance(listed, list) or not all(isinstance(n, str) for n in listed):
            raise ConfigError(f'{args.config}: [server] fault must be a list of names, e.g. '
                              'fault = ["reply-bad-magic"]')
        names = listed + names
    return ServerFaults.from_names(names)


if __name__ == "__main__":
    sys.exit(run(argparse.Namespace()))
