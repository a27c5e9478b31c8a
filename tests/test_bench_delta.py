"""The ADS push benchmark's delta mode (`--protocol delta`): proxies over
DeltaAggregatedResources converge like the SotW ones, and a one-resource push sends one resource.

End to end with real processes and sockets at tiny numbers, plus the delta proxy's handling of
responses (caching, removals, subscriptions) in process. No timing assertions.
"""

from __future__ import annotations

import json
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from bench import ads_common, ads_proxies, ads_push

from pilotfish.protos import (
    CLUSTER_TYPE,
    ENDPOINT_TYPE,
    LISTENER_TYPE,
    ROUTE_TYPE,
    DeltaDiscoveryRequest,
    DiscoveryRequest,
    wire,
)


def run_tiny(
    tmp_path: Path, change: str, *, endpoints: int = 1, pushes: int = 1
) -> dict[str, dict[str, Any]]:
    """`bench/ads_push.py` with 3 h2 proxies of each protocol, 5 clusters, against the native
    server; every proxy converged at start and on every push. The rows by protocol."""
    out = tmp_path / f"ads_push_{change}.json"
    argv = ["--clients", "3", "--clusters", "5", "--endpoints", str(endpoints)]
    argv += ["--repeat", str(pushes), "--transport", "native", "--client-impl", "h2"]
    argv += ["--timeout", "30", "--protocol", "sotw", "delta", "--change", change]
    assert ads_push.main([*argv, "--json", str(out)]) == 0
    document = json.loads(out.read_text(encoding="utf-8"))
    assert document["args"]["protocols"] == ["sotw", "delta"]
    assert document["args"]["change"] == change
    results = document["results"]
    assert [r["protocol"] for r in results] == ["sotw", "delta"]
    for result in results:
        assert result["converged_clients"] == result["clients"] == 3
        assert result["server_streams"] == 3
        assert result["initial_bytes_per_client"] > 0
        assert [p["converged_clients"] for p in result["pushes"]] == [3] * pushes
        assert all(p["bytes_per_client"] > 0 for p in result["pushes"])
    return {r["protocol"]: r for r in results}


def test_delta_push_of_one_cluster_sends_only_that_resource(tmp_path: Path) -> None:
    rows = run_tiny(tmp_path, "one")
    sotw, delta = rows["sotw"], rows["delta"]
    # Only the first cluster's endpoints changed: one EDS response per proxy either way, that
    # one assignment either way (SotW EDS answers carry what the client lacks; a delta
    # resource also carries its name and version, so delta's is the bigger).
    assert sotw["responses_per_client_push"] == delta["responses_per_client_push"] == 1
    assert sotw["bytes_per_client_push"] <= delta["bytes_per_client_push"]
    (push,) = delta["pushes"]
    assert push["versions"][ENDPOINT_TYPE] != delta["initial_snapshot"]["versions"][ENDPOINT_TYPE]
    assert push["versions"][CLUSTER_TYPE] == delta["initial_snapshot"]["versions"][CLUSTER_TYPE]
    # The push's snapshot is the last one updated by the one assignment (as the controller
    # makes it): one resource serialized, for either protocol.
    assert [r["pushes"][0]["resources_serialized"] for r in (sotw, delta)] == [1, 1]
    # Initially both protocols send every resource once per proxy.
    assert sotw["initial_responses_per_client"] == delta["initial_responses_per_client"] == 4


def test_delta_push_of_everything_converges_on_all_four_types(tmp_path: Path) -> None:
    rows = run_tiny(tmp_path, "all")
    for row in rows.values():
        (push,) = row["pushes"]
        assert set(push["versions"].values()).isdisjoint(
            row["initial_snapshot"]["versions"].values()
        )
        # CDS, EDS (every cluster changed, and re-warmed), LDS, RDS: one response each.
        assert row["responses_per_client_push"] == 4
    # Built once per type for all 3 proxies: SotW per subscription, delta per client state
    # (CDS, EDS, LDS, RDS, then EDS and RDS again as the new clusters and listeners re-warm).
    assert rows["sotw"]["pushes"][0]["responses_built"] == 4
    assert rows["delta"]["pushes"][0]["responses_built"] == 6


# -- the delta proxy in process ---------------------------------------------------------------


def _response(type_url: str, resources: list[bytes], removed: list[str], nonce: str) -> bytes:
    body = wire.delta_response_body("v1", type_url, resources, removed)
    return body + wire.nonce_field(nonce)


def _proxy(theirs: Connection) -> Any:
    """A delta proxy reporting to a tracker over `theirs`."""
    tracker = ads_proxies._Tracker(theirs)
    proxy = ads_proxies._DeltaProxy("sidecar-0", tracker)
    tracker.proxies = [proxy]
    return proxy


def _cds(clusters: int, generation: int = 0) -> list[bytes]:
    snapshot = ads_common.build_snapshot(clusters, 1, generation)
    return [r.resource for r in snapshot.resources(CLUSTER_TYPE).values()]


def test_delta_proxy_follows_additions_and_removals(
    pipe: tuple[Connection, Connection],
) -> None:
    proxy = _proxy(pipe[1])

    first = DeltaDiscoveryRequest.FromString(proxy.first_request())
    assert (first.type_url, first.node.id) == (CLUSTER_TYPE, "sidecar-0")
    assert not first.resource_names_subscribe  # wildcard

    snapshot = ads_common.build_snapshot(3, 1, 0)
    names = sorted(snapshot.resources(CLUSTER_TYPE))
    ack, subscribe = map(
        DeltaDiscoveryRequest.FromString,
        proxy.on_response(_response(CLUSTER_TYPE, _cds(3), [], "1")),
    )
    assert (ack.type_url, ack.response_nonce, list(ack.resource_names_subscribe)) == (
        CLUSTER_TYPE,
        "1",
        [],
    )
    assert subscribe.type_url == ENDPOINT_TYPE
    assert list(subscribe.resource_names_subscribe) == names
    assert set(proxy.views[CLUSTER_TYPE].held) == set(names)

    # The same body with another nonce is taken from the process's cache; ACKed with its nonce.
    (ack,) = map(
        DeltaDiscoveryRequest.FromString,
        proxy.on_response(_response(CLUSTER_TYPE, _cds(3), [], "22")),
    )
    assert ack.response_nonce == "22"

    # A cluster removed: dropped from what the proxy holds, and its endpoints unsubscribed.
    requests = proxy.on_response(_response(CLUSTER_TYPE, [], [names[1]], "3"))
    ack, unsubscribe = map(DeltaDiscoveryRequest.FromString, requests)
    assert ack.response_nonce == "3"
    assert list(unsubscribe.resource_names_unsubscribe) == [names[1]]
    assert not unsubscribe.resource_names_subscribe
    assert set(proxy.views[CLUSTER_TYPE].held) == {names[0], names[2]}
    assert proxy.views[ENDPOINT_TYPE].names == {names[0], names[2]}

    # The first EDS response makes it ask for listeners (wildcard), then the listener's route.
    eds = [r.resource for r in snapshot.resources(ENDPOINT_TYPE).values()]
    _, lds = map(
        DeltaDiscoveryRequest.FromString, proxy.on_response(_response(ENDPOINT_TYPE, eds, [], "4"))
    )
    assert (lds.type_url, list(lds.resource_names_subscribe)) == (LISTENER_TYPE, [])
    lds_resources = [r.resource for r in snapshot.resources(LISTENER_TYPE).values()]
    _, rds = map(
        DeltaDiscoveryRequest.FromString,
        proxy.on_response(_response(LISTENER_TYPE, lds_resources, [], "5")),
    )
    subscribed = (rds.type_url, list(rds.resource_names_subscribe))
    assert subscribed == (ROUTE_TYPE, [ads_common.ROUTE_NAME])


def test_delta_proxy_holds_the_target_when_its_resources_match(
    pipe: tuple[Connection, Connection],
) -> None:
    ours, theirs = pipe
    proxy = _proxy(theirs)
    tracker = proxy.tracker
    snapshot = ads_common.build_snapshot(2, 1, 0)
    resources = ads_common._resource_versions(snapshot)
    tracker.arm(7, ads_common._versions(snapshot), resources)
    assert proxy.pending == 4
    for nonce, type_url in enumerate(ads_common.TYPES, 1):
        items = [r.resource for r in snapshot.resources(type_url).values()]
        proxy.on_response(_response(type_url, items, [], str(nonce)))
        proxy.sent()
    assert proxy.pending == 0
    kind, tag, _, _, holding, times = ours.recv()
    assert (kind, tag, holding, len(times)) == ("done", 7, 1, 1)

    # Removing a resource it holds makes the type no longer match.
    name = next(iter(snapshot.resources(ENDPOINT_TYPE)))
    proxy.on_response(_response(ENDPOINT_TYPE, [], [name], "9"))
    proxy.sent()
    assert proxy.pending == 1
    assert name not in proxy.views[ENDPOINT_TYPE].held


def test_proxies_list_one_subscription_each_in_their_own_order(
    pipe: tuple[Connection, Connection],
) -> None:
    """As Envoys do (a hash set's order, seeded per process): a server cannot count on a
    fleet sending the same bytes for the same subscription."""
    snapshot = ads_common.build_snapshot(30, 1, 0)
    names = set(snapshot.resources(CLUSTER_TYPE))
    version = snapshot.version(CLUSTER_TYPE)
    parts = (r.sotw_parts(False) for r in snapshot.resources(CLUSTER_TYPE).values())
    sotw_cds = wire.discovery_response_body(version, CLUSTER_TYPE, parts) + wire.nonce_field("1")
    tracker = ads_proxies._Tracker(pipe[1])
    sotw, delta = [], []
    for i in range(4):
        proxy = ads_proxies._SotwProxy(f"sidecar-{i}", tracker)
        proxy.first_request()
        _ack, eds = proxy.on_response(sotw_cds)
        sotw.append(eds)
        other = ads_proxies._DeltaProxy(f"sidecar-{i}", tracker)
        other.first_request()
        _ack, eds = other.on_response(_response(CLUSTER_TYPE, _cds(30), [], "1"))
        delta.append(eds)
    assert len(set(sotw)) >= 3 and len(set(delta)) >= 3  # orders of their own
    for raw in sotw:
        request = DiscoveryRequest.FromString(raw)
        assert request.type_url == ENDPOINT_TYPE and set(request.resource_names) == names
    for raw in delta:
        change = DeltaDiscoveryRequest.FromString(raw)
        assert set(change.resource_names_subscribe) == names


def test_proxies_send_a_node_the_size_of_an_envoys(pipe: tuple[Connection, Connection]) -> None:
    """Envoy's node lists its compiled-in extensions (516 in 1.40, 61 KB): a server that kept
    it per stream would show in the benchmark's memory only if the proxies send one too."""
    tracker = ads_proxies._Tracker(pipe[1])
    for proxy in (
        ads_proxies._SotwProxy("sidecar-1", tracker),
        ads_proxies._DeltaProxy("sidecar-1", tracker),
    ):
        first = proxy.first_request()
        request = (
            DiscoveryRequest if isinstance(proxy, ads_proxies._SotwProxy) else DeltaDiscoveryRequest
        ).FromString(first)
        node = request.node
        assert (node.id, node.cluster, node.user_agent_name) == ("sidecar-1", "bench", "envoy")
        assert len(node.extensions) == 516 and 55_000 < node.ByteSize() < 65_000
