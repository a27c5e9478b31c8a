"""Throwaway certificates for tests, made with the openssl command line tool: a root CA and a
workload certificate carrying a SPIFFE identity, as SDS `Secret`s named like Istio's; and
`Pki`, a `CertificateAuthority` writing workload certificates for Envoys to read."""

from __future__ import annotations

import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from envoy.extensions.transport_sockets.tls.v3.secret_pb2 import Secret

from pilotfish.security import CertificateAuthority


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def workload_secrets(spiffe: str = "spiffe://cluster.local/ns/default/sa/default") -> list[Secret]:
    """Secrets `default` (key and certificate for `spiffe`) and `ROOTCA` (the CA)."""
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
                 "/O=pilotfish test CA", "-keyout", "ca.key", "-out", "ca.pem", cwd=d)  # fmt: skip
        (d / "ext.cnf").write_text(f"subjectAltName=URI:{spiffe}\n")
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/O=pilotfish",
                 "-keyout", "w.key", "-out", "w.csr", cwd=d)  # fmt: skip
        _openssl("x509", "-req", "-in", "w.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                 "-CAcreateserial", "-days", "2", "-extfile", "ext.cnf", "-out", "w.pem",
                 cwd=d)  # fmt: skip
        workload = Secret(name="default")
        workload.tls_certificate.certificate_chain.inline_bytes = (d / "w.pem").read_bytes()
        workload.tls_certificate.private_key.inline_bytes = (d / "w.key").read_bytes()
        root = Secret(name="ROOTCA")
        root.validation_context.trusted_ca.inline_bytes = (d / "ca.pem").read_bytes()
        return [workload, root]


def server_secret(name: str, host: str) -> tuple[Secret, bytes]:
    """An SDS secret `name` holding a key and certificate for DNS name `host`, and the PEM of
    the CA that signed it (for the client to trust)."""
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
                 "/O=pilotfish test CA", "-keyout", "ca.key", "-out", "ca.pem", cwd=d)  # fmt: skip
        (d / "ext.cnf").write_text(f"subjectAltName=DNS:{host}\n")
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={host}",
                 "-keyout", "s.key", "-out", "s.csr", cwd=d)  # fmt: skip
        _openssl("x509", "-req", "-in", "s.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                 "-CAcreateserial", "-days", "2", "-extfile", "ext.cnf", "-out", "s.pem",
                 cwd=d)  # fmt: skip
        secret = Secret(name=name)
        secret.tls_certificate.certificate_chain.inline_bytes = (d / "s.pem").read_bytes()
        secret.tls_certificate.private_key.inline_bytes = (d / "s.key").read_bytes()
        return secret, (d / "ca.pem").read_bytes()


@dataclass
class Pki:
    """pilotfish's own CA in a directory, issuing workload certificates as files (the `pki`
    fixture, tests/conftest.py)."""

    ca: CertificateAuthority
    dir: Path

    @property
    def root(self) -> bytes:
        return self.ca.root_cert_pem

    def files(self, namespace: str, account: str) -> tuple[str, str]:
        """A workload certificate and key, written for Envoy to read."""
        issued = self.ca.issue(namespace, account)
        cert, key = self.dir / f"{namespace}.{account}.pem", self.dir / f"{namespace}.{account}.key"
        cert.write_bytes(issued.cert_pem)
        key.write_bytes(issued.key_pem)
        return str(cert), str(key)
