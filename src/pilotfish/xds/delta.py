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
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from pilotfish.errors import LocalProtocolError
from pilotfish.protos import RESOURCE_TYPES, DeltaDiscoveryRequest, Node, wire
from pilotfish.xds.events import Event, Nacked, Sent, Subscribed, Unsubscribed
from pilotfish.xds.requests import Received, request_type_url, settle
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


@dataclass(slots=True)
class DeltaStream:
    """One delta stream. `type_url` is None for delta ADS, else the service's type."""

    stream_id: int
    type_url: str | None = None
    node: Node | None = None
    types: dict[str, DeltaTypeState] = field(default_factory=dict)
    _nonce: int = 0

    def receive(self, request: DeltaDiscoveryRequest, raw: bytes | None = None) -> Received:
        """Take one request from the client (`raw`, its bytes, are not needed here)."""
        if self.node is None:
            self.node = Node()
            self.node.CopyFrom(request.node)
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
        if state is None:
            state = self.types[type_url] = DeltaTypeState(type_url)
            if request.initial_resource_versions:
                state.versions = _shared_versions(dict(request.initial_resource_versions))
                state.resumed = True
        events: list[Event] = []
        subscribe = set(request.resource_names_subscribe)
        if first and not subscribe and (namespaces := self._namespaces(type_url)):
            state.namespaced = True
            subscribe = set(namespaces)
        changed = self._update_subscription(state, request, subscribe, first, events)

        stale = bool(nonce) and nonce != state.sent_nonce
        settled = None if stale else settle(state, nonce, request)
        answered = settled is not None
        if settled is not None:
            events.append(settled)
        if not (first or answered or changed) or (stale and not changed):
            return Received(type_url, tuple(events), stale=stale)
        return Received(type_url, tuple(events), self.watch_request(type_url), stale=stale)

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
        nonce = str(self._nonce)
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
            if dependent.namespaced:  # answer these namespaces again (module docstring)
                dependent.names = _shared_names(dependent.names | ref_names)
                dependent.versions = _forget(dependent.versions, ref_names, absent=True)
                continue
            dependent.versions = _forget(dependent.versions, ref_names, absent=False)
        state.sent_version = response.system_version
        state.sent_nonce = nonce
        state.awaiting_ack = True
        state.responses_sent += 1
        names = response.names
        if names is None:
            names = frozenset(response.versions) | response.removed
        return (
            response.body,
            wire.nonce_field(nonce),
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
        state: DeltaTypeState,
        request: DeltaDiscoveryRequest,
        subscribe: set[str],
        first: bool,
        events: list[Event],
    ) -> bool:
        unsubscribe = set(request.resource_names_unsubscribe)
        if not (first or subscribe or unsubscribe):
            return False
        wildcard_on = WILDCARD in subscribe or (first and not subscribe)
        wildcard_off = WILDCARD in unsubscribe
        subscribe.discard(WILDCARD)
        unsubscribe.discard(WILDCARD)
        # Subscribing (again) always sends: forget what the client was thought to hold; it
        # forgets what it unsubscribes.
        forget = unsubscribe if first else subscribe | unsubscribe
        versions = state.versions
        if forget and not forget.isdisjoint(versions):
            held = dict(versions)
            for name in forget:
                held.pop(name, None)
            state.versions = held
        old = state.names
        added = subscribe - old
        removed = unsubscribe & old
        names = (old | subscribe) - unsubscribe
        if names != old:
            state.names = _shared_names(names)
        was_wildcard = state.wildcard
        if wildcard_on:
            state.wildcard = True
        if wildcard_off:
            state.wildcard = False
        if first or added or subscribe or (state.wildcard and not was_wildcard):
            events.append(Subscribed(state.type_url, frozenset(added), state.wildcard))
        if removed or (was_wildcard and not state.wildcard):
            events.append(
                Unsubscribed(
                    state.type_url, frozenset(removed), was_wildcard and not state.wildcard
                )
            )
        return True


# Streams of one kind of proxy subscribe to the same names (all of EDS), and proxies resuming
# the same config hold the same versions: each stream takes the one instance of these, so they
# are kept once and a cache answers the state once. Cleared when full (a few kinds of proxies
# share them; the rest are merely not shared).
_NAMES: dict[frozenset[str], frozenset[str]] = {}
_VERSIONS: dict[frozenset[tuple[str, str]], Mapping[str, str]] = {}
_SHARED_MAX = 64


def _shared_names(names: frozenset[str]) -> frozenset[str]:
    if not names:
        return _NO_NAMES
    found = _NAMES.get(names)
    if found is None:
        if len(_NAMES) >= _SHARED_MAX:
            _NAMES.clear()
        found = _NAMES[names] = names
    return found


def _shared_versions(versions: dict[str, str]) -> Mapping[str, str]:
    key = frozenset(versions.items())
    found = _VERSIONS.get(key)
    if found is None:
        if len(_VERSIONS) >= _SHARED_MAX:
            _VERSIONS.clear()
        found = _VERSIONS[key] = versions
    return found


# Refreshed names forgotten lately, by the identities of (versions, names) and `absent`: every
# stream in one state gets the same response, so its refresh is worked out once. The entry
# keeps the objects (so the ids stay theirs). Cleared when full.
_FORGOTTEN: dict[
    tuple[int, int, bool], tuple[Mapping[str, str], frozenset[str], Mapping[str, str]]
] = {}
_FORGOTTEN_MAX = 256


def _forget(
    versions: Mapping[str, str], names: frozenset[str], *, absent: bool
) -> Mapping[str, str]:
    """`versions` without `names` held at a version (and held as absent too, if `absent`):
    the client is sent them again. `versions` itself if none is held."""
    key = (id(versions), id(names), absent)
    found = _FORGOTTEN.get(key)
    if found is not None and found[0] is versions and found[1] is names:
        return found[2]
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
    if len(_FORGOTTEN) >= _FORGOTTEN_MAX:
        _FORGOTTEN.clear()
    _FORGOTTEN[key] = (versions, names, after)
    return after
