"""A synthetic mesh of any size, for benchmarks and scale tests.

Each service `svc-<i>` in namespace `default` has a ServiceEntry (MESH_INTERNAL, STATIC, HTTP
port 9080) with `endpoints` inline spread over versions v1..v3, a DestinationRule with subsets
v1, v2 and v3, and a VirtualService sending `end-user: jason` to v3 and the rest 80/20 to v1/v2:
the shape of a real mesh's routing config, repeated.
"""

from __future__ import annotations

from typing import Any

import yaml

__all__ = ["service_documents", "synthetic_mesh"]


def service_documents(index: int, endpoints: int = 3, weight_v1: int = 80) -> list[dict[str, Any]]:
    """The three objects of service number `index` (`weight_v1` of 100 goes to subset v1)."""
    name = f"svc-{index}"
    host = f"{name}.mesh.local"
    meta = {"name": name, "namespace": "default"}
    api = "networking.istio.io/v1"
    addresses = [
        {
            "address": f"10.{index // 250 % 250}.{index % 250}.{e + 1}",
            "labels": {"app": name, "version": f"v{e % 3 + 1}"},
        }
        for e in range(endpoints)
    ]
    entry = {
        "apiVersion": api,
        "kind": "ServiceEntry",
        "metadata": meta,
        "spec": {
            "hosts": [host],
            "location": "MESH_INTERNAL",
            "resolution": "STATIC",
            "ports": [{"number": 9080, "name": "http", "protocol": "HTTP"}],
            "endpoints": addresses,
        },
    }
    rule = {
        "apiVersion": api,
        "kind": "DestinationRule",
        "metadata": meta,
        "spec": {
            "host": host,
            "subsets": [{"name": f"v{k}", "labels": {"version": f"v{k}"}} for k in (1, 2, 3)],
        },
    }
    routes = {
        "apiVersion": api,
        "kind": "VirtualService",
        "metadata": meta,
        "spec": {
            "hosts": [host],
            "http": [
                {
                    "match": [{"headers": {"end-user": {"exact": "jason"}}}],
                    "route": [{"destination": {"host": host, "subset": "v3"}}],
                },
                {
                    "route": [
                        {"destination": {"host": host, "subset": "v1"}, "weight": weight_v1},
                        {"destination": {"host": host, "subset": "v2"}, "weight": 100 - weight_v1},
                    ]
                },
            ],
        },
    }
    return [entry, rule, routes]


def synthetic_mesh(services: int, endpoints: int = 3) -> str:
    """`services` services' manifests as one multi-document YAML text."""
    documents = [d for i in range(services) for d in service_documents(i, endpoints)]
    return yaml.safe_dump_all(documents, sort_keys=False)
