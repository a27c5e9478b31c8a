"""The server against real Envoy 1.40: warming, route changes, removals, NACKs, restarts."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from pilotfish.bootstrap import config_source
from pilotfish.cache import NodeStatus, Snapshot, SnapshotCache
from pilotfish.protos import CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE
from pilotfish.testing import (
    EnvoyProcess,
    HttpUpstream,
    RecordingCallbacks,
    ServerThread,
    free_port,
    wait_until,
)
from pilotfish.translators import build
from tests.helpers import mesh

Upstreams = Callable[[str], HttpUpstream]
EnvoyFactory = Callable[..., EnvoyProcess]


def served_by(envoy: EnvoyProcess, port: int) -> str:
    reply = envoy.request(port, "/")
    return reply.body if reply.status == 200 else f"HTTP {reply.status}"


def cds_version(snapshot: Snapshot, delta: bool) -> str:
    """What Envoy reports for cluster "blue": the type's version in SotW, its own in delta."""
    return snapshot.resources(CLUSTER_TYPE)["blue"].version if delta else snapshot.version("cds")


def two_upstreams(http_upstream: Upstreams) -> dict[str, list[tuple[str, int]]]:
    return {name: [http_upstream(name).address] for name in ("blue", "green")}


def test_warming_then_traffic_reaches_the_upstream(
    xds_cache: SnapshotCache, envoy_factory: EnvoyFactory, http_upstream: Upstreams
) -> None:
    port = free_port()
    snapshot = mesh(two_upstreams(http_upstream), "blue", listener_port=port)
    assert snapshot.consistent().ok
    xds_cache.set_snapshot("sidecar", snapshot)
    envoy = envoy_factory("sidecar").wait_ready()
    assert served_by(envoy, port) == "blue"
    assert envoy.dynamic_clusters() == {
        "blue": snapshot.version(CLUSTER_TYPE),
        "green": snapshot.version(CLUSTER_TYPE),
    }
    assert envoy.dynamic_listeners() == {"listener_0": snapshot.version(LISTENER_TYPE)}
    assert envoy.dynamic_route_configs() == {"local_route": snapshot.version(ROUTE_TYPE)}
    # Endpoints came over EDS: both clusters have their one healthy host.
    assert envoy.stat("cluster.blue.membership_healthy") == 1
    assert envoy.stat("cluster.green.membership_healthy") == 1


def test_route_change_moves_traffic_and_only_routes_are_resent(
    xds_cache: SnapshotCache,
    xds_callbacks: RecordingCallbacks,
    envoy_factory: EnvoyFactory,
    http_upstream: Upstreams,
) -> None:
    port = free_port()
    clusters = two_upstreams(http_upstream)
    xds_cache.set_snapshot("sidecar", mesh(clusters, "blue", listener_port=port))
    envoy = envoy_factory("sidecar").wait_ready()
    assert served_by(envoy, port) == "blue"
    wait_until(lambda: envoy.stat("listener_manager.lds.update_success") >= 1)
    before = xds_callbacks.sent_count_by_type()

    changed = mesh(clusters, "green", listener_port=port)
    xds_cache.set_snapshot("sidecar", changed)
    wait_until(lambda: served_by(envoy, port) == "green", message="traffic moved to green")

    def route_acked() -> NodeStatus | None:
        status = xds_cache.status("sidecar")
        acked = status and status.types[ROUTE_TYPE].acked_version == changed.version(ROUTE_TYPE)
        return status if acked else None

    status = wait_until(route_acked, message="new route ACKed")
    assert status.types[ROUTE_TYPE].last_nack is None
    after = xds_callbacks.sent_count_by_type()
    assert after - before == {ROUTE_TYPE: 1}
    assert envoy.dynamic_route_configs() == {"local_route": changed.version(ROUTE_TYPE)}
    assert envoy.stat("http.ingress_http.rds.local_route.update_success") == 2


@pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])
def test_cluster_removed_leaves_envoy_and_comes_back_with_endpoints(
    delta: bool, xds_cache: SnapshotCache, envoy_factory: EnvoyFactory, http_upstream: Upstreams
) -> None:
    port = free_port()
    clusters = two_upstreams(http_upstream)
    xds_cache.set_snapshot("sidecar", mesh(clusters, "blue", listener_port=port))
    envoy = envoy_factory("sidecar", delta=delta).wait_ready()
    assert set(envoy.dynamic_clusters()) == {"blue", "green"}

    xds_cache.set_snapshot("sidecar", mesh({"blue": clusters["blue"]}, "blue", listener_port=port))
    wait_until(lambda: set(envoy.dynamic_clusters()) == {"blue"}, message="green removed")
    assert served_by(envoy, port) == "blue"

    xds_cache.set_snapshot("sidecar", mesh(clusters, "green", listener_port=port))
    wait_until(lambda: served_by(envoy, port) == "green", message="green is back with endpoints")
    assert envoy.stat("cluster.green.membership_healthy") == 1


@pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])
def test_nack_is_recorded_not_looped_and_last_good_config_keeps_serving(
    delta: bool,
    xds_cache: SnapshotCache,
    xds_callbacks: RecordingCallbacks,
    envoy_factory: EnvoyFactory,
    http_upstream: Upstreams,
) -> None:
    port = free_port()
    clusters = two_upstreams(http_upstream)
    good = mesh(clusters, "blue", listener_port=port)
    xds_cache.set_snapshot("sidecar", good)
    envoy = envoy_factory("sidecar", delta=delta).wait_ready()
    assert served_by(envoy, port) == "blue"

    bad = mesh(clusters, "blue", listener_port=port, connect_timeout=-1)
    xds_cache.set_snapshot("sidecar", bad)
    nack = wait_until(lambda: xds_callbacks.nacks[-1][1] if xds_callbacks.nacks else None)
    assert nack.type_url == CLUSTER_TYPE
    assert nack.version == bad.version(CLUSTER_TYPE)
    assert nack.kept_version == good.version(CLUSTER_TYPE)
    assert "Invalid duration" in nack.message, nack.message
    status = xds_cache.status("sidecar")
    assert status is not None and status.types[CLUSTER_TYPE].last_nack == nack
    assert status.types[CLUSTER_TYPE].acked_version == good.version(CLUSTER_TYPE)

    sent_bad = len(xds_callbacks.sent(CLUSTER_TYPE))
    time.sleep(3)  # a looping server would resend the rejected version many times here
    assert len(xds_callbacks.sent(CLUSTER_TYPE)) == sent_bad
    assert len(xds_callbacks.nacks) == 1
    assert envoy.stat("cluster_manager.cds.update_rejected") == 1
    assert envoy.dynamic_clusters()["blue"] == cds_version(good, delta)
    assert served_by(envoy, port) == "blue"

    fixed = mesh(clusters, "green", listener_port=port, connect_timeout=2)  # updates clusters
    xds_cache.set_snapshot("sidecar", fixed)
    wait_until(lambda: served_by(envoy, port) == "green")
    wait_until(
        lambda: envoy.dynamic_clusters()["blue"] == cds_version(fixed, delta),
        message="fixed CDS accepted",
    )
    # Updated clusters warm again and need their (unchanged) endpoints resent.
    wait_until(lambda: envoy.stat("cluster_manager.warming_clusters") == 0)
    status = xds_cache.status("sidecar")
    assert status is not None
    assert status.types[CLUSTER_TYPE].acked_version == fixed.version(CLUSTER_TYPE)


def test_new_envoy_converges_and_server_restart_keeps_versions(
    http_upstream: Upstreams,
) -> None:
    port = free_port()
    clusters = two_upstreams(http_upstream)

    def serve(xds_port: int = 0) -> tuple[ServerThread, RecordingCallbacks]:
        cache = SnapshotCache()
        cache.set_snapshot("sidecar", mesh(clusters, "blue", listener_port=port))
        callbacks = RecordingCallbacks()
        return ServerThread(
            cache, callbacks=callbacks, address=f"127.0.0.1:{xds_port}"
        ).start(), callbacks

    server, _ = serve()
    from pilotfish.bootstrap import envoy_bootstrap

    bootstrap = envoy_bootstrap(node_id="sidecar", cluster="test", xds_address=server.address)
    try:
        with EnvoyProcess(bootstrap) as envoy:
            envoy.wait_ready()
            assert served_by(envoy, port) == "blue"
            versions = (envoy.dynamic_clusters(), envoy.dynamic_listeners())
            connects = envoy.stat("control_plane.connected_state")
            assert connects == 1
            server.stop()
            wait_until(lambda: envoy.stat("control_plane.connected_state") == 0)
            assert served_by(envoy, port) == "blue"  # no control plane, still serving

            server, callbacks = serve(server.port)
            wait_until(lambda: envoy.stat("control_plane.connected_state") == 1, timeout=15)
            wait_until(lambda: callbacks.requests >= 4, message="Envoy re-requested every type")
            time.sleep(0.5)
            assert (envoy.dynamic_clusters(), envoy.dynamic_listeners()) == versions
            # Unchanged content has the same versions, so nothing needed resending.
            assert callbacks.sent() == []
            assert envoy.stat("cluster_manager.cds.update_rejected") == 0

            # And a brand-new Envoy converges to the current snapshot on the new server.
            second = envoy_bootstrap(node_id="sidecar", cluster="test", xds_address=server.address)
            with EnvoyProcess(second) as other:
                other.wait_ready()
                assert (other.dynamic_clusters(), other.dynamic_listeners()) == versions
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("ads", "delta"),
    [(True, False), (False, False), (True, True), (False, True)],
    ids=["ads", "per-type", "delta-ads", "delta-per-type"],
)
def test_every_transport_mode_serves_and_updates_traffic(
    ads: bool,
    delta: bool,
    xds_cache: SnapshotCache,
    xds_callbacks: RecordingCallbacks,
    envoy_factory: EnvoyFactory,
    http_upstream: Upstreams,
) -> None:
    port = free_port()
    source = (
        build.ads_config_source() if ads else build.api_config_source("pilotfish_xds", delta=delta)
    )
    blue, green = http_upstream("blue"), http_upstream("green")

    def snapshot(colour: str) -> Snapshot:
        return Snapshot(
            {
                "cds": [build.eds_cluster(c, config_source=source) for c in ("blue", "green")],
                "eds": [
                    build.load_assignment("blue", [blue.address]),
                    build.load_assignment("green", [green.address]),
                ],
                "lds": [build.http_listener("web", port, "routes", config_source=source)],
                "rds": [build.route_config("routes", colour)],
            }
        )

    first = snapshot("blue")
    assert first.consistent().ok
    xds_cache.set_snapshot("sidecar", first)
    envoy = envoy_factory("sidecar", ads=ads, delta=delta).wait_ready()
    assert served_by(envoy, port) == "blue"
    status = xds_cache.status("sidecar")
    assert status is not None
    # Per-type mode: one stream per type (CDS, EDS, LDS, RDS); ADS: one stream for all.
    assert len(status.streams) == 1 if ads else len(status.streams) >= 4
    all_types = {CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE}
    assert {t for t, s in status.types.items() if s.acked_version} == all_types
    before = xds_callbacks.sent_count_by_type()

    xds_cache.set_snapshot("sidecar", snapshot("green"))
    wait_until(lambda: served_by(envoy, port) == "green", message="route update applied")
    assert xds_callbacks.sent_count_by_type() - before == {ROUTE_TYPE: 1}
    updated = snapshot("green")
    # Envoy reports the type's version in SotW, the resource's own version in delta.
    expected = (
        updated.resources(ROUTE_TYPE)["routes"].version if delta else updated.version(ROUTE_TYPE)
    )
    assert envoy.dynamic_route_configs() == {"routes": expected}
    assert config_source(ads, delta=delta)  # the bootstrap helper agrees on the mode
