"""The grpc.aio xDS server: thin adapters from gRPC streams to `SotwSession`s.

Serves ADS and every per-type state-of-the-world service from one `ConfigWatcher`. Responses are
written as prepared bytes (the serializer is bypassed), so a response built once is shared by
every stream; only the nonce is appended per stream.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import logging
import threading
from collections.abc import AsyncIterator, Callable, Sequence

import grpc
import grpc.aio

from pilotfish.errors import RemoteProtocolError
from pilotfish.protos import ADS_SERVICE, RESOURCE_TYPES, DiscoveryRequest, ServiceMethods
from pilotfish.xds.callbacks import Callbacks, HookResult
from pilotfish.xds.events import Nacked
from pilotfish.xds.session import SotwSession
from pilotfish.xds.watch import ConfigWatcher

__all__ = ["DEFAULT_OPTIONS", "XdsServer"]

_log = logging.getLogger(__name__)

DEFAULT_OPTIONS: tuple[tuple[str, int], ...] = (
    # Envoy's node is ~60 KB and big snapshots make big responses.
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.max_send_message_length", 512 * 1024 * 1024),
    # Find dead proxies, and accept Envoy's own HTTP/2 keepalive pings (every few seconds).
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 1_000),
    ("grpc.http2.max_ping_strikes", 0),
)

_Behavior = Callable[
    [AsyncIterator[DiscoveryRequest], grpc.aio.ServicerContext[DiscoveryRequest, bytes]],
    AsyncIterator[bytes],
]


class _Stream:
    """What the server needs to reach a live stream (to wake it, or end it on shutdown)."""

    __slots__ = ("ended", "ready")

    def __init__(self) -> None:
        self.ready = asyncio.Event()
        self.ended = False


class XdsServer:
    """An xDS management server over gRPC, backed by any `ConfigWatcher` (e.g. SnapshotCache).

    Either `await start()` to run its own grpc.aio server, or `register(server)` to add the
    discovery services to a grpc.aio server you own.
    """

    def __init__(
        self,
        watcher: ConfigWatcher,
        *,
        callbacks: Callbacks | None = None,
        ordered_ads: bool = True,
        options: Sequence[tuple[str, int | str]] = DEFAULT_OPTIONS,
    ) -> None:
        self._watcher = watcher
        self._callbacks = callbacks
        self._ordered = ordered_ads
        self._options = list(options)
        self._ids = itertools.count(1)
        self._streams: dict[int, _Stream] = {}
        self._server: grpc.aio.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self.port = 0

    @property
    def stream_count(self) -> int:
        """Streams open now."""
        return len(self._streams)

    def handlers(self) -> list[grpc.GenericRpcHandler]:
        """gRPC handlers for ADS and every per-type SotW service."""
        handlers = [_service_handler(ADS_SERVICE, self._behavior(None))]
        for row in RESOURCE_TYPES.values():
            if row.service.stream is not None:
                handlers.append(_service_handler(row.service, self._behavior(row.type_url)))
        return handlers

    def register(self, server: grpc.aio.Server) -> None:
        """Add the discovery services to an existing grpc.aio server."""
        server.add_generic_rpc_handlers(self.handlers())

    async def start(self, address: str = "127.0.0.1:0") -> int:
        """Listen on `address` (plaintext); returns the bound port."""
        self._server = grpc.aio.server(options=self._options)
        self.register(self._server)
        self.port = self._server.add_insecure_port(address)
        if self.port == 0:
            raise OSError(f"cannot listen on {address}")
        self._bind_loop()
        await self._server.start()
        _log.info("xDS server listening on %s (port %d)", address, self.port)
        return self.port

    async def stop(self, grace: float = 1.0) -> None:
        """End every stream politely (status OK, so proxies reconnect), then stop listening."""
        for stream in list(self._streams.values()):
            stream.ended = True
            stream.ready.set()
        if self._server is not None:
            await self._server.stop(grace)
            self._server = None

    async def wait_closed(self) -> None:
        """Block until the server stops."""
        if self._server is not None:
            await self._server.wait_for_termination()

    def _bind_loop(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()

    def _dispatch(self, fn: Callable[[], None]) -> None:
        # Watches are answered on whatever thread set the snapshot; sessions live on the loop.
        if threading.get_ident() == self._loop_thread:
            fn()
        elif self._loop is not None:
            self._loop.call_soon_threadsafe(fn)

    def _behavior(self, type_url: str | None) -> _Behavior:
        async def behavior(
            requests: AsyncIterator[DiscoveryRequest],
            context: grpc.aio.ServicerContext[DiscoveryRequest, bytes],
        ) -> AsyncIterator[bytes]:
            async for data in self._serve_stream(requests, context, type_url):
                yield data

        return behavior

    async def _serve_stream(
        self,
        requests: AsyncIterator[DiscoveryRequest],
        context: grpc.aio.ServicerContext[DiscoveryRequest, bytes],
        type_url: str | None,
    ) -> AsyncIterator[bytes]:
        if self._loop is None:
            self._bind_loop()
        stream_id = next(self._ids)
        stream = self._streams[stream_id] = _Stream()
        session = SotwSession(
            self._watcher,
            stream_id,
            type_url,
            ordered=self._ordered,
            wakeup=stream.ready.set,
            dispatch=self._dispatch,
        )
        callbacks = self._callbacks
        if callbacks is not None:
            await _run(callbacks.on_stream_open(stream_id, type_url))
        reader = asyncio.create_task(self._read(session, stream, requests))
        try:
            while True:
                await stream.ready.wait()
                stream.ready.clear()
                if stream.ended:
                    break
                while (item := session.next_response()) is not None:
                    data, sent = item
                    if callbacks is not None:
                        node = session.protocol.node
                        assert node is not None
                        await _run(callbacks.on_stream_response(stream_id, node, sent))
                    yield data
            if reader.done() and (error := reader.exception()) is not None:
                raise error
        except RemoteProtocolError as error:
            _log.warning("stream %d: %s", stream_id, error)
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
        finally:
            reader.cancel()
            del self._streams[stream_id]
            session.close()
            if callbacks is not None:
                await _run(callbacks.on_stream_close(stream_id, session.protocol.node))

    async def _read(
        self, session: SotwSession, stream: _Stream, requests: AsyncIterator[DiscoveryRequest]
    ) -> None:
        callbacks = self._callbacks
        try:
            async for request in requests:
                if callbacks is not None:
                    await _run(callbacks.on_stream_request(session.stream_id, request))
                received = session.receive(request)
                if callbacks is not None:
                    for event in received.events:
                        if isinstance(event, Nacked):
                            node = session.protocol.node
                            assert node is not None
                            await _run(callbacks.on_nack(session.stream_id, node, event))
        finally:
            # The client closed its side (or sent garbage): end the stream.
            stream.ended = True
            stream.ready.set()


def _service_handler(methods: ServiceMethods, behavior: _Behavior) -> grpc.GenericRpcHandler:
    assert methods.stream is not None
    name = methods.stream.rsplit("/", 1)[1]
    handler: grpc.RpcMethodHandler[DiscoveryRequest, bytes] = grpc.stream_stream_rpc_method_handler(
        behavior, request_deserializer=DiscoveryRequest.FromString, response_serializer=None
    )
    return grpc.method_handlers_generic_handler(methods.service, {name: handler})


async def _run(result: HookResult) -> None:
    if result is not None and inspect.isawaitable(result):
        await result
