"""The service registry: Kubernetes Services with EndpointSlices and Pods, ServiceEntries with
WorkloadEntries, and the plain Python API."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pilotfish.protos.istio.networking.v1alpha3.service_entry_pb2 import ServiceEntry
from pilotfish.protos.istio.networking.v1alpha3.service_entry_pb2 import (
    ServicePort as PortSpec,
)
from pilotfish.protos.istio.networking.v1alpha3.workload_entry_pb2 import WorkloadEntry
from pilotfish.registry import Endpoint, Registry, Service, ServicePort, Workload, protocol_of
from pilotfish.sources import ConfigObject, load_documents, load_path

BOOKINFO = Path(__file__).resolve().parents[2] / "shared" / "conformance" / "istio-bookinfo"

KUBE = """
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: shop}
spec:
  selector: {app: reviews}
  clusterIP: 10.0.0.7
  sessionAffinity: None
  ports: [{name: http, port: 9080, targetPort: web}, {name: grpc-api, port: 7070, targetPort: 7071}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: reviews-abc, namespace: shop, labels: {kubernetes.io/service-name: reviews}}
addressType: IPv4
ports: [{name: http, port: 8000}, {name: grpc-api, port: 7071}]
endpoints:
- addresses: [10.1.0.1]
  zone: us-east-1a
  targetRef: {kind: Pod, name: reviews-v1-1}
- addresses: [10.1.0.2]
  targetRef: {kind: Pod, name: reviews-v2-1}
- addresses: [10.1.0.3]
  conditions: {ready: false}
---
apiVersion: v1
kind: Pod
metadata: {name: reviews-v1-1, namespace: shop, labels: {app: reviews, version: v1}}
spec: {serviceAccountName: bookinfo-reviews, containers: [{name: app, image: x}]}
status: {podIP: 10.1.0.1}
---
apiVersion: v1
kind: Pod
metadata: {name: reviews-v2-1, namespace: shop, labels: {app: reviews, version: v2}}
spec: {serviceAccountName: bookinfo-reviews}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: reviews-vm, namespace: shop}
spec: {address: 10.9.0.1, labels: {app: reviews, version: v3}, ports: {http: 9999},
       serviceAccount: vm, locality: eu/west/1}
"""


def test_kubernetes_service_with_slices_pods_and_workload_entries() -> None:
    loaded = load_documents(KUBE, file="kube.yaml")
    assert loaded.errors == []
    registry = Registry.from_objects(loaded.objects)
    service = registry.service("reviews.shop.svc.cluster.local")
    assert service is not None
    assert service.addresses == ("10.0.0.7",)
    assert [(p.name, p.number, p.protocol) for p in service.ports] == [
        ("http", 9080, "HTTP"),
        ("grpc-api", 7070, "GRPC"),
    ]
    endpoints = registry.endpoints("reviews.shop.svc.cluster.local", 9080)
    # The not-ready address is left out; the VM (selected by labels) uses its own port.
    assert [(e.address, e.port) for e in endpoints] == [
        ("10.1.0.1", 8000),
        ("10.1.0.2", 8000),
        ("10.9.0.1", 9999),
    ]
    first = endpoints[0]
    assert dict(first.labels) == {"app": "reviews", "version": "v1"}
    assert first.service_account == "bookinfo-reviews"
    assert first.locality == "/us-east-1a"
    v2 = registry.endpoints("reviews.shop.svc.cluster.local", 9080, {"version": "v2"})
    assert [e.address for e in v2] == ["10.1.0.2"]
    grpc = registry.endpoints("reviews.shop.svc.cluster.local", 7070)
    assert {e.port for e in grpc} == {7071}
    assert registry.endpoints("reviews.shop.svc.cluster.local", 1234) == []


def test_service_entry_inline_endpoints_and_selector() -> None:
    loaded = load_documents(
        """
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: db, namespace: data}
spec:
  hosts: [db.internal]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 5432, name: tcp-pg, protocol: TCP}]
  endpoints:
  - {address: 10.2.0.1, labels: {role: primary}}
  - {address: 10.2.0.2, ports: {tcp-pg: 6432}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: vms, namespace: data}
spec:
  hosts: [vm.internal]
  ports: [{number: 80, name: http}]
  resolution: STATIC
  workloadSelector: {labels: {app: vm}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: vm-1, namespace: data}
spec: {address: 10.3.0.1, labels: {app: vm}, weight: 3}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: vm-elsewhere, namespace: other}
spec: {address: 10.3.0.2, labels: {app: vm}}
"""
    )
    assert loaded.errors == []
    registry = Registry.from_objects(loaded.objects)
    assert [s.hostname for s in registry.services()] == ["db.internal", "vm.internal"]
    db = registry.service("db.internal")
    assert db is not None and not db.mesh_external and db.ports[0].protocol == "TCP"
    assert [(e.address, e.port) for e in registry.endpoints("db.internal", 5432)] == [
        ("10.2.0.1", 5432),
        ("10.2.0.2", 6432),
    ]
    # The selector only picks workloads of the ServiceEntry's namespace.
    vms = registry.endpoints("vm.internal", 80)
    assert [(e.address, e.weight) for e in vms] == [("10.3.0.1", 3)]


def test_bookinfo_platform_services_and_conflicts() -> None:
    result = load_path(BOOKINFO)
    registry = Registry.from_objects(result.objects)
    hosts = [s.hostname for s in registry.services()]
    assert hosts == [
        "details.default.svc.cluster.local",
        "productpage.default.svc.cluster.local",
        "ratings.default.svc.cluster.local",
        "reviews.default.svc.cluster.local",
        "www.googleapis.com",
    ]
    google = registry.service("www.googleapis.com")
    assert google is not None and google.resolution == "DNS" and google.mesh_external
    twice = load_documents(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: again}\n"
        "spec: {hosts: [details.default.svc.cluster.local], ports: [{number: 1, name: tcp}]}\n",
        file="again.yaml",
    )
    registry = Registry.from_objects([*result.objects, *twice.objects])
    assert len(registry.conflicts) == 1
    assert "again.yaml[0] ServiceEntry default/again" in registry.conflicts[0]


def test_python_api() -> None:
    registry = Registry()
    registry.add_service(
        Service("api.example", ports=(ServicePort("http", 80),), selector={"app": "api"})
    )
    registry.add_workload(Workload("10.0.0.1", name="a", labels={"app": "api"}))
    registry.add_workload(Workload("10.0.0.2", name="b", labels={"app": "web"}))
    assert [e.address for e in registry.endpoints("api.example", 80)] == ["10.0.0.1"]
    registry.remove_workload(Workload("10.0.0.1", name="a"))
    assert registry.endpoints("api.example", 80) == []
    registry.set_endpoints("api.example", [Workload("10.0.0.9")])
    assert [e.address for e in registry.endpoints("api.example", 80)] == ["10.0.0.9"]
    assert registry.services_of("default", {"app": "api", "version": "v1"})[0].hostname == (
        "api.example"
    )
    registry.remove_service("api.example")
    assert registry.services() == []


def test_protocol_selection() -> None:
    assert protocol_of("http") == "HTTP"
    assert protocol_of("http2-x") == "HTTP2"
    assert protocol_of("grpc-web") == "GRPC"
    assert protocol_of("mysql") == "MYSQL"
    assert protocol_of("web") == "TCP"
    assert protocol_of("web", "http") == "HTTP"
    assert protocol_of("x", "HTTP1") == "HTTP"


ENTRY = """
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {name}, namespace: shop}}
spec:
  hosts: [{host}]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 80, name: http}}]
  endpoints: [{{address: {address}}}]
"""


def _entry(name: str, host: str, address: str) -> ConfigObject:
    (obj,) = load_documents(ENTRY.format(name=name, host=host, address=address)).objects
    return obj


def _answers(registry: Registry) -> list[object]:
    return [(s, registry.endpoints(s.hostname, 80)) for s in registry.services()]


def test_apply_changes_service_entries_in_place_or_says_it_cannot() -> None:
    a, b = _entry("a", "a.shop", "10.0.0.1"), _entry("b", "b.shop", "10.0.0.2")
    registry = Registry.from_objects([a, b])
    assert [e.address for e in registry.endpoints("a.shop", 80)] == ["10.0.0.1"]
    moved, added = _entry("a", "a.shop", "10.0.0.9"), _entry("c", "c.shop", "10.0.0.3")
    assert registry.apply([a], [moved, added])
    assert _answers(registry) == _answers(Registry.from_objects([moved, b, added]))
    # A second definition of a host is a conflict that only a full build records.
    clash = _entry("d", "b.shop", "10.0.0.4")
    assert not registry.apply([], [clash])
    assert _answers(registry) == _answers(Registry.from_objects([moved, b, added]))
    (kube,) = [o for o in load_documents(KUBE).objects if o.kind == "Service"]
    assert not registry.apply([], [kube])
    assert not Registry.from_objects([b, clash]).apply([b], [])  # built with a conflict


def test_protobuf_maps_become_the_same_dicts() -> None:
    from pilotfish.protos import as_dict
    from pilotfish.protos.istio.networking.v1alpha3.workload_entry_pb2 import WorkloadEntry

    entry = WorkloadEntry(labels={"app": "a", "version": "v1"}, ports={"http": 8080})
    assert as_dict(entry.labels) == dict(entry.labels) == {"app": "a", "version": "v1"}
    assert as_dict(entry.ports) == {"http": 8080} and as_dict(WorkloadEntry().labels) == {}


def test_an_endpoint_made_from_a_workload_is_the_dataclasss_own() -> None:
    """`Endpoint.of_workload` skips the frozen dataclass's constructor: every field is set
    as the constructor sets it (a field added later and not set here fails this)."""
    import dataclasses

    from pilotfish.registry import Endpoint, Workload

    workload = Workload(
        address="10.0.0.1", name="w", namespace="ns", labels={"b": "2", "a": "1"},
        locality="r/z", weight=0, service_account="sa",
    )  # fmt: skip
    made = Endpoint.of_workload(workload, 8080)
    expected = Endpoint(
        address="10.0.0.1", port=8080, locality="r/z", weight=1,
        labels=(("a", "1"), ("b", "2")), service_account="sa", namespace="ns", workload="w",
    )  # fmt: skip
    assert made == expected and hash(made) == hash(expected)
    assert {f.name: getattr(made, f.name) for f in dataclasses.fields(Endpoint)} == {
        f.name: getattr(expected, f.name) for f in dataclasses.fields(Endpoint)
    }
    assert made.matches({"a": "1"}) and not made.matches({"a": "2"})


def test_a_workload_read_from_a_workload_entry_is_the_dataclasss_own() -> None:
    """The registry makes workloads without the frozen dataclass's constructor: every field
    is set as the constructor sets it, for an entry with every field and an empty one."""
    import dataclasses

    from pilotfish.protos.istio.networking.v1alpha3.workload_entry_pb2 import WorkloadEntry
    from pilotfish.registry import Workload
    from pilotfish.registry.registry import _workload

    full = WorkloadEntry(
        address="10.0.0.1", labels={"b": "2"}, ports={"http": 8080}, locality="r/z",
        weight=3, service_account="sa", network="n1",
    )  # fmt: skip
    cases = [
        (_workload(full, "ns", "w", {"a": "1", "b": "0"}), Workload(
            address="10.0.0.1", name="w", namespace="ns", labels={"a": "1", "b": "2"},
            ports={"http": 8080}, locality="r/z", weight=3, service_account="sa", network="n1",
        )),
        (_workload(WorkloadEntry(), "ns"), Workload(address="", namespace="ns")),
    ]  # fmt: skip
    for made, expected in cases:
        assert made == expected and vars(made) == vars(expected)
        assert [f.name for f in dataclasses.fields(Workload)] == list(vars(made))
        with pytest.raises(dataclasses.FrozenInstanceError):
            made.weight = 2  # type: ignore[misc]


def test_services_and_ports_read_from_objects_are_the_dataclasses_own() -> None:
    """The registry makes services and ports without the frozen dataclasses' constructors
    (and shares one tuple of ports between services declaring the same): every field is set
    as the constructors set it, for a ServiceEntry with every field and a Kubernetes Service."""
    import dataclasses

    loaded = load_documents(
        """
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ext, namespace: data}
spec:
  hosts: [a.example.com, b]
  addresses: [240.0.0.1]
  location: MESH_EXTERNAL
  resolution: DNS
  subjectAltNames: [spiffe://x]
  workloadSelector: {labels: {app: vm}}
  ports:
  - {number: 443, name: https, protocol: TLS, targetPort: 8443}
  - {number: 80, name: http-web, protocol: HTTP}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: same-ports, namespace: data}
spec:
  hosts: [c.example.com]
  ports:
  - {number: 443, name: https, protocol: TLS, targetPort: 8443}
  - {number: 80, name: http-web, protocol: HTTP}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  selector: {app: web}
  ports: [{name: grpc-api, port: 7070, targetPort: grpc}]
"""
    )
    assert loaded.errors == []
    registry = Registry.from_objects(loaded.objects)
    ports = (
        ServicePort(name="https", number=443, protocol="TLS", target_port=8443),
        ServicePort(name="http-web", number=80, protocol="HTTP", target_port=None),
    )
    expected = [
        Service(
            hostname="a.example.com", namespace="data", ports=ports, resolution="DNS",
            mesh_external=True, addresses=("240.0.0.1",), selector={"app": "vm"},
            subject_alt_names=("spiffe://x",),
        ),
        Service(
            hostname="b.data.svc.cluster.local", namespace="data", ports=ports,
            resolution="DNS", mesh_external=True, addresses=("240.0.0.1",),
            selector={"app": "vm"}, subject_alt_names=("spiffe://x",),
        ),
        Service(
            hostname="c.example.com", namespace="data", ports=ports, resolution="NONE",
            mesh_external=True,  # the default location
        ),
        Service(
            hostname="web.shop.svc.cluster.local", namespace="shop", selector={"app": "web"},
            ports=(ServicePort(name="grpc-api", number=7070, protocol="GRPC", target_port="grpc"),),
        ),
    ]  # fmt: skip
    made = registry.services()
    assert made == expected
    for service, want in zip(made, expected, strict=True):
        assert vars(service) == vars(want) and service.key == want.key
        assert [f.name for f in dataclasses.fields(Service)] == list(vars(service))[:8]
        for port in service.ports:
            assert [f.name for f in dataclasses.fields(ServicePort)] == list(vars(port))
            with pytest.raises(dataclasses.FrozenInstanceError):
                port.number = 1  # type: ignore[misc]
        with pytest.raises(dataclasses.FrozenInstanceError):
            service.namespace = "x"  # type: ignore[misc]
    assert made[0].ports is made[1].ports is made[2].ports


# -- the registry read from objects equals one made by the dataclasses' constructors ------------

_NAMES = st.sampled_from(["a", "b", "c"])
_LABELS = st.dictionaries(st.sampled_from(["app", "version", "tier"]), _NAMES, max_size=3)
_WORKLOAD_ENTRIES = st.builds(
    WorkloadEntry,
    address=st.sampled_from(["10.0.0.1", "10.0.0.2", "10.0.0.3"]),
    labels=_LABELS,
    ports=st.dictionaries(st.sampled_from(["http", "tcp", "web"]), st.integers(1, 9), max_size=2),
    locality=st.sampled_from(["", "r/z"]),
    weight=st.integers(0, 3),
    service_account=st.sampled_from(["", "sa"]),
    network=st.sampled_from(["", "n1"]),
)
_SERVICE_PORTS = st.builds(
    PortSpec,
    number=st.sampled_from([80, 443]),
    name=st.sampled_from(["http", "tcp", "web", "grpc-x"]),
    protocol=st.sampled_from(["", "HTTP", "TCP"]),
    target_port=st.sampled_from([0, 8080]),
)
_SERVICE_ENTRIES = st.builds(
    ServiceEntry,
    hosts=st.lists(st.sampled_from(["a.example.com", "b", "*.wild.com", "c.example.com"]),
                   min_size=1, max_size=3),
    ports=st.lists(_SERVICE_PORTS, max_size=3),
    endpoints=st.lists(_WORKLOAD_ENTRIES, max_size=3),
    resolution=st.sampled_from(list(ServiceEntry.Resolution.values())),
    location=st.sampled_from(list(ServiceEntry.Location.values())),
    addresses=st.lists(st.sampled_from(["240.0.0.1", "240.0.0.2"]), max_size=2),
    subject_alt_names=st.lists(st.sampled_from(["spiffe://x"]), max_size=1),
)  # fmt: skip


@st.composite
def _objects(draw: st.DrawFn) -> list[ConfigObject]:
    found: list[tuple[str, ServiceEntry | WorkloadEntry]] = []
    for _ in range(draw(st.integers(0, 4))):
        spec = draw(_SERVICE_ENTRIES)
        if draw(st.booleans()):
            spec.workload_selector.labels.update(draw(_LABELS))
        found.append(("ServiceEntry", spec))
    found.extend(("WorkloadEntry", e) for e in draw(st.lists(_WORKLOAD_ENTRIES, max_size=3)))
    return [
        ConfigObject(
            "networking.istio.io/v1", kind, draw(_NAMES), f"{kind.lower()}-{i}", spec,
            labels=draw(_LABELS), file=f"f{draw(st.integers(0, 2))}.yaml", index=i,
        )
        for i, (kind, spec) in enumerate(draw(st.permutations(found)))
    ]  # fmt: skip


def _reference_workload(
    spec: WorkloadEntry, namespace: str, name: str, labels: dict[str, str] | None = None
) -> Workload:
    return Workload(
        address=spec.address, name=name, namespace=namespace,
        labels={**(labels or {}), **dict(spec.labels)}, ports=dict(spec.ports),
        locality=spec.locality, weight=spec.weight or 1,
        service_account=spec.service_account or "default", network=spec.network,
    )  # fmt: skip


def _reference(objects: list[ConfigObject]) -> Registry:
    """The registry `from_objects` makes, by the Python API and the constructors."""
    registry = Registry()
    ordered = sorted(objects, key=lambda o: (o.namespace, o.name, o.file, o.index))
    for obj in ordered:
        if obj.kind == "WorkloadEntry":
            assert isinstance(obj.spec, WorkloadEntry)
            registry.add_workload(
                _reference_workload(obj.spec, obj.namespace, obj.name, dict(obj.labels))
            )
    for obj in ordered:
        spec = obj.spec
        if not isinstance(spec, ServiceEntry):
            continue
        ports = tuple(
            ServicePort(p.name, p.number, protocol_of(p.name, p.protocol), p.target_port or None)
            for p in spec.ports
        )
        for host in spec.hosts:
            service = Service(
                hostname=host if "." in host or host.startswith("*") else
                f"{host}.{obj.namespace}.svc.cluster.local",
                namespace=obj.namespace, ports=ports,
                resolution=("NONE", "STATIC", "DNS", "DNS_ROUND_ROBIN")[spec.resolution],
                mesh_external=spec.location == ServiceEntry.MESH_EXTERNAL,
                addresses=tuple(spec.addresses),
                selector=dict(spec.workload_selector.labels)
                if spec.HasField("workload_selector") else None,
                subject_alt_names=tuple(spec.subject_alt_names),
            )  # fmt: skip
            if registry.service(service.hostname) is None:
                workloads = [
                    _reference_workload(e, obj.namespace, obj.name) for e in spec.endpoints
                ]
                registry.add_service(service, workloads)
    return registry


def _reference_endpoints(registry: Registry, service: Service, port: ServicePort) -> list[Endpoint]:
    found = set()
    for w in registry.instances(service.hostname):
        if port.name in w.ports:
            number = w.ports[port.name]
        elif isinstance(port.target_port, str) and port.target_port in w.ports:
            number = w.ports[port.target_port]
        else:
            number = (
                port.target_port
                if isinstance(port.target_port, int) and port.target_port
                else port.number
            )
        found.add(Endpoint(
            address=w.address, port=number, locality=w.locality, weight=w.weight or 1,
            labels=tuple(sorted(w.labels.items())), service_account=w.service_account,
            namespace=w.namespace, workload=w.name,
        ))  # fmt: skip
    return sorted(found)


@settings(max_examples=200, deadline=None)
@given(_objects())
def test_a_registry_read_from_objects_is_the_one_its_api_makes(objects: list[ConfigObject]) -> None:
    """`from_objects` makes services, workloads and endpoints in place, without the frozen
    dataclasses' constructors: each equals the constructor's, field by field (and in order)."""
    made, expected = Registry.from_objects(objects), _reference(objects)
    assert made.services() == expected.services()
    for service, want in zip(made.services(), expected.services(), strict=True):
        assert vars(service) == vars(want) and service.key == want.key
        assert list(vars(service))[:8] == [f.name for f in dataclasses.fields(Service)]
        workloads = made.instances(service.hostname)
        assert workloads == expected.instances(service.hostname)
        for workload in workloads:
            assert list(vars(workload)) == [f.name for f in dataclasses.fields(Workload)]
        for port in service.ports:
            endpoints = made.endpoints(service.hostname, port.number)
            first = want.port(port.number)  # two ports may share a number: the first answers
            assert first is not None
            assert endpoints == _reference_endpoints(expected, want, first)
            for endpoint in endpoints:
                fields = [f.name for f in dataclasses.fields(Endpoint)]
                assert list(vars(endpoint)) == [*fields, "_label_map"]
                assert endpoint._label_map == dict(endpoint.labels)
            subset = {"version": "a"}
            assert made.endpoints(service.hostname, port.number, subset) == [
                e for e in endpoints if all(dict(e.labels).get(k) == v for k, v in subset.items())
            ]


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.builds(
            ServicePort,
            name=st.sampled_from(["http", "tcp", "web"]),
            number=st.sampled_from([80, 443, 8000]),
            target_port=st.sampled_from([None, 0, 8080, "web", "grpc"]),
        ),
        min_size=1,
        max_size=3,
    ),
    st.lists(
        st.builds(
            Workload,
            address=st.sampled_from(["10.0.0.1", "10.0.0.2"]),
            name=_NAMES,
            labels=_LABELS,
            ports=st.dictionaries(st.sampled_from(["http", "web", "grpc"]), st.integers(1, 9)),
            locality=st.sampled_from(["", "r/z"]),
            weight=st.integers(0, 2),
        ),
        max_size=4,
    ),
)
def test_endpoints_pick_each_workloads_port_as_the_constructors_would(
    ports: list[ServicePort], workloads: list[Workload]
) -> None:
    """A port's endpoints (made in place) equal the constructor's, for every way a workload's
    port is chosen: by the port's name, by a named target port, a numbered one, or the port."""
    registry = Registry()
    service = Service("s.example.com", ports=tuple(ports))
    registry.add_service(service, workloads)
    for port in ports:
        first = service.port(port.number)
        assert first is not None
        assert registry.endpoints(service.hostname, port.number) == _reference_endpoints(
            registry, service, first
        )
