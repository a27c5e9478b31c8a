"""Incremental translation: reuse last round's pieces whose inputs did not change.

A mesh of thousands of services changes one object at a time, so a round of translation should
cost what changed, not the mesh. `TranslationMemo` keeps, for one proxy shape:

- **units**: the output of translating one service (its clusters and load assignments, or one
  virtual host), with the lookups it made (destination rules, delegates, endpoints, peer
  authentication...). A unit is reused when replaying those lookups against the new config gives
  the same answers; there is no list of dependencies to keep right by hand, the lookups *are*
  the dependencies. Units are indexed by what they read, so a change finds the ones it may
  touch; and a call site's units are kept in order (`site`), so while the services stay the
  same a round visits only those.
- **resources**: each served resource with its serialized form (`ServedResources`). A resource
  equal to last round's keeps its bytes and version, so an unchanged resource is never
  serialized again, and the next snapshot is the last one updated by the difference.

Answers are compared by identity for config objects (`ConfigStore` keeps an unchanged file's
objects; a changed file gets new ones) and by value for registry data. Entries not used in a
round are dropped at its end.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pilotfish.cache import Snapshot
from pilotfish.protos import Message
from pilotfish.registry import Endpoint, Registry, Service
from pilotfish.sources import ConfigObject
from pilotfish.translators.changes import Changes
from pilotfish.translators.index import ConfigIndex, MergedRule
from pilotfish.translators.served import ServedResources

__all__ = ["MemoStats", "Site", "TranslationMemo"]

T = TypeVar("T")

_Read = tuple[str, tuple[Any, ...], Hashable]


@dataclass(slots=True)
class MemoStats:
    """What the last round reused and what it had to redo (for tests and benchmarks)."""

    units_reused: int = 0
    units_translated: int = 0
    resources_reused: int = 0
    resources_serialized: int = 0


@dataclass(slots=True)
class Site:
    """One call site's units, in order, as last translated (see `TranslationMemo.site`)."""

    token: Hashable
    keys: list[Any]
    computes: dict[Any, Callable[[ConfigIndex, Registry], Any]]
    values: dict[Any, Any]
    extra: Any = None
    changed: list[Any] = field(default_factory=list)
    """The keys whose value is a new object this round."""
    cache: dict[str, Any] = field(default_factory=dict)
    """What the caller derived from the values (kept with the site, for it to patch)."""


@dataclass(slots=True)
class _Unit:
    value: Any
    reads: list[_Read]
    # The objects whose identity the reads compared: kept alive so an id is never reused by
    # another object while this entry exists.
    keep: list[object] = field(default_factory=list)


def _objects_token(objects: Sequence[ConfigObject], keep: list[object]) -> Hashable:
    keep.extend(objects)
    return tuple(map(id, objects))


def _rule_token(rule: MergedRule | None, keep: list[object]) -> Hashable:
    return None if rule is None else _objects_token(rule.sources, keep)


def _object_token(obj: ConfigObject | None, keep: list[object]) -> Hashable:
    return None if obj is None else _objects_token([obj], keep)


def _answer(
    kind: str, args: tuple[Any, ...], index: ConfigIndex, registry: Registry, keep: list[object]
) -> Hashable:
    """Ask `index`/`registry` one recorded question again; the token of its answer."""
    if kind == "destination_rule":
        return _rule_token(index.destination_rule(*args), keep)
    if kind == "delegate":
        return _object_token(index.delegate(*args), keep)
    if kind == "for_host":
        return _object_token(index.for_host(*args), keep)
    if kind == "peer_authentications":
        return _objects_token(index.peer_authentications(), keep)
    if kind == "endpoints":
        host, port, subset = args
        labels = dict(subset) if subset is not None else None
        found: tuple[Endpoint, ...] = tuple(registry.endpoints(host, port, labels))
        return found
    if kind == "service":
        service = registry.service(*args)
        return None if service is None else service.key
    raise AssertionError(f"unknown lookup {kind}")


class _TrackedIndex(ConfigIndex):
    """A `ConfigIndex` that records the lookups a unit makes (and answers from the real one)."""

    def __init__(self, inner: ConfigIndex, unit: _Unit) -> None:
        super().__init__(
            inner.domain,
            inner.virtual_services,
            inner.destination_rules,
            inner.gateways,
            inner.others,
        )
        self._lookups = inner._look  # shared: built once per config, not per unit
        self._inner = inner
        self._unit = unit
        self._rules: dict[tuple[str, str], MergedRule | None] = {}

    def _record(self, kind: str, args: tuple[Any, ...], token: Hashable) -> None:
        self._unit.reads.append((kind, args, token))

    def destination_rule(self, host: str, proxy_namespace: str = "") -> MergedRule | None:
        # A unit asks for one host's rule once per cluster, load assignment and route: asked
        # and recorded once (the config does not change during a translation).
        key = (host, proxy_namespace)
        if key in self._rules:
            return self._rules[key]
        rule = self._rules[key] = self._inner.destination_rule(host, proxy_namespace)
        self._record("destination_rule", key, _rule_token(rule, self._unit.keep))
        return rule

    def delegate(self, name: str, namespace: str) -> ConfigObject | None:
        found = self._inner.delegate(name, namespace)
        self._record("delegate", (name, namespace), _object_token(found, self._unit.keep))
        return found

    def for_host(self, host: str, gateway: str = "mesh") -> ConfigObject | None:
        found = self._inner.for_host(host, gateway)
        self._record("for_host", (host, gateway), _object_token(found, self._unit.keep))
        return found

    def peer_authentications(self) -> tuple[ConfigObject, ...]:
        found = self._inner.peer_authentications()
        self._record("peer_authentications", (), _objects_token(found, self._unit.keep))
        return found

    def bound_to(self, gateway: str) -> list[ConfigObject]:
        raise NotImplementedError("bound_to is not tracked: call it outside a memoized unit")

    def routes_read_labels(self) -> bool:
        raise NotImplementedError("not tracked: call routes_read_labels outside a memoized unit")

    def of_kind(self, kind: str) -> tuple[ConfigObject, ...]:
        raise NotImplementedError("of_kind is not tracked: call it outside a memoized unit")

    def gateways_for(self, labels: Mapping[str, str]) -> list[ConfigObject]:
        raise NotImplementedError("gateways_for is not tracked: call it outside a memoized unit")


class _TrackedRegistry(Registry):
    """A `Registry` view that records the lookups a unit makes."""

    def __init__(self, inner: Registry, unit: _Unit) -> None:
        # Not `Registry.__init__`: one view per unit (20,000 a full round at 10,000 services)
        # needs none of a registry's own tables, lock or generation; what a unit may ask is
        # answered from `inner` below, and the rest of the API fails loudly here.
        self.domain = inner.domain
        self.generation = inner.generation
        self._inner = inner
        self._unit = unit
        self.conflicts = inner.conflicts
        self._asked: dict[tuple[str, int, Any], tuple[Endpoint, ...]] = {}

    def endpoints(
        self, hostname: str, port: int, subset: Mapping[str, str] | None = None
    ) -> list[Endpoint]:
        # Asked once per cluster and load assignment of a port: asked and recorded once.
        frozen = tuple(sorted(subset.items())) if subset is not None else None
        key = (hostname, port, frozen)
        found = self._asked.get(key)
        if found is None:
            found = self._asked[key] = tuple(self._inner.endpoints(hostname, port, subset))
            self._unit.reads.append(("endpoints", key, found))
        return list(found)

    def service(self, hostname: str) -> Service | None:
        found = self._inner.service(hostname)
        token = None if found is None else found.key
        self._unit.reads.append(("service", (hostname,), token))
        return found

    def services(self) -> list[Service]:
        raise NotImplementedError("services() is not tracked: call it outside a memoized unit")

    def instances(self, hostname: str) -> list[Any]:
        raise NotImplementedError("instances() is not tracked: use endpoints()")

    def services_of(self, namespace: str, labels: Mapping[str, str]) -> list[Service]:
        raise NotImplementedError("services_of() is not tracked")


class TranslationMemo:
    """What one proxy shape was last given, piece by piece (see the module docstring).

    Not thread-safe: one translation of a shape at a time (the controller holds its lock).
    """

    def __init__(self) -> None:
        self.stats = MemoStats()
        self._units: dict[Hashable, _Unit] = {}
        self._next_units: dict[Hashable, _Unit] = {}
        self._served = ServedResources()
        self._sites: dict[Hashable, Site] = {}
        self._next_sites: dict[Hashable, Site] = {}
        self._patched: list[Site] = []  # sites patched this round
        self._recorded = False  # whether a site was recorded (visited whole) this round
        self._assembled: dict[Hashable, tuple[list[Any], Any]] = {}
        self._next_assembled: dict[Hashable, tuple[list[Any], Any]] = {}
        self._dirty: set[Hashable] | None = None
        # A defaultdict: an entry's set is made only when missing. Units by (kind, first
        # argument) only: a kind changed whatever the arguments (rare) scans the keys.
        self._readers: defaultdict[tuple[str, Any], set[Hashable]] = defaultdict(set)
        self._stale = 0

    def begin(self, changes: Changes | None = None) -> None:
        """Start a round of translation; `changes` since the last round, if known, spare
        replaying the lookups of units they cannot touch (None: replay every unit's)."""
        self.stats.units_reused = self.stats.units_translated = 0
        self._next_units, self._next_sites, self._next_assembled = {}, {}, {}
        self._patched, self._recorded = [], False
        self._dirty = None
        touched = changes.touched() if changes is not None else None
        if touched is not None:
            # The units that made a lookup the change may answer differently: found by what
            # they read, so the others are reused without even looking at their reads.
            keys, kinds = touched
            readers = self._readers
            self._dirty = set()
            for read in keys:
                self._dirty.update(readers.get(read, ()))
            if kinds:
                for (kind, _), keys_read in readers.items():
                    if kind in kinds:
                        self._dirty.update(keys_read)

    def _note_reads(self, key: Hashable, unit: _Unit) -> None:
        """Index a new unit by what it read (entries of units since redone or dropped stay
        until the index is rebuilt: a unit found by a stale entry is only checked)."""
        readers = self._readers
        for kind, args, _ in unit.reads:
            readers[kind, args[0] if args else None].add(key)
        self._stale += 1

    def end(self) -> None:
        """End the round: units not used in it are forgotten."""
        if not self._recorded:
            # Every site was patched: the units are last round's, with the redone ones.
            self._units.update(self._next_units)
        else:
            units = self._units
            for site in self._patched:
                carried = map(units.__getitem__, site.keys)
                self._next_units.update(zip(site.keys, carried, strict=True))
            self._units = self._next_units
        self._next_units, self._patched, self._recorded = {}, [], False
        if self._stale > 2 * len(self._units) + 64:
            self._readers = defaultdict(set)
            for key, unit in self._units.items():
                self._note_reads(key, unit)
            self._stale = 0
        self._assembled, self._next_assembled = self._next_assembled, {}
        self._sites, self._next_sites = self._next_sites, {}

    def unit(
        self,
        key: Hashable,
        compute: Callable[[ConfigIndex, Registry], T],
        index: ConfigIndex,
        registry: Registry,
    ) -> T:
        """`compute(index, registry)`, or last round's result for `key` if every lookup it
        made gives the same answer now (lookups `changes` cannot have touched are not asked
        again). `compute` must read config only through its arguments (and values in `key`)."""
        previous = self._units.get(key)
        dirty = self._dirty
        if previous is not None and dirty is not None and key not in dirty:
            self._next_units[key] = previous
            self.stats.units_reused += 1
            untouched: T = previous.value
            return untouched
        if previous is not None:
            keep: list[object] = []
            if all(
                _answer(kind, args, index, registry, keep) == token
                for kind, args, token in previous.reads
            ):
                self._next_units[key] = previous
                self.stats.units_reused += 1
                value: T = previous.value
                return value
        unit = _Unit(None, [])
        unit.value = compute(_TrackedIndex(index, unit), _TrackedRegistry(registry, unit))
        self._next_units[key] = unit
        self._note_reads(key, unit)
        self.stats.units_translated += 1
        return unit.value  # type: ignore[no-any-return]

    def site(
        self, name: Hashable, token: Hashable, index: ConfigIndex, registry: Registry
    ) -> Site | None:
        """Last round's units of one call site (`record`), brought up to date, if this round
        may patch them: the site was built over the same structure (`token`, e.g. the
        registry's generation: the same services, so the same unit keys in the same order)
        and the round knows which units the change touched. Then the touched units are
        redone and every other is carried over without being looked at; None otherwise (the
        caller visits everything and records the site again)."""
        site = self._sites.get(name)
        if site is None or site.token != token or self._dirty is None:
            return None
        self._patched.append(site)  # its other units are carried over at `end`
        redo = [key for key in self._dirty if key in site.computes]
        self.stats.units_reused += len(site.keys) - len(redo)
        site.changed = []
        for key in redo:
            value = self.unit(key, site.computes[key], index, registry)
            if value is not site.values[key]:
                site.values[key] = value
                site.changed.append(key)
        self._next_sites[name] = site
        return site

    def record(
        self,
        name: Hashable,
        token: Hashable,
        keys: list[Any],
        computes: dict[Any, Callable[[ConfigIndex, Registry], Any]],
        values: dict[Any, Any],
        extra: Any = None,
    ) -> Site:
        """Remember a call site's units in order (each key's `compute` and value, from `unit`)
        for `site` to patch in later rounds."""
        site = Site(token, keys, computes, values, extra)
        self._next_sites[name] = site
        self._recorded = True
        return site

    def assembled(
        self, key: Hashable, parts: Sequence[Any], assemble: Callable[[T | None], T]
    ) -> T:
        """`assemble(last round's result)`, or that result itself if `parts` are the very
        objects it was made of (a route configuration whose virtual hosts all came from reused
        units: one object, so nothing is joined, compared or hashed again), or equal ones."""
        given = list(parts)
        previous = self._assembled.get(key)
        # List equality checks identity first, in C (10,000 hosts in a few µs); a part that is
        # a new object is compared by value, and an equal one makes the same result.
        if previous is not None and previous[0] == given:
            self._next_assembled[key] = previous
            reused: T = previous[1]
            return reused
        value = assemble(previous[1] if previous is not None else None)
        self._next_assembled[key] = (given, value)
        return value

    def snapshot(self, resources: Mapping[str, Sequence[Message]], version_prefix: str) -> Snapshot:
        """`resources` (by type) as a `Snapshot`, made from last round's by what differs
        (`ServedResources`); `stats` counts what was serialized."""
        snapshot, serialized, total = self._served.snapshot(resources, version_prefix)
        self.stats.resources_serialized = serialized
        self.stats.resources_reused = total - serialized
        return snapshot
