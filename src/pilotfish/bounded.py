"""A dict that forgets everything once full: the small caches of the hot paths.

Why: the translators and the protocol core keep tables of things asked for again soon (a parsed
request, a merged policy, a cluster template, a stream state's next state). A miss only costs
making the value again, so clearing the table when it is full bounds its memory with no work
per hit (an LRU's bookkeeping on every lookup would cost more than the lookups save).
"""

from __future__ import annotations

from typing import Generic, TypeVar

__all__ = ["Bounded", "ByIdentity"]

K = TypeVar("K")
V = TypeVar("V")


class Bounded(dict[K, V]):
    """A dict of at most `limit` entries: `put` clears it first when it is full."""

    __slots__ = ("limit",)

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit

    def put(self, key: K, value: V) -> V:
        """Keep `value` for `key`, unless a value is kept for it already (another thread's:
        it is shared); returns the value kept."""
        if len(self) >= self.limit:
            self.clear()
        return self.setdefault(key, value)


class ByIdentity(Generic[V]):
    """Values worked out from one or two objects that never change, found again by those
    objects' identities: at most `limit` of them, all forgotten once full (as `Bounded`).

    Why: streams of a kind share the objects they hold (a subscription's set of names, the
    versions they were sent), so what a stream works out from them, walking a thousand names,
    every other stream of the kind would work out again. Identity is a lookup where equality
    is a walk. The objects are kept with their value: while they are alive no other object
    has their identities, so a match is always the same objects. The caller vouches that
    they do not change."""

    __slots__ = ("_values", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._values: dict[tuple[int, int], tuple[object, object, V]] = {}

    def get(self, first: object, second: object = None) -> V | None:
        """The value kept for these very objects (in this order), if any."""
        found = self._values.get((id(first), id(second)))
        return None if found is None else found[2]

    def put(self, value: V, first: object, second: object = None) -> V:
        """Keep `value` for these objects (one, or two); returns it."""
        values = self._values
        if len(values) >= self.limit:
            values.clear()
        values[id(first), id(second)] = (first, second, value)
        return value
