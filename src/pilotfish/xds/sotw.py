"""Sans-IO state of one state-of-the-world xDS stream (ADS, or a single-type service).

Requests go in (`receive`), prepared responses go out with a fresh nonce (`send`). The machine
decides, per type, whether a request is stale, an ACK, a NACK or a subscription change, and what
the next watch must ask the config for. No grpc, no asyncio, no clock: the I/O layer drives it.

Rules (xDS protocol, state-of-the-world):

- The node comes from the first request; later requests may omit it.
- A request whose nonce is not the last one sent for its type is stale and ignored. An empty
  nonce counts as stale once a response for the type went out on this stream.
- An empty name list on the first request of a type is a (legacy) wildcard subscription, and
  stays one while the list stays empty; `*` is an explicit wildcard.
- After a NACK the next watch holds the rejected version as "known", so the same version is never
  resent unprompted; a newer version, or newly subscribed names, go out normally.
- A request that repeats the current subscription while no response is in flight asks for the
  resources again, and gets them even at an unchanged version (Envoy's cluster warming).
- The first request of a type that names a version (a client reconnecting, perhaps to another
  replica) is taken as an ACK of that version: it is not sent again unless it changes.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

from pilotfish.bounded import Bounded, ByIdentity
from pilotfish.errors import LocalProtocolError
from pilotfish.protos import TTL_CLIENT_FEATURE, DiscoveryRequest, Node, wire
from pilotfish.xds.events import Acked, Event, Nacked, Sent, Subscribed, Unsubscribed
from pilotfish.xds.node import kept_node
from pilotfish.xds.requests import (
    Received,
    SameSets,
    acknowledge,
    request_span,
    request_type_url,
    settle,
)
from pilotfish.xds.watch import PreparedResponse, WatchRequest

__all__ = ["SotwStream", "TypeState"]

WILDCARD = "*"
_EMPTY: frozenset[str] = frozenset()
_KEYED = 8
"""Above this many names, an unchanged list is recognised by a digest of its wire bytes (see
`_span`, `_digest`)."""
_VERSION_TAG = 0x0A  # DiscoveryRequest.version_info, field 1, length-delimited
_NODE_TAG = 0x12  # DiscoveryRequest.node, field 2, length-delimited
_LEADING = (_VERSION_TAG, _NODE_TAG)


@dataclass(slots=True)
class TypeState:
    """Protocol bookkeeping for one type on one stream."""

    type_url: str
    names: frozenset[str] = _EMPTY
    wildcard: bool = False
    legacy_wildcard: bool = False
    request_names: tuple[str, ...] = ()
    request_key: int | None = None
    """With more than `_KEYED` names, the `_digest` of the last request's span (`_span`)."""
    sent_version: str = ""
    sent_nonce: str = ""
    sent_names: frozenset[str] = _EMPTY
    sent_resources: Mapping[str, str] | None = None
    awaiting_ack: bool = False
    acked_version: str = ""
    last_nack: Nacked | None = None
    responses_sent: int = 0
    ack_span: bytes | int | None = None
    """What an ACK repeats between its version and its nonce: the last request's bytes there
    (`_span`), or their `_digest` with more than `_KEYED` names, if the transport gave them and
    the request was no NACK."""
    ack_nonce: bytes = b""
    """The serialized nonce field of the response in flight, which ends its ACK."""


@dataclass(slots=True)
class SotwStream:
    """One state-of-the-world stream. `type_url` is None for ADS, else the service's type."""

    stream_id: int
    type_url: str | None = None
    node: Node | None = None
    types: dict[str, TypeState] = field(default_factory=dict)
    ttl_aware: bool = False
    rewarm: frozenset[str] = frozenset()
    _nonce: int = 0

    def receive(self, request: DiscoveryRequest, raw: bytes | None = None) -> Received:
        """Take one request from the client; `raw`, if the transport has them, are the bytes it
        was parsed from (they make an unchanged long name list cheap to recognise)."""
        if self.node is None:
            # Proxyless gRPC may send an empty node; Envoy sends it only on the first message.
            self.node = kept_node(request.node)
            self.ttl_aware = TTL_CLIENT_FEATURE in self.node.client_features
        type_url = request_type_url(self.type_url, request.type_url, "ADS")
        state = self.types.get(type_url)
        nonce = request.response_nonce
        if state is not None and state.sent_nonce and nonce != state.sent_nonce:
            return Received(type_url, stale=True)

        first = state is None
        if state is None:
            state = self.types[type_url] = TypeState(type_url)
        events: list[Event] = []
        changed = self._update_subscription(state, request, first, events, raw)
        if raw is not None:
            if request.HasField("error_detail"):
                state.ack_span = None
            elif len(request.resource_names) > _KEYED:
                state.ack_span = state.request_key  # the digest of this request's span
            else:
                start, stop = _span(raw, request)
                state.ack_span = _shared_span(raw[start:stop])

        settled = settle(state, nonce, request)
        answered = settled is not None
        if settled is not None:
            events.append(settled)

        if first and request.version_info:
            # A reconnecting client says what it holds; trust it so nothing is resent needlessly,
            # and record it as ACKed (status shows the client in sync without a push).
            watch = self.watch_request(type_url, request.version_info, state.names, None)
            if not request.HasField("error_detail"):
                state.acked_version = request.version_info
                events.append(Acked(type_url, request.version_info, nonce))
        elif first or answered or changed:
            watch = self.watch_request(type_url)
        else:
            # The same subscription again with nothing in flight: the client wants the resources
            # again. Envoy does this when an updated cluster (or listener) must warm again, and
            # it waits until it gets them, unchanged or not (xDS protocol, "Resource warming").
            watch = self.watch_request(type_url, "", _EMPTY, None)
        return Received(type_url, tuple(events), watch)

    def ack(self, raw: bytes) -> Received | None:
        """`receive` for a request that is a plain ACK, recognised by its wire bytes without
        parsing them: a version field (any), the node if sent again, then exactly what the
        type's last request held after those (`TypeState.ack_span`: the same names, so no
        subscription change), then the nonce of the response in flight. None for anything
        else, which `receive` then takes parsed. Half of all requests are ACKs; this is what
        they cost."""
        if self.node is None:
            return None
        # Past version_info (any) and the node if sent again (Envoy, unless its config source
        # says `set_node_on_first_message_only`; a stream keeps the first request's node).
        try:
            start, _ = request_span(raw, _LEADING, b"")
        except (IndexError, ValueError):
            return None  # not even a field: parsing it reports the error
        for state in self.types.values():
            span = state.ack_span
            nonce = state.ack_nonce
            if span is None or not state.awaiting_ack or not raw.endswith(nonce):
                continue
            stop = len(raw) - len(nonce)
            if (
                stop - start == len(span) and raw.startswith(span, start)
                if isinstance(span, bytes)
                else _digest(raw[start:stop]) == span
            ):
                return Received(
                    state.type_url, (acknowledge(state),), self.watch_request(state.type_url)
                )
        return None

    def send(self, response: PreparedResponse) -> tuple[bytes, Sent]:
        """Give `response` this stream's next nonce; returns the wire bytes and the event."""
        body, nonce, sent = self.send_parts(response)
        return body + nonce, sent

    def send_parts(self, response: PreparedResponse) -> tuple[bytes, bytes, Sent]:
        """`send`, with the wire bytes in two parts to write one after the other: the shared
        prepared body and this stream's nonce field (a large body is not copied per stream).

        Resources of other types that an updated resource depends on are forgotten (as sent),
        so the next answer for their type includes them even if unchanged: the client re-warms
        the updated resource (a cluster) and waits for them (its endpoints). `rewarm` lists
        the types affected.
        """
        state = self.types.get(response.type_url)
        if state is None:
            raise LocalProtocolError(f"response for {response.type_url} that was never requested")
        self.rewarm = _EMPTY
        before = state.sent_resources
        if response.references and before:
            # An update (not an addition) of a resource others depend on: the client re-warms
            # it and waits for its dependents, so the next answer of their types must carry
            # them even if unchanged. Only those are forgotten: an answer may carry only what
            # the client lacks (`PreparedResponse` of `Snapshot.response_since`).
            rewarmed = response.rewarmed(before)
            if rewarmed:
                self.rewarm = frozenset(t for t, n in rewarmed.items() if self._forget(t, n))
        self._nonce += 1
        nonce, nonce_field = wire.numbered_nonce(self._nonce)
        state.sent_version = response.version
        state.sent_nonce = nonce
        state.ack_nonce = nonce_field
        state.sent_names = response.names
        state.sent_resources = response.resource_versions
        state.awaiting_ack = True
        state.responses_sent += 1
        return (
            response.body,
            nonce_field,
            Sent(response.type_url, response.version, nonce, response.names),
        )

    def _forget(self, type_url: str, names: frozenset[str]) -> bool:
        state = self.types.get(type_url)
        if state is None or not state.sent_resources:
            return False
        if len(names) >= len(state.sent_resources):
            # As many as it holds (every cluster updated): all of it, in constant time. One
            # not among them is sent again needlessly, which is harmless.
            state.sent_names, state.sent_resources = _EMPTY, _NO_VERSIONS
            return True
        sent_names, sent_resources = _without(state.sent_names, state.sent_resources, names)
        if sent_resources is state.sent_resources:
            return False  # none of them was sent: nothing to send again
        state.sent_names, state.sent_resources = sent_names, sent_resources
        return True

    def watch_request(
        self,
        type_url: str,
        known_version: str | None = None,
        known_names: frozenset[str] | None = None,
        known_resources: Mapping[str, str] | Literal["sent"] | None = "sent",
    ) -> WatchRequest:
        """The watch for a type's current subscription; by default the client is taken to hold
        what was last sent (version, names and resource versions). After a NACK of the last
        response, which resource versions it holds is not known (Envoy applies such a
        response to some of its subscriptions, up to the one that failed), so the next answer
        carries everything."""
        state = self.types[type_url]
        assert self.node is not None
        if isinstance(known_resources, str):
            nack = state.last_nack
            rejected = nack is not None and nack.nonce == state.sent_nonce
            known_resources = None if rejected else state.sent_resources
        return WatchRequest(  # positional: one per ACK, and keywords cost a third more
            self.node,
            self.stream_id,
            type_url,
            state.names,
            state.wildcard,
            state.sent_version if known_version is None else known_version,
            state.sent_names if known_names is None else known_names,
            self.ttl_aware,
            known_resources,
        )

    @staticmethod
    def _update_subscription(
        state: TypeState,
        request: DiscoveryRequest,
        first: bool,
        events: list[Event],
        raw: bytes | None,
    ) -> bool:
        listed = request.resource_names
        count = len(listed)
        repeated = not first and count == len(state.request_names)
        shared: _Names | None = None
        if count > _KEYED:
            # An ACK repeats the list; with many names, making a str of each to compare costs
            # more than the rest of the ACK. Equal bytes (see `_span`) mean equal names, and
            # the stream keeps their digest.
            data = request.SerializeToString() if raw is None else raw
            start, stop = _span(data, request)
            span = data[start:stop]
            digest = _digest(span)
            if repeated and digest == state.request_key:
                return False
            state.request_key = digest
            # Every proxy of a kind asks for the same long list (all of EDS): the names
            # parsed for one stream serve the others.
            shared = _shared_names(span, listed)
        elif repeated and (count == 0 or tuple(listed) == state.request_names):
            return False  # the common ACK: same list as before, no set built
        if shared is None:
            # Interned: every stream's names are then the same str objects, kept once, and the
            # cache's lookups of a subscription compare them by identity.
            shared = _small_names(tuple(map(sys.intern, listed)))
        request_names = shared.request_names
        if repeated and request_names == state.request_names:
            return False
        state.request_names = request_names
        if request_names:
            names, wildcard = shared.names, shared.wildcard
            legacy = False
        else:
            names = _EMPTY
            wildcard = legacy = first or state.legacy_wildcard
        if not state.names:  # the first subscription: no copy of a thousand names
            added, removed = names, _EMPTY
        elif not names:
            added, removed = _EMPTY, state.names
        else:
            added, removed = _changes(state.names, names)
        wildcard_on = wildcard and not state.wildcard
        wildcard_off = state.wildcard and not wildcard
        state.names, state.wildcard, state.legacy_wildcard = names, wildcard, legacy
        if not wildcard:
            # The client forgets what it unsubscribes; subscribing again must resend it.
            state.sent_names = _within(state.sent_names, names)
            if state.sent_resources is not None:
                state.sent_resources = _versions_within(state.sent_resources, names)
        if first or added or wildcard_on:
            events.append(Subscribed(state.type_url, added, wildcard))
        if removed or wildcard_off:
            events.append(Unsubscribed(state.type_url, removed, wildcard_off))
        return bool(first or added or removed or wildcard_on or wildcard_off)


@dataclass(frozen=True, slots=True)
class _Names:
    """A requested name list, parsed: as listed (interned), as a set without `*`, and
    whether `*` was in it."""

    request_names: tuple[str, ...]
    names: frozenset[str]
    wildcard: bool


def _parsed(request_names: tuple[str, ...]) -> _Names:
    names = frozenset(request_names)
    wildcard = WILDCARD in names
    return _Names(request_names, names - {WILDCARD} if wildcard else names, wildcard)


_SMALL: Bounded[tuple[str, ...], _Names] = Bounded(1024)


def _small_names(request_names: tuple[str, ...]) -> _Names:
    """A short list parsed, shared by the streams that send it (most send the same few)."""
    found = _SMALL.get(request_names)
    if found is None:
        found = _SMALL.put(request_names, _parsed(request_names))
    return found


_LISTS: Bounded[bytes, _Names] = Bounded(8)
"""The long name lists parsed lately, by their span's bytes (clients that list alike)."""
_SETS: Bounded[frozenset[str], _Names] = Bounded(64)
"""Long lists parsed lately, by their names as a set. Envoy lists a subscription in the order
of its hash set, seeded per process, so proxies of a kind seldom send the same bytes but do
ask for the same set: they share one parsed set (32 KB at a thousand names), and the cache's
lookups of it compare by identity."""


_SAME: SameSets[_Names] = SameSets()
"""The long lists parsed lately, a few of each length, found again from their names in
another order before a set of them is made (`_SETS`)."""


def _shared_names(span: bytes, listed: Sequence[str]) -> _Names:
    """The names of a request whose span is `span`, parsed once for all the streams that
    send the same list, and shared by all that ask for the same set in another order."""
    parsed = _LISTS.get(span)
    if parsed is None:
        count = len(listed)
        parsed = _SAME.find(listed, count)
        if parsed is None:
            names = frozenset(listed)
            parsed = _SETS.get(names)
            if parsed is None:
                parsed = _SETS.put(names, _parsed(tuple(map(sys.intern, listed))))
            if not parsed.wildcard:
                _SAME.keep(parsed.names, count, parsed)
        _LISTS.put(span, parsed)
    return parsed


_CHANGES: ByIdentity[tuple[frozenset[str], frozenset[str]]] = ByIdentity(16)
_WITHIN: ByIdentity[frozenset[str]] = ByIdentity(16)
_VERSIONS_WITHIN: ByIdentity[Mapping[str, str]] = ByIdentity(16)
"""What subscription changes made of shared objects (`_changes`, `_within`,
`_versions_within`)."""


def _changes(
    before: frozenset[str], after: frozenset[str]
) -> tuple[frozenset[str], frozenset[str]]:
    """The names `after` adds to `before`, and those it drops.

    The streams of a kind change their subscription alike (a cluster removed: every Envoy stops
    asking for its endpoints) and hold the same set objects before and after, so what a change
    adds and drops is worked out once for all of them, as are `_within` and `_versions_within`.
    Per stream, each was a walk over a thousand names: a cluster removed cost 1,000 Envoys
    listing 1,000 clusters three times the server CPU of a push of every resource."""
    found = _CHANGES.get(before, after)
    if found is None:
        found = _CHANGES.put((after - before, before - after), before, after)
    return found


def _within(sent: frozenset[str], names: frozenset[str]) -> frozenset[str]:
    """The names of `sent` still subscribed (`names`): `sent` itself if all are, `names` if
    all of them were sent, so streams keep sharing them (and the cache sees by identity that
    nothing new was asked for)."""
    if not sent:
        return sent
    kept = _WITHIN.get(sent, names)
    if kept is None:
        kept = sent & names
        if len(kept) == len(sent):
            kept = sent
        elif len(kept) == len(names):
            kept = names
        _WITHIN.put(kept, sent, names)
    return kept


def _versions_within(sent: Mapping[str, str], names: frozenset[str]) -> Mapping[str, str]:
    """The versions of `sent` still subscribed (`names`), read-only: `sent` itself if all are.
    Remembered only for a read-only `sent` (a response's `resource_versions`), which nobody
    changes."""
    if not sent:
        return sent
    shared = isinstance(sent, MappingProxyType)
    if shared and (found := _VERSIONS_WITHIN.get(sent, names)) is not None:
        return found
    versions = {n: v for n, v in sent.items() if n in names}
    kept = sent if len(versions) == len(sent) else MappingProxyType(versions)
    if shared:
        _VERSIONS_WITHIN.put(kept, sent, names)
    return kept


_NO_VERSIONS: Mapping[str, str] = MappingProxyType({})
_NAMES_WITHOUT: ByIdentity[frozenset[str]] = ByIdentity(4)
_VERSIONS_WITHOUT: ByIdentity[Mapping[str, str]] = ByIdentity(4)
"""What `_without` made lately: one per kind of proxy is all a push needs, and each keeps the
versions it was made from (a thousand of them, a push back) alive."""


def _without(
    sent: frozenset[str], versions: Mapping[str, str], gone: frozenset[str]
) -> tuple[frozenset[str], Mapping[str, str]]:
    """`sent` and `versions` without the names `gone` (`versions` itself if it holds none of
    them). Made once for the streams that hold the same objects (a cluster updated: every
    Envoy forgets its endpoints alike), so they go on sharing them."""
    if versions.keys().isdisjoint(gone):  # walks `gone`; a set's isdisjoint walks a mapping
        return sent, versions
    names = _NAMES_WITHOUT.get(sent, gone)
    if names is None:
        names = _NAMES_WITHOUT.put(sent - gone, sent, gone)
    kept = _VERSIONS_WITHOUT.get(versions, gone)
    if kept is None:
        kept = MappingProxyType({n: v for n, v in versions.items() if n not in gone})
        if isinstance(versions, MappingProxyType):  # nobody changes it: the answer stands
            _VERSIONS_WITHOUT.put(kept, versions, gone)
    return names, kept


def _digest(span: bytes) -> int:
    """What a stream keeps of a long list's span to know it again: Python's hash of the bytes
    (64-bit SipHash, keyed at random per process unless PYTHONHASHSEED is set).

    Each proxy lists in its own order (Envoy's is its hash set's), so spans are seldom shared,
    and kept whole they cost 48 KB a stream at a thousand names. Hashing the span costs an ACK
    6 us per 38 KB, against 0.5 to compare bytes kept. A changed list is taken for the same
    with odds of 2**-64 per change; Envoy likewise skips a config update whose 64-bit hash is
    unchanged."""
    return hash(span)


_SPANS: Bounded[bytes, bytes] = Bounded(1024)


def _shared_span(span: bytes) -> bytes:
    """One object for the streams whose ACKs repeat the same span: most proxies of a kind send
    the same type and few names, and a stream keeps its span for as long as it lives."""
    found = _SPANS.get(span)
    return _SPANS.put(span, span) if found is None else found


def _span(data: bytes, request: DiscoveryRequest) -> tuple[int, int]:
    """`request_span` of a DiscoveryRequest: without version_info and node, and the nonce."""
    nonce = request.response_nonce
    return request_span(data, _LEADING, wire.nonce_field(nonce) if nonce else b"")
