"""The xDS server: thin adapters from gRPC streams to `Session`s, over one of two transports.

Serves ADS and every per-type service (state-of-the-world and delta) from one `ConfigWatcher`.
Responses are written as prepared bytes (the serializer is bypassed), so a response built once is
shared by every stream; only the nonce is appended per stream.

Transports: ``"grpc"`` (grpc.aio, the default) or ``"native"`` (`pilotfish.xds.native`:
pilotfish's own HTTP/2 on asyncio, a fraction of grpc.aio's CPU per message). Both drive the
same per-stream logic (`pilotfish.xds.streams.StreamHandler`): admission, callbacks, refusals,
the debug view and heartbeats behave alike.

Securing the server itself: `credentials` (`server_credentials` for grpc, `native_tls` for the
native transport) make the port TLS, with
client certificates required by default; an `authenticator` (`pilotfish.xds.auth`) proves who
each stream's peer is before anything is read (else ``UNAUTHENTICATED``), and the node of the
stream's first request must be that identity's (else ``PERMISSION_DENIED``), checked before any
callback or the cache sees the node. Refusals are counted in `XdsServer.refused`.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import ssl
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from typing import TYPE_CHECKING, Any, Literal, NoReturn, TypeAlias

from pilotfish.errors import RemoteProtocolError
from pilotfish.protos import (
    ADS_SERVICE,
    RESOURCE_TYPES,
    DeltaDiscoveryRequest,
    DiscoveryRequest,
    ServiceMethods,
)
from pilotfish.xds.auth import Authenticator, Peer
from pilotfish.xds.callbacks import Callbacks, HookResult
from pilotfish.xds.debug import describe_session
from pilotfish.xds.native import NativeListener, native_tls
from pilotfish.xds.streams import ServerStreams, StreamHandler
from pilotfish.xds.watch import ConfigWatcher

if TYPE_CHECKING:  # grpc is imported only by the grpc transport: the native one runs without
    import grpc
    import grpc.aio

__all__ = ["DEFAULT_OPTIONS", "Transport", "XdsServer", "native_tls", "server_credentials"]

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

Transport: TypeAlias = Literal["grpc", "native"]

_Request: TypeAlias = DiscoveryRequest | DeltaDiscoveryRequest
_Context: TypeAlias = "grpc.aio.ServicerContext[_Request, bytes]"
_Behavior: TypeAlias = Callable[[AsyncIterator[_Request], _Context], AsyncIterator[bytes]]


class _GrpcStream:
    """How the grpc.aio transport wakes a stream's writer, and tells it to end."""

    __slots__ = ("ended", "ready")

    def __init__(self) -> None:
        self.ready = asyncio.Event()
        self.ended = False

    def end(self) -> None:
        self.ended = True
        self.ready.set()


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
    import grpc

    return grpc.ssl_server_credentials(
        [(key_pem, cert_pem)], root_certificates=ca_pem, require_client_auth=require_client_auth
    )


class XdsServer:
    """An xDS management server over gRPC, backed by any `ConfigWatcher` (e.g. SnapshotCache).

    Either `await start()` to run its own server, or `register(server)` to add the discovery
    services to a grpc.aio server you own (that one serves over grpc, whatever `transport`).

    `transport` picks what `start` runs: ``"grpc"`` (grpc.aio, with `options`) or ``"native"``
    (pilotfish's own HTTP/2 server; `options` do not apply). `credentials` make `start` listen
    with TLS: `grpc.ServerCredentials` for grpc (`server_credentials`), an `ssl.SSLContext` for
    native (`native_tls`). With an `authenticator`, every stream must prove an identity that may
    act as its node. `refused` counts refused streams by status code.

    `max_connection_age` (seconds, ±10% jitter) makes proxies reconnect now and then, so load
    spreads over replicas that came later: the connection gets a GOAWAY, its streams go on for
    `max_connection_age_grace` seconds, then end (status OK on native; grpc closes the
    connection) and the proxy reconnects. grpc: ``grpc.max_connection_age_ms`` and
    ``grpc.max_connection_age_grace_ms``.
    """

    def __init__(
        self,
        watcher: ConfigWatcher,
        *,
        callbacks: Callbacks | None = None,
        ordered_ads: bool = True,
        heartbeat_interval: float | None = None,
        options: Sequence[tuple[str, int | str]] = DEFAULT_OPTIONS,
        credentials: grpc.ServerCredentials | ssl.SSLContext | None = None,
        authenticator: Authenticator | None = None,
        transport: Transport = "grpc",
        max_connection_age: float | None = None,
        max_connection_age_grace: float = 5.0,
    ) -> None:
        if transport not in ("grpc", "native"):
            raise ValueError(f"transport must be 'grpc' or 'native', not {transport!r}")
        if max_connection_age is not None and max_connection_age <= 0:
            raise ValueError("max_connection_age must be positive (or None: no maximum)")
        if max_connection_age_grace < 0:
            raise ValueError("max_connection_age_grace must not be negative")
        if transport == "native" and not isinstance(credentials, ssl.SSLContext | None):
            raise TypeError("the native transport takes an ssl.SSLContext (see native_tls)")
        if transport == "grpc" and isinstance(credentials, ssl.SSLContext):
            raise TypeError("the grpc transport takes grpc.ServerCredentials")
        self._watcher = watcher
        self._credentials = credentials
        self._authenticator = authenticator
        self._callbacks = callbacks
        self._streams = ServerStreams(
            watcher,
            callbacks=callbacks,
            ordered=ordered_ads,
            authenticator=authenticator,
            dispatch=self._dispatch,
        )
        self.transport: Transport = transport
        self._heartbeat_interval = heartbeat_interval
        self._heartbeat_task: asyncio.Task[None] | None = None
        self._options = list(options)
        if max_connection_age is not None:
            self._options += [
                ("grpc.max_connection_age_ms", max(1, round(max_connection_age * 1000))),
                ("grpc.max_connection_age_grace_ms", round(max_connection_age_grace * 1000)),
            ]
        self._max_connection_age = max_connection_age
        self._max_connection_age_grace = max_connection_age_grace
        self._server: grpc.aio.Server | None = None
        self._native: NativeListener | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self._host = "127.0.0.1"
        self._foreign: list[Callable[[], None]] = []
        self._foreign_lock = threading.Lock()
        self.port = 0

    @property
    def refused(self) -> dict[grpc.StatusCode, int]:
        """Streams refused so far, by the status they were ended with."""
        return {_grpc_code(status): count for status, count in self._streams.refused.items()}

    @property
    def address(self) -> tuple[str, int]:
        """The (host, port) proxies connect to, once started (what `envoy_bootstrap` takes)."""
        return self._host, self.port

    async def __aenter__(self) -> XdsServer:
        if self._server is None and self._native is None:
            await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def describe_streams(self) -> list[dict[str, Any]]:
        """Per open stream: node, subscriptions, sent/ACKed versions, last NACK (JSON-able)."""
        return [
            describe_session(handler.session)
            for handler in list(self._streams.live.values())
            if handler.session is not None
        ]

    @property
    def stream_count(self) -> int:
        """Streams open now."""
        return len(self._streams.live)

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
        self._host = address.rpartition(":")[0].strip("[]") or "127.0.0.1"
        self._bind_loop()
        if self.transport == "native":
            tls = self._credentials
            assert tls is None or isinstance(tls, ssl.SSLContext)
            self._native = NativeListener(
                self._streams,
                tls=tls,
                max_connection_age=self._max_connection_age,
                max_connection_age_grace=self._max_connection_age_grace,
            )
            self.port = await self._native.start(address)
        else:
            import grpc.aio

            self._server = grpc.aio.server(options=self._options)
            self.register(self._server)
            if isinstance(self._credentials, grpc.ServerCredentials):
                self.port = self._server.add_secure_port(address, self._credentials)
            else:
                self.port = self._server.add_insecure_port(address)
            if self.port == 0:
                raise OSError(f"cannot listen on {address}")
            await self._server.start()
        if self._heartbeat_interval:
            self._heartbeat_task = asyncio.create_task(self._heartbeats(self._heartbeat_interval))
        _log.info("xDS server (%s) listening on %s (port %d)", self.transport, address, self.port)
        return self.port

    async def stop(self, grace: float = 1.0) -> None:
        """End every stream politely (status OK, so proxies reconnect), then stop listening."""
        if self._heartbeat_task is not None:
            self._heartbeat_task.cancel()
            self._heartbeat_task = None
        if self._native is not None:
            await self._native.stop(grace)
            self._native = None
        for handler in list(self._streams.live.values()):
            handler.end()
        if self._server is not None:
            await self._server.stop(grace)
            self._server = None

    async def wait_closed(self) -> None:
        """Block until the server stops."""
        if self._native is not None:
            await self._native.wait_closed()
        elif self._server is not None:
            await self._server.wait_for_termination()

    async def _heartbeats(self, interval: float) -> None:
        # Resources with a TTL expire in the client unless heard of again: refresh them.
        while True:
            await asyncio.sleep(interval)
            for handler in list(self._streams.live.values()):
                if handler.session is not None:
                    handler.session.heartbeat()

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

    # -- the grpc.aio transport ------------------------------------------------------------------

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
        handler = StreamHandler(self._streams, type_url, delta)
        if not handler.authenticate(
            lambda: Peer.of(context.auth_context(), context.invocation_metadata())
        ):
            await self._refuse(context, handler)
        stream = _GrpcStream()
        reader: asyncio.Task[None] | None = None
        try:
            for result in handler.open(stream.ready.set, stream):
                await _run(result)
            reader = asyncio.create_task(self._read(handler, stream, requests))
            while True:
                await stream.ready.wait()
                stream.ready.clear()
                if stream.ended:
                    break
                while (item := handler.next_response()) is not None:
                    data, result = item
                    await _run(result)
                    yield data
            if reader.done() and (error := reader.exception()) is not None:
                raise error
            if handler.refusal is not None:
                await self._refuse(context, handler)
        except RemoteProtocolError as error:
            _log.warning("stream %d: %s", handler.stream_id, error)
            import grpc

            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
        finally:
            if reader is not None:
                reader.cancel()
            for result in handler.close():
                await _run(result)

    async def _refuse(self, context: _Context, handler: StreamHandler) -> NoReturn:
        assert handler.refusal is not None
        for result in handler.refuse():
            await _run(result)
        status, reason = handler.refusal
        await context.abort(_grpc_code(status), reason)

    async def _read(
        self, handler: StreamHandler, stream: _GrpcStream, requests: AsyncIterator[_Request]
    ) -> None:
        try:
            async for request in requests:
                results = handler.receive(request)
                if results is not None:
                    for result in results:
                        await _run(result)
                if handler.refusal is not None:
                    return
        finally:
            # The client closed its side (or sent garbage): end the stream.
            stream.end()


def _service_handler(
    methods: ServiceMethods,
    behavior: Callable[[str | None, bool], _Behavior],
    type_url: str | None = None,
) -> grpc.GenericRpcHandler:
    import grpc

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


def _grpc_code(status: int) -> grpc.StatusCode:
    """grpc's enum member for a gRPC status number."""
    import grpc

    return next(code for code in grpc.StatusCode if code.value[0] == status)


async def _run(result: HookResult) -> None:
    if result is not None and inspect.isawaitable(result):
        await result
