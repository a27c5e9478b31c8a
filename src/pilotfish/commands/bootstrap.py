"""`pilotfish bootstrap`: print an Envoy bootstrap that connects to a pilotfish server."""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from typing import Any

from pilotfish.bootstrap import envoy_bootstrap
from pilotfish.commands import address

__all__ = ["register", "rotated"]


def register(commands: Any) -> None:
    """Add the `bootstrap` subcommand."""
    boot = commands.add_parser(
        "bootstrap",
        help="print an Envoy bootstrap that connects to a pilotfish server",
        description="Print an Envoy v3 bootstrap (JSON) pointed at a pilotfish xDS server.",
    )
    boot.add_argument("--node-id", required=True, help="the proxy's node id")
    boot.add_argument("--cluster", required=True, help="the proxy's service cluster")
    boot.add_argument(
        "--xds-address",
        type=address,
        action="append",
        required=True,
        help="HOST:PORT of a pilotfish server (repeat for replicas: the proxy prefers them in "
        "an order rotated by its node id, and fails over along it)",
    )
    boot.add_argument("--per-type", action="store_true", help="one stream per type instead of ADS")
    boot.add_argument("--admin-port", type=int, default=0, help="Envoy admin port (0: any)")
    who = boot.add_argument_group(
        "identity (node metadata the Istio translators read, as Istio's agent sets it)"
    )
    who.add_argument("--namespace", help="the workload's namespace (NAMESPACE)")
    who.add_argument("--label", action="append", type=_pair, default=[], metavar="KEY=VALUE",
                     help="a workload label (LABELS); repeat")  # fmt: skip
    who.add_argument("--service-account", help="the workload's service account")
    who.add_argument("--gateway", action="store_true", help="this Envoy is a gateway")
    where = boot.add_argument_group("placement on a host without traffic capture")
    where.add_argument("--port-map", action="append", type=_ports, default=[],
                       metavar="MESH_PORT=BIND_PORT",
                       help="bind a mesh port's listener on another port; repeat")  # fmt: skip
    where.add_argument("--app-port", action="append", type=_ports, default=[],
                       metavar="PORT=APP_PORT",
                       help="where the application behind a sidecar listens; repeat")  # fmt: skip
    where.add_argument("--workload", help="the workload (pod, WorkloadEntry) name")
    secure = boot.add_argument_group("a secured xDS port (serve --xds-tls / --xds-token)")
    secure.add_argument("--xds-ca", metavar="PEM", help="trust this CA for the control plane")
    secure.add_argument("--xds-cert", metavar="PEM", help="client certificate (pilotfish cert)")
    secure.add_argument("--xds-key", metavar="PEM", help="its private key")
    secure.add_argument("--xds-token", help="a development token instead of a certificate")
    boot.set_defaults(func=run)


def _pair(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def _ports(text: str) -> tuple[str, int]:
    key, value = _pair(text)
    if not key.isdigit() or not value.isdigit():
        raise argparse.ArgumentTypeError(f"expected PORT=PORT, got {text!r}")
    return key, int(value)


def _metadata(args: argparse.Namespace) -> dict[str, object]:
    metadata: dict[str, object] = {}
    if args.namespace:
        metadata["NAMESPACE"] = args.namespace
    if args.label:
        metadata["LABELS"] = dict(args.label)
    if args.service_account:
        metadata["SERVICE_ACCOUNT"] = args.service_account
    if args.gateway:
        metadata["PROXY_KIND"] = "gateway"
    if args.port_map:
        metadata["PORT_MAP"] = dict(args.port_map)
    if args.app_port:
        metadata["APP_PORTS"] = dict(args.app_port)
    if args.workload:
        metadata["WORKLOAD"] = args.workload
    return metadata


def rotated(addresses: list[tuple[str, int]], node_id: str) -> list[tuple[str, int]]:
    """The replicas in this node's order of preference: the list rotated by a hash of the
    node id, so proxies spread over replicas and each has all the others to fall back on."""
    if len(addresses) < 2:
        return addresses
    start = int.from_bytes(hashlib.blake2b(node_id.encode(), digest_size=4).digest(), "big")
    start %= len(addresses)
    return addresses[start:] + addresses[:start]


def run(args: argparse.Namespace) -> int:
    """Print the bootstrap."""
    bootstrap = envoy_bootstrap(
        node_id=args.node_id,
        cluster=args.cluster,
        xds_address=rotated(args.xds_address, args.node_id),
        ads=not args.per_type,
        admin_port=args.admin_port,
        node_metadata=_metadata(args) or None,
        xds_ca=args.xds_ca,
        xds_tls_cert=args.xds_cert,
        xds_tls_key=args.xds_key,
        xds_token=args.xds_token,
    )
    json.dump(bootstrap, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0
