"""pytest plugin (entry point `pilotfish`): fixtures that run a pilotfish server and real Envoy.

Everything a fixture starts, it stops, also when the test fails.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from pilotfish.bootstrap import envoy_bootstrap
from pilotfish.cache import SnapshotCache
from pilotfish.testing.envoy import EnvoyProcess
from pilotfish.testing.etcd import EtcdServer
from pilotfish.testing.server import RecordingCallbacks, ServerThread
from pilotfish.testing.upstream import HttpUpstream

__all__ = [
    "envoy_factory",
    "etcd_server",
    "http_upstream",
    "xds_cache",
    "xds_callbacks",
    "xds_server",
]

EnvoyFactory = Callable[..., EnvoyProcess]


@pytest.fixture
def xds_cache() -> SnapshotCache:
    """An empty SnapshotCache keyed by node id."""
    return SnapshotCache()


@pytest.fixture
def xds_callbacks() -> RecordingCallbacks:
    """Callbacks recording every response and NACK of `xds_server`."""
    return RecordingCallbacks()


@pytest.fixture
def xds_server(
    xds_cache: SnapshotCache, xds_callbacks: RecordingCallbacks
) -> Iterator[ServerThread]:
    """A running pilotfish xDS server (ADS and per-type SotW) serving `xds_cache`."""
    with ServerThread(xds_cache, callbacks=xds_callbacks) as server:
        yield server


@pytest.fixture
def envoy_factory(xds_server: ServerThread) -> Iterator[EnvoyFactory]:
    """Start real Envoys pointed at `xds_server`: `envoy_factory(node_id="a", ads=False)`.

    Keyword arguments go to `pilotfish.bootstrap.envoy_bootstrap`; `log_level` to Envoy.
    Returned processes are started, not yet ready (see `EnvoyProcess.wait_ready`).
    """
    started: list[EnvoyProcess] = []

    def factory(
        node_id: str = "envoy", cluster: str = "test", log_level: str = "warning", **kw: Any
    ) -> EnvoyProcess:
        kw.setdefault("xds_address", xds_server.address)
        bootstrap = envoy_bootstrap(node_id=node_id, cluster=cluster, **kw)
        envoy = EnvoyProcess(bootstrap, log_level=log_level, name=node_id)
        started.append(envoy)
        return envoy.start()

    try:
        yield factory
    finally:
        for envoy in started:
            envoy.stop()


@pytest.fixture
def http_upstream() -> Iterator[Callable[[str], HttpUpstream]]:
    """Start local HTTP upstreams that answer with their name: `http_upstream("v1")`."""
    started: list[HttpUpstream] = []

    def factory(name: str) -> HttpUpstream:
        upstream = HttpUpstream(name).start()
        started.append(upstream)
        return upstream

    try:
        yield factory
    finally:
        for upstream in started:
            upstream.stop()


@pytest.fixture
def etcd_server() -> Iterator[EtcdServer]:
    """A running single-member etcd on free ports with a temp data dir, removed afterwards.

    A test may `stop()` and `start()` it: same data, same client port (an outage).
    """
    with EtcdServer() as server:
        yield server
