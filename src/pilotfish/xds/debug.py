"""A JSON-able view of a stream's protocol state: what a proxy subscribed to, holds, rejected.

Feeds debug endpoints and logs; built on demand from the sans-IO state, never kept.
"""

from __future__ import annotations

from typing import Any

from pilotfish.xds.delta import DeltaStream
from pilotfish.xds.session import Session

__all__ = ["describe_session"]


def describe_session(session: Session) -> dict[str, Any]:
    """Stream id, node, variant and, per type, subscription, versions and last NACK."""
    protocol = session.protocol
    delta = isinstance(protocol, DeltaStream)
    node = protocol.node
    types: dict[str, dict[str, Any]] = {}
    for type_url, state in protocol.types.items():
        nack = state.last_nack
        entry: dict[str, Any] = {
            "names": sorted(state.names),
            "wildcard": state.wildcard,
            "sent_version": state.sent_version,
            "sent_nonce": state.sent_nonce,
            "acked_version": state.acked_version,
            "awaiting_ack": state.awaiting_ack,
            "responses_sent": state.responses_sent,
            "last_nack": None
            if nack is None
            else {"version": nack.version, "nonce": nack.nonce, "message": nack.message},
        }
        if isinstance(protocol, DeltaStream):
            entry["held"] = dict(sorted(protocol.types[type_url].versions.items()))
        types[type_url] = entry
    return {
        "stream_id": protocol.stream_id,
        "node_id": "" if node is None else node.id,
        "node_cluster": "" if node is None else node.cluster,
        "variant": "delta" if delta else "sotw",
        "service_type": protocol.type_url or "ads",
        "types": types,
    }
