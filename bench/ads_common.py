"""What every process of the ADS push benchmark shares: its constants, the snapshot it serves,
and a child process's command inbox.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any, Literal

from pilotfish.cache import Snapshot
from pilotfish.protos import (
    CLUSTER_TYPE,
    ENDPOINT_TYPE,
    LISTENER_TYPE,
    ROUTE_TYPE,
)
from pilotfish.translators import build

__all__ = ["TYPES", "BenchError", "build_snapshot", "next_snapshot"]

ADS_METHOD = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources"
DELTA_METHOD = "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources"
NODE_CLUSTER = "bench"  # every proxy's node.cluster: by_cluster gives them one shared snapshot
ROUTE_NAME = "bench_route"
TYPES = (CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE)
SHORT = {CLUSTER_TYPE: "cds", ENDPOINT_TYPE: "eds", LISTENER_TYPE: "lds", ROUTE_TYPE: "rds"}
CHANNEL_OPTIONS: tuple[tuple[str, int], ...] = (
    # Without this, channels to one address share one TCP connection; proxies do not.
    ("grpc.use_local_subchannel_pool", 1),
    ("grpc.max_receive_message_length", -1),
)
Transport = Literal["grpc", "native", "floor"]
"""The server: pilotfish's `XdsServer` over grpc.aio or its native HTTP/2, or `bench.floor`
(the issue's serialize-once baseline, for calibration: SotW and one worker only)."""
TRANSPORTS: tuple[Transport, ...] = ("grpc", "native", "floor")
ClientImpl = Literal["grpc", "h2"]
CLIENT_IMPLS: tuple[ClientImpl, ...] = ("h2", "grpc")
XdsProtocol = Literal["sotw", "delta"]
PROTOCOLS: tuple[XdsProtocol, ...] = ("sotw", "delta")
METHODS: dict[XdsProtocol, str] = {"sotw": ADS_METHOD, "delta": DELTA_METHOD}
H2_CONNECTS_IN_FLIGHT = 256  # per client process; the server's listen backlog is 4096

Message = tuple[Any, ...]
ResourceVersions = dict[str, dict[str, str]]
"""Per type, every resource's name and version: what a delta proxy holds when converged."""


class BenchError(RuntimeError):
    """A child process failed, died, or did not answer in time."""


# -- shared by every process ------------------------------------------------------------------


Change = Literal["all", "one", "cluster", "route", "service"]
CHANGES: tuple[Change, ...] = ("all", "one", "cluster", "route", "service")


def _name(i: int) -> str:
    return f"outbound|80||svc-{i:05d}.bench.svc.cluster.local"


def _names(clusters: int, generation: int, change: Change) -> list[str]:
    """The clusters of a generation: with `"service"`, generation g has replaced the services
    in slots 1 to g, each by one of a new name."""
    names = [_name(i) for i in range(clusters)]
    if change == "service":
        for slot in range(1, min(generation, clusters - 1) + 1):
            names[slot] = _name(clusters + slot)
    return names


def build_snapshot(
    clusters: int, endpoints: int, generation: int, change: Change = "all"
) -> Snapshot:
    """C EDS clusters with E endpoints each, one listener, one weighted route over all clusters.

    `change` says what a generation changes:
    - `"all"`: the content of all four types (cluster timeouts, endpoint ports, listener port,
      route weights), so a push gives each type a new content version;
    - `"one"`: the first cluster's endpoints (an endpoints-only push: a pod added or moved);
    - `"cluster"`: the first cluster's connect timeout (a DestinationRule edited): Envoy then
      re-warms that cluster and waits for its endpoints, which the server sends again;
    - `"route"`: the route's weights (a VirtualService shifting traffic);
    - `"service"`: one service gone and another come (a deployment replaced): a cluster, its
      endpoints and the route's share of it; proxies subscribe to the new endpoints and drop
      the old.
    """
    names = _names(clusters, generation, change)
    every = generation if change == "all" else 0
    weights = generation if change in ("all", "route") else 0

    def timeout(i: int) -> float:
        moved = every if change == "all" else generation if change == "cluster" and i == 0 else 0
        return 1.0 + (moved % 1000) / 1000

    def port(i: int) -> int:
        return (
            8000 + (generation if change == "all" or (change == "one" and i == 0) else 0) % 50_000
        )

    return Snapshot(
        {
            "cds": [build.eds_cluster(n, connect_timeout=timeout(i)) for i, n in enumerate(names)],
            "eds": [_assignment(i, n, endpoints, port(i)) for i, n in enumerate(names)],
            "lds": [build.http_listener("listener_0", 10_000 + every % 50_000, ROUTE_NAME)],
            "rds": [_routes(names, weights)],
        }
    )


def _assignment(i: int, name: str, endpoints: int, port: int) -> Any:
    return build.load_assignment(
        name, [(f"10.{i >> 8 & 255}.{i & 255}.{j + 1}", port) for j in range(endpoints)]
    )


def _routes(names: list[str], turn: int) -> Any:
    return build.route_config(ROUTE_NAME, {n: 1 + (i + turn) % 10 for i, n in enumerate(names)})


def next_snapshot(
    previous: Snapshot, clusters: int, endpoints: int, generation: int, change: Change = "all"
) -> Snapshot:
    """`build_snapshot`'s snapshot for `generation`, made the way pilotfish's controller makes
    the next one: with a few resources changed (`"one"`, `"cluster"`, `"route"`,
    `"service"`), `previous` updated by them (`Snapshot.updated`: the other resources are not
    serialized again, and the untouched types keep their built responses); with `"all"`, built
    afresh (everything changed anyway)."""
    if change == "all":
        return build_snapshot(clusters, endpoints, generation, change)
    if change == "one":
        changed = _assignment(0, _name(0), endpoints, 8000 + generation % 50_000)
        return previous.updated({}, {"eds": [changed]})
    if change == "cluster":
        timeout = 1.0 + (generation % 1000) / 1000
        return previous.updated({}, {"cds": [build.eds_cluster(_name(0), connect_timeout=timeout)]})
    if change == "service":
        if not 0 < generation < clusters:
            raise BenchError("--change service replaces one service a push: --repeat < --clusters")
        gone, new = _name(generation), _name(clusters + generation)
        return previous.updated(
            {"cds": [gone], "eds": [gone]},
            {
                "cds": [build.eds_cluster(new, connect_timeout=1.0)],
                "eds": [_assignment(generation, new, endpoints, 8000)],
                "rds": [_routes(_names(clusters, generation, change), 0)],
            },
        )
    names = [_name(i) for i in range(clusters)]
    return previous.updated({}, {"rds": [_routes(names, generation)]})


def _versions(snapshot: Snapshot) -> dict[str, str]:
    return {t: snapshot.version(t) for t in TYPES}


def _resource_versions(snapshot: Snapshot) -> ResourceVersions:
    return {t: {n: r.version for n, r in snapshot.resources(t).items()} for t in TYPES}


def _raise_nofile() -> None:
    """1000 proxies are 1000+ sockets in the server and in the client processes."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft != target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def _proc_status_kb(field: str) -> int:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


class _Inbox:
    """Commands from the coordinator, read on the event loop without blocking it.

    A closed pipe (the coordinator died) reads as a stop command, so children never linger.
    """

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._queue: asyncio.Queue[Message] = asyncio.Queue()
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(conn.fileno(), self._on_readable)

    def _on_readable(self) -> None:
        try:
            while self._conn.poll():
                self._queue.put_nowait(self._conn.recv())
        except (EOFError, OSError):
            self._loop.remove_reader(self._conn.fileno())
            self._queue.put_nowait(("stop",))

    async def get(self, timeout: float) -> Message:
        """The next command; a coordinator silent for `timeout` seconds means stop."""
        try:
            return await asyncio.wait_for(self._queue.get(), timeout)
        except TimeoutError:
            return ("stop",)

    def close(self) -> None:
        self._loop.remove_reader(self._conn.fileno())


def _child(conn: Connection, body: Callable[[], None], cpus: list[int] | None = None) -> None:
    """Run a child's body (on `cpus` if given); any failure goes to the coordinator as
    ("error", traceback)."""
    _raise_nofile()
    if cpus is not None:  # before any thread starts: threads inherit it (grpc's pollers too)
        os.sched_setaffinity(0, cpus)
    try:
        body()
    except BaseException:
        with contextlib.suppress(OSError):
            conn.send(("error", traceback.format_exc()))
        raise
