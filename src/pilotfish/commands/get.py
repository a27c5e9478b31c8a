"""`pilotfish get`: what the config store holds, as a table, YAML or names."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

import yaml

from pilotfish.commands import CommandError
from pilotfish.commands.store import add_store_argument, canonical_kind, open_store
from pilotfish.etcd import EtcdError
from pilotfish.etcd.keys import encode
from pilotfish.sources import ConfigObject

__all__ = ["register", "run"]


def register(commands: Any) -> None:
    """Add the `get` subcommand."""
    parser = commands.add_parser(
        "get",
        help="list objects in the config store",
        description="List the objects in the store, optionally of one kind, namespace or name.",
    )
    parser.add_argument("kind", nargs="?", help="e.g. VirtualService, vs, destinationrules")
    parser.add_argument("name", nargs="?", help="one object's name (needs KIND)")
    parser.add_argument("-n", "--namespace", help="only this namespace")
    parser.add_argument(
        "-o", "--output", choices=["table", "yaml", "json", "name"], default="table"
    )
    add_store_argument(parser)
    parser.set_defaults(func=run)


def _documents(objects: list[ConfigObject]) -> list[Any]:
    return [yaml.safe_load(encode(obj)) for obj in objects]


def run(args: argparse.Namespace) -> int:
    """Print the objects; exit status 1 when a named object is not there."""
    kind = canonical_kind(args.kind) if args.kind else None
    if args.name and kind is None:
        raise CommandError("a NAME needs a KIND")
    store = open_store(args)

    async def read() -> list[ConfigObject]:
        try:
            return await store.get(kind, args.namespace, args.name)
        finally:
            await store.close()

    try:
        objects = asyncio.run(read())
    except EtcdError as error:
        raise CommandError(f"{store.url}: {error}") from error
    if args.output == "yaml":
        sys.stdout.write(yaml.safe_dump_all(_documents(objects), sort_keys=False))
    elif args.output == "json":
        print(json.dumps(_documents(objects), indent=2))
    elif args.output == "name":
        for obj in objects:
            print(f"{obj.kind}/{obj.namespace}/{obj.name}")
    else:
        rows = [("KIND", "NAMESPACE", "NAME")] + [(o.kind, o.namespace, o.name) for o in objects]
        widths = [max(len(row[i]) for row in rows) for i in range(3)]
        for row in rows:
            print(
                "  ".join(
                    cell.ljust(width) for cell, width in zip(row, widths, strict=True)
                ).rstrip()
            )
    if args.name and not objects:
        print(f"{kind} {args.namespace or 'default'}/{args.name} not found", file=sys.stderr)
        return 1
    return 0
