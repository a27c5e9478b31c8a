"""`pilotfish translate`: a dry run of the translators for one proxy, printed as JSON or YAML.

Like `istioctl proxy-config ... -o json`, but from files: what a sidecar or gateway with the given
identity would receive (listeners, routes, clusters, endpoints, secrets), without a server.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

import yaml
from google.protobuf import json_format
from google.protobuf.message import Message

from pilotfish.commands import CommandError
from pilotfish.commands.validate import load_all, one_line
from pilotfish.registry import Registry
from pilotfish.translators import TRANSLATOR_VERSION, Proxy, ProxyKind, translate

__all__ = ["TYPES", "label", "locality", "register", "run"]

TYPES = {
    "lds": "listeners",
    "rds": "routes",
    "cds": "clusters",
    "eds": "endpoints",
    "sds": "secrets",
}
"""Short type name -> key of its resources in the output, in output order."""


def label(text: str) -> tuple[str, str]:
    """argparse type for KEY=VALUE."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def locality(text: str) -> str:
    """argparse type for REGION[/ZONE[/SUBZONE]]."""
    parts = text.split("/")
    if len(parts) > 3 or not all(parts):
        raise argparse.ArgumentTypeError(f"expected REGION[/ZONE[/SUBZONE]], got {text!r}")
    return text


def register(commands: Any) -> None:
    """Add the `translate` subcommand."""
    parser = commands.add_parser(
        "translate",
        help="print the Envoy config one proxy would get from manifest files (dry run)",
        description=(
            "Load manifests, build the service registry from them and print the Envoy "
            "resources (listeners, routes, clusters, endpoints, secrets) that a sidecar or "
            "gateway with the given identity would receive, with each type's version. "
            "Workloads (endpoints) come only from the manifests: WorkloadEntry, ServiceEntry "
            "endpoints, and EndpointSlice with the Pods it names; Deployments are not run, so "
            "Kubernetes Services without EndpointSlices have no endpoints. No SDS secrets are "
            "printed: ISTIO_MUTUAL clusters refer to the secrets 'default' and 'ROOTCA', which "
            "'pilotfish serve' issues from its certificate authority. Exit status: 0 on "
            "success, 1 when a manifest is invalid (unless --allow-errors), 2 on a usage error."
        ),
    )
    parser.add_argument(
        "paths", nargs="+", metavar="FILE_OR_DIR", help="manifest files or directories"
    )
    parser.add_argument(
        "--proxy-id",
        help="the proxy's node id (default: Istio style, "
        "sidecar~127.0.0.1~<app>.<ns>~<ns>.svc.cluster.local, or router~... with --gateway)",
    )
    parser.add_argument("--namespace", default="default", help="the proxy's namespace")
    parser.add_argument(
        "--label",
        type=label,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a label of the proxy's workload (repeat for several)",
    )
    parser.add_argument(
        "--service-account", default="default", help="the workload's service account"
    )
    parser.add_argument(
        "--gateway", action="store_true", help="translate for a gateway instead of a sidecar"
    )
    parser.add_argument(
        "--locality",
        type=locality,
        metavar="REGION/ZONE/SUBZONE",
        help="the proxy's locality (for locality-aware load balancing)",
    )
    parser.add_argument(
        "--type",
        choices=tuple(TYPES),
        action="append",
        dest="types",
        help="print only resources of this type (repeat for several; default: all)",
    )
    parser.add_argument(
        "-o", "--output", choices=("json", "yaml"), default="json", help="output format"
    )
    parser.add_argument(
        "--allow-errors",
        action="store_true",
        help="report invalid objects on stderr and translate the valid ones",
    )
    parser.set_defaults(func=run)


def _default_id(kind: str, namespace: str, labels: dict[str, str]) -> str:
    prefix = "router" if kind == "gateway" else "sidecar"
    name = labels.get("app") or labels.get("istio") or "dry-run"
    return f"{prefix}~127.0.0.1~{name}.{namespace}~{namespace}.svc.cluster.local"


def _plain(value: Any) -> Any:
    """`MessageToDict` gives OrderedDicts for Any fields; yaml.safe_dump wants plain dicts."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _to_dict(message: Message) -> dict[str, Any]:
    data: dict[str, Any] = _plain(json_format.MessageToDict(message))
    return data


def run(args: argparse.Namespace) -> int:
    """Translate and print; exit status 1 on invalid input without `--allow-errors`."""
    loaded, _ = load_all(args.paths)
    for error in loaded.errors:
        print(one_line(str(error)), file=sys.stderr)
    if loaded.errors and not args.allow_errors:
        count = len(loaded.errors)
        print(
            f"pilotfish translate: {count} problem{'' if count == 1 else 's'} in the input; "
            "fix them or pass --allow-errors",
            file=sys.stderr,
        )
        return 1
    if loaded.skipped:
        print(
            f"note: skipped {len(loaded.skipped)} document(s) of kinds pilotfish does not use "
            "(see `pilotfish validate`)",
            file=sys.stderr,
        )
    kind: ProxyKind = "gateway" if args.gateway else "sidecar"
    labels = dict(args.label)
    if not args.namespace:
        raise CommandError("--namespace must not be empty")
    proxy = Proxy(
        id=args.proxy_id or _default_id(kind, args.namespace, labels),
        namespace=args.namespace,
        labels=labels,
        service_account=args.service_account,
        kind=kind,
        locality=args.locality or "",
    )
    registry = Registry.from_objects(loaded.objects)
    translation = translate(proxy, loaded.objects, registry)
    for warning in translation.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    snapshot = translation.snapshot()
    types: Sequence[str] = [t for t in TYPES if t in args.types] if args.types else list(TYPES)
    resources = translation.resources()
    output: dict[str, Any] = {
        "translator": translation.translator_version or TRANSLATOR_VERSION,
        "proxy": {
            "id": proxy.id,
            "kind": proxy.kind,
            "namespace": proxy.namespace,
            "labels": dict(proxy.labels),
            "service_account": proxy.service_account,
            "locality": proxy.locality,
        },
        "versions": {t: snapshot.version(t) for t in types},
    }
    for t in types:
        output[TYPES[t]] = [_to_dict(m) for m in resources[t]]
    if args.output == "yaml":
        sys.stdout.write(yaml.safe_dump(output, sort_keys=False))
    else:
        json.dump(output, sys.stdout, indent=2)
        sys.stdout.write("\n")
    return 0
