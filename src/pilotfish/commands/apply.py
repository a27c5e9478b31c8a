"""`pilotfish apply`: validate manifests, then write them all to the store in one transaction.

All or nothing: if any object is invalid (or a file cannot be read), every problem is printed as
`file[index] Kind namespace/name: field.path: reason` and nothing is written; otherwise every
object is written at one etcd revision, so every replica sees the whole change at once.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from pilotfish.commands import CommandError
from pilotfish.commands.store import add_store_argument, open_store
from pilotfish.commands.validate import load_all, one_line
from pilotfish.etcd import ApplyRefused, EtcdError

__all__ = ["register", "run"]


def register(commands: Any) -> None:
    """Add the `apply` subcommand."""
    parser = commands.add_parser(
        "apply",
        help="validate manifests and write them to the config store (all or nothing)",
        description=(
            "Load and validate every manifest (files or directories), then write every object "
            "to the store in one transaction. If any object is invalid nothing is written: "
            "each problem is printed and the exit status is 1. Exit status 2: usage error or "
            "store unreachable."
        ),
    )
    parser.add_argument("paths", nargs="+", metavar="FILE_OR_DIR", help="manifests to apply")
    add_store_argument(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Apply; exit status 1 when anything is invalid (then nothing was written)."""
    result, _files = load_all(args.paths)
    for skipped in result.skipped:
        print(f"note: skipped {skipped} (not stored)", file=sys.stderr)
    if result.errors:
        for error in result.errors:
            print(one_line(str(error)))
        print(f"nothing applied: {len(result.errors)} problem(s)", file=sys.stderr)
        return 1
    if not result.objects:
        raise CommandError("no objects to apply")
    store = open_store(args)

    async def write() -> int:
        try:
            return await store.apply(result.objects)
        finally:
            await store.close()

    try:
        revision = asyncio.run(write())
    except ApplyRefused as refused:
        for error in refused.errors:
            print(one_line(str(error)))
        print(f"nothing applied: {len(refused.errors)} problem(s)", file=sys.stderr)
        return 1
    except EtcdError as error:
        raise CommandError(f"{store.url}: {error}") from error
    for obj in result.objects:
        print(f"{obj.kind} {obj.namespace}/{obj.name} applied")
    print(f"{len(result.objects)} objects applied at revision {revision}", file=sys.stderr)
    return 0
