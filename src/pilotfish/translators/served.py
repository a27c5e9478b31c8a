"""What one proxy shape was last served, and its next snapshot made from that by what changed.

Tens of thousands of resources, of which a change touches a few: the next `Snapshot` must cost
those few. A message that is the very object given last round (from a reused memo unit) is
unchanged, which comparing the lists by position (or sets of ids) tells in C; only the rest is
looked at in Python: an equal message of the same name keeps its bytes, anything else is
serialized, and the snapshot is last round's `updated` by the difference.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import compress
from operator import is_not
from typing import Any, TypeVar

from pilotfish.bounded import Bounded
from pilotfish.cache import Assembled, CachedResource, Encoded, Messages, Serialized, Snapshot
from pilotfish.protos import (
    CLUSTER_TYPE,
    LISTENER_TYPE,
    SCOPED_ROUTE_TYPE,
    Message,
    ResourceType,
    references,
    resource_type,
)

__all__ = ["ServedResources"]

_REFERRING = frozenset({CLUSTER_TYPE, LISTENER_TYPE, SCOPED_ROUTE_TYPE})

T = TypeVar("T")

_MOVES: Bounded[tuple[int, int], tuple[Any, Any, set[int], list[Any]]] = Bounded(16)
"""What `_moved` found between two tuples, for the other shapes given the same ones (a round
asks for a pair per changed type and view; kept small, as each entry keeps last round's tuple)."""


class ServedResources:
    """Last round's resources of one shape per type: by id of the message given (each kept
    alive by its item, so no new object can have the id of one here), by name, and as listed."""

    def __init__(self) -> None:
        self._given: dict[str, dict[int, Serialized]] = {}
        self._by_name: dict[str, dict[str, Serialized]] = {}
        self._lists: dict[str, Sequence[Message | Assembled[Any] | Encoded[Any]]] = {}
        self._snapshot: Snapshot | None = None
        self._prefix = ""

    def snapshot(
        self, resources: Mapping[str, Sequence[Message]], version_prefix: str
    ) -> tuple[Snapshot, int, int]:
        """`resources` (by type) as a `Snapshot`, made from last round's by what differs;
        also how many resources were serialized, of how many."""
        previous = self._snapshot
        if previous is None or version_prefix != self._prefix:
            self._given = {}
            self._by_name = {}
            self._lists = {}
            snapshot = _empty(version_prefix)
        else:
            snapshot = previous
        removed: dict[str, list[str]] = {}
        added: dict[str, list[Message | object]] = {}
        changes: dict[str, tuple[object, ...]] = {}
        serialized = total = 0
        for key, given_messages in resources.items():
            row = resource_type(key)
            # Only these types name resources of others (`references`); the rest skip the look.
            refers = row.type_url in _REFERRING
            given = self._given.setdefault(key, {})
            by_name = self._by_name.setdefault(key, {})
            # Assembled and encoded messages (`Messages`) are taken as given: their bytes
            # without the message.
            messages: Sequence[Message | Assembled[Any] | Encoded[Any]] = (
                given_messages.items if isinstance(given_messages, Messages) else given_messages
            )
            total += len(messages)
            before = self._lists.get(key)
            if before is not None and before == messages:
                # The same objects (compared by identity first, in C: 40,000 in 0.03 ms), or
                # some equal ones: no change, and last round's list stays, whose objects
                # `given` knows.
                continue
            # The very tuple other shapes are given too (`SharedParts`), after the one they
            # were given last round: what is found between them, and the type made from that,
            # is the same for all of them, so it is found and made once.
            shared = (
                isinstance(given_messages, Messages)
                and given_messages.shared
                and (before is None or isinstance(before, tuple))
            )
            gone, fresh = _moved(before, messages, given, shared)
            self._lists[key] = messages
            lost: dict[str, Serialized] = {}
            for i in gone:
                old = given.pop(i)
                lost[old.cached.name] = old
                del by_name[old.cached.name]
            items: list[Message | object] = []
            if not by_name and not lost:
                # Nothing served of this type, nor just dropped (its first round): every
                # resource is new, so none is looked up to keep its bytes.
                made = _all_serialized(row, fresh, refers)
                by_name.update((item.cached.name, item) for item in made)
                given.update(zip(map(id, fresh), made, strict=True))
                items.extend(made)
                serialized += len(made)
                fresh = []
            for message in fresh:
                name = _name(row, message)
                if name in by_name:
                    raise ValueError(f"two {key} resources named {name!r}")
                # Taken from `lost` either way: an item added under a name replaces the one
                # there (`Snapshot.updated`), so the name need not be removed as well.
                item = lost.pop(name, None)
                if item is None or not _same(item.message, message):
                    item = _serialized(row.type_url, name, message, refers)
                    serialized += 1
                    items.append(item)
                # else the same resource again: nothing changed for the snapshot
                given[id(message)] = by_name[name] = item
            if lost or items:
                removed[key], added[key] = list(lost), items
                if shared:
                    changes[key] = (before, messages)
        self._snapshot = snapshot = snapshot.updated(removed, added, changes=changes)
        self._prefix = version_prefix
        return snapshot, serialized, total


def _name(row: ResourceType, message: Any) -> str:
    if isinstance(message, Encoded):
        return message.name
    return row.name_of(message.head if isinstance(message, Assembled) else message)


def _all_serialized(row: ResourceType, messages: Sequence[Any], refers: bool) -> list[Serialized]:
    """`messages`, all new, each with its resource (two of one name: the snapshot made from
    them, a type's first, raises)."""
    type_url = row.type_url
    return [
        # Most are `Encoded` (a mesh's clusters and load assignments): taken without dispatch.
        m.serialized(type_url)
        if type(m) is Encoded
        else _serialized(type_url, _name(row, m), m, refers)
        for m in messages
    ]


def _same(old: Any, new: Any) -> bool:
    """Whether last round's `old` serializes as `new` does (so it keeps its bytes)."""
    if isinstance(new, Assembled):
        # Compared by its pieces' bytes: building a 10 MB message costs more.
        return isinstance(old, Assembled) and old.same_bytes(new)
    if isinstance(new, Encoded):
        return isinstance(old, Encoded) and old.data == new.data
    return not isinstance(old, (Assembled, Encoded)) and bool(old == new)


def _serialized(type_url: str, name: str, message: Any, refers: bool) -> Serialized:
    """`message` with its resource (`refers`: the type names resources of others)."""
    if isinstance(message, Encoded):
        return message.serialized(type_url)
    if isinstance(message, Assembled):
        cached = CachedResource.of_data(type_url, name, message.pieces, version=message.version)
        return Serialized(message, cached, references(message.head) if refers else {})
    data = message.SerializeToString(deterministic=True)
    cached = CachedResource.of_data(type_url, name, data)
    return Serialized(message, cached, references(message) if refers else {})


def _empty(version_prefix: str) -> Snapshot:
    """One empty snapshot per prefix, for every shape's first round to start from (so shapes
    given the same resources make the same change to the same types, and share them)."""
    found = _EMPTY.get(version_prefix)
    if found is None:
        found = _EMPTY.put(version_prefix, Snapshot({}, version_prefix=version_prefix))
    return found


_EMPTY: Bounded[str, Snapshot] = Bounded(16)


def _moved(
    before: Sequence[T] | None, after: Sequence[T], given: Mapping[int, object], shared: bool
) -> tuple[set[int], list[T]]:
    """The ids of `given` (last round's objects) no longer in `after`, and the objects in
    `after` that are new, in order. Lists of one length are compared position by position
    (`is not`, in C): a few changed places, not 40,000 ids hashed; otherwise by sets of ids.
    `shared`: tuples other shapes are given too, so the comparison is kept for them (the
    entry keeps both tuples, so their ids stay theirs)."""
    if before is not None and len(before) == len(after):
        if shared and (known := _MOVES.get((id(before), id(after)))) is not None:
            return known[2], known[3]
        places = list(compress(range(len(after)), map(is_not, before, after)))
        old = {id(before[i]) for i in places}
        new = {id(after[i]) for i in places}
        moved = old - new, [after[i] for i in places if id(after[i]) not in old]
        if shared:
            _MOVES.put((id(before), id(after)), (before, after, *moved))
        return moved
    if not given:  # nothing served yet: all new, no ids to hash
        return set(), list(after)
    ids = set(map(id, after))
    fresh = ids - given.keys()
    return given.keys() - ids, list(compress(after, map(fresh.__contains__, map(id, after))))
