"""An updated resource that others depend on makes its streams resend those, decided once for
every stream that held the same response (not once per stream)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from types import MappingProxyType
from typing import Any

from pilotfish.cache import SnapshotCache
from pilotfish.protos import CLUSTER_TYPE, ENDPOINT_TYPE, DiscoveryResponse, Node
from pilotfish.testing.client import InMemoryAdsClient
from pilotfish.translators import build
from pilotfish.xds import PreparedResponse
from pilotfish.xds.sotw import SotwStream
from tests.helpers import mesh


class _CountedReferences(dict[str, Mapping[str, frozenset[str]]]):
    """A response's references that count how often they are walked."""

    walks = 0

    def __iter__(self) -> Iterator[str]:
        _CountedReferences.walks += 1
        return super().__iter__()

    def items(self) -> Any:
        _CountedReferences.walks += 1
        return super().items()


def _cds(version: str, versions: dict[str, str]) -> PreparedResponse:
    references = _CountedReferences(
        {name: MappingProxyType({ENDPOINT_TYPE: frozenset({name})}) for name in versions}
    )
    return PreparedResponse(
        CLUSTER_TYPE,
        version,
        frozenset(versions),
        b"",
        resource_versions=MappingProxyType(versions),
        references=references,
        reference_types=frozenset({ENDPOINT_TYPE}),
    )


def test_an_update_is_found_once_for_everyone_who_held_the_same_response() -> None:
    names = [f"c{i:03d}" for i in range(300)]
    before = _cds("1", dict.fromkeys(names, "1"))
    assert before.resource_versions is not None
    last_updated = _cds("2", {**dict.fromkeys(names, "1"), names[-1]: "2"})
    _CountedReferences.walks = 0
    assert all(last_updated.updates_references(before.resource_versions) for _ in range(50))
    assert _CountedReferences.walks == 1

    added = _cds("3", {**dict.fromkeys(names, "1"), "new": "1"})  # an addition: no re-warm
    assert not any(added.updates_references(before.resource_versions) for _ in range(50))
    assert _CountedReferences.walks == 2

    # A plain dict may change after the call: walked each time, never remembered.
    held = dict.fromkeys(names, "1")
    assert last_updated.updates_references(held)
    held[names[-1]] = "2"
    assert not last_updated.updates_references(held)
    assert _CountedReferences.walks == 4


def test_every_stream_resends_the_endpoints_of_an_updated_cluster() -> None:
    endpoints = {f"c{i:03d}": [("10.0.0.1", 80)] for i in range(20)}
    cache = SnapshotCache()
    cache.set_snapshot("n", mesh(endpoints, "c000"))
    proxies = [InMemoryAdsClient(cache, node=Node(id="n")) for _ in range(10)]
    for ads in proxies:
        ads.subscribe(CLUSTER_TYPE)
        ads.ack(ads.poll()[0])
        ads.subscribe(ENDPOINT_TYPE, list(endpoints))
        ads.ack(ads.poll()[0])
    # The last cluster updated (its connect timeout), its endpoints not.
    before = cache.get_snapshot("n")
    cache.set_snapshot(
        "n", before.updated({}, {"cds": [build.eds_cluster("c019", connect_timeout=2.0)]})
    )
    for ads in proxies:
        written = ads.session.next_response()
        assert written is not None
        assert DiscoveryResponse.FromString(written[0]).type_url == CLUSTER_TYPE
        # Its endpoints are forgotten as sent, so the next EDS answer carries them.
        protocol = ads.session.protocol
        assert isinstance(protocol, SotwStream)
        assert protocol.rewarm == {ENDPOINT_TYPE}
    # Clusters added, none updated: nothing to re-warm.
    grown = cache.get_snapshot("n").updated(
        {},
        {
            "cds": [build.eds_cluster("c999")],
            "eds": [build.load_assignment("c999", [("10.0.0.1", 80)])],
        },
    )
    cache.set_snapshot("n", grown)
    for ads in proxies:
        written = ads.session.next_response()
        assert written is not None
        protocol = ads.session.protocol
        assert isinstance(protocol, SotwStream)
        assert protocol.rewarm == frozenset()
