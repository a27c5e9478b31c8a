"""Hand-assembled protobuf wire bytes for the hot path of xDS responses.

Protobuf messages may be concatenated field by field, so a DiscoveryResponse can be built once per
(type, version, subscription) from resources serialized once, and each stream only appends its own
nonce field. This avoids re-serializing resources per stream (DESIGN.md: serialize once).
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = [
    "any_bytes",
    "any_head",
    "delta_response_body",
    "discovery_response_body",
    "duration",
    "length_delimited",
    "nonce_field",
    "numbered_nonce",
    "read_varint",
    "resource_bytes",
    "split_at_field",
    "unresolved_alias_bytes",
    "varint",
]

# Field numbers of envoy.service.discovery.v3.DiscoveryResponse and google.protobuf.Any.
_RESPONSE_VERSION_INFO = 1
_RESPONSE_RESOURCES = 2
_RESPONSE_TYPE_URL = 4
_RESPONSE_NONCE = 5
# envoy.service.discovery.v3.DeltaDiscoveryResponse and Resource.
_DELTA_SYSTEM_VERSION = 1
_DELTA_RESOURCES = 2
_DELTA_TYPE_URL = 4
_DELTA_REMOVED = 6
_RESOURCE_VERSION = 1
_RESOURCE_RESOURCE = 2
_RESOURCE_NAME = 3
_RESOURCE_ALIASES = 4
_RESOURCE_TTL = 6
_DURATION_SECONDS = 1
_DURATION_NANOS = 2
_ANY_TYPE_URL = 1
_ANY_VALUE = 2
_WIRE_LEN = 2


_ONE_BYTE = tuple(bytes((i,)) for i in range(0x80))


def varint(value: int) -> bytes:
    """Encode a non-negative int as a protobuf base-128 varint."""
    if value < 0x80:
        if value < 0:
            raise ValueError("varint of a negative number")
        return _ONE_BYTE[value]
    if value < 0x4000:
        return bytes(((value & 0x7F) | 0x80, value >> 7))
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def read_varint(data: bytes | bytearray, pos: int) -> tuple[int, int]:
    """Decode the varint at `data[pos]`; returns it and the position after it."""
    if data[pos] < 0x80:
        return data[pos], pos + 1
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint longer than 10 bytes")


def _head(tag: int, size: int) -> bytes:
    # Tag (one byte: field numbers below 16) and length of a length-delimited field.
    if size < 0x80:
        return bytes((tag, size))
    if size < 0x4000:
        return bytes((tag, (size & 0x7F) | 0x80, size >> 7))
    return _ONE_BYTE[tag] + varint(size)


def length_delimited(field_number: int, data: bytes) -> bytes:
    """One length-delimited field (string, bytes or sub-message)."""
    size = len(data)
    if field_number < 16 and size < 0x80:  # most fields of the resources written as bytes
        return _SHORT_HEADS[field_number << 7 | size] + data
    tag = _TAGS.get(field_number)
    if tag is None:
        tag = _TAGS[field_number] = varint((field_number << 3) | _WIRE_LEN)
    return b"".join((tag, varint(size), data))


_TAGS: dict[int, bytes] = {}  # the tag of a length-delimited field, by field number (a few)
_SHORT_HEADS = tuple(bytes(((n >> 7 << 3) | _WIRE_LEN, n & 0x7F)) for n in range(16 << 7))
"""Tag and length of each field numbered below 16 with fewer than 128 bytes, at `number << 7 |
size`: taken, not made (virtual hosts and clusters written as bytes have dozens each)."""


def _field_head(field_number: int, size: int) -> bytes:
    """Tag and length of a length-delimited field: joined with the data by the caller, so a
    large value (a 10 MB route configuration) is copied once, not once per wrapper."""
    tag = (field_number << 3) | _WIRE_LEN
    if tag < 0x80:
        return _head(tag, size)
    return varint(tag) + varint(size)


def split_at_field(data: bytes, field_number: int) -> tuple[bytes, bytes]:
    """A serialized message cut where a field numbered `field_number` would be written (fields
    come in number order in deterministic output): the fields before it and those after it."""
    pos = 0
    while pos < len(data):
        tag, after_tag = read_varint(data, pos)
        if tag >> 3 >= field_number:
            return data[:pos], data[pos:]
        wire_type = tag & 7
        if wire_type == 0:
            _, pos = read_varint(data, after_tag)
        elif wire_type == 1:
            pos = after_tag + 8
        elif wire_type == _WIRE_LEN:
            size, start = read_varint(data, after_tag)
            pos = start + size
        elif wire_type == 5:
            pos = after_tag + 4
        else:
            raise ValueError(f"wire type {wire_type} not expected at the top level")
    return data, b""


def any_head(type_url: str, size: int) -> bytes:
    """The start of a serialized `Any` holding a value of `size` bytes: the value follows."""
    key = (type_url, size)
    head = _ANY_HEADS.get(key)
    if head is None:
        url = _ANY_URLS.get(type_url)
        if url is None:
            url = _ANY_URLS[type_url] = length_delimited(_ANY_TYPE_URL, type_url.encode())
        head = url + _field_head(_ANY_VALUE, size)
        if size < _SMALL:
            _ANY_HEADS[key] = head
    return head


_ANY_URLS: dict[str, bytes] = {}  # the type URL field of an Any, by type URL (a few)
_SMALL = 2048
_ANY_HEADS: dict[tuple[str, int], bytes] = {}
"""Heads of small values by type URL and size: one per resource of a mesh (80,000 at 10,000
services) and only a few thousand distinct, so looked up rather than written (a fifth of the
cost). Bounded by the few types times `_SMALL` sizes."""


def any_bytes(type_url: str, value: bytes) -> bytes:
    """The serialized `google.protobuf.Any` holding `value`."""
    url = length_delimited(_ANY_TYPE_URL, type_url.encode())
    return b"".join((url, _field_head(_ANY_VALUE, len(value)), value))


def discovery_response_body(
    version: str, type_url: str, resources: Iterable[bytes | tuple[bytes, ...]]
) -> bytes:
    """A DiscoveryResponse without its nonce; `resources` are serialized `Any` messages, each
    as bytes or as parts to join (`CachedResource.sotw_parts`)."""
    parts = [length_delimited(_RESPONSE_VERSION_INFO, version.encode())]
    tag = (_RESPONSE_RESOURCES << 3) | _WIRE_LEN
    for item in resources:  # head and bytes apart: each resource is copied once, by join
        if isinstance(item, bytes):
            parts.append(_head(tag, len(item)))
            parts.append(item)
        else:
            parts.append(_head(tag, sum(map(len, item))))
            parts.extend(item)
    parts.append(length_delimited(_RESPONSE_TYPE_URL, type_url.encode()))
    return b"".join(parts)


_NONCE_TAG = (_RESPONSE_NONCE << 3) | _WIRE_LEN
_NONCE_HEADS = tuple(bytes((_NONCE_TAG, size)) for size in range(0x80))


def nonce_field(nonce: str) -> bytes:
    """The nonce field to append to a prepared DiscoveryResponse body."""
    data = nonce.encode()
    if len(data) < 0x80:  # always, for pilotfish's nonces: one per response and stream
        return _NONCE_HEADS[len(data)] + data
    return _head(_NONCE_TAG, len(data)) + data


_SHARED_NONCES = 1024
_NUMBERED: dict[int, tuple[str, bytes]] = {}


def numbered_nonce(number: int) -> tuple[str, bytes]:
    """A stream's `number`-th nonce, `str(number)`, and its field (`nonce_field`).

    Every stream counts its responses from 1, so a fleet's streams hold the same few nonces:
    below `_SHARED_NONCES` they are made once and shared (the last nonce of each type is kept
    per stream for its ACK: 344 B a proxy when each was its own)."""
    found = _NUMBERED.get(number)
    if found is not None:
        return found
    nonce = str(number)
    pair = (nonce, nonce_field(nonce))
    if number < _SHARED_NONCES:
        return _NUMBERED.setdefault(number, pair)  # atomic: threads racing keep one
    return pair


def duration(seconds: float) -> bytes:
    """A serialized `google.protobuf.Duration` (non-negative)."""
    whole = int(seconds)
    nanos = round((seconds - whole) * 1e9)
    out = b""
    if whole:
        out += varint(_DURATION_SECONDS << 3) + varint(whole)
    if nanos:
        out += varint(_DURATION_NANOS << 3) + varint(nanos)
    return out


def resource_bytes(
    name: str, version: str, any_data: bytes | tuple[bytes, ...] | None, ttl: float | None = None
) -> bytes:
    """A serialized `Resource` wrapper: name, version, the `Any` (bytes, or parts to join;
    absent in a TTL heartbeat) and an optional TTL."""
    parts = [length_delimited(_RESOURCE_VERSION, version.encode())]
    if any_data is not None:
        pieces = (any_data,) if isinstance(any_data, bytes) else any_data
        parts.append(_field_head(_RESOURCE_RESOURCE, sum(map(len, pieces))))
        parts += pieces
    parts.append(length_delimited(_RESOURCE_NAME, name.encode()))
    if ttl is not None:
        parts.append(length_delimited(_RESOURCE_TTL, duration(ttl)))
    return b"".join(parts)


def unresolved_alias_bytes(name: str) -> bytes:
    """A serialized `Resource` that only names `name`, also as its alias: how a delta response
    says an on-demand (VHDS) name resolves to nothing."""
    return length_delimited(_RESOURCE_NAME, name.encode()) + length_delimited(
        _RESOURCE_ALIASES, name.encode()
    )


def delta_response_body(
    system_version: str, type_url: str, resources: Iterable[bytes], removed: Iterable[str]
) -> bytes:
    """A DeltaDiscoveryResponse without its nonce; `resources` are serialized `Resource`s."""
    parts = [length_delimited(_DELTA_SYSTEM_VERSION, system_version.encode())]
    tag = (_DELTA_RESOURCES << 3) | _WIRE_LEN
    for item in resources:
        parts.append(_head(tag, len(item)))
        parts.append(item)
    parts.append(length_delimited(_DELTA_TYPE_URL, type_url.encode()))
    parts.extend(length_delimited(_DELTA_REMOVED, name.encode()) for name in removed)
    return b"".join(parts)
