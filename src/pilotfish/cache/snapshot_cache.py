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
from collections.abc import Callable, Mapping
from dataclasses import dataclass

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

from .answers import delta_answer, sotw_answer
from .node_hash import NodeHash, by_id
from .snapshot import Snapshot
from .status import NodeStatus, StatusTable

__all__ = ["SnapshotCache"]


@dataclass(slots=True)
class _Watch:
    """An open watch; after answering it stays open, knowing what it delivered, until the
    server cancels it (when the answer is written), so a newer snapshot replaces an unwritten
    answer instead of queueing behind it."""

    request: WatchRequest
    respond: Respond
    known_version: str
    known_names: frozenset[str]
    known_resources: Mapping[str, str] | None

    def answer(self, snapshot: Snapshot) -> PreparedResponse | None:
        response = sotw_answer(
            snapshot, self.request, self.known_version, self.known_names, self.known_resources
        )
        if response is not None:
            self.known_version, self.known_names = response.version, response.names
            self.known_resources = response.resource_versions
        return response

    def deliver(self, response: PreparedResponse | DeltaPreparedResponse) -> None:
        assert isinstance(response, PreparedResponse)
        self.respond(response)


@dataclass(slots=True)
class _DeltaWatch:
    """An open delta watch. Its answers are always relative to what the client really holds,
    so a newer answer can replace an unwritten one without losing changes."""

    request: DeltaWatchRequest
    respond: DeltaRespond

    def answer(self, snapshot: Snapshot) -> DeltaPreparedResponse | None:
        type_url = self.request.type_url
        if type_url not in RESOURCE_TYPES:
            return None
        return delta_answer(
            self.request,
            snapshot.resources(type_url),
            snapshot.version(type_url),
            snapshot.references_of,
        )

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
        self._watches: dict[str, dict[int, _Watch | _DeltaWatch]] = {}
        self._status = StatusTable(clock)
        self._ids = itertools.count(1)

    def node_key(self, node: Node) -> str:
        """The snapshot key of a node."""
        return self._hash(node)

    def set_snapshot(self, key: str, snapshot: Snapshot) -> None:
        """Serve `snapshot` to every node with this key; answer the watches it makes stale."""
        answers: list[tuple[_Watch | _DeltaWatch, PreparedResponse | DeltaPreparedResponse]] = []
        with self._lock:
            self._snapshots[key] = snapshot
            for watch in self._watches.get(key, {}).values():
                response = watch.answer(snapshot)
                if response is not None:
                    answers.append((watch, response))
        for watch, response in answers:
            watch.deliver(response)

    def get_snapshot(self, key: str) -> Snapshot:
        """The snapshot served to `key`; KeyError if there is none."""
        with self._lock:
            return self._snapshots[key]

    def clear_snapshot(self, key: str) -> None:
        """Stop serving `key` (open watches wait for a new snapshot)."""
        with self._lock:
            self._snapshots.pop(key, None)

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
        watch = _Watch(
            request, respond, request.known_version, request.known_names, request.known_resources
        )
        return self._open(request.node, request.stream_id, watch)

    def create_delta_watch(self, request: DeltaWatchRequest, respond: DeltaRespond) -> Cancel:
        """Answer with what differs from the client's resource versions, now and on each new
        snapshot, until cancelled."""
        return self._open(request.node, request.stream_id, _DeltaWatch(request, respond))

    def _open(self, node: Node, stream_id: int, watch: _Watch | _DeltaWatch) -> Cancel:
        key = self._hash(node)
        with self._lock:
            self._status.touch(key, node, stream_id)
            snapshot = self._snapshots.get(key)
            response = None if snapshot is None else watch.answer(snapshot)
            watch_id = next(self._ids)
            self._watches.setdefault(key, {})[watch_id] = watch
        if response is not None:
            watch.deliver(response)

        def cancel() -> None:
            with self._lock:
                watches = self._watches.get(key)
                if watches is not None:
                    watches.pop(watch_id, None)
                    if not watches:
                        del self._watches[key]

        return cancel

    def on_stream_event(self, stream_id: int, node: Node, event: Event) -> None:
        """Fold a stream event into the node's status."""
        key = self._hash(node)
        with self._lock:
            self._status.touch(key, node, stream_id).record(event)

    def on_stream_closed(self, stream_id: int, node: Node | None) -> None:
        """Drop the stream; drop the node's status with its last stream."""
        if node is None:
            return
        key = self._hash(node)
        with self._lock:
            self._status.closed(key, stream_id)
