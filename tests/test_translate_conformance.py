"""Every bookinfo networking file loads, validates and translates, and a real Envoy sidecar and
a real Envoy gateway ACK the result: no NACK, nothing left warming."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from pilotfish.sources import load_path
from pilotfish.testing import LocalMesh, free_port
from tests.certs import workload_secrets

BOOKINFO = Path(__file__).resolve().parents[2] / "shared" / "conformance" / "istio-bookinfo"
FILES = sorted((BOOKINFO / "networking").glob("*.yaml"))


@pytest.fixture(scope="module")
def mesh() -> Iterator[LocalMesh]:
    services = load_path(BOOKINFO / "platform" / "kube" / "bookinfo.yaml").objects
    with LocalMesh(services, secrets=workload_secrets()) as running:
        running.add_sidecar(
            "productpage-v1",
            app_port=free_port(),
            labels={"app": "productpage", "version": "v1"},
            service_account="bookinfo-productpage",
            outbound_ports=(9080, 80, 443),
        )
        running.add_gateway("istio-ingressgateway", ports=[8080, 80])
        yield running


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_envoy_acks_every_bookinfo_file(mesh: LocalMesh, path: Path) -> None:
    loaded = load_path(path)
    assert loaded.errors == [] and loaded.skipped == [] and loaded.objects
    mesh.apply(loaded.objects)
    mesh.wait_converged()
    for name, member in mesh.proxies.items():
        status = mesh.cache.status(name)
        assert status is not None
        nacks = {t: s.last_nack for t, s in status.types.items() if s.last_nack is not None}
        assert nacks == {}, f"{name} rejected {path.name}: {nacks}"
        envoy = member.envoy
        assert envoy.stat("cluster_manager.warming_clusters") == 0, name
        assert envoy.stat("listener_manager.total_listeners_warming") == 0, name
        assert envoy.stat("cluster_manager.cds.update_rejected") == 0, name
        assert envoy.stat("listener_manager.lds.update_rejected") == 0, name
    # The translation used the file: each object shows up in some proxy's metadata.
    stamped = json.dumps(
        [json.loads(m.envoy.admin_get("/config_dump")) for m in mesh.proxies.values()]
    )
    for obj in loaded.objects:
        if obj.kind in ("VirtualService", "DestinationRule", "Gateway"):
            assert f"{obj.kind}/{obj.namespace}/{obj.name}" in stamped, obj.key
