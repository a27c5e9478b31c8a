"""AuthorizationPolicy enforced by a real Envoy sidecar, on identities from pilotfish's CA:
callers are told apart by their SPIFFE certificates (mutual TLS), DENY beats ALLOW, and path
and method rules hold."""

from __future__ import annotations

import http.client
from collections.abc import Iterator

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
metadata: {{name: api, namespace: default}}
spec:
  selector: {{app: api}}
  ports: [{{name: http, port: 9080}}]
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: api-1, namespace: default}}
spec:
  address: 127.0.0.1
  labels: {{app: api, security.istio.io/tlsMode: istio}}
  ports: {{http: {inbound}}}
  serviceAccount: api
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{name: default, namespace: default}}
spec: {{mtls: {{mode: STRICT}}}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: readers, namespace: default}}
spec:
  selector: {{matchLabels: {{app: api}}}}
  action: ALLOW
  rules:
  - from: [{{source: {{principals: [cluster.local/ns/default/sa/reader]}}}}]
    to: [{{operation: {{methods: [GET], paths: ["/api/*"]}}}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: no-admin, namespace: default}}
spec:
  selector: {{matchLabels: {{app: api}}}}
  action: DENY
  rules:
  - to: [{{operation: {{paths: ["/api/admin"]}}}}]
"""


@pytest.fixture(scope="module")
def mesh(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[dict[str, int], CertificateAuthority, Controller]]:
    inbound = free_port()
    store = ConfigStore()
    assert store.update("mesh.yaml", CONFIG.format(inbound=inbound)) == []
    ca = CertificateAuthority.load_or_create(tmp_path_factory.mktemp("ca"))
    cache = SnapshotCache()
    controller = Controller(cache, store, workload_secrets=WorkloadSecrets(ca), rotation_check=0.2)
    with HttpUpstream("api") as app, ServerThread(cache, callbacks=controller) as xds:
        controller.start()
        try:
            envoys = {}
            api = envoy_bootstrap(
                node_id="api-1", cluster="api", xds_address=xds.address,
                node_metadata={"NAMESPACE": "default", "LABELS": {"app": "api"},
                               "SERVICE_ACCOUNT": "api", "WORKLOAD": "api-1",
                               "APP_PORTS": {"9080": app.port}},
            )  # fmt: skip
            envoys["api"] = EnvoyProcess(api, name="api").start()
            ports = {}
            for account in ("reader", "intruder"):
                ports[account] = free_port()
                bootstrap = envoy_bootstrap(
                    node_id=f"{account}-1", cluster=account, xds_address=xds.address,
                    node_metadata={"NAMESPACE": "default", "LABELS": {"app": account},
                                   "SERVICE_ACCOUNT": account,
                                   "PORT_MAP": {"9080": ports[account]}},
                )  # fmt: skip
                envoys[account] = EnvoyProcess(bootstrap, name=account).start()
            for envoy in envoys.values():
                envoy.wait_ready()
            wait_until(lambda: _get(ports["reader"], "GET", "/api/items") == 200, timeout=10)
            yield ports, ca, controller
        finally:
            for envoy in envoys.values():
                envoy.stop()
            controller.stop()


def _get(port: int, method: str, path: str) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request(method, path, headers={"host": "api:9080"})
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


@pytest.mark.parametrize(
    ("caller", "method", "path", "status"),
    [
        ("reader", "GET", "/api/items", 200),  # allowed identity, method and path
        ("intruder", "GET", "/api/items", 403),  # another identity
        ("reader", "POST", "/api/items", 403),  # method rule
        ("reader", "GET", "/other", 403),  # path rule
        ("reader", "GET", "/api/admin", 403),  # DENY beats ALLOW
    ],
)
def test_authorization(
    mesh: tuple[dict[str, int], CertificateAuthority, Controller],
    caller: str,
    method: str,
    path: str,
    status: int,
) -> None:
    assert _get(mesh[0][caller], method, path) == status


def test_a_revoked_identity_loses_its_certificate_and_its_access(
    mesh: tuple[dict[str, int], CertificateAuthority, Controller],
) -> None:
    # Last in the module: it changes the mesh. Revoke the allowed identity.
    ports, ca, controller = mesh
    ca.revoke("default", "reader")
    # The rotation check sees the new CRL: the reader is served no certificate any more (its
    # sidecar falls back to plain text, which STRICT refuses); everyone's ROOTCA carries the CRL.
    wait_until(lambda: _get(ports["reader"], "GET", "/api/items") != 200, timeout=10)
    assert _get(ports["reader"], "GET", "/api/items") in (403, 503)
    translation = controller.translation("api-1")
    assert translation is not None
    (root,) = [s for s in translation.secrets if s.name == "ROOTCA"]
    assert b"BEGIN X509 CRL" in root.validation_context.crl.inline_bytes
    reader = controller.translation("reader-1")
    assert reader is not None and [s.name for s in reader.secrets] == []
