"""Translate Istio-compatible config and a service registry into one proxy's Envoy config.

`translate` is pure: the same objects, registry contents and proxy give byte-equal resources
and the same versions (every version starts with the translator version).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from envoy.config.cluster.v3.cluster_pb2 import Cluster
from envoy.config.endpoint.v3.endpoint_pb2 import ClusterLoadAssignment
from envoy.config.listener.v3.listener_pb2 import Listener
from envoy.config.route.v3.route_pb2 import RouteConfiguration
from envoy.extensions.transport_sockets.tls.v3.secret_pb2 import Secret
from google.protobuf.message import Message

from pilotfish.cache import Messages, Snapshot
from pilotfish.registry import Registry
from pilotfish.sources import ConfigObject
from pilotfish.translators.changes import Changes
from pilotfish.translators.gateway import gateway_config
from pilotfish.translators.index import ConfigIndex
from pilotfish.translators.memo import TranslationMemo
from pilotfish.translators.naming import ROOT_CA_SECRET, WORKLOAD_SECRET
from pilotfish.translators.outbound import outbound
from pilotfish.translators.proxy import Proxy
from pilotfish.translators.shared import SharedParts
from pilotfish.translators.sidecar import inbound, outbound_listeners, outbound_routes
from pilotfish.translators.version import TRANSLATOR_VERSION

__all__ = ["Translation", "translate"]


@dataclass(frozen=True)
class Translation:
    """One proxy's Envoy resources, by type, in a stable order."""

    proxy: Proxy
    listeners: tuple[Listener, ...]
    routes: Sequence[RouteConfiguration]
    clusters: Sequence[Cluster]
    endpoints: Sequence[ClusterLoadAssignment]
    secrets: tuple[Secret, ...] = ()
    translator_version: str = TRANSLATOR_VERSION
    warnings: tuple[str, ...] = field(default=())

    def resources(self) -> Mapping[str, Sequence[Message]]:
        """Resources keyed by short type name, as `Snapshot` takes them."""
        return {
            "lds": self.listeners,
            "rds": self.routes,
            "cds": self.clusters,
            "eds": self.endpoints,
            "sds": self.secrets,
        }

    def snapshot(self, memo: TranslationMemo | None = None) -> Snapshot:
        """A cache snapshot; versions are `<translator version>/<content hash>`. With the
        `memo` of the last round, resources equal to last round's are not serialized again."""
        prefix = f"{self.translator_version}/"
        if memo is not None:
            return memo.snapshot(self.resources(), prefix)
        return Snapshot(self.resources(), version_prefix=prefix)


def translate(
    proxy: Proxy,
    config: ConfigIndex | Iterable[ConfigObject],
    registry: Registry,
    *,
    secrets: Iterable[Secret] = (),
    memo: TranslationMemo | None = None,
    changes: Changes | None = None,
    shared: SharedParts | None = None,
) -> Translation:
    """The Envoy config for `proxy` (a sidecar or a gateway).

    With `secrets` named `default` and `ROOTCA` (the proxy's workload certificate and the mesh
    roots), sidecars speak mutual TLS: in-mesh upstreams without a DestinationRule `tls`
    setting use ISTIO_MUTUAL (auto mTLS), and inbound ports follow PeerAuthentication
    (PERMISSIVE by default).

    With a `memo` (one per proxy shape, kept between rounds), only the services whose inputs
    changed since its last round are translated again (see `TranslationMemo`); `changes`
    (the objects replaced since that round, as `Changes`) spares checking the others. With
    `shared`, the clusters, load assignments and sidecar routes come from it (made once a round
    for all the shapes that see them alike), not from `memo`.
    """
    index = config if isinstance(config, ConfigIndex) else ConfigIndex.build(config)
    secrets = list(secrets)
    # Mutual TLS needs the workload's certificate and the roots (from a CA, over SDS); without
    # them Envoy would wait for the secrets forever, so traffic stays plain text.
    mtls = {WORKLOAD_SECRET, ROOT_CA_SECRET} <= {s.name for s in secrets}
    if memo is not None:
        memo.begin(changes)
    if shared is not None:
        encoded, endpoints = shared.clusters(proxy, index, registry, mtls)
    else:
        encoded, endpoints = outbound(proxy, index, registry, auto_mtls=mtls, memo=memo)
    own_clusters: list[Cluster] = []
    listeners: list[Listener]
    routes: Sequence[RouteConfiguration]
    if proxy.kind == "gateway":
        listeners, routes = gateway_config(proxy, index, registry)
        routes = tuple(routes)
    else:
        if shared is not None:
            routes = Messages(shared.routes(proxy, index, registry), shared=True)
        else:
            routes = Messages(outbound_routes(proxy, index, registry, memo))
        listeners = outbound_listeners(proxy, index, registry)
        inbound_listeners, inbound_clusters = inbound(proxy, registry, index, mtls=mtls)
        listeners += inbound_listeners
        own_clusters = inbound_clusters
    if memo is not None:
        memo.end()
    # A view's own tuples, when nothing is added to them, are shared by its shapes' snapshots.
    if own_clusters:
        clusters = Messages((*encoded, *own_clusters))
    else:
        clusters = Messages(encoded, shared=shared is not None)
    return Translation(
        proxy=proxy,
        listeners=tuple(listeners),
        routes=routes,
        clusters=clusters,
        endpoints=Messages(endpoints, shared=shared is not None),
        secrets=tuple(sorted(secrets, key=lambda s: s.name)),
        warnings=tuple(registry.conflicts),
    )
