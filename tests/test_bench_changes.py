"""The ADS push benchmark's single-resource pushes (`--change cluster`, `--change route`): what
each sends, and that a proxy whose cluster was updated holds the push only once that cluster's
endpoints came again, as an Envoy warming it does.

End to end with real processes and sockets at tiny numbers, plus the proxies' bookkeeping in
process. No timing assertions.
"""

from __future__ import annotations

from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import pytest
from bench import ads_common, ads_proxies

from pilotfish.cache import Snapshot
from pilotfish.protos import CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE, wire
from tests.test_bench_delta import run_tiny


def _moved(row: dict[str, Any]) -> list[set[str]]:
    """The types each push gave a new version, in order."""
    before = row["initial_snapshot"]["versions"]
    moved = []
    for push in row["pushes"]:
        moved.append({t for t, v in push["versions"].items() if v != before[t]})
        before = push["versions"]
    return moved


def test_a_cluster_update_sends_its_endpoints_again(tmp_path: Path) -> None:
    rows = run_tiny(tmp_path, "cluster", endpoints=2, pushes=2)
    for row in rows.values():
        assert _moved(row) == [{CLUSTER_TYPE}, {CLUSTER_TYPE}]
        # The cluster, then its endpoints (the same version) for the proxy to warm it again.
        assert row["responses_per_client_push"] == 2
        assert [p["resources_serialized"] for p in row["pushes"]] == [1, 1]
    # SotW sends every cluster (a CDS answer is the whole state) and that cluster's
    # endpoints; delta the one of each.
    assert rows["delta"]["bytes_per_client_push"] < rows["sotw"]["bytes_per_client_push"]
    # The endpoints alone (the answer built for it): the CDS answer and one EDS answer.
    assert [p["responses_built"] for p in rows["sotw"]["pushes"]] == [2, 2]


def test_a_route_change_sends_the_route_alone(tmp_path: Path) -> None:
    rows = run_tiny(tmp_path, "route", endpoints=2, pushes=2)
    for row in rows.values():
        assert _moved(row) == [{ROUTE_TYPE}, {ROUTE_TYPE}]
        assert row["responses_per_client_push"] == 1
        assert [p["resources_serialized"] for p in row["pushes"]] == [1, 1]


def test_a_service_replaced_sends_the_new_ones_endpoints_alone(tmp_path: Path) -> None:
    rows = run_tiny(tmp_path, "service", endpoints=2, pushes=2)
    for row in rows.values():
        assert _moved(row) == [{CLUSTER_TYPE, ENDPOINT_TYPE, ROUTE_TYPE}] * 2
        assert [p["resources_serialized"] for p in row["pushes"]] == [3, 3]
    # The clusters, the new service's endpoints (the proxy subscribed to them), the route; a
    # delta proxy is also told the old service's endpoints are gone, and a SotW proxy may get
    # the new endpoints version with nothing in it first (unless its new subscription came
    # before that was written).
    assert 3 <= rows["sotw"]["responses_per_client_push"] <= 4
    assert rows["delta"]["responses_per_client_push"] == 4
    # SotW's EDS answer carries the new service's endpoints alone: what the proxy lacks.
    assert rows["sotw"]["bytes_per_client_push"] < rows["sotw"]["initial_bytes_per_client"]


def test_each_change_moves_what_it_says() -> None:
    first = ads_common.build_snapshot(4, 1, 0)
    expected = {
        "all": {CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE},
        "one": {ENDPOINT_TYPE},
        "cluster": {CLUSTER_TYPE},
        "route": {ROUTE_TYPE},
        "service": {CLUSTER_TYPE, ENDPOINT_TYPE, ROUTE_TYPE},
    }
    for change in ads_common.CHANGES:
        updated = first
        for generation in (1, 2, 3):  # one push after another, as the server makes them
            updated = ads_common.next_snapshot(updated, 4, 1, generation, change)
        built = ads_common.build_snapshot(4, 1, 3, change)
        moved = {t for t in ads_common.TYPES if updated.version(t) != first.version(t)}
        assert moved == expected[change], change
        # Updated as the controller would, or built afresh: the same snapshot.
        assert ads_common._versions(updated) == ads_common._versions(built), change
    changed = ads_common.next_snapshot(first, 4, 1, 3, "cluster")
    names = [n for n, r in first.resources(CLUSTER_TYPE).items()]
    assert [
        n for n in names if changed.resources(CLUSTER_TYPE)[n] != first.resources(CLUSTER_TYPE)[n]
    ] == [names[0]]


# -- the proxies in process -------------------------------------------------------------------


def _sotw(snapshot: Snapshot, type_url: str, nonce: str) -> bytes:
    parts = (r.sotw_parts(False) for r in snapshot.resources(type_url).values())
    body = wire.discovery_response_body(snapshot.version(type_url), type_url, parts)
    return body + wire.nonce_field(nonce)


def _delta(snapshot: Snapshot, type_url: str, names: list[str], nonce: str) -> bytes:
    table = snapshot.resources(type_url)
    resources = [table[n].resource for n in names]
    body = wire.delta_response_body(snapshot.version(type_url), type_url, resources, [])
    return body + wire.nonce_field(nonce)


def _converged(proxy: Any, snapshot: Snapshot, delta: bool) -> None:
    tracker = proxy.tracker
    tracker.arm(0, ads_common._versions(snapshot), ads_common._resource_versions(snapshot))
    proxy.first_request()
    for nonce, type_url in enumerate(ads_common.TYPES, 1):
        names = list(snapshot.resources(type_url))
        message = _delta(snapshot, type_url, names, str(nonce)) if delta else None
        proxy.on_response(message or _sotw(snapshot, type_url, str(nonce)))
        proxy.sent()
    assert proxy.pending == 0 and tracker.holding == 1


@pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])
def test_a_proxy_holds_an_updated_cluster_once_its_endpoints_came_again(
    pipe: tuple[Connection, Connection], delta: bool
) -> None:
    ours, theirs = pipe
    tracker = ads_proxies._Tracker(theirs)
    kind = ads_proxies._DeltaProxy if delta else ads_proxies._SotwProxy
    proxy = kind("sidecar-0", tracker)
    tracker.proxies = [proxy]
    first = ads_common.build_snapshot(3, 1, 0)
    _converged(proxy, first, delta)
    ours.recv()  # the initial convergence's report

    pushed = ads_common.next_snapshot(first, 3, 1, 1, "cluster")
    tracker.arm(1, ads_common._versions(pushed), ads_common._resource_versions(pushed))
    assert proxy.pending == 1  # the cluster
    updated = next(iter(pushed.resources(CLUSTER_TYPE)))
    cds = _delta(pushed, CLUSTER_TYPE, [updated], "5") if delta else None
    proxy.on_response(cds or _sotw(pushed, CLUSTER_TYPE, "5"))
    proxy.sent()
    # The new cluster is held, but it warms until its endpoints come again.
    assert proxy.pending == 1 and tracker.holding == 0
    eds = _delta(pushed, ENDPOINT_TYPE, [updated], "6") if delta else None
    proxy.on_response(eds or _sotw(pushed, ENDPOINT_TYPE, "6"))
    proxy.sent()
    assert proxy.pending == 0 and tracker.holding == 1
    kind_, tag, *_ = ours.recv()
    assert (kind_, tag) == ("done", 1)


@pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])
def test_a_cluster_added_warms_no_other(pipe: tuple[Connection, Connection], delta: bool) -> None:
    tracker = ads_proxies._Tracker(pipe[1])
    kind = ads_proxies._DeltaProxy if delta else ads_proxies._SotwProxy
    proxy = kind("sidecar-0", tracker)
    tracker.proxies = [proxy]
    first = ads_common.build_snapshot(3, 1, 0)
    _converged(proxy, first, delta)
    grown = ads_common.build_snapshot(4, 1, 0)  # the same three clusters, and a fourth
    added = sorted(set(grown.resources(CLUSTER_TYPE)) - set(first.resources(CLUSTER_TYPE)))
    cds = _delta(grown, CLUSTER_TYPE, added, "5") if delta else None
    proxy.on_response(cds or _sotw(grown, CLUSTER_TYPE, "5"))
    if isinstance(proxy, ads_proxies._DeltaProxy):
        assert not proxy.rewarming
    else:
        assert not proxy.views[ENDPOINT_TYPE].rewarming
