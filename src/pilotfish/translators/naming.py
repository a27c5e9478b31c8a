"""Istio's names for generated Envoy resources, so Istio users recognise what they see.

Clusters `outbound|9080|v1|reviews.default.svc.cluster.local` and `inbound|9080||`; sidecar route
configs named by port (`9080`); virtual hosts `reviews.default.svc.cluster.local:9080`; listeners
`0.0.0.0_9080`; gateway route configs `http.8080` (`https.443.<port name>.<gateway>.<namespace>`
for TLS servers); SDS secrets `default` and `ROOTCA`; identities `spiffe://<domain>/ns/<ns>/sa/<sa>`.
"""

from __future__ import annotations

__all__ = [
    "ROOT_CA_SECRET",
    "WORKLOAD_SECRET",
    "cluster_name",
    "gateway_https_route_name",
    "gateway_route_name",
    "inbound_cluster_name",
    "inbound_listener_name",
    "listener_name",
    "parse_cluster_name",
    "spiffe_id",
    "tls_sni",
    "virtual_host_name",
]

WORKLOAD_SECRET = "default"
ROOT_CA_SECRET = "ROOTCA"


def cluster_name(port: int, host: str, subset: str = "", direction: str = "outbound") -> str:
    """`outbound|<port>|<subset>|<host>`."""
    return f"{direction}|{port}|{subset}|{host}"


def parse_cluster_name(name: str) -> tuple[str, int, str, str]:
    """(direction, port, subset, host) of an Istio-style cluster name."""
    direction, port, subset, host = name.split("|", 3)
    return direction, int(port), subset, host


def inbound_cluster_name(port: int) -> str:
    """`inbound|<port>||`: the local application behind a sidecar."""
    return f"inbound|{port}||"


def listener_name(port: int, address: str = "0.0.0.0") -> str:
    """`0.0.0.0_<port>`."""
    return f"{address}_{port}"


def inbound_listener_name(port: int) -> str:
    """Per-port inbound listener (Istio has one `virtualInbound` behind iptables instead)."""
    return f"inbound_0.0.0.0_{port}"


def virtual_host_name(host: str, port: int) -> str:
    """`reviews.default.svc.cluster.local:9080`."""
    return f"{host}:{port}"


def gateway_route_name(port: int) -> str:
    """`http.<port>`: a gateway's plain-HTTP route configuration."""
    return f"http.{port}"


def gateway_https_route_name(port: int, port_name: str, gateway: str, namespace: str) -> str:
    """`https.<port>.<port name>.<gateway>.<namespace>`: one per TLS-terminating server."""
    return f"https.{port}.{port_name}.{gateway}.{namespace}"


def spiffe_id(namespace: str, service_account: str, domain: str = "cluster.local") -> str:
    """`spiffe://<trust domain>/ns/<namespace>/sa/<service account>`."""
    return f"spiffe://{domain}/ns/{namespace}/sa/{service_account}"


def tls_sni(port: int, host: str, subset: str = "") -> str:
    """The SNI Istio sets for ISTIO_MUTUAL: `outbound_.9080_.v1_.reviews.default.svc...`."""
    return f"outbound_.{port}_.{subset}_.{host}"
