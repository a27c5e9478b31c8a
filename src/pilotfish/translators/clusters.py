"""Outbound clusters for one service port, shaped by its DestinationRule, as istiod builds them.

`outbound|<port>||<host>` plus one `outbound|<port>|<subset>|<host>` per subset. Subsets are
separate clusters whose endpoints are filtered by label on the server side (EDS resources named
after the subset cluster, built by `pilotfish.translators.endpoints`), never Envoy's subset load
balancer.

What the traffic policy becomes:

- cluster type from the service's resolution: STATIC -> EDS over ADS; DNS -> STRICT_DNS and
  DNS_ROUND_ROBIN -> LOGICAL_DNS with an inline load assignment; NONE -> ORIGINAL_DST.
- Istio's defaults: connect timeout 10s, circuit breakers open to 2^32-1, LEAST_REQUEST,
  locality weighted load balancing (localities carry weights in every load assignment).
- loadBalancer, connectionPool, outlierDetection, tls and proxyProtocol as istiod applies them.

Done elsewhere: locality failover priorities and locality weights of EDS clusters live in the
load assignments (`endpoints.cluster_load_assignment`); consistent-hash keys are route hash
policies (`route_hash_policy`, used by the route translators); `tunnel` configures the TCP proxy
of a listener, not the cluster; `localityLbSetting.distribute` weights go into the load
assignments too (`distribution`). Not done: Istio's auto mTLS (an unset `tls` means plaintext).
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from envoy.config.cluster.v3.circuit_breaker_pb2 import CircuitBreakers
from envoy.config.cluster.v3.cluster_pb2 import Cluster, UpstreamConnectionOptions
from envoy.config.cluster.v3.outlier_detection_pb2 import OutlierDetection
from envoy.config.core.v3.address_pb2 import TcpKeepalive
from envoy.config.core.v3.base_pb2 import DataSource, RuntimeDouble, TransportSocket
from envoy.config.core.v3.protocol_pb2 import (
    Http1ProtocolOptions,
    Http2ProtocolOptions,
)
from envoy.config.core.v3.protocol_pb2 import (
    HttpProtocolOptions as CommonHttpProtocolOptions,
)
from envoy.config.core.v3.proxy_protocol_pb2 import ProxyProtocolConfig
from envoy.config.route.v3.route_components_pb2 import RouteAction
from envoy.extensions.transport_sockets.proxy_protocol.v3.upstream_proxy_protocol_pb2 import (
    ProxyProtocolUpstreamTransport,
)
from envoy.extensions.transport_sockets.raw_buffer.v3.raw_buffer_pb2 import RawBuffer
from envoy.extensions.transport_sockets.tls.v3.common_pb2 import (
    CertificateValidationContext,
    SubjectAltNameMatcher,
    TlsCertificate,
    TlsParameters,
)
from envoy.extensions.transport_sockets.tls.v3.secret_pb2 import SdsSecretConfig
from envoy.extensions.transport_sockets.tls.v3.tls_pb2 import UpstreamTlsContext
from envoy.extensions.upstreams.http.v3.http_protocol_options_pb2 import HttpProtocolOptions
from envoy.type.matcher.v3.string_pb2 import StringMatcher
from envoy.type.v3.percent_pb2 import Percent
from google.protobuf.any_pb2 import Any as AnyProto
from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import Message

from pilotfish.bounded import Bounded
from pilotfish.cache import Encoded
from pilotfish.protos import ENDPOINT_TYPE, references, wire
from pilotfish.protos.istio.networking.v1alpha3.destination_rule_pb2 import (
    ClientTLSSettings,
    ConnectionPoolSettings,
    LoadBalancerSettings,
    TrafficPolicy,
)
from pilotfish.registry import Endpoint, Registry, Service, ServicePort
from pilotfish.translators.build import ads_config_source
from pilotfish.translators.endpoints import cluster_load_assignment, distribution_for
from pilotfish.translators.index import MergedRule
from pilotfish.translators.naming import (
    ROOT_CA_SECRET,
    WORKLOAD_SECRET,
    cluster_name,
    spiffe_id,
    tls_sni,
)
from pilotfish.translators.proxy import Proxy
from pilotfish.translators.version import stamp, stamp_bytes

TLS_MODE_LABEL = "security.istio.io/tlsMode"
"""The endpoint label that says a workload has a sidecar terminating mutual TLS."""

__all__ = [
    "TLS_MODE_LABEL",
    "distribution",
    "effective_policy",
    "locality_failover",
    "outbound_clusters",
    "route_hash_policy",
    "upstream_tls",
]

HTTP_PROTOCOL_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
TLS_TRANSPORT_SOCKET = "envoy.transport_sockets.tls"
PROXY_PROTOCOL_TRANSPORT_SOCKET = "envoy.transport_sockets.upstream_proxy_protocol"
RAW_BUFFER_TRANSPORT_SOCKET = "envoy.transport_sockets.raw_buffer"

ISTIO_ALPN = ("istio-peer-exchange", "istio")
"""ALPN of in-mesh mTLS (ISTIO_MUTUAL) connections; `h2` is added for HTTP/2 clusters."""

CREDENTIAL_CA_SUFFIX = "-cacert"
"""Istio's convention: the CA of credential `<name>` is the SDS secret `<name>-cacert`."""

CONNECT_TIMEOUT = Duration(seconds=10)
UNLIMITED = 2**32 - 1
"""Istio's circuit breaker defaults: effectively no limit."""

SLOW_START_AGGRESSION_KEY = "upstream.slow_start.aggression"

_HTTP2_PROTOCOLS = frozenset({"HTTP2", "GRPC", "GRPC-WEB"})
_POLICY_FIELDS = ("load_balancer", "connection_pool", "outlier_detection", "tls")
"""The fields a port-level policy replaces wholesale (omitted ones fall back to defaults)."""
_EXTRA_FIELDS = ("tunnel", "proxy_protocol", "retry_budget")
"""Fields only a subset can override (port-level settings do not have them)."""

_LB = LoadBalancerSettings
_HTTP = ConnectionPoolSettings.HTTPSettings


# -- the merged policy -------------------------------------------------------------------------


def _for_port(policy: TrafficPolicy, port: int) -> tuple[TrafficPolicy, bool]:
    """`policy` without its port-level list, with the entry for `port` applied (wholesale);
    whether there was such an entry."""
    out = TrafficPolicy()
    for name in (*_POLICY_FIELDS, *_EXTRA_FIELDS):
        if policy.HasField(name):
            getattr(out, name).CopyFrom(getattr(policy, name))
    chosen = next((p for p in policy.port_level_settings if p.port.number == port), None)
    if chosen is None:
        return out, False
    for name in _POLICY_FIELDS:
        out.ClearField(name)
        if chosen.HasField(name):
            getattr(out, name).CopyFrom(getattr(chosen, name))
    return out, True


def effective_policy(rule: MergedRule | None, port: int, subset: str = "") -> TrafficPolicy:
    """Istio's merge: the rule's top-level policy, overridden field by field (loadBalancer,
    connectionPool, outlierDetection, tls, tunnel, proxyProtocol) by the subset's policy, then by
    the matching portLevelSettings entry (subset's port-level first if present, else the
    top-level port-level). Returns a new TrafficPolicy (empty when no rule).

    As in istiod (`MergeSubsetTrafficPolicy`): a port-level entry replaces loadBalancer,
    connectionPool, outlierDetection and tls wholesale (what it omits falls back to defaults, as
    the DestinationRule reference says); the top-level port-level entry applies first, then the
    subset's fields override it, and a subset port-level entry replaces all four fields. Unlike
    istiod, a top-level port-level entry keeps the rule's tunnel and proxyProtocol.

    The policy returned may be shared (recently made ones are kept: a cluster, its load
    assignment and the routes to it all ask): do not modify it.
    """
    return _effective(rule, port, subset)[0]


def _effective(rule: MergedRule | None, port: int, subset: str) -> tuple[TrafficPolicy, bytes]:
    """`effective_policy` and its deterministic bytes (a cluster's template is found by them:
    serialized once per policy, not once per cluster)."""
    if rule is None or _without_policy(rule, subset):
        return _NO_POLICY_BYTES  # most rules set no policy: nothing to merge, nothing to keep
    key = (id(rule), port, subset)
    found = _POLICIES.get(key)
    if found is None:
        # The rule is kept with its policy, so its id stays its own while the entry exists.
        policy = _merged_policy(rule, port, subset)
        found = _POLICIES.put(key, (rule, policy, policy.SerializeToString(deterministic=True)))
    return found[1], found[2]


_NO_POLICY = TrafficPolicy()
_NO_POLICY_BYTES = (_NO_POLICY, b"")  # an empty message's bytes


def _without_policy(rule: MergedRule, subset: str) -> bool:
    """Whether neither the rule nor the subset sets a traffic policy (merging gives none)."""
    if rule.has_policy:
        return False
    chosen = rule.subset(subset) if subset else None
    return chosen is None or not chosen.HasField("traffic_policy")


_POLICIES: Bounded[tuple[int, int, str], tuple[MergedRule, TrafficPolicy, bytes]] = Bounded(4096)


def _merged_policy(rule: MergedRule, port: int, subset: str) -> TrafficPolicy:
    merged, _ = _for_port(rule.traffic_policy, port)
    chosen = rule.subset(subset) if subset else None
    if chosen is None or not chosen.HasField("traffic_policy"):
        return merged
    override, port_level = _for_port(chosen.traffic_policy, port)
    for name in _POLICY_FIELDS:
        if override.HasField(name) or port_level:
            merged.ClearField(name)
            if override.HasField(name):
                getattr(merged, name).CopyFrom(getattr(override, name))
    for name in _EXTRA_FIELDS:
        if override.HasField(name):
            getattr(merged, name).CopyFrom(getattr(override, name))
    return merged


# -- route hash policies -----------------------------------------------------------------------


def route_hash_policy(
    rule: MergedRule | None, port: int, subset: str = ""
) -> list[RouteAction.HashPolicy]:
    """Consistent-hash settings of the effective policy as Envoy route hash policies
    (httpHeaderName -> header, httpCookie -> cookie with name/path/ttl, useSourceIp ->
    connection_properties.source_ip, httpQueryParameterName -> query_parameter); empty when not
    consistent hash."""
    if rule is None or not rule.may_hash:
        return []  # the common case (no consistent hash in the rule at all), told at a glance
    lb = effective_policy(rule, port, subset).load_balancer
    if not lb.HasField("consistent_hash"):
        return []
    hashing = lb.consistent_hash
    key = hashing.WhichOneof("hash_key")
    policy = RouteAction.HashPolicy()
    if key == "http_header_name":
        policy.header.header_name = hashing.http_header_name
    elif key == "http_cookie":
        cookie = hashing.http_cookie
        policy.cookie.name = cookie.name
        policy.cookie.path = cookie.path
        if cookie.HasField("ttl"):
            policy.cookie.ttl.CopyFrom(cookie.ttl)
        for attribute in cookie.attributes:
            policy.cookie.attributes.add(name=attribute.name, value=attribute.value)
    elif key == "use_source_ip":
        if not hashing.use_source_ip:
            return []
        policy.connection_properties.source_ip = True
    elif key == "http_query_parameter_name":
        policy.query_parameter.name = hashing.http_query_parameter_name
    else:
        return []
    return [policy]


# -- TLS ---------------------------------------------------------------------------------------


def _sds(name: str) -> SdsSecretConfig:
    return SdsSecretConfig(name=name, sds_config=ads_config_source())


def _san_matchers(names: Iterable[str]) -> list[SubjectAltNameMatcher]:
    """Exact matchers: URIs (SPIFFE identities) as URI SANs, IP literals as IP SANs, the rest as
    DNS SANs."""
    matchers = []
    for name in dict.fromkeys(names):
        kind = SubjectAltNameMatcher.DNS
        if "://" in name:
            kind = SubjectAltNameMatcher.URI
        else:
            try:
                ipaddress.ip_address(name)
                kind = SubjectAltNameMatcher.IP_ADDRESS
            except ValueError:
                pass
        matchers.append(SubjectAltNameMatcher(san_type=kind, matcher=StringMatcher(exact=name)))
    return matchers


def _combined_validation(common: Any, names: Sequence[str], ca_secret: str) -> None:
    """Trust from an SDS secret, plus the SANs to match (Envoy requires the default context)."""
    combined = common.combined_validation_context
    combined.default_validation_context.SetInParent()
    combined.default_validation_context.match_typed_subject_alt_names.extend(_san_matchers(names))
    combined.validation_context_sds_secret_config.CopyFrom(_sds(ca_secret))


def upstream_tls(
    tls: ClientTLSSettings, *, sni: str, subject_alt_names: Sequence[str]
) -> UpstreamTlsContext | None:
    """Envoy UpstreamTlsContext for a ClientTLSSettings (None for DISABLE/unset).

    `sni` and `subject_alt_names` are the defaults used when the settings do not name their own
    (`tls.sni`, `tls.subjectAltNames`): for ISTIO_MUTUAL the Istio SNI and the SPIFFE identities
    of the destination, for SIMPLE/MUTUAL the host and the ServiceEntry's subjectAltNames.

    - ISTIO_MUTUAL: the workload certificate is SDS secret `default`, the trust bundle SDS
      secret `ROOTCA`, both over ADS; ALPN `istio-peer-exchange`, `istio`.
    - SIMPLE / MUTUAL with `credentialName`: SDS secret `<name>` (MUTUAL) and its CA
      `<name>-cacert`, over ADS.
    - SIMPLE / MUTUAL with files: `caCertificates` (+ `caCrl`) as the trusted CA, the client
      certificate and key (MUTUAL) read by Envoy from disk. Without a CA (or with
      `insecureSkipVerify`) the server certificate is not verified: Envoy cannot check SANs
      without a trusted CA, and pilotfish runs no node agent to supply the system roots.
    """
    mode = tls.mode
    if mode == ClientTLSSettings.DISABLE:
        return None
    names = list(tls.subject_alt_names) or list(subject_alt_names)
    context = UpstreamTlsContext(sni=tls.sni or sni)
    common = context.common_tls_context
    common.tls_params.tls_minimum_protocol_version = TlsParameters.TLSv1_2
    common.tls_params.tls_maximum_protocol_version = TlsParameters.TLSv1_3
    if mode == ClientTLSSettings.ISTIO_MUTUAL:
        common.tls_certificate_sds_secret_configs.append(_sds(WORKLOAD_SECRET))
        _combined_validation(common, names, ROOT_CA_SECRET)
        common.alpn_protocols.extend(ISTIO_ALPN)
        return context
    verify = not tls.insecure_skip_verify.value
    if tls.credential_name:
        if mode == ClientTLSSettings.MUTUAL:
            common.tls_certificate_sds_secret_configs.append(_sds(tls.credential_name))
        if verify:
            _combined_validation(common, names, tls.credential_name + CREDENTIAL_CA_SUFFIX)
        return context
    if mode == ClientTLSSettings.MUTUAL and (tls.client_certificate or tls.private_key):
        certificate = TlsCertificate()
        if tls.client_certificate:
            certificate.certificate_chain.filename = tls.client_certificate
        if tls.private_key:
            certificate.private_key.filename = tls.private_key
        common.tls_certificates.append(certificate)
    if verify and tls.ca_certificates:
        validation = CertificateValidationContext(
            trusted_ca=DataSource(filename=tls.ca_certificates),
            match_typed_subject_alt_names=_san_matchers(names),
        )
        if tls.ca_crl:
            validation.crl.filename = tls.ca_crl
        common.validation_context.CopyFrom(validation)
    return context


# -- clusters ----------------------------------------------------------------------------------


def _pack(message: Message) -> AnyProto:
    packed = AnyProto()
    packed.Pack(message, deterministic=True)
    return packed


def _transport_socket(name: str, config: Message) -> TransportSocket:
    socket = TransportSocket(name=name)
    socket.typed_config.CopyFrom(_pack(config))
    return socket


def _upstream_protocol(port: ServicePort, policy: TrafficPolicy) -> str:
    """How requests go upstream, in istiod's order of precedence: `h2` when the policy upgrades
    an HTTP port, else `downstream` with useClientProtocol, else `h2` for h2 ports (HTTP2,
    GRPC, GRPC-WEB), else `http1` (and `tcp` for non-HTTP ports)."""
    if not port.is_http:
        return "tcp"
    http = policy.connection_pool.http
    if http.h2_upgrade_policy == _HTTP.UPGRADE:
        return "h2"
    if http.use_client_protocol:
        return "downstream"
    return "h2" if port.protocol in _HTTP2_PROTOCOLS else "http1"


def _http_protocol_options(port: ServicePort, policy: TrafficPolicy) -> HttpProtocolOptions | None:
    """The cluster's HTTP protocol options, or None when Envoy's defaults (HTTP/1.1) serve.

    Only HTTP ports get them: TCP proxies ignore HTTP connection pool settings.
    """
    if not port.is_http:
        return None
    pool = policy.connection_pool
    http, tcp = pool.http, pool.tcp
    common = CommonHttpProtocolOptions()
    if http.HasField("idle_timeout"):
        common.idle_timeout.CopyFrom(http.idle_timeout)
    elif tcp.HasField("idle_timeout"):
        common.idle_timeout.CopyFrom(tcp.idle_timeout)
    if http.max_requests_per_connection > 0:
        common.max_requests_per_connection.value = http.max_requests_per_connection
    if tcp.HasField("max_connection_duration"):
        common.max_connection_duration.CopyFrom(tcp.max_connection_duration)
    h2 = Http2ProtocolOptions()
    if http.max_concurrent_streams > 0:
        h2.max_concurrent_streams.value = http.max_concurrent_streams
    options = HttpProtocolOptions()
    if common.ListFields():
        options.common_http_protocol_options.CopyFrom(common)
    protocol = _upstream_protocol(port, policy)
    if protocol == "downstream":
        downstream = options.use_downstream_protocol_config
        downstream.http_protocol_options.CopyFrom(Http1ProtocolOptions())
        downstream.http2_protocol_options.CopyFrom(h2)
    elif protocol == "h2":
        options.explicit_http_config.http2_protocol_options.CopyFrom(h2)
    elif options.HasField("common_http_protocol_options"):
        options.explicit_http_config.http_protocol_options.CopyFrom(Http1ProtocolOptions())
    else:
        return None
    return options


def _circuit_breakers(policy: TrafficPolicy) -> CircuitBreakers:
    pool = policy.connection_pool
    threshold = CircuitBreakers.Thresholds(track_remaining=True)
    for field, value in (
        (threshold.max_connections, pool.tcp.max_connections),
        (threshold.max_pending_requests, pool.http.http1_max_pending_requests),
        (threshold.max_requests, pool.http.http2_max_requests),
        (threshold.max_retries, pool.http.max_retries),
    ):
        field.value = value if value > 0 else UNLIMITED
    if policy.HasField("retry_budget"):
        budget = policy.retry_budget
        if budget.HasField("percent"):
            threshold.retry_budget.budget_percent.value = budget.percent.value
        else:
            threshold.retry_budget.SetInParent()
        if budget.min_retry_concurrency:
            threshold.retry_budget.min_retry_concurrency.value = budget.min_retry_concurrency
    return CircuitBreakers(thresholds=[threshold])


def _apply_connection_pool(cluster: Any, policy: TrafficPolicy, port: ServicePort) -> None:
    tcp = policy.connection_pool.tcp
    if tcp.HasField("connect_timeout"):
        cluster.connect_timeout.CopyFrom(tcp.connect_timeout)
    if tcp.HasField("tcp_keepalive"):
        keepalive = tcp.tcp_keepalive
        options = TcpKeepalive()
        if keepalive.probes > 0:
            options.keepalive_probes.value = keepalive.probes
        if keepalive.HasField("time"):
            options.keepalive_time.value = keepalive.time.seconds
        if keepalive.HasField("interval"):
            options.keepalive_interval.value = keepalive.interval.seconds
        cluster.upstream_connection_options.CopyFrom(
            UpstreamConnectionOptions(tcp_keepalive=options)
        )
    budget = policy.retry_budget if policy.HasField("retry_budget") else None
    breakers, options = _pool_messages(
        port.protocol,
        policy.connection_pool.SerializeToString(deterministic=True),
        None if budget is None else budget.SerializeToString(deterministic=True),
    )
    cluster.circuit_breakers.CopyFrom(breakers)
    if options is not None:
        cluster.typed_extension_protocol_options[HTTP_PROTOCOL_OPTIONS].CopyFrom(options)


@functools.lru_cache(maxsize=1024)
def _pool_messages(
    protocol: str, pool: bytes, budget: bytes | None
) -> tuple[CircuitBreakers, AnyProto | None]:
    """Circuit breakers and packed HTTP protocol options, made once per distinct connection
    pool (most services share a few): a cluster copies them. Callers only copy from them."""
    policy = TrafficPolicy()
    policy.connection_pool.ParseFromString(pool)
    if budget is not None:
        policy.retry_budget.ParseFromString(budget)
    options = _http_protocol_options(ServicePort(name="", number=0, protocol=protocol), policy)
    return _circuit_breakers(policy), None if options is None else _pack(options)


def _apply_outlier_detection(cluster: Any, policy: TrafficPolicy) -> None:
    if not policy.HasField("outlier_detection"):
        return
    outlier = policy.outlier_detection
    out = OutlierDetection()
    out.enforcing_success_rate.value = 0  # success-rate ejection stays off, as in Istio
    if outlier.HasField("consecutive_5xx_errors"):
        value = outlier.consecutive_5xx_errors.value
        out.consecutive_5xx.value = value
        out.enforcing_consecutive_5xx.value = 100 if value > 0 else 0
    if outlier.HasField("consecutive_gateway_errors"):
        value = outlier.consecutive_gateway_errors.value
        out.consecutive_gateway_failure.value = value
        out.enforcing_consecutive_gateway_failure.value = 100 if value > 0 else 0
    if outlier.HasField("interval"):
        out.interval.CopyFrom(outlier.interval)
    if outlier.HasField("base_ejection_time"):
        out.base_ejection_time.CopyFrom(outlier.base_ejection_time)
    if outlier.max_ejection_percent > 0:
        out.max_ejection_percent.value = outlier.max_ejection_percent
    if outlier.split_external_local_origin_errors:
        out.split_external_local_origin_errors = True
        failures = outlier.consecutive_local_origin_failures.value
        if failures > 0:
            out.consecutive_local_origin_failure.value = failures
            out.enforcing_consecutive_local_origin_failure.value = 100
        out.enforcing_local_origin_success_rate.value = 0
    cluster.outlier_detection.CopyFrom(out)
    # Istio sets the panic threshold whenever outlier detection is on, so an unset
    # minHealthPercent (0) turns Envoy's panic mode (default 50%) off.
    cluster.common_lb_config.healthy_panic_threshold.CopyFrom(
        Percent(value=float(max(outlier.min_health_percent, 0)))
    )


def _slow_start(lb: LoadBalancerSettings) -> Cluster.SlowStartConfig | None:
    config = Cluster.SlowStartConfig()
    if lb.HasField("warmup"):
        warmup = lb.warmup
        if warmup.HasField("duration"):
            config.slow_start_window.CopyFrom(warmup.duration)
        if warmup.HasField("aggression"):
            config.aggression.CopyFrom(
                RuntimeDouble(
                    default_value=warmup.aggression.value, runtime_key=SLOW_START_AGGRESSION_KEY
                )
            )
        if warmup.HasField("minimum_percent"):
            config.min_weight_percent.value = warmup.minimum_percent.value
    elif lb.HasField("warmup_duration_secs"):
        config.slow_start_window.CopyFrom(lb.warmup_duration_secs)
    else:
        return None
    return config


def _make_original_dst(cluster: Any) -> None:
    cluster.type = Cluster.ORIGINAL_DST
    cluster.lb_policy = Cluster.CLUSTER_PROVIDED
    cluster.ClearField("eds_cluster_config")
    cluster.ClearField("load_assignment")
    cluster.ClearField("lb_config")


def _apply_load_balancer(cluster: Any, policy: TrafficPolicy) -> None:
    lb = policy.load_balancer
    if cluster.type == Cluster.ORIGINAL_DST:
        _make_original_dst(cluster)
        return
    simple = lb.simple if lb.WhichOneof("lb_policy") == "simple" else _LB.UNSPECIFIED
    if simple == _LB.PASSTHROUGH:
        _make_original_dst(cluster)
        return
    if simple == _LB.RANDOM:
        cluster.lb_policy = Cluster.RANDOM
    elif simple == _LB.ROUND_ROBIN:
        cluster.lb_policy = Cluster.ROUND_ROBIN
        slow = _slow_start(lb)
        if slow is not None:
            cluster.round_robin_lb_config.slow_start_config.CopyFrom(slow)
    else:  # LEAST_REQUEST, its deprecated alias LEAST_CONN, and Istio's default
        cluster.lb_policy = Cluster.LEAST_REQUEST
        slow = _slow_start(lb)
        if slow is not None:
            cluster.least_request_lb_config.slow_start_config.CopyFrom(slow)
    if lb.HasField("consistent_hash"):
        hashing = lb.consistent_hash
        cluster.ClearField("lb_config")
        algorithm = hashing.WhichOneof("hash_algorithm")
        if algorithm == "maglev":
            cluster.lb_policy = Cluster.MAGLEV
            if hashing.maglev.table_size:
                cluster.maglev_lb_config.table_size.value = hashing.maglev.table_size
        elif algorithm == "ring_hash":
            cluster.lb_policy = Cluster.RING_HASH
            if hashing.ring_hash.minimum_ring_size:
                size = hashing.ring_hash.minimum_ring_size
                cluster.ring_hash_lb_config.minimum_ring_size.value = size
        else:  # the deprecated top-level minimumRingSize; 1024 is Envoy's default
            cluster.lb_policy = Cluster.RING_HASH
            size = hashing.minimum_ring_size or 1024
            cluster.ring_hash_lb_config.minimum_ring_size.value = size


def distribution(policy: TrafficPolicy, proxy_locality: str) -> Mapping[str, int] | None:
    """The locality weights `localityLbSetting.distribute` gives a proxy in `proxy_locality`."""
    setting = policy.load_balancer.locality_lb_setting
    if setting.HasField("enabled") and not setting.enabled.value:
        return None
    rules = [(getattr(rule, "from"), dict(rule.to)) for rule in setting.distribute]
    return distribution_for(rules, proxy_locality)


def locality_failover(policy: TrafficPolicy) -> bool:
    """Istio's rule: failover priorities only with outlier detection (else Envoy never moves
    traffic to a lower priority), unless locality load balancing is disabled."""
    setting = policy.load_balancer.locality_lb_setting
    enabled = not setting.HasField("enabled") or setting.enabled.value
    return policy.HasField("outlier_detection") and enabled


def _apply_tls(
    cluster: Any,
    policy: TrafficPolicy,
    service: Service,
    port: ServicePort,
    subset: str,
    identities: Sequence[str],
) -> None:
    tls = policy.tls
    if tls.mode == ClientTLSSettings.ISTIO_MUTUAL:
        sni, names = tls_sni(port.number, service.hostname, subset), identities
    else:
        sni, names = service.hostname, service.subject_alt_names
    context = upstream_tls(tls, sni=sni, subject_alt_names=names)
    if context is not None:
        if _upstream_protocol(port, policy) == "h2":
            context.common_tls_context.alpn_protocols.append("h2")
        cluster.transport_socket.CopyFrom(_transport_socket(TLS_TRANSPORT_SOCKET, context))
    if policy.HasField("proxy_protocol"):
        version = (
            ProxyProtocolConfig.V2
            if policy.proxy_protocol.version == TrafficPolicy.ProxyProtocol.V2
            else ProxyProtocolConfig.V1
        )
        inner = (
            cluster.transport_socket
            if cluster.HasField("transport_socket")
            else _transport_socket(RAW_BUFFER_TRANSPORT_SOCKET, RawBuffer())
        )
        wrapper = ProxyProtocolUpstreamTransport(
            config=ProxyProtocolConfig(version=version), transport_socket=inner
        )
        cluster.transport_socket.CopyFrom(
            _transport_socket(PROXY_PROTOCOL_TRANSPORT_SOCKET, wrapper)
        )


def _copy(policy: TrafficPolicy) -> TrafficPolicy:
    copy = TrafficPolicy()
    copy.CopyFrom(policy)
    return copy


def _dns_lookup_family(proxy: Proxy) -> int:
    """Istio's choice from the proxy's own address family."""
    try:
        version = ipaddress.ip_address(proxy.address).version
    except ValueError:
        return int(Cluster.V4_ONLY)
    return int(Cluster.V6_ONLY if version == 6 else Cluster.V4_ONLY)


def _dns_endpoints(
    service: Service, port: ServicePort, labels: dict[str, str] | None, registry: Registry
) -> list[Endpoint]:
    """A DNS cluster's endpoints: the registry's (subset-filtered), else the host itself."""
    everything = registry.endpoints(service.hostname, port.number)
    if not everything:
        return [Endpoint(address=service.hostname, port=port.number)]
    if labels is None:
        return everything
    return registry.endpoints(service.hostname, port.number, labels)


def _cluster(
    service: Service,
    port: ServicePort,
    rule: MergedRule | None,
    subset: str,
    labels: dict[str, str] | None,
    *,
    registry: Registry,
    proxy: Proxy,
    endpoints: Sequence[Endpoint],
    domain: str,
    sources: Sequence[str],
    metadata: bytes,
    auto_mtls: bool = False,
) -> Encoded[Cluster]:
    """One cluster; `endpoints` are the port's, `metadata` the metadata field of `sources`
    (`_metadata_field`)."""
    name = cluster_name(port.number, service.hostname, subset)
    policy, policy_bytes = _effective(rule, port.number, subset)
    if auto_mtls and not policy.HasField("tls") and not service.mesh_external:
        # Istio's auto mTLS: in-mesh destinations get ISTIO_MUTUAL unless a rule says otherwise.
        policy = _copy(policy)  # shared
        policy.tls.mode = ClientTLSSettings.ISTIO_MUTUAL
        policy_bytes = policy.SerializeToString(deterministic=True)
    resolution = service.resolution
    shape: tuple[object, ...] | None = None
    if resolution not in ("DNS", "DNS_ROUND_ROBIN"):
        # Without DNS endpoints, a cluster is its name, its transport socket (whose SNI and
        # SANs name the host) and what its policy, port protocol and resolution make: the
        # same for every service alike, so it is made once and copied (a mesh has thousands).
        shape = (policy_bytes, *_shape_rest(service, port))
        template = _TEMPLATES.get(shape)
        if template is not None and name:
            socket = b""
            if template.tls:
                sans = _sans(policy, service, endpoints, domain)
                socket = _tls_socket(policy, policy_bytes, service, port, subset, sans)
            return template.cluster(name, metadata, socket)
    cluster = Cluster(name=name)
    cluster.connect_timeout.CopyFrom(CONNECT_TIMEOUT)
    cluster.common_lb_config.locality_weighted_lb_config.SetInParent()
    if resolution == "NONE":
        cluster.type = Cluster.ORIGINAL_DST
        cluster.ClearField("common_lb_config")  # no localities: addresses come from connections
    elif resolution in ("DNS", "DNS_ROUND_ROBIN"):
        endpoints = _dns_endpoints(service, port, labels, registry)
        logical = resolution == "DNS_ROUND_ROBIN" and bool(endpoints)
        # LOGICAL_DNS takes exactly one address (the first); a subset matching nothing is an
        # empty STRICT_DNS cluster instead, which Envoy accepts.
        cluster.type = Cluster.LOGICAL_DNS if logical else Cluster.STRICT_DNS
        # Istio also sets dns_refresh_rate and respect_dns_ttl; Envoy 1.40 deprecates both on
        # Cluster (in favour of the envoy.clusters.dns extension), so Envoy's defaults serve.
        cluster.dns_lookup_family = _dns_lookup_family(proxy)
        cluster.load_assignment.CopyFrom(
            cluster_load_assignment(
                name,
                endpoints[:1] if logical else endpoints,
                proxy_locality=proxy.locality,
                failover=locality_failover(policy),
                distribute=distribution(policy, proxy.locality),
            )
        )
    else:
        cluster.type = Cluster.EDS
        cluster.eds_cluster_config.eds_config.CopyFrom(ads_config_source())
        cluster.eds_cluster_config.service_name = name
    # Locality failover priorities and `distribute` weights of EDS clusters are applied to the
    # ClusterLoadAssignment (endpoints.py); `failover` needs no cluster field beyond the
    # locality-weighted common_lb_config set above.
    _apply_connection_pool(cluster, policy, port)
    _apply_outlier_detection(cluster, policy)
    _apply_load_balancer(cluster, policy)
    # The destination's identities: only ISTIO_MUTUAL asks (most clusters come from templates).
    _apply_tls(cluster, policy, service, port, subset, _sans(policy, service, endpoints, domain))
    stamp(cluster, sources)
    data = cluster.SerializeToString(deterministic=True)
    if shape is not None and name:
        template = _Template.of(cluster)
        # Kept only if it makes these very bytes: the fields around the names and the
        # socket are the message's own, so a template right for one name is right for all.
        if template.cluster(name, metadata, _socket_field(cluster)).data == data:
            _TEMPLATES.put(shape, template)
    return Encoded.of_data(Cluster, name, data, references(cluster))


class _Template:
    """A cluster of one shape as the bytes around its name, its EDS service name (the same),
    its transport socket (`tls`: whether the shape has one) and its metadata (the sources): a
    cluster of that shape is one join, with no message but its socket."""

    __slots__ = ("after", "before", "eds", "middle", "tls")

    def __init__(
        self, before: bytes, eds: bytes | None, middle: bytes, after: bytes, tls: bool
    ) -> None:
        self.before, self.eds, self.middle, self.after = before, eds, middle, after
        self.tls = tls

    @classmethod
    def of(cls, cluster: Cluster) -> _Template:
        bare = Cluster()
        bare.CopyFrom(cluster)
        bare.ClearField("name")
        bare.ClearField("metadata")
        tls = bare.HasField("transport_socket")
        bare.ClearField("transport_socket")  # field 24: written between `middle` and metadata
        eds = None
        if bare.HasField("eds_cluster_config"):
            bare.eds_cluster_config.ClearField("service_name")
            eds = bare.eds_cluster_config.SerializeToString(deterministic=True)
            bare.ClearField("eds_cluster_config")
        # Deterministic output writes fields in number order: cut where the others go.
        before, rest = wire.split_at_field(bare.SerializeToString(deterministic=True), _EDS)
        middle, after = wire.split_at_field(rest, _METADATA)
        return cls(before, eds, middle, after, tls)

    def cluster(self, name: str, metadata: bytes, socket: bytes = b"") -> Encoded[Cluster]:
        """The cluster named `name` whose metadata field is `metadata` (`_metadata_field`) and
        transport socket field `socket` (`_socket_field`)."""
        named = name.encode()
        head = wire.length_delimited(_NAME, named)
        tail = (self.middle, socket, metadata, self.after)
        if self.eds is None:
            return Encoded.of_data(Cluster, name, b"".join((head, self.before, *tail)))
        service = wire.length_delimited(_EDS_SERVICE_NAME, named)
        eds = wire.length_delimited(_EDS, self.eds + service)
        data = b"".join((head, self.before, eds, *tail))
        return Encoded.of_data(Cluster, name, data, {ENDPOINT_TYPE: {name}})


_FIELDS = Cluster.DESCRIPTOR.fields_by_name
_NAME, _EDS, _SOCKET, _METADATA = (
    _FIELDS[f].number for f in ("name", "eds_cluster_config", "transport_socket", "metadata")
)
_EDS_SERVICE_NAME = Cluster.EdsClusterConfig.DESCRIPTOR.fields_by_name["service_name"].number
_TEMPLATES: Bounded[tuple[object, ...], _Template] = Bounded(4096)
"""Clusters by (policy, port protocol, resolution, mesh_external): `_cluster`."""


def _socket_field(cluster: Cluster) -> bytes:
    """The cluster's transport_socket field as its message writes it (b"" when unset)."""
    if not cluster.HasField("transport_socket"):
        return b""
    data = cluster.transport_socket.SerializeToString(deterministic=True)
    return wire.length_delimited(_SOCKET, data)


def outbound_clusters(
    service: Service,
    port: ServicePort,
    rule: MergedRule | None,
    *,
    registry: Registry,
    proxy: Proxy,
    domain: str = "cluster.local",
    auto_mtls: bool = False,
    endpoints: Sequence[Endpoint] | None = None,
) -> list[Encoded[Cluster]]:
    """`outbound|<port>||<host>` plus one `outbound|<port>|<subset>|<host>` per subset (in
    subset order). `auto_mtls`: destinations whose endpoints all have a sidecar (label
    `security.istio.io/tlsMode: istio`) and no `tls` setting use ISTIO_MUTUAL (pass it only when
    workload certificates are served, or Envoy would wait for them forever). `endpoints`: the
    port's, as `registry.endpoints` gives them, if the caller has them already."""
    if endpoints is None:
        endpoints = registry.endpoints(service.hostname, port.number)
    sources = [f"{o.kind}/{o.namespace}/{o.name}" for o in rule.sources] if rule else []
    # Auto mTLS only towards workloads that have a sidecar to terminate it: Istio's injector
    # labels them `security.istio.io/tlsMode: istio`.
    meshed = (
        auto_mtls
        and bool(endpoints)
        and all(dict(e.labels).get(TLS_MODE_LABEL) == "istio" for e in endpoints)
    )
    metadata = _metadata_field(sources)
    subsets: Iterable[tuple[str, dict[str, str] | None]] = _NO_SUBSETS
    if rule is not None:
        subsets = (("", None), *rule.subset_labels)
    # Most clusters are a template's join (`_cluster`): made here, in the one pass over the
    # subsets, with what `_cluster` would read; any other (auto mTLS, DNS, a socket, a shape
    # not seen yet) is `_cluster`'s.
    templated = not meshed and service.resolution not in ("DNS", "DNS_ROUND_ROBIN")
    number, host = port.number, service.hostname
    shape_rest = _shape_rest(service, port)
    clusters: list[Encoded[Cluster]] = []
    for subset, labels in subsets:
        if templated:
            policy_bytes = _effective(rule, number, subset)[1]
            template = _TEMPLATES.get((policy_bytes, *shape_rest))
            if template is not None and not template.tls:
                clusters.append(template.cluster(cluster_name(number, host, subset), metadata))
                continue
        clusters.append(
            _cluster(
                service,
                port,
                rule,
                subset,
                labels,
                registry=registry,
                proxy=proxy,
                endpoints=endpoints,
                domain=domain,
                sources=sources,
                metadata=metadata,
                auto_mtls=meshed,
            )
        )
    return clusters


def _shape_rest(service: Service, port: ServicePort) -> tuple[str, str, bool]:
    """A template's key after the policy bytes: what else of the service and port a cluster
    made from a template depends on (one definition for `_cluster` and `outbound_clusters`)."""
    return port.protocol, service.resolution, service.mesh_external


_NO_SUBSETS: tuple[tuple[str, dict[str, str] | None], ...] = (("", None),)
"""A port's clusters without a DestinationRule: the port's own alone."""


def _metadata_field(sources: Sequence[str]) -> bytes:
    """A cluster's `metadata` field, as `stamp` sets it: made once for a port's clusters."""
    return wire.length_delimited(_METADATA, stamp_bytes(sources))


def _tls_socket(
    policy: TrafficPolicy,
    policy_bytes: bytes,
    service: Service,
    port: ServicePort,
    subset: str,
    sans: Sequence[str],
) -> bytes:
    """The transport_socket field `_apply_tls` gives a cluster. ISTIO_MUTUAL sockets of one
    policy, port protocol and SANs differ only by their SNI (the port, host and subset are in
    nothing else): kept as the bytes around it (`_AroundSni`)."""
    mutual = policy.tls.mode == ClientTLSSettings.ISTIO_MUTUAL
    sni = policy.tls.sni or tls_sni(port.number, service.hostname, subset)
    key = (policy_bytes, port.protocol, tuple(sans))
    around = _SOCKETS.get(key) if mutual else None
    if around is not None:
        return around.field(sni)
    holder = Cluster()  # made as the full path makes it, on a cluster of its own
    _apply_tls(holder, policy, service, port, subset, sans)
    field = _socket_field(holder)
    if mutual:
        around = _AroundSni.of(holder.transport_socket)
        # Kept only if it makes these very bytes (a proxy protocol wrapper, say, is not cut).
        if around is not None and around.field(sni) == field:
            _SOCKETS.put(key, around)
    return field


class _AroundSni:
    """A TLS transport socket as the bytes around its UpstreamTlsContext's SNI."""

    __slots__ = ("after", "before", "name", "url")

    def __init__(self, name: bytes, url: bytes, before: bytes, after: bytes) -> None:
        self.name, self.url, self.before, self.after = name, url, before, after

    @classmethod
    def of(cls, socket: TransportSocket) -> _AroundSni | None:
        config = socket.typed_config
        if socket.name != TLS_TRANSPORT_SOCKET or not config.Is(UpstreamTlsContext.DESCRIPTOR):
            return None
        context = UpstreamTlsContext()
        config.Unpack(context)
        context.ClearField("sni")
        before, after = wire.split_at_field(context.SerializeToString(deterministic=True), _SNI)
        name = wire.length_delimited(_SOCKET_NAME, socket.name.encode())
        return cls(name, wire.length_delimited(_ANY_URL, config.type_url.encode()), before, after)

    def field(self, sni: str) -> bytes:
        """The cluster's transport_socket field for `sni`."""
        context = b"".join((self.before, wire.length_delimited(_SNI, sni.encode()), self.after))
        config = self.url + wire.length_delimited(_ANY_VALUE, context)
        return wire.length_delimited(_SOCKET, self.name + wire.length_delimited(_CONFIG, config))


_SNI = UpstreamTlsContext.DESCRIPTOR.fields_by_name["sni"].number
_SOCKET_NAME, _CONFIG = (
    TransportSocket.DESCRIPTOR.fields_by_name[f].number for f in ("name", "typed_config")
)
_ANY_URL, _ANY_VALUE = (AnyProto.DESCRIPTOR.fields_by_name[f].number for f in ("type_url", "value"))
_SOCKETS: Bounded[tuple[bytes, str, tuple[str, ...]], _AroundSni] = Bounded(4096)
"""ISTIO_MUTUAL sockets by (policy, port protocol, SANs): `_tls_socket`."""


def _sans(
    policy: TrafficPolicy, service: Service, endpoints: Iterable[Endpoint], domain: str
) -> Sequence[str]:
    """The SANs an ISTIO_MUTUAL cluster accepts: its workloads' SPIFFE identities and the
    service's own subjectAltNames, sorted (made only when the policy says ISTIO_MUTUAL, the
    only reader)."""
    if policy.tls.mode != ClientTLSSettings.ISTIO_MUTUAL:
        return ()
    found = {spiffe_id(e.namespace, e.service_account, domain) for e in endpoints}
    return sorted(found | set(service.subject_alt_names))
