"""`ConfigIndex`: the order it keeps objects in, and its lookups (DestinationRules merged by
precedence, VirtualServices by host and gateway), built at once or changed object by object."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from pilotfish.protos.istio.networking.v1alpha3.destination_rule_pb2 import DestinationRule
from pilotfish.protos.istio.networking.v1alpha3.gateway_pb2 import Gateway
from pilotfish.protos.istio.networking.v1alpha3.virtual_service_pb2 import VirtualService
from pilotfish.protos.istio.security.v1beta1.peer_authentication_pb2 import PeerAuthentication
from pilotfish.sources import ConfigObject, load_documents
from pilotfish.translators.index import ConfigIndex, MergedRule

_SPECS = {
    "VirtualService": VirtualService,
    "DestinationRule": DestinationRule,
    "Gateway": Gateway,
    "PeerAuthentication": PeerAuthentication,
    "Sidecar": VirtualService,  # any message: only the kind matters to `others`
}
_OBJECTS = st.lists(
    st.builds(
        lambda kind, namespace, name, file, index: ConfigObject(
            "v1", kind, namespace, name, _SPECS[kind](), file=file, index=index
        ),
        st.sampled_from(sorted(_SPECS)),
        st.sampled_from(["a", "b"]),
        st.sampled_from(["x", "y", "z"]),
        st.sampled_from(["1.yaml", "2.yaml"]),
        st.integers(0, 2),
    ),
    max_size=12,
)


def _rules(text: str) -> ConfigIndex:
    loaded = load_documents(text)
    assert loaded.errors == []
    return ConfigIndex.build(loaded.objects)


@settings(max_examples=200, deadline=None)
@given(_OBJECTS, st.randoms(use_true_random=False))
def test_objects_are_kept_by_kind_in_namespace_name_order(
    objects: list[ConfigObject], rng: random.Random
) -> None:
    """`build` groups by kind and sorts each group: the same lists as sorting every object by
    (namespace, name, kind, file, index) and then grouping, whatever the order read in (equal
    keys keep the order they were read in, as a stable sort does)."""
    ordered = sorted(objects, key=lambda o: (o.namespace, o.name, o.kind, o.file, o.index))
    index = ConfigIndex.build(objects)

    def same(made: list[ConfigObject], want: list[ConfigObject]) -> None:
        assert [id(o) for o in made] == [id(o) for o in want]

    same(index.virtual_services, [o for o in ordered if o.kind == "VirtualService"])
    same(index.destination_rules, [o for o in ordered if o.kind == "DestinationRule"])
    same(index.gateways, [o for o in ordered if o.kind == "Gateway"])
    others = [o for o in ordered if o.kind not in ("VirtualService", "DestinationRule", "Gateway")]
    same(index.others, others)
    assert index.of_kind("PeerAuthentication") == tuple(
        o for o in others if o.kind == "PeerAuthentication"
    )
    shuffled = list(objects)
    rng.shuffle(shuffled)
    again = ConfigIndex.build(shuffled)
    assert [o.key for o in again.others] == [o.key for o in index.others]
    assert [o.key for o in again.virtual_services] == [o.key for o in index.virtual_services]


RULES = """
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: z-late, namespace: alpha}
spec:
  host: reviews.shop.svc.cluster.local
  trafficPolicy: {connectionPool: {tcp: {maxConnections: 7}}}
  subsets: [{name: v1, labels: {version: v1-alpha}}, {name: v9, labels: {version: v9}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: a-early, namespace: alpha}
spec:
  host: reviews.shop.svc.cluster.local
  subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: own, namespace: shop}
spec:
  host: reviews
  trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}
  subsets: [{name: v2, labels: {version: v2-shop}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: wild, namespace: alpha}
spec:
  host: "*.example.com"
  subsets: [{name: w, labels: {version: w}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: wilder, namespace: beta}
spec:
  host: "*.com"
  subsets: [{name: w, labels: {version: wilder}}, {name: x, labels: {version: x}}]
"""

REVIEWS = "reviews.shop.svc.cluster.local"


def test_rules_for_a_host_merge_the_proxys_namespace_first_then_by_namespace_and_name() -> None:
    index = _rules(RULES)
    # From shop: its own rule first (its policy wins, its v2), then alpha's by name.
    rule = index.destination_rule(REVIEWS, "shop")
    assert rule is not None and rule.namespace == "shop"
    assert [o.name for o in rule.sources] == ["own", "a-early", "z-late"]
    assert rule.subset_labels == (
        ("v2", {"version": "v2-shop"}),
        ("v1", {"version": "v1"}),
        ("v9", {"version": "v9"}),
    )
    assert rule.traffic_policy.load_balancer.simple and rule.has_policy
    sub = rule.subset("v1")
    assert sub is not None and dict(sub.labels) == {"version": "v1"}
    assert rule.subset("v3") is None
    # From elsewhere: alpha before shop; the first rule with a policy (z-late) gives it.
    other = index.destination_rule(REVIEWS, "other")
    assert other is not None and other.namespace == "alpha"
    assert [o.name for o in other.sources] == ["a-early", "z-late", "own"]
    assert [name for name, _ in other.subset_labels] == ["v1", "v2", "v9"]
    assert other.traffic_policy.connection_pool.tcp.max_connections == 7
    # Answers are kept per proxy namespace: asking again gives the same object.
    assert index.destination_rule(REVIEWS, "shop") is rule
    assert index.destination_rule(REVIEWS, "other") is other


def test_an_exact_host_beats_wildcards_and_wildcards_merge_when_no_exact_host() -> None:
    index = _rules(RULES)
    exact = index.destination_rule(REVIEWS)
    assert exact is not None and [o.name for o in exact.sources] == ["a-early", "z-late", "own"]
    wild = index.destination_rule("api.example.com")
    assert wild is not None and [o.name for o in wild.sources] == ["wild", "wilder"]
    assert wild.subset_labels == (("w", {"version": "w"}), ("x", {"version": "x"}))
    assert not wild.has_policy and not wild.traffic_policy.ListFields()
    beta = index.destination_rule("api.example.com", "beta")  # the proxy's namespace first
    assert beta is not None and [o.name for o in beta.sources] == ["wilder", "wild"]
    assert beta.subset_labels == (("w", {"version": "wilder"}), ("x", {"version": "x"}))
    only = index.destination_rule("api.other.com")
    assert only is not None and [o.name for o in only.sources] == ["wilder"]
    assert index.destination_rule("api.example.org") is None


def test_rule_answers_follow_changes() -> None:
    index = _rules(RULES)
    before = index.destination_rule(REVIEWS, "shop")
    assert index.destination_rule("api.example.com") is not None
    own = next(o for o in index.destination_rules if o.name == "own")
    wild = [o for o in index.destination_rules if o.name.startswith("wild")]
    index.apply([own, *wild], [])
    after = index.destination_rule(REVIEWS, "shop")
    assert after is not before and after is not None
    assert [o.name for o in after.sources] == ["a-early", "z-late"]
    assert index.destination_rule("api.example.com") is None
    index.apply([], [own, *wild])
    again = index.destination_rule(REVIEWS, "shop")
    assert again is not None and [o.name for o in again.sources] == ["own", "a-early", "z-late"]
    assert index.destination_rule("api.example.com") is not None


ROUTES = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: b-exact, namespace: shop}
spec:
  hosts: [reviews, "*.example.com"]
  http: [{route: [{destination: {host: reviews}}]}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: a-exact, namespace: shop}
spec:
  hosts: [reviews]
  gateways: [edge, mesh, other/gw]
  http: [{match: [{sourceLabels: {app: web}}], route: [{destination: {host: reviews}}]}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: longer, namespace: shop}
spec:
  hosts: ["*.api.example.com"]
  http: [{route: [{destination: {host: reviews}}]}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: part, namespace: shop}
spec:
  http: [{route: [{destination: {host: reviews}}]}]
"""


def test_virtual_services_by_host_gateway_and_name() -> None:
    index = _rules(ROUTES)
    exact = index.for_host("reviews.shop.svc.cluster.local")
    assert exact is not None and exact.name == "a-exact"  # both exact: first by name
    gateway = index.for_host("reviews.shop.svc.cluster.local", "shop/edge")
    assert gateway is not None and gateway.name == "a-exact"
    longest = index.for_host("v1.api.example.com")
    assert longest is not None and longest.name == "longer"  # the longest wildcard wins
    short = index.for_host("www.example.com")
    assert short is not None and short.name == "b-exact"
    assert index.for_host("www.example.org") is None
    assert index.for_host("reviews.shop.svc.cluster.local", "shop/none") is None
    assert [o.name for o in index.bound_to("mesh")] == ["a-exact", "b-exact", "longer"]
    assert [o.name for o in index.bound_to("other/gw")] == ["a-exact"]
    a_exact = index.for_host("reviews.shop.svc.cluster.local")
    assert a_exact is not None
    assert index.gateways_of(a_exact) == ["shop/edge", "mesh", "other/gw"]
    b_exact = index.for_host("www.example.com")
    assert b_exact is not None and index.gateways_of(b_exact) == ["mesh"]
    assert index.hosts_of(b_exact) == ["reviews.shop.svc.cluster.local", "*.example.com"]
    part = index.delegate("part", "shop")
    assert part is not None and index.hosts_of(part) == []
    assert index.delegate("part", "other") is None
    assert index.routes_read_labels()
    index.apply([a_exact], [])
    assert not index.routes_read_labels()
    after = index.for_host("reviews.shop.svc.cluster.local")
    assert after is not None and after.name == "b-exact"


HASHES = """
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: plain, namespace: shop}
spec:
  host: plain.example.com
  subsets: [{name: v1, labels: {version: v1}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: subset, namespace: shop}
spec:
  host: subset.example.com
  subsets:
  - {name: v1, labels: {version: v1}}
  - name: v2
    labels: {version: v2}
    trafficPolicy: {loadBalancer: {consistentHash: {httpHeaderName: x-user}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: subset-no-hash, namespace: shop}
spec:
  host: other.example.com
  subsets: [{name: v1, labels: {version: v1}, trafficPolicy: {loadBalancer: {simple: RANDOM}}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: port-level, namespace: shop}
spec:
  host: port.example.com
  trafficPolicy:
    portLevelSettings:
    - port: {number: 80}
      loadBalancer: {consistentHash: {useSourceIp: true}}
"""


def test_whether_a_merged_rule_may_hash_is_what_its_property_finds() -> None:
    """`_merge` answers `may_hash` at once for rules with no policy anywhere; the others
    are left to the property, which reads every policy."""
    index = _rules(HASHES)
    found = {}
    for host in ("plain", "subset", "other", "port"):
        rule = index.destination_rule(f"{host}.example.com")
        assert rule is not None
        plain = MergedRule(rule.host, rule.namespace, rule.traffic_policy, rule.subsets,
                           rule.sources)  # fmt: skip
        assert rule.may_hash == plain.may_hash
        found[host] = rule.may_hash
    assert found == {"plain": False, "subset": True, "other": False, "port": True}
