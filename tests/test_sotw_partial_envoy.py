"""Real Envoy over state-of-the-world ADS takes EDS answers that carry only what changed: the
cluster whose endpoints moved is updated, the others keep theirs (Envoy's stats show it applied
no update to them), and an updated cluster warms again on its own endpoints alone. Also with
Envoy's unified xDS mux (`envoy.reloadable_features.unified_mux`), which gives the clusters an
answer leaves out an empty update: they keep their endpoints, and nothing is rejected."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pytest

from pilotfish.bootstrap import envoy_bootstrap
from pilotfish.cache import Snapshot, SnapshotCache
from pilotfish.protos import ENDPOINT_TYPE
from pilotfish.testing import EnvoyProcess, HttpUpstream, ServerThread, free_port, wait_until
from pilotfish.translators import build
from tests.helpers import mesh


@pytest.fixture
def upstreams() -> Iterator[dict[str, HttpUpstream]]:
    started = {name: HttpUpstream(name).start() for name in ("blue", "green", "blue-2")}
    try:
        yield started
    finally:
        for upstream in started.values():
            upstream.stop()


def _hosts(envoy: EnvoyProcess) -> dict[str, set[int]]:
    """Each cluster's hosts' ports, as Envoy has them."""
    found: dict[str, set[int]] = {}
    for cluster in envoy.clusters()["cluster_statuses"]:
        ports = {
            h["address"]["socket_address"]["port_value"] for h in cluster.get("host_statuses", [])
        }
        found[cluster["name"]] = ports
    return found


def _eds_updates(envoy: EnvoyProcess) -> dict[str, int]:
    stats = envoy.stats(filter=r"^cluster\.(blue|green)\.update_success$")
    return {name.split(".")[1]: value for name, value in stats.items()}


def _applied(envoy: EnvoyProcess) -> dict[str, int] | None:
    """The EDS updates applied to blue and green, once both have had one."""
    counts = _eds_updates(envoy)
    return counts if len(counts) == 2 and all(counts.values()) else None


@dataclass
class _Sidecar:
    cache: SnapshotCache
    first: Snapshot  # blue and green, each with its upstream; routes to blue
    envoy: EnvoyProcess
    port: int  # the listener's
    updates: dict[str, int]  # each cluster's EDS updates applied so far


@contextmanager
def _sidecar(upstreams: dict[str, HttpUpstream], unified: bool) -> Iterator[_Sidecar]:
    """An Envoy over state-of-the-world ADS (the native transport), serving blue, with both
    clusters' endpoints applied; `unified`: with Envoy's unified xDS mux."""
    blue, green = upstreams["blue"].address, upstreams["green"].address
    cache, port = SnapshotCache(), free_port()
    first = mesh({"blue": [blue], "green": [green]}, "blue", listener_port=port)
    cache.set_snapshot("sidecar", first)
    with ServerThread(cache, address="127.0.0.1:0", transport="native") as thread:
        bootstrap = envoy_bootstrap(node_id="sidecar", cluster="test", xds_address=thread.address)
        if unified:
            runtime = {"envoy.reloadable_features.unified_mux": True}
            bootstrap["layered_runtime"] = {"layers": [{"name": "on", "static_layer": runtime}]}
        with EnvoyProcess(bootstrap, name="sidecar") as envoy:
            envoy.wait_ready()
            assert envoy.request(port, "/").body == "blue"
            updates = wait_until(lambda: _applied(envoy), message="both clusters' endpoints")
            hosts = _hosts(envoy)
            assert (hosts["blue"], hosts["green"]) == ({blue[1]}, {green[1]})
            yield _Sidecar(cache, first, envoy, port, updates)


@pytest.mark.parametrize("unified", [False, True], ids=["mux", "unified-mux"])
def test_envoy_keeps_the_endpoints_an_answer_leaves_out(
    upstreams: dict[str, HttpUpstream], unified: bool
) -> None:
    green, moved = upstreams["green"].address, upstreams["blue-2"].address
    with _sidecar(upstreams, unified) as sidecar:
        envoy, port, updates = sidecar.envoy, sidecar.port, sidecar.updates
        # Blue's endpoints move to the other upstream; the EDS answer carries blue's alone.
        pushed = sidecar.first.updated({}, {"eds": [build.load_assignment("blue", [moved])]})
        sidecar.cache.set_snapshot("sidecar", pushed)
        wait_until(lambda: envoy.request(port, "/").body == "blue-2", message="moved")
        wait_until(
            lambda: _eds_updates(envoy)["blue"] > updates["blue"],
            message="blue's endpoints updated",
        )
        hosts = _hosts(envoy)
        assert hosts["blue"] == {moved[1]}
        assert hosts["green"] == {green[1]}  # kept: the answer left it out
        if not unified:
            assert _eds_updates(envoy)["green"] == updates["green"]  # nothing applied to it
        rejected = envoy.stats(filter="update_rejected")
        assert rejected and not any(rejected.values()), rejected

        # Green still serves: route to it.
        routed = pushed.updated({}, {"rds": [build.route_config("local_route", "green")]})
        sidecar.cache.set_snapshot("sidecar", routed)
        wait_until(lambda: envoy.request(port, "/").body == "green", message="to green")


@pytest.mark.parametrize("unified", [False, True], ids=["mux", "unified-mux"])
def test_an_updated_cluster_warms_on_its_endpoints_alone(
    upstreams: dict[str, HttpUpstream], unified: bool
) -> None:
    green = upstreams["green"].address
    with _sidecar(upstreams, unified) as sidecar:
        envoy, first = sidecar.envoy, sidecar.first
        # A DestinationRule edit: blue's connect timeout. Envoy warms blue again and waits for
        # its endpoints; the server sends blue's alone, at the same version.
        updated = first.updated({}, {"cds": [build.eds_cluster("blue", connect_timeout=2.5)]})
        assert updated.version(ENDPOINT_TYPE) == first.version(ENDPOINT_TYPE)
        sidecar.cache.set_snapshot("sidecar", updated)
        wait_until(
            lambda: envoy.dynamic_clusters().get("blue") == updated.version("cds"),
            message="blue warmed again and active",
        )
        dump = envoy.config_dump("dynamic_active_clusters")
        (blue,) = [c["cluster"] for c in dump["configs"] if c["cluster"]["name"] == "blue"]
        assert blue["connect_timeout"] == "2.500s"
        assert envoy.stat("cluster_manager.warming_clusters") == 0
        assert envoy.request(sidecar.port, "/").body == "blue"
        assert _hosts(envoy)["green"] == {green[1]}
        after = _eds_updates(envoy)
        assert after["blue"] > sidecar.updates["blue"]  # its endpoints came again
        if not unified:
            assert after["green"] == sidecar.updates["green"]  # and only its
