"""What `apply`, `get` and `delete` share: the `--store` flag and a connection to it.

The store is named by a URL, `etcd://HOST:PORT[,HOST:PORT...]/PREFIX`, from `--store` or
`PILOTFISH_STORE`, so a shell set up for one mesh needs it once.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from pilotfish.commands import CommandError
from pilotfish.etcd import EtcdStore, StoreURL
from pilotfish.sources.manifests import KINDS

__all__ = ["add_store_argument", "canonical_kind", "open_store", "store_url"]

# What users type for a kind (as kubectl accepts `vs` or `virtualservices`).
_SHORT = {"vs": "VirtualService", "dr": "DestinationRule", "se": "ServiceEntry",
          "we": "WorkloadEntry", "gw": "Gateway", "pa": "PeerAuthentication",
          "ap": "AuthorizationPolicy", "svc": "Service"}  # fmt: skip


def add_store_argument(parser: Any) -> None:
    """Add `--store URL` (default: $PILOTFISH_STORE)."""
    parser.add_argument(
        "--store",
        metavar="URL",
        help="where the config lives: etcd://HOST:PORT[,HOST:PORT...]/PREFIX "
        "(default: $PILOTFISH_STORE)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="give up when the store does not answer within this time (default 5)",
    )


def store_url(args: argparse.Namespace) -> StoreURL:
    """The store the command works on; a missing or malformed URL is a `CommandError`."""
    text = args.store or os.environ.get("PILOTFISH_STORE")
    if not text:
        raise CommandError("no store: give --store etcd://HOST:PORT/PREFIX (or PILOTFISH_STORE)")
    try:
        return StoreURL.parse(text)
    except ValueError as error:
        raise CommandError(f"--store {text}: {error}") from error


def open_store(args: argparse.Namespace) -> EtcdStore:
    """A client of the store named by `args` (close it when done)."""
    return EtcdStore(store_url(args), timeout=args.timeout)


def canonical_kind(text: str) -> str:
    """`virtualservice`, `VirtualServices` or `vs` -> `VirtualService`."""
    lowered = text.lower()
    if lowered in _SHORT:
        return _SHORT[lowered]
    for kind in KINDS:
        singular = kind.lower()
        plural = singular[:-1] + "ies" if singular.endswith("y") else singular + "s"
        if lowered in (singular, plural, singular + "es"):
            return kind
    raise CommandError(f"unknown kind {text!r}; known: {', '.join(sorted(KINDS))}")
