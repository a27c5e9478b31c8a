"""Semantic checks on loaded objects, after istiod's validation rules, and host resolution.

Schema errors are caught while parsing (`manifests`); these are the rules the schema cannot say:
one action per HTTP route, destination weights adding up to 100, percentages and HTTP codes in
range, positive durations, known retry conditions, valid redirect codes, DNS-label subset names.
Each problem is a `ValidationError` with the field path, so a person can find it.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from pilotfish.errors import ValidationError
from pilotfish.protos.istio.networking.v1alpha3.destination_rule_pb2 import DestinationRule
from pilotfish.protos.istio.networking.v1alpha3.virtual_service_pb2 import VirtualService

if TYPE_CHECKING:
    from pilotfish.sources.manifests import ConfigObject

__all__ = ["resolve_host", "validate"]

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_REDIRECT_CODES = {301, 302, 303, 307, 308}
# Envoy's retry_on conditions (HTTP and gRPC), plus plain status codes, as istiod accepts them.
_RETRY_ON = {
    "5xx", "gateway-error", "reset", "reset-before-request", "connect-failure", "envoy-ratelimited",
    "retriable-4xx", "refused-stream", "retriable-status-codes", "retriable-headers",
    "http3-post-connect-failure", "cancelled", "deadline-exceeded", "internal",
    "resource-exhausted", "unavailable",
}  # fmt: skip


def resolve_host(host: str, namespace: str, domain: str = "cluster.local") -> str:
    """Istio's short-name rule: a host without a dot is a service in the object's namespace."""
    if "." in host or host == "*" or host.startswith("*"):
        return host
    return f"{host}.{namespace}.svc.{domain}"


def validate(obj: ConfigObject) -> list[ValidationError]:
    """Every rule `obj` breaks (empty when it is fine)."""
    checks = {"VirtualService": _virtual_service, "DestinationRule": _destination_rule}
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


def _virtual_service(spec: Any) -> Iterator[tuple[str, str]]:
    assert isinstance(spec, VirtualService)
    if not spec.hosts:
        yield "spec.hosts", "at least one host is required"
    for i, route in enumerate(spec.http):
        at = f"spec.http[{i}]"
        actions = [
            name
            for name in ("route", "redirect", "direct_response", "delegate")
            if (route.route if name == "route" else route.HasField(name))
        ]
        if len(actions) != 1:
            found = " and ".join(actions) or "none"
            yield at, f"exactly one of route, redirect, directResponse, delegate (found {found})"
        weights = [d.weight for d in route.route]
        if len(weights) > 1 and any(weights) and sum(weights) != 100:
            yield f"{at}.route", f"destination weights add up to {sum(weights)}, not 100"
        for j, destination in enumerate(route.route):
            if not destination.destination.host:
                yield f"{at}.route[{j}].destination.host", "is required"
            if destination.weight < 0:
                yield f"{at}.route[{j}].weight", "must not be negative"
        code = route.redirect.redirect_code if route.HasField("redirect") else 0
        if code and code not in _REDIRECT_CODES:
            yield f"{at}.redirect.redirectCode", "must be one of 301, 302, 303, 307, 308"
        if route.HasField("timeout"):
            yield from _positive(route.timeout, f"{at}.timeout")
        if route.HasField("retries"):
            retries = route.retries
            if retries.HasField("per_try_timeout"):
                yield from _positive(retries.per_try_timeout, f"{at}.retries.perTryTimeout")
            for token in filter(None, (t.strip() for t in retries.retry_on.split(","))):
                if token not in _RETRY_ON and not token.isdigit():
                    yield f"{at}.retries.retryOn", f"unknown retry condition {token!r}"
        if route.HasField("fault"):
            yield from _fault(route.fault, f"{at}.fault")


def _fault(fault: Any, at: str) -> Iterator[tuple[str, str]]:
    if fault.HasField("delay"):
        delay = fault.delay
        if delay.HasField("fixed_delay"):
            yield from _positive(delay.fixed_delay, f"{at}.delay.fixedDelay")
        if delay.HasField("percentage") and not 0 <= delay.percentage.value <= 100:
            yield f"{at}.delay.percentage.value", "must be between 0 and 100"
    if fault.HasField("abort"):
        abort = fault.abort
        if abort.WhichOneof("error_type") == "http_status" and not (
            200 <= abort.http_status <= 599
        ):
            yield f"{at}.abort.httpStatus", "must be an HTTP status between 200 and 599"
        if abort.HasField("percentage") and not 0 <= abort.percentage.value <= 100:
            yield f"{at}.abort.percentage.value", "must be between 0 and 100"


def _positive(duration: Any, at: str) -> Iterator[tuple[str, str]]:
    if duration.seconds < 0 or (duration.seconds == 0 and duration.nanos < 1_000_000):
        yield at, "must be at least 1ms"


def _destination_rule(spec: Any) -> Iterator[tuple[str, str]]:
    assert isinstance(spec, DestinationRule)
    if not spec.host:
        yield "spec.host", "is required"
    seen: set[str] = set()
    for i, subset in enumerate(spec.subsets):
        at = f"spec.subsets[{i}]"
        if not _DNS_LABEL.match(subset.name):
            yield f"{at}.name", f"{subset.name!r} is not a DNS-1123 label"
        if subset.name in seen:
            yield f"{at}.name", f"subset {subset.name!r} is defined twice"
        seen.add(subset.name)
    policy = spec.traffic_policy
    if policy.HasField("load_balancer") and policy.load_balancer.HasField("consistent_hash"):
        hash_key = policy.load_balancer.consistent_hash.WhichOneof("hash_key")
        if hash_key is None:
            yield "spec.trafficPolicy.loadBalancer.consistentHash", "needs a hash key"
    if policy.HasField("outlier_detection"):
        percent = policy.outlier_detection.max_ejection_percent
        if not 0 <= percent <= 100:
            yield "spec.trafficPolicy.outlierDetection.maxEjectionPercent", "must be 0 to 100"
