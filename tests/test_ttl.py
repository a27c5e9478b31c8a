"""Resource TTLs and heartbeats, in memory and with real Envoy."""

from __future__ import annotations

import time

import pytest

from pilotfish.bootstrap import envoy_bootstrap
from pilotfish.cache import Snapshot, SnapshotCache, WithTtl
from pilotfish.protos import (
    CLUSTER_TYPE,
    ENDPOINT_TYPE,
    RESOURCE_WRAPPER_TYPE,
    TTL_CLIENT_FEATURE,
    Cluster,
    Node,
    Resource,
)
from pilotfish.testing import (
    EnvoyProcess,
    InMemoryAdsClient,
    InMemoryDeltaClient,
    RecordingCallbacks,
    ServerThread,
    wait_until,
)
from pilotfish.translators import build


def ttl_snapshot(ttl: float = 2.0) -> Snapshot:
    return Snapshot(
        {
            "cds": [build.eds_cluster("stable"), WithTtl(build.eds_cluster("leased"), ttl)],
            "eds": [
                build.load_assignment("stable", [("127.0.0.1", 1)]),
                build.load_assignment("leased", [("127.0.0.1", 1)]),
            ],
        }
    )


def test_ttl_aware_clients_get_wrapped_resources_and_heartbeats() -> None:
    cache = SnapshotCache()
    cache.set_snapshot("n", ttl_snapshot(2.5))
    node = Node(id="n", client_features=[TTL_CLIENT_FEATURE])
    ads = InMemoryAdsClient(cache, node=node)
    ads.subscribe(CLUSTER_TYPE)
    (response,) = ads.poll()
    kinds = {r.type_url for r in response.resources}
    assert kinds == {CLUSTER_TYPE, RESOURCE_WRAPPER_TYPE}
    (wrapped,) = [
        Resource.FromString(r.value) for r in response.resources if r.type_url != CLUSTER_TYPE
    ]
    assert (wrapped.name, wrapped.ttl.seconds, wrapped.ttl.nanos) == ("leased", 2, 500_000_000)
    inner = Cluster()
    wrapped.resource.Unpack(inner)
    assert inner.name == "leased"
    assert not ads.session.heartbeat()  # not ACKed yet: no heartbeat on top
    ads.ack(response)
    assert ads.session.heartbeat()
    (beat,) = ads.poll()
    # For CDS (full state) a heartbeat is the whole response again: Envoy would take a
    # heartbeat-only response as "every other cluster is gone".
    assert beat == response.__class__(
        version_info=response.version_info,
        resources=response.resources,
        type_url=CLUSTER_TYPE,
        nonce=beat.nonce,
    )
    ads.ack(beat)
    assert ads.poll() == []  # the ACK of a heartbeat resends nothing
    # For other types it carries only the TTL'd resources, without their bodies.
    cache.set_snapshot("m", Snapshot({"eds": [WithTtl(build.load_assignment("leased", []), 2.5)]}))
    eds = InMemoryAdsClient(cache, node=Node(id="m", client_features=[TTL_CLIENT_FEATURE]))
    eds.subscribe(ENDPOINT_TYPE, ["stable", "leased"])
    eds.ack(eds.poll()[0])
    assert eds.session.heartbeat()
    (eds_beat,) = eds.poll()
    (only,) = eds_beat.resources
    heartbeat = Resource.FromString(only.value)
    assert heartbeat.name == "leased" and not heartbeat.HasField("resource")
    # Clients that do not understand TTLs get plain resources and no heartbeats.
    plain = InMemoryAdsClient(cache, node=Node(id="n"))
    plain.subscribe(CLUSTER_TYPE)
    (old_style,) = plain.poll()
    assert {r.type_url for r in old_style.resources} == {CLUSTER_TYPE}
    plain.ack(old_style)
    assert not plain.session.heartbeat()


@pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])
def test_envoy_drops_a_ttl_resource_only_without_heartbeats(delta: bool) -> None:
    cache = SnapshotCache()
    cache.set_snapshot("edge", ttl_snapshot(2.0))
    callbacks = RecordingCallbacks()
    server = ServerThread(cache, callbacks=callbacks, heartbeat_interval=0.5).start()
    try:
        bootstrap = envoy_bootstrap(
            node_id="edge", cluster="test", xds_address=server.address, delta=delta
        )
        assert bootstrap["node"]["client_features"] == [TTL_CLIENT_FEATURE]
        with EnvoyProcess(bootstrap) as envoy:
            envoy.wait_ready()
            assert set(envoy.dynamic_clusters()) == {"stable", "leased"}
            status = cache.status("edge")
            assert status is not None and TTL_CLIENT_FEATURE in status.node.client_features
            time.sleep(4)  # twice the TTL: heartbeats keep it
            assert set(envoy.dynamic_clusters()) == {"stable", "leased"}
            assert len(callbacks.sent(CLUSTER_TYPE)) >= 4  # the first response and heartbeats
            server.stop()
            started = time.monotonic()
            wait_until(
                lambda: set(envoy.dynamic_clusters()) == {"stable"},
                timeout=8,
                message="the TTL'd cluster expired",
            )
            assert time.monotonic() - started >= 1.0  # not at once: after its TTL ran out
    finally:
        server.stop()


def test_delta_heartbeats_carry_only_ttl_resources_without_bodies() -> None:
    cache = SnapshotCache()
    cache.set_snapshot("n", ttl_snapshot(3))
    delta = InMemoryDeltaClient(cache, node=Node(id="n"))
    delta.subscribe(CLUSTER_TYPE)
    (first,) = delta.poll()
    leased = next(r for r in first.resources if r.name == "leased")
    assert leased.ttl.seconds == 3
    assert not delta.session.heartbeat()  # not ACKed yet
    delta.ack(first)
    assert delta.session.heartbeat()
    (beat,) = delta.poll()
    (only,) = beat.resources
    assert only.name == "leased" and only.version == leased.version
    assert not only.HasField("resource") and only.ttl.seconds == 3
    assert list(beat.removed_resources) == []
    delta.ack(beat)
    assert delta.poll() == []
