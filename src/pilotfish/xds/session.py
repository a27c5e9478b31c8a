"""An xDS stream (state-of-the-world or delta) wired to a ConfigWatcher, still without I/O.

The session owns the stream's watches and the responses waiting to be written: per type only the
latest pending response is kept (latest wins), so a slow client never makes the cache wait or
queue. Ordered ADS picks pending responses in make-before-break order (clusters, endpoints,
listeners, routes, then the rest). The I/O layer calls `receive` for each request, and whenever
`wakeup` fires drains `next_response`.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable
from typing import cast

from pilotfish.protos import RESOURCE_TYPES, DeltaDiscoveryRequest, DiscoveryRequest, wire
from pilotfish.xds.delta import DeltaStream
from pilotfish.xds.events import Sent
from pilotfish.xds.requests import Received
from pilotfish.xds.sotw import SotwStream
from pilotfish.xds.watch import (
    Cancel,
    ConfigWatcher,
    DeltaPreparedResponse,
    DeltaWatchRequest,
    PreparedResponse,
    Respond,
    WatchRequest,
)

__all__ = ["Dispatch", "Session", "new_stream_id"]

_Prepared = PreparedResponse | DeltaPreparedResponse

_Rearm = Callable[[ConfigWatcher, Cancel, WatchRequest, Respond], Cancel]
"""`pilotfish.xds.watch.Rearm` as the watcher's class has it: called with the watcher."""

Dispatch = Callable[[Callable[[], None]], None]
"""Runs a callable where the session lives (the I/O layer hops threads here)."""

_BY_ORDER = tuple(sorted(RESOURCE_TYPES, key=lambda type_url: RESOURCE_TYPES[type_url].order))


def _first_in_order(pending: dict[str, _Prepared]) -> str:
    """The pending type to write first: make-before-break order, unknown types last."""
    for type_url in _BY_ORDER:
        if type_url in pending:
            return type_url
    return next(iter(pending))


# A session's tables while they are empty (most of the time), shared and never written: an
# empty dict of its own is 64 B a stream.
_NONE_PENDING: dict[str, _Prepared] = {}
_NONE_PARKED: dict[str, Cancel] = {}

_stream_ids = itertools.count(1)


def new_stream_id() -> int:
    """A stream id unique in this process. Caches keep node status per stream id, so every
    server (gRPC, REST) and test client on a shared watcher draws from this one sequence."""
    return next(_stream_ids)


def _call_now(fn: Callable[[], None]) -> None:
    fn()


class _Responder:
    """How one watch answers its session, and its canceller. Made per watch: `Session._deliver`
    drops answers of a watch that is no longer the type's current one (they may still be
    travelling between threads when it is replaced), and one small object is all a watch costs
    the session."""

    __slots__ = ("cancel", "session", "type_url")

    def __init__(self, session: Session, type_url: str) -> None:
        self.session = session
        self.type_url = type_url
        self.cancel: Cancel | None = None  # set once the watcher made the watch

    def __call__(self, response: _Prepared) -> None:
        session = self.session
        session._dispatch(lambda: session._deliver(self, response))


class Session:
    """Protocol state, watches and pending responses of one stream (`delta` picks the variant)."""

    __slots__ = (
        "_armed",
        "_closed",
        "_delta_ttl",
        "_dispatch",
        "_heartbeats",
        "_ordered",
        "_parked",
        "_pending",
        "_rearm",
        "_watcher",
        "protocol",
        "wakeup",
    )

    def __init__(
        self,
        watcher: ConfigWatcher,
        stream_id: int,
        type_url: str | None = None,
        *,
        delta: bool = False,
        ordered: bool = True,
        wakeup: Callable[[], None] | None = None,
        dispatch: Dispatch = _call_now,
    ) -> None:
        self.protocol: SotwStream | DeltaStream = (
            DeltaStream(stream_id, type_url) if delta else SotwStream(stream_id, type_url)
        )
        self.wakeup = wakeup
        self._watcher = watcher
        self._ordered = ordered
        self._dispatch = dispatch
        # The responder of each type's open watch; None between a response written and the
        # client's answer. Types stay listed: a pop and an insert per push would grow the
        # table (184 -> 272 B).
        self._armed: dict[str, _Responder | None] = {}
        # Cancelled state-of-the-world watches the watcher may re-arm (`Rearm`), by type.
        # The class's function, shared by every session (a bound method is 64 B a stream).
        self._rearm = (
            None if delta else cast(_Rearm | None, getattr(type(watcher), "rearm_watch", None))
        )
        self._parked = _NONE_PARKED
        self._pending = _NONE_PENDING
        # Made on a first TTL'd answer: most streams never get one (64 B a stream each).
        self._heartbeats: dict[str, PreparedResponse] | None = None
        self._delta_ttl: dict[str, dict[str, bytes]] | None = None
        self._closed = False

    @property
    def stream_id(self) -> int:
        """The stream's id, unique within the server."""
        return self.protocol.stream_id

    def receive(
        self, request: DiscoveryRequest | DeltaDiscoveryRequest, raw: bytes | None = None
    ) -> Received:
        """Apply one request: record events, and replace the type's watch when needed. `raw`:
        the bytes the request was parsed from, when the transport has them (cheaper ACKs)."""
        received = self.protocol.receive(request, raw)
        self._apply(received)
        return received

    def receive_ack(self, raw: bytes) -> Received | None:
        """`receive` for a plain ACK, taken from its wire bytes (`SotwStream.ack`,
        `DeltaStream.ack`); None if `raw` is something else, which then goes to `receive`."""
        received = self.protocol.ack(raw)
        if received is not None:
            self._apply(received)
        return received

    def _apply(self, received: Received) -> None:
        # What a request did: its events to the watcher, and the type's watch replaced.
        protocol = self.protocol
        node = protocol.node
        assert node is not None  # set by the protocol on the first request
        for event in received.events:
            self._watcher.on_stream_event(protocol.stream_id, node, event)
        if received.watch is not None and not self._closed:
            self._open(received.type_url, received.watch)

    def next_response(self) -> tuple[bytes, Sent] | None:
        """The next response to write (nonce assigned), or None when nothing is pending."""
        parts = self.next_parts()
        if parts is None:
            return None
        body, nonce, sent = parts
        return body + nonce, sent

    def next_parts(self) -> tuple[bytes, bytes, Sent] | None:
        """`next_response` as two parts to write one after the other: the prepared body, shared
        by every stream, and this stream's nonce field. A transport that writes buffers in
        sequence so never copies a large body per stream."""
        pending = self._pending
        if not pending:
            return None
        if len(pending) == 1 or not self._ordered:
            type_url = next(iter(pending))
        else:
            type_url = _first_in_order(pending)
        response = pending.pop(type_url)
        if not pending:
            self._pending = _NONE_PENDING
        self._cancel(type_url)  # written: now the client's ACK or NACK opens the next watch
        protocol = self.protocol
        if isinstance(protocol, DeltaStream):
            assert isinstance(response, DeltaPreparedResponse)
            body, nonce, sent = protocol.send_parts(response)
            ttl = None if self._delta_ttl is None else self._delta_ttl.get(type_url)
            if ttl:  # only TTL'd resources are looked up: most streams have none
                for name in [n for n in ttl if n in response.versions or n in response.removed]:
                    del ttl[name]
            if response.heartbeats:
                if self._delta_ttl is None:
                    self._delta_ttl = {}
                self._delta_ttl.setdefault(type_url, {}).update(response.heartbeats)
            for ref_type in response.refresh:
                # An idle watch: re-open it on the new versions.
                if self._armed.get(ref_type) is not None:
                    self._open(ref_type, protocol.watch_request(ref_type))
        else:
            assert isinstance(response, PreparedResponse)
            body, nonce, sent = protocol.send_parts(response)
            for ref_type in protocol.rewarm:
                # An idle watch: answer the forgotten names now. A pending answer carries them
                # if it is the whole subscription's at the new version; one that carries only
                # what changed is dropped for the new one.
                if self._armed.get(ref_type) is not None:
                    waiting = self._pending.get(ref_type)
                    if waiting is None or (
                        isinstance(waiting, PreparedResponse) and waiting.partial
                    ):
                        self._open(ref_type, protocol.watch_request(ref_type))
            if response.heartbeat is None:
                if self._heartbeats:
                    self._heartbeats.pop(type_url, None)
            else:
                if self._heartbeats is None:
                    self._heartbeats = {}
                self._heartbeats[type_url] = dataclasses.replace(response, body=response.heartbeat)
        node = protocol.node
        assert node is not None
        self._watcher.on_stream_event(protocol.stream_id, node, sent)
        return body, nonce, sent

    def heartbeat(self) -> bool:
        """Queue a TTL heartbeat for each type whose last response held TTL'd resources and is
        settled (ACKed or NACKed, nothing newer pending). Returns whether any was queued."""
        if self._closed:
            return False
        queued = False
        protocol = self.protocol
        if isinstance(protocol, DeltaStream):
            for type_url, beats in (self._delta_ttl or {}).items():
                delta_state = protocol.types.get(type_url)
                if not beats or delta_state is None or delta_state.awaiting_ack:
                    continue
                if type_url not in self._pending:
                    version = delta_state.sent_version
                    body = wire.delta_response_body(version, type_url, beats.values(), ())
                    self._queue(
                        type_url, DeltaPreparedResponse(type_url, version, {}, frozenset(), body)
                    )
                    queued = True
        else:
            for type_url, beat in (self._heartbeats or {}).items():
                state = protocol.types.get(type_url)
                if state is None or state.awaiting_ack or type_url in self._pending:
                    continue
                if state.sent_version != beat.version:
                    continue
                self._queue(type_url, beat)
                queued = True
        if queued and self.wakeup is not None:
            self.wakeup()
        return queued

    @property
    def has_pending(self) -> bool:
        """Whether `next_response` would return something."""
        return bool(self._pending)

    def close(self) -> None:
        """Cancel every watch and tell the watcher the stream is gone. Idempotent."""
        if self._closed:
            return
        self._closed = True
        for type_url in list(self._armed):
            self._cancel(type_url)
        self._parked, self._pending = _NONE_PARKED, _NONE_PENDING
        self._watcher.on_stream_closed(self.stream_id, self.protocol.node)

    def _open(self, type_url: str, watch: WatchRequest | DeltaWatchRequest) -> None:
        responder = _Responder(self, type_url)
        old = self._armed.get(type_url)
        self._armed[type_url] = responder
        if old is not None:
            self._retire(type_url, old)
        # What was pending was computed for the old subscription; the new watch knows the
        # version the client really holds and answers at once if that one is outdated.
        self._pending.pop(type_url, None)
        if isinstance(watch, DeltaWatchRequest):
            cancel = self._watcher.create_delta_watch(watch, responder)
        else:
            parked = self._parked.pop(type_url, None) if self._parked else None
            if parked is not None and self._rearm is not None:
                if not self._parked:
                    self._parked = _NONE_PARKED
                cancel = self._rearm(self._watcher, parked, watch, responder)
            else:
                cancel = self._watcher.create_watch(watch, responder)
        if self._armed.get(type_url) is responder:
            responder.cancel = cancel
        else:
            cancel()  # replaced while it was made (by a write its first answer woke)

    def _queue(self, type_url: str, response: _Prepared) -> None:
        pending = self._pending
        if pending is _NONE_PENDING:
            pending = self._pending = {}
        pending[type_url] = response

    def _cancel(self, type_url: str) -> None:
        responder = self._armed.get(type_url)
        if responder is not None:
            self._armed[type_url] = None
            self._retire(type_url, responder)

    def _retire(self, type_url: str, responder: _Responder) -> None:
        # Answers still travelling from its watch are void from now on (`_deliver`): it is no
        # longer the type's responder.
        cancel = responder.cancel
        if cancel is not None:
            cancel()
            if self._rearm is not None:
                if self._parked is _NONE_PARKED:
                    self._parked = {}
                self._parked[type_url] = cancel

    def _deliver(self, responder: _Responder, response: _Prepared) -> None:
        type_url = responder.type_url
        if self._closed or self._armed.get(type_url) is not responder:
            return  # a watch that was replaced or cancelled while its answer travelled
        self._queue(type_url, response)
        if self.wakeup is not None:
            self.wakeup()
