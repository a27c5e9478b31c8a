"""Delta answers kept by client state, so a fleet of streams in one state is answered once.

Streams in the same state share their `versions` and `names` objects (`pilotfish.xds.delta`),
so a state is known by the identities of those two (with `wildcard` and `initial`). Each entry
keeps the objects its key names, so their ids cannot be reused while it exists. The state an
answer leaves its clients in (`DeltaPreparedResponse.after`) is kept as needing nothing more:
the ACK of an answer costs a lookup, not a scan of every name. Used by `Snapshot` (per type)
and `LinearCache`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

from pilotfish.bounded import Bounded
from pilotfish.xds import DeltaPreparedResponse, DeltaWatchRequest

__all__ = ["DeltaAnswers", "Kept"]

_Key = tuple[int, int, bool, bool]


class Kept(NamedTuple):
    """An answer, with the state objects its key names (kept alive by it)."""

    versions: Mapping[str, str]
    names: frozenset[str]
    answer: DeltaPreparedResponse | None


class DeltaAnswers:
    """Answers by client state; cleared when `limit` states are kept (the states of a fleet's
    streams are few, and one seen once costs one answer, as it would anyway). Not locked:
    the owner holds its lock."""

    __slots__ = ("_table",)

    def __init__(self, limit: int = 128) -> None:
        self._table: Bounded[_Key, Kept] = Bounded(limit)

    def find(self, request: DeltaWatchRequest) -> Kept | None:
        """The answer kept for the request's state, if any (its `answer` may be None:
        nothing to send)."""
        return self._table.get(_key(request))

    def keep(
        self, request: DeltaWatchRequest, answer: DeltaPreparedResponse | None
    ) -> tuple[DeltaPreparedResponse | None, bool]:
        """Keep `answer` for the request's state; returns the answer kept (another thread's,
        if it kept one first) and whether it is `answer`."""
        table = self._table
        names = request.names
        kept = table.put(_key(request), Kept(request.versions, names, answer))
        if kept.answer is not answer:
            return kept.answer, False
        if answer is not None and answer.after is not None and answer.after[1] is names:
            held = answer.after[2]  # the clients' next state: nothing more to send them
            table.put((id(held), id(names), request.wildcard, False), Kept(held, names, None))
        return answer, True

    def clear(self) -> None:
        """Forget every answer (the resources changed)."""
        self._table.clear()


def _key(request: DeltaWatchRequest) -> _Key:
    return (id(request.versions), id(request.names), request.wildcard, request.initial)
