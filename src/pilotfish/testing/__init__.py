"""Test harness: real Envoy processes, a threaded pilotfish server, an in-memory ADS client.

Also a pytest plugin (entry point `pilotfish`, module `pilotfish.testing.plugin`) with fixtures
`xds_cache`, `xds_callbacks`, `xds_server`, `envoy_factory` and `http_upstream`.
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
from pilotfish.testing.mesh import LocalMesh, MeshProxy
from pilotfish.testing.server import RecordingCallbacks, ServerThread
from pilotfish.testing.upstream import HttpUpstream

__all__ = [
    "EnvoyError",
    "EnvoyNotFound",
    "EnvoyProcess",
    "EnvoyStartError",
    "HttpReply",
    "HttpUpstream",
    "InMemoryAdsClient",
    "InMemoryDeltaClient",
    "LocalMesh",
    "MeshProxy",
    "RecordingCallbacks",
    "ServerThread",
    "find_envoy",
    "free_port",
    "wait_until",
]
