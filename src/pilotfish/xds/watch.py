"""The narrow contract between the xDS server and whatever holds the config (a cache).

Modelled on go-control-plane's `ConfigWatcher`: the server opens a watch per stream and type
after each request it acts on. The watcher answers with a prepared response whenever it has
something newer than what the watch knows, until the server cancels the watch, which it does when
it writes an answer (then it waits for the client's ACK or NACK). So an answer the client has not
read yet is replaced by a newer one (latest wins). The watcher never sees grpc or asyncio, and
the server never sees a concrete cache.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Set
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Protocol

from pilotfish.bounded import ByIdentity
from pilotfish.frozen import fast_init
from pilotfish.protos import Node
from pilotfish.xds.events import Event

__all__ = [
    "Cancel",
    "ConfigWatcher",
    "DeltaPreparedResponse",
    "DeltaRespond",
    "DeltaWatchRequest",
    "PreparedResponse",
    "Rearm",
    "Respond",
    "WatchRequest",
    "held_after",
]

_UPDATING_KEPT = 4
"""Answers of `PreparedResponse.updates_references` kept: one per response its streams held
before (a version or two back)."""


@fast_init  # one per request
@dataclass(frozen=True, slots=True)
class WatchRequest:
    """What one stream wants of one type, and what it already holds.

    `known_version` is the version the client holds, or the one it just rejected: the watcher
    must not answer with that version again unless new names were subscribed (names in
    `names - known_names` that exist). That is what keeps a NACKed version from being resent.
    `known_resources`, when known, are the versions of the resources sent at `known_version`:
    a new version of the type that changes none of the subscribed names is not sent. Watchers
    may take `names` and `known_resources` objects they have seen for the same values (a
    session passes a response's `resource_versions` on): neither may change once passed.
    """

    node: Node
    stream_id: int
    type_url: str
    names: frozenset[str]
    wildcard: bool
    known_version: str
    known_names: frozenset[str]
    ttl_aware: bool = False
    known_resources: Mapping[str, str] | None = None


@dataclass(frozen=True, slots=True)
class PreparedResponse:
    """A DiscoveryResponse serialized once, without its nonce; shared by every stream.

    `heartbeat`, when the response holds resources with a TTL, is the body of a response at the
    same version that only refreshes their TTLs (no resource bodies). `references` maps each
    resource to the names of other types it depends on (a cluster's endpoints), so a stream can
    resend those when the resource is updated: the client re-warms it and waits for them.
    `partial`: the body carries only what a client in one state lacked (`names` and
    `resource_versions` are still what the client holds after it).
    """

    type_url: str
    version: str
    names: frozenset[str]
    body: bytes
    heartbeat: bytes | None = None
    resource_versions: Mapping[str, str] | None = None
    references: Mapping[str, Mapping[str, frozenset[str]]] | None = None
    reference_types: frozenset[str] = frozenset()
    partial: bool = False
    _updating: ByIdentity[Mapping[str, frozenset[str]]] = field(
        default_factory=lambda: ByIdentity(_UPDATING_KEPT), init=False, repr=False, compare=False
    )

    def updates_references(self, held: Mapping[str, str]) -> bool:
        """Whether this response updates (not adds) a resource that names others, for a
        client holding `held` (name -> version): see `rewarmed`."""
        return bool(self.rewarmed(held))

    def rewarmed(self, held: Mapping[str, str]) -> Mapping[str, frozenset[str]]:
        """What a client holding `held` (name -> version) must be sent again after this
        response, by type: the names the resources it updates (not adds) name in other types.
        The client re-warms an updated resource (a cluster) and waits for what it names (that
        cluster's endpoints), unchanged or not.

        Answered once for the streams that held the same `held` object (a response's
        `resource_versions`, read-only, passed on by every stream it went to), and the same
        sets for all of them; walked per stream, a thousand Envoys holding a thousand clusters
        each walked up to all of them when the one updated came last."""
        found = self._updating.get(held)
        if found is None:
            now = self.resource_versions or {}
            updated = [
                refs
                for name, refs in (self.references or {}).items()
                if (old := held.get(name)) is not None and old != now.get(name)
            ]
            found = _NONE_REWARMED
            if updated:  # each type's names in one union (a thousand clusters: every one)
                by_type = {
                    t: frozenset().union(*[refs[t] for refs in updated if t in refs])
                    for t in self.reference_types
                }
                found = MappingProxyType({t: names for t, names in by_type.items() if names})
            if isinstance(held, MappingProxyType):  # nobody changes it: the answer stands
                self._updating.put(found, held)
        return found


_NONE_REWARMED: Mapping[str, frozenset[str]] = MappingProxyType({})


@fast_init  # one per request
@dataclass(frozen=True, slots=True)
class DeltaWatchRequest:
    """What one delta stream wants of one type, and the resource versions its client holds.

    `versions` maps names to the version the client holds; an empty version means "the client
    was told this name does not exist". The watcher answers with what differs. `initial` (no
    response yet for this type on this stream) asks for an answer even when nothing differs:
    a client waits for its first response, empty or not, before it is initialized.

    `names` and `versions` are the stream's own, never changed once made (a change makes new
    ones), and shared by the streams in the same state (see `DeltaStream`): a watcher may
    recognise a state it has answered already by their identity.
    """

    node: Node
    stream_id: int
    type_url: str
    names: frozenset[str]
    wildcard: bool
    versions: Mapping[str, str]
    initial: bool = False


@dataclass(frozen=True, slots=True)
class DeltaPreparedResponse:
    """A DeltaDiscoveryResponse without its nonce, for one stream (built from shared bytes).

    `refresh` names resources of other types the client must be sent again once this response
    is written, even unchanged: Envoy re-warms an updated cluster and waits for its endpoints.
    `heartbeats` holds, for each resource sent with a TTL, its body-less `Resource` bytes.

    One response may serve every stream in the same state (same `DeltaWatchRequest.versions`
    and `names`): `after`, when given, is `(versions, names, held)`, the state it was made for
    and `held_after` it, so each stream in that state takes `held` as it is (no copy per
    stream). `names` are the names it sends or removes (made once, not per stream).
    `forgotten` is where the streams it is written to share what `refresh` makes of the
    versions they hold of the other types (`pilotfish.xds.delta`): kept with the response, so
    it goes when the response does.
    """

    type_url: str
    system_version: str
    versions: Mapping[str, str]
    removed: frozenset[str]
    body: bytes
    refresh: Mapping[str, frozenset[str]] = field(default_factory=dict)
    heartbeats: Mapping[str, bytes] = field(default_factory=dict)
    after: tuple[Mapping[str, str], frozenset[str], Mapping[str, str]] | None = None
    names: frozenset[str] | None = None
    forgotten: dict[tuple[str, int, bool], tuple[Mapping[str, str], Mapping[str, str]]] = field(
        default_factory=dict, compare=False, repr=False
    )


def held_after(
    versions: Mapping[str, str],
    names: Set[str],
    updated: Mapping[str, str],
    removed: Collection[str],
) -> Mapping[str, str]:
    """What a delta client holding `versions`, subscribed by name to `names`, holds once it has
    a response sending `updated` and removing `removed`: a new mapping (`versions` is not
    changed), or `versions` itself if the response changes nothing. A removed name it is
    subscribed to is held as `""` (told it does not exist: said only once); others are gone."""
    if not updated and not removed:
        return versions
    held = dict(versions)
    held.update(updated)
    for name in removed:
        if name in names:
            held[name] = ""
        else:
            held.pop(name, None)
    return held


Respond = Callable[[PreparedResponse], None]
DeltaRespond = Callable[[DeltaPreparedResponse], None]
Cancel = Callable[[], None]
Rearm = Callable[[Cancel, WatchRequest, Respond], Cancel]
"""A watcher's optional method ``rearm_watch(cancelled, request, respond)`` (a session looks it
up on the watcher's class): `create_watch` for the stream and type of `cancelled`, the (called)
canceller of their previous watch, which the watcher may reuse and return: an ACK then costs no
new watch, and no answer when nothing changed. The caller uses `cancelled` no more, but as what
is returned (the same object, or not)."""


class ConfigWatcher(Protocol):
    """Answers watches and keeps per-node status; implemented by the caches."""

    def create_watch(self, request: WatchRequest, respond: Respond) -> Cancel:
        """Call `respond` (now, later, again) with anything newer than the watch knows;
        return a canceller. `respond` may be called from any thread; the caller makes it safe."""
        ...

    def create_delta_watch(self, request: DeltaWatchRequest, respond: DeltaRespond) -> Cancel:
        """The same for a delta stream: answer with resources whose versions differ from
        `request.versions`, and with subscribed names that do not exist (as removed)."""
        ...

    def on_stream_event(self, stream_id: int, node: Node, event: Event) -> None:
        """Record what happened on a stream (for status and debugging)."""
        ...

    def on_stream_closed(self, stream_id: int, node: Node | None) -> None:
        """Forget the stream; a node with no stream left has no status either."""
        ...
