"""What the mesh knows about services and the workloads behind them, independent of the source.

A `Service` is a host name with ports; a `Workload` is one instance (a pod, a VM, a local
process) with an address, labels and an identity. An `Endpoint` is a workload's address for one
service port, the unit that ends up in a ClusterLoadAssignment.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from functools import cached_property
from operator import attrgetter
from typing import Literal

from pilotfish.frozen import construct

__all__ = [
    "HTTP_PROTOCOLS",
    "Endpoint",
    "Resolution",
    "Service",
    "ServicePort",
    "Workload",
    "protocol_of",
]

Resolution = Literal["STATIC", "DNS", "DNS_ROUND_ROBIN", "NONE"]

HTTP_PROTOCOLS = frozenset({"HTTP", "HTTP2", "GRPC", "GRPC-WEB"})
"""Protocols served through an HTTP connection manager (routes, retries, faults)."""

_KNOWN = ("HTTP", "HTTP2", "HTTPS", "GRPC", "GRPC-WEB", "TCP", "TLS", "MONGO", "REDIS", "MYSQL")


def protocol_of(name: str, declared: str = "") -> str:
    """Istio's protocol selection: an explicit protocol, else the port name's prefix
    (`http`, `http-web`, `grpc-api`), else TCP (pilotfish does no protocol sniffing)."""
    if declared:
        upper = declared.upper()
        return "HTTP" if upper == "HTTP1" else upper
    prefix = name.split("-", 1)[0].upper()
    return prefix if prefix in _KNOWN else "TCP"


@dataclass(frozen=True)
class ServicePort:
    """A port of a service; `target_port` is where workloads listen (a number or a port name)."""

    name: str
    number: int
    protocol: str = "HTTP"
    target_port: int | str | None = None

    @property
    def is_http(self) -> bool:
        """Whether traffic on this port is routed as HTTP."""
        return self.protocol in HTTP_PROTOCOLS


_PORT_VALUES = attrgetter(*(f.name for f in fields(ServicePort)))
"""A port's fields in order, as `Service.key` writes them."""


@dataclass(frozen=True)
class Service:
    """A host name clients use, its ports, and how its endpoints are found.

    `selector` picks workloads by label in the service's namespace (Kubernetes selector,
    ServiceEntry workloadSelector); `None` means endpoints are listed explicitly.
    """

    hostname: str
    namespace: str = "default"
    ports: tuple[ServicePort, ...] = ()
    resolution: Resolution = "STATIC"
    mesh_external: bool = False
    addresses: tuple[str, ...] = ()
    selector: Mapping[str, str] | None = None
    subject_alt_names: tuple[str, ...] = ()

    def port(self, number: int) -> ServicePort | None:
        """The port with this number, if the service has it."""
        for port in self.ports:  # a loop, not next() over a generator: asked per port and subset
            if port.number == number:
                return port
        return None

    @cached_property
    def key(self) -> str:
        """The service by value, as a string (hashable where the dataclass is not: its
        selector is a mapping). Made once per object; a string hashes once, as translation
        looks its units up by it many times a round."""
        selector = tuple(sorted(self.selector.items())) if self.selector is not None else None
        value = (
            self.hostname,
            self.namespace,
            tuple(map(_PORT_VALUES, self.ports)),  # a dataclass's repr is 5 times slower
            self.resolution,
            self.mesh_external,
            self.addresses,
            selector,
            self.subject_alt_names,
        )
        digest = hashlib.blake2b(repr(value).encode(), digest_size=16).hexdigest()
        return f"{self.hostname}#{digest}"


@dataclass(frozen=True)
class Workload:
    """One instance: where it is, what it is labelled, who it is.

    `ports` maps service port names to the workload's own port numbers (WorkloadEntry.ports);
    `locality` is `region/zone/subzone`.
    """

    address: str
    name: str = ""
    namespace: str = "default"
    labels: Mapping[str, str] = field(default_factory=dict)
    ports: Mapping[str, int] = field(default_factory=dict)
    locality: str = ""
    weight: int = 1
    service_account: str = "default"
    network: str = ""

    def matches(self, selector: Mapping[str, str]) -> bool:
        """Whether every label of `selector` is on this workload."""
        labels = self.labels
        # A loop, not all() over a generator: asked of every workload for every selector.
        for key, value in selector.items():  # noqa: SIM110
            if labels.get(key) != value:
                return False
        return True


@dataclass(frozen=True, order=True)
class Endpoint:
    """A workload's address for one service port."""

    address: str
    port: int
    locality: str = ""
    weight: int = 1
    labels: tuple[tuple[str, str], ...] = ()
    service_account: str = "default"
    namespace: str = "default"
    workload: str = ""

    def matches(self, selector: Mapping[str, str]) -> bool:
        """Whether every label of `selector` is on this endpoint (subset filtering)."""
        labels = self._label_map
        # A loop, not all() over a generator: asked of every endpoint for every subset.
        for key, value in selector.items():  # noqa: SIM110
            if labels.get(key) != value:
                return False
        return True

    @cached_property
    def _label_map(self) -> dict[str, str]:
        # Made once: an endpoint is matched against every subset of its service.
        return dict(self.labels)

    @classmethod
    def of_workload(cls, workload: Workload, port: int) -> Endpoint:
        """The workload's endpoint on `port`. Made for every workload of every service port
        of a mesh, so without the frozen dataclass's per-field `__setattr__` (a third of the
        cost); the fields are exactly the constructor's."""
        return construct(
            cls,
            address=workload.address,
            port=port,
            locality=workload.locality,
            weight=workload.weight or 1,
            labels=tuple(sorted(workload.labels.items())),
            service_account=workload.service_account,
            namespace=workload.namespace,
            workload=workload.name,
            _label_map=dict(workload.labels),  # the cached property, made here at once
        )


ENDPOINT_ORDER = attrgetter(*(f.name for f in fields(Endpoint)))
"""An endpoint's fields in order: the key that sorts endpoints as their comparisons do, made
once per endpoint rather than twice per comparison."""
