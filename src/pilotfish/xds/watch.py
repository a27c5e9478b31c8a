"""The narrow contract between the xDS server and whatever holds the config (a cache).

Modelled on go-control-plane's `ConfigWatcher`: the server opens a watch per stream and type
after each request it acts on. The watcher answers with a prepared response whenever it has
something newer than what the watch knows, until the server cancels the watch, which it does when
it writes an answer (then it waits for the client's ACK or NACK). So an answer the client has not
read yet is replaced by a newer one (latest wins). The watcher never sees grpc or asyncio, and
the server never sees a concrete cache.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from pilotfish.protos import Node
from pilotfish.xds.events import Event

__all__ = ["Cancel", "ConfigWatcher", "PreparedResponse", "Respond", "WatchRequest"]


@dataclass(frozen=True, slots=True)
class WatchRequest:
    """What one stream wants of one type, and what it already holds.

    `known_version` is the version the client holds, or the one it just rejected: the watcher
    must not answer with that version again unless new names were subscribed (names in
    `names - known_names` that exist). That is what keeps a NACKed version from being resent.
    """

    node: Node
    stream_id: int
    type_url: str
    names: frozenset[str]
    wildcard: bool
    known_version: str
    known_names: frozenset[str]


@dataclass(frozen=True, slots=True)
class PreparedResponse:
    """A DiscoveryResponse serialized once, without its nonce; shared by every stream."""

    type_url: str
    version: str
    names: frozenset[str]
    body: bytes


Respond = Callable[[PreparedResponse], None]
Cancel = Callable[[], None]


class ConfigWatcher(Protocol):
    """Answers watches and keeps per-node status; implemented by the caches."""

    def create_watch(self, request: WatchRequest, respond: Respond) -> Cancel:
        """Call `respond` (now, later, again) with anything newer than the watch knows;
        return a canceller. `respond` may be called from any thread; the caller makes it safe."""
        ...

    def on_stream_event(self, stream_id: int, node: Node, event: Event) -> None:
        """Record what happened on a stream (for status and debugging)."""
        ...

    def on_stream_closed(self, stream_id: int, node: Node | None) -> None:
        """Forget the stream; a node with no stream left has no status either."""
        ...
