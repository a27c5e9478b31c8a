"""Bookinfo end to end: Istio's own sample manifests, local apps, a real Envoy sidecar in front
of each and an Envoy gateway, all configured only through pilotfish; real HTTP through them."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from pilotfish.demo.apps import RATINGS_UNAVAILABLE, REVIEWS_UNAVAILABLE, ProductPage
from pilotfish.demo.bookinfo import Bookinfo
from pilotfish.sources import ConfigObject, ConfigStore, load_documents, load_path

BOOKINFO = Path(__file__).resolve().parents[2] / "shared" / "conformance" / "istio-bookinfo"
NETWORKING = BOOKINFO / "networking"
RATINGS = "outbound|9080||ratings.default.svc.cluster.local"
RATINGS_V1 = "outbound|9080|v1|ratings.default.svc.cluster.local"  # virtual-service-all-v1
DETAILS = "outbound|9080||details.default.svc.cluster.local"


def objects(*files: str, text: str = "") -> list[ConfigObject]:
    """The gateway, all subsets, then `files` in order; a later object replaces an earlier one
    with the same kind/namespace/name, as `kubectl apply` would."""
    by_key: dict[tuple[str, str, str], ConfigObject] = {}
    for name in ("bookinfo-gateway.yaml", "destination-rule-all.yaml", *files):
        loaded = load_path(NETWORKING / name)
        assert loaded.errors == []
        by_key.update((o.key, o) for o in loaded.objects)
    if text:
        loaded = load_documents(text, file="test.yaml")
        assert loaded.errors == []
        by_key.update((o.key, o) for o in loaded.objects)
    return list(by_key.values())


@pytest.fixture(scope="module")
def bookinfo() -> Iterator[Bookinfo]:
    services = load_path(BOOKINFO / "platform" / "kube" / "bookinfo.yaml").objects
    with Bookinfo(services, extra_details=1) as running:
        yield running


@pytest.fixture(autouse=True)
def healthy(bookinfo: Bookinfo) -> Iterator[None]:
    for app in bookinfo.apps.values():
        app.reset()
    page = bookinfo.apps["productpage-v1"]
    assert isinstance(page, ProductPage)
    page.reviews_timeout = 3.0
    yield


def test_all_v1(bookinfo: Bookinfo) -> None:
    bookinfo.apply(objects("virtual-service-all-v1.yaml"))
    seen = Counter(bookinfo.page().reviews_version for _ in range(30))
    assert seen == {"v1": 30}
    page = bookinfo.page("jason")
    assert page.status == 200 and page.json["details"]["author"]
    # What Envoy was given carries Istio's names.
    gateway = bookinfo.gateway
    assert gateway is not None
    assert "http.8080" in gateway.envoy.dynamic_route_configs()
    assert "outbound|9080|v1|reviews.default.svc.cluster.local" in gateway.envoy.dynamic_clusters()


def test_reviews_50_v3_splits_about_evenly(bookinfo: Bookinfo) -> None:
    bookinfo.apply(objects("virtual-service-all-v1.yaml", "virtual-service-reviews-50-v3.yaml"))
    seen = Counter(bookinfo.page().reviews_version for _ in range(200))
    assert set(seen) == {"v1", "v3"}
    # 200 fair coin flips: 100 +- 30 is more than four standard deviations (7.07) each side.
    assert 70 <= seen["v1"] <= 130, seen


def test_jason_v2_others_v3(bookinfo: Bookinfo) -> None:
    bookinfo.apply(
        objects("virtual-service-all-v1.yaml", "virtual-service-reviews-jason-v2-v3.yaml")
    )
    assert Counter(bookinfo.page("jason").reviews_version for _ in range(20)) == {"v2": 20}
    assert Counter(bookinfo.page().reviews_version for _ in range(20)) == {"v3": 20}
    assert Counter(bookinfo.page("alice").reviews_version for _ in range(10)) == {"v3": 10}
    stars = bookinfo.page("jason").json["ratings"]
    assert {r["color"] for r in stars.values()} == {"black"}


def test_ratings_delay_for_jason_times_productpage_out(bookinfo: Bookinfo) -> None:
    # Istio's 7 s delay against productpage's 3 s reviews timeout, scaled down by ten.
    delay = (NETWORKING / "virtual-service-ratings-test-delay.yaml").read_text()
    assert "fixedDelay: 7s" in delay
    page_app = bookinfo.apps["productpage-v1"]
    assert isinstance(page_app, ProductPage)
    page_app.reviews_timeout = 0.3
    bookinfo.apply(
        objects(
            "virtual-service-all-v1.yaml",
            "virtual-service-reviews-test-v2.yaml",
            text=delay.replace("fixedDelay: 7s", "fixedDelay: 0.7s"),
        )
    )
    started = time.monotonic()
    page = bookinfo.page("jason")
    took = time.monotonic() - started
    assert page.status == 200
    assert page.json["reviews"] == {"error": REVIEWS_UNAVAILABLE}
    assert 0.3 <= took < 0.7
    # Everyone else reads reviews v1 without waiting.
    other = bookinfo.page("alice")
    assert other.reviews_version == "v1"
    # Envoy (reviews-v2's sidecar) injected the delay.
    time.sleep(0.5)  # let the delayed request finish in Envoy
    stats = bookinfo.sidecars["reviews-v2"].envoy.stats("fault")
    assert sum(v for k, v in stats.items() if k.endswith("fault.delays_injected")) >= 1


def test_ratings_abort_for_jason(bookinfo: Bookinfo) -> None:
    bookinfo.apply(
        objects(
            "virtual-service-all-v1.yaml",
            "virtual-service-reviews-test-v2.yaml",
            "virtual-service-ratings-test-abort.yaml",
        )
    )
    ratings = bookinfo.apps["ratings-v1"]
    before = ratings.hits
    page = bookinfo.page("jason")
    assert page.reviews_version == "v2"
    assert page.json["ratings"] == {"error": RATINGS_UNAVAILABLE}
    assert ratings.hits == before  # Envoy answered 500 itself
    reply = bookinfo.call("reviews-v2", "ratings", "/ratings/0", {"end-user": "jason"})
    assert reply.status == 500
    assert bookinfo.call("reviews-v2", "ratings", "/ratings/0").status == 200


def test_outlier_detection_ejects_a_failing_endpoint(bookinfo: Bookinfo) -> None:
    # Two details endpoints; at most half may be ejected, so only the failing one can be.
    rule = """
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: details}
spec:
  host: details
  trafficPolicy:
    outlierDetection: {consecutive5xxErrors: 2, interval: 1s, baseEjectionTime: 1m,
                       maxEjectionPercent: 50}
  subsets: [{name: v1, labels: {version: v1}}]
"""
    bookinfo.apply(objects(text=rule))
    failing = bookinfo.apps["details-v1"]
    failing.set_failing(True)
    statuses = [bookinfo.call("productpage-v1", "details", "/details/0").status for _ in range(10)]
    hits = failing.hits
    later = [bookinfo.call("productpage-v1", "details", "/details/0").status for _ in range(20)]
    assert 1 <= statuses.count(500) <= 2 and later == [200] * 20, (statuses, later)
    assert failing.hits == hits  # ejected: no more traffic reaches it
    envoy = bookinfo.sidecars["productpage-v1"].envoy
    assert envoy.stat(f"cluster.{DETAILS}.outlier_detection.ejections_enforced_total") == 1
    assert envoy.stat(f"cluster.{DETAILS}.outlier_detection.ejections_active") == 1


def test_circuit_breaker_rejects_excess_concurrent_requests(bookinfo: Bookinfo) -> None:
    rule = """
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: ratings}
spec:
  host: ratings
  trafficPolicy:
    connectionPool:
      tcp: {maxConnections: 1}
      http: {http1MaxPendingRequests: 1, maxRequestsPerConnection: 1}
  subsets: [{name: v1, labels: {version: v1}}]
"""
    bookinfo.apply(objects("virtual-service-all-v1.yaml", text=rule))
    bookinfo.apps["ratings-v1"].delay = 0.5
    with ThreadPoolExecutor(8) as pool:
        replies = list(
            pool.map(lambda _: bookinfo.call("reviews-v2", "ratings", "/ratings/0"), range(8))
        )
    statuses = Counter(r.status for r in replies)
    assert statuses[200] >= 1 and statuses[503] >= 1, statuses
    assert any(r.headers.get("x-envoy-overloaded") == "true" for r in replies)
    envoy = bookinfo.sidecars["reviews-v2"].envoy
    # The subset cluster inherits the rule's connection pool.
    assert envoy.stat(f"cluster.{RATINGS_V1}.upstream_rq_pending_overflow") >= 1


def test_retries_recover_from_a_flaky_upstream(bookinfo: Bookinfo) -> None:
    bookinfo.apply(objects("virtual-service-all-v1.yaml"))
    ratings = bookinfo.apps["ratings-v1"]
    ratings.fail_next(1, status=500)
    assert bookinfo.call("reviews-v2", "ratings", "/ratings/0").status == 500  # 500: not retried
    retries = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: ratings}
spec:
  hosts: [ratings]
  http:
  - route: [{destination: {host: ratings, subset: v1}}]
    retries: {attempts: 3, retryOn: 5xx, perTryTimeout: 2s}
"""
    bookinfo.apply(objects("virtual-service-all-v1.yaml", text=retries))
    before = ratings.hits
    ratings.fail_next(2, status=500)
    assert bookinfo.call("reviews-v2", "ratings", "/ratings/0").status == 200
    assert ratings.hits - before == 3
    envoy = bookinfo.sidecars["reviews-v2"].envoy
    assert envoy.stat(f"cluster.{RATINGS_V1}.upstream_rq_retry") >= 2


def test_a_bad_file_never_replaces_the_last_good_translation(
    bookinfo: Bookinfo, tmp_path: Path
) -> None:
    for name in ("bookinfo-gateway.yaml", "destination-rule-all.yaml"):
        (tmp_path / name).write_text((NETWORKING / name).read_text())
    routes = tmp_path / "reviews.yaml"
    routes.write_text((NETWORKING / "virtual-service-reviews-v3.yaml").read_text())
    store = ConfigStore()
    assert store.sync(tmp_path) == {}
    bookinfo.apply(store.objects())
    assert Counter(bookinfo.page().reviews_version for _ in range(10)) == {"v3": 10}
    served = bookinfo.mesh.cache.get_snapshot("productpage-v1").version("rds")
    # jason-v2-v3 with a lookahead regex (not RE2): the file is refused as a whole.
    broken = (NETWORKING / "virtual-service-reviews-jason-v2-v3.yaml").read_text()
    routes.write_text(broken.replace("exact: jason", "regex: '(?=jason)'"))
    refused = store.sync(tmp_path)
    (error,) = refused[str(routes)]
    assert (error.kind, error.namespace, error.name) == ("VirtualService", "default", "reviews")
    assert error.field == "spec.http[0].match[0].headers[end-user].regex"
    bookinfo.apply(store.objects())
    assert bookinfo.mesh.cache.get_snapshot("productpage-v1").version("rds") == served
    assert Counter(bookinfo.page("jason").reviews_version for _ in range(10)) == {"v3": 10}
    routes.write_text(broken)  # fixed: now it is served
    assert store.sync(tmp_path) == {}
    bookinfo.apply(store.objects())
    assert bookinfo.page("jason").reviews_version == "v2"


def test_delegate_virtual_service(bookinfo: Bookinfo) -> None:
    delegation = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - match: [{headers: {end-user: {exact: jason}}}]
    delegate: {name: reviews-for-jason}
  - route: [{destination: {host: reviews, subset: v1}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews-for-jason}
spec:
  http:
  - match: [{uri: {prefix: /reviews}}]
    route: [{destination: {host: reviews, subset: v3}}]
"""
    bookinfo.apply(objects("virtual-service-all-v1.yaml", text=delegation))
    assert Counter(bookinfo.page("jason").reviews_version for _ in range(10)) == {"v3": 10}
    assert Counter(bookinfo.page().reviews_version for _ in range(10)) == {"v1": 10}
