"""The issue's floor: a plain ADS server that serializes each response once per (type, version)
and sends the same bytes to every stream, written as plainly as a first attempt would be.

Not a competitor (state of the world only, every resource of a type in every response, no
per-name subscriptions, no delta): a calibration. The issue measured such a server next to
go-control-plane on its machine at 0.7x the reference's server CPU per client-push on 100x1 and
0.13x on 1,000x5. Measured in the same run as pilotfish (`bench/ads_push.py --transport floor
native`), pilotfish / floor x that figure estimates pilotfish's ratio to the reference whatever
the host's speed that hour.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import grpc.aio
from envoy.service.discovery.v3.discovery_pb2 import DiscoveryRequest, DiscoveryResponse
from google.protobuf.any_pb2 import Any as AnyMessage

from pilotfish.cache import Snapshot
from pilotfish.protos import RESOURCE_TYPES

__all__ = ["FloorServer"]

_ADS = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources"
_OPTIONS = [
    ("grpc.max_send_message_length", 512 * 1024 * 1024),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.so_reuseport", 1),
]


class _Stream:
    """One client: what it subscribed to, the nonce last sent per type, and its outbox."""

    def __init__(self) -> None:
        self.subscribed: set[str] = set()
        self.sent: dict[str, str] = {}  # type URL -> nonce last sent (the version: see below)
        self.outbox: asyncio.Queue[bytes | None] = asyncio.Queue()

    def send(self, type_url: str, version: str, body: bytes) -> None:
        self.sent[type_url] = version
        self.outbox.put_nowait(body)


class FloorServer:
    """Serves one `Snapshot` to every client; `set` replaces it and pushes the changed types."""

    def __init__(self, snapshot: Snapshot) -> None:
        self._streams: set[_Stream] = set()
        self._bodies: dict[str, tuple[str, bytes]] = {}  # type URL -> (version, response)
        self._server: grpc.aio.Server | None = None
        self.responses_serialized = 0
        self.resources_packed = 0
        self._snapshot = snapshot

    @property
    def stream_count(self) -> int:
        return len(self._streams)

    def _body(self, type_url: str) -> tuple[str, bytes]:
        """The response for the type's current version, serialized on first use. The nonce is
        the version: nonces need only be unique within a stream, and a stream gets a type's
        version once."""
        version = self._snapshot.version(type_url)
        made = self._bodies.get(type_url)
        if made is None or made[0] != version:
            response = DiscoveryResponse(version_info=version, type_url=type_url, nonce=version)
            for resource in self._snapshot.resources(type_url).values():
                response.resources.append(AnyMessage(type_url=type_url, value=resource.data))
                self.resources_packed += 1
            made = self._bodies[type_url] = (version, response.SerializeToString())
            self.responses_serialized += 1
        return made

    def set(self, snapshot: Snapshot) -> None:
        """The new snapshot, pushed to every stream subscribed to a type whose version moved."""
        self._snapshot = snapshot
        wanted = set().union(*(stream.subscribed for stream in self._streams))
        for type_url in RESOURCE_TYPES:  # clusters, endpoints, listeners, routes: Envoy's order
            if type_url not in wanted:
                continue
            version, body = self._body(type_url)
            for stream in self._streams:
                if type_url in stream.subscribed and stream.sent.get(type_url) != version:
                    stream.send(type_url, version, body)

    async def _read(self, requests: AsyncIterator[DiscoveryRequest], stream: _Stream) -> None:
        async for request in requests:
            type_url = request.type_url
            if not request.response_nonce:  # a new subscription: the current version
                stream.subscribed.add(type_url)
                version, body = self._body(type_url)
                stream.send(type_url, version, body)
            # Otherwise an ACK or NACK of what was sent (nothing to answer), or of an older
            # response (a newer one is on its way): either way nothing to send.
        stream.outbox.put_nowait(None)

    async def _handle(
        self, requests: AsyncIterator[DiscoveryRequest], context: Any
    ) -> AsyncIterator[bytes]:
        stream = _Stream()
        self._streams.add(stream)
        reader = asyncio.ensure_future(self._read(requests, stream))
        try:
            while (body := await stream.outbox.get()) is not None:
                yield body
        finally:
            self._streams.discard(stream)
            reader.cancel()

    async def start(self, address: str) -> int:
        handler = grpc.method_handlers_generic_handler(
            "envoy.service.discovery.v3.AggregatedDiscoveryService",
            {
                "StreamAggregatedResources": grpc.stream_stream_rpc_method_handler(
                    self._handle, request_deserializer=DiscoveryRequest.FromString
                )
            },
        )
        server = grpc.aio.server(options=_OPTIONS)
        server.add_generic_rpc_handlers((handler,))
        port = server.add_insecure_port(address)
        await server.start()
        self._server = server
        return port

    async def stop(self, grace: float) -> None:
        if self._server is not None:
            await self._server.stop(grace)
