"""The config a translation reads, indexed the way Istio looks things up.

Host names are resolved to FQDNs once (short names take the object's namespace), VirtualServices
are grouped by the gateways they bind to (`mesh` when none are named), DestinationRules for one
host are merged, and delegate VirtualServices are found by namespace/name.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from operator import attrgetter
from typing import Any

from pilotfish.frozen import construct
from pilotfish.protos import as_dict
from pilotfish.protos.istio.networking.v1alpha3.destination_rule_pb2 import (
    DestinationRule,
    Subset,
    TrafficPolicy,
)
from pilotfish.protos.istio.networking.v1alpha3.gateway_pb2 import Gateway
from pilotfish.protos.istio.networking.v1alpha3.virtual_service_pb2 import VirtualService
from pilotfish.sources import ConfigObject, resolve_host

__all__ = ["MESH", "ConfigIndex", "MergedRule", "host_matches"]

MESH = "mesh"
"""The gateway name that means "every sidecar"."""


def host_matches(pattern: str, host: str) -> bool:
    """Istio host matching: exact, `*`, or a leading `*.` wildcard."""
    if pattern in ("*", host):
        return True
    if pattern.startswith("*"):
        return host.endswith(pattern[1:])
    return False


@dataclass(frozen=True)
class MergedRule:
    """All DestinationRules for one host, merged as Istio does: subsets concatenated (the first
    definition of a name wins), the first traffic policy wins."""

    host: str
    namespace: str
    traffic_policy: TrafficPolicy
    subsets: tuple[Subset, ...]
    sources: tuple[ConfigObject, ...]

    def subset(self, name: str) -> Subset | None:
        """A subset by name."""
        return self._by_name.get(name)

    @cached_property
    def has_policy(self) -> bool:
        """Whether the rule sets a traffic policy (most do not: their clusters skip merging)."""
        return bool(self.traffic_policy.ListFields())

    @cached_property
    def subset_labels(self) -> tuple[tuple[str, dict[str, str]], ...]:
        """Each subset's name and labels, in order (every cluster and load assignment of a
        subset asks, on every port): made once. Callers do not modify the dicts."""
        return tuple((s.name, as_dict(s.labels)) for s in self.subsets)

    @cached_property
    def may_hash(self) -> bool:
        """Whether any of its traffic policies (top level, subsets, port level) names a
        consistent hash: routes to most hosts have no hash policy, told at a glance."""
        policies = [self.traffic_policy]
        policies.extend(s.traffic_policy for s in self.subsets if s.HasField("traffic_policy"))
        for policy in policies:
            if policy.load_balancer.HasField("consistent_hash"):
                return True
            for port_level in policy.port_level_settings:
                if port_level.load_balancer.HasField("consistent_hash"):
                    return True
        return False

    @cached_property
    def _by_name(self) -> dict[str, Subset]:
        # Made once: each cluster, load assignment and route of a subset asks.
        found: dict[str, Subset] = {}
        for subset in self.subsets:
            found.setdefault(subset.name, subset)
        return found


_order = attrgetter("namespace", "name", "kind", "file", "index")
"""The order objects are indexed in: by namespace/name, not by the order files were read (a
key made in C: no Python call per object)."""
_KIND_ORDER = attrgetter("namespace", "name", "file", "index")
"""`_order` among objects of one kind."""


def _insert(items: list[ConfigObject], obj: ConfigObject) -> None:
    bisect.insort(items, obj, key=_order)


def _remove(items: list[Any], obj: ConfigObject, key: Callable[[Any], ConfigObject]) -> None:
    """Remove `obj` (by identity) from `items`, sorted by `_order` of `key(item)`."""
    start = bisect.bisect_left(items, _order(obj), key=lambda item: _order(key(item)))
    for i in range(start, len(items)):
        if key(items[i]) is obj:
            del items[i]
            return


def _same(obj: Any) -> Any:
    return obj


@dataclass
class ConfigIndex:
    """Lookups over one consistent set of config objects.

    Lookups are by dictionary (host, gateway, namespace/name), built on first use: a mesh of
    thousands of services must not scan every object for every host (that was quadratic).
    Only wildcard hosts are matched by scanning, and there are few of them. `apply` changes
    the index by the objects that changed (a change costs its size, not the mesh's); it is not
    thread-safe (the controller holds its lock).
    """

    domain: str = "cluster.local"
    virtual_services: list[ConfigObject] = field(default_factory=list)
    destination_rules: list[ConfigObject] = field(default_factory=list)
    gateways: list[ConfigObject] = field(default_factory=list)
    others: list[ConfigObject] = field(default_factory=list)
    _lookups: _Lookups | None = field(default=None, init=False, repr=False, compare=False)

    @classmethod
    def build(cls, objects: Iterable[ConfigObject], domain: str = "cluster.local") -> ConfigIndex:
        """Index `objects`, sorted by (namespace, name) so the output does not depend on the
        order files were read in."""
        index = cls(domain)
        # Grouped by kind in one pass, then each list sorted: the same order as sorting every
        # object by `_order` first, with a key made in C (no call per object).
        lists = index._kind_lists()
        others = index.others
        for obj in objects:
            lists.get(obj.kind, others).append(obj)
        for found in lists.values():
            found.sort(key=_KIND_ORDER)
        others.sort(key=_order)
        return index

    def _kind_lists(self) -> dict[str, list[ConfigObject]]:
        """The lists of the kinds indexed apart; every other kind is in `others`."""
        return {
            "VirtualService": self.virtual_services,
            "DestinationRule": self.destination_rules,
            "Gateway": self.gateways,
        }

    def _list(self, obj: ConfigObject) -> list[ConfigObject]:
        return self._kind_lists().get(obj.kind, self.others)

    def apply(self, removed: Iterable[ConfigObject], added: Iterable[ConfigObject]) -> None:
        """Stop indexing `removed` and index `added` (a replaced object is in both)."""
        for obj in removed:
            _remove(self._list(obj), obj, _same)
            if self._lookups is not None:
                self._lookups.remove(obj)
        for obj in added:
            _insert(self._list(obj), obj)
            if self._lookups is not None:
                self._lookups.add(obj)

    @property
    def _look(self) -> _Lookups:
        if self._lookups is None:
            self._lookups = _Lookups(self)
        return self._lookups

    # -- VirtualServices ------------------------------------------------------------------

    def routes_read_labels(self) -> bool:
        """Whether any VirtualService routes HTTP by the client's labels (`sourceLabels`): while
        none does, a sidecar's routes do not depend on its labels (`routes_view`)."""
        return bool(self._look.by_source)

    def gateways_of(self, vs: ConfigObject) -> list[str]:
        """The gateways a VirtualService binds to, as `mesh` or `namespace/name`."""
        return list(self._look.vs_gateways(vs))

    def hosts_of(self, vs: ConfigObject) -> list[str]:
        """A VirtualService's hosts as FQDNs."""
        return list(self._look.vs_hosts(vs))

    def bound_to(self, gateway: str) -> list[ConfigObject]:
        """Root VirtualServices (those with hosts) bound to `gateway` (`mesh` or `ns/name`)."""
        return list(self._look.bound.get(gateway, ()))

    def for_host(self, host: str, gateway: str = MESH) -> ConfigObject | None:
        """The VirtualService that routes `host` through `gateway`: an exact host wins over a
        wildcard, then the oldest (here: first by namespace/name) wins, as in Istio."""
        look = self._look
        exact = look.exact_vs.get((gateway, host))
        if exact:
            return exact[0]
        best: tuple[int, ConfigObject] | None = None
        for vs, patterns in look.wild_vs.get(gateway, ()):
            length = max((len(p) for p in patterns if host_matches(p, host)), default=-1)
            if length >= 0 and (best is None or length > best[0]):
                best = (length, vs)
        return best[1] if best else None

    def delegate(self, name: str, namespace: str) -> ConfigObject | None:
        """A delegate VirtualService (one without hosts) by name."""
        found = self._look.delegates.get((namespace, name))
        return found[0] if found else None

    def resolve(self, host: str, namespace: str) -> str:
        """A host as written in an object of `namespace`, as an FQDN."""
        return resolve_host(host, namespace, self.domain)

    # -- DestinationRules -----------------------------------------------------------------

    def destination_rule(self, host: str, proxy_namespace: str = "") -> MergedRule | None:
        """The merged DestinationRule for `host`: rules in the proxy's namespace come first,
        then the rest by namespace/name; an exact host beats a wildcard."""
        look = self._look
        answers = look.merged.get(host)
        if answers is None:
            answers = look.merged[host] = {}
        elif proxy_namespace in answers:
            return answers[proxy_namespace]
        chosen = look.exact_dr.get(host)
        if not chosen:
            chosen = [obj for rule_host, obj in look.wild_dr if host_matches(rule_host, host)]
        merged = None
        if len(chosen) > 1:  # most hosts have one rule: nothing to order
            chosen = sorted(
                chosen, key=lambda o: (o.namespace != proxy_namespace, o.namespace, o.name)
            )
        if chosen:
            merged = _merge(host, chosen)
        answers[proxy_namespace] = merged
        return merged

    # -- security -------------------------------------------------------------------------

    def peer_authentications(self) -> tuple[ConfigObject, ...]:
        """The PeerAuthentication objects (by namespace/name), without scanning `others`."""
        return self.of_kind("PeerAuthentication")

    def of_kind(self, kind: str) -> tuple[ConfigObject, ...]:
        """The objects of one kind kept in `others` (by namespace/name), scanned for once and
        kept until an object of that kind changes."""
        kinds = self._look.kinds
        found = kinds.get(kind)
        if found is None:
            found = kinds[kind] = tuple(o for o in self.others if o.kind == kind)
        return found

    # -- Gateways -------------------------------------------------------------------------

    def gateways_for(self, labels: Mapping[str, str]) -> list[ConfigObject]:
        """Gateways whose selector picks a proxy with these labels (in any namespace)."""
        found = []
        for obj in self.gateways:
            spec = obj.spec
            assert isinstance(spec, Gateway)
            if all(labels.get(k) == v for k, v in spec.selector.items()):
                found.append(obj)
        return found


def _by_source_labels(vs: ConfigObject) -> bool:
    spec = vs.spec
    assert isinstance(spec, VirtualService)
    # Loops, not a generator: asked of every VirtualService. The repeated fields are sliced
    # into lists first: iterating a upb container is slower than slicing it.
    for route in spec.http[:]:
        for match in route.match[:]:
            if match.source_labels:
                return True
    return False


class _Lookups:
    """The dictionaries behind `ConfigIndex`'s lookups, built once from its lists and then
    kept current object by object. Where several objects claim a key, the list holds them in
    index order and the first one answers."""

    def __init__(self, index: ConfigIndex) -> None:
        self.domain = index.domain
        self.hosts: dict[int, tuple[str, ...]] = {}
        self.gateway_names: dict[int, tuple[str, ...]] = {}
        self.bound: dict[str, list[ConfigObject]] = {}
        self.exact_vs: dict[tuple[str, str], list[ConfigObject]] = {}
        self.wild_vs: dict[str, list[tuple[ConfigObject, tuple[str, ...]]]] = {}
        self.delegates: dict[tuple[str, str], list[ConfigObject]] = {}
        self.exact_dr: dict[str, list[ConfigObject]] = {}
        self.wild_dr: list[tuple[str, ConfigObject]] = []
        self.merged: dict[str, dict[str, MergedRule | None]] = {}  # host, proxy namespace
        self.kinds: dict[str, tuple[ConfigObject, ...]] = {}  # of `others`, by kind
        self.by_source: set[int] = set()  # ids of the VirtualServices matching source labels
        for vs in index.virtual_services:  # in index order: appending keeps lists sorted
            self._vs(vs, list.append)
            if _by_source_labels(vs):
                self.by_source.add(id(vs))
        for obj in index.destination_rules:
            self._dr(obj, list.append)

    def add(self, obj: ConfigObject) -> None:
        self.kinds.pop(obj.kind, None)
        if obj.kind == "VirtualService":
            self._vs(obj, _insert_item)
            if _by_source_labels(obj):
                self.by_source.add(id(obj))
        elif obj.kind == "DestinationRule":
            self._dr(obj, _insert_item)

    def remove(self, obj: ConfigObject) -> None:
        self.kinds.pop(obj.kind, None)
        if obj.kind == "VirtualService":
            self._vs(obj, _remove_item)
            self.by_source.discard(id(obj))
            self.hosts.pop(id(obj), None)
            self.gateway_names.pop(id(obj), None)
        elif obj.kind == "DestinationRule":
            self._dr(obj, _remove_item)

    def _vs(self, vs: ConfigObject, change: Callable[[list[Any], Any], None]) -> None:
        hosts = self.vs_hosts(vs)
        if not hosts:
            change(self.delegates.setdefault((vs.namespace, vs.name), []), vs)
            return
        # Once per VirtualService of a mesh, most with one host and one gateway: nothing to
        # deduplicate then.
        wild = tuple([h for h in hosts if h.startswith("*")])
        unique = hosts if len(hosts) == 1 else tuple(dict.fromkeys(hosts))
        gateways = self.vs_gateways(vs)
        for gateway in gateways if len(gateways) == 1 else dict.fromkeys(gateways):
            change(self.bound.setdefault(gateway, []), vs)
            for host in unique:
                change(self.exact_vs.setdefault((gateway, host), []), vs)
            if wild:
                change(self.wild_vs.setdefault(gateway, []), (vs, wild))

    def _dr(self, obj: ConfigObject, change: Callable[[list[Any], Any], None]) -> None:
        spec = obj.spec
        assert isinstance(spec, DestinationRule)
        rule_host = resolve_host(spec.host, obj.namespace, self.domain)
        change(self.exact_dr.setdefault(rule_host, []), obj)
        if rule_host.startswith("*"):
            change(self.wild_dr, (rule_host, obj))
            self.merged.clear()  # a wildcard may answer for any host
        else:
            self.merged.pop(rule_host, None)

    def vs_hosts(self, vs: ConfigObject) -> tuple[str, ...]:
        hosts = self.hosts.get(id(vs))
        if hosts is None:
            spec = vs.spec
            assert isinstance(spec, VirtualService)
            hosts = tuple([resolve_host(h, vs.namespace, self.domain) for h in spec.hosts[:]])
            self.hosts[id(vs)] = hosts
        return hosts

    def vs_gateways(self, vs: ConfigObject) -> tuple[str, ...]:
        names = self.gateway_names.get(id(vs))
        if names is None:
            spec = vs.spec
            assert isinstance(spec, VirtualService)
            gateways = spec.gateways
            # Most VirtualServices name none (`mesh`): tested before it is copied.
            names = (
                tuple([n if n == MESH or "/" in n else f"{vs.namespace}/{n}" for n in gateways])
                if gateways
                else (MESH,)
            )
            self.gateway_names[id(vs)] = names
        return names


def _object_of(item: Any) -> ConfigObject:
    """The object in a lookup list's item: an object, (vs, wildcards) or (host, rule)."""
    if not isinstance(item, tuple):
        return item  # type: ignore[no-any-return]
    found: ConfigObject = item[1] if isinstance(item[1], ConfigObject) else item[0]
    return found


def _insert_item(items: list[Any], item: Any) -> None:
    bisect.insort(items, item, key=lambda i: _order(_object_of(i)))


def _remove_item(items: list[Any], item: Any) -> None:
    _remove(items, _object_of(item), _object_of)


def _merge(host: str, rules: Sequence[ConfigObject]) -> MergedRule:
    # Once per host of the mesh: each subset's name and labels are read once (reading a
    # protobuf field costs more than the rest of the merge), and the rule is made without the
    # frozen dataclass's per-field `__setattr__`, with every field and the cached properties
    # every translation of the host reads (a test compares it with the constructor's).
    subsets: dict[str, Subset] = {}
    labels: list[tuple[str, dict[str, str]]] = []
    policy: TrafficPolicy | None = None
    subset_policy = False
    for obj in rules:
        spec = obj.spec
        assert isinstance(spec, DestinationRule)
        for subset in spec.subsets[:]:  # sliced: faster than iterating the upb container
            name = subset.name
            if name not in subsets:
                subsets[name] = subset
                found = subset.labels
                labels.append((name, {k: found[k] for k in found}))  # `as_dict`, in place
                subset_policy = subset_policy or subset.HasField("traffic_policy")
        if policy is None and spec.HasField("traffic_policy"):
            policy = TrafficPolicy()
            policy.CopyFrom(spec.traffic_policy)
    rule = construct(
        MergedRule,
        host=host,
        namespace=rules[0].namespace,
        traffic_policy=TrafficPolicy() if policy is None else policy,
        subsets=tuple(subsets.values()),
        sources=tuple(rules),
        has_policy=policy is not None and bool(policy.ListFields()),
        subset_labels=tuple(labels),
        _by_name=subsets,
    )
    if policy is None and not subset_policy:  # most rules: no policy that could hash
        rule.__dict__["may_hash"] = False
    return rule
