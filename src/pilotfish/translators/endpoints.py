"""Registry endpoints to ClusterLoadAssignments: grouped by locality, weighted, and (with
locality failover) prioritised by distance from the proxy, as istiod does for EDS."""

from __future__ import annotations

from collections.abc import Iterable

from envoy.config.core.v3.address_pb2 import Address, SocketAddress
from envoy.config.core.v3.base_pb2 import Locality
from envoy.config.endpoint.v3.endpoint_components_pb2 import (
    Endpoint as EnvoyEndpoint,
)
from envoy.config.endpoint.v3.endpoint_components_pb2 import (
    LbEndpoint,
    LocalityLbEndpoints,
)
from envoy.config.endpoint.v3.endpoint_pb2 import ClusterLoadAssignment
from google.protobuf.wrappers_pb2 import UInt32Value

from pilotfish.registry import Endpoint

__all__ = ["cluster_load_assignment", "locality_priority", "socket_address"]


def socket_address(host: str, port: int) -> Address:
    """An Envoy TCP address."""
    return Address(socket_address=SocketAddress(address=host, port_value=port))


def _locality(text: str) -> Locality:
    region, zone, subzone = [*text.split("/"), "", ""][:3]
    return Locality(region=region, zone=zone, sub_zone=subzone)


def locality_priority(endpoint_locality: str, proxy_locality: str) -> int:
    """Istio's failover priority: 0 same subzone, 1 same zone, 2 same region, 3 elsewhere."""
    if not proxy_locality:
        return 0
    mine = [*proxy_locality.split("/"), "", ""][:3]
    theirs = [*endpoint_locality.split("/"), "", ""][:3]
    for depth in (3, 2, 1):
        if mine[:depth] == theirs[:depth]:
            return 3 - depth
    return 3


def cluster_load_assignment(
    cluster: str,
    endpoints: Iterable[Endpoint],
    *,
    proxy_locality: str = "",
    failover: bool = False,
) -> ClusterLoadAssignment:
    """Endpoints grouped by (priority, locality), sorted; each locality weighted by the sum of
    its endpoints' weights (proxyless gRPC requires the locality weight)."""
    groups: dict[tuple[int, str], list[Endpoint]] = {}
    for endpoint in endpoints:
        priority = locality_priority(endpoint.locality, proxy_locality) if failover else 0
        groups.setdefault((priority, endpoint.locality), []).append(endpoint)
    assignment = ClusterLoadAssignment(cluster_name=cluster)
    for (priority, locality), members in sorted(groups.items()):
        group = LocalityLbEndpoints(
            locality=_locality(locality),
            priority=priority,
            load_balancing_weight=UInt32Value(value=sum(e.weight for e in members)),
        )
        for endpoint in sorted(members):
            group.lb_endpoints.append(
                LbEndpoint(
                    endpoint=EnvoyEndpoint(address=socket_address(endpoint.address, endpoint.port)),
                    load_balancing_weight=UInt32Value(value=endpoint.weight),
                )
            )
        assignment.endpoints.append(group)
    return assignment
