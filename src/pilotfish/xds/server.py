"""The grpc.aio xDS server: thin adapters from gRPC streams to `Session`s.

Serves ADS and every per-type state-of-the-world service from one `ConfigWatcher`. Responses are
written as prepared bytes (the serializer is bypassed), so a response built once is shared by
every stream; only the nonce is appended per stream.

Securing the server itself: `credentials` (see `server_credentials`) make the port TLS, with
client certificates required by default; an `authenticator` (`pilotfish.xds.auth`) proves who
each stream's peer is before anything is read (else ``UNAUTHENTICATED``), and the node of the
stream's first request must be that identity's (else ``PERMISSION_DENIED``), checked before any
callback or the cache sees the node. Refusals are counted in `XdsServer.refused`.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, NoReturn, TypeAlias

import grpc
import grpc.aio

from pilotfish.errors import RemoteProtocolError
from pilotfish.protos import (
    ADS_SERVICE,
    RESOURCE_TYPES,
    DeltaDiscoveryRequest,
    DiscoveryRequest,
    ServiceMethods,
)
from pilotfish.xds.auth import AuthenticationError, Authenticator, Identity, NodeOwners, Peer
from pilotfish.xds.auth import authorize as _authorize
from pilotfish.xds.callbacks import Callbacks, HookResult
from pilotfish.xds.debug import describe_session
from pilotfish.xds.events import Nacked
from pilotfish.xds.session import Session, new_stream_id
from pilotfish.xds.watch import ConfigWatcher

__all__ = ["DEFAULT_OPTIONS", "XdsServer", "server_credentials"]

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

_Request: TypeAlias = DiscoveryRequest | DeltaDiscoveryRequest
_Context: TypeAlias = grpc.aio.ServicerContext[_Request, bytes]
_Behavior = Callable[[AsyncIterator[_Request], _Context], AsyncIterator[bytes]]


class _Stream:
    """What the server needs to reach a live stream (to wake it, beat it, or end it)."""

    __slots__ = ("claimed", "ended", "ready", "refusal", "session")

    def __init__(self) -> None:
        self.ready = asyncio.Event()
        self.ended = False
        self.session: Session | None = None
        self.refusal: tuple[grpc.StatusCode, str] | None = None
        self.claimed: str | None = None  # the node id this stream holds in `NodeOwners`


def server_credentials(
    cert_pem: bytes,
    key_pem: bytes,
    ca_pem: bytes | None = None,
    *,
    require_client_auth: bool = True,
) -> grpc.ServerCredentials:
    """TLS for the xDS port: the server's certificate chain and key, and the CA (PEM) that
    signs client certificates, which are required unless `require_client_auth` is False."""
    if require_client_auth and not ca_pem:
        raise ValueError("require_client_auth needs ca_pem, the CA of the client certificates")
    return grpc.ssl_server_credentials(
        [(key_pem, cert_pem)], root_certificates=ca_pem, require_client_auth=require_client_auth
    )


class XdsServer:
    """An xDS management server over gRPC, backed by any `ConfigWatcher` (e.g. SnapshotCache).

    Either `await start()` to run its own grpc.aio server, or `register(server)` to add the
    discovery services to a grpc.aio server you own.

    `credentials` make `start` listen with TLS; with an `authenticator`, every stream must prove
    an identity that may act as its node. `refused` counts refused streams by status code.
    """

    def __init__(
        self,
        watcher: ConfigWatcher,
        *,
        callbacks: Callbacks | None = None,
        ordered_ads: bool = True,
        heartbeat_interval: float | None = None,
        options: Sequence[tuple[str, int | str]] = DEFAULT_OPTIONS,
        credentials: grpc.ServerCredentials | None = None,
        authenticator: Authenticator | None = None,
    ) -> None:
        self._watcher = watcher
        self._credentials = credentials
        self._authenticator = authenticator
        self._owners = NodeOwners()
        self.refused: dict[grpc.StatusCode, int] = {}
        self._callbacks = callbacks
        self._ordered = ordered_ads
        self._heartbeat_interval = heartbeat_interval
        self._heartbeat_task: asyncio.Task[None] | None = None
        self._options = list(options)
        self._streams: dict[int, _Stream] = {}
        self._server: grpc.aio.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self._host = "127.0.0.1"
        self._foreign: list[Callable[[], None]] = []
        self._foreign_lock = threading.Lock()
        self.port = 0

    @property
    def address(self) -> tuple[str, int]:
        """The (host, port) proxies connect to, once started (what `envoy_bootstrap` takes)."""
        return self._host, self.port

    async def __aenter__(self) -> XdsServer:
        if self._server is None:
            await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def describe_streams(self) -> list[dict[str, Any]]:
        """Per open stream: node, subscriptions, sent/ACKed versions, last NACK (JSON-able)."""
        return [
            describe_session(stream.session)
            for stream in list(self._streams.values())
            if stream.session is not None
        ]

    @property
    def stream_count(self) -> int:
        """Streams open now."""
        return len(self._streams)

    def handlers(self) -> list[grpc.GenericRpcHandler]:
        """gRPC handlers for ADS and every per-type service, SotW and delta."""
        handlers = [_service_handler(ADS_SERVICE, self._behavior)]
        for row in RESOURCE_TYPES.values():
            handlers.append(_service_handler(row.service, self._behavior, row.type_url))
        return handlers

    def register(self, server: grpc.aio.Server) -> None:
        """Add the discovery services to an existing grpc.aio server."""
        server.add_generic_rpc_handlers(self.handlers())

    async def start(self, address: str = "127.0.0.1:0") -> int:
        """Listen on `address` (TLS if the server has credentials, else plaintext); returns the
        bound port."""
        self._server = grpc.aio.server(options=self._options)
        self.register(self._server)
        if self._credentials is not None:
            self.port = self._server.add_secure_port(address, self._credentials)
        else:
            self.port = self._server.add_insecure_port(address)
        self._host = address.rpartition(":")[0].strip("[]") or "127.0.0.1"
        if self.port == 0:
            raise OSError(f"cannot listen on {address}")
        self._bind_loop()
        await self._server.start()
        if self._heartbeat_interval:
            self._heartbeat_task = asyncio.create_task(self._heartbeats(self._heartbeat_interval))
        _log.info("xDS server listening on %s (port %d)", address, self.port)
        return self.port

    async def stop(self, grace: float = 1.0) -> None:
        """End every stream politely (status OK, so proxies reconnect), then stop listening."""
        if self._heartbeat_task is not None:
            self._heartbeat_task.cancel()
            self._heartbeat_task = None
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

    async def _heartbeats(self, interval: float) -> None:
        # Resources with a TTL expire in the client unless heard of again: refresh them.
        while True:
            await asyncio.sleep(interval)
            for stream in list(self._streams.values()):
                if stream.session is not None:
                    stream.session.heartbeat()

    def _bind_loop(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()

    def _dispatch(self, fn: Callable[[], None]) -> None:
        # Watches are answered on whatever thread set the snapshot; sessions live on the loop.
        # From another thread, answers are batched: one loop wake-up per burst, not per stream.
        if threading.get_ident() == self._loop_thread:
            fn()
            return
        with self._foreign_lock:
            self._foreign.append(fn)
            if len(self._foreign) > 1:
                return
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._run_foreign)

    def _run_foreign(self) -> None:
        with self._foreign_lock:
            calls, self._foreign = self._foreign, []
        for fn in calls:
            fn()

    def _behavior(self, type_url: str | None, delta: bool) -> _Behavior:
        async def behavior(
            requests: AsyncIterator[_Request], context: _Context
        ) -> AsyncIterator[bytes]:
            async for data in self._serve_stream(requests, context, type_url, delta):
                yield data

        return behavior

    async def _serve_stream(
        self,
        requests: AsyncIterator[_Request],
        context: _Context,
        type_url: str | None,
        delta: bool,
    ) -> AsyncIterator[bytes]:
        if self._loop is None:
            self._bind_loop()
        stream_id = new_stream_id()
        identity: Identity | None = None
        if self._authenticator is not None:
            try:
                identity = self._authenticator.authenticate(
                    Peer.of(context.auth_context(), context.invocation_metadata())
                )
            except AuthenticationError as unknown:
                reason = str(unknown)
                await self._refuse(context, stream_id, grpc.StatusCode.UNAUTHENTICATED, reason)
        stream = self._streams[stream_id] = _Stream()
        session = Session(
            self._watcher,
            stream_id,
            type_url,
            delta=delta,
            ordered=self._ordered,
            wakeup=stream.ready.set,
            dispatch=self._dispatch,
        )
        stream.session = session
        callbacks = self._callbacks
        if callbacks is not None:
            await _run(callbacks.on_stream_open(stream_id, type_url))
        reader = asyncio.create_task(self._read(session, stream, requests, identity))
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
            if stream.refusal is not None:
                await self._refuse(context, stream_id, *stream.refusal)
        except RemoteProtocolError as error:
            _log.warning("stream %d: %s", stream_id, error)
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
        finally:
            reader.cancel()
            del self._streams[stream_id]
            session.close()
            if callbacks is not None:
                await _run(callbacks.on_stream_close(stream_id, session.protocol.node))
            # Last: the node id is free only once callbacks (a controller) know the node left.
            if stream.claimed is not None and identity is not None:
                self._owners.release(stream.claimed, identity)

    async def _refuse(
        self, context: _Context, stream_id: int, code: grpc.StatusCode, reason: str
    ) -> NoReturn:
        self.refused[code] = self.refused.get(code, 0) + 1
        _log.warning("stream %d refused (%s): %s", stream_id, code.name, reason)
        if self._callbacks is not None:
            await _run(self._callbacks.on_stream_refused(stream_id, reason, code.name))
        await context.abort(code, reason)

    def _admit(self, stream: _Stream, identity: Identity, request: _Request) -> bool:
        # The first request carries the node; later nodes are ignored by the protocol core.
        node = request.node
        reason = _authorize(identity, node) or self._owners.claim(node.id, identity)
        if reason is not None:
            stream.refusal = (grpc.StatusCode.PERMISSION_DENIED, reason)
            return False
        stream.claimed = node.id
        return True

    async def _read(
        self,
        session: Session,
        stream: _Stream,
        requests: AsyncIterator[_Request],
        identity: Identity | None,
    ) -> None:
        callbacks = self._callbacks
        try:
            async for request in requests:
                if identity is not None:
                    if not self._admit(stream, identity, request):
                        return
                    identity = None  # admitted: the node is settled
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


def _service_handler(
    methods: ServiceMethods,
    behavior: Callable[[str | None, bool], _Behavior],
    type_url: str | None = None,
) -> grpc.GenericRpcHandler:
    handlers: dict[str, grpc.RpcMethodHandler[_Request, bytes]] = {}
    for path, delta, request in (
        (methods.stream, False, DiscoveryRequest),
        (methods.delta, True, DeltaDiscoveryRequest),
    ):
        if path is not None:
            handlers[path.rsplit("/", 1)[1]] = grpc.stream_stream_rpc_method_handler(
                behavior(type_url, delta),
                request_deserializer=request.FromString,
                response_serializer=None,
            )
    return grpc.method_handlers_generic_handler(methods.service, handlers)


async def _run(result: HookResult) -> None:
    if result is not None and inspect.isawaitable(result):
        await result
