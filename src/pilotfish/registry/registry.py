"""The service registry: services and their endpoints, from manifests or a plain Python API.

Sources, as Istio reads them:

- `ServiceEntry`: one service per host; endpoints listed inline, or WorkloadEntries picked by
  `workloadSelector` in the same namespace.
- `WorkloadEntry`: a workload, selected by ServiceEntries and by Kubernetes Services.
- Kubernetes `Service` (host `<name>.<namespace>.svc.cluster.local`) with its `EndpointSlice`s
  (label `kubernetes.io/service-name`); a slice endpoint's labels and service account come from
  the `Pod` its `targetRef` names, when that Pod is loaded. The selector also picks WorkloadEntries.

Library users call `add_service` / `add_workload` / `set_endpoints` directly.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Hashable, Iterable, Mapping
from operator import attrgetter
from typing import Any, TypeVar

from pilotfish.frozen import construct
from pilotfish.protos import as_dict
from pilotfish.protos.istio.networking.v1alpha3.service_entry_pb2 import ServiceEntry
from pilotfish.protos.istio.networking.v1alpha3.workload_entry_pb2 import WorkloadEntry
from pilotfish.protos.k8s import registry_pb2
from pilotfish.registry.model import (
    ENDPOINT_ORDER,
    Endpoint,
    Resolution,
    Service,
    ServicePort,
    Workload,
    protocol_of,
)
from pilotfish.sources import ConfigObject, resolve_host

__all__ = ["Registry"]

_RESOLUTIONS: tuple[Resolution, ...] = ("NONE", "STATIC", "DNS", "DNS_ROUND_ROBIN")
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
_KINDS = ("Pod", "EndpointSlice", "WorkloadEntry", "Service", "ServiceEntry")
"""The kinds `from_objects` reads."""
_OBJECT_ORDER = attrgetter("namespace", "name", "file", "index")
"""The order objects of one kind are read in (the first definition of a host wins)."""
_MESH_EXTERNAL = ServiceEntry.MESH_EXTERNAL


_Labels = tuple[tuple[str, str], ...]
_GENERATIONS = itertools.count(1)
T = TypeVar("T")


class Registry:
    """Services by host name, workloads, and explicitly listed endpoints. Thread-safe.

    Host names are unique: when two sources define the same host, the first one wins (Kubernetes
    Services before ServiceEntries, then by namespace/name) and the conflict is recorded in
    `conflicts` (Istio merges some such cases; pilotfish does not).
    """

    def __init__(self, domain: str = "cluster.local") -> None:
        self.domain = domain
        self.conflicts: list[str] = []
        self._lock = threading.Lock()
        self._services: dict[str, Service] = {}
        self._workloads: dict[tuple[str, str, str], Workload] = {}
        self._explicit: dict[str, tuple[Workload, ...]] = {}
        self._owners: dict[str, ConfigObject] = {}  # the object that defined each host
        self._sorted: list[Service] | None = None
        self._derived: dict[str, tuple[int, Any]] = {}
        self.generation = next(_GENERATIONS)
        """Changes whenever the services (by value) change, in any registry: translation
        reuses what it derived from the list of services while it stays the same."""
        # Translation asks for the same endpoints many times (every subset, every replay of a
        # memoized unit); any change to the registry forgets the answers.
        self._answers: dict[str, dict[tuple[int, _Labels | None], list[Endpoint]]] = {}

    # -- the Python API ---------------------------------------------------------------------

    def add_service(self, service: Service, endpoints: Iterable[Workload] | None = None) -> None:
        """Add (or replace) a service; `endpoints` lists its instances explicitly."""
        with self._lock:
            self._answers.clear()
            self._sorted = None
            self.generation = next(_GENERATIONS)
            self._services[service.hostname] = service
            self._owners.pop(service.hostname, None)
            if endpoints is not None:
                self._explicit[service.hostname] = tuple(endpoints)

    def set_endpoints(self, hostname: str, endpoints: Iterable[Workload]) -> None:
        """Replace the explicitly listed instances of a service."""
        with self._lock:
            self._answers.clear()
            self._explicit[hostname] = tuple(endpoints)

    def remove_service(self, hostname: str) -> None:
        """Forget a service and its explicit endpoints."""
        with self._lock:
            self._answers.clear()
            self._sorted = None
            self.generation = next(_GENERATIONS)
            self._services.pop(hostname, None)
            self._explicit.pop(hostname, None)
            self._owners.pop(hostname, None)

    def add_workload(self, workload: Workload) -> None:
        """Add (or replace, by namespace/name/address) a workload that selectors can pick."""
        with self._lock:
            self._answers.clear()
            self._workloads[workload.namespace, workload.name, workload.address] = workload

    def remove_workload(self, workload: Workload) -> None:
        """Forget a workload."""
        with self._lock:
            self._answers.clear()
            self._workloads.pop((workload.namespace, workload.name, workload.address), None)

    # -- queries ----------------------------------------------------------------------------

    def services(self) -> list[Service]:
        """Every service, sorted by host name (translators depend on a stable order)."""
        with self._lock:
            if self._sorted is None:
                self._sorted = [self._services[h] for h in sorted(self._services)]
            return list(self._sorted)

    def service(self, hostname: str) -> Service | None:
        """The service with this host name."""
        with self._lock:
            return self._services.get(hostname)

    def instances(self, hostname: str) -> list[Workload]:
        """The workloads behind a service: explicit ones, then those its selector picks."""
        with self._lock:
            service = self._services.get(hostname)
            return [] if service is None else self._instances(service)

    def _instances(self, service: Service) -> list[Workload]:
        """`instances` of a service of the registry (lock held)."""
        found = list(self._explicit.get(service.hostname, ()))
        if service.selector is not None:
            found.extend(
                w
                for key, w in sorted(self._workloads.items())
                if w.namespace == service.namespace and w.matches(service.selector)
            )
        return found

    def endpoints(
        self, hostname: str, port: int, subset: Mapping[str, str] | None = None
    ) -> list[Endpoint]:
        """Endpoints of a service port, optionally only those carrying the `subset` labels;
        sorted, so equal registries give equal load assignments."""
        key = (port, tuple(sorted(subset.items())) if subset is not None else None)
        with self._lock:
            answers = self._answers.get(hostname)
            known = answers.get(key) if answers is not None else None
        if known is not None:
            return list(known)
        if subset is None:
            found = self._endpoints(hostname, port)
        else:  # a subset of the port's endpoints (made, and kept, once for all its subsets)
            found = [e for e in self.endpoints(hostname, port) if e.matches(subset)]
        with self._lock:
            self._answers.setdefault(hostname, {})[key] = found
        return list(found)

    def _endpoints(self, hostname: str, port: int) -> list[Endpoint]:
        with self._lock:
            service = self._services.get(hostname)
            service_port = service.port(port) if service is not None else None
            if service is None or service_port is None:
                return []
            workloads = self._instances(service)
        # Equal endpoints are one: keyed by their fields in order (what equality and sorting
        # compare), each key is made once and hashed in C, not by the dataclass's `__hash__`.
        found = {}
        for w in workloads:
            endpoint = Endpoint.of_workload(w, _workload_port(service_port, w))
            found[ENDPOINT_ORDER(endpoint)] = endpoint
        return [found[key] for key in sorted(found)]

    def services_of(self, namespace: str, labels: Mapping[str, str]) -> list[Service]:
        """Services whose selector picks a workload with these labels in `namespace` (the
        services a sidecar receives inbound traffic for)."""
        return [
            s
            for s in self.derived("selecting", _selecting).get(namespace, ())
            if all(labels.get(k) == v for k, v in (s.selector or {}).items())
        ]

    def derived(self, name: str, compute: Callable[[list[Service]], T]) -> T:
        """`compute(services())`, kept under `name` until the services change (`generation`):
        groupings of every service that translation needs each round cost nothing while the
        services stay the same. The value is shared: do not change it."""
        with self._lock:
            found = self._derived.get(name)
            if found is not None and found[0] == self.generation:
                value: T = found[1]
                return value
        generation = self.generation
        value = compute(self.services())
        with self._lock:
            self._derived[name] = (generation, value)
        return value

    # -- from manifests ---------------------------------------------------------------------

    @classmethod
    def from_objects(
        cls, objects: Iterable[ConfigObject], domain: str = "cluster.local"
    ) -> Registry:
        """A registry of every ServiceEntry, WorkloadEntry, Service, EndpointSlice and Pod."""
        registry = cls(domain)
        # Grouped in one pass, only the kinds the registry reads (a mesh's routing config, most
        # of its objects, is neither kept nor sorted), then each kind sorted.
        by_kind: dict[str, list[ConfigObject]] = {kind: [] for kind in _KINDS}
        for obj in objects:
            found = by_kind.get(obj.kind)
            if found is not None:
                found.append(obj)
        for found in by_kind.values():
            found.sort(key=_OBJECT_ORDER)

        pods = {(o.namespace, o.name): o for o in by_kind["Pod"]}
        slices: dict[tuple[str, str], list[ConfigObject]] = {}
        for obj in by_kind["EndpointSlice"]:
            if SERVICE_NAME_LABEL in obj.labels:
                slices.setdefault((obj.namespace, obj.labels[SERVICE_NAME_LABEL]), []).append(obj)
        # No other thread sees the registry yet: its dictionaries are filled without the lock
        # and without `add_service`'s bookkeeping per service (the registry is new: no
        # answers to forget, its own generation).
        workloads = registry._workloads
        for obj in by_kind["WorkloadEntry"]:
            workload = _of_entry(obj)
            workloads[workload.namespace, workload.name, workload.address] = workload
        ports: _PortsMade = {}
        # Kubernetes first (Istio's aggregate registry asks it first), then ServiceEntries.
        for obj in by_kind["Service"]:
            service, endpoints = _kubernetes_service(obj, domain, ports)
            for slice_ in slices.get((obj.namespace, obj.name), []):
                endpoints.extend(_slice_workloads(slice_, pods))
            registry._add_once(service, tuple(endpoints), obj)
        add_once = registry._add_once
        for obj in by_kind["ServiceEntry"]:
            for service, made in _service_entry(obj, domain, ports):
                add_once(service, made, obj)
        return registry

    def _add_once(
        self, service: Service, endpoints: tuple[Workload, ...], obj: ConfigObject
    ) -> None:
        """Add a service while `from_objects` builds the registry: the first definition of a
        host wins, a later one is recorded in `conflicts`."""
        hostname = service.hostname
        if hostname in self._services:
            self.conflicts.append(
                f"{obj.file}[{obj.index}] {obj.kind} {obj.namespace}/{obj.name}: host "
                f"{hostname} is already defined; this definition is ignored"
            )
            return
        self._services[hostname] = service
        self._explicit[hostname] = endpoints
        self._owners[hostname] = obj

    def apply(self, removed: Iterable[ConfigObject], added: Iterable[ConfigObject]) -> bool:
        """Change a registry made by `from_objects` by the objects that changed since, where
        that can be done in place: ServiceEntries that define their hosts alone, and
        WorkloadEntries. Returns False, changing nothing, for anything else (Kubernetes
        objects, a host defined twice): then build it again with `from_objects`."""
        removed, added = list(removed), list(added)
        if self.conflicts or any(
            o.kind not in ("ServiceEntry", "WorkloadEntry") for o in (*removed, *added)
        ):
            return False
        # Each ServiceEntry's services, made once: (object, [(service, endpoints), ...]).
        ports: _PortsMade = {}
        old = [
            (o, _service_entry(o, self.domain, ports)) for o in removed if o.kind == "ServiceEntry"
        ]
        new = [
            (o, _service_entry(o, self.domain, ports)) for o in added if o.kind == "ServiceEntry"
        ]
        gone = {id(o) for o in removed}
        with self._lock:
            if any(self._owners.get(s.hostname) is not o for o, made in old for s, _ in made):
                return False
            new_hosts: set[str] = set()
            for _, made in new:
                for service, _ in made:
                    owner = self._owners.get(service.hostname)
                    taken = service.hostname in self._services and (
                        owner is None or id(owner) not in gone
                    )
                    if taken or service.hostname in new_hosts:
                        return False
                    new_hosts.add(service.hostname)
            hosts = new_hosts | {s.hostname for _, made in old for s, _ in made}
            before = {h: self._key(h) for h in hosts}
            for _, made in old:
                for service, _ in made:
                    self._drop(service.hostname)
            for obj, made in new:
                for service, endpoints in made:
                    self._drop(service.hostname)
                    self._sorted = None
                    self._services[service.hostname] = service
                    self._explicit[service.hostname] = tuple(endpoints)
                    self._owners[service.hostname] = obj
            workloads = [_of_entry(o) for o in removed if o.kind == "WorkloadEntry"]
            for workload in workloads:
                self._workloads.pop((workload.namespace, workload.name, workload.address), None)
            for obj in added:
                if obj.kind == "WorkloadEntry":
                    workload = _of_entry(obj)
                    self._workloads[workload.namespace, workload.name, workload.address] = workload
                    workloads.append(workload)
            if workloads:
                self._answers.clear()  # selectors pick workloads: not traced by host
            if any(self._key(h) != key for h, key in before.items()):
                self.generation = next(_GENERATIONS)
        return True

    def _key(self, hostname: str) -> Hashable:
        service = self._services.get(hostname)
        return None if service is None else service.key

    def _drop(self, hostname: str) -> None:
        """Forget a host and the answers about it (lock held)."""
        if self._services.pop(hostname, None) is not None:
            self._sorted = None  # `apply` decides whether that changed `generation`
        self._explicit.pop(hostname, None)
        self._owners.pop(hostname, None)
        self._answers.pop(hostname, None)


def _selecting(services: list[Service]) -> dict[str, list[Service]]:
    """Services with a selector, by namespace."""
    found: dict[str, list[Service]] = {}
    for service in services:
        if service.selector:
            found.setdefault(service.namespace, []).append(service)
    return found


def _of_entry(obj: ConfigObject) -> Workload:
    assert isinstance(obj.spec, WorkloadEntry)
    return _workload(obj.spec, obj.namespace, obj.name, obj.labels)


def _workload_port(port: ServicePort, workload: Workload) -> int:
    if port.name in workload.ports:
        return workload.ports[port.name]
    if isinstance(port.target_port, str) and port.target_port in workload.ports:
        return workload.ports[port.target_port]
    if isinstance(port.target_port, int) and port.target_port:
        return port.target_port
    return port.number


def _workload(
    spec: WorkloadEntry, namespace: str, name: str = "", labels: Mapping[str, str] | None = None
) -> Workload:
    own = as_dict(spec.labels)
    ports = spec.ports
    return construct(
        Workload,
        address=spec.address,
        name=name,
        namespace=namespace,
        labels={**labels, **own} if labels else own,
        ports=as_dict(ports) if ports else {},
        locality=spec.locality,
        weight=spec.weight or 1,
        service_account=spec.service_account or "default",
        network=spec.network,
    )


_PortSpec = tuple[str, int, str, int | str | None]  # name, number, declared protocol, target
_PortsMade = dict[tuple[_PortSpec, ...], tuple[ServicePort, ...]]


def _ports(specs: tuple[_PortSpec, ...], made: _PortsMade) -> tuple[ServicePort, ...]:
    """The ports of these specs, made once for every service with the same ones (most
    services of a mesh declare the same few ports)."""
    found = made.get(specs)
    if found is None:
        found = made[specs] = tuple(
            [
                construct(
                    ServicePort,
                    name=name,
                    number=number,
                    protocol=protocol_of(name, declared),
                    target_port=target,
                )
                for name, number, declared, target in specs
            ]
        )
    return found


def _service_entry(
    obj: ConfigObject, domain: str, ports_made: _PortsMade
) -> list[tuple[Service, tuple[Workload, ...]]]:
    """A ServiceEntry's services, one per host, sharing its endpoints. Made for every
    ServiceEntry of a mesh: its workloads and services are made in place, without a call per
    item or the frozen dataclasses' constructors (a test compares them with theirs)."""
    spec = obj.spec
    assert isinstance(spec, ServiceEntry)
    namespace = obj.namespace
    name = obj.name
    # Repeated fields are sliced into lists before they are iterated: iterating a upb
    # container is slower than slicing it.
    specs = tuple([(p.name, p.number, p.protocol, p.target_port or None) for p in spec.ports[:]])
    ports = ports_made.get(specs)
    if ports is None:
        ports = _ports(specs, ports_made)
    selector = (
        as_dict(spec.workload_selector.labels) if spec.HasField("workload_selector") else None
    )
    endpoints = tuple([_workload(e, namespace, name) for e in spec.endpoints[:]])
    resolution = _RESOLUTIONS[spec.resolution]
    mesh_external = spec.location == _MESH_EXTERNAL
    addresses = _strings(spec.addresses)
    subject_alt_names = _strings(spec.subject_alt_names)
    found = []
    for host in spec.hosts[:]:
        service = construct(
            Service,
            hostname=resolve_host(host, namespace, domain),
            namespace=namespace,
            ports=ports,
            resolution=resolution,
            mesh_external=mesh_external,
            addresses=addresses,
            selector=selector,
            subject_alt_names=subject_alt_names,
        )
        found.append((service, endpoints))
    return found


def _strings(field: Iterable[str]) -> tuple[str, ...]:
    """A repeated string field as a tuple: most are empty, and `tuple()` of an empty
    repeated field costs twice the test for it."""
    return tuple(field) if field else ()


def _kubernetes_service(
    obj: ConfigObject, domain: str, ports_made: _PortsMade
) -> tuple[Service, list[Workload]]:
    spec = obj.spec
    assert isinstance(spec, registry_pb2.ServiceSpec)
    ports = _ports(
        tuple(
            [
                (
                    p.name,
                    p.port,
                    p.app_protocol,
                    _int_or_string(p.target_port) if p.HasField("target_port") else None,
                )
                for p in spec.ports[:]
            ]
        ),
        ports_made,
    )
    addresses = tuple(a for a in (*spec.cluster_ips, spec.cluster_ip) if a and a != "None")
    hostname = f"{obj.name}.{obj.namespace}.svc.{domain}"
    if spec.type == "ExternalName":
        service = Service(hostname, obj.namespace, ports, "DNS", mesh_external=True)
        return service, [Workload(address=spec.external_name, namespace=obj.namespace)]
    selector = dict(spec.selector) if spec.selector else None
    service = Service(
        hostname,
        obj.namespace,
        ports,
        "STATIC",
        addresses=tuple(dict.fromkeys(addresses)),
        selector=selector,
    )
    return service, []


def _int_or_string(value: Any) -> int | str | None:
    kind = value.WhichOneof("kind")
    if kind == "number_value":
        return int(value.number_value)
    if kind == "string_value":
        text = str(value.string_value)
        return int(text) if text.isdigit() else text
    return None


def _slice_workloads(
    obj: ConfigObject, pods: Mapping[tuple[str, str], ConfigObject]
) -> list[Workload]:
    spec = obj.spec
    assert isinstance(spec, registry_pb2.EndpointSlice)
    ports = {p.name: p.port for p in spec.ports[:]}
    out = []
    for endpoint in spec.endpoints[:]:
        conditions = endpoint.conditions
        if conditions.HasField("ready") and not conditions.ready.value:
            continue
        labels: Mapping[str, str] = {}
        account = "default"
        ref = endpoint.target_ref
        pod = pods.get((ref.namespace or obj.namespace, ref.name)) if ref.kind == "Pod" else None
        if pod is not None:
            labels = pod.labels
            assert isinstance(pod.spec, registry_pb2.Pod)
            account = pod.spec.spec.service_account_name or "default"
        locality = f"/{endpoint.zone}" if endpoint.zone else ""
        for address in endpoint.addresses[:]:
            out.append(
                Workload(
                    address=address,
                    name=ref.name or obj.name,
                    namespace=obj.namespace,
                    labels=labels,
                    ports=ports,
                    locality=locality,
                    service_account=account,
                )
            )
    return out
