"""A dict that forgets everything once full: the small caches of the hot paths.

Why: the translators and the protocol core keep tables of things asked for again soon (a parsed
request, a merged policy, a cluster template, a stream state's next state). A miss only costs
making the value again, so clearing the table when it is full bounds its memory with no work
per hit (an LRU's bookkeeping on every lookup would cost more than the lookups save).
"""

from __future__ import annotations

from typing import TypeVar

__all__ = ["Bounded"]

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
