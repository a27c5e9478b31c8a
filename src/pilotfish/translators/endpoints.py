"""Registry endpoints to ClusterLoadAssignments: grouped by locality, weighted, and (with
locality failover) prioritised by distance from the proxy, as istiod does for EDS."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from envoy.config.core.v3.address_pb2 import Address, SocketAddress
from envoy.config.endpoint.v3.endpoint_pb2 import ClusterLoadAssignment

from pilotfish.registry import Endpoint

__all__ = [
    "cluster_load_assignment",
    "distribution_for",
    "locality_matches",
    "locality_priority",
    "socket_address",
]


def socket_address(host: str, port: int) -> Address:
    """An Envoy TCP address."""
    return Address(socket_address=SocketAddress(address=host, port_value=port))


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


def locality_matches(pattern: str, locality: str) -> bool:
    """Istio's locality patterns: `region/zone/subzone`, where `*` matches the rest."""
    parts = [*locality.split("/"), "", ""][:3]
    for want, have in zip(pattern.split("/"), parts, strict=False):
        if want == "*":
            return True
        if want != have:
            return False
    return True


def distribution_for(
    rules: Iterable[tuple[str, Mapping[str, int]]], proxy_locality: str
) -> Mapping[str, int] | None:
    """The `to` weights of the first `localityLbSetting.distribute` rule whose `from` matches
    the proxy's locality (None: no rule applies)."""
    for source, targets in rules:
        if proxy_locality and locality_matches(source, proxy_locality):
            return targets
    return None


def _distributed(localities: Iterable[str], targets: Mapping[str, int]) -> dict[str, int]:
    """Weight per locality: each `to` pattern's share split evenly over the localities it
    matches first; localities no pattern matches get no traffic (weight 0, left out)."""
    owner = {
        loc: next((p for p in sorted(targets) if locality_matches(p, loc)), None)
        for loc in localities
    }
    count: dict[str, int] = {}
    for pattern in owner.values():
        if pattern is not None:
            count[pattern] = count.get(pattern, 0) + 1
    return {
        loc: max(1, targets[p] * 1000 // count[p]) if p is not None else 0
        for loc, p in owner.items()
    }


def cluster_load_assignment(
    cluster: str,
    endpoints: Iterable[Endpoint],
    *,
    proxy_locality: str = "",
    failover: bool = False,
    distribute: Mapping[str, int] | None = None,
) -> ClusterLoadAssignment:
    """Endpoints grouped by (priority, locality), sorted; each locality weighted by the sum of
    its endpoints' weights (proxyless gRPC requires the locality weight), or, with `distribute`
    (`to` patterns and percentages), by Istio's locality-weighted distribution."""
    groups: dict[tuple[int, str], list[Endpoint]] = {}
    for endpoint in endpoints:
        priority = locality_priority(endpoint.locality, proxy_locality) if failover else 0
        groups.setdefault((priority, endpoint.locality), []).append(endpoint)
    shares = _distributed({loc for _, loc in groups}, distribute) if distribute else None
    assignment = ClusterLoadAssignment(cluster_name=cluster)
    # Filled in place (`add()`): constructors given nested messages copy each of them, which
    # made this three times slower, and a mesh has one assignment per cluster.
    for (priority, locality), members in sorted(groups.items()):
        weight = shares[locality] if shares is not None else sum(e.weight for e in members)
        if weight == 0:
            continue
        group = assignment.endpoints.add()
        where = group.locality
        where.region, where.zone, where.sub_zone = [*locality.split("/"), "", ""][:3]
        if not locality:
            where.SetInParent()
        group.priority = priority
        group.load_balancing_weight.value = weight
        for endpoint in sorted(members):
            lb_endpoint = group.lb_endpoints.add()
            address = lb_endpoint.endpoint.address.socket_address
            address.address = endpoint.address
            address.port_value = endpoint.port
            lb_endpoint.load_balancing_weight.value = endpoint.weight
    return assignment
