"""`Bounded`: at most `limit` entries, cleared when full; `put` keeps the first value given."""

from __future__ import annotations

from pilotfish.bounded import Bounded, ByIdentity


def test_put_keeps_the_first_value_and_clears_when_full() -> None:
    table: Bounded[str, int] = Bounded(2)
    assert table.put("a", 1) == 1
    assert table.put("a", 2) == 1  # kept already: shared, not replaced
    assert table.put("b", 3) == 3
    assert dict(table) == {"a": 1, "b": 3}
    assert table.put("c", 4) == 4  # full: cleared first
    assert dict(table) == {"c": 4}
    assert table.get("a") is None


def test_by_identity_finds_the_same_objects_only() -> None:
    names = frozenset({"a", "b"})
    equal = frozenset({"a", "b"})
    table: ByIdentity[str] = ByIdentity(2)
    assert table.put("ab", names, names) == "ab"
    assert table.get(names, names) == "ab"
    assert table.get(equal, names) is None  # equal, but another object: not looked at
    assert table.get(names) is None  # other objects, or another order, are other keys
    table.put("a", names)
    table.put("new", equal)  # full: cleared first
    assert table.get(names, names) is None and table.get(equal) == "new"


def test_by_identity_keeps_its_objects_so_their_identities_stay_theirs() -> None:
    table: ByIdentity[int] = ByIdentity(4)
    table.put(1, frozenset({"gone"}))  # no other reference: the table's keeps it alive
    for _ in range(100):  # a new object could take a dead one's identity; none can here
        assert table.get(frozenset({"other"})) is None
