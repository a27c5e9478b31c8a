"""The workload certificate authority: what it issues, keeps, rotates and revokes, checked with
`cryptography.x509` (and a real Envoy accepting its SDS secrets for mutual TLS)."""

from __future__ import annotations

import http.client
import ssl
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from google.protobuf import json_format

from pilotfish.errors import PilotfishError
from pilotfish.security import (
    CertificateAuthority,
    CertificateAuthorityError,
    RevokedIdentity,
    WorkloadCertificate,
    WorkloadSecrets,
)
from pilotfish.testing import EnvoyProcess, free_port, wait_until

START = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
SPIFFE = "spiffe://cluster.local/ns/shop/sa/web"


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self, now: datetime = START) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> None:
        self.now += delta


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def ca(tmp_path: Path, clock: FakeClock) -> CertificateAuthority:
    return CertificateAuthority.load_or_create(tmp_path / "ca", clock=clock)


def certs(pem: bytes) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(pem)


def leaf_of(cert: WorkloadCertificate) -> x509.Certificate:
    return certs(cert.cert_pem)[0]


def root_of(ca: CertificateAuthority) -> x509.Certificate:
    return x509.load_pem_x509_certificate(ca.root_cert_pem)


def verifies(leaf: x509.Certificate, root: x509.Certificate) -> bool:
    try:
        leaf.verify_directly_issued_by(root)
    except Exception:
        return False
    return True


# -- issuance -----------------------------------------------------------------------------------


def test_issued_certificate_carries_the_spiffe_identity_and_verifies(
    ca: CertificateAuthority,
) -> None:
    issued = ca.issue("shop", "web")
    (leaf,) = certs(issued.cert_pem)  # signed by the root itself: no chain to send
    leaf.verify_directly_issued_by(root_of(ca))

    assert issued.identity == SPIFFE
    assert issued.serial == leaf.serial_number
    assert leaf.subject == x509.Name([])
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.critical  # the only name of a subject-less certificate
    assert san.value.get_values_for_type(x509.UniformResourceIdentifier) == [SPIFFE]
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    usage = leaf.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature and usage.key_encipherment and not usage.key_cert_sign
    assert leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False


def test_validity_window_follows_the_ttl(ca: CertificateAuthority) -> None:
    for ttl in (timedelta(hours=24), timedelta(hours=1)):
        issued = ca.issue("shop", "web", ttl=ttl)
        leaf = leaf_of(issued)
        assert leaf.not_valid_before_utc == issued.not_before == START - timedelta(minutes=1)
        assert leaf.not_valid_after_utc == issued.not_after == START + ttl


def test_serials_are_random_and_keys_fresh(ca: CertificateAuthority) -> None:
    a, b = ca.issue("shop", "web"), ca.issue("shop", "web")
    assert a.serial != b.serial
    assert a.key_pem != b.key_pem


def test_ecdsa_p256_by_default_and_rsa_when_asked(tmp_path: Path) -> None:
    ca = CertificateAuthority.load_or_create(tmp_path / "ec")
    issued = ca.issue("shop", "web")
    key = serialization.load_pem_private_key(issued.key_pem, password=None)
    assert issued.key_pem.startswith(b"-----BEGIN PRIVATE KEY-----")  # PKCS8
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert isinstance(key.curve, ec.SECP256R1)
    assert leaf_of(issued).public_key() == key.public_key()

    rsa_leaf = leaf_of(ca.issue("shop", "web", key_type="rsa")).public_key()
    assert isinstance(rsa_leaf, rsa.RSAPublicKey) and rsa_leaf.key_size == 2048

    rsa_ca = CertificateAuthority.load_or_create(tmp_path / "rsa", key_type="rsa")
    assert isinstance(root_of(rsa_ca).public_key(), rsa.RSAPublicKey)
    issued = rsa_ca.issue("shop", "web")
    assert isinstance(leaf_of(issued).public_key(), rsa.RSAPublicKey)
    leaf_of(issued).verify_directly_issued_by(root_of(rsa_ca))


@pytest.mark.parametrize(
    ("namespace", "service_account", "field"),
    [
        ("Shop", "web", "namespace"),
        ("shop_1", "web", "namespace"),
        ("", "web", "namespace"),
        ("a" * 64, "web", "namespace"),
        ("-shop", "web", "namespace"),
        ("shop", "web/../admin", "service_account"),
        ("shop", "Web", "service_account"),
        ("shop", "", "service_account"),
    ],
)
def test_invalid_names_are_rejected_naming_the_field(
    ca: CertificateAuthority, namespace: str, service_account: str, field: str
) -> None:
    with pytest.raises(ValueError, match=field):
        ca.issue(namespace, service_account)
    with pytest.raises(ValueError, match=field):
        ca.revoke(namespace, service_account)


# -- persistence and rotation of workload certificates --------------------------------------------


def test_root_is_created_once_and_kept_private(tmp_path: Path) -> None:
    first = CertificateAuthority.load_or_create(tmp_path)
    issued = first.issue("shop", "web")
    second = CertificateAuthority.load_or_create(tmp_path)
    assert second.root_cert_pem == first.root_cert_pem
    assert (tmp_path / "root-cert.pem").read_bytes() == first.root_cert_pem
    assert (tmp_path / "root-key.pem").stat().st_mode & 0o777 == 0o600
    leaf_of(issued).verify_directly_issued_by(root_of(second))


def test_needs_rotation_once_half_the_lifetime_has_passed(
    ca: CertificateAuthority, clock: FakeClock
) -> None:
    issued = ca.issue("shop", "web", ttl=timedelta(hours=24))
    assert not issued.needs_rotation(START + timedelta(hours=11))
    assert issued.needs_rotation(START + timedelta(hours=12))


def test_workload_secrets_cache_then_rotate(ca: CertificateAuthority, clock: FakeClock) -> None:
    secrets = WorkloadSecrets(ca, ttl=timedelta(hours=24))
    default, rootca = secrets.secrets_for("shop", "web")
    assert (default.name, rootca.name) == ("default", "ROOTCA")
    chain = default.tls_certificate.certificate_chain.inline_bytes
    key = serialization.load_pem_private_key(
        default.tls_certificate.private_key.inline_bytes, password=None
    )
    assert certs(chain)[0].public_key() == key.public_key()
    assert rootca.validation_context.trusted_ca.inline_bytes == ca.trust_bundle()
    assert not rootca.validation_context.HasField("crl")  # nothing revoked

    clock.advance(timedelta(hours=11))
    again = secrets.secrets_for("shop", "web")
    assert again == [default, rootca]  # cached: the same bytes, nothing to push
    assert secrets.rotate_due() == []

    clock.advance(timedelta(hours=1))
    assert secrets.rotate_due() == [("shop", "web")]
    rotated, _ = secrets.secrets_for("shop", "web")
    new_chain = rotated.tls_certificate.certificate_chain.inline_bytes
    assert certs(new_chain)[0].serial_number != certs(chain)[0].serial_number
    assert secrets.rotate_due() == []


def test_workload_secrets_returns_copies(ca: CertificateAuthority) -> None:
    secrets = WorkloadSecrets(ca)
    default, _ = secrets.secrets_for("shop", "web")
    default.name = "changed by a caller"
    assert secrets.secrets_for("shop", "web")[0].name == "default"


# -- root rotation ------------------------------------------------------------------------------


def test_root_rotation_trusts_both_roots_during_the_overlap(
    tmp_path: Path, ca: CertificateAuthority, clock: FakeClock
) -> None:
    secrets = WorkloadSecrets(ca)
    secrets.secrets_for("shop", "web")
    old_root = root_of(ca)
    old_cert = leaf_of(ca.issue("shop", "web"))

    clock.advance(timedelta(hours=1))
    ca.rotate_root(overlap=timedelta(hours=24))
    new_root = root_of(ca)
    assert new_root != old_root and new_root.subject != old_root.subject
    assert certs(ca.trust_bundle()) == [new_root, old_root]
    new_cert = leaf_of(ca.issue("shop", "web"))
    assert verifies(new_cert, new_root) and not verifies(new_cert, old_root)
    assert verifies(old_cert, old_root)
    # Every proxy needs the new bundle, and this one a certificate from the new root.
    assert secrets.rotate_due() == [("shop", "web")]
    default, rootca = secrets.secrets_for("shop", "web")
    assert verifies(certs(default.tls_certificate.certificate_chain.inline_bytes)[0], new_root)
    assert certs(rootca.validation_context.trusted_ca.inline_bytes) == [new_root, old_root]

    # A restart during the overlap keeps both roots.
    assert (tmp_path / "ca" / "previous-root-cert.pem").exists()
    reloaded = CertificateAuthority.load_or_create(tmp_path / "ca", clock=clock)
    assert certs(reloaded.trust_bundle()) == [new_root, old_root]

    clock.advance(timedelta(hours=24))
    assert certs(ca.trust_bundle()) == [new_root]
    assert not (tmp_path / "ca" / "previous-root-cert.pem").exists()
    assert certs(reloaded.trust_bundle()) == [new_root]
    assert secrets.rotate_due() == [("shop", "web")]  # the bundle shrank: push it


def test_a_user_supplied_ca_cannot_rotate_its_root() -> None:
    root_pem, root_key_pem = _make_ca("user root")
    ca = CertificateAuthority.from_pem(root_pem, root_key_pem)
    assert ca.trust_bundle() == root_pem
    (leaf,) = certs(ca.issue("shop", "web").cert_pem)
    leaf.verify_directly_issued_by(x509.load_pem_x509_certificate(root_pem))
    with pytest.raises(CertificateAuthorityError, match="rotate"):
        ca.rotate_root(overlap=timedelta(hours=1))


# -- revocation ---------------------------------------------------------------------------------


def test_revoked_identity_gets_no_certificate_and_its_serials_are_in_the_crl(
    tmp_path: Path, ca: CertificateAuthority, clock: FakeClock
) -> None:
    issued = ca.issue("shop", "web")
    other = ca.issue("shop", "cart")
    # A restart between issuing and revoking: the serial is remembered on disk.
    ca = CertificateAuthority.load_or_create(tmp_path / "ca", clock=clock)
    ca.revoke("shop", "web")

    with pytest.raises(RevokedIdentity) as caught:
        ca.issue("shop", "web")
    assert isinstance(caught.value, PilotfishError)
    assert ca.is_revoked("shop", "web") and not ca.is_revoked("shop", "cart")

    crl = x509.load_pem_x509_crl(ca.crl_pem())
    root = root_of(ca)
    assert crl.issuer == root.subject
    root_key = root.public_key()
    assert isinstance(root_key, ec.EllipticCurvePublicKey)
    assert crl.is_signature_valid(root_key)
    assert crl.get_revoked_certificate_by_serial_number(issued.serial) is not None
    assert crl.get_revoked_certificate_by_serial_number(other.serial) is None
    assert ca.crl_pem() == ca.crl_pem()  # stable bytes until something changes

    # And after another restart.
    reloaded = CertificateAuthority.load_or_create(tmp_path / "ca", clock=clock)
    with pytest.raises(RevokedIdentity):
        reloaded.issue("shop", "web")
    crl = x509.load_pem_x509_crl(reloaded.crl_pem())
    assert crl.get_revoked_certificate_by_serial_number(issued.serial) is not None

    reloaded.unrevoke("shop", "web")
    reloaded.issue("shop", "web")


def test_concurrent_issuance_and_revocation(ca: CertificateAuthority) -> None:
    with ThreadPoolExecutor(max_workers=8) as pool:
        issued = list(pool.map(lambda _: ca.issue("shop", "web"), range(32)))
    assert len({c.serial for c in issued}) == 32
    ca.revoke("shop", "web")
    crl = x509.load_pem_x509_crl(ca.crl_pem())
    assert all(crl.get_revoked_certificate_by_serial_number(c.serial) for c in issued)


def test_a_rotation_interrupted_after_installing_the_key_is_finished_on_load(
    tmp_path: Path, ca: CertificateAuthority, clock: FakeClock
) -> None:
    directory = tmp_path / "ca"
    ca.rotate_root(overlap=timedelta(hours=1))
    new_root = ca.root_cert_pem
    # As if the process died between installing the new key and installing its certificate.
    (directory / "root-cert.pem.new").write_bytes(new_root)
    (directory / "root-cert.pem").write_bytes((directory / "previous-root-cert.pem").read_bytes())
    reloaded = CertificateAuthority.load_or_create(directory, clock=clock)
    assert reloaded.root_cert_pem == new_root
    assert not (directory / "root-cert.pem.new").exists()
    leaf_of(reloaded.issue("shop", "web")).verify_directly_issued_by(root_of(reloaded))


def test_workload_secrets_carry_the_crl_after_a_revocation(ca: CertificateAuthority) -> None:
    secrets = WorkloadSecrets(ca)
    secrets.secrets_for("shop", "web")
    secrets.secrets_for("shop", "evil")
    ca.revoke("shop", "evil")

    assert secrets.rotate_due() == [("shop", "web")]  # the CRL must reach the others
    with pytest.raises(RevokedIdentity):
        secrets.secrets_for("shop", "evil")
    _, rootca = secrets.secrets_for("shop", "web")
    context = rootca.validation_context
    assert context.crl.inline_bytes == ca.crl_pem()
    assert context.only_verify_leaf_cert_crl
    assert secrets.rotate_due() == []


# -- a user-supplied intermediate ---------------------------------------------------------------


def _make_ca(
    name: str, issuer: tuple[bytes, bytes] | None = None, *, days: int = 30
) -> tuple[bytes, bytes]:
    """A CA certificate and key (PEM), self-signed or signed by `issuer` (cert, key PEMs)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    if issuer is None:
        issuer_name, signing_key = subject, key
    else:
        issuer_name = x509.load_pem_x509_certificate(issuer[0]).subject
        loaded = serialization.load_pem_private_key(issuer[1], password=None)
        assert isinstance(loaded, ec.EllipticCurvePrivateKey)
        signing_key = loaded
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(signing_key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def test_intermediate_chain_verifies_up_to_the_root() -> None:
    root = _make_ca("corp root")
    intermediate = _make_ca("mesh intermediate", issuer=root)
    ca = CertificateAuthority.from_pem(
        *intermediate, chain_pem=root[0], trust_domain="corp.example"
    )

    issued = ca.issue("shop", "web")
    leaf, inter = certs(issued.cert_pem)  # leaf + intermediate, not the root
    root_cert = x509.load_pem_x509_certificate(root[0])
    assert inter == x509.load_pem_x509_certificate(intermediate[0])
    leaf.verify_directly_issued_by(inter)
    inter.verify_directly_issued_by(root_cert)
    assert ca.trust_bundle() == root[0]
    assert issued.identity == "spiffe://corp.example/ns/shop/sa/web"

    # Full path validation, as a TLS peer does it.
    verifier = (
        x509.verification.PolicyBuilder()
        .store(x509.verification.Store([root_cert]))
        .build_client_verifier()
    )
    verified = verifier.verify(leaf, [inter])
    assert verified.chain[-1] == root_cert


def test_from_pem_rejects_a_chain_without_its_root() -> None:
    root = _make_ca("corp root")
    intermediate = _make_ca("mesh intermediate", issuer=root)
    with pytest.raises(ValueError, match="root"):
        CertificateAuthority.from_pem(*intermediate)
    other = _make_ca("someone else")
    with pytest.raises(ValueError, match="not issued by"):
        CertificateAuthority.from_pem(*intermediate, chain_pem=other[0])
    with pytest.raises(ValueError, match="does not belong"):
        CertificateAuthority.from_pem(intermediate[0], root[1], chain_pem=root[0])


# -- real Envoy: mutual TLS with SDS secrets from the CA ------------------------------------------

_TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
_HCM = (
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3"
    ".HttpConnectionManager"
)
_ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"


def _mtls_bootstrap(port: int, secrets: list[Any]) -> dict[str, Any]:
    """One listener requiring a client certificate, using static secrets `default` and `ROOTCA`."""
    return {
        "node": {"id": "ca-test", "cluster": "test"},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {
            "secrets": [json_format.MessageToDict(s) for s in secrets],
            "listeners": [
                {
                    "name": "mtls",
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
                    "filter_chains": [
                        {
                            "transport_socket": {
                                "name": "envoy.transport_sockets.tls",
                                "typed_config": {
                                    "@type": _TLS,
                                    "require_client_certificate": True,
                                    "common_tls_context": {
                                        "tls_certificate_sds_secret_configs": [{"name": "default"}],
                                        "validation_context_sds_secret_config": {"name": "ROOTCA"},
                                    },
                                },
                            },
                            "filters": [
                                {
                                    "name": "envoy.filters.network.http_connection_manager",
                                    "typed_config": {
                                        "@type": _HCM,
                                        "stat_prefix": "mtls",
                                        "route_config": {
                                            "virtual_hosts": [
                                                {
                                                    "name": "all",
                                                    "domains": ["*"],
                                                    "routes": [
                                                        {
                                                            "match": {"prefix": "/"},
                                                            "direct_response": {
                                                                "status": 200,
                                                                "body": {"inline_string": "hi"},
                                                            },
                                                        }
                                                    ],
                                                }
                                            ]
                                        },
                                        "http_filters": [
                                            {
                                                "name": "envoy.filters.http.router",
                                                "typed_config": {"@type": _ROUTER},
                                            }
                                        ],
                                    },
                                }
                            ],
                        }
                    ],
                }
            ],
        },
    }


def _get(port: int, ca: CertificateAuthority, client: WorkloadCertificate | None, tmp: Path) -> int:
    """GET / over TLS as `client` (or with no certificate), trusting the CA's bundle."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False  # SPIFFE certificates carry a URI, no DNS name
    context.load_verify_locations(cadata=ca.trust_bundle().decode())
    if client is not None:
        (tmp / "client.pem").write_bytes(client.cert_pem)
        (tmp / "client.key").write_bytes(client.key_pem)
        context.load_cert_chain(tmp / "client.pem", tmp / "client.key")
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=5)
    try:
        conn.request("GET", "/", headers={"Host": "web.shop"})
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


MtlsEnvoy = tuple[EnvoyProcess, int, CertificateAuthority, dict[str, WorkloadCertificate]]


@pytest.fixture
def mtls_envoy(tmp_path: Path) -> Iterator[MtlsEnvoy]:
    """Envoy serving mTLS as shop/web; clients `good` and `revoked` (shop/evil, revoked)."""
    ca = CertificateAuthority.load_or_create(tmp_path / "ca")
    clients = {"good": ca.issue("shop", "client"), "revoked": ca.issue("shop", "evil")}
    ca.revoke("shop", "evil")
    port = free_port()
    server = WorkloadSecrets(ca).secrets_for("shop", "web")
    with EnvoyProcess(_mtls_bootstrap(port, server), name="mtls") as envoy:
        envoy.wait_ready()
        yield envoy, port, ca, clients


def test_envoy_accepts_the_secrets_for_mutual_tls(tmp_path: Path, mtls_envoy: MtlsEnvoy) -> None:
    _, port, ca, clients = mtls_envoy
    assert _get(port, ca, clients["good"], tmp_path) == 200


def test_envoy_refuses_clients_without_a_certificate_or_revoked(
    tmp_path: Path, mtls_envoy: MtlsEnvoy
) -> None:
    envoy, port, ca, clients = mtls_envoy
    ssl_stats = f"listener.127.0.0.1_{port}.ssl"
    # With TLS 1.3 the client learns of the refusal on its first read (an alert, or a reset),
    # so Envoy's own counters say why it refused.
    with pytest.raises((OSError, http.client.HTTPException)):
        _get(port, ca, None, tmp_path)
    wait_until(lambda: envoy.stat(f"{ssl_stats}.fail_verify_no_cert") == 1)
    with pytest.raises((OSError, http.client.HTTPException)):
        _get(port, ca, clients["revoked"], tmp_path)  # the CRL in ROOTCA lists its serial
    wait_until(lambda: envoy.stat(f"{ssl_stats}.fail_verify_error") == 1)
    assert _get(port, ca, clients["good"], tmp_path) == 200


def test_envoy_during_a_root_overlap_trusts_both_roots_and_both_crls(tmp_path: Path) -> None:
    """A verifier checking revocation needs a CRL from each issuer: without the old root's CRL,
    every certificate the old root signed would be refused during the overlap."""
    ca = CertificateAuthority.load_or_create(tmp_path / "ca")
    old_client, old_revoked = ca.issue("shop", "client"), ca.issue("shop", "evil")
    ca.rotate_root(overlap=timedelta(hours=24))
    ca.revoke("shop", "evil")
    new_client = ca.issue("shop", "client")
    end = b"-----END X509 CRL-----\n"
    new_crl, old_crl = (x509.load_pem_x509_crl(pem + end) for pem in ca.crl_pem().split(end)[:2])
    assert new_crl.issuer == root_of(ca).subject and old_crl.issuer != new_crl.issuer
    assert old_crl.get_revoked_certificate_by_serial_number(old_revoked.serial) is not None

    port = free_port()
    server = WorkloadSecrets(ca).secrets_for("shop", "web")
    with EnvoyProcess(_mtls_bootstrap(port, server), name="mtls-overlap") as envoy:
        envoy.wait_ready()
        assert _get(port, ca, old_client, tmp_path) == 200
        assert _get(port, ca, new_client, tmp_path) == 200
        with pytest.raises((OSError, http.client.HTTPException)):
            _get(port, ca, old_revoked, tmp_path)
