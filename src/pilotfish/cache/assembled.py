"""A message kept as the serialized pieces it is made of, for the one huge resource of a mesh.

A sidecar's route configuration holds a virtual host per service: 10,000 services make it 10 MB.
One VirtualService edit changes one host, yet building the message copies all of them, and
serializing, comparing and hashing it costs as much again. `Assembled` keeps the configuration
as its head (every field but the hosts) and each host's bytes, serialized once per host object:
the resource's bytes are one join, and the message is only built if someone asks for it.
`Encoded` (`encoded.py`) is the same idea for the many small resources; `Messages` lists either
as messages.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from itertools import compress
from operator import is_not
from typing import Any, Generic, TypeVar, overload

from pilotfish.protos import Message, wire

from .encoded import Encoded

__all__ = ["Assembled", "Encoded", "Messages"]

M = TypeVar("M", bound=Message)


class Assembled(Generic[M]):
    """`head` with `parts` as its repeated field `field_number`, serialized by joining the
    bytes of the head's fields and each part's (framed) bytes; `data` equals the
    deterministic serialization of the whole message."""

    __slots__ = (
        "_data",
        "_message",
        "_version",
        "digests",
        "field_number",
        "framed",
        "head",
        "parts",
    )

    def __init__(
        self,
        head: M,
        field_number: int,
        parts: Sequence[Message | Encoded[Any]],
        previous: Assembled[M] | None = None,
    ) -> None:
        self.head = head
        self.field_number = field_number
        self.parts = list(parts)
        self._version: str | None = None
        # A part that is the very object of `previous` keeps its bytes (`previous` holds its
        # parts, so no other object can have its id meanwhile).
        if previous is not None and len(previous.parts) == len(self.parts):
            # Compared place by place (in C): only the places holding another object.
            self.framed: list[bytes] = list(previous.framed)
            self.digests: list[bytes] = list(previous.digests)
            for i in compress(range(len(self.parts)), map(is_not, previous.parts, self.parts)):
                self.framed[i], self.digests[i] = self._piece(self.parts[i])
        else:
            known: dict[int, tuple[bytes, bytes]] = {}
            if previous is not None:
                known = {
                    id(p): (f, d)
                    for p, f, d in zip(
                        previous.parts, previous.framed, previous.digests, strict=True
                    )
                }
            pieces = [known.get(id(part)) or self._piece(part) for part in self.parts]
            self.framed = [f for f, _ in pieces]
            self.digests = [d for _, d in pieces]
        self._data: bytes | None = None
        self._message: M | None = None

    def _piece(self, part: Message | Encoded[Any]) -> tuple[bytes, bytes]:
        data = part.data if isinstance(part, Encoded) else _bytes(part)
        framed = wire.length_delimited(self.field_number, data)
        return framed, hashlib.sha256(framed).digest()[:16]

    @property
    def version(self) -> str:
        """A content hash made from the pieces' hashes: equal bytes made of equal pieces have
        equal versions (on every server), without hashing 10 MB at every change."""
        if self._version is None:
            digest = hashlib.sha256(_bytes(self.head))
            digest.update(self.field_number.to_bytes(4, "big"))
            digest.update(b"".join(self.digests))
            self._version = digest.hexdigest()[:16]
        return self._version

    def same_bytes(self, other: Assembled[M]) -> bool:
        """Whether `other` serializes to the same bytes, compared piece by piece (most pieces
        are the same objects): not 10 MB compared, nor joined."""
        return (
            self.field_number == other.field_number
            and _bytes(self.head) == _bytes(other.head)
            and self.framed == other.framed
        )

    @property
    def pieces(self) -> tuple[bytes, ...]:
        """The whole message's deterministic serialization, in pieces: the head's fields
        before the repeated field, each part, the head's fields after it."""
        before, after = wire.split_at_field(_bytes(self.head), self.field_number)
        return (before, *self.framed, after)

    @property
    def data(self) -> bytes:
        """The whole message's deterministic serialization."""
        if self._data is None:
            self._data = b"".join(self.pieces)
        return self._data

    def message(self) -> M:
        """The message itself, built on first use."""
        if self._message is None:
            message: M = type(self.head).FromString(self.data)
            self._message = message
        return self._message


def _bytes(message: Message) -> bytes:
    return message.SerializeToString(deterministic=True)


class Messages(Sequence[M]):
    """Messages some of which may be `Assembled` or `Encoded`: built when read, as they are
    given in `items` (what a snapshot serializes from without building them). `shared`: the
    very same `items` tuple is given for other proxies too (`translators.SharedParts`), so
    what their snapshots make of it may be shared."""

    __slots__ = ("items", "shared")

    def __init__(
        self, items: Sequence[M | Assembled[M] | Encoded[M]], *, shared: bool = False
    ) -> None:
        self.items = tuple(items)
        self.shared = shared

    @overload
    def __getitem__(self, index: int) -> M: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[M]: ...

    def __getitem__(self, index: int | slice) -> M | Sequence[M]:
        if isinstance(index, slice):
            return [_built(item) for item in self.items[index]]
        return _built(self.items[index])

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[M]:
        return (_built(item) for item in self.items)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Sequence):
            return list(self) == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # messages are not hashable either

    def __repr__(self) -> str:
        return f"Messages({list(self)!r})"


def _built(item: M | Assembled[M] | Encoded[M]) -> M:
    return item.message() if isinstance(item, (Assembled, Encoded)) else item
