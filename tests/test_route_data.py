"""Routes written as bytes (`http_route_data`, `default_route_data`: for sidecar virtual hosts)
are the bytes of the routes `http_routes` makes as messages, and of a default route built as
one.

Plain routes (destinations, timeout and retries only: most of a mesh's) are joined from pieces
with no `Route` made, and equal matches share one translation; the rest go through the message.
Random VirtualServices mix both kinds, with matches of every sort (catch-alls included, which
end the list), destinations with and without ports, subsets and weights (zero ones included),
consistent-hash DestinationRules, and proxies and ports that some matches do not apply to.
"""

from __future__ import annotations

from typing import Any

from envoy.config.route.v3.route_components_pb2 import Decorator, Route, RouteAction, RouteMatch
from google.protobuf import json_format
from google.protobuf.duration_pb2 import Duration
from hypothesis import example, given, settings
from hypothesis import strategies as st

from pilotfish.protos.istio.networking.v1alpha3.destination_rule_pb2 import DestinationRule
from pilotfish.protos.istio.networking.v1alpha3.virtual_service_pb2 import VirtualService
from pilotfish.registry import Registry, Service, ServicePort
from pilotfish.sources import ConfigObject
from pilotfish.translators.clusters import route_hash_policy
from pilotfish.translators.index import ConfigIndex
from pilotfish.translators.proxy import Proxy
from pilotfish.translators.routes import (
    _retry_policy,
    default_route_data,
    http_route_data,
    http_routes,
)
from pilotfish.translators.version import stamp

HOSTS = [
    "a",  # a short name: resolved in the VirtualService's namespace
    "a.default.svc.cluster.local",
    "b.default.svc.cluster.local",  # two ports: a destination without one keeps the route's
    "ext.example.com",  # consistent hash by header
    "missing.example.com",  # no service
]
API = "networking.istio.io/v1"


def _registry() -> Registry:
    registry = Registry()
    http = ServicePort("http", 9080)
    registry.add_service(Service("a.default.svc.cluster.local", ports=(http,)))
    registry.add_service(
        Service("b.default.svc.cluster.local", ports=(http, ServicePort("http-2", 9090)))
    )
    registry.add_service(Service("ext.example.com", ports=(ServicePort("http", 80),)))
    return registry


def _rules() -> list[ConfigObject]:
    ext = {
        "host": "ext.example.com",
        "trafficPolicy": {"loadBalancer": {"consistentHash": {"httpHeaderName": "x-user"}}},
        "subsets": [
            {"name": "v1", "labels": {"version": "v1"}},
            {
                "name": "v2",
                "labels": {"version": "v2"},
                "trafficPolicy": {"loadBalancer": {"consistentHash": {"useSourceIp": True}}},
            },
        ],
    }
    a = {"host": "a.default.svc.cluster.local", "subsets": [{"name": "v1", "labels": {}}]}
    return [
        ConfigObject(API, "DestinationRule", "default", name, json_format.ParseDict(spec, rule))
        for name, spec, rule in (("ext", ext, DestinationRule()), ("a", a, DestinationRule()))
    ]


strings = st.sampled_from(["", "/", "/api", "jason", ".*", "*", "v1"])
string_match = st.one_of(
    st.just({}),
    st.builds(lambda kind, value: {kind: value}, st.sampled_from(["exact", "prefix", "regex"]),
              strings),
)  # fmt: skip
header_maps = st.dictionaries(st.sampled_from(["end-user", "x-b", "Host"]), string_match,
                              max_size=2)  # fmt: skip
matches = st.fixed_dictionaries(
    {},
    optional={
        "uri": string_match,
        "headers": header_maps,
        "withoutHeaders": header_maps,
        "queryParams": st.dictionaries(st.sampled_from(["q", "p"]), string_match, max_size=2),
        "ignoreUriCase": st.booleans(),
        "name": st.sampled_from(["", "m1"]),
        "statPrefix": st.sampled_from(["", "stats"]),
        "port": st.sampled_from([9080, 9090]),
        "sourceLabels": st.just({"app": "client"}),
        "sourceNamespace": st.sampled_from(["default", "other"]),
        "method": string_match,
        "authority": string_match,
    },
)
destinations = st.fixed_dictionaries(
    {"destination": st.fixed_dictionaries(
        {"host": st.sampled_from(HOSTS)},
        optional={"subset": st.sampled_from(["v1", "v2"]),
                  "port": st.builds(lambda n: {"number": n}, st.sampled_from([80, 9090]))},
    )},
    optional={"weight": st.sampled_from([0, 20, 80, 100])},
)  # fmt: skip
with_headers = st.builds(lambda d: {**d, "headers": {"request": {"set": {"x-d": "1"}}}},
                         destinations)  # fmt: skip
durations = st.sampled_from(["0s", "1.5s", "10s"])
NOT_PLAIN = [
    {"headers": {"response": {"remove": ["x-r"]}}},
    {"rewrite": {"uri": "/v2", "authority": "new"}},
    {"mirror": {"host": "a"}},
    {"fault": {"abort": {"httpStatus": 503, "percentage": {"value": 1.5}}}},
    {"corsPolicy": {"allowOrigins": [{"exact": "x"}]}},
    {"redirect": {"uri": "/r"}},
    {"directResponse": {"status": 404}},
]
single_or_more = st.one_of(
    st.lists(destinations, min_size=1, max_size=1), st.lists(destinations, max_size=3)
)
plain_route = st.fixed_dictionaries(
    {"route": single_or_more},
    optional={
        "match": st.lists(matches, max_size=3),
        "name": st.sampled_from(["", "r1"]),
        "timeout": durations,
        "retries": st.fixed_dictionaries(
            {"attempts": st.sampled_from([0, 3])},
            optional={"perTryTimeout": durations, "retryOn": st.just("5xx,503,reset")},
        ),
    },
)
http_route = st.one_of(
    plain_route,
    st.builds(lambda r, extra: {**r, **extra}, plain_route, st.sampled_from(NOT_PLAIN)),
    st.builds(lambda r, d: {**r, "route": [*r["route"], d]}, plain_route, with_headers),
)
virtual_services = st.lists(http_route, min_size=1, max_size=4)
PROXIES = [
    Proxy(id="", namespace="default", labels={"app": "client"}),
    Proxy(id="", namespace="other", labels={}),
]
proxies = st.sampled_from(PROXIES)


HASHED = {"route": [{"destination": {"host": "ext.example.com", "subset": "v2"}}]}


@settings(max_examples=400, deadline=None)
@given(virtual_services, proxies, st.sampled_from([9080, 9090]))
@example([HASHED], PROXIES[0], 9080)  # a consistent hash: retries stay on the host
def test_route_bytes_are_the_serialized_routes(
    http: list[dict[str, Any]], proxy: Proxy, port: int
) -> None:
    spec = json_format.ParseDict({"hosts": ["a"], "http": http}, VirtualService())
    vs = ConfigObject(API, "VirtualService", "default", "vs", spec)
    index = ConfigIndex.build([vs, *_rules()])
    context: dict[str, Any] = {
        "port": port,
        "proxy": proxy,
        "index": index,
        "registry": _registry(),
        "hash_policy": route_hash_policy,
    }
    expected = [r.SerializeToString(deterministic=True) for r in http_routes(vs, **context)]
    assert http_route_data(vs, **context) == expected
    # Again, with the matches' translations now shared: the same bytes.
    assert http_route_data(vs, **context) == expected


def _default_route_message(
    host: str, port: int, index: ConfigIndex, proxy: Proxy, hash_policy: Any
) -> bytes:
    """The default route as a message, made the plain way."""
    action = RouteAction(
        cluster=f"outbound|{port}||{host}",
        timeout=Duration(),
        retry_policy=_retry_policy(None, consistent_hash=False),
    )
    if hash_policy is not None:
        action.hash_policy.extend(
            hash_policy(index.destination_rule(host, proxy.namespace), port, "")
        )
    route = Route(
        name="default",
        match=RouteMatch(prefix="/"),
        route=action,
        decorator=Decorator(operation=f"{host}:{port}/*"),
    )
    return bytes(stamp(route).SerializeToString(deterministic=True))


@settings(max_examples=100, deadline=None)
@given(
    st.sampled_from(HOSTS[1:]),
    st.sampled_from([80, 9080, 65535]),
    proxies,
    st.sampled_from([None, route_hash_policy]),
)
def test_default_route_bytes_are_the_message(
    host: str, port: int, proxy: Proxy, hash_policy: Any
) -> None:
    index = ConfigIndex.build(_rules())
    expected = _default_route_message(host, port, index, proxy, hash_policy)
    made = default_route_data(host, port, index=index, proxy=proxy, hash_policy=hash_policy)
    assert made == expected


@settings(max_examples=200, deadline=None)
@given(
    st.one_of(matches, st.builds(lambda m, g: {**m, "gateways": g}, matches,
                                 st.sampled_from([["mesh"], ["ns/gw"]]))),
    proxies,
    st.sampled_from([9080, 9090]),
    st.sampled_from(["mesh", "ns/gw"]),
)  # fmt: skip
def test_unscoped_matches_apply_everywhere(
    match: dict[str, Any], proxy: Proxy, port: int, gateway: str
) -> None:
    """A match that names no port, gateways or sources applies to every proxy, port and
    gateway (translation asks `_Context.applies` of scoped matches only); its translation
    is the same whoever asks."""
    from pilotfish.protos.istio.networking.v1alpha3.virtual_service_pb2 import HTTPMatchRequest
    from pilotfish.translators.routes import _Context, _match_data

    message = json_format.ParseDict(match, HTTPMatchRequest())
    context = _Context(port, proxy, ConfigIndex.build([]), _registry(), gateway, None, "vs")
    scoped = bool({"port", "gateways", "sourceLabels", "sourceNamespace"} & match.keys())
    assert _match_data(message).scoped == scoped
    if not scoped:
        assert context.applies(message)
