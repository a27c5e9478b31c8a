"""Proxyless gRPC: a real grpcio client (``xds:///NAME``) resolves, routes and balances through
pilotfish, and follows endpoint changes.

grpcio reads its xDS bootstrap once per process, so each client runs in a subprocess
(`tests/proxyless_client.py`) driven line by line; the bootstrap reaches only that process's
environment. Every client process is killed by PID when its test ends, also on failure.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import pytest

from pilotfish.cache import NodeStatus, Snapshot, SnapshotCache
from pilotfish.protos import (
    CLUSTER_TYPE,
    ENDPOINT_TYPE,
    LISTENER_TYPE,
    ROUTE_TYPE,
    DeltaDiscoveryRequest,
    DiscoveryRequest,
)
from pilotfish.testing import RecordingCallbacks, ServerThread, wait_until
from pilotfish.testing.grpc_xds import GrpcBackend, bootstrap_env, grpc_bootstrap
from pilotfish.translators import build
from pilotfish.translators.proxyless import grpc_resources

CLIENT_SCRIPT = Path(__file__).with_name("proxyless_client.py")
FALLBACK_KEY = "proxyless"
GRPC_TYPES = (LISTENER_TYPE, ROUTE_TYPE, CLUSTER_TYPE, ENDPOINT_TYPE)


def node_key(node_id: str) -> str:
    return node_id or FALLBACK_KEY


@dataclass(frozen=True, slots=True)
class Request:
    type_url: str
    names: tuple[str, ...]
    version: str
    nonce: str
    node_id: str | None  # None: the request carried no node
    error: str


class RequestLog(RecordingCallbacks):
    """RecordingCallbacks that also keep every SotW request, to see what gRPC asked for."""

    def __init__(self) -> None:
        super().__init__()
        self.log: list[Request] = []

    def on_stream_request(
        self, stream_id: int, request: DiscoveryRequest | DeltaDiscoveryRequest
    ) -> None:
        super().on_stream_request(stream_id, request)
        if isinstance(request, DiscoveryRequest):
            entry = Request(
                request.type_url,
                tuple(request.resource_names),
                request.version_info,
                request.response_nonce,
                request.node.id if request.HasField("node") else None,
                request.error_detail.message,
            )
            with self._lock:
                self.log.append(entry)

    def requests_of(self, type_url: str) -> list[Request]:
        with self._lock:
            return [r for r in self.log if r.type_url == type_url]


class ProxylessClient:
    """A grpcio xDS client process; `command` sends one line and returns its one-line answer."""

    def __init__(self, target: str, bootstrap: dict[str, object], stderr_path: Path) -> None:
        self.target = target
        self._stderr_path = stderr_path
        self._stderr = stderr_path.open("w")
        self.process = subprocess.Popen(
            [sys.executable, str(CLIENT_SCRIPT), f"xds:///{target}"],
            env=bootstrap_env(bootstrap, os.environ),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        assert self.process.stdout is not None
        threading.Thread(target=self._pump, args=(self.process.stdout,), daemon=True).start()

    def wait_ready(self) -> None:
        assert self.read(timeout=15) == "ready"

    def _pump(self, stream: IO[str]) -> None:
        for line in stream:
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    def read(self, timeout: float = 15.0) -> str:
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            silent = f"client silent for {timeout}s"
            raise AssertionError(f"{silent}; stderr:\n{self.stderr()}") from None
        if line is None:
            raise AssertionError(f"client exited; stderr:\n{self.stderr()}")
        return line

    def command(self, line: str, timeout: float = 15.0) -> str:
        assert self.process.stdin is not None
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()
        return self.read(timeout)

    def call(self) -> str:
        """One RPC; the backend's name, or ``error CODE details``."""
        return self.command("call")

    def spread(self, calls: int) -> Counter[str]:
        """`calls` RPCs; answers counted by backend name."""
        return Counter(json.loads(self.command(f"spread {calls}")))

    def stderr(self) -> str:
        self._stderr.flush()
        return self._stderr_path.read_text()[-4000:]

    def stop(self) -> None:
        """Ask it to quit; kill it by PID if it does not. Idempotent."""
        try:
            if self.process.poll() is None and self.process.stdin is not None:
                self.process.stdin.write("quit\n")
                self.process.stdin.close()
                self.process.wait(timeout=3)
        except (OSError, subprocess.TimeoutExpired):
            pass
        finally:
            if self.process.poll() is None:
                self.process.kill()
            self.process.wait(timeout=10)
            self._stderr.close()


ClientFactory = Callable[..., ProxylessClient]


@pytest.fixture
def backends() -> Iterator[dict[str, GrpcBackend]]:
    started = {name: GrpcBackend(name).start() for name in ("one", "two")}
    try:
        yield started
    finally:
        for backend in started.values():
            backend.stop()


@pytest.fixture
def cache() -> SnapshotCache:
    """Keyed by node id, an empty id (valid for gRPC) by `FALLBACK_KEY`."""
    return SnapshotCache(node_hash=lambda node: node.id or FALLBACK_KEY)


@pytest.fixture
def callbacks() -> RequestLog:
    return RequestLog()


@pytest.fixture
def server(cache: SnapshotCache, callbacks: RequestLog) -> Iterator[ServerThread]:
    with ServerThread(cache, callbacks=callbacks) as running:
        yield running


@pytest.fixture
def grpc_client(server: ServerThread, tmp_path: Path) -> Iterator[ClientFactory]:
    clients: list[ProxylessClient] = []

    def start(target: str, node_id: str) -> ProxylessClient:
        bootstrap = grpc_bootstrap(server.address, node_id)
        client = ProxylessClient(target, bootstrap, tmp_path / f"client{len(clients)}.log")
        clients.append(client)  # stopped below even if it never gets ready
        client.wait_ready()
        return client

    try:
        yield start
    finally:
        for client in clients:
            client.stop()


def snapshot_for(target: str, *backends: GrpcBackend, inline_routes: bool = False) -> Snapshot:
    return Snapshot(
        grpc_resources(target, [b.address for b in backends], inline_routes=inline_routes)
    )


def all_acked(
    cache: SnapshotCache, key: str, snapshot: Snapshot, types: tuple[str, ...] = GRPC_TYPES
) -> NodeStatus | None:
    status = cache.status(key)
    if status is None:
        return None
    for type_url in types:
        type_status = status.types.get(type_url)
        if type_status is None or type_status.acked_version != snapshot.version(type_url):
            return None
    return status


@pytest.mark.parametrize(
    ("target", "node_id"),
    [("greeter", "grpc-client-a"), ("greeter.default.svc.cluster.local:50051", "")],
    ids=["plain-name", "name-with-port-empty-node"],
)
def test_grpc_client_resolves_routes_and_balances(
    target: str,
    node_id: str,
    cache: SnapshotCache,
    callbacks: RequestLog,
    backends: dict[str, GrpcBackend],
    grpc_client: ClientFactory,
) -> None:
    one, two = backends["one"], backends["two"]
    key = node_key(node_id)
    first = snapshot_for(target, one)
    assert first.consistent().ok
    cache.set_snapshot(key, first)
    client = grpc_client(target, node_id)
    assert "GRPC_XDS_BOOTSTRAP" not in os.environ
    assert "GRPC_XDS_BOOTSTRAP_CONFIG" not in os.environ

    assert client.call() == "one"

    # Every type ACKed at the snapshot's version, over one ADS stream, no NACK.
    status = wait_until(lambda: all_acked(cache, key, first), timeout=5, message="ACKs")
    assert len(status.streams) == 1
    assert status.node.id == node_id
    assert "gRPC" in status.node.user_agent_name
    assert all(status.types[t].nacks == 0 for t in GRPC_TYPES)

    # What gRPC asked for: each type by exact name; the Listener is the target, verbatim.
    for type_url in GRPC_TYPES:
        asked = {r.names for r in callbacks.requests_of(type_url)}
        assert asked == {(target,)}, (type_url, asked)
    first_request = callbacks.log[0]
    assert first_request.type_url == LISTENER_TYPE
    assert first_request.node_id == node_id

    # Endpoints move to "two": the client follows.
    cache.set_snapshot(key, snapshot_for(target, two))
    wait_until(lambda: client.call() == "two", timeout=10, message="calls to move to two")
    calls_to_one = one.calls
    assert client.spread(10) == Counter(two=10)
    assert one.calls == calls_to_one

    # Both endpoints: round robin over both.
    both = snapshot_for(target, one, two)
    cache.set_snapshot(key, both)
    wait_until(lambda: len(client.spread(4)) == 2, timeout=10, message="calls to reach both")
    assert client.spread(20) == Counter(one=10, two=10)

    assert all_acked(cache, key, both) is not None
    assert callbacks.nacks == []
    # The route, cluster and listener never changed: sent once each; EDS once per snapshot.
    sent = callbacks.sent_count_by_type()
    assert [sent[t] for t in GRPC_TYPES] == [1, 1, 1, 3]


def test_inline_route_config_needs_no_rds(
    cache: SnapshotCache,
    callbacks: RequestLog,
    backends: dict[str, GrpcBackend],
    grpc_client: ClientFactory,
) -> None:
    snapshot = snapshot_for("inline", backends["two"], inline_routes=True)
    cache.set_snapshot("inline-node", snapshot)
    client = grpc_client("inline", "inline-node")

    assert client.call() == "two"
    types = (LISTENER_TYPE, CLUSTER_TYPE, ENDPOINT_TYPE)
    wait_until(lambda: all_acked(cache, "inline-node", snapshot, types), timeout=5)
    assert callbacks.requests_of(ROUTE_TYPE) == []


def test_locality_less_endpoints_are_nacked_once_then_fixed(
    cache: SnapshotCache,
    callbacks: RequestLog,
    backends: dict[str, GrpcBackend],
    grpc_client: ClientFactory,
) -> None:
    """gRPC rejects a ClusterLoadAssignment whose locality group has no `locality` field;
    pilotfish records the NACK, does not resend, and a good version heals the client."""
    one = backends["one"]
    resources = grpc_resources("greeter", [one.address])
    locality_less = build.load_assignment("greeter", [one.address])
    locality_less.endpoints[0].ClearField("locality")
    resources["eds"] = [locality_less]
    bad = Snapshot(resources)
    cache.set_snapshot("n", bad)
    client = grpc_client("greeter", "n")
    assert client.command("connect") == "connecting"  # a channel stays idle until asked

    def eds_nacked() -> bool:
        status = cache.status("n")
        return (
            status is not None
            and ENDPOINT_TYPE in status.types
            and bool(status.types[ENDPOINT_TYPE].nacks)
        )

    wait_until(eds_nacked, timeout=10, message="EDS NACK")
    [(node_id, nack)] = callbacks.nacks
    assert node_id == "n"
    assert nack.version == bad.version(ENDPOINT_TYPE)
    assert "locality" in nack.error_detail.message
    time.sleep(0.2)  # a resend loop would show up here
    assert len(callbacks.sent(ENDPOINT_TYPE)) == 1

    good = snapshot_for("greeter", one)
    cache.set_snapshot("n", good)
    assert client.call() == "one"
    wait_until(lambda: all_acked(cache, "n", good), timeout=5)
