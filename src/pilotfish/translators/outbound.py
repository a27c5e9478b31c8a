"""What every proxy in the mesh gets for calling services: outbound clusters and their endpoints.

Sidecars and gateways share this; subsets become clusters of their own, their endpoints filtered
by the subset's labels here, on the server side, as Istio does. Each cluster and assignment leaves
as its bytes (`Encoded`): a mesh has tens of thousands, and messages of them would take ten times
the memory.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from itertools import accumulate, chain
from operator import itemgetter
from typing import Any

from envoy.config.cluster.v3.cluster_pb2 import Cluster
from envoy.config.endpoint.v3.endpoint_pb2 import ClusterLoadAssignment

from pilotfish.cache import Encoded
from pilotfish.protos import ENDPOINT_TYPE
from pilotfish.registry import Registry, Service
from pilotfish.translators.clusters import (
    distribution,
    effective_policy,
    locality_failover,
    outbound_clusters,
)
from pilotfish.translators.endpoints import load_assignment_bytes
from pilotfish.translators.index import ConfigIndex, MergedRule
from pilotfish.translators.memo import Site, TranslationMemo
from pilotfish.translators.peer_authentication import mtls_mode
from pilotfish.translators.proxy import Proxy

__all__ = ["outbound", "outbound_view"]


def outbound_view(proxy: Proxy) -> Proxy:
    """All of `proxy` that its outbound clusters and load assignments depend on: its namespace
    (whose destination rules apply first), its locality (load assignment priorities and
    weights) and its address family (DNS lookups). `outbound` sees only this, so proxies with
    the same view get the same clusters (`SharedParts`)."""
    try:
        v6 = ipaddress.ip_address(proxy.address).version == 6
    except ValueError:
        v6 = False
    return Proxy(
        id="", namespace=proxy.namespace, locality=proxy.locality, address="::1" if v6 else ""
    )


def outbound(
    proxy: Proxy,
    index: ConfigIndex,
    registry: Registry,
    *,
    auto_mtls: bool = False,
    memo: TranslationMemo | None = None,
) -> tuple[tuple[Encoded[Cluster], ...], tuple[Encoded[ClusterLoadAssignment], ...]]:
    """Every service port's clusters, and a load assignment for each EDS cluster, for the
    proxy's `outbound_view`. With a `memo`, a service whose inputs did not change since the
    last round is not translated."""
    proxy = outbound_view(proxy)
    if memo is None:
        outputs = [
            _service_outbound(service, proxy, index, registry, auto_mtls)
            for service in registry.services()
        ]
    else:
        # While the services stay the same (`Registry.generation`), a round redoes only the
        # services the change touched and visits no other.
        name, token = ("outbound", auto_mtls), registry.generation
        site = memo.site(name, token, index, registry)
        if site is None:
            keys: list[Any] = []
            computes: dict[Any, Callable[[ConfigIndex, Registry], Any]] = {}
            values: dict[Any, Any] = {}
            for service in registry.services():
                key = ("outbound", service.key, auto_mtls)
                compute = partial(_unit, service, proxy, auto_mtls)
                keys.append(key)
                computes[key] = compute
                values[key] = memo.unit(key, compute, index, registry)
            site = memo.record(name, token, keys, computes, values)
        flat = _flat(site)
        return flat.clusters, flat.assignments  # the memo's own (a round patches copies)
    clusters = tuple(chain.from_iterable(map(itemgetter(0), outputs)))
    assignments = tuple(chain.from_iterable(map(itemgetter(1), outputs)))
    return clusters, assignments


@dataclass(slots=True)
class _Flat:
    """A site's clusters and assignments in one tuple each, and where each unit's begin."""

    # Tuples: every shape of the view is handed these very objects (`Messages` keeps a tuple
    # as it is), so a snapshot compares them with last round's once for all the shapes.
    clusters: tuple[Encoded[Cluster], ...]
    assignments: tuple[Encoded[ClusterLoadAssignment], ...]
    cluster_starts: list[int]
    assignment_starts: list[int]
    position: dict[Any, int]  # of each key in the site


def _flat(site: Site) -> _Flat:
    """The site's outputs joined, patched in place of the changed units when their counts did
    not change (an endpoint edit: a few slices, not 40,000 items gathered again)."""
    flat: _Flat | None = site.cache.get("flat")
    if flat is not None and site.changed:
        flat = _patched(flat, site)
    if flat is None:
        outputs = list(map(site.values.__getitem__, site.keys))
        flat = _Flat(
            tuple(chain.from_iterable(map(itemgetter(0), outputs))),
            tuple(chain.from_iterable(map(itemgetter(1), outputs))),
            list(accumulate(map(len, map(itemgetter(0), outputs)), initial=0)),
            list(accumulate(map(len, map(itemgetter(1), outputs)), initial=0)),
            site.cache["flat"].position
            if "flat" in site.cache
            else {key: i for i, key in enumerate(site.keys)},
        )
        site.cache["flat"] = flat
    site.changed = []
    return flat


def _patched(flat: _Flat, site: Site) -> _Flat | None:
    clusters, assignments = list(flat.clusters), list(flat.assignments)
    for key in site.changed:
        i = flat.position[key]
        found, loads = site.values[key]
        start, end = flat.cluster_starts[i], flat.cluster_starts[i + 1]
        first, last = flat.assignment_starts[i], flat.assignment_starts[i + 1]
        if len(found) != end - start or len(loads) != last - first:
            return None  # counts changed: join again
        clusters[start:end] = found
        assignments[first:last] = loads
    patched = _Flat(
        tuple(clusters),
        tuple(assignments),
        flat.cluster_starts,
        flat.assignment_starts,
        flat.position,
    )
    site.cache["flat"] = patched
    return patched


def _unit(
    service: Service, proxy: Proxy, auto_mtls: bool, index: ConfigIndex, registry: Registry
) -> tuple[list[Encoded[Cluster]], list[Encoded[ClusterLoadAssignment]]]:
    return _service_outbound(service, proxy, index, registry, auto_mtls)


def _service_outbound(
    service: Service, proxy: Proxy, index: ConfigIndex, registry: Registry, auto_mtls: bool
) -> tuple[list[Encoded[Cluster]], list[Encoded[ClusterLoadAssignment]]]:
    clusters: list[Encoded[Cluster]] = []
    assignments: list[Encoded[ClusterLoadAssignment]] = []
    rule = index.destination_rule(service.hostname, proxy.namespace)
    # `outbound_clusters` makes a port's cluster, then one per subset, in this order (a
    # merged rule's subset names are unique).
    subsets: list[tuple[str, dict[str, str] | None]] = [("", None)]
    if rule is not None:
        subsets.extend(rule.subset_labels)
    for port in service.ports:
        # Istio's auto mTLS also asks the destination: workloads whose PeerAuthentication
        # says DISABLE for the port would not accept TLS, so they get plain text.
        everything = registry.endpoints(service.hostname, port.number)
        endpoints = everything if auto_mtls else []
        policies = index.peer_authentications() if endpoints else ()
        accepts_tls = any(
            mtls_mode(policies, e.namespace, dict(e.labels), e.port) != "DISABLE" for e in endpoints
        )
        made = outbound_clusters(
            service,
            port,
            rule,
            registry=registry,
            proxy=proxy,
            domain=index.domain,
            auto_mtls=auto_mtls and accepts_tls,
            endpoints=everything,
        )
        # Each endpoint's labels as a set, once for all the port's subsets: a subset's
        # members are those whose labels include the subset's (`Endpoint.matches`).
        label_sets = [set(e.labels) for e in everything] if len(subsets) > 1 else []
        clusters.extend(made)
        failover, distribute = False, None  # `_locality_options` without a proxy locality
        for cluster, (subset, labels) in zip(made, subsets, strict=True):
            if ENDPOINT_TYPE not in cluster.refs:  # not EDS: its endpoints are in the cluster
                continue
            if proxy.locality:
                failover, distribute = _locality_options(rule, port.number, subset, proxy.locality)
            # A subset's endpoints as the registry filters them, from the port's (one lookup
            # the memo records, not one per subset).
            members = everything
            if labels is not None:
                chosen = labels.items()
                members = [
                    e for e, have in zip(everything, label_sets, strict=True) if chosen <= have
                ]
            data = load_assignment_bytes(
                cluster.name,
                members,
                proxy_locality=proxy.locality,
                failover=failover,
                distribute=distribute,
            )
            assignments.append(Encoded.of_data(ClusterLoadAssignment, cluster.name, data))
    return clusters, assignments


def _locality_options(
    rule: MergedRule | None, port: int, subset: str, proxy_locality: str
) -> tuple[bool, Mapping[str, int] | None]:
    """Whether a load assignment prioritises by locality (failover), and its `distribute`
    weights. Both need the proxy's locality: without one, neither changes anything."""
    if not proxy_locality:
        return False, None
    policy = effective_policy(rule, port, subset)
    return locality_failover(policy), distribution(policy, proxy_locality)
