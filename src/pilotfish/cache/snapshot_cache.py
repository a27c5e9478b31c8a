"""SnapshotCache: one consistent snapshot per node key, answering the server's watches.

The go-control-plane model: `set_snapshot(key, snapshot)` replaces what every node hashing to
`key` gets, and each open watch of that key is answered if its client's version is outdated.
Safe to call from any thread: a lock guards the tables, and watch answers are delivered after it
is released.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from typing import Any

from pilotfish.protos import RESOURCE_TYPES, Node
from pilotfish.xds import (
    Cancel,
    DeltaPreparedResponse,
    DeltaRespond,
    DeltaWatchRequest,
    Event,
    PreparedResponse,
    Respond,
    WatchRequest,
)

from .answers import sotw_answer
from .node_hash import NodeHash, by_id
from .snapshot import Snapshot
from .status import NodeStatus, StatusTable

__all__ = ["SnapshotCache"]


class _Watch:
    """An open watch; after answering it stays open, knowing what it delivered, until the
    server cancels it (when the answer is written), so a newer snapshot replaces an unwritten
    answer instead of queueing behind it.

    It is its own canceller, and a session re-arms it (`SnapshotCache.rearm_watch`) when the
    client answers: a watch per stream and type for as long as the stream lives, not per ACK.
    `serial` is the snapshot it last answered from (see `settled`). It keeps what its request
    wants (`answers.Wanted`), not the request: one object a watch, not two.

    `answered`: it answered since it was armed, and that answer is not written yet. Its first
    answer may carry only what the client lacks (`answers.sotw_answer`'s `partial`); a later
    one replaces the first unwritten, so it carries everything.
    """

    __slots__ = (
        "answered",
        "armed",
        "cache",
        "key",
        "known_names",
        "known_resources",
        "known_version",
        "names",
        "node",
        "respond",
        "serial",
        "stream_id",
        "ttl_aware",
        "type_url",
        "wildcard",
    )

    def __init__(
        self, cache: SnapshotCache, key: str, request: WatchRequest, respond: Respond
    ) -> None:
        self.cache = cache
        self.key = key
        self.armed = False
        self.stream_id = request.stream_id
        self.type_url = request.type_url
        self.rebase(request, respond)

    def __call__(self) -> None:
        self.cache._cancel(self)

    def take(self, request: WatchRequest, respond: Respond) -> None:
        """Take what a new request of the same stream and type wants, and its `respond`."""
        self.node = request.node
        self.names = request.names
        self.wildcard = request.wildcard
        self.ttl_aware = request.ttl_aware
        self.respond = respond
        self.answered = False

    def rebase(self, request: WatchRequest, respond: Respond) -> None:
        """Take a new request (as a new watch would); forgets the last answer's snapshot."""
        self.take(request, respond)
        self.known_version = request.known_version
        self.known_names = request.known_names
        self.known_resources = request.known_resources
        self.serial = -1

    def settled(self, request: WatchRequest, serial: int) -> bool:
        """Whether `request` is sure to get no answer from the snapshot numbered `serial`: the
        watch last answered from it, for the same subscription, and the client holds what the
        watch then knew it holds (the common ACK: of what the watch answered). An answer leaves
        the watch knowing what it delivered, and that knowledge gets no answer from the same
        snapshot. Identity stands in for equality: a session passes the same sets and mappings
        until the subscription or what the client holds changes."""
        return (
            serial == self.serial
            and request.names is self.names
            and request.wildcard == self.wildcard
            and request.ttl_aware == self.ttl_aware
            and request.known_names is self.known_names
            and request.known_resources is self.known_resources
            and request.known_version == self.known_version
        )

    def answer(self, snapshot: Snapshot, serial: int) -> PreparedResponse | None:
        response = sotw_answer(
            snapshot,
            self,
            self.known_version,
            self.known_names,
            self.known_resources,
            partial=not self.answered,
        )
        self.serial = serial
        if response is not None:
            self.answered = True
            self.known_version, self.known_names = response.version, response.names
            self.known_resources = response.resource_versions
        return response

    def deliver(self, response: PreparedResponse | DeltaPreparedResponse) -> None:
        assert isinstance(response, PreparedResponse)
        self.respond(response)


class _DeltaWatch:
    """An open delta watch, its own canceller. Its answers are always relative to what the
    client really holds, so a newer answer can replace an unwritten one without losing
    changes."""

    __slots__ = ("armed", "cache", "key", "request", "respond")

    def __init__(
        self, cache: SnapshotCache, key: str, request: DeltaWatchRequest, respond: DeltaRespond
    ) -> None:
        self.cache = cache
        self.key = key
        self.armed = False
        self.request = request
        self.respond = respond

    def __call__(self) -> None:
        self.cache._cancel(self)

    def answer(self, snapshot: Snapshot, serial: int) -> DeltaPreparedResponse | None:
        type_url = self.request.type_url
        if type_url not in RESOURCE_TYPES:
            return None
        return snapshot.delta_response(self.request)

    def deliver(self, response: PreparedResponse | DeltaPreparedResponse) -> None:
        assert isinstance(response, DeltaPreparedResponse)
        self.respond(response)


class SnapshotCache:
    """Snapshots by node key, watches, and per-node status; implements `ConfigWatcher`."""

    def __init__(
        self, node_hash: NodeHash = by_id, *, clock: Callable[[], float] = time.time
    ) -> None:
        self._hash = node_hash
        self._lock = threading.Lock()
        self._snapshots: dict[str, Snapshot] = {}
        # Each snapshot set gets a serial number: what a re-armed watch compares (`settled`).
        self._serials: dict[str, int] = {}
        self._serial = itertools.count()
        # The armed watches of each key (a dict for its order; the values are unused).
        self._watches: dict[str, dict[_Watch | _DeltaWatch, None]] = {}
        self._status = StatusTable(clock)
        # Each open stream's node and its key: hashed once per stream, not per event.
        self._stream_keys: dict[int, tuple[Node, str]] = {}

    def node_key(self, node: Node) -> str:
        """The snapshot key of a node."""
        return self._hash(node)

    def set_snapshot(self, key: str, snapshot: Snapshot) -> None:
        """Serve `snapshot` to every node with this key; answer the watches it makes stale."""
        answers: list[tuple[Callable[[Any], None], PreparedResponse | DeltaPreparedResponse]] = []
        with self._lock:
            self._snapshots[key] = snapshot
            serial = self._serials[key] = next(self._serial)
            for watch in self._watches.get(key, ()):
                response = watch.answer(snapshot, serial)
                if response is not None:
                    answers.append((watch.respond, response))
        # Outside the lock, to the respond each answer was made for: a session that re-armed
        # the watch meanwhile (another thread) gave it another, and drops this answer. Through
        # the new one it would replace the answer made for the new request, and an answer that
        # carries only what changed since the old one lacks what the new one asked for again
        # (an updated cluster's endpoints: the proxy would wait for them).
        for respond, response in answers:
            respond(response)

    def get_snapshot(self, key: str) -> Snapshot:
        """The snapshot served to `key`; KeyError if there is none."""
        with self._lock:
            return self._snapshots[key]

    def clear_snapshot(self, key: str) -> None:
        """Stop serving `key` (open watches wait for a new snapshot)."""
        with self._lock:
            self._snapshots.pop(key, None)
            self._serials.pop(key, None)

    def keys(self) -> list[str]:
        """Keys that have a snapshot."""
        with self._lock:
            return sorted(self._snapshots)

    def status(self, key: str) -> NodeStatus | None:
        """Status of the node(s) with this key, if any stream of theirs is open."""
        with self._lock:
            return self._status.get(key)

    def status_keys(self) -> list[str]:
        """Keys of nodes with an open stream."""
        with self._lock:
            return self._status.keys()

    def watch_count(self, key: str | None = None) -> int:
        """Open watches (of one key, or all): for tests and metrics."""
        with self._lock:
            if key is not None:
                return len(self._watches.get(key, ()))
            return sum(len(w) for w in self._watches.values())

    # ConfigWatcher

    def create_watch(self, request: WatchRequest, respond: Respond) -> Cancel:
        """Answer now if the snapshot has something new, and again on each newer snapshot,
        until cancelled."""
        key = self._stream_key(request.node, request.stream_id)
        return self._open(_Watch(self, key, request, respond), request.node, request.stream_id)

    def rearm_watch(self, cancelled: Cancel, request: WatchRequest, respond: Respond) -> Cancel:
        """`create_watch` reusing `cancelled`, a cancelled watch of the same stream and type
        (see `pilotfish.xds.watch.Rearm`). An ACK of what the watch answered, with nothing
        changed since, costs no answer: the snapshot has nothing newer for the client."""
        watch = cancelled
        if (
            not isinstance(watch, _Watch)
            or watch.cache is not self
            or watch.armed
            or watch.stream_id != request.stream_id
            or watch.type_url != request.type_url
        ):
            return self.create_watch(request, respond)
        node = request.node
        if node is not watch.node:
            watch.key = self._stream_key(node, request.stream_id)
        with self._lock:
            settled = watch.settled(request, self._serials.get(watch.key, -1))
            if settled:
                watch.take(request, respond)
            else:
                watch.rebase(request, respond)
            response = self._arm(watch, node, request.stream_id, settled)
        if response is not None:
            watch.deliver(response)
        return watch

    def create_delta_watch(self, request: DeltaWatchRequest, respond: DeltaRespond) -> Cancel:
        """Answer with what differs from the client's resource versions, now and on each new
        snapshot, until cancelled."""
        key = self._stream_key(request.node, request.stream_id)
        return self._open(_DeltaWatch(self, key, request, respond), request.node, request.stream_id)

    def _open(self, watch: _Watch | _DeltaWatch, node: Node, stream_id: int) -> Cancel:
        """Arm a new watch; deliver its first answer if there is one now."""
        with self._lock:
            response = self._arm(watch, node, stream_id, False)
        if response is not None:
            watch.deliver(response)
        return watch

    def _arm(
        self, watch: _Watch | _DeltaWatch, node: Node, stream_id: int, settled: bool
    ) -> PreparedResponse | DeltaPreparedResponse | None:
        """Lock held. List the watch as open; its answer from the current snapshot, if any
        (`settled`: known to be none)."""
        key = watch.key
        self._status.touch(key, node, stream_id)
        response = None
        if not settled:
            snapshot = self._snapshots.get(key)
            if snapshot is not None:
                response = watch.answer(snapshot, self._serials[key])
        watches = self._watches.get(key)
        if watches is None:
            watches = self._watches[key] = {}
        watches[watch] = None
        watch.armed = True
        return response

    def _cancel(self, watch: _Watch | _DeltaWatch) -> None:
        with self._lock:
            if not watch.armed:
                return
            watch.armed = False
            key = watch.key
            watches = self._watches.get(key)
            if watches is not None:
                del watches[watch]
                # Kept while the node has a stream: its next watch is as good as certain.
                if not watches and self._status.get(key) is None:
                    del self._watches[key]

    def on_stream_event(self, stream_id: int, node: Node, event: Event) -> None:
        """Fold a stream event into the node's status."""
        key = self._stream_key(node, stream_id)
        with self._lock:
            self._status.record(key, node, stream_id, event)

    def on_stream_closed(self, stream_id: int, node: Node | None) -> None:
        """Drop the stream; drop the node's status with its last stream."""
        known = self._stream_keys.pop(stream_id, None)
        if node is None:
            return
        key = known[1] if known is not None and known[0] is node else self._hash(node)
        with self._lock:
            self._status.closed(key, stream_id)
            if self._status.get(key) is None and self._watches.get(key) == {}:
                del self._watches[key]  # kept empty while the node had a stream

    def _stream_key(self, node: Node, stream_id: int) -> str:
        # A stream keeps its node (the first request's), so its key is computed once.
        known = self._stream_keys.get(stream_id)
        if known is not None and known[0] is node:
            return known[1]
        key = self._hash(node)
        self._stream_keys[stream_id] = (node, key)
        return key
