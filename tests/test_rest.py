"""The xDS REST/JSON fetch API: over plain HTTP/1.1, and against real Envoy 1.40 in REST mode."""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from envoy.config.core.v3.config_source_pb2 import ConfigSource
from google.protobuf import json_format

from pilotfish.bootstrap import REST_CLUSTER, config_source, envoy_bootstrap
from pilotfish.cache import Snapshot, SnapshotCache
from pilotfish.protos import (
    CLUSTER_TYPE,
    ENDPOINT_TYPE,
    EXTENSION_CONFIG_TYPE,
    LISTENER_TYPE,
    ROUTE_TYPE,
    Cluster,
    ClusterLoadAssignment,
    DiscoveryRequest,
    DiscoveryResponse,
    Node,
)
from pilotfish.testing import (
    EnvoyProcess,
    HttpUpstream,
    RecordingCallbacks,
    ServerThread,
    free_port,
    wait_until,
)
from pilotfish.xds import Acked, Event, Respond, Sent, Subscribed, WatchRequest
from pilotfish.xds.rest import REST_PATHS, RestServer
from pilotfish.xds.watch import Cancel
from tests import helpers

Upstreams = Callable[[str], HttpUpstream]
EnvoyFactory = Callable[..., EnvoyProcess]

# What served clusters and listeners name for EDS and RDS: the same REST API, built from the
# bootstrap helper so the two cannot disagree.
REST_SOURCE = json_format.ParseDict(config_source(ads=False, rest=True), ConfigSource())


@pytest.fixture
def rest(xds_cache: SnapshotCache, xds_callbacks: RecordingCallbacks) -> Iterator[ServerThread]:
    with ServerThread(xds_cache, callbacks=xds_callbacks, rest=True) as server:
        yield server


@pytest.fixture
def rest_envoy(rest: ServerThread) -> Iterator[EnvoyFactory]:
    """Start real Envoys that poll `rest` for everything (CDS, LDS, then EDS and RDS)."""
    started: list[EnvoyProcess] = []

    def factory(node_id: str = "sidecar") -> EnvoyProcess:
        bootstrap = envoy_bootstrap(
            node_id=node_id, cluster="test", xds_address=rest.address, ads=False, rest=True
        )
        envoy = EnvoyProcess(bootstrap, name=node_id)
        started.append(envoy)
        return envoy.start()

    try:
        yield factory
    finally:
        for envoy in started:
            envoy.stop()


def mesh(
    clusters: dict[str, tuple[str, int]],
    route_to: str,
    *,
    listener_port: int,
    connect_timeout: float = 1.0,
) -> Snapshot:
    """EDS clusters with their endpoints, one HTTP listener and its routes, all over REST."""
    return helpers.mesh(
        {name: [address] for name, address in clusters.items()},
        route_to,
        listener_port=listener_port,
        connect_timeout=connect_timeout,
        config_source=REST_SOURCE,
    )


def served_by(envoy: EnvoyProcess, port: int) -> str:
    reply = envoy.request(port, "/")
    return reply.body if reply.status == 200 else f"HTTP {reply.status}"


def two_upstreams(http_upstream: Upstreams) -> dict[str, tuple[str, int]]:
    return {name: http_upstream(name).address for name in ("blue", "green")}


# -- real Envoy in REST mode ------------------------------------------------------------------


def test_envoy_converges_over_rest_and_traffic_reaches_the_upstream(
    xds_cache: SnapshotCache,
    xds_callbacks: RecordingCallbacks,
    rest_envoy: EnvoyFactory,
    http_upstream: Upstreams,
) -> None:
    port = free_port()
    snapshot = mesh(two_upstreams(http_upstream), "blue", listener_port=port)
    assert snapshot.consistent().ok
    xds_cache.set_snapshot("sidecar", snapshot)
    envoy = rest_envoy().wait_ready()
    assert served_by(envoy, port) == "blue"
    assert envoy.dynamic_clusters() == {
        "blue": snapshot.version(CLUSTER_TYPE),
        "green": snapshot.version(CLUSTER_TYPE),
    }
    assert envoy.dynamic_listeners() == {"listener_0": snapshot.version(LISTENER_TYPE)}
    assert envoy.dynamic_route_configs() == {"local_route": snapshot.version(ROUTE_TYPE)}
    assert envoy.stat("cluster.blue.membership_healthy") == 1
    assert envoy.stat("cluster.green.membership_healthy") == 1
    # Envoy really polled: every type fetched over REST, and its polls at the current version
    # are answered 304 (nothing sent), so the successful updates stay at one per type.
    assert {s.type_url for s in xds_callbacks.sent()} == {
        CLUSTER_TYPE,
        ENDPOINT_TYPE,
        LISTENER_TYPE,
        ROUTE_TYPE,
    }
    polls = xds_callbacks.requests
    wait_until(lambda: xds_callbacks.requests >= polls + 8, message="Envoy keeps polling")
    assert envoy.stat("cluster_manager.cds.update_success") == 1
    assert envoy.stat("listener_manager.lds.update_success") == 1
    assert envoy.stat("http.ingress_http.rds.local_route.update_success") == 1

    envoy.stop()
    assert xds_callbacks.opened == xds_callbacks.closed
    # Each fetch was a one-request stream: no watch and no node status outlive it.
    assert xds_cache.watch_count() == 0
    assert xds_cache.status_keys() == []


def test_rejected_snapshot_keeps_last_good_config_and_next_good_one_applies(
    xds_cache: SnapshotCache,
    xds_callbacks: RecordingCallbacks,
    rest_envoy: EnvoyFactory,
    http_upstream: Upstreams,
) -> None:
    port = free_port()
    clusters = two_upstreams(http_upstream)
    good = mesh(clusters, "blue", listener_port=port)
    xds_cache.set_snapshot("sidecar", good)
    envoy = rest_envoy().wait_ready()
    assert served_by(envoy, port) == "blue"

    bad = mesh(clusters, "blue", listener_port=port, connect_timeout=-1)
    xds_cache.set_snapshot("sidecar", bad)
    # REST has no NACK: Envoy keeps naming the good version, so every poll fetches the bad
    # one again and Envoy rejects it again.
    wait_until(
        lambda: envoy.stat("cluster_manager.cds.update_rejected") >= 2,
        message="CDS rejected on consecutive polls",
    )
    assert xds_callbacks.nacks == []
    assert envoy.dynamic_clusters() == {
        "blue": good.version(CLUSTER_TYPE),
        "green": good.version(CLUSTER_TYPE),
    }
    assert envoy.stat("cluster_manager.cds.update_success") == 1
    assert served_by(envoy, port) == "blue"

    fixed = mesh(clusters, "green", listener_port=port, connect_timeout=2)
    xds_cache.set_snapshot("sidecar", fixed)
    wait_until(lambda: served_by(envoy, port) == "green", message="fixed snapshot serves")
    wait_until(
        lambda: (
            envoy.dynamic_clusters()
            == {"blue": fixed.version(CLUSTER_TYPE), "green": fixed.version(CLUSTER_TYPE)}
        ),
        message="fixed CDS accepted",
    )
    wait_until(lambda: envoy.stat("cluster_manager.warming_clusters") == 0)
    rejected = envoy.stat("cluster_manager.cds.update_rejected")
    polls = xds_callbacks.requests
    wait_until(lambda: xds_callbacks.requests >= polls + 8, message="Envoy keeps polling")
    assert envoy.stat("cluster_manager.cds.update_rejected") == rejected  # nothing bad left
    assert envoy.stat("cluster_manager.cds.update_success") == 2


# -- the HTTP API, with a plain HTTP client ---------------------------------------------------


def fetch_body(
    type_url: str, names: tuple[str, ...] = (), version: str = "", node_id: str = "sidecar"
) -> str:
    request = DiscoveryRequest(
        node=Node(id=node_id, cluster="test"),
        type_url=type_url,
        resource_names=list(names),
        version_info=version,
    )
    return json_format.MessageToJson(request)


def post(
    conn: http.client.HTTPConnection,
    path: str,
    body: str | bytes,
    headers: dict[str, str] | None = None,
) -> tuple[http.client.HTTPResponse, bytes]:
    conn.request(
        "POST", path, body=body, headers={"Content-Type": "application/json", **(headers or {})}
    )
    response = conn.getresponse()
    return response, response.read()


@pytest.fixture
def snapshot(xds_cache: SnapshotCache) -> Snapshot:
    clusters = {"blue": ("127.0.0.1", 8001), "green": ("127.0.0.1", 8002)}
    snapshot = mesh(clusters, "blue", listener_port=10000)
    xds_cache.set_snapshot("sidecar", snapshot)
    return snapshot


@pytest.fixture
def conn(rest: ServerThread) -> Iterator[http.client.HTTPConnection]:
    connection = http.client.HTTPConnection(*rest.address, timeout=5)
    try:
        yield connection
    finally:
        connection.close()


def test_fetch_answers_the_snapshot_in_proto3_json(
    snapshot: Snapshot,
    xds_cache: SnapshotCache,
    xds_callbacks: RecordingCallbacks,
    conn: http.client.HTTPConnection,
) -> None:
    response, body = post(conn, "/v3/discovery:clusters", fetch_body(CLUSTER_TYPE))
    assert response.status == 200, body
    assert response.getheader("Content-Type") == "application/json"
    document = json.loads(body)
    assert document["resources"][0]["@type"] == CLUSTER_TYPE  # Any, canonical JSON
    answer = json_format.Parse(body, DiscoveryResponse())
    assert answer.version_info == snapshot.version(CLUSTER_TYPE)
    assert answer.type_url == CLUSTER_TYPE
    assert answer.nonce
    clusters = {}
    for item in answer.resources:
        cluster = Cluster()
        assert item.Unpack(cluster)
        clusters[cluster.name] = cluster
    assert clusters == snapshot.messages(CLUSTER_TYPE)

    # A named subscription gets just its names.
    response, body = post(
        conn, "/v3/discovery:endpoints", fetch_body(ENDPOINT_TYPE, ("green", "absent"))
    )
    assert response.status == 200, body
    answer = json_format.Parse(body, DiscoveryResponse())
    assert answer.version_info == snapshot.version(ENDPOINT_TYPE)
    (item,) = answer.resources
    green = snapshot.messages(ENDPOINT_TYPE)["green"]
    unpacked = ClusterLoadAssignment()
    assert item.Unpack(unpacked)
    assert unpacked == green

    # Each fetch was a one-request stream seen by the callbacks; nothing is left behind.
    assert [s.type_url for s in xds_callbacks.sent()] == [CLUSTER_TYPE, ENDPOINT_TYPE]
    assert (xds_callbacks.opened, xds_callbacks.requests, xds_callbacks.closed) == (2, 2, 2)
    assert xds_cache.watch_count() == 0
    assert xds_cache.status("sidecar") is None


def test_current_version_is_not_modified_and_a_new_one_is_sent(
    snapshot: Snapshot, xds_cache: SnapshotCache, conn: http.client.HTTPConnection
) -> None:
    current = snapshot.version(CLUSTER_TYPE)
    response, body = post(conn, "/v3/discovery:clusters", fetch_body(CLUSTER_TYPE, version=current))
    assert (response.status, body) == (304, b"")
    routes = fetch_body(ROUTE_TYPE, ("local_route",), version=snapshot.version(ROUTE_TYPE))
    response, body = post(conn, "/v3/discovery:routes", routes)
    assert (response.status, body) == (304, b"")
    # An outdated version gets the current one.
    response, body = post(conn, "/v3/discovery:clusters", fetch_body(CLUSTER_TYPE, version="old"))
    assert response.status == 200
    assert json_format.Parse(body, DiscoveryResponse()).version_info == current
    # No snapshot for the node: nothing new to say.
    response, body = post(conn, "/v3/discovery:clusters", fetch_body(CLUSTER_TYPE, node_id="x"))
    assert response.status == 304
    assert xds_cache.watch_count() == 0


def test_fetches_are_one_request_streams_for_the_watcher(
    snapshot: Snapshot, xds_cache: SnapshotCache
) -> None:
    events: list[tuple[int, Event | str]] = []
    watches: list[WatchRequest] = []

    class Watcher:
        """Records what the REST server asks of the cache, then delegates to it."""

        def create_watch(self, request: WatchRequest, respond: Respond) -> Cancel:
            watches.append(request)
            return xds_cache.create_watch(request, respond)

        def create_delta_watch(self, request: Any, respond: Any) -> Cancel:
            raise AssertionError("REST is state-of-the-world")

        def on_stream_event(self, stream_id: int, node: Node, event: Event) -> None:
            events.append((stream_id, event))
            xds_cache.on_stream_event(stream_id, node, event)

        def on_stream_closed(self, stream_id: int, node: Node | None) -> None:
            events.append((stream_id, "closed"))
            xds_cache.on_stream_closed(stream_id, node)

    current = snapshot.version(ENDPOINT_TYPE)
    with ServerThread(Watcher(), rest=True) as server:
        connection = http.client.HTTPConnection(*server.address, timeout=5)
        try:
            wildcard = fetch_body(CLUSTER_TYPE)
            assert post(connection, "/v3/discovery:clusters", wildcard)[0].status == 200
            named = fetch_body(ENDPOINT_TYPE, ("blue",), version=current)
            assert post(connection, "/v3/discovery:endpoints", named)[0].status == 304
        finally:
            connection.close()

    first, second = watches
    assert (first.wildcard, first.names, first.known_version) == (True, frozenset(), "")
    assert (second.wildcard, second.names) == (False, frozenset({"blue"}))
    assert (second.known_version, second.known_names) == (current, frozenset({"blue"}))
    assert first.stream_id != second.stream_id
    one, two = first.stream_id, second.stream_id
    sent = events[1][1]
    assert isinstance(sent, Sent) and sent.version == snapshot.version(CLUSTER_TYPE)
    assert events == [
        (one, Subscribed(CLUSTER_TYPE, frozenset(), True)),
        (one, sent),
        (one, "closed"),
        (two, Subscribed(ENDPOINT_TYPE, frozenset({"blue"}), False)),
        # A fetch naming the version it holds counts as that version's ACK (nonce empty).
        (two, Acked(ENDPOINT_TYPE, current, "")),
        (two, "closed"),
    ]
    assert xds_cache.status_keys() == []


def test_errors_unknown_path_bad_json_wrong_method(
    snapshot: Snapshot, conn: http.client.HTTPConnection
) -> None:
    def error(response: http.client.HTTPResponse, body: bytes, status: int) -> str:
        assert response.status == status, body
        message: str = json.loads(body)["message"]
        return message

    for path in ("/", "/v3/discovery:nothing", "/v2/discovery:clusters", "/v3/discovery:"):
        assert "no xDS fetch API" in error(*post(conn, path, fetch_body(CLUSTER_TYPE)), 404)

    for bad, says in [
        (b"{", "not JSON"),
        (b"", "not JSON"),
        (b"\xff", "not UTF-8"),
        (b"[]", "JSON object"),
        (b'{"resourceNames": "blue"}', "not a DiscoveryRequest"),
        (b'{"node": {"id": 1, "id": 2}}', "duplicate key"),
    ]:
        assert says in error(*post(conn, "/v3/discovery:clusters", bad), 400)
    wrong_type = fetch_body(LISTENER_TYPE)
    assert "posted to" in error(*post(conn, "/v3/discovery:clusters", wrong_type), 400)

    conn.request("GET", "/v3/discovery:clusters")
    response = conn.getresponse()
    assert "POST" in error(response, response.read(), 405)
    assert response.getheader("Allow") == "POST"

    # Unknown fields are ignored (as in binary protobuf); the connection survived every error.
    lenient = json.dumps({"typeUrl": CLUSTER_TYPE, "node": {"id": "sidecar"}, "future": 1})
    assert post(conn, "/v3/discovery:clusters", lenient)[0].status == 200


def test_every_type_has_the_path_envoy_posts_to() -> None:
    assert {p.removeprefix("/v3/discovery:") for p in REST_PATHS} >= {
        "listeners",
        "routes",
        "scoped-routes",
        "clusters",
        "endpoints",
        "secrets",
        "runtime",
        # Envoy POSTs to its service's google.api.http path, which is spelt this way for ECDS.
        "extension_configs",
    }
    assert REST_PATHS["/v3/discovery:extension_configs"] == EXTENSION_CONFIG_TYPE


def test_keep_alive_and_connection_close(
    snapshot: Snapshot, rest: ServerThread, conn: http.client.HTTPConnection
) -> None:
    current = snapshot.version(CLUSTER_TYPE)
    first, _ = post(conn, "/v3/discovery:clusters", fetch_body(CLUSTER_TYPE))
    assert first.status == 200 and not first.will_close
    sock = conn.sock
    second, _ = post(conn, "/v3/discovery:clusters", fetch_body(CLUSTER_TYPE, version=current))
    assert second.status == 304
    assert conn.sock is sock and sock is not None  # both on one connection

    last, _ = post(
        conn, "/v3/discovery:clusters", fetch_body(CLUSTER_TYPE), {"Connection": "close"}
    )
    assert last.status == 200 and last.will_close
    assert last.getheader("Connection") == "close"

    # On a raw socket: the server closes after `Connection: close`, and a chunked body with
    # `Expect: 100-continue` works.
    body = fetch_body(CLUSTER_TYPE).encode()
    with socket.create_connection(rest.address, timeout=5) as raw:
        raw.sendall(
            b"POST /v3/discovery:clusters HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
            b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        )
        assert raw.recv(100).startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
        raw.sendall(b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body))
        received = b""
        while chunk := raw.recv(65536):
            received += chunk
    head, _, payload = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert json_format.Parse(payload, DiscoveryResponse()).version_info == current


def test_malformed_http_is_refused_and_closed(snapshot: Snapshot, rest: ServerThread) -> None:
    def exchange(data: bytes) -> bytes:
        with socket.create_connection(rest.address, timeout=5) as raw:
            raw.sendall(data)
            received = b""
            while chunk := raw.recv(65536):
                received += chunk
            return received

    smuggle = (
        b"POST /v3/discovery:clusters HTTP/1.1\r\nContent-Length: 2\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    )
    assert exchange(smuggle).startswith(b"HTTP/1.1 400 ")
    assert exchange(b"nonsense\r\n\r\n").startswith(b"HTTP/1.1 400 ")
    # What an HTTP/2 cluster (instead of HTTP/1.1) would send: a clear "wrong version".
    preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
    assert exchange(preface).startswith(b"HTTP/1.1 505 ")


def test_bootstrap_rest_mode_shape() -> None:
    bootstrap = envoy_bootstrap(
        node_id="n", cluster="c", xds_address=("127.0.0.1", 18000), ads=False, rest=True
    )
    dynamic = bootstrap["dynamic_resources"]
    assert "ads_config" not in dynamic
    source = dynamic["cds_config"]
    assert source == dynamic["lds_config"] == config_source(ads=False, rest=True)
    assert source["api_config_source"] == {
        "api_type": "REST",
        "transport_api_version": "V3",
        "cluster_names": [REST_CLUSTER],
        "refresh_delay": "0.2s",
        "request_timeout": "1s",
    }
    (cluster,) = bootstrap["static_resources"]["clusters"]
    assert cluster["name"] == REST_CLUSTER
    options = cluster["typed_extension_protocol_options"][
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
    ]
    assert options["explicit_http_config"] == {"http_protocol_options": {}}  # HTTP/1.1

    both = envoy_bootstrap(
        node_id="n",
        cluster="c",
        xds_address=("127.0.0.1", 18000),
        rest_address=("127.0.0.1", 18001),
        ads=False,
        rest=True,
    )
    clusters = {c["name"]: c for c in both["static_resources"]["clusters"]}
    assert set(clusters) == {"pilotfish_xds", REST_CLUSTER}
    with pytest.raises(ValueError, match="ads=False"):
        envoy_bootstrap(node_id="n", cluster="c", xds_address=("127.0.0.1", 1), rest=True)
    with pytest.raises(ValueError, match="delta=False"):
        config_source(ads=False, delta=True, rest=True)


async def test_stop_closes_kept_alive_connections(xds_cache: SnapshotCache) -> None:
    server = RestServer(xds_cache)
    await server.start()
    reader, writer = await asyncio.open_connection(*server.address)
    try:
        writer.write(b"GET /v3/discovery:clusters HTTP/1.1\r\nHost: x\r\n\r\n")
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 405 ")
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        await reader.readexactly(length)
        assert server.connection_count == 1  # kept alive
        await server.stop()
        assert await reader.read() == b""  # closed by the server
        assert server.connection_count == 0
    finally:
        writer.close()
