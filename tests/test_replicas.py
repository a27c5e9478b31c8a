"""Scale-out, as an operator runs it: one real etcd, three `pilotfish serve --store` replicas and
six real Envoys spread over them, config written with `pilotfish apply`.

In order (the module's tests share the running system): the replicas serve identical versions;
an apply moves traffic through all six Envoys within a second; an invalid apply writes nothing;
a killed replica's Envoys move to another replica and get nothing pushed again; an etcd outage
keeps everything serving, reports the store down, and on recovery a change and a compaction
made meanwhile are picked up (by a full resync) with nothing lost.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from pilotfish.bootstrap import envoy_bootstrap
from pilotfish.cache import Snapshot, SnapshotCache
from pilotfish.controller import Controller
from pilotfish.etcd import EtcdStore, EtcdWatcher
from pilotfish.protos import DiscoveryRequest, Node
from pilotfish.sources import ConfigStore, load_path
from pilotfish.testing import EnvoyProcess, EtcdServer, HttpUpstream, free_port, wait_until
from pilotfish.testing.bluegreen import blue_green_service, route_to

ROOT = Path(__file__).resolve().parent.parent
REPLICAS = 3
ENVOYS = 6

EXTRA = """apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: extra, namespace: default}
spec:
  hosts: [extra.example]
  location: MESH_EXTERNAL
  resolution: DNS
  ports: [{number: 443, name: tls, protocol: TLS}]
"""


@dataclass
class Replica:
    process: subprocess.Popen[str]
    xds_port: int
    admin_port: int
    log: list[str] = field(default_factory=list)

    def get(self, path: str) -> tuple[int, str]:
        url = f"http://127.0.0.1:{self.admin_port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()

    def json(self, path: str) -> object:
        status, body = self.get(path)
        assert status == 200, body
        return json.loads(body)

    def proxies(self) -> set[str]:
        syncz = self.json("/debug/syncz")
        assert isinstance(syncz, list)
        return {p["proxy"] for p in syncz}

    def metric(self, name: str) -> float:
        for family in text_string_to_metric_families(self.get("/metrics")[1]):
            for sample in family.samples:
                if sample.name == name:
                    return float(sample.value)
        raise AssertionError(f"no metric {name}")


@dataclass
class Mesh:
    etcd: EtcdServer
    url: str
    workdir: Path
    replicas: list[Replica]
    envoys: list[EnvoyProcess]
    listener_ports: list[int]

    def colour(self, n: int) -> str:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.listener_ports[n]}/", headers={"host": "web.example"}
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            return str(response.headers["x-upstream"])

    def colours(self) -> list[str]:
        return [self.colour(n) for n in range(ENVOYS)]

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "pilotfish", *args, "--store", self.url],
            cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip

    def apply_route(self, colour: str) -> subprocess.CompletedProcess[str]:
        path = self.workdir / "route.yaml"
        path.write_text(route_to(colour, "default"))
        return self.cli("apply", str(path))


def _start_replica(url: str) -> Replica:
    process = subprocess.Popen(
        [sys.executable, "-m", "pilotfish", "serve", "--store", url,
         "--xds-address", "127.0.0.1:0", "--admin-address", "127.0.0.1:0",
         "--debounce", "0.02", "--grace", "1"],
        cwd=ROOT, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    replica = Replica(process, 0, 0)
    assert process.stderr is not None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        if not line:
            break
        replica.log.append(line)
        if found := re.search(r"serving xDS on [\d.]+:(\d+), admin on http://[\d.]+:(\d+)", line):
            replica.xds_port, replica.admin_port = int(found.group(1)), int(found.group(2))
            return replica
    process.kill()
    raise AssertionError("replica did not start:\n" + "".join(replica.log))


def _stop(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    workdir = tmp_path_factory.mktemp("replicas")
    with (
        EtcdServer(name="replicas") as etcd,
        HttpUpstream("blue") as blue,
        HttpUpstream("green") as green,
    ):
        url = etcd.url("mesh")
        (workdir / "web.yaml").write_text(blue_green_service(blue.port, green.port, "default"))
        (workdir / "route.yaml").write_text(route_to("blue", "default"))
        state = Mesh(etcd, url, workdir, [], [], [])
        applied = state.cli("apply", str(workdir / "web.yaml"), str(workdir / "route.yaml"))
        assert applied.returncode == 0, applied.stderr
        try:
            state.replicas = [_start_replica(url) for _ in range(REPLICAS)]
            addresses = [("127.0.0.1", r.xds_port) for r in state.replicas]
            for n in range(ENVOYS):
                port = free_port()
                # Envoy n prefers replica n % 3, then the next ones: two Envoys per replica.
                first = n % REPLICAS
                bootstrap = envoy_bootstrap(
                    node_id=f"client-{n}",
                    cluster="client",
                    xds_address=addresses[first:] + addresses[:first],
                    xds_health_check_interval_s=0.2,
                    node_metadata={"NAMESPACE": "default", "PORT_MAP": {"80": port}},
                )
                envoy = EnvoyProcess(bootstrap, name=f"client-{n}").start()
                state.envoys.append(envoy)
                state.listener_ports.append(port)
            for envoy in state.envoys:
                envoy.wait_ready()
            wait_until(lambda: state.colours() == ["blue"] * ENVOYS, timeout=15)
            yield state
        finally:
            for envoy in state.envoys:
                envoy.stop()
            for replica in state.replicas:
                _stop(replica.process)


def _stat(envoy: EnvoyProcess, name: str) -> int:
    with urllib.request.urlopen(f"{envoy.admin_url}/stats?filter=^{re.escape(name)}$") as r:
        for line in r.read().decode().splitlines():
            key, _, value = line.partition(": ")
            if key == name:
                return int(value)
    raise AssertionError(f"{envoy.name}: no stat {name}")


def _connected(envoy: EnvoyProcess) -> bool:
    return _stat(envoy, "control_plane.connected_state") == 1


def _versions(envoy: EnvoyProcess) -> dict[str, str]:
    """The version of each dynamic type Envoy holds (from its config dump)."""
    with urllib.request.urlopen(f"{envoy.admin_url}/config_dump", timeout=5) as response:
        dump = json.loads(response.read())
    versions = {}
    for config in dump["configs"]:
        kind = config["@type"].rsplit(".", 1)[-1]
        if kind == "ClustersConfigDump":
            versions["cds"] = config["version_info"]
        elif kind == "ListenersConfigDump":
            versions["lds"] = config["version_info"]
        elif kind == "RoutesConfigDump":
            versions["rds"] = ",".join(
                sorted(r["version_info"] for r in config.get("dynamic_route_configs", []))
            )
    return versions


_UPDATES = (
    "cluster_manager.cds.update_success",
    "listener_manager.lds.update_success",
    "cluster.outbound|80|blue|web.example.update_success",
)


def test_replicas_share_the_envoys_and_serve_identical_versions(mesh: Mesh) -> None:
    wait_until(lambda: all(len(r.proxies()) == 2 for r in mesh.replicas), timeout=10)
    for n, replica in enumerate(mesh.replicas):
        assert replica.proxies() == {f"client-{n}", f"client-{n + REPLICAS}"}
    # The Envoys differ only in their listener port (PORT_MAP), so the three replicas must have
    # translated the same clusters and routes into the same versions. (That an Envoy moving
    # between replicas gets no push at all is the killed-replica test's business.)
    versions = [_versions(envoy) for envoy in mesh.envoys]
    for kind in ("cds", "rds"):
        assert len({v[kind] for v in versions}) == 1, versions
    assert versions[0]["cds"].startswith("istio-1/")


def test_an_apply_moves_traffic_through_all_six_envoys_within_a_second(mesh: Mesh) -> None:
    started = time.monotonic()
    applied = mesh.apply_route("green")
    written = time.monotonic()
    assert applied.returncode == 0, applied.stderr
    assert "VirtualService default/web applied" in applied.stdout
    wait_until(lambda: mesh.colours() == ["green"] * ENVOYS, timeout=10, interval=0.01)
    moved = time.monotonic()
    # From the moment the transaction is committed (the CLI's exit) to traffic on all six.
    assert moved - written < 1.0, f"{moved - written:.3f}s after the write"
    print(f"apply -> traffic on {ENVOYS} Envoys: {moved - written:.3f}s after the write, "
          f"{moved - started:.3f}s including the CLI's start")  # fmt: skip


def test_an_invalid_apply_writes_nothing(mesh: Mesh) -> None:
    async def snapshot() -> tuple[list[str], int]:
        async with EtcdStore(mesh.url) as store:
            values, revision = await store.list_all()
            return sorted(kv.key for kv in values), revision

    keys, revision = asyncio.run(snapshot())
    bad = mesh.workdir / "bad.yaml"
    bad.write_text(
        EXTRA
        + "---\n"
        + route_to("blue", "default").replace("subset: blue", "subset: blue, port: {number: 0}")
    )
    refused = mesh.cli("apply", str(bad))
    assert refused.returncode == 1
    assert f"{bad}[1] VirtualService default/web: spec.http[0].route[0].destination.port" in (
        refused.stdout
    ), refused.stdout
    assert "nothing applied" in refused.stderr
    # Not even the valid ServiceEntry of the same apply reached the store.
    assert asyncio.run(snapshot()) == (keys, revision)
    assert mesh.colours() == ["green"] * ENVOYS
    listed = mesh.cli("get", "serviceentries")
    assert listed.returncode == 0
    assert "extra" not in listed.stdout and "web" in listed.stdout


def test_a_killed_replicas_envoys_move_without_a_push(mesh: Mesh) -> None:
    moved = [mesh.envoys[0], mesh.envoys[REPLICAS]]  # the two Envoys of replica 0
    before = {e.name: (_versions(e), [_stat(e, s) for s in _UPDATES]) for e in moved}
    mesh.replicas[0].process.kill()
    mesh.replicas[0].process.wait()
    survivors = mesh.replicas[1:]

    def served() -> set[str]:
        return set().union(*(r.proxies() for r in survivors))

    wait_until(lambda: {"client-0", f"client-{REPLICAS}"} <= served(), timeout=15)
    for envoy in moved:
        wait_until(partial(_connected, envoy), timeout=10)
    assert mesh.colours() == ["green"] * ENVOYS
    after = {e.name: (_versions(e), [_stat(e, s) for s in _UPDATES]) for e in moved}
    assert after == before  # same versions; Envoy applied no new CDS, LDS or EDS response
    for replica in survivors:
        for proxy in replica.json("/debug/syncz"):  # type: ignore[attr-defined]
            if proxy["proxy"] in ("client-0", f"client-{REPLICAS}"):
                # The new replica answered nothing: Envoy already held every current version.
                assert all(t["responses"] == 0 for t in proxy["types"].values()), proxy
                assert proxy["synced"], proxy


def test_an_etcd_outage_keeps_serving_and_a_compaction_meanwhile_resyncs(mesh: Mesh) -> None:
    replicas = [r for r in mesh.replicas if r.process.poll() is None]
    mesh.etcd.stop()
    wait_until(lambda: all(r.metric("pilotfish_config_store_up") == 0 for r in replicas), 10)
    for replica in replicas:
        status, body = replica.get("/readyz")
        assert status == 200, body  # still serving: the last good config
        assert body.startswith("ready\n") and "DOWN since" in body, body
        store = replica.json("/debug/store")
        assert isinstance(store, dict) and store["connected"] is False
    assert mesh.colours() == ["green"] * ENVOYS

    # Meanwhile (etcd reachable only on a port the replicas do not know): the route goes back to
    # blue, a service is added, and the history of those changes is compacted away.
    mesh.etcd.start(hidden=True)

    async def change_and_compact() -> int:
        async with EtcdStore(mesh.etcd.url("mesh")) as store:
            objects = load_path(mesh.workdir / "web.yaml").objects
            (mesh.workdir / "extra.yaml").write_text(EXTRA)
            (mesh.workdir / "route.yaml").write_text(route_to("blue", "default"))
            more = load_path(mesh.workdir / "extra.yaml").objects
            route = load_path(mesh.workdir / "route.yaml").objects
            await store.apply(more)
            revision = await store.apply([*objects, *route])
            # The replicas resume from before the first of these two writes: compacted.
            await store.compact(revision)
            return revision

    revision = asyncio.run(change_and_compact())
    mesh.etcd.stop()
    mesh.etcd.start()

    def resynced(replica: Replica) -> bool:
        store = replica.json("/debug/store")
        assert isinstance(store, dict)
        return bool(store["connected"]) and store["revision"] >= revision

    wait_until(lambda: all(resynced(r) for r in replicas), timeout=15)
    for replica in replicas:
        assert replica.metric("pilotfish_config_store_up") == 1
        assert replica.metric("pilotfish_config_store_resyncs") == 1
        assert "connected, at revision" in replica.get("/readyz")[1]
        served = replica.json("/debug/config")
        assert isinstance(served, dict)
        names = sorted((o["kind"], o["name"]) for o in served["objects"])
        assert names == [("DestinationRule", "web"), ("ServiceEntry", "extra"),
                         ("ServiceEntry", "web"), ("VirtualService", "web")]  # fmt: skip
    wait_until(lambda: mesh.colours() == ["blue"] * ENVOYS, timeout=10)


def _wire(snapshot: Snapshot, type_url: str) -> dict[str, bytes]:
    """A type's version and every resource's bytes."""
    out = {n: r.data for n, r in snapshot.resources(type_url).items()}
    return {"version": snapshot.version(type_url).encode(), **out}


def test_two_replicas_of_one_store_build_identical_snapshots(
    etcd_server: EtcdServer, tmp_path: Path
) -> None:
    (tmp_path / "web.yaml").write_text(blue_green_service(8001, 8002, "default"))
    (tmp_path / "route.yaml").write_text(route_to("green", "default"))
    url = etcd_server.url("twins")

    async def build() -> list[dict[str, dict[str, bytes]]]:
        async with EtcdStore(url) as store:
            await store.apply(
                [*load_path(tmp_path / "web.yaml").objects,
                 *load_path(tmp_path / "route.yaml").objects]
            )  # fmt: skip
        out = []
        for _ in range(2):
            config = ConfigStore()
            async with EtcdWatcher(url, config) as watcher:
                await watcher.synced(10)
            cache = SnapshotCache()
            controller = Controller(cache, config)
            controller.flush()
            node = Node(id="client-0")
            node.metadata.update({"NAMESPACE": "default", "PORT_MAP": {"80": 15001}})
            controller.on_stream_request(1, DiscoveryRequest(node=node))
            snapshot = cache.get_snapshot("client-0")
            out.append({t: _wire(snapshot, t) for t in ("cds", "eds", "lds", "rds")})
        return out

    first, second = asyncio.run(build())
    assert first == second
    assert len(first["cds"]) == 4  # version + the service's three clusters
