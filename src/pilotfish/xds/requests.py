"""What both stream variants (SotW and delta) do first with a request: find the type it is for,
settle (ACK or NACK) the response it answers, and recognise a long subscription parsed before."""

from __future__ import annotations

import sys
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from pilotfish.errors import RemoteProtocolError
from pilotfish.frozen import fast_init
from pilotfish.protos import DeltaDiscoveryRequest, DiscoveryRequest, Status, wire
from pilotfish.xds.events import Acked, Event, Nacked
from pilotfish.xds.watch import DeltaWatchRequest, WatchRequest

__all__ = [
    "Received",
    "RecentRequests",
    "SameSets",
    "acknowledge",
    "request_span",
    "request_type_url",
    "settle",
]

T = TypeVar("T")


@fast_init  # one per request
@dataclass(frozen=True, slots=True)
class Received:
    """The outcome of one request.

    `watch` is the watch to open for the request's type, replacing any open one; None only
    for a stale request, which changes nothing.
    """

    type_url: str
    events: tuple[Event, ...] = ()
    watch: WatchRequest | DeltaWatchRequest | None = None
    stale: bool = False


class _Settleable(Protocol):
    type_url: str
    sent_version: str
    sent_nonce: str
    awaiting_ack: bool
    acked_version: str
    last_nack: Nacked | None


def request_type_url(stream_type: str | None, request_type: str, variant: str) -> str:
    """The type a request is for: its own on ADS (required), the stream's on a typed service."""
    if stream_type is None:
        if not request_type:
            raise RemoteProtocolError(f"{variant} request without type_url")
        return sys.intern(request_type)  # one str per type for every stream, not per request
    if request_type and request_type != stream_type:
        raise RemoteProtocolError(f"request for {request_type} on the stream for {stream_type}")
    return stream_type


def settle(
    state: _Settleable, nonce: str, request: DiscoveryRequest | DeltaDiscoveryRequest
) -> Acked | Nacked | None:
    """If the request answers the response in flight, record and return the ACK or NACK."""
    if not (state.awaiting_ack and nonce == state.sent_nonce):
        return None
    if request.HasField("error_detail"):
        state.awaiting_ack = False
        detail = Status()
        detail.CopyFrom(request.error_detail)
        nack = Nacked(state.type_url, state.sent_version, nonce, state.acked_version, detail)
        state.last_nack = nack
        return nack
    return acknowledge(state)


def acknowledge(state: _Settleable) -> Acked:
    """Record that the client ACKed the response in flight (see `settle`)."""
    state.awaiting_ack = False
    state.acked_version = state.sent_version
    return Acked(state.type_url, state.sent_version, state.sent_nonce)


def request_span(data: bytes, leading: tuple[int, ...], nonce: bytes) -> tuple[int, int]:
    """Where `data`, a request's wire bytes, are without its leading length-delimited fields
    tagged `leading` (each if present, in that order: a version, the node) and a trailing
    `nonce` field (the serialized response_nonce field, or empty): the part that streams
    subscribing alike send alike.

    Two requests equal there hold the same names. The part starts at a field boundary, so it
    parses alike in both. If the bytes cut off at the end are the nonce field, the names are
    all in the part; if not (a client writing fields out of order, whose last field ends in
    bytes like a nonce field), the nonce each request carries was read from the part, so it is
    the same, and so are the bytes cut off: the requests differ in the leading fields only.
    """
    start = 0
    for tag in leading:
        if start < len(data) and data[start] == tag:
            length, start = wire.read_varint(data, start + 1)
            start += length
    stop = len(data)
    if nonce and stop - len(nonce) >= start and data.endswith(nonce):
        stop -= len(nonce)
    return start, stop


class RecentRequests(Generic[T]):
    """What was parsed lately from long requests, by their `request_span` bytes.

    Every proxy of a kind sends the same long list (all of EDS) and a few kinds send most of
    them: making a str of each of a thousand names costs more than the rest of the request, so
    one parse serves every stream that sends the same bytes (compared in place, not copied).
    """

    def __init__(self, size: int = 8) -> None:
        self._items: deque[tuple[bytes, T]] = deque(maxlen=size)

    def find(self, data: bytes, start: int, stop: int) -> tuple[bytes, T] | None:
        """The bytes kept and the value parsed from a request equal to `data[start:stop]`."""
        size = stop - start
        for known, parsed in tuple(self._items):
            if len(known) == size and data.startswith(known, start):
                return known, parsed
        return None

    def add(self, key: bytes, parsed: T) -> None:
        """Keep `parsed`, what `key` (a request's span) holds."""
        self._items.append((key, parsed))


class SameSets(Generic[T]):
    """The long name sets parsed lately, a few per length, found again from a list in any order.

    Envoy lists a subscription in the order of its hash set, seeded per process, so each proxy
    of a kind sends the same thousand names in an order of its own. Making a set of them to
    look it up costs a str and a hash per name, then the set's building and its comparison
    with the one kept: about a fifth more than checking the names against the set kept.

    A set is kept only for a list without repeats (as many names as the list's length). A
    list of that length all of whose entries the kept set's names are among holds each of
    them exactly once (there is no room for a repeat or another name), so it is that set.
    Kinds of proxies that list as many names but not the same are told apart by their first
    name before any copy is made.
    """

    def __init__(self, size: int = 8, per_length: int = 4) -> None:
        self._size = size
        self._per_length = per_length
        self._by_length: dict[int, list[tuple[frozenset[str], T]]] = {}

    def find(self, listed: Sequence[str], length: int) -> T | None:
        """What was kept for the set of `listed` (`length` names, at least one), if it is a set
        kept for lists of that length."""
        kept = self._by_length.get(length)
        if not kept:
            return None
        first = listed[0]
        for names, value in tuple(kept):  # another thread may keep one meanwhile
            if first in names:
                rest = set(names)
                rest.difference_update(listed)
                if not rest:
                    return value
        return None

    def keep(self, names: frozenset[str], length: int, value: T) -> None:
        """Keep `value` for `names`, parsed from a list of `length` entries (ignored unless
        they are as many as the names: a list with repeats)."""
        if len(names) != length:
            return
        by_length = self._by_length
        kept = by_length.get(length)
        if kept is None:
            if len(by_length) >= self._size:
                by_length.clear()
            kept = by_length[length] = []
        elif any(known is names for known, _ in kept):
            return
        kept.insert(0, (names, value))
        del kept[self._per_length :]
