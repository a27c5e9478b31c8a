"""Metrics and the admin HTTP server: unit tests with fake stream events, then bookinfo config
served to a real Envoy and observed through /metrics and /debug/*."""

from __future__ import annotations

import asyncio
import json
import shutil
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families

from pilotfish.admin import AdminServer
from pilotfish.bootstrap import envoy_bootstrap
from pilotfish.cache import Snapshot, SnapshotCache
from pilotfish.controller import Controller
from pilotfish.metrics import Metrics
from pilotfish.protos import (
    CLUSTER_TYPE,
    LISTENER_TYPE,
    ROUTE_TYPE,
    DeltaDiscoveryRequest,
    DiscoveryRequest,
    Node,
    Status,
)
from pilotfish.sources import ConfigStore, load_documents
from pilotfish.testing import EnvoyProcess, ServerThread, free_port, wait_until
from pilotfish.translators import build
from pilotfish.xds.callbacks import Callbacks
from pilotfish.xds.events import Acked, Nacked, Sent

BOOKINFO = Path(__file__).resolve().parents[2] / "shared" / "conformance" / "istio-bookinfo"
REVIEWS_V1 = "outbound|9080|v1|reviews.default.svc.cluster.local"
PROXY = "productpage-v1.default"

# Valid first document, invalid second (weights sum to 120): the whole file is refused.
BAD = """apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: details}
spec:
  hosts: [details]
  http: [{route: [{destination: {host: details, subset: v1}}]}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: ratings-split}
spec:
  hosts: [ratings]
  http:
  - route:
    - {destination: {host: ratings, subset: v1}, weight: 60}
    - {destination: {host: ratings, subset: v2}, weight: 60}
"""


def value(metrics: Metrics, name: str, **labels: str) -> float:
    """A sample's value, 0 when absent."""
    return metrics.registry.get_sample_value(name, labels) or 0.0


# -- Metrics, with fake stream events ---------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def sent(type_url: str, nonce: str, version: str = "v1") -> Sent:
    return Sent(type_url, version, nonce, frozenset())


def nacked(type_url: str, nonce: str) -> Nacked:
    return Nacked(type_url, "v2", nonce, "v1", Status(code=3, message="bad cluster"))


def test_metrics_count_streams_proxies_pushes_acks_and_time_to_ack() -> None:
    clock = FakeClock()
    metrics = Metrics(clock=clock)
    node = Node(id="a")
    metrics.on_stream_open(1, None)
    metrics.on_stream_open(2, CLUSTER_TYPE)
    assert value(metrics, "pilotfish_xds_streams", type="ads") == 1
    assert value(metrics, "pilotfish_xds_streams", type="cds") == 1
    assert value(metrics, "pilotfish_xds_connected_proxies") == 0  # no request yet: unknown
    metrics.on_stream_request(1, DiscoveryRequest(node=node, type_url=CLUSTER_TYPE))
    metrics.on_stream_request(2, DiscoveryRequest(node=node))
    assert value(metrics, "pilotfish_xds_connected_proxies") == 1  # one node, two streams
    metrics.on_stream_response(1, node, sent(CLUSTER_TYPE, "n1"))
    metrics.on_stream_response(1, node, sent(LISTENER_TYPE, "n2"))
    assert value(metrics, "pilotfish_xds_pushes_total", type="cds") == 1
    assert value(metrics, "pilotfish_xds_pushes_total", type="lds") == 1
    clock.now += 0.25
    metrics.on_stream_ack(1, node, Acked(CLUSTER_TYPE, "v1", "n1"))
    metrics.on_stream_ack(1, node, Acked(CLUSTER_TYPE, "v1", "n1"))  # a repeat: not a second
    metrics.on_stream_ack(1, node, Acked(LISTENER_TYPE, "v1", "n0"))  # not the last nonce sent
    assert value(metrics, "pilotfish_xds_acks_total", type="cds") == 1
    assert value(metrics, "pilotfish_xds_acks_total", type="lds") == 0
    assert value(metrics, "pilotfish_xds_push_ack_seconds_count", type="cds") == 1
    assert value(metrics, "pilotfish_xds_push_ack_seconds_sum", type="cds") == 0.25
    metrics.on_stream_response(2, node, sent(CLUSTER_TYPE, "m1"))
    metrics.on_stream_ack(2, node, Acked(CLUSTER_TYPE, "v1", "m1"))
    assert value(metrics, "pilotfish_xds_acks_total", type="cds") == 2
    # ACKs come to `on_stream_ack` (some never parsed into a request): not wanted as requests.
    assert not metrics.plain_acks_in_requests
    assert Metrics(Callbacks()).plain_acks_in_requests  # unless an inner hook wants them
    # Only a node's id is read: the first request may come without Envoy's extension list.
    assert not metrics.node_extensions_in_requests
    assert Metrics(Callbacks()).node_extensions_in_requests


def test_metrics_count_nacks_not_as_acks() -> None:
    metrics = Metrics()
    node = Node(id="a")
    metrics.on_stream_open(1, None)
    metrics.on_stream_request(1, DiscoveryRequest(node=node, type_url=CLUSTER_TYPE))
    metrics.on_stream_response(1, node, sent(CLUSTER_TYPE, "n1"))
    metrics.on_nack(1, node, nacked(CLUSTER_TYPE, "n1"))
    metrics.on_stream_ack(1, node, Acked(CLUSTER_TYPE, "v1", "n1"))  # answered by the NACK
    assert value(metrics, "pilotfish_xds_nacks_total", type="cds") == 1
    assert value(metrics, "pilotfish_xds_acks_total", type="cds") == 0
    assert value(metrics, "pilotfish_xds_push_ack_seconds_count", type="cds") == 0


def test_metrics_detect_delta_acks() -> None:
    metrics = Metrics()
    node = Node(id="a")
    metrics.on_stream_open(1, None)
    metrics.on_stream_request(1, DeltaDiscoveryRequest(node=node, type_url=ROUTE_TYPE))
    metrics.on_stream_response(1, node, sent(ROUTE_TYPE, "d1"))
    metrics.on_stream_ack(1, node, Acked(ROUTE_TYPE, "v1", "d1"))
    assert value(metrics, "pilotfish_xds_acks_total", type="rds") == 1


def test_metrics_forget_closed_streams() -> None:
    metrics = Metrics()
    a, b = Node(id="a"), Node(id="b")
    for stream, node in ((1, a), (2, a), (3, b)):
        metrics.on_stream_open(stream, None)
        metrics.on_stream_request(stream, DiscoveryRequest(node=node, type_url=CLUSTER_TYPE))
        metrics.on_stream_response(stream, node, sent(CLUSTER_TYPE, f"n{stream}"))
    assert value(metrics, "pilotfish_xds_connected_proxies") == 2
    metrics.on_stream_close(1, a)
    assert value(metrics, "pilotfish_xds_connected_proxies") == 2  # a has another stream
    metrics.on_stream_close(2, a)
    metrics.on_stream_close(3, b)
    metrics.on_stream_close(4, None)  # never opened: no harm
    assert value(metrics, "pilotfish_xds_connected_proxies") == 0
    assert value(metrics, "pilotfish_xds_streams", type="ads") == 0
    # Nothing is kept per disconnected proxy.
    assert (metrics._stream_urls, metrics._stream_nodes, metrics._node_streams) == ({}, {}, {})
    assert metrics._pending == {}
    # A late response after close leaves nothing behind either.
    metrics.on_stream_response(1, a, sent(CLUSTER_TYPE, "late"))
    assert metrics._pending == {}


def test_metrics_translation_config_and_convergence() -> None:
    metrics = Metrics()
    store = ConfigStore()
    store.put("vs.yaml", load_documents(BAD.split("---", maxsplit=1)[0], file="vs.yaml"))
    metrics.observe_translation(0.02, store.kind_counts(), errors=1)
    metrics.observe_convergence(0.3)
    assert value(metrics, "pilotfish_translations_total") == 1
    assert value(metrics, "pilotfish_translation_seconds_count") == 1
    assert value(metrics, "pilotfish_config_objects", kind="VirtualService") == 1
    assert value(metrics, "pilotfish_config_objects", kind="DestinationRule") == 0
    assert value(metrics, "pilotfish_config_errors") == 1
    assert value(metrics, "pilotfish_convergence_seconds_count") == 1
    store.remove("vs.yaml")
    metrics.observe_translation(0.01, store.kind_counts(), errors=0)  # gone: reads 0
    assert value(metrics, "pilotfish_config_objects", kind="VirtualService") == 0
    assert value(metrics, "pilotfish_config_errors") == 0
    families = {f.name for f in text_string_to_metric_families(metrics.exposition().decode())}
    assert {"pilotfish_translations", "pilotfish_config_objects", "pilotfish_xds_pushes"} <= (
        families
    )


def test_metrics_have_private_registries() -> None:
    one, two = Metrics(), Metrics()
    one.observe_convergence(1.0)
    assert value(one, "pilotfish_convergence_seconds_count") == 1
    assert value(two, "pilotfish_convergence_seconds_count") == 0


class Recorder(Callbacks):
    def __init__(self) -> None:
        self.calls: list[str] = []

    def on_stream_open(self, stream_id: int, type_url: str | None) -> None:
        self.calls.append("open")

    def on_stream_close(self, stream_id: int, node: Node | None) -> None:
        self.calls.append("close")

    def on_stream_request(
        self, stream_id: int, request: DiscoveryRequest | DeltaDiscoveryRequest
    ) -> None:
        self.calls.append("request")

    def on_stream_response(self, stream_id: int, node: Node, sent: Sent) -> None:
        self.calls.append("response")

    def on_stream_ack(self, stream_id: int, node: Node, ack: Acked) -> None:
        self.calls.append("ack")

    async def on_nack(self, stream_id: int, node: Node, nack: Nacked) -> None:
        self.calls.append("nack")


def test_metrics_forward_every_hook_to_inner() -> None:
    inner = Recorder()
    metrics = Metrics(inner)
    node = Node(id="a")
    assert metrics.on_stream_open(1, None) is None
    metrics.on_stream_request(1, DiscoveryRequest(node=node))
    metrics.on_stream_response(1, node, sent(CLUSTER_TYPE, "n1"))
    metrics.on_stream_ack(1, node, Acked(CLUSTER_TYPE, "v1", "n1"))
    pending = metrics.on_nack(1, node, nacked(CLUSTER_TYPE, "n1"))
    assert pending is not None  # an async inner hook is handed back for the server to await
    asyncio.run(pending)  # type: ignore[arg-type]
    metrics.on_stream_close(1, node)
    assert inner.calls == ["open", "request", "response", "ack", "nack", "close"]


# -- the admin server with a real controller and a real Envoy ---------------------------------


@dataclass
class Http:
    status: int
    content_type: str
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def get(admin: AdminServer, path: str) -> Http:
    try:
        with urllib.request.urlopen(admin.url + path, timeout=5) as reply:
            return Http(reply.status, reply.headers["content-type"], reply.read())
    except urllib.error.HTTPError as error:
        return Http(error.code, error.headers["content-type"], error.read())


@dataclass
class Plane:
    root: Path
    store: ConfigStore
    cache: SnapshotCache
    metrics: Metrics
    controller: Controller
    server: ServerThread
    admin: AdminServer

    def sync(self) -> None:
        """Reload the directory and translate now (what the serve command's watcher does)."""
        self.store.sync(self.root)
        self.controller.flush()

    def sample(self, name: str, **labels: str) -> float:
        """A value read through /metrics, as Prometheus would."""
        reply = get(self.admin, "/metrics")
        assert reply.status == 200
        total = 0.0
        for family in text_string_to_metric_families(reply.body.decode()):
            for s in family.samples:
                if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                    total += s.value
        return total

    def syncz(self, proxy: str = PROXY) -> dict[str, Any]:
        reply = get(self.admin, "/debug/syncz")
        assert reply.status == 200 and reply.content_type == "application/json"
        (entry,) = [e for e in reply.json() if e["proxy"] == proxy]
        result: dict[str, Any] = entry
        return result


@pytest.fixture
def plane(tmp_path: Path) -> Iterator[Plane]:
    shutil.copy(BOOKINFO / "platform" / "kube" / "bookinfo.yaml", tmp_path / "bookinfo.yaml")
    for name in ("destination-rule-all.yaml", "virtual-service-all-v1.yaml"):
        shutil.copy(BOOKINFO / "networking" / name, tmp_path / name)
    (tmp_path / "zz-bad.yaml").write_text(BAD)
    store = ConfigStore()
    cache = SnapshotCache()
    metrics = Metrics()
    controller = Controller(cache, store, debounce=0.02, on_translated=metrics.observe_translation)
    metrics.inner = controller
    with (
        ServerThread(cache, callbacks=metrics) as server,
        AdminServer(controller, metrics) as admin,
    ):
        plane = Plane(tmp_path, store, cache, metrics, controller, server, admin)
        try:
            yield plane
        finally:
            controller.stop()


def sidecar(plane: Plane, node_id: str = PROXY) -> EnvoyProcess:
    bootstrap = envoy_bootstrap(
        node_id=node_id,
        cluster="productpage",
        xds_address=plane.server.address,
        node_metadata={
            "NAMESPACE": "default",
            "LABELS": {"app": "productpage", "version": "v1"},
            # Outbound listeners bind a free port, not 9080 on the host.
            "PORT_MAP": {"9080": free_port()},
        },
    )
    return EnvoyProcess(bootstrap, name="productpage")


def synced(plane: Plane) -> dict[str, Any] | None:
    entry = plane.syncz()
    return entry if entry["synced"] else None


def test_health_and_readiness(plane: Plane) -> None:
    assert get(plane.admin, "/healthz").body == b"ok\n"
    not_ready = get(plane.admin, "/readyz")
    assert (not_ready.status, not_ready.body) == (503, b"not ready\n")
    plane.sync()
    ready = get(plane.admin, "/readyz")
    assert (ready.status, ready.body) == (200, b"ready\n")
    missing = get(plane.admin, "/nope")
    assert missing.status == 404 and missing.content_type == "application/json"
    assert get(plane.admin, "/debug/config_dump").status == 400
    unknown = get(plane.admin, "/debug/config_dump?proxy=nobody")
    assert unknown.status == 404 and "nobody" in unknown.json()["error"]


def test_debug_config_lists_objects_and_refused_files(plane: Plane) -> None:
    plane.sync()
    config = get(plane.admin, "/debug/config").json()
    kinds = {(o["kind"], o["name"]) for o in config["objects"]}
    assert {("VirtualService", "reviews"), ("DestinationRule", "reviews")} <= kinds
    assert ("Service", "productpage") in kinds
    assert ("VirtualService", "details") in kinds  # virtual-service-all-v1's, not zz-bad's
    bad = str(plane.root / "zz-bad.yaml")
    assert all(o["file"] != bad for o in config["objects"])  # a refused file serves nothing
    (error,) = config["errors"][bad]
    assert (error["kind"], error["namespace"], error["name"], error["index"]) == (
        "VirtualService", "default", "ratings-split", 1
    )  # fmt: skip
    assert error["field"] == "spec.http[0].route" and error["reason"]
    assert value(plane.metrics, "pilotfish_config_errors") == 1
    assert value(plane.metrics, "pilotfish_config_objects", kind="VirtualService") == 4


def test_envoy_through_metrics_and_debug_endpoints(plane: Plane) -> None:
    plane.sync()
    with sidecar(plane) as envoy:
        envoy.wait_ready()
        # /debug/syncz: everything sent was ACKed and is what the snapshot holds.
        entry = wait_until(lambda: synced(plane), message="Envoy ACKs its config")
        assert (entry["kind"], entry["namespace"]) == ("sidecar", "default")
        for name in ("Cluster", "ClusterLoadAssignment", "Listener", "RouteConfiguration"):
            status = entry["types"][name]
            assert status["acked"] == status["current"] == status["sent"] != ""
            assert status["nacks"] == 0 and status["last_nack"] is None
        assert REVIEWS_V1 in envoy.dynamic_clusters()
        assert plane.sample("pilotfish_xds_connected_proxies") == 1
        assert plane.sample("pilotfish_xds_streams", type="ads") == 1

        # /debug/config_dump: what the proxy was given.
        dump = get(plane.admin, f"/debug/config_dump?proxy={PROXY}")
        assert dump.status == 200 and dump.content_type == "application/json"
        config = dump.json()
        assert config["proxy"] == PROXY and config["translator"]
        assert REVIEWS_V1 in {c["name"] for c in config["clusters"]}
        assert config["versions"]["clusters"] == entry["types"]["Cluster"]["current"]
        assert config["listeners"] and config["routes"]

        # /metrics: pushes and ACKs, counted and timed.
        metrics = get(plane.admin, "/metrics")
        assert metrics.content_type == CONTENT_TYPE_LATEST
        pushes = plane.sample("pilotfish_xds_pushes_total")
        acks = plane.sample("pilotfish_xds_acks_total")
        routes_acked = plane.sample("pilotfish_xds_acks_total", type="rds")
        assert pushes > 0 and acks > 0 and routes_acked > 0
        assert plane.sample("pilotfish_xds_push_ack_seconds_count", type="cds") > 0
        assert plane.sample("pilotfish_translations_total") >= 1

        # A config change: reviews goes to v2; Envoy gets new routes and ACKs them.
        before = entry["types"]["RouteConfiguration"]["current"]
        vs = plane.root / "virtual-service-all-v1.yaml"
        vs.write_text(vs.read_text().replace("subset: v1", "subset: v2"))
        plane.sync()
        entry = wait_until(
            lambda: (
                (e := synced(plane)) and e["types"]["RouteConfiguration"]["acked"] != before and e
            ),
            message="Envoy ACKs the new routes",
        )
        assert plane.sample("pilotfish_xds_pushes_total", type="rds") > 0
        assert plane.sample("pilotfish_xds_pushes_total") > pushes
        assert plane.sample("pilotfish_xds_acks_total", type="rds") > routes_acked
        assert plane.sample("pilotfish_xds_acks_total") > acks

        # A NACK: hand Envoy a cluster it must refuse, keeping everything else as it is.
        translation = plane.controller.translation(PROXY)
        assert translation is not None
        good = plane.cache.get_snapshot(PROXY)
        bad_cluster = build.eds_cluster("bad", connect_timeout=-1)
        resources = {**translation.resources(), "cds": [*translation.clusters, bad_cluster]}
        plane.cache.set_snapshot(
            PROXY, Snapshot(resources, version_prefix=f"{translation.translator_version}/")
        )
        wait_until(
            lambda: plane.sample("pilotfish_xds_nacks_total", type="cds") >= 1,
            message="Envoy NACKs the bad cluster",
        )
        entry = plane.syncz()
        cluster = entry["types"]["Cluster"]
        assert not entry["synced"] and cluster["nacks"] == 1 and cluster["last_nack"]
        assert cluster["acked"] == good.version("cds") != cluster["current"]
        assert "bad" not in envoy.dynamic_clusters()
        # A forced translation puts the good clusters back (the objects did not change, so an
        # ordinary one is skipped); Envoy ACKs them.
        plane.controller.flush(force=True)
        entry = wait_until(lambda: synced(plane), message="Envoy ACKs the good clusters again")
        assert entry["types"]["Cluster"]["acked"] == good.version("cds")

    # Envoy gone: the proxy is forgotten, by the controller and by the metrics.
    wait_until(lambda: plane.sample("pilotfish_xds_connected_proxies") == 0)
    assert plane.sample("pilotfish_xds_streams", type="ads") == 0
    assert get(plane.admin, "/debug/syncz").json() == []
    assert get(plane.admin, f"/debug/config_dump?proxy={PROXY}").status == 404


def test_refused_streams_are_counted_by_code() -> None:
    from prometheus_client.parser import text_string_to_metric_families

    metrics = Metrics()
    metrics.on_stream_refused(1, "no client certificate", "UNAUTHENTICATED")
    metrics.on_stream_refused(2, "may not act as node b", "PERMISSION_DENIED")
    metrics.on_stream_refused(3, "may not act as node c", "PERMISSION_DENIED")
    samples = {
        s.labels["code"]: s.value
        for f in text_string_to_metric_families(metrics.exposition().decode())
        for s in f.samples
        if s.name == "pilotfish_xds_refused_streams_total"
    }
    assert samples == {"unauthenticated": 1.0, "permission_denied": 2.0}
