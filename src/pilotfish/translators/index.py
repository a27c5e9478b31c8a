"""The config a translation reads, indexed the way Istio looks things up.

Host names are resolved to FQDNs once (short names take the object's namespace), VirtualServices
are grouped by the gateways they bind to (`mesh` when none are named), DestinationRules for one
host are merged, and delegate VirtualServices are found by namespace/name.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

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
        return next((s for s in self.subsets if s.name == name), None)


@dataclass
class ConfigIndex:
    """Lookups over one consistent set of config objects."""

    domain: str = "cluster.local"
    virtual_services: list[ConfigObject] = field(default_factory=list)
    destination_rules: list[ConfigObject] = field(default_factory=list)
    gateways: list[ConfigObject] = field(default_factory=list)
    others: list[ConfigObject] = field(default_factory=list)

    @classmethod
    def build(cls, objects: Iterable[ConfigObject], domain: str = "cluster.local") -> ConfigIndex:
        """Index `objects`, sorted by (namespace, name) so the output does not depend on the
        order files were read in."""
        index = cls(domain)
        for obj in sorted(objects, key=lambda o: (o.namespace, o.name, o.kind, o.file, o.index)):
            if obj.kind == "VirtualService":
                index.virtual_services.append(obj)
            elif obj.kind == "DestinationRule":
                index.destination_rules.append(obj)
            elif obj.kind == "Gateway":
                index.gateways.append(obj)
            else:
                index.others.append(obj)
        return index

    # -- VirtualServices ------------------------------------------------------------------

    def gateways_of(self, vs: ConfigObject) -> list[str]:
        """The gateways a VirtualService binds to, as `mesh` or `namespace/name`."""
        spec = vs.spec
        assert isinstance(spec, VirtualService)
        names = list(spec.gateways) or [MESH]
        return [n if n == MESH or "/" in n else f"{vs.namespace}/{n}" for n in names]

    def hosts_of(self, vs: ConfigObject) -> list[str]:
        """A VirtualService's hosts as FQDNs."""
        spec = vs.spec
        assert isinstance(spec, VirtualService)
        return [resolve_host(h, vs.namespace, self.domain) for h in spec.hosts]

    def bound_to(self, gateway: str) -> list[ConfigObject]:
        """Root VirtualServices (those with hosts) bound to `gateway` (`mesh` or `ns/name`)."""
        return [
            vs
            for vs in self.virtual_services
            if self.hosts_of(vs) and gateway in self.gateways_of(vs)
        ]

    def for_host(self, host: str, gateway: str = MESH) -> ConfigObject | None:
        """The VirtualService that routes `host` through `gateway`: an exact host wins over a
        wildcard, then the oldest (here: first by namespace/name) wins, as in Istio."""
        candidates = self.bound_to(gateway)
        exact = [vs for vs in candidates if host in self.hosts_of(vs)]
        if exact:
            return exact[0]
        wild = [
            (max(len(p) for p in self.hosts_of(vs) if host_matches(p, host)), vs)
            for vs in candidates
            if any(host_matches(p, host) for p in self.hosts_of(vs))
        ]
        wild.sort(key=lambda pair: -pair[0])
        return wild[0][1] if wild else None

    def delegate(self, name: str, namespace: str) -> ConfigObject | None:
        """A delegate VirtualService (one without hosts) by name."""
        return next(
            (
                vs
                for vs in self.virtual_services
                if vs.name == name and vs.namespace == namespace and not self.hosts_of(vs)
            ),
            None,
        )

    def resolve(self, host: str, namespace: str) -> str:
        """A host as written in an object of `namespace`, as an FQDN."""
        return resolve_host(host, namespace, self.domain)

    # -- DestinationRules -----------------------------------------------------------------

    def destination_rule(self, host: str, proxy_namespace: str = "") -> MergedRule | None:
        """The merged DestinationRule for `host`: rules in the proxy's namespace come first,
        then the rest by namespace/name; an exact host beats a wildcard."""
        matching: list[tuple[int, ConfigObject]] = []
        for obj in self.destination_rules:
            spec = obj.spec
            assert isinstance(spec, DestinationRule)
            rule_host = self.resolve(spec.host, obj.namespace)
            if rule_host == host:
                matching.append((0, obj))
            elif host_matches(rule_host, host):
                matching.append((1, obj))
        if not matching:
            return None
        best = min(rank for rank, _ in matching)
        chosen = [o for rank, o in matching if rank == best]
        chosen.sort(key=lambda o: (o.namespace != proxy_namespace, o.namespace, o.name))
        return _merge(host, chosen)

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


def _merge(host: str, rules: Sequence[ConfigObject]) -> MergedRule:
    subsets: dict[str, Subset] = {}
    policy = TrafficPolicy()
    have_policy = False
    for obj in rules:
        spec = obj.spec
        assert isinstance(spec, DestinationRule)
        for subset in spec.subsets:
            subsets.setdefault(subset.name, subset)
        if not have_policy and spec.HasField("traffic_policy"):
            policy.CopyFrom(spec.traffic_policy)
            have_policy = True
    return MergedRule(
        host=host,
        namespace=rules[0].namespace,
        traffic_policy=policy,
        subsets=tuple(subsets.values()),
        sources=tuple(rules),
    )
