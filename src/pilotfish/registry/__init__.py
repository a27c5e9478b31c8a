"""The service registry: services, workloads and endpoints, from manifests or Python."""

from __future__ import annotations

from pilotfish.registry.model import (
    HTTP_PROTOCOLS,
    Endpoint,
    Resolution,
    Service,
    ServicePort,
    Workload,
    protocol_of,
)
from pilotfish.registry.registry import Registry

__all__ = [
    "HTTP_PROTOCOLS",
    "Endpoint",
    "Registry",
    "Resolution",
    "Service",
    "ServicePort",
    "Workload",
    "protocol_of",
]
