"""How a watch is answered from a set of serialized resources, shared by the caches.

Pure functions of (what the client holds, what the cache has): no locks, no I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Protocol

from pilotfish.bounded import ByIdentity
from pilotfish.protos import ENDPOINT_TYPE, RESOURCE_TYPES, ROUTE_TYPE, wire
from pilotfish.xds import (
    DeltaPreparedResponse,
    DeltaWatchRequest,
    PreparedResponse,
    held_after,
)

from .resource import CachedResource

if TYPE_CHECKING:  # the snapshot answers delta watches with `delta_answer`
    from .snapshot import Snapshot

__all__ = ["PER_NAME", "Wanted", "delta_answer", "partial_answer", "sotw_answer"]


class Wanted(Protocol):
    """What a state-of-the-world watch asks for: a `WatchRequest`, or a watch that keeps
    these and not the request (`SnapshotCache`'s, 64 B a watch less)."""

    @property
    def type_url(self) -> str: ...
    @property
    def names(self) -> frozenset[str]: ...
    @property
    def wildcard(self) -> bool: ...
    @property
    def ttl_aware(self) -> bool: ...


def _no_references(type_url: str, name: str) -> Mapping[str, set[str]]:
    return {}


# For each type, the types namespaced by its names (route configurations: their virtual hosts).
_NAMESPACED = {
    parent: [row for row in RESOURCE_TYPES.values() if row.namespace_type == parent]
    for parent in RESOURCE_TYPES
}


def sotw_answer(
    snapshot: Snapshot,
    request: Wanted,
    known_version: str,
    known_names: frozenset[str],
    known_resources: Mapping[str, str] | None = None,
    *,
    partial: bool = False,
) -> PreparedResponse | None:
    """The response a watch needs from this snapshot, or None if its client is up to date.

    `partial`: the client holds exactly `known_resources` (nothing sent since is on its way),
    so an answer of a type answered per name may carry only what the client lacks
    (`Snapshot.response_since`)."""
    type_url = request.type_url
    if type_url not in RESOURCE_TYPES or not (request.wildcard or request.names):
        return None
    names = None if request.wildcard else request.names
    if snapshot.version(type_url) != known_version:
        # A named subscription whose resources all stayed as they were gets nothing: a new
        # version elsewhere in the type (another cluster's endpoints) is not its business.
        if (
            names is not None
            and known_resources is not None
            and snapshot.holds(type_url, names, known_resources)
        ):
            return None
        return _response(snapshot, request, names, known_resources if partial else None)
    if names is None or names is known_names:
        return None
    # Same version: only names the client newly asked for, present and never sent, need a push.
    fresh = _fresh(names, known_names)
    if fresh and not snapshot.resources(type_url).keys().isdisjoint(fresh):
        return _response(snapshot, request, names, known_resources if partial else None)
    return None


_FRESH: ByIdentity[frozenset[str]] = ByIdentity(16)


def _fresh(names: frozenset[str], known_names: frozenset[str]) -> frozenset[str]:
    """The names of `names` not among `known_names`. Worked out once for the streams that
    pass the same set objects (a subscription changed alike on every Envoy of a kind): per
    stream it was a walk over a thousand names on each service added to the mesh."""
    fresh = _FRESH.get(names, known_names)
    if fresh is None:
        fresh = _FRESH.put(names - known_names, names, known_names)
    return fresh


PER_NAME = frozenset({ENDPOINT_TYPE, ROUTE_TYPE})
"""Types whose state-of-the-world answers may carry only what changed. Envoy's xDS mux updates
a subscription from an answer only if the answer carries its resource, and leaves the others as
they are; its unified mux (`envoy.reloadable_features.unified_mux`) gives the others an empty
update instead, which an EDS cluster and an RDS route configuration take as "missing" and keep
what they have. Not LDS and CDS (an answer is the whole state: what it lacks is deleted), SRDS
(Envoy removes the scopes an answer lacks), nor SDS, RTDS and ECDS (their subscriptions reject
an empty update, which the unified mux would give them)."""


def partial_answer(
    whole: PreparedResponse,
    held: Mapping[str, str],
    table: Mapping[str, CachedResource],
    *,
    ttl_aware: bool = False,
) -> PreparedResponse:
    """`whole` (built from `table`) carrying only the resources a client holding `held` (name
    -> version) lacks or holds at another version, for a type in `PER_NAME`. It has the whole
    answer's `names` and `resource_versions`, the same objects: the client holds them after it.

    `whole` itself when that is every resource, or when TTL'd resources need heartbeats (a
    heartbeat refreshes the last answer's resources only). With none (a subscribed resource
    gone, which these answers cannot say: Envoy drops a cluster's endpoints with the cluster)
    it carries no resources, so the client still takes and ACKs the version."""
    versions = whole.resource_versions
    if versions is None or whole.heartbeat is not None:
        return whole
    changed = [table[n] for n, v in versions.items() if held.get(n) != v]
    if len(changed) == len(versions):
        return whole
    body = wire.discovery_response_body(
        whole.version, whole.type_url, (r.sotw_parts(ttl_aware) for r in changed)
    )
    return replace(whole, body=body, partial=True)


def _response(
    snapshot: Snapshot,
    request: Wanted,
    names: frozenset[str] | None,
    held: Mapping[str, str] | None,
) -> PreparedResponse:
    type_url = request.type_url
    if held is None or names is None or type_url not in PER_NAME:
        return snapshot.response(type_url, names, ttl_aware=request.ttl_aware)
    return snapshot.response_since(type_url, names, held, ttl_aware=request.ttl_aware)


def delta_answer(
    request: DeltaWatchRequest,
    table: Mapping[str, CachedResource],
    system_version: str,
    references_of: Callable[[str, str], Mapping[str, set[str]]] = _no_references,
) -> DeltaPreparedResponse | None:
    """Resources of `table` whose version differs from the client's, and names to report as
    removed; `references_of` names what an updated resource makes the client re-warm."""
    type_url = request.type_url
    held = request.versions
    wanted = table.keys() | request.names if request.wildcard else request.names
    changed = sorted(
        (
            r
            for name in wanted
            if (r := table.get(name)) is not None and held.get(name) != r.version
        ),
        key=lambda r: r.name,
    )
    # Gone: held (or never told about, when explicitly subscribed) and not in the snapshot.
    removed = sorted(
        name
        for name in wanted | held.keys()
        if name not in table
        and (held.get(name) or (name in request.names and name not in held))
        and (request.wildcard or name in request.names)
    )
    if not changed and not removed and not request.initial:
        return None
    unresolved: list[str] = []
    row = RESOURCE_TYPES.get(type_url)
    if row is not None and row.unresolved_aliases:
        # Never told about and asked for by name (on demand): answered as an unresolved alias.
        unresolved = [n for n in removed if n not in held]
        removed = [n for n in removed if n in held]
    refresh: dict[str, set[str]] = {}
    for r in changed:
        if held.get(r.name):  # an update, not an addition: its dependents warm again
            for ref_type, ref_names in references_of(type_url, r.name).items():
                refresh.setdefault(ref_type, set()).update(ref_names)
        for namespaced in _NAMESPACED.get(type_url, ()):
            # Each route configuration sent may start a VHDS subscription that waits for an
            # answer in its namespace; a namespaced stream answers it again (see xds.delta).
            names = refresh.setdefault(namespaced.type_url, set())
            names.add(namespaced.namespace_name(r.name))
    versions = {r.name: r.version for r in changed}
    gone = frozenset(removed).union(unresolved)
    return DeltaPreparedResponse(
        type_url=type_url,
        system_version=system_version,
        versions=versions,
        removed=gone,
        body=wire.delta_response_body(
            system_version,
            type_url,
            [*(r.resource for r in changed), *map(wire.unresolved_alias_bytes, unresolved)],
            removed,
        ),
        refresh={t: frozenset(n) for t, n in refresh.items()},
        heartbeats={r.name: r.heartbeat_resource for r in changed if r.ttl is not None},
        # What a client in the request's state holds after it: made once, for every stream
        # in that state (`DeltaStream.send_parts`).
        after=(held, request.names, held_after(held, request.names, versions, gone)),
        names=gone.union(versions),
    )
