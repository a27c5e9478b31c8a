"""pilotfish's own gRPC transport for xDS: HTTP/2 on asyncio, one `asyncio.Protocol` per
connection, no task and no call object per stream.

Why: in grpc.aio about half of a push's CPU is grpc's own machinery (a poller thread waking the
event loop per completion, a task per call, per-message hand-offs). Here bytes read go through
`ServerConnection` (sans-IO, `pilotfish.xds.http2`); each request is decoded and handed to its
stream's `StreamHandler` (the same per-stream logic as the grpc.aio transport); then every
stream with pending responses is drained and the connection's frames leave in one vectored
write (``transport.writelines``: a response body shared by every stream is not copied into a
joined buffer per stream). Watch answers (possibly from other threads, hopped onto the loop by
`XdsServer`) mark their stream dirty, and one flush per loop iteration drains all dirty streams.

Callback ordering: plain hooks run inline, in protocol order. A hook that returns an awaitable
has it scheduled as a task, so its body runs after the step it reports (an async
`on_stream_request` sees the request after the protocol core took it; an async
`on_stream_response` after the response was queued). Only `on_stream_close` keeps its place:
the node id is released once its awaitable finished.

Plain TCP connections are accepted and carried by `pilotfish.xds.tcp` (no asyncio task or
general-purpose transport per connection); TLS ones by asyncio's. TLS: pass an `ssl.SSLContext`
(`native_tls`); client certificates reach authenticators through `Peer.from_tls`. Keepalive is
the client's: PINGs are answered, none are sent.

Maximum connection age (as grpc's ``grpc.max_connection_age_ms``): a connection older than the
age (give or take 10%, so a fleet that connected together does not reconnect together) gets a
GOAWAY, and once the grace is over too its streams end with status OK and it closes. Proxies
then reconnect, possibly to another replica behind the same address: load spreads again after
replicas come and go.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import inspect
import logging
import os
import random
import ssl
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any, cast

from google.protobuf.message import DecodeError

from pilotfish.errors import RemoteProtocolError
from pilotfish.protos import ADS_SERVICE, RESOURCE_TYPES, DeltaDiscoveryRequest, DiscoveryRequest
from pilotfish.xds.auth import Peer
from pilotfish.xds.callbacks import HookResult
from pilotfish.xds.http2 import (
    ConnectionTerminated,
    GrpcStatus,
    MessageReceived,
    RequestReceived,
    ServerConnection,
    StreamClosed,
    StreamEnded,
)
from pilotfish.xds.streams import Request, ServerStreams, StreamHandler
from pilotfish.xds.tcp import PlainListener

__all__ = ["NativeListener", "native_tls", "parse_address"]

_log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class _Method:
    type_url: str | None  # None: ADS
    delta: bool
    decode: Callable[[bytes], Request]


def _methods() -> dict[str, _Method]:
    table: dict[str, _Method] = {}
    services = [(ADS_SERVICE, None), *((r.service, r.type_url) for r in RESOURCE_TYPES.values())]
    for service, type_url in services:
        if service.stream is not None:
            table[service.stream] = _Method(type_url, False, DiscoveryRequest.FromString)
        if service.delta is not None:
            table[service.delta] = _Method(type_url, True, DeltaDiscoveryRequest.FromString)
    return table


def native_tls(
    cert_pem: bytes,
    key_pem: bytes,
    ca_pem: bytes | None = None,
    *,
    require_client_auth: bool = True,
) -> ssl.SSLContext:
    """TLS for the native transport (what `server_credentials` is for grpc): the server's
    certificate chain and key, and the CA (PEM) that signs client certificates, which are
    required unless `require_client_auth` is False. Negotiates ALPN ``h2``."""
    if require_client_auth and not ca_pem:
        raise ValueError("require_client_auth needs ca_pem, the CA of the client certificates")
    # Imported here: a server without TLS saves their 1.2 MB of RSS.
    import tempfile
    from pathlib import Path

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    with tempfile.TemporaryDirectory(prefix="pilotfish-tls-") as tmp:
        # The ssl module loads a certificate chain from files only.
        cert, key = Path(tmp) / "cert.pem", Path(tmp) / "key.pem"
        cert.write_bytes(cert_pem)
        key.touch(mode=0o600)
        key.write_bytes(key_pem)
        context.load_cert_chain(cert, key)
    if ca_pem:
        context.load_verify_locations(cadata=ca_pem.decode())
    if require_client_auth:
        context.verify_mode = ssl.CERT_REQUIRED
    else:
        context.verify_mode = ssl.CERT_OPTIONAL if ca_pem else ssl.CERT_NONE
    context.set_alpn_protocols(["h2"])
    return context


def parse_address(address: str) -> tuple[str | None, int]:
    """``host:port`` (``[v6]:port`` too) as grpc takes it; an empty host, ``[::]`` or ``*``
    mean every interface (None)."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"not host:port: {address!r}")
    host = host.strip("[]")
    return (None if host in ("", "::", "*") else host), int(port)


def _metadata(headers: list[tuple[str, str]]) -> tuple[tuple[str, str | bytes], ...]:
    # gRPC metadata: binary values (`-bin` keys) travel base64-encoded, unpadded or padded.
    out: list[tuple[str, str | bytes]] = []
    for name, value in headers:
        if name.endswith("-bin"):
            with contextlib.suppress(ValueError):
                out.append((name, base64.b64decode(value + "=" * (-len(value) % 4))))
        else:
            out.append((name, value))
    return tuple(out)


class _Stream:
    """One open xDS stream on a connection."""

    __slots__ = ("conn", "decode", "dirty", "h2_id", "handler")

    def __init__(
        self, conn: _Connection, h2_id: int, handler: StreamHandler, method: _Method
    ) -> None:
        self.conn = conn
        self.h2_id = h2_id
        self.handler = handler
        self.decode = method.decode
        self.dirty = False  # listed in conn.dirty, to be drained

    def __call__(self) -> None:
        """Wake up: responses are pending (the session's `wakeup`; the stream itself, as a bound
        method would cost 64 B a stream)."""
        if not self.dirty:
            self.dirty = True
            self.conn.mark_dirty(self)

    def end(self) -> None:
        conn = self.conn
        conn.finish(self, GrpcStatus.OK)
        conn.schedule()


_CLEAN: list[_Stream] = []
"""`_Connection.dirty` of every connection with no dirty stream; never appended to."""
_NO_MORE: dict[int, _Stream] = {}
"""`_Connection.more` of every connection with one stream or none; never written."""

_READ_SIZE = 256 * 1024
_CLOSE_WAIT = 1.0
"""Seconds a connection whose streams were ended gets to hang up before it is dropped."""


class _Connection(asyncio.BufferedProtocol):
    """One client connection: HTTP/2 in and out, and its open streams by HTTP/2 stream id:
    the first in `one`, others in `more` (a proxy's ADS connection has one stream, and a dict
    of one is 224 B).

    A buffered protocol: asyncio reads into the listener's one read buffer (``recv_into``)
    instead of allocating a 256 KiB bytes object per read (``recv``), which costs ~15 µs per
    read here, more than handling the ACK in it.
    """

    __slots__ = (
        "dirty",
        "h2",
        "listener",
        "lost",
        "more",
        "one",
        "paused",
        "scheduled",
        "stopping",
        "timer",
        "transport",
    )

    def __init__(self, listener: NativeListener) -> None:
        self.listener = listener
        self.h2 = ServerConnection()
        self.one: _Stream | None = None
        self.more = _NO_MORE
        self.dirty = _CLEAN
        self.scheduled = False  # in the listener's flush list
        self.paused = False
        self.lost = False
        self.stopping = False  # GOAWAY sent: close once the client ended every stream
        self.transport: asyncio.Transport | None = None
        self.timer: asyncio.TimerHandle | None = None  # the next step of ageing out

    # -- asyncio.Protocol ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        listener = self.listener
        listener.connections.add(self)
        # Our preface waits for the first read, which always comes (the client sends its own
        # preface without waiting for ours) and is answered in one write with it: a fleet
        # connecting costs one send per connection fewer.
        self.h2.initiate()
        if listener.max_connection_age is not None:
            age = listener.max_connection_age * random.uniform(0.9, 1.1)
            self.timer = listener.loop.call_later(age, self.age_out)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.listener.read_buffer

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(bytes(self.listener.read_buffer[:nbytes]))

    def eof_received(self) -> bool | None:
        return None  # close the transport

    def data_received(self, data: bytes) -> None:
        """Handle bytes read: every event, then drain dirty streams and write once."""
        scheduled, self.scheduled = self.scheduled, True  # drained below, not in a flush
        try:
            for event in self.h2.receive(data):
                if isinstance(event, MessageReceived):
                    self._on_message(event)
                elif isinstance(event, RequestReceived):
                    self._on_request(event)
                elif isinstance(event, StreamEnded):
                    # The client half-closed: end the call, as a grpc server does.
                    stream = self.stream(event.stream_id)
                    if stream is not None:
                        self.finish(stream, GrpcStatus.OK)
                elif isinstance(event, StreamClosed):
                    self._on_closed(event)
                else:
                    self._on_terminated(event)
            self.drain()
        finally:
            self.scheduled = scheduled

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.listener.connections.discard(self)
        for stream in self.take_streams():
            self.listener.run_in_order(stream.handler.close())
        self.dirty = _CLEAN
        self.listener.maybe_idle()

    def pause_writing(self) -> None:
        # The client reads slowly: keep responses in the sessions (latest wins) until it
        # catches up, rather than queueing them in the transport.
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        if self.dirty:
            self.schedule()

    # -- streams -------------------------------------------------------------------------------

    def stream(self, h2_id: int) -> _Stream | None:
        """The open stream of that HTTP/2 id."""
        one = self.one
        if one is not None and one.h2_id == h2_id:
            return one
        return self.more.get(h2_id)

    def add_stream(self, stream: _Stream) -> None:
        if self.one is None:
            self.one = stream
        else:
            if self.more is _NO_MORE:
                self.more = {}
            self.more[stream.h2_id] = stream

    def remove_stream(self, h2_id: int) -> _Stream | None:
        """Forget a stream; returns it, or None if it was not open."""
        one = self.one
        if one is not None and one.h2_id == h2_id:
            self.one = None
            return one
        more = self.more
        stream = more.pop(h2_id, None) if more else None
        if stream is not None and not more:
            self.more = _NO_MORE
        return stream

    def all_streams(self) -> list[_Stream]:
        """Every open stream (not `h2.open_streams`, the HTTP/2 layer's count)."""
        streams = [] if self.one is None else [self.one]
        streams += self.more.values()
        return streams

    def take_streams(self) -> list[_Stream]:
        """Forget every stream; returns them."""
        streams = self.all_streams()
        self.one, self.more = None, _NO_MORE
        return streams

    def mark_dirty(self, stream: _Stream) -> None:
        if self.dirty is _CLEAN:
            self.dirty = [stream]
        else:
            self.dirty.append(stream)
        self.schedule()

    def schedule(self) -> None:
        """Have the listener's next flush drain this connection."""
        if not self.scheduled:
            self.scheduled = True
            self.listener.schedule(self)

    def drain(self) -> None:
        """Queue every pending response of the dirty streams, then write once."""
        if self.lost:
            return
        h2 = self.h2
        if self.dirty and not self.paused:
            dirty, self.dirty = self.dirty, _CLEAN
            spawn = self.listener.spawn
            for stream in dirty:
                if self.stream(stream.h2_id) is not stream:
                    continue
                handler = stream.handler
                try:
                    while (item := handler.next_parts()) is not None:
                        body, nonce, result = item
                        if result is not None:
                            spawn(result)
                        h2.send_message(stream.h2_id, body, nonce)
                except Exception:
                    _log.exception("stream %d: cannot send", handler.stream_id)
                    self.finish(stream, GrpcStatus.INTERNAL, "internal error")
                finally:
                    stream.dirty = False
        out = h2.buffers_to_send()
        transport = self.transport
        assert transport is not None
        if len(out) > 1:
            transport.writelines(out)  # one vectored write: shared bodies are not joined
        elif out:
            transport.write(out[0])
        if h2.closed or (self.stopping and not h2.open_streams):
            transport.close()

    def finish(self, stream: _Stream, status: int, message: str = "") -> None:
        """End a stream with trailers and close its handler (the caller writes)."""
        if self.remove_stream(stream.h2_id) is None:
            return
        self.h2.end_stream(stream.h2_id, status, message)
        self.listener.run_in_order(stream.handler.close())

    def shutdown(self) -> None:
        """GOAWAY, then end every stream with status OK (proxies reconnect), and write."""
        if self.lost:
            return
        self.stopping = True
        self.h2.goaway()
        for stream in self.all_streams():
            self.finish(stream, GrpcStatus.OK)
        self.dirty = _CLEAN
        self.drain()

    def age_out(self) -> None:
        """The connection reached its maximum age: GOAWAY (its streams go on, no new one is
        served; it closes once they are over), and the grace period starts."""
        self.timer = None
        if self.lost or self.stopping:
            return
        self.stopping = True
        self.h2.goaway()
        self.drain()
        if not self.lost:
            grace = self.listener.max_connection_age_grace
            self.timer = self.listener.loop.call_later(grace, self.expire)

    def expire(self) -> None:
        """The grace is over: end the streams left with status OK, and close."""
        self.shutdown()
        self.timer = None if self.lost else self.listener.loop.call_later(_CLOSE_WAIT, self.abort)

    def abort(self) -> None:
        """Drop a connection whose client did not hang up in time."""
        self.timer = None
        if not self.lost and self.transport is not None:
            self.transport.abort()

    def _on_request(self, event: RequestReceived) -> None:
        listener = self.listener
        method = listener.methods.get(event.path)
        if method is None:
            self.h2.end_stream(
                event.stream_id, GrpcStatus.UNIMPLEMENTED, f"unknown method {event.path}"
            )
            return
        handler = StreamHandler(listener.streams, method.type_url, method.delta)
        if not handler.authenticate(lambda: self._peer(event.headers)):
            self._refuse(event.stream_id, handler)
            return
        stream = _Stream(self, event.stream_id, handler, method)
        self.add_stream(stream)
        listener.run(handler.open(stream, stream))

    def _on_message(self, event: MessageReceived) -> None:
        stream = self.stream(event.stream_id)
        if stream is None:
            return
        handler = stream.handler
        try:
            data = event.data
            acked = handler.receive_ack(data)
            if acked is not None:
                self.listener.run(iter(acked))
                return
            data = handler.lighten(data)
            results = handler.receive(stream.decode(data), data)
            if results is not None:
                self.listener.run(results)
        except DecodeError:
            self.finish(stream, GrpcStatus.INTERNAL, "cannot parse the request message")
            return
        except RemoteProtocolError as error:
            _log.warning("stream %d: %s", handler.stream_id, error)
            self.finish(stream, GrpcStatus.INVALID_ARGUMENT, str(error))
            return
        except Exception:
            _log.exception("stream %d: cannot handle a request", handler.stream_id)
            self.finish(stream, GrpcStatus.UNKNOWN, "internal error")
            return
        if handler.refusal is not None:
            self.remove_stream(event.stream_id)
            self._refuse(event.stream_id, handler)
            self.listener.run_in_order(handler.close())

    def _refuse(self, h2_id: int, handler: StreamHandler) -> None:
        assert handler.refusal is not None
        self.listener.run(handler.refuse())
        code, reason = handler.refusal
        self.h2.end_stream(h2_id, code, reason)

    def _on_closed(self, event: StreamClosed) -> None:
        stream = self.remove_stream(event.stream_id)
        if stream is not None:
            self.listener.run_in_order(stream.handler.close())

    def _on_terminated(self, event: ConnectionTerminated) -> None:
        if event.remote and event.error_code == 0:
            return  # a polite GOAWAY: the client ends its streams and closes
        _log.info("connection ends (%s)", event)
        for stream in self.take_streams():
            self.listener.run_in_order(stream.handler.close())
        if event.remote:
            self.h2.closed = True  # nothing more to read; drain() closes the transport

    def _peer(self, headers: list[tuple[str, str]]) -> Peer:
        assert self.transport is not None
        metadata = _metadata(headers)
        tls = self.transport.get_extra_info("ssl_object")
        if tls is None:
            return Peer({"transport_security_type": (b"insecure",)}, metadata)
        return Peer.from_tls(tls.getpeercert(binary_form=True), metadata)


class NativeListener:
    """The listening socket, its connections, and the one flush per loop iteration that drains
    every dirty stream (see the module docstring)."""

    def __init__(
        self,
        streams: ServerStreams,
        *,
        tls: ssl.SSLContext | None = None,
        max_connection_age: float | None = None,
        max_connection_age_grace: float = 5.0,
    ) -> None:
        if max_connection_age is not None and max_connection_age <= 0:
            raise ValueError("max_connection_age must be positive (or None: no maximum)")
        if max_connection_age_grace < 0:
            raise ValueError("max_connection_age_grace must not be negative")
        self.streams = streams
        self.max_connection_age = max_connection_age
        self.max_connection_age_grace = max_connection_age_grace
        self.methods = _methods()
        # Shared by every connection: the loop reads into it and we copy out at once.
        self.read_buffer = memoryview(bytearray(_READ_SIZE))
        self.connections: set[_Connection] = set()
        self._tls = tls
        self._server: asyncio.Server | PlainListener | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: list[_Connection] = []
        self._flush_scheduled = False
        self._tasks: set[asyncio.Future[Any]] = set()
        self._idle: asyncio.Event | None = None
        self._closed: asyncio.Event | None = None

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The loop the listener runs on."""
        return self._loop or asyncio.get_running_loop()

    async def start(self, address: str) -> int:
        """Listen on `address` (port 0: any free port); returns the bound port."""
        host, port = parse_address(address)
        loop = self._loop = asyncio.get_running_loop()
        self._closed = asyncio.Event()
        server = await self._listen(host, port)
        ports = {sock.getsockname()[1] for sock in server.sockets}
        if len(ports) > 1:  # port 0 on several addresses: make them all agree
            port = server.sockets[0].getsockname()[1]
            server.close()
            await server.wait_closed()
            server = await self._listen(host, port)
        self._server = server
        assert loop is not None
        bound: int = server.sockets[0].getsockname()[1]
        return bound

    async def _listen(self, host: str | None, port: int) -> asyncio.Server | PlainListener:
        assert self._loop is not None
        if self._tls is None and os.name == "posix":  # plain TCP: pilotfish's lean transport
            return PlainListener(
                self._loop, lambda: _Connection(self), host, port, reuse_port=True, backlog=4096
            )
        return await self._loop.create_server(
            lambda: _Connection(self),
            host,
            port,
            reuse_port=os.name == "posix",
            ssl=self._tls,
            backlog=4096,
        )

    async def stop(self, grace: float) -> None:
        """Stop accepting; GOAWAY and status OK on every stream; wait up to `grace` seconds
        for clients to hang up, then close the rest."""
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            conn.shutdown()
        if self.connections and grace > 0:
            self._idle = asyncio.Event()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), grace)
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.close()
        if self.connections:
            self._idle = asyncio.Event()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), 1.0)
            for conn in list(self.connections):
                if conn.transport is not None:
                    conn.transport.abort()
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None
        if self._closed is not None:
            self._closed.set()

    async def wait_closed(self) -> None:
        """Block until `stop` finished."""
        if self._closed is not None:
            await self._closed.wait()

    def maybe_idle(self) -> None:
        """A connection left: wake `stop` if it was the last."""
        if not self.connections and self._idle is not None:
            self._idle.set()

    def schedule(self, conn: _Connection) -> None:
        """Drain `conn` in the next flush; one flush per loop iteration for every connection."""
        self._pending.append(conn)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        pending, self._pending = self._pending, []
        for conn in pending:
            conn.scheduled = False
            conn.drain()

    def spawn(self, result: HookResult) -> None:
        """Run a hook's awaitable result as a task (plain results are done already)."""
        if result is not None and inspect.isawaitable(result):
            self._track(asyncio.ensure_future(result))

    def run(self, steps: Iterator[HookResult]) -> None:
        """Run a handler step, scheduling awaitable hook results as tasks."""
        for result in steps:
            if result is not None:
                self.spawn(result)

    def run_in_order(self, steps: Iterator[HookResult]) -> None:
        """Run a handler step; at the first awaitable hook result, the rest of the step waits
        for it (in a task)."""
        for result in steps:
            if result is not None and inspect.isawaitable(result):
                self._track(asyncio.ensure_future(self._finish(result, steps)))
                return

    @staticmethod
    async def _finish(first: Awaitable[None], steps: Iterator[HookResult]) -> None:
        await first
        for result in steps:
            if result is not None and inspect.isawaitable(result):
                await result

    def _track(self, task: asyncio.Future[Any]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Future[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (error := task.exception()) is not None:
            _log.error("a callback failed", exc_info=error)
