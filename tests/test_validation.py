"""istiod's semantic rules, kind by kind: a table of invalid objects, each refused with the exact
field and why; valid edge cases that must load (the rules are not stricter than they should be);
and Istio's bookinfo sample, which must still load without a single error."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest

from pilotfish.sources import load_documents, load_path

BOOKINFO = Path(__file__).resolve().parents[2] / "shared" / "conformance" / "istio-bookinfo"

_SECURITY = {"PeerAuthentication", "AuthorizationPolicy"}


def manifest(kind: str, spec: str, *, name: str = "bad", namespace: str = "shop") -> str:
    """A whole document around `spec`: flow style (`{...}`) inline, block style indented."""
    group = "security.istio.io" if kind in _SECURITY else "networking.istio.io"
    spec = textwrap.dedent(spec).strip()
    body = f" {spec}" if spec.startswith("{") else "\n" + textwrap.indent(spec, "  ")
    return (
        f"apiVersion: {group}/v1\nkind: {kind}\n"
        f"metadata: {{name: {name}, namespace: {namespace}}}\nspec:{body}\n"
    )


def bad(case_id: str, kind: str, spec: str, field: str, reason: str) -> Any:
    return pytest.param(manifest(kind, spec), kind, field, reason, id=case_id)


# A route and a match most VirtualService cases build on.
ROUTE = "route: [{destination: {host: a}}]"


def vs_match(match: str) -> str:
    return f"{{hosts: [a], http: [{{match: [{match}], {ROUTE}}}]}}"


def vs_http(route: str) -> str:
    return f"{{hosts: [a], http: [{{{route}}}]}}"


VS, DR, SE, WE = "VirtualService", "DestinationRule", "ServiceEntry", "WorkloadEntry"
GW, SC, PA, AP = "Gateway", "Sidecar", "PeerAuthentication", "AuthorizationPolicy"
HTTP_SERVER = "port: {number: 80, name: http, protocol: HTTP}"
HTTPS_PORT = "port: {number: 443, name: https, protocol: HTTPS}"

INVALID = [
    # --- VirtualService: hosts and gateways
    bad("vs-no-routes", VS, "{hosts: [a]}", "spec", "at least one http, tcp or tls route"),
    bad("vs-host-underscore", VS, f"{{hosts: [foo_bar.com], http: [{{{ROUTE}}}]}}",
        "spec.hosts[0]", "'foo_bar' is not a valid DNS label"),
    bad("vs-host-wildcard-not-leftmost", VS, f"{{hosts: [foo.*.com], http: [{{{ROUTE}}}]}}",
        "spec.hosts[0]", "leftmost label"),
    bad("vs-star-host-in-mesh", VS, f"{{hosts: ['*'], http: [{{{ROUTE}}}]}}",
        "spec.hosts[0]", "only allowed when bound to gateways"),
    bad("vs-star-host-with-mesh-gateway", VS,
        f"{{hosts: ['*'], gateways: [istio-system/ingress, mesh], http: [{{{ROUTE}}}]}}",
        "spec.hosts[0]", "not the mesh"),
    bad("vs-overlapping-hosts", VS,
        f"{{hosts: [a.example.com, '*.example.com'], http: [{{{ROUTE}}}]}}",
        "spec.hosts[1]", "overlaps hosts[0]"),
    bad("vs-gateway-bad-namespace", VS,
        f"{{hosts: [a], gateways: [Bad_NS/ingress], http: [{{{ROUTE}}}]}}",
        "spec.gateways[0]", "DNS-1123 labels"),
    bad("vs-gateway-empty-name", VS,
        f"{{hosts: [a], gateways: [istio-system/], http: [{{{ROUTE}}}]}}",
        "spec.gateways[0]", "DNS-1123 labels"),
    bad("vs-export-to-star-and-more", VS,
        f"{{hosts: [a], exportTo: ['*', '.'], http: [{{{ROUTE}}}]}}",
        "spec.exportTo", "'*' exports to every namespace"),
    # --- VirtualService: HTTP matches and RE2
    bad("vs-uri-match-without-value", VS, vs_match("{uri: {}}"),
        "spec.http[0].match[0].uri", "needs one of exact, prefix, regex"),
    bad("vs-uri-exact-and-prefix", VS, vs_match("{uri: {exact: /a, prefix: /b}}"),
        "spec.http[0].match[0].uri", 'multiple "match_type"'),
    bad("vs-regex-lookahead", VS, vs_match("{uri: {regex: '/api(?=/v1)'}}"),
        "spec.http[0].match[0].uri.regex", "lookahead (?= is not supported by RE2"),
    bad("vs-regex-lookbehind", VS, vs_match(r"{authority: {regex: '(?<=www\.)example\.com'}}"),
        "spec.http[0].match[0].authority.regex", "lookbehind"),
    bad("vs-regex-negative-lookahead-header", VS,
        vs_match("{headers: {x-user: {regex: '(?!admin).*'}}}"),
        "spec.http[0].match[0].headers[x-user].regex", "negative lookahead"),
    bad("vs-regex-backreference", VS, vs_match(r"{uri: {regex: '/(a+)/\1'}}"),
        "spec.http[0].match[0].uri.regex", "backreference"),
    bad("vs-regex-possessive", VS, vs_match("{uri: {regex: '/a++'}}"),
        "spec.http[0].match[0].uri.regex", "possessive"),
    bad("vs-regex-repeat-over-1000", VS, vs_match("{uri: {regex: '/a{1001}'}}"),
        "spec.http[0].match[0].uri.regex", "limit of 1000"),
    bad("vs-regex-verbose-flag", VS, vs_match("{uri: {regex: '(?x) /a'}}"),
        "spec.http[0].match[0].uri.regex", "flag 'x' is not supported"),
    bad("vs-regex-unbalanced", VS, vs_match("{uri: {regex: '/api/(v1'}}"),
        "spec.http[0].match[0].uri.regex", "not a valid RE2 regex"),
    bad("vs-regex-too-long", VS, vs_match("{uri: {regex: '" + "a" * 1025 + "'}}"),
        "spec.http[0].match[0].uri.regex", "at most 1024"),
    bad("vs-regex-empty-query-param", VS, vs_match("{queryParams: {id: {regex: ''}}}"),
        "spec.http[0].match[0].queryParams[id].regex", "must not be empty"),
    bad("vs-header-name-uppercase", VS, vs_match("{headers: {X-User: {exact: jason}}}"),
        "spec.http[0].match[0].headers[X-User]", "must be lowercase"),
    bad("vs-jwt-claim-routing-in-mesh", VS,
        vs_match("{headers: {'@request.auth.claims.group': {exact: admin}}}"),
        "spec.http[0].match[0].headers[@request.auth.claims.group]", "bound to gateways"),
    bad("vs-scheme-empty-prefix", VS, vs_match("{scheme: {prefix: ''}}"),
        "spec.http[0].match[0].scheme.prefix", "must not be empty"),
    bad("vs-match-port-out-of-range", VS, vs_match("{port: 70000}"),
        "spec.http[0].match[0].port", "expected 1 to 65535"),
    bad("vs-match-source-label", VS, vs_match("{sourceLabels: {app: 'not ok'}}"),
        "spec.http[0].match[0].sourceLabels[app]", "not a valid label value"),
    # --- VirtualService: HTTP actions
    bad("vs-destination-port-zero", VS,
        vs_http("route: [{destination: {host: a, port: {number: 0}}}]"),
        "spec.http[0].route[0].destination.port.number", "expected 1 to 65535"),
    bad("vs-destination-star", VS, vs_http("route: [{destination: {host: '*'}}]"),
        "spec.http[0].route[0].destination.host", "not a destination"),
    bad("vs-destination-subset-uppercase", VS,
        vs_http("route: [{destination: {host: a, subset: V1}}]"),
        "spec.http[0].route[0].destination.subset", "DNS-1123"),
    bad("vs-rewrite-uri-and-regex", VS,
        vs_http(f"{ROUTE}, rewrite: {{uri: /x, uriRegexRewrite: {{match: '^/a', rewrite: /b}}}}"),
        "spec.http[0].rewrite", "uri or uriRegexRewrite, not both"),
    bad("vs-rewrite-empty", VS, vs_http(f"{ROUTE}, rewrite: {{}}"),
        "spec.http[0].rewrite", "needs one of uri, uriRegexRewrite, authority"),
    bad("vs-rewrite-regex-lookahead", VS,
        vs_http(f"{ROUTE}, rewrite: {{uriRegexRewrite: {{match: '^/(?!x)', rewrite: /}}}}"),
        "spec.http[0].rewrite.uriRegexRewrite.match", "negative lookahead"),
    bad("vs-rewrite-with-redirect", VS, vs_http("redirect: {uri: /x}, rewrite: {uri: /y}"),
        "spec.http[0].rewrite", "cannot be combined with redirect"),
    bad("vs-redirect-without-target", VS, vs_http("redirect: {redirectCode: 301}"),
        "spec.http[0].redirect", "needs at least one of uri, authority, scheme"),
    bad("vs-redirect-scheme", VS, vs_http("redirect: {scheme: ftp}"),
        "spec.http[0].redirect.scheme", "'ftp' is not http or https"),
    bad("vs-redirect-port-out-of-range", VS, vs_http("redirect: {port: 70000}"),
        "spec.http[0].redirect.port", "expected 1 to 65535"),
    bad("vs-redirect-port-and-derive-port", VS,
        vs_http("redirect: {port: 80, derivePort: FROM_REQUEST_PORT}"),
        "spec.http[0].redirect", 'multiple "redirect_port"'),
    bad("vs-direct-response-status", VS, vs_http("directResponse: {status: 700}"),
        "spec.http[0].directResponse.status", "between 200 and 599"),
    bad("vs-fault-with-direct-response", VS,
        vs_http("directResponse: {status: 503}, fault: {delay: {fixedDelay: 1s}}"),
        "spec.http[0].fault", "cannot be combined with directResponse"),
    bad("vs-fault-grpc-status", VS,
        vs_http(f"{ROUTE}, fault: {{abort: {{grpcStatus: NOPE, percentage: {{value: 5}}}}}}"),
        "spec.http[0].fault.abort.grpcStatus", "not a gRPC status name"),
    bad("vs-fault-empty", VS, vs_http(f"{ROUTE}, fault: {{}}"),
        "spec.http[0].fault", "needs an abort, a delay or both"),
    bad("vs-retries-negative", VS, vs_http(f"{ROUTE}, retries: {{attempts: -1}}"),
        "spec.http[0].retries.attempts", "must not be negative"),
    bad("vs-retries-zero-with-settings", VS,
        vs_http(f"{ROUTE}, retries: {{attempts: 0, retryOn: 5xx}}"),
        "spec.http[0].retries.attempts", "retries disabled"),
    bad("vs-retries-per-try-timeout", VS,
        vs_http(f"{ROUTE}, retries: {{attempts: 2, perTryTimeout: 0.0001s}}"),
        "spec.http[0].retries.perTryTimeout", "at least 1ms"),
    bad("vs-mirror-and-mirrors", VS,
        vs_http(f"{ROUTE}, mirror: {{host: b}}, mirrors: [{{destination: {{host: c}}}}]"),
        "spec.http[0].mirrors", "cannot be combined with mirror"),
    bad("vs-mirror-percentage", VS,
        vs_http(f"{ROUTE}, mirror: {{host: b}}, mirrorPercentage: {{value: 101}}"),
        "spec.http[0].mirrorPercentage.value", "between 0 and 100"),
    bad("vs-mirrors-without-destination", VS,
        vs_http(f"{ROUTE}, mirrors: [{{percentage: {{value: 5}}}}]"),
        "spec.http[0].mirrors[0].destination", "is required"),
    bad("vs-cors-empty-origin", VS,
        vs_http(f"{ROUTE}, corsPolicy: {{allowOrigins: [{{exact: ''}}]}}"),
        "spec.http[0].corsPolicy.allowOrigins[0]", "non-empty exact, prefix or regex"),
    bad("vs-cors-origin-lookbehind", VS,
        vs_http(f"{ROUTE}, corsPolicy: {{allowOrigins: [{{regex: '(?<!evil)\\.com'}}]}}"),
        "spec.http[0].corsPolicy.allowOrigins[0].regex", "negative lookbehind"),
    bad("vs-cors-method-lowercase", VS, vs_http(f"{ROUTE}, corsPolicy: {{allowMethods: [get]}}"),
        "spec.http[0].corsPolicy.allowMethods[0]", "not an HTTP method"),
    bad("vs-cors-max-age-fraction", VS, vs_http(f"{ROUTE}, corsPolicy: {{maxAge: 1.5s}}"),
        "spec.http[0].corsPolicy.maxAge", "whole seconds"),
    bad("vs-headers-remove-host", VS, vs_http(f"{ROUTE}, headers: {{request: {{remove: [host]}}}}"),
        "spec.http[0].headers.request.remove[0]", "host header"),
    bad("vs-headers-set-pseudo-header", VS,
        vs_http(f"{ROUTE}, headers: {{response: {{set: {{':status': '200'}}}}}}"),
        "spec.http[0].headers.response.set[:status]", "pseudo-header"),
    bad("vs-route-headers-add-empty-name", VS,
        vs_http("route: [{destination: {host: a}, headers: {request: {add: {'': x}}}}]"),
        "spec.http[0].route[0].headers.request.add[]", "must not be empty"),
    bad("vs-authority-set-twice", VS,
        vs_http(f"{ROUTE}, rewrite: {{authority: a}}, headers: {{request: {{set: {{host: b}}}}}}"),
        "spec.http[0].headers.request", "more than once"),
    bad("vs-delegate-without-name", VS, vs_http("delegate: {namespace: shop}"),
        "spec.http[0].delegate.name", "is required"),
    # --- VirtualService: TLS and TCP routes
    bad("vs-tls-match-without-sni", VS,
        "{hosts: [a.example.com], tls: [{match: [{port: 443}], "
        "route: [{destination: {host: a}}]}]}",
        "spec.tls[0].match[0].sniHosts", "at least one SNI host"),
    bad("vs-tls-sni-outside-hosts", VS,
        """
        hosts: ['*.example.com']
        tls:
        - match: [{sniHosts: [a.example.org]}]
          route: [{destination: {host: a}}]
        """,
        "spec.tls[0].match[0].sniHosts[0]", "not within any of the hosts"),
    bad("vs-tls-weights", VS,
        """
        hosts: [a.example.com]
        tls:
        - match: [{sniHosts: [a.example.com]}]
          route:
          - {destination: {host: a, subset: v1}, weight: 50}
          - {destination: {host: a, subset: v2}, weight: 40}
        """,
        "spec.tls[0].route", "add up to 90, not 100"),
    bad("vs-tcp-without-route", VS, "{hosts: [db], tcp: [{match: [{port: 3306}]}]}",
        "spec.tcp[0].route", "at least one destination"),
    bad("vs-tcp-destination-without-host", VS,
        "{hosts: [db], tcp: [{route: [{destination: {subset: v1}}]}]}",
        "spec.tcp[0].route[0].destination.host", "is required"),
    bad("vs-tcp-bad-subnet", VS,
        "{hosts: [db], tcp: [{match: [{destinationSubnets: [10.0.0.0/33]}], "
        "route: [{destination: {host: db}}]}]}",
        "spec.tcp[0].match[0].destinationSubnets[0]", "not an IP address or CIDR block"),
    # --- DestinationRule
    bad("dr-host-empty-label", DR, "{host: reviews..svc}", "spec.host", "empty label"),
    bad("dr-pool-http-negative", DR,
        "{host: r, trafficPolicy: {connectionPool: {http: {http1MaxPendingRequests: -1}}}}",
        "spec.trafficPolicy.connectionPool.http.http1MaxPendingRequests", "must not be negative"),
    bad("dr-pool-tcp-negative", DR,
        "{host: r, trafficPolicy: {connectionPool: {tcp: {maxConnections: -5}}}}",
        "spec.trafficPolicy.connectionPool.tcp.maxConnections", "must not be negative"),
    bad("dr-connect-timeout-zero", DR,
        "{host: r, trafficPolicy: {connectionPool: {tcp: {connectTimeout: 0s}}}}",
        "spec.trafficPolicy.connectionPool.tcp.connectTimeout", "at least 1ms"),
    bad("dr-h2-upgrade-with-client-protocol", DR,
        "{host: r, trafficPolicy: {connectionPool: {http: {h2UpgradePolicy: UPGRADE, "
        "useClientProtocol: true}}}}",
        "spec.trafficPolicy.connectionPool.http.useClientProtocol", "UPGRADE"),
    bad("dr-outlier-interval-zero", DR,
        "{host: r, trafficPolicy: {outlierDetection: {interval: 0s}}}",
        "spec.trafficPolicy.outlierDetection.interval", "at least 1ms"),
    bad("dr-outlier-consecutive-errors-negative", DR,
        "{host: r, trafficPolicy: {outlierDetection: {consecutiveErrors: -1}}}",
        "spec.trafficPolicy.outlierDetection.consecutiveErrors", "must not be negative"),
    bad("dr-outlier-local-origin-without-split", DR,
        "{host: r, trafficPolicy: {outlierDetection: {consecutiveLocalOriginFailures: 3}}}",
        "spec.trafficPolicy.outlierDetection.consecutiveLocalOriginFailures",
        "needs splitExternalLocalOriginErrors"),
    bad("dr-tls-mutual-without-certificate", DR,
        "{host: r, trafficPolicy: {tls: {mode: MUTUAL, privateKey: /etc/key.pem}}}",
        "spec.trafficPolicy.tls.clientCertificate", "is required for MUTUAL"),
    bad("dr-tls-credential-name-with-files", DR,
        "{host: r, trafficPolicy: {tls: {mode: SIMPLE, credentialName: c, caCertificates: /ca}}}",
        "spec.trafficPolicy.tls.credentialName", "cannot be combined with clientCertificate"),
    bad("dr-http-cookie-without-name", DR,
        "{host: r, trafficPolicy: {loadBalancer: {consistentHash: {httpCookie: {ttl: 10s}}}}}",
        "spec.trafficPolicy.loadBalancer.consistentHash.httpCookie.name", "is required"),
    bad("dr-maglev-table-not-prime", DR,
        "{host: r, trafficPolicy: {loadBalancer: {consistentHash: {useSourceIp: true, "
        "maglev: {tableSize: 1000}}}}}",
        "spec.trafficPolicy.loadBalancer.consistentHash.maglev.tableSize", "must be a prime"),
    bad("dr-ring-hash-too-big", DR,
        "{host: r, trafficPolicy: {loadBalancer: {consistentHash: {useSourceIp: true, "
        "ringHash: {minimumRingSize: 9000000}}}}}",
        "spec.trafficPolicy.loadBalancer.consistentHash.ringHash.minimumRingSize",
        "at most 8388608"),
    bad("dr-locality-distribute-and-failover", DR,
        """
        host: r
        trafficPolicy:
          loadBalancer:
            localityLbSetting:
              distribute: [{from: us-east/*, to: {us-east/*: 100}}]
              failover: [{from: us-east, to: us-west}]
        """,
        "spec.trafficPolicy.loadBalancer.localityLbSetting", "distribute or failover, not both"),
    bad("dr-locality-weights", DR,
        """
        host: r
        trafficPolicy:
          loadBalancer:
            localityLbSetting:
              distribute: [{from: us-east/*, to: {us-east/*: 60, us-west/*: 30}}]
        """,
        "spec.trafficPolicy.loadBalancer.localityLbSetting.distribute[0].to",
        "add up to 90, not 100"),
    bad("dr-port-level-without-port", DR,
        "{host: r, trafficPolicy: {portLevelSettings: [{tls: {mode: SIMPLE}}]}}",
        "spec.trafficPolicy.portLevelSettings[0].port", "is required"),
    bad("dr-port-level-without-settings", DR,
        "{host: r, trafficPolicy: {portLevelSettings: [{port: {number: 80}}]}}",
        "spec.trafficPolicy.portLevelSettings[0]", "needs at least one of"),
    bad("dr-port-level-port-out-of-range", DR,
        "{host: r, trafficPolicy: {portLevelSettings: [{port: {number: 65536}, "
        "tls: {mode: SIMPLE}}]}}",
        "spec.trafficPolicy.portLevelSettings[0].port.number", "expected 1 to 65535"),
    bad("dr-subset-policy-recursive", DR,
        "{host: r, subsets: [{name: v1, labels: {version: v1}, trafficPolicy: "
        "{connectionPool: {http: {maxRetries: -1}}}}]}",
        "spec.subsets[0].trafficPolicy.connectionPool.http.maxRetries", "must not be negative"),
    bad("dr-subset-label-value", DR, "{host: r, subsets: [{name: v1, labels: {version: 'v 1'}}]}",
        "spec.subsets[0].labels[version]", "not a valid label value"),
    # --- ServiceEntry
    bad("se-no-hosts", SE, "{ports: [{number: 80, name: http}]}",
        "spec.hosts", "at least one host"),
    bad("se-star-host", SE, "{hosts: ['*'], ports: [{number: 80, name: http}]}",
        "spec.hosts[0]", "'*' alone is not allowed"),
    bad("se-no-ports", SE, "{hosts: [api.example.com]}", "spec.ports", "at least one port"),
    bad("se-port-zero", SE, "{hosts: [api.example.com], ports: [{number: 0, name: http}]}",
        "spec.ports[0].number", "expected 1 to 65535"),
    bad("se-duplicate-port-number", SE,
        "{hosts: [api.example.com], ports: [{number: 80, name: http}, {number: 80, name: web}]}",
        "spec.ports[1].number", "port 80 is defined twice"),
    bad("se-duplicate-port-name", SE,
        "{hosts: [api.example.com], ports: [{number: 80, name: http}, {number: 81, name: http}]}",
        "spec.ports[1].name", "'http' is defined twice"),
    bad("se-port-without-name", SE, "{hosts: [api.example.com], ports: [{number: 80}]}",
        "spec.ports[0].name", "is required"),
    bad("se-unknown-protocol", SE,
        "{hosts: [api.example.com], ports: [{number: 25, name: smtp, protocol: SMTP}]}",
        "spec.ports[0].protocol", "unknown protocol 'SMTP'"),
    bad("se-static-hostname-endpoint", SE,
        """
        hosts: [db.example.com]
        resolution: STATIC
        ports: [{number: 5432, name: tcp, protocol: TCP}]
        endpoints: [{address: db1.example.com}]
        """,
        "spec.endpoints[0].address", "resolution STATIC needs an IP"),
    bad("se-none-with-endpoints", SE,
        "{hosts: [db.example.com], ports: [{number: 5432, name: tcp}], endpoints: "
        "[{address: 10.0.0.1}]}",
        "spec.endpoints", "must be empty for resolution NONE"),
    bad("se-endpoints-and-selector", SE,
        "{hosts: [db.example.com], resolution: STATIC, ports: [{number: 5432, name: tcp}], "
        "endpoints: [{address: 10.0.0.1}], workloadSelector: {labels: {app: db}}}",
        "spec.workloadSelector", "cannot be combined with endpoints"),
    bad("se-endpoint-port-not-declared", SE,
        "{hosts: [db.example.com], resolution: STATIC, ports: [{number: 5432, name: tcp}], "
        "endpoints: [{address: 10.0.0.1, ports: {grpc: 9090}}]}",
        "spec.endpoints[0].ports[grpc]", "not declared in spec.ports"),
    bad("se-dns-bad-endpoint-address", SE,
        "{hosts: [api.example.com], resolution: DNS, ports: [{number: 80, name: http}], "
        "endpoints: [{address: api_1.example.com}]}",
        "spec.endpoints[0].address", "not an IP address or a host name"),
    bad("se-dns-wildcard-without-endpoints", SE,
        "{hosts: ['*.example.com'], resolution: DNS, ports: [{number: 80, name: http}]}",
        "spec.hosts[0]", "needs hosts with no wildcard"),
    bad("se-dns-round-robin-two-endpoints", SE,
        "{hosts: [api.example.com], resolution: DNS_ROUND_ROBIN, ports: [{number: 80, name: "
        "http}], endpoints: [{address: a.example.com}, {address: b.example.com}]}",
        "spec.endpoints", "at most one endpoint"),
    bad("se-cidr-with-dns", SE,
        "{hosts: [api.example.com], addresses: [10.0.0.0/24], resolution: DNS, "
        "ports: [{number: 80, name: http}]}",
        "spec.addresses", "CIDR blocks need resolution NONE or STATIC"),
    bad("se-bad-address", SE,
        "{hosts: [api.example.com], addresses: [300.1.1.1], ports: [{number: 80, name: http}]}",
        "spec.addresses[0]", "not an IP address or CIDR block"),
    bad("se-several-hosts-tcp", SE,
        "{hosts: [a.example.com, b.example.com], resolution: DNS, "
        "ports: [{number: 9000, name: tcp, protocol: TCP}]}",
        "spec.ports[0].protocol", "several hosts need HTTP or TLS ports"),
    bad("se-unix-endpoint-with-ports", SE,
        "{hosts: [sock.local], resolution: STATIC, ports: [{number: 80, name: http}], "
        "endpoints: [{address: 'unix:///var/run/app.sock', ports: {http: 80}}]}",
        "spec.endpoints[0].ports", "takes no ports"),
    bad("se-selector-wildcard", SE,
        "{hosts: [vm.local], resolution: STATIC, ports: [{number: 80, name: http}], "
        "workloadSelector: {labels: {app: '*'}}}",
        "spec.workloadSelector.labels[app]", "wildcards are not supported"),
    # --- WorkloadEntry
    bad("we-no-address", WE, "{labels: {app: vm}}", "spec.address", "is required"),
    bad("we-bad-address", WE, "{address: 'not a host!'}",
        "spec.address", "not an IP address or a host name"),
    bad("we-port-out-of-range", WE, "{address: 10.0.0.1, ports: {http: 70000}}",
        "spec.ports[http]", "expected 1 to 65535"),
    bad("we-port-name-invalid", WE, "{address: 10.0.0.1, ports: {HTTP_1: 80}}",
        "spec.ports[HTTP_1]", "not a valid port name"),
    bad("we-unix-relative-path", WE, "{address: 'unix://run/app.sock'}",
        "spec.address", "not an absolute path"),
    bad("we-label-key-invalid", WE, "{address: 10.0.0.1, labels: {'-app': vm}}",
        "spec.labels[-app]", "not a valid label key"),
    # --- Gateway
    bad("gw-no-servers", GW, "{servers: []}", "spec.servers", "at least one server"),
    bad("gw-server-without-hosts", GW, f"{{servers: [{{{HTTP_SERVER}}}]}}",
        "spec.servers[0].hosts", "at least one host"),
    bad("gw-short-host", GW, f"{{servers: [{{{HTTP_SERVER}, hosts: [reviews]}}]}}",
        "spec.servers[0].hosts[0]", "short names are not allowed"),
    bad("gw-partial-wildcard", GW, f"{{servers: [{{{HTTP_SERVER}, hosts: ['*foo.example.com']}}]}}",
        "spec.servers[0].hosts[0]", "partial wildcards"),
    bad("gw-host-bad-namespace", GW,
        f"{{servers: [{{{HTTP_SERVER}, hosts: [Bad_NS/foo.example.com]}}]}}",
        "spec.servers[0].hosts[0]", "namespace 'Bad_NS'"),
    bad("gw-port-zero", GW, "{servers: [{port: {number: 0, name: http, protocol: HTTP}, "
        "hosts: ['*']}]}",
        "spec.servers[0].port.number", "expected 1 to 65535"),
    bad("gw-unknown-protocol", GW,
        "{servers: [{port: {number: 80, name: http, protocol: HTTP3}, hosts: ['*']}]}",
        "spec.servers[0].port.protocol", "unknown protocol 'HTTP3'"),
    bad("gw-port-without-name", GW, "{servers: [{port: {number: 80, protocol: HTTP}, "
        "hosts: ['*']}]}",
        "spec.servers[0].port.name", "is required"),
    bad("gw-duplicate-port-names", GW,
        """
        servers:
        - port: {number: 80, name: web, protocol: HTTP}
          hosts: [a.example.com]
        - port: {number: 8080, name: web, protocol: HTTP}
          hosts: [b.example.com]
        """,
        "spec.servers[1].port.name", "'web' is already used by servers[0]"),
    bad("gw-https-without-tls", GW, f"{{servers: [{{{HTTPS_PORT}, hosts: ['*']}}]}}",
        "spec.servers[0].tls", "is required for HTTPS servers"),
    bad("gw-simple-without-certificate", GW,
        f"{{servers: [{{{HTTPS_PORT}, hosts: ['*'], tls: {{mode: SIMPLE, privateKey: /k}}}}]}}",
        "spec.servers[0].tls.serverCertificate", "is required for SIMPLE"),
    bad("gw-mutual-without-ca", GW,
        f"{{servers: [{{{HTTPS_PORT}, hosts: ['*'], tls: {{mode: MUTUAL, "
        "serverCertificate: /c, privateKey: /k}}]}",
        "spec.servers[0].tls.caCertificates", "is required for MUTUAL"),
    bad("gw-istio-mutual-with-credential", GW,
        f"{{servers: [{{{HTTPS_PORT}, hosts: ['*'], tls: {{mode: ISTIO_MUTUAL, "
        "credentialName: c}}]}",
        "spec.servers[0].tls.credentialName", "must not be set with ISTIO_MUTUAL"),
    bad("gw-https-redirect-on-https", GW,
        f"{{servers: [{{{HTTPS_PORT}, hosts: ['*'], tls: {{mode: SIMPLE, credentialName: c, "
        "httpsRedirect: true}}]}",
        "spec.servers[0].tls.httpsRedirect", "only applies to HTTP servers"),
    bad("gw-tls-on-tcp", GW,
        "{servers: [{port: {number: 31400, name: tcp, protocol: TCP}, hosts: ['*'], "
        "tls: {mode: SIMPLE, credentialName: c}}]}",
        "spec.servers[0].tls", "not allowed on TCP servers"),
    bad("gw-certificates-on-http", GW,
        f"{{servers: [{{{HTTP_SERVER}, hosts: ['*'], tls: {{mode: SIMPLE, credentialName: c}}}}]}}",
        "spec.servers[0].tls", "plain-text HTTP servers may only set httpsRedirect"),
    bad("gw-bind-not-an-ip", GW, f"{{servers: [{{{HTTP_SERVER}, hosts: ['*'], bind: localhost}}]}}",
        "spec.servers[0].bind", "not an IP address or unix:// path"),
    # --- Sidecar
    bad("sc-empty", SC, "{workloadSelector: {labels: {app: a}}}", "spec", "is empty"),
    bad("sc-egress-host-without-namespace", SC, "{egress: [{hosts: [foo.example.com]}]}",
        "spec.egress[0].hosts[0]", "expected namespace/host"),
    bad("sc-egress-short-name", SC, "{egress: [{hosts: [./reviews]}]}",
        "spec.egress[0].hosts[0]", "short names are not allowed"),
    bad("sc-egress-without-hosts", SC,
        "{egress: [{port: {number: 80, name: http, protocol: HTTP}}]}",
        "spec.egress[0].hosts", "at least one host"),
    bad("sc-catch-all-not-last", SC,
        """
        egress:
        - hosts: ['./*']
        - port: {number: 80, name: http, protocol: HTTP}
          hosts: ['istio-system/*']
        """,
        "spec.egress[0].port", "must be the last one"),
    bad("sc-ingress-without-port", SC, "{ingress: [{defaultEndpoint: '127.0.0.1:8080'}]}",
        "spec.ingress[0].port", "is required"),
    bad("sc-ingress-port-zero", SC,
        "{ingress: [{port: {number: 0, name: http, protocol: HTTP}, "
        "defaultEndpoint: '127.0.0.1:8080'}]}",
        "spec.ingress[0].port.number", "expected 1 to 65535"),
    bad("sc-ingress-default-endpoint", SC,
        "{ingress: [{port: {number: 9080, name: http, protocol: HTTP}, "
        "defaultEndpoint: '10.1.2.3:8080'}]}",
        "spec.ingress[0].defaultEndpoint", "must be 127.0.0.1:<port>"),
    bad("sc-egress-proxy-registry-only", SC,
        "{outboundTrafficPolicy: {mode: REGISTRY_ONLY, egressProxy: {host: proxy.example.com, "
        "port: {number: 3128}}}}",
        "spec.outboundTrafficPolicy.egressProxy", "needs mode ALLOW_ANY"),
    # --- PeerAuthentication
    bad("pa-port-level-without-selector", PA, "{portLevelMtls: {8080: {mode: DISABLE}}}",
        "spec.portLevelMtls", "needs a selector with matchLabels"),
    bad("pa-port-out-of-range", PA,
        "{selector: {matchLabels: {app: a}}, portLevelMtls: {70000: {mode: DISABLE}}}",
        "spec.portLevelMtls[70000]", "expected 1 to 65535"),
    bad("pa-selector-wildcard", PA, "{selector: {matchLabels: {app: 'web-*'}}}",
        "spec.selector.matchLabels[app]", "wildcards are not supported"),
    # --- AuthorizationPolicy
    bad("ap-custom-without-provider", AP,
        "{action: CUSTOM, rules: [{to: [{operation: {paths: [/admin]}}]}]}",
        "spec.provider.name", "is required for action CUSTOM"),
    bad("ap-custom-without-rules", AP, "{action: CUSTOM, provider: {name: ext-authz}}",
        "spec.rules", "CUSTOM without rules never applies"),
    bad("ap-deny-without-rules", AP, "{action: DENY}", "spec.rules", "DENY without rules"),
    bad("ap-provider-with-allow", AP, "{action: ALLOW, provider: {name: ext-authz}, rules: [{}]}",
        "spec.provider", "only allowed with action CUSTOM"),
    bad("ap-custom-source-namespaces", AP,
        "{action: CUSTOM, provider: {name: ext-authz}, "
        "rules: [{from: [{source: {namespaces: [shop]}}]}]}",
        "spec.rules[0].from[0].source.namespaces", "not supported with action CUSTOM"),
    bad("ap-empty-principal", AP, "{rules: [{from: [{source: {principals: ['']}}]}]}",
        "spec.rules[0].from[0].source.principals[0]", "must not be empty"),
    bad("ap-empty-source", AP, "{rules: [{from: [{source: {}}]}]}",
        "spec.rules[0].from[0].source", "an empty source matches nothing"),
    bad("ap-from-without-source", AP, "{rules: [{from: [{}]}]}",
        "spec.rules[0].from[0].source", "is required"),
    bad("ap-principal-with-scheme", AP,
        "{rules: [{from: [{source: {principals: ['spiffe://cluster.local/ns/a/sa/b']}}]}]}",
        "spec.rules[0].from[0].source.principals[0]", "without 'spiffe://'"),
    bad("ap-principal-not-spiffe-path", AP,
        "{rules: [{from: [{source: {principals: [bookinfo-reviews]}}]}]}",
        "spec.rules[0].from[0].source.principals[0]", "<trust domain>/ns/<namespace>/sa/"),
    bad("ap-principal-inner-wildcard", AP,
        "{rules: [{from: [{source: {notPrincipals: ['cluster.local/ns/*/sa/x']}}]}]}",
        "spec.rules[0].from[0].source.notPrincipals[0]", "leading or trailing '*'"),
    bad("ap-namespace-inner-wildcard", AP,
        "{rules: [{from: [{source: {namespaces: ['a*b']}}]}]}",
        "spec.rules[0].from[0].source.namespaces[0]", "leading or trailing '*'"),
    bad("ap-bad-ip-block", AP, "{rules: [{from: [{source: {ipBlocks: [10.0.0.0/40]}}]}]}",
        "spec.rules[0].from[0].source.ipBlocks[0]", "not an IP address or CIDR block"),
    bad("ap-port-not-numeric", AP, "{rules: [{to: [{operation: {ports: [http]}}]}]}",
        "spec.rules[0].to[0].operation.ports[0]", "not a port number"),
    bad("ap-not-port-too-big", AP, "{rules: [{to: [{operation: {notPorts: ['70000']}}]}]}",
        "spec.rules[0].to[0].operation.notPorts[0]", "not a port number"),
    bad("ap-path-template-named", AP, "{rules: [{to: [{operation: {paths: ['/a/{id}/{*}']}}]}]}",
        "spec.rules[0].to[0].operation.paths[0]", "path templates"),
    bad("ap-when-unknown-key", AP, "{rules: [{when: [{key: request.method, values: [GET]}]}]}",
        "spec.rules[0].when[0].key", "unknown attribute 'request.method'"),
    bad("ap-when-header-without-name", AP,
        "{rules: [{when: [{key: request.headers, values: [x]}]}]}",
        "spec.rules[0].when[0].key", "expected name[key]"),
    bad("ap-when-destination-namespace", AP,
        "{rules: [{when: [{key: destination.namespace, values: [shop]}]}]}",
        "spec.rules[0].when[0].key", "replaced by the policy's metadata.namespace"),
    bad("ap-when-without-values", AP, "{rules: [{when: [{key: source.ip}]}]}",
        "spec.rules[0].when[0]", "needs values or notValues"),
    bad("ap-when-bad-ip", AP, "{rules: [{when: [{key: source.ip, values: [not-an-ip]}]}]}",
        "spec.rules[0].when[0].values[0]", "not an IP address or CIDR block"),
    bad("ap-when-bad-port", AP,
        "{rules: [{when: [{key: destination.port, notValues: ['80', '8o']}]}]}",
        "spec.rules[0].when[0].notValues[1]", "not a port number"),
    bad("ap-selector-and-target-ref", AP,
        "{selector: {matchLabels: {app: a}}, targetRef: {kind: Service, name: a}}",
        "spec", "only one of selector, targetRef, targetRefs"),
    # Whole manifests, as a person would write them.
    pytest.param(
        """\
apiVersion: networking.istio.io/v1beta1
kind: Gateway
metadata:
  name: bad
  namespace: shop
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 443, name: https, protocol: HTTPS}
    hosts: [shop/www.example.com]
    tls: {mode: MUTUAL, credentialName: www-cert, minProtocolVersion: TLSV1_3,
          maxProtocolVersion: TLSV1_2}
""",
        GW, "spec.servers[0].tls.maxProtocolVersion", "TLSV1_2 is below minProtocolVersion",
        id="gw-full-tls-versions-inverted",
    ),
    pytest.param(
        """\
apiVersion: security.istio.io/v1beta1
kind: AuthorizationPolicy
metadata:
  name: bad
  namespace: shop
spec:
  action: DENY
  rules:
  - from:
    - source:
        notRemoteIpBlocks: [192.168.0.0/16, 192.168.1]
""",
        AP, "spec.rules[0].from[0].source.notRemoteIpBlocks[1]", "'192.168.1' is not an IP",
        id="ap-full-remote-ip-block",
    ),
]  # fmt: skip


@pytest.mark.parametrize(("text", "kind", "field", "reason"), INVALID)
def test_invalid_object_is_refused_with_field_and_reason(
    text: str, kind: str, field: str, reason: str
) -> None:
    result = load_documents(text, file="bad.yaml")
    assert result.objects == []
    found = [(e.field, e.reason) for e in result.errors]
    assert any(e.field == field and reason in e.reason for e in result.errors), found
    for error in result.errors:
        assert (error.file, error.index, error.kind, error.namespace, error.name) == (
            "bad.yaml",
            0,
            kind,
            "shop",
            "bad",
        )


def test_the_table_covers_every_kind_and_is_big_enough() -> None:
    kinds = {case.values[1] for case in INVALID}
    assert kinds == {VS, DR, SE, WE, GW, SC, PA, AP}
    assert len(INVALID) >= 45


def ok(case_id: str, kind: str, spec: str) -> Any:
    return pytest.param(manifest(kind, spec, name="fine"), id=case_id)


VALID = [
    # VirtualService
    ok("vs-star-host-on-gateway", VS,
       f"{{hosts: ['*'], gateways: [istio-system/ingress], http: [{{{ROUTE}}}]}}"),
    ok("vs-ip-host-and-trailing-dot", VS, f"{{hosts: [10.0.0.1, 'api.example.com.'], "
       f"http: [{{{ROUTE}}}]}}"),
    ok("vs-re2-only-syntax", VS, vs_match(
        r"{uri: {regex: '^/api/v[0-9]+(?i:/users)?/(?P<id>\d+)\z'}, "
        r"authority: {regex: '(?U)\pL+\.[[:alpha:]]{2,63}'}, "
        r"headers: {x-trace: {regex: '\Q.*\E|\x{41}+|(?<name>a)'}}}")),
    ok("vs-presence-matches-and-empty-uri-prefix", VS, vs_match(
        "{uri: {prefix: ''}, headers: {x-canary: {}}, withoutHeaders: {x-debug: {regex: '*'}}, "
        "queryParams: {preview: {}}}")),
    ok("vs-jwt-claim-routing-on-gateway", VS,
       f"{{hosts: [a.example.com], gateways: [ingress], http: [{{match: [{{headers: "
       f"{{'@request.auth.claims.group': {{exact: admin}}}}}}], {ROUTE}}}]}}"),
    ok("vs-every-http-feature", VS, """
        hosts: [reviews]
        http:
        - match: [{uri: {prefix: /old}}]
          redirect: {uri: /new, derivePort: FROM_REQUEST_PORT, redirectCode: 308}
        - match: [{uri: {prefix: /teapot}}]
          directResponse: {status: 418, body: {string: "I'm a teapot"}}
        - match: [{uri: {prefix: /v1}, sourceLabels: {app.kubernetes.io/name: web}}]
          rewrite: {uriRegexRewrite: {match: '^/v1/(.*)$', rewrite: '/\\1'}}
          headers:
            request: {set: {host: reviews.internal, x-forwarded-env: prod}, remove: [x-debug]}
            response: {add: {cache-control: no-store}}
          route:
          - {destination: {host: reviews, subset: v1, port: {number: 9080}}, weight: 90}
          - {destination: {host: reviews, subset: v2}, weight: 10}
          retries: {attempts: 0}
          timeout: 1.5s
          mirrors: [{destination: {host: shadow}, percentage: {value: 12.5}}]
          corsPolicy: {allowOrigins: [{exact: 'https://a.com'}, {regex: 'https://.*\\.b\\.com'}],
                       allowMethods: [GET, POST], allowHeaders: ['*', X-Token], maxAge: 86400s}
          fault: {abort: {grpcStatus: UNAVAILABLE, percentage: {value: 0.1}}}
        - match: [{uri: {prefix: /reviews}}]
          delegate: {name: reviews-routes, namespace: shop}
        - route: [{destination: {host: reviews}}]
        """),
    ok("vs-tls-and-tcp-routes", VS, """
        hosts: ['*.example.com', db]
        gateways: [mesh, istio-system/ingress]
        tls:
        - match: [{sniHosts: [a.example.com, '*.b.example.com'], port: 443}]
          route: [{destination: {host: a.example.com}}]
        tcp:
        - match: [{port: 3306, destinationSubnets: [10.0.0.0/8, 10.1.2.3]}]
          route: [{destination: {host: db, subset: primary}}]
        """),
    # DestinationRule
    ok("dr-subset-without-labels-and-wildcard-host", DR,
       "{host: '*.example.com', subsets: [{name: v1}]}"),
    ok("dr-every-traffic-policy", DR, """
        host: reviews.shop.svc.cluster.local
        trafficPolicy:
          connectionPool:
            tcp: {maxConnections: 0, connectTimeout: 0.25s, tcpKeepalive: {time: 7200s}}
            http: {http1MaxPendingRequests: 0, maxRetries: 3, idleTimeout: 30s,
                   h2UpgradePolicy: UPGRADE}
          outlierDetection: {consecutive5xxErrors: 5, splitExternalLocalOriginErrors: true,
                             consecutiveLocalOriginFailures: 2, interval: 10s,
                             baseEjectionTime: 30s, maxEjectionPercent: 100}
          loadBalancer:
            consistentHash: {httpCookie: {name: user, ttl: 0s}, maglev: {tableSize: 65537}}
            localityLbSetting:
              distribute: [{from: us-east/zone1/*, to: {us-east/zone1/*: 80, us-west/*: 20}}]
          tls: {mode: MUTUAL, credentialName: client-cert, sni: reviews.example.com}
          portLevelSettings:
          - port: {number: 9080}
            loadBalancer: {simple: LEAST_REQUEST}
        subsets:
        - name: v2-canary
          labels: {version: v2, app.kubernetes.io/part-of: shop}
          trafficPolicy: {tls: {mode: SIMPLE, insecureSkipVerify: true}}
        """),
    ok("dr-locality-failover", DR, """
        host: r
        trafficPolicy:
          outlierDetection: {consecutive5xxErrors: 1}
          loadBalancer:
            localityLbSetting:
              failover: [{from: us-east, to: us-west}]
              failoverPriority: [topology.istio.io/network]
        """),
    # ServiceEntry
    ok("se-dns-wildcard-with-endpoints", SE,
       "{hosts: ['*.example.com'], resolution: DNS, ports: [{number: 443, name: https, "
       "protocol: TLS}], endpoints: [{address: egress.example.com, ports: {https: 8443}}]}"),
    ok("se-static-unix-endpoint", SE,
       "{hosts: [sock.local], resolution: STATIC, ports: [{number: 80, name: http, "
       "protocol: HTTP}], endpoints: [{address: 'unix:///var/run/app.sock'}]}"),
    ok("se-none-cidr-several-tcp-hosts", SE,
       "{hosts: [a.internal, b.internal], addresses: [10.0.0.0/16, 'fd00::/8'], "
       "resolution: NONE, ports: [{number: 9000, name: tcp, protocol: tcp}], "
       "exportTo: ['~']}"),
    ok("se-several-http-hosts-and-selector", SE,
       "{hosts: [a.example.com, b.example.com], resolution: STATIC, location: MESH_INTERNAL, "
       "ports: [{number: 80, name: http, protocol: HTTP, targetPort: 8080}, "
       "{number: 443, name: https, protocol: HTTPS}], workloadSelector: {labels: {app: vm}}}"),
    ok("se-dns-round-robin-one-endpoint", SE,
       "{hosts: [api.example.com], resolution: DNS_ROUND_ROBIN, ports: [{number: 80, "
       "name: http}], endpoints: [{address: 203.0.113.7}]}"),
    # WorkloadEntry
    ok("we-hostname-address", WE, "{address: vm1.example.com, ports: {http: 8080}, weight: 3}"),
    ok("we-network-without-address", WE, "{network: net2, labels: {app: vm}}"),
    ok("we-ipv6-and-labels", WE,
       "{address: '2001:db8::1', labels: {app: vm, topology.istio.io/network: net1}, "
       "locality: us-east/zone1}"),
    ok("we-unix-socket", WE, "{address: 'unix:///var/run/vm.sock'}"),
    # Gateway
    ok("gw-https-passthrough-and-credential", GW, """
        servers:
        - port: {number: 443, name: https-passthrough, protocol: HTTPS}
          hosts: [istio-system/*.example.com, ./api.example.com, '*/www.example.com']
          tls: {mode: PASSTHROUGH}
        - port: {number: 8443, name: https-simple, protocol: https}
          hosts: ['*']
          tls: {mode: SIMPLE, credentialName: www-cert}
        - port: {number: 15443, name: tls-auto, protocol: TLS}
          hosts: ['*.local']
          tls: {mode: AUTO_PASSTHROUGH}
        """),
    ok("gw-http-redirect-and-ip-host", GW,
       "{servers: [{port: {number: 80, name: http, protocol: HTTP}, hosts: ['*', 10.0.0.1], "
       "tls: {httpsRedirect: true}}]}"),
    ok("gw-mutual-with-files-and-unix-bind", GW, """
        servers:
        - port: {number: 443, name: https, protocol: HTTPS}
          hosts: [www.example.com]
          tls: {mode: MUTUAL, serverCertificate: /c.pem, privateKey: /k.pem,
                caCertificates: /ca.pem}
        - port: {number: 0, name: uds, protocol: HTTP}
          bind: unix:///var/run/gw.sock
          hosts: ['*']
        """),
    # Sidecar
    ok("sc-ingress-and-egress", SC, """
        workloadSelector: {labels: {app: reviews}}
        ingress:
        - port: {number: 9080, name: http, protocol: HTTP}
          defaultEndpoint: 127.0.0.1:8080
        - port: {number: 9443, name: grpc, protocol: GRPC}
          defaultEndpoint: unix:///var/run/app.sock
        egress:
        - port: {number: 9080, name: http, protocol: HTTP}
          hosts: [./*]
        - hosts: [istio-system/*, '~/*', '*/*.example.com']
        outboundTrafficPolicy: {mode: REGISTRY_ONLY}
        """),
    ok("sc-egress-proxy", SC,
       "{outboundTrafficPolicy: {mode: ALLOW_ANY, egressProxy: {host: proxy.example.com, "
       "port: {number: 3128}}}}"),
    # PeerAuthentication
    ok("pa-mesh-strict", PA, "{mtls: {mode: STRICT}}"),
    ok("pa-port-level-with-selector", PA,
       "{selector: {matchLabels: {app: reviews}}, mtls: {mode: STRICT}, "
       "portLevelMtls: {8080: {mode: PERMISSIVE}, 15020: {mode: DISABLE}}}"),
    # AuthorizationPolicy
    ok("ap-allow-nothing", AP, "{}"),
    ok("ap-deny-everything", AP, "{action: DENY, rules: [{}]}"),
    ok("ap-custom", AP, "{action: CUSTOM, provider: {name: ext-authz}, rules: [{to: [{operation: "
       "{paths: ['/admin/{**}'], ports: ['8080']}}]}]}"),
    ok("ap-every-condition-key", AP, """
        selector: {matchLabels: {app: reviews}}
        action: AUDIT
        rules:
        - from:
          - source: {principals: [cluster.local/ns/shop/sa/web], ipBlocks: [10.0.0.0/8, '::1'],
                     notNamespaces: [test]}
          to:
          - operation: {methods: [GET], paths: ['/api/{*}/items', /health], notPorts: ['0']}
          when:
          - {key: 'request.headers[x-token]', values: [secret]}
          - {key: 'request.auth.claims[iss]', values: [https://issuer.example.com]}
          - {key: request.auth.principal, values: ['*']}
          - {key: source.ip, notValues: [10.0.0.1]}
          - {key: remote.ip, values: [203.0.113.0/24]}
          - {key: destination.port, values: ['443']}
          - {key: connection.sni, values: [www.example.com]}
          - {key: 'experimental.envoy.filters.network.mysql_proxy[db.table]', values: ['[update]']}
        """),
]  # fmt: skip


@pytest.mark.parametrize("text", VALID)
def test_valid_edge_case_loads(text: str) -> None:
    result = load_documents(text, file="fine.yaml")
    assert [str(e) for e in result.errors] == []
    assert [o.name for o in result.objects] == ["fine"]


@pytest.mark.parametrize(
    "path",
    sorted(p for p in BOOKINFO.rglob("*") if p.suffix in (".yaml", ".yml", ".json")),
    ids=lambda p: str(p.relative_to(BOOKINFO)),
)
def test_every_bookinfo_file_loads_without_errors(path: Path) -> None:
    result = load_path(path)
    assert [str(e) for e in result.errors] == []
    assert result.objects or result.skipped
