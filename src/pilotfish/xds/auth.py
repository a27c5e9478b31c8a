"""Who is on the other end of an xDS stream, and may it act as the node it claims to be?

Sans-IO: the server hands over what the transport knows about the peer (`Peer`: gRPC's auth
context and the call's metadata) as plain data; an `Authenticator` turns that into an `Identity`
or raises `AuthenticationError`, and `authorize` compares the identity with the node of the
stream's first request. `NodeOwners` keeps one identity per live node id, so a proxy cannot pose
as another node id (the key of its snapshot) while that node is connected.

- `SpiffeAuthenticator`: the identity is the SPIFFE URI SAN of the client certificate
  (``spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>``). It trusts the transport to
  have verified the certificate chain, so serve with client certificates required.
- `TokenAuthenticator`: ``authorization: Bearer <token>`` metadata, for development. A token
  maps to an identity, or to None: any node.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from pilotfish.errors import PilotfishError
from pilotfish.protos import Node

__all__ = [
    "AuthenticationError",
    "Authenticator",
    "Identity",
    "NodeOwners",
    "Peer",
    "SpiffeAuthenticator",
    "TokenAuthenticator",
    "authorize",
]


class AuthenticationError(PilotfishError):
    """The peer did not prove an identity; the message says why (sent to the peer)."""


@dataclass(frozen=True)
class Identity:
    """An authenticated peer. `namespace` and `service_account` None: may act as any node."""

    namespace: str | None
    service_account: str | None

    @property
    def any_node(self) -> bool:
        return self.namespace is None or self.service_account is None

    def __str__(self) -> str:
        if self.any_node:
            return "any node"
        return f"ns/{self.namespace}/sa/{self.service_account}"


@dataclass(frozen=True)
class Peer:
    """What the transport knows about the client: gRPC's auth context (property name -> values,
    e.g. ``x509_subject_alternative_name``) and the call's invocation metadata."""

    auth_context: Mapping[str, Sequence[bytes]] = field(default_factory=dict)
    metadata: Sequence[tuple[str, str | bytes]] = ()

    @classmethod
    def of(
        cls,
        auth_context: Mapping[str, Iterable[bytes]],
        metadata: Iterable[tuple[str, str | bytes]] | None,
    ) -> Peer:
        """From what `grpc.aio.ServicerContext` returns."""
        return cls(
            {key: tuple(values) for key, values in auth_context.items()},
            tuple((key, value) for key, value in metadata or ()),
        )

    @classmethod
    def from_tls(
        cls,
        certificate: bytes | None,
        metadata: Iterable[tuple[str, str | bytes]] = (),
    ) -> Peer:
        """From a TLS connection served without grpc (the native transport): the client's
        certificate (DER, None if it sent none) as gRPC's auth context would show it."""
        context: dict[str, tuple[bytes, ...]] = {"transport_security_type": (b"ssl",)}
        if certificate is not None:
            from cryptography import x509
            from cryptography.hazmat.primitives.serialization import Encoding

            cert = x509.load_der_x509_certificate(certificate)
            context["x509_pem_cert"] = (cert.public_bytes(Encoding.PEM),)
            try:
                sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            except x509.ExtensionNotFound:
                sans = x509.SubjectAlternativeName([])
            uris = sans.get_values_for_type(x509.UniformResourceIdentifier)
            names = [*uris, *sans.get_values_for_type(x509.DNSName)]
            names += [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)]
            context["x509_subject_alternative_name"] = tuple(name.encode() for name in names)
            spiffe = [uri for uri in uris if uri.startswith("spiffe://")]
            if len(spiffe) == 1:
                context["peer_spiffe_id"] = (spiffe[0].encode(),)
        return cls(context, tuple(metadata))

    def values(self, key: str) -> list[str]:
        """Every value of the metadata `key` (case-insensitive), as text."""
        key = key.lower()
        return [
            value.decode(errors="replace") if isinstance(value, bytes) else value
            for name, value in self.metadata
            if name.lower() == key
        ]


class Authenticator(Protocol):
    """Proves who the peer of a stream is."""

    def authenticate(self, peer: Peer) -> Identity:
        """The peer's identity; raises `AuthenticationError` saying why there is none."""
        ...


class SpiffeAuthenticator:
    """The identity in the client certificate's SPIFFE URI SAN, in `trust_domain`.

    `is_revoked(namespace, service_account)` (e.g. `CertificateAuthority.is_revoked`) refuses
    identities revoked since their certificate was issued.
    """

    def __init__(
        self,
        trust_domain: str = "cluster.local",
        *,
        is_revoked: Callable[[str, str], bool] | None = None,
    ) -> None:
        self.trust_domain = trust_domain
        self._is_revoked = is_revoked

    def authenticate(self, peer: Peer) -> Identity:
        auth = peer.auth_context
        if b"ssl" not in auth.get("transport_security_type", ()):
            raise AuthenticationError("the xDS connection is not TLS: no client certificate")
        if not auth.get("x509_pem_cert"):
            raise AuthenticationError("no client certificate")
        names = {
            name.decode(errors="replace")
            for key in ("peer_spiffe_id", "x509_subject_alternative_name")
            for name in auth.get(key, ())
            if name.startswith(b"spiffe://")
        }
        if len(names) != 1:
            raise AuthenticationError(
                f"the client certificate must carry exactly one SPIFFE URI SAN, found {len(names)}"
            )
        (spiffe,) = names
        identity = _parse_spiffe(spiffe, self.trust_domain)
        assert identity.namespace is not None and identity.service_account is not None
        if self._is_revoked is not None and self._is_revoked(
            identity.namespace, identity.service_account
        ):
            raise AuthenticationError(f"identity {spiffe} is revoked")
        return identity


class TokenAuthenticator:
    """``authorization: Bearer <token>`` metadata; each token names an identity, or None for any
    node. For development: a token is a shared secret, so serve it over TLS."""

    def __init__(self, tokens: Mapping[str, tuple[str, str] | None]) -> None:
        self._tokens = [(token.encode(), who) for token, who in tokens.items() if token]

    def authenticate(self, peer: Peer) -> Identity:
        headers = peer.values("authorization")
        if not headers:
            raise AuthenticationError("no bearer token (authorization metadata)")
        scheme, _, token = headers[0].strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AuthenticationError("the authorization metadata is not 'Bearer <token>'")
        given = token.strip().encode()
        found: tuple[str, str] | None = None
        known = False
        for candidate, who in self._tokens:  # compare with every token, in constant time each
            if hmac.compare_digest(candidate, given):
                known, found = True, who
        if not known:
            raise AuthenticationError("unknown bearer token")
        return Identity(None, None) if found is None else Identity(*found)


def authorize(identity: Identity, node: Node) -> str | None:
    """Why `identity` may not act as `node` (its ``NAMESPACE``/``SERVICE_ACCOUNT`` metadata must
    name the identity), or None if it may."""
    if identity.any_node:
        return None
    fields = node.metadata.fields
    namespace = fields["NAMESPACE"].string_value if "NAMESPACE" in fields else ""
    account = fields["SERVICE_ACCOUNT"].string_value if "SERVICE_ACCOUNT" in fields else ""
    if (namespace, account) == (identity.namespace, identity.service_account):
        return None
    return (
        f"identity {identity} may not act as node {node.id!r} "
        f"(namespace {namespace or '<unset>'}, service account {account or '<unset>'})"
    )


class NodeOwners:
    """The identity acting as each node id with live streams: a node id is the key of a
    snapshot, so while one identity holds it, no other may claim it. Identities for any node
    (development tokens) neither hold nor are refused node ids.

    A free node id may be claimed by any identity whose metadata is its own. That is safe when
    snapshots are made from the connecting node (the controller translates the claimant's own
    metadata and drops the snapshot when the node leaves); a cache filled ahead of time by node
    id should key snapshots by something the identity fixes (a `NodeHash` over ``NAMESPACE``
    and ``SERVICE_ACCOUNT``), or node ids that name the identity.
    """

    def __init__(self) -> None:
        self._owners: dict[str, tuple[Identity, int]] = {}

    def claim(self, node_id: str, identity: Identity) -> str | None:
        """Take a stream's hold on `node_id`; why not, if another identity holds it."""
        if identity.any_node:
            return None
        owner, streams = self._owners.get(node_id, (identity, 0))
        if owner != identity:
            return (
                f"identity {identity} may not act as node {node_id!r}: {owner} is connected as it"
            )
        self._owners[node_id] = (identity, streams + 1)
        return None

    def release(self, node_id: str, identity: Identity) -> None:
        """Drop a hold taken by `claim` (when its stream ends)."""
        owner, streams = self._owners.get(node_id, (None, 0))
        if owner != identity or identity.any_node:
            return
        if streams > 1:
            self._owners[node_id] = (identity, streams - 1)
        else:
            del self._owners[node_id]

    def __len__(self) -> int:
        return len(self._owners)


def _parse_spiffe(spiffe: str, trust_domain: str) -> Identity:
    rest = spiffe.removeprefix("spiffe://")
    domain, _, path = rest.partition("/")
    parts = path.split("/")
    if len(parts) != 4 or parts[0] != "ns" or parts[2] != "sa" or not parts[1] or not parts[3]:
        raise AuthenticationError(f"{spiffe} is not spiffe://<trust-domain>/ns/<ns>/sa/<sa>")
    if domain != trust_domain:
        raise AuthenticationError(f"{spiffe} is not in trust domain {trust_domain}")
    return Identity(parts[1], parts[3])
