"""The foundation scenarios against real Envoy, in every transport mode.

SotW and delta, ADS and per-type, REST polling, and ADS over a MuxCache with endpoints in a
LinearCache: warming, a route change, removal and re-add, a rejected config, a new Envoy, and a
server restart.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest

from pilotfish.protos import CLUSTER_TYPE, LISTENER_TYPE, ROUTE_TYPE
from pilotfish.testing import EnvoyProcess, HttpUpstream, free_port, wait_until
from tests.planes import MODES, Mode, Plane

Upstreams = Callable[[str], HttpUpstream]


@pytest.fixture(params=MODES, ids=lambda m: m.name)
def plane(request: pytest.FixtureRequest) -> Iterator[Plane]:
    mode: Mode = request.param
    plane = Plane(mode)
    plane.start()
    try:
        yield plane
    finally:
        plane.close()


def served_by(envoy: EnvoyProcess, port: int) -> str:
    reply = envoy.request(port, "/")
    return reply.body if reply.status == 200 else f"HTTP {reply.status}"


def upstreams(http_upstream: Upstreams) -> dict[str, list[tuple[str, int]]]:
    return {name: [http_upstream(name).address] for name in ("blue", "green")}


def test_warming_then_traffic(plane: Plane, http_upstream: Upstreams) -> None:
    port = free_port()
    snapshot = plane.mesh(upstreams(http_upstream), "blue", port)
    assert snapshot.consistent().ok
    plane.publish(snapshot)
    envoy = plane.envoy().wait_ready()
    assert served_by(envoy, port) == "blue"
    version = plane.mode.version_in_envoy
    assert envoy.dynamic_clusters() == {
        n: version(snapshot, CLUSTER_TYPE, n) for n in ("blue", "green")
    }
    listeners = {"web": version(snapshot, LISTENER_TYPE, "web")}
    if plane.mode.rest:
        # Seen once in CI under load (REST only, not reproduced in 9 runs with the CPUs busy):
        # right after serving traffic the listener had no active state, so wait for it rather
        # than fail, and say so. Everything else about REST mode is asserted as in the others.
        wait_until(lambda: envoy.dynamic_listeners() == listeners, timeout=5)
    assert envoy.dynamic_listeners() == listeners
    assert envoy.dynamic_route_configs() == {"routes": version(snapshot, ROUTE_TYPE, "routes")}
    assert envoy.stat("cluster.green.membership_healthy") == 1


def test_route_change_moves_traffic_and_sends_only_routes(
    plane: Plane, http_upstream: Upstreams
) -> None:
    port, clusters = free_port(), upstreams(http_upstream)
    plane.publish(plane.mesh(clusters, "blue", port))
    envoy = plane.envoy().wait_ready()
    assert served_by(envoy, port) == "blue"
    wait_until(lambda: envoy.stat("http.ingress_http.rds.routes.update_success") >= 1)
    time.sleep(0.3)  # let every first answer settle before counting
    before = plane.callbacks.sent_count_by_type()
    changed = plane.mesh(clusters, "green", port)
    plane.publish(changed)
    wait_until(lambda: served_by(envoy, port) == "green", message="traffic moved")
    time.sleep(0.3)
    assert plane.callbacks.sent_count_by_type() - before == {ROUTE_TYPE: 1}
    expected = plane.mode.version_in_envoy(changed, ROUTE_TYPE, "routes")
    assert envoy.dynamic_route_configs() == {"routes": expected}


def test_cluster_removed_then_back_with_endpoints(plane: Plane, http_upstream: Upstreams) -> None:
    port, clusters = free_port(), upstreams(http_upstream)
    plane.publish(plane.mesh(clusters, "blue", port))
    envoy = plane.envoy().wait_ready()
    assert set(envoy.dynamic_clusters()) == {"blue", "green"}
    plane.publish(plane.mesh({"blue": clusters["blue"]}, "blue", port))
    wait_until(lambda: set(envoy.dynamic_clusters()) == {"blue"}, message="green removed")
    assert served_by(envoy, port) == "blue"
    plane.publish(plane.mesh(clusters, "green", port))
    wait_until(lambda: served_by(envoy, port) == "green", message="green back, with endpoints")


def test_rejected_config_is_not_looped_and_last_good_keeps_serving(
    plane: Plane, http_upstream: Upstreams
) -> None:
    port, clusters = free_port(), upstreams(http_upstream)
    good = plane.mesh(clusters, "blue", port)
    plane.publish(good)
    envoy = plane.envoy().wait_ready()
    bad = plane.mesh(clusters, "blue", port, connect_timeout=-1)
    plane.publish(bad)
    wait_until(lambda: envoy.stat("cluster_manager.cds.update_rejected") >= 1)
    if not plane.mode.rest:  # REST has no NACK: Envoy re-polls and rejects again, by design
        (node_id, nack) = wait_until(lambda: plane.callbacks.nacks)[0]
        assert (node_id, nack.type_url) == ("sidecar", CLUSTER_TYPE)
        assert (nack.version, nack.kept_version) == (bad.version("cds"), good.version("cds"))
        assert "Invalid duration" in nack.message, nack.message
        status = plane.snapshots.status("sidecar")
        assert status is not None and status.types[CLUSTER_TYPE].last_nack == nack
        assert status.types[CLUSTER_TYPE].acked_version == good.version("cds")
        sent = len(plane.callbacks.sent(CLUSTER_TYPE))
        time.sleep(2)  # a looping server would resend the rejected version here
        assert len(plane.callbacks.sent(CLUSTER_TYPE)) == sent
        assert envoy.stat("cluster_manager.cds.update_rejected") == 1
    assert envoy.dynamic_clusters()["blue"] == plane.mode.version_in_envoy(
        good, CLUSTER_TYPE, "blue"
    )
    assert served_by(envoy, port) == "blue"
    plane.publish(plane.mesh(clusters, "green", port, connect_timeout=2))
    wait_until(lambda: served_by(envoy, port) == "green")
    wait_until(lambda: envoy.stat("cluster_manager.warming_clusters") == 0)


def test_new_envoy_converges_to_the_current_config(plane: Plane, http_upstream: Upstreams) -> None:
    port, clusters = free_port(), upstreams(http_upstream)
    plane.publish(plane.mesh(clusters, "blue", port))
    first = plane.envoy().wait_ready()
    plane.publish(plane.mesh(clusters, "green", port))
    wait_until(lambda: served_by(first, port) == "green")
    clusters_seen = first.dynamic_clusters()
    first.stop()
    second = plane.envoy().wait_ready()
    assert served_by(second, port) == "green"
    assert second.dynamic_clusters() == clusters_seen


def test_server_restart_resends_nothing_unchanged(plane: Plane, http_upstream: Upstreams) -> None:
    port, clusters = free_port(), upstreams(http_upstream)
    snapshot = plane.mesh(clusters, "blue", port)
    plane.publish(snapshot)
    envoy = plane.envoy().wait_ready()
    versions = (envoy.dynamic_clusters(), envoy.dynamic_listeners())
    plane.restart()  # same content, fresh server state: versions are content hashes
    wait_until(lambda: plane.callbacks.requests >= 4, timeout=15, message="Envoy came back")
    time.sleep(0.5)
    assert [s for s in plane.callbacks.sent() if s.names] == []
    assert (envoy.dynamic_clusters(), envoy.dynamic_listeners()) == versions
    assert served_by(envoy, port) == "blue"
