"""`fast_init` gives a frozen dataclass a cheaper `__init__` and changes nothing else."""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any

import pytest

from pilotfish.frozen import fast_init


@dataclasses.dataclass(frozen=True, slots=True)
class Plain:
    name: str
    size: int
    tags: tuple[str, ...] = ()
    note: str | None = None
    cache: bytes | None = dataclasses.field(default=None, compare=False, repr=False)


Fast = fast_init(
    dataclasses.make_dataclass(
        "Fast",
        [(f.name, f.type, f) for f in dataclasses.fields(Plain)],
        frozen=True,
        slots=True,
    )
)


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [(("a", 1), {}), (("a", 1, ("x",)), {"note": "n"}), ((), {"name": "b", "size": 2})],
)
def test_same_fields_as_the_dataclass_init(args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    plain, fast = Plain(*args, **kwargs), Fast(*args, **kwargs)
    assert [getattr(fast, f.name) for f in dataclasses.fields(Fast)] == [
        getattr(plain, f.name) for f in dataclasses.fields(Plain)
    ]
    assert fast == Fast(*args, **kwargs) and hash(fast) == hash(Fast(*args, **kwargs))


def test_signature_errors_and_frozenness_are_kept() -> None:
    assert list(inspect.signature(Fast).parameters) == ["name", "size", "tags", "note", "cache"]
    with pytest.raises(TypeError):
        Fast("a")  # a field without a default is missing
    with pytest.raises(TypeError):
        Fast("a", 1, nope=2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        Fast("a", 1).name = "b"


def test_only_frozen_slotted_dataclasses_without_factories() -> None:
    @dataclasses.dataclass(slots=True)
    class Mutable:
        x: int

    @dataclasses.dataclass(frozen=True)
    class NoSlots:
        x: int

    @dataclasses.dataclass(frozen=True, slots=True)
    class Factory:
        x: list[int] = dataclasses.field(default_factory=list)

    @dataclasses.dataclass(frozen=True, slots=True)
    class PostInit:
        x: int

        def __post_init__(self) -> None:
            pass

    for cls in (Mutable, NoSlots, Factory, PostInit):
        with pytest.raises(TypeError):
            fast_init(cls)


def test_construct_makes_the_constructors_instance_without_its_init() -> None:
    """`construct` gives the instance the constructor would for the same fields, still
    frozen, and never runs `__init__`."""
    import dataclasses

    from pilotfish.frozen import construct

    @dataclasses.dataclass(frozen=True)
    class Point:
        x: int
        y: int = 0

        def __post_init__(self) -> None:
            raise AssertionError("construct must not run __init__")

    made = construct(Point, x=1, y=2)
    assert type(made) is Point and vars(made) == {"x": 1, "y": 2}
    with pytest.raises(dataclasses.FrozenInstanceError):
        made.x = 3  # type: ignore[misc]
