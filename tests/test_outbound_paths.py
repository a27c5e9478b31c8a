"""The outbound translator's fast paths against the plain ones, over many random meshes.

`outbound` takes shortcuts that must not change a byte: clusters joined from templates (found by
their policy's bytes; TLS sockets joined around their SNI), subsets' endpoints filtered by label
sets rather than asked of the registry one subset at a time, SPIFFE identities made only for the
clusters that use them. Each test builds random services, workloads and DestinationRules
(policies, subsets, port-level settings, locality failover and `distribute`), and compares with
the plain way.
"""

from __future__ import annotations

import dataclasses
import json
import random
from typing import Any

import pytest

from pilotfish.bounded import Bounded
from pilotfish.registry import Registry, Service, ServicePort, Workload
from pilotfish.sources import load_documents
from pilotfish.translators import clusters
from pilotfish.translators.clusters import TLS_MODE_LABEL, distribution, effective_policy
from pilotfish.translators.clusters import locality_failover as failover_of
from pilotfish.translators.endpoints import load_assignment_bytes
from pilotfish.translators.index import ConfigIndex, MergedRule
from pilotfish.translators.naming import parse_cluster_name
from pilotfish.translators.outbound import outbound
from pilotfish.translators.proxy import Proxy

PORTS = [ServicePort("http", 9080, "HTTP"), ServicePort("grpc", 9090, "GRPC"),
         ServicePort("tcp", 3306, "TCP")]  # fmt: skip
LOCALITIES = ["", "r1/z1/s1", "r1/z2", "r2/z1"]
POLICIES: list[dict[str, Any]] = [
    {},
    {"loadBalancer": {"simple": "ROUND_ROBIN"}},
    {"outlierDetection": {"consecutive5xxErrors": 5}},
    {"tls": {"mode": "ISTIO_MUTUAL"}},
    {"tls": {"mode": "ISTIO_MUTUAL", "sni": "m.example", "subjectAltNames": ["spiffe://x/y"]}},
    {"tls": {"mode": "ISTIO_MUTUAL"}, "proxyProtocol": {"version": "V2"}},
    {"tls": {"mode": "SIMPLE", "sni": "x.example"}},
    {"connectionPool": {"http": {"http2MaxRequests": 10}}},
    {"loadBalancer": {"localityLbSetting": {"distribute": [
        {"from": "r1/*", "to": {"r1/*": 70, "r2/*": 30}}]}}},
    {"portLevelSettings": [{"port": {"number": 9080}, "loadBalancer": {"simple": "RANDOM"}}]},
]  # fmt: skip
SELECTORS: list[dict[str, str]] = [
    {}, {"version": "v1"}, {"version": "v2"}, {"version": "v1", "zone": "a"}, {"zone": "b"},
    {"missing": "x"},
]  # fmt: skip


def _mesh(rnd: random.Random) -> tuple[ConfigIndex, Registry]:
    registry = Registry()
    documents = []
    for i in range(rnd.randint(1, 8)):
        host = f"s{i}.default.svc.cluster.local"
        service = Service(
            host,
            ports=tuple(rnd.sample(PORTS, rnd.randint(1, 3))),
            resolution=rnd.choice(["STATIC", "STATIC", "NONE", "DNS"]),
            mesh_external=rnd.random() < 0.2,
            selector={"app": f"s{i}"},
        )
        registry.add_service(service)
        for n in range(rnd.randint(0, 4)):
            labels = {"app": f"s{i}", "version": rnd.choice(["v1", "v2", "v3"])}
            if rnd.random() < 0.5:
                labels["zone"] = rnd.choice(["a", "b"])
            if rnd.random() < 0.5:
                labels[TLS_MODE_LABEL] = "istio"
            registry.add_workload(
                Workload(f"10.{i}.0.{n + 1}", f"s{i}-{n}", labels=labels,
                         locality=rnd.choice(LOCALITIES), weight=rnd.choice([1, 2, 5]),
                         service_account=rnd.choice(["default", f"sa{i}"]))
            )  # fmt: skip
        for r in range(rnd.choice([0, 1, 1, 2])):
            spec: dict[str, Any] = {"host": host, "trafficPolicy": rnd.choice(POLICIES)}
            # Names unique within a rule; two rules for a host may both name one (merged).
            spec["subsets"] = [
                {"name": name, "labels": rnd.choice(SELECTORS),
                 "trafficPolicy": rnd.choice(POLICIES)}
                for name in rnd.sample(["v1", "v2", "a", "b"], rnd.randint(0, 3))
            ]  # fmt: skip
            documents.append(
                {"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
                 "metadata": {"name": f"r{i}-{r}", "namespace": "default"}, "spec": spec}
            )  # fmt: skip
    loaded = load_documents("\n---\n".join(json.dumps(d) for d in documents))
    assert not loaded.errors, loaded.errors
    return ConfigIndex.build(loaded.objects), registry


def _cases() -> list[tuple[int, Proxy, bool]]:
    rnd = random.Random(7)
    return [
        (seed, Proxy(id="x", namespace="default", locality=rnd.choice(LOCALITIES)), seed % 3 == 0)
        for seed in range(40)
    ]


class _NeverStores(Bounded[object, object]):
    def put(self, key: object, value: object) -> object:
        return value


@pytest.mark.parametrize(("seed", "proxy", "auto_mtls"), _cases())
def test_clusters_from_templates_are_clusters_made_afresh(
    seed: int, proxy: Proxy, auto_mtls: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    index, registry = _mesh(random.Random(seed))

    def cds() -> list[tuple[str, bytes]]:
        found, _ = outbound(proxy, index, registry, auto_mtls=auto_mtls)
        return [(c.name, c.data) for c in found]

    monkeypatch.setattr(clusters, "_TEMPLATES", _NeverStores(4096))
    fresh = cds()
    monkeypatch.setattr(clusters, "_TEMPLATES", Bounded(4096))
    assert cds() == fresh  # templates made while translating
    assert cds() == fresh  # templates made by the earlier translation


def test_mutual_tls_clusters_come_from_templates(monkeypatch: pytest.MonkeyPatch) -> None:
    """With auto mTLS towards sidecars, a port's clusters after the first are joined from a
    template and a socket around their SNI, to the bytes made afresh."""
    registry = Registry()
    registry.add_service(Service("a.default.svc.cluster.local", ports=(PORTS[0],),
                                 selector={"app": "a"}))  # fmt: skip
    for n, version in enumerate(["v1", "v2", "v3"]):
        labels = {"app": "a", "version": version, TLS_MODE_LABEL: "istio"}
        registry.add_workload(Workload(f"10.0.0.{n}", f"a-{n}", labels=labels))
    subsets = [{"name": v, "labels": {"version": v}} for v in ("v1", "v2", "v3")]
    rule = {"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
            "metadata": {"name": "a", "namespace": "default"},
            "spec": {"host": "a.default.svc.cluster.local", "subsets": subsets}}  # fmt: skip
    index = ConfigIndex.build(load_documents(json.dumps(rule)).objects)
    proxy = Proxy(id="x", namespace="default")
    monkeypatch.setattr(clusters, "_TEMPLATES", _NeverStores(4096))
    fresh = [c.data for c in outbound(proxy, index, registry, auto_mtls=True)[0]]
    templates: Bounded[object, object] = Bounded(4096)
    sockets: Bounded[object, object] = Bounded(4096)
    monkeypatch.setattr(clusters, "_TEMPLATES", templates)
    monkeypatch.setattr(clusters, "_SOCKETS", sockets)
    assert [c.data for c in outbound(proxy, index, registry, auto_mtls=True)[0]] == fresh
    assert len(fresh) == 4
    assert [t.tls for t in templates.values()] == [True]  # type: ignore[attr-defined]
    assert len(sockets) == 1


@pytest.mark.parametrize(("seed", "proxy", "auto_mtls"), _cases())
def test_subset_assignments_are_the_registry_filter(
    seed: int, proxy: Proxy, auto_mtls: bool
) -> None:
    """Each EDS cluster's load assignment holds the endpoints the registry gives for its
    subset's labels (`Endpoint.matches`), one assignment per EDS cluster, in cluster order."""
    index, registry = _mesh(random.Random(seed))
    found, assignments = outbound(proxy, index, registry, auto_mtls=auto_mtls)
    eds = [c.name for c in found if c.refs]
    assert [a.name for a in assignments] == eds
    for assignment in assignments:
        _, port, subset, host = parse_cluster_name(assignment.name)
        rule = index.destination_rule(host, proxy.namespace)
        labels = dict(rule.subset(subset).labels) if rule and subset else None  # type: ignore[union-attr]
        policy = effective_policy(rule, port, subset)
        want = load_assignment_bytes(
            assignment.name,
            registry.endpoints(host, port, labels),
            proxy_locality=proxy.locality,
            failover=bool(proxy.locality) and failover_of(policy),
            distribute=distribution(policy, proxy.locality) if proxy.locality else None,
        )
        assert assignment.data == want, assignment.name


@pytest.mark.parametrize("seed", range(20))
def test_merged_rules_hold_what_their_properties_make(seed: int) -> None:
    """`_merge` makes its rules without the frozen dataclass's constructor, setting every
    field, and sets the cached properties at once: to what they would make."""
    index, registry = _mesh(random.Random(seed))
    for service in registry.services():
        rule = index.destination_rule(service.hostname, "default")
        if rule is None:
            continue
        plain = MergedRule(rule.host, rule.namespace, rule.traffic_policy, rule.subsets,
                           rule.sources)  # fmt: skip
        assert rule == plain
        assert list(vars(rule))[:5] == [f.name for f in dataclasses.fields(MergedRule)]
        assert rule.has_policy == plain.has_policy
        assert rule.subset_labels == plain.subset_labels
        assert rule._by_name == plain._by_name
        assert rule.may_hash == plain.may_hash
