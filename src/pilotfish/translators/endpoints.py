"""Registry endpoints to ClusterLoadAssignments: grouped by locality, weighted, and (with
locality failover) prioritised by distance from the proxy, as istiod does for EDS."""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping

from envoy.config.core.v3.address_pb2 import Address, SocketAddress
from envoy.config.endpoint.v3.endpoint_pb2 import ClusterLoadAssignment

from pilotfish.bounded import Bounded
from pilotfish.protos.wire import length_delimited, varint
from pilotfish.registry import Endpoint
from pilotfish.registry.model import ENDPOINT_ORDER

__all__ = [
    "cluster_load_assignment",
    "distribution_for",
    "load_assignment_bytes",
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
    data = load_assignment_bytes(
        cluster,
        endpoints,
        proxy_locality=proxy_locality,
        failover=failover,
        distribute=distribute,
    )
    return ClusterLoadAssignment.FromString(data)


def load_assignment_bytes(
    cluster: str,
    endpoints: Iterable[Endpoint],
    *,
    proxy_locality: str = "",
    failover: bool = False,
    distribute: Mapping[str, int] | None = None,
) -> bytes:
    """`cluster_load_assignment`'s deterministic bytes, written directly: a mesh has one
    assignment per cluster, and no message of them is kept (`Encoded`), so none is made."""
    groups: dict[tuple[int, str], list[Endpoint]] = {}
    if failover:
        for endpoint in endpoints:
            priority = locality_priority(endpoint.locality, proxy_locality)
            groups.setdefault((priority, endpoint.locality), []).append(endpoint)
    else:
        for endpoint in endpoints:
            groups.setdefault((0, endpoint.locality), []).append(endpoint)
    shares = _distributed({loc for _, loc in groups}, distribute) if distribute else None
    fields = [length_delimited(_CLUSTER_NAME, cluster.encode())] if cluster else []
    made = _LB_ENDPOINTS_MADE
    for (priority, locality), members in (
        sorted(groups.items()) if len(groups) > 1 else groups.items()
    ):
        group = [_locality_field(locality)]
        if len(members) > 1:
            members.sort(key=ENDPOINT_ORDER)  # as endpoints compare, with no tuples per comparison
        total = 0
        for e in members:
            total += e.weight
            key = (e.address, e.port, e.weight)
            found = made.get(key)  # `_lb_endpoint`'s, looked up here: asked for every endpoint
            group.append(found if found is not None else _lb_endpoint(*key))
        weight = shares[locality] if shares is not None else total
        if weight == 0:
            continue
        group.append(_group_weight(weight))
        if priority:
            group.append(_PRIORITY_TAG + varint(priority))
        fields.append(length_delimited(_ENDPOINTS, b"".join(group)))
    return b"".join(fields)


# Field numbers (wire bytes are written in field-number order, as deterministic output is).
_CLUSTER_NAME, _ENDPOINTS = 1, 2  # ClusterLoadAssignment
_LOCALITY, _LB_ENDPOINTS, _GROUP_WEIGHT, _PRIORITY = 1, 2, 3, 5  # LocalityLbEndpoints
_PRIORITY_TAG = varint(_PRIORITY << 3)  # a varint field
_ENDPOINT, _ENDPOINT_WEIGHT = 1, 4  # LbEndpoint
_ADDRESS = 1  # Endpoint.address; Address.socket_address is field 1 too
_SOCKET_HOST, _SOCKET_PORT_TAG = 2, varint(3 << 3)  # SocketAddress address, port_value
_VALUE_TAG = varint(1 << 3)  # UInt32Value.value


def _weight_field(number: int, weight: int) -> bytes:
    """A `UInt32Value` field, present even when 0 (set through `.value`)."""
    return length_delimited(number, _VALUE_TAG + varint(weight) if weight else b"")


@functools.lru_cache(maxsize=1024)
def _group_weight(weight: int) -> bytes:
    # A few weights (endpoint counts, `distribute` shares) over and over.
    return _weight_field(_GROUP_WEIGHT, weight)


@functools.lru_cache(maxsize=256)
def _locality_field(locality: str) -> bytes:
    # Always present: the message version sets its parts, or marks it set when empty.
    region, zone, sub_zone = [*locality.split("/"), "", ""][:3]
    parts = (
        length_delimited(number, value.encode())
        for number, value in ((1, region), (2, zone), (3, sub_zone))
        if value
    )
    return length_delimited(_LOCALITY, b"".join(parts))


def _lb_endpoint(address: str, port: int, weight: int) -> bytes:
    """One `LbEndpoint` field (kept: an endpoint is in its service's assignment and its
    subset's)."""
    key = (address, port, weight)
    found = _LB_ENDPOINTS_MADE.get(key)
    if found is None:
        socket = length_delimited(_SOCKET_HOST, address.encode()) if address else b""
        socket += _SOCKET_PORT_TAG + varint(port)  # in a oneof: written even when 0
        endpoint = length_delimited(_ADDRESS, length_delimited(_ADDRESS, socket))
        lb_endpoint = length_delimited(_ENDPOINT, endpoint) + _weight_field(
            _ENDPOINT_WEIGHT, weight
        )
        found = _LB_ENDPOINTS_MADE.put(key, length_delimited(_LB_ENDPOINTS, lb_endpoint))
    return found


_LB_ENDPOINTS_MADE: Bounded[tuple[str, int, int], bytes] = Bounded(65536)
