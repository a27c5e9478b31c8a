"""Loading manifests: every bookinfo file, and errors that say where and why."""

from __future__ import annotations

from pathlib import Path

import pytest

from pilotfish.errors import ValidationError
from pilotfish.protos.istio.networking.v1alpha3.virtual_service_pb2 import VirtualService
from pilotfish.sources import load_documents, load_path, resolve_host

BOOKINFO = Path(__file__).resolve().parents[2] / "shared" / "conformance" / "istio-bookinfo"


def test_every_bookinfo_file_loads() -> None:
    result = load_path(BOOKINFO)
    assert result.errors == []
    kinds = sorted({o.kind for o in result.objects})
    assert kinds == ["DestinationRule", "Gateway", "Service", "ServiceEntry", "VirtualService"]
    assert len(result.objects) == 42  # 38 networking objects and 4 Kubernetes Services
    # The rest of the platform manifests (Deployment, ...) are reported, not silently dropped.
    assert any("Deployment" in s and "kind not supported" in s for s in result.skipped)
    reviews = next(
        o
        for o in result.objects
        if o.key == ("VirtualService", "default", "reviews")
        and o.file.endswith("virtual-service-reviews-v2-v3.yaml")
    )
    assert isinstance(reviews.spec, VirtualService)
    assert [d.weight for d in reviews.spec.http[0].route] == [50, 50]


GOOD = """
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: {name: ok, namespace: shop}
spec: {hosts: [ok], http: [{route: [{destination: {host: ok}}]}]}
"""


@pytest.mark.parametrize(
    ("document", "field", "reason"),
    [
        (
            "spec: {hosts: [a], http: [{route: [{destination: {host: a}}, "
            "{destination: {host: b}, weight: lots}]}]}",
            "spec.http[0].route[1].weight",
            "invalid literal",
        ),
        ("spec: {hosts: [a], http: [{rout: []}]}", "spec.http[0].rout", "unknown field"),
        ("spec: {hosts: [a], http: [{timeout: soon}]}", "spec.http[0].timeout", "Duration"),
        ("spec: [a]", "spec", "must be a mapping"),
    ],
)
def test_errors_name_file_document_object_and_field(document: str, field: str, reason: str) -> None:
    bad = (
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\n"
        "metadata: {name: broken, namespace: shop}\n" + document
    )
    result = load_documents(GOOD + "---\n" + bad, file="vs.yaml")
    assert [o.name for o in result.objects] == ["ok"]  # the good object still loads
    (error,) = result.errors
    assert isinstance(error, ValidationError)
    assert (error.file, error.index, error.kind, error.namespace, error.name) == (
        "vs.yaml",
        1,
        "VirtualService",
        "shop",
        "broken",
    )
    assert error.field == field
    assert reason in error.reason
    assert str(error).startswith(f"vs.yaml[1] VirtualService shop/broken: {field}: ")


def test_wrong_api_version_missing_name_and_bad_yaml() -> None:
    result = load_documents(
        "apiVersion: networking.istio.io/v2\nkind: Gateway\nmetadata: {name: g}\nspec: {}\n"
        "---\napiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {}\n"
        "spec: {mtls: {mode: STRICT}}\n",
        file="x.yaml",
    )
    first, second = result.errors
    assert first.field == "apiVersion" and "networking.istio.io/v1" in first.reason
    assert (second.index, second.field) == (1, "metadata.name")
    (broken,) = load_documents("a: [", file="y.yaml").errors
    assert broken.file == "y.yaml" and "not valid YAML" in broken.reason


VS = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: r}\nspec: "


@pytest.mark.parametrize(
    ("spec", "field", "reason"),
    [
        ("{hosts: [a], http: [{route: [{destination: {host: a}}], redirect: {uri: /x}}]}",
         "spec.http[0]", "exactly one of route"),
        ("{hosts: [a], http: [{route: [{destination: {host: a}, weight: 60}, "
         "{destination: {host: b}, weight: 60}]}]}",
         "spec.http[0].route", "add up to 120"),
        ("{hosts: [a], http: [{route: [{destination: {host: a}}], fault: {abort: "
         "{httpStatus: 700, percentage: {value: 100}}}}]}",
         "spec.http[0].fault.abort.httpStatus", "between 200 and 599"),
        ("{hosts: [a], http: [{route: [{destination: {host: a}}], fault: {delay: "
         "{fixedDelay: 7s, percentage: {value: 150}}}}]}",
         "spec.http[0].fault.delay.percentage.value", "between 0 and 100"),
        ("{hosts: [a], http: [{route: [{destination: {host: a}}], timeout: 0s}]}",
         "spec.http[0].timeout", "at least 1ms"),
        ("{hosts: [a], http: [{route: [{destination: {host: a}}], "
         "retries: {attempts: 3, retryOn: 'gateway-error,sometimes'}}]}",
         "spec.http[0].retries.retryOn", "'sometimes'"),
        ("{hosts: [a], http: [{redirect: {uri: /x, redirectCode: 200}}]}",
         "spec.http[0].redirect.redirectCode", "301"),
        ("{hosts: [], gateways: [gw], http: [{route: [{destination: {host: a}}]}]}",
         "spec.gateways", "delegate"),
        ("{hosts: [], http: [{delegate: {name: other}}]}",
         "spec.http[0].delegate", "cannot delegate again"),
    ],
)  # fmt: skip
def test_istiod_rules_for_virtual_services(spec: str, field: str, reason: str) -> None:
    (error,) = load_documents(VS + spec, file="vs.yaml").errors
    assert (error.kind, error.name, error.field) == ("VirtualService", "r", field)
    assert reason in error.reason


def test_istiod_rules_for_destination_rules() -> None:
    result = load_documents(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: d}\n"
        "spec: {host: reviews, subsets: [{name: v1, labels: {version: v1}}, "
        "{name: V_2, labels: {version: v2}}, {name: v1, labels: {version: v3}}]}\n",
        file="dr.yaml",
    )
    assert [(e.field, e.reason) for e in result.errors] == [
        ("spec.subsets[1].name", "'V_2' is not a DNS-1123 label"),
        ("spec.subsets[2].name", "subset 'v1' is defined twice"),
    ]


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("reviews", "reviews.default.svc.cluster.local"),
        ("reviews.prod.svc.cluster.local", "reviews.prod.svc.cluster.local"),
        ("www.google.com", "www.google.com"),
        ("*.example.com", "*.example.com"),
        ("*", "*"),
    ],
)
def test_short_hosts_resolve_in_the_objects_namespace(host: str, expected: str) -> None:
    assert resolve_host(host, "default") == expected


@pytest.mark.parametrize(
    ("written", "seconds", "nanos"),
    [("1m", 60, 0), ("500ms", 0, 500_000_000), ("1h2m3.5s", 3723, 500_000_000), ("7s", 7, 0),
     ("0.7s", 0, 700_000_000), ("2500ms", 2, 500_000_000)],
)  # fmt: skip
def test_go_style_durations_as_istio_writes_them(written: str, seconds: int, nanos: int) -> None:
    result = load_documents(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: d}\n"
        f"spec: {{host: d, trafficPolicy: {{outlierDetection: {{interval: {written}}}}}}}\n"
    )
    assert result.errors == []
    interval = result.objects[0].spec.traffic_policy.outlier_detection.interval  # type: ignore[attr-defined]
    assert (interval.seconds, interval.nanos) == (seconds, nanos)


def test_a_duration_that_is_not_one_names_its_field() -> None:
    result = load_documents(VS + "{hosts: [r], http: [{route: [{destination: {host: r}}], "
                            "timeout: 5 minutes}]}", file="t.yaml")  # fmt: skip
    assert [e.field for e in result.errors] == ["spec.http[0].timeout"]
