"""CachedResource made on the fast paths, and the exact versions snapshots give."""

from __future__ import annotations

import dataclasses

import pytest

from pilotfish.cache import CachedResource, Snapshot
from pilotfish.protos import CLUSTER_TYPE, Cluster, ClusterLoadAssignment


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
