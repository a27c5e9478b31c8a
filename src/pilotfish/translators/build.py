"""Builders for the Envoy resources a simple HTTP control plane serves.

Plain functions returning xds-protos messages with the defaults an Envoy user expects: an EDS
cluster with its ClusterLoadAssignment, a route configuration, and an HTTP listener using RDS;
for VHDS, a route configuration whose virtual hosts come on demand, and those virtual hosts.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from envoy.config.cluster.v3.cluster_pb2 import Cluster
from envoy.config.core.v3.address_pb2 import Address, SocketAddress
from envoy.config.core.v3.base_pb2 import Locality
from envoy.config.core.v3.config_source_pb2 import (
    AggregatedConfigSource,
    ApiConfigSource,
    ApiVersion,
    ConfigSource,
)
from envoy.config.core.v3.grpc_service_pb2 import GrpcService
from envoy.config.endpoint.v3.endpoint_components_pb2 import (
    Endpoint,
    LbEndpoint,
    LocalityLbEndpoints,
)
from envoy.config.endpoint.v3.endpoint_pb2 import ClusterLoadAssignment
from envoy.config.listener.v3.listener_components_pb2 import Filter, FilterChain
from envoy.config.listener.v3.listener_pb2 import Listener
from envoy.config.route.v3.route_components_pb2 import (
    Route,
    RouteAction,
    RouteMatch,
    VirtualHost,
    WeightedCluster,
)
from envoy.config.route.v3.route_pb2 import RouteConfiguration, Vhds
from envoy.extensions.filters.http.on_demand.v3.on_demand_pb2 import OnDemand
from envoy.extensions.filters.http.router.v3.router_pb2 import Router
from envoy.extensions.filters.network.http_connection_manager.v3.http_connection_manager_pb2 import (  # noqa: E501
    HttpConnectionManager,
    HttpFilter,
    Rds,
)
from google.protobuf.duration_pb2 import Duration
from google.protobuf.wrappers_pb2 import UInt32Value

__all__ = [
    "ads_config_source",
    "api_config_source",
    "eds_cluster",
    "http_listener",
    "load_assignment",
    "route_config",
    "vhds_route_config",
    "virtual_host",
]

HCM_FILTER = "envoy.filters.network.http_connection_manager"
ROUTER_FILTER = "envoy.filters.http.router"
ON_DEMAND_FILTER = "envoy.filters.http.on_demand"


def ads_config_source() -> ConfigSource:
    """Fetch a dependent resource (EDS, RDS) over the proxy's ADS stream."""
    source = ConfigSource()
    source.CopyFrom(_ADS_SOURCE)  # a copy: callers may change theirs
    return source


_ADS_SOURCE = ConfigSource(ads=AggregatedConfigSource(), resource_api_version=ApiVersion.V3)


def api_config_source(xds_cluster: str, *, delta: bool = False) -> ConfigSource:
    """Fetch a dependent resource over its own gRPC stream to `xds_cluster` (non-ADS)."""
    return ConfigSource(
        api_config_source=ApiConfigSource(
            api_type=ApiConfigSource.DELTA_GRPC if delta else ApiConfigSource.GRPC,
            transport_api_version=ApiVersion.V3,
            grpc_services=[GrpcService(envoy_grpc=GrpcService.EnvoyGrpc(cluster_name=xds_cluster))],
            set_node_on_first_message_only=True,
        ),
        resource_api_version=ApiVersion.V3,
    )


def _duration(seconds: float) -> Duration:
    whole = int(seconds)
    return Duration(seconds=whole, nanos=round((seconds - whole) * 1e9))


def eds_cluster(
    name: str,
    *,
    config_source: ConfigSource | None = None,
    connect_timeout: float = 1.0,
    service_name: str = "",
) -> Cluster:
    """A cluster whose endpoints come from EDS (named `service_name`, else the cluster name)."""
    cluster = Cluster(
        name=name,
        type=Cluster.EDS,
        connect_timeout=_duration(connect_timeout),
    )
    cluster.eds_cluster_config.eds_config.CopyFrom(config_source or ads_config_source())
    if service_name:
        cluster.eds_cluster_config.service_name = service_name
    return cluster


def load_assignment(
    cluster_name: str, endpoints: Iterable[tuple[str, int]], *, weight: int = 1
) -> ClusterLoadAssignment:
    """Endpoints of one cluster, in one locality (with the weight and the `locality` field that
    proxyless gRPC requires; Envoy is fine with both)."""
    locality = LocalityLbEndpoints(
        locality=Locality(), load_balancing_weight=UInt32Value(value=weight)
    )
    for host, port in endpoints:
        address = Address(socket_address=SocketAddress(address=host, port_value=port))
        locality.lb_endpoints.append(LbEndpoint(endpoint=Endpoint(address=address)))
    return ClusterLoadAssignment(cluster_name=cluster_name, endpoints=[locality])


def virtual_host(
    name: str,
    clusters: str | Mapping[str, int],
    *,
    domains: Sequence[str] = ("*",),
    prefix: str = "/",
) -> VirtualHost:
    """A virtual host routing `prefix` to a cluster, or split by weight over several.

    Served over VHDS, its name is `<route configuration>/<host>` (the name Envoy asks for on
    demand, and the one a removal names), with `<host>` among `domains`.
    """
    return _virtual_host(name, clusters, domains, prefix)


def _virtual_host(
    name: str, clusters: str | Mapping[str, int], domains: Sequence[str], prefix: str
) -> VirtualHost:
    action = RouteAction()
    if isinstance(clusters, str):
        action.cluster = clusters
    else:
        action.weighted_clusters.CopyFrom(
            WeightedCluster(
                clusters=[
                    WeightedCluster.ClusterWeight(name=c, weight=UInt32Value(value=w))
                    for c, w in clusters.items()
                ]
            )
        )
    route = Route(match=RouteMatch(prefix=prefix), route=action)
    return VirtualHost(name=name, domains=list(domains), routes=[route])


def route_config(
    name: str,
    clusters: str | Mapping[str, int],
    *,
    domains: Sequence[str] = ("*",),
    prefix: str = "/",
    virtual_host: str = "default",
) -> RouteConfiguration:
    """One virtual host routing `prefix` to a cluster, or split by weight over several."""
    host = _virtual_host(virtual_host, clusters, domains, prefix)
    return RouteConfiguration(name=name, virtual_hosts=[host])


def vhds_route_config(
    name: str,
    *,
    virtual_hosts: Iterable[VirtualHost] = (),
    config_source: ConfigSource | None = None,
) -> RouteConfiguration:
    """A route configuration whose virtual hosts come from VHDS (besides any given inline).

    VHDS is delta only: over ADS (the default source) the proxy's ADS stream must be delta.
    """
    return RouteConfiguration(
        name=name,
        virtual_hosts=list(virtual_hosts),
        vhds=Vhds(config_source=config_source or ads_config_source()),
    )


def http_listener(
    name: str,
    port: int,
    route_config_name: str,
    *,
    address: str = "127.0.0.1",
    config_source: ConfigSource | None = None,
    stat_prefix: str = "ingress_http",
    on_demand: bool = False,
) -> Listener:
    """An HTTP listener whose routes come from RDS; `on_demand` adds the filter that fetches
    a request's unknown virtual host over VHDS before routing it."""
    manager = HttpConnectionManager(
        stat_prefix=stat_prefix,
        rds=Rds(
            config_source=config_source or ads_config_source(),
            route_config_name=route_config_name,
        ),
    )
    if on_demand:
        fetch = HttpFilter(name=ON_DEMAND_FILTER)
        fetch.typed_config.Pack(OnDemand())
        manager.http_filters.append(fetch)
    router = HttpFilter(name=ROUTER_FILTER)
    router.typed_config.Pack(Router())
    manager.http_filters.append(router)
    hcm = Filter(name=HCM_FILTER)
    hcm.typed_config.Pack(manager)
    return Listener(
        name=name,
        address=Address(socket_address=SocketAddress(address=address, port_value=port)),
        filter_chains=[FilterChain(filters=[hcm])],
    )
