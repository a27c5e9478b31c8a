"""Aliases for the generated Envoy (xds-protos) message classes pilotfish uses.

Every other pilotfish module takes these names from `pilotfish.protos`, so the generated packages
(`envoy`, `xds`, `udpa`, `google.rpc`) are imported in one place.
"""

from __future__ import annotations

from envoy.config.cluster.v3.cluster_pb2 import Cluster
from envoy.config.core.v3.base_pb2 import Node
from envoy.config.core.v3.extension_pb2 import TypedExtensionConfig
from envoy.config.endpoint.v3.endpoint_pb2 import (
    ClusterLoadAssignment,
)
from envoy.config.listener.v3.listener_pb2 import Listener
from envoy.config.route.v3.route_components_pb2 import VirtualHost
from envoy.config.route.v3.route_pb2 import RouteConfiguration
from envoy.config.route.v3.scoped_route_pb2 import (
    ScopedRouteConfiguration,
)
from envoy.extensions.filters.network.http_connection_manager.v3.http_connection_manager_pb2 import (  # noqa: E501
    HttpConnectionManager,
)
from envoy.extensions.transport_sockets.tls.v3.secret_pb2 import Secret

# The service modules carry the gRPC service descriptors (method names) used by the server.
from envoy.service.cluster.v3 import cds_pb2 as _cds  # noqa: F401
from envoy.service.discovery.v3 import ads_pb2 as _ads  # noqa: F401
from envoy.service.discovery.v3.discovery_pb2 import (
    DeltaDiscoveryRequest,
    DeltaDiscoveryResponse,
    DiscoveryRequest,
    DiscoveryResponse,
    Resource,
)
from envoy.service.endpoint.v3 import eds_pb2 as _eds  # noqa: F401
from envoy.service.extension.v3 import config_discovery_pb2 as _ecds  # noqa: F401
from envoy.service.listener.v3 import lds_pb2 as _lds  # noqa: F401
from envoy.service.route.v3 import rds_pb2 as _rds  # noqa: F401
from envoy.service.route.v3 import srds_pb2 as _srds  # noqa: F401
from envoy.service.runtime.v3 import rtds_pb2 as _rtds  # noqa: F401
from envoy.service.runtime.v3.rtds_pb2 import Runtime
from envoy.service.secret.v3 import sds_pb2 as _sds  # noqa: F401
from google.protobuf.any_pb2 import Any
from google.protobuf.message import Message
from google.rpc.status_pb2 import Status

__all__ = [
    "Any",
    "Cluster",
    "ClusterLoadAssignment",
    "DeltaDiscoveryRequest",
    "DeltaDiscoveryResponse",
    "DiscoveryRequest",
    "DiscoveryResponse",
    "HttpConnectionManager",
    "Listener",
    "Message",
    "Node",
    "Resource",
    "RouteConfiguration",
    "Runtime",
    "ScopedRouteConfiguration",
    "Secret",
    "Status",
    "TypedExtensionConfig",
    "VirtualHost",
]
