"""``nbd-harness scenarios``: list, validate, show and try scenario files.

    nbd-harness scenarios list [--group commands] [--role client] [--json]
    nbd-harness scenarios validate [FILE ...]
    nbd-harness scenarios show read-past-end [--json]
    nbd-harness scenarios run read-past-end [--profile qemu-2.10 | --uri nbd://...]
    nbd-harness scenarios run copy-out --client nbdcopy

``validate`` checks every file (or the ones named) and prints one
``file:line: what is wrong`` line per bad file; it exits 1 when any is bad.
``run`` runs one scenario once: its server role against ``--uri`` (or the
reference server in ``--profile``), or with ``--client PROGRAM`` its client
role against the reference server; the matrix runs them at scale.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from harness.client.options import DEFAULT_TIMEOUT
from harness.errors import UserError


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``scenarios`` sub-command."""
    parser = subparsers.add_parser(
        "scenarios",
        help="list, validate, show or run scenario files",
        description="Work with the scenario library (scenarios/*/*.yaml): list it, validate "
        "files against the schema, show one scenario, or run one scenario once.",
    )
    parser.add_argument("--dir", type=Path, default=None, metavar="DIR",
                        help="scenario library folder (default: the ones shipped with nbd-harness)")
    commands = parser.add_subparsers(dest="scenarios_command", metavar="ACTION")

    listing = commands.add_parser("list", help="list the scenarios")
    listing.add_argument("--group", help="only this group (folder), e.g. commands")
    listing.add_argument("--role", choices=["server", "client"], help="only scenarios with it")
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    listing.set_defaults(func=run_list)

    validate = commands.add_parser("validate", help="check scenario files against the schema")
    validate.add_argument("files", nargs="*", type=Path, metavar="FILE",
                          help="files to check (default: the whole library)")
    validate.set_defaults(func=run_validate)

    show = commands.add_parser("show", help="show one scenario as loaded")
    show.add_argument("name", metavar="NAME", help="scenario name, group/name, or a file")
    show.add_argument("--json", action="store_true", help="machine-readable output")
    show.set_defaults(func=run_show)

    run = commands.add_parser("run", help="run one scenario once")
    run.add_argument("name", metavar="NAME", help="scenario name, group/name, or a file")
    target = run.add_mutually_exclusive_group()
    target.add_argument("--uri", help="server role: the server under test (nbd://...)")
    target.add_argument("--client", metavar="PROGRAM",
                        help="client role: a program of matrix/client-actions.toml")
    run.add_argument("--profile", default="reference",
                     help="reference-server profile (default: reference, the full protocol)")
    run.add_argument("--tls-dir", type=Path, metavar="DIR",
                     help="with --uri: the PKI directory of a TLS export")
    run.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, metavar="SECONDS",
                     help=f"bound on each network wait (default {DEFAULT_TIMEOUT:g})")
    run.add_argument("--json", action="store_true", help="machine-readable output")
    run.set_defaults(func=run_run)
    parser.set_defaults(func=lambda args: _usage(parser))


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def _root(args: argparse.Namespace) -> Path:
    from harness.scenarios import LIBRARY

    root = args.dir or LIBRARY
    if not root.is_dir():
        raise UserError(f"{root}: no such scenario folder")
    return root


def run_list(args: argparse.Namespace) -> int:
    from harness.scenarios import load_library

    scenarios = load_library(_root(args))
    if args.group:
        scenarios = [s for s in scenarios if s.group == args.group]
    if args.role:
        scenarios = [s for s in scenarios if args.role in s.roles]
    if args.json:
        rows = [{"id": s.id, "name": s.name, "group": s.group, "roles": list(s.roles),
                 "description": s.description, "spec": list(s.spec),
                 "requires": {"server": sorted(s.requires_server),
                              "client": sorted(s.requires_client)}} for s in scenarios]
        print(json.dumps(rows, indent=1))
        return 0
    width = max((len(s.id) for s in scenarios), default=10)
    for scenario in scenarios:
        roles = "+".join(scenario.roles)
        print(f"{scenario.id:{width}}  {roles:13}  {scenario.description}")
    sys.stdout.flush()
    print(f"{len(scenarios)} scenario(s)", file=sys.stderr)
    return 0


def run_validate(args: argparse.Namespace) -> int:
    from harness.scenarios import ScenarioError, load_scenario, validate_library

    root = _root(args)
    if args.files:
        errors = []
        for path in args.files:
            try:
                load_scenario(path, root=root)
            except ScenarioError as exc:
                errors.append(exc)
        count = len(args.files)
    else:
        scenarios, errors = validate_library(root)
        count = len(scenarios) + len(errors)
    for error in errors:
        print(error, file=sys.stderr)
    good = count - len(errors)
    print(f"{good} of {count} scenario file(s) valid")
    return 1 if errors else 0


def run_show(args: argparse.Namespace) -> int:
    from harness.scenarios import find_scenario

    scenario = find_scenario(args.name, _root(args))
    summary = scenario.summary()
    if args.json:
        print(json.dumps(summary, indent=1))
        return 0
    print(f"{scenario.id}: {scenario.description}")
    print(f"  file: {summary['path']}")
    print(f"  spec: {'; '.join(scenario.spec)}")
    print(f"  roles: {', '.join(scenario.roles)}")
    requires = summary["requires"]
    print(f"  requires: server {requires['server'] or '-'}, client {requires['client'] or '-'}")
    if scenario.fallback is not None:
        why = f" ({scenario.fallback.why})" if scenario.fallback.why else ""
        print(f"  fallback: {scenario.fallback.outcome}{why}")
    export = summary["export"]
    print(f"  export: {export['name']!r}, {export['size']} bytes, {export['backend']}, "
          f"tls {export['tls']}, {export['handshake']}"
          + (", read-only" if export["read_only"] else ""))
    for title, steps in (("steps", scenario.steps), ("client steps", scenario.client_steps)):
        if steps:
            print(f"  {title}:")
            for step in steps:
                on = f" [on {step.on}]" if step.on != "main" else ""
                expect = f" expect {dict(step.expect)}" if step.expect else ""
                print(f"    line {step.line}: {step.action} {dict(step.args)}{on}{expect}")
    return 0


def run_run(args: argparse.Namespace) -> int:
    from harness.client_role import run_client_scenario, serve_reference
    from harness.scenarios import find_scenario
    from harness.server_role import run_server_scenario
    from reference_server.profiles import profile

    scenario = find_scenario(args.name, _root(args))
    features = profile(args.profile)
    if args.client:
        if "client" not in scenario.roles:
            raise UserError(f"{scenario.id} has no client role")
        result = run_client_scenario(scenario, args.client, features, timeout=args.timeout)
    else:
        if "server" not in scenario.roles:
            raise UserError(f"{scenario.id} has no server role (give --client PROGRAM)")
        if args.uri:
            result = run_server_scenario(scenario, args.uri, timeout=args.timeout,
                                         tls_dir=args.tls_dir)
        else:
            with tempfile.TemporaryDirectory(prefix="nbdh-scenario-") as scratch, \
                    serve_reference(scenario.export, features, Path(scratch)) as served:
                result = run_server_scenario(scenario, served.uri(), timeout=args.timeout,
                                             tls_dir=served.tls_dir)
    if args.json:
        print(json.dumps(result.as_dict(), indent=1))
    else:
        print(f"{scenario.id} ({result.role}): {result.verdict}"
              + (f": {result.detail}" if result.detail else ""))
        for step in result.steps:
            detail = f": {step.detail}" if step.detail else ""
            print(f"  {step.phase}[{step.index}] line {step.line} {step.action}: "
                  f"{step.status}{detail}")
    return 0 if result.verdict in ("pass", "unsupported", "expected-fallback") else 1

