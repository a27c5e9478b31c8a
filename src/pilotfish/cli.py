"""The `pilotfish` command. Today: `bootstrap`; `serve`, `validate` and the rest come next."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from pilotfish import __version__
from pilotfish.bootstrap import envoy_bootstrap

__all__ = ["main"]


def _address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pilotfish", description="An Envoy xDS control plane, in Python."
    )
    parser.add_argument("--version", action="version", version=f"pilotfish {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    boot = commands.add_parser(
        "bootstrap",
        help="print an Envoy bootstrap that connects to a pilotfish server",
        description="Print an Envoy v3 bootstrap (JSON) pointed at a pilotfish xDS server.",
    )
    boot.add_argument("--node-id", required=True, help="the proxy's node id")
    boot.add_argument("--cluster", required=True, help="the proxy's service cluster")
    boot.add_argument(
        "--xds-address",
        type=_address,
        action="append",
        required=True,
        help="HOST:PORT of a pilotfish server (repeat for several replicas)",
    )
    boot.add_argument("--per-type", action="store_true", help="one stream per type instead of ADS")
    boot.add_argument("--admin-port", type=int, default=0, help="Envoy admin port (0: any)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status."""
    args = _parser().parse_args(argv)
    if args.command == "bootstrap":
        bootstrap = envoy_bootstrap(
            node_id=args.node_id,
            cluster=args.cluster,
            xds_address=args.xds_address,
            ads=not args.per_type,
            admin_port=args.admin_port,
        )
        json.dump(bootstrap, sys.stdout, indent=2)
        sys.stdout.write("\n")
    return 0
