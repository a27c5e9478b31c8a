"""The grpc.aio server over real sockets, with a raw gRPC client (no Envoy)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import grpc.aio
import pytest

from pilotfish.cache import SnapshotCache
from pilotfish.protos import (
    ADS_SERVICE,
    CLUSTER_TYPE,
    LISTENER_TYPE,
    RESOURCE_TYPES,
    DiscoveryRequest,
    DiscoveryResponse,
    Node,
)
from pilotfish.xds import Nacked, Sent
from pilotfish.xds.callbacks import Callbacks
from pilotfish.xds.server import XdsServer
from tests.helpers import mesh

A = {"a": [("127.0.0.1", 1)]}


class Stream:
    """A raw ADS (or per-type) stream: write requests, read responses."""

    def __init__(self, channel: grpc.aio.Channel, method: str) -> None:
        self.queue: asyncio.Queue[DiscoveryRequest | None] = asyncio.Queue()
        call = channel.stream_stream(
            method,
            request_serializer=DiscoveryRequest.SerializeToString,
            response_deserializer=DiscoveryResponse.FromString,
        )
        self.call = call(self._requests())

    async def _requests(self) -> AsyncIterator[DiscoveryRequest]:
        while (request := await self.queue.get()) is not None:
            yield request

    async def send(self, type_url: str, **fields: object) -> None:
        await self.queue.put(DiscoveryRequest(type_url=type_url, **fields))

    async def read(self, timeout: float = 5.0) -> DiscoveryResponse:
        response = await asyncio.wait_for(self.call.read(), timeout)
        assert isinstance(response, DiscoveryResponse), response
        return response

    async def ack(self, response: DiscoveryResponse) -> None:
        await self.send(
            response.type_url, version_info=response.version_info, response_nonce=response.nonce
        )


@pytest.fixture
async def served() -> AsyncIterator[tuple[SnapshotCache, XdsServer, grpc.aio.Channel]]:
    cache = SnapshotCache()
    server = XdsServer(cache, callbacks=Recorder())
    port = await server.start()
    channel = grpc.aio.insecure_channel(
        f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)]
    )
    try:
        yield cache, server, channel
    finally:
        await channel.close()
        await server.stop(0)


class Recorder(Callbacks):
    """Mixes sync and async hooks: both kinds must run."""

    def __init__(self) -> None:
        self.log: list[str] = []

    async def on_stream_open(self, stream_id: int, type_url: str | None) -> None:
        await asyncio.sleep(0)
        self.log.append(f"open {type_url}")

    def on_stream_close(self, stream_id: int, node: Node | None) -> None:
        self.log.append(f"close {node.id if node else None}")

    async def on_stream_response(self, stream_id: int, node: Node, sent: Sent) -> None:
        self.log.append(f"sent {sent.type_url.rsplit('.', 1)[1]}")

    def on_nack(self, stream_id: int, node: Node, nack: Nacked) -> None:
        self.log.append(f"nack {nack.message}")


def recorder(server: XdsServer) -> Recorder:
    callbacks = server._callbacks
    assert isinstance(callbacks, Recorder)
    return callbacks


async def test_slow_client_gets_the_latest_version_not_a_queue(
    served: tuple[SnapshotCache, XdsServer, grpc.aio.Channel],
) -> None:
    cache, server, channel = served
    cache.set_snapshot("n", mesh(A, "a"))
    stream = Stream(channel, ADS_SERVICE.stream or "")
    await stream.send(CLUSTER_TYPE, node=Node(id="n"))
    first = await stream.read()
    # The client sits on the first response while three new versions are set.
    for port in (2, 3, 4):
        cache.set_snapshot("n", mesh({"a": [("127.0.0.1", port)], f"c{port}": []}, "a"))
    await asyncio.sleep(0.2)
    await stream.ack(first)
    latest = await stream.read()
    assert latest.version_info == cache.get_snapshot("n").version(CLUSTER_TYPE)
    await stream.ack(latest)
    with pytest.raises(asyncio.TimeoutError):
        await stream.read(timeout=0.3)  # nothing else was queued
    log = recorder(server).log
    assert log[0] == "open None"
    assert log.count("sent Cluster") == 2


async def test_stuck_client_does_not_hold_up_others(
    served: tuple[SnapshotCache, XdsServer, grpc.aio.Channel],
) -> None:
    cache, _, channel = served
    cache.set_snapshot("stuck", mesh(A, "a"))
    cache.set_snapshot("live", mesh(A, "a"))
    stuck = Stream(channel, ADS_SERVICE.stream or "")
    await stuck.send(CLUSTER_TYPE, node=Node(id="stuck"))  # never reads, never ACKs
    live = Stream(channel, ADS_SERVICE.stream or "")
    await live.send(CLUSTER_TYPE, node=Node(id="live"))
    await live.ack(await live.read())
    for port in range(2, 7):
        snapshot = mesh({"a": [("127.0.0.1", port)], f"c{port}": []}, "a")
        cache.set_snapshot("stuck", snapshot)
        cache.set_snapshot("live", snapshot)
        response = await live.read()
        assert response.version_info == snapshot.version(CLUSTER_TYPE)
        await live.ack(response)


async def test_nack_reaches_async_and_sync_callbacks(
    served: tuple[SnapshotCache, XdsServer, grpc.aio.Channel],
) -> None:
    cache, server, channel = served
    cache.set_snapshot("n", mesh(A, "a"))
    stream = Stream(channel, ADS_SERVICE.stream or "")
    await stream.send(LISTENER_TYPE, node=Node(id="n"))
    response = await stream.read()
    await stream.send(
        LISTENER_TYPE,
        response_nonce=response.nonce,
        error_detail={"code": 3, "message": "port taken"},
    )
    for _ in range(50):
        if "nack port taken" in recorder(server).log:
            break
        await asyncio.sleep(0.02)
    assert "nack port taken" in recorder(server).log
    status = cache.status("n")
    assert status is not None
    nack = status.types[LISTENER_TYPE].last_nack
    assert nack is not None and nack.message == "port taken"


async def test_shutdown_ends_streams_politely_and_cleans_up(
    served: tuple[SnapshotCache, XdsServer, grpc.aio.Channel],
) -> None:
    cache, server, channel = served
    cache.set_snapshot("n", mesh(A, "a"))
    stream = Stream(channel, ADS_SERVICE.stream or "")
    await stream.send(CLUSTER_TYPE, node=Node(id="n"))
    await stream.ack(await stream.read())
    assert server.stream_count == 1
    await server.stop(grace=2)
    assert await asyncio.wait_for(stream.call.read(), 5) is grpc.aio.EOF
    assert await stream.call.code() == grpc.StatusCode.OK
    assert server.stream_count == 0
    assert cache.status_keys() == [] and cache.watch_count() == 0
    assert recorder(server).log[-1] == "close n"


async def test_protocol_errors_end_the_stream_with_invalid_argument(
    served: tuple[SnapshotCache, XdsServer, grpc.aio.Channel],
) -> None:
    _, server, channel = served
    ads = Stream(channel, ADS_SERVICE.stream or "")
    await ads.send("", node=Node(id="n"))
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await ads.read()
    assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "without type_url" in (failure.value.details() or "")

    cds = Stream(channel, RESOURCE_TYPES[CLUSTER_TYPE].service.stream or "")
    await cds.send(LISTENER_TYPE, node=Node(id="n"))
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await cds.read()
    assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert server.stream_count == 0


async def test_every_sotw_service_answers_its_type(
    served: tuple[SnapshotCache, XdsServer, grpc.aio.Channel],
) -> None:
    cache, _, channel = served
    cache.set_snapshot("n", mesh(A, "a"))
    for row in RESOURCE_TYPES.values():
        if row.service.stream is None:
            continue
        stream = Stream(channel, row.service.stream)
        await stream.send("", node=Node(id="n"))  # empty type_url: the service's own type
        response = await stream.read()
        assert response.type_url == row.type_url
        assert response.version_info == cache.get_snapshot("n").version(row.type_url)
        stream.call.cancel()


async def test_async_context_manager_and_address() -> None:
    cache = SnapshotCache()
    cache.set_snapshot("n", mesh(A, "a"))
    async with XdsServer(cache) as server:
        host, port = server.address
        assert host == "127.0.0.1" and port > 0
        async with grpc.aio.insecure_channel(f"{host}:{port}") as channel:
            stream = Stream(channel, ADS_SERVICE.stream or "")
            await stream.send(CLUSTER_TYPE, node=Node(id="n"))
            assert (await stream.read()).type_url == CLUSTER_TYPE
            assert server.stream_count == 1
    assert server.stream_count == 0


async def test_debug_view_shows_subscriptions_versions_and_nacks(
    served: tuple[SnapshotCache, XdsServer, grpc.aio.Channel],
) -> None:
    cache, server, channel = served
    cache.set_snapshot("n", mesh(A, "a"))
    stream = Stream(channel, ADS_SERVICE.stream or "")
    await stream.send(CLUSTER_TYPE, node=Node(id="n", cluster="web"))
    good = await stream.read()
    await stream.ack(good)
    await stream.send(LISTENER_TYPE)
    listeners = await stream.read()
    await stream.send(
        LISTENER_TYPE, response_nonce=listeners.nonce, error_detail={"message": "bad port"}
    )
    for _ in range(50):
        views = server.describe_streams()
        if views and views[0]["types"].get(LISTENER_TYPE, {}).get("last_nack"):
            break
        await asyncio.sleep(0.02)
    (view,) = server.describe_streams()
    assert (view["node_id"], view["node_cluster"], view["variant"]) == ("n", "web", "sotw")
    cds = view["types"][CLUSTER_TYPE]
    assert cds["wildcard"] and cds["acked_version"] == good.version_info
    lds = view["types"][LISTENER_TYPE]
    assert lds["last_nack"]["message"] == "bad port"
    assert lds["acked_version"] == ""
