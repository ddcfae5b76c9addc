"""The ``nbd-harness`` command: one sub-command per module in ``harness.commands``.

Each command module provides ``register(subparsers)``, which adds its parser and
sets ``func`` to a ``run(args) -> int``.  A user mistake raises
:class:`~harness.errors.UsageError` (or any ``ValueError`` subclass the command
documents as user-facing) and prints one line, never a traceback.

Building the parser imports every command module, so ``nbd-harness --help`` (and
every command) pays for their top-level imports: a command module imports what
only its ``run`` needs inside ``run``.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from harness.errors import UserError

COMMAND_MODULES = [
    "harness.commands.run",
    "harness.commands.report",
    "harness.commands.check",
    "harness.commands.check_client",
    "harness.commands.serve",
    "harness.commands.capture",
    "harness.commands.info",
    "harness.commands.dissect",
    "harness.commands.lint",
    "harness.commands.peers",
    "harness.commands.scenarios",
    "harness.commands.replay",
    "harness.commands.fuzz",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nbd-harness",
        description="NBD protocol conformance and interop harness: a strict reference "
        "server and client, real peers (qemu, nbdkit, libnbd, nbd-server) and wire checks.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"nbd-harness {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `nbd-harness ... | head`: the reader left; say nothing more, and keep Python's
        # exit-time flush of stdout from failing again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
