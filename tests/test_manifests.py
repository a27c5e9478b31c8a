"""Loading manifests: every bookinfo file, and errors that say where and why."""

from __future__ import annotations

from pathlib import Path

import pytest

from pilotfish.errors import ValidationError
from pilotfish.protos.istio.networking.v1alpha3.virtual_service_pb2 import VirtualService
from pilotfish.sources import load_documents, load_path

BOOKINFO = Path(__file__).resolve().parents[2] / "shared" / "conformance" / "istio-bookinfo"


def test_every_bookinfo_file_loads() -> None:
    result = load_path(BOOKINFO)
    assert result.errors == []
    kinds = sorted({o.kind for o in result.objects})
    assert kinds == ["DestinationRule", "Gateway", "ServiceEntry", "VirtualService"]
    assert len(result.objects) == 38
    # The platform manifests (Service, Deployment, ...) are reported, not silently dropped.
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
