"""Resource makers shared by the tests."""

from __future__ import annotations

from envoy.config.core.v3.config_source_pb2 import ConfigSource

from pilotfish.cache import Snapshot
from pilotfish.translators import build


def mesh(
    clusters: dict[str, list[tuple[str, int]]],
    route_to: str | dict[str, int],
    *,
    listener_port: int = 10000,
    listener_name: str = "listener_0",
    route_name: str = "local_route",
    connect_timeout: float = 1.0,
    config_source: ConfigSource | None = None,
) -> Snapshot:
    """A snapshot: EDS clusters with endpoints, one route config, one HTTP listener; dependent
    resources are fetched over ADS unless `config_source` says otherwise."""
    return Snapshot(
        {
            "cds": [
                build.eds_cluster(n, config_source=config_source, connect_timeout=connect_timeout)
                for n in clusters
            ],
            "eds": [build.load_assignment(n, eps) for n, eps in clusters.items()],
            "lds": [
                build.http_listener(
                    listener_name, listener_port, route_name, config_source=config_source
                )
            ],
            "rds": [build.route_config(route_name, route_to)],
        }
    )
