"""A message kept only as its bytes, for the many small resources of a large mesh.

A mesh's tens of thousands of clusters and load assignments are kept as their bytes, not as
messages: upb takes about 2.6 KB for a message whose bytes are 200, so a large translation
neither holds hundreds of megabytes of messages nor builds each next message in a heap that
only grows. (`Assembled` is the same idea for the one huge resource.)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Generic, TypeVar

from pilotfish.protos import Message

from .resource import CachedResource, Serialized

__all__ = ["Encoded"]

M = TypeVar("M", bound=Message)


class Encoded(Generic[M]):
    """A message kept only as its deterministic bytes, with its name and what it names in
    other types (`references`, known when it was made); `message()` parses a fresh copy."""

    __slots__ = ("_cached", "data", "message_type", "name", "refs")

    def __init__(self, message: M, name: str, refs: Mapping[str, set[str]] | None = None) -> None:
        self.data = message.SerializeToString(deterministic=True)
        self.message_type: type[M] = type(message)
        self.name = name
        self.refs: Mapping[str, set[str]] = refs if refs is not None else {}
        self._cached: CachedResource | None = None

    @classmethod
    def of_data(
        cls,
        message_type: type[M],
        name: str,
        data: bytes,
        refs: Mapping[str, set[str]] | None = None,
    ) -> Encoded[M]:
        """One made as bytes already: `data` must be a deterministic serialization."""
        encoded: Encoded[M] = cls.__new__(cls)
        encoded.data, encoded.message_type, encoded.name = data, message_type, name
        encoded.refs = refs if refs is not None else {}
        encoded._cached = None
        return encoded

    def cached(self, type_url: str) -> CachedResource:
        """The resource served from these bytes (hashed once, however many proxy shapes
        are served this object)."""
        cached = self._cached
        if cached is None:
            cached = self._cached = CachedResource.of_data(type_url, self.name, self.data)
        return cached

    def serialized(self, type_url: str) -> Serialized:
        """This message with its resource and references, as a `Snapshot` takes it as it is
        (made per call, not kept: it would hold this object, a cycle for the collector)."""
        return Serialized(self, self._cached or self.cached(type_url), self.refs)

    def message(self) -> M:
        """The message, parsed from the bytes (a new one each time: changing it changes
        nothing here)."""
        return self.message_type.FromString(self.data)

    def __eq__(self, other: object) -> bool:
        # Equal bytes, equal message: lists of them compare in C, identity first (a unit
        # made again to the same bytes leaves its type unchanged, 40,000 items not walked).
        if not isinstance(other, Encoded):
            return NotImplemented
        return (
            self.message_type is other.message_type
            and self.name == other.name
            and self.data == other.data
        )

    __hash__ = None  # type: ignore[assignment]  # messages are not hashable either

    def __repr__(self) -> str:
        return f"Encoded({self.message_type.__name__} {self.name!r}, {len(self.data)} bytes)"
