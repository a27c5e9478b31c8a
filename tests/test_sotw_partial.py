"""State-of-the-world EDS and RDS answers carry only what the client lacks.

Envoy applies such an answer per subscription (a cluster's endpoints are updated only if the
answer carries them); only LDS and CDS answers are the whole state. So one cluster's endpoints
changed is sent alone, built once for every stream in the same state; after a NACK, or when an
unwritten answer is replaced, the answer carries everything again. Envoy itself is in
`test_sotw_partial_envoy.py`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from types import MappingProxyType
from unittest import mock

from pilotfish.bounded import ByIdentity
from pilotfish.cache import Snapshot, SnapshotCache, WithTtl, answers
from pilotfish.cache.answers import PER_NAME
from pilotfish.protos import (
    CLUSTER_TYPE,
    ENDPOINT_TYPE,
    LISTENER_TYPE,
    ROUTE_TYPE,
    SECRET_TYPE,
    TTL_CLIENT_FEATURE,
    Cluster,
    ClusterLoadAssignment,
    DiscoveryResponse,
    Node,
    Secret,
)
from pilotfish.testing.client import InMemoryAdsClient
from pilotfish.translators import build
from pilotfish.xds import PreparedResponse, WatchRequest
from tests.helpers import mesh

NODE = Node(id="n1")
ABC = {"a": [("127.0.0.1", 1)], "b": [("127.0.0.1", 2)], "c": [("127.0.0.1", 3)]}


def _moved(name: str, port: int) -> dict[str, list[tuple[str, int]]]:
    return {**ABC, name: [("127.0.0.1", port)]}


def _endpoints(response: DiscoveryResponse) -> dict[str, int]:
    """Each cluster an EDS response carries, with its first endpoint's port."""
    found = {}
    for resource in response.resources:
        assignment = ClusterLoadAssignment.FromString(resource.value)
        address = assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address
        found[assignment.cluster_name] = address.port_value
    return found


def _converged(cache: SnapshotCache, node: Node = NODE) -> InMemoryAdsClient:
    ads = InMemoryAdsClient(cache, node=node)
    ads.subscribe(CLUSTER_TYPE, [])
    ads.subscribe(ENDPOINT_TYPE, sorted(ABC))
    for response in ads.poll():
        ads.ack(response)
    assert ads.poll() == []
    return ads


def test_one_clusters_endpoints_changed_are_sent_alone() -> None:
    cache = SnapshotCache()
    cache.set_snapshot("n1", mesh(ABC, "a"))
    ads = _converged(cache)
    cache.set_snapshot("n1", mesh(_moved("b", 20), "a"))
    (response,) = ads.poll()
    assert response.type_url == ENDPOINT_TYPE
    assert _endpoints(response) == {"b": 20}
    ads.ack(response)
    cache.set_snapshot("n1", mesh({**_moved("b", 20), "c": [("127.0.0.1", 30)]}, "a"))
    (response,) = ads.poll()
    assert _endpoints(response) == {"c": 30}  # relative to what the last answer left
    ads.ack(response)
    assert ads.poll() == []


def test_the_answer_leaves_the_stream_holding_what_the_whole_one_would() -> None:
    first, second = mesh(ABC, "a"), mesh(_moved("a", 10), "a")
    names = frozenset(ABC)
    held = first.response(ENDPOINT_TYPE, names).resource_versions
    assert held is not None
    whole = second.response(ENDPOINT_TYPE, names)
    part = second.response_since(ENDPOINT_TYPE, names, held)
    assert part is not None
    assert _endpoints(DiscoveryResponse.FromString(part.body)) == {"a": 10}
    assert len(DiscoveryResponse.FromString(whole.body).resources) == 3
    # The same state after it, by the same objects: the streams go on sharing them.
    assert part.resource_versions is whole.resource_versions
    assert part.names is whole.names
    assert part.version == whole.version
    # Made once for every stream holding the same versions.
    assert second.response_since(ENDPOINT_TYPE, names, held) is part
    # Nothing held: the whole answer itself.
    assert second.response_since(ENDPOINT_TYPE, names, {}) is whole


def test_a_service_gone_sends_its_endpoints_version_without_resources() -> None:
    # b's cluster and endpoints are gone, nothing else changed: the clusters answer drops b,
    # and the EDS answer has nothing to carry (it cannot say "gone": Envoy drops b's endpoints
    # with the cluster), but still carries the new version for the client to ACK, so it shows
    # in sync. Dropping b from the subscription then needs no answer.
    cache = SnapshotCache()
    cache.set_snapshot("n1", mesh(ABC, "a"))
    ads = _converged(cache)
    without_b = mesh({n: e for n, e in ABC.items() if n != "b"}, "a")
    cache.set_snapshot("n1", without_b)
    clusters, endpoints = ads.poll()
    assert {Cluster.FromString(r.value).name for r in clusters.resources} == {"a", "c"}
    assert endpoints.type_url == ENDPOINT_TYPE and not endpoints.resources
    assert endpoints.version_info == without_b.version(ENDPOINT_TYPE)
    ads.ack(clusters)
    ads.ack(endpoints)
    ads.subscribe(ENDPOINT_TYPE, ["a", "c"])
    assert ads.poll() == []


def test_secrets_are_answered_whole() -> None:
    # Envoy's unified xDS mux gives the subscriptions an answer leaves out an empty update,
    # which an SDS subscription rejects: SDS answers stay whole.
    def secret(name: str, key: bytes) -> Secret:
        made = Secret(name=name)
        made.tls_certificate.private_key.inline_bytes = key
        return made

    def snapshot(key: bytes) -> Snapshot:
        return Snapshot({"sds": [secret(n, key) for n in ("one", "two")]})

    assert ENDPOINT_TYPE in PER_NAME and SECRET_TYPE not in PER_NAME
    cache = SnapshotCache()
    cache.set_snapshot("n1", snapshot(b"k1"))
    ads = InMemoryAdsClient(cache, node=NODE)
    ads.subscribe(SECRET_TYPE, ["one", "two"])
    ads.ack(ads.poll()[0])
    cache.set_snapshot("n1", snapshot(b"k1").updated({}, {"sds": [secret("two", b"k2")]}))
    (secrets,) = ads.poll()
    assert len(secrets.resources) == 2


def test_a_fleet_in_one_state_shares_one_answer() -> None:
    cache = SnapshotCache(node_hash=lambda node: "fleet")
    cache.set_snapshot("fleet", mesh(ABC, "a"))
    fleet = [_converged(cache, Node(id=f"sidecar-{i}")) for i in range(20)]
    pushed = mesh(_moved("a", 10), "a")
    cache.set_snapshot("fleet", pushed)
    answers = [ads.poll() for ads in fleet]
    assert all(len(got) == 1 and _endpoints(got[0]) == {"a": 10} for got in answers)
    # The CDS answer is unchanged; the EDS answer built once (whole, then the part) for all.
    assert pushed.stats.responses_built == 2


def test_a_fleet_subscribing_alike_works_out_what_is_new_once() -> None:
    # A service added to the mesh: every Envoy of a kind then asks for its endpoints too, in a
    # list it holds as the same set objects as the others do.
    cache = SnapshotCache(node_hash=lambda node: "fleet")
    cache.set_snapshot("fleet", mesh({**ABC, "d": [("127.0.0.1", 4)]}, "a"))
    fleet = [_converged(cache, Node(id=f"sidecar-{i}")) for i in range(20)]
    worked_out = _CountingPuts(16)
    with mock.patch.object(answers, "_FRESH", worked_out):
        for ads in fleet:
            ads.subscribe(ENDPOINT_TYPE, [*sorted(ABC), "d"])
        got = [ads.poll() for ads in fleet]
    assert all(len(r) == 1 and _endpoints(r[0]) == {"d": 4} for r in got)
    assert worked_out.puts == 1


class _CountingPuts(ByIdentity[frozenset[str]]):
    __slots__ = ("puts",)

    def __init__(self, limit: int) -> None:
        super().__init__(limit)
        self.puts = 0

    def put(self, value: frozenset[str], first: object, second: object = None) -> frozenset[str]:
        self.puts += 1
        return super().put(value, first, second)


def test_clusters_and_listeners_are_always_the_whole_state() -> None:
    cache = SnapshotCache()
    cache.set_snapshot("n1", mesh(ABC, "a"))
    ads = _converged(cache)
    ads.subscribe(LISTENER_TYPE, [])
    ads.ack(ads.poll()[0])
    changed = mesh(ABC, "a", connect_timeout=2.0, listener_port=10001)
    cache.set_snapshot("n1", changed)
    got = {r.type_url: r for r in ads.poll()}
    clusters = {Cluster.FromString(r.value).name for r in got[CLUSTER_TYPE].resources}
    assert clusters == set(ABC)
    assert len(got[LISTENER_TYPE].resources) == 1


def test_a_cluster_updated_gets_its_own_endpoints_again() -> None:
    # Envoy warms an updated cluster again and waits for its endpoints, unchanged or not.
    cache = SnapshotCache()
    cache.set_snapshot("n1", mesh(ABC, "a"))
    ads = _converged(cache)
    cache.set_snapshot(
        "n1",
        mesh(ABC, "a").updated({}, {"cds": [build.eds_cluster("b", connect_timeout=2.0)]}),
    )
    clusters, endpoints = ads.poll()  # in that order: the clusters, then what they warm
    assert (clusters.type_url, endpoints.type_url) == (CLUSTER_TYPE, ENDPOINT_TYPE)
    assert len(clusters.resources) == 3
    assert _endpoints(endpoints) == {"b": 2}  # b's alone, at the same version
    ads.ack(clusters)
    ads.ack(endpoints)
    assert ads.poll() == []


def test_every_cluster_updated_gets_every_endpoint_again() -> None:
    cache = SnapshotCache()
    cache.set_snapshot("n1", mesh(ABC, "a"))
    ads = _converged(cache)
    cache.set_snapshot("n1", mesh(ABC, "a", connect_timeout=2.0))  # every cluster, same endpoints
    clusters, endpoints = ads.poll()
    assert (clusters.type_url, endpoints.type_url) == (CLUSTER_TYPE, ENDPOINT_TYPE)
    assert _endpoints(endpoints) == {"a": 1, "b": 2, "c": 3}
    ads.ack(clusters)
    ads.ack(endpoints)
    cache.set_snapshot("n1", mesh(_moved("c", 30), "a", connect_timeout=2.0))
    (after,) = ads.poll()
    assert _endpoints(after) == {"c": 30}  # and what it holds is known again


def test_after_a_nack_the_next_answer_carries_everything() -> None:
    # Envoy applies a rejected EDS answer to the subscriptions before the one that failed:
    # what the client holds is then not known.
    cache = SnapshotCache()
    cache.set_snapshot("n1", mesh(ABC, "a"))
    ads = _converged(cache)
    cache.set_snapshot("n1", mesh(_moved("a", 10), "a"))
    (rejected,) = ads.poll()
    assert _endpoints(rejected) == {"a": 10}
    ads.nack(rejected, "bad endpoints")
    cache.set_snapshot("n1", mesh(_moved("a", 11), "a"))
    (again,) = ads.poll()
    assert _endpoints(again) == {"a": 11, "b": 2, "c": 3}
    ads.ack(again)
    cache.set_snapshot("n1", mesh(_moved("a", 12), "a"))
    (after,) = ads.poll()
    assert _endpoints(after) == {"a": 12}  # ACKed: known again


def test_an_unwritten_answer_is_replaced_by_a_whole_one() -> None:
    # A watch answers, and a newer snapshot comes before the answer is written: the newer
    # answer replaces it, so it must carry what the first carried too.
    cache = SnapshotCache()
    first = mesh(ABC, "a")
    cache.set_snapshot("n1", first)
    whole = first.response(ENDPOINT_TYPE, frozenset(ABC))
    answers: list[PreparedResponse] = []
    request = WatchRequest(
        NODE,
        1,
        ENDPOINT_TYPE,
        frozenset(ABC),
        False,
        whole.version,
        whole.names,
        False,
        whole.resource_versions,
    )
    cancel = cache.create_watch(request, answers.append)
    assert answers == []
    cache.set_snapshot("n1", mesh(_moved("a", 10), "a"))
    cache.set_snapshot("n1", mesh({**_moved("a", 10), "b": [("127.0.0.1", 20)]}, "a"))
    assert [_endpoints(DiscoveryResponse.FromString(a.body)) for a in answers] == [
        {"a": 10},
        {"a": 10, "b": 20, "c": 3},
    ]
    cancel()


class _HookedLock:
    """The cache's lock, running `hook` once after the next release (another thread's turn)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.hook: Callable[[], None] | None = None

    def __enter__(self) -> None:
        self._lock.acquire()

    def __exit__(self, *exc: object) -> None:
        self._lock.release()
        hook, self.hook = self.hook, None
        if hook is not None:
            hook()


def test_an_answer_made_before_a_watch_is_rearmed_goes_to_its_old_respond() -> None:
    # set_snapshot answers the watches under the cache's lock and delivers outside it. If a
    # session re-arms a watch in between (another thread: a cluster updated, so b's endpoints
    # must come again), the answer made before goes where it was made for (the old respond,
    # which the session drops), not to the new one: there it would replace the answer to the
    # new request, and it lacks b.
    cache = SnapshotCache()
    lock = _HookedLock()
    cache._lock = lock  # type: ignore[assignment]
    first = mesh(ABC, "a")
    cache.set_snapshot("n1", first)
    names = frozenset(ABC)
    whole = first.response(ENDPOINT_TYPE, names)
    assert whole.resource_versions is not None
    old: list[PreparedResponse] = []
    new: list[PreparedResponse] = []

    def request(known: Mapping[str, str]) -> WatchRequest:
        return WatchRequest(
            NODE, 1, ENDPOINT_TYPE, names, False, whole.version, frozenset(known), False, known
        )

    watch = cache.create_watch(request(whole.resource_versions), old.append)
    without_b = MappingProxyType({n: v for n, v in whole.resource_versions.items() if n != "b"})

    def rearm() -> None:
        watch()  # the session cancels it (the answer before is on its way)...
        cache.rearm_watch(watch, request(without_b), new.append)  # ...and re-arms it

    lock.hook = rearm
    cache.set_snapshot("n1", mesh(_moved("a", 10), "a"))
    assert [_endpoints(DiscoveryResponse.FromString(a.body)) for a in new] == [{"a": 10, "b": 2}]
    assert [_endpoints(DiscoveryResponse.FromString(a.body)) for a in old] == [{"a": 10}]


def test_ttl_resources_keep_whole_answers() -> None:
    # A heartbeat refreshes the TTLs of the last answer's resources: it must hold them all.
    def snapshot(port: int) -> Snapshot:
        return Snapshot(
            {
                "eds": [
                    WithTtl(build.load_assignment("a", [("127.0.0.1", 1)]), 30.0),
                    build.load_assignment("b", [("127.0.0.1", port)]),
                ]
            }
        )

    cache = SnapshotCache()
    cache.set_snapshot("n1", snapshot(2))
    ads = InMemoryAdsClient(cache, node=Node(id="n1", client_features=[TTL_CLIENT_FEATURE]))
    ads.subscribe(ENDPOINT_TYPE, ["a", "b"])
    ads.ack(ads.poll()[0])
    cache.set_snapshot("n1", snapshot(20))
    (response,) = ads.poll()
    assert len(response.resources) == 2


def test_routes_are_answered_per_name_too() -> None:
    def snapshot(weight: int) -> Snapshot:
        return Snapshot(
            {
                "rds": [
                    build.route_config("one", {"a": 1}),
                    build.route_config("two", {"a": weight, "b": 1}),
                ]
            }
        )

    cache = SnapshotCache()
    cache.set_snapshot("n1", snapshot(1))
    ads = InMemoryAdsClient(cache, node=NODE)
    ads.subscribe(ROUTE_TYPE, ["one", "two"])
    (first,) = ads.poll()
    assert len(first.resources) == 2
    ads.ack(first)
    cache.set_snapshot("n1", snapshot(5))
    (changed,) = ads.poll()
    assert len(changed.resources) == 1
