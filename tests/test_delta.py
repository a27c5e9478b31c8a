"""Delta (incremental) xDS: the core with the snapshot cache, driven in memory."""

from __future__ import annotations

from pilotfish.cache import Snapshot, SnapshotCache
from pilotfish.protos import CLUSTER_TYPE, ENDPOINT_TYPE, DeltaDiscoveryRequest, Node
from pilotfish.testing import InMemoryDeltaClient
from pilotfish.translators import build
from pilotfish.xds import Acked, Nacked, Subscribed, Unsubscribed
from tests.helpers import mesh

NODE = Node(id="n1")
AB = {"a": [("127.0.0.1", 1)], "b": [("127.0.0.1", 2)]}


def client(cache: SnapshotCache) -> InMemoryDeltaClient:
    return InMemoryDeltaClient(cache, node=NODE)


def names(response: object) -> set[str]:
    return {r.name for r in response.resources}  # type: ignore[attr-defined]


def test_wildcard_gets_everything_then_only_what_changed() -> None:
    cache = SnapshotCache()
    cache.set_snapshot("n1", mesh(AB, "a"))
    delta = client(cache)
    first = delta.subscribe(CLUSTER_TYPE)  # no names on the first request: wildcard
    assert first.events == (Subscribed(CLUSTER_TYPE, frozenset(), True),)
    (initial,) = delta.poll()
    assert names(initial) == {"a", "b"}
    assert delta.ack(initial).events[0] == Acked(CLUSTER_TYPE, initial.system_version_info, "1")
    changed = Snapshot({"cds": [build.eds_cluster("a"), build.eds_cluster("b", connect_timeout=5)]})
    cache.set_snapshot("n1", changed)
    (update,) = delta.poll()
    assert names(update) == {"b"} and list(update.removed_resources) == []
    delta.ack(update)
    cache.set_snapshot("n1", Snapshot({"cds": [build.eds_cluster("a")]}))
    (removal,) = delta.poll()
    assert names(removal) == set() and list(removal.removed_resources) == ["b"]
    assert delta.held[CLUSTER_TYPE] == {"a": changed.resources(CLUSTER_TYPE)["a"].version}


def test_named_subscriptions_absent_names_and_resubscribe() -> None:
    cache = SnapshotCache()
    cache.set_snapshot("n1", mesh({"a": [("127.0.0.1", 1)]}, "a"))
    delta = client(cache)
    delta.subscribe(ENDPOINT_TYPE, ["a", "ghost"])
    (first,) = delta.poll()
    assert names(first) == {"a"} and list(first.removed_resources) == ["ghost"]
    delta.ack(first)
    assert delta.poll() == []  # "ghost" is reported absent once, not in a loop
    cache.set_snapshot("n1", mesh({"a": [("127.0.0.1", 1)], "ghost": []}, "a"))
    (appeared,) = delta.poll()
    assert names(appeared) == {"ghost"}
    delta.ack(appeared)
    again = delta.subscribe(ENDPOINT_TYPE, ["a"])  # re-subscribe: always resent
    assert again.events == (Subscribed(ENDPOINT_TYPE, frozenset(), False),)
    (resent,) = delta.poll()
    assert names(resent) == {"a"}
    delta.ack(resent)
    gone = delta.subscribe(ENDPOINT_TYPE, unsubscribe=["ghost"])
    assert gone.events == (Unsubscribed(ENDPOINT_TYPE, frozenset({"ghost"}), False),)
    assert delta.poll() == []


def test_initial_versions_on_reconnect_send_only_what_differs() -> None:
    cache = SnapshotCache()
    snapshot = mesh(AB, "a")
    cache.set_snapshot("n1", snapshot)
    held = {name: r.version for name, r in snapshot.resources(CLUSTER_TYPE).items()}
    held["b"] = "stale"
    held["old"] = "v0"
    delta = client(cache)
    delta.subscribe(CLUSTER_TYPE, ["*"], initial_versions=held)
    (response,) = delta.poll()
    assert names(response) == {"b"}
    assert list(response.removed_resources) == ["old"]


def test_nacked_resources_are_not_resent_and_stale_nonces_still_subscribe() -> None:
    cache = SnapshotCache()
    cache.set_snapshot("n1", mesh(AB, "a"))
    delta = client(cache)
    delta.subscribe(CLUSTER_TYPE)
    delta.ack(delta.poll()[0])
    cache.set_snapshot("n1", mesh(AB, "a", connect_timeout=-1))
    (bad,) = delta.poll()
    (nack,) = delta.nack(bad, "bad timeout").events
    assert isinstance(nack, Nacked) and nack.message == "bad timeout"
    assert delta.poll() == []
    cache.set_snapshot("n1", mesh(AB, "a", connect_timeout=-1))
    assert delta.poll() == []
    # A request with an old nonce is no ACK, but its subscription change applies.
    delta.subscribe(ENDPOINT_TYPE, ["a"])
    (eds,) = delta.poll()
    stale = delta.send(
        DeltaDiscoveryRequest(
            type_url=ENDPOINT_TYPE, response_nonce="0", resource_names_subscribe=["b"]
        )
    )
    assert stale.stale and stale.events == (Subscribed(ENDPOINT_TYPE, frozenset({"b"}), False),)
    delta.ack(eds)
    (more,) = delta.poll()
    assert names(more) == {"b"}
    cache.set_snapshot("n1", mesh(AB, "a", connect_timeout=3))
    (fixed,) = [r for r in delta.poll() if r.type_url == CLUSTER_TYPE]
    assert names(fixed) == {"a", "b"}


def test_latest_pending_delta_response_keeps_every_change() -> None:
    cache = SnapshotCache()
    cache.set_snapshot("n1", Snapshot({"cds": [build.eds_cluster("a")]}))
    delta = client(cache)
    delta.subscribe(CLUSTER_TYPE)
    delta.ack(delta.poll()[0])
    # Two snapshots before the client reads: the one response must carry both changes.
    cache.set_snapshot("n1", Snapshot({"cds": [build.eds_cluster("a"), build.eds_cluster("b")]}))
    cache.set_snapshot("n1", Snapshot({"cds": [build.eds_cluster("b"), build.eds_cluster("c")]}))
    (response,) = delta.poll()
    assert names(response) == {"b", "c"}
    assert list(response.removed_resources) == ["a"]
    assert set(delta.held[CLUSTER_TYPE]) == {"b", "c"}


def test_status_cleanup_for_delta_streams() -> None:
    cache = SnapshotCache()
    cache.set_snapshot("n1", mesh(AB, "a"))
    delta = client(cache)
    delta.subscribe(CLUSTER_TYPE)
    delta.ack(delta.poll()[0])
    status = cache.status("n1")
    assert status is not None and status.types[CLUSTER_TYPE].acks == 1
    delta.close()
    assert cache.status_keys() == [] and cache.watch_count() == 0


def test_updated_cluster_gets_its_unchanged_endpoints_again() -> None:
    # Envoy re-warms an updated cluster and waits for its endpoints, which did not change.
    cache = SnapshotCache()
    cache.set_snapshot("n1", mesh(AB, "a"))
    delta = client(cache)
    delta.subscribe(CLUSTER_TYPE)
    delta.ack(delta.poll()[0])
    delta.subscribe(ENDPOINT_TYPE, ["a", "b"])
    delta.ack(delta.poll()[0])
    assert delta.poll() == []
    only_b_changes = Snapshot(
        {
            "cds": [build.eds_cluster("a"), build.eds_cluster("b", connect_timeout=9)],
            "eds": [build.load_assignment(n, eps) for n, eps in AB.items()],
        }
    )
    cache.set_snapshot("n1", only_b_changes)
    cds, eds = delta.poll()
    assert (cds.type_url, names(cds)) == (CLUSTER_TYPE, {"b"})
    assert (eds.type_url, names(eds)) == (ENDPOINT_TYPE, {"b"})


def test_fresh_client_gets_a_first_answer_even_when_empty() -> None:
    # Envoy's initialization waits for the first LDS/CDS answer, empty or not.
    cache = SnapshotCache()
    cache.set_snapshot("n1", Snapshot({}))
    delta = client(cache)
    delta.subscribe(CLUSTER_TYPE)
    (empty,) = delta.poll()
    assert list(empty.resources) == [] and list(empty.removed_resources) == []
    delta.ack(empty)
    assert delta.poll() == []
    # A resuming client (initial_resource_versions given) is not waiting: nothing is sent.
    resumed = InMemoryDeltaClient(cache, node=Node(id="n1"))
    resumed.subscribe(CLUSTER_TYPE, initial_versions={"gone": "v1"})
    (removal,) = resumed.poll()
    assert list(removal.removed_resources) == ["gone"]
