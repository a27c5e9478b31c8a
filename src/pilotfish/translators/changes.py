"""What a config change can have changed, so memoized units that it cannot touch are reused
without replaying their lookups.

`TranslationMemo` stays correct on its own (it replays every unit's lookups); replaying costs a
lookup per read per service, which for a mesh of thousands of services is most of a round.
`Changes` lists, from the objects that were added, removed or replaced since the last round,
which answers may differ: destination rules and VirtualServices by host, delegates by name,
services by host, PeerAuthentications, endpoints (`touched`, in the terms the memo indexes its
units' reads by). A unit none of whose reads is listed keeps its result; one that is listed is
replayed (so an over-broad list only costs time). Wildcard hosts, and workloads that selectors
pick, are not traced: a change to them marks every read of that kind.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from pilotfish.protos.istio.networking.v1alpha3.destination_rule_pb2 import DestinationRule
from pilotfish.protos.istio.networking.v1alpha3.service_entry_pb2 import ServiceEntry
from pilotfish.protos.istio.networking.v1alpha3.virtual_service_pb2 import VirtualService
from pilotfish.sources import ConfigObject, resolve_host

__all__ = ["REGISTRY_KINDS", "Changes"]

REGISTRY_KINDS = frozenset({"ServiceEntry", "WorkloadEntry", "Service", "EndpointSlice", "Pod"})
"""The kinds a `Registry` is built from (a change to none of them keeps the registry)."""

# Kinds no memoized unit reads (they shape listeners, gateways, RBAC... outside the units).
_UNREAD = frozenset({"Gateway", "Sidecar", "AuthorizationPolicy"})


@dataclass
class Changes:
    """The lookups whose answers may differ after replacing some objects (see module doc)."""

    rule_hosts: set[str] = field(default_factory=set)
    routed_hosts: set[str] = field(default_factory=set)
    delegates: set[tuple[str, str]] = field(default_factory=set)
    service_hosts: set[str] = field(default_factory=set)
    all_rules: bool = False
    all_routes: bool = False
    all_endpoints: bool = False
    peer_authentication: bool = False
    everything: bool = False
    registry: bool = False
    """Whether any object a `Registry` is built from changed."""

    @classmethod
    def between(
        cls, before: Iterable[ConfigObject], after: Iterable[ConfigObject], domain: str
    ) -> Changes:
        """The changes from one set of served objects to the next (objects compared by
        identity: `ConfigStore` keeps an unchanged file's objects)."""
        old = {id(o): o for o in before}
        new = {id(o): o for o in after}
        return cls.of(
            [old[k] for k in old.keys() - new.keys()],
            [new[k] for k in new.keys() - old.keys()],
            domain,
        )

    @classmethod
    def of(
        cls, removed: Iterable[ConfigObject], added: Iterable[ConfigObject], domain: str
    ) -> Changes:
        """The changes made by removing and adding these objects (`ConfigStore.changes_since`)."""
        changes = cls()
        for obj in (*removed, *added):
            changes.add(obj, domain)
        return changes

    def add(self, obj: ConfigObject, domain: str) -> None:
        """Note that `obj` appeared or disappeared."""
        spec: Any = obj.spec
        self.registry |= obj.kind in REGISTRY_KINDS
        if obj.kind in _UNREAD:
            return
        if obj.kind == "VirtualService" and isinstance(spec, VirtualService):
            self.delegates.add((obj.namespace, obj.name))
            hosts = [resolve_host(h, obj.namespace, domain) for h in spec.hosts]
            self.routed_hosts.update(hosts)
            self.all_routes |= any(h.startswith("*") for h in hosts)
        elif obj.kind == "DestinationRule" and isinstance(spec, DestinationRule):
            host = resolve_host(spec.host, obj.namespace, domain)
            self.rule_hosts.add(host)
            self.all_rules |= host.startswith("*")
        elif obj.kind == "ServiceEntry" and isinstance(spec, ServiceEntry):
            self.service_hosts.update(resolve_host(h, obj.namespace, domain) for h in spec.hosts)
        elif obj.kind == "Service":
            self.service_hosts.add(f"{obj.name}.{obj.namespace}.svc.{domain}")
        elif obj.kind in ("WorkloadEntry", "EndpointSlice", "Pod"):
            self.all_endpoints = True  # selectors pick workloads: not traced by host
        elif obj.kind == "PeerAuthentication":
            self.peer_authentication = True
        else:
            self.everything = True  # a kind this list does not know: replay everything

    def touched(self) -> tuple[set[tuple[str, Any]], set[str]] | None:
        """What `touches` may say yes to, for finding the readers: lookups by (kind, first
        argument), and kinds touched whatever the arguments; None when everything is."""
        if self.everything:
            return None
        keys: set[tuple[str, Any]] = set()
        kinds: set[str] = set()
        for kind, every, hosts in (
            ("destination_rule", self.all_rules, self.rule_hosts),
            ("for_host", self.all_routes, self.routed_hosts),
            ("endpoints", self.all_endpoints, self.service_hosts),
            ("service", False, self.service_hosts),
        ):
            if every:
                kinds.add(kind)
            else:
                keys.update((kind, host) for host in hosts)
        keys.update(("delegate", name) for _, name in self.delegates)
        if self.peer_authentication:
            kinds.add("peer_authentications")
        return keys, kinds
