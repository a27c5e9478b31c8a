"""Proxyless gRPC in tests: an xDS bootstrap for grpcio, and backends that say who they are.

grpcio reads its bootstrap once per process (from ``GRPC_XDS_BOOTSTRAP``, a file, or
``GRPC_XDS_BOOTSTRAP_CONFIG``, the JSON itself), so run each xDS client in its own process and
give it the bootstrap through that process's environment (see `bootstrap_env`).

Backends need no compiled .proto: `WHO_METHOD` takes and returns raw bytes, and answers with the
backend's name.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping, Sequence
from concurrent import futures
from types import TracebackType
from typing import Any, Self

import grpc

__all__ = [
    "WHO_METHOD",
    "GrpcBackend",
    "bootstrap_env",
    "grpc_bootstrap",
    "who",
]

WHO_METHOD = "/pilotfish.testing.Backend/Who"
_SERVICE, _, _METHOD = WHO_METHOD[1:].partition("/")


def grpc_bootstrap(
    server_address: tuple[str, int],
    node_id: str = "",
    *,
    cluster: str = "",
    metadata: Mapping[str, Any] | None = None,
    server_features: Sequence[str] = ("xds_v3",),
) -> dict[str, Any]:
    """A gRPC xDS bootstrap pointing at a pilotfish server (plaintext, ADS, xDS v3).

    An empty `node_id` is valid for gRPC (pilotfish then keys the node by its node hash).
    """
    host, port = server_address
    node: dict[str, Any] = {"id": node_id}
    if cluster:
        node["cluster"] = cluster
    if metadata:
        node["metadata"] = dict(metadata)
    return {
        "xds_servers": [
            {
                "server_uri": f"[{host}]:{port}" if ":" in host else f"{host}:{port}",
                "channel_creds": [{"type": "insecure"}],
                "server_features": list(server_features),
            }
        ],
        "node": node,
    }


def bootstrap_env(bootstrap: Mapping[str, Any], base: Mapping[str, str]) -> dict[str, str]:
    """`base` (e.g. ``os.environ``) plus ``GRPC_XDS_BOOTSTRAP_CONFIG`` for a child process.

    Any ``GRPC_XDS_BOOTSTRAP`` file setting inherited from `base` is dropped, since it would
    take precedence.
    """
    env = {k: v for k, v in base.items() if k != "GRPC_XDS_BOOTSTRAP"}
    env["GRPC_XDS_BOOTSTRAP_CONFIG"] = json.dumps(bootstrap)
    return env


def who(channel: grpc.Channel, *, timeout: float = 5.0, wait_for_ready: bool = True) -> str:
    """Call `WHO_METHOD` once; the name of the backend that answered."""
    call: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(WHO_METHOD)
    reply: bytes = call(b"", timeout=timeout, wait_for_ready=wait_for_ready)
    return reply.decode()


class GrpcBackend:
    """A plaintext gRPC server on a free loopback port answering `WHO_METHOD` with its name."""

    def __init__(self, name: str, host: str = "127.0.0.1") -> None:
        self.name = name
        self.host = host
        self.port = 0
        self._lock = threading.Lock()
        self._calls = 0
        self._server: grpc.Server | None = None

    def __repr__(self) -> str:
        return f"<GrpcBackend {self.name} {self.host}:{self.port or '-'}>"

    def start(self) -> Self:
        """Bind a free port and serve (idempotent)."""
        if self._server is not None:
            return self
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        handler: grpc.RpcMethodHandler[bytes, bytes] = grpc.unary_unary_rpc_method_handler(
            self._who
        )
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(_SERVICE, {_METHOD: handler}),)
        )
        self.port = server.add_insecure_port(f"{self.host}:0")
        if self.port == 0:
            raise OSError(f"cannot listen on {self.host}")
        server.start()
        self._server = server
        return self

    def stop(self, grace: float | None = None) -> None:
        """Stop serving (idempotent)."""
        server, self._server = self._server, None
        if server is not None:
            server.stop(grace).wait()

    @property
    def address(self) -> tuple[str, int]:
        """(host, port) for a ClusterLoadAssignment."""
        return (self.host, self.port)

    @property
    def calls(self) -> int:
        """Calls answered so far."""
        with self._lock:
            return self._calls

    def _who(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        with self._lock:
            self._calls += 1
        return self.name.encode()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
