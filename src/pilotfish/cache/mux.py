"""MuxCache: one ConfigWatcher made of several, chosen per resource type.

Typical: a SnapshotCache for listeners, routes and clusters (consistent per node) and a
LinearCache for endpoints (fleet-wide, changing often). The server sees one watcher.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from pilotfish.protos import Node, resource_type
from pilotfish.xds import (
    Cancel,
    ConfigWatcher,
    DeltaRespond,
    DeltaWatchRequest,
    Event,
    Respond,
    WatchRequest,
)

__all__ = ["MuxCache"]


def _never() -> None:
    return None


class MuxCache:
    """Routes each watch and event to a cache by type URL (or short name), or a classifier.

    `caches` maps types to watchers; `classify` (tried when a type is not in `caches`) may pick
    one for any type URL or return None. Types nobody serves are never answered.
    """

    def __init__(
        self,
        caches: Mapping[str, ConfigWatcher] | None = None,
        *,
        classify: Callable[[str], ConfigWatcher | None] | None = None,
    ) -> None:
        self._by_type = {resource_type(k).type_url: v for k, v in (caches or {}).items()}
        self._classify = classify
        self._all: list[ConfigWatcher] = []
        for watcher in self._by_type.values():
            if not any(watcher is w for w in self._all):
                self._all.append(watcher)

    def route(self, type_url: str) -> ConfigWatcher | None:
        """The watcher serving `type_url`, if any."""
        watcher = self._by_type.get(type_url)
        if watcher is None and self._classify is not None:
            watcher = self._classify(type_url)
            if watcher is not None and not any(watcher is w for w in self._all):
                self._all.append(watcher)
        return watcher

    def create_watch(self, request: WatchRequest, respond: Respond) -> Cancel:
        """Delegate to the type's watcher."""
        watcher = self.route(request.type_url)
        return _never if watcher is None else watcher.create_watch(request, respond)

    def create_delta_watch(self, request: DeltaWatchRequest, respond: DeltaRespond) -> Cancel:
        """Delegate to the type's watcher."""
        watcher = self.route(request.type_url)
        return _never if watcher is None else watcher.create_delta_watch(request, respond)

    def on_stream_event(self, stream_id: int, node: Node, event: Event) -> None:
        """Tell the watcher of the event's type."""
        watcher = self.route(event.type_url)
        if watcher is not None:
            watcher.on_stream_event(stream_id, node, event)

    def on_stream_closed(self, stream_id: int, node: Node | None) -> None:
        """Tell every watcher: each forgets the stream."""
        for watcher in self._all:
            watcher.on_stream_closed(stream_id, node)
