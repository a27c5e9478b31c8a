"""VHDS on demand: Envoy fetches a request's virtual host when it needs it, over delta ADS.

Envoy subscribes to a route configuration's virtual hosts as a namespace without naming it (its
first VHDS request has no names) and waits for an answer in that namespace before the route
configuration, and so the listener, is ready. Then it asks for `<route configuration>/<host>`
when a request's host has no virtual host, pausing the request until the answer: the virtual host,
or an unresolved alias (no such host: the request goes on to a 404).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator

import pytest

from pilotfish.bootstrap import envoy_bootstrap
from pilotfish.cache import LinearCache, MuxCache, Snapshot, SnapshotCache
from pilotfish.protos import (
    ROUTE_TYPE,
    VIRTUAL_HOST_TYPE,
    DeltaDiscoveryRequest,
    DeltaDiscoveryResponse,
    DiscoveryRequest,
    Node,
)
from pilotfish.testing import (
    EnvoyProcess,
    HttpUpstream,
    InMemoryDeltaClient,
    RecordingCallbacks,
    ServerThread,
    free_port,
    wait_until,
)
from pilotfish.translators import build
from pilotfish.xds import Subscribed

Upstreams = Callable[[str], HttpUpstream]


def host(name: str, domain: str, cluster: str = "backend") -> object:
    return build.virtual_host(name, cluster, domains=[domain])


def routes_and_hosts(*hosts: object) -> tuple[MuxCache, SnapshotCache, LinearCache]:
    """Route configuration `rc` (VHDS, no inline hosts) in a snapshot; hosts in a linear cache."""
    snapshots = SnapshotCache()
    snapshots.set_snapshot("edge", Snapshot({"rds": [build.vhds_route_config("rc")]}))
    hosts_cache = LinearCache(VIRTUAL_HOST_TYPE, hosts)
    mux = MuxCache({"rds": snapshots, "vhds": hosts_cache})
    return mux, snapshots, hosts_cache


def resources(response: DeltaDiscoveryResponse) -> dict[str, tuple[bool, list[str]]]:
    """name -> (has a body, aliases)."""
    return {r.name: (r.HasField("resource"), list(r.aliases)) for r in response.resources}


@pytest.fixture
def vhds_client() -> Iterator[tuple[InMemoryDeltaClient, LinearCache]]:
    mux, _, hosts_cache = routes_and_hosts(
        host("rc/foo.example", "foo.example"), host("other/foo.example", "foo.example")
    )
    client = InMemoryDeltaClient(mux, node=Node(id="edge"))
    client.subscribe(ROUTE_TYPE, ["rc"])
    (routes,) = client.poll()
    client.ack(routes)
    yield client, hosts_cache
    client.close()


def test_namespace_subscription_answers_without_sending_every_host(
    vhds_client: tuple[InMemoryDeltaClient, LinearCache],
) -> None:
    client, _ = vhds_client
    received = client.subscribe(VIRTUAL_HOST_TYPE)  # no names: Envoy's namespace subscription
    assert received.events == (Subscribed(VIRTUAL_HOST_TYPE, frozenset({"rc/"}), False),)
    (first,) = client.poll()
    # Not a legacy wildcard (every host of every route configuration): one unresolved alias in
    # namespace `rc`, which is what lets Envoy finish initializing the route configuration.
    assert resources(first) == {"rc/": (False, ["rc/"])}
    assert list(first.removed_resources) == []
    client.ack(first)
    assert client.poll() == []


def test_on_demand_host_absent_host_and_later_changes(
    vhds_client: tuple[InMemoryDeltaClient, LinearCache],
) -> None:
    client, hosts_cache = vhds_client
    client.subscribe(VIRTUAL_HOST_TYPE)
    client.ack(client.poll()[0])

    client.subscribe(VIRTUAL_HOST_TYPE, ["rc/foo.example"])
    (found,) = client.poll()
    assert resources(found) == {"rc/foo.example": (True, [])}
    client.ack(found)

    client.subscribe(VIRTUAL_HOST_TYPE, ["rc/bar.example"])
    (absent,) = client.poll()
    # Not in removed_resources: Envoy would keep the request paused. An unresolved alias resumes
    # it (to a 404).
    assert resources(absent) == {"rc/bar.example": (False, ["rc/bar.example"])}
    assert list(absent.removed_resources) == []
    client.ack(absent)
    assert client.poll() == []  # said once, not in a loop

    client.subscribe(VIRTUAL_HOST_TYPE, ["rc/bar.example"])  # the next request for that host
    (again,) = client.poll()
    assert resources(again) == {"rc/bar.example": (False, ["rc/bar.example"])}
    client.ack(again)

    hosts_cache.update_resource(host("rc/bar.example", "bar.example"))
    (appeared,) = client.poll()
    assert resources(appeared) == {"rc/bar.example": (True, [])}
    client.ack(appeared)

    hosts_cache.update_resource(host("other/bar.example", "bar.example"))
    assert client.poll() == []  # not subscribed: not sent

    hosts_cache.delete_resource("rc/foo.example")
    (gone,) = client.poll()
    assert resources(gone) == {} and list(gone.removed_resources) == ["rc/foo.example"]


def test_without_route_configurations_on_the_stream_it_stays_a_wildcard() -> None:
    # A VHDS-only stream (or one that never asked for routes) knows no namespace.
    _, _, hosts_cache = routes_and_hosts(host("rc/foo.example", "foo.example"))
    client = InMemoryDeltaClient(hosts_cache, node=Node(id="edge"), type_url=VIRTUAL_HOST_TYPE)
    received = client.subscribe(VIRTUAL_HOST_TYPE)
    assert received.events == (Subscribed(VIRTUAL_HOST_TYPE, frozenset(), True),)
    (first,) = client.poll()
    assert resources(first) == {"rc/foo.example": (True, [])}
    client.close()


# With real Envoy


class VhdsRequests(RecordingCallbacks):
    """Also records the names Envoy subscribes to over VHDS, in order."""

    def __init__(self) -> None:
        super().__init__()
        self._names_lock = threading.Lock()
        self.vhds_requests: list[list[str]] = []

    def on_stream_request(
        self, stream_id: int, request: DiscoveryRequest | DeltaDiscoveryRequest
    ) -> None:
        super().on_stream_request(stream_id, request)
        vhds = isinstance(request, DeltaDiscoveryRequest) and request.type_url == VIRTUAL_HOST_TYPE
        if vhds and (not request.response_nonce or request.resource_names_subscribe):
            with self._names_lock:
                self.vhds_requests.append(list(request.resource_names_subscribe))

    def subscriptions(self) -> list[list[str]]:
        with self._names_lock:
            return list(self.vhds_requests)


def test_envoy_fetches_virtual_hosts_on_demand(http_upstream: Upstreams) -> None:
    upstream, port = http_upstream("backend"), free_port()
    snapshots = SnapshotCache()
    snapshots.set_snapshot(
        "edge",
        Snapshot(
            {
                "cds": [build.eds_cluster("backend")],
                "eds": [build.load_assignment("backend", [upstream.address])],
                "lds": [build.http_listener("web", port, "rc", on_demand=True)],
                "rds": [build.vhds_route_config("rc")],  # no virtual host inline
            }
        ),
    )
    hosts_cache = LinearCache(VIRTUAL_HOST_TYPE, [host("rc/foo.example", "foo.example")])
    watcher = MuxCache(
        {
            "cds": snapshots,
            "eds": snapshots,
            "lds": snapshots,
            "rds": snapshots,
            "vhds": hosts_cache,
        }
    )
    callbacks = VhdsRequests()
    with ServerThread(watcher, callbacks=callbacks) as server:
        bootstrap = envoy_bootstrap(
            node_id="edge", cluster="test", xds_address=server.address, delta=True
        )
        with EnvoyProcess(bootstrap, name="edge") as envoy:
            envoy.wait_ready(timeout=15)
            # The route configuration finished initializing (its VHDS subscription was answered),
            # so the listener is active, and no virtual host was sent before any was asked for.
            wait_until(lambda: "web" in envoy.dynamic_listeners(), message="listener active")
            assert callbacks.subscriptions() == [[]]
            assert [s.names for s in callbacks.sent(VIRTUAL_HOST_TYPE)] == [frozenset({"rc/"})]

            reply = envoy.request(port, host="foo.example")
            assert (reply.status, reply.body) == (200, "backend")
            assert ["rc/foo.example"] in callbacks.subscriptions()  # fetched on demand

            assert envoy.request(port, host="unknown.example").status == 404
            assert ["rc/unknown.example"] in callbacks.subscriptions()

            hosts_cache.update_resource(host("rc/bar.example", "bar.example"))
            reply = envoy.request(port, host="bar.example")
            assert (reply.status, reply.body) == (200, "backend")
            assert ["rc/bar.example"] in callbacks.subscriptions()

            # A host asked for while absent is pushed when it appears.
            hosts_cache.update_resource(host("rc/unknown.example", "unknown.example"))
            wait_until(
                lambda: envoy.request(port, host="unknown.example").status == 200,
                message="unknown.example pushed",
            )

            (dumped,) = json.loads(envoy.admin_get("/config_dump?resource=dynamic_route_configs"))[
                "configs"
            ]
            route_config = dumped["route_config"]
            assert "vhds" in route_config
            names = {vh["name"] for vh in route_config["virtual_hosts"]}
            assert names == {"rc/foo.example", "rc/bar.example", "rc/unknown.example"}
            # The route configuration's version is the last VHDS answer's: they came over VHDS.
            assert dumped["version_info"] == callbacks.sent(VIRTUAL_HOST_TYPE)[-1].version
            assert envoy.stat("http.ingress_http.rds.vhds.rc.update_rejected") == 0


def test_a_snapshot_serves_virtual_hosts_the_same_way() -> None:
    cache = SnapshotCache()
    snapshot = Snapshot(
        {"rds": [build.vhds_route_config("rc")], "vhds": [host("rc/foo.example", "foo.example")]}
    )
    cache.set_snapshot("edge", snapshot)
    client = InMemoryDeltaClient(cache, node=Node(id="edge"))
    client.subscribe(ROUTE_TYPE, ["rc"])
    client.ack(client.poll()[0])
    client.subscribe(VIRTUAL_HOST_TYPE)
    (first,) = client.poll()
    assert resources(first) == {"rc/": (False, ["rc/"])}
    client.ack(first)
    client.subscribe(VIRTUAL_HOST_TYPE, ["rc/foo.example", "rc/bar.example"])
    (fetched,) = client.poll()
    assert resources(fetched) == {
        "rc/foo.example": (True, []),
        "rc/bar.example": (False, ["rc/bar.example"]),
    }
    client.close()


def test_each_route_configuration_sent_later_is_answered_in_vhds_again() -> None:
    mux, snapshots, _ = routes_and_hosts(host("rc/foo.example", "foo.example"))
    client = InMemoryDeltaClient(mux, node=Node(id="edge"))
    client.subscribe(ROUTE_TYPE, ["rc"])
    client.ack(client.poll()[0])
    client.subscribe(VIRTUAL_HOST_TYPE)
    client.ack(client.poll()[0])
    client.subscribe(VIRTUAL_HOST_TYPE, ["rc/foo.example"])
    client.ack(client.poll()[0])
    assert client.poll() == []

    # A second route configuration: Envoy starts its VHDS subscription without a request.
    two = Snapshot({"rds": [build.vhds_route_config("rc"), build.vhds_route_config("rc2")]})
    snapshots.set_snapshot("edge", two)
    client.subscribe(ROUTE_TYPE, ["rc2"])
    routes, hosts = client.poll()
    assert routes.type_url == ROUTE_TYPE and [r.name for r in routes.resources] == ["rc2"]
    assert resources(hosts) == {"rc2/": (False, ["rc2/"])}
    client.ack(routes)
    client.ack(hosts)
    assert client.poll() == []

    # An updated one may have restarted its VHDS subscription (a changed source): said again.
    # Hosts Envoy holds are not resent; they stay in its route configuration.
    changed = build.vhds_route_config("rc", virtual_hosts=[host("static", "static.example")])
    snapshots.set_snapshot("edge", Snapshot({"rds": [changed, build.vhds_route_config("rc2")]}))
    routes, hosts = client.poll()
    assert [r.name for r in routes.resources] == ["rc"]
    assert resources(hosts) == {"rc/": (False, ["rc/"])}
    client.close()


def test_envoy_route_configurations_sent_later_do_not_wait_for_vhds(
    http_upstream: Upstreams,
) -> None:
    # Envoy starts a VHDS subscription for each route configuration it is sent with a (changed)
    # VHDS source and waits for an answer in its namespace without asking: unanswered, a new
    # listener warms (or a route update waits) for the initial fetch timeout.
    upstream, port, port2 = http_upstream("backend"), free_port(), free_port()

    def snapshot(*, second: bool = False, changed: bool = False) -> Snapshot:
        source = build.ads_config_source()
        inline = []
        if changed:
            source.initial_fetch_timeout.FromSeconds(30)
            inline.append(host("static", "static.example"))
        listeners = [build.http_listener("web", port, "rc", on_demand=True)]
        routes = [build.vhds_route_config("rc", virtual_hosts=inline, config_source=source)]
        if second:
            listeners.append(
                build.http_listener("web2", port2, "rc2", on_demand=True, stat_prefix="two")
            )
            routes.append(build.vhds_route_config("rc2"))
        return Snapshot(
            {
                "cds": [build.eds_cluster("backend")],
                "eds": [build.load_assignment("backend", [upstream.address])],
                "lds": listeners,
                "rds": routes,
            }
        )

    snapshots = SnapshotCache()
    snapshots.set_snapshot("edge", snapshot())
    hosts_cache = LinearCache(
        VIRTUAL_HOST_TYPE,
        [host("rc/foo.example", "foo.example"), host("rc2/foo.example", "foo.example")],
    )
    watcher = MuxCache(
        {
            "cds": snapshots,
            "eds": snapshots,
            "lds": snapshots,
            "rds": snapshots,
            "vhds": hosts_cache,
        }
    )
    with ServerThread(watcher) as server:
        bootstrap = envoy_bootstrap(
            node_id="edge", cluster="test", xds_address=server.address, delta=True
        )
        with EnvoyProcess(bootstrap, name="edge") as envoy:
            envoy.wait_ready(timeout=15)
            assert envoy.request(port, host="foo.example").status == 200

            snapshots.set_snapshot("edge", snapshot(second=True))
            wait_until(lambda: "web2" in envoy.dynamic_listeners(), timeout=5)
            reply = envoy.request(port2, host="foo.example")
            assert (reply.status, reply.body) == (200, "backend")

            snapshots.set_snapshot("edge", snapshot(second=True, changed=True))
            # Probe once Envoy holds the new route configuration: a probe before it waits for an
            # on-demand answer that never comes, and for the whole of the request's timeout.
            changed = snapshots.get_snapshot("edge").resources(ROUTE_TYPE)["rc"].version
            wait_until(lambda: envoy.dynamic_route_configs().get("rc") == changed, timeout=5)
            assert envoy.request(port, host="static.example").status == 200
            assert envoy.request(port, host="foo.example").status == 200
            for stats in ("ingress_http.rds.vhds.rc", "two.rds.vhds.rc2"):
                assert envoy.stat(f"http.{stats}.init_fetch_timeout") == 0
