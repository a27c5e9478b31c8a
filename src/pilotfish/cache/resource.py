"""A resource serialized once: the bytes every response and every stream share."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pilotfish.frozen import fast_init
from pilotfish.protos import RESOURCE_TYPES, RESOURCE_WRAPPER_TYPE, Message, resource_type, wire

__all__ = ["CachedResource", "Serialized", "WithTtl", "content_version", "to_message"]


def content_version(data: bytes) -> str:
    """A short content hash used as a version: equal bytes, equal version, on every server.
    (SHA-256, cut to 64 bits: with the CPU's SHA instructions twice as fast as BLAKE2b on a
    10 MB route configuration.)"""
    made = _SHA256.copy()  # cheaper than a new one (0.41 -> 0.37 us for 200 bytes)
    made.update(data)
    return made.hexdigest()[:16]


_SHA256 = hashlib.sha256()


def to_message(type_url: str, resource: object) -> Message:
    """Accept an xds-protos message, or anything that serializes to the type's wire bytes.

    Messages from envoy-data-plane (betterproto dataclasses) are converted once through their
    bytes, so the hot path only ever sees the fast upb classes.
    """
    cls = RESOURCE_TYPES[type_url].message
    if isinstance(resource, cls):
        return resource
    if isinstance(resource, Message):
        raise TypeError(f"{type(resource).__name__} given where {type_url} resources are expected")
    to_bytes = getattr(resource, "SerializeToString", None) or getattr(resource, "__bytes__", None)
    if to_bytes is None:
        raise TypeError(f"cannot serialize {type(resource).__name__} as {type_url}")
    data = to_bytes()
    if not isinstance(data, bytes):
        raise TypeError(f"{type(resource).__name__} did not serialize to bytes")
    return cls.FromString(data)


@dataclass(frozen=True, slots=True)
class WithTtl:
    """A resource the client drops `ttl` seconds after it last heard of it (xDS resource TTL).

    The server's heartbeats keep it alive; if the server goes away, it expires in the client.
    """

    resource: Message | object
    ttl: float


@fast_init  # a mesh makes one per resource: 80,000 at 10,000 services
@dataclass(frozen=True, slots=True)
class CachedResource:
    """One resource: name, deterministic bytes, content version, and the wrappers responses
    carry (`any` for state-of-the-world, `resource` for delta). The wrappers of `data` are
    joined only when first asked for, and responses join `sotw_parts` themselves: a 10 MB
    route configuration is not copied twice more at every change."""

    type_url: str
    name: str
    pieces: tuple[bytes, ...]
    """The serialized resource, in the pieces it was made of (`Assembled`; usually one):
    responses join them straight into their body, `data` joins them when asked."""
    any_head: bytes
    """The `Any`'s type URL field and the head of its value field: `any` is this + `data`."""
    version: str
    ttl: float | None = None
    ttl_any: bytes = b""
    heartbeat_any: bytes = b""
    heartbeat_resource: bytes = b""
    _any: bytes | None = field(default=None, compare=False, repr=False)
    _resource: bytes | None = field(default=None, compare=False, repr=False)
    _data: bytes | None = field(default=None, compare=False, repr=False)

    @classmethod
    def of(cls, type_url: str, message: Message, ttl: float | None = None) -> CachedResource:
        """Serialize `message` (deterministically) once, with its wrappers."""
        data = message.SerializeToString(deterministic=True)
        return cls.of_data(type_url, resource_type(type_url).name_of(message), data, ttl)

    @classmethod
    def of_data(
        cls,
        type_url: str,
        name: str,
        data: bytes | tuple[bytes, ...],
        ttl: float | None = None,
        *,
        version: str | None = None,
    ) -> CachedResource:
        """A resource already serialized (deterministically) as `data` (or in pieces, with
        its `version` given), with its wrappers; `version`: its content hash if already known
        (`Assembled.version`)."""
        if ttl is None and version is None and isinstance(data, bytes):  # the most made
            head = wire.any_head(type_url, len(data))
            return _plain_resource(type_url, name, (data,), head, content_version(data))
        pieces = (data,) if isinstance(data, bytes) else data
        # A TTL is part of what the client is told: changing it is a new version.
        if version is None or ttl is not None:
            joined = b"".join(pieces)
            version = content_version(joined if ttl is None else joined + f"\0ttl={ttl!r}".encode())
        head = wire.any_head(type_url, sum(map(len, pieces)))
        if ttl is None:
            return _plain_resource(type_url, name, pieces, head, version)
        resource = wire.resource_bytes(name, version, (head, *pieces), ttl)
        heartbeat = wire.resource_bytes(name, version, None, ttl)
        return cls(
            type_url,
            name,
            pieces,
            head,
            version,
            ttl=ttl,
            ttl_any=wire.any_bytes(RESOURCE_WRAPPER_TYPE, resource),
            heartbeat_any=wire.any_bytes(RESOURCE_WRAPPER_TYPE, heartbeat),
            heartbeat_resource=heartbeat,
            _resource=resource,
        )

    @property
    def data(self) -> bytes:
        """The serialized resource (its pieces joined, once)."""
        if len(self.pieces) == 1:
            return self.pieces[0]
        if self._data is None:
            object.__setattr__(self, "_data", b"".join(self.pieces))
        assert self._data is not None
        return self._data

    @property
    def any(self) -> bytes:
        """The serialized `Any` holding the resource."""
        if self._any is None:
            object.__setattr__(self, "_any", b"".join((self.any_head, *self.pieces)))
        assert self._any is not None
        return self._any

    @property
    def resource(self) -> bytes:
        """The serialized delta `Resource` wrapper (name, version, the `Any`, its TTL)."""
        if self._resource is None:
            parts = (self.any_head, *self.pieces)
            object.__setattr__(
                self, "_resource", wire.resource_bytes(self.name, self.version, parts)
            )
        assert self._resource is not None
        return self._resource

    def sotw_parts(self, ttl_aware: bool) -> tuple[bytes, ...]:
        """What a SotW response carries, in parts to join: the `Any`, or the `Resource`
        wrapper with its TTL where understood."""
        if ttl_aware and self.ttl is not None:
            return (self.ttl_any,)
        return (self.any_head, *self.pieces)

    def message(self) -> Message:
        """A fresh copy of the message; changing it changes nothing in the cache."""
        return RESOURCE_TYPES[self.type_url].message.FromString(self.data)


class _Unfrozen:
    """`CachedResource`'s very slots, without the frozen guard: an instance filled here and
    then given `CachedResource` as its class costs 0.4x the frozen `__init__` (a full
    translation makes one per resource, 80,000 at 10,000 services)."""

    __slots__ = CachedResource.__slots__


def _plain_resource(
    type_url: str, name: str, pieces: tuple[bytes, ...], any_head: bytes, version: str
) -> CachedResource:
    """`CachedResource(type_url, name, pieces, any_head, version)` (no TTL), made as
    `_Unfrozen` (`of_data`, which knows the head and version by then). Every slot is set here:
    `tests/test_cached_resource.py` compares them with the constructor's."""
    made: Any = _Unfrozen()
    made.type_url, made.name, made.pieces = type_url, name, pieces
    made.any_head, made.version, made.ttl = any_head, version, None
    made.ttl_any = made.heartbeat_any = made.heartbeat_resource = b""
    made._any = made._resource = made._data = None
    made.__class__ = CachedResource
    result: CachedResource = made
    return result


@fast_init  # one per resource of a translation, as `CachedResource`
@dataclass(frozen=True, slots=True)
class Serialized:
    """A message and the `CachedResource` already made from it: a `Snapshot` given one takes
    its bytes as they are (how an unchanged resource keeps them from one snapshot to the next).
    The caller guarantees `cached` is `message` serialized."""

    message: Message | object
    """The message, or what it is built from (`translators.Assembled`)."""
    cached: CachedResource
    refs: Mapping[str, set[str]] | None = None
    """What the resource names in other types (`references(message)`), if already known."""
