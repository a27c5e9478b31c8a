"""Which resources of other types a resource names (CDS -> EDS, LDS -> RDS, SRDS -> RDS).

Used for snapshot consistency checks: a cluster of type EDS waits for its ClusterLoadAssignment,
and a listener using RDS waits for its RouteConfiguration, so a missing one stalls Envoy's warming.
"""

from __future__ import annotations

from collections.abc import Iterator

from pilotfish.protos import messages as m
from pilotfish.protos.resource_types import ENDPOINT_TYPE, ROUTE_TYPE

__all__ = ["references"]


def references(resource: m.Message) -> dict[str, set[str]]:
    """Names this resource depends on, by type URL (empty when it needs nothing dynamic)."""
    refs: dict[str, set[str]] = {}
    if isinstance(resource, m.Cluster):
        if resource.type == m.Cluster.EDS:
            name = resource.eds_cluster_config.service_name or resource.name
            refs.setdefault(ENDPOINT_TYPE, set()).add(name)
    elif isinstance(resource, m.Listener):
        for hcm in _connection_managers(resource):
            if hcm.HasField("rds"):
                refs.setdefault(ROUTE_TYPE, set()).add(hcm.rds.route_config_name)
    elif isinstance(resource, m.ScopedRouteConfiguration) and resource.route_configuration_name:
        refs.setdefault(ROUTE_TYPE, set()).add(resource.route_configuration_name)
    return refs


def _connection_managers(listener: m.Listener) -> Iterator[m.HttpConnectionManager]:
    configs: list[m.Any] = []
    chains = [*listener.filter_chains]
    if listener.HasField("default_filter_chain"):
        chains.append(listener.default_filter_chain)
    for chain in chains:
        configs.extend(f.typed_config for f in chain.filters if f.HasField("typed_config"))
    if listener.HasField("api_listener"):
        configs.append(listener.api_listener.api_listener)
    for config in configs:
        if config.Is(m.HttpConnectionManager.DESCRIPTOR):
            hcm = m.HttpConnectionManager()
            config.Unpack(hcm)
            yield hcm
