"""Delta xDS with real Envoy: only what changed is sent, and reconnects resend nothing."""

from __future__ import annotations

import time
from collections.abc import Callable

from pilotfish.bootstrap import envoy_bootstrap
from pilotfish.cache import Snapshot, SnapshotCache
from pilotfish.protos import CLUSTER_TYPE, ENDPOINT_TYPE
from pilotfish.testing import (
    EnvoyProcess,
    HttpUpstream,
    RecordingCallbacks,
    ServerThread,
    free_port,
    wait_until,
)
from pilotfish.translators import build

EnvoyFactory = Callable[..., EnvoyProcess]
Upstreams = Callable[[str], HttpUpstream]


def many_clusters(count: int, upstream: HttpUpstream, port: int, moved: int = -1) -> Snapshot:
    """`count` EDS clusters on one upstream; cluster `moved` gets a second endpoint."""
    endpoints = [upstream.address]
    return Snapshot(
        {
            "cds": [build.eds_cluster(f"c{i}") for i in range(count)],
            "eds": [
                build.load_assignment(
                    f"c{i}", [*endpoints, ("127.0.0.2", 1)] if i == moved else endpoints
                )
                for i in range(count)
            ],
            "lds": [build.http_listener("web", port, "routes")],
            "rds": [build.route_config("routes", "c0")],
        }
    )


def test_one_changed_endpoint_sends_one_resource(
    xds_cache: SnapshotCache,
    xds_callbacks: RecordingCallbacks,
    envoy_factory: EnvoyFactory,
    http_upstream: Upstreams,
) -> None:
    upstream, port = http_upstream("backend"), free_port()
    xds_cache.set_snapshot("edge", many_clusters(500, upstream, port))
    envoy = envoy_factory("edge", delta=True).wait_ready(timeout=30)
    assert envoy.request(port).body == "backend"
    assert len(envoy.dynamic_clusters()) == 500
    wait_until(lambda: envoy.stat("cluster.c499.membership_total") == 1)
    sent_before = len(xds_callbacks.sent())

    xds_cache.set_snapshot("edge", many_clusters(500, upstream, port, moved=7))
    wait_until(lambda: envoy.stat("cluster.c7.membership_total") == 2, message="c7 updated")
    time.sleep(0.3)
    pushed = xds_callbacks.sent()[sent_before:]
    assert [(s.type_url, s.names) for s in pushed] == [(ENDPOINT_TYPE, frozenset({"c7"}))]
    assert envoy.stat("cluster.c6.membership_total") == 1


def test_reconnect_with_initial_versions_resends_nothing(http_upstream: Upstreams) -> None:
    upstream, port = http_upstream("backend"), free_port()
    snapshot = many_clusters(20, upstream, port)

    def serve(xds_port: int = 0) -> tuple[ServerThread, RecordingCallbacks]:
        cache = SnapshotCache()
        cache.set_snapshot("edge", snapshot)
        callbacks = RecordingCallbacks()
        server = ServerThread(cache, callbacks=callbacks, address=f"127.0.0.1:{xds_port}")
        return server.start(), callbacks

    server, first_callbacks = serve()
    try:
        bootstrap = envoy_bootstrap(
            node_id="edge", cluster="test", xds_address=server.address, delta=True
        )
        with EnvoyProcess(bootstrap) as envoy:
            envoy.wait_ready()
            assert envoy.request(port).body == "backend"
            assert len(first_callbacks.sent(CLUSTER_TYPE)) == 1
            clusters = envoy.dynamic_clusters()
            server.stop()
            wait_until(lambda: envoy.stat("control_plane.connected_state") == 0)

            server, callbacks = serve(server.port)
            wait_until(lambda: envoy.stat("control_plane.connected_state") == 1, timeout=15)
            wait_until(lambda: callbacks.requests >= 4, message="Envoy re-subscribed every type")
            time.sleep(0.5)
            assert callbacks.sent() == []  # its initial_resource_versions matched everything
            assert envoy.dynamic_clusters() == clusters
            assert envoy.request(port).body == "backend"
    finally:
        server.stop()
