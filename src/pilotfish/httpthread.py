"""A stdlib HTTP server on its own daemon thread: the lifecycle that the admin endpoints, the
test upstreams and the demo's apps share.

`stop()` also closes kept-alive connections, so a proxy in front sees the server go (otherwise
Envoy keeps its pooled connection to a server that no longer answers). Handlers reach the object
they serve as `self.server.owner`.
"""

from __future__ import annotations

import contextlib
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self

__all__ = ["HttpService", "ThreadedHttp"]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    owner: Any = None
    connections: set[socket.socket]
    lock: threading.Lock

    def get_request(self) -> tuple[socket.socket, Any]:
        conn, address = super().get_request()
        with self.lock:
            self.connections.add(conn)
        return conn, address

    def shutdown_request(self, request: Any) -> None:
        with self.lock:
            self.connections.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Stay quiet when a client gave up (a proxy's timeout); report anything else."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class _Server6(_Server):
    address_family = socket.AF_INET6


class ThreadedHttp:
    """Serve `handler` on `host:port` (port 0: any free port) in a daemon thread."""

    def __init__(
        self,
        handler: type[BaseHTTPRequestHandler],
        owner: object,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        name: str = "http",
        poll_interval: float = 0.05,
    ) -> None:
        self.handler = handler
        self.owner = owner
        self.host = host
        self.name = name
        self._requested_port = port
        self._poll_interval = poll_interval
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        """Whether it serves now."""
        return self._server is not None

    def start(self) -> None:
        """Bind (OSError if the address is taken) and serve. Idempotent."""
        if self._server is not None:
            return
        kind = _Server6 if ":" in self.host else _Server
        server = kind((self.host, self._requested_port), self.handler)
        server.owner = self.owner
        server.connections = set()
        server.lock = threading.Lock()
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": self._poll_interval},
            name=self.name,
            daemon=True,
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop serving, close the listening socket and every kept-alive connection. Idempotent."""
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        with server.lock:
            connections = list(server.connections)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        if thread is not None:
            thread.join(timeout=5)

    @property
    def port(self) -> int:
        """The bound port (RuntimeError when not running)."""
        if self._server is None:
            raise RuntimeError(f"{self.name} is not running")
        port: int = self._server.server_address[1]
        return port

    @property
    def url(self) -> str:
        """`http://host:port`."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"


class HttpService:
    """Base of an object serving HTTP through `self._http`: start/stop, `with`, port and url."""

    _http: ThreadedHttp

    def start(self) -> Self:
        """Bind and serve in a daemon thread (OSError if the address is taken)."""
        self._http.start()
        return self

    def stop(self) -> None:
        """Stop serving and close kept-alive connections. Idempotent."""
        self._http.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """The bound port."""
        return self._http.port

    @property
    def url(self) -> str:
        """`http://host:port`."""
        return self._http.url
