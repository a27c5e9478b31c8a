"""CachedResource made on the fast paths, and the exact versions snapshots give."""

from __future__ import annotations

import dataclasses

import pytest

from pilotfish.cache import CachedResource, Encoded, Serialized, Snapshot
from pilotfish.protos import CLUSTER_TYPE, ENDPOINT_TYPE, Cluster, ClusterLoadAssignment


def _slots(resource: CachedResource) -> list[object]:
    return [getattr(resource, name) for name in CachedResource.__slots__]


def test_of_data_makes_what_the_constructor_makes() -> None:
    """`of_data` skips the frozen `__init__` (`_Unfrozen`): the same object, just as frozen."""
    data = Cluster(name="a").SerializeToString(deterministic=True)
    made = CachedResource.of_data(CLUSTER_TYPE, "a", data)
    pieces = CachedResource.of_data(CLUSTER_TYPE, "a", (data[:2], data[2:]), version="v")
    for resource in (made, pieces):
        assert type(resource) is CachedResource
        plain = CachedResource(
            CLUSTER_TYPE, resource.name, resource.pieces, resource.any_head, resource.version
        )
        assert resource == plain and repr(resource) == repr(plain)
        assert _slots(resource) == _slots(plain)
        with pytest.raises(dataclasses.FrozenInstanceError):
            resource.name = "b"  # type: ignore[misc]
    assert made.any == pieces.any and made.data == pieces.data == data  # cached fields work


def _snapshot() -> Snapshot:
    clusters = [Cluster(name=n, eds_cluster_config={"service_name": f"{n}-svc"}) for n in "abc"]
    loads = [ClusterLoadAssignment(cluster_name=f"{n}-svc") for n in "abc"]
    return Snapshot({"cds": clusters, "eds": loads}, version_prefix="t/")


def test_versions_are_pinned() -> None:
    """The exact strings, so a faster hash provably keeps every version proxies hold."""
    snapshot = _snapshot()
    versions = {t: snapshot.version(t) for t in ("cds", "eds", "lds")}
    assert versions == {
        "cds": "t/ceb0ae09e13e58f0",
        "eds": "t/20b44759fb15c75f",
        "lds": "t/0000000000000000",
    }
    assert {n: r.version for n, r in snapshot.resources("cds").items()} == {
        "a": "f81776055d3d71f3",
        "b": "db3eddde5e91f901",
        "c": "45c72ce67860efed",
    }
    updated = snapshot.updated({"cds": ["a"]}, {"eds": [ClusterLoadAssignment(cluster_name="d")]})
    assert (updated.version("cds"), updated.version("eds")) == (
        "t/53b629d4788786d3",
        "t/697ae47bbea2900a",
    )
    with_ttl = CachedResource.of_data(CLUSTER_TYPE, "x", (b"ab", b"cd"), 5.0)
    assert with_ttl.version == "033bf1aa3fa6dcc6"


def test_serialized_items_make_what_messages_make() -> None:
    """A snapshot given `Serialized` items (taken as they are), `Encoded` ones or messages
    serves the same resources, versions and references."""
    clusters = [
        Cluster(name=n, type=Cluster.EDS, eds_cluster_config={"service_name": f"{n}-svc"})
        for n in "ab"
    ]
    refs = [{ENDPOINT_TYPE: {f"{n}-svc"}} for n in "ab"]
    encoded = [Encoded(c, c.name, r) for c, r in zip(clusters, refs, strict=True)]
    serialized = [e.serialized(CLUSTER_TYPE) for e in encoded]
    assert [s.message for s in serialized] == encoded
    assert [s.cached for s in serialized] == [e.cached(CLUSTER_TYPE) for e in encoded]
    assert serialized[0].cached is encoded[0].cached(CLUSTER_TYPE)  # hashed once
    unknown = [Serialized(c, s.cached) for c, s in zip(clusters, serialized, strict=True)]
    snapshots = [Snapshot({"cds": given}) for given in (clusters, encoded, serialized, unknown)]
    for snapshot in snapshots:
        assert snapshot.version("cds") == snapshots[0].version("cds")
        assert snapshot.resources("cds") == snapshots[0].resources("cds")
        assert snapshot.references_of("cds", "b") == {ENDPOINT_TYPE: {"b-svc"}}
    assert [s.stats.resources_serialized for s in snapshots] == [2, 2, 0, 0]
    with pytest.raises(ValueError, match="two cds resources named 'a'"):
        Snapshot({"cds": [*serialized, serialized[0]]})
