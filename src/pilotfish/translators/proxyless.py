"""Builders for what a proxyless gRPC client (grpcio's xDS resolver) asks for.

Seen with grpcio 1.85 (C-core 58): a channel to ``xds:///NAME`` stays idle until its first RPC
(or connect attempt), then opens one ADS stream (node sent on the first request only) and
requests, each by exact name, one after the other as each answer arrives:

1. LDS ``NAME`` -- the target's path, verbatim: ``xds:///greeter`` asks for ``greeter``,
   ``xds:///greeter.default.svc.cluster.local:50051`` for exactly that, port included (gRPC's
   default listener name template is ``%s``). The Listener must carry an ``api_listener``
   holding an HttpConnectionManager whose last HTTP filter is the router (without one gRPC NACKs:
   "expected at least one HTTP filter"); routes come inline or via RDS over ADS.
2. RDS the ``route_config_name`` of that manager (never, when inline). The virtual host is chosen
   by matching ``domains`` against the target (``NAME``), so ``*`` always fits.
3. CDS each cluster a route names: an EDS cluster whose EDS config source is ADS, ``lb_policy``
   ROUND_ROBIN (the proto default, so it does not show on the wire).
4. EDS the cluster's ``service_name`` (else the cluster name). Each locality needs a
   ``locality`` field, even empty (else gRPC NACKs: "field:endpoints[0].locality error:field
   not present"), and a ``load_balancing_weight`` (else gRPC ACKs but drops the locality, and
   RPCs wait for endpoints); `build.load_assignment` sets both.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from envoy.config.cluster.v3.cluster_pb2 import Cluster
from envoy.config.listener.v3.api_listener_pb2 import ApiListener
from envoy.config.listener.v3.listener_pb2 import Listener
from envoy.config.route.v3.route_pb2 import RouteConfiguration
from envoy.extensions.filters.http.router.v3.router_pb2 import Router
from envoy.extensions.filters.network.http_connection_manager.v3.http_connection_manager_pb2 import (  # noqa: E501
    HttpConnectionManager,
    HttpFilter,
    Rds,
)
from google.protobuf.message import Message

from pilotfish.translators import build

__all__ = [
    "api_listener",
    "grpc_cluster",
    "grpc_resources",
    "grpc_route_config",
]


def api_listener(
    name: str,
    route_config: str | RouteConfiguration,
    *,
    stat_prefix: str = "grpc",
) -> Listener:
    """A client-side Listener named after the gRPC target (``NAME`` or ``NAME:port``).

    `route_config` is the name of a RouteConfiguration fetched by RDS over ADS, or one inlined.
    """
    manager = HttpConnectionManager(stat_prefix=stat_prefix)
    if isinstance(route_config, str):
        manager.rds.CopyFrom(
            Rds(config_source=build.ads_config_source(), route_config_name=route_config)
        )
    else:
        manager.route_config.CopyFrom(route_config)
    router = HttpFilter(name=build.ROUTER_FILTER)
    router.typed_config.Pack(Router())
    manager.http_filters.append(router)
    listener = Listener(name=name, api_listener=ApiListener())
    listener.api_listener.api_listener.Pack(manager)
    return listener


def grpc_route_config(
    name: str, clusters: str | Mapping[str, int], *, domains: Iterable[str] = ("*",)
) -> RouteConfiguration:
    """Every method (prefix ``""``) to one cluster, or split by weight over several."""
    return build.route_config(name, clusters, domains=tuple(domains), prefix="")


def grpc_cluster(name: str, *, service_name: str = "") -> Cluster:
    """An EDS cluster (endpoints over ADS) balanced round robin (explicitly, though it is the
    default)."""
    cluster = build.eds_cluster(name, service_name=service_name)
    cluster.lb_policy = Cluster.ROUND_ROBIN
    return cluster


def grpc_resources(
    target: str,
    endpoints: Iterable[tuple[str, int]],
    *,
    cluster: str = "",
    route_config_name: str = "",
    inline_routes: bool = False,
) -> dict[str, list[Message]]:
    """LDS, RDS, CDS and EDS for one target, ready for `Snapshot(...)`.

    The cluster and the route configuration are named after the target unless given; with
    `inline_routes` the listener carries its routes and there is no RDS resource.
    """
    cluster = cluster or target
    routes = grpc_route_config(route_config_name or target, cluster)
    resources: dict[str, list[Message]] = {
        "lds": [api_listener(target, routes if inline_routes else routes.name)],
        "rds": [] if inline_routes else [routes],
        "cds": [grpc_cluster(cluster)],
        "eds": [build.load_assignment(cluster, endpoints)],
    }
    return resources
