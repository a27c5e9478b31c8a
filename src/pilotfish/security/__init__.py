"""Workload identity: a certificate authority issuing SPIFFE certificates, served over SDS.

`CertificateAuthority` makes and keeps the root (or signs with a user-supplied one), issues,
rotates and revokes; `WorkloadSecrets` turns its certificates into Envoy `Secret`s named like
Istio's, cached until rotation is due.
"""

from __future__ import annotations

from pilotfish.security.ca import (
    CertificateAuthority,
    CertificateAuthorityError,
    Clock,
    KeyType,
    RevokedIdentity,
    WorkloadCertificate,
)
from pilotfish.security.sds import ROOT_SECRET, WORKLOAD_SECRET, WorkloadSecrets

__all__ = [
    "ROOT_SECRET",
    "WORKLOAD_SECRET",
    "CertificateAuthority",
    "CertificateAuthorityError",
    "Clock",
    "KeyType",
    "RevokedIdentity",
    "WorkloadCertificate",
    "WorkloadSecrets",
]
