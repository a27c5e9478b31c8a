"""Mutual TLS between real Envoy sidecars: auto mTLS upstream, PeerAuthentication on inbound,
and the caller's SPIFFE identity forwarded to the application."""

from __future__ import annotations

import http.client
from collections.abc import Iterator

import pytest

from pilotfish.sources import ConfigObject, load_documents
from pilotfish.testing import HttpUpstream, LocalMesh, MeshProxy
from tests.certs import workload_secrets

SERVICE = """
apiVersion: v1
kind: Service
metadata: {name: server, namespace: default}
spec:
  selector: {app: server}
  ports: [{name: http, port: 9080}]
"""
STRICT = """
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: default}
spec: {mtls: {mode: STRICT}}
"""
DISABLE = STRICT.replace("STRICT", "DISABLE")


def _objects(text: str) -> list[ConfigObject]:
    loaded = load_documents(text, file="test.yaml")
    assert loaded.errors == []
    return loaded.objects


@pytest.fixture(scope="module")
def mesh() -> Iterator[tuple[LocalMesh, MeshProxy, MeshProxy, HttpUpstream]]:
    identity = "spiffe://cluster.local/ns/default/sa/default"
    with (
        HttpUpstream("server-app") as app,
        LocalMesh(_objects(SERVICE), secrets=workload_secrets(identity)) as running,
    ):
        server = running.add_sidecar("server", app_port=app.port, labels={"app": "server"})
        client = running.add_sidecar("client", app_port=1, labels={"app": "client"})
        running.wait_converged()
        yield running, client, server, app


def _through_client(client: MeshProxy) -> http.client.HTTPResponse:
    connection = http.client.HTTPConnection(*client.outbound(9080), timeout=5)
    connection.request("GET", "/hello", headers={"host": "server:9080"})
    response = connection.getresponse()
    response.read()
    connection.close()
    return response


def _plain_to_server(server: MeshProxy) -> int | str:
    connection = http.client.HTTPConnection("127.0.0.1", server.inbound_port, timeout=5)
    try:
        connection.request("GET", "/plain")
        return connection.getresponse().status
    except (ConnectionError, http.client.HTTPException) as error:
        return type(error).__name__
    finally:
        connection.close()


def test_sidecars_talk_mtls_and_the_app_sees_the_callers_identity(
    mesh: tuple[LocalMesh, MeshProxy, MeshProxy, HttpUpstream],
) -> None:
    running, client, server, app = mesh
    running.apply(_objects(SERVICE))  # PERMISSIVE (no policy)
    running.wait_converged()
    assert _through_client(client).status == 200
    forwarded = app.last_headers.get("x-forwarded-client-cert", "")
    assert "URI=spiffe://cluster.local/ns/default/sa/default" in forwarded
    # The client's sidecar originated TLS, the server's terminated it.
    cluster = "outbound|9080||server.default.svc.cluster.local"
    assert client.envoy.stat(f"cluster.{cluster}.ssl.handshake") >= 1
    assert _plain_to_server(server) == 200  # PERMISSIVE: plain text is still accepted


def test_strict_refuses_plain_text(
    mesh: tuple[LocalMesh, MeshProxy, MeshProxy, HttpUpstream],
) -> None:
    running, client, server, app = mesh
    running.apply(_objects(SERVICE + "---\n" + STRICT))
    running.wait_converged()
    assert _through_client(client).status == 200
    assert _plain_to_server(server) != 200
    assert "URI=spiffe://" in app.last_headers.get("x-forwarded-client-cert", "")


def test_disable_serves_plain_text_only(
    mesh: tuple[LocalMesh, MeshProxy, MeshProxy, HttpUpstream],
) -> None:
    running, client, server, app = mesh
    # DISABLE on the server: auto mTLS sees it and the client's sidecar sends plain text.
    running.apply(_objects(SERVICE + "---\n" + DISABLE))
    running.wait_converged()
    assert _plain_to_server(server) == 200
    assert _through_client(client).status == 200
    assert "x-forwarded-client-cert" not in app.last_headers
    # The 200 above already says the client sent plain text (the server takes nothing else);
    # its cluster confirms it.
    translation = client.translation
    assert translation is not None
    name = "outbound|9080||server.default.svc.cluster.local"
    (cluster,) = [c for c in translation.clusters if c.name == name]
    assert not cluster.HasField("transport_socket")
