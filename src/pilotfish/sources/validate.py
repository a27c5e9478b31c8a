"""Semantic checks on loaded objects, after istiod's validation rules, and host resolution.

Schema errors are caught while parsing (`manifests`); these are the rules the schema cannot say,
per kind:

- VirtualService: valid hosts (no bare `*` for the mesh, no overlaps) and gateway names; one
  action per HTTP route; string matches with a value and regexes RE2 accepts; lowercase header
  names; destination weights adding up to 100; valid destinations, ports, redirects, rewrites,
  direct responses, retries, faults, mirrors, CORS and header operations; TLS routes whose SNI
  hosts lie within the hosts; TCP and TLS routes with destinations.
- DestinationRule: host and DNS-label subset names; every traffic policy (top level, per port,
  per subset): non-negative pool sizes, positive durations, client TLS that has its certificates,
  consistent-hash and locality settings that Envoy accepts.
- ServiceEntry and WorkloadEntry: hosts, addresses, unique named ports with known protocols,
  endpoints that fit the resolution and refer to declared ports.
- Gateway: servers with hosts in `[namespace/]host` form, valid ports and protocols, TLS settings
  that match the protocol and have their certificates.
- Sidecar: ingress ports, `namespace/host` egress hosts, one catch-all egress listener, last.
- PeerAuthentication and AuthorizationPolicy: port-level mTLS only with a selector, actions that
  can trigger, non-empty rule values, known condition keys, numeric ports, valid IP blocks.

Regexes are checked against RE2 (Envoy's engine) by rejecting what RE2 lacks (lookaround,
backreferences, possessive quantifiers, ...), then compiling with Python's `re`; istiod's 1024
character limit stands in for Envoy's RE2 program-size limit.

Each problem is a `ValidationError` with the field path (JSON names, `[i]` for list items and
`[key]` for map entries), so a person can find it.
"""

from __future__ import annotations

import ipaddress
import re
import warnings
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from pilotfish.errors import ValidationError
from pilotfish.protos.istio.networking.v1alpha3.destination_rule_pb2 import (
    ClientTLSSettings,
    ConnectionPoolSettings,
    DestinationRule,
)
from pilotfish.protos.istio.networking.v1alpha3.gateway_pb2 import Gateway, ServerTLSSettings
from pilotfish.protos.istio.networking.v1alpha3.service_entry_pb2 import ServiceEntry
from pilotfish.protos.istio.networking.v1alpha3.sidecar_pb2 import (
    CaptureMode,
    OutboundTrafficPolicy,
    Sidecar,
)
from pilotfish.protos.istio.networking.v1alpha3.virtual_service_pb2 import VirtualService
from pilotfish.protos.istio.networking.v1alpha3.workload_entry_pb2 import WorkloadEntry
from pilotfish.protos.istio.security.v1beta1.authorization_policy_pb2 import AuthorizationPolicy
from pilotfish.protos.istio.security.v1beta1.peer_authentication_pb2 import PeerAuthentication

if TYPE_CHECKING:
    from pilotfish.sources.manifests import ConfigObject

__all__ = ["resolve_host", "validate"]

_Problems = Iterator[tuple[str, str]]

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
# Host names: istiod's DNS-1123 label (either case), and a first label that may be `*`, `*x`, `*-x`.
_HOST_LABEL = r"[a-zA-Z0-9](?:[-a-zA-Z0-9]*[a-zA-Z0-9])?"
_HOST_LABEL_RE = re.compile(rf"^{_HOST_LABEL}$")
_WILDCARD_LABEL_RE = re.compile(rf"^(?:\*|(?:\*|\*-)?{_HOST_LABEL})$")
# Kubernetes label keys ([dns-prefix/]name) and values.
_QUALIFIED_NAME = r"(?:[A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]"
_LABEL_KEY = re.compile(rf"^(?:({_HOST_LABEL}(?:\.{_HOST_LABEL})*)/)?({_QUALIFIED_NAME})$")
_LABEL_VALUE = re.compile(rf"^(?:{_QUALIFIED_NAME})?$")
# Header names in matches are lowercase (Istio's API contract); CORS allows either case and `*`.
_MATCH_HEADER = re.compile(r"^[-_a-z0-9]+$")
_TOKEN = re.compile(r"^[-_A-Za-z0-9]+$")
_CONTROL_CHARS = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_JWT_CLAIM_PREFIXES = ("@request.auth.claims.", "@request.auth.claims[")

_REDIRECT_CODES = {301, 302, 303, 307, 308}
# Envoy's retry_on conditions (HTTP and gRPC), plus plain status codes, as istiod accepts them.
_RETRY_ON = {
    "5xx", "gateway-error", "reset", "reset-before-request", "connect-failure", "envoy-ratelimited",
    "retriable-4xx", "refused-stream", "retriable-status-codes", "retriable-headers",
    "http3-post-connect-failure", "cancelled", "deadline-exceeded", "internal",
    "resource-exhausted", "unavailable",
}  # fmt: skip
_HTTP_METHODS = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "CONNECT", "OPTIONS", "TRACE"}
_GRPC_STATUSES = {
    "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
    "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED",
    "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED",
}  # fmt: skip
# istiod's protocol.Parse (case-insensitive).
_PROTOCOLS = {
    "HTTP", "HTTPS", "HTTP2", "HTTP_PROXY", "GRPC", "GRPC-WEB", "TCP", "TLS", "UDP", "MONGO",
    "REDIS", "MYSQL",
}  # fmt: skip
_HTTP_PROTOCOLS = {"HTTP", "HTTP2", "HTTP_PROXY", "GRPC", "GRPC-WEB"}
_TLS_PROTOCOLS = {"HTTPS", "TLS"}
_PROTOCOL_LIST = "HTTP, HTTPS, HTTP2, GRPC, GRPC-WEB, TCP, TLS, UDP, MONGO, REDIS, MYSQL"
_TOPOLOGY_LABELS = {
    "topology.kubernetes.io/region",
    "topology.kubernetes.io/zone",
    "topology.istio.io/subzone",
}
_MAX_DIRECT_RESPONSE_BODY = 1024 * 1024
_MAGLEV_TABLE_LIMIT = 5000011  # Envoy's limit: the table size must be a prime below this
_RING_SIZE_LIMIT = 8388608  # Envoy's RingHashLbConfig bound
# Envoy refuses regexes above RE2's program-size limit; RE2 programs are always longer than the
# pattern, so istiod approximates with the pattern length and rejects anything above 1024.
_RE2_MAX_LENGTH = 1024
_RE2_MAX_REPEAT = 1000


def resolve_host(host: str, namespace: str, domain: str = "cluster.local") -> str:
    """Istio's short-name rule: a host without a dot is a service in the object's namespace."""
    if "." in host or host == "*" or host.startswith("*"):
        return host
    return f"{host}.{namespace}.svc.{domain}"


def validate(obj: ConfigObject) -> list[ValidationError]:
    """Every rule `obj` breaks (empty when it is fine)."""
    checks = {
        "VirtualService": _virtual_service,
        "DestinationRule": _destination_rule,
        "ServiceEntry": _service_entry,
        "WorkloadEntry": _workload_entry,
        "Gateway": _gateway,
        "Sidecar": _sidecar,
        "PeerAuthentication": _peer_authentication,
        "AuthorizationPolicy": _authorization_policy,
    }
    check = checks.get(obj.kind)
    if check is None:
        return []
    return [
        ValidationError(
            reason,
            file=obj.file,
            index=obj.index,
            kind=obj.kind,
            namespace=obj.namespace,
            name=obj.name,
            field=field,
        )
        for field, reason in check(obj.spec)
    ]


# --- VirtualService ---------------------------------------------------------------------------


def _virtual_service(spec: Any) -> _Problems:
    assert isinstance(spec, VirtualService)
    # Bound to gateways only: `*` hosts and JWT-claim routing are allowed there, not in the mesh.
    gateways_only = bool(spec.gateways) and "mesh" not in spec.gateways
    if not spec.hosts:
        # No hosts: a delegate, included by another VirtualService's `delegate` route.
        if spec.gateways:
            yield "spec.gateways", "a delegate VirtualService (no hosts) must not name gateways"
        if spec.tls or spec.tcp:
            yield "spec", "a delegate VirtualService (no hosts) has only http routes"
        for i, route in enumerate(spec.http):
            if route.HasField("delegate"):
                yield f"spec.http[{i}].delegate", "a delegate cannot delegate again"
    hosts_valid = True
    for i, host in enumerate(spec.hosts):
        problem = _domain_problem(host)
        if problem and not _is_ip(host):
            hosts_valid = False
            yield f"spec.hosts[{i}]", problem
        elif host == "*" and not gateways_only:
            hosts_valid = False
            yield f"spec.hosts[{i}]", "'*' is only allowed when bound to gateways, not the mesh"
    if hosts_valid:
        for j, later in enumerate(spec.hosts):
            for i, earlier in enumerate(spec.hosts[:j]):
                if _hosts_overlap(earlier, later):
                    yield f"spec.hosts[{j}]", f"{later!r} overlaps hosts[{i}] {earlier!r}"
                    break
    yield from _gateway_names(spec.gateways, "spec.gateways")
    yield from _export_to(spec.export_to, "spec.exportTo")
    if not (spec.http or spec.tcp or spec.tls):
        yield "spec", "at least one http, tcp or tls route is required"
    for i, route in enumerate(spec.http):
        yield from _http_route(route, f"spec.http[{i}]", gateways_only)
    for i, tls in enumerate(spec.tls):
        yield from _tls_route(tls, f"spec.tls[{i}]", list(spec.hosts))
    for i, tcp in enumerate(spec.tcp):
        yield from _tcp_route(tcp, f"spec.tcp[{i}]")


def _http_route(route: Any, at: str, gateways_only: bool) -> _Problems:
    actions = [
        name
        for name in ("route", "redirect", "direct_response", "delegate")
        if (route.route if name == "route" else route.HasField(name))
    ]
    if len(actions) != 1:
        found = " and ".join(actions) or "none"
        yield at, f"exactly one of route, redirect, directResponse, delegate (found {found})"
    for action, json_name in (("redirect", "redirect"), ("direct_response", "directResponse")):
        if route.HasField(action):
            if route.HasField("rewrite"):
                yield f"{at}.rewrite", f"cannot be combined with {json_name}"
            if route.HasField("fault"):
                yield f"{at}.fault", f"cannot be combined with {json_name}"
    for j, match in enumerate(route.match):
        yield from _http_match(match, f"{at}.match[{j}]", gateways_only)
    yield from _route_destinations(route.route, f"{at}.route")
    for j, destination in enumerate(route.route):
        if destination.HasField("headers"):
            yield from _header_operations(destination.headers, f"{at}.route[{j}].headers")
    if route.HasField("redirect"):
        yield from _redirect(route.redirect, f"{at}.redirect")
    if route.HasField("direct_response"):
        response = route.direct_response
        if not 200 <= response.status <= 599:
            yield f"{at}.directResponse.status", "must be an HTTP status between 200 and 599"
        body = response.body
        size = len(body.string) if body.WhichOneof("specifier") == "string" else len(body.bytes)
        if size > _MAX_DIRECT_RESPONSE_BODY:
            yield f"{at}.directResponse.body", f"is {size} bytes; at most 1MiB is allowed"
    if route.HasField("delegate"):
        if not route.delegate.name:
            yield f"{at}.delegate.name", "is required"
        namespace = route.delegate.namespace
        if namespace and not _DNS_LABEL.match(namespace):
            yield f"{at}.delegate.namespace", f"{namespace!r} is not a DNS-1123 label"
    if route.HasField("rewrite"):
        yield from _rewrite(route.rewrite, f"{at}.rewrite")
    if route.HasField("headers"):
        yield from _header_operations(route.headers, f"{at}.headers")
        yield from _authority_set_once(route, f"{at}.headers.request")
    if route.HasField("timeout"):
        yield from _positive(route.timeout, f"{at}.timeout")
    if route.HasField("retries"):
        yield from _retries(route.retries, f"{at}.retries")
    if route.HasField("fault"):
        yield from _fault(route.fault, f"{at}.fault")
    yield from _mirrors(route, at)
    if route.HasField("cors_policy"):
        yield from _cors(route.cors_policy, f"{at}.corsPolicy")


def _http_match(match: Any, at: str, gateways_only: bool) -> _Problems:
    for name in ("uri", "scheme", "method", "authority"):
        if match.HasField(name):
            # Envoy allows an empty prefix only for the path.
            yield from _string_match(getattr(match, name), f"{at}.{name}", empty_ok=name == "uri")
    for field, json_name in (("headers", "headers"), ("without_headers", "withoutHeaders")):
        for key, value in sorted(getattr(match, field).items()):
            here = f"{at}.{json_name}[{key}]"
            yield from _match_header_name(key, here, gateways_only)
            # An empty match tests presence; `regex: "*"` does too in withoutHeaders.
            if not (field == "without_headers" and value.regex == "*"):
                yield from _string_match(value, here, presence_ok=True)
    for key, value in sorted(match.query_params.items()):
        here = f"{at}.queryParams[{key}]"
        if not key:
            yield here, "query parameter name must not be empty"
        yield from _string_match(value, here, presence_ok=True)
    if match.port:
        yield from _port(match.port, f"{at}.port")
    yield from _labels(match.source_labels, f"{at}.sourceLabels")
    yield from _gateway_names(match.gateways, f"{at}.gateways")
    if match.source_namespace and not _DNS_LABEL.match(match.source_namespace):
        yield f"{at}.sourceNamespace", f"{match.source_namespace!r} is not a DNS-1123 label"


def _string_match(
    match: Any, at: str, *, presence_ok: bool = False, empty_ok: bool = False
) -> _Problems:
    kind = match.WhichOneof("match_type")
    if kind is None:
        if not presence_ok:
            yield at, "needs one of exact, prefix, regex"
    elif kind == "prefix" and not match.prefix and not empty_ok:
        yield f"{at}.prefix", "must not be empty"
    elif kind == "regex" and (problem := _re2_problem(match.regex)):
        yield f"{at}.regex", problem


def _match_header_name(name: str, at: str, gateways_only: bool) -> _Problems:
    if name.startswith(_JWT_CLAIM_PREFIXES):
        if not gateways_only:
            yield at, "jwt claim routing is only supported for virtual services bound to gateways"
    elif not name:
        yield at, "header name must not be empty"
    elif not _MATCH_HEADER.match(name):
        yield at, f"header name {name!r} must be lowercase letters, digits, '-' or '_'"


def _route_destinations(routes: Any, at: str) -> _Problems:
    weights = [d.weight for d in routes]
    if len(weights) > 1 and any(weights) and sum(weights) != 100:
        yield at, f"destination weights add up to {sum(weights)}, not 100"
    for j, destination in enumerate(routes):
        yield from _destination(destination.destination, f"{at}[{j}].destination")
        if destination.weight < 0:
            yield f"{at}[{j}].weight", "must not be negative"


def _destination(destination: Any, at: str) -> _Problems:
    host = destination.host
    if not host:
        yield f"{at}.host", "is required"
    elif host == "*":
        yield f"{at}.host", "'*' is not a destination; name a service"
    elif problem := _domain_problem(host):
        yield f"{at}.host", problem
    if destination.subset and not _DNS_LABEL.match(destination.subset):
        yield f"{at}.subset", f"{destination.subset!r} is not a DNS-1123 label"
    if destination.HasField("port"):
        yield from _port(destination.port.number, f"{at}.port.number")


def _redirect(redirect: Any, at: str) -> _Problems:
    port_kind = redirect.WhichOneof("redirect_port")
    if not (redirect.uri or redirect.authority or redirect.scheme or port_kind):
        yield at, "needs at least one of uri, authority, scheme, port, derivePort"
    code = redirect.redirect_code
    if code and code not in _REDIRECT_CODES:
        yield f"{at}.redirectCode", "must be one of 301, 302, 303, 307, 308"
    if redirect.scheme and redirect.scheme not in ("http", "https"):
        yield f"{at}.scheme", f"{redirect.scheme!r} is not http or https"
    if port_kind == "port":
        yield from _port(redirect.port, f"{at}.port")


def _rewrite(rewrite: Any, at: str) -> _Problems:
    regex_rewrite = rewrite.HasField("uri_regex_rewrite")
    if rewrite.uri and regex_rewrite:
        yield at, "set uri or uriRegexRewrite, not both"
    elif not (rewrite.uri or rewrite.authority or regex_rewrite):
        yield at, "needs one of uri, uriRegexRewrite, authority"
    if regex_rewrite:
        match = rewrite.uri_regex_rewrite.match
        if not match:
            yield f"{at}.uriRegexRewrite.match", "is required"
        elif problem := _re2_problem(match):
            yield f"{at}.uriRegexRewrite.match", problem
        if not rewrite.uri_regex_rewrite.rewrite:
            yield f"{at}.uriRegexRewrite.rewrite", "is required"


def _authority_set_once(route: Any, at: str) -> _Problems:
    request = route.headers.request
    sources = [route.rewrite.authority] if route.rewrite.authority else []
    sources += [v for k, v in sorted(request.set.items()) if _is_authority(k)]
    sources += [v for k, v in sorted(request.add.items()) if _is_authority(k)]
    if len(sources) > 1:
        yield at, "the authority is set more than once (rewrite.authority, host or :authority)"


def _header_operations(headers: Any, at: str) -> _Problems:
    for side in ("request", "response"):
        if not headers.HasField(side):
            continue
        operations = getattr(headers, side)
        # Requests may set or add the authority (an authority rewrite); nothing may remove it.
        for op in ("set", "add"):
            for name, value in sorted(getattr(operations, op).items()):
                here = f"{at}.{side}.{op}[{name}]"
                yield from _header_operation_name(name, here, side == "request")
                if _CONTROL_CHARS.search(value):
                    yield here, "header value must not contain control characters"
        for k, name in enumerate(operations.remove):
            yield from _header_operation_name(name, f"{at}.{side}.remove[{k}]", False)


def _header_operation_name(name: str, at: str, authority_ok: bool) -> _Problems:
    if not name:
        yield at, "header name must not be empty"
    elif authority_ok and _is_authority(name):
        return
    elif name.lower() == "host":
        yield at, "the host header cannot be changed here; use rewrite.authority"
    elif name.startswith(":"):
        yield at, f"pseudo-header {name!r} cannot be changed"


def _is_authority(name: str) -> bool:
    return name.lower() in ("host", ":authority")


def _retries(retries: Any, at: str) -> _Problems:
    if retries.attempts < 0:
        yield f"{at}.attempts", "must not be negative"
    elif retries.attempts == 0 and (
        retries.HasField("per_try_timeout")
        or retries.retry_on
        or retries.HasField("retry_remote_localities")
    ):
        yield f"{at}.attempts", "is 0 (retries disabled) but other retry settings are given"
    if retries.HasField("per_try_timeout"):
        yield from _positive(retries.per_try_timeout, f"{at}.perTryTimeout")
    if retries.HasField("backoff"):
        yield from _positive(retries.backoff, f"{at}.backoff")
    for token in filter(None, (t.strip() for t in retries.retry_on.split(","))):
        if token not in _RETRY_ON and not token.isdigit():
            yield f"{at}.retryOn", f"unknown retry condition {token!r}"


def _fault(fault: Any, at: str) -> _Problems:
    if not (fault.HasField("delay") or fault.HasField("abort")):
        yield at, "needs an abort, a delay or both"
    if fault.HasField("delay"):
        delay = fault.delay
        if delay.HasField("fixed_delay"):
            yield from _positive(delay.fixed_delay, f"{at}.delay.fixedDelay")
        if delay.HasField("exponential_delay"):
            yield f"{at}.delay.exponentialDelay", "is not supported; use fixedDelay"
        if delay.HasField("percentage") and not 0 <= delay.percentage.value <= 100:
            yield f"{at}.delay.percentage.value", "must be between 0 and 100"
    if fault.HasField("abort"):
        abort = fault.abort
        error_type = abort.WhichOneof("error_type")
        if error_type == "http_status" and not 200 <= abort.http_status <= 599:
            yield f"{at}.abort.httpStatus", "must be an HTTP status between 200 and 599"
        elif error_type == "grpc_status" and abort.grpc_status not in _GRPC_STATUSES:
            yield f"{at}.abort.grpcStatus", f"{abort.grpc_status!r} is not a gRPC status name"
        elif error_type == "http2_error":
            yield f"{at}.abort.http2Error", "is not supported; use httpStatus or grpcStatus"
        if abort.HasField("percentage") and not 0 <= abort.percentage.value <= 100:
            yield f"{at}.abort.percentage.value", "must be between 0 and 100"


def _mirrors(route: Any, at: str) -> _Problems:
    if route.HasField("mirror"):
        if route.mirrors:
            yield f"{at}.mirrors", "cannot be combined with mirror"
        yield from _destination(route.mirror, f"{at}.mirror")
    if route.HasField("mirror_percentage") and not 0 <= route.mirror_percentage.value <= 100:
        yield f"{at}.mirrorPercentage.value", "must be between 0 and 100"
    if route.HasField("mirror_percent") and route.mirror_percent.value > 100:
        yield f"{at}.mirrorPercent", "must be between 0 and 100"
    for k, mirror in enumerate(route.mirrors):
        here = f"{at}.mirrors[{k}]"
        if not mirror.HasField("destination"):
            yield f"{here}.destination", "is required"
        else:
            yield from _destination(mirror.destination, f"{here}.destination")
        if mirror.HasField("percentage") and not 0 <= mirror.percentage.value <= 100:
            yield f"{here}.percentage.value", "must be between 0 and 100"


def _cors(cors: Any, at: str) -> _Problems:
    for k, origin in enumerate(cors.allow_origins):
        kind = origin.WhichOneof("match_type")
        value = getattr(origin, kind) if kind else ""
        if not value:
            yield f"{at}.allowOrigins[{k}]", "needs a non-empty exact, prefix or regex"
        elif kind == "regex" and (problem := _re2_problem(value)):
            yield f"{at}.allowOrigins[{k}].regex", problem
    for k, method in enumerate(cors.allow_methods):
        if method not in _HTTP_METHODS:
            yield f"{at}.allowMethods[{k}]", f"{method!r} is not an HTTP method like GET or POST"
    headers = (("allowHeaders", cors.allow_headers), ("exposeHeaders", cors.expose_headers))
    for json_name, names in headers:
        for k, name in enumerate(names):
            if name != "*" and not _TOKEN.match(name):
                yield f"{at}.{json_name}[{k}]", f"{name!r} is not a header name or '*'"
    if cors.HasField("max_age"):
        yield from _positive(cors.max_age, f"{at}.maxAge")
        if cors.max_age.nanos:
            yield f"{at}.maxAge", "must be whole seconds"


def _tls_route(route: Any, at: str, hosts: list[str]) -> _Problems:
    if not route.match:
        yield f"{at}.match", "at least one match with sniHosts is required"
    for j, match in enumerate(route.match):
        here = f"{at}.match[{j}]"
        if not match.sni_hosts:
            yield f"{here}.sniHosts", "at least one SNI host is required"
        for k, sni in enumerate(match.sni_hosts):
            problem = _domain_problem(sni)
            if problem:
                if not _is_ip(sni):
                    yield f"{here}.sniHosts[{k}]", problem
            elif not any(_host_subset(sni, host) for host in hosts):
                yield f"{here}.sniHosts[{k}]", f"{sni!r} is not within any of the hosts"
        yield from _l4_match(match, here)
    if not route.route:
        yield f"{at}.route", "at least one destination is required"
    yield from _route_destinations(route.route, f"{at}.route")


def _tcp_route(route: Any, at: str) -> _Problems:
    for j, match in enumerate(route.match):
        yield from _l4_match(match, f"{at}.match[{j}]")
    if not route.route:
        yield f"{at}.route", "at least one destination is required"
    yield from _route_destinations(route.route, f"{at}.route")


def _l4_match(match: Any, at: str) -> _Problems:
    for k, subnet in enumerate(match.destination_subnets):
        if not _is_ip_or_cidr(subnet):
            yield f"{at}.destinationSubnets[{k}]", f"{subnet!r} is not an IP address or CIDR block"
    if match.port:
        yield from _port(match.port, f"{at}.port")
    yield from _labels(match.source_labels, f"{at}.sourceLabels")
    yield from _gateway_names(match.gateways, f"{at}.gateways")


def _gateway_names(names: Iterable[str], at: str) -> _Problems:
    for i, name in enumerate(names):
        if name == "mesh":
            continue
        namespace, slash, gateway = name.partition("/")
        if slash:
            if not (_DNS_LABEL.match(namespace) and _DNS_LABEL.match(gateway)):
                yield f"{at}[{i}]", f"{name!r}: namespace and name must be DNS-1123 labels"
        elif _domain_problem(name, wildcard=False):
            yield f"{at}[{i}]", f"{name!r} is not a gateway name: expected [namespace/]name or mesh"


def _export_to(values: Iterable[str], at: str, *, none_ok: bool = False) -> _Problems:
    values = list(values)
    for i, value in enumerate(values):
        if value in values[:i]:
            yield f"{at}[{i}]", f"{value!r} is listed twice"
        elif value not in (".", "*", *(("~",) if none_ok else ())) and not _DNS_LABEL.match(value):
            yield f"{at}[{i}]", f"{value!r} is not '.', '*' or a namespace"
    if len(values) > 1 and "*" in values:
        yield at, "'*' exports to every namespace; list nothing else with it"
    if len(values) > 1 and none_ok and "~" in values:
        yield at, "'~' exports to no namespace; list nothing else with it"


# --- DestinationRule --------------------------------------------------------------------------


def _destination_rule(spec: Any) -> _Problems:
    assert isinstance(spec, DestinationRule)
    if not spec.host:
        yield "spec.host", "is required"
    elif problem := _domain_problem(spec.host):
        yield "spec.host", problem
    seen: set[str] = set()
    for i, subset in enumerate(spec.subsets):
        at = f"spec.subsets[{i}]"
        if not _DNS_LABEL.match(subset.name):
            yield f"{at}.name", f"{subset.name!r} is not a DNS-1123 label"
        if subset.name in seen:
            yield f"{at}.name", f"subset {subset.name!r} is defined twice"
        seen.add(subset.name)
        yield from _labels(subset.labels, f"{at}.labels")
        if subset.HasField("traffic_policy"):
            yield from _traffic_policy(subset.traffic_policy, f"{at}.trafficPolicy")
    if spec.HasField("traffic_policy"):
        yield from _traffic_policy(spec.traffic_policy, "spec.trafficPolicy")
    yield from _export_to(spec.export_to, "spec.exportTo")
    if spec.HasField("workload_selector"):
        yield from _selector(
            spec.workload_selector.match_labels, "spec.workloadSelector.matchLabels"
        )


def _traffic_policy(policy: Any, at: str) -> _Problems:
    yield from _port_traffic_policy(policy, at)
    for k, port_policy in enumerate(policy.port_level_settings):
        here = f"{at}.portLevelSettings[{k}]"
        if not port_policy.HasField("port"):
            yield f"{here}.port", "is required"
        else:
            yield from _port(port_policy.port.number, f"{here}.port.number")
        fields = ("load_balancer", "connection_pool", "outlier_detection", "tls")
        if not any(port_policy.HasField(name) for name in fields):
            yield here, "needs at least one of loadBalancer, connectionPool, outlierDetection, tls"
        yield from _port_traffic_policy(port_policy, here)
    if policy.HasField("tunnel"):
        tunnel = policy.tunnel
        if policy.HasField("proxy_protocol"):
            yield f"{at}.tunnel", "cannot be combined with proxyProtocol"
        if tunnel.protocol not in ("", "CONNECT", "POST"):
            yield f"{at}.tunnel.protocol", f"{tunnel.protocol!r} is not CONNECT or POST"
        if _domain_problem(tunnel.target_host, wildcard=False) and not _is_ip(tunnel.target_host):
            yield f"{at}.tunnel.targetHost", "must be a fully qualified host name or an IP address"
        yield from _port(tunnel.target_port, f"{at}.tunnel.targetPort")
    budget = policy.retry_budget
    if budget.HasField("percent") and not 0 <= budget.percent.value <= 100:
        yield f"{at}.retryBudget.percent", "must be between 0 and 100"


def _port_traffic_policy(policy: Any, at: str) -> _Problems:
    """The settings a whole-service policy shares with a port-level one."""
    if policy.HasField("load_balancer"):
        yield from _load_balancer(policy.load_balancer, f"{at}.loadBalancer")
    if policy.HasField("connection_pool"):
        yield from _connection_pool(policy.connection_pool, f"{at}.connectionPool")
    if policy.HasField("outlier_detection"):
        yield from _outlier_detection(policy.outlier_detection, f"{at}.outlierDetection")
    if policy.HasField("tls"):
        yield from _client_tls(policy.tls, f"{at}.tls")


def _load_balancer(lb: Any, at: str) -> _Problems:
    if lb.HasField("consistent_hash"):
        ch = lb.consistent_hash
        here = f"{at}.consistentHash"
        if ch.WhichOneof("hash_key") is None:
            yield here, "needs a hash key"
        if ch.HasField("http_cookie") and not ch.http_cookie.name:
            yield f"{here}.httpCookie.name", "is required"
        algorithm = ch.WhichOneof("hash_algorithm")
        if ch.minimum_ring_size and algorithm:
            yield f"{here}.minimumRingSize", "cannot be combined with ringHash or maglev"
        if algorithm == "maglev":
            size = ch.maglev.table_size
            if not size:
                yield f"{here}.maglev.tableSize", "is required"
            elif size >= _MAGLEV_TABLE_LIMIT or not _is_prime(size):
                yield f"{here}.maglev.tableSize", f"must be a prime below {_MAGLEV_TABLE_LIMIT}"
        ring = ch.ring_hash.minimum_ring_size if algorithm == "ring_hash" else ch.minimum_ring_size
        if ring > _RING_SIZE_LIMIT:
            field = "ringHash.minimumRingSize" if algorithm == "ring_hash" else "minimumRingSize"
            yield f"{here}.{field}", f"must be at most {_RING_SIZE_LIMIT}"
    if lb.HasField("locality_lb_setting"):
        yield from _locality_lb(lb.locality_lb_setting, f"{at}.localityLbSetting")
    if lb.HasField("warmup_duration_secs"):
        yield from _positive(lb.warmup_duration_secs, f"{at}.warmupDurationSecs")
    if lb.HasField("warmup"):
        if lb.warmup.HasField("duration"):
            yield from _positive(lb.warmup.duration, f"{at}.warmup.duration")
        minimum = lb.warmup.minimum_percent
        if lb.warmup.HasField("minimum_percent") and not 0 <= minimum.value <= 100:
            yield f"{at}.warmup.minimumPercent", "must be between 0 and 100"


def _locality_lb(setting: Any, at: str) -> _Problems:
    if setting.distribute and setting.failover:
        yield at, "set distribute or failover, not both"
        return
    for k, distribute in enumerate(setting.distribute):
        here = f"{at}.distribute[{k}]"
        yield from _locality(getattr(distribute, "from"), f"{here}.from")
        for locality, weight in sorted(distribute.to.items()):
            yield from _locality(locality, f"{here}.to[{locality}]")
            if not 1 <= weight <= 100:
                yield f"{here}.to[{locality}]", "weight must be between 1 and 100"
        total = sum(distribute.to.values())
        if total != 100:
            yield f"{here}.to", f"weights add up to {total}, not 100"
    for k, failover in enumerate(setting.failover):
        here = f"{at}.failover[{k}]"
        source, target = getattr(failover, "from"), failover.to
        if source == target:
            yield here, "from and to must be different regions"
        if any(c in source + target for c in "/*"):
            yield here, "from and to must be plain regions (no '/' or '*')"
    if setting.failover:
        for k, label in enumerate(setting.failover_priority):
            if label in _TOPOLOGY_LABELS:
                yield f"{at}.failoverPriority[{k}]", f"{label!r} cannot be combined with failover"


def _locality(locality: str, at: str) -> _Problems:
    if "*" in locality and (locality.count("*") > 1 or not locality.endswith("*")):
        yield at, f"{locality!r}: at most one '*', and only at the end"
    elif any(not part for part in locality.split("/", 2)):
        yield at, f"{locality!r}: expected region[/zone[/subzone]] with no empty parts"


def _connection_pool(pool: Any, at: str) -> _Problems:
    if pool.HasField("http"):
        http = pool.http
        for field, json_name in (
            ("http1_max_pending_requests", "http1MaxPendingRequests"),
            ("http2_max_requests", "http2MaxRequests"),
            ("max_requests_per_connection", "maxRequestsPerConnection"),
            ("max_retries", "maxRetries"),
            ("max_concurrent_streams", "maxConcurrentStreams"),
        ):
            if getattr(http, field) < 0:
                yield f"{at}.http.{json_name}", "must not be negative"
        if http.HasField("idle_timeout"):
            yield from _positive(http.idle_timeout, f"{at}.http.idleTimeout")
        upgrade = ConnectionPoolSettings.HTTPSettings.H2UpgradePolicy.Value("UPGRADE")
        if http.h2_upgrade_policy == upgrade and http.use_client_protocol:
            yield f"{at}.http.useClientProtocol", "must not be true with h2UpgradePolicy UPGRADE"
    if pool.HasField("tcp"):
        tcp = pool.tcp
        if tcp.max_connections < 0:
            yield f"{at}.tcp.maxConnections", "must not be negative"
        for field, json_name in (
            ("connect_timeout", "connectTimeout"),
            ("max_connection_duration", "maxConnectionDuration"),
            ("idle_timeout", "idleTimeout"),
        ):
            if tcp.HasField(field):
                yield from _positive(getattr(tcp, field), f"{at}.tcp.{json_name}")
        if tcp.HasField("tcp_keepalive"):
            for field in ("time", "interval"):
                if tcp.tcp_keepalive.HasField(field):
                    duration = getattr(tcp.tcp_keepalive, field)
                    yield from _positive(duration, f"{at}.tcp.tcpKeepalive.{field}")


def _outlier_detection(outlier: Any, at: str) -> _Problems:
    if outlier.consecutive_errors < 0:
        yield f"{at}.consecutiveErrors", "must not be negative"
    failures = outlier.consecutive_local_origin_failures
    if failures.value > 0 and not outlier.split_external_local_origin_errors:
        yield f"{at}.consecutiveLocalOriginFailures", "needs splitExternalLocalOriginErrors"
    if outlier.HasField("interval"):
        yield from _positive(outlier.interval, f"{at}.interval")
    if outlier.HasField("base_ejection_time"):
        yield from _positive(outlier.base_ejection_time, f"{at}.baseEjectionTime")
    if not 0 <= outlier.max_ejection_percent <= 100:
        yield f"{at}.maxEjectionPercent", "must be 0 to 100"
    if not 0 <= outlier.min_health_percent <= 100:
        yield f"{at}.minHealthPercent", "must be 0 to 100"


def _client_tls(tls: Any, at: str) -> _Problems:
    mode = ClientTLSSettings.TLSmode.Name(tls.mode)
    if tls.HasField("insecure_skip_verify") and tls.insecure_skip_verify.value:
        if mode == "SIMPLE" and (
            tls.ca_certificates or tls.credential_name or tls.subject_alt_names
        ):
            yield (
                f"{at}.insecureSkipVerify",
                ("cannot be combined with caCertificates, credentialName or subjectAltNames"),
            )
        if mode == "MUTUAL" and (tls.ca_certificates or tls.subject_alt_names):
            yield (
                f"{at}.insecureSkipVerify",
                ("cannot be combined with caCertificates or subjectAltNames"),
            )
    if mode in ("SIMPLE", "MUTUAL") and tls.credential_name:
        if tls.client_certificate or tls.private_key or tls.ca_certificates or tls.ca_crl:
            yield (
                f"{at}.credentialName",
                ("cannot be combined with clientCertificate, privateKey, caCertificates or caCrl"),
            )
    elif mode == "MUTUAL":
        if not tls.client_certificate:
            yield f"{at}.clientCertificate", "is required for MUTUAL (or set credentialName)"
        if not tls.private_key:
            yield f"{at}.privateKey", "is required for MUTUAL (or set credentialName)"


# --- ServiceEntry and WorkloadEntry -----------------------------------------------------------


def _service_entry(spec: Any) -> _Problems:
    assert isinstance(spec, ServiceEntry)
    resolution = ServiceEntry.Resolution.Name(spec.resolution)
    if not spec.hosts:
        yield "spec.hosts", "at least one host is required"
    for i, host in enumerate(spec.hosts):
        if host == "*":
            yield f"spec.hosts[{i}]", "'*' alone is not allowed; name the hosts (*.example.com)"
        elif problem := _domain_problem(host):
            yield f"spec.hosts[{i}]", problem
        elif resolution in ("DNS", "DNS_ROUND_ROBIN") and not spec.endpoints and "*" in host:
            yield f"spec.hosts[{i}]", f"{resolution} without endpoints needs hosts with no wildcard"
    cidr = False
    for i, address in enumerate(spec.addresses):
        cidr = cidr or "/" in address
        if not _is_ip_or_cidr(address):
            yield f"spec.addresses[{i}]", f"{address!r} is not an IP address or CIDR block"
    if cidr and resolution not in ("NONE", "STATIC"):
        yield "spec.addresses", f"CIDR blocks need resolution NONE or STATIC, not {resolution}"
    if not spec.ports:
        yield "spec.ports", "at least one port is required"
    names: set[str] = set()
    numbers: set[int] = set()
    for j, port in enumerate(spec.ports):
        at = f"spec.ports[{j}]"
        yield from _port(port.number, f"{at}.number")
        if port.number in numbers:
            yield f"{at}.number", f"port {port.number} is defined twice"
        numbers.add(port.number)
        yield from _port_name(port.name, f"{at}.name")
        if port.name in names:
            yield f"{at}.name", f"port name {port.name!r} is defined twice"
        names.add(port.name)
        yield from _protocol(port.protocol, f"{at}.protocol")
        if port.target_port:
            yield from _port(port.target_port, f"{at}.targetPort")
    if resolution != "NONE" and len(spec.hosts) > 1:
        for j, port in enumerate(spec.ports):
            if port.protocol.upper() not in _HTTP_PROTOCOLS | _TLS_PROTOCOLS:
                yield (
                    f"spec.ports[{j}].protocol",
                    (
                        "several hosts need HTTP or TLS ports (TCP cannot tell them apart), "
                        "or resolution NONE"
                    ),
                )
                break
    if spec.HasField("workload_selector"):
        if spec.endpoints:
            yield "spec.workloadSelector", "cannot be combined with endpoints"
        yield from _selector(spec.workload_selector.labels, "spec.workloadSelector.labels")
    if resolution == "NONE" and spec.endpoints:
        yield "spec.endpoints", "must be empty for resolution NONE"
    elif resolution == "DNS_ROUND_ROBIN" and len(spec.endpoints) > 1:
        yield "spec.endpoints", "DNS_ROUND_ROBIN allows at most one endpoint"
    if resolution != "NONE":
        mode = "static" if resolution == "STATIC" else "dns"
        for k, endpoint in enumerate(spec.endpoints):
            yield from _endpoint(endpoint, f"spec.endpoints[{k}]", names, mode)
    yield from _export_to(spec.export_to, "spec.exportTo", none_ok=True)


def _workload_entry(spec: Any) -> _Problems:
    assert isinstance(spec, WorkloadEntry)
    yield from _endpoint(spec, "spec", None, "any")


def _endpoint(entry: Any, at: str, service_ports: set[str] | None, mode: str) -> _Problems:
    """A WorkloadEntry, alone (`mode` "any") or as a ServiceEntry endpoint ("static", "dns")."""
    address = entry.address
    if not address:
        if not entry.network:
            yield f"{at}.address", "is required: an IP address, a host name or unix:///path"
    elif address.startswith("unix://") and mode != "dns":
        if problem := _unix_path_problem(address.removeprefix("unix://")):
            yield f"{at}.address", problem
        if entry.ports:
            yield f"{at}.ports", "a unix:// endpoint takes no ports"
        if service_ports is not None and len(service_ports) != 1:
            yield f"{at}.address", "a unix:// endpoint needs exactly one service port"
    elif not _is_ip(address):
        if mode == "static":
            yield f"{at}.address", f"{address!r}: resolution STATIC needs an IP or unix:// path"
        elif _domain_problem(address, wildcard=False):
            yield f"{at}.address", f"{address!r} is not an IP address or a host name"
    for name, number in sorted(entry.ports.items()):
        here = f"{at}.ports[{name}]"
        if not _DNS_LABEL.match(name):
            yield from _port_name(name, here)
        elif service_ports is not None and name not in service_ports:
            yield here, f"port {name!r} is not declared in spec.ports"
        yield from _port(number, here)
    yield from _labels(entry.labels, f"{at}.labels")


# --- Gateway ----------------------------------------------------------------------------------


def _gateway(spec: Any) -> _Problems:
    assert isinstance(spec, Gateway)
    if not spec.servers:
        yield "spec.servers", "at least one server is required"
    port_names: dict[str, int] = {}
    for i, server in enumerate(spec.servers):
        at = f"spec.servers[{i}]"
        yield from _server(server, at)
        name = server.port.name
        if name in port_names:
            yield f"{at}.port.name", f"{name!r} is already used by servers[{port_names[name]}]"
        elif name:
            port_names[name] = i
    yield from _labels(spec.selector, "spec.selector")


def _server(server: Any, at: str) -> _Problems:
    if not server.hosts:
        yield f"{at}.hosts", "at least one host is required"
    for j, host in enumerate(server.hosts):
        if problem := _namespaced_host_problem(host, gateway=True):
            yield f"{at}.hosts[{j}]", problem
    unix_bind = server.bind.startswith("unix://")
    protocol = None
    if not server.HasField("port"):
        yield f"{at}.port", "is required"
    else:
        port = server.port
        if port.protocol.upper() in _PROTOCOLS:
            protocol = port.protocol.upper()
        else:
            yield from _protocol(port.protocol, f"{at}.port.protocol", required=True)
        if unix_bind and port.number:
            yield f"{at}.port.number", "must be 0 with a unix:// bind"
        elif not unix_bind:
            yield from _port(port.number, f"{at}.port.number")
        if port.target_port:
            yield f"{at}.port.targetPort", "has no effect on gateways; remove it"
        if not port.name:
            yield f"{at}.port.name", "is required"
    if unix_bind:
        if problem := _unix_path_problem(server.bind.removeprefix("unix://")):
            yield f"{at}.bind", problem
    elif server.bind and not _is_ip(server.bind):
        yield f"{at}.bind", f"{server.bind!r} is not an IP address or unix:// path"
    has_tls = server.HasField("tls")
    if has_tls:
        yield from _server_tls(server.tls, f"{at}.tls")
    if protocol is None:
        return
    tls = server.tls
    if protocol in _TLS_PROTOCOLS and not has_tls:
        yield f"{at}.tls", f"is required for {protocol} servers"
    elif protocol not in _TLS_PROTOCOLS and has_tls:
        passthrough = ServerTLSSettings.TLSmode.Name(tls.mode) in (
            "PASSTHROUGH",
            "AUTO_PASSTHROUGH",
        )
        certificates = tls.server_certificate or tls.private_key or tls.ca_certificates
        if protocol not in _HTTP_PROTOCOLS:
            yield f"{at}.tls", f"is not allowed on {protocol} servers (only HTTPS and TLS)"
        elif not passthrough or certificates:
            yield f"{at}.tls", "plain-text HTTP servers may only set httpsRedirect"
    if tls.https_redirect and protocol not in _HTTP_PROTOCOLS:
        yield f"{at}.tls.httpsRedirect", f"only applies to HTTP servers, not {protocol}"


def _server_tls(tls: Any, at: str) -> _Problems:
    mode = ServerTLSSettings.TLSmode.Name(tls.mode)
    files = (
        ("serverCertificate", tls.server_certificate),
        ("privateKey", tls.private_key),
        ("caCertificates", tls.ca_certificates),
        ("credentialName", tls.credential_name),
    )
    if mode == "ISTIO_MUTUAL":
        for json_name, value in files:
            if value:
                yield f"{at}.{json_name}", "must not be set with ISTIO_MUTUAL (istio provides it)"
        return
    if mode in ("SIMPLE", "MUTUAL", "OPTIONAL_MUTUAL") and not tls.credential_name:
        needed: tuple[str, ...] = ("serverCertificate", "privateKey")
        needed += () if mode == "SIMPLE" else ("caCertificates",)
        for json_name, value in files:
            if json_name in needed and not value:
                yield f"{at}.{json_name}", f"is required for {mode} (or set credentialName)"
        if mode == "SIMPLE" and tls.ca_crl:
            yield f"{at}.caCrl", "is not supported with SIMPLE"
    versions = ServerTLSSettings.TLSProtocol
    low, high = tls.min_protocol_version, tls.max_protocol_version
    if low and high and high < low:
        yield (
            f"{at}.maxProtocolVersion",
            (f"{versions.Name(high)} is below minProtocolVersion {versions.Name(low)}"),
        )


def _namespaced_host_problem(value: str, *, gateway: bool) -> str | None:
    """A Gateway server host (`[namespace/]host`) or a Sidecar egress host (`namespace/host`)."""
    namespace, slash, host = value.partition("/")
    if not slash:
        if not gateway:
            return f"{value!r}: expected namespace/host, like ./*, istio-system/* or */foo.com"
        host = value
    elif not namespace or not host:
        return f"{value!r}: namespace and host must not be empty"
    elif namespace not in ("*", ".", *(() if gateway else ("~",))) and not _DNS_LABEL.match(
        namespace
    ):
        return f"{value!r}: namespace {namespace!r} is not '*', '.' or a DNS-1123 label"
    if host == "*":
        return None
    if "*" in host and not host.startswith("*."):
        return f"{value!r}: partial wildcards are not allowed; use '*' or '*.domain'"
    if "." not in host:
        return f"{value!r}: short names are not allowed; use a fully qualified name or '*'"
    problem = _domain_problem(host)
    if problem and not (gateway and _is_ip(host)):
        return problem
    return None


# --- Sidecar ----------------------------------------------------------------------------------


def _sidecar(spec: Any) -> _Problems:
    assert isinstance(spec, Sidecar)
    configured = ("outbound_traffic_policy", "inbound_connection_pool")
    if not (spec.ingress or spec.egress or any(spec.HasField(name) for name in configured)):
        yield (
            "spec",
            "is empty; set ingress, egress, outboundTrafficPolicy or inboundConnectionPool",
        )
    if spec.HasField("workload_selector"):
        yield from _selector(spec.workload_selector.labels, "spec.workloadSelector.labels")
    ports: dict[int, int] = {}
    for i, ingress in enumerate(spec.ingress):
        at = f"spec.ingress[{i}]"
        if not ingress.HasField("port"):
            yield f"{at}.port", "is required"
            continue
        yield from _sidecar_port(ingress.port, f"{at}.port")
        yield from _port(ingress.port.number, f"{at}.port.number")
        number = ingress.port.number
        if number in ports:
            yield f"{at}.port.number", f"port {number} is already used by ingress[{ports[number]}]"
        ports.setdefault(number, i)
        if ingress.bind and not _is_ip(ingress.bind):
            yield f"{at}.bind", f"{ingress.bind!r} is not an IP address"
        if ingress.default_endpoint:
            yield from _default_endpoint(ingress.default_endpoint, f"{at}.defaultEndpoint")
        if ingress.HasField("tls"):
            yield from _sidecar_tls(ingress.tls, f"{at}.tls")
        if ingress.HasField("connection_pool"):
            yield from _connection_pool(ingress.connection_pool, f"{at}.connectionPool")
    if spec.HasField("inbound_connection_pool"):
        yield from _connection_pool(spec.inbound_connection_pool, "spec.inboundConnectionPool")
    yield from _sidecar_egress(spec)
    if spec.HasField("outbound_traffic_policy"):
        yield from _outbound_traffic_policy(spec.outbound_traffic_policy)


def _sidecar_egress(spec: Sidecar) -> _Problems:
    ports: dict[int, int] = {}
    sockets: set[str] = set()
    catch_all = None
    for i, egress in enumerate(spec.egress):
        at = f"spec.egress[{i}]"
        if not egress.HasField("port"):
            if catch_all is not None:
                yield (
                    f"{at}.port",
                    f"only one listener may omit the port (egress[{catch_all}] does)",
                )
            elif i != len(spec.egress) - 1:
                yield f"{at}.port", "the egress listener without a port must be the last one"
            catch_all = i if catch_all is None else catch_all
        else:
            port = egress.port
            yield from _sidecar_port(port, f"{at}.port")
            if port.number == 0:
                if not egress.bind.startswith("unix://"):
                    yield f"{at}.port.number", "port 0 needs a unix:// bind"
                else:
                    if problem := _unix_path_problem(egress.bind.removeprefix("unix://")):
                        yield f"{at}.bind", problem
                    if egress.bind in sockets:
                        yield f"{at}.bind", f"{egress.bind!r} is already used"
                    sockets.add(egress.bind)
                    if CaptureMode.Name(egress.capture_mode) not in ("DEFAULT", "NONE"):
                        yield f"{at}.captureMode", "must be DEFAULT or NONE for unix:// listeners"
            else:
                yield from _port(port.number, f"{at}.port.number")
                if port.number in ports:
                    yield (
                        f"{at}.port.number",
                        (f"port {port.number} is already used by egress[{ports[port.number]}]"),
                    )
                ports.setdefault(port.number, i)
                if egress.bind and not _is_ip(egress.bind):
                    yield f"{at}.bind", f"{egress.bind!r} is not an IP address or unix:// path"
        if not egress.hosts:
            yield f"{at}.hosts", "at least one host is required"
        for j, host in enumerate(egress.hosts):
            if problem := _namespaced_host_problem(host, gateway=False):
                yield f"{at}.hosts[{j}]", problem


def _sidecar_port(port: Any, at: str) -> _Problems:
    if port.name:
        yield from _port_name(port.name, f"{at}.name")
    yield from _protocol(port.protocol, f"{at}.protocol")
    if port.target_port:
        yield f"{at}.targetPort", "has no effect on sidecars; remove it"


def _default_endpoint(endpoint: str, at: str) -> _Problems:
    if endpoint.startswith("unix://"):
        if problem := _unix_path_problem(endpoint.removeprefix("unix://")):
            yield at, problem
        return
    host, colon, port = endpoint.rpartition(":")
    if not colon or host.strip("[]") not in ("", "127.0.0.1", "0.0.0.0", "::1", "::"):
        yield at, "must be 127.0.0.1:<port>, 0.0.0.0:<port>, [::1]:<port>, [::]:<port> or unix://"
    elif not port.isdigit() or not 1 <= int(port) <= 65535:
        yield at, f"port {port!r} is not a number from 1 to 65535"


def _sidecar_tls(tls: Any, at: str) -> _Problems:
    mode = ServerTLSSettings.TLSmode.Name(tls.mode)
    if mode in ("ISTIO_MUTUAL", "AUTO_PASSTHROUGH"):
        yield f"{at}.mode", f"{mode} is not allowed on sidecar ingress"
    if tls.subject_alt_names:
        yield f"{at}.subjectAltNames", "is not supported on sidecar ingress"
    if tls.https_redirect:
        yield f"{at}.httpsRedirect", "is not supported on sidecar ingress"
    if tls.credential_name:
        yield f"{at}.credentialName", "is not supported on sidecar ingress"
    if mode != "ISTIO_MUTUAL":
        yield from _server_tls(tls, at)


def _outbound_traffic_policy(policy: Any) -> _Problems:
    at = "spec.outboundTrafficPolicy.egressProxy"
    if not policy.HasField("egress_proxy"):
        return
    if OutboundTrafficPolicy.Mode.Name(policy.mode) != "ALLOW_ANY":
        yield at, "needs mode ALLOW_ANY"
        return
    proxy = policy.egress_proxy
    if problem := _domain_problem(proxy.host, wildcard=False):
        yield f"{at}.host", problem
    if not proxy.HasField("port"):
        yield f"{at}.port", "is required"
    else:
        yield from _port(proxy.port.number, f"{at}.port.number")
    if proxy.subset and not _DNS_LABEL.match(proxy.subset):
        yield f"{at}.subset", f"{proxy.subset!r} is not a DNS-1123 label"


# --- PeerAuthentication and AuthorizationPolicy -----------------------------------------------


def _peer_authentication(spec: Any) -> _Problems:
    assert isinstance(spec, PeerAuthentication)
    if spec.port_level_mtls and not spec.selector.match_labels:
        yield "spec.portLevelMtls", "needs a selector with matchLabels (port mTLS is per workload)"
    for port in sorted(spec.port_level_mtls):
        yield from _port(port, f"spec.portLevelMtls[{port}]")
    if spec.HasField("selector"):
        yield from _selector(spec.selector.match_labels, "spec.selector.matchLabels")


def _authorization_policy(spec: Any) -> _Problems:
    assert isinstance(spec, AuthorizationPolicy)
    targets = [spec.HasField("selector"), spec.HasField("targetRef"), bool(spec.targetRefs)]
    if sum(targets) > 1:
        yield "spec", "set only one of selector, targetRef, targetRefs"
    if spec.HasField("selector"):
        yield from _selector(spec.selector.match_labels, "spec.selector.matchLabels")
    references = [("spec.targetRef", spec.targetRef)] if spec.HasField("targetRef") else []
    references += [(f"spec.targetRefs[{i}]", ref) for i, ref in enumerate(spec.targetRefs)]
    for at, ref in references:
        if not ref.name:
            yield f"{at}.name", "is required"
        if ref.namespace:
            yield f"{at}.namespace", "must not be set; cross-namespace references are unsupported"
    action = AuthorizationPolicy.Action.Name(spec.action)
    if action in ("CUSTOM", "DENY") and not spec.rules:
        yield "spec.rules", f"{action} without rules never applies; add an empty rule {{}}"
    if action == "CUSTOM":
        if spec.rules and not spec.provider.name:
            yield "spec.provider.name", "is required for action CUSTOM"
        yield from _custom_rules(spec)
    elif spec.HasField("provider"):
        yield "spec.provider", f"is only allowed with action CUSTOM, not {action}"
    for i, rule in enumerate(spec.rules):
        yield from _authorization_rule(rule, f"spec.rules[{i}]")


def _custom_rules(spec: AuthorizationPolicy) -> _Problems:
    """What the external authorizer of a CUSTOM policy cannot be asked to match on."""
    unsupported = ("principals", "not_principals", "request_principals",
                   "not_request_principals", "namespaces", "not_namespaces")  # fmt: skip
    for i, rule in enumerate(spec.rules):
        for j, source in enumerate(getattr(rule, "from")):
            for fd in source.source.DESCRIPTOR.fields:
                if fd.name in unsupported and getattr(source.source, fd.name):
                    yield (f"spec.rules[{i}].from[{j}].source.{fd.json_name}",
                           "is not supported with action CUSTOM")  # fmt: skip
        for k, condition in enumerate(rule.when):
            key = condition.key
            if key in ("source.namespace", "source.principal") or key.startswith("request.auth."):
                yield f"spec.rules[{i}].when[{k}].key", f"{key!r} is not supported with CUSTOM"


def _authorization_rule(rule: Any, at: str) -> _Problems:
    for j, clause in enumerate(getattr(rule, "from")):
        here = f"{at}.from[{j}].source"
        if not clause.HasField("source"):
            yield here, "is required"
            continue
        yield from _rule_fields(clause.source, here, "source")
    for j, clause in enumerate(rule.to):
        here = f"{at}.to[{j}].operation"
        if not clause.HasField("operation"):
            yield here, "is required"
            continue
        yield from _rule_fields(clause.operation, here, "operation")
    for k, condition in enumerate(rule.when):
        yield from _condition(condition, f"{at}.when[{k}]")


def _rule_fields(message: Any, at: str, what: str) -> _Problems:
    fields = [(fd.json_name, list(getattr(message, fd.name))) for fd in message.DESCRIPTOR.fields]
    if not any(values for _, values in fields):
        yield at, f"an empty {what} matches nothing; set at least one field"
    for json_name, values in fields:
        for k, value in enumerate(values):
            here = f"{at}.{json_name}[{k}]"
            if not value:
                yield here, "must not be empty"
            elif json_name.lower().endswith("ipblocks") and not _is_ip_or_cidr(value):
                yield here, f"{value!r} is not an IP address or CIDR block"
            elif json_name in ("ports", "notPorts") and not _is_port_string(value):
                yield here, f"{value!r} is not a port number from 0 to 65535"
            elif json_name in ("paths", "notPaths") and _bad_path_template(value):
                yield here, f"{value!r}: path templates may only use {{*}} and {{**}} segments"
            elif (
                json_name in ("principals", "notPrincipals")
                and (problem := _principal_problem(value))
            ) or (
                json_name in ("namespaces", "notNamespaces")
                and (problem := _wildcard_problem(value, "namespace"))
            ):
                yield here, problem


_PRINCIPAL = re.compile(r"^[^/*]+/ns/[^/*]+/sa/[^/*]+$")


def _wildcard_problem(value: str, what: str) -> str | None:
    """Istio's string matching: exact, `*`, a `prefix*` or a `*suffix`; nothing else."""
    if value == "*":
        return None
    inner = value[1:] if value.startswith("*") else value[:-1] if value.endswith("*") else value
    if "*" in inner:
        return f"{value!r}: a {what} may only have a leading or trailing '*'"
    return None


def _principal_problem(value: str) -> str | None:
    """Principals are SPIFFE ids without the scheme: `<trust domain>/ns/<ns>/sa/<account>`."""
    if value.startswith("spiffe://"):
        return (
            f"{value!r}: write principals without 'spiffe://' (as <trust domain>/ns/<ns>/sa/<sa>)"
        )
    if problem := _wildcard_problem(value, "principal"):
        return problem
    if "*" not in value and not _PRINCIPAL.match(value):
        return (
            f"{value!r} is not a principal of the form <trust domain>/ns/<namespace>/sa/<account>"
        )
    return None


def _condition(condition: Any, at: str) -> _Problems:
    key = condition.key
    if not key:
        yield f"{at}.key", "is required"
        return
    if not condition.values and not condition.not_values:
        yield at, f"needs values or notValues for {key!r}"
    if problem := _condition_key_problem(key):
        yield f"{at}.key", problem
        return
    for json_name, values in (("values", condition.values), ("notValues", condition.not_values)):
        for k, value in enumerate(values):
            here = f"{at}.{json_name}[{k}]"
            if not value:
                yield here, "must not be empty"
            elif key in ("source.ip", "remote.ip", "destination.ip") and not _is_ip_or_cidr(value):
                yield here, f"{value!r} is not an IP address or CIDR block"
            elif key == "destination.port" and not _is_port_string(value):
                yield here, f"{value!r} is not a port number from 0 to 65535"


def _condition_key_problem(key: str) -> str | None:
    """istiod's attribute table for `when` keys."""
    if key.startswith(("request.headers", "request.auth.claims", "experimental.envoy.filters.")):
        open_at = key.find("[")
        if not (key.endswith("]") and 0 < open_at < len(key) - 2):
            return f"{key!r}: expected name[key], like request.headers[x-token]"
        return None
    known = {
        "source.ip", "remote.ip", "source.namespace", "source.principal",
        "request.auth.principal", "request.auth.audiences", "request.auth.presenter",
        "destination.ip", "destination.port", "connection.sni",
    }  # fmt: skip
    if key in known:
        return None
    if key == "destination.namespace":
        return "destination.namespace is replaced by the policy's metadata.namespace"
    if key.startswith("destination.labels"):
        return "destination.labels is replaced by the workload selector"
    if key in ("destination.name", "destination.user"):
        return f"{key} is only supported in the v1alpha1 API"
    return f"unknown attribute {key!r} (like source.ip, request.headers[name], connection.sni)"


def _bad_path_template(path: str) -> bool:
    if "{*}" not in path and "{**}" not in path:
        return False
    return bool(re.search(r"/\{\w+=\*\*?\}|\{\w*\}|/\*\*?|\*\*?/", path))


def _is_port_string(value: str) -> bool:
    return value.isdigit() and int(value) <= 65535


# --- Shared helpers ---------------------------------------------------------------------------


def _positive(duration: Any, at: str) -> _Problems:
    if duration.seconds < 0 or (duration.seconds == 0 and duration.nanos < 1_000_000):
        yield at, "must be at least 1ms"
    elif duration.nanos % 1_000_000:
        yield at, "must be whole milliseconds"


def _port(number: int, at: str) -> _Problems:
    if not 1 <= number <= 65535:
        yield at, f"port {number} is out of range; expected 1 to 65535"


def _port_name(name: str, at: str) -> _Problems:
    if not name:
        yield at, "is required: a DNS-1123 label such as http-web"
    elif not _DNS_LABEL.match(name):
        yield at, f"{name!r} is not a valid port name (a DNS-1123 label such as http-web)"


def _protocol(protocol: str, at: str, *, required: bool = False) -> _Problems:
    if not protocol and required:
        yield at, f"is required: one of {_PROTOCOL_LIST}"
    elif protocol and protocol.upper() not in _PROTOCOLS:
        yield at, f"unknown protocol {protocol!r}; expected one of {_PROTOCOL_LIST}"


def _labels(labels: Mapping[str, str], at: str) -> _Problems:
    for key, value in sorted(labels.items()):
        match = _LABEL_KEY.match(key)
        too_long = match is not None and (
            len(match.group(2)) > 63 or len(match.group(1) or "") > 253
        )
        if match is None or too_long:
            yield f"{at}[{key}]", f"{key!r} is not a valid label key ([prefix/]name)"
        if not _LABEL_VALUE.match(value):
            yield f"{at}[{key}]", f"{value!r} is not a valid label value"


def _selector(labels: Mapping[str, str], at: str) -> _Problems:
    for key, value in sorted(labels.items()):
        if not key:
            yield f"{at}[]", "label key must not be empty"
        elif "*" in key or "*" in value:
            yield f"{at}[{key}]", "wildcards are not supported in selectors"


def _domain_problem(name: str, *, wildcard: bool = True) -> str | None:
    """Why `name` is not a DNS name (a wildcard allowed as the leftmost label), or None."""
    if not name:
        return "must not be empty"
    if len(name) > 255:
        return f"{name[:20]!r}... is longer than 255 characters"
    labels = name.split(".")
    if len(labels) > 1 and not labels[-1]:
        labels.pop()  # a trailing dot: an unambiguous name like `istio.io.`
    for position, label in enumerate(labels):
        if wildcard and position == 0 and label.startswith("*"):
            if len(label) > 63 or not _WILDCARD_LABEL_RE.match(label):
                return f"{name!r}: {label!r} is not a valid wildcard label"
        elif "*" in label:
            return f"{name!r}: a wildcard is only allowed as the leftmost label (*.example.com)"
        elif not label:
            return f"{name!r}: empty label between dots"
        elif len(label) > 63 or not _HOST_LABEL_RE.match(label):
            return f"{name!r}: {label!r} is not a valid DNS label"
    if len(labels) > 1 and labels[-1].isdigit():
        return f"{name!r}: the top-level label must not be all digits"
    return None


def _hosts_overlap(a: str, b: str) -> bool:
    """istiod's host.Name.Matches: equal, or one's wildcard covers the other."""
    return (
        a == b
        or (a.startswith("*") and b.endswith(a[1:]))
        or (b.startswith("*") and a.endswith(b[1:]))
    )


def _host_subset(host: str, of: str) -> bool:
    """istiod's host.Name.SubsetOf: every name `host` matches, `of` matches too."""
    if host.startswith("*"):
        return of.startswith("*") and host[1:].endswith(of[1:])
    return host.endswith(of[1:]) if of.startswith("*") else host == of


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def _is_ip_or_cidr(value: str) -> bool:
    if value.count("/") != 1:
        return _is_ip(value)
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        return False
    return True


def _unix_path_problem(path: str) -> str | None:
    if not path:
        return "unix:// needs a socket path"
    if path.startswith("@"):
        return None  # an abstract socket
    if not path.startswith("/") or path.endswith("/"):
        return f"{path!r} is not an absolute path to a socket file"
    return None


def _is_prime(number: int) -> bool:
    if number < 4:
        return number > 1
    if number % 2 == 0:
        return False
    return all(number % factor for factor in range(3, int(number**0.5) + 1, 2))


# --- RE2 --------------------------------------------------------------------------------------

_PERL_ONLY_GROUPS = (
    ("(?=", "lookahead"),
    ("(?!", "negative lookahead"),
    ("(?<=", "lookbehind"),
    ("(?<!", "negative lookbehind"),
    ("(?>", "atomic group"),
    ("(?(", "conditional group"),
    ("(?P=", "named backreference"),
    ("(?P>", "recursion"),
    ("(?#", "comment group"),
)
_REPEAT = re.compile(r"\{(\d+)(?:,(\d*))?\}")
_FLAG_GROUP = re.compile(r"\(\?([A-Za-z-]*)([:)])")


def _re2_problem(pattern: str) -> str | None:
    """Why RE2 (Envoy's regex engine) would refuse `pattern`, or None.

    Constructs Python's `re` accepts but RE2 lacks are refused first; RE2-only syntax (`\\z`,
    `\\pL`, `\\Q..\\E`, `(?U)`, ...) is rewritten to a Python equivalent; then `re` checks the rest.
    """
    if not pattern:
        return "regex must not be empty"
    if len(pattern) > _RE2_MAX_LENGTH:
        return f"regex is {len(pattern)} characters; at most {_RE2_MAX_LENGTH} are allowed"
    try:
        python = _as_python_regex(pattern)
    except ValueError as error:
        return str(error)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "possible nested set" for RE2's [[:alpha:]]
        try:
            re.compile(python)
        except re.error as error:
            return f"not a valid RE2 regex: {error.msg}"
    return None


def _as_python_regex(pattern: str) -> str:
    """`pattern` rewritten for Python's `re`; ValueError for what RE2 does not support."""
    out: list[str] = []
    i, in_class = 0, False
    while i < len(pattern):
        char = pattern[i]
        if char == "\\":
            text, i = _re2_escape(pattern, i)
            out.append(text)
        elif in_class:
            end = pattern.find(":]", i + 2) if pattern.startswith("[:", i) else -1
            if end > 0:
                out.append("a")  # a POSIX class such as [:alpha:]
                i = end + 2
            else:
                in_class = char != "]"
                out.append(char)
                i += 1
        elif char == "[":
            in_class = True
            start = i + 1 + pattern.startswith("^", i + 1)
            leading = pattern.startswith("]", start)  # a leading ']' is a member
            out.append(pattern[i:start] + ("\\]" if leading else ""))
            i = start + leading
        elif pattern.startswith("(?", i):
            text, i = _re2_group(pattern, i)
            out.append(text)
        elif char in "*+?" or (char == "{" and _REPEAT.match(pattern, i)):
            repeat = _REPEAT.match(pattern, i) if char == "{" else None
            if repeat is not None:
                for count in repeat.groups():
                    if count and int(count) > _RE2_MAX_REPEAT:
                        raise ValueError(f"repeat count {count} exceeds RE2's limit of 1000")
            end = repeat.end() if repeat is not None else i + 1
            if pattern.startswith("+", end):
                raise ValueError(f"possessive quantifier {pattern[i : end + 1]!r} is not in RE2")
            lazy = pattern.startswith("?", end)
            out.append(pattern[i : end + lazy])
            i = end + lazy
        else:
            out.append(char)
            i += 1
    return "".join(out)


def _re2_escape(pattern: str, i: int) -> tuple[str, int]:
    """The Python text for the escape at `pattern[i]`, and where the escape ends."""
    escape = pattern[i + 1 : i + 2]
    digits = re.match(r"[0-9]*", pattern[i + 1 :])
    number = digits.group() if digits else ""
    if escape in "123456789" and escape and (len(number) == 1 or escape in "89"):
        raise ValueError(f"backreference \\{escape} is not supported by RE2")
    if escape and escape in "01234567":
        octal = re.match(r"[0-7]{1,3}", pattern[i + 1 :])
        assert octal is not None
        return f"\\u{int(octal.group(), 8):04x}", i + 1 + len(octal.group())
    if escape == "Z":
        raise ValueError("\\Z is not supported by RE2; use \\z")
    if escape in ("u", "U", "N"):
        raise ValueError(f"\\{escape} escapes are not supported by RE2; use \\x{{...}}")
    if escape == "z":
        return "\\Z", i + 2
    if escape == "C":
        return ".", i + 2
    if escape in ("p", "P") or (escape == "x" and pattern.startswith("{", i + 2)):
        if not pattern.startswith("{", i + 2):
            return "a", i + 3  # a one-letter Unicode class such as \pL
        end = pattern.find("}", i + 2)
        if end < 0:
            raise ValueError(f"missing '}}' after \\{escape}{{")
        return "a", end + 1
    if escape == "Q":
        end = pattern.find("\\E", i + 2)
        stop = len(pattern) if end < 0 else end
        return re.escape(pattern[i + 2 : stop]), len(pattern) if end < 0 else end + 2
    return pattern[i : i + 2], i + 2


def _re2_group(pattern: str, i: int) -> tuple[str, int]:
    """The Python text for the `(?...` group opening at `pattern[i]`, and where it ends."""
    for prefix, what in _PERL_ONLY_GROUPS:
        if pattern.startswith(prefix, i):
            raise ValueError(f"{what} {prefix} is not supported by RE2")
    if pattern.startswith("(?P<", i):
        return "(?P<", i + 4
    if pattern.startswith("(?<", i):
        return "(?P<", i + 3  # RE2 accepts (?<name>...) like (?P<name>...)
    flags = _FLAG_GROUP.match(pattern, i)
    if flags is None:
        return "(?", i + 2  # let `re` say what is wrong
    letters, end = flags.groups()
    if unknown := sorted(set(letters) - set("imsU-")):
        raise ValueError(f"flag {unknown[0]!r} is not supported by RE2 (only i, m, s, U)")
    if (end == ")" and not letters) or letters.endswith("-") or letters.count("-") > 1:
        raise ValueError(f"invalid flag group {flags.group()!r}")
    # Flags do not change what parses: a scoped group becomes plain, a global one disappears.
    return ("(?:" if end == ":" else ""), flags.end()
