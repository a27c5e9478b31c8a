"""A control plane in one of the transport modes, for the scenario matrix.

Each mode is what an Envoy user can configure: SotW or delta, ADS or per-type, REST polling, or
ADS over a MuxCache whose endpoints live in a LinearCache.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from envoy.config.core.v3.config_source_pb2 import ConfigSource
from google.protobuf import json_format

from pilotfish.bootstrap import config_source, envoy_bootstrap
from pilotfish.cache import LinearCache, MuxCache, Snapshot, SnapshotCache
from pilotfish.protos import ENDPOINT_TYPE
from pilotfish.testing import EnvoyProcess, RecordingCallbacks, ServerThread
from pilotfish.xds import ConfigWatcher
from tests import helpers


@dataclass(frozen=True)
class Mode:
    name: str
    ads: bool = True
    delta: bool = False
    rest: bool = False
    mux: bool = False

    def source(self) -> ConfigSource:
        """How served resources point at their dependents (EDS, RDS) in this mode."""
        as_dict = config_source(self.ads, delta=self.delta, rest=self.rest)
        return json_format.ParseDict(as_dict, ConfigSource())

    def bootstrap(self, node_id: str, address: tuple[str, int]) -> dict[str, Any]:
        return envoy_bootstrap(
            node_id=node_id,
            cluster="test",
            xds_address=address,
            ads=self.ads,
            delta=self.delta,
            rest=self.rest,
        )

    def version_in_envoy(self, snapshot: Snapshot, type_url: str, name: str) -> str:
        """What Envoy's config dump says: the resource's own version in delta, else the type's."""
        if self.delta:
            return snapshot.resources(type_url)[name].version
        return snapshot.version(type_url)


MODES = [
    Mode("sotw-ads"),
    Mode("sotw-per-type", ads=False),
    Mode("delta-ads", delta=True),
    Mode("delta-per-type", ads=False, delta=True),
    Mode("rest", ads=False, rest=True),
    Mode("mux-linear-eds"),
]


@dataclass
class Plane:
    """Caches, callbacks and a running server for one mode; stops what it started."""

    mode: Mode
    snapshots: SnapshotCache = field(default_factory=SnapshotCache)
    callbacks: RecordingCallbacks = field(default_factory=RecordingCallbacks)
    linear: LinearCache = field(default_factory=lambda: LinearCache(ENDPOINT_TYPE))
    server: ServerThread | None = None
    envoys: list[EnvoyProcess] = field(default_factory=list)

    @property
    def watcher(self) -> ConfigWatcher:
        if not self.mode.mux:
            return self.snapshots
        rest = dict.fromkeys(("cds", "lds", "rds"), self.snapshots)
        return MuxCache({**rest, "eds": self.linear})

    def start(self, port: int = 0) -> ServerThread:
        self.server = ServerThread(
            self.watcher,
            callbacks=self.callbacks,
            address=f"127.0.0.1:{port}",
            rest=self.mode.rest,
        ).start()
        return self.server

    def restart(self) -> None:
        """Stop the server and start a new one on the same port, with fresh callbacks."""
        assert self.server is not None
        port = self.server.port
        self.server.stop()
        self.callbacks = RecordingCallbacks()
        self.start(port)

    def publish(self, snapshot: Snapshot, node_id: str = "sidecar") -> None:
        if self.mode.mux:
            endpoints = snapshot.messages(ENDPOINT_TYPE).values()
            self.linear.set_resources(endpoints)
        self.snapshots.set_snapshot(node_id, snapshot)

    def envoy(self, node_id: str = "sidecar") -> EnvoyProcess:
        assert self.server is not None
        envoy = EnvoyProcess(self.mode.bootstrap(node_id, self.server.address), name=node_id)
        self.envoys.append(envoy)
        return envoy.start()

    def close(self) -> None:
        for envoy in self.envoys:
            envoy.stop()
        if self.server is not None:
            self.server.stop()

    def mesh(
        self,
        clusters: dict[str, list[tuple[str, int]]],
        route_to: str,
        port: int,
        *,
        connect_timeout: float = 1.0,
    ) -> Snapshot:
        """EDS clusters, their endpoints, one route config and one listener, for this mode."""
        return helpers.mesh(
            clusters,
            route_to,
            listener_port=port,
            listener_name="web",
            route_name="routes",
            connect_timeout=connect_timeout,
            config_source=self.mode.source(),
        )
