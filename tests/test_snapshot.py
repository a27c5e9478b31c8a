"""Snapshot: immutable, content-versioned, serialize-once, consistency report."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from pilotfish.cache import Snapshot, SnapshotCache
from pilotfish.errors import UnknownTypeError
from pilotfish.protos import (
    CLUSTER_TYPE,
    ENDPOINT_TYPE,
    LISTENER_TYPE,
    ROUTE_TYPE,
    Cluster,
    DiscoveryResponse,
    Node,
)
from pilotfish.translators import build
from pilotfish.xds import PreparedResponse, WatchRequest
from tests.helpers import mesh


def test_mutating_a_message_afterwards_changes_nothing() -> None:
    cluster = build.eds_cluster("a")
    snapshot = Snapshot({"cds": [cluster]})
    version = snapshot.version("cds")
    cluster.name = "changed"
    cluster.connect_timeout.seconds = 99
    assert list(snapshot.resources(CLUSTER_TYPE)) == ["a"]
    served: Cluster = snapshot.messages("cds")["a"]
    assert served.connect_timeout.seconds == 1
    served.connect_timeout.seconds = 42  # a copy: the snapshot is untouched
    again: Cluster = snapshot.messages("cds")["a"]
    assert again.connect_timeout.seconds == 1
    assert snapshot.version("cds") == version


def test_versions_are_content_hashes() -> None:
    one = mesh({"a": [("127.0.0.1", 1)]}, "a")
    same = mesh({"a": [("127.0.0.1", 1)]}, "a")
    other = mesh({"a": [("127.0.0.1", 2)]}, "a")
    for type_url in (CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE):
        assert one.version(type_url) == same.version(type_url)
    assert one.version(ENDPOINT_TYPE) != other.version(ENDPOINT_TYPE)
    assert one.version(CLUSTER_TYPE) == other.version(CLUSTER_TYPE)
    # Order of resources does not matter, content does.
    a, b = build.eds_cluster("a"), build.eds_cluster("b")
    assert Snapshot({"cds": [a, b]}).version("cds") == Snapshot({"cds": [b, a]}).version("cds")


def test_given_versions_win() -> None:
    snapshot = Snapshot({"cds": [build.eds_cluster("a")]}, version="v1", versions={"lds": "l7"})
    assert snapshot.version(CLUSTER_TYPE) == "v1"
    assert snapshot.version("lds") == "l7"


def test_absent_types_are_empty_with_a_version() -> None:
    snapshot = Snapshot({})
    assert snapshot.resources("sds") == {}
    assert snapshot.version("sds")


def test_duplicate_names_and_unknown_types_are_rejected() -> None:
    with pytest.raises(ValueError, match="two cds resources named 'a'"):
        Snapshot({"cds": [build.eds_cluster("a"), build.eds_cluster("a")]})
    with pytest.raises(UnknownTypeError, match="unknown xDS resource type 'nope'"):
        Snapshot({"nope": []})
    with pytest.raises(TypeError, match="ClusterLoadAssignment given"):
        Snapshot({"cds": [build.load_assignment("a", [])]})


def test_consistency_reports_both_directions() -> None:
    good = mesh({"a": [("127.0.0.1", 1)]}, "a")
    assert good.consistent().ok
    snapshot = Snapshot(
        {
            "cds": [build.eds_cluster("a"), build.eds_cluster("b", service_name="b-svc")],
            "eds": [build.load_assignment("a", []), build.load_assignment("orphan", [])],
            "lds": [build.http_listener("l", 1, "routes")],
        }
    )
    report = snapshot.consistent()
    assert not report.ok
    assert report.missing == {ENDPOINT_TYPE: {"b-svc"}, ROUTE_TYPE: {"routes"}}
    assert report.unreferenced == {ENDPOINT_TYPE: {"orphan"}}
    assert "missing eds: b-svc" in str(report)


def test_an_updated_snapshot_equals_one_built_afresh() -> None:
    a, b, c = (build.eds_cluster(n, service_name=f"{n}-svc") for n in "abc")
    loads = [build.load_assignment(f"{n}-svc", []) for n in "ab"]
    listener = build.http_listener("l", 1, "routes")
    before = Snapshot({"cds": [a, b], "eds": loads, "lds": [listener]}, version_prefix="t/")
    lds = before.response(LISTENER_TYPE, None)
    b2 = build.eds_cluster("b", service_name="b-svc", connect_timeout=3.0)
    after = before.updated(
        {"cds": ["a"], "eds": ["a-svc"]},
        {"cds": [b2, c], "eds": [build.load_assignment("c-svc", [])]},
    )
    fresh = Snapshot(
        {"cds": [b2, c], "eds": [loads[1], build.load_assignment("c-svc", [])], "lds": [listener]},
        version_prefix="t/",
    )
    for type_url in (CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE):
        assert after.version(type_url) == fresh.version(type_url), type_url
        assert {n: r.data for n, r in after.resources(type_url).items()} == {
            n: r.data for n, r in fresh.resources(type_url).items()
        }
    assert after.version("cds") != before.version("cds")
    assert after.references_of("cds", "c") == {ENDPOINT_TYPE: {"c-svc"}}
    assert after.references_of("cds", "a") == {}
    assert after.consistent().missing == fresh.consistent().missing == {ROUTE_TYPE: {"routes"}}
    assert after.stats.resources_serialized == 3
    assert after.response(LISTENER_TYPE, None) is lds  # an unchanged type keeps its responses
    assert before.version("cds") != after.version("cds")  # and the first snapshot is untouched
    assert list(before.resources("cds")) == ["a", "b"]
    with pytest.raises(ValueError, match="given version"):
        Snapshot({}, version="v1").updated({}, {"cds": [a]})


def test_an_empty_type_updated_equals_one_built_afresh() -> None:
    """A type's first update (made in bulk, not change by change) gives what the constructor
    gives: versions, bytes, order, references, what was serialized; and rejects the same."""
    clusters = [build.eds_cluster(n, service_name=f"{n}-svc") for n in "bca"]
    loads = [build.load_assignment(f"{n}-svc", []) for n in "bca"]
    empty = Snapshot({}, version_prefix="t/")
    after = empty.updated({"cds": ["gone"]}, {"cds": clusters, "eds": loads})
    fresh = Snapshot({"cds": clusters, "eds": loads}, version_prefix="t/")
    for type_url in (CLUSTER_TYPE, ENDPOINT_TYPE):
        assert after.version(type_url) == fresh.version(type_url)
        assert [(n, r.data) for n, r in after.resources(type_url).items()] == [
            (n, r.data) for n, r in fresh.resources(type_url).items()
        ]
    assert list(after.resources("cds")) == ["b", "c", "a"]
    assert after.references_of("cds", "c") == {ENDPOINT_TYPE: {"c-svc"}}
    assert after.references_of("eds", "c-svc") == {}
    assert after.stats.resources_serialized == fresh.stats.resources_serialized == 6
    with pytest.raises(ValueError, match="two cds resources named 'c'"):
        empty.updated({}, {"cds": [*clusters, build.eds_cluster("c")]})
    with pytest.raises(ValueError, match="resources named 'a'"):  # the type under two keys
        Snapshot({"cds": clusters, CLUSTER_TYPE: [build.eds_cluster("a")]})


class _DataclassLike:
    """Stands in for an envoy-data-plane message: anything that serializes via bytes()."""

    def __init__(self, message: Cluster) -> None:
        self._data: bytes = message.SerializeToString()

    def __bytes__(self) -> bytes:
        return self._data


def test_foreign_messages_are_converted_once_through_bytes() -> None:
    snapshot = Snapshot({"cds": [_DataclassLike(build.eds_cluster("x"))]})
    assert snapshot.messages("cds")["x"] == build.eds_cluster("x")


def test_responses_are_built_once_per_subscription() -> None:
    snapshot = mesh({"a": [("127.0.0.1", 1)], "b": [("127.0.0.1", 2)]}, "a")
    assert snapshot.stats.resources_serialized == 6
    everything = snapshot.response(CLUSTER_TYPE, None)
    assert snapshot.response(CLUSTER_TYPE, None) is everything
    only_a = snapshot.response(ENDPOINT_TYPE, frozenset({"a", "missing"}))
    assert snapshot.response(ENDPOINT_TYPE, frozenset({"missing", "a"})) is only_a
    assert snapshot.stats.responses_built == 2
    assert only_a.names == {"a"}
    parsed = DiscoveryResponse.FromString(only_a.body)
    assert parsed.version_info == snapshot.version(ENDPOINT_TYPE)
    assert parsed.type_url == ENDPOINT_TYPE
    assert len(parsed.resources) == 1
    assert everything.names == {"a", "b"}


def test_envoy_data_plane_messages_are_accepted() -> None:
    from datetime import timedelta

    from envoy_data_plane.envoy.config.cluster.v3 import Cluster as DataPlaneCluster
    from envoy_data_plane.envoy.config.cluster.v3 import ClusterDiscoveryType

    cluster = DataPlaneCluster(
        name="x", type=ClusterDiscoveryType.EDS, connect_timeout=timedelta(seconds=1)
    )
    snapshot = Snapshot({"cds": [cluster]})
    native = build.eds_cluster("x")
    native.ClearField("eds_cluster_config")
    assert snapshot.messages("cds") == {"x": native}
    assert snapshot.version("cds") == Snapshot({"cds": [native]}).version("cds")


# -- SnapshotCache.rearm_watch: one watch per stream and type, re-armed on each ACK ---------------


def _cds_watch(node: Node, known_version: str = "", stream_id: int = 7) -> WatchRequest:
    return WatchRequest(
        node, stream_id, CLUSTER_TYPE, frozenset(), True, known_version, frozenset()
    )


def test_a_cancelled_watch_is_rearmed_in_place() -> None:
    cache, node = SnapshotCache(), Node(id="n")
    cache.set_snapshot("n", mesh({"a": [("127.0.0.1", 1)]}, "a"))
    got: list[PreparedResponse] = []
    watch = cache.create_watch(_cds_watch(node), got.append)
    (first,) = got
    watch()  # written: cancelled
    assert cache.watch_count() == 0
    request = _cds_watch(node, first.version)
    again = cache.rearm_watch(watch, request, got.append)
    assert again is watch and cache.watch_count() == 1 and got == [first]
    # Re-arming an open watch, another stream's, or a foreign canceller: a new watch instead.
    other = cache.rearm_watch(watch, request, got.append)
    assert other is not watch and cache.watch_count() == 2
    other()
    watch()
    moved = cache.rearm_watch(watch, _cds_watch(node, first.version, stream_id=8), got.append)
    assert moved is not watch
    moved()
    fresh = cache.rearm_watch(lambda: None, request, got.append)
    assert fresh is not watch and cache.watch_count() == 1
    fresh()
    assert cache.watch_count() == 0 and got == [first]


def test_a_rearmed_watch_answers_what_changed_while_it_was_cancelled() -> None:
    cache, node = SnapshotCache(), Node(id="n")
    cache.set_snapshot("n", mesh({"a": [("127.0.0.1", 1)]}, "a"))
    got: list[PreparedResponse] = []
    watch = cache.create_watch(_cds_watch(node), got.append)
    watch()
    newer = mesh({"a": [("127.0.0.1", 1)], "b": [("127.0.0.1", 2)]}, "a")
    cache.set_snapshot("n", newer)  # no watch open: nobody answered
    cache.clear_snapshot("n")
    cache.set_snapshot("n", newer)  # the same snapshot, set again
    request = _cds_watch(node, got[0].version)
    watch = cache.rearm_watch(watch, request, got.append)
    assert [r.version for r in got] == [got[0].version, newer.version(CLUSTER_TYPE)]
    watch()
    # Known to hold what it was sent, from the same snapshot: no answer.
    watch = cache.rearm_watch(watch, _cds_watch(node, got[1].version), got.append)
    assert len(got) == 2
    watch()
    # Told it holds the older version again: answered with the newer one.
    cache.rearm_watch(watch, request, got.append)
    assert len(got) == 3 and got[2] is got[1]


# -- Snapshot.holds: a subscription untouched by a push is checked once, not once per stream -----


class _CountedNames(frozenset[str]):
    """A subscription that counts how often it is walked."""

    walks = 0

    def __iter__(self) -> Iterator[str]:
        _CountedNames.walks += 1
        return super().__iter__()


def test_streams_sharing_a_subscription_are_checked_against_a_push_once() -> None:
    cache, node = SnapshotCache(), Node(id="n")
    endpoints = {name: [("10.0.0.1", 80)] for name in ("a", "b", "c")}
    cache.set_snapshot("n", mesh(endpoints, "a"))
    names = _CountedNames({"a", "b"})
    got: list[PreparedResponse] = []
    for stream in range(1, 51):
        cancel = cache.create_watch(
            WatchRequest(node, stream, ENDPOINT_TYPE, names, False, "", frozenset()), got.append
        )
        cancel()  # the answer is written: the session cancels the watch
    sent = got[0]
    assert len(got) == 50 and all(r is sent for r in got)
    assert sent.resource_versions is not None
    for stream in range(1, 51):  # every stream ACKed what it was sent
        request = WatchRequest(
            node, stream, ENDPOINT_TYPE, names, False, sent.version, sent.names,
            False, sent.resource_versions,
        )  # fmt: skip
        cache.create_watch(request, got.append)
    _CountedNames.walks = 0

    # Only "c" changed: none of the 50 streams gets anything, and the names were walked once.
    cache.set_snapshot("n", mesh({**endpoints, "c": [("10.0.0.2", 80)]}, "a"))
    assert len(got) == 50
    assert _CountedNames.walks == 1

    # "a" changed: every stream is answered, still from one walk.
    _CountedNames.walks = 0
    cache.set_snapshot("n", mesh({**endpoints, "a": [("10.0.0.2", 80)]}, "a"))
    assert len(got) == 100 and all(r is got[50] for r in got[50:])
    assert got[50].version != sent.version
    assert _CountedNames.walks <= 2  # one check, and the one response built (sorted names)


def test_holds_compares_each_subscribed_name_with_what_the_client_holds() -> None:
    before = mesh({"a": [("10.0.0.1", 80)], "b": [("10.0.0.1", 80)]}, "a")
    sent = before.response(ENDPOINT_TYPE, frozenset({"a", "gone"}))
    assert sent.resource_versions is not None
    after = mesh({"a": [("10.0.0.1", 80)], "b": [("10.0.0.9", 80)]}, "a")
    assert after.holds(ENDPOINT_TYPE, frozenset({"a", "gone"}), sent.resource_versions)
    assert not after.holds(ENDPOINT_TYPE, frozenset({"a", "b"}), sent.resource_versions)
    added = mesh({"a": [("10.0.0.1", 80)], "gone": [("10.0.0.1", 80)]}, "a")
    assert not added.holds(ENDPOINT_TYPE, frozenset({"a", "gone"}), sent.resource_versions)
    # A plain dict may change after the call: it is checked each time, never remembered.
    versions = dict(sent.resource_versions)
    assert after.holds(ENDPOINT_TYPE, frozenset({"a"}), versions)
    versions["a"] = "another"
    assert not after.holds(ENDPOINT_TYPE, frozenset({"a"}), versions)
