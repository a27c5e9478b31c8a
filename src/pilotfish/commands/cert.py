"""`pilotfish cert`: issue a workload certificate from the CA of `serve --ca-dir`.

What a proxy presents to a `serve --xds-tls` control plane before SDS can give it anything
(Istio's agent gets it with a token instead): `cert.pem`, `key.pem` and the trust bundle
`root.pem`, ready for `pilotfish bootstrap --xds-ca root.pem --xds-cert cert.pem --xds-key
key.pem`.
"""

from __future__ import annotations

import argparse
import os
from datetime import timedelta
from pathlib import Path
from typing import Any

from pilotfish.commands import CommandError
from pilotfish.security import CertificateAuthority, RevokedIdentity

__all__ = ["register"]


def register(commands: Any) -> None:
    """Add the `cert` subcommand."""
    cert = commands.add_parser(
        "cert",
        help="issue a workload certificate (for a proxy's connection to pilotfish)",
        description=__doc__.split("\n\n")[1],
    )
    cert.add_argument("--ca-dir", required=True, help="the CA directory of `serve --ca-dir`")
    cert.add_argument("--namespace", required=True)
    cert.add_argument("--service-account", required=True)
    cert.add_argument("--ttl", type=float, default=86400.0, help="seconds (default 86400)")
    cert.add_argument("--out", required=True, help="directory for cert.pem, key.pem, root.pem")
    cert.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Write the three PEM files."""
    directory = Path(args.ca_dir)
    if not (directory / "root-cert.pem").is_file():
        raise CommandError(f"{directory} holds no CA (run `pilotfish serve --ca-dir` first)")
    ca = CertificateAuthority.load_or_create(directory)
    try:
        issued = ca.issue(args.namespace, args.service_account, ttl=timedelta(seconds=args.ttl))
    except (RevokedIdentity, ValueError) as error:
        raise CommandError(str(error)) from error
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "cert.pem").write_bytes(issued.cert_pem)
    key = out / "key.pem"
    key.write_bytes(issued.key_pem)
    os.chmod(key, 0o600)
    (out / "root.pem").write_bytes(ca.trust_bundle())
    print(f"{issued.identity}: {out / 'cert.pem'} (until {issued.not_after:%Y-%m-%d %H:%M} UTC)")
    return 0
