"""A gateway terminating TLS with a certificate served over SDS (credentialName), redirecting
plain HTTP to HTTPS, passing TLS through by SNI and proxying TCP: real Envoy, real handshakes."""

from __future__ import annotations

import http.client
import socket
import ssl
from collections.abc import Iterator
from typing import Any

import pytest

from pilotfish.sources import load_documents
from pilotfish.testing import HttpUpstream, LocalMesh, MeshProxy
from tests.certs import server_secret

CONFIG = """
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: web, namespace: shop}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 8080, name: http, protocol: HTTP}
    hosts: [shop.example.com]
    tls: {httpsRedirect: true}
  - port: {number: 8443, name: https, protocol: HTTPS}
    hosts: [shop.example.com]
    tls: {mode: SIMPLE, credentialName: shop-cert}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: shop, namespace: shop}
spec:
  hosts: [shop.example.com]
  gateways: [web]
  http:
  - directResponse: {status: 200, body: {string: "welcome to the shop"}}
"""

# Servers that need the ports chosen at run time: TLS passed through (by SNI) to the gateway's
# own HTTPS server, and TCP to a plain upstream.
L4 = """
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: l4, namespace: shop}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: 8444, name: tls, protocol: TLS}}
    hosts: [shop.example.com]
    tls: {{mode: PASSTHROUGH}}
  - port: {{number: 9000, name: tcp, protocol: TCP}}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: backends, namespace: shop}}
spec:
  hosts: [tls.backend.internal]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 443, name: tls, protocol: TLS}}]
  endpoints: [{{address: 127.0.0.1, ports: {{tls: {https_port}}}}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: plain, namespace: shop}}
spec:
  hosts: [tcp.backend.internal]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 7000, name: tcp, protocol: TCP}}]
  endpoints: [{{address: 127.0.0.1, ports: {{tcp: {tcp_port}}}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: l4, namespace: shop}}
spec:
  hosts: [shop.example.com, tcp.example.com]
  gateways: [l4]
  tls:
  - match: [{{sniHosts: [shop.example.com], port: 8444}}]
    route: [{{destination: {{host: tls.backend.internal, port: {{number: 443}}}}}}]
  tcp:
  - match: [{{port: 9000}}]
    route: [{{destination: {{host: tcp.backend.internal, port: {{number: 7000}}}}}}]
"""


@pytest.fixture(scope="module")
def upstream() -> Iterator[HttpUpstream]:
    with HttpUpstream("tcp-backend") as running:
        yield running


@pytest.fixture(scope="module")
def gateway(upstream: HttpUpstream) -> Iterator[tuple[MeshProxy, bytes]]:
    secret, ca = server_secret("shop-cert", "shop.example.com")
    loaded = load_documents(CONFIG, file="shop.yaml")
    assert loaded.errors == []
    with LocalMesh(objects=loaded.objects, secrets=[secret]) as mesh:
        member = mesh.add_gateway("ingress", ports=[8080, 8443, 8444, 9000])
        l4 = L4.format(https_port=member.outbound(8443)[1], tcp_port=upstream.port)
        more = load_documents(l4, file="l4.yaml")
        assert more.errors == []
        mesh.apply([*loaded.objects, *more.objects])
        mesh.wait_converged()
        yield member, ca


def _https_get(host: str, port: int, ca: bytes) -> tuple[int, bytes, list[tuple[str, str]]]:
    context = ssl.create_default_context(cadata=ca.decode())
    connection = http.client.HTTPSConnection(host, port, context=context, timeout=5)
    # The certificate is for shop.example.com: connect by IP, but send that name as SNI.
    connection.sock = context.wrap_socket(
        socket.create_connection((host, port), timeout=5), server_hostname="shop.example.com"
    )
    connection.request("GET", "/", headers={"host": "shop.example.com"})
    response = connection.getresponse()
    peer = connection.sock.getpeercert() or {}
    alt_names: Any = peer.get("subjectAltName", ())
    names = [(str(k), str(v)) for k, v in alt_names]
    result = response.status, response.read(), names
    connection.close()
    return result


def test_tls_passthrough_by_sni(gateway: tuple[MeshProxy, bytes]) -> None:
    member, ca = gateway
    # 8444 does not terminate: the handshake is with the HTTPS server it passes through to.
    status, body, names = _https_get(*member.outbound(8444), ca)
    assert (status, body) == (200, b"welcome to the shop")
    assert ("DNS", "shop.example.com") in names
    assert member.envoy.stat("cluster.outbound|443||tls.backend.internal.upstream_cx_total") >= 1


def test_tcp_route(gateway: tuple[MeshProxy, bytes], upstream: HttpUpstream) -> None:
    member, _ = gateway
    connection = http.client.HTTPConnection(*member.outbound(9000), timeout=5)
    connection.request("GET", "/through-tcp")
    response = connection.getresponse()
    assert (response.status, response.read()) == (200, b"tcp-backend")
    connection.close()
    # Bytes through tcp_proxy, not HTTP through a connection manager (which adds these).
    assert "x-request-id" not in upstream.last_headers
    assert "x-forwarded-proto" not in upstream.last_headers
    assert member.envoy.stat("tcp.tcp.9000.downstream_cx_total") >= 1


def test_https_with_a_certificate_from_sds(gateway: tuple[MeshProxy, bytes]) -> None:
    member, ca = gateway
    host, port = member.outbound(8443)
    context = ssl.create_default_context(cadata=ca.decode())
    connection = http.client.HTTPSConnection(host, port, context=context, timeout=5)
    # The certificate is for shop.example.com: connect by IP, but send that name as SNI.
    connection.sock = context.wrap_socket(
        socket.create_connection((host, port), timeout=5),
        server_hostname="shop.example.com",
    )
    connection.request("GET", "/", headers={"host": "shop.example.com"})
    response = connection.getresponse()
    assert (response.status, response.read()) == (200, b"welcome to the shop")
    peer = connection.sock.getpeercert()
    assert peer is not None and ("DNS", "shop.example.com") in peer["subjectAltName"]
    connection.close()
    stats = member.envoy.stats("ssl.handshake")
    assert sum(v for k, v in stats.items() if k.endswith("ssl.handshake")) >= 1


def test_plain_http_is_redirected_to_https(gateway: tuple[MeshProxy, bytes]) -> None:
    member, _ = gateway
    host, port = member.outbound(8080)
    connection = http.client.HTTPConnection(host, port, timeout=5)
    connection.request("GET", "/cart", headers={"host": "shop.example.com"})
    response = connection.getresponse()
    assert response.status == 301
    assert response.getheader("location") == "https://shop.example.com/cart"
    connection.close()


def test_unknown_sni_gets_no_certificate(gateway: tuple[MeshProxy, bytes]) -> None:
    member, ca = gateway
    host, port = member.outbound(8443)
    context = ssl.create_default_context(cadata=ca.decode())
    context.check_hostname = False

    with (
        pytest.raises((ssl.SSLError, ConnectionResetError)),
        socket.create_connection((host, port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="other.example.com"),
    ):
        pass
