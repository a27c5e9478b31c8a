"""Who a translation is for: a sidecar or a gateway, identified like Istio identifies proxies.

Istio learns a proxy's namespace, labels and service account from its node metadata; so does
`Proxy.from_node`. Because local runs share one host (no iptables, no pod network), a proxy can
remap the ports its listeners bind (`port_map`) and say where its application listens
(`app_ports`); names keep the mesh ports so they read as in Istio.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["Proxy", "ProxyKind"]

ProxyKind = Literal["sidecar", "gateway"]


@dataclass(frozen=True)
class Proxy:
    """A proxy's identity and placement.

    `port_map`: mesh port (service or gateway server port) -> port its listener binds.
    `app_ports`: workload port -> port the application listens on behind the sidecar.
    `workload`: the name of the workload (pod, WorkloadEntry) a sidecar fronts; it picks the
    sidecar's own endpoints when several workloads share an address, as on one test host.
    """

    id: str
    namespace: str = "default"
    labels: Mapping[str, str] = field(default_factory=dict)
    service_account: str = "default"
    kind: ProxyKind = "sidecar"
    address: str = "127.0.0.1"
    locality: str = ""
    port_map: Mapping[int, int] = field(default_factory=dict)
    app_ports: Mapping[int, int] = field(default_factory=dict)
    workload: str = ""

    def bind_port(self, port: int) -> int:
        """The port a listener for mesh port `port` binds."""
        return self.port_map.get(port, port)

    def app_port(self, port: int) -> int:
        """Where the application behind this sidecar serves workload port `port`."""
        return self.app_ports.get(port, port)

    @classmethod
    def from_node(cls, node: Any, **placement: Any) -> Proxy:
        """A proxy from an Envoy `Node` with Istio-style metadata (`NAMESPACE`, `LABELS`,
        `SERVICE_ACCOUNT`; an id starting `router~` or `PROXY_KIND: gateway` marks a gateway)
        and pilotfish's placement keys for hosts without traffic capture: `PORT_MAP` and
        `APP_PORTS` (`{"9080": 15001}`), `WORKLOAD` and `ADDRESS`. `placement` overrides."""
        fields = node.metadata.fields

        def text(key: str, default: str = "") -> str:
            return str(fields[key].string_value) if key in fields else default

        def ports(key: str) -> dict[int, int]:
            if key not in fields:
                return {}
            return {int(k): int(v.number_value or v.string_value)
                    for k, v in fields[key].struct_value.fields.items()}  # fmt: skip

        labels: dict[str, str] = {}
        if "LABELS" in fields:
            labels = {k: v.string_value for k, v in fields["LABELS"].struct_value.fields.items()}
        gateway = node.id.startswith("router~") or text("PROXY_KIND") == "gateway"
        locality = node.locality
        where = "/".join((locality.region, locality.zone, locality.sub_zone)).rstrip("/")
        values: dict[str, Any] = {
            "id": node.id,
            "namespace": text("NAMESPACE", "default"),
            "labels": labels,
            "service_account": text("SERVICE_ACCOUNT") or "default",
            "kind": "gateway" if gateway else "sidecar",
            "address": text("ADDRESS", "127.0.0.1"),
            "locality": where,
            "port_map": ports("PORT_MAP"),
            "app_ports": ports("APP_PORTS"),
            "workload": text("WORKLOAD"),
        }
        values.update(placement)
        return cls(**values)
