"""Workload certificates as Envoy SDS secrets, named like Istio's (`default` and `ROOTCA`).

A proxy's SDS request for its identity is answered from a cache: the certificate is reissued only
once half its life has passed (or its root was rotated), and the answer's bytes stay the same until
something a proxy must see changes, so pushes are not repeated for nothing.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import datetime, timedelta

from pilotfish.protos.messages import Secret
from pilotfish.security.ca import CertificateAuthority, RevokedIdentity, WorkloadCertificate

__all__ = ["ROOT_SECRET", "WORKLOAD_SECRET", "WorkloadSecrets"]

WORKLOAD_SECRET = "default"
ROOT_SECRET = "ROOTCA"


@dataclass(frozen=True)
class _Entry:
    certificate: WorkloadCertificate
    revision: str  # CertificateAuthority.trust_revision when the secrets were built
    secrets: tuple[Secret, ...]


class WorkloadSecrets:
    """SDS secrets per identity, issued by `ca` with lifetime `ttl` and cached until rotation.

    `deterministic` (see `CertificateAuthority.issue`): replicas sharing the CA serve the same
    secrets, so a proxy that moves between them is not pushed new ones."""

    def __init__(
        self,
        ca: CertificateAuthority,
        *,
        ttl: timedelta = timedelta(hours=24),
        deterministic: bool = False,
    ) -> None:
        if ttl <= timedelta(0):
            raise ValueError(f"ttl must be positive, got {ttl}")
        self.ca = ca
        self.ttl = ttl
        self.deterministic = deterministic
        self._lock = threading.Lock()
        self._cache: dict[tuple[str, str], _Entry] = {}

    def secrets_for(
        self, namespace: str, service_account: str, *, now: datetime | None = None
    ) -> list[Secret]:
        """The `default` (key and certificate chain) and `ROOTCA` (trust bundle, CRL) secrets.

        Raises `RevokedIdentity` for a revoked identity (and forgets its cached certificate).
        """
        key = (namespace, service_account)
        with self._lock:
            if self.ca.is_revoked(namespace, service_account):
                self._cache.pop(key, None)
                raise RevokedIdentity(f"{self.ca.spiffe_id(namespace, service_account)} is revoked")
            now = self.ca.now() if now is None else now
            revision = self.ca.trust_revision(now)
            entry = self._cache.get(key)
            if entry is None or self._stale(entry.certificate, now):
                certificate = self.ca.issue(
                    namespace,
                    service_account,
                    ttl=self.ttl,
                    now=now,
                    deterministic=self.deterministic,
                )
            elif entry.revision == revision:
                return _copies(entry.secrets)
            else:
                certificate = entry.certificate
            secrets = (_workload_secret(certificate), self._root_secret(now))
            self._cache[key] = _Entry(certificate, revision, secrets)
            return _copies(secrets)

    def rotate_due(self, now: datetime | None = None) -> list[tuple[str, str]]:
        """(namespace, service account) pairs whose secrets must be pushed again: the certificate
        passed half its life or was signed by a rotated root, or the trust bundle or CRL changed.

        Revoked identities are dropped, not listed: they get no new secrets.
        """
        with self._lock:
            now = self.ca.now() if now is None else now
            revision = self.ca.trust_revision(now)
            due = []
            for key, entry in sorted(self._cache.items()):
                if self.ca.is_revoked(*key):
                    del self._cache[key]
                elif entry.revision != revision or self._stale(entry.certificate, now):
                    due.append(key)
            return due

    def forget(self, namespace: str, service_account: str) -> None:
        """Drop the cached certificate of an identity that no longer runs anywhere."""
        with self._lock:
            self._cache.pop((namespace, service_account), None)

    def _stale(self, certificate: WorkloadCertificate, now: datetime) -> bool:
        return certificate.needs_rotation(now) or certificate.ca_fingerprint != self.ca.fingerprint

    def _root_secret(self, now: datetime) -> Secret:
        secret = Secret(name=ROOT_SECRET)
        context = secret.validation_context
        context.trusted_ca.inline_bytes = self.ca.trust_bundle(now)
        if self.ca.has_revocations:
            context.crl.inline_bytes = self.ca.crl_pem(now)
            # Only leaves are ever revoked; checking every chain element would also demand a CRL
            # from the issuer of a user-supplied intermediate, which this CA cannot sign.
            context.only_verify_leaf_cert_crl = True
        return secret


def _workload_secret(certificate: WorkloadCertificate) -> Secret:
    secret = Secret(name=WORKLOAD_SECRET)
    secret.tls_certificate.certificate_chain.inline_bytes = certificate.cert_pem
    secret.tls_certificate.private_key.inline_bytes = certificate.key_pem
    return secret


def _copies(secrets: tuple[Secret, ...]) -> list[Secret]:
    """Fresh messages: protobufs are mutable, and a caller's edit must not reach the cache."""
    copies = []
    for secret in secrets:
        copy = Secret()
        copy.CopyFrom(secret)
        copies.append(copy)
    return copies
