"""Replicas sharing one CA serve byte-identical workload certificates (deterministic issuance),
so a proxy that moves between replicas is not pushed new secrets."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from pilotfish.security import CertificateAuthority, WorkloadSecrets

TTL = timedelta(hours=2)
NOW = datetime(2026, 11, 26, 10, 17, 3, tzinfo=UTC)


def _replicas(directory: Path) -> tuple[CertificateAuthority, CertificateAuthority]:
    first = CertificateAuthority.load_or_create(directory)
    second = CertificateAuthority.load_or_create(directory)  # another process, same files
    assert first.fingerprint == second.fingerprint
    return first, second


def test_replicas_issue_identical_certificates_within_a_window(tmp_path: Path) -> None:
    one, two = _replicas(tmp_path)
    a = one.issue("shop", "reviews", ttl=TTL, now=NOW, deterministic=True)
    b = two.issue("shop", "reviews", ttl=TTL, now=NOW + timedelta(minutes=20), deterministic=True)
    assert (a.cert_pem, a.key_pem, a.serial) == (b.cert_pem, b.key_pem, b.serial)

    cert = x509.load_pem_x509_certificates(a.cert_pem)[0]
    key = serialization.load_pem_private_key(a.key_pem, password=None)
    assert key.public_key().public_numbers() == cert.public_key().public_numbers()  # type: ignore[union-attr]
    root = x509.load_pem_x509_certificate(one.root_cert_pem)
    cert.verify_directly_issued_by(root)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [
        "spiffe://cluster.local/ns/shop/sa/reviews"
    ]
    # Valid now, and due for rotation (half its life) as the next one-hour window begins.
    assert a.not_before <= NOW < a.not_after
    window_end = datetime(2026, 11, 26, 11, 0, tzinfo=UTC)
    assert not a.needs_rotation(window_end - timedelta(minutes=1))
    assert a.needs_rotation(window_end)

    # Another identity, another window, or a random issuance: another key.
    other = one.issue("shop", "ratings", ttl=TTL, now=NOW, deterministic=True)
    later = one.issue("shop", "reviews", ttl=TTL, now=window_end, deterministic=True)
    fresh = one.issue("shop", "reviews", ttl=TTL, now=NOW)
    assert len({a.key_pem, other.key_pem, later.key_pem, fresh.key_pem}) == 4
    assert later.not_before < window_end < later.not_after


def test_workload_secrets_of_two_replicas_are_byte_identical(tmp_path: Path) -> None:
    one, two = _replicas(tmp_path)
    left = WorkloadSecrets(one, ttl=TTL, deterministic=True)
    right = WorkloadSecrets(two, ttl=TTL, deterministic=True)
    ours = [
        s.SerializeToString(deterministic=True)
        for s in left.secrets_for("shop", "reviews", now=NOW)
    ]
    theirs = [
        s.SerializeToString(deterministic=True)
        for s in right.secrets_for("shop", "reviews", now=NOW)
    ]
    assert ours == theirs and len(ours) == 2


def test_deterministic_issuance_needs_ec_keys(tmp_path: Path) -> None:
    ca = CertificateAuthority.load_or_create(tmp_path)
    with pytest.raises(ValueError, match="EC workload keys"):
        ca.issue("shop", "reviews", ttl=TTL, now=NOW, key_type="rsa", deterministic=True)
