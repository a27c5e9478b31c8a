"""Workload certificates from pilotfish's CA, rotated under traffic: real Envoy sidecars speak
mutual TLS with their own SPIFFE identities, certificates change every couple of seconds, every
request succeeds, and no listener or cluster is updated for it (only SDS)."""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from pilotfish.bootstrap import envoy_bootstrap
from pilotfish.cache import SnapshotCache
from pilotfish.controller import Controller
from pilotfish.security import CertificateAuthority, WorkloadSecrets
from pilotfish.sources import ConfigStore
from pilotfish.testing import EnvoyProcess, HttpUpstream, ServerThread, free_port, wait_until

CONFIG = """
apiVersion: v1
kind: Service
metadata: {{name: server, namespace: default}}
spec:
  selector: {{app: server}}
  ports: [{{name: http, port: 9080}}]
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: server-1, namespace: default}}
spec:
  address: 127.0.0.1
  labels: {{app: server, security.istio.io/tlsMode: istio}}
  ports: {{http: {inbound}}}
  serviceAccount: server
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{name: default, namespace: default}}
spec: {{mtls: {{mode: STRICT}}}}
"""


@pytest.fixture
def ca(tmp_path: Path) -> CertificateAuthority:
    return CertificateAuthority.load_or_create(tmp_path / "ca")


@pytest.fixture
def ttl() -> timedelta:
    return timedelta(seconds=3)  # renewed every ~1.5 s


@pytest.fixture
def mesh(
    ca: CertificateAuthority, ttl: timedelta
) -> Iterator[tuple[EnvoyProcess, EnvoyProcess, HttpUpstream, int]]:
    inbound, outbound = free_port(), free_port()
    store = ConfigStore()
    assert store.update("mesh.yaml", CONFIG.format(inbound=inbound)) == []
    secrets = WorkloadSecrets(ca, ttl=ttl)
    cache = SnapshotCache()
    controller = Controller(cache, store, workload_secrets=secrets, rotation_check=0.2)
    with HttpUpstream("server-app") as app, ServerThread(cache, callbacks=controller) as xds:
        controller.start()
        try:
            server = envoy_bootstrap(
                node_id="server-1", cluster="server", xds_address=xds.address,
                node_metadata={"NAMESPACE": "default", "LABELS": {"app": "server"},
                               "SERVICE_ACCOUNT": "server", "WORKLOAD": "server-1",
                               "APP_PORTS": {"9080": app.port}},
            )  # fmt: skip
            client = envoy_bootstrap(
                node_id="client-1", cluster="client", xds_address=xds.address,
                node_metadata={"NAMESPACE": "default", "LABELS": {"app": "client"},
                               "SERVICE_ACCOUNT": "client", "PORT_MAP": {"9080": outbound}},
            )  # fmt: skip
            with EnvoyProcess(server, name="server") as s, EnvoyProcess(client, name="client") as c:
                s.wait_ready()
                c.wait_ready()
                yield c, s, app, outbound
        finally:
            controller.stop()


def _get(port: int) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request("GET", "/", headers={"host": "server:9080"})
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


def _serials(envoy: EnvoyProcess) -> set[str]:
    certs = json.loads(envoy.admin_get("/certs"))["certificates"]
    return {c["serial_number"] for entry in certs for c in entry.get("cert_chain", [])}


def test_certificates_rotate_under_traffic_without_listener_or_cluster_updates(
    mesh: tuple[EnvoyProcess, EnvoyProcess, HttpUpstream, int],
) -> None:
    client, server, app, port = mesh
    wait_until(lambda: _get(port) == 200, timeout=10)
    forwarded = app.last_headers.get("x-forwarded-client-cert", "")
    assert "URI=spiffe://cluster.local/ns/default/sa/client" in forwarded
    listeners = {e.name: e.stat("listener_manager.lds.update_success") for e in (client, server)}
    clusters = {e.name: e.stat("cluster_manager.cds.update_success") for e in (client, server)}
    seen: set[str] = set()
    statuses = []
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        statuses.append(_get(port))
        seen |= _serials(client)
        time.sleep(0.05)
    assert set(statuses) == {200}, statuses
    assert len(seen) >= 3  # the client's certificate changed at least twice
    for envoy in (client, server):
        assert envoy.stat("listener_manager.lds.update_success") == listeners[envoy.name]
        assert envoy.stat("cluster_manager.cds.update_success") == clusters[envoy.name]
    # Mutual TLS all along (one pooled connection may carry every request).
    assert client.stat("cluster.outbound|9080||server.default.svc.cluster.local.ssl.handshake") >= 1


@pytest.mark.parametrize("ttl", [timedelta(hours=1)])
def test_root_rotation_with_overlap_keeps_traffic_flowing(
    mesh: tuple[EnvoyProcess, EnvoyProcess, HttpUpstream, int], ca: CertificateAuthority
) -> None:
    client, _server, _app, port = mesh
    wait_until(lambda: _get(port) == 200, timeout=10)
    before = _serials(client)
    old_root = ca.fingerprint
    statuses = []
    deadline = time.monotonic() + 4
    rotated = False
    while time.monotonic() < deadline:
        statuses.append(_get(port))
        if not rotated and time.monotonic() > deadline - 3:
            ca.rotate_root(overlap=timedelta(minutes=5))  # both roots trusted meanwhile
            rotated = True
        time.sleep(0.05)
    assert ca.fingerprint != old_root
    assert set(statuses) == {200}, statuses
    # Everyone was re-issued from the new root (the rotation check runs every 0.2 s).
    wait_until(lambda: _serials(client) - before, timeout=5)
    # New connections with the new certificates work too: the server trusts both roots.
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    connection.request("GET", "/", headers={"host": "server:9080", "connection": "close"})
    assert connection.getresponse().status == 200
    connection.close()
