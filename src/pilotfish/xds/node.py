"""What a stream keeps of the node its client sent.

Envoy's node lists every extension compiled into it: 516 entries in Envoy 1.40, 61 KB on the
wire and about 140 KB parsed, the same on every Envoy of a build. Kept whole by every stream,
they would be most of the server's memory per proxy, and nothing serves a proxy by them. A
stream keeps the node without them; the first request, which `Callbacks.on_stream_request`
sees as sent, still carries them.
"""

from __future__ import annotations

from pilotfish.protos import Node

__all__ = ["kept_node"]


def kept_node(node: Node) -> Node:
    """A copy of `node` without its `extensions` (a copy, not `node` trimmed: clearing a field
    does not give back the memory a message holds)."""
    kept = Node()
    if not node.extensions:
        kept.CopyFrom(node)
        return kept
    for field, value in node.ListFields():
        name = field.name
        if name == "extensions":
            continue
        target = getattr(kept, name)
        if field.message_type is None:
            if field.is_repeated:
                target.extend(value)
            else:
                setattr(kept, name, value)
        elif field.is_repeated and not field.message_type.GetOptions().map_entry:
            target.extend(value)
        else:
            target.MergeFrom(value)  # a message, or a map
    return kept
