"""Per-node status: which streams a node has open and where each type stands.

Kept only while the node has a stream: the last stream closing removes it, so nothing grows per
disconnected proxy.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from pilotfish.protos import Node
from pilotfish.xds import Acked, Event, Nacked, Sent

__all__ = ["NodeStatus", "StatusTable", "TypeStatus"]


@dataclass(slots=True)
class TypeStatus:
    """Where one type stands for a node: last sent, last ACKed, last NACK."""

    sent_version: str = ""
    sent_nonce: str = ""
    acked_version: str = ""
    last_nack: Nacked | None = None
    responses_sent: int = 0
    acks: int = 0
    nacks: int = 0


@dataclass(slots=True)
class NodeStatus:
    """A node's open streams, its last request time and its per-type status."""

    node: Node
    streams: set[int] = field(default_factory=set)
    last_request_time: float = 0.0
    types: dict[str, TypeStatus] = field(default_factory=dict)

    def record(self, event: Event) -> None:
        """Fold one stream event into the status."""
        status = self.types.get(event.type_url)
        if status is None:
            status = self.types[event.type_url] = TypeStatus()
        if isinstance(event, Sent):
            status.sent_version, status.sent_nonce = event.version, event.nonce
            status.responses_sent += 1
        elif isinstance(event, Acked):
            status.acked_version = event.version
            status.acks += 1
        elif isinstance(event, Nacked):
            status.last_nack = event
            status.nacks += 1


class StatusTable:
    """Node statuses by key, shared by the caches. Not locked: the owning cache holds its lock."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._by_key: dict[str, NodeStatus] = {}

    def get(self, key: str) -> NodeStatus | None:
        """The status of `key`, if a stream of it is open."""
        return self._by_key.get(key)

    def keys(self) -> list[str]:
        """Keys with an open stream."""
        return sorted(self._by_key)

    def touch(self, key: str, node: Node, stream_id: int) -> NodeStatus:
        """Note a request from `stream_id`; creates the status on a node's first stream."""
        status = self._by_key.get(key)
        if status is None:
            status = self._by_key[key] = NodeStatus(node)
        status.streams.add(stream_id)
        status.last_request_time = self._clock()
        return status

    def record(self, key: str, node: Node, stream_id: int, event: Event) -> None:
        """`touch`, then fold `event` into the node's status (one call per stream event)."""
        status = self._by_key.get(key)
        if status is None:
            status = self._by_key[key] = NodeStatus(node)
        status.streams.add(stream_id)
        status.last_request_time = self._clock()
        status.record(event)

    def closed(self, key: str, stream_id: int) -> None:
        """Drop the stream; the status goes with the node's last stream."""
        status = self._by_key.get(key)
        if status is not None:
            status.streams.discard(stream_id)
            if not status.streams:
                del self._by_key[key]
