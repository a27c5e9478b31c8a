"""The server worker of the ADS push benchmark (`bench.ads_push`): a spawned process that
imports the server and nothing of the load generator, so its RSS is a server's.
"""

from __future__ import annotations

import asyncio
import os
import resource
import time
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING

from bench.ads_common import (
    NODE_CLUSTER,
    BenchError,
    Change,
    Transport,
    _child,
    _Inbox,
    _proc_status_kb,
    _resource_versions,
    _versions,
    build_snapshot,
    next_snapshot,
)
from pilotfish.cache import Snapshot, SnapshotCache, by_cluster
from pilotfish.gcpause import tune_for_serving
from pilotfish.xds.server import XdsServer

if TYPE_CHECKING:
    from bench.floor import FloorServer


__all__ = ["server_process"]

# -- the server process -----------------------------------------------------------------------


def server_process(
    conn: Connection,
    clusters: int,
    endpoints: int,
    change: Change,
    idle_timeout: float,
    transport: Transport,
    port: int,
    cpus: list[int] | None,
) -> None:
    """Entry point of a server worker (spawned): an XdsServer on 127.0.0.1:`port` and a command
    loop. Port 0 picks one; other workers then bind the same one (SO_REUSEPORT, which both
    transports set), and the kernel spreads connections over them."""
    _child(
        conn,
        lambda: asyncio.run(
            _serve(conn, clusters, endpoints, change, idle_timeout, transport, port)
        ),
        cpus,
    )


def _served_counts(server: XdsServer | FloorServer, snapshot: Snapshot) -> tuple[int, int]:
    """Resources serialized and responses built for what is served now. Pilotfish: the
    snapshot's own counts (responses: one per type and subscription for SotW, one per client
    state with something to send for delta, `Snapshot.delta_response`). The floor: what it
    packed and serialized since the last report (a push's, after one)."""
    if isinstance(server, XdsServer):
        stats = snapshot.stats
        return stats.resources_serialized, stats.responses_built + stats.delta_responses_built
    counts = server.resources_packed, server.responses_serialized
    server.resources_packed = server.responses_serialized = 0
    return counts


def _cpu() -> tuple[float, float]:
    usage = resource.getrusage(resource.RUSAGE_SELF)  # every thread: grpc's pollers too
    return usage.ru_utime, usage.ru_stime


async def _settle(window: float = 0.02, limit: float = 60.0) -> float:
    """Wait until this process is idle (under 10% CPU over `window` s); returns since when.

    Proxies hold a push once they have sent their ACKs, but the server still has those ACKs to
    handle: the report waits for that, so its CPU is all of the push's, and the idle time says
    when the server itself was done (`server_done_s`).
    """
    give_up = time.monotonic() + limit
    while True:
        start, used = time.monotonic(), sum(_cpu())
        await asyncio.sleep(window)
        elapsed = time.monotonic() - start
        if sum(_cpu()) - used < 0.1 * elapsed or start > give_up:
            return start


async def _serve(
    conn: Connection,
    clusters: int,
    endpoints: int,
    change: Change,
    idle_timeout: float,
    transport: Transport,
    port: int,
) -> None:
    # PILOTFISH_BENCH_PROFILE=PATH: cProfile this server worker, written to PATH.<pid>.
    profile_to = os.environ.get("PILOTFISH_BENCH_PROFILE")
    profiler = None
    if profile_to:
        import cProfile  # here: a server worker that is not profiled does not import it

        profiler = cProfile.Profile()
        profiler.enable()
    snapshot = build_snapshot(clusters, endpoints, 0)
    cache = SnapshotCache(node_hash=by_cluster)
    cache.set_snapshot(NODE_CLUSTER, snapshot)
    server: XdsServer | FloorServer
    if transport == "floor":
        from bench.floor import FloorServer  # here: only the floor's workers import grpc

        server = FloorServer(snapshot)
    else:
        server = XdsServer(cache, transport=transport)
    port = await server.start(f"127.0.0.1:{port}")
    inbox = _Inbox(conn)
    conn.send(("ready", port, _versions(snapshot), _resource_versions(snapshot)))
    prepared = snapshot
    if transport != "floor":
        tune_for_serving()  # as `pilotfish serve` does (the floor is the issue's, untuned)
    mark = _cpu()
    try:
        while True:
            command = await inbox.get(idle_timeout)
            kind = command[0]
            if kind == "stop":
                break
            if kind == "mark":
                mark = _cpu()
                conn.send(("marked",))
            elif kind == "prepare":
                # Building (translating + serializing once) is measured apart from the fan-out.
                cpu, wall = time.process_time(), time.perf_counter()
                prepared = next_snapshot(prepared, clusters, endpoints, command[1], change)
                cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
                stats = prepared.stats
                conn.send(
                    (
                        "prepared",
                        _versions(prepared),
                        cpu,
                        wall,
                        stats.resources_serialized,
                        _resource_versions(prepared),
                    )
                )
            elif kind == "set":
                snapshot = prepared
                mark = _cpu()
                set_at = time.monotonic()
                if isinstance(server, XdsServer):
                    cache.set_snapshot(NODE_CLUSTER, snapshot)
                else:
                    server.set(snapshot)
                conn.send(("set", set_at))
            elif kind == "report":
                idle_at = await _settle()
                user, system = _cpu()
                serialized, built = _served_counts(server, snapshot)
                conn.send(
                    (
                        "report",
                        {
                            "cpu_user_s": user - mark[0],
                            "cpu_sys_s": system - mark[1],
                            "rss_mb": _proc_status_kb("VmRSS") / 1024,
                            "hwm_mb": _proc_status_kb("VmHWM") / 1024,
                            "threads": _proc_status_kb("Threads"),
                            "streams": server.stream_count,
                            "resources_serialized": serialized,
                            "responses_built": built,
                            "idle_at": idle_at,
                        },
                    )
                )
            else:
                raise BenchError(f"server: unknown command {command!r}")
    finally:
        inbox.close()
        await server.stop(0.5)
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(f"{profile_to}.{os.getpid()}")
    conn.send(("stopped",))
