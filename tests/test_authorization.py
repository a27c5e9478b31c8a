"""AuthorizationPolicy -> Envoy RBAC filters: message shape, Envoy validation, live requests."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from envoy.config.rbac.v3.rbac_pb2 import RBAC as RbacRules
from envoy.extensions.filters.http.rbac.v3.rbac_pb2 import RBAC
from envoy.extensions.filters.network.http_connection_manager.v3.http_connection_manager_pb2 import (  # noqa: E501
    HttpFilter,
)
from google.protobuf.json_format import MessageToDict, ParseDict

from pilotfish.protos.istio.security.v1beta1.authorization_policy_pb2 import AuthorizationPolicy
from pilotfish.sources import ConfigObject
from pilotfish.testing import EnvoyProcess, find_envoy, free_port, wait_until
from pilotfish.translators.authorization import RBAC_FILTER, policies_for, rbac_http_filters


def policy(name: str, spec: dict[str, Any], namespace: str = "shop") -> ConfigObject:
    return ConfigObject(
        api_version="security.istio.io/v1",
        kind="AuthorizationPolicy",
        namespace=namespace,
        name=name,
        spec=ParseDict(spec, AuthorizationPolicy()),
    )


def rules_of(flt: HttpFilter) -> RbacRules:
    rbac = RBAC()
    assert flt.name == RBAC_FILTER
    assert flt.typed_config.Unpack(rbac)
    return rbac.rules


def as_dict(flt: HttpFilter) -> dict[str, Any]:
    return MessageToDict(rules_of(flt))


def test_no_policies_no_filters() -> None:
    assert rbac_http_filters([]) == []


def test_policies_for_selector_and_root() -> None:
    objs = [
        policy("all", {}),
        policy("match", {"selector": {"matchLabels": {"app": "web"}}}),
        policy("other", {"selector": {"matchLabels": {"app": "db"}}}),
        policy("mesh", {}, namespace="istio-system"),
        policy("elsewhere", {}, namespace="other"),
        policy("gw", {"targetRef": {"kind": "Gateway", "name": "g"}}),
    ]
    got = policies_for(objs, "shop", {"app": "web"})
    assert [(o.namespace, o.name) for o in got] == [
        ("istio-system", "mesh"),
        ("shop", "all"),
        ("shop", "match"),
    ]


def test_allow_nothing_and_allow_all() -> None:
    [nothing] = rbac_http_filters([policy("none", {})])
    assert rules_of(nothing).action == RbacRules.ALLOW
    assert len(rules_of(nothing).policies) == 0
    [everything] = rbac_http_filters([policy("all", {"rules": [{}]})])
    got = as_dict(everything)["policies"]["ns[shop]-policy[all]-rule[0]"]
    assert got == {"permissions": [{"any": True}], "principals": [{"any": True}]}


def test_deny_only_and_deny_before_allow() -> None:
    deny = policy("d", {"action": "DENY", "rules": [{"to": [{"operation": {"paths": ["/x"]}}]}]})
    [only] = rbac_http_filters([deny])
    assert rules_of(only).action == RbacRules.DENY
    allow = policy("a", {"rules": [{}]})
    filters = rbac_http_filters([allow, deny])
    assert [rules_of(f).action for f in filters] == [RbacRules.DENY, RbacRules.ALLOW]
    # A DENY policy without rules matches nothing.
    assert rbac_http_filters([policy("d", {"action": "DENY"})]) == []


def test_principals_and_namespaces() -> None:
    spec = {
        "rules": [
            {
                "from": [
                    {"source": {"principals": ["cluster.local/ns/a/sa/b", "*/sa/c", "td/ns/x*"]}},
                    {
                        "source": {
                            "namespaces": ["prod"],
                            "notPrincipals": ["cluster.local/ns/prod/sa/bad"],
                        }
                    },
                ]
            }
        ]
    }
    [flt] = rbac_http_filters([policy("p", spec)], trust_domain="example.org")
    got = as_dict(flt)["policies"]["ns[shop]-policy[p]-rule[0]"]
    assert got["permissions"] == [{"any": True}]
    first, second = got["principals"][0]["orIds"]["ids"]
    names = [i["authenticated"]["principalName"] for i in first["orIds"]["ids"]]
    assert names == [
        {"exact": "spiffe://cluster.local/ns/a/sa/b"},
        {"suffix": "/sa/c"},
        {"prefix": "spiffe://td/ns/x"},
    ]
    not_p, ns = second["andIds"]["ids"]
    assert ns == {"authenticated": {"principalName": {"prefix": "spiffe://example.org/ns/prod/"}}}
    assert not_p == {
        "notId": {
            "authenticated": {"principalName": {"exact": "spiffe://cluster.local/ns/prod/sa/bad"}}
        }
    }


def test_operations_paths_methods_ports() -> None:
    spec = {
        "rules": [
            {
                "to": [
                    {
                        "operation": {
                            "methods": ["GET"],
                            "paths": ["/api/*", "*.css", "/exact"],
                            "ports": ["8080"],
                            "notPaths": ["/api/admin"],
                        }
                    }
                ],
                "from": [{"source": {"ipBlocks": ["10.0.0.0/8", "1.2.3.4"]}}],
            }
        ]
    }
    [flt] = rbac_http_filters([policy("p", spec)])
    got = as_dict(flt)["policies"]["ns[shop]-policy[p]-rule[0]"]
    ports, methods, paths, not_paths = got["permissions"][0]["andRules"]["rules"]
    assert ports == {"destinationPort": 8080}
    assert methods == {"header": {"name": ":method", "stringMatch": {"exact": "GET"}}}
    assert [r["urlPath"]["path"] for r in paths["orRules"]["rules"]] == [
        {"prefix": "/api/"},
        {"suffix": ".css"},
        {"exact": "/exact"},
    ]
    assert not_paths == {"notRule": {"urlPath": {"path": {"exact": "/api/admin"}}}}
    cidrs = [i["directRemoteIp"] for i in got["principals"][0]["orIds"]["ids"]]
    assert cidrs == [
        {"addressPrefix": "10.0.0.0", "prefixLen": 8},
        {"addressPrefix": "1.2.3.4", "prefixLen": 32},
    ]


def test_unsupported_condition_allow_drops_deny_ignores() -> None:
    rule = {"when": [{"key": "request.auth.claims[iss]", "values": ["x"]}]}
    [allow] = rbac_http_filters([policy("a", {"rules": [rule]})])
    assert len(rules_of(allow).policies) == 0
    [deny] = rbac_http_filters([policy("d", {"action": "DENY", "rules": [rule]})])
    got = as_dict(deny)["policies"]["ns[shop]-policy[d]-rule[0]"]
    assert got == {"permissions": [{"any": True}], "principals": [{"any": True}]}


# -- Envoy ----------------------------------------------------------------------------------

POLICIES = [
    policy(
        "allow-public",
        {
            "rules": [
                {"to": [{"operation": {"methods": ["GET"], "paths": ["/public/*", "/health"]}}]}
            ]
        },
    ),
    policy(
        "allow-header",
        {"rules": [{"when": [{"key": "request.headers[x-token]", "values": ["secret"]}]}]},
    ),
    policy(
        "deny-admin",
        {"action": "DENY", "rules": [{"to": [{"operation": {"paths": ["/public/admin*"]}}]}]},
    ),
]


def bootstrap(port: int, filters: list[HttpFilter]) -> dict[str, Any]:
    http_filters = [MessageToDict(f) for f in filters] + [
        {
            "name": "envoy.filters.http.router",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
            },
        }
    ]
    hcm = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network."
        "http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "inbound",
        "http_filters": http_filters,
        "route_config": {
            "virtual_hosts": [
                {
                    "name": "all",
                    "domains": ["*"],
                    "routes": [
                        {
                            "match": {"prefix": "/"},
                            "direct_response": {"status": 200, "body": {"inline_string": "ok"}},
                        }
                    ],
                }
            ]
        },
    }
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {
            "listeners": [
                {
                    "name": "inbound",
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
                    "filter_chains": [
                        {
                            "filters": [
                                {
                                    "name": "envoy.filters.network.http_connection_manager",
                                    "typed_config": hcm,
                                }
                            ]
                        }
                    ],
                }
            ]
        },
    }


def test_envoy_validates_every_kind_of_rule(tmp_path: Path) -> None:
    rich = policy(
        "rich",
        {
            "rules": [
                {
                    "from": [
                        {
                            "source": {
                                "principals": ["*"],
                                "namespaces": ["a*"],
                                "notIpBlocks": ["10.1.0.0/16"],
                            }
                        }
                    ],
                    "to": [
                        {
                            "operation": {
                                "hosts": ["*.example.com"],
                                "ports": ["80"],
                                "notMethods": ["DELETE"],
                            }
                        }
                    ],
                    "when": [
                        {"key": "source.namespace", "values": ["prod"]},
                        {"key": "destination.port", "notValues": ["9090"]},
                        {"key": "source.ip", "values": ["192.168.0.0/16"]},
                    ],
                }
            ]
        },
    )
    config = tmp_path / "envoy.json"
    config.write_text(json.dumps(bootstrap(10000, rbac_http_filters([*POLICIES, rich]))))
    result = subprocess.run(
        [find_envoy(), "--mode", "validate", "-c", str(config)],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr + result.stdout


def test_envoy_enforces_policies() -> None:
    port = free_port()
    with EnvoyProcess(bootstrap(port, rbac_http_filters(POLICIES)), name="rbac") as envoy:
        envoy.wait_ready()
        wait_until(lambda: envoy.request(port, "/health").status == 200, message="listener")
        assert envoy.request(port, "/public/page").status == 200
        assert envoy.request(port, "/public/page", method="POST").status == 403
        assert envoy.request(port, "/private").status == 403
        assert envoy.request(port, "/private", headers={"x-token": "secret"}).status == 200
        assert envoy.request(port, "/private", headers={"x-token": "wrong"}).status == 403
        # DENY beats ALLOW, even when an ALLOW rule (path or header) matches.
        assert envoy.request(port, "/public/admin").status == 403
        assert envoy.request(port, "/public/admin", headers={"x-token": "secret"}).status == 403


def test_audit_logs_and_never_denies() -> None:
    audit = policy("audit-admin", {"action": "AUDIT", "rules": [{"to": [{"operation": {
        "paths": ["/public/*"]}}]}]})  # fmt: skip
    filters = rbac_http_filters([*POLICIES, audit])
    assert [rules_of(f).action for f in filters] == [RbacRules.LOG, RbacRules.DENY, RbacRules.ALLOW]
    port = free_port()
    with EnvoyProcess(bootstrap(port, filters), name="rbac-audit") as envoy:
        envoy.wait_ready()
        wait_until(lambda: envoy.request(port, "/health").status == 200, message="listener")
        assert envoy.request(port, "/public/page").status == 200  # audited, still allowed
        assert envoy.request(port, "/public/admin").status == 403  # DENY still applies
