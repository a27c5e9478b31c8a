"""Sans-IO state of one incremental (delta) xDS stream (delta ADS, or a single-type service).

Differences from state-of-the-world that matter here (xDS protocol, incremental variants):

- Subscriptions change by difference (`resource_names_subscribe` / `_unsubscribe`) and those
  changes apply even when the request's nonce is stale; only the ACK/NACK needs a current nonce.
- The server tracks the version of every resource the client holds (from
  `initial_resource_versions` on reconnect, then from what it sent) and sends only what differs.
  A NACKed resource keeps the version that was sent, so it is not resent until it changes.
- Deleted resources and subscribed names that do not exist go out in `removed_resources`.
- Subscribing to a name again always resends it.
- A first request with no names is a (legacy) wildcard subscription; `*` subscribes or
  unsubscribes the wildcard explicitly.
- Except for a namespaced type (VHDS): there Envoy means "the namespaces I hold", which on ADS
  are the names of the namespace type (route configurations) the stream subscribed to. The
  stream subscribes to `<namespace>/` for each: a name that never exists, so the first answer
  carries it (as an unresolved alias), which is what ends Envoy's wait for VHDS. Hosts are then
  subscribed by name, on demand. Envoy waits again, without asking, for each route configuration
  it is sent later (a new one, or one whose VHDS source changed): a response of the namespace
  type names those in `refresh`, and the stream subscribes to (or forgets it told) their
  `<namespace>/`, so the namespaced watch answers it again.

Per stream and type the state is a set of names and a map of held versions, neither changed
once made: a change makes new ones (only when something changes), so a watch request takes
them as they are, and streams in the same state share them. A response made for one state (see
`DeltaPreparedResponse.after`) moves every stream in it to one shared next state, and the
forgetting of refreshed names is shared the same way: a cache answers each state once, however
many streams are in it, and an ACK costs a lookup, not a scan of every name.

Subscriptions are shared as well: a request changing one is parsed once for every stream that
sends it (a long list of names recognised by its wire bytes, without the node and the nonce;
see `_change`), and one change applied to one state gives one next state (`_applied`), so a
fleet subscribing EDS to every cluster costs one set of names, not one per stream.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from pilotfish.bounded import Bounded
from pilotfish.errors import LocalProtocolError
from pilotfish.protos import RESOURCE_TYPES, DeltaDiscoveryRequest, Node, wire
from pilotfish.xds.events import Event, Nacked, Sent, Subscribed, Unsubscribed
from pilotfish.xds.node import kept_node
from pilotfish.xds.requests import (
    Received,
    RecentRequests,
    SameSets,
    acknowledge,
    request_span,
    request_type_url,
    settle,
)
from pilotfish.xds.watch import DeltaPreparedResponse, DeltaWatchRequest, held_after

__all__ = ["DeltaStream", "DeltaTypeState"]


WILDCARD = "*"
_NO_NAMES: frozenset[str] = frozenset()
_HOLDS_NOTHING: Mapping[str, str] = {}  # shared; never changed (see the module docstring)


def _holds_nothing() -> Mapping[str, str]:
    return _HOLDS_NOTHING


@dataclass(slots=True)
class DeltaTypeState:
    """Protocol bookkeeping for one type on one delta stream. `names` and `versions` are
    replaced, never changed in place: they may be shared with other streams."""

    type_url: str
    names: frozenset[str] = _NO_NAMES
    wildcard: bool = False
    namespaced: bool = False
    versions: Mapping[str, str] = field(default_factory=_holds_nothing)
    resumed: bool = False
    sent_version: str = ""
    sent_nonce: str = ""
    awaiting_ack: bool = False
    acked_version: str = ""
    last_nack: Nacked | None = None
    responses_sent: int = 0
    ack_nonce: bytes = b""
    """The response in flight's nonce as the response_nonce field of a request, which ends
    its ACK (`DeltaStream.ack`)."""


@dataclass(slots=True)
class DeltaStream:
    """One delta stream. `type_url` is None for delta ADS, else the service's type."""

    stream_id: int
    type_url: str | None = None
    node: Node | None = None
    types: dict[str, DeltaTypeState] = field(default_factory=dict)
    _nonce: int = 0

    def receive(self, request: DeltaDiscoveryRequest, raw: bytes | None = None) -> Received:
        """Take one request from the client; `raw`, if the transport has them, are the bytes it
        was parsed from (they make a long subscription cheap to recognise)."""
        if self.node is None:
            self.node = kept_node(request.node)
        type_url = request_type_url(self.type_url, request.type_url, "delta ADS")
        state = self.types.get(type_url)
        nonce = request.response_nonce
        if (
            state is not None
            and not request.resource_names_subscribe
            and not request.resource_names_unsubscribe
        ):
            # The common request, an ACK (or NACK) alone: no subscription change to work out.
            stale = bool(nonce) and nonce != state.sent_nonce
            settled = None if stale else settle(state, nonce, request)
            if settled is None:
                return Received(type_url, stale=stale)
            return Received(type_url, (settled,), self.watch_request(type_url))
        first = state is None
        change = _change(request, raw)
        if state is None:
            state = self.types[type_url] = DeltaTypeState(type_url)
            if change.resume is not None:
                state.versions = change.resume
                state.resumed = True
            if not change.listed and (namespaces := self._namespaces(type_url)):
                state.namespaced = True
                change = _namespaced(namespaces, change)
        events: list[Event] = []
        changed = self._update_subscription(state, change, first, events)

        stale = bool(nonce) and nonce != state.sent_nonce
        settled = None if stale else settle(state, nonce, request)
        answered = settled is not None
        if settled is not None:
            events.append(settled)
        if not (first or answered or changed) or (stale and not changed):
            return Received(type_url, tuple(events), stale=stale)
        return Received(type_url, tuple(events), self.watch_request(type_url), stale=stale)

    def ack(self, raw: bytes) -> Received | None:
        """`receive` for a request that is a plain ACK, recognised by its wire bytes without
        parsing them: the type_url field of a type awaiting an ACK (on a per-type stream it may
        be left out), then the nonce of its response in flight, and nothing else (as Envoy
        writes an ACK). None for anything else, which `receive` then takes parsed. Half of all
        requests are ACKs; this is what they cost."""
        if self.node is None:
            return None
        for state in self.types.values():
            nonce = state.ack_nonce
            if not (state.awaiting_ack and nonce and raw.endswith(nonce)):
                continue
            head = len(raw) - len(nonce)
            if head == 0 and self.type_url is not None:
                return self._acked(state)
            field = _type_field(state.type_url)
            if head == len(field) and raw.startswith(field):
                return self._acked(state)
        return None

    def _acked(self, state: DeltaTypeState) -> Received:
        return Received(state.type_url, (acknowledge(state),), self.watch_request(state.type_url))

    def watch_request(self, type_url: str) -> DeltaWatchRequest:
        """The watch that fits the type's current subscription and held versions (the
        stream's own names and versions, not copies: they are never changed in place)."""
        state = self.types[type_url]
        assert self.node is not None
        return DeltaWatchRequest(  # positional: one per ACK
            self.node,
            self.stream_id,
            type_url,
            state.names,
            state.wildcard,
            state.versions,
            # A fresh client waits for a first answer, even an empty one; a resumed one does not.
            not state.sent_nonce and not state.resumed,
        )

    def send(self, response: DeltaPreparedResponse) -> tuple[bytes, Sent]:
        """Give `response` this stream's next nonce, and record what the client now holds."""
        body, nonce, sent = self.send_parts(response)
        return body + nonce, sent

    def send_parts(self, response: DeltaPreparedResponse) -> tuple[bytes, bytes, Sent]:
        """`send`, with the body and this stream's nonce field apart (written in sequence)."""
        state = self.types.get(response.type_url)
        if state is None:
            raise LocalProtocolError(f"response for {response.type_url} that was never requested")
        self._nonce += 1
        nonce, nonce_field = wire.numbered_nonce(self._nonce)
        after = response.after
        if after is not None and after[0] is state.versions and after[1] is state.names:
            state.versions = after[2]  # made once for every stream in this state
        else:
            state.versions = held_after(
                state.versions, state.names, response.versions, response.removed
            )
        for ref_type, ref_names in response.refresh.items():
            dependent = self.types.get(ref_type)
            if dependent is None:
                continue
            forgotten = response.forgotten
            if dependent.namespaced:  # answer these namespaces again (module docstring)
                dependent.names = _shared_names(dependent.names | ref_names)
                dependent.versions = _forget(
                    forgotten, ref_type, ref_names, dependent.versions, absent=True
                )
                continue
            dependent.versions = _forget(
                forgotten, ref_type, ref_names, dependent.versions, absent=False
            )
        state.sent_version = response.system_version
        state.sent_nonce = nonce
        state.ack_nonce = _ack_nonce(nonce)
        state.awaiting_ack = True
        state.responses_sent += 1
        names = response.names
        if names is None:
            names = frozenset(response.versions) | response.removed
        return (
            response.body,
            nonce_field,
            Sent(response.type_url, response.system_version, nonce, names),
        )

    def _namespaces(self, type_url: str) -> frozenset[str]:
        """`<namespace>/` for each name of the type's namespace type this stream subscribed to
        (none: not a namespaced type, or a stream that knows no namespace, as a VHDS service)."""
        row = RESOURCE_TYPES.get(type_url)
        if row is None or row.namespace_type is None:
            return frozenset()
        parent = self.types.get(row.namespace_type)
        if parent is None:
            return frozenset()
        return frozenset(row.namespace_name(n) for n in parent.names)

    @staticmethod
    def _update_subscription(
        state: DeltaTypeState, change: _Change, first: bool, events: list[Event]
    ) -> bool:
        if not (first or change.listed or change.unlisted):
            return False
        wildcard_on = change.star_on or (first and not change.listed)
        applied = _applied(state.names, state.versions, change, first)
        state.names, state.versions = applied.names, applied.versions
        was_wildcard = state.wildcard
        if wildcard_on:
            state.wildcard = True
        if change.star_off:
            state.wildcard = False
        added, removed = applied.added, applied.removed
        if first or added or change.subscribe or (state.wildcard and not was_wildcard):
            events.append(Subscribed(state.type_url, added, state.wildcard))
        if removed or (was_wildcard and not state.wildcard):
            events.append(
                Unsubscribed(state.type_url, removed, was_wildcard and not state.wildcard)
            )
        return True


@dataclass(frozen=True, slots=True, eq=False)  # one object per request, compared by identity
class _Change:
    """A request's subscription change, parsed: the names it subscribes and unsubscribes
    (interned, without `*`), whether each list had any name and `*`, and the versions it
    resumes from (`initial_resource_versions`, shared; None if it names none). One object
    for all the streams that send the same request (see `_change`)."""

    subscribe: frozenset[str]
    unsubscribe: frozenset[str]
    listed: bool
    star_on: bool
    star_off: bool
    unlisted: bool = False
    resume: Mapping[str, str] | None = None


def _parse(request: DeltaDiscoveryRequest) -> _Change:
    subscribe = _listed_names(request.resource_names_subscribe)
    unsubscribe = _listed_names(request.resource_names_unsubscribe)
    star_on, star_off = WILDCARD in subscribe, WILDCARD in unsubscribe
    initial = request.initial_resource_versions
    return _Change(
        subscribe - {WILDCARD} if star_on else subscribe,
        unsubscribe - {WILDCARD} if star_off else unsubscribe,
        bool(subscribe),
        star_on,
        star_off,
        bool(unsubscribe),
        _shared_versions(dict(initial)) if initial else None,
    )


_KEYED = 8
"""Above this many names (and versions), a request is recognised by its wire bytes."""
_LEADING = (0x0A,)  # DeltaDiscoveryRequest.node, field 1, length-delimited
_NONCE_FIELD = 6  # DeltaDiscoveryRequest.response_nonce
# Long requests parsed lately, by their bytes without the node and the nonce (see `request_span`):
# every proxy of a kind subscribes to the same long list (all of EDS), resumes the same
# versions. A few kinds of proxies send most of them.
_RECENT: RecentRequests[_Change] = RecentRequests()
# Short requests parsed lately, by their lists (most streams send the same few).
_SMALL: Bounded[tuple[tuple[str, ...], tuple[str, ...], tuple[tuple[str, str], ...]], _Change] = (
    Bounded(1024)
)


def _change(request: DeltaDiscoveryRequest, raw: bytes | None) -> _Change:
    """The request's subscription change, parsed once for every stream that sends it."""
    subscribe = request.resource_names_subscribe
    unsubscribe = request.resource_names_unsubscribe
    initial = request.initial_resource_versions
    if len(subscribe) + len(unsubscribe) + len(initial) <= _KEYED:
        key = (tuple(subscribe), tuple(unsubscribe), tuple(initial.items()))
        found = _SMALL.get(key)
        if found is None:
            found = _SMALL.put(key, _parse(request))
        return found
    # Making a str of each name costs more than the rest of the request: equal bytes (see
    # `request_span`) hold equal lists, so the names parsed for one stream serve the others.
    data = request.SerializeToString() if raw is None else raw
    nonce = request.response_nonce
    field = wire.length_delimited(_NONCE_FIELD, nonce.encode()) if nonce else b""
    start, stop = request_span(data, _LEADING, field)
    recent = _RECENT.find(data, start, stop)
    if recent is not None:
        return recent[1]
    parsed = _parse(request)
    _RECENT.add(data[start:stop], parsed)
    return parsed


# First requests of a namespaced type, as they subscribe (`DeltaStream._namespaces`).
_NAMESPACED: Bounded[tuple[frozenset[str], _Change], _Change] = Bounded(64)


def _namespaced(namespaces: frozenset[str], change: _Change) -> _Change:
    """`change` subscribing `namespaces` instead of the wildcard (one object for every stream
    that holds the same namespaces and sends the same request)."""
    key = (namespaces, change)
    found = _NAMESPACED.get(key)
    if found is None:
        found = _NAMESPACED.put(
            key,
            _Change(namespaces, change.unsubscribe, True, False, change.star_off, change.unlisted),
        )
    return found


@dataclass(frozen=True, slots=True)
class _Applied:
    """A change applied to a state: the names and held versions after it, and the names it
    added to and removed from the subscription."""

    names: frozenset[str]
    versions: Mapping[str, str]
    added: frozenset[str]
    removed: frozenset[str]


# Changes applied lately, by the identities of (names, versions, change) and whether it is the
# type's first request: streams in one state sending one request move to one next state,
# worked out once. The entry keeps the objects its key names, so the ids stay theirs.
_APPLIED: Bounded[
    tuple[int, int, int, bool],
    tuple[frozenset[str], Mapping[str, str], _Change, _Applied],
] = Bounded(64)


def _applied(
    names: frozenset[str], versions: Mapping[str, str], change: _Change, first: bool
) -> _Applied:
    key = (id(names), id(versions), id(change), first)
    found = _APPLIED.get(key)
    if found is not None:
        return found[3]
    subscribe, unsubscribe = change.subscribe, change.unsubscribe
    # Subscribing (again) always sends: forget what the client was thought to hold; it
    # forgets what it unsubscribes.
    forget = unsubscribe if first else subscribe | unsubscribe
    after = versions
    if forget and not versions.keys().isdisjoint(forget):
        held = dict(versions)
        for name in forget:
            held.pop(name, None)
        after = held
    now = (names | subscribe) - unsubscribe
    applied = _Applied(
        names if now == names else _shared_names(now),
        after,
        subscribe - names,
        unsubscribe & names,
    )
    return _APPLIED.put(key, (names, versions, change, applied))[3]


# Streams of one kind of proxy subscribe to the same names (all of EDS), and proxies resuming
# the same config hold the same versions: each stream takes the one instance of these, so they
# are kept once and a cache answers the state once. Cleared when full (a few kinds of proxies
# share them; the rest are merely not shared).
_NAMES: Bounded[frozenset[str], frozenset[str]] = Bounded(64)
_VERSIONS: Bounded[frozenset[tuple[str, str]], Mapping[str, str]] = Bounded(64)


_SAME: SameSets[frozenset[str]] = SameSets()
"""The long sets listed lately, a few of each length, found again from a list in another
order before a set of it is made."""


def _listed_names(listed: Sequence[str]) -> frozenset[str]:
    """`listed` as a set of interned names. Envoys list a subscription in orders of their
    own, so a long list's bytes seldom repeat, but its set does: the long sets kept for its
    length (`_SAME`) are tried first, with no set made, then a set held lately (`_NAMES`) by
    its names, as interning a thousand names costs as much again as making the set."""
    count = len(listed)
    if count > _KEYED:
        same = _SAME.find(listed, count)
        if same is not None:
            return same
    names = frozenset(listed)
    if not names:
        return _NO_NAMES
    found = _NAMES.get(names)
    if found is None:
        interned = frozenset(map(sys.intern, names))
        found = _NAMES.put(interned, interned)
    if count > _KEYED:
        _SAME.keep(found, count, found)
    return found


def _shared_names(names: frozenset[str]) -> frozenset[str]:
    if not names:
        return _NO_NAMES
    return _NAMES.get(names) or _NAMES.put(names, names)


def _shared_versions(versions: dict[str, str]) -> Mapping[str, str]:
    key = frozenset(versions.items())
    found = _VERSIONS.get(key)
    return found if found is not None else _VERSIONS.put(key, versions)


def _forget(
    forgotten: dict[tuple[str, int, bool], tuple[Mapping[str, str], Mapping[str, str]]],
    ref_type: str,
    names: frozenset[str],
    versions: Mapping[str, str],
    *,
    absent: bool,
) -> Mapping[str, str]:
    """`versions` of `ref_type` without `names` (what the response refreshes) held at a version
    (and held as absent too, if `absent`): the client is sent them again. `versions` itself if
    none is held. Worked out once per response for the streams holding the same `versions`
    (in `forgotten`, the response's own table, by the identity of `versions`: the entry keeps
    it, so the identity stays its own while the response lives)."""
    key = (ref_type, id(versions), absent)
    found = forgotten.get(key)
    if found is not None:
        return found[1]
    if absent:
        drop = [name for name in names if name in versions]
    else:
        drop = [name for name in names if versions.get(name)]
    after = versions
    if drop:
        held = dict(versions)
        for name in drop:
            del held[name]
        after = held
    return forgotten.setdefault(key, (versions, after))[1]


_REQUEST_TYPE_URL = 2  # DeltaDiscoveryRequest.type_url
_REQUEST_NONCE = 6  # DeltaDiscoveryRequest.response_nonce
_TYPE_FIELDS: Bounded[str, bytes] = Bounded(64)
_ACK_NONCES: Bounded[str, bytes] = Bounded(1024)


def _type_field(type_url: str) -> bytes:
    """A request's type_url field (kept per type: a fleet asks for a few types)."""
    found = _TYPE_FIELDS.get(type_url)
    if found is None:
        field = wire.length_delimited(_REQUEST_TYPE_URL, type_url.encode())
        found = _TYPE_FIELDS.put(type_url, field)
    return found


def _ack_nonce(nonce: str) -> bytes:
    """`nonce` as a request's response_nonce field; made once for the numbered nonces every
    stream uses (`wire.numbered_nonce`), so streams share them."""
    found = _ACK_NONCES.get(nonce)
    if found is None:
        found = _ACK_NONCES.put(nonce, wire.length_delimited(_REQUEST_NONCE, nonce.encode()))
    return found
