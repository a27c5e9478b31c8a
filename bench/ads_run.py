"""The coordinator of the ADS push benchmark (`bench.ads_push`): starts the server workers and
the client processes, drives them over pipes, and makes the table and the JSON.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import resource
import statistics
import time
from collections.abc import Callable, Sequence
from multiprocessing.connection import wait
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

from bench import machine
from bench.ads_common import (
    CHANGES,
    CLIENT_IMPLS,
    PROTOCOLS,
    TRANSPORTS,
    BenchError,
    ClientImpl,
    Message,
    ResourceVersions,
    Transport,
    XdsProtocol,
    _raise_nofile,
)
from bench.ads_proxies import client_process
from bench.ads_server import server_process

__all__ = ["DEFAULT_JSON", "SYS_SHARE_MIN_CPU_S", "main", "run", "sys_share"]

DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "ads_push.json"

SYS_SHARE_MIN_CPU_S = 0.2
"""Server CPU below which its kernel share is not reported (None, `-` in the table). Linux
splits a process's CPU time into user and system by sampling the timer tick (4 ms at
CONFIG_HZ=250, unless the kernel has VIRT_CPU_ACCOUNTING_GEN): the total is exact, the split
a count of ticks. A push of a few milliseconds gets one or two samples, so its share reads 0%,
50% or 100%; 0.2 s is 50 samples at 250 Hz, a share good to about 7 points."""


def sys_share(sys_s: float, cpu_s: float) -> float | None:
    """The kernel's share of `cpu_s` of CPU, or None when too little CPU backs the sample."""
    return sys_s / cpu_s if cpu_s >= SYS_SHARE_MIN_CPU_S else None


# -- the coordinator --------------------------------------------------------------------------


class _Child:
    """A spawned process and our end of its pipe; every wait on it has a deadline."""

    def __init__(self, name: str, target: Callable[..., None], *args: object) -> None:
        context = multiprocessing.get_context("spawn")
        self.conn, theirs = context.Pipe()
        self.name = name
        self.process: BaseProcess = context.Process(
            target=target, args=(theirs, *args), name=name, daemon=True
        )
        self.process.start()
        theirs.close()

    def send(self, *message: object) -> None:
        self.conn.send(message)

    def expect(self, kind: str, deadline: float) -> Message:
        """The child's next message, which must be `kind`; raises on error, death or timeout."""
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BenchError(f"{self.name}: no {kind!r} in time")
            ready = wait([self.conn, self.process.sentinel], left)
            if self.conn in ready:
                message: Message = self.conn.recv()
                if message[0] == "error":
                    raise BenchError(f"{self.name} failed:\n{message[1]}")
                if message[0] != kind:
                    raise BenchError(f"{self.name}: expected {kind!r}, got {message!r}")
                return message
            if self.process.sentinel in ready:
                raise BenchError(f"{self.name} exited with code {self.process.exitcode}")

    def stop(self, timeout: float) -> None:
        """Ask politely, then terminate, then kill, by PID; never leaves the process behind."""
        try:
            if self.process.is_alive():
                self.send("stop")
                self.expect("stopped", time.monotonic() + timeout)
        except (BenchError, OSError):
            pass
        self.process.join(timeout)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(5)
        self.conn.close()


def _shares(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def _converge(
    clients: list[_Child], tag: int, timeout: float
) -> tuple[float, float, int, list[float]]:
    """Wait until every proxy holds the armed versions.

    Returns the last ACK's time, the client processes' CPU seconds, how many proxies hold it,
    and when each of them did (sorted).
    """
    deadline = time.monotonic() + timeout
    last, cpu, holding = 0.0, 0.0, 0
    times: list[float] = []
    for child in clients:
        _, done_tag, at, used, count, held = child.expect("done", deadline)
        if done_tag != tag:
            raise BenchError(f"{child.name}: converged on {done_tag}, expected {tag}")
        last, cpu, holding = max(last, at), cpu + used, holding + count
        times += held
    return last, cpu, holding, sorted(times)


def _quantile(ordered: list[float], q: float) -> float:
    """The `q` quantile of sorted values (nearest rank)."""
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def _arm(
    clients: list[_Child],
    tag: int,
    versions: dict[str, str],
    resources: ResourceVersions,
    timeout: float,
) -> None:
    deadline = time.monotonic() + timeout
    for child in clients:
        child.send("arm", tag, versions, resources)
    for child in clients:
        child.expect("armed", deadline)


def _count(clients: list[_Child], proxies: int, timeout: float) -> dict[str, float]:
    """What the proxies received and sent since they were armed, per proxy."""
    counted = _each(clients, "counted", timeout, "count")
    received, responses, sent = (sum(c[i] for c in counted) for i in (1, 2, 3))
    return {
        "bytes_per_client": received / proxies,
        "responses_per_client": responses / proxies,
        "request_bytes_per_client": sent / proxies,
    }


def _report(servers: list[_Child], timeout: float) -> dict[str, Any]:
    """Every worker's report, summed (CPU, memory, streams); counters per worker."""
    deadline = time.monotonic() + timeout
    for server in servers:
        server.send("report")
    reports: list[dict[str, Any]] = [server.expect("report", deadline)[1] for server in servers]
    total: dict[str, Any] = {
        key: sum(r[key] for r in reports)
        for key in ("cpu_user_s", "cpu_sys_s", "rss_mb", "hwm_mb", "threads", "streams")
    }
    total["cpu_s"] = total["cpu_user_s"] + total["cpu_sys_s"]
    for key in ("resources_serialized", "responses_built", "streams"):
        total[f"{key}_per_worker"] = [r[key] for r in reports]
    # Each worker serializes once for itself; a worker the kernel gave no stream builds nothing.
    total["idle_at"] = max(r["idle_at"] for r in reports)  # the last worker to finish
    total["resources_serialized"] = max(r["resources_serialized"] for r in reports)
    total["responses_built"] = max(r["responses_built"] for r in reports)
    return total


def _machine_cpu() -> float:
    """CPU seconds every process on the machine has used (/proc/stat): the machine is shared,
    and what others used during a push says whether to trust it. 0 where unavailable."""
    try:
        with open("/proc/stat", encoding="ascii") as stat:
            fields = [int(x) for x in stat.readline().split()[1:9]]
    except (OSError, ValueError):
        return 0.0
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _each(servers: list[_Child], kind: str, timeout: float, *command: object) -> list[Message]:
    """Send `command` to every worker, then collect each one's `kind` answer."""
    deadline = time.monotonic() + timeout
    for server in servers:
        server.send(*command)
    return [server.expect(kind, deadline) for server in servers]


def pinning(workers: int, enabled: bool = True) -> dict[str, list[int]] | None:
    """On a 2-core machine with one worker: the server on the first core, the clients on the
    other, so neither steals the other's CPU and each side's busy share is meaningful. With more
    workers, or other core counts, nothing is pinned."""
    cpus = sorted(os.sched_getaffinity(0))
    if not enabled or workers != 1 or len(cpus) != 2:
        return None
    return {"server": cpus[:1], "clients": cpus[1:]}


def run_one(
    clients: int,
    args: argparse.Namespace,
    transport: Transport = "grpc",
    impl: ClientImpl = "h2",
    workers: int = 1,
    protocol: XdsProtocol = "sotw",
) -> dict[str, Any]:
    """W server workers and K client processes for N proxies: initial convergence, then pushes."""
    procs = max(1, min(args.client_procs, clients))
    pins = pinning(workers, not args.no_pin)
    client_cpus = pins["clients"] if pins else None
    # Cores the client processes can use at once: what `gen busy` divides by.
    gen_cores = min(procs, len(client_cpus) if client_cpus else os.cpu_count() or 1)
    idle = 3 * args.timeout + 60
    children: list[_Child] = []
    try:
        server_args = (args.clusters, args.endpoints, args.change, idle, transport)
        first_server = _Child(
            "server-0", server_process, *server_args, 0, pins["server"] if pins else None
        )
        servers = [first_server]
        children.append(first_server)
        first = 0
        client_children: list[_Child] = []
        for i, share in enumerate(_shares(clients, procs)):
            child = _Child(
                f"clients-{i}", client_process, first, share, idle, impl, protocol, client_cpus
            )
            first += share
            client_children.append(child)
            children.append(child)
        deadline = time.monotonic() + args.timeout
        _, port, versions, resources = first_server.expect("ready", deadline)
        for w in range(1, workers):
            worker = _Child(f"server-{w}", server_process, *server_args, port, None)
            servers.append(worker)
            children.append(worker)
        for worker in servers[1:]:
            _, worker_port, worker_versions, _ = worker.expect("ready", deadline)
            if (worker_port, worker_versions) != (port, versions):
                raise BenchError(f"{worker.name}: port {worker_port}, versions {worker_versions}")
        for child in client_children:
            child.expect("ready", deadline)

        # Initial convergence: from the first connect until every proxy ACKed all four types.
        _arm(client_children, 0, versions, resources, args.timeout)
        _each(servers, "marked", args.timeout, "mark")
        for child in client_children:
            child.send("connect", port)
        started = min(
            child.expect("started", time.monotonic() + args.timeout)[1] for child in client_children
        )
        last, client_cpu, converged, _ = _converge(client_children, 0, args.timeout)
        initial = _report(servers, args.timeout)
        initial_counts = _count(client_children, clients, args.timeout)
        if initial["streams"] != clients:
            raise BenchError(f"servers have {initial['streams']} streams for {clients} proxies")
        result: dict[str, Any] = {
            "clients": clients,
            "transport": transport,
            "client_impl": impl,
            "protocol": protocol,
            "workers": workers,
            "pinning": pins,
            "clusters": args.clusters,
            "endpoints": args.endpoints,
            "change": args.change,
            "client_procs": procs,
            "client_cores": gen_cores,
            "initial_s": last - started,
            "initial_server_cpu_s": initial["cpu_s"],
            "initial_client_cpu_s": client_cpu,
            "initial_server_cpu_ms_per_client": 1000 * initial["cpu_s"] / clients,
            "initial_client_cpu_ms_per_client": 1000 * client_cpu / clients,
            "initial_server_busy": initial["cpu_s"] / ((last - started) * workers),
            "initial_server_sys_share": sys_share(initial["cpu_sys_s"], initial["cpu_s"]),
            "initial_client_busy": client_cpu / ((last - started) * gen_cores),
            "initial_bytes_per_client": initial_counts["bytes_per_client"],
            "initial_responses_per_client": initial_counts["responses_per_client"],
            "initial_snapshot": {
                "versions": versions,
                "resources_serialized": initial["resources_serialized"],
                "responses_built": initial["responses_built"],
            },
            "converged_clients": converged,
            "server_streams": initial["streams"],
            "server_streams_per_worker": initial["streams_per_worker"],
            "pushes": [],
        }

        for generation in range(1, args.repeat + 1):
            prepared = _each(servers, "prepared", args.timeout, "prepare", generation)
            versions, resources = prepared[0][1], prepared[0][5]
            if any(p[1] != versions for p in prepared):
                raise BenchError(f"workers built different versions: {[p[1] for p in prepared]}")
            build_cpu = max(p[2] for p in prepared)
            build_wall = max(p[3] for p in prepared)
            _arm(client_children, generation, versions, resources, args.timeout)
            machine_cpu = _machine_cpu()
            set_times = [p[1] for p in _each(servers, "set", args.timeout, "set")]
            set_at = min(set_times)
            last, client_cpu, converged, held = _converge(client_children, generation, args.timeout)
            report = _report(servers, args.timeout)
            machine_cpu = _machine_cpu() - machine_cpu
            counts = _count(client_children, clients, args.timeout)
            push_s = last - set_at
            result["pushes"].append(
                {
                    "generation": generation,
                    "versions": versions,
                    "push_s": push_s,
                    # Per proxy, from set_snapshot until it held every new version.
                    "proxy_first_s": held[0] - set_at,
                    "proxy_p50_s": _quantile(held, 0.5) - set_at,
                    "proxy_p99_s": _quantile(held, 0.99) - set_at,
                    "server_done_s": report["idle_at"] - set_at,
                    "set_spread_s": max(set_times) - set_at,
                    "build_cpu_s": build_cpu,
                    "build_wall_s": build_wall,
                    "server_cpu_s": report["cpu_s"],
                    "server_cpu_user_s": report["cpu_user_s"],
                    "server_cpu_sys_s": report["cpu_sys_s"],
                    "server_cpu_ms_per_client": 1000 * report["cpu_s"] / clients,
                    "server_busy": report["cpu_s"] / (push_s * workers) if push_s > 0 else 0.0,
                    "client_cpu_s": client_cpu,
                    "client_cpu_ms_per_client": 1000 * client_cpu / clients,
                    "client_busy": client_cpu / (push_s * gen_cores) if push_s > 0 else 0.0,
                    # Everyone else's CPU meanwhile (ours: the coordinator's, a little).
                    "other_cpu_s": max(0.0, machine_cpu - report["cpu_s"] - client_cpu),
                    "server_rss_mb": report["rss_mb"],
                    "resources_serialized": report["resources_serialized"],
                    "responses_built": report["responses_built"],
                    "resources_serialized_per_worker": report["resources_serialized_per_worker"],
                    "responses_built_per_worker": report["responses_built_per_worker"],
                    "converged_clients": converged,
                    # What the server sent each proxy (DiscoveryResponse or
                    # DeltaDiscoveryResponse bytes, without gRPC/HTTP/2 framing), and its
                    # requests, from arming the push until the servers were idle again.
                    **counts,
                }
            )
        pushes = result["pushes"]
        result.update(
            {
                "push_median_s": statistics.median(p["push_s"] for p in pushes),
                "push_min_s": min(p["push_s"] for p in pushes),
                "proxy_first_median_s": statistics.median(p["proxy_first_s"] for p in pushes),
                "proxy_p50_median_s": statistics.median(p["proxy_p50_s"] for p in pushes),
                "proxy_p99_median_s": statistics.median(p["proxy_p99_s"] for p in pushes),
                "push_max_s": max(p["push_s"] for p in pushes),
                "server_done_median_s": statistics.median(p["server_done_s"] for p in pushes),
                "server_cpu_median_s": statistics.median(p["server_cpu_s"] for p in pushes),
                "server_busy_median": statistics.median(p["server_busy"] for p in pushes),
                "build_cpu_median_s": statistics.median(p["build_cpu_s"] for p in pushes),
                "server_cpu_ms_per_client_push": statistics.median(
                    p["server_cpu_ms_per_client"] for p in pushes
                ),
                # Pooled over the pushes (each alone is a few ticks): see `sys_share`.
                "server_sys_share": sys_share(
                    sum(p["server_cpu_sys_s"] for p in pushes),
                    sum(p["server_cpu_s"] for p in pushes),
                ),
                "client_cpu_median_s": statistics.median(p["client_cpu_s"] for p in pushes),
                "client_cpu_ms_per_client_push": statistics.median(
                    p["client_cpu_ms_per_client"] for p in pushes
                ),
                "client_busy_median": statistics.median(p["client_busy"] for p in pushes),
                "other_cpu_median_s": statistics.median(p["other_cpu_s"] for p in pushes),
                "bytes_per_client_push": statistics.median(p["bytes_per_client"] for p in pushes),
                "responses_per_client_push": statistics.median(
                    p["responses_per_client"] for p in pushes
                ),
                "server_rss_mb": report["rss_mb"],
                "server_hwm_mb": report["hwm_mb"],
                "server_threads": report["threads"],
            }
        )
        return result
    finally:
        # Clients first, so the servers see clean closes.
        for child in sorted(children, key=lambda c: c.name.startswith("server")):
            child.stop(min(args.timeout, 30))


def machine_info() -> dict[str, Any]:
    """Enough to tell whose numbers these are."""
    import grpc

    return machine.machine_info(
        grpcio=grpc.__version__, nofile=resource.getrlimit(resource.RLIMIT_NOFILE)
    )


COLUMNS = (
    ("N", "clients", "{:d}"),
    ("transport", "transport", "{}"),
    ("client", "client_impl", "{}"),
    ("proto", "protocol", "{}"),
    ("W", "workers", "{:d}"),
    ("pin", None, ""),
    ("CxE", None, ""),
    ("K", "client_procs", "{:d}"),
    ("init s", "initial_s", "{:.3f}"),
    ("push s", "push_median_s", "{:.3f}"),
    ("min-max s", None, ""),
    ("first/p50/p99 s", None, ""),
    ("srv done s", "server_done_median_s", "{:.3f}"),
    ("build s", "build_cpu_median_s", "{:.3f}"),
    ("srv cpu s", "server_cpu_median_s", "{:.3f}"),
    ("srv busy", "server_busy_median", "{:.0%}"),
    ("ms/client", "server_cpu_ms_per_client_push", "{:.3f}"),
    ("sys %", None, ""),
    ("rss MB", "server_rss_mb", "{:.0f}"),
    ("ser/push", None, ""),
    ("built/push", None, ""),
    ("B/client", "bytes_per_client_push", "{:.0f}"),
    ("resp/cl", "responses_per_client_push", "{:.2f}"),
    ("gen ms/cl", "client_cpu_ms_per_client_push", "{:.3f}"),
    ("gen busy", "client_busy_median", "{:.0%}"),
    ("other s", "other_cpu_median_s", "{:.2f}"),
)


def _row(result: dict[str, Any]) -> list[str]:
    pushes = result["pushes"]
    special = {
        "pin": _pins(result["pinning"]),
        "CxE": f"{result['clusters']}x{result['endpoints']}",
        "min-max s": f"{result['push_min_s']:.3f}-{result['push_max_s']:.3f}",
        "first/p50/p99 s": "/".join(
            f"{result[k]:.3f}"
            for k in ("proxy_first_median_s", "proxy_p50_median_s", "proxy_p99_median_s")
        ),
        "sys %": "-" if result["server_sys_share"] is None else f"{result['server_sys_share']:.0%}",
        "ser/push": "/".join(sorted({str(p["resources_serialized"]) for p in pushes})),
        "built/push": "/".join(sorted({str(p["responses_built"]) for p in pushes})),
    }
    return [
        special[title] if key is None else fmt.format(result[key]) for title, key, fmt in COLUMNS
    ]


def _pins(pins: dict[str, list[int]] | None) -> str:
    """ "0/1": server on CPU 0, clients on CPU 1; "-": not pinned."""
    if not pins:
        return "-"
    return "/".join(",".join(map(str, pins[side])) for side in ("server", "clients"))


def format_table(results: list[dict[str, Any]]) -> str:
    """One row per N, widths fitted to the content."""
    rows = [[title for title, _, _ in COLUMNS], *(_row(r) for r in results)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    return "\n".join(
        "  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in rows
    )


def default_client_procs() -> int:
    """One core for the server, the rest for proxies (up to 4); 1 on a 2-core machine.

    With one client process each side gets a core (pinned, on 2 cores with one worker); more
    processes than spare cores only make them fight the server for CPU.
    """
    return max(1, min(4, (os.cpu_count() or 2) - 1))


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line options (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[100, 1000], help="N values")
    parser.add_argument("--clusters", type=int, default=100, help="clusters (C) in the snapshot")
    parser.add_argument("--endpoints", type=int, default=1, help="endpoints (E) per cluster")
    parser.add_argument("--repeat", type=int, default=3, help="pushes per N (median reported)")
    parser.add_argument(
        "--change",
        choices=CHANGES,
        default="all",
        help="what a push changes: every resource of all four types (default), one cluster's "
        "endpoints, one cluster's settings (its endpoints then come again), the route, or one "
        "service replaced by another",
    )
    parser.add_argument(
        "--client-procs",
        type=int,
        default=default_client_procs(),
        help="processes running the simulated proxies (default: cores - 1, 1 to 4)",
    )
    parser.add_argument(
        "--transport",
        nargs="+",
        choices=TRANSPORTS,
        default=["grpc"],
        help="server transports to measure, one row each per N (default: grpc)",
    )
    parser.add_argument(
        "--client-impl",
        nargs="+",
        choices=CLIENT_IMPLS,
        default=["h2"],
        help="the simulated proxies' client: h2 (bench.h2client, cheap) or grpc (grpc.aio)",
    )
    parser.add_argument(
        "--protocol",
        nargs="+",
        choices=PROTOCOLS,
        default=["sotw"],
        help="xDS variant the proxies speak, one row each: sotw (StreamAggregatedResources, "
        "the default) and/or delta (DeltaAggregatedResources)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        nargs="+",
        default=[1],
        help="server worker processes on one port (SO_REUSEPORT), one row each (default: 1)",
    )
    parser.add_argument(
        "--no-pin",
        action="store_true",
        help="do not pin server and clients to a core each (done on 2 cores with 1 worker)",
    )
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds for each wait")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help="where to write results")
    args = parser.parse_args(argv)
    if min(args.repeat, args.clusters, args.endpoints, *args.clients, *args.workers) < 1:
        parser.error("--clients, --clusters, --endpoints, --repeat, --workers must be positive")
    return args


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Every N in turn, each with fresh processes; writes the JSON and returns it."""
    _raise_nofile()
    settings = [
        (n, transport, impl, workers, protocol)
        for n in args.clients
        for transport in args.transport
        for impl in args.client_impl
        for workers in args.workers
        for protocol in args.protocol
    ]
    # The floor never sends endpoints again for an updated cluster: its proxies would wait.
    floor_ok = args.change != "cluster"
    if any(
        t == "floor" and not (floor_ok and p == "sotw" and w == 1) for _, t, _, w, p in settings
    ):
        print(
            "floor: state of the world with one worker only, and no --change cluster (it does "
            "not send an updated cluster's endpoints again); its other rows are skipped"
        )
    results = [
        run_one(n, args, transport, impl, workers, protocol)
        for n, transport, impl, workers, protocol in settings
        if transport != "floor" or (floor_ok and protocol == "sotw" and workers == 1)
    ]
    document = {
        "benchmark": "ads_push",
        "machine": machine_info(),
        "args": {
            "clients": args.clients,
            "clusters": args.clusters,
            "endpoints": args.endpoints,
            "change": args.change,
            "repeat": args.repeat,
            "transports": args.transport,
            "client_impls": args.client_impl,
            "protocols": args.protocol,
            "workers": args.workers,
            "pin": not args.no_pin,
            "client_procs": args.client_procs,
            "timeout": args.timeout,
        },
        "results": results,
    }
    machine.write_result(args.json, document)
    return document


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark, print the table, write the JSON."""
    args = parse_args(argv)
    document = run(args)
    info = document["machine"]
    print(
        f"ads_push: {info['cpu_count']} cpus, Python {info['python']}, "
        f"grpcio {info['grpcio']}; {args.repeat} pushes per N"
    )
    print(format_table(document["results"]))
    print(f"wrote {args.json}")
    return 0
