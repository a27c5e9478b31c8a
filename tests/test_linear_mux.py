"""LinearCache and MuxCache: in memory, and behind a real Envoy."""

from __future__ import annotations

from collections.abc import Callable

from pilotfish.cache import LinearCache, MuxCache, Snapshot, SnapshotCache
from pilotfish.protos import CLUSTER_TYPE, ENDPOINT_TYPE, ROUTE_TYPE, Node
from pilotfish.testing import (
    EnvoyProcess,
    HttpUpstream,
    InMemoryAdsClient,
    InMemoryDeltaClient,
    RecordingCallbacks,
    ServerThread,
    free_port,
    wait_until,
)
from pilotfish.translators import build
from pilotfish.xds import PreparedResponse, WatchRequest

NODE = Node(id="n1")


def cla(name: str, port: int = 1) -> object:
    return build.load_assignment(name, [("127.0.0.1", port)])


def names(response: object) -> set[str]:
    from pilotfish.protos import ClusterLoadAssignment

    return {
        ClusterLoadAssignment.FromString(r.value).cluster_name
        for r in response.resources  # type: ignore[attr-defined]
    }


def test_sotw_watches_wake_only_for_their_names() -> None:
    linear = LinearCache(ENDPOINT_TYPE, [cla("a"), cla("b"), cla("c")])
    ads = InMemoryAdsClient(linear, node=NODE)
    ads.subscribe(ENDPOINT_TYPE, ["a", "b"])
    (first,) = ads.poll()
    assert names(first) == {"a", "b"}
    ads.ack(first)
    linear.update_resource(cla("c", 2))  # not subscribed: nothing
    assert ads.poll() == []
    linear.update_resource(cla("a", 2))
    (second,) = ads.poll()
    # Only what changed: Envoy applies an EDS answer per cluster (`Snapshot.response_since`).
    assert names(second) == {"a"} and second.version_info != first.version_info
    ads.ack(second)
    linear.delete_resource("b")
    (third,) = ads.poll()  # the new version with nothing in it: an EDS answer cannot say "gone"
    assert names(third) == set() and third.version_info != second.version_info
    ads.ack(third)
    ads.subscribe(ENDPOINT_TYPE, ["a", "b", "c"])  # a name that exists: sent at once
    assert names(ads.poll()[0]) == {"c"}  # a is held


def test_batch_wakes_each_watch_once_and_versions_are_content_hashes() -> None:
    linear = LinearCache("eds", [cla("a"), cla("b")])
    answers: list[PreparedResponse] = []
    request = WatchRequest(NODE, 1, ENDPOINT_TYPE, frozenset({"a", "b"}), False, "", frozenset())
    linear.create_watch(request, answers.append)
    assert len(answers) == 1
    linear.update_resources([cla("a", 5), cla("b", 5)], ["zzz"])
    assert len(answers) == 2  # one wake-up for the whole batch
    assert linear.responses_built == 2
    # Another server (a restart, a replica) with the same content has the same versions,
    # and different content never gets one of them.
    same = LinearCache("eds", [cla("b", 5), cla("a", 5)])
    assert same.version(["a", "b"]) == linear.version(["a", "b"]) == answers[1].version
    assert LinearCache("eds", [cla("a", 6), cla("b", 5)]).version(["a", "b"]) != answers[1].version


def test_glob_prefix_and_wildcard_watches() -> None:
    linear = LinearCache("eds", [cla("out|1"), cla("out|2"), cla("in|1")])
    prefix = InMemoryAdsClient(linear, node=NODE)
    prefix.subscribe(ENDPOINT_TYPE, ["out|*"])
    (got,) = prefix.poll()
    assert names(got) == {"out|1", "out|2"}
    prefix.ack(got)
    everything = InMemoryAdsClient(linear, node=Node(id="n2"))
    everything.subscribe(ENDPOINT_TYPE)
    everything.ack(everything.poll()[0])
    linear.update_resource(cla("in|2"))
    assert prefix.poll() == []
    assert names(everything.poll()[0]) == {"out|1", "out|2", "in|1", "in|2"}
    linear.update_resource(cla("out|3"))
    assert names(prefix.poll()[0]) == {"out|1", "out|2", "out|3"}


def test_delta_clients_get_changes_and_removals() -> None:
    linear = LinearCache("eds", [cla("a"), cla("b")])
    delta = InMemoryDeltaClient(linear, node=NODE)
    delta.subscribe(ENDPOINT_TYPE, ["a", "b", "ghost"])
    (first,) = delta.poll()
    assert {r.name for r in first.resources} == {"a", "b"}
    assert list(first.removed_resources) == ["ghost"]
    delta.ack(first)
    linear.update_resources([cla("a", 9)], ["b"])
    (update,) = delta.poll()
    assert {r.name for r in update.resources} == {"a"}
    assert list(update.removed_resources) == ["b"]
    delta.close()
    assert linear.watch_count() == 0 and linear.status("n1") is None


def test_mux_routes_types_and_cleans_up_everywhere() -> None:
    snapshots, linear = SnapshotCache(), LinearCache("eds", [cla("a")])
    snapshots.set_snapshot("n1", Snapshot({"cds": [build.eds_cluster("a")]}))
    mux = MuxCache({"cds": snapshots, "eds": linear})
    ads = InMemoryAdsClient(mux, node=NODE)
    ads.subscribe(CLUSTER_TYPE)
    ads.subscribe(ENDPOINT_TYPE, ["a"])
    ads.subscribe(ROUTE_TYPE, ["r"])  # nobody serves routes: never answered
    got = ads.poll()
    assert [r.type_url for r in got] == [CLUSTER_TYPE, ENDPOINT_TYPE]
    for response in got:
        ads.ack(response)
    assert snapshots.status("n1") is not None and linear.status("n1") is not None
    ads.close()
    assert snapshots.status("n1") is None and linear.status("n1") is None
    assert snapshots.watch_count() == 0 and linear.watch_count() == 0


def test_envoy_behind_mux_with_linear_endpoints(
    envoy_factory: Callable[..., EnvoyProcess], http_upstream: Callable[[str], HttpUpstream]
) -> None:
    blue, green = http_upstream("blue"), http_upstream("green")
    port = free_port()
    snapshots = SnapshotCache()
    snapshots.set_snapshot(
        "sidecar",
        Snapshot(
            {
                "cds": [build.eds_cluster("backend")],
                "lds": [build.http_listener("web", port, "routes")],
                "rds": [build.route_config("routes", "backend")],
            }
        ),
    )
    linear = LinearCache("eds", [build.load_assignment("backend", [blue.address])])
    callbacks = RecordingCallbacks()
    with ServerThread(MuxCache({"lds": snapshots, "rds": snapshots, "cds": snapshots,
                                "eds": linear}), callbacks=callbacks) as server:  # fmt: skip
        envoy = envoy_factory("sidecar", xds_address=server.address).wait_ready()
        assert envoy.request(port).body == "blue"
        before = callbacks.sent_count_by_type()
        linear.update_resource(build.load_assignment("backend", [green.address]))
        wait_until(lambda: envoy.request(port).body == "green", message="endpoints moved")
        assert callbacks.sent_count_by_type() - before == {ENDPOINT_TYPE: 1}


def test_a_fleet_shares_one_partial_answer_and_a_nack_gets_everything() -> None:
    linear = LinearCache("eds", [cla("a"), cla("b"), cla("c")])
    fleet = [InMemoryAdsClient(linear, node=Node(id=f"n{i}")) for i in range(10)]
    for ads in fleet:
        ads.subscribe(ENDPOINT_TYPE, ["a", "b", "c"])
        ads.ack(ads.poll()[0])
    built = linear.responses_built
    linear.update_resource(cla("b", 2))
    answers = [ads.poll() for ads in fleet]
    assert all(len(got) == 1 and names(got[0]) == {"b"} for got in answers)
    assert linear.responses_built == built + 2  # the whole answer, then the part, once
    first, second = fleet[0], fleet[1]
    first.nack(answers[0][0], "bad endpoints")
    second.ack(answers[1][0])
    linear.update_resource(cla("c", 2))
    assert names(first.poll()[0]) == {"a", "b", "c"}  # what it applied is not known
    assert names(second.poll()[0]) == {"c"}


def test_a_linear_watch_answering_twice_unwritten_answers_everything() -> None:
    linear = LinearCache("eds", [cla("a"), cla("b")])
    whole = linear.version(["a", "b"])
    held = {"a": linear.resources()["a"].version, "b": linear.resources()["b"].version}
    answers: list[PreparedResponse] = []
    request = WatchRequest(
        NODE, 1, ENDPOINT_TYPE, frozenset({"a", "b"}), False, whole, frozenset({"a", "b"}),
        False, held,
    )  # fmt: skip
    cancel = linear.create_watch(request, answers.append)
    linear.update_resource(cla("a", 2))
    linear.update_resource(cla("b", 2))  # before the first answer is written
    assert [names(_parsed(a)) for a in answers] == [{"a"}, {"a", "b"}]
    cancel()


def _parsed(answer: PreparedResponse) -> object:
    from pilotfish.protos import DiscoveryResponse

    return DiscoveryResponse.FromString(answer.body)


def test_envoy_keeps_the_linear_endpoints_an_answer_leaves_out(
    envoy_factory: Callable[..., EnvoyProcess], http_upstream: Callable[[str], HttpUpstream]
) -> None:
    blue, green, other = http_upstream("blue"), http_upstream("green"), http_upstream("other")
    port = free_port()
    snapshots = SnapshotCache()
    snapshots.set_snapshot(
        "sidecar",
        Snapshot(
            {
                "cds": [build.eds_cluster("backend"), build.eds_cluster("other")],
                "lds": [build.http_listener("web", port, "routes")],
                "rds": [build.route_config("routes", "backend")],
            }
        ),
    )
    linear = LinearCache(
        "eds",
        [
            build.load_assignment("backend", [blue.address]),
            build.load_assignment("other", [other.address]),
        ],
    )
    mux = MuxCache({"lds": snapshots, "rds": snapshots, "cds": snapshots, "eds": linear})
    with ServerThread(mux) as server:
        envoy = envoy_factory("sidecar", xds_address=server.address).wait_ready()
        assert envoy.request(port).body == "blue"

        def other_updates() -> int:
            return envoy.stat("cluster.other.update_success")

        before = wait_until(other_updates, message="other's endpoints applied")
        linear.update_resource(build.load_assignment("backend", [green.address]))
        wait_until(lambda: envoy.request(port).body == "green", message="endpoints moved")
        statuses = {c["name"]: c for c in envoy.clusters()["cluster_statuses"]}
        hosts = statuses["other"]["host_statuses"]
        assert [h["address"]["socket_address"]["port_value"] for h in hosts] == [other.address[1]]
        assert other_updates() == before  # the answer left it out: nothing applied to it
