"""ADS push benchmark: how long and how much server CPU it takes to converge N proxies.

The server serves a `SnapshotCache(node_hash=by_cluster)`, so every simulated proxy shares one
snapshot and its prepared response bytes; `--workers W` runs W server processes on one port
(SO_REUSEPORT), each with its own cache built identically. Simulated proxies run in K other
processes, each an ADS stream on its own TCP connection that behaves like Envoy (CDS, then EDS for
the clusters, then LDS, then RDS for the route; every response ACKed). A coordinator (this
process) drives both over pipes, so the load generator never shares an interpreter with a server.

It measures initial convergence, then `--repeat` pushes of a snapshot in which every type has a new
version: wall time until every proxy ACKed all four types, server and load-generator CPU, server
RSS, and the snapshot's serialization counters, which must not grow with N (serialize once).

    .venv/bin/python bench/ads_push.py --clients 100 1000 --clusters 100 --endpoints 1

`--transport grpc native` measures both server transports (grpc.aio, and pilotfish's own HTTP/2),
one row each per N; `floor` is the issue's serialize-once baseline (`bench.floor`), a
calibration. `--client-impl` picks the proxies' client: `h2` (`bench.h2client`, raw asyncio
HTTP/2, the default: several times cheaper, so the generator is not what gets measured) or
`grpc` (grpc.aio). `--protocol sotw delta` runs the proxies over state-of-the-world ADS
(`StreamAggregatedResources`, the default) and/or incremental ADS (`DeltaAggregatedResources`),
one row each.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import multiprocessing
import os
import resource
import statistics
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from collections.abc import Set as AbstractSet
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pilotfish.cache import Snapshot, SnapshotCache, by_cluster
from pilotfish.gcpause import tune_for_serving
from pilotfish.protos import (
    CLUSTER_TYPE,
    ENDPOINT_TYPE,
    LISTENER_TYPE,
    ROUTE_TYPE,
    Cluster,
    DeltaDiscoveryResponse,
    DiscoveryResponse,
    HttpConnectionManager,
    Listener,
    Node,
    wire,
)
from pilotfish.translators import build
from pilotfish.xds.server import XdsServer

if not __package__:  # run as a script (bench/ is sys.path[0]): make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench import h2client, machine

if TYPE_CHECKING:  # the grpc client is imported when used: server workers run without grpc
    import grpc.aio

    from bench.floor import FloorServer

__all__ = [
    "build_snapshot",
    "delta_response_fields",
    "main",
    "next_snapshot",
    "response_fields",
    "run",
]

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
DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "ads_push.json"
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


Change = Literal["all", "one"]


def build_snapshot(
    clusters: int, endpoints: int, generation: int, change: Change = "all"
) -> Snapshot:
    """C EDS clusters with E endpoints each, one listener, one weighted route over all clusters.

    `change="all"`: every generation changes the content of all four types (cluster timeouts,
    endpoint ports, listener port, route weights), so a push gives each type a new content
    version. `"one"`: only the first cluster's endpoints change (an endpoints-only push).
    """
    names = [f"outbound|80||svc-{i:05d}.bench.svc.cluster.local" for i in range(clusters)]
    every = generation if change == "all" else 0
    timeout = 1.0 + (every % 1000) / 1000

    def port(i: int) -> int:
        return 8000 + (generation if change == "all" or i == 0 else 0) % 50_000

    return Snapshot(
        {
            "cds": [build.eds_cluster(n, connect_timeout=timeout) for n in names],
            "eds": [_assignment(i, n, endpoints, port(i)) for i, n in enumerate(names)],
            "lds": [build.http_listener("listener_0", 10_000 + every % 50_000, ROUTE_NAME)],
            "rds": [
                build.route_config(
                    ROUTE_NAME, {n: 1 + (i + every) % 10 for i, n in enumerate(names)}
                )
            ],
        }
    )


def _assignment(i: int, name: str, endpoints: int, port: int) -> Any:
    return build.load_assignment(
        name, [(f"10.{i >> 8 & 255}.{i & 255}.{j + 1}", port) for j in range(endpoints)]
    )


def next_snapshot(
    previous: Snapshot, clusters: int, endpoints: int, generation: int, change: Change = "all"
) -> Snapshot:
    """`build_snapshot`'s snapshot for `generation`, made the way pilotfish's controller makes
    the next one: with `change="one"`, `previous` updated by the one changed assignment
    (`Snapshot.updated`: the other resources are not serialized again, and the untouched types
    keep their built responses); with `"all"`, built afresh (everything changed anyway)."""
    if change == "all":
        return build_snapshot(clusters, endpoints, generation, change)
    name = f"outbound|80||svc-{0:05d}.bench.svc.cluster.local"
    changed = _assignment(0, name, endpoints, 8000 + generation % 50_000)
    return previous.updated({}, {"eds": [changed]})


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
    profiler = cProfile.Profile() if profile_to else None
    if profiler is not None:
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


# -- the client processes ---------------------------------------------------------------------

# DiscoveryResponse fields (length-delimited): version_info 1, resources 2, type_url 4, nonce 5
_VERSION_TAG, _RESOURCES_TAG, _TYPE_URL_TAG, _NONCE_TAG = 0x0A, 0x12, 0x22, 0x2A
# (version, where the resources start) -> (where they end, the type_url field after them, the
# type_url, the version): the resources of one version are the same bytes for every proxy.
_runs: dict[tuple[str, int], tuple[int, bytes, str, str]] = {}
# The message last found to hold a remembered run, by the run's key: never changed once
# received (`bench.h2client` hands equal messages on as one object), so not compared again.
_checked: dict[tuple[str, int], bytes | bytearray] = {}


def response_fields(message: bytes | bytearray) -> tuple[str, str, bytes, bytes]:
    """version_info and type_url of a serialized DiscoveryResponse, and its raw version_info and
    nonce fields, which an ACK repeats as they are (DiscoveryRequest uses the same numbers).

    Top-level fields only, with the resources skipped, and a run of resources is walked once per
    (version, offset) per process: every proxy gets the same prepared body (only the nonce after
    it differs), and walking a thousand resources per response would make the load generator,
    not the server, the bottleneck. A remembered run is used only where the bytes after it are
    the type_url field seen there before.
    """
    end = len(message)
    if end > 2 and message[0] == _VERSION_TAG and message[1] < 0x80:  # the usual layout:
        pos = 2 + message[1]  # version, resources, type_url, nonce, all seen before but the nonce
        key = (message[2:pos].decode(), pos)
        known = _runs.get(key)
        if known is not None and (
            _checked.get(key) is message or message.startswith(known[1], known[0])
        ):
            _checked[key] = message  # the same object again (h2client: equal messages) is too
            after = known[0] + len(known[1])  # the nonce field, which must end the message
            size = end - after - 2
            if 0 <= size < 0x80 and message[after] == _NONCE_TAG and message[after + 1] == size:
                return known[3], known[2], bytes(message[:pos]), bytes(message[after:])
    version = type_url = ""
    version_field = nonce_field = b""
    pos = 0
    while pos < end:
        start = pos
        tag = message[pos]
        pos += 1
        if tag >= 0x80:
            tag, pos = wire.read_varint(message, start)
        if tag == _RESOURCES_TAG:
            key = (version, start)
            known = _runs.get(key)
            if known is not None and message.startswith(known[1], known[0]):
                pos = known[0]
                continue
            pos = start
            while pos < end and message[pos] == _RESOURCES_TAG:
                size, pos = wire.read_varint(message, pos + 1)
                pos += size
            if pos < end and message[pos] == _TYPE_URL_TAG:
                size, after = wire.read_varint(message, pos + 1)
                after += size
                run_type = message[after - size : after].decode()
                _runs[key] = (pos, bytes(message[pos:after]), run_type, version)
            continue
        kind = tag & 7
        if kind == 2:
            size, pos = wire.read_varint(message, pos)
            if tag == _VERSION_TAG:
                version = message[pos : pos + size].decode()
                version_field = bytes(message[start : pos + size])
            elif tag == _TYPE_URL_TAG:
                type_url = message[pos : pos + size].decode()
            elif tag == _NONCE_TAG:
                nonce_field = bytes(message[start : pos + size])
            pos += size
        elif kind == 0:
            _, pos = wire.read_varint(message, pos)
        elif kind == 1:
            pos += 8
        elif kind == 5:
            pos += 4
        else:
            raise ValueError(f"DiscoveryResponse: wire type {kind} at {pos}")
    return version, type_url, version_field, nonce_field


def _route_names(listener_bytes: bytes) -> tuple[str, ...]:
    """The RDS route configurations a listener's HTTP connection managers name."""
    found = set()
    for chain in Listener.FromString(listener_bytes).filter_chains:
        for network_filter in chain.filters:
            hcm = HttpConnectionManager()
            if network_filter.typed_config.Unpack(hcm) and hcm.HasField("rds"):
                found.add(hcm.rds.route_config_name)
    return tuple(sorted(found))


_name_cache: dict[tuple[str, str], tuple[str, ...]] = {}


def _names_to_follow(type_url: str, version: str, message: bytes | bytearray) -> tuple[str, ...]:
    """Names a CDS (EDS names) or LDS (RDS names) response makes Envoy subscribe to.

    Decoded once per (type, version) per process: every proxy gets the same bytes, and the load
    generator must stay cheaper than the server it measures.
    """
    key = (type_url, version)
    names = _name_cache.get(key)
    if names is None:
        response = DiscoveryResponse.FromString(message)
        if type_url == CLUSTER_TYPE:
            found = {Cluster.FromString(r.value).name for r in response.resources}
        else:
            found = {n for r in response.resources for n in _route_names(r.value)}
        names = _name_cache[key] = tuple(sorted(found))
    return names


_fixed_fields: dict[tuple[str, tuple[str, ...]], bytes] = {}


class _TypeView:
    """What the proxy holds of one type: its subscription and the last response it accepted."""

    __slots__ = (
        "acked_at",
        "fixed",
        "names",
        "nonce_field",
        "subscribed",
        "type_url",
        "version",
        "version_field",
    )

    def __init__(self, type_url: str) -> None:
        self.type_url = type_url
        self.names: tuple[str, ...] = ()
        self.fixed = b""  # resource_names + type_url fields, encoded once per subscription
        self.version = ""
        self.version_field = b""  # the last response's, encoded: an ACK repeats it
        self.nonce_field = b""
        self.acked_at = 0.0  # when its version was ACKed; -1 while that ACK is on its way
        self.subscribe(type_url, ())
        self.subscribed = False  # until the proxy first asks for the type

    def subscribe(self, type_url: str, names: tuple[str, ...]) -> None:
        self.names = names
        fixed = _fixed_fields.get((type_url, names))
        if fixed is None:  # once per subscription per process: every proxy asks for the same
            fixed = b"".join(wire.length_delimited(3, n.encode()) for n in names)
            fixed += wire.length_delimited(4, type_url.encode())
            _fixed_fields[type_url, names] = fixed
        self.fixed = fixed
        self.subscribed = True

    def request(self, node: bytes = b"") -> bytes:
        """A DiscoveryRequest's wire bytes (fields 1 version, 2 node, 3 names, 4 type, 5 nonce).

        Hand-assembled: an EDS ACK repeats every cluster name, and re-encoding that per ACK
        would make the load generator, not the server, the bottleneck.
        """
        if node:
            return self.version_field + wire.length_delimited(2, node) + self.fixed
        return self.version_field + self.fixed + self.nonce_field


class _Proxy:
    """One simulated Envoy: an ADS stream on its own TCP connection, over either client.

    The protocol is the subclass's (`_SotwProxy`, `_DeltaProxy`): `first_request`, `on_response`
    (the requests Envoy sends on a response), `sent` (those are written) and `missing` (what it
    lacks of the tracker's target). `run_grpc` and `run_h2` only move bytes, and count them.
    """

    __slots__ = ("channel", "ident", "stream", "tracker")
    method = ADS_METHOD

    def __init__(self, ident: str, tracker: _Tracker) -> None:
        self.ident = ident
        self.tracker = tracker
        self.channel: grpc.aio.Channel | None = None
        self.stream: h2client.GrpcStream | None = None

    def first_request(self) -> bytes:
        """The stream's first request: CDS wildcard, with the node."""
        raise NotImplementedError

    def on_response(self, message: bytes | bytearray) -> list[bytes]:
        """The requests Envoy sends on this response: its ACK, then any new subscription."""
        raise NotImplementedError

    def sent(self) -> None:
        """The requests `on_response` returned are written."""
        raise NotImplementedError

    def missing(self) -> tuple[int, float]:
        """How many types of the tracker's target it does not hold, and when it ACKed the last
        of the others (it counts down its own `pending` from there)."""
        raise NotImplementedError

    def _respond(self, message: bytes | bytearray) -> list[bytes]:
        tracker = self.tracker
        tracker.received += len(message)
        tracker.responses += 1
        out = self.on_response(message)
        for request in out:
            tracker.sent_bytes += len(request)
        return out

    async def run_grpc(self, address: str) -> None:
        """The proxy over grpc.aio: its own channel (so its own TCP connection)."""
        import grpc.aio

        self.channel = grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)
        call: grpc.aio.StreamStreamCall[bytes, bytes] = self.channel.stream_stream(
            self.method, request_serializer=None, response_deserializer=None
        )()
        await call.write(self.first_request())
        while True:
            response = await call.read()
            if response is grpc.aio.EOF:
                raise BenchError(f"{self.ident}: the server ended the stream")
            assert isinstance(response, bytes)
            for request in self._respond(response):
                await call.write(request)
            self.sent()

    async def run_h2(
        self,
        port: int,
        header_block: bytes,
        gate: asyncio.Semaphore,
        on_failure: Callable[[str], None],
    ) -> None:
        """The proxy over `bench.h2client`; returns once connected (callbacks do the rest).

        `gate` bounds connections whose server has not yet sent SETTINGS (not yet accepted and
        served), so a burst of thousands of connects does not overflow the listen backlog.
        """

        def on_message(message: bytes | bytearray) -> None:
            assert self.stream is not None
            for request in self._respond(message):
                self.stream.send_message(request)
            self.sent()

        def on_close(error: BaseException) -> None:
            on_failure(f"{self.ident}: {error!r}")

        await gate.acquire()
        try:
            self.stream = await h2client.open_stream(
                "127.0.0.1",
                port,
                header_block,
                on_message,
                on_close,
                gate.release,
                first=self.first_request(),
            )
        except BaseException:
            gate.release()
            raise


class _SotwProxy(_Proxy):
    """Envoy over state-of-the-world ADS: every request names the whole subscription, every
    response holds the whole answer; it holds a version once it has ACKed it."""

    __slots__ = ("fresh", "pending", "views")

    def __init__(self, ident: str, tracker: _Tracker) -> None:
        super().__init__(ident, tracker)
        self.views = {t: _TypeView(t) for t in TYPES}
        self.fresh: _TypeView | None = None  # the view given a new version, until its ACK is out
        self.pending = 0  # types whose armed version it does not hold yet

    def first_request(self) -> bytes:
        """CDS wildcard (no names), with the node."""
        node = Node(id=self.ident, cluster=NODE_CLUSTER).SerializeToString()
        view = self.views[CLUSTER_TYPE]
        view.subscribed = True
        return view.request(node)

    def on_response(self, message: bytes | bytearray) -> list[bytes]:
        """The requests Envoy sends on this response: its ACK, then any new subscription.

        CDS: EDS for every cluster; the first EDS: LDS wildcard (Envoy asks for listeners once
        its clusters are warm); LDS: RDS for the listener's route.
        """
        version, type_url, version_field, nonce_field = response_fields(message)
        view = self.views[type_url]
        view.nonce_field = nonce_field
        if view.version != version:
            view.version, view.version_field = version, version_field
            view.acked_at = -1.0
            self.fresh = view
        out = [view.request()]  # ACK
        if type_url == CLUSTER_TYPE:
            self._follow(out, ENDPOINT_TYPE, _names_to_follow(type_url, version, message))
        elif type_url == ENDPOINT_TYPE and not self.views[LISTENER_TYPE].subscribed:
            self._follow(out, LISTENER_TYPE, ())
        elif type_url == LISTENER_TYPE:
            self._follow(out, ROUTE_TYPE, _names_to_follow(type_url, version, message))
        return out

    def _follow(self, out: list[bytes], type_url: str, names: tuple[str, ...]) -> None:
        view = self.views[type_url]
        if not (view.subscribed and view.names == names):
            view.subscribe(type_url, names)
            out.append(view.request())

    def sent(self) -> None:
        """The requests `on_response` returned are written: a new version is ACKed now."""
        view = self.fresh
        if view is None:
            return
        self.fresh = None
        view.acked_at = time.monotonic()
        if self.tracker.target.get(view.type_url) == view.version:
            self.pending -= 1
            if not self.pending:
                self.tracker.held(view.acked_at)

    def missing(self) -> tuple[int, float]:
        """How many of the target versions it has not ACKed, and when it ACKed the last of the
        others."""
        versions = self.tracker.target
        views = self.views
        held = [views[t].acked_at for t, v in versions.items() if views[t].version == v]
        held = [at for at in held if at > 0]
        self.pending = len(versions) - len(held)
        return self.pending, max(held, default=0.0)


# -- delta (incremental) xDS ------------------------------------------------------------------

# DeltaDiscoveryResponse: system_version_info 1, resources 2, type_url 4, nonce 5, removed 6.
# DeltaDiscoveryRequest: node 1, type_url 2, subscribe 3, unsubscribe 4, response_nonce 6.
_DELTA_NONCE_TAG = 0x2A
_DELTA_ACK_NONCE_TAG = b"\x32"


class _DeltaBody:
    """What a DeltaDiscoveryResponse says, decoded once per process for every proxy that gets
    the same bytes: its resources' names and versions, the names it removes, and (listeners)
    the route configurations each listener names."""

    __slots__ = ("body", "names", "removed", "routes", "type_url", "versions")

    def __init__(self, response: DeltaDiscoveryResponse) -> None:
        self.type_url = sys.intern(response.type_url)
        self.body = b""  # the message up to its nonce, when that is how it ends
        self.versions: dict[str, str] = {}
        removed = list(response.removed_resources)
        self.routes: dict[str, tuple[str, ...]] = {}
        for item in response.resources:
            if not item.HasField("resource"):  # an unresolved alias (VHDS): not there
                removed.append(item.name)
                continue
            self.versions[item.name] = item.version
            if self.type_url == LISTENER_TYPE:
                self.routes[item.name] = _route_names(item.resource.value)
        self.removed = tuple(removed)
        self.names = frozenset(self.versions)


# The system_version_info field -> bodies seen with it (most recent last).
_delta_bodies: dict[bytes, list[_DeltaBody]] = {}
_DELTA_BODIES_PER_VERSION = 8


def delta_response_fields(message: bytes | bytearray) -> tuple[_DeltaBody, bytes]:
    """A serialized DeltaDiscoveryResponse's contents, and its raw nonce field.

    pilotfish writes the nonce last, after a body that is the same for every stream holding the
    same resources: a body seen before (same system version, compared byte for byte, a memcmp)
    is not decoded again. Anything else is decoded in full (protobuf), and remembered when its
    nonce ends it.
    """
    key = b""
    end = len(message)
    if end > 2 and message[0] == _VERSION_TAG and message[1] < 0x80:
        key = bytes(message[: 2 + message[1]])
        for known in _delta_bodies.get(key, ()):
            size = len(known.body)
            rest = end - size - 2  # the nonce's length, if the nonce follows the body
            if (
                0 <= rest < 0x80
                and message[size] == _DELTA_NONCE_TAG
                and message[size + 1] == rest
                and message.startswith(known.body)
            ):
                return known, bytes(message[size:])
    response = DeltaDiscoveryResponse.FromString(message)
    entry = _DeltaBody(response)
    nonce_field = wire.nonce_field(response.nonce)
    if key and response.nonce and message.endswith(nonce_field):
        entry.body = bytes(message[: end - len(nonce_field)])
        bodies = _delta_bodies.setdefault(key, [])
        bodies.append(entry)
        del bodies[:-_DELTA_BODIES_PER_VERSION]
    return entry, nonce_field


_type_fields: dict[str, bytes] = {}
_delta_requests: dict[tuple[str, frozenset[str], frozenset[str]], bytes] = {}


def _type_field(type_url: str) -> bytes:
    field = _type_fields.get(type_url)
    if field is None:
        field = _type_fields[type_url] = wire.length_delimited(2, type_url.encode())
    return field


def _delta_subscription(
    type_url: str, subscribe: frozenset[str], unsubscribe: frozenset[str]
) -> bytes:
    """A DeltaDiscoveryRequest changing a subscription (names sorted), encoded once per change
    per process. Keyed by the sets: a frozenset keeps its hash, and `frozenset(s)` of one is
    the same object, so a fleet subscribing to one body's clusters costs one lookup each."""
    key = (type_url, subscribe, unsubscribe)
    request = _delta_requests.get(key)
    if request is None:
        request = _type_field(type_url)
        request += b"".join(wire.length_delimited(3, n.encode()) for n in sorted(subscribe))
        request += b"".join(wire.length_delimited(4, n.encode()) for n in sorted(unsubscribe))
        _delta_requests[key] = request
    return request


class _DeltaView:
    """What a delta proxy holds of one type: each resource's version, and its subscription."""

    __slots__ = ("acked_at", "held", "matches", "names", "routes", "started", "type_url")

    def __init__(self, type_url: str) -> None:
        self.type_url = type_url
        self.held: dict[str, str] = {}
        self.names: set[str] = set()  # subscribed by name (CDS and LDS: wildcard instead)
        self.started = False  # asked for yet
        self.routes: dict[str, tuple[str, ...]] = {}  # listeners: the routes each names
        self.matches = False  # `held` is the tracker's target for the type
        self.acked_at = 0.0  # when the last response of the type was ACKed


class _DeltaProxy(_Proxy):
    """Envoy over incremental (delta) ADS, in the same order as `_SotwProxy`: CDS wildcard
    (a first request with no names); on each CDS response subscribe EDS to clusters it added
    (unsubscribe those it removed); after the first EDS response LDS wildcard; on each LDS
    response subscribe RDS to the routes its listeners name. Every response is ACKed with its
    nonce alone.

    It keeps each resource's version as responses give and remove them, and holds the target
    once that map equals the server's for all four types (as sent by the coordinator), so the
    server's system versions are not taken on trust.
    """

    __slots__ = ("fresh", "pending", "reported", "views")
    method = DELTA_METHOD

    def __init__(self, ident: str, tracker: _Tracker) -> None:
        super().__init__(ident, tracker)
        self.views = {t: _DeltaView(t) for t in TYPES}
        self.fresh: _DeltaView | None = None  # the view a response changed, until its ACK is out
        self.pending = 0  # types of the target it does not hold yet
        self.reported = False  # told the tracker it holds the target

    def first_request(self) -> bytes:
        node = Node(id=self.ident, cluster=NODE_CLUSTER).SerializeToString()
        self.views[CLUSTER_TYPE].started = True
        return wire.length_delimited(1, node) + _type_field(CLUSTER_TYPE)

    def on_response(self, message: bytes | bytearray) -> list[bytes]:
        entry, nonce_field = delta_response_fields(message)
        type_url = entry.type_url
        view = self.views[type_url]
        held = view.held
        if entry.versions:
            held.update(entry.versions)
        for name in entry.removed:
            held.pop(name, None)
        self.fresh = view
        out = [_type_field(type_url) + _DELTA_ACK_NONCE_TAG + nonce_field[1:]]  # ACK
        views = self.views
        if type_url == CLUSTER_TYPE:
            endpoints = views[ENDPOINT_TYPE]
            # The first time, every cluster: the body's own set, the same object for every
            # proxy (so its subscription request is found without hashing 1,000 names again).
            added = entry.names - endpoints.names if endpoints.names else entry.names
            gone: AbstractSet[str] = (
                endpoints.names.intersection(entry.removed) if entry.removed else frozenset()
            )
            if added or gone:
                self._subscribe(out, endpoints, added, gone)
            elif not endpoints.started and not held:  # no clusters: nothing to wait for
                self._subscribe(out, views[LISTENER_TYPE], frozenset(), frozenset())
        elif type_url == ENDPOINT_TYPE and not views[LISTENER_TYPE].started:
            self._subscribe(out, views[LISTENER_TYPE], frozenset(), frozenset())
        elif type_url == LISTENER_TYPE:
            routes = view.routes
            changed = False
            for name, names in entry.routes.items():
                if routes.get(name) != names:
                    routes[name] = names
                    changed = True
            for name in entry.removed:
                changed = routes.pop(name, None) is not None or changed
            if changed:
                wanted: set[str] = set().union(*routes.values())
                route_view = views[ROUTE_TYPE]
                more, fewer = wanted - route_view.names, route_view.names - wanted
                if more or fewer:
                    self._subscribe(out, route_view, more, fewer)
        return out

    @staticmethod
    def _subscribe(
        out: list[bytes], view: _DeltaView, added: AbstractSet[str], gone: AbstractSet[str]
    ) -> None:
        """Subscribe `added`, unsubscribe `gone` (a type's first request without names: its
        wildcard)."""
        view.started = True
        view.names |= added
        view.names -= gone
        out.append(_delta_subscription(view.type_url, frozenset(added), frozenset(gone)))

    def sent(self) -> None:
        """The ACK is written: the type is held if its resources are the target's."""
        view = self.fresh
        if view is None:
            return
        self.fresh = None
        view.acked_at = time.monotonic()
        want = self.tracker.resources.get(view.type_url)
        matches = want is not None and view.held == want
        if matches == view.matches:
            return
        view.matches = matches
        self.pending += -1 if matches else 1
        if not self.pending and not self.reported:
            self.reported = True
            self.tracker.held(view.acked_at)

    def missing(self) -> tuple[int, float]:
        pending, last = 0, 0.0
        for type_url, want in self.tracker.resources.items():
            view = self.views[type_url]
            view.matches = view.held == want
            if view.matches:
                last = max(last, view.acked_at)
            else:
                pending += 1
        self.pending = pending
        self.reported = not pending
        return pending, last


class _Tracker:
    """Counts the proxies of this process that hold the target; reports when all do.

    The target is the pushed snapshot: each type's version (what a SotW proxy ACKs) and each
    resource's (what a delta proxy holds). Also counts the bytes and messages the proxies
    received and sent since it was armed.
    """

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.proxies: list[_Proxy] = []
        self.tag = -1
        self.target: dict[str, str] = {}
        self.resources: ResourceVersions = {}
        self.holding = 0
        self.last = 0.0
        self.cpu = 0.0
        self.times: list[float] = []  # when each proxy held the target (for percentiles)
        self.received = self.responses = self.sent_bytes = 0

    def arm(self, tag: int, versions: dict[str, str], resources: ResourceVersions) -> None:
        """Count from now which proxies hold the target (each proxy counts down its
        `pending`)."""
        self.tag, self.target, self.resources = tag, versions, resources
        self.holding, self.last = 0, 0.0
        self.times = []
        self.received = self.responses = self.sent_bytes = 0
        self.cpu = time.process_time()
        for proxy in self.proxies:
            pending, at = proxy.missing()
            if not pending:
                self.held(at)

    def held(self, at: float) -> None:
        """One more proxy holds the target versions, since `at`."""
        self.holding += 1
        self.last = max(self.last, at)
        self.times.append(at)
        if self.holding == len(self.proxies):
            cpu = time.process_time() - self.cpu
            self.conn.send(("done", self.tag, self.last, cpu, self.holding, self.times))


PROXIES: dict[XdsProtocol, Callable[[str, _Tracker], _Proxy]] = {
    "sotw": _SotwProxy,
    "delta": _DeltaProxy,
}


def client_process(
    conn: Connection,
    first: int,
    count: int,
    idle_timeout: float,
    impl: ClientImpl,
    protocol: XdsProtocol,
    cpus: list[int] | None,
) -> None:
    """Entry point of a client process (spawned): `count` proxies, started on "connect"."""
    _child(
        conn,
        lambda: asyncio.run(_clients(conn, first, count, idle_timeout, impl, protocol)),
        cpus,
    )


async def _clients(
    conn: Connection,
    first: int,
    count: int,
    idle_timeout: float,
    impl: ClientImpl,
    protocol: XdsProtocol,
) -> None:
    tracker = _Tracker(conn)
    make = PROXIES[protocol]
    tracker.proxies = [make(f"sidecar-{first + i:05d}", tracker) for i in range(count)]
    # The generator keeps objects per proxy as a server does: collected as in one, so its
    # own collector's pauses are not mistaken for the server's slowness.
    tune_for_serving()
    inbox = _Inbox(conn)
    tasks: list[asyncio.Task[None]] = []
    stopping = False

    def report(text: str) -> None:
        if not stopping:
            conn.send(("error", f"proxy failed: {text}"))

    def failed(task: asyncio.Task[None]) -> None:
        if not task.cancelled() and (error := task.exception()) is not None:
            report("".join(traceback.format_exception(error)))

    conn.send(("ready",))
    try:
        while True:
            command = await inbox.get(idle_timeout)
            kind = command[0]
            if kind == "stop":
                break
            if kind == "arm":
                tracker.arm(command[1], command[2], command[3])
                conn.send(("armed",))
            elif kind == "count":
                counts = (tracker.received, tracker.responses, tracker.sent_bytes)
                conn.send(("counted", *counts))
            elif kind == "connect":
                port = command[1]
                started = time.monotonic()
                gate = asyncio.Semaphore(H2_CONNECTS_IN_FLIGHT)
                block = h2client.request_headers(f"127.0.0.1:{port}", METHODS[protocol])
                for proxy in tracker.proxies:
                    if impl == "h2":
                        coroutine = proxy.run_h2(port, block, gate, report)
                    else:
                        coroutine = proxy.run_grpc(f"127.0.0.1:{port}")
                    task = asyncio.create_task(coroutine)
                    task.add_done_callback(failed)
                    tasks.append(task)
                conn.send(("started", started))
            else:
                raise BenchError(f"client: unknown command {command!r}")
    finally:
        stopping = True
        inbox.close()
        for task in tasks:
            task.remove_done_callback(failed)
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for proxy in tracker.proxies:
            if proxy.stream is not None:
                proxy.stream.close()
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
                "server_sys_share": statistics.median(
                    p["server_cpu_sys_s"] / p["server_cpu_s"] if p["server_cpu_s"] else 0.0
                    for p in pushes
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
        "sys %": f"{result['server_sys_share']:.0%}",
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
        choices=["all", "one"],
        default="all",
        help="what a push changes: every resource of all four types (default), or one "
        "cluster's endpoints",
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
    if any(t == "floor" and (p != "sotw" or w != 1) for _, t, _, w, p in settings):
        print("floor: state of the world with one worker only; its other rows are skipped")
    results = [
        run_one(n, args, transport, impl, workers, protocol)
        for n, transport, impl, workers, protocol in settings
        if transport != "floor" or (protocol == "sotw" and workers == 1)
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


if __name__ == "__main__":
    sys.exit(main())
