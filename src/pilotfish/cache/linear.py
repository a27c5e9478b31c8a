"""LinearCache: one resource type, fleet-wide, with per-resource versions.

Where a snapshot is one consistent set of every type per node, a linear cache holds one type for
every node (typically EDS, which changes often and independently). Each resource keeps its own
content version, so a change wakes only the watches that subscribe to it (indexed by name, by
wildcard, and by glob prefix `name*`), and `update_resources` wakes each watch once per batch.

State-of-the-world versions are content hashes of what a subscription sees, so they are the same
on every replica and never name different content across restarts; delta clients see each
resource's own content hash.
"""

from __future__ import annotations

import hashlib
import itertools
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from pilotfish.bounded import ByIdentity
from pilotfish.protos import Message, Node, resource_type, wire
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

from .answers import PER_NAME, delta_answer, partial_answer
from .delta_states import DeltaAnswers
from .node_hash import NodeHash, by_id
from .resource import CachedResource, to_message
from .status import NodeStatus, StatusTable

__all__ = ["LinearCache"]

_Answer = PreparedResponse | DeltaPreparedResponse
_SINCE_KEPT = 8
"""Partial answers kept until the next change: one per kind of proxy (what it lists, what it
holds) is all a push needs."""


@dataclass(slots=True)
class _Watch:
    request: WatchRequest | DeltaWatchRequest
    respond: Callable[[_Answer], None]
    known_version: str = ""
    known_names: frozenset[str] = frozenset()
    answered: bool = False
    """It answered, and the server has not cancelled it: that answer may be unwritten, and the
    next replaces it, so only the first may carry just what the client lacks."""


def _prefixes(names: Iterable[str]) -> list[str]:
    return [n[:-1] for n in names if n.endswith("*") and n != "*"]


class LinearCache:
    """A fleet-wide cache of one resource type; implements `ConfigWatcher` for that type."""

    def __init__(
        self,
        type_url: str,
        resources: Iterable[Message | object] = (),
        *,
        node_hash: NodeHash = by_id,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.type_url = resource_type(type_url).type_url
        self._hash = node_hash
        self._lock = threading.Lock()
        self._resources: dict[str, CachedResource] = {}
        self._watches: dict[int, _Watch] = {}
        self._by_name: dict[str, set[int]] = {}
        self._wildcard: set[int] = set()
        self._by_prefix: dict[str, set[int]] = {}
        self._responses: dict[frozenset[str] | None, PreparedResponse] = {}
        # Answers carrying only what a client lacks, by the (whole answer, versions held)
        # objects streams share, until the next change (see `_since`).
        self._since: ByIdentity[PreparedResponse] = ByIdentity(_SINCE_KEPT)
        self._ids = itertools.count(1)
        self._status = StatusTable(clock)
        self.responses_built = 0
        self._versions: dict[frozenset[str] | None, str] = {}
        # Delta answers by client state (as `Snapshot.delta_response`), until the next change.
        self._delta = DeltaAnswers()
        self.delta_answers = 0
        self.set_resources(resources)

    # Writing

    def update_resource(self, resource: Message | object) -> None:
        """Add or replace one resource."""
        self.update_resources([resource], ())

    def delete_resource(self, name: str) -> None:
        """Remove one resource (clients are told it is gone)."""
        self.update_resources((), [name])

    def update_resources(
        self, to_update: Iterable[Message | object], to_delete: Iterable[str]
    ) -> None:
        """Apply a batch; every affected watch is woken once."""
        cached = [self._cached(r) for r in to_update]
        self._deliver(self._apply({c.name: c for c in cached}, to_delete, replace=False))

    def set_resources(self, resources: Iterable[Message | object]) -> None:
        """Replace everything with `resources`."""
        cached = [self._cached(r) for r in resources]
        self._deliver(self._apply({c.name: c for c in cached}, (), replace=True))

    # Reading

    def resources(self) -> Mapping[str, CachedResource]:
        """A read-only copy of the resources, by name."""
        with self._lock:
            return MappingProxyType(dict(self._resources))

    def version(self, names: Iterable[str] | None = None) -> str:
        """The state-of-the-world version of a subscription (None: everything)."""
        with self._lock:
            return self._sotw_version(None if names is None else frozenset(names))

    def status(self, key: str) -> NodeStatus | None:
        """Status of the node with this key, while a stream of it is open."""
        with self._lock:
            return self._status.get(key)

    def watch_count(self) -> int:
        """Open watches."""
        with self._lock:
            return len(self._watches)

    # ConfigWatcher

    def create_watch(self, request: WatchRequest, respond: Respond) -> Cancel:
        """A state-of-the-world watch: answered when its subscription's version changes."""

        def deliver(answer: _Answer) -> None:
            assert isinstance(answer, PreparedResponse)
            respond(answer)

        watch = _Watch(request, deliver, request.known_version, request.known_names)
        return self._open(watch)

    def create_delta_watch(self, request: DeltaWatchRequest, respond: DeltaRespond) -> Cancel:
        """A delta watch: answered with the resources whose versions differ."""

        def deliver(answer: _Answer) -> None:
            assert isinstance(answer, DeltaPreparedResponse)
            respond(answer)

        return self._open(_Watch(request, deliver))

    def on_stream_event(self, stream_id: int, node: Node, event: Event) -> None:
        """Fold a stream event into the node's status."""
        with self._lock:
            self._status.touch(self._hash(node), node, stream_id).record(event)

    def on_stream_closed(self, stream_id: int, node: Node | None) -> None:
        """Drop the stream's status."""
        if node is not None:
            with self._lock:
                self._status.closed(self._hash(node), stream_id)

    # Internals (the lock is held where noted)

    def _cached(self, resource: Message | object) -> CachedResource:
        return CachedResource.of(self.type_url, to_message(self.type_url, resource))

    def _open(self, watch: _Watch) -> Cancel:
        request = watch.request
        if request.type_url != self.type_url:
            raise ValueError(f"LinearCache of {self.type_url} asked for {request.type_url}")
        with self._lock:
            self._status.touch(self._hash(request.node), request.node, request.stream_id)
            watch_id = next(self._ids)
            self._watches[watch_id] = watch
            if request.wildcard:
                self._wildcard.add(watch_id)
            for name in request.names:
                self._by_name.setdefault(name, set()).add(watch_id)
            for prefix in _prefixes(request.names):
                self._by_prefix.setdefault(prefix, set()).add(watch_id)
            answer = self._answer(watch)
        if answer is not None:
            watch.respond(answer)

        def cancel() -> None:
            with self._lock:
                if self._watches.pop(watch_id, None) is None:
                    return
                self._wildcard.discard(watch_id)
                for table, keys in (
                    (self._by_name, request.names),
                    (self._by_prefix, _prefixes(request.names)),
                ):
                    for key in keys:
                        ids = table.get(key)
                        if ids is not None:
                            ids.discard(watch_id)
                            if not ids:
                                del table[key]

        return cancel

    def _apply(
        self, updated: Mapping[str, CachedResource], deleted: Iterable[str], *, replace: bool
    ) -> list[tuple[_Watch, _Answer]]:
        with self._lock:
            old = self._resources
            new = dict(updated) if replace else {**old, **updated}
            for name in deleted:
                new.pop(name, None)
            changed = {
                n for n in new.keys() | old.keys() if (n in new) != (n in old) or (
                    n in new and new[n].version != old[n].version
                )
            }  # fmt: skip
            if not changed:
                return []
            self._resources = new
            self._responses.clear()
            self._since = ByIdentity(_SINCE_KEPT)
            self._versions.clear()
            self._delta.clear()
            woken: set[int] = set(self._wildcard)
            for name in changed:
                woken |= self._by_name.get(name, set())
                for prefix, ids in self._by_prefix.items():
                    if name.startswith(prefix):
                        woken |= ids
            answers = []
            for watch_id in sorted(woken):
                watch = self._watches[watch_id]
                answer = self._answer(watch)
                if answer is not None:
                    answers.append((watch, answer))
            return answers

    def _deliver(self, answers: list[tuple[_Watch, _Answer]]) -> None:
        for watch, answer in answers:
            watch.respond(answer)

    def _matching(self, names: frozenset[str] | None) -> list[CachedResource]:
        """Lock held. Resources a subscription sees, by name."""
        if names is None:
            return [self._resources[n] for n in sorted(self._resources)]
        prefixes = _prefixes(names)
        return [
            r
            for n, r in sorted(self._resources.items())
            if n in names or any(n.startswith(p) for p in prefixes)
        ]

    def _sotw_version(self, names: frozenset[str] | None) -> str:
        """Lock held. Content hash of what the subscription sees (memoized until a change)."""
        version = self._versions.get(names)
        if version is None:
            digest = hashlib.blake2b(digest_size=8)
            for r in self._matching(names):
                digest.update(r.name.encode() + b"\0" + r.version.encode() + b"\0")
            version = self._versions[names] = digest.hexdigest()
        return version

    def _delta_answer(self, request: DeltaWatchRequest) -> DeltaPreparedResponse | None:
        """Lock held. Made once per client state (the identities of its versions and names,
        which streams in one state share) until the resources change; the state an answer
        leaves its clients in is known to need nothing more (an ACK costs a lookup)."""
        found = self._delta.find(request)
        if found is not None:
            return found.answer
        asked = request
        if not request.wildcard and _prefixes(request.names):
            expanded = frozenset(r.name for r in self._matching(request.names))
            asked = DeltaWatchRequest(
                request.node,
                request.stream_id,
                request.type_url,
                request.names | expanded,
                request.wildcard,
                request.versions,
                request.initial,
            )
        answer = delta_answer(asked, self._resources, self._sotw_version(None))
        self.delta_answers += 1
        return self._delta.keep(request, answer)[0]

    def _answer(self, watch: _Watch) -> _Answer | None:
        """Lock held."""
        request = watch.request
        if isinstance(request, DeltaWatchRequest):
            return self._delta_answer(request)
        if not (request.wildcard or request.names):
            return None
        names = None if request.wildcard else request.names
        response = self._responses.get(names)
        if response is None:
            chosen = self._matching(names)
            version = self._sotw_version(names)
            body = wire.discovery_response_body(
                version, self.type_url, (r.sotw_parts(False) for r in chosen)
            )
            response = PreparedResponse(
                self.type_url,
                version,
                frozenset(r.name for r in chosen),
                body,
                resource_versions=MappingProxyType({r.name: r.version for r in chosen}),
            )
            self._responses[names] = response
            self.responses_built += 1
        if response.version == watch.known_version:
            return None
        held = request.known_resources
        by_name = names is not None and not _prefixes(names)  # not glob: as Envoy subscribes
        if held and by_name and not watch.answered and self.type_url in PER_NAME:
            response = self._partial(response, held)
        watch.answered = True
        watch.known_version, watch.known_names = response.version, response.names
        return response

    def _partial(self, whole: PreparedResponse, held: Mapping[str, str]) -> PreparedResponse:
        """Lock held. `whole` carrying only the resources a client holding `held` lacks (as
        `Snapshot.response_since`, for the types Envoy applies per name), made once for the
        streams holding the same `held` object."""
        found = self._since.get(whole, held)
        if found is None:
            found = partial_answer(whole, held, self._resources)
            if found.partial:
                self.responses_built += 1
            if isinstance(held, MappingProxyType):  # nobody changes it: the answer stands
                self._since.put(found, whole, held)
        return found
