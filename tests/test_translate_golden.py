"""Golden translations: fixed inputs give exactly the reviewed Envoy JSON in tests/golden/, and
translating twice gives byte-equal resources and the same versions.

After an intended translator change, regenerate with `PILOTFISH_UPDATE_GOLDEN=1 pytest
tests/test_translate_golden.py`, review the diff, and bump TRANSLATOR_VERSION.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from google.protobuf import json_format

from pilotfish.bounded import Bounded
from pilotfish.registry import Registry, Workload
from pilotfish.sources import load_path
from pilotfish.translators import TRANSLATOR_VERSION, Proxy, Translation, translate

GOLDEN = Path(__file__).resolve().parent / "golden"
PROXIES = {
    "sidecar": Proxy(
        id="sidecar~10.0.0.1~productpage-v1.default~default.svc.cluster.local",
        labels={"app": "productpage", "version": "v1"},
        service_account="bookinfo-productpage",
        locality="us/east/1",
    ),
    "reviews-sidecar": Proxy(
        id="sidecar~10.0.1.1~reviews-v1.default~default.svc.cluster.local",
        address="10.0.1.1",
        labels={"app": "reviews", "version": "v1"},
        service_account="bookinfo-reviews",
        app_ports={9080: 8080},
    ),
    "gateway": Proxy(
        id="router~10.0.9.1~ingress.istio-system~istio-system.svc.cluster.local",
        namespace="istio-system",
        labels={"istio": "ingressgateway"},
        kind="gateway",
    ),
}


def _translate(name: str) -> Translation:
    loaded = load_path(GOLDEN / "inputs.yaml")
    assert loaded.errors == []
    registry = Registry.from_objects(loaded.objects)
    for n, (app, version, zone) in enumerate(
        [("reviews", "v1", "us/east/1"), ("reviews", "v2", "us/west/1"), ("ratings", "v1", "")]
    ):
        registry.add_workload(
            Workload(f"10.0.1.{n + 1}", name=f"{app}-{version}", labels={"app": app,
                     "version": version}, locality=zone, service_account=f"bookinfo-{app}")
        )  # fmt: skip
    registry.add_workload(Workload("10.0.2.1", name="db-0", namespace="data", labels={"app": "db"}))
    return translate(PROXIES[name], loaded.objects, registry)


def _as_json(translation: Translation) -> str:
    out = {
        kind: [json_format.MessageToDict(m) for m in messages]
        for kind, messages in translation.resources().items()
    }
    return json.dumps(out, indent=1, sort_keys=True) + "\n"


@pytest.mark.parametrize("name", sorted(PROXIES))
def test_matches_golden(name: str) -> None:
    text = _as_json(_translate(name))
    golden = GOLDEN / f"{name}.json"
    if os.environ.get("PILOTFISH_UPDATE_GOLDEN"):
        golden.write_text(text)
    assert text == golden.read_text(), f"{golden.name} differs; see this module's docstring"


@pytest.mark.parametrize("name", sorted(PROXIES))
def test_translating_twice_is_byte_equal(name: str) -> None:
    first, second = _translate(name), _translate(name)
    for kind, messages in first.resources().items():
        again = second.resources()[kind]
        assert [m.SerializeToString(deterministic=True) for m in messages] == [
            m.SerializeToString(deterministic=True) for m in again
        ], kind
    a, b = first.snapshot(), second.snapshot()
    for type_url in ("lds", "rds", "cds", "eds"):
        assert a.version(type_url) == b.version(type_url)
        assert a.version(type_url).startswith(f"{TRANSLATOR_VERSION}/")


class _NeverStores(Bounded[object, object]):
    def put(self, key: object, value: object) -> object:
        return value


@pytest.mark.parametrize("name", sorted(PROXIES))
def test_cluster_templates_change_nothing(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Clusters copied from a template (`clusters._cluster`) are byte-equal to clusters made
    afresh, whether the templates were made in this translation or an earlier one."""
    from pilotfish.cache import Assembled, Encoded, Messages
    from pilotfish.translators import clusters

    def cds(translation: Translation) -> list[bytes]:
        # The bytes as served: a template's are joined, not serialized from a message.
        assert isinstance(translation.clusters, Messages)
        return [
            c.data
            if isinstance(c, (Encoded, Assembled))
            else c.SerializeToString(deterministic=True)
            for c in translation.clusters.items
        ]

    monkeypatch.setattr(clusters, "_TEMPLATES", _NeverStores(4096))
    fresh = cds(_translate(name))
    templates: Bounded[object, object] = Bounded(4096)
    monkeypatch.setattr(clusters, "_TEMPLATES", templates)
    made = cds(_translate(name))
    assert templates, "no cluster was made from a template"
    assert made == fresh
    assert cds(_translate(name)) == fresh  # every template made by the earlier translation
