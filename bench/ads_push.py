"""ADS push benchmark: how long and how much server CPU it takes to converge N proxies.

The server (one process) serves a `SnapshotCache(node_hash=by_cluster)`, so every simulated proxy
shares one snapshot and its prepared response bytes. Simulated proxies run in K other processes,
each an ADS stream on its own TCP connection that behaves like Envoy (CDS, then EDS for the
clusters, then LDS, then RDS for the route; every response ACKed). A coordinator (this process)
drives both over pipes, so the load generator never shares an interpreter with the server.

It measures initial convergence, then `--repeat` pushes of a snapshot in which every type has a new
version: wall time until every proxy ACKed all four types, server CPU, server RSS, and the
snapshot's serialization counters, which must not grow with N (serialize once).

    .venv/bin/python bench/ads_push.py --clients 100 1000 --clusters 100 --endpoints 1

`--transport grpc native` measures both server transports (grpc.aio, and pilotfish's own HTTP/2),
one row each per N; the simulated proxies are grpc.aio clients either way.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import grpc
import grpc.aio

from pilotfish.cache import Snapshot, SnapshotCache, by_cluster
from pilotfish.protos import (
    CLUSTER_TYPE,
    ENDPOINT_TYPE,
    LISTENER_TYPE,
    ROUTE_TYPE,
    Cluster,
    DiscoveryResponse,
    HttpConnectionManager,
    Listener,
    Node,
    wire,
)
from pilotfish.translators import build
from pilotfish.xds.server import Transport, XdsServer

__all__ = ["build_snapshot", "main", "run"]

ADS_METHOD = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources"
NODE_CLUSTER = "bench"  # every proxy's node.cluster: by_cluster gives them one shared snapshot
ROUTE_NAME = "bench_route"
TYPES = (CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE)
SHORT = {CLUSTER_TYPE: "cds", ENDPOINT_TYPE: "eds", LISTENER_TYPE: "lds", ROUTE_TYPE: "rds"}
CHANNEL_OPTIONS: tuple[tuple[str, int], ...] = (
    # Without this, channels to one address share one TCP connection; proxies do not.
    ("grpc.use_local_subchannel_pool", 1),
    ("grpc.max_receive_message_length", -1),
)
DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "ads_push.json"
TRANSPORTS: tuple[Transport, ...] = ("grpc", "native")

Message = tuple[Any, ...]


class BenchError(RuntimeError):
    """A child process failed, died, or did not answer in time."""


# -- shared by every process ------------------------------------------------------------------


def build_snapshot(clusters: int, endpoints: int, generation: int) -> Snapshot:
    """C EDS clusters with E endpoints each, one listener, one weighted route over all clusters.

    Every generation changes the content of all four types (cluster timeouts, endpoint ports,
    listener port, route weights), so a push gives each type a new content version.
    """
    names = [f"outbound|80||svc-{i:05d}.bench.svc.cluster.local" for i in range(clusters)]
    timeout = 1.0 + (generation % 1000) / 1000
    port = 8000 + generation % 50_000
    return Snapshot(
        {
            "cds": [build.eds_cluster(n, connect_timeout=timeout) for n in names],
            "eds": [
                build.load_assignment(
                    n, [(f"10.{i >> 8 & 255}.{i & 255}.{j + 1}", port) for j in range(endpoints)]
                )
                for i, n in enumerate(names)
            ],
            "lds": [build.http_listener("listener_0", 10_000 + generation % 50_000, ROUTE_NAME)],
            "rds": [
                build.route_config(
                    ROUTE_NAME, {n: 1 + (i + generation) % 10 for i, n in enumerate(names)}
                )
            ],
        }
    )


def _versions(snapshot: Snapshot) -> dict[str, str]:
    return {t: snapshot.version(t) for t in TYPES}


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


def _child(conn: Connection, body: Callable[[], None]) -> None:
    """Run a child's body; any failure goes to the coordinator as ("error", traceback)."""
    _raise_nofile()
    try:
        body()
    except BaseException:
        with contextlib.suppress(OSError):
            conn.send(("error", traceback.format_exc()))
        raise


# -- the server process -----------------------------------------------------------------------


def server_process(
    conn: Connection, clusters: int, endpoints: int, idle_timeout: float, transport: Transport
) -> None:
    """Entry point of the server process (spawned): an XdsServer on 127.0.0.1 and a command loop."""
    _child(conn, lambda: asyncio.run(_serve(conn, clusters, endpoints, idle_timeout, transport)))


def _cpu() -> tuple[float, float]:
    usage = resource.getrusage(resource.RUSAGE_SELF)  # every thread: grpc's pollers too
    return usage.ru_utime, usage.ru_stime


async def _serve(
    conn: Connection, clusters: int, endpoints: int, idle_timeout: float, transport: Transport
) -> None:
    snapshot = build_snapshot(clusters, endpoints, 0)
    cache = SnapshotCache(node_hash=by_cluster)
    cache.set_snapshot(NODE_CLUSTER, snapshot)
    server = XdsServer(cache, transport=transport)
    port = await server.start("127.0.0.1:0")
    inbox = _Inbox(conn)
    conn.send(("ready", port, _versions(snapshot)))
    prepared = snapshot
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
                prepared = build_snapshot(clusters, endpoints, command[1])
                cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
                stats = prepared.stats
                conn.send(("prepared", _versions(prepared), cpu, wall, stats.resources_serialized))
            elif kind == "set":
                snapshot = prepared
                mark = _cpu()
                set_at = time.monotonic()
                cache.set_snapshot(NODE_CLUSTER, snapshot)
                conn.send(("set", set_at))
            elif kind == "report":
                user, system = _cpu()
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
                            "resources_serialized": snapshot.stats.resources_serialized,
                            "responses_built": snapshot.stats.responses_built,
                        },
                    )
                )
            else:
                raise BenchError(f"server: unknown command {command!r}")
    finally:
        inbox.close()
        await server.stop(0.5)
    conn.send(("stopped",))


# -- the client processes ---------------------------------------------------------------------


_name_cache: dict[tuple[str, str], tuple[str, ...]] = {}


def _names_to_follow(response: DiscoveryResponse) -> tuple[str, ...]:
    """Names a CDS (EDS names) or LDS (RDS names) response makes Envoy subscribe to.

    Decoded once per (type, version) per process: every proxy gets the same bytes, and the load
    generator must stay cheaper than the server it measures.
    """
    key = (response.type_url, response.version_info)
    names = _name_cache.get(key)
    if names is None:
        if response.type_url == CLUSTER_TYPE:
            found = {Cluster.FromString(r.value).name for r in response.resources}
        else:
            found = set()
            for resource_any in response.resources:
                listener = Listener.FromString(resource_any.value)
                for chain in listener.filter_chains:
                    for network_filter in chain.filters:
                        hcm = HttpConnectionManager()
                        if network_filter.typed_config.Unpack(hcm) and hcm.HasField("rds"):
                            found.add(hcm.rds.route_config_name)
        names = _name_cache[key] = tuple(sorted(found))
    return names


class _TypeView:
    """What the proxy holds of one type: its subscription and the last response it accepted."""

    __slots__ = ("acked_at", "fixed", "names", "nonce", "subscribed", "version")

    def __init__(self, type_url: str) -> None:
        self.names: tuple[str, ...] = ()
        self.fixed = b""  # resource_names + type_url fields, encoded once per subscription
        self.version = ""
        self.nonce = ""
        self.acked_at = 0.0
        self.subscribe(type_url, ())
        self.subscribed = False  # until the proxy first asks for the type

    def subscribe(self, type_url: str, names: tuple[str, ...]) -> None:
        self.names = names
        self.fixed = b"".join(wire.length_delimited(3, n.encode()) for n in names)
        self.fixed += wire.length_delimited(4, type_url.encode())
        self.subscribed = True

    def request(self, node: bytes = b"") -> bytes:
        """A DiscoveryRequest's wire bytes (fields 1 version, 2 node, 3 names, 4 type, 5 nonce).

        Hand-assembled: an EDS ACK repeats every cluster name, and re-encoding that per ACK
        would make the load generator, not the server, the bottleneck.
        """
        out = wire.length_delimited(1, self.version.encode()) if self.version else b""
        if node:
            out += wire.length_delimited(2, node)
        out += self.fixed
        if self.nonce:
            out += wire.length_delimited(5, self.nonce.encode())
        return out


class _Proxy:
    """One simulated Envoy: an ADS stream on its own channel (and so its own TCP connection)."""

    __slots__ = ("channel", "held_tag", "ident", "tracker", "views")

    def __init__(self, ident: str, tracker: _Tracker) -> None:
        self.ident = ident
        self.tracker = tracker
        self.views = {t: _TypeView(t) for t in TYPES}
        self.held_tag = -1
        self.channel: grpc.aio.Channel | None = None

    async def run(self, address: str) -> None:
        """Subscribe like Envoy: CDS, then EDS for the clusters, then LDS, then RDS."""
        self.channel = grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)
        call: grpc.aio.StreamStreamCall[bytes, DiscoveryResponse] = self.channel.stream_stream(
            ADS_METHOD, request_serializer=None, response_deserializer=DiscoveryResponse.FromString
        )()
        node = Node(id=self.ident, cluster=NODE_CLUSTER).SerializeToString()
        cds = self.views[CLUSTER_TYPE]
        cds.subscribed = True
        await call.write(cds.request(node))  # wildcard: no names
        while True:
            response = await call.read()
            if response is grpc.aio.EOF:
                raise BenchError(f"{self.ident}: the server ended the stream")
            assert isinstance(response, DiscoveryResponse)
            type_url = response.type_url
            view = self.views[type_url]
            view.nonce = response.nonce
            if view.version != response.version_info:
                view.version = response.version_info
                view.acked_at = -1.0
            await call.write(view.request())  # ACK
            if view.acked_at < 0:
                view.acked_at = time.monotonic()
                self.tracker.check(self)
            if type_url == CLUSTER_TYPE:
                await self._follow(call, ENDPOINT_TYPE, _names_to_follow(response))
            elif type_url == ENDPOINT_TYPE and not self.views[LISTENER_TYPE].subscribed:
                # Envoy asks for listeners once its clusters are warm (have endpoints).
                await self._follow(call, LISTENER_TYPE, ())
            elif type_url == LISTENER_TYPE:
                await self._follow(call, ROUTE_TYPE, _names_to_follow(response))

    async def _follow(
        self,
        call: grpc.aio.StreamStreamCall[bytes, DiscoveryResponse],
        type_url: str,
        names: tuple[str, ...],
    ) -> None:
        view = self.views[type_url]
        if view.subscribed and view.names == names:
            return
        view.subscribe(type_url, names)
        await call.write(view.request())

    def holds(self, versions: dict[str, str]) -> float | None:
        """When it had ACKed all of `versions`, or None if it does not hold them (yet)."""
        views = self.views
        if all(views[t].version == v and views[t].acked_at > 0 for t, v in versions.items()):
            return max(views[t].acked_at for t in versions)
        return None


class _Tracker:
    """Counts the proxies of this process that hold the target versions; reports when all do."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.proxies: list[_Proxy] = []
        self.tag = -1
        self.target: dict[str, str] = {}
        self.holding = 0
        self.last = 0.0
        self.cpu = 0.0

    def arm(self, tag: int, versions: dict[str, str]) -> None:
        self.tag, self.target, self.holding, self.last = tag, versions, 0, 0.0
        self.cpu = time.process_time()
        for proxy in self.proxies:
            self.check(proxy)

    def check(self, proxy: _Proxy) -> None:
        if proxy.held_tag == self.tag or not self.target:
            return
        at = proxy.holds(self.target)
        if at is None:
            return
        proxy.held_tag = self.tag
        self.holding += 1
        self.last = max(self.last, at)
        if self.holding == len(self.proxies):
            cpu = time.process_time() - self.cpu
            self.conn.send(("done", self.tag, self.last, cpu, self.holding))


def client_process(conn: Connection, first: int, count: int, idle_timeout: float) -> None:
    """Entry point of a client process (spawned): `count` proxies, started on "connect"."""
    _child(conn, lambda: asyncio.run(_clients(conn, first, count, idle_timeout)))


async def _clients(conn: Connection, first: int, count: int, idle_timeout: float) -> None:
    tracker = _Tracker(conn)
    tracker.proxies = [_Proxy(f"sidecar-{first + i:05d}", tracker) for i in range(count)]
    inbox = _Inbox(conn)
    tasks: list[asyncio.Task[None]] = []

    def failed(task: asyncio.Task[None]) -> None:
        if not task.cancelled() and (error := task.exception()) is not None:
            text = "".join(traceback.format_exception(error))
            conn.send(("error", f"proxy failed: {text}"))

    conn.send(("ready",))
    try:
        while True:
            command = await inbox.get(idle_timeout)
            kind = command[0]
            if kind == "stop":
                break
            if kind == "arm":
                tracker.arm(command[1], command[2])
                conn.send(("armed",))
            elif kind == "connect":
                started = time.monotonic()
                for proxy in tracker.proxies:
                    task = asyncio.create_task(proxy.run(f"127.0.0.1:{command[1]}"))
                    task.add_done_callback(failed)
                    tasks.append(task)
                conn.send(("started", started))
            else:
                raise BenchError(f"client: unknown command {command!r}")
    finally:
        inbox.close()
        for task in tasks:
            task.remove_done_callback(failed)
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        channels = [p.channel.close(None) for p in tracker.proxies if p.channel is not None]
        await asyncio.wait_for(asyncio.gather(*channels, return_exceptions=True), 30)
    conn.send(("stopped",))


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


def _converge(clients: list[_Child], tag: int, timeout: float) -> tuple[float, float, int]:
    """Wait until every proxy holds the armed versions.

    Returns the last ACK's time, the client processes' CPU seconds, and how many proxies hold it.
    """
    deadline = time.monotonic() + timeout
    last, cpu, holding = 0.0, 0.0, 0
    for child in clients:
        _, done_tag, at, used, count = child.expect("done", deadline)
        if done_tag != tag:
            raise BenchError(f"{child.name}: converged on {done_tag}, expected {tag}")
        last, cpu, holding = max(last, at), cpu + used, holding + count
    return last, cpu, holding


def _arm(clients: list[_Child], tag: int, versions: dict[str, str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    for child in clients:
        child.send("arm", tag, versions)
    for child in clients:
        child.expect("armed", deadline)


def _report(server: _Child, timeout: float) -> dict[str, Any]:
    server.send("report")
    report: dict[str, Any] = server.expect("report", time.monotonic() + timeout)[1]
    report["cpu_s"] = report["cpu_user_s"] + report["cpu_sys_s"]
    return report


def run_one(
    clients: int, args: argparse.Namespace, transport: Transport = "grpc"
) -> dict[str, Any]:
    """One server and K client processes for N proxies: initial convergence, then the pushes."""
    procs = max(1, min(args.client_procs, clients))
    idle = 3 * args.timeout + 60
    children: list[_Child] = []
    try:
        server = _Child("server", server_process, args.clusters, args.endpoints, idle, transport)
        children.append(server)
        first = 0
        client_children: list[_Child] = []
        for i, share in enumerate(_shares(clients, procs)):
            child = _Child(f"clients-{i}", client_process, first, share, idle)
            first += share
            client_children.append(child)
            children.append(child)
        deadline = time.monotonic() + args.timeout
        _, port, versions = server.expect("ready", deadline)
        for child in client_children:
            child.expect("ready", deadline)

        # Initial convergence: from the first connect until every proxy ACKed all four types.
        _arm(client_children, 0, versions, args.timeout)
        server.send("mark")
        server.expect("marked", time.monotonic() + args.timeout)
        for child in client_children:
            child.send("connect", port)
        started = min(
            child.expect("started", time.monotonic() + args.timeout)[1] for child in client_children
        )
        last, client_cpu, converged = _converge(client_children, 0, args.timeout)
        initial = _report(server, args.timeout)
        if initial["streams"] != clients:
            raise BenchError(f"server has {initial['streams']} streams for {clients} proxies")
        result: dict[str, Any] = {
            "clients": clients,
            "transport": transport,
            "clusters": args.clusters,
            "endpoints": args.endpoints,
            "client_procs": procs,
            "initial_s": last - started,
            "initial_server_cpu_s": initial["cpu_s"],
            "initial_client_cpu_s": client_cpu,
            "initial_snapshot": {
                "versions": versions,
                "resources_serialized": initial["resources_serialized"],
                "responses_built": initial["responses_built"],
            },
            "converged_clients": converged,
            "server_streams": initial["streams"],
            "pushes": [],
        }

        for generation in range(1, args.repeat + 1):
            server.send("prepare", generation)
            _, versions, build_cpu, build_wall, _ = server.expect(
                "prepared", time.monotonic() + args.timeout
            )
            _arm(client_children, generation, versions, args.timeout)
            server.send("set")
            set_at = server.expect("set", time.monotonic() + args.timeout)[1]
            last, client_cpu, converged = _converge(client_children, generation, args.timeout)
            report = _report(server, args.timeout)
            push_s = last - set_at
            result["pushes"].append(
                {
                    "generation": generation,
                    "versions": versions,
                    "push_s": push_s,
                    "build_cpu_s": build_cpu,
                    "build_wall_s": build_wall,
                    "server_cpu_s": report["cpu_s"],
                    "server_cpu_user_s": report["cpu_user_s"],
                    "server_cpu_sys_s": report["cpu_sys_s"],
                    "server_cpu_ms_per_client": 1000 * report["cpu_s"] / clients,
                    "server_busy": report["cpu_s"] / push_s if push_s > 0 else 0.0,
                    "client_cpu_s": client_cpu,
                    "client_busy": client_cpu / (push_s * procs) if push_s > 0 else 0.0,
                    "server_rss_mb": report["rss_mb"],
                    "resources_serialized": report["resources_serialized"],
                    "responses_built": report["responses_built"],
                    "converged_clients": converged,
                }
            )
        pushes = result["pushes"]
        result.update(
            {
                "push_median_s": statistics.median(p["push_s"] for p in pushes),
                "push_min_s": min(p["push_s"] for p in pushes),
                "push_max_s": max(p["push_s"] for p in pushes),
                "server_cpu_median_s": statistics.median(p["server_cpu_s"] for p in pushes),
                "server_busy_median": statistics.median(p["server_busy"] for p in pushes),
                "build_cpu_median_s": statistics.median(p["build_cpu_s"] for p in pushes),
                "server_cpu_ms_per_client_push": statistics.median(
                    p["server_cpu_ms_per_client"] for p in pushes
                ),
                "server_sys_share": statistics.median(
                    p["server_cpu_sys_s"] / p["server_cpu_s"] for p in pushes
                ),
                "client_cpu_median_s": statistics.median(p["client_cpu_s"] for p in pushes),
                "client_busy_median": statistics.median(p["client_busy"] for p in pushes),
                "server_rss_mb": report["rss_mb"],
                "server_hwm_mb": report["hwm_mb"],
                "server_threads": report["threads"],
            }
        )
        return result
    finally:
        for child in reversed(children):  # clients first, so the server sees clean closes
            child.stop(min(args.timeout, 30))


def _git(*args: str) -> str:
    """Read-only git query (which code was measured); empty when git is unavailable."""
    try:
        done = subprocess.run(
            ["git", *args],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    return done.stdout.strip() if done.returncode == 0 else ""


def machine_info() -> dict[str, Any]:
    """Enough to tell whose numbers these are."""
    model = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            model = next((ln.split(":", 1)[1].strip() for ln in cpuinfo if "model name" in ln), "")
    except OSError:
        pass
    return {
        "pilotfish_commit": _git("rev-parse", "HEAD"),
        "pilotfish_tree_dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
        "cpu_count": os.cpu_count(),
        "cpu_model": model,
        "python": sys.version.split()[0],
        "grpcio": grpc.__version__,
        "platform": platform.platform(),
        "nofile": resource.getrlimit(resource.RLIMIT_NOFILE),
    }


COLUMNS = (
    ("N", "clients", "{:d}"),
    ("transport", "transport", "{}"),
    ("CxE", None, ""),
    ("K", "client_procs", "{:d}"),
    ("init s", "initial_s", "{:.3f}"),
    ("push s", "push_median_s", "{:.3f}"),
    ("min-max s", None, ""),
    ("build s", "build_cpu_median_s", "{:.3f}"),
    ("srv cpu s", "server_cpu_median_s", "{:.3f}"),
    ("srv busy", "server_busy_median", "{:.0%}"),
    ("ms/client", "server_cpu_ms_per_client_push", "{:.3f}"),
    ("sys %", None, ""),
    ("rss MB", "server_rss_mb", "{:.0f}"),
    ("ser/push", None, ""),
    ("built/push", None, ""),
    ("gen busy", "client_busy_median", "{:.0%}"),
)


def _row(result: dict[str, Any]) -> list[str]:
    pushes = result["pushes"]
    special = {
        "CxE": f"{result['clusters']}x{result['endpoints']}",
        "min-max s": f"{result['push_min_s']:.3f}-{result['push_max_s']:.3f}",
        "sys %": f"{result['server_sys_share']:.0%}",
        "ser/push": "/".join(sorted({str(p["resources_serialized"]) for p in pushes})),
        "built/push": "/".join(sorted({str(p["responses_built"]) for p in pushes})),
    }
    return [
        special[title] if key is None else fmt.format(result[key]) for title, key, fmt in COLUMNS
    ]


def format_table(results: list[dict[str, Any]]) -> str:
    """One row per N, widths fitted to the content."""
    rows = [[title for title, _, _ in COLUMNS], *(_row(r) for r in results)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    return "\n".join(
        "  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in rows
    )


def default_client_procs() -> int:
    """One core for the server, the rest for proxies (up to 4); 1 on a 2-core machine.

    A proxy costs the load generator about as much CPU as it costs the server (both run
    grpc.aio), so with one client process each side gets a core; more processes than spare
    cores only make them fight the server for CPU.
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
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds for each wait")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help="where to write results")
    args = parser.parse_args(argv)
    if args.repeat < 1 or args.clusters < 1 or args.endpoints < 1 or min(args.clients) < 1:
        parser.error("--clients, --clusters, --endpoints and --repeat must be positive")
    return args


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Every N in turn, each with fresh processes; writes the JSON and returns it."""
    _raise_nofile()
    results = [run_one(n, args, transport) for n in args.clients for transport in args.transport]
    document = {
        "benchmark": "ads_push",
        "machine": machine_info(),
        "args": {
            "clients": args.clients,
            "clusters": args.clusters,
            "endpoints": args.endpoints,
            "repeat": args.repeat,
            "transports": args.transport,
            "client_procs": args.client_procs,
            "timeout": args.timeout,
        },
        "results": results,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    return document


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark, print the table, write the JSON."""
    args = parse_args(argv)
    document = run(args)
    machine = document["machine"]
    print(
        f"ads_push: {machine['cpu_count']} cpus, Python {machine['python']}, "
        f"grpcio {machine['grpcio']}; {args.repeat} pushes per N"
    )
    print(format_table(document["results"]))
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
