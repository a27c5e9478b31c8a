"""A sidecar's config: outbound listeners and routes per service port, inbound listeners and
clusters for the workload it fronts.

Outbound HTTP listeners are named `0.0.0.0_<port>` and use route config `<port>`, with one
virtual host per service on that port. Listeners bind only for ports in `Proxy.port_map`; the
rest are Istio-style virtual listeners (`bind_to_port: false`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from functools import partial
from typing import Any

from envoy.config.cluster.v3.cluster_pb2 import Cluster
from envoy.config.listener.v3.listener_components_pb2 import Filter, FilterChain
from envoy.config.listener.v3.listener_pb2 import Listener
from envoy.config.route.v3.route_components_pb2 import (
    Route,
    RouteAction,
    RouteMatch,
    VirtualHost,
)
from envoy.config.route.v3.route_pb2 import RouteConfiguration
from envoy.extensions.filters.network.http_connection_manager.v3.http_connection_manager_pb2 import (  # noqa: E501
    HttpFilter,
)
from google.protobuf.duration_pb2 import Duration
from google.protobuf.wrappers_pb2 import BoolValue

from pilotfish.cache import Assembled, Encoded
from pilotfish.protos import wire
from pilotfish.protos.istio.networking.v1alpha3.virtual_service_pb2 import VirtualService
from pilotfish.registry import Registry, Service, ServicePort
from pilotfish.translators.authorization import policies_for, rbac_http_filters
from pilotfish.translators.clusters import route_hash_policy
from pilotfish.translators.endpoints import cluster_load_assignment, socket_address
from pilotfish.translators.index import MESH, ConfigIndex
from pilotfish.translators.listeners import (
    http_connection_manager,
    istio_mutual_downstream,
    listener,
    tcp_proxy,
    tls_chain,
)
from pilotfish.translators.memo import Site, TranslationMemo
from pilotfish.translators.naming import (
    cluster_name,
    inbound_cluster_name,
    inbound_listener_name,
    listener_name,
    virtual_host_name,
)
from pilotfish.translators.peer_authentication import mtls_mode
from pilotfish.translators.proxy import Proxy
from pilotfish.translators.routes import default_route_data, http_route_data, tcp_destinations
from pilotfish.translators.version import stamp, stamp_bytes

__all__ = ["inbound", "outbound_listeners", "outbound_routes"]


def _domains(service: Service, port: int, proxy: Proxy, domain: str) -> Iterator[str]:
    host = service.hostname
    names = [host]
    suffix = f".{service.namespace}.svc.{domain}"
    if host.endswith(suffix):
        short = host[: -len(suffix)]
        names += [f"{short}.{service.namespace}", f"{short}.{service.namespace}.svc"]
        if service.namespace == proxy.namespace:
            names.insert(1, short)
    names += list(service.addresses)
    for name in names:
        yield name
        yield f"{name}:{port}"


def routes_view(proxy: Proxy, index: ConfigIndex) -> Proxy:
    """All of `proxy` that its outbound routes depend on: its namespace (short host names,
    rules that apply first) and, if a VirtualService routes by source labels, its labels.
    `outbound_routes` sees only this, so sidecars with the same view get the same routes
    (`SharedParts`)."""
    labels = proxy.labels if index.routes_read_labels() else {}
    return Proxy(id="", namespace=proxy.namespace, labels=labels)


def outbound_routes(
    proxy: Proxy, index: ConfigIndex, registry: Registry, memo: TranslationMemo | None = None
) -> list[RouteConfiguration | Assembled[RouteConfiguration]]:
    """One route configuration per HTTP service port, named by the port (`Assembled` ones when
    there is a `memo`: `Messages` builds them if asked), for the proxy's `routes_view`. With a
    `memo`, a virtual host whose inputs did not change since the last round is not translated
    again."""
    proxy = routes_view(proxy, index)
    if memo is not None:
        return _assembled_routes(proxy, index, registry, memo)
    configs: list[RouteConfiguration | Assembled[RouteConfiguration]] = []
    for number, services in _by_port(registry).items():
        hosts = [
            _host_unit(service, number, domains, proxy, index, registry)
            for service, domains in _host_domains(services, number, proxy, index.domain)
        ]
        # Assembled as with a memo, so both give the same version (`Assembled.version`).
        configs.append(Assembled(_route_head(number), _VIRTUAL_HOSTS, hosts))
    return configs


def _by_port(registry: Registry) -> dict[int, list[Service]]:
    """HTTP services by port number, ports in order."""
    by_port: dict[int, list[Service]] = {}
    for service in registry.services():
        for port in service.ports:
            if port.is_http:
                by_port.setdefault(port.number, []).append(service)
    return dict(sorted(by_port.items()))


def _host_domains(
    services: list[Service], number: int, proxy: Proxy, domain: str
) -> Iterator[tuple[Service, tuple[str, ...]]]:
    """Each service with the domains its virtual host answers (a domain only once per port)."""
    used: set[str] = set()
    for service in services:
        every = tuple(_domains(service, number, proxy, domain))
        domains = every if used.isdisjoint(every) else tuple(d for d in every if d not in used)
        used.update(domains)
        yield service, domains


def _route_head(number: int) -> RouteConfiguration:
    return RouteConfiguration(name=str(number), validate_clusters=_false())


def _assembled_routes(
    proxy: Proxy, index: ConfigIndex, registry: Registry, memo: TranslationMemo
) -> list[RouteConfiguration | Assembled[RouteConfiguration]]:
    """`outbound_routes` with a memo: virtual hosts as memoized units; while the services
    stay the same (`Registry.generation`), a round redoes only the hosts the change touched
    and visits no other service."""
    token = registry.generation
    ports = memo.site(("route ports",), token, index, registry)
    sites = None
    if ports is not None:
        sites = [memo.site(("routes", n), token, index, registry) for n in ports.extra]
    if sites is None or None in sites:
        sites = []
        by_port = _by_port(registry)
        for number, services in by_port.items():
            keys: list[Any] = []
            computes: dict[Any, Callable[[ConfigIndex, Registry], Any]] = {}
            values: dict[Any, Any] = {}
            for service, domains in _host_domains(services, number, proxy, index.domain):
                key = ("vhost", service.key, number, domains)
                compute = partial(_host_unit, service, number, domains, proxy)
                keys.append(key)
                computes[key] = compute
                values[key] = memo.unit(key, compute, index, registry)
            sites.append(
                memo.record(("routes", number), token, keys, computes, values, _route_head(number))
            )
        memo.record(("route ports",), token, [], {}, {}, list(by_port))
    configs: list[RouteConfiguration | Assembled[RouteConfiguration]] = []
    for site in sites:
        assert site is not None
        hosts = _site_hosts(site)
        # Kept as its hosts' bytes: one host changed costs one host (see `Assembled`), and
        # with every host reused it is last round's object, which costs nothing at all.
        name = ("routes", site.extra.name)
        configs.append(memo.assembled(name, hosts, partial(_assemble, site.extra, hosts)))
    return configs


def _site_hosts(site: Site) -> list[Any]:
    """The site's virtual hosts in key order: last round's list with the changed units put in
    their places (a VirtualService edit: one host, not 10,000 unit keys hashed again)."""
    kept = site.cache.get("hosts")
    if kept is None:
        position = {key: i for i, key in enumerate(site.keys)}
        hosts = list(map(site.values.__getitem__, site.keys))
    else:
        position, hosts = kept
        if site.changed:
            hosts = list(hosts)  # a new list: the memo keeps the old one as what it assembled
            for key in site.changed:
                hosts[position[key]] = site.values[key]
    site.cache["hosts"] = (position, hosts)
    return hosts


def _host_unit(
    service: Service,
    number: int,
    domains: tuple[str, ...],
    proxy: Proxy,
    index: ConfigIndex,
    registry: Registry,
) -> Encoded[VirtualHost]:
    """The virtual host of `service` on port `number`, kept as its bytes (a mesh has one per
    service and port). Joined from its routes' bytes, in field number order as deterministic
    serialization writes them: a `VirtualHost` message would copy every route into itself
    only to be serialized."""
    vs = index.for_host(service.hostname, MESH)
    routes: list[bytes]
    if vs is not None:
        routes = http_route_data(
            vs,
            port=number,
            proxy=proxy,
            index=index,
            registry=registry,
            gateway=MESH,
            hash_policy=route_hash_policy,
        )
    else:
        routes = [
            default_route_data(
                service.hostname, number, index=index, proxy=proxy, hash_policy=route_hash_policy
            )
        ]
    name = virtual_host_name(service.hostname, number)
    head = [wire.length_delimited(_HOST_NAME, name.encode())]
    head += [wire.length_delimited(_DOMAINS, d.encode()) for d in domains]
    framed = [wire.length_delimited(_ROUTES, r) for r in routes]
    sources = (f"VirtualService/{vs.namespace}/{vs.name}",) if vs is not None else ()
    metadata = wire.length_delimited(_HOST_METADATA, stamp_bytes(sources))
    return Encoded.of_data(VirtualHost, name, b"".join((*head, *framed, metadata)))


def _assemble(
    head: RouteConfiguration,
    hosts: list[Encoded[VirtualHost]],
    previous: Assembled[RouteConfiguration] | None,
) -> Assembled[RouteConfiguration]:
    return Assembled(head, _VIRTUAL_HOSTS, hosts, previous)


_VIRTUAL_HOSTS = RouteConfiguration.DESCRIPTOR.fields_by_name["virtual_hosts"].number
_HOST_NAME, _DOMAINS, _ROUTES, _HOST_METADATA = (
    VirtualHost.DESCRIPTOR.fields_by_name[f].number
    for f in ("name", "domains", "routes", "metadata")
)


def _false() -> BoolValue:
    return BoolValue(value=False)


def outbound_listeners(proxy: Proxy, index: ConfigIndex, registry: Registry) -> list[Listener]:
    """`0.0.0.0_<port>` for every service port: HTTP via RDS, otherwise tcp_proxy (TLS by SNI)."""
    result = []
    for number, members in registry.derived("ports", _ports).items():
        name = listener_name(number)
        bind = number in proxy.port_map
        address = proxy.address if bind else "0.0.0.0"
        if any(p.is_http for _, p in members):
            hcm = http_connection_manager(f"outbound_0.0.0.0_{number}", rds=str(number))
            chains = [tls_chain([hcm])]
            inspect = False
        else:
            chains, inspect = _tcp_chains(number, members, index, registry)
        result.append(
            stamp(
                listener(
                    name, address, proxy.bind_port(number), chains, bind=bind, inspect_tls=inspect
                )
            )
        )
    return result


def _ports(services: list[Service]) -> dict[int, list[tuple[Service, ServicePort]]]:
    """Every service port, by number (in order)."""
    by_port: dict[int, list[tuple[Service, ServicePort]]] = {}
    for service in services:
        for port in service.ports:
            by_port.setdefault(port.number, []).append((service, port))
    return dict(sorted(by_port.items()))


def _tcp_chains(
    number: int, members: list[tuple[Service, ServicePort]], index: ConfigIndex, registry: Registry
) -> tuple[list[FilterChain], bool]:
    chains = []
    seen_sni: set[str] = set()
    default: Filter | None = None
    for service, _port in members:
        vs = index.for_host(service.hostname, MESH)
        spec = vs.spec if vs is not None else None
        if isinstance(spec, VirtualService) and vs is not None:
            for tls in spec.tls:
                matches = [m for m in tls.match if not m.port or m.port == number]
                snis = sorted({s for m in matches for s in m.sni_hosts} - seen_sni)
                if not matches or not snis:
                    continue
                seen_sni.update(snis)
                stat = f"outbound|{number}||{service.hostname}"
                chains.append(
                    tls_chain(
                        [
                            tcp_proxy(
                                stat,
                                tcp_destinations(tls.route, number, vs.namespace, index, registry),
                            )
                        ],
                        server_names=snis,
                    )
                )
            for tcp in spec.tcp:
                if default is None and all(not m.port or m.port == number for m in tcp.match):
                    default = tcp_proxy(
                        f"outbound|{number}||{service.hostname}",
                        tcp_destinations(tcp.route, number, vs.namespace, index, registry),
                    )
        if default is None:
            target = cluster_name(number, service.hostname)
            default = tcp_proxy(target, target)
    assert default is not None
    chains.append(tls_chain([default]))
    return chains, len(chains) > 1


def inbound(
    proxy: Proxy, registry: Registry, index: ConfigIndex, *, mtls: bool = False
) -> tuple[list[Listener], list[Cluster]]:
    """A listener and an `inbound|<port>||` cluster per port of the services this workload
    serves; the listener binds the workload's own endpoint port (where other proxies send).
    With `mtls` (workload certificates are served) each port follows PeerAuthentication."""
    listeners: list[Listener] = []
    clusters: list[Cluster] = []
    seen: set[int] = set()
    # AuthorizationPolicies select workloads, not ports: one set of filters for every port.
    rbac = rbac_http_filters(
        policies_for(index.of_kind("AuthorizationPolicy"), proxy.namespace, proxy.labels),
        trust_domain=index.domain,
    )
    for service in registry.services_of(proxy.namespace, proxy.labels):
        for port in service.ports:
            target = port.target_port if isinstance(port.target_port, int) else port.number
            if target in seen:
                continue
            seen.add(target)
            mine = [
                e
                for e in registry.endpoints(service.hostname, port.number)
                if e.address == proxy.address
                and e.namespace == proxy.namespace
                and (e.workload == proxy.workload if proxy.workload else _mine(e.labels, proxy))
            ]
            cluster = inbound_cluster_name(target)
            clusters.append(_inbound_cluster(cluster, proxy.app_port(target)))
            if not mine:
                # No endpoint of this workload is registered: nobody is sent here, and a
                # virtual listener on the service port would clash with the outbound one.
                continue
            mode = (
                mtls_mode(index.peer_authentications(), proxy.namespace, proxy.labels, target)
                if mtls
                else "DISABLE"
            )
            chains = _inbound_chains(cluster, target, port.is_http, mode, rbac)
            listeners.append(
                stamp(
                    listener(
                        inbound_listener_name(target),
                        proxy.address,
                        mine[0].port,
                        chains,
                        inbound=True,
                        inspect_tls=mode == "PERMISSIVE",
                    )
                )
            )
    return listeners, clusters


def _inbound_chains(
    cluster: str, target: int, http: bool, mode: str, rbac: Sequence[HttpFilter] = ()
) -> list[FilterChain]:
    """Plain text, mutual TLS, or both told apart by the TLS inspector (PERMISSIVE); HTTP
    requests pass the workload's AuthorizationPolicies (`rbac`) first."""

    def filters(tls: bool) -> list[Filter]:
        if not http:
            return [tcp_proxy(cluster, cluster)]
        routes = RouteConfiguration(
            name=cluster,
            validate_clusters=_false(),
            virtual_hosts=[
                VirtualHost(
                    name=f"inbound|http|{target}",
                    domains=["*"],
                    routes=[
                        Route(
                            name="default",
                            match=RouteMatch(prefix="/"),
                            route=RouteAction(cluster=cluster, timeout=Duration()),
                        )
                    ],
                )
            ],
        )
        return [
            http_connection_manager(
                cluster, route_config=routes, forward_client_cert=tls, authorization=rbac
            )
        ]

    if mode == "DISABLE":
        return [tls_chain(filters(False))]
    secure = tls_chain(filters(True), tls=istio_mutual_downstream(), name=f"{cluster}-mtls",
                       transport_protocol="tls" if mode == "PERMISSIVE" else "")  # fmt: skip
    if mode == "STRICT":
        return [secure]
    return [secure, tls_chain(filters(False), name=cluster, transport_protocol="raw_buffer")]


def _mine(labels: Iterable[tuple[str, str]], proxy: Proxy) -> bool:
    return all(proxy.labels.get(k) == v for k, v in labels)


def _inbound_cluster(name: str, app_port: int) -> Cluster:
    cluster = Cluster(name=name, type=Cluster.STATIC)
    cluster.connect_timeout.FromSeconds(10)
    cluster.load_assignment.CopyFrom(cluster_load_assignment(name, []))
    cluster.load_assignment.endpoints.add().lb_endpoints.add().endpoint.address.CopyFrom(
        socket_address("127.0.0.1", app_port)
    )
    stamp(cluster)
    return cluster
