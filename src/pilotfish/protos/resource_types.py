"""The table of xDS resource types: type URL, message class, how a name is read, which service.

Table-driven so that the protocol core, the caches and the server never special-case a type by
hand; adding a type is one row.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from google.protobuf import descriptor_pool

from pilotfish.errors import UnknownTypeError
from pilotfish.protos import messages as m

__all__ = [
    "ADS_SERVICE",
    "CLUSTER_TYPE",
    "ENDPOINT_TYPE",
    "EXTENSION_CONFIG_TYPE",
    "LISTENER_TYPE",
    "RESOURCE_TYPES",
    "RESOURCE_WRAPPER_TYPE",
    "ROUTE_TYPE",
    "RUNTIME_TYPE",
    "SCOPED_ROUTE_TYPE",
    "SECRET_TYPE",
    "TTL_CLIENT_FEATURE",
    "TYPE_URL_PREFIX",
    "VIRTUAL_HOST_TYPE",
    "ResourceType",
    "ServiceMethods",
    "resource_name",
    "resource_type",
]

TYPE_URL_PREFIX = "type.googleapis.com/"

LISTENER_TYPE = TYPE_URL_PREFIX + "envoy.config.listener.v3.Listener"
ROUTE_TYPE = TYPE_URL_PREFIX + "envoy.config.route.v3.RouteConfiguration"
SCOPED_ROUTE_TYPE = TYPE_URL_PREFIX + "envoy.config.route.v3.ScopedRouteConfiguration"
VIRTUAL_HOST_TYPE = TYPE_URL_PREFIX + "envoy.config.route.v3.VirtualHost"
CLUSTER_TYPE = TYPE_URL_PREFIX + "envoy.config.cluster.v3.Cluster"
ENDPOINT_TYPE = TYPE_URL_PREFIX + "envoy.config.endpoint.v3.ClusterLoadAssignment"
SECRET_TYPE = TYPE_URL_PREFIX + "envoy.extensions.transport_sockets.tls.v3.Secret"
RUNTIME_TYPE = TYPE_URL_PREFIX + "envoy.service.runtime.v3.Runtime"
EXTENSION_CONFIG_TYPE = TYPE_URL_PREFIX + "envoy.config.core.v3.TypedExtensionConfig"
RESOURCE_WRAPPER_TYPE = TYPE_URL_PREFIX + "envoy.service.discovery.v3.Resource"
"""State-of-the-world responses wrap TTL'd resources in `Resource` (with its TTL)."""
TTL_CLIENT_FEATURE = "xds.config.supports-resource-ttl"
"""The node client feature that says a client understands TTLs and `Resource` wrappers."""


@dataclass(frozen=True, slots=True)
class ServiceMethods:
    """Full gRPC method paths of one discovery service (None where the service lacks one)."""

    service: str
    stream: str | None
    delta: str | None
    fetch: str | None


ADS_SERVICE = ServiceMethods(
    service="envoy.service.discovery.v3.AggregatedDiscoveryService",
    stream="/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources",
    delta="/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources",
    fetch=None,
)


@dataclass(frozen=True, slots=True)
class ResourceType:
    """One xDS resource type.

    `full_state` types (LDS, CDS) are answered with every subscribed resource in each
    state-of-the-world response: a missing one means "deleted" to the client. `order` is the
    make-before-break position used by ordered ADS (clusters, endpoints, listeners, routes).

    `namespace_type` (VHDS: routes) says resource names are `<namespace>/<name>`, where the
    namespaces are the names of that type the client subscribed to: Envoy subscribes to a route
    configuration's virtual hosts as a whole without naming them (its first request carries no
    names) and then asks for `<route configuration>/<host>` on demand. `unresolved_aliases` says
    a subscribed name that does not exist is answered with a body-less `Resource` whose
    `aliases` repeat the name (how VHDS says "no such host", so a paused request resumes with a
    404) rather than in `removed_resources`.
    """

    type_url: str
    short_name: str
    message: type[m.Message]
    name_field: str
    service: ServiceMethods
    rest_path: str | None
    full_state: bool
    order: int
    namespace_type: str | None = None
    unresolved_aliases: bool = False

    def namespace_name(self, namespace: str) -> str:
        """For a namespaced type, the name that stands for the whole of `namespace`:
        `<namespace>/`, which is never a resource's (its own part is empty)."""
        return namespace + "/"

    def name_of(self, resource: m.Message) -> str:
        """The resource's xDS name (for example `cluster_name` of a ClusterLoadAssignment)."""
        name: str = getattr(resource, self.name_field)
        return name


def _service(
    full_name: str, stream: str | None, delta: str | None, fetch: str | None
) -> ServiceMethods:
    # Checked against the generated descriptors so a renamed method fails at import, not on a call.
    service = descriptor_pool.Default().FindServiceByName(full_name)
    known = {method.name for method in service.methods}

    def path(method: str | None) -> str | None:
        if method is None:
            return None
        if method not in known:
            raise RuntimeError(f"{full_name} has no method {method}")
        return f"/{full_name}/{method}"

    return ServiceMethods(full_name, path(stream), path(delta), path(fetch))


def _row(
    type_url: str,
    short_name: str,
    message: type[m.Message],
    name_field: str,
    service: str,
    stem: str,
    rest_path: str | None,
    *,
    full_state: bool = False,
    order: int,
    sotw: bool = True,
    namespace_type: str | None = None,
    unresolved_aliases: bool = False,
) -> ResourceType:
    methods = _service(
        service,
        f"Stream{stem}" if sotw else None,
        f"Delta{stem}",
        f"Fetch{stem}" if sotw else None,
    )
    return ResourceType(
        type_url,
        short_name,
        message,
        name_field,
        methods,
        rest_path,
        full_state,
        order,
        namespace_type,
        unresolved_aliases,
    )


_ROWS = (
    _row(CLUSTER_TYPE, "cds", m.Cluster, "name",
         "envoy.service.cluster.v3.ClusterDiscoveryService", "Clusters", "clusters",
         full_state=True, order=0),
    _row(ENDPOINT_TYPE, "eds", m.ClusterLoadAssignment, "cluster_name",
         "envoy.service.endpoint.v3.EndpointDiscoveryService", "Endpoints", "endpoints", order=1),
    _row(LISTENER_TYPE, "lds", m.Listener, "name",
         "envoy.service.listener.v3.ListenerDiscoveryService", "Listeners", "listeners",
         full_state=True, order=2),
    _row(ROUTE_TYPE, "rds", m.RouteConfiguration, "name",
         "envoy.service.route.v3.RouteDiscoveryService", "Routes", "routes", order=3),
    _row(SCOPED_ROUTE_TYPE, "srds", m.ScopedRouteConfiguration, "name",
         "envoy.service.route.v3.ScopedRoutesDiscoveryService", "ScopedRoutes", "scoped-routes",
         order=4),
    _row(VIRTUAL_HOST_TYPE, "vhds", m.VirtualHost, "name",
         "envoy.service.route.v3.VirtualHostDiscoveryService", "VirtualHosts", None,
         order=5, sotw=False, namespace_type=ROUTE_TYPE, unresolved_aliases=True),
    _row(SECRET_TYPE, "sds", m.Secret, "name",
         "envoy.service.secret.v3.SecretDiscoveryService", "Secrets", "secrets", order=6),
    _row(RUNTIME_TYPE, "rtds", m.Runtime, "name",
         "envoy.service.runtime.v3.RuntimeDiscoveryService", "Runtime", "runtime", order=7),
    _row(EXTENSION_CONFIG_TYPE, "ecds", m.TypedExtensionConfig, "name",
         "envoy.service.extension.v3.ExtensionConfigDiscoveryService", "ExtensionConfigs",
         "extension_configs", order=8),
)  # fmt: skip

RESOURCE_TYPES: Mapping[str, ResourceType] = MappingProxyType({row.type_url: row for row in _ROWS})
_BY_SHORT_NAME = {row.short_name: row for row in _ROWS}


def resource_type(key: str) -> ResourceType:
    """Look a type up by type URL or by short name (`"cds"`); UnknownTypeError otherwise."""
    row = RESOURCE_TYPES.get(key) or _BY_SHORT_NAME.get(key)
    if row is None:
        raise UnknownTypeError(f"unknown xDS resource type {key!r}")
    return row


def resource_name(resource: m.Message) -> str:
    """The xDS name of any served resource message."""
    return resource_type(TYPE_URL_PREFIX + resource.DESCRIPTOR.full_name).name_of(resource)
