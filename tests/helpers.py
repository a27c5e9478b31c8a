"""Resource makers shared by the tests."""

from __future__ import annotations

from pilotfish.cache import Snapshot
from pilotfish.translators import build


def mesh(
    clusters: dict[str, list[tuple[str, int]]],
    route_to: str | dict[str, int],
    *,
    listener_port: int = 10000,
    route_name: str = "local_route",
    connect_timeout: float = 1.0,
) -> Snapshot:
    """A snapshot: EDS clusters with endpoints, one route config, one HTTP listener."""
    return Snapshot(
        {
            "cds": [build.eds_cluster(n, connect_timeout=connect_timeout) for n in clusters],
            "eds": [build.load_assignment(n, eps) for n, eps in clusters.items()],
            "lds": [build.http_listener("listener_0", listener_port, route_name)],
            "rds": [build.route_config(route_name, route_to)],
        }
    )
