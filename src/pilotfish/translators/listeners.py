"""Envoy listeners and network filters for sidecars and gateways.

HTTP goes through an HttpConnectionManager (fault, CORS, router filters, as in Istio, so
VirtualService faults and CORS policies on routes take effect); TCP and TLS go through tcp_proxy,
TLS chains selected by SNI (with the TLS inspector).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from envoy.config.core.v3.base_pb2 import TrafficDirection
from envoy.config.listener.v3.listener_components_pb2 import (
    Filter,
    FilterChain,
    FilterChainMatch,
    ListenerFilter,
)
from envoy.config.listener.v3.listener_pb2 import Listener
from envoy.config.route.v3.route_pb2 import RouteConfiguration
from envoy.extensions.filters.http.cors.v3.cors_pb2 import Cors
from envoy.extensions.filters.http.fault.v3.fault_pb2 import HTTPFault
from envoy.extensions.filters.http.router.v3.router_pb2 import Router
from envoy.extensions.filters.listener.tls_inspector.v3.tls_inspector_pb2 import TlsInspector
from envoy.extensions.filters.network.http_connection_manager.v3.http_connection_manager_pb2 import (  # noqa: E501
    HttpConnectionManager,
    HttpFilter,
    Rds,
)
from envoy.extensions.filters.network.tcp_proxy.v3.tcp_proxy_pb2 import TcpProxy
from envoy.extensions.transport_sockets.tls.v3.secret_pb2 import SdsSecretConfig
from envoy.extensions.transport_sockets.tls.v3.tls_pb2 import (
    CommonTlsContext,
    DownstreamTlsContext,
)
from google.protobuf.message import Message
from google.protobuf.wrappers_pb2 import BoolValue

from pilotfish.translators.build import ads_config_source
from pilotfish.translators.endpoints import socket_address
from pilotfish.translators.naming import ROOT_CA_SECRET, WORKLOAD_SECRET

__all__ = [
    "CORS_FILTER",
    "FAULT_FILTER",
    "HCM_FILTER",
    "ROUTER_FILTER",
    "TCP_PROXY_FILTER",
    "TLS_INSPECTOR",
    "TLS_TRANSPORT_SOCKET",
    "http_connection_manager",
    "istio_mutual_downstream",
    "listener",
    "tcp_proxy",
    "tls_chain",
]

HCM_FILTER = "envoy.filters.network.http_connection_manager"
TCP_PROXY_FILTER = "envoy.filters.network.tcp_proxy"
ROUTER_FILTER = "envoy.filters.http.router"
FAULT_FILTER = "envoy.filters.http.fault"
CORS_FILTER = "envoy.filters.http.cors"
TLS_INSPECTOR = "envoy.filters.listener.tls_inspector"
TLS_TRANSPORT_SOCKET = "envoy.transport_sockets.tls"


def _http_filter(name: str, config: Message) -> HttpFilter:
    http_filter = HttpFilter(name=name)
    http_filter.typed_config.Pack(config)
    return http_filter


def http_connection_manager(
    stat_prefix: str,
    *,
    rds: str = "",
    route_config: RouteConfiguration | None = None,
    edge: bool = False,
    forward_client_cert: bool = False,
    authorization: Sequence[HttpFilter] = (),
) -> Filter:
    """An HCM using RDS route config `rds` (or an inline `route_config`). `edge` (gateways)
    trusts the connection's address for X-Forwarded-For, as Istio gateways do;
    `forward_client_cert` (inbound) tells the application who called, in
    `x-forwarded-client-cert`, from the peer's certificate (its SPIFFE URI); `authorization`
    (RBAC filters) runs after fault and CORS, before the router."""
    manager = HttpConnectionManager(
        stat_prefix=stat_prefix,
        normalize_path=BoolValue(value=True),
        use_remote_address=BoolValue(value=edge),
        http_filters=[
            _http_filter(FAULT_FILTER, HTTPFault()),
            _http_filter(CORS_FILTER, Cors()),
            *authorization,
            _http_filter(ROUTER_FILTER, Router()),
        ],
    )
    if forward_client_cert:
        manager.forward_client_cert_details = HttpConnectionManager.SANITIZE_SET
        manager.set_current_client_cert_details.uri = True
    if route_config is not None:
        manager.route_config.CopyFrom(route_config)
    else:
        manager.rds.CopyFrom(Rds(config_source=ads_config_source(), route_config_name=rds))
    hcm = Filter(name=HCM_FILTER)
    hcm.typed_config.Pack(manager)
    return hcm


def istio_mutual_downstream() -> DownstreamTlsContext:
    """Inbound mutual TLS with the workload's SDS certificate (`default`), requiring a client
    certificate that chains to the mesh's roots (`ROOTCA`); both come over ADS."""
    common = CommonTlsContext(
        tls_certificate_sds_secret_configs=[
            SdsSecretConfig(name=WORKLOAD_SECRET, sds_config=ads_config_source())
        ],
        validation_context_sds_secret_config=SdsSecretConfig(
            name=ROOT_CA_SECRET, sds_config=ads_config_source()
        ),
    )
    context = DownstreamTlsContext(common_tls_context=common)
    context.require_client_certificate.value = True
    return context


def tcp_proxy(stat_prefix: str, clusters: Mapping[str, int] | str) -> Filter:
    """tcp_proxy to one cluster, or split by weight over several."""
    proxy = TcpProxy(stat_prefix=stat_prefix)
    if isinstance(clusters, str):
        proxy.cluster = clusters
    elif len(clusters) == 1:
        proxy.cluster = next(iter(clusters))
    else:
        for name, weight in clusters.items():
            proxy.weighted_clusters.clusters.add(name=name, weight=weight)
    tcp = Filter(name=TCP_PROXY_FILTER)
    tcp.typed_config.Pack(proxy)
    return tcp


def tls_chain(
    filters: Sequence[Filter],
    *,
    server_names: Sequence[str] = (),
    tls: DownstreamTlsContext | None = None,
    name: str = "",
    transport_protocol: str = "",
) -> FilterChain:
    """A filter chain selected by SNI (`server_names`; none = any) and, with the TLS inspector,
    by `transport_protocol` (`tls` or `raw_buffer`), optionally terminating TLS."""
    chain = FilterChain(name=name, filters=list(filters))
    names = [n for n in server_names if n != "*"]
    if names:
        chain.filter_chain_match.CopyFrom(FilterChainMatch(server_names=sorted(set(names))))
    if transport_protocol:
        chain.filter_chain_match.transport_protocol = transport_protocol
    if tls is not None:
        chain.transport_socket.name = TLS_TRANSPORT_SOCKET
        chain.transport_socket.typed_config.Pack(tls)
    return chain


def listener(
    name: str,
    address: str,
    port: int,
    chains: Sequence[FilterChain],
    *,
    bind: bool = True,
    inbound: bool = False,
    inspect_tls: bool = False,
) -> Listener:
    """A listener; `bind=False` gives Istio's virtual listeners that only an original-destination
    listener can hand connections to."""
    result = Listener(
        name=name,
        address=socket_address(address, port),
        filter_chains=list(chains),
        traffic_direction=TrafficDirection.INBOUND if inbound else TrafficDirection.OUTBOUND,
    )
    if not bind:
        result.bind_to_port.value = False
    if inspect_tls:
        inspector = ListenerFilter(name=TLS_INSPECTOR)
        inspector.typed_config.Pack(TlsInspector())
        result.listener_filters.append(inspector)
    return result
