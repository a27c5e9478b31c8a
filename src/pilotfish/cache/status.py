"""Per-node status: which streams a node has open and where each type stands.

Kept only while the node has a stream: the last stream closing removes it, so nothing grows per
disconnected proxy.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pilotfish.protos import Node
from pilotfish.xds import Acked, Event, Nacked, Sent

__all__ = ["NodeStatus", "TypeStatus"]


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
