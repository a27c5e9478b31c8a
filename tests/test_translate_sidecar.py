"""Sidecar listener rules that Envoy enforces: no two listeners on one address."""

from __future__ import annotations

from pathlib import Path

from pilotfish.registry import Registry, Workload
from pilotfish.sources import load_path
from pilotfish.translators import Proxy, translate

BOOKINFO = Path(__file__).resolve().parents[2] / "shared" / "conformance" / "istio-bookinfo"


def _addresses(proxy: Proxy, registry: Registry) -> list[tuple[str, int]]:
    objects = load_path(BOOKINFO / "platform" / "kube" / "bookinfo.yaml").objects
    listeners = translate(proxy, objects, registry).listeners
    return [(lis.address.socket_address.address, lis.address.socket_address.port_value)
            for lis in listeners]  # fmt: skip


def test_a_sidecar_without_a_registered_endpoint_gets_no_inbound_listener() -> None:
    # productpage's labels match the productpage Service, but no endpoint of it is known:
    # an inbound listener would sit on 0.0.0.0:9080 next to the outbound one (Envoy NACKs).
    services = load_path(BOOKINFO / "platform" / "kube" / "bookinfo.yaml").objects
    registry = Registry.from_objects(services)
    proxy = Proxy(id="pp", labels={"app": "productpage", "version": "v1"})
    addresses = _addresses(proxy, registry)
    assert addresses == [("0.0.0.0", 9080)]
    registry.add_workload(Workload("127.0.0.1", name="pp", labels=dict(proxy.labels),
                                   ports={"http": 15006}))  # fmt: skip
    addresses = _addresses(proxy, registry)
    assert sorted(addresses) == [("0.0.0.0", 9080), ("127.0.0.1", 15006)]
    assert len(set(addresses)) == len(addresses)
