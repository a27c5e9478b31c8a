"""An immutable, consistent set of resources of every type for one node or group of nodes."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from pilotfish.protos import (
    ENDPOINT_TYPE,
    RESOURCE_TYPES,
    ROUTE_TYPE,
    Message,
    references,
    resource_type,
    wire,
)
from pilotfish.xds import PreparedResponse

from .resource import CachedResource, Serialized, WithTtl, to_message

__all__ = ["Consistency", "Snapshot", "SnapshotStats"]

# Types that exist only because another type names them.
_REFERENCED_TYPES = (ENDPOINT_TYPE, ROUTE_TYPE)


@dataclass(frozen=True, slots=True)
class Consistency:
    """References between types that do not resolve inside the snapshot.

    `missing`: names referenced by CDS/LDS/SRDS that the snapshot lacks (Envoy would wait for
    them while warming). `unreferenced`: EDS/RDS resources nothing refers to.
    """

    missing: Mapping[str, frozenset[str]]
    unreferenced: Mapping[str, frozenset[str]]

    @property
    def ok(self) -> bool:
        """True when every reference resolves and nothing is left over."""
        return not self.missing and not self.unreferenced

    def __str__(self) -> str:
        if self.ok:
            return "consistent"
        parts = [
            f"{label} {resource_type(t).short_name}: {', '.join(sorted(names))}"
            for label, table in (("missing", self.missing), ("unreferenced", self.unreferenced))
            for t, names in sorted(table.items())
        ]
        return "; ".join(parts)


@dataclass(slots=True)
class SnapshotStats:
    """How much serialization this snapshot did (to show serialize-once in benchmarks)."""

    resources_serialized: int = 0
    responses_built: int = 0


@dataclass(frozen=True, slots=True)
class _TypeResources:
    version: str
    by_name: Mapping[str, CachedResource]
    names: frozenset[str]
    responses: dict[tuple[frozenset[str] | None, bool], PreparedResponse] = field(
        default_factory=dict
    )


class Snapshot:
    """Resources per type, serialized at construction, so later mutation of the caller's
    messages cannot change what is served.

    `resources` maps a type URL or short name (`"cds"`) to messages (or `WithTtl(message, ttl)`,
    or `Serialized` ones reused from an earlier snapshot, which are not serialized again).
    Each type's version is a content hash unless given (`version` for every type, or `versions`
    per type). Types not given are empty, with a version of their own, so clients asking for them
    get an answer. `version_prefix` starts every content-hash version (translators put their own
    version there, so a proxy's config dump shows which translator produced it).
    """

    __slots__ = ("_lock", "_refs", "_refs_by_resource", "_types", "stats")

    def __init__(
        self,
        resources: Mapping[str, Iterable[Message | object]],
        *,
        version: str | None = None,
        versions: Mapping[str, str] | None = None,
        version_prefix: str = "",
    ) -> None:
        given_versions = {resource_type(k).type_url: v for k, v in (versions or {}).items()}
        self.stats = SnapshotStats()
        self._lock = threading.Lock()
        self._refs: dict[str, set[str]] = {}
        self._refs_by_resource: dict[tuple[str, str], Mapping[str, set[str]]] = {}
        by_type: dict[str, dict[str, CachedResource]] = {url: {} for url in RESOURCE_TYPES}
        for key, items in resources.items():
            type_url = resource_type(key).type_url
            table = by_type[type_url]
            for item in items:
                refs: Mapping[str, set[str]] | None = None
                if isinstance(item, Serialized):
                    message, cached, refs = item.message, item.cached, item.refs
                else:
                    ttl = item.ttl if isinstance(item, WithTtl) else None
                    resource = item.resource if isinstance(item, WithTtl) else item
                    message = to_message(type_url, resource)
                    cached = CachedResource.of(type_url, message, ttl)
                    self.stats.resources_serialized += 1
                if cached.name in table:
                    raise ValueError(f"two {key} resources named {cached.name!r}")
                table[cached.name] = cached
                if refs is None:
                    refs = references(message)
                if refs:
                    self._refs_by_resource[type_url, cached.name] = refs
                for ref_type, names in refs.items():
                    self._refs.setdefault(ref_type, set()).update(names)
        self._types = {
            type_url: _TypeResources(
                version=given_versions.get(type_url)
                or version
                or version_prefix + _type_version(table),
                by_name=MappingProxyType(table),
                names=frozenset(table),
            )
            for type_url, table in by_type.items()
        }

    def version(self, type_url: str) -> str:
        """The version of one type (type URL or short name)."""
        return self._types[resource_type(type_url).type_url].version

    def resources(self, type_url: str) -> Mapping[str, CachedResource]:
        """The serialized resources of one type, by name (read-only)."""
        return self._types[resource_type(type_url).type_url].by_name

    def messages(self, type_url: str) -> dict[str, Message]:
        """Fresh message copies of one type, by name."""
        return {name: r.message() for name, r in self.resources(type_url).items()}

    def references_of(self, type_url: str, name: str) -> Mapping[str, set[str]]:
        """What one resource names in other types (a cluster's EDS name, a listener's RDS)."""
        return self._refs_by_resource.get((resource_type(type_url).type_url, name), {})

    def _references(
        self, type_url: str, chosen: Iterable[CachedResource]
    ) -> Mapping[str, Mapping[str, frozenset[str]]] | None:
        found = {
            r.name: _frozen(refs)
            for r in chosen
            if (refs := self._refs_by_resource.get((type_url, r.name)))
        }
        return MappingProxyType(found) if found else None

    def consistent(self) -> Consistency:
        """Report dangling references (see `Consistency`)."""
        missing: dict[str, frozenset[str]] = {}
        unreferenced: dict[str, frozenset[str]] = {}
        for type_url in {*self._refs, *_REFERENCED_TYPES}:
            wanted = self._refs.get(type_url, set())
            have = self._types[type_url].names
            if lost := frozenset(wanted - have):
                missing[type_url] = lost
            if extra := frozenset(have - wanted):
                unreferenced[type_url] = extra
        return Consistency(MappingProxyType(missing), MappingProxyType(unreferenced))

    def response(
        self, type_url: str, names: frozenset[str] | None, *, ttl_aware: bool = False
    ) -> PreparedResponse:
        """The response for a subscription (`None`: everything), built once per snapshot.

        `ttl_aware` clients get TTL'd resources wrapped in `Resource` with their TTL.
        """
        entry = self._types[type_url]
        key = (names, ttl_aware)
        with self._lock:
            prepared = entry.responses.get(key)
        if prepared is not None:
            return prepared
        if names is None:
            chosen = list(entry.by_name.values())
        else:
            chosen = [entry.by_name[n] for n in sorted(names) if n in entry.by_name]
        body = wire.discovery_response_body(
            entry.version, type_url, (r.sotw_any(ttl_aware) for r in chosen)
        )
        heartbeat = None
        if ttl_aware and any(r.ttl is not None for r in chosen):
            # A heartbeat refreshes TTLs without resource bodies; but for LDS and CDS Envoy takes
            # any response as the full state, so there it must be the whole response again.
            heartbeat = (
                body
                if RESOURCE_TYPES[type_url].full_state
                else wire.discovery_response_body(
                    entry.version, type_url, (r.heartbeat_any for r in chosen if r.ttl)
                )
            )
        prepared = PreparedResponse(
            type_url=type_url,
            version=entry.version,
            names=entry.names if names is None else frozenset(r.name for r in chosen),
            body=body,
            heartbeat=heartbeat,
            resource_versions=MappingProxyType({r.name: r.version for r in chosen}),
            references=(references := self._references(type_url, chosen)),
            reference_types=frozenset(t for refs in (references or {}).values() for t in refs),
        )
        with self._lock:
            # Two threads may race to build it; the first one stored wins and is shared.
            prepared = entry.responses.setdefault(key, prepared)
            if prepared.body is body:
                self.stats.responses_built += 1
        return prepared


def _frozen(refs: Mapping[str, set[str]]) -> Mapping[str, frozenset[str]]:
    return MappingProxyType({t: frozenset(n) for t, n in refs.items()})


def _type_version(table: Mapping[str, CachedResource]) -> str:
    digest = hashlib.blake2b(digest_size=8)
    for name in sorted(table):
        digest.update(name.encode())
        digest.update(b"\0")
        digest.update(table[name].version.encode())
        digest.update(b"\0")
    return digest.hexdigest()
