"""What a stream keeps of the node its client sent.

Envoy's node lists every extension compiled into it: 516 entries in Envoy 1.40, 61 KB on the
wire and about 140 KB parsed, the same on every Envoy of a build. Kept whole by every stream,
they would be most of the server's memory per proxy, and nothing serves a proxy by them. A
stream keeps the node without them (`kept_node`); the first request, which
`Callbacks.on_stream_request` sees as sent, still carries them, unless the callbacks say they
need not (`Callbacks.node_extensions_in_requests`): then the transport cuts the list out of
the request's bytes before parsing them (`without_extensions`), which spares parsing 516
messages on every connection.
"""

from __future__ import annotations

from pilotfish.bounded import Bounded
from pilotfish.protos import Node, wire

__all__ = ["kept_node", "without_extensions"]

_EXTENSION_TAG = 0x4A  # Node.extensions: field 9, length-delimited
_VERSION_TAG = 0x0A  # DiscoveryRequest.version_info: field 1, length-delimited
_SOTW_NODE_TAG = 0x12  # DiscoveryRequest.node: field 2
_DELTA_NODE_TAG = 0x0A  # DeltaDiscoveryRequest.node: field 1
_RUNS: Bounded[bytes, None] = Bounded(8)
"""Extension lists seen lately, as their wire bytes: one per build of Envoy in the fleet."""


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


def without_extensions(raw: bytes, delta: bool) -> bytes:
    """A request's wire bytes (a DiscoveryRequest, or with `delta` a DeltaDiscoveryRequest)
    with the extension list of its node cut out, or `raw` itself when it has none (or is not
    laid out as Envoy writes it: the node first, after any version; its fields in order).

    Envoy's list is one run of fields, the same bytes on every Envoy of a build: found again
    with one comparison (`_RUNS`); the first of a build is walked entry by entry."""
    try:
        start = 0
        if not delta and raw[:1] == bytes((_VERSION_TAG,)):  # before the node
            length, start = wire.read_varint(raw, 1)
            start += length
        node_tag = _DELTA_NODE_TAG if delta else _SOTW_NODE_TAG
        if start >= len(raw) or raw[start] != node_tag:
            return raw
        length, node = wire.read_varint(raw, start + 1)
        end = node + length
        if end > len(raw):
            return raw
        run = node  # Node's fields before extensions (1-8) are all length-delimited
        while run < end and raw[run] != _EXTENSION_TAG:
            if raw[run] & 0x87 != 0x02:  # not a one-byte length-delimited tag: leave it
                return raw
            length, run = wire.read_varint(raw, run + 1)
            run += length
        if run >= end:
            return raw
        stop = _run_end(raw, run, end)
    except (IndexError, ValueError):
        return raw  # malformed: parsing it reports the error
    if stop < 0:
        return raw
    node_bytes = raw[node:run] + raw[stop:end]
    return raw[:start] + wire.length_delimited(node_tag >> 3, node_bytes) + raw[end:]


def _run_end(raw: bytes, run: int, end: int) -> int:
    """Where the run of extension fields starting at `raw[run]` ends (within `end`), or -1."""
    for known in tuple(_RUNS):  # a copy: servers on other threads may add to it
        stop = run + len(known)
        if stop <= end and raw.startswith(known, run):
            if stop < end and raw[stop] == _EXTENSION_TAG:
                break  # this build's list and more: walk it
            return stop
    stop = run
    while stop < end and raw[stop] == _EXTENSION_TAG:
        length, stop = wire.read_varint(raw, stop + 1)
        stop += length
    if stop > end:
        return -1
    _RUNS.put(raw[run:stop], None)
    return stop
