"""A cheaper `__init__` for frozen, slotted dataclasses made on every request.

Why: a frozen dataclass's generated `__init__` sets each field with ``object.__setattr__``, which
looks the field up on the type every time: a `WatchRequest` (nine fields) costs ~1.4 us, and a
proxy's request makes several such objects (the watch request, its events, the outcome). Setting
each slot through its own descriptor, bound once, halves that. Nothing else changes: the same
signature and defaults, and the instances stay frozen (only `__init__` bypasses the guard).
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

__all__ = ["construct", "fast_init"]

_T = TypeVar("_T", bound=type[Any])
_C = TypeVar("_C")


def fast_init(cls: _T) -> _T:
    """Give `cls`, a frozen dataclass with ``slots=True``, an `__init__` that sets its slots
    directly. Fields must be positional, with plain defaults if any (no factories), and the class
    must have no `__post_init__`: anything else raises TypeError."""
    params = dataclasses.fields(cls) if dataclasses.is_dataclass(cls) else ()
    if not params or not cls.__dataclass_params__.frozen or "__slots__" not in cls.__dict__:
        raise TypeError(f"{cls.__name__} is not a frozen dataclass with slots")
    if hasattr(cls, "__post_init__"):
        raise TypeError(f"{cls.__name__} has a __post_init__")
    namespace: dict[str, Any] = {}
    signature: list[str] = []
    body: list[str] = []
    for field in params:
        name = field.name
        if not field.init or field.kw_only or field.default_factory is not dataclasses.MISSING:
            raise TypeError(f"{cls.__name__}.{name}: only positional fields with plain defaults")
        namespace[f"_set_{name}"] = cls.__dict__[name].__set__
        if field.default is dataclasses.MISSING:
            signature.append(name)
        else:
            namespace[f"_default_{name}"] = field.default
            signature.append(f"{name}=_default_{name}")
        body.append(f"    _set_{name}(self, {name})\n")
    exec(f"def __init__(self, {', '.join(signature)}):\n{''.join(body)}", namespace)
    init = namespace["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    init.__module__ = cls.__module__
    init.__doc__ = cls.__init__.__doc__
    cls.__init__ = init
    return cls


def construct(cls: type[_C], **fields: Any) -> _C:
    """An instance of `cls`, a frozen dataclass with an instance `__dict__` (no slots), holding
    `fields` as given: no `__init__`, so none of its per-field `__setattr__` (several times the
    cost, for objects a mesh has one of per address, host or rule). The caller passes every
    field (and may fill cached properties); each caller has a test comparing with the
    constructor's instance."""
    made = object.__new__(cls)
    made.__dict__.update(fields)
    return made
