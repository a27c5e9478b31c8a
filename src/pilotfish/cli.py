"""The `pilotfish` command: `serve`, `validate`, `translate`, `apply`, `get`, `delete`,
`bootstrap`, `cert`, `demo`.

Each subcommand lives in `pilotfish.commands.<name>`; this module only parses and dispatches,
and turns user mistakes (`CommandError`) into one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from pilotfish import __version__
from pilotfish.commands import CommandError

__all__ = ["COMMANDS", "main"]

COMMANDS = ("serve", "validate", "translate", "apply", "get", "delete", "bootstrap", "cert", "demo")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pilotfish", description="An Envoy xDS control plane, in Python."
    )
    parser.add_argument("--version", action="version", version=f"pilotfish {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"pilotfish.commands.{name}")
        except ModuleNotFoundError as error:
            if error.name != f"pilotfish.commands.{name}":
                raise
            continue  # not built yet
        module.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        status: int = args.func(args)
    except CommandError as error:
        print(f"pilotfish {args.command}: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return status
