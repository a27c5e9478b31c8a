"""Securing pilotfish itself: TLS on the xDS port, proxy identities checked against their nodes.

Real Envoy and real gRPC clients against a server whose certificates come from a real
`CertificateAuthority`: a proxy gets its own config, never another node's; unauthenticated and
mismatched streams are refused with a clear status and counted.
"""

from __future__ import annotations

import ipaddress
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from pilotfish.bootstrap import envoy_bootstrap
from pilotfish.cache import Snapshot, SnapshotCache
from pilotfish.metrics import Metrics
from pilotfish.protos import ADS_SERVICE, CLUSTER_TYPE, DiscoveryRequest, DiscoveryResponse, Node
from pilotfish.testing import EnvoyProcess, free_port, wait_until
from pilotfish.testing.server import ServerThread
from pilotfish.xds.auth import (
    AuthenticationError,
    Authenticator,
    Identity,
    NodeOwners,
    Peer,
    SpiffeAuthenticator,
    TokenAuthenticator,
    authorize,
)
from pilotfish.xds.callbacks import Callbacks
from pilotfish.xds.server import Transport, XdsServer, native_tls, server_credentials
from tests.certs import Pki
from tests.helpers import mesh

DENIED = grpc.StatusCode.PERMISSION_DENIED
UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED
PRODUCTPAGE = ("default", "productpage")
REVIEWS = ("default", "reviews")


def control_plane_cert(ca_dir: Path) -> tuple[bytes, bytes]:
    """The control plane's certificate (SPIFFE istio-system/pilotfish, plus the names gRPC
    clients check), signed by the CA's root: the CA itself issues SPIFFE-only certificates."""
    root = x509.load_pem_x509_certificate((ca_dir / "root-cert.pem").read_bytes())
    signer = serialization.load_pem_private_key((ca_dir / "root-key.pem").read_bytes(), None)
    assert isinstance(signer, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    names: list[x509.GeneralName] = [
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.UniformResourceIdentifier("spiffe://cluster.local/ns/istio-system/sa/pilotfish"),
    ]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(root.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName(names), critical=True)
        .sign(signer, hashes.SHA256())
    )
    pem = cert.public_bytes(serialization.Encoding.PEM)
    return pem, key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


class Refusals(Callbacks):
    def __init__(self) -> None:
        self.log: list[tuple[str, str]] = []

    def on_stream_refused(self, stream_id: int, reason: str, code: str) -> None:
        self.log.append((code, reason))


@dataclass
class Plane:
    cache: SnapshotCache
    server: XdsServer
    callbacks: Refusals
    address: tuple[str, int]


def serve(
    pki: Pki,
    authenticator: Authenticator,
    *,
    require_client_auth: bool = True,
    transport: Transport = "grpc",
) -> Iterator[Plane]:
    cert, key = control_plane_cert(pki.dir / "ca")
    cache, callbacks = SnapshotCache(), Refusals()
    make = native_tls if transport == "native" else server_credentials
    thread = ServerThread(
        cache,
        callbacks=Metrics(callbacks),
        credentials=make(cert, key, pki.root, require_client_auth=require_client_auth),
        authenticator=authenticator,
        transport=transport,
    )
    assert isinstance(thread.server, XdsServer)
    with thread:
        yield Plane(cache, thread.server, callbacks, thread.address)


# Every test of a secured plane runs on both transports: they share the checks
# (pilotfish.xds.streams) but not the TLS stack.
@pytest.fixture(params=["grpc", "native"])
def transport(request: pytest.FixtureRequest) -> Transport:
    value: Transport = request.param
    return value


@pytest.fixture
def mtls(pki: Pki, transport: Transport) -> Iterator[Plane]:
    authenticator = SpiffeAuthenticator(is_revoked=pki.ca.is_revoked)
    yield from serve(pki, authenticator, transport=transport)


@pytest.fixture
def tokens(pki: Pki, transport: Transport) -> Iterator[Plane]:
    authenticator = TokenAuthenticator({"s3cret": PRODUCTPAGE, "dev": None})
    yield from serve(pki, authenticator, require_client_auth=False, transport=transport)


def node(node_id: str, namespace: str, account: str) -> Node:
    node = Node(id=node_id, cluster="test")
    node.metadata.update({"NAMESPACE": namespace, "SERVICE_ACCOUNT": account})
    return node


def channel(pki: Pki, plane: Plane, identity: tuple[str, str] | None = None) -> grpc.Channel:
    """A TLS channel to the plane, with a client certificate for `identity` if given."""
    creds = grpc.ssl_channel_credentials(root_certificates=pki.root)
    if identity is not None:
        issued = pki.ca.issue(*identity)
        creds = grpc.ssl_channel_credentials(pki.root, issued.key_pem, issued.cert_pem)
    return grpc.secure_channel(f"localhost:{plane.address[1]}", creds)


def first_response(
    chan: grpc.Channel, claimed: Node, metadata: Sequence[tuple[str, str]] = ()
) -> DiscoveryResponse:
    """Open an ADS stream as `claimed`, ask for clusters; the first response (or RpcError)."""
    done = threading.Event()

    def requests() -> Iterator[DiscoveryRequest]:
        yield DiscoveryRequest(type_url=CLUSTER_TYPE, node=claimed)
        done.wait(10)  # keep the stream open until the answer is in

    assert ADS_SERVICE.stream is not None
    ads = chan.stream_stream(
        ADS_SERVICE.stream,
        request_serializer=DiscoveryRequest.SerializeToString,
        response_deserializer=DiscoveryResponse.FromString,
    )
    call = ads(requests(), metadata=tuple(metadata), timeout=5)
    try:
        response: DiscoveryResponse = next(call)
        return response
    finally:
        done.set()
        call.cancel()


def refusal(fn: Callable[..., object], *args: object) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        fn(*args)
    return caught.value


def envoy_with(
    pki: Pki,
    plane: Plane,
    node_id: str,
    claims: tuple[str, str],
    *,
    identity: tuple[str, str] | None = None,
    token: str | None = None,
) -> EnvoyProcess:
    """An Envoy claiming to be `node_id` with `claims` metadata, over TLS; it proves `identity`
    with a client certificate, or holds `token`."""
    namespace, account = claims
    cert, key = pki.files(*identity) if identity else (None, None)
    bootstrap = envoy_bootstrap(
        node_id=node_id,
        cluster="test",
        xds_address=plane.address,
        node_metadata={"NAMESPACE": namespace, "SERVICE_ACCOUNT": account},
        xds_ca=str(pki.dir / "root.pem"),
        xds_tls_cert=cert,
        xds_tls_key=key,
        xds_token=token,
    )
    return EnvoyProcess(bootstrap, name=node_id)


def small_mesh(cluster: str) -> Snapshot:
    return mesh({cluster: [("127.0.0.1", 1)]}, cluster, listener_port=free_port())


# -- real Envoy ---------------------------------------------------------------------------------


def test_envoy_with_its_own_identity_gets_its_config(pki: Pki, mtls: Plane) -> None:
    mtls.cache.set_snapshot("productpage", small_mesh("a"))
    with envoy_with(pki, mtls, "productpage", PRODUCTPAGE, identity=PRODUCTPAGE) as envoy:
        envoy.wait_ready()
        assert set(envoy.dynamic_clusters()) == {"a"}
    assert mtls.server.refused == {}


def test_envoy_posing_as_another_workload_gets_nothing(pki: Pki, mtls: Plane) -> None:
    mtls.cache.set_snapshot("reviews", small_mesh("secret"))
    with envoy_with(pki, mtls, "reviews", REVIEWS, identity=PRODUCTPAGE) as envoy:
        wait_until(lambda: mtls.server.refused.get(DENIED, 0) >= 1, timeout=5)
        assert envoy.dynamic_clusters() == {}
    code, reason = mtls.callbacks.log[0]
    assert code == "PERMISSION_DENIED"
    assert reason == (
        "identity ns/default/sa/productpage may not act as node 'reviews' "
        "(namespace default, service account reviews)"
    )
    assert UNAUTHENTICATED not in mtls.server.refused


def test_envoy_with_a_token_over_tls(pki: Pki, tokens: Plane) -> None:
    tokens.cache.set_snapshot("productpage", small_mesh("a"))
    with envoy_with(pki, tokens, "productpage", PRODUCTPAGE, token="s3cret") as envoy:
        envoy.wait_ready()
        assert set(envoy.dynamic_clusters()) == {"a"}
    assert tokens.server.refused == {}


# -- gRPC clients -------------------------------------------------------------------------------


def test_a_client_without_certificate_fails_the_handshake(pki: Pki, mtls: Plane) -> None:
    error = refusal(first_response, channel(pki, mtls), node("productpage", *PRODUCTPAGE))
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert mtls.server.refused == {}  # never got as far as a stream


def test_a_node_id_in_use_is_not_for_another_identity(pki: Pki, mtls: Plane) -> None:
    mtls.cache.set_snapshot("reviews-1", mesh({"b": [("127.0.0.1", 1)]}, "b"))
    reviews, posing = channel(pki, mtls, REVIEWS), channel(pki, mtls, PRODUCTPAGE)
    done = threading.Event()

    def hold() -> Iterator[DiscoveryRequest]:
        yield DiscoveryRequest(type_url=CLUSTER_TYPE, node=node("reviews-1", *REVIEWS))
        done.wait(10)

    assert ADS_SERVICE.stream is not None
    held = reviews.stream_stream(
        ADS_SERVICE.stream,
        request_serializer=DiscoveryRequest.SerializeToString,
        response_deserializer=DiscoveryResponse.FromString,
    )(hold(), timeout=5)
    try:
        assert next(held).resources  # reviews is connected as reviews-1
        # productpage, honest about its own metadata, asks for reviews' node id: refused.
        error = refusal(first_response, posing, node("reviews-1", *PRODUCTPAGE))
        assert error.code() == DENIED
        assert "ns/default/sa/reviews is connected as it" in (error.details() or "")
        # A second stream of the same identity is fine.
        assert first_response(reviews, node("reviews-1", *REVIEWS)).resources
    finally:
        done.set()
        held.cancel()
    # Once its streams are gone, the node id is released: reviews may come back.
    wait_until(lambda: mtls.server.stream_count == 0, timeout=5)
    assert first_response(reviews, node("reviews-1", *REVIEWS)).resources


def test_tokens(pki: Pki, tokens: Plane) -> None:
    tokens.cache.set_snapshot("productpage", mesh({"a": [("127.0.0.1", 1)]}, "a"))
    chan = channel(pki, tokens)
    productpage = node("productpage", *PRODUCTPAGE)
    good = first_response(chan, productpage, [("authorization", "Bearer s3cret")])
    assert good.type_url == CLUSTER_TYPE and good.resources

    wrong = refusal(first_response, chan, productpage, [("authorization", "Bearer guess")])
    assert (wrong.code(), wrong.details()) == (UNAUTHENTICATED, "unknown bearer token")
    missing = refusal(first_response, chan, productpage)
    assert missing.code() == UNAUTHENTICATED
    assert missing.details() == "no bearer token (authorization metadata)"

    mismatch = refusal(
        first_response, chan, node("productpage", *REVIEWS), [("authorization", "Bearer s3cret")]
    )
    assert mismatch.code() == DENIED
    # A development token may act as any node, even one without identity metadata.
    anyone = first_response(chan, Node(id="productpage"), [("authorization", "Bearer dev")])
    assert anyone.resources
    assert tokens.server.refused == {UNAUTHENTICATED: 2, DENIED: 1}
    assert [code for code, _ in tokens.callbacks.log] == [
        "UNAUTHENTICATED",
        "UNAUTHENTICATED",
        "PERMISSION_DENIED",
    ]


# -- sans-IO -----------------------------------------------------------------------------------


def tls_peer(*sans: bytes, **extra: Sequence[bytes]) -> Peer:
    context: Mapping[str, Sequence[bytes]] = {
        "transport_security_type": [b"ssl"],
        "x509_pem_cert": [b"-----BEGIN CERTIFICATE-----"],
        "x509_subject_alternative_name": list(sans),
        **extra,
    }
    return Peer(context)


@pytest.mark.parametrize(
    ("peer", "why"),
    [
        (Peer({"transport_security_type": [b"insecure"]}), "not TLS"),
        (Peer({"transport_security_type": [b"ssl"]}), "no client certificate"),
        (tls_peer(b"localhost"), "exactly one SPIFFE URI SAN, found 0"),
        (
            tls_peer(b"spiffe://cluster.local/ns/a/sa/b", b"spiffe://cluster.local/ns/c/sa/d"),
            "found 2",
        ),
        (tls_peer(b"spiffe://other.domain/ns/a/sa/b"), "not in trust domain cluster.local"),
        (tls_peer(b"spiffe://cluster.local/a/b"), "is not spiffe://<trust-domain>/ns/<ns>/sa/<sa>"),
        (tls_peer(b"spiffe://cluster.local/ns/bad/sa/actor"), "is revoked"),
    ],
)
def test_spiffe_refusals(peer: Peer, why: str) -> None:
    authenticator = SpiffeAuthenticator(is_revoked=lambda ns, sa: (ns, sa) == ("bad", "actor"))
    with pytest.raises(AuthenticationError, match=why):
        authenticator.authenticate(peer)


def test_spiffe_identity() -> None:
    peer = tls_peer(b"localhost", b"spiffe://cluster.local/ns/default/sa/productpage")
    assert SpiffeAuthenticator().authenticate(peer) == Identity("default", "productpage")


def test_authorize_needs_identity_metadata() -> None:
    identity = Identity(*PRODUCTPAGE)
    assert authorize(identity, node("x", *PRODUCTPAGE)) is None
    assert authorize(identity, Node(id="x")) == (
        "identity ns/default/sa/productpage may not act as node 'x' "
        "(namespace <unset>, service account <unset>)"
    )
    assert authorize(Identity(None, None), Node(id="x")) is None


def test_token_scheme_and_metadata_case() -> None:
    authenticator = TokenAuthenticator({"t": PRODUCTPAGE})
    assert authenticator.authenticate(Peer({}, [("Authorization", b"bearer t")])) == Identity(
        *PRODUCTPAGE
    )
    with pytest.raises(AuthenticationError, match="not 'Bearer <token>'"):
        authenticator.authenticate(Peer({}, [("authorization", "Basic dDp0")]))


def test_node_owners() -> None:
    owners, a, b, anyone = (
        NodeOwners(),
        Identity("ns", "a"),
        Identity("ns", "b"),
        Identity(None, None),
    )
    assert owners.claim("n", a) is None
    assert owners.claim("n", a) is None
    assert (
        owners.claim("n", b)
        == "identity ns/ns/sa/b may not act as node 'n': ns/ns/sa/a is connected as it"
    )
    assert owners.claim("n", anyone) is None
    owners.release("n", a)
    assert owners.claim("n", b) is not None
    owners.release("n", a)
    assert len(owners) == 0
    assert owners.claim("n", b) is None


def test_bootstrap_tls_and_token() -> None:
    bootstrap = envoy_bootstrap(
        node_id="n",
        cluster="c",
        xds_address=("127.0.0.1", 1),
        xds_ca="/ca.pem",
        xds_tls_cert="/cert.pem",
        xds_tls_key="/key.pem",
        xds_token="t",
    )
    (xds,) = bootstrap["static_resources"]["clusters"]
    context = xds["transport_socket"]["typed_config"]["common_tls_context"]
    assert context["validation_context"] == {"trusted_ca": {"filename": "/ca.pem"}}
    assert context["tls_certificates"] == [
        {"certificate_chain": {"filename": "/cert.pem"}, "private_key": {"filename": "/key.pem"}}
    ]
    (service,) = bootstrap["dynamic_resources"]["ads_config"]["grpc_services"]
    assert service["initial_metadata"] == [{"key": "authorization", "value": "Bearer t"}]
    with pytest.raises(ValueError, match="go together"):
        envoy_bootstrap(node_id="n", cluster="c", xds_address=("127.0.0.1", 1), xds_tls_cert="/c")
    with pytest.raises(ValueError, match="needs xds_ca"):
        envoy_bootstrap(
            node_id="n",
            cluster="c",
            xds_address=("127.0.0.1", 1),
            xds_tls_cert="/c",
            xds_tls_key="/k",
        )
