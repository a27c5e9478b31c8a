"""security.istio.io/v1beta1 specs in Istio's JSON form parse into pilotfish's protos and back."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from pilotfish.protos.istio.security.v1beta1.authorization_policy_pb2 import (
    AuthorizationPolicy,
    Condition,
    Operation,
    Rule,
    Source,
)
from pilotfish.protos.istio.security.v1beta1.peer_authentication_pb2 import PeerAuthentication
from pilotfish.protos.istio.type.v1beta1.selector_pb2 import (
    PolicyTargetReference,
    WorkloadSelector,
)

PEER_AUTHENTICATION: dict[str, Any] = {
    "selector": {"matchLabels": {"app": "finance"}},
    "mtls": {"mode": "STRICT"},
    "portLevelMtls": {"8080": {"mode": "DISABLE"}, "9090": {"mode": "PERMISSIVE"}},
}

AUTHORIZATION_POLICY: dict[str, Any] = {
    "selector": {"matchLabels": {"app": "httpbin", "version": "v1"}},
    "action": "DENY",
    "rules": [
        {
            "from": [
                {
                    "source": {
                        "principals": ["cluster.local/ns/default/sa/sleep"],
                        "namespaces": ["test"],
                        "ipBlocks": ["203.0.113.0/24"],
                        "notIpBlocks": ["203.0.113.4"],
                        "requestPrincipals": ["example.com/sub-1"],
                        "remoteIpBlocks": ["198.51.100.1"],
                    }
                },
                {"source": {"notNamespaces": ["prod"]}},
            ],
            "to": [
                {
                    "operation": {
                        "methods": ["GET", "HEAD"],
                        "paths": ["/info*"],
                        "ports": ["8080"],
                        "hosts": ["*.example.com"],
                        "notPaths": ["/admin*"],
                    }
                }
            ],
            "when": [
                {"key": "request.auth.claims[iss]", "values": ["https://accounts.google.com"]},
                {"key": "source.ip", "notValues": ["10.0.0.1"]},
            ],
        },
        {},
    ],
}

CUSTOM_POLICY: dict[str, Any] = {
    "targetRefs": [
        {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "ingress"},
        {"kind": "Service", "name": "reviews", "namespace": "default"},
    ],
    "action": "CUSTOM",
    "provider": {"name": "my-custom-authz"},
    "rules": [{"to": [{"operation": {"paths": ["/admin/*"]}}]}],
}


def _parse(spec: dict[str, Any], message: Message) -> Message:
    # ignore_unknown_fields=False (the default): any field Istio has and we lack fails here.
    return json_format.ParseDict(copy.deepcopy(spec), message, ignore_unknown_fields=False)


def _to_dict(message: Message) -> dict[str, Any]:
    return json_format.MessageToDict(message, preserving_proto_field_name=False)


@pytest.mark.parametrize(
    ("spec", "message_type"),
    [
        (PEER_AUTHENTICATION, PeerAuthentication),
        (AUTHORIZATION_POLICY, AuthorizationPolicy),
        (CUSTOM_POLICY, AuthorizationPolicy),
    ],
    ids=["peer-authentication", "authorization-policy-deny", "authorization-policy-custom"],
)
def test_istio_json_round_trips(spec: dict[str, Any], message_type: type[Message]) -> None:
    message = _parse(spec, message_type())
    assert _to_dict(message) == spec
    again = message_type.FromString(message.SerializeToString(deterministic=True))
    assert again == message


def test_peer_authentication_fields() -> None:
    pa = PeerAuthentication()
    _parse(PEER_AUTHENTICATION, pa)
    assert dict(pa.selector.match_labels) == {"app": "finance"}
    assert pa.mtls.mode == PeerAuthentication.MutualTLS.STRICT
    assert pa.port_level_mtls[8080].mode == PeerAuthentication.MutualTLS.DISABLE
    assert pa.port_level_mtls[9090].mode == PeerAuthentication.MutualTLS.PERMISSIVE
    assert PeerAuthentication.MutualTLS.Mode.keys() == ["UNSET", "DISABLE", "PERMISSIVE", "STRICT"]


def test_authorization_policy_fields() -> None:
    policy = AuthorizationPolicy()
    _parse(AUTHORIZATION_POLICY, policy)
    assert policy.action == AuthorizationPolicy.DENY
    assert policy.WhichOneof("action_detail") is None
    rule = policy.rules[0]
    sources: list[Rule.From] = list(getattr(rule, "from"))  # `from` is a Python keyword
    assert list(sources[0].source.principals) == ["cluster.local/ns/default/sa/sleep"]
    assert list(sources[0].source.ip_blocks) == ["203.0.113.0/24"]
    assert list(rule.to[0].operation.ports) == ["8080"]
    assert rule.when[1].not_values == ["10.0.0.1"]
    assert policy.rules[1] == Rule()
    assert AuthorizationPolicy.Action.keys() == ["ALLOW", "DENY", "AUDIT", "CUSTOM"]


def test_custom_action_uses_the_provider_oneof() -> None:
    policy = AuthorizationPolicy()
    _parse(CUSTOM_POLICY, policy)
    assert policy.action == AuthorizationPolicy.CUSTOM
    assert policy.WhichOneof("action_detail") == "provider"
    assert policy.provider.name == "my-custom-authz"
    gateway, service = policy.targetRefs
    assert not gateway.HasField("namespace")  # proto3 `optional`: absent means "same namespace"
    assert service.HasField("namespace")
    assert service.namespace == "default"


def test_unknown_fields_are_rejected() -> None:
    with pytest.raises(json_format.ParseError):
        _parse({"mtls": {"mode": "STRICT"}, "portLevelMTLS": {}}, PeerAuthentication())
    with pytest.raises(json_format.ParseError):
        _parse({"action": "REJECT"}, AuthorizationPolicy())


def _fields(message_type: type[Message]) -> dict[str, tuple[int, int, str]]:
    out: dict[str, tuple[int, int, str]] = {}
    for field in message_type.DESCRIPTOR.fields:
        kind = "repeated" if field.is_repeated else field.json_name
        out[field.name] = (field.number, field.type, kind)
    return out


def test_field_numbers_match_istio() -> None:
    message = FieldDescriptor.TYPE_MESSAGE
    string = FieldDescriptor.TYPE_STRING
    enum = FieldDescriptor.TYPE_ENUM
    assert _fields(AuthorizationPolicy) == {
        "selector": (1, message, "selector"),
        "rules": (2, message, "repeated"),
        "action": (3, enum, "action"),
        "provider": (4, message, "provider"),
        "targetRef": (5, message, "targetRef"),
        "targetRefs": (6, message, "repeated"),
    }
    assert _fields(Rule) == {
        "from": (1, message, "repeated"),
        "to": (2, message, "repeated"),
        "when": (3, message, "repeated"),
    }
    assert {f.name: f.number for f in Source.DESCRIPTOR.fields} == {
        "principals": 1,
        "request_principals": 2,
        "namespaces": 3,
        "ip_blocks": 4,
        "not_principals": 5,
        "not_request_principals": 6,
        "not_namespaces": 7,
        "not_ip_blocks": 8,
        "remote_ip_blocks": 9,
        "not_remote_ip_blocks": 10,
    }
    assert {f.name: f.number for f in Operation.DESCRIPTOR.fields} == {
        "hosts": 1,
        "ports": 2,
        "methods": 3,
        "paths": 4,
        "not_hosts": 5,
        "not_ports": 6,
        "not_methods": 7,
        "not_paths": 8,
    }
    assert _fields(Condition) == {
        "key": (1, string, "key"),
        "values": (2, string, "repeated"),
        "not_values": (3, string, "repeated"),
    }
    assert _fields(PeerAuthentication) == {
        "selector": (1, message, "selector"),
        "mtls": (2, message, "mtls"),
        "port_level_mtls": (3, message, "repeated"),
    }
    port_level = PeerAuthentication.DESCRIPTOR.fields_by_name["port_level_mtls"].message_type
    assert port_level is not None
    assert port_level.GetOptions().map_entry
    assert port_level.fields_by_name["key"].type == FieldDescriptor.TYPE_UINT32
    assert _fields(PeerAuthentication.MutualTLS) == {"mode": (1, enum, "mode")}
    assert WorkloadSelector.DESCRIPTOR.fields_by_name["match_labels"].number == 1
    assert _fields(PolicyTargetReference) == {
        "group": (1, string, "group"),
        "kind": (2, string, "kind"),
        "name": (3, string, "name"),
        "namespace": (4, string, "namespace"),
    }


def test_full_names_match_istio() -> None:
    assert AuthorizationPolicy.DESCRIPTOR.full_name == "istio.security.v1beta1.AuthorizationPolicy"
    assert PeerAuthentication.DESCRIPTOR.full_name == "istio.security.v1beta1.PeerAuthentication"
    assert WorkloadSelector.DESCRIPTOR.full_name == "istio.type.v1beta1.WorkloadSelector"
    assert PolicyTargetReference.DESCRIPTOR.full_name == "istio.type.v1beta1.PolicyTargetReference"


def test_wire_bytes_are_istio_compatible() -> None:
    # Hand-encoded: PeerAuthentication{mtls(2){mode(1)=STRICT(3)}}.
    assert PeerAuthentication.FromString(b"\x12\x02\x08\x03").mtls.mode == (
        PeerAuthentication.MutualTLS.STRICT
    )
    # AuthorizationPolicy{action(3)=DENY(1), provider(4){name(1)="x"}}.
    policy = AuthorizationPolicy.FromString(b"\x18\x01\x22\x03\x0a\x01x")
    assert policy.action == AuthorizationPolicy.DENY
    assert policy.provider.name == "x"
