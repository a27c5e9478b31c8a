"""One xDS stream's life, whatever transport carries it (grpc.aio or pilotfish's own HTTP/2).

Both transports of `XdsServer` drive a `StreamHandler` per stream through the same steps:
`authenticate` the peer, `open` the stream, `receive` each request (admitting the node of the
first one), take `next_response`s when woken, and `close`. Refusals are counted in
`ServerStreams.refused` and live streams are listed in `ServerStreams.live`, so the debug view,
stream counts and heartbeats see every stream the same way.

Steps that call `Callbacks` are generators yielding each hook's result: the grpc.aio transport
awaits them one by one (the order of the hooks and the protocol is exactly as written here), the
native transport runs plain hooks inline and schedules awaitable ones as tasks.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Protocol, TypeAlias

from pilotfish.protos import DeltaDiscoveryRequest, DiscoveryRequest
from pilotfish.xds.auth import AuthenticationError, Authenticator, Identity, NodeOwners, Peer
from pilotfish.xds.auth import authorize as _authorize
from pilotfish.xds.callbacks import Callbacks, HookResult
from pilotfish.xds.events import Acked, Nacked
from pilotfish.xds.http2 import GrpcStatus
from pilotfish.xds.node import without_extensions
from pilotfish.xds.session import Dispatch, Session, new_stream_id
from pilotfish.xds.watch import ConfigWatcher

__all__ = ["Ending", "Refusal", "Request", "ServerStreams", "StreamHandler"]

_log = logging.getLogger("pilotfish.xds.server")

Request: TypeAlias = DiscoveryRequest | DeltaDiscoveryRequest
Refusal: TypeAlias = tuple[GrpcStatus, str]
"""Why a stream is refused: the status to end it with, and the reason sent to the peer."""


class ServerStreams:
    """What every stream of one server shares: the watcher and callbacks, who holds which node
    id, the live streams (by stream id) and the count of refused streams by status."""

    def __init__(
        self,
        watcher: ConfigWatcher,
        *,
        callbacks: Callbacks | None,
        ordered: bool,
        authenticator: Authenticator | None,
        dispatch: Dispatch,
    ) -> None:
        self.watcher = watcher
        self.callbacks = callbacks
        self.ordered = ordered
        self.authenticator = authenticator
        self.dispatch = dispatch
        self.owners = NodeOwners()
        self.live: dict[int, StreamHandler] = {}
        self.refused: dict[GrpcStatus, int] = {}


class Ending(Protocol):
    """The transport's side of a stream, which `StreamHandler.end` asks to end it politely
    (server shutdown). An object, not a callable: a bound method would be 64 B a stream."""

    def end(self) -> None: ...


class StreamHandler:
    """One stream: its `Session`, the identity of its peer, and the hooks around both."""

    __slots__ = (
        "_admitted",
        "_closed",
        "_streams",
        "claimed",
        "delta",
        "ending",
        "identity",
        "refusal",
        "session",
        "stream_id",
        "type_url",
    )

    def __init__(self, streams: ServerStreams, type_url: str | None, delta: bool) -> None:
        self._streams = streams
        self.stream_id = new_stream_id()
        self.type_url = type_url
        self.delta = delta
        self.identity: Identity | None = None
        self.claimed: str | None = None  # the node id this stream holds in `NodeOwners`
        self.refusal: Refusal | None = None
        self.session: Session | None = None
        self.ending: Ending | None = None
        self._admitted = False
        self._closed = False

    def end(self) -> None:
        """End the stream politely (server shutdown), through its transport."""
        if self.ending is not None:
            self.ending.end()

    def authenticate(self, peer: Callable[[], Peer]) -> bool:
        """Prove who the peer is, if the server has an authenticator (`peer` is only called
        then). False: refused, see `refusal` (then `refuse`, and end the stream with it)."""
        authenticator = self._streams.authenticator
        if authenticator is None:
            return True
        try:
            self.identity = authenticator.authenticate(peer())
        except AuthenticationError as unknown:
            self.refusal = (GrpcStatus.UNAUTHENTICATED, str(unknown))
            return False
        return True

    def refuse(self) -> Iterator[HookResult]:
        """Count and log `refusal`, and tell the callbacks."""
        assert self.refusal is not None
        code, reason = self.refusal
        streams = self._streams
        streams.refused[code] = streams.refused.get(code, 0) + 1
        _log.warning("stream %d refused (%s): %s", self.stream_id, code.name, reason)
        if streams.callbacks is not None:
            yield streams.callbacks.on_stream_refused(self.stream_id, reason, code.name)

    def open(self, wakeup: Callable[[], None], ending: Ending) -> Iterator[HookResult]:
        """Start the session (`wakeup` fires when responses are pending) and list the stream."""
        streams = self._streams
        self.ending = ending
        self.session = Session(
            streams.watcher,
            self.stream_id,
            self.type_url,
            delta=self.delta,
            ordered=streams.ordered,
            wakeup=wakeup,
            dispatch=streams.dispatch,
        )
        streams.live[self.stream_id] = self
        if streams.callbacks is not None:
            yield streams.callbacks.on_stream_open(self.stream_id, self.type_url)

    def receive(self, request: Request, raw: bytes | None = None) -> Iterator[HookResult] | None:
        """One request: admit its node (first request of an authenticated stream; else sets
        `refusal` and stops), then the protocol. Raises `RemoteProtocolError`. `raw`: the
        bytes the request was parsed from, if the transport has them.

        Without callbacks (the hot path) it is all done on return, and None is returned; with
        them, it runs as the returned iterator is consumed."""
        if self.identity is not None and not self._admitted and not self._admit(request):
            return None
        if self._streams.callbacks is None:
            assert self.session is not None
            self.session.receive(request, raw)
            return None
        return self._receive_with_hooks(request, raw)

    def lighten(self, raw: bytes) -> bytes:
        """`raw`, a request's bytes, ready to parse: the first request's node without its
        extension list (`node.without_extensions`), unless the callbacks want it there."""
        session = self.session
        if session is None or session.protocol.node is not None:
            return raw
        callbacks = self._streams.callbacks
        if callbacks is not None and callbacks.node_extensions_in_requests:
            return raw
        return without_extensions(raw, self.delta)

    def receive_ack(self, raw: bytes) -> tuple[HookResult, ...] | None:
        """Take `raw` as a plain ACK without parsing it (`Session.receive_ack`), if it is one
        and nothing needs the parsed request (the stream admitted; no callbacks, or callbacks
        that leave plain ACKs out of `on_stream_request`). Returns the results of
        `on_stream_ack`, run at once; None: parse it and `receive` it."""
        callbacks = self._streams.callbacks
        if (callbacks is not None and callbacks.plain_acks_in_requests) or (
            self.identity is not None and not self._admitted
        ):
            return None
        session = self.session
        assert session is not None
        received = session.receive_ack(raw)
        if received is None:
            return None
        if callbacks is None:
            return ()
        node = session.protocol.node
        assert node is not None
        return tuple(
            callbacks.on_stream_ack(self.stream_id, node, event)
            for event in received.events
            if isinstance(event, Acked)
        )

    def _admit(self, request: Request) -> bool:
        # The first request carries the node; later nodes are ignored by the protocol core.
        assert self.identity is not None
        node = request.node
        streams = self._streams
        reason = _authorize(self.identity, node) or streams.owners.claim(node.id, self.identity)
        if reason is not None:
            self.refusal = (GrpcStatus.PERMISSION_DENIED, reason)
            return False
        self.claimed = node.id
        self._admitted = True
        return True

    def _receive_with_hooks(self, request: Request, raw: bytes | None) -> Iterator[HookResult]:
        session = self.session
        callbacks = self._streams.callbacks
        assert session is not None and callbacks is not None
        yield callbacks.on_stream_request(self.stream_id, request)
        received = session.receive(request, raw)
        for event in received.events:
            if isinstance(event, Acked):
                node = session.protocol.node
                assert node is not None
                yield callbacks.on_stream_ack(self.stream_id, node, event)
            elif isinstance(event, Nacked):
                node = session.protocol.node
                assert node is not None
                yield callbacks.on_nack(self.stream_id, node, event)

    def next_response(self) -> tuple[bytes, HookResult] | None:
        """The next response to write, and the result of `on_stream_response` (which runs
        before it is written); None when nothing is pending."""
        item = self.next_parts()
        if item is None:
            return None
        body, nonce, result = item
        return body + nonce, result

    def next_parts(self) -> tuple[bytes, bytes, HookResult] | None:
        """`next_response` with the message in two parts, written one after the other: the
        prepared body (shared by every stream, not copied) and the stream's nonce field."""
        session = self.session
        assert session is not None
        item = session.next_parts()
        if item is None:
            return None
        body, nonce, sent = item
        callbacks = self._streams.callbacks
        if callbacks is None:
            return body, nonce, None
        node = session.protocol.node
        assert node is not None
        return body, nonce, callbacks.on_stream_response(self.stream_id, node, sent)

    def close(self) -> Iterator[HookResult]:
        """Unlist the stream, close its session, tell the callbacks, free its node id.
        Once; nothing for a stream never opened."""
        session = self.session
        if session is None or self._closed:
            return
        self._closed = True
        streams = self._streams
        streams.live.pop(self.stream_id, None)
        session.close()
        if streams.callbacks is not None:
            yield streams.callbacks.on_stream_close(self.stream_id, session.protocol.node)
        # Last: the node id is free only once callbacks (a controller) know the node left.
        if self.claimed is not None and self.identity is not None:
            streams.owners.release(self.claimed, self.identity)
