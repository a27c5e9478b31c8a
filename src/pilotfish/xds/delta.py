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
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType

from pilotfish.errors import LocalProtocolError
from pilotfish.protos import RESOURCE_TYPES, DeltaDiscoveryRequest, Node, wire
from pilotfish.xds.events import Event, Nacked, Sent, Subscribed, Unsubscribed
from pilotfish.xds.requests import Received, request_type_url, settle
from pilotfish.xds.watch import DeltaPreparedResponse, DeltaWatchRequest

__all__ = ["DeltaStream", "DeltaTypeState"]

WILDCARD = "*"


@dataclass(slots=True)
class DeltaTypeState:
    """Protocol bookkeeping for one type on one delta stream."""

    type_url: str
    names: set[str] = field(default_factory=set)
    wildcard: bool = False
    namespaced: bool = False
    versions: dict[str, str] = field(default_factory=dict)
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
        first = state is None
        if state is None:
            state = self.types[type_url] = DeltaTypeState(type_url)
            state.versions.update(request.initial_resource_versions)
            state.resumed = bool(state.versions)
        events: list[Event] = []
        subscribe = set(request.resource_names_subscribe)
        if first and not subscribe and (namespaces := self._namespaces(type_url)):
            state.namespaced = True
            subscribe = set(namespaces)
        changed = self._update_subscription(state, request, subscribe, first, events)

        nonce = request.response_nonce
        stale = bool(nonce) and nonce != state.sent_nonce
        settled = None if stale else settle(state, nonce, request)
        answered = settled is not None
        if settled is not None:
            events.append(settled)
        if not (first or answered or changed) or (stale and not changed):
            return Received(type_url, tuple(events), stale=stale)
        return Received(type_url, tuple(events), self.watch_request(type_url), stale=stale)

    def watch_request(self, type_url: str) -> DeltaWatchRequest:
        """The watch that fits the type's current subscription and held versions."""
        state = self.types[type_url]
        assert self.node is not None
        return DeltaWatchRequest(
            node=self.node,
            stream_id=self.stream_id,
            type_url=type_url,
            names=frozenset(state.names),
            wildcard=state.wildcard,
            versions=MappingProxyType(dict(state.versions)),
            # A fresh client waits for a first answer, even an empty one; a resumed one does not.
            initial=not state.sent_nonce and not state.resumed,
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
        state.versions.update(response.versions)
        for name in response.removed:
            if name in state.names:
                state.versions[name] = ""  # told it does not exist: say so only once
            else:
                state.versions.pop(name, None)
        for ref_type, ref_names in response.refresh.items():
            dependent = self.types.get(ref_type)
            if dependent is None:
                continue
            if dependent.namespaced:  # answer these namespaces again (module docstring)
                dependent.names |= ref_names
                for name in ref_names:
                    dependent.versions.pop(name, None)
                continue
            for name in ref_names:
                if dependent.versions.get(name):
                    del dependent.versions[name]
        state.sent_version = response.system_version
        state.sent_nonce = nonce
        state.awaiting_ack = True
        state.responses_sent += 1
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
        if not first:
            # Subscribing (again) always sends: forget what the client was thought to hold.
            for name in subscribe:
                state.versions.pop(name, None)
        added = subscribe - state.names
        removed = unsubscribe & state.names
        state.names |= subscribe
        state.names -= unsubscribe
        for name in unsubscribe:
            state.versions.pop(name, None)
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
