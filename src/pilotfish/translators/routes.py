"""VirtualService HTTP routes as Envoy `Route`s, the way istiod builds them.

Each HTTPRoute becomes one Envoy route per match that can apply to this proxy on this port
(or one prefix `/` route when it has no match); translation stops after the first catch-all
route, as in istiod, since Envoy would never go past it. Delegate VirtualServices are merged into
their root first (root conditions AND delegate conditions). Routes carry Istio's defaults:
timeout 0s (disabled) and the default retry policy unless the VirtualService says otherwise.

Not translated (yet): JWT claim matches (`@request.auth.claims...` headers become plain header
matchers), gateway-API/ingress route semantics, stateful sessions, the deprecated
`max_grpc_timeout`, and delegate `exportTo` visibility.
"""

from __future__ import annotations

import functools
import http
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeVar

from envoy.config.core.v3.base_pb2 import (
    DataSource,
    HeaderValue,
    HeaderValueOption,
    RuntimeFractionalPercent,
)
from envoy.config.route.v3.route_components_pb2 import (
    Decorator,
    DirectResponseAction,
    HeaderMatcher,
    QueryParameterMatcher,
    RedirectAction,
    RetryPolicy,
    Route,
    RouteAction,
    RouteMatch,
    WeightedCluster,
)
from envoy.extensions.filters.common.fault.v3.fault_pb2 import FaultDelay
from envoy.extensions.filters.http.cors.v3.cors_pb2 import CorsPolicy as EnvoyCorsPolicy
from envoy.extensions.filters.http.fault.v3.fault_pb2 import FaultAbort, HTTPFault
from envoy.extensions.retry.host.previous_hosts.v3.previous_hosts_pb2 import (
    PreviousHostsPredicate,
)
from envoy.extensions.retry.priority.previous_priorities.v3.previous_priorities_config_pb2 import (
    PreviousPrioritiesConfig,
)
from envoy.type.matcher.v3.regex_pb2 import RegexMatchAndSubstitute, RegexMatcher
from envoy.type.matcher.v3.string_pb2 import StringMatcher
from envoy.type.v3.percent_pb2 import FractionalPercent
from google.protobuf.any_pb2 import Any as AnyProto
from google.protobuf.message import Message
from google.protobuf.wrappers_pb2 import BoolValue, UInt32Value

from pilotfish.bounded import Bounded
from pilotfish.protos.istio.networking.v1alpha3.virtual_service_pb2 import (
    CorsPolicy,
    Destination,
    Headers,
    HTTPDirectResponse,
    HTTPFaultInjection,
    HTTPMatchRequest,
    HTTPRedirect,
    HTTPRetry,
    HTTPRoute,
    HTTPRouteDestination,
    Percent,
    RouteDestination,
    StringMatch,
    VirtualService,
)
from pilotfish.protos.wire import length_delimited as _field
from pilotfish.protos.wire import varint
from pilotfish.registry import Registry
from pilotfish.sources import ConfigObject
from pilotfish.translators.index import MESH, ConfigIndex, MergedRule
from pilotfish.translators.naming import cluster_name, parse_cluster_name
from pilotfish.translators.proxy import Proxy
from pilotfish.translators.version import stamp, stamp_bytes

__all__ = [
    "CORS_FILTER",
    "FAULT_FILTER",
    "default_route",
    "default_route_data",
    "destination_cluster",
    "http_route_data",
    "http_routes",
    "tcp_destinations",
]

FAULT_FILTER = "envoy.filters.http.fault"
CORS_FILTER = "envoy.filters.http.cors"

_DEFAULT_ROUTE_NAME = "default"
_PREVIOUS_HOSTS = "envoy.retry_host_predicates.previous_hosts"
_PREVIOUS_PRIORITIES = "envoy.retry_priorities.previous_priorities"
_DEFAULT_RETRY_ON = "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes"
_REDIRECT_CODES = {
    0: RedirectAction.MOVED_PERMANENTLY,
    301: RedirectAction.MOVED_PERMANENTLY,
    302: RedirectAction.FOUND,
    303: RedirectAction.SEE_OTHER,
    307: RedirectAction.TEMPORARY_REDIRECT,
    308: RedirectAction.PERMANENT_REDIRECT,
}
_GRPC_NAMES = ("OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
               "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
               "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS",
               "UNAUTHENTICATED")  # fmt: skip
_GRPC_CODES = {name: code for code, name in enumerate(_GRPC_NAMES)}
"""gRPC status names, as istiod maps `abort.grpcStatus`."""

_HashPolicyFn = Callable[[MergedRule | None, int, str], list[Any]]
"""`route_hash_policy(rule, port, subset)` of `pilotfish.translators.clusters`."""


# -- public API ----------------------------------------------------------------------------------


def destination_cluster(destination: Destination, port: int, registry: Registry) -> tuple[str, int]:
    """istiod's `GetDestinationCluster` for a destination whose host is an FQDN: its cluster
    and the port it names (the destination's port, else the service's only port, else `port`,
    the port the traffic arrived on)."""
    if destination.HasField("port") and destination.port.number:
        port = destination.port.number
    else:
        port = _service_port(destination.host, port, registry)
    return cluster_name(port, destination.host, destination.subset), port


def _service_port(host: str, port: int, registry: Registry) -> int:
    """The port a destination without one names: its service's only port, else `port`."""
    service = registry.service(host)
    if service is not None and len(service.ports) == 1:
        return service.ports[0].number
    return port


def tcp_destinations(
    destinations: Iterable[RouteDestination],
    port: int,
    namespace: str,
    index: ConfigIndex,
    registry: Registry,
) -> dict[str, int]:
    """Cluster weights of a TCP or TLS route written in `namespace`: a sole destination without
    a weight takes everything, as in HTTP routes."""
    items = list(destinations)
    weights: dict[str, int] = {}
    for item in items:
        destination = Destination()
        destination.CopyFrom(item.destination)
        destination.host = index.resolve(destination.host, namespace)
        name, _ = destination_cluster(destination, port, registry)
        weights[name] = weights.get(name, 0) + (item.weight or (100 if len(items) == 1 else 0))
    return weights


def http_routes(
    vs: ConfigObject,
    *,
    port: int,
    proxy: Proxy,
    index: ConfigIndex,
    registry: Registry,
    gateway: str = MESH,
    hash_policy: _HashPolicyFn | None = None,
) -> list[Route]:
    """The Envoy routes of a VirtualService for traffic arriving on `port` (a sidecar's outbound
    service port or a gateway server port), for this proxy, bound through `gateway` ("mesh" or
    "ns/name")."""
    context = _Context(port, proxy, index, registry, gateway, hash_policy, vs.name)
    return _each_route(vs, context, _route_message)


def http_route_data(
    vs: ConfigObject,
    *,
    port: int,
    proxy: Proxy,
    index: ConfigIndex,
    registry: Registry,
    gateway: str = MESH,
    hash_policy: _HashPolicyFn | None = None,
) -> list[bytes]:
    """`http_routes` as each route's deterministic serialization, for a virtual host made as
    bytes. A route that only sends to destinations (most do) is written from pieces, with no
    `Route` message made; the others are serialized from their message."""
    context = _Context(port, proxy, index, registry, gateway, hash_policy, vs.name)
    return _each_route(vs, context, _route_data)


_T = TypeVar("_T")


def _each_route(
    vs: ConfigObject,
    context: _Context,
    translate: Callable[
        [_Rule, HTTPMatchRequest | None, _MatchData, _Context], tuple[_T, bool] | None
    ],
) -> list[_T]:
    """The routes `translate` makes of each rule and match that applies, up to the first
    catch-all (`translate` says whether its route is one)."""
    spec = vs.spec
    assert isinstance(spec, VirtualService)
    out: list[_T] = []
    for rule in _merged_rules(spec, vs.namespace, _source(vs), context.index):
        matches = rule.fields.get("match")
        if not matches:  # no match: prefix "/" alone, which catches all
            made = translate(rule, None, _match_data(None), context)
            if made is not None:
                out.append(made[0])
            break
        catchall = False
        for match in matches:
            matched = _match_data(match)
            if matched.scoped and not context.applies(match):
                continue
            made = translate(rule, match, matched, context)
            if made is None:
                continue
            route, catchall = made
            out.append(route)
            if catchall:
                break
        if catchall:
            break
    return out


def default_route(
    host: str,
    port: int,
    *,
    index: ConfigIndex,
    proxy: Proxy,
    hash_policy: _HashPolicyFn | None = None,
) -> Route:
    """The route for a service without a VirtualService: prefix "/" to outbound|port||host, with
    Istio's defaults (timeout 0s = disabled, default retry policy)."""
    data = default_route_data(host, port, index=index, proxy=proxy, hash_policy=hash_policy)
    return Route.FromString(data)


def default_route_data(
    host: str,
    port: int,
    *,
    index: ConfigIndex,
    proxy: Proxy,
    hash_policy: _HashPolicyFn | None = None,
) -> bytes:
    """`default_route` as its deterministic bytes, written from its fields (most services of a
    mesh have no VirtualService: a virtual host each, made as bytes)."""
    policies: list[Any] = []
    if hash_policy is not None:
        policies = hash_policy(index.destination_rule(host, proxy.namespace), port, "")
    action = [
        _field(_ACTION_CLUSTER, cluster_name(port, host).encode()),
        _NO_TIMEOUT,
        _default_retry_data(False),  # as istiod: retries move on even with consistent hashing
    ]
    action += [_field(_ACTION_HASH, h.SerializeToString(deterministic=True)) for h in policies]
    operation = f"{host}:{port}/*"
    return b"".join(
        (
            _match_data(None).data,
            _field(_ROUTE_ACTION, b"".join(action)),
            _field(_ROUTE_METADATA, stamp_bytes()),
            _field(_ROUTE_DECORATOR, _field(_OPERATION, operation.encode())),
            _field(_ROUTE_NAME, _DEFAULT_ROUTE_NAME.encode()),
        )
    )


# -- delegation ----------------------------------------------------------------------------------


class _Rule(NamedTuple):
    """An HTTPRoute with host names resolved and match gateways qualified, after merging with its
    root when it came from a delegate; `sources` names the VirtualServices it came from. Made
    once per rule, for all its matches: `fields`, the route's set fields by name (`_fields`:
    one read instead of a dozen), and `metadata`, its routes' framed metadata field (`sources`
    stamped). (A tuple: made for every HTTP route, and a frozen dataclass is slower to make.)"""

    route: HTTPRoute
    sources: tuple[str, ...]
    fields: dict[str, Any]
    metadata: bytes


def _source(vs: ConfigObject) -> str:
    return f"VirtualService/{vs.namespace}/{vs.name}"


def _fields(route: HTTPRoute) -> dict[str, Any]:
    """`route`'s set fields (non-empty repeated ones, non-default scalars) by name: one
    `ListFields` reads them all, where each `HasField` or attribute read is a call of its own."""
    return {field.name: value for field, value in route.ListFields()}


def _merged_rules(
    spec: VirtualService, namespace: str, source: str, index: ConfigIndex
) -> Iterator[_Rule]:
    own = (source,)  # one tuple for all: routes' metadata is looked up by it
    metadata = _field(_ROUTE_METADATA, stamp_bytes(own))  # one per VirtualService, not route
    for route in spec.http:
        fields = _fields(route)
        resolved = route
        if not _is_normal_fields(fields, namespace, index):
            resolved = _normal_copy(route, namespace, index)
            fields = _fields(resolved)
        if "delegate" not in fields:
            yield _Rule(resolved, own, fields, metadata)
            continue
        delegate = index.delegate(route.delegate.name, route.delegate.namespace or namespace)
        if delegate is None:
            continue  # as istiod: a missing delegate drops only this HTTP route
        delegate_spec = delegate.spec
        assert isinstance(delegate_spec, VirtualService)
        sources = (source, _source(delegate))
        merged_metadata = _field(_ROUTE_METADATA, stamp_bytes(sources))
        for sub in delegate_spec.http:
            if sub.HasField("delegate"):
                continue  # delegation is one level deep
            merged = _merge_route(resolved, _normalized(sub, delegate.namespace, index))
            if merged is not None:
                yield _Rule(merged, sources, _fields(merged), merged_metadata)


def _normalized(route: HTTPRoute, namespace: str, index: ConfigIndex) -> HTTPRoute:
    """`route` with destination hosts as FQDNs and match gateways as `ns/name`, as istiod
    resolves them when it reads the object (so a merged route needs no namespace): a copy,
    or `route` itself when it names them so already (translation only reads it)."""
    if _is_normal_fields(_fields(route), namespace, index):
        return route
    return _normal_copy(route, namespace, index)


def _normal_copy(route: HTTPRoute, namespace: str, index: ConfigIndex) -> HTTPRoute:
    """`_normalized` of a route that is not normal: the resolved copy."""
    out = HTTPRoute()
    out.CopyFrom(route)
    for item in out.route:
        item.destination.host = index.resolve(item.destination.host, namespace)
    if out.HasField("mirror"):
        out.mirror.host = index.resolve(out.mirror.host, namespace)
    for mirror in out.mirrors:
        mirror.destination.host = index.resolve(mirror.destination.host, namespace)
    for match in out.match:
        names = [g if g == MESH or "/" in g else f"{namespace}/{g}" for g in match.gateways]
        del match.gateways[:]
        match.gateways.extend(names)
    return out


def _is_normal_fields(fields: dict[str, Any], namespace: str, index: ConfigIndex) -> bool:
    """Whether `_normalized` would change nothing in the route whose set fields are `fields`
    (`_fields`; most routes name FQDNs). A host with a dot is an FQDN already (Istio's
    short-name rule, `resolve_host`): only the others are resolved to tell."""
    resolve = index.resolve
    for item in fields.get("route", ()):
        host = item.destination.host
        if "." not in host and resolve(host, namespace) != host:
            return False
    if "mirror" in fields or "mirrors" in fields:
        hosts = [m.destination.host for m in fields.get("mirrors", ())]
        if "mirror" in fields:
            hosts.append(fields["mirror"].host)
        if any(resolve(host, namespace) != host for host in hosts):
            return False
    for match in fields.get("match", ()):  # loops, not a generator: asked of every route
        for gateway in match.gateways:
            if gateway != MESH and "/" not in gateway:
                return False
    return True


_INHERITED = (
    "rewrite",
    "timeout",
    "retries",
    "fault",
    "mirror",
    "mirror_percent",
    "mirror_percentage",
    "cors_policy",
    "headers",
)


def _merge_route(root: HTTPRoute, delegate: HTTPRoute) -> HTTPRoute | None:
    """istiod's `mergeHTTPRoute`: the delegate route with the root's match conditions folded in
    and the root's settings where the delegate has none; None on a match conflict."""
    matches = _merge_matches(list(root.match), list(delegate.match))
    if matches is None:
        return None
    out = HTTPRoute()
    out.CopyFrom(delegate)
    del out.match[:]
    out.match.extend(matches)
    if not out.name:
        out.name = root.name
    elif root.name:
        out.name = f"{root.name}-{out.name}"
    for name in _INHERITED:
        if not out.HasField(name) and root.HasField(name):
            getattr(out, name).CopyFrom(getattr(root, name))
    return out


def _merge_matches(
    root: list[HTTPMatchRequest], delegate: list[HTTPMatchRequest]
) -> list[HTTPMatchRequest] | None:
    """Every delegate match must be narrower than some root match; each compatible pair merges."""
    if not root:
        return delegate
    if not delegate:
        return root
    out = []
    for sub in delegate:
        merged = [_merge_match(top, sub) for top in root if not _conflict(top, sub)]
        if not merged:
            return None
        out.extend(merged)
    return out


def _merge_match(root: HTTPMatchRequest, delegate: HTTPMatchRequest) -> HTTPMatchRequest:
    out = HTTPMatchRequest()
    out.CopyFrom(delegate)
    if not out.name:
        out.name = root.name
    elif root.name:
        out.name = f"{root.name}-{out.name}"
    for name in ("uri", "scheme", "method", "authority"):
        if not out.HasField(name) and root.HasField(name):
            getattr(out, name).CopyFrom(getattr(root, name))
    for name in ("headers", "without_headers", "query_params"):
        combined = getattr(out, name)
        own: Mapping[str, StringMatch] = getattr(delegate, name)
        for key, value in getattr(root, name).items():
            if key not in own:
                combined[key].CopyFrom(value)
    if not out.port:
        out.port = root.port
    for key, value in root.source_labels.items():
        if key not in delegate.source_labels:
            out.source_labels[key] = value
    if not out.source_namespace:
        out.source_namespace = root.source_namespace
    if not out.gateways:
        out.gateways.extend(root.gateways)
    return out


def _conflict(root: HTTPMatchRequest, leaf: HTTPMatchRequest) -> bool:
    """istiod's `hasConflict`: whether `leaf` can not be a refinement of `root`."""
    for name in ("uri", "scheme", "method", "authority"):
        if (
            root.HasField(name)
            and leaf.HasField(name)
            and _string_conflict(getattr(root, name), getattr(leaf, name))
        ):
            return True
    for name in ("headers", "without_headers", "query_params"):
        mine: Mapping[str, StringMatch] = getattr(root, name)
        theirs: Mapping[str, StringMatch] = getattr(leaf, name)
        for key, value in theirs.items():
            if key in mine and _string_conflict(mine[key], value):
                return True
    if root.ignore_uri_case != leaf.ignore_uri_case:
        return True
    if root.port and leaf.port and root.port != leaf.port:
        return True
    if root.source_namespace and leaf.source_namespace != root.source_namespace:
        return True
    for key, label in leaf.source_labels.items():
        if key in root.source_labels and root.source_labels[key] != label:
            return True
    if root.gateways and leaf.gateways:
        return not set(leaf.gateways) <= set(root.gateways)
    return False


def _string_conflict(root: StringMatch, leaf: StringMatch) -> bool:
    """istiod's `stringMatchConflict` (unset oneof members read as "")."""
    if root.regex and (leaf.regex or leaf.prefix or leaf.exact):
        return True
    if leaf.regex and (root.regex or root.prefix or root.exact):
        return True
    if root.exact:
        return bool(leaf.prefix) or leaf.exact != root.exact
    if root.prefix:
        if leaf.prefix:
            return not leaf.prefix.startswith(root.prefix)
        if leaf.exact:
            return not leaf.exact.startswith(root.prefix)
    return True


# -- translation ---------------------------------------------------------------------------------


class _Context:
    """What the routes of one VirtualService on one port are translated for; a route's
    destinations name the same few hosts again and again, so their lookups are made once."""

    __slots__ = (
        "_ports",
        "_rules",
        "gateway",
        "hash_policy",
        "index",
        "port",
        "proxy",
        "registry",
        "vs_name",
    )

    def __init__(
        self,
        port: int,
        proxy: Proxy,
        index: ConfigIndex,
        registry: Registry,
        gateway: str,
        hash_policy: _HashPolicyFn | None,
        vs_name: str,
    ) -> None:
        self.port, self.proxy, self.index, self.registry = port, proxy, index, registry
        self.gateway, self.hash_policy, self.vs_name = gateway, hash_policy, vs_name
        self._ports: dict[str, int] = {}
        self._rules: dict[str, MergedRule | None] = {}

    def applies(self, match: HTTPMatchRequest | None) -> bool:
        """istiod's port check and `sourceMatchHTTP`: gateways named in the match take
        precedence over source labels and namespace."""
        if match is None:
            return True
        if match.port and match.port != self.port:
            return False
        if match.gateways:
            return self.gateway in match.gateways
        wanted = match.source_labels
        if wanted:  # most matches name none: no generator for them
            labels = self.proxy.labels
            if any(labels.get(k) != v for k, v in wanted.items()):
                return False
        return not match.source_namespace or match.source_namespace == self.proxy.namespace

    def cluster(self, destination: Destination) -> str:
        """istiod's `GetDestinationCluster` (as `destination_cluster`)."""
        host = destination.host
        return cluster_name(self._port(host, destination), host, destination.subset)

    def target(self, destination: Destination) -> tuple[str, list[Any]]:
        """The cluster a route sends `destination`'s share to and its hash policies."""
        host, subset = destination.host, destination.subset
        port = self._port(host, destination)
        name = cluster_name(port, host, subset)
        if self.hash_policy is None:
            return name, []
        if host in self._rules:
            rule = self._rules[host]
        else:
            rule = self._rules[host] = self.index.destination_rule(host, self.proxy.namespace)
        return name, list(self.hash_policy(rule, port, subset))

    def _port(self, host: str, destination: Destination) -> int:
        """The port `destination` names (as `destination_cluster`)."""
        port: int = destination.port.number
        if not port:
            port = self._ports.get(host, 0)
            if not port:
                port = self._ports[host] = _service_port(host, self.port, self.registry)
        return port


def _translate(rule: _Rule, match: HTTPMatchRequest | None, context: _Context) -> Route | None:
    spec = rule.route
    name = spec.name
    if match is not None and match.name:
        name = f"{name}.{match.name}"
    out = Route(name=name)  # filled in place: a constructor would copy what it is given
    _fill_match(out.match, match)
    if match is not None and match.stat_prefix:
        out.stat_prefix = match.stat_prefix
    authority = cluster = ""
    if spec.HasField("headers"):
        authority = _apply_headers(out, spec.headers)
    if spec.HasField("redirect"):
        if not _apply_redirect(out, spec.redirect, context.port):
            return None  # unsupported code: istiod emits a route without action, Envoy NACKs it
    elif spec.HasField("direct_response"):
        _apply_direct_response(out, spec.direct_response)
    else:
        cluster = _apply_destinations(out, spec, authority, context)
    path = _operation_path(out.match)
    out.decorator.operation = _operation(path, cluster, context.vs_name, context.port)
    if spec.HasField("fault") and (fault := _fault(spec.fault)) is not None:
        out.typed_per_filter_config[FAULT_FILTER].CopyFrom(_pack(fault))
    if spec.HasField("cors_policy"):
        out.typed_per_filter_config[CORS_FILTER].CopyFrom(_pack(_cors(spec.cors_policy)))
    return stamp(out, rule.sources)


def _route_message(
    rule: _Rule, match: HTTPMatchRequest | None, matched: _MatchData, context: _Context
) -> tuple[Route, bool] | None:
    route = _translate(rule, match, context)
    return None if route is None else (route, _is_catch_all(route.match))


# -- routes as bytes -----------------------------------------------------------------------------


def _route_data(
    rule: _Rule, match: HTTPMatchRequest | None, matched: _MatchData, context: _Context
) -> tuple[bytes, bool] | None:
    """`_route_message`'s route as its deterministic bytes. A plain route (none of `_NOT_PLAIN`) is
    joined from its fields in field number order, as deterministic output writes them: the
    match (`matched`, shared by every route with an equal one), the action, the metadata, the
    decorator, the name and the stat prefix, which are all such a route has."""
    fields = rule.fields
    plain = _action_data(fields, context) if _NOT_PLAIN.isdisjoint(fields) else None
    if plain is None:
        made = _route_message(rule, match, matched, context)
        return None if made is None else (made[0].SerializeToString(deterministic=True), made[1])
    cluster, action = plain
    operation = _operation(matched.path, cluster, context.vs_name, context.port)
    parts = [
        matched.data,
        _field(_ROUTE_ACTION, action),
        rule.metadata,
        _field(_ROUTE_DECORATOR, _field(_OPERATION, operation.encode())),
    ]
    name: str = fields.get("name", "")
    if match is not None and match.name:
        name = f"{name}.{match.name}"
    if name:
        parts.append(_field(_ROUTE_NAME, name.encode()))
    if match is not None and match.stat_prefix:
        parts.append(_field(_ROUTE_STAT_PREFIX, match.stat_prefix.encode()))
    return b"".join(parts), matched.catch_all


_NOT_PLAIN = frozenset(
    ("headers", "redirect", "direct_response", "rewrite", "mirror", "mirrors", "fault",
     "cors_policy")
)  # fmt: skip
"""HTTPRoute fields that `_translate` reads besides the match, destinations, timeout and
retries: a route with any of them set (or a destination with headers) is translated as a
message; the others are plain, their destinations `_action_data`'s."""


class _MatchData(NamedTuple):
    """What a route's match gives it: its `match` field (framed), the path of its decorator
    operation, whether it matches every request, and whether it is `scoped`: names a port,
    gateways, source labels or a source namespace (most name none, and apply everywhere with
    no `_Context.applies` to ask)."""

    data: bytes
    path: str
    catch_all: bool
    scoped: bool


def _match_data(match: HTTPMatchRequest | None) -> _MatchData:
    """The translation of `match`, which reads nothing else: made once for every equal match
    (the routes of a mesh repeat a few)."""
    key = None if match is None else match.SerializeToString(deterministic=True)
    found = _MATCHES.get(key)
    if found is None:
        out = RouteMatch()
        _fill_match(out, match)
        data = _field(_ROUTE_MATCH, out.SerializeToString(deterministic=True))
        scoped = match is not None and bool(
            match.port or match.gateways or match.source_labels or match.source_namespace
        )
        found = _MATCHES.put(
            key, _MatchData(data, _operation_path(out), _is_catch_all(out), scoped)
        )
    return found


_MATCHES: Bounded[bytes | None, _MatchData] = Bounded(4096)


def _action_data(fields: dict[str, Any], context: _Context) -> tuple[str, bytes] | None:
    """`_apply_destinations` for a plain route (set fields `fields`, none of `_NOT_PLAIN`),
    as its RouteAction's bytes: its cluster ("" when weighted) and the bytes; None when a
    destination sets headers."""
    destinations = fields.get("route", ())
    hashes: list[bytes] = []
    consistent_hash = False
    if len(destinations) == 1:
        item = destinations[0]
        if item.HasField("headers"):
            return None
        cluster, policies = context.target(item.destination)
        head = _field(_ACTION_CLUSTER, cluster.encode())
        if policies:
            hashes = [h.SerializeToString(deterministic=True) for h in policies]
            consistent_hash = True
    else:
        cluster = ""
        weights = []
        for item in destinations:
            if item.HasField("headers"):
                return None
            weight = item.weight
            if weight == 0:
                continue  # as `_apply_destinations`
            name, policies = context.target(item.destination)
            weights.append(_field(_CLUSTERS, _field(_WEIGHT_NAME, name.encode()) + _weight(weight)))
            for policy in policies:
                data = policy.SerializeToString(deterministic=True)
                if data not in hashes:
                    hashes.append(data)
        head = _field(_ACTION_WEIGHTED, b"".join(weights))
    parts = [head]
    timeout = fields.get("timeout")
    if timeout is not None:
        parts.append(_field(_ACTION_TIMEOUT, timeout.SerializeToString(deterministic=True)))
    else:
        parts.append(_NO_TIMEOUT)
    retries = fields.get("retries")
    if retries is not None:
        policy = _retry_policy(retries, consistent_hash)
        if policy is not None:
            parts.append(_field(_ACTION_RETRY, policy.SerializeToString(deterministic=True)))
    else:
        parts.append(_default_retry_data(consistent_hash))
    if hashes:  # most routes have none: no generator for them
        parts.extend(_field(_ACTION_HASH, h) for h in hashes)
    return cluster, b"".join(parts)


@functools.cache
def _default_retry_data(consistent_hash: bool) -> bytes:
    data = _default_retry_policy(consistent_hash).SerializeToString(deterministic=True)
    return _field(_ACTION_RETRY, data)


@functools.lru_cache(maxsize=1024)
def _weight(weight: int) -> bytes:
    """A ClusterWeight's `weight` field (a mesh's routes use a few weights)."""
    return _field(_WEIGHT, _VALUE_TAG + varint(weight))


def _numbers(message: Any, *names: str) -> list[int]:
    return [message.DESCRIPTOR.fields_by_name[name].number for name in names]


_ROUTE_MATCH, _ROUTE_ACTION, _ROUTE_METADATA, _ROUTE_DECORATOR, _ROUTE_NAME, _ROUTE_STAT_PREFIX = (
    _numbers(Route, "match", "route", "metadata", "decorator", "name", "stat_prefix")
)
_ACTION_CLUSTER, _ACTION_WEIGHTED, _ACTION_TIMEOUT, _ACTION_RETRY, _ACTION_HASH = _numbers(
    RouteAction, "cluster", "weighted_clusters", "timeout", "retry_policy", "hash_policy"
)
(_CLUSTERS,) = _numbers(WeightedCluster, "clusters")
_WEIGHT_NAME, _WEIGHT = _numbers(WeightedCluster.ClusterWeight, "name", "weight")
(_OPERATION,) = _numbers(Decorator, "operation")
_VALUE_TAG = b"\x08"  # UInt32Value.value, a varint
_NO_TIMEOUT = _field(_ACTION_TIMEOUT, b"")  # 0s: disabled


# -- matches -------------------------------------------------------------------------------------


def _fill_match(out: RouteMatch, match: HTTPMatchRequest | None) -> None:
    """Translate `match` into the empty `out` (`prefix: /` when there is none)."""
    if match is None:
        out.prefix = "/"
        return
    kind = match.uri.WhichOneof("match_type")
    if kind == "exact":
        out.path = match.uri.exact
    elif kind == "prefix":
        out.prefix = match.uri.prefix
    elif kind == "regex":
        out.safe_regex.regex = match.uri.regex
    else:
        out.prefix = "/"
    # Header matchers by (name, inverted), then the pseudo-headers in a fixed order.
    headers = [(k, False, v) for k, v in match.headers.items()]
    headers.extend((k, True, v) for k, v in match.without_headers.items())
    headers.sort(key=_name_inverted)
    for name, inverted, value in headers:
        matcher = out.headers.add(name=name)
        _set_match(matcher, value)
        if inverted:
            matcher.invert_match = True
            if not _is_present_match(value):
                matcher.treat_missing_header_as_empty = True
    out.case_sensitive.value = not match.ignore_uri_case
    for name, field in ((":method", "method"), (":authority", "authority"), (":scheme", "scheme")):
        if match.HasField(field):
            _set_match(out.headers.add(name=name), getattr(match, field))
    for key in sorted(match.query_params):
        value = match.query_params[key]
        _set_match(out.query_parameters.add(name=key), value)


def _is_present_match(match: StringMatch) -> bool:
    """An empty StringMatch, or regex `*` (istio/istio#20629), means "present"."""
    kind = match.WhichOneof("match_type")
    return kind is None or (kind == "regex" and match.regex == "*")


def _string_matcher(match: StringMatch) -> StringMatcher | None:
    if match.WhichOneof("match_type") is None:
        return None
    out = StringMatcher()
    _fill_string(out, match)
    return out


def _fill_string(out: StringMatcher, match: StringMatch) -> None:
    """`match` into the empty `out`, in place (a route has several: no copies)."""
    kind = match.WhichOneof("match_type")
    if kind == "exact":
        out.exact = match.exact
    elif kind == "prefix":
        out.prefix = match.prefix
    elif kind == "regex":
        out.safe_regex.regex = match.regex


def _name_inverted(header: tuple[str, bool, StringMatch]) -> tuple[str, bool]:
    return header[0], header[1]


def _set_match(out: HeaderMatcher | QueryParameterMatcher, match: StringMatch) -> None:
    """Fill a header or query parameter matcher in place: present, or its string match."""
    if _is_present_match(match):
        out.present_match = True
    else:
        _fill_string(out.string_match, match)


def _is_catch_all(match: RouteMatch) -> bool:
    kind = match.WhichOneof("path_specifier")
    catchall = (
        (kind == "prefix" and match.prefix == "/")
        or (kind == "path_separated_prefix" and match.path_separated_prefix == "/")
        or (kind == "safe_regex" and match.safe_regex.regex == ".*")
    )
    return bool(
        catchall and not match.headers and not match.query_parameters and not match.dynamic_metadata
    )


# -- headers -------------------------------------------------------------------------------------


@dataclass
class _HeaderOps:
    request_add: list[Any]
    request_remove: list[str]
    response_add: list[Any]
    response_remove: list[str]
    authority: str


def _is_internal(name: str) -> bool:
    return name.startswith(":") or name.lower() == "host"


def _is_authority(name: str) -> bool:
    return name.lower() in (":authority", "host")


def _header_options(values: Mapping[str, str], append: bool) -> tuple[list[Any], str]:
    """Header options sorted by name (pseudo-headers and `host` dropped), and the authority
    they set, if any."""
    action = (
        HeaderValueOption.APPEND_IF_EXISTS_OR_ADD
        if append
        else HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
    )
    authority = ""
    options = []
    for key in sorted(values):
        if _is_authority(key):
            authority = values[key]
        if _is_internal(key):
            continue
        options.append(
            HeaderValueOption(header=HeaderValue(key=key, value=values[key]), append_action=action)
        )
    return options, authority


def _header_ops(headers: Headers) -> _HeaderOps:
    request, response = headers.request, headers.response
    set_options, set_authority = _header_options(request.set, append=False)
    add_options, add_authority = _header_options(request.add, append=True)
    response_set, _ = _header_options(response.set, append=False)
    response_add, _ = _header_options(response.add, append=True)
    return _HeaderOps(
        request_add=set_options + add_options,
        request_remove=[h for h in request.remove if not _is_internal(h)],
        response_add=response_set + response_add,
        response_remove=[h for h in response.remove if not _is_internal(h)],
        authority=set_authority or add_authority,
    )


def _add_header_ops(target: Any, ops: _HeaderOps) -> None:
    """Append to a Route's or ClusterWeight's header fields."""
    target.request_headers_to_add.extend(ops.request_add)
    target.request_headers_to_remove.extend(ops.request_remove)
    target.response_headers_to_add.extend(ops.response_add)
    target.response_headers_to_remove.extend(ops.response_remove)


def _apply_headers(out: Route, headers: Headers) -> str:
    ops = _header_ops(headers)
    _add_header_ops(out, ops)
    return ops.authority


# -- actions -------------------------------------------------------------------------------------


def _apply_redirect(out: Route, redirect: HTTPRedirect, port: int) -> bool:
    """istiod's `ApplyRedirect`. A derived or explicit port is dropped when it is the scheme's
    default; without a scheme, http is assumed (istiod assumes https on TLS servers)."""
    code = _REDIRECT_CODES.get(redirect.redirect_code)
    if code is None:
        return False
    action = RedirectAction(host_redirect=redirect.authority, response_code=code)
    if redirect.uri:
        action.path_redirect = redirect.uri
    if redirect.scheme:
        action.scheme_redirect = redirect.scheme
    which = redirect.WhichOneof("redirect_port")
    if which is not None:
        if which == "port":
            action.port_redirect = redirect.port
        elif redirect.derive_port == HTTPRedirect.FROM_REQUEST_PORT:
            action.port_redirect = port
        scheme = redirect.scheme or "http"
        if (action.port_redirect, scheme) in ((80, "http"), (443, "https")):
            action.port_redirect = 0  # no explicit default port
    out.redirect.CopyFrom(action)
    return True


def _apply_direct_response(out: Route, response: HTTPDirectResponse) -> None:
    action = DirectResponseAction(status=response.status)
    kind = response.body.WhichOneof("specifier") if response.HasField("body") else None
    if kind == "string":
        action.body.CopyFrom(DataSource(inline_string=response.body.string))
    elif kind == "bytes":
        action.body.CopyFrom(DataSource(inline_bytes=response.body.bytes))
    out.direct_response.CopyFrom(action)


def _apply_destinations(out: Route, spec: HTTPRoute, authority: str, context: _Context) -> str:
    """istiod's `applyHTTPRouteDestination`; returns the route's cluster ("" when weighted)."""
    action = out.route
    if spec.HasField("timeout"):
        action.timeout.CopyFrom(spec.timeout)
    else:
        action.timeout.SetInParent()  # 0s: disabled
    if spec.HasField("rewrite"):
        rewrite = spec.rewrite
        if rewrite.HasField("uri_regex_rewrite"):
            action.regex_rewrite.CopyFrom(
                RegexMatchAndSubstitute(
                    pattern=RegexMatcher(regex=rewrite.uri_regex_rewrite.match),
                    substitution=rewrite.uri_regex_rewrite.rewrite,
                )
            )
        elif rewrite.uri:
            action.prefix_rewrite = rewrite.uri
        if rewrite.authority:
            authority = rewrite.authority
    if authority:
        action.host_rewrite_literal = authority
    if spec.HasField("mirror") or spec.mirrors:
        for destination, fraction in _mirrors(spec):
            name = context.cluster(destination)
            action.request_mirror_policies.append(
                RouteAction.RequestMirrorPolicy(
                    cluster=name, runtime_fraction=fraction, trace_sampled=BoolValue(value=False)
                )
            )
    cluster = ""
    hashes: list[Any] = []
    consistent_hash = False
    if len(spec.route) == 1:
        cluster, hashes = _single_destination(out, action, spec.route[0], context)
        consistent_hash = bool(hashes)
    else:
        weighted = action.weighted_clusters
        weighted.SetInParent()  # set even if every weight is 0
        for item in spec.route:
            if item.weight == 0:
                continue  # istiod drops zero weights when there are several destinations
            item_hashes = _weighted_destination(weighted.clusters.add(), item, context)
            hashes.extend(h for h in item_hashes if h not in hashes)
    if hashes:
        action.hash_policy.extend(hashes)
    policy = _retry_policy(spec.retries if spec.HasField("retries") else None, consistent_hash)
    if policy is not None:
        action.retry_policy.CopyFrom(policy)
    return cluster


def _single_destination(
    out: Route, action: Any, item: HTTPRouteDestination, context: _Context
) -> tuple[str, list[Any]]:
    """Route to `item` alone: its cluster and hash policies."""
    name, hashes = context.target(item.destination)
    action.cluster = name
    if item.HasField("headers"):
        ops = _header_ops(item.headers)
        _add_header_ops(out, ops)
        if ops.authority and not action.host_rewrite_literal:
            action.host_rewrite_literal = ops.authority
    return name, hashes


def _weighted_destination(out: Any, item: HTTPRouteDestination, context: _Context) -> list[Any]:
    """Fill the ClusterWeight `out` for `item`; its hash policies."""
    out.name, hashes = context.target(item.destination)
    out.weight.value = item.weight
    if item.HasField("headers"):
        ops = _header_ops(item.headers)
        _add_header_ops(out, ops)
        if ops.authority:
            out.host_rewrite_literal = ops.authority
    return hashes


def _mirrors(spec: HTTPRoute) -> Iterator[tuple[Destination, Any]]:
    """(destination, runtime fraction) of each mirror; an explicit 0% mirrors nothing."""
    if spec.HasField("mirror"):
        if spec.HasField("mirror_percentage"):
            if spec.mirror_percentage.value > 0:
                yield spec.mirror, _fraction(_per_million(spec.mirror_percentage))
        elif spec.HasField("mirror_percent"):
            if spec.mirror_percent.value > 0:
                yield spec.mirror, _fraction(_hundred(spec.mirror_percent.value))
        else:
            yield spec.mirror, _fraction(_hundred(100))
    for mirror in spec.mirrors:
        if not mirror.HasField("destination"):
            continue
        if mirror.HasField("percentage"):
            if mirror.percentage.value > 0:
                yield mirror.destination, _fraction(_per_million(mirror.percentage))
        else:
            yield mirror.destination, _fraction(_hundred(100))


def _fraction(percent: Any) -> Any:
    return RuntimeFractionalPercent(default_value=percent)


def _per_million(percent: Percent) -> Any:
    """istiod's `translatePercentToFractionalPercent` (truncating, as Go's uint32())."""
    return FractionalPercent(
        numerator=int(percent.value * 10000), denominator=FractionalPercent.MILLION
    )


def _hundred(value: int) -> Any:
    return FractionalPercent(numerator=value, denominator=FractionalPercent.HUNDRED)


def _operation_path(match: RouteMatch) -> str:
    """The path of a route's decorator operation (`_operation`)."""
    kind = match.WhichOneof("path_specifier")
    path: str = "/*"
    if kind == "prefix":
        path = match.prefix + "*"
    elif kind == "path":
        path = match.path
    elif kind == "safe_regex":
        path = match.safe_regex.regex
    return path


def _operation(path: str, cluster: str, vs_name: str, port: int) -> str:
    """istiod's `GetRouteOperation`: `host:port/path` for one `cluster` (the route's, "" when
    it has none), else `vs:port/path`."""
    if cluster.count("|") == 3:
        _, number, _, host = parse_cluster_name(cluster)
        return f"{host}:{number}{path}"
    return f"{vs_name}:{port}{path}"


# -- retries -------------------------------------------------------------------------------------


@functools.cache
def _previous_hosts() -> Any:
    # Made once (packing serializes); policies copy it.
    return RetryPolicy.RetryHostPredicate(
        name=_PREVIOUS_HOSTS, typed_config=_pack(PreviousHostsPredicate())
    )


def _new_retry_policy(consistent_hash: bool) -> Any:
    out = RetryPolicy(
        num_retries=UInt32Value(value=2),
        retry_on=_DEFAULT_RETRY_ON,
        host_selection_retry_max_attempts=5,
        retriable_status_codes=[503],
    )
    if not consistent_hash:
        out.retry_host_predicate.append(_previous_hosts())
    return out


_default_retry_policy = functools.cache(_new_retry_policy)
"""The default policy, made once for each `consistent_hash`: shared, so never modified."""


def _retry_policy(retries: HTTPRetry | None, consistent_hash: bool) -> Any:
    """istiod's `retry.ConvertPolicy`: the default policy when unset, none for 0 attempts, else
    the default overridden by what is set. With consistent hashing the default does not move
    retries to other hosts. (The default is shared: callers only copy from it.)"""
    if retries is None:
        return _default_retry_policy(consistent_hash)
    if retries.attempts <= 0:
        return None
    out = _new_retry_policy(consistent_hash)
    out.num_retries.value = retries.attempts
    if retries.retry_on:
        retry_on, codes = _parse_retry_on(retries.retry_on)
        out.retry_on = retry_on
        del out.retriable_status_codes[:]
        out.retriable_status_codes.extend(codes)
        if codes and "retriable-status-codes" not in retry_on:
            out.retry_on = ",".join(p for p in (retry_on, "retriable-status-codes") if p)
    if retries.HasField("per_try_timeout"):
        out.per_try_timeout.CopyFrom(retries.per_try_timeout)
    if retries.HasField("retry_ignore_previous_hosts"):
        del out.retry_host_predicate[:]
        if retries.retry_ignore_previous_hosts.value:
            out.retry_host_predicate.append(_previous_hosts())
    if retries.HasField("retry_remote_localities") and retries.retry_remote_localities.value:
        out.retry_priority.CopyFrom(
            RetryPolicy.RetryPriority(
                name=_PREVIOUS_PRIORITIES,
                typed_config=_pack(PreviousPrioritiesConfig(update_frequency=2)),
            )
        )
    if retries.HasField("backoff"):
        out.retry_back_off.base_interval.CopyFrom(retries.backoff)
    return out


def _parse_retry_on(text: str) -> tuple[str, list[int]]:
    """Retry conditions, with HTTP status codes split out."""
    conditions: list[str] = []
    codes: list[int] = []
    for raw in text.split(","):
        part = raw.strip()
        if not part:
            continue
        if part.isdigit() and _is_status(int(part)):
            codes.append(int(part))
        else:
            conditions.append(part)
    return ",".join(conditions), codes


def _is_status(code: int) -> bool:
    try:
        http.HTTPStatus(code)
    except ValueError:
        return False
    return True


# -- per-filter configs --------------------------------------------------------------------------


def _pack(message: Message) -> AnyProto:
    packed = AnyProto()
    packed.Pack(message, deterministic=True)
    return packed


def _fault(fault: HTTPFaultInjection) -> Any:
    """istiod's `TranslateFault`; None when neither a fixed delay nor an HTTP/gRPC abort."""
    out = HTTPFault()
    if fault.HasField("delay") and fault.delay.HasField("fixed_delay"):
        delay = FaultDelay(fixed_delay=fault.delay.fixed_delay)
        if fault.delay.HasField("percentage"):
            delay.percentage.CopyFrom(_per_million(fault.delay.percentage))
        else:
            delay.percentage.CopyFrom(_hundred(fault.delay.percent))
        out.delay.CopyFrom(delay)
    if fault.HasField("abort"):
        kind = fault.abort.WhichOneof("error_type")
        abort = FaultAbort()
        if fault.abort.HasField("percentage"):
            abort.percentage.CopyFrom(_per_million(fault.abort.percentage))
        if kind == "http_status":
            abort.http_status = fault.abort.http_status
            out.abort.CopyFrom(abort)
        elif kind == "grpc_status":
            status = fault.abort.grpc_status
            abort.grpc_status = int(status) if status.isdigit() else _GRPC_CODES.get(status, 0)
            out.abort.CopyFrom(abort)
    if not out.HasField("delay") and not out.HasField("abort"):
        return None
    return out


def _cors(policy: CorsPolicy) -> Any:
    """istiod's `TranslateCORSPolicy`."""
    out = EnvoyCorsPolicy(
        forward_not_matching_preflights=BoolValue(
            value=policy.unmatched_preflights != CorsPolicy.IGNORE
        ),
        filter_enabled=_fraction(_hundred(100)),
        allow_headers=",".join(policy.allow_headers),
        allow_methods=",".join(policy.allow_methods),
        expose_headers=",".join(policy.expose_headers),
    )
    origins: Iterable[Any]
    if policy.allow_origins:
        origins = (m for m in map(_string_matcher, policy.allow_origins) if m is not None)
    else:
        origins = (StringMatcher(exact=o) for o in policy.allow_origin)
    out.allow_origin_string_match.extend(origins)
    if policy.HasField("allow_credentials"):
        out.allow_credentials.CopyFrom(policy.allow_credentials)
    if policy.HasField("max_age"):
        out.max_age = str(policy.max_age.seconds)
    return out
