"""Envoy v3 bootstraps that point Envoy at a pilotfish control plane.

Bootstraps are plain JSON-able dicts: Envoy accepts JSON directly, so neither the CLI
(``pilotfish bootstrap``) nor the test harness needs the generated protobuf modules.

Reconnect speed: Envoy 1.40 takes the xDS stream reconnect backoff from
``grpc_services[0].envoy_grpc.retry_policy.retry_back_off`` of the ADS / API config source
(``Config::Utility::prepareJitteredExponentialBackOffStrategy``); without it Envoy waits a
fully jittered 0.5 s .. 30 s between attempts, which makes a restarted control plane look
dead for many seconds. We set it, so Envoy is back within about a second.

REST mode (``rest=True``): Envoy polls the xDS REST/JSON fetch API (`pilotfish.xds.rest`) every
``refresh_delay_ms`` instead of holding gRPC streams. Its REST client speaks HTTP/1.1 through
the cluster it is given, so the REST server gets a static cluster of its own (`REST_CLUSTER`);
the gRPC cluster is HTTP/2. REST subscriptions are per type and state-of-the-world: no ADS, no
delta.

A secured control plane (`pilotfish.xds.server.server_credentials`, `pilotfish.xds.auth`):
``xds_ca`` makes Envoy reach the gRPC xDS cluster over TLS, verifying the server against that CA
(no SAN match); ``xds_tls_cert``/``xds_tls_key`` add a client certificate (the proxy's SPIFFE
identity); ``xds_token`` sends ``authorization: Bearer <token>`` on every xDS stream. All are
file paths, read by Envoy, except the token.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, cast

__all__ = ["REST_CLUSTER", "XDS_CLUSTER", "Address", "config_source", "envoy_bootstrap"]

XDS_CLUSTER = "pilotfish_xds"
"""Name of the static cluster that points at the control plane."""

REST_CLUSTER = "pilotfish_rest"
"""Name of the static HTTP/1.1 cluster that points at the control plane's REST/JSON API."""

Address = tuple[str, int]
"""A ``(host, port)`` pair."""

_HTTP_PROTOCOL_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
_UPSTREAM_TLS = "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"


def _duration(ms: float) -> str:
    """Protobuf JSON duration ("0.1s") from milliseconds."""
    return f"{ms / 1000:.3f}".rstrip("0").rstrip(".") + "s"


def _grpc_service(
    reconnect_base_ms: int, reconnect_max_ms: int, xds_token: str | None = None
) -> dict[str, Any]:
    """The gRPC service of the control plane, with a fast stream-reconnect backoff (and the
    bearer token, if any, on every stream)."""
    if reconnect_base_ms <= 0 or reconnect_max_ms < reconnect_base_ms:
        raise ValueError(
            f"need 0 < reconnect_base_ms <= reconnect_max_ms, "
            f"got {reconnect_base_ms} and {reconnect_max_ms}"
        )
    service: dict[str, Any] = {
        "envoy_grpc": {
            "cluster_name": XDS_CLUSTER,
            "retry_policy": {
                "retry_back_off": {
                    "base_interval": _duration(reconnect_base_ms),
                    "max_interval": _duration(reconnect_max_ms),
                }
            },
        }
    }
    if xds_token is not None:
        if not xds_token or any(c.isspace() for c in xds_token):
            raise ValueError("xds_token must be non-empty, without whitespace")
        service["initial_metadata"] = [{"key": "authorization", "value": f"Bearer {xds_token}"}]
    return service


def _api_config_source(
    *, delta: bool, reconnect_base_ms: int, reconnect_max_ms: int, xds_token: str | None = None
) -> dict[str, Any]:
    """An ApiConfigSource for the control plane (used for ADS and per-type streams alike)."""
    return {
        "api_type": "DELTA_GRPC" if delta else "GRPC",
        "transport_api_version": "V3",
        "grpc_services": [_grpc_service(reconnect_base_ms, reconnect_max_ms, xds_token)],
        # Envoy's node is ~60 KB; sending it once per stream is enough.
        "set_node_on_first_message_only": True,
    }


def _rest_api_config_source(refresh_delay_ms: int, request_timeout_ms: int) -> dict[str, Any]:
    """An ApiConfigSource that polls the REST/JSON API through `REST_CLUSTER`."""
    if refresh_delay_ms <= 0 or request_timeout_ms <= 0:
        raise ValueError(
            f"need refresh_delay_ms > 0 and request_timeout_ms > 0, "
            f"got {refresh_delay_ms} and {request_timeout_ms}"
        )
    return {
        "api_type": "REST",
        "transport_api_version": "V3",
        "cluster_names": [REST_CLUSTER],
        # Required for REST: Envoy polls this often (plus up to as much again of jitter).
        "refresh_delay": _duration(refresh_delay_ms),
        "request_timeout": _duration(request_timeout_ms),
    }


def _check_rest(ads: bool, delta: bool) -> None:
    if ads or delta:
        raise ValueError(
            "REST polling is per type and state-of-the-world: rest=True needs ads=False "
            "and delta=False"
        )


def config_source(
    ads: bool = True,
    *,
    delta: bool = False,
    rest: bool = False,
    reconnect_base_ms: int = 100,
    reconnect_max_ms: int = 1000,
    refresh_delay_ms: int = 200,
    request_timeout_ms: int = 1000,
    xds_token: str | None = None,
) -> dict[str, Any]:
    """The ConfigSource that served resources use for RDS/EDS, matching `envoy_bootstrap`.

    With ADS every type rides the one aggregated stream; otherwise each type gets its own
    gRPC stream to the same control plane (the arguments must match the bootstrap's, including
    ``xds_token``). ``rest=True`` (with ``ads=False``) polls the REST/JSON API every
    ``refresh_delay_ms``.
    """
    if rest:
        _check_rest(ads, delta)
        return {
            "api_config_source": _rest_api_config_source(refresh_delay_ms, request_timeout_ms),
            "resource_api_version": "V3",
        }
    if ads:
        return {"ads": {}, "resource_api_version": "V3"}
    return {
        "api_config_source": _api_config_source(
            delta=delta,
            reconnect_base_ms=reconnect_base_ms,
            reconnect_max_ms=reconnect_max_ms,
            xds_token=xds_token,
        ),
        "resource_api_version": "V3",
    }


def _addresses(xds_address: Address | Sequence[Address]) -> list[Address]:
    """Normalise one ``(host, port)`` or a list of them."""
    if isinstance(xds_address, tuple) and len(xds_address) == 2 and isinstance(xds_address[0], str):
        host, port = xds_address
        return [(host, int(port))]
    addresses = [(str(host), int(port)) for host, port in cast(Sequence[Address], xds_address)]
    if not addresses:
        raise ValueError("xds_address: need at least one (host, port)")
    return addresses


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _upstream_tls(ca: str, cert: str | None, key: str | None) -> dict[str, Any]:
    """A TLS transport socket: verify the server against `ca`; present `cert` if given."""
    common: dict[str, Any] = {
        # gRPC servers expect HTTP/2 negotiated by ALPN.
        "alpn_protocols": ["h2"],
        "validation_context": {"trusted_ca": {"filename": ca}},
    }
    if cert is not None and key is not None:
        common["tls_certificates"] = [
            {"certificate_chain": {"filename": cert}, "private_key": {"filename": key}}
        ]
    return {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": f"type.googleapis.com/{_UPSTREAM_TLS}",
            "common_tls_context": common,
        },
    }


def _xds_cluster(
    addresses: list[Address],
    keepalive_interval_s: float,
    keepalive_timeout_s: float,
    tls: dict[str, Any] | None = None,
    health_check_interval_s: float = 1.0,
) -> dict[str, Any]:
    """The static HTTP/2 cluster that carries the xDS streams (over `tls` if given)."""
    http2: dict[str, Any] = {}
    if keepalive_interval_s > 0:
        # HTTP/2 PINGs notice a control plane that hangs or vanishes without a FIN/RST.
        http2["connection_keepalive"] = {
            "interval": _duration(keepalive_interval_s * 1000),
            "timeout": _duration(keepalive_timeout_s * 1000),
        }
    cluster = _static_cluster(XDS_CLUSTER, addresses, {"http2_protocol_options": http2})
    if tls is not None:
        cluster["transport_socket"] = tls
    if len(addresses) > 1:
        # Replicas: the first is used while it is up, the next ones in order after it (a
        # priority each), and a TCP health check tells when one is down, so a proxy leaves a
        # dead replica within a check interval instead of retrying it.
        cluster["load_assignment"]["endpoints"] = [
            {"priority": rank, "lb_endpoints": [endpoint]}
            for rank, endpoint in enumerate(
                cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]
            )
        ]
        interval = _duration(health_check_interval_s * 1000)
        cluster["health_checks"] = [
            {
                "timeout": _duration(min(health_check_interval_s, 1.0) * 1000),
                "interval": interval,
                "no_traffic_interval": interval,
                "unhealthy_threshold": 1,
                "healthy_threshold": 1,
                "tcp_health_check": {},
            }
        ]
    return cluster


def _rest_cluster(addresses: list[Address]) -> dict[str, Any]:
    """The static HTTP/1.1 cluster of the REST/JSON API (Envoy's REST client polls over it)."""
    return _static_cluster(REST_CLUSTER, addresses, {"http_protocol_options": {}})


def _static_cluster(
    name: str, addresses: list[Address], http_config: dict[str, Any]
) -> dict[str, Any]:
    return {
        "name": name,
        # STATIC needs IP literals; a host name (e.g. a Kubernetes service) needs DNS.
        "type": "STATIC" if all(_is_ip(host) for host, _ in addresses) else "STRICT_DNS",
        "connect_timeout": "1s",
        "typed_extension_protocol_options": {
            _HTTP_PROTOCOL_OPTIONS: {
                "@type": f"type.googleapis.com/{_HTTP_PROTOCOL_OPTIONS}",
                "explicit_http_config": http_config,
            }
        },
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {
                            "endpoint": {
                                "address": {"socket_address": {"address": host, "port_value": port}}
                            }
                        }
                        for host, port in addresses
                    ]
                }
            ],
        },
    }


def envoy_bootstrap(
    *,
    node_id: str,
    cluster: str,
    xds_address: Address | Sequence[Address],
    ads: bool = True,
    delta: bool = False,
    rest: bool = False,
    rest_address: Address | Sequence[Address] | None = None,
    refresh_delay_ms: int = 200,
    request_timeout_ms: int = 1000,
    admin_address: str = "127.0.0.1",
    admin_port: int = 0,
    reconnect_base_ms: int = 100,
    reconnect_max_ms: int = 1000,
    keepalive_interval_s: float = 30.0,
    keepalive_timeout_s: float = 5.0,
    node_metadata: Mapping[str, object] | None = None,
    extra_static_clusters: Iterable[Mapping[str, Any]] = (),
    xds_ca: str | None = None,
    xds_tls_cert: str | None = None,
    xds_tls_key: str | None = None,
    xds_token: str | None = None,
    xds_health_check_interval_s: float = 1.0,
) -> dict[str, Any]:
    """An Envoy v3 bootstrap that gets listeners and clusters from the control plane.

    Several ``xds_address`` es are replicas of one control plane, in order of preference: the
    proxy uses the first that passes a TCP health check (every
    ``xds_health_check_interval_s``), and moves to the next when it fails. Give proxies the
    replicas in different orders to spread them (`pilotfish bootstrap` rotates the list by
    node id).

    ``ads=True`` multiplexes every type over one ADS stream (ordering guarantees);
    ``ads=False`` opens one stream per type (CDS, LDS; RDS/EDS use `config_source`).
    ``delta=True`` selects the incremental protocol. ``keepalive_interval_s=0`` disables
    HTTP/2 keepalive; note that gRPC servers reject pings more frequent than their
    ``grpc.http2.min_ping_interval_without_data_ms`` (5 minutes by default) with
    GOAWAY ``too_many_pings`` unless they are configured to allow them.

    ``rest=True`` (needs ``ads=False``) makes Envoy poll CDS and LDS from the REST/JSON API
    every ``refresh_delay_ms`` through the HTTP/1.1 cluster `REST_CLUSTER`; served resources
    name it with ``config_source(ads=False, rest=True)``. The REST server is at
    ``xds_address``, or at ``rest_address`` when given: then ``xds_address`` keeps its gRPC
    cluster for resources with a gRPC config source. A ``rest_address`` without ``rest=True``
    only adds the REST cluster.

    ``xds_ca`` (a PEM file) puts the gRPC xDS cluster on TLS, trusting that CA for the server;
    ``xds_tls_cert`` and ``xds_tls_key`` (PEM files, both or neither; need ``xds_ca``) are the
    client certificate. ``xds_token`` is sent as ``authorization: Bearer <token>``. None of
    them applies to REST polling.
    """
    if rest:
        _check_rest(ads, delta)
        if xds_ca or xds_tls_cert or xds_tls_key or xds_token:
            raise ValueError("xds_ca, xds_tls_cert, xds_tls_key and xds_token need gRPC, not rest")
    if (xds_tls_cert is None) != (xds_tls_key is None):
        raise ValueError("xds_tls_cert and xds_tls_key go together")
    if xds_tls_cert is not None and xds_ca is None:
        raise ValueError("a client certificate (xds_tls_cert) needs xds_ca to verify the server")
    tls = _upstream_tls(xds_ca, xds_tls_cert, xds_tls_key) if xds_ca is not None else None
    dynamic: dict[str, Any] = {
        key: config_source(
            ads,
            delta=delta,
            rest=rest,
            reconnect_base_ms=reconnect_base_ms,
            reconnect_max_ms=reconnect_max_ms,
            refresh_delay_ms=refresh_delay_ms,
            request_timeout_ms=request_timeout_ms,
            xds_token=xds_token,
        )
        for key in ("cds_config", "lds_config")
    }
    if ads:
        dynamic["ads_config"] = _api_config_source(
            delta=delta,
            reconnect_base_ms=reconnect_base_ms,
            reconnect_max_ms=reconnect_max_ms,
            xds_token=xds_token,
        )
    # Envoy understands resource TTLs but does not advertise it; the control plane only sends
    # TTLs (and heartbeats) to clients that do.
    node: dict[str, Any] = {
        "id": node_id,
        "cluster": cluster,
        "client_features": ["xds.config.supports-resource-ttl"],
    }
    if node_metadata:
        node["metadata"] = dict(node_metadata)
    clusters: list[dict[str, Any]] = []
    if not rest or rest_address is not None:
        grpc = _addresses(xds_address)
        clusters.append(
            _xds_cluster(
                grpc, keepalive_interval_s, keepalive_timeout_s, tls, xds_health_check_interval_s
            )
        )
    if rest or rest_address is not None:
        clusters.append(_rest_cluster(_addresses(rest_address or xds_address)))
    clusters.extend(dict(c) for c in extra_static_clusters)
    return {
        "node": node,
        "admin": {
            "address": {"socket_address": {"address": admin_address, "port_value": admin_port}}
        },
        "dynamic_resources": dynamic,
        "static_resources": {"clusters": clusters},
    }
