"""Istio `AuthorizationPolicy` -> Envoy RBAC HTTP filters for a workload's inbound side.

Follows istiod (pilot/pkg/security/authz/builder and model):

* one ``envoy.filters.http.rbac`` filter per action, DENY first then ALLOW;
* every rule becomes one Envoy policy named ``ns[<ns>]-policy[<name>]-rule[<i>]``;
* a rule's ``from`` entries are OR'ed, the fields of one source AND'ed, the values of one
  field OR'ed (likewise for ``to``); ``when`` conditions are AND'ed with both;
* an ALLOW policy without rules allows nothing (an ALLOW filter with no policies, which
  denies every request); an empty rule ``{}`` matches everything (allow-all / deny-all);
  a DENY policy without rules matches nothing and is dropped; with only DENY policies
  there is no ALLOW filter.

Not supported (fail-closed, as istiod does for attributes a filter cannot enforce): a rule
using something this module cannot translate (``requestPrincipals``, ``request.auth.*`` and
other unknown ``when`` keys, path templates) is *dropped* from an ALLOW policy (it never
allows) and has the unsupported part *ignored* in a DENY policy (it denies more). AUDIT
policies become an RBAC filter with action LOG (it marks requests for the access log and never
denies); CUSTOM policies (ext_authz providers) are skipped; policies with
``targetRef(s)`` target gateways/waypoints, not sidecars, and are not selected by
`policies_for`.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable, Mapping, Sequence

from envoy.config.core.v3.address_pb2 import CidrRange
from envoy.config.rbac.v3.rbac_pb2 import RBAC as RbacRules
from envoy.config.rbac.v3.rbac_pb2 import Permission, Policy, Principal
from envoy.config.route.v3.route_components_pb2 import HeaderMatcher
from envoy.extensions.filters.http.rbac.v3.rbac_pb2 import RBAC
from envoy.extensions.filters.network.http_connection_manager.v3.http_connection_manager_pb2 import (  # noqa: E501
    HttpFilter,
)
from envoy.type.matcher.v3.path_pb2 import PathMatcher
from envoy.type.matcher.v3.regex_pb2 import RegexMatcher
from envoy.type.matcher.v3.string_pb2 import StringMatcher
from google.protobuf.any_pb2 import Any as AnyProto
from google.protobuf.wrappers_pb2 import UInt32Value

from pilotfish.protos.istio.security.v1beta1.authorization_policy_pb2 import (
    AuthorizationPolicy,
    Condition,
    Operation,
    Rule,
    Source,
)
from pilotfish.sources import ConfigObject

__all__ = ["RBAC_FILTER", "policies_for", "rbac_http_filters"]

RBAC_FILTER = "envoy.filters.http.rbac"
KIND = "AuthorizationPolicy"

_HEADER_KEY = re.compile(r"^request\.headers\[([^\]]+)\]$")


class _Unsupported(Exception):
    """Part of a rule that cannot be translated (see the module docstring)."""


def _spec(obj: ConfigObject) -> AuthorizationPolicy:
    spec = obj.spec
    if not isinstance(spec, AuthorizationPolicy):
        raise TypeError(f"{obj.namespace}/{obj.name}: not an AuthorizationPolicy spec")
    return spec


def policies_for(
    objects: Iterable[ConfigObject],
    namespace: str,
    labels: Mapping[str, str],
    root_namespace: str = "istio-system",
) -> list[ConfigObject]:
    """AuthorizationPolicies that apply to a workload: in its namespace (selector matching its
    labels, or no selector) and in the root namespace (mesh-wide), sorted by namespace/name."""
    selected = []
    for obj in objects:
        if obj.kind != KIND or obj.namespace not in (namespace, root_namespace):
            continue
        spec = _spec(obj)
        if spec.HasField("targetRef") or len(spec.targetRefs):
            continue  # gateway / waypoint policies
        if spec.HasField("selector") and not all(
            labels.get(k) == v for k, v in spec.selector.match_labels.items()
        ):
            continue
        selected.append(obj)
    return sorted(selected, key=lambda o: (o.namespace, o.name))


# -- matchers -------------------------------------------------------------------------------


def _string(value: str, *, prefix: str = "", ignore_case: bool = False) -> StringMatcher:
    """Istio's wildcard matcher: ``*`` (any non-empty), ``*x`` suffix, ``x*`` prefix, exact."""
    if value == "*":
        return StringMatcher(safe_regex=RegexMatcher(regex=".+"), ignore_case=ignore_case)
    if value.startswith("*"):
        return StringMatcher(suffix=value[1:], ignore_case=ignore_case)
    if value.endswith("*"):
        return StringMatcher(prefix=prefix + value[:-1], ignore_case=ignore_case)
    return StringMatcher(exact=prefix + value, ignore_case=ignore_case)


def _principal_name(value: str) -> Principal:
    return Principal(
        authenticated=Principal.Authenticated(principal_name=_string(value, prefix="spiffe://"))
    )


def _namespace(value: str, trust_domain: str) -> Principal:
    if "*" in value:
        pattern = ".*".join(re.escape(part) for part in value.split("*"))
        matcher = StringMatcher(safe_regex=RegexMatcher(regex=f"spiffe://[^/]+/ns/{pattern}/.*"))
    else:
        matcher = StringMatcher(prefix=f"spiffe://{trust_domain}/ns/{value}/")
    return Principal(authenticated=Principal.Authenticated(principal_name=matcher))


def _cidr(value: str) -> CidrRange:
    try:
        network = ipaddress.ip_network(value, strict=False)
    except ValueError as exc:
        raise ValueError(f"invalid IP block {value!r}") from exc
    return CidrRange(
        address_prefix=str(network.network_address),
        prefix_len=UInt32Value(value=network.prefixlen),
    )


def _port(value: str) -> int:
    try:
        port = int(value)
    except ValueError as exc:
        raise ValueError(f"invalid port {value!r}") from exc
    if not 0 < port < 65536:
        raise ValueError(f"invalid port {value!r}")
    return port


def _path(value: str) -> Permission:
    if "{" in value:
        raise _Unsupported(f"path template {value!r}")
    return Permission(url_path=PathMatcher(path=_string(value)))


def _header(name: str, value: str, *, ignore_case: bool = False) -> HeaderMatcher:
    return HeaderMatcher(name=name, string_match=_string(value, ignore_case=ignore_case))


# -- combinators ----------------------------------------------------------------------------


def _or_ids(ids: list[Principal]) -> Principal:
    return ids[0] if len(ids) == 1 else Principal(or_ids=Principal.Set(ids=ids))


def _and_ids(ids: list[Principal]) -> Principal:
    if not ids:
        return Principal(any=True)
    return ids[0] if len(ids) == 1 else Principal(and_ids=Principal.Set(ids=ids))


def _or_rules(rules: list[Permission]) -> Permission:
    return rules[0] if len(rules) == 1 else Permission(or_rules=Permission.Set(rules=rules))


def _and_rules(rules: list[Permission]) -> Permission:
    if not rules:
        return Permission(any=True)
    return rules[0] if len(rules) == 1 else Permission(and_rules=Permission.Set(rules=rules))


class _RuleBuilder:
    """Builds one rule; `lenient` (DENY) ignores unsupported parts instead of raising."""

    def __init__(self, lenient: bool, trust_domain: str) -> None:
        self.lenient = lenient
        self.trust_domain = trust_domain

    def _ids(
        self, values: Sequence[str], make: Callable[[str], Principal], negate: bool
    ) -> list[Principal]:
        ids: list[Principal] = []
        for value in values:
            try:
                ids.append(make(value))
            except _Unsupported:
                if not self.lenient:
                    raise
        if not ids:
            return []
        combined = _or_ids(ids)
        return [Principal(not_id=combined)] if negate else [combined]

    def _perms(
        self, values: Sequence[str], make: Callable[[str], Permission], negate: bool
    ) -> list[Permission]:
        rules: list[Permission] = []
        for value in values:
            try:
                rules.append(make(value))
            except _Unsupported:
                if not self.lenient:
                    raise
        if not rules:
            return []
        combined = _or_rules(rules)
        return [Permission(not_rule=combined)] if negate else [combined]

    def source(self, src: Source) -> Principal:
        td = self.trust_domain

        def unsupported(value: str) -> Principal:
            raise _Unsupported(f"requestPrincipals {value!r} (needs JWT authentication)")

        ids: list[Principal] = []
        for values, make, negate in (
            (src.principals, _principal_name, False),
            (src.not_principals, _principal_name, True),
            (src.request_principals, unsupported, False),
            (src.not_request_principals, unsupported, True),
            (src.namespaces, lambda v: _namespace(v, td), False),
            (src.not_namespaces, lambda v: _namespace(v, td), True),
            (src.ip_blocks, lambda v: Principal(direct_remote_ip=_cidr(v)), False),
            (src.not_ip_blocks, lambda v: Principal(direct_remote_ip=_cidr(v)), True),
            (src.remote_ip_blocks, lambda v: Principal(remote_ip=_cidr(v)), False),
            (src.not_remote_ip_blocks, lambda v: Principal(remote_ip=_cidr(v)), True),
        ):
            ids += self._ids(values, make, negate)
        return _and_ids(ids)

    def operation(self, op: Operation) -> Permission:
        rules: list[Permission] = []
        for values, make, negate in (
            (
                op.hosts,
                lambda v: Permission(header=_header(":authority", v, ignore_case=True)),
                False,
            ),
            (
                op.not_hosts,
                lambda v: Permission(header=_header(":authority", v, ignore_case=True)),
                True,
            ),
            (op.ports, lambda v: Permission(destination_port=_port(v)), False),
            (op.not_ports, lambda v: Permission(destination_port=_port(v)), True),
            (op.methods, lambda v: Permission(header=_header(":method", v)), False),
            (op.not_methods, lambda v: Permission(header=_header(":method", v)), True),
            (op.paths, _path, False),
            (op.not_paths, _path, True),
        ):
            rules += self._perms(values, make, negate)
        return _and_rules(rules)

    def condition(self, cond: Condition) -> tuple[list[Principal], list[Permission]]:
        """The condition as principals (source side) or permissions (destination side)."""
        key = cond.key
        td = self.trust_domain
        header = _HEADER_KEY.match(key)
        id_make: Callable[[str], Principal] | None = None
        perm_make: Callable[[str], Permission] | None = None
        if header:
            name = header.group(1)
            id_make = lambda v: Principal(header=_header(name, v))  # noqa: E731
        elif key == "source.ip":
            id_make = lambda v: Principal(direct_remote_ip=_cidr(v))  # noqa: E731
        elif key == "remote.ip":
            id_make = lambda v: Principal(remote_ip=_cidr(v))  # noqa: E731
        elif key == "source.namespace":
            id_make = lambda v: _namespace(v, td)  # noqa: E731
        elif key == "source.principal":
            id_make = _principal_name
        elif key == "destination.ip":
            perm_make = lambda v: Permission(destination_ip=_cidr(v))  # noqa: E731
        elif key == "destination.port":
            perm_make = lambda v: Permission(destination_port=_port(v))  # noqa: E731
        elif key == "connection.sni":
            perm_make = lambda v: Permission(requested_server_name=_string(v))  # noqa: E731
        else:
            # request.auth.*, experimental.*, ...: need JWT/metadata support.
            if self.lenient:
                return [], []
            raise _Unsupported(f"condition key {key!r}")
        if id_make is not None:
            return (
                self._ids(cond.values, id_make, False) + self._ids(cond.not_values, id_make, True),
                [],
            )
        assert perm_make is not None
        return [], (
            self._perms(cond.values, perm_make, False)
            + self._perms(cond.not_values, perm_make, True)
        )

    def rule(self, rule: Rule) -> Policy:
        ids: list[Principal] = []
        perms: list[Permission] = []
        sources = [f.source for f in getattr(rule, "from")]
        if sources:
            ids.append(_or_ids([self.source(s) for s in sources]))
        if rule.to:
            perms.append(_or_rules([self.operation(t.operation) for t in rule.to]))
        for cond in rule.when:
            more_ids, more_perms = self.condition(cond)
            ids += more_ids
            perms += more_perms
        return Policy(permissions=[_and_rules(perms)], principals=[_and_ids(ids)])


def _rbac_filter(action: RbacRules.Action.ValueType, policies: Mapping[str, Policy]) -> HttpFilter:
    rules = RbacRules(action=action)
    for name in sorted(policies):
        rules.policies[name].CopyFrom(policies[name])
    typed = AnyProto()
    typed.Pack(RBAC(rules=rules))
    return HttpFilter(name=RBAC_FILTER, typed_config=typed)


def rbac_http_filters(
    policies: Sequence[ConfigObject], *, trust_domain: str = "cluster.local"
) -> list[HttpFilter]:
    """Envoy HTTP filters, in Istio's order: AUDIT (a LOG filter), DENY, then ALLOW. Empty when
    no policies.

    CUSTOM policies are skipped (see the module docstring). Raises `ValueError` on
    malformed values (bad CIDR, bad port).
    """
    deny: dict[str, Policy] = {}
    allow: dict[str, Policy] = {}
    audit: dict[str, Policy] = {}
    has_allow = False
    for obj in sorted(policies, key=lambda o: (o.namespace, o.name)):
        spec = _spec(obj)
        if spec.action == AuthorizationPolicy.DENY:
            target, lenient = deny, True
        elif spec.action == AuthorizationPolicy.ALLOW:
            target, lenient = allow, False
            has_allow = True
        elif spec.action == AuthorizationPolicy.AUDIT:
            target, lenient = audit, True  # only marks requests for the access log
        else:
            continue  # CUSTOM (ext_authz) is not translated
        builder = _RuleBuilder(lenient, trust_domain)
        for index, rule in enumerate(spec.rules):
            try:
                policy = builder.rule(rule)
            except _Unsupported:
                continue  # ALLOW only: an untranslatable rule never allows
            except ValueError as exc:
                raise ValueError(f"AuthorizationPolicy {obj.namespace}/{obj.name}: {exc}") from exc
            target[f"ns[{obj.namespace}]-policy[{obj.name}]-rule[{index}]"] = policy
    filters: list[HttpFilter] = []
    if audit:
        # Envoy's LOG action never denies; it sets the access log's shouldLog marker.
        filters.append(_rbac_filter(RbacRules.LOG, audit))
    if deny:
        filters.append(_rbac_filter(RbacRules.DENY, deny))
    if has_allow:
        filters.append(_rbac_filter(RbacRules.ALLOW, allow))
    return filters
