"""A pilotfish xDS server on a background thread, for tests and examples.

Tests stay plain synchronous functions: the server's event loop runs on its own thread, and the
cache may be changed from the test's thread (SnapshotCache is thread-safe and the server hops
watch answers onto its loop).
"""

from __future__ import annotations

import asyncio
import ssl
import threading
from collections import Counter
from collections.abc import Coroutine
from concurrent.futures import Future
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self, TypeVar

import grpc

from pilotfish.protos import DeltaDiscoveryRequest, DiscoveryRequest, Node
from pilotfish.xds import Acked, ConfigWatcher, Nacked, Sent
from pilotfish.xds.auth import Authenticator
from pilotfish.xds.callbacks import Callbacks
from pilotfish.xds.rest import RestServer
from pilotfish.xds.server import Transport, XdsServer

__all__ = ["RecordingCallbacks", "ServerThread"]

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class _Response:
    stream_id: int
    node_id: str
    sent: Sent


class RecordingCallbacks(Callbacks):
    """Callbacks that remember what happened, for assertions (thread-safe reads)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.responses: list[_Response] = []
        self.nacks: list[tuple[str, Nacked]] = []
        self.acks: list[tuple[str, Acked]] = []
        self.requests = 0
        self.opened = 0
        self.closed = 0

    def on_stream_open(self, stream_id: int, type_url: str | None) -> None:
        with self._lock:
            self.opened += 1

    def on_stream_close(self, stream_id: int, node: Node | None) -> None:
        with self._lock:
            self.closed += 1

    def on_stream_request(
        self, stream_id: int, request: DiscoveryRequest | DeltaDiscoveryRequest
    ) -> None:
        with self._lock:
            self.requests += 1

    def on_stream_response(self, stream_id: int, node: Node, sent: Sent) -> None:
        with self._lock:
            self.responses.append(_Response(stream_id, node.id, sent))

    def on_stream_ack(self, stream_id: int, node: Node, ack: Acked) -> None:
        with self._lock:
            self.acks.append((node.id, ack))

    def on_nack(self, stream_id: int, node: Node, nack: Nacked) -> None:
        with self._lock:
            self.nacks.append((node.id, nack))

    def sent(self, type_url: str | None = None, node_id: str | None = None) -> list[Sent]:
        """Responses sent so far (optionally of one type, to one node)."""
        with self._lock:
            return [
                r.sent
                for r in self.responses
                if (type_url is None or r.sent.type_url == type_url)
                and (node_id is None or r.node_id == node_id)
            ]

    def sent_count_by_type(self) -> Counter[str]:
        """How many responses went out per type URL."""
        with self._lock:
            return Counter(r.sent.type_url for r in self.responses)


class ServerThread:
    """Runs an `XdsServer` (or, with `rest=True`, a REST/JSON `RestServer`) over `watcher` on a
    private event loop thread; `transport` picks grpc.aio or pilotfish's native HTTP/2."""

    def __init__(
        self,
        watcher: ConfigWatcher,
        *,
        callbacks: Callbacks | None = None,
        address: str = "127.0.0.1:0",
        ordered_ads: bool = True,
        heartbeat_interval: float | None = None,
        rest: bool = False,
        credentials: grpc.ServerCredentials | ssl.SSLContext | None = None,
        authenticator: Authenticator | None = None,
        transport: Transport = "grpc",
    ) -> None:
        self.server: XdsServer | RestServer = (
            RestServer(watcher, callbacks=callbacks)
            if rest
            else XdsServer(
                watcher,
                callbacks=callbacks,
                ordered_ads=ordered_ads,
                heartbeat_interval=heartbeat_interval,
                credentials=credentials,
                authenticator=authenticator,
                transport=transport,
            )
        )
        self._address = address
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self.port = 0

    def start(self) -> Self:
        """Start the loop thread and the server; returns once it listens."""
        self._thread.start()
        self.port = self._call(self.server.start(self._address)).result(timeout=10)
        return self

    def stop(self, grace: float = 1.0) -> None:
        """End every stream, stop the server and its thread. Idempotent."""
        if not self._thread.is_alive():
            return
        server = self.server
        stopping = server.stop(grace) if isinstance(server, XdsServer) else server.stop()
        self._call(stopping).result(timeout=grace + 10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    @property
    def address(self) -> tuple[str, int]:
        """Where Envoy should connect."""
        return ("127.0.0.1", self.port)

    def _call(self, coro: Coroutine[Any, Any, _T]) -> Future[_T]:
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
