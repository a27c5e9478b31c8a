"""Test harness: real Envoy processes, a threaded pilotfish server, an in-memory ADS client.

Also a pytest plugin (entry point `pilotfish`, module `pilotfish.testing.plugin`) with fixtures
`xds_cache`, `xds_callbacks`, `xds_server`, `envoy_factory`, `http_upstream` and `etcd_server`.
"""

from __future__ import annotations

from pilotfish.testing.client import InMemoryAdsClient, InMemoryDeltaClient
from pilotfish.testing.envoy import (
    EnvoyError,
    EnvoyNotFound,
    EnvoyProcess,
    EnvoyStartError,
    HttpReply,
    find_envoy,
    free_port,
    wait_until,
)
from pilotfish.testing.etcd import (
    EtcdNotFound,
    EtcdServer,
    EtcdServerError,
    EtcdStartError,
    find_etcd,
)
from pilotfish.testing.mesh import LocalMesh, MeshProxy
from pilotfish.testing.server import RecordingCallbacks, ServerThread
from pilotfish.testing.upstream import HttpUpstream

__all__ = [
    "EnvoyError",
    "EnvoyNotFound",
    "EnvoyProcess",
    "EnvoyStartError",
    "EtcdNotFound",
    "EtcdServer",
    "EtcdServerError",
    "EtcdStartError",
    "HttpReply",
    "HttpUpstream",
    "InMemoryAdsClient",
    "InMemoryDeltaClient",
    "LocalMesh",
    "MeshProxy",
    "RecordingCallbacks",
    "ServerThread",
    "find_envoy",
    "find_etcd",
    "free_port",
    "wait_until",
]
