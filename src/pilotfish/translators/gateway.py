"""A gateway's config: listeners for the servers of every Gateway that selects it, and route
configurations built from the VirtualServices bound to those Gateways.

Plain HTTP servers on a port share route config `http.<port>`; each TLS-terminating server gets
its own filter chain (by SNI) and route config `https.<port>.<port name>.<gateway>.<namespace>`;
PASSTHROUGH servers route by SNI with the VirtualService's `tls` routes; TCP with its `tcp` routes.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from envoy.config.listener.v3.listener_components_pb2 import FilterChain
from envoy.config.listener.v3.listener_pb2 import Listener
from envoy.config.route.v3.route_components_pb2 import VirtualHost
from envoy.config.route.v3.route_pb2 import RouteConfiguration
from envoy.extensions.transport_sockets.tls.v3.common_pb2 import (
    CertificateValidationContext,
    TlsCertificate,
)
from envoy.extensions.transport_sockets.tls.v3.secret_pb2 import SdsSecretConfig
from envoy.extensions.transport_sockets.tls.v3.tls_pb2 import (
    CommonTlsContext,
    DownstreamTlsContext,
)
from google.protobuf.wrappers_pb2 import BoolValue

from pilotfish.protos.istio.networking.v1alpha3.gateway_pb2 import (
    Gateway,
    Server,
    ServerTLSSettings,
)
from pilotfish.protos.istio.networking.v1alpha3.virtual_service_pb2 import VirtualService
from pilotfish.registry import HTTP_PROTOCOLS, Registry
from pilotfish.sources import ConfigObject
from pilotfish.translators.build import ads_config_source
from pilotfish.translators.clusters import route_hash_policy
from pilotfish.translators.index import ConfigIndex, host_matches
from pilotfish.translators.listeners import http_connection_manager, listener, tcp_proxy, tls_chain
from pilotfish.translators.naming import (
    ROOT_CA_SECRET,
    WORKLOAD_SECRET,
    gateway_https_route_name,
    gateway_route_name,
    listener_name,
)
from pilotfish.translators.proxy import Proxy
from pilotfish.translators.routes import http_routes, tcp_destinations
from pilotfish.translators.version import stamp

__all__ = ["gateway_config"]

_TERMINATE = {
    ServerTLSSettings.SIMPLE,
    ServerTLSSettings.MUTUAL,
    ServerTLSSettings.ISTIO_MUTUAL,
    ServerTLSSettings.OPTIONAL_MUTUAL,
}


@dataclass
class _Port:
    http: list[tuple[ConfigObject, Server]] = field(default_factory=list)
    chains: list[FilterChain] = field(default_factory=list)
    routes: list[RouteConfiguration] = field(default_factory=list)
    inspect_tls: bool = False
    sources: set[str] = field(default_factory=set)


def gateway_config(
    proxy: Proxy, index: ConfigIndex, registry: Registry
) -> tuple[list[Listener], list[RouteConfiguration]]:
    """Listeners and route configurations for a gateway proxy."""
    ports: dict[int, _Port] = {}
    for gateway in index.gateways_for(proxy.labels):
        spec = gateway.spec
        assert isinstance(spec, Gateway)
        for server in spec.servers:
            number = server.port.number
            port = ports.setdefault(number, _Port())
            port.sources.add(f"Gateway/{gateway.namespace}/{gateway.name}")
            protocol = server.port.protocol.upper()
            terminate = server.HasField("tls") and server.tls.mode in _TERMINATE
            if protocol in HTTP_PROTOCOLS:
                port.http.append((gateway, server))
            elif protocol == "HTTPS" and terminate:
                name = gateway_https_route_name(
                    number, server.port.name, gateway.name, gateway.namespace
                )
                port.routes.append(
                    _route_config(name, number, [(gateway, server)], proxy, index, registry)
                )
                hcm = http_connection_manager(name, rds=name, edge=True)
                port.chains.append(
                    tls_chain(
                        [hcm], server_names=_hosts(server), tls=_tls(server.tls, True), name=name
                    )
                )
                port.inspect_tls = True
            elif protocol in ("TLS", "HTTPS"):
                chains = _passthrough_chains(gateway, server, index, registry)
                port.chains.extend(chains)
                port.inspect_tls = True
            else:
                port.chains.extend(_tcp_chains(gateway, server, index, registry))
    listeners: list[Listener] = []
    routes: list[RouteConfiguration] = []
    for number in sorted(ports):
        port = ports[number]
        if port.http:
            name = gateway_route_name(number)
            routes.append(_route_config(name, number, port.http, proxy, index, registry))
            port.chains.append(tls_chain([http_connection_manager(name, rds=name, edge=True)]))
        routes.extend(port.routes)
        if not port.chains:
            continue
        built = listener(
            listener_name(number),
            proxy.address,
            proxy.bind_port(number),
            _unique(port.chains),
            inspect_tls=port.inspect_tls,
        )
        listeners.append(stamp(built, port.sources))
    return listeners, routes


def _unique(chains: list[FilterChain]) -> list[FilterChain]:
    """Drop chains whose match repeats an earlier one (Envoy rejects duplicates)."""
    seen: set[bytes] = set()
    kept = []
    for chain in chains:
        key = chain.filter_chain_match.SerializeToString(deterministic=True)
        if key not in seen:
            seen.add(key)
            kept.append(chain)
    return kept


def _split(host: str, gateway: ConfigObject) -> tuple[str, str]:
    namespace, _, name = host.rpartition("/")
    if namespace == ".":
        namespace = gateway.namespace
    return namespace or "*", name


def _hosts(server: Server) -> list[str]:
    return [h.rpartition("/")[2] for h in server.hosts]


def _intersect(vs_host: str, server_host: str) -> str | None:
    if host_matches(server_host, vs_host):
        return vs_host
    if host_matches(vs_host, server_host):
        return server_host
    return None


def _bound(
    gateway: ConfigObject, server: Server, index: ConfigIndex
) -> Iterable[tuple[ConfigObject, str]]:
    """(VirtualService, host) pairs a server routes."""
    name = f"{gateway.namespace}/{gateway.name}"
    for vs in index.bound_to(name):
        for server_host in server.hosts:
            namespace, host = _split(server_host, gateway)
            if namespace not in ("*", vs.namespace):
                continue
            for vs_host in index.hosts_of(vs):
                shared = _intersect(vs_host, host)
                if shared is not None:
                    yield vs, shared


def _route_config(
    name: str,
    number: int,
    servers: list[tuple[ConfigObject, Server]],
    proxy: Proxy,
    index: ConfigIndex,
    registry: Registry,
) -> RouteConfiguration:
    hosts: dict[str, VirtualHost] = {}
    sources: dict[str, set[str]] = {}
    redirect: set[str] = set()
    seen: set[tuple[str, str, str]] = set()
    for gateway, server in servers:
        gateway_name = f"{gateway.namespace}/{gateway.name}"
        for vs, host in _bound(gateway, server, index):
            if (vs.namespace, vs.name, host) in seen:
                continue
            seen.add((vs.namespace, vs.name, host))
            vhost = hosts.get(host)
            if vhost is None:
                domains = ["*"] if host == "*" else [host, f"{host}:*"]
                vhost = hosts[host] = VirtualHost(name=f"{host}:{number}", domains=domains)
            vhost.routes.extend(
                http_routes(
                    vs,
                    port=number,
                    proxy=proxy,
                    index=index,
                    registry=registry,
                    gateway=gateway_name,
                    hash_policy=route_hash_policy,
                )
            )
            sources.setdefault(host, set()).add(f"VirtualService/{vs.namespace}/{vs.name}")
            if server.HasField("tls") and server.tls.https_redirect:
                redirect.add(host)
    config = RouteConfiguration(name=name, validate_clusters=BoolValue(value=False))
    for host in sorted(hosts):
        vhost = hosts[host]
        if host in redirect:
            vhost.require_tls = VirtualHost.ALL
        config.virtual_hosts.append(stamp(vhost, sources[host]))
    return config


def _sds(name: str) -> SdsSecretConfig:
    return SdsSecretConfig(name=name, sds_config=ads_config_source())


def _tls(settings: ServerTLSSettings, http: bool) -> DownstreamTlsContext:
    common = CommonTlsContext(alpn_protocols=["h2", "http/1.1"] if http else [])
    mutual = settings.mode in (ServerTLSSettings.MUTUAL, ServerTLSSettings.OPTIONAL_MUTUAL)
    if settings.mode == ServerTLSSettings.ISTIO_MUTUAL:
        common.tls_certificate_sds_secret_configs.append(_sds(WORKLOAD_SECRET))
        common.validation_context_sds_secret_config.CopyFrom(_sds(ROOT_CA_SECRET))
        mutual = True
    elif settings.credential_name:
        common.tls_certificate_sds_secret_configs.append(_sds(settings.credential_name))
        if mutual:
            common.validation_context_sds_secret_config.CopyFrom(
                _sds(f"{settings.credential_name}-cacert")
            )
    else:
        certificate = TlsCertificate()
        certificate.certificate_chain.filename = settings.server_certificate
        certificate.private_key.filename = settings.private_key
        common.tls_certificates.append(certificate)
        if mutual and settings.ca_certificates:
            validation = CertificateValidationContext()
            validation.trusted_ca.filename = settings.ca_certificates
            common.validation_context.CopyFrom(validation)
    context = DownstreamTlsContext(common_tls_context=common)
    if mutual and settings.mode != ServerTLSSettings.OPTIONAL_MUTUAL:
        context.require_client_certificate.value = True
    return context


def _passthrough_chains(
    gateway: ConfigObject, server: Server, index: ConfigIndex, registry: Registry
) -> list[FilterChain]:
    chains = []
    number = server.port.number
    for vs, _host in _bound(gateway, server, index):
        spec = vs.spec
        assert isinstance(spec, VirtualService)
        for route in spec.tls:
            snis = sorted(
                {s for m in route.match if not m.port or m.port == number for s in m.sni_hosts}
            )
            if snis:
                proxy = tcp_proxy(
                    f"{server.port.name}.{number}",
                    tcp_destinations(route.route, number, vs.namespace, index, registry),
                )
                chains.append(tls_chain([proxy], server_names=snis))
    return chains


def _tcp_chains(
    gateway: ConfigObject, server: Server, index: ConfigIndex, registry: Registry
) -> list[FilterChain]:
    number = server.port.number
    for vs, _host in _bound(gateway, server, index):
        spec = vs.spec
        assert isinstance(spec, VirtualService)
        for route in spec.tcp:
            if all(not m.port or m.port == number for m in route.match):
                weights = tcp_destinations(route.route, number, vs.namespace, index, registry)
                return [tls_chain([tcp_proxy(f"{server.port.name}.{number}", weights)])]
    return []
