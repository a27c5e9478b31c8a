"""networking.istio.io specs from Istio's bookinfo sample parse into pilotfish's protos and back.

Every VirtualService, DestinationRule, Gateway and ServiceEntry document under
`../shared/conformance/istio-bookinfo/` is converted with `json_format.ParseDict` (unknown fields
rejected) and must round-trip through `MessageToDict` unchanged, apart from default values that
proto3 does not serialize. Field numbers taken from Istio's .proto files are checked through the
descriptors, so the wire form stays interchangeable with Istio's.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from google.protobuf import json_format
from google.protobuf.message import Message

from pilotfish.protos.istio.networking.v1alpha3.destination_rule_pb2 import (
    ClientTLSSettings,
    ConnectionPoolSettings,
    DestinationRule,
    LoadBalancerSettings,
    OutlierDetection,
    TrafficPolicy,
)
from pilotfish.protos.istio.networking.v1alpha3.gateway_pb2 import Gateway, ServerTLSSettings
from pilotfish.protos.istio.networking.v1alpha3.service_entry_pb2 import ServiceEntry
from pilotfish.protos.istio.networking.v1alpha3.sidecar_pb2 import Sidecar
from pilotfish.protos.istio.networking.v1alpha3.virtual_service_pb2 import (
    HTTPFaultInjection,
    HTTPMatchRequest,
    HTTPRoute,
    HTTPRouteDestination,
    VirtualService,
)
from pilotfish.protos.istio.networking.v1alpha3.workload_entry_pb2 import WorkloadEntry

BOOKINFO = Path(__file__).resolve().parents[2] / "shared" / "conformance" / "istio-bookinfo"

SPEC_TYPES: dict[str, type[Message]] = {
    "VirtualService": VirtualService,
    "DestinationRule": DestinationRule,
    "Gateway": Gateway,
    "ServiceEntry": ServiceEntry,
}

API_VERSIONS = {f"networking.istio.io/{v}" for v in ("v1alpha3", "v1beta1", "v1")}


def test_bookinfo_manifests_are_present() -> None:
    # The parametrized tests below would silently collect nothing without them.
    assert BOOKINFO.is_dir(), f"missing conformance inputs at {BOOKINFO}"
    assert len(list(BOOKINFO.rglob("*.yaml"))) >= 20


def _bookinfo_documents() -> list[tuple[str, dict[str, Any]]]:
    """(id, document) for every networking document of a kind in SPEC_TYPES."""
    found: list[tuple[str, dict[str, Any]]] = []
    for path in sorted(BOOKINFO.rglob("*.yaml")):
        with path.open(encoding="utf-8") as stream:
            for index, doc in enumerate(yaml.safe_load_all(stream)):
                if isinstance(doc, dict) and doc.get("kind") in SPEC_TYPES:
                    rel = path.relative_to(BOOKINFO).as_posix()
                    found.append((f"{rel}#{index}:{doc['kind']}", doc))
    return found


DOCUMENTS = _bookinfo_documents()


def _parse(doc: dict[str, Any]) -> Message:
    message = SPEC_TYPES[doc["kind"]]()
    json_format.ParseDict(doc["spec"], message, ignore_unknown_fields=False)
    return message


def _find(kind: str, name: str, file_name: str) -> Message:
    for doc_id, doc in DOCUMENTS:
        in_file = doc_id.split("#")[0].endswith(file_name)
        if in_file and doc["kind"] == kind and doc["metadata"]["name"] == name:
            return _parse(doc)
    raise LookupError(f"{kind} {name} not in {file_name}")


def _without_defaults(value: Any) -> Any:
    """Drop what proto3 JSON leaves out: empty strings, zeros, false, empty lists and maps."""
    if isinstance(value, dict):
        pruned = {k: _without_defaults(v) for k, v in value.items()}
        return {k: v for k, v in pruned.items() if v not in ("", 0, False, None, [], {})}
    if isinstance(value, list):
        return [_without_defaults(v) for v in value]
    return value


def test_bookinfo_has_networking_documents() -> None:
    kinds = {doc["kind"] for _, doc in DOCUMENTS}
    assert kinds == set(SPEC_TYPES)
    assert len(DOCUMENTS) >= 30
    assert all(doc["apiVersion"] in API_VERSIONS for _, doc in DOCUMENTS)


@pytest.mark.parametrize(("doc_id", "doc"), DOCUMENTS, ids=[d for d, _ in DOCUMENTS])
def test_bookinfo_spec_parses_and_round_trips(doc_id: str, doc: dict[str, Any]) -> None:
    message = _parse(doc)
    back = json_format.MessageToDict(message, preserving_proto_field_name=False)
    assert _without_defaults(back) == _without_defaults(doc["spec"]), doc_id
    # The wire form carries the same content.
    again = type(message)()
    again.ParseFromString(message.SerializeToString(deterministic=True))
    assert again == message


def test_reviews_v2_v3_weights() -> None:
    vs = _find("VirtualService", "reviews", "virtual-service-reviews-v2-v3.yaml")
    assert isinstance(vs, VirtualService)
    assert list(vs.hosts) == ["reviews"]
    (route,) = vs.http
    split = [(d.destination.subset, d.weight) for d in route.route]
    assert split == [("v2", 50), ("v3", 50)]
    assert {d.destination.host for d in route.route} == {"reviews"}


def test_ratings_delay_fault() -> None:
    vs = _find("VirtualService", "ratings", "virtual-service-ratings-test-delay.yaml")
    assert isinstance(vs, VirtualService)
    jason, default = vs.http
    assert jason.match[0].headers["end-user"].exact == "jason"
    assert jason.match[0].headers["end-user"].WhichOneof("match_type") == "exact"
    delay = jason.fault.delay
    assert delay.WhichOneof("http_delay_type") == "fixed_delay"
    assert delay.fixed_delay.ToTimedelta() == timedelta(seconds=7)
    assert delay.percentage.value == 100.0
    assert not jason.fault.HasField("abort")
    assert not default.match
    assert not default.HasField("fault")


def test_ratings_abort_fault() -> None:
    vs = _find("VirtualService", "ratings", "virtual-service-ratings-test-abort.yaml")
    assert isinstance(vs, VirtualService)
    abort = vs.http[0].fault.abort
    assert abort.WhichOneof("error_type") == "http_status"
    assert abort.http_status == 500
    assert abort.percentage.value == 100.0
    details = _find("VirtualService", "details", "fault-injection-details-v1.yaml")
    assert isinstance(details, VirtualService)
    assert details.http[0].fault.abort.http_status == 555


def test_destination_rule_subsets_and_policies() -> None:
    dr = _find("DestinationRule", "reviews", "destination-rule-reviews.yaml")
    assert isinstance(dr, DestinationRule)
    assert {s.name: dict(s.labels) for s in dr.subsets} == {
        "v1": {"version": "v1"},
        "v2": {"version": "v2"},
        "v3": {"version": "v3"},
    }
    assert dr.traffic_policy.load_balancer.simple == LoadBalancerSettings.RANDOM

    mtls = _find("DestinationRule", "reviews", "destination-rule-all-mtls.yaml")
    assert isinstance(mtls, DestinationRule)
    assert mtls.traffic_policy.tls.mode == ClientTLSSettings.ISTIO_MUTUAL

    google = _find(
        "DestinationRule", "originate-tls-for-googleapis", "egress-rule-google-apis.yaml"
    )
    assert isinstance(google, DestinationRule)
    (port_policy,) = google.traffic_policy.port_level_settings
    assert port_policy.port.number == 443
    assert port_policy.tls.mode == ClientTLSSettings.SIMPLE


def test_gateway_and_service_entry() -> None:
    gw = _find("Gateway", "bookinfo-gateway", "bookinfo-gateway.yaml")
    assert isinstance(gw, Gateway)
    assert dict(gw.selector) == {"istio": "ingressgateway"}
    (server,) = gw.servers
    assert (server.port.number, server.port.name, server.port.protocol) == (8080, "http", "HTTP")
    assert list(server.hosts) == ["*"]

    se = _find("ServiceEntry", "googleapis", "egress-rule-google-apis.yaml")
    assert isinstance(se, ServiceEntry)
    assert se.resolution == ServiceEntry.DNS
    assert se.location == ServiceEntry.MESH_EXTERNAL
    assert [(p.number, p.protocol) for p in se.ports] == [(80, "HTTP"), (443, "HTTPS")]


def test_unknown_field_is_rejected() -> None:
    spec = {"hosts": ["reviews"], "http": [{"route": [{"destination": {"hostt": "reviews"}}]}]}
    with pytest.raises(json_format.ParseError, match="hostt"):
        json_format.ParseDict(spec, VirtualService(), ignore_unknown_fields=False)


# Richer specs in Istio's JSON form, covering fields bookinfo does not use.
RICH_SPECS: list[tuple[type[Message], dict[str, Any]]] = [
    (
        VirtualService,
        {
            "hosts": ["reviews.prod.svc.cluster.local"],
            "gateways": ["mesh", "istio-system/gw"],
            "exportTo": ["."],
            "http": [
                {
                    "name": "r",
                    "match": [
                        {
                            "name": "m",
                            "uri": {"regex": "/v[0-9]+/.*"},
                            "ignoreUriCase": True,
                            "method": {"exact": "GET"},
                            "queryParams": {"q": {"prefix": "x"}},
                            "withoutHeaders": {"x-debug": {}},
                            "sourceLabels": {"app": "productpage"},
                            "sourceNamespace": "default",
                            "port": 9080,
                        }
                    ],
                    "route": [
                        {
                            "destination": {
                                "host": "reviews",
                                "subset": "v1",
                                "port": {"number": 9080},
                            },
                            "weight": 75,
                            "headers": {"response": {"remove": ["foo"]}},
                        }
                    ],
                    "rewrite": {"uriRegexRewrite": {"match": "^/v1/(.*)", "rewrite": "/\\1"}},
                    "timeout": "1.500s",
                    "retries": {
                        "attempts": 3,
                        "perTryTimeout": "2s",
                        "retryOn": "gateway-error,connect-failure",
                        "retryRemoteLocalities": False,
                    },
                    "mirror": {"host": "shadow"},
                    "mirrorPercentage": {"value": 12.5},
                    "mirrors": [{"destination": {"host": "m2"}, "percentage": {"value": 1.0}}],
                    "corsPolicy": {
                        "allowOrigins": [{"exact": "https://example.com"}],
                        "allowMethods": ["POST"],
                        "maxAge": "86400s",
                        "allowCredentials": False,
                        "unmatchedPreflights": "IGNORE",
                    },
                    "headers": {"request": {"set": {"x-a": "1"}, "add": {"x-b": "2"}}},
                },
                {"redirect": {"uri": "/new", "derivePort": "FROM_REQUEST_PORT", "scheme": "https"}},
                {"directResponse": {"status": 503, "body": {"string": "unavailable"}}},
                {"delegate": {"name": "reviews", "namespace": "nsb"}},
            ],
            "tcp": [
                {
                    "match": [{"port": 27017, "destinationSubnets": ["10.0.0.0/8"]}],
                    "route": [{"destination": {"host": "mongo"}, "weight": 100}],
                }
            ],
            "tls": [
                {
                    "match": [{"port": 443, "sniHosts": ["login.bookinfo.com"]}],
                    "route": [{"destination": {"host": "login"}}],
                }
            ],
        },
    ),
    (
        DestinationRule,
        {
            "host": "reviews",
            "exportTo": ["*"],
            "workloadSelector": {"matchLabels": {"app": "productpage"}},
            "trafficPolicy": {
                "loadBalancer": {
                    "consistentHash": {
                        "httpCookie": {"name": "user", "path": "/", "ttl": "0s"},
                        "ringHash": {"minimumRingSize": "1024"},
                    },
                    "localityLbSetting": {
                        "enabled": True,
                        "distribute": [{"from": "us-west/zone1/*", "to": {"us-west/zone1/*": 80}}],
                        "failover": [{"from": "us-east", "to": "eu-west"}],
                        "failoverPriority": ["topology.kubernetes.io/region"],
                    },
                    "warmup": {"duration": "60s", "minimumPercent": 10.0, "aggression": 1.5},
                },
                "connectionPool": {
                    "tcp": {
                        "maxConnections": 100,
                        "connectTimeout": "0.030s",
                        "tcpKeepalive": {"probes": 3, "time": "7200s", "interval": "75s"},
                    },
                    "http": {
                        "http1MaxPendingRequests": 1,
                        "http2MaxRequests": 1000,
                        "maxRequestsPerConnection": 10,
                        "maxRetries": 3,
                        "idleTimeout": "30s",
                        "h2UpgradePolicy": "UPGRADE",
                        "useClientProtocol": True,
                    },
                },
                "outlierDetection": {
                    "consecutive5xxErrors": 7,
                    "consecutiveGatewayErrors": 0,
                    "interval": "300s",
                    "baseEjectionTime": "900s",
                    "maxEjectionPercent": 100,
                },
                "tls": {
                    "mode": "MUTUAL",
                    "clientCertificate": "/etc/certs/client.pem",
                    "privateKey": "/etc/certs/key.pem",
                    "caCertificates": "/etc/certs/ca.pem",
                    "subjectAltNames": ["reviews.example.com"],
                    "sni": "reviews.example.com",
                    "insecureSkipVerify": False,
                },
                "tunnel": {"protocol": "CONNECT", "targetHost": "egress", "targetPort": 8443},
                "proxyProtocol": {"version": "V2"},
            },
            "subsets": [
                {
                    "name": "v2",
                    "labels": {"version": "v2"},
                    "trafficPolicy": {"loadBalancer": {"simple": "LEAST_REQUEST"}},
                }
            ],
        },
    ),
    (
        Gateway,
        {
            "selector": {"istio": "ingressgateway"},
            "servers": [
                {
                    "port": {"number": 443, "name": "https", "protocol": "HTTPS"},
                    "hosts": ["ns1/*.example.com"],
                    "name": "https-server",
                    "tls": {
                        "mode": "SIMPLE",
                        "credentialName": "example-cert",
                        "minProtocolVersion": "TLSV1_2",
                        "cipherSuites": ["ECDHE-RSA-AES256-GCM-SHA384"],
                    },
                },
                {
                    "port": {"number": 80, "name": "http", "protocol": "HTTP"},
                    "hosts": ["*"],
                    "tls": {"httpsRedirect": True},
                },
            ],
        },
    ),
    (
        ServiceEntry,
        {
            "hosts": ["mysql.example.com"],
            "addresses": ["240.0.0.1"],
            "ports": [{"number": 3306, "name": "tcp", "protocol": "TCP", "targetPort": 3307}],
            "location": "MESH_INTERNAL",
            "resolution": "STATIC",
            "endpoints": [
                {
                    "address": "10.1.2.3",
                    "ports": {"tcp": 3306},
                    "labels": {"version": "v1"},
                    "locality": "us-west/zone1",
                    "weight": 2,
                    "serviceAccount": "mysql",
                    "network": "n1",
                }
            ],
            "exportTo": ["."],
            "subjectAltNames": ["spiffe://cluster.local/ns/db/sa/mysql"],
        },
    ),
    (
        ServiceEntry,
        {
            "hosts": ["vm.example.com"],
            "ports": [{"number": 80, "name": "http", "protocol": "HTTP"}],
            "resolution": "DNS_ROUND_ROBIN",
            "workloadSelector": {"labels": {"app": "vm"}},
        },
    ),
    (
        WorkloadEntry,
        {"address": "2001:db8::1", "labels": {"app": "vm"}, "serviceAccount": "vm-sa"},
    ),
    (
        Sidecar,
        {
            "workloadSelector": {"labels": {"app": "ratings"}},
            "ingress": [
                {
                    "port": {"number": 9080, "protocol": "HTTP", "name": "somename"},
                    "defaultEndpoint": "unix:///var/run/someuds.sock",
                    "captureMode": "NONE",
                    "tls": {"mode": "SIMPLE", "serverCertificate": "/etc/c.pem"},
                    "connectionPool": {"http": {"http1MaxPendingRequests": 5}},
                }
            ],
            "egress": [
                {
                    "port": {"number": 3306, "protocol": "MYSQL"},
                    "bind": "127.0.0.1",
                    "captureMode": "IPTABLES",
                    "hosts": ["*/mysql.foo.com"],
                },
                {"hosts": ["./*", "istio-system/*"]},
            ],
            "inboundConnectionPool": {"tcp": {"maxConnections": 10}},
            "outboundTrafficPolicy": {"mode": "ALLOW_ANY", "egressProxy": {"host": "egress"}},
        },
    ),
]


@pytest.mark.parametrize(
    ("message_type", "spec"),
    RICH_SPECS,
    ids=[f"{t.DESCRIPTOR.name}-{i}" for i, (t, _) in enumerate(RICH_SPECS)],
)
def test_rich_spec_round_trips(message_type: type[Message], spec: dict[str, Any]) -> None:
    message = message_type()
    json_format.ParseDict(spec, message, ignore_unknown_fields=False)
    back = json_format.MessageToDict(message, preserving_proto_field_name=False)
    assert _without_defaults(back) == _without_defaults(spec)
    # Wrapper fields keep an explicit false/0, unlike plain proto3 scalars.
    if isinstance(message, DestinationRule):
        assert message.traffic_policy.outlier_detection.HasField("consecutive_gateway_errors")
        assert message.traffic_policy.tls.HasField("insecure_skip_verify")


# (message, field name, Istio's field number), taken from Istio's .proto files.
ISTIO_FIELD_NUMBERS: list[tuple[type[Message], str, int]] = [
    (VirtualService, "hosts", 1),
    (VirtualService, "gateways", 2),
    (VirtualService, "http", 3),
    (VirtualService, "tcp", 4),
    (VirtualService, "tls", 5),
    (VirtualService, "export_to", 6),
    (HTTPRoute, "match", 1),
    (HTTPRoute, "route", 2),
    (HTTPRoute, "redirect", 3),
    (HTTPRoute, "rewrite", 4),
    (HTTPRoute, "timeout", 6),
    (HTTPRoute, "fault", 8),
    (HTTPRoute, "headers", 16),
    (HTTPRoute, "name", 17),
    (HTTPRoute, "mirror_percentage", 19),
    (HTTPRoute, "delegate", 20),
    (HTTPMatchRequest, "headers", 5),
    (HTTPMatchRequest, "name", 11),
    (HTTPMatchRequest, "without_headers", 12),
    (HTTPRouteDestination, "weight", 2),
    (HTTPRouteDestination, "headers", 7),
    (HTTPFaultInjection.Delay, "fixed_delay", 2),
    (HTTPFaultInjection.Delay, "percentage", 5),
    (HTTPFaultInjection.Abort, "http_status", 2),
    (DestinationRule, "subsets", 3),
    (TrafficPolicy, "port_level_settings", 5),
    (ConnectionPoolSettings.HTTPSettings, "h2_upgrade_policy", 6),
    (OutlierDetection, "consecutive_5xx_errors", 7),
    (ClientTLSSettings, "credential_name", 7),
    (ServerTLSSettings, "credential_name", 10),
    (ServiceEntry, "workload_selector", 9),
]


@pytest.mark.parametrize(
    ("message_type", "field", "number"),
    ISTIO_FIELD_NUMBERS,
    ids=[f"{t.DESCRIPTOR.name}.{f}" for t, f, _ in ISTIO_FIELD_NUMBERS],
)
def test_field_numbers_match_istio(message_type: type[Message], field: str, number: int) -> None:
    assert message_type.DESCRIPTOR.fields_by_name[field].number == number


def test_full_names_and_oneofs_match_istio() -> None:
    assert VirtualService.DESCRIPTOR.full_name == "istio.networking.v1alpha3.VirtualService"
    assert DestinationRule.DESCRIPTOR.full_name == "istio.networking.v1alpha3.DestinationRule"
    assert (
        ConnectionPoolSettings.TCPSettings.TcpKeepalive.DESCRIPTOR.full_name
        == "istio.networking.v1alpha3.ConnectionPoolSettings.TCPSettings.TcpKeepalive"
    )
    lb_oneof = LoadBalancerSettings.DESCRIPTOR.oneofs_by_name["lb_policy"]
    assert [f.name for f in lb_oneof.fields] == ["simple", "consistent_hash"]
    delay_oneof = HTTPFaultInjection.Delay.DESCRIPTOR.oneofs_by_name["http_delay_type"]
    assert [f.name for f in delay_oneof.fields] == ["fixed_delay", "exponential_delay"]
    # JSON names Istio users write.
    assert OutlierDetection.DESCRIPTOR.fields_by_name["consecutive_5xx_errors"].json_name == (
        "consecutive5xxErrors"
    )
    http = ConnectionPoolSettings.HTTPSettings.DESCRIPTOR
    assert http.fields_by_name["http1_max_pending_requests"].json_name == "http1MaxPendingRequests"
