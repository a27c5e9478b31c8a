"""A service mesh on one host: real Envoy sidecars and gateways configured only by pilotfish.

`LocalMesh` keeps the config objects and a service registry, translates them for every proxy it
started and pushes each proxy its snapshot through one xDS server. Without iptables or a pod
network, each sidecar binds its outbound listeners on ports of its own (`MeshProxy.outbound`) and
its inbound listener on the port registered as its workload's endpoint; the names Envoy sees are
still Istio's (`0.0.0.0_9080`, `outbound|9080|v1|reviews...`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Self

from pilotfish.bootstrap import envoy_bootstrap
from pilotfish.cache import SnapshotCache
from pilotfish.protos.messages import Secret
from pilotfish.registry import Registry, Workload
from pilotfish.sources import ConfigObject
from pilotfish.testing.envoy import EnvoyProcess, free_port, wait_until
from pilotfish.testing.server import ServerThread
from pilotfish.translators import Proxy, Translation, translate
from pilotfish.xds.callbacks import Callbacks

__all__ = ["LocalMesh", "MeshProxy"]


@dataclass
class MeshProxy:
    """A proxy of the mesh: its identity and placement, its Envoy, its latest translation."""

    proxy: Proxy
    envoy: EnvoyProcess
    workload: Workload | None = None
    translation: Translation | None = None
    inbound_port: int = 0
    extra: dict[str, object] = field(default_factory=dict)

    def outbound(self, port: int) -> tuple[str, int]:
        """Where the application sends traffic for mesh port `port` (its sidecar's listener)."""
        return self.proxy.address, self.proxy.bind_port(port)


class LocalMesh:
    """Config objects + a registry -> translated snapshots -> real Envoys, all on 127.0.0.1.

    `services` are the platform's registry objects (Kubernetes Services, ServiceEntries); each
    sidecar registers its workload. `secrets` (SDS) are the same for every proxy, or a function
    of the proxy (its own workload certificate). Objects can be replaced at any time with
    `apply`; every proxy is re-translated and pushed.
    `wait_converged` waits until every Envoy has ACKed what it was sent.
    """

    def __init__(
        self,
        services: Iterable[ConfigObject] = (),
        objects: Iterable[ConfigObject] = (),
        *,
        secrets: Iterable[Secret] | Callable[[Proxy], Iterable[Secret]] = (),
        envoy_log_level: str = "warning",
        callbacks: Callbacks | None = None,
    ) -> None:
        self.cache = SnapshotCache()
        self.server = ServerThread(self.cache, callbacks=callbacks)
        self.proxies: dict[str, MeshProxy] = {}
        self._services = list(services)
        self._objects = list(objects)
        self._workloads: list[Workload] = []
        self._secrets = secrets if callable(secrets) else list(secrets)
        self._log_level = envoy_log_level
        self._lock = threading.Lock()
        self.registry = self._registry()

    def _registry(self) -> Registry:
        """The registry of the platform services, the served objects (ServiceEntries,
        WorkloadEntries) and the workloads of the sidecars started here."""
        registry = Registry.from_objects([*self._services, *self._objects])
        for workload in self._workloads:
            registry.add_workload(workload)
        return registry

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> Self:
        """Start the xDS server."""
        self.server.start()
        return self

    def stop(self) -> None:
        """Stop every Envoy, then the server."""
        for member in self.proxies.values():
            member.envoy.stop()
        self.server.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- members ----------------------------------------------------------------------------

    def add_sidecar(
        self,
        name: str,
        *,
        app_port: int,
        labels: Mapping[str, str],
        namespace: str = "default",
        service_account: str = "default",
        service_port: int = 9080,
        port_name: str = "http",
        outbound_ports: Iterable[int] = (9080,),
    ) -> MeshProxy:
        """Register a workload (its endpoint is the sidecar's inbound listener) and start an
        Envoy sidecar in front of the application at `app_port`."""
        inbound = free_port()
        workload = Workload(
            address="127.0.0.1",
            name=name,
            namespace=namespace,
            # The injector's label: this workload's sidecar terminates mutual TLS.
            labels={**labels, "security.istio.io/tlsMode": "istio"},
            ports={port_name: inbound},
            service_account=service_account,
        )
        self._workloads.append(workload)
        proxy = Proxy(
            id=name,
            namespace=namespace,
            labels=dict(labels),
            service_account=service_account,
            port_map={p: free_port() for p in outbound_ports},
            app_ports={service_port: app_port},
            workload=name,
        )
        return self._start(proxy, workload, inbound)

    def add_gateway(
        self,
        name: str,
        *,
        ports: Iterable[int],
        labels: Mapping[str, str] | None = None,
        namespace: str = "istio-system",
    ) -> MeshProxy:
        """Start a gateway Envoy (labels default to `istio: ingressgateway`)."""
        proxy = Proxy(
            id=name,
            namespace=namespace,
            labels=dict(labels or {"istio": "ingressgateway"}),
            kind="gateway",
            port_map={p: free_port() for p in ports},
        )
        return self._start(proxy, None, 0)

    def _start(self, proxy: Proxy, workload: Workload | None, inbound: int) -> MeshProxy:
        bootstrap = envoy_bootstrap(
            node_id=proxy.id, cluster=proxy.id, xds_address=self.server.address
        )
        member = MeshProxy(
            proxy=proxy,
            envoy=EnvoyProcess(bootstrap, name=proxy.id, log_level=self._log_level),
            workload=workload,
            inbound_port=inbound,
        )
        with self._lock:
            self.proxies[proxy.id] = member
        self.push()  # every proxy: a new workload changes everyone's endpoints
        member.envoy.start()
        member.envoy.wait_ready()
        return member

    # -- config -----------------------------------------------------------------------------

    @property
    def objects(self) -> list[ConfigObject]:
        """The config objects being served."""
        return list(self._objects)

    def apply(self, objects: Iterable[ConfigObject]) -> None:
        """Serve `objects` instead of the current ones, to every proxy."""
        self._objects = list(objects)
        self.push()

    def push(self) -> None:
        """Translate for every proxy and hand each its snapshot."""
        with self._lock:
            self.registry = self._registry()
            for member in self.proxies.values():
                secrets = self._secrets(member.proxy) if callable(self._secrets) else self._secrets
                member.translation = translate(
                    member.proxy, self._objects, self.registry, secrets=secrets
                )
                snapshot = member.translation.snapshot()
                check = snapshot.consistent()
                if not check.ok:
                    raise ValueError(f"{member.proxy.id}: inconsistent snapshot: {check}")
                self.cache.set_snapshot(member.proxy.id, snapshot)

    def lagging(self) -> list[str]:
        """What keeps the mesh from having converged: per proxy and type, the version served and
        the one ACKed (and the last NACK, if any). Empty when converged."""
        behind = []
        for name in list(self.proxies):
            status = self.cache.status(name)
            if status is None or len(status.types) < 2:
                behind.append(f"{name}: not subscribed yet")
                continue
            snapshot = self.cache.get_snapshot(name)
            for type_url, type_status in status.types.items():
                want = snapshot.version(type_url)
                if type_status.acked_version != want:
                    nack = type_status.last_nack
                    behind.append(
                        f"{name} {type_url.rsplit('.', 1)[-1]}: serving {want}, sent "
                        f"{type_status.sent_version or 'nothing'}, ACKed "
                        f"{type_status.acked_version or 'nothing'}"
                        + (f", last NACK: {nack.error_detail}" if nack else "")
                    )
        return behind

    def converged(self) -> bool:
        """Whether every proxy has ACKed the current version of every type it subscribed to."""
        return not self.lagging()

    def wait_converged(self, timeout: float = 10.0) -> None:
        """Block until `converged()`; the error says which proxy and type lag, and why."""
        try:
            wait_until(self.converged, timeout=timeout)
        except TimeoutError as error:
            raise TimeoutError(f"proxies did not ACK their config: {self.lagging()}") from error
