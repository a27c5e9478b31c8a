"""`Bounded`: at most `limit` entries, cleared when full; `put` keeps the first value given."""

from __future__ import annotations

from pilotfish.bounded import Bounded


def test_put_keeps_the_first_value_and_clears_when_full() -> None:
    table: Bounded[str, int] = Bounded(2)
    assert table.put("a", 1) == 1
    assert table.put("a", 2) == 1  # kept already: shared, not replaced
    assert table.put("b", 3) == 3
    assert dict(table) == {"a": 1, "b": 3}
    assert table.put("c", 4) == 4  # full: cleared first
    assert dict(table) == {"c": 4}
    assert table.get("a") is None
