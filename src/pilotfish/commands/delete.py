"""`pilotfish delete`: remove objects from the config store, named or as in manifest files."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from pilotfish.commands import CommandError
from pilotfish.commands.store import add_store_argument, canonical_kind, open_store
from pilotfish.commands.validate import load_all, one_line
from pilotfish.etcd import EtcdError

__all__ = ["register", "run"]

_Key = tuple[str, str, str]


def register(commands: Any) -> None:
    """Add the `delete` subcommand."""
    parser = commands.add_parser(
        "delete",
        help="delete objects from the config store",
        description=(
            "Delete KIND NAME (in --namespace, default 'default'), or every object defined in "
            "the files given with -f, in one transaction. Objects that are not there are "
            "reported and make the exit status 1; the others are deleted."
        ),
    )
    parser.add_argument("kind", nargs="?", help="e.g. VirtualService or vs")
    parser.add_argument("names", nargs="*", metavar="NAME")
    parser.add_argument("-n", "--namespace", default="default")
    parser.add_argument(
        "-f", "--filename", action="append", default=[], metavar="FILE_OR_DIR",
        help="delete the objects these manifests define",
    )  # fmt: skip
    add_store_argument(parser)
    parser.set_defaults(func=run)


def _keys(args: argparse.Namespace) -> list[_Key]:
    if args.filename:
        if args.kind:
            raise CommandError("give KIND NAME or -f FILE, not both")
        result, _ = load_all(args.filename)
        if result.errors:
            problems = "; ".join(one_line(str(e)) for e in result.errors[:3])
            raise CommandError(f"cannot read the objects to delete: {problems}")
        return [obj.key for obj in result.objects]
    if not args.kind or not args.names:
        raise CommandError("give KIND NAME... (or -f FILE)")
    kind = canonical_kind(args.kind)
    return [(kind, args.namespace, name) for name in args.names]


def run(args: argparse.Namespace) -> int:
    """Delete; exit status 1 when some object was not there."""
    keys = _keys(args)
    store = open_store(args)

    async def remove() -> tuple[list[_Key], int]:
        try:
            # The keys as stored: a value that does not load (written around pilotfish) is
            # exactly what an operator must be able to delete.
            values, _ = await store.list_all()
            present = {kv.key for kv in values}
            found = [key for key in keys if store.key(key) in present]
            revision = await store.delete(found) if found else 0
            return found, revision
        finally:
            await store.close()

    try:
        found, revision = asyncio.run(remove())
    except EtcdError as error:
        raise CommandError(f"{store.url}: {error}") from error
    for kind, namespace, name in keys:
        state = "deleted" if (kind, namespace, name) in found else "not found"
        print(f"{kind} {namespace}/{name} {state}")
    if found:
        print(f"{len(found)} objects deleted at revision {revision}", file=sys.stderr)
    return 0 if len(found) == len(keys) else 1
