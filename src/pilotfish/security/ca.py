"""A certificate authority for workload identities (what Istio's Citadel does).

Every workload gets a short-lived X.509 certificate whose only name is its SPIFFE identity
(`spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`), so proxies authenticate each other
by identity rather than by address. The root is made on first start and kept on disk; it can be
rotated with an overlap so certificates signed by the old root stay trusted until they are replaced,
and identities can be revoked (no new certificates, and their serials are listed in a CRL).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import itertools
import json
import os
import re
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from pilotfish.errors import PilotfishError

__all__ = [
    "CertificateAuthority",
    "CertificateAuthorityError",
    "Clock",
    "KeyType",
    "RevokedIdentity",
    "WorkloadCertificate",
]

KeyType = Literal["ec", "rsa"]
Clock = Callable[[], datetime]

# Files in the CA directory. Keys are written 0600; everything is replaced atomically.
ROOT_CERT = "root-cert.pem"
ROOT_KEY = "root-key.pem"
PREVIOUS_ROOT_CERT = "previous-root-cert.pem"
PREVIOUS_ROOT_KEY = "previous-root-key.pem"
PREVIOUS_ROOT_STATE = "previous-root.json"
REVOKED = "revoked.json"
ISSUED = "issued.jsonl"

_CLOCK_SKEW = timedelta(minutes=1)
_DEFAULT_TTL = timedelta(hours=24)
# A CRL outlives the default certificate lifetime, so the re-push that rotates a certificate (at
# half its life) always brings a fresh CRL before the old one expires.
_CRL_TTL = timedelta(days=7)
_RSA_BITS = 2048
_LABEL = r"[a-z0-9](?:[-a-z0-9]{0,61}[a-z0-9])?"
_LABEL_RE = re.compile(_LABEL)
_SUBDOMAIN_RE = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
_TRUST_DOMAIN_RE = re.compile(r"[a-z0-9._-]{1,255}")

_PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


class CertificateAuthorityError(PilotfishError):
    """The CA cannot do what was asked (bad key material, expired root, unsupported rotation)."""


class RevokedIdentity(CertificateAuthorityError):
    """The identity was revoked: it gets no new certificates."""


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class WorkloadCertificate:
    """A workload's key and certificate, ready for an SDS `tls_certificate`.

    `cert_pem` is the leaf followed by the chain up to, but excluding, the root (peers already
    hold the root in their trust bundle). `ca_fingerprint` names the CA that signed it, so a holder
    can tell a certificate signed by a root that has since been rotated away.
    """

    identity: str
    cert_pem: bytes
    key_pem: bytes
    not_before: datetime
    not_after: datetime
    serial: int
    ca_fingerprint: str = ""

    def needs_rotation(self, now: datetime) -> bool:
        """True once half the lifetime has passed (Istio's rule): early enough to retry calmly."""
        return now >= self.not_before + (self.not_after - self.not_before) / 2


@dataclass(frozen=True)
class _Signer:
    """A signing certificate and key, the certificates to send after a leaf, and the roots."""

    cert: x509.Certificate
    key: _PrivateKey
    chain: tuple[x509.Certificate, ...]
    roots: tuple[x509.Certificate, ...]

    @property
    def fingerprint(self) -> str:
        return self.cert.fingerprint(hashes.SHA256()).hex()

    @property
    def chain_pem(self) -> bytes:
        return b"".join(_cert_pem(c) for c in self.chain)

    @property
    def roots_pem(self) -> bytes:
        return b"".join(_cert_pem(c) for c in self.roots)


@dataclass(frozen=True)
class _Serial:
    serial: int
    not_after: datetime
    ca: str  # fingerprint of the signing CA: a CRL lists only what its signer issued


@dataclass
class _CachedCrl:
    revision: int
    pem: bytes
    last_update: datetime
    refresh_at: datetime


class CertificateAuthority:
    """Issues SPIFFE workload certificates; rotates its root with overlap; revokes identities.

    Make one with `load_or_create` (a self-managed root on disk) or `from_pem` (a root or an
    intermediate supplied by the user). All methods are thread-safe; `now` arguments default to the
    injected clock, which must return timezone-aware datetimes.
    """

    def __init__(
        self,
        signer: _Signer,
        *,
        trust_domain: str,
        key_type: KeyType,
        clock: Clock,
        state_dir: Path | None,
        managed: bool,
        root_ttl: timedelta,
    ) -> None:
        """Internal: use `load_or_create` or `from_pem`."""
        self._lock = threading.RLock()
        self._signer = signer
        self._trust_domain = _check_trust_domain(trust_domain)
        self._key_type: KeyType = _check_key_type(key_type)
        self._clock = clock
        self._dir = state_dir
        self._managed = managed
        self._root_ttl = root_ttl
        self._previous: _Signer | None = None
        self._previous_until: datetime | None = None
        self._revoked_ids: dict[tuple[str, str], datetime] = {}
        self._revoked_serials: dict[int, tuple[_Serial, datetime]] = {}
        self._issued: dict[tuple[str, str], list[_Serial]] = {}
        self._ledger_lines = 0
        self._revision = 0
        self._crl: _CachedCrl | None = None

    # -- construction -----------------------------------------------------------------------

    @classmethod
    def load_or_create(
        cls,
        directory: Path,
        *,
        trust_domain: str = "cluster.local",
        key_type: KeyType = "ec",
        root_ttl: timedelta = timedelta(days=3650),
        clock: Clock = _utcnow,
    ) -> CertificateAuthority:
        """The CA kept in `directory`: a self-signed root is made on first start, loaded after.

        `key_type` picks the key of a new root and the default key of workload certificates; an
        existing root keeps its own key type.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        _recover_interrupted_rotation(directory)
        cert_path, key_path = directory / ROOT_CERT, directory / ROOT_KEY
        if cert_path.exists() and key_path.exists():
            signer = _self_signed_signer(cert_path.read_bytes(), key_path.read_bytes(), cert_path)
        elif cert_path.exists() or key_path.exists():
            raise CertificateAuthorityError(
                f"{directory}: found only one of {ROOT_CERT} and {ROOT_KEY}; restore the other or "
                "remove both to create a new root"
            )
        else:
            signer = _new_root(_check_key_type(key_type), clock(), root_ttl)
            _write_signer(directory, signer, ROOT_CERT, ROOT_KEY)
        ca = cls(
            signer,
            trust_domain=trust_domain,
            key_type=key_type,
            clock=clock,
            state_dir=directory,
            managed=True,
            root_ttl=root_ttl,
        )
        ca._load_state()
        return ca

    @classmethod
    def from_pem(
        cls,
        cert_pem: bytes,
        key_pem: bytes,
        chain_pem: bytes = b"",
        *,
        trust_domain: str = "cluster.local",
        key_type: KeyType = "ec",
        clock: Clock = _utcnow,
        state_dir: Path | None = None,
    ) -> CertificateAuthority:
        """A CA signing with a user-supplied root, or an intermediate whose issuers are `chain_pem`.

        `chain_pem` lists the signer's issuers in order and must end with the self-signed root,
        which becomes the trust bundle; issued certificates carry the intermediates. Revocations
        are kept in `state_dir` if given (in memory otherwise). Such a CA cannot `rotate_root`: the
        user's PKI does that by supplying a new CA.
        """
        cert = _load_cert(cert_pem, "cert_pem")
        key = _load_key(key_pem, "key_pem")
        _check_pair(cert, key, "cert_pem/key_pem")
        if not _is_ca(cert):
            raise ValueError("cert_pem is not a CA certificate (basicConstraints CA:TRUE)")
        issuers = x509.load_pem_x509_certificates(chain_pem) if chain_pem.strip() else []
        path = [cert, *issuers]
        for child, parent in itertools.pairwise(path):
            try:
                child.verify_directly_issued_by(parent)
            except (ValueError, TypeError, InvalidSignature) as exc:
                raise ValueError(
                    f"chain_pem: {child.subject.rfc4514_string()!r} is not issued by the next "
                    f"certificate {parent.subject.rfc4514_string()!r}"
                ) from exc
        if not _is_self_signed(path[-1]):
            raise ValueError(
                "chain_pem must end with the self-signed root: peers need it in their trust bundle"
            )
        signer = _Signer(cert=cert, key=key, chain=tuple(path[:-1]), roots=(path[-1],))
        if state_dir is not None:
            Path(state_dir).mkdir(parents=True, exist_ok=True, mode=0o700)
        ca = cls(
            signer,
            trust_domain=trust_domain,
            key_type=key_type,
            clock=clock,
            state_dir=Path(state_dir) if state_dir is not None else None,
            managed=False,
            root_ttl=timedelta(0),
        )
        ca._load_state()
        return ca

    # -- facts ------------------------------------------------------------------------------

    @property
    def trust_domain(self) -> str:
        return self._trust_domain

    @property
    def key_type(self) -> KeyType:
        """The default key type of workload certificates."""
        return self._key_type

    @property
    def fingerprint(self) -> str:
        """SHA-256 (hex) of the current signing certificate; changes when the root is rotated."""
        with self._lock:
            return self._signer.fingerprint

    @property
    def root_cert_pem(self) -> bytes:
        """The current root (the one new certificates chain to)."""
        with self._lock:
            return self._signer.roots_pem

    def now(self) -> datetime:
        """The CA's clock (injectable, so tests can move time)."""
        return self._clock()

    def spiffe_id(self, namespace: str, service_account: str) -> str:
        """`spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`, names validated."""
        _check_names(namespace, service_account)
        return f"spiffe://{self._trust_domain}/ns/{namespace}/sa/{service_account}"

    # -- issuance ---------------------------------------------------------------------------

    def issue(
        self,
        namespace: str,
        service_account: str,
        *,
        ttl: timedelta = _DEFAULT_TTL,
        key_type: KeyType | None = None,
        now: datetime | None = None,
        deterministic: bool = False,
    ) -> WorkloadCertificate:
        """A fresh key and a certificate for the identity, valid from a minute before `now` (clock
        skew between peers) for `ttl`.

        `deterministic`: every holder of this CA's key issues the same key and certificate for
        an identity within one window of `ttl / 2` (windows count from the Unix epoch), so
        replicas of a control plane serve proxies byte-identical secrets and a proxy moving
        between them is not pushed new ones. The key is derived from the CA's key (which can
        issue any identity anyway), the serial from the identity and window, and ECDSA signs
        deterministically (RFC 6979). Needs EC workload keys. The certificate is valid from a
        minute before its window for `ttl`, so it reaches half its life as the next begins.

        The lifetime is cut at the signer's own expiry. Raises `RevokedIdentity` if revoked.
        """
        identity = self.spiffe_id(namespace, service_account)
        if ttl <= timedelta(0):
            raise ValueError(f"ttl must be positive, got {ttl}")
        kind = _check_key_type(key_type or self._key_type)
        if deterministic and kind != "ec":
            raise ValueError("deterministic issuance needs EC workload keys")
        ident = (namespace, service_account)
        with self._lock:
            self._check_not_revoked(ident, identity)
            signer = self._signer
        now = self._now(now)
        # Key generation and signing (slow for RSA) happen outside the lock.
        if deterministic:
            start = _window_start(now + _CLOCK_SKEW, ttl / 2)
            seed = _derivation(signer, identity, start)
            key: _PrivateKey = _derived_ec_key(seed)
            not_before = start - _CLOCK_SKEW
            not_after = min(start + ttl, signer.cert.not_valid_after_utc)
            serial = int.from_bytes(_hmac(seed, b"serial")[:20], "big") >> 1 | 1
        else:
            key = _new_key(kind)
            not_before = now - _CLOCK_SKEW
            not_after = min(now + ttl, signer.cert.not_valid_after_utc)
            serial = x509.random_serial_number()
        if not_after <= now:
            raise CertificateAuthorityError(
                f"the signing CA expired at {signer.cert.not_valid_after_utc.isoformat()}"
            )
        is_ec = isinstance(signer.key, ec.EllipticCurvePrivateKey)
        deterministic_ecdsa = True if deterministic and is_ec else None
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([]))
            .issuer_name(signer.cert.subject)
            .public_key(key.public_key())
            .serial_number(serial)
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            # With an empty subject the SAN is the certificate's only name: RFC 5280 says critical.
            .add_extension(
                x509.SubjectAlternativeName([x509.UniformResourceIdentifier(identity)]),
                critical=True,
            )
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=True,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.key.public_key()),
                critical=False,
            )
            # RSA (PKCS#1 v1.5) signatures are deterministic already; ECDSA's are made so.
            .sign(signer.key, hashes.SHA256(), ecdsa_deterministic=deterministic_ecdsa)
        )
        record = _Serial(serial, cert.not_valid_after_utc, signer.fingerprint)
        with self._lock:
            # A revoke that raced with signing wins: the certificate is never handed out.
            self._check_not_revoked(ident, identity)
            self._record_issued(ident, record, now)
        return WorkloadCertificate(
            identity=identity,
            cert_pem=_cert_pem(cert) + signer.chain_pem,
            key_pem=key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
            not_before=cert.not_valid_before_utc,
            not_after=cert.not_valid_after_utc,
            serial=serial,
            ca_fingerprint=signer.fingerprint,
        )

    # -- root rotation ----------------------------------------------------------------------

    def rotate_root(self, *, overlap: timedelta, root_ttl: timedelta | None = None) -> None:
        """Make a new root that signs from now on; the old one stays trusted for `overlap`.

        Choose `overlap` at least as long as the workload certificate TTL, so every certificate
        signed by the old root has been replaced before peers stop trusting it.
        """
        if overlap < timedelta(0):
            raise ValueError(f"overlap must not be negative, got {overlap}")
        with self._lock:
            if not self._managed or self._dir is None:
                raise CertificateAuthorityError(
                    "only a root made by load_or_create can be rotated; for a user-supplied CA, "
                    "load the new one with from_pem"
                )
            now = self._clock()
            old = self._signer
            new = _new_root(_key_type_of(old.key), now, root_ttl or self._root_ttl)
            until = now + overlap
            # Old root first: a crash between the steps leaves either the old state or a recoverable
            # one (see _recover_interrupted_rotation), never a root without its key.
            _write_signer(self._dir, old, PREVIOUS_ROOT_CERT, PREVIOUS_ROOT_KEY)
            _write_atomic(
                self._dir / PREVIOUS_ROOT_STATE,
                json.dumps({"trusted_until": until.isoformat()}).encode(),
            )
            _write_signer(self._dir, new, ROOT_CERT + ".new", ROOT_KEY + ".new")
            os.replace(self._dir / (ROOT_KEY + ".new"), self._dir / ROOT_KEY)
            os.replace(self._dir / (ROOT_CERT + ".new"), self._dir / ROOT_CERT)
            self._signer = new
            self._previous, self._previous_until = old, until
            self._revision += 1

    def trust_bundle(self, now: datetime | None = None) -> bytes:
        """PEM of every trusted root: the current one, plus the previous one during the overlap."""
        with self._lock:
            self._expire_previous(self._now(now))
            bundle = self._signer.roots_pem
            if self._previous is not None:
                bundle += self._previous.roots_pem
            return bundle

    # -- revocation -------------------------------------------------------------------------

    def revoke(self, namespace: str, service_account: str) -> None:
        """Refuse the identity new certificates and list its unexpired serials in the CRL."""
        _check_names(namespace, service_account)
        ident = (namespace, service_account)
        with self._lock:
            now = self._clock()
            self._revoked_ids.setdefault(ident, now)
            for record in self._issued.pop(ident, []):
                if record.not_after > now:
                    self._revoked_serials.setdefault(record.serial, (record, now))
            self._revision += 1
            self._save_revoked()

    def unrevoke(self, namespace: str, service_account: str) -> None:
        """Let the identity get certificates again; serials already revoked stay in the CRL."""
        _check_names(namespace, service_account)
        with self._lock:
            if self._revoked_ids.pop((namespace, service_account), None) is not None:
                self._revision += 1
                self._save_revoked()

    def is_revoked(self, namespace: str, service_account: str) -> bool:
        with self._lock:
            return (namespace, service_account) in self._revoked_ids

    @property
    def revoked(self) -> frozenset[tuple[str, str]]:
        """Revoked (namespace, service account) pairs."""
        with self._lock:
            return frozenset(self._revoked_ids)

    @property
    def has_revocations(self) -> bool:
        """Whether a CRL means anything: some identity or serial was ever revoked."""
        with self._lock:
            return bool(self._revoked_ids or self._revoked_serials)

    def crl_pem(self, now: datetime | None = None) -> bytes:
        """X.509 CRLs (PEM) listing revoked, unexpired serials: one signed by the current CA
        first, then one by the previous root during an overlap (a CRL covers only its signer's
        certificates, and a verifier checking revocation needs one for each issuer).

        The same bytes are returned until something is revoked or half the CRL lifetime passes, so
        pushes to proxies do not change for nothing.
        """
        with self._lock:
            now = self._now(now)
            self._expire_previous(now)
            cached = self._crl
            if (
                cached is not None
                and cached.revision == self._revision
                and cached.last_update <= now < cached.refresh_at
            ):
                return cached.pem
            signers = [self._signer] + ([self._previous] if self._previous else [])
            pem = b"".join(self._sign_crl(signer, now) for signer in signers)
            self._crl = _CachedCrl(self._revision, pem, now, now + _CRL_TTL / 2)
            return pem

    def trust_revision(self, now: datetime | None = None) -> str:
        """A short digest of what a validation context must hold (roots, and CRL if any).

        It changes when the root rotates, the overlap ends, something is revoked or the CRL is
        re-signed: the moments every proxy needs a new `ROOTCA` secret.
        """
        with self._lock:
            now = self._now(now)
            digest = hashlib.sha256(self.trust_bundle(now))
            if self.has_revocations:
                digest.update(self.crl_pem(now))
            return digest.hexdigest()[:16]

    # -- internals --------------------------------------------------------------------------

    def _now(self, now: datetime | None) -> datetime:
        return self._clock() if now is None else now

    def _check_not_revoked(self, ident: tuple[str, str], identity: str) -> None:
        if ident in self._revoked_ids:
            raise RevokedIdentity(f"{identity} is revoked")

    def _sign_crl(self, signer: _Signer, now: datetime) -> bytes:
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(signer.cert.subject)
            .last_update(now - _CLOCK_SKEW)
            .next_update(now + _CRL_TTL)
            .add_extension(x509.CRLNumber(int(now.timestamp() * 1_000_000)), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.key.public_key()),
                critical=False,
            )
        )
        fingerprint = signer.fingerprint
        for serial, (record, revoked_at) in sorted(self._revoked_serials.items()):
            if record.ca == fingerprint and record.not_after > now:
                builder = builder.add_revoked_certificate(
                    x509.RevokedCertificateBuilder()
                    .serial_number(serial)
                    .revocation_date(revoked_at)
                    .build()
                )
        crl = builder.sign(signer.key, hashes.SHA256())
        return crl.public_bytes(serialization.Encoding.PEM)

    def _expire_previous(self, now: datetime) -> None:
        if self._previous_until is None or now < self._previous_until:
            return
        self._previous = self._previous_until = None
        self._revision += 1
        if self._dir is not None:
            for name in (PREVIOUS_ROOT_STATE, PREVIOUS_ROOT_CERT, PREVIOUS_ROOT_KEY):
                with contextlib.suppress(FileNotFoundError):
                    (self._dir / name).unlink()

    def _record_issued(self, ident: tuple[str, str], record: _Serial, now: datetime) -> None:
        """Remember the serial (in memory and in an append-only ledger) so `revoke` can list it,
        even after a restart. Expired serials are dropped: a CRL need not list them."""
        live = [r for r in self._issued.get(ident, []) if r.not_after > now]
        live.append(record)
        self._issued[ident] = live
        if self._dir is None:
            return
        with open(self._dir / ISSUED, "a", encoding="utf-8") as ledger:
            ledger.write(json.dumps(_ledger_entry(ident, record)) + "\n")
        self._ledger_lines += 1
        total = sum(len(records) for records in self._issued.values())
        if self._ledger_lines > 2 * total + 1000:
            self._rewrite_ledger(now)

    def _rewrite_ledger(self, now: datetime) -> None:
        assert self._dir is not None
        entries = [
            json.dumps(_ledger_entry(ident, record))
            for ident, records in sorted(self._issued.items())
            for record in records
            if record.not_after > now
        ]
        _write_atomic(self._dir / ISSUED, "".join(e + "\n" for e in entries).encode())
        self._ledger_lines = len(entries)

    def _save_revoked(self) -> None:
        if self._dir is None:
            return
        state = {
            "identities": [
                {"namespace": ns, "service_account": sa, "revoked_at": at.isoformat()}
                for (ns, sa), at in sorted(self._revoked_ids.items())
            ],
            "serials": [
                {**_serial_entry(record), "revoked_at": at.isoformat()}
                for _, (record, at) in sorted(self._revoked_serials.items())
            ],
        }
        _write_atomic(self._dir / REVOKED, json.dumps(state, indent=1).encode())

    def _load_state(self) -> None:
        """Read the previous root (if still in its overlap), revocations and the issued ledger."""
        if self._dir is None:
            return
        now = self._clock()
        self._load_previous_root(now)
        revoked_path = self._dir / REVOKED
        if revoked_path.exists():
            try:
                state = json.loads(revoked_path.read_text())
                for item in state.get("identities", []):
                    ident = (str(item["namespace"]), str(item["service_account"]))
                    self._revoked_ids[ident] = datetime.fromisoformat(item["revoked_at"])
                for item in state.get("serials", []):
                    record = _parse_serial(item)
                    at = datetime.fromisoformat(item["revoked_at"])
                    if record.not_after > now:
                        self._revoked_serials[record.serial] = (record, at)
            except (ValueError, KeyError, TypeError) as exc:
                raise CertificateAuthorityError(f"{revoked_path}: unreadable: {exc}") from exc
        ledger_path = self._dir / ISSUED
        if ledger_path.exists():
            lines = ledger_path.read_text(encoding="utf-8").splitlines()
            for line in lines:
                try:
                    item = json.loads(line)
                    ident = (str(item["namespace"]), str(item["service_account"]))
                    record = _parse_serial(item)
                except (ValueError, KeyError, TypeError):
                    continue  # a line torn by a crash mid-append
                if record.not_after > now:
                    self._issued.setdefault(ident, []).append(record)
            self._rewrite_ledger(now)

    def _load_previous_root(self, now: datetime) -> None:
        assert self._dir is not None
        state_path = self._dir / PREVIOUS_ROOT_STATE
        cert_path, key_path = self._dir / PREVIOUS_ROOT_CERT, self._dir / PREVIOUS_ROOT_KEY
        try:
            until = datetime.fromisoformat(json.loads(state_path.read_text())["trusted_until"])
            previous = _self_signed_signer(cert_path.read_bytes(), key_path.read_bytes(), cert_path)
        except (OSError, ValueError, KeyError, TypeError, CertificateAuthorityError):
            previous, until = None, now
        if previous is not None and previous.fingerprint != self._signer.fingerprint:
            self._previous, self._previous_until = previous, until
        else:
            self._previous_until = now  # nothing usable: let _expire_previous tidy the files
        self._expire_previous(now)


# -- helpers ------------------------------------------------------------------------------------


def _check_names(namespace: str, service_account: str) -> None:
    if not isinstance(namespace, str) or not _LABEL_RE.fullmatch(namespace):
        raise ValueError(
            f"namespace {namespace!r} is not a DNS-1123 label "
            "(lower-case letters, digits and '-', at most 63 characters, alphanumeric at both ends)"
        )
    if (
        not isinstance(service_account, str)
        or len(service_account) > 253
        or not _SUBDOMAIN_RE.fullmatch(service_account)
    ):
        raise ValueError(
            f"service_account {service_account!r} is not a DNS-1123 name "
            "(dot-separated labels of lower-case letters, digits and '-', at most 253 characters)"
        )


def _check_trust_domain(trust_domain: str) -> str:
    if not _TRUST_DOMAIN_RE.fullmatch(trust_domain):
        raise ValueError(
            f"trust_domain {trust_domain!r} is not a SPIFFE trust domain "
            "(lower-case letters, digits, '.', '-' and '_')"
        )
    return trust_domain


def _check_key_type(key_type: str) -> KeyType:
    if key_type == "ec":
        return "ec"
    if key_type == "rsa":
        return "rsa"
    raise ValueError(f"key_type must be 'ec' or 'rsa', got {key_type!r}")


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# The order of P-256: derived private scalars must lie in [1, n - 1].
_P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


def _window_start(moment: datetime, window: timedelta) -> datetime:
    """The start of the window (counted from the Unix epoch) that holds `moment`."""
    return _EPOCH + window * ((moment - _EPOCH) // window)


def _hmac(key: bytes, message: bytes) -> bytes:
    return hmac.new(key, message, hashlib.sha256).digest()


def _derivation(signer: _Signer, identity: str, start: datetime) -> bytes:
    """A secret for one identity and window, known only to holders of the signing key."""
    secret = signer.key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return _hmac(secret, f"pilotfish workload key\0{identity}\0{start.isoformat()}".encode())


def _derived_ec_key(seed: bytes) -> ec.EllipticCurvePrivateKey:
    # 512 bits reduced modulo n: the bias is negligible (2^-256).
    wide = int.from_bytes(_hmac(seed, b"key 1") + _hmac(seed, b"key 2"), "big")
    return ec.derive_private_key(wide % (_P256_ORDER - 1) + 1, ec.SECP256R1())


def _new_key(key_type: KeyType) -> _PrivateKey:
    if key_type == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=_RSA_BITS)
    return ec.generate_private_key(ec.SECP256R1())


def _key_type_of(key: _PrivateKey) -> KeyType:
    return "rsa" if isinstance(key, rsa.RSAPrivateKey) else "ec"


def _new_root(key_type: KeyType, now: datetime, ttl: timedelta) -> _Signer:
    """A self-signed root. Each gets a unique name: verifiers find issuers and CRLs by name, so an
    old and a new root sharing one would be confused during an overlap."""
    if ttl <= timedelta(0):
        raise ValueError(f"root_ttl must be positive, got {ttl}")
    key = _new_key(key_type)
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "pilotfish"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"pilotfish root CA {secrets.token_hex(4)}"),
        ]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(now + ttl)
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
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return _Signer(cert=cert, key=key, chain=(), roots=(cert,))


def _self_signed_signer(cert_pem: bytes, key_pem: bytes, where: Path) -> _Signer:
    """A root read from disk (`where` names its certificate file in messages)."""
    try:
        cert = _load_cert(cert_pem, str(where))
        key = _load_key(key_pem, f"key of {where}")
        _check_pair(cert, key, str(where))
    except ValueError as exc:
        raise CertificateAuthorityError(str(exc)) from exc
    if not _is_self_signed(cert):
        raise CertificateAuthorityError(f"{where}: not a self-signed root")
    return _Signer(cert=cert, key=key, chain=(), roots=(cert,))


def _load_cert(pem: bytes, what: str) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(pem)
    except ValueError as exc:
        raise ValueError(f"{what}: not a PEM certificate: {exc}") from exc


def _load_key(pem: bytes, what: str) -> _PrivateKey:
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{what}: not an unencrypted PEM private key: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise ValueError(f"{what}: only EC and RSA keys are supported")
    return key


def _public_der(key: Any) -> bytes:
    der: bytes = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return der


def _check_pair(cert: x509.Certificate, key: _PrivateKey, what: str) -> None:
    if _public_der(cert.public_key()) != _public_der(key.public_key()):
        raise ValueError(f"{what}: the private key does not belong to the certificate")


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def _is_self_signed(cert: x509.Certificate) -> bool:
    if cert.issuer != cert.subject:
        return False
    try:
        cert.verify_directly_issued_by(cert)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _write_atomic(path: Path, data: bytes, *, private: bool = False) -> None:
    """Write via a temp file and rename, so a crash never leaves a half-written file; private
    files (keys) are 0600 from the moment they exist."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    try:
        if private:
            os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as handle:
            fd = -1
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    finally:
        if fd != -1:
            os.close(fd)
    os.replace(tmp, path)


def _write_signer(directory: Path, signer: _Signer, cert_name: str, key_name: str) -> None:
    key_pem = signer.key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    _write_atomic(directory / key_name, key_pem, private=True)
    _write_atomic(directory / cert_name, _cert_pem(signer.cert))


def _recover_interrupted_rotation(directory: Path) -> None:
    """Finish or undo a `rotate_root` that crashed between writing the new root and installing it.

    The key is installed before the certificate, so a `.new` certificate matching the installed key
    means the rotation got halfway: finish it. Otherwise it never took effect: drop the leftovers.
    """
    new_cert, new_key = directory / (ROOT_CERT + ".new"), directory / (ROOT_KEY + ".new")
    if new_cert.exists() and (directory / ROOT_KEY).exists() and not new_key.exists():
        with contextlib.suppress(ValueError):
            cert = _load_cert(new_cert.read_bytes(), str(new_cert))
            key = _load_key((directory / ROOT_KEY).read_bytes(), ROOT_KEY)
            _check_pair(cert, key, str(new_cert))
            os.replace(new_cert, directory / ROOT_CERT)
    for leftover in (new_cert, new_key):
        with contextlib.suppress(FileNotFoundError):
            leftover.unlink()


def _serial_entry(record: _Serial) -> dict[str, str]:
    return {
        "serial": format(record.serial, "x"),
        "not_after": record.not_after.isoformat(),
        "ca": record.ca,
    }


def _ledger_entry(ident: tuple[str, str], record: _Serial) -> dict[str, str]:
    return {"namespace": ident[0], "service_account": ident[1], **_serial_entry(record)}


def _parse_serial(item: dict[str, Any]) -> _Serial:
    return _Serial(
        serial=int(item["serial"], 16),
        not_after=datetime.fromisoformat(item["not_after"]),
        ca=str(item.get("ca", "")),
    )
