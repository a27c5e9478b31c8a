"""Incremental translation: a memoized round gives exactly what a fresh translation gives, while
redoing only the services whose inputs changed and serializing only the resources that changed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from unittest import mock

import pytest
import yaml

from pilotfish.cache import Encoded, Messages, SnapshotCache
from pilotfish.controller import Controller
from pilotfish.protos import DiscoveryRequest, Node
from pilotfish.registry import Registry
from pilotfish.sources import ConfigObject, ConfigStore
from pilotfish.testing.synthetic import service_documents
from pilotfish.translators import Proxy, Translation, TranslationMemo, sidecar, translate
from pilotfish.translators.changes import Changes
from tests.certs import workload_secrets

SERVICES = 12
PROXY = Proxy(id="sidecar-a", labels={"app": "client"})
DISABLE_PA = """
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: svc-3-plain, namespace: default}
spec:
  selector: {matchLabels: {app: svc-3}}
  mtls: {mode: DISABLE}
"""
DELEGATING = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: svc-5, namespace: default}
spec:
  hosts: [svc-5.mesh.local]
  http:
  - delegate: {name: svc-5-routes, namespace: default}
"""
DELEGATE = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: svc-5-routes, namespace: default}
spec:
  http:
  - route:
    - destination: {host: svc-5.mesh.local, subset: v2}
"""


SELECTED = """
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: picked, namespace: default}
spec:
  hosts: [picked.mesh.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 9080, name: http, protocol: HTTP}]
  workloadSelector: {labels: {app: picked}}
"""
WORKLOAD = """
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: picked-1, namespace: default}}
spec: {{address: {address}, labels: {{app: picked, version: v1}}}}
"""
WILDCARD_RULE = """
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: everything, namespace: default}
spec:
  host: "*.mesh.local"
  trafficPolicy: {connectionPool: {tcp: {maxConnections: 7}}}
"""


def _store() -> ConfigStore:
    # The ServiceEntry in a file of its own: its endpoints can change without the routing
    # objects being replaced (then only the endpoint lookups tell that the service changed).
    store = ConfigStore()
    for i in range(SERVICES):
        store.update(f"svc-{i}-entry.yaml", _entry_text(i))
        store.update(f"svc-{i}.yaml", _service_text(i))
    return store


def _service_text(i: int, **changes: int) -> str:
    return yaml.safe_dump_all(service_documents(i, **changes)[1:])


def _entry_text(i: int, endpoints: int = 3) -> str:
    return yaml.safe_dump(service_documents(i, endpoints)[0])


def _wire(translation: Translation) -> dict[str, list[bytes]]:
    return {
        key: [m.SerializeToString(deterministic=True) for m in messages]
        for key, messages in translation.resources().items()
    }


# Each edit is applied to the store in turn; after each, the memoized translation must equal a
# fresh one. Together they touch every kind of lookup a unit records.
EDITS: list[tuple[str, Callable[[ConfigStore], object]]] = [
    ("route weights", lambda s: s.update("svc-1.yaml", _service_text(1, weight_v1=50))),
    ("endpoints of one service", lambda s: s.update("svc-2-entry.yaml", _entry_text(2, 5))),
    ("peer authentication DISABLE", lambda s: s.update("pa.yaml", DISABLE_PA)),
    ("a delegating VirtualService", lambda s: s.update("svc-5-vs.yaml", DELEGATING)),
    ("its delegate", lambda s: s.update("svc-5-routes.yaml", DELEGATE)),
    ("the delegate changed", lambda s: s.update("svc-5-routes.yaml", DELEGATE.replace("v2", "v3"))),
    ("a service removed", lambda s: s.remove("svc-7-entry.yaml")),
    ("a service added", lambda s: s.update("svc-40-entry.yaml", _entry_text(40))),
    ("the first file saved unchanged", lambda s: s.update("svc-0.yaml", _service_text(0))),
    ("a service picking workloads", lambda s: s.update("picked.yaml", SELECTED)),
    ("a workload it picks", lambda s: s.update("we.yaml", WORKLOAD.format(address="10.9.0.1"))),
    ("the workload moved", lambda s: s.update("we.yaml", WORKLOAD.format(address="10.9.0.2"))),
    ("a wildcard DestinationRule", lambda s: s.update("wild.yaml", WILDCARD_RULE)),
    ("svc-4's own rule removed", lambda s: s.update("svc-4.yaml", _service_text(4)
                                                     .split("---")[1])),
]  # fmt: skip


def _nothing(store: ConfigStore) -> None:
    pass


@pytest.mark.parametrize("traced", [False, True], ids=["replayed", "traced"])
@pytest.mark.parametrize("mtls", [False, True], ids=["plaintext", "auto-mtls"])
def test_memoized_rounds_equal_fresh_translations(mtls: bool, traced: bool) -> None:
    # "traced": the round is told what changed (as the controller does), so units that the
    # change cannot touch are reused without replaying their lookups.
    store = _store()
    secrets = workload_secrets() if mtls else []
    memo = TranslationMemo()
    before: list[ConfigObject] | None = None
    for label, edit in [("initial", _nothing), *EDITS]:
        edit(store)
        objects = store.objects()
        changes = None
        if traced and before is not None:
            changes = Changes.between(before, objects, "cluster.local")
        before = objects
        registry = Registry.from_objects(objects)
        incremental = translate(
            PROXY, objects, registry, secrets=secrets, memo=memo, changes=changes
        )
        fresh = translate(PROXY, objects, Registry.from_objects(objects), secrets=secrets)
        assert _wire(incremental) == _wire(fresh), label
        snapshot, expected = incremental.snapshot(memo), fresh.snapshot()
        for type_url in ("cds", "eds", "lds", "rds", "sds"):
            assert snapshot.version(type_url) == expected.version(type_url), (label, type_url)
            ours = {n: r.data for n, r in snapshot.resources(type_url).items()}
            theirs = {n: r.data for n, r in expected.resources(type_url).items()}
            assert ours == theirs, (label, type_url)
        if label.startswith("svc-4") or label.startswith("a wildcard"):
            assert memo.stats.units_translated >= 1, label  # svc-4's rule is the wildcard now
        if label in {"route weights", "endpoints of one service", "the delegate changed"}:
            # Every service has 1 outbound unit and 1 virtual host unit. (With auto mTLS every
            # outbound unit asks for the PeerAuthentications, so adding one redoes them all.)
            assert memo.stats.units_reused >= 2 * (SERVICES - 3), label


def test_one_change_retranslates_and_serializes_only_what_changed() -> None:
    store = _store()
    memo = TranslationMemo()
    objects = store.objects()
    first = translate(PROXY, objects, Registry.from_objects(objects), memo=memo)
    first.snapshot(memo)
    total = memo.stats.resources_serialized
    assert total == len(first.listeners) + len(first.routes) + 8 * SERVICES  # 4 CDS + 4 EDS each

    store.update("svc-1.yaml", _service_text(1, weight_v1=50))  # a new VirtualService object...
    objects = store.objects()
    second = translate(PROXY, objects, Registry.from_objects(objects), memo=memo)
    snapshot = second.snapshot(memo)
    # ...and a new DestinationRule object, equal to the old one: svc-1's outbound unit and its
    # virtual host are translated again, nothing else.
    assert memo.stats.units_translated == 2
    assert memo.stats.units_reused == 2 * SERVICES - 2
    # Only the route configuration holding svc-1's virtual host is serialized again.
    assert memo.stats.resources_serialized == 1
    assert snapshot.stats.resources_serialized == 0  # the snapshot itself serialized nothing
    assert memo.stats.resources_reused == total - 1

    store.update("svc-2-entry.yaml", _entry_text(2, 6))
    objects = store.objects()
    third = translate(PROXY, objects, Registry.from_objects(objects), memo=memo)
    third.snapshot(memo)
    # More endpoints for svc-2: only its outbound unit is redone; its load assignments (all
    # four: each subset gains one) change, its clusters and every route do not.
    assert memo.stats.units_translated == 1
    assert memo.stats.resources_serialized == 4
    changed = {
        c.cluster_name
        for c in third.endpoints
        if c.SerializeToString(deterministic=True)
        not in {e.SerializeToString(deterministic=True) for e in second.endpoints}
    }
    assert changed == {
        "outbound|9080||svc-2.mesh.local",
        "outbound|9080|v1|svc-2.mesh.local",
        "outbound|9080|v2|svc-2.mesh.local",
        "outbound|9080|v3|svc-2.mesh.local",
    }


def _connect(controller: Controller, count: int, first_stream: int = 1) -> None:
    for n in range(count):
        node = Node(id=f"client-{first_stream + n}")
        node.metadata.update({"NAMESPACE": "default", "LABELS": {"app": "client"}})
        controller.on_stream_request(first_stream + n, DiscoveryRequest(node=node))


@pytest.mark.parametrize("proxies", [1, 40])
def test_serializations_per_change_do_not_grow_with_proxies(proxies: int) -> None:
    store = _store()
    cache = SnapshotCache()
    controller = Controller(cache, store)
    controller.flush()
    _connect(controller, proxies)
    before = controller.stats.proxies_translated
    store.update("svc-1.yaml", _service_text(1, weight_v1=50))
    assert controller.flush() == proxies  # every proxy got the new routes
    snapshots = {id(cache.get_snapshot(f"client-{n + 1}")) for n in range(proxies)}
    assert len(snapshots) == 1  # one shape: one translation and one snapshot shared by all
    assert controller.stats.proxies_translated - before == 1
    # The shape's memo, then its views' (clusters, routes): svc-1's file holds its rule too,
    # a new object, so its clusters were made again (once for all proxies), equal to the old.
    stats, clusters, routes = controller.memo_stats()
    assert stats.resources_serialized == 1
    assert (clusters.units_translated, routes.units_translated) == (1, 1)


GATEWAY_VS = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: svc-1-edge, namespace: default}
spec:
  hosts: [svc-1.mesh.local, "*.mesh.local"]
  gateways: [edge, mesh]
  http: [{route: [{destination: {host: svc-1.mesh.local, subset: v2}}]}]
"""
# The same key as svc-1's VirtualService, in a file sorted before it: it shadows svc-1.yaml's.
SHADOW = _service_text(1, weight_v1=10)


def _served(controller: Controller, proxy_id: str) -> dict[str, tuple[str, dict[str, bytes]]]:
    snapshot = controller.cache.get_snapshot(proxy_id)
    return {
        t: (snapshot.version(t), {n: r.data for n, r in snapshot.resources(t).items()})
        for t in ("cds", "eds", "lds", "rds")
    }


def test_controller_rounds_from_the_journal_equal_fresh_controllers() -> None:
    # The controller reads only what changed from the store's journal and changes its index and
    # registry by it; after each edit it must serve what a controller started afresh serves.
    store = _store()
    controller = Controller(SnapshotCache(), store)
    controller.flush()
    _connect(controller, 1)
    extra: list[tuple[str, Callable[[ConfigStore], object]]] = [
        ("a gateway and wildcard VS", lambda s: s.update("svc-1-edge.yaml", GATEWAY_VS)),
        ("a shadowing duplicate", lambda s: s.update("a-shadow.yaml", SHADOW)),
        ("the shadow gone", lambda s: s.remove("a-shadow.yaml")),
        ("the wildcard VS gone", lambda s: s.remove("svc-1-edge.yaml")),
        ("a refused edit", lambda s: s.update("svc-2.yaml", "kind: VirtualService\n")),
    ]
    for label, edit in [*EDITS, *extra]:
        edit(store)
        controller.flush()
        fresh = Controller(SnapshotCache(), store)
        fresh.flush()
        _connect(fresh, 1)
        assert _served(controller, "client-1") == _served(fresh, "client-1"), label


def test_an_unchanged_save_translates_nothing() -> None:
    store = _store()
    controller = Controller(SnapshotCache(), store)
    controller.flush()
    _connect(controller, 1)
    rounds = controller.stats.translations
    store.update("svc-3.yaml", _service_text(3))  # new objects, the same content
    assert controller.flush() == 0
    assert controller.stats.translations == rounds
    store.update("svc-3.yaml", _service_text(3, weight_v1=20))
    assert controller.flush() == 1
    assert controller.stats.translations == rounds + 1


def test_a_round_that_keeps_the_services_visits_only_what_the_change_touched() -> None:
    # Work proportional to the change, counted: after an edit of one service's routes or
    # endpoints, no per-service step runs for the others (no domain lists, no listing of every
    # service, no unit looked at beyond the touched ones).
    store = _store()
    controller = Controller(SnapshotCache(), store)
    controller.flush()
    _connect(controller, 1)
    counts = {"domains": 0, "services": 0}
    real_domains, real_services = sidecar._domains, Registry.services

    def domains(*args: Any) -> Any:
        counts["domains"] += 1
        return real_domains(*args)

    def services(self: Registry) -> list[Any]:
        counts["services"] += 1
        return real_services(self)

    with (
        mock.patch.object(sidecar, "_domains", domains),
        mock.patch.object(Registry, "services", services),
    ):
        store.update("svc-1.yaml", _service_text(1, weight_v1=50))
        assert controller.flush() == 1
        assert counts == {"domains": 0, "services": 0}
        stats, clusters, routes = controller.memo_stats()
        assert (clusters.units_translated, routes.units_translated) == (1, 1)
        assert stats.resources_serialized == 1
        store.update("svc-2-entry.yaml", _entry_text(2, 5))
        assert controller.flush() == 1
        assert counts == {"domains": 0, "services": 0}
        # A new service changes the services: everything is visited once more.
        store.update("svc-50-entry.yaml", _entry_text(50))
        assert controller.flush() == 1
        assert counts["domains"] > 0 and counts["services"] > 0


@pytest.mark.parametrize("encoded", [False, True], ids=["messages", "encoded"])
def test_served_resources_first_round_equals_a_snapshot_built_afresh(encoded: bool) -> None:
    """A type's first round (every resource new, made in bulk) serves what `Snapshot` makes of
    the same messages, in their order, and rejects two of one name."""
    from pilotfish.cache import Encoded, Messages, Snapshot
    from pilotfish.protos import ENDPOINT_TYPE
    from pilotfish.translators import build
    from pilotfish.translators.served import ServedResources

    clusters = [build.eds_cluster(n, service_name=f"{n}-svc") for n in "bca"]

    def given(messages: list[Any]) -> Any:
        if not encoded:
            return messages
        refs = [{ENDPOINT_TYPE: {f"{m.name}-svc"}} for m in messages]
        return Messages(tuple(map(Encoded, messages, [m.name for m in messages], refs)))

    snapshot, serialized, total = ServedResources().snapshot({"cds": given(clusters)}, "v/")
    fresh = Snapshot({"cds": clusters}, version_prefix="v/")
    assert (serialized, total) == (3, 3)
    assert snapshot.version("cds") == fresh.version("cds")
    assert [(n, r.data) for n, r in snapshot.resources("cds").items()] == [
        (n, r.data) for n, r in fresh.resources("cds").items()
    ]
    assert snapshot.references_of("cds", "c") == {ENDPOINT_TYPE: {"c-svc"}}
    with pytest.raises(ValueError, match="two cds resources named 'c'"):
        ServedResources().snapshot({"cds": given([*clusters, build.eds_cluster("c")])}, "v/")


@pytest.mark.parametrize("encoded", [False, True], ids=["messages", "encoded"])
def test_served_resources_take_an_equal_list_of_new_objects_as_no_change(encoded: bool) -> None:
    """A unit redone to equal messages (new objects) changes nothing; later rounds that drop
    or change those objects still give what a fresh `ServedResources` gives. The same for
    messages given as their bytes (`Encoded`, as the outbound units give them)."""
    from envoy.config.cluster.v3.cluster_pb2 import Cluster

    from pilotfish.cache import Encoded, Messages
    from pilotfish.translators.served import ServedResources

    def clusters(*timeouts: int) -> tuple[Any, ...]:
        out: list[Any] = []
        for i, seconds in enumerate(timeouts):
            cluster = Cluster(name=f"c{i}")
            cluster.connect_timeout.seconds = seconds
            out.append(Encoded(cluster, cluster.name) if encoded else cluster)
        return tuple(out)

    def served(rounds: list[tuple[Any, ...]]) -> tuple[dict[str, bytes], str, int]:
        resources = ServedResources()
        for given in rounds:
            listed = Messages(given) if encoded else given
            snapshot, serialized, _ = resources.snapshot({"cds": listed}, "v/")
        data = {name: r.data for name, r in snapshot.resources("cds").items()}
        return data, snapshot.version("cds"), serialized

    first, again = clusters(1, 1, 1), clusters(1, 1, 1)
    assert served([first, again])[2] == 0  # equal: nothing serialized, nothing changed
    assert served([first, again])[:2] == served([first])[:2]
    # The next rounds keep two of the new objects and change one, then drop one.
    later = (again[0], clusters(1, 5)[1], again[2])
    assert served([first, again, later])[:2] == served([later])[:2]
    assert served([first, again, later])[2] == 1  # only the changed one
    fewer = later[:2]
    data, version, serialized = served([first, again, later, fewer])
    assert serialized == 0
    assert (data, version) == served([fewer])[:2]


def test_outbound_units_keep_their_resources_as_bytes() -> None:
    """A memoized round keeps no message of a service's clusters, load assignments or virtual
    hosts (upb takes about 2.6 KB a message, 80,000 of them at 10,000 services): only their
    bytes, which are what the snapshot serves."""
    from pilotfish.cache import Encoded, Messages

    store = ConfigStore()
    for i in range(3):
        store.update(f"svc-{i}-entry.yaml", _entry_text(i))
        store.update(f"svc-{i}.yaml", _service_text(i))
    controller = Controller(SnapshotCache(), store)
    _connect(controller, 1)
    controller.flush(force=True)
    translation = controller.translation("client-1")
    assert translation is not None
    assert isinstance(translation.clusters, Messages)
    outbound = [c for c in translation.clusters.items if isinstance(c, Encoded)]
    assert len(outbound) == 3 * 4  # each service: its cluster and three subsets'
    assert isinstance(translation.endpoints, Messages)
    assert all(isinstance(a, Encoded) for a in translation.endpoints.items)
    assert len(translation.endpoints) == 12
    # Read back as messages, they are what the proxy is served.
    snapshot = controller.cache.get_snapshot("client-1")
    served = snapshot.resources("cds")
    for cluster in translation.clusters:
        assert served[cluster.name].data == cluster.SerializeToString(deterministic=True)
    (routes,) = translation.routes
    hosts = [
        unit
        for memo in controller._shared.memos()
        for key, unit in memo._units.items()
        if isinstance(key, tuple) and key[0] == "vhost"
    ]
    assert len(hosts) == 3 and all(isinstance(h.value, Encoded) for h in hosts)
    assert {h.name for h in routes.virtual_hosts} == {h.value.name for h in hosts}


VIEW_CONFIG = """
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: own-rule, namespace: elsewhere}
spec:
  host: svc-0.mesh.local
  trafficPolicy: {connectionPool: {tcp: {maxConnections: 3}}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: zoned, namespace: default}
spec:
  hosts: [zoned.mesh.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 80, name: http, protocol: HTTP}]
  endpoints:
  - {address: 10.9.0.1, locality: us-east/a}
  - {address: 10.9.0.2, locality: eu-west/b}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: zoned, namespace: default}
spec:
  host: zoned.mesh.local
  trafficPolicy: {outlierDetection: {consecutive5xxErrors: 5}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: named, namespace: default}
spec:
  hosts: [api.example.com]
  location: MESH_EXTERNAL
  resolution: DNS
  ports: [{number: 443, name: tls, protocol: TLS}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: zoned, namespace: default}
spec:
  hosts: [zoned.mesh.local]
  http:
  - match: [{sourceLabels: {app: other}}]
    route: [{destination: {host: zoned.mesh.local}}]
    timeout: 3s
  - route: [{destination: {host: zoned.mesh.local}}]
"""


def _alone(node: Node, objects: list[ConfigObject]) -> dict[str, tuple[str, dict[str, bytes]]]:
    """What `_served` gives for a translation of the node's own: no memo, nothing shared."""
    snapshot = translate(Proxy.from_node(node), objects, Registry.from_objects(objects)).snapshot()
    return {
        t: (snapshot.version(t), {n: r.data for n, r in snapshot.resources(t).items()})
        for t in ("cds", "eds", "lds", "rds")
    }


def _sidecar(node_id: str, **metadata: str) -> Node:
    node = Node(id=node_id)
    labels = {"app": metadata.pop("app", "client")}
    node.metadata.update({"NAMESPACE": "default", "LABELS": labels, **metadata})
    return node


def test_shapes_with_one_view_share_its_clusters_and_routes() -> None:
    """Sidecars that differ in labels, address or workload but not in namespace, locality or
    address family get the same clusters and load assignments, made once a round; those that
    differ in neither namespace nor labels, the same routes too. Every one is served exactly
    what a translation of its own (no memo, nothing shared) gives."""
    store = _store()
    # What each part of the views decides: a namespace's own rule, failover by locality, the
    # DNS lookup family, and routes for some source labels.
    store.update("view.yaml", VIEW_CONFIG)
    nodes = [
        _sidecar("a"),
        _sidecar("b", app="other", ADDRESS="10.1.2.3"),
        _sidecar("c", WORKLOAD="c-1", ADDRESS="10.1.2.4"),
        _sidecar("d", NAMESPACE="elsewhere"),
        _sidecar("e", ADDRESS="fd00::5"),
        _sidecar("f"),
    ]
    nodes[-1].locality.region, nodes[-1].locality.zone = "us-east", "a"
    controller = Controller(SnapshotCache(), store)
    controller.flush()
    for n, node in enumerate(nodes):
        controller.on_stream_request(n + 1, DiscoveryRequest(node=node))
    for label, edit in [("initial", _nothing), *EDITS]:
        edit(store)
        controller.flush(force=True)
        objects = store.objects()
        for node in nodes:
            assert _served(controller, node.id) == _alone(node, objects), (label, node.id)
    # Six shapes; four views of their clusters (a, b and c share one; d, e and f have their
    # own) and three of their routes (b's labels and d's namespace differ).
    assert len(controller.memo_stats()) == 6 + 4 + 3
    clusters, routes = {}, {}
    for node in nodes:
        translation = controller.translation(node.id)
        assert translation is not None and isinstance(translation.clusters, Messages)
        clusters[node.id] = [c for c in translation.clusters.items if isinstance(c, Encoded)]
        assert isinstance(translation.routes, Messages)
        routes[node.id] = translation.routes.items
    assert len(clusters["a"]) > 3 * SERVICES
    assert all(x is y for x, y in zip(clusters["a"], clusters["b"], strict=True))
    assert all(x is y for x, y in zip(clusters["a"], clusters["c"], strict=True))
    assert not any(x is y for x, y in zip(clusters["a"], clusters["d"], strict=True))
    assert all(routes[n] == routes["a"] for n in "cef")  # the very same objects
    assert not set(map(id, routes["b"])) & set(map(id, routes["a"]))


def test_a_unit_made_again_to_equal_bytes_leaves_its_type_unwalked() -> None:
    """Equal `Encoded` items are equal (their bytes), so a round whose units were made again
    to the same bytes compares the lists in C and walks none of their 40,000 places."""
    from envoy.config.cluster.v3.cluster_pb2 import Cluster

    from pilotfish.cache import Encoded, Messages
    from pilotfish.translators import served
    from pilotfish.translators.served import ServedResources

    def clusters() -> Messages[Cluster]:
        return Messages([Encoded(Cluster(name=f"c{i}"), f"c{i}") for i in range(3)])

    resources = ServedResources()
    first, _, _ = resources.snapshot({"cds": clusters()}, "v/")
    with mock.patch.object(served, "_moved", side_effect=AssertionError("walked")):
        again, serialized, _ = resources.snapshot({"cds": clusters()}, "v/")
    assert serialized == 0 and again.version("cds") == first.version("cds")
    assert Encoded(Cluster(name="a"), "a") != Encoded(Cluster(name="b"), "b")


def test_shapes_of_one_view_compare_a_changed_type_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Four sidecar shapes of one view are handed the very same tuples of load assignments;
    after an endpoint edit the new tuple is compared with the old one once, not per shape."""
    from envoy.config.endpoint.v3.endpoint_pb2 import ClusterLoadAssignment

    from pilotfish.bounded import Bounded
    from pilotfish.cache import snapshot as snapshot_module
    from pilotfish.protos import ENDPOINT_TYPE as EDS
    from pilotfish.translators import served

    # The tables behind the sharing are bounded and emptied when full: start them empty, so
    # what earlier tests left there cannot fill them in the middle of this round.
    monkeypatch.setattr(served, "_MOVES", Bounded(16))
    monkeypatch.setattr(snapshot_module, "_UPDATES", Bounded(8))
    store = _store()
    controller = Controller(SnapshotCache(), store)
    for n in range(4):
        controller.on_stream_request(n + 1, DiscoveryRequest(node=_sidecar(f"s{n}", app=f"a{n}")))
    controller.flush(force=True)
    snapshots = [controller.cache.get_snapshot(f"s{n}") for n in range(4)]
    assert len({id(s.response(EDS, None)) for s in snapshots}) == 1  # made once, from the start
    real = served.compress  # type: ignore[attr-defined]
    calls: list[int] = []

    def counted(data: Any, selectors: Any) -> Any:
        calls.append(1)
        return real(data, selectors)

    with mock.patch.object(served, "compress", counted):
        store.update("svc-2-entry.yaml", _entry_text(2, 5))
        assert controller.flush() == 4
    assert len(calls) == 1
    for n in range(4):  # and every shape serves the new endpoint
        data = controller.cache.get_snapshot(f"s{n}").resources("eds")
        assignment = ClusterLoadAssignment.FromString(data["outbound|9080||svc-2.mesh.local"].data)
        assert sum(len(group.lb_endpoints) for group in assignment.endpoints) == 5
    # The type made from that change is shared too: one response for all four shapes.
    responses = {id(controller.cache.get_snapshot(f"s{n}").response(EDS, None)) for n in range(4)}
    assert len(responses) == 1


SOURCE_ROUTE = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: by-source, namespace: default}
spec:
  hosts: [svc-3.mesh.local]
  http:
  - match: [{sourceLabels: {app: a1}}]
    route: [{destination: {host: svc-3.mesh.local, subset: v3}}]
  - route: [{destination: {host: svc-3.mesh.local, subset: v1}}]
"""


def test_routes_are_shared_across_labels_until_a_virtual_service_matches_them() -> None:
    """While no VirtualService routes by source labels, sidecars of one namespace share one
    set of routes whatever their labels; once one does, each label set gets its own, and every
    sidecar is served what a translation of its own gives, before, during and after."""
    store = _store()
    nodes = [_sidecar(f"s{n}", app=f"a{n}") for n in range(3)]
    controller = Controller(SnapshotCache(), store)
    for n, node in enumerate(nodes):
        controller.on_stream_request(n + 1, DiscoveryRequest(node=node))

    def check(label: str, views: int) -> None:
        controller.flush()
        objects = store.objects()
        for node in nodes:
            assert _served(controller, node.id) == _alone(node, objects), (label, node.id)
        # The shapes' memos, one view of their clusters, and `views` of their routes.
        assert len(controller.memo_stats()) == len(nodes) + 1 + views, label

    check("no VirtualService reads labels", views=1)
    store.update("by-source.yaml", SOURCE_ROUTE)
    check("one does", views=3)
    store.remove("by-source.yaml")
    check("it is gone", views=1)
