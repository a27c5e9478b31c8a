"""A tiny HTTP/1.1 upstream that says who it is, so tests can see where Envoy routed.

Every request gets ``200`` with body = the upstream's name and header ``x-upstream: name``.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Self

__all__ = ["HttpUpstream"]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    upstream: HttpUpstream


class _Handler(BaseHTTPRequestHandler):
    # Envoy keeps upstream connections alive: speak HTTP/1.1 and always set content-length.
    protocol_version = "HTTP/1.1"
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.server.upstream._opened(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.upstream._closed(self.connection)

    def _answer(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        if length:
            self.rfile.read(length)
        upstream = self.server.upstream
        upstream._record(self.path, {k.lower(): v for k, v in self.headers.items()})
        body = upstream.name.encode()
        self.send_response(200)
        self.send_header("content-type", "text/plain")
        self.send_header("content-length", str(len(body)))
        self.send_header("x-upstream", upstream.name)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _answer

    def log_message(self, format: str, *args: object) -> None:
        """Silence per-request logging (pytest output stays readable)."""


class HttpUpstream:
    """An HTTP/1.1 server on 127.0.0.1 (port chosen at bind time) in a daemon thread."""

    def __init__(self, name: str = "upstream", host: str = "127.0.0.1") -> None:
        self.name = name
        self.host = host
        self._lock = threading.Lock()
        self._requests = 0
        self._last_headers: dict[str, str] = {}
        self._last_path = ""
        self._connections: set[socket.socket] = set()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        where = f"{self.host}:{self._server.server_address[1]}" if self._server else "stopped"
        return f"<HttpUpstream {self.name} {where}>"

    def start(self) -> Self:
        """Bind a free port and serve in a background thread."""
        if self._server is not None:
            return self
        server = _Server((self.host, 0), _Handler)
        server.upstream = self
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"HttpUpstream-{self.name}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close kept-alive connections too, so Envoy sees the upstream go."""
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        if thread is not None:
            thread.join()

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
        if self._server is None:
            raise RuntimeError(f"{self!r} is not running")
        port: int = self._server.server_address[1]
        return port

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    @property
    def requests(self) -> int:
        """Requests answered so far."""
        with self._lock:
            return self._requests

    @property
    def last_headers(self) -> dict[str, str]:
        """Headers (lower-case names) of the last request; empty before the first."""
        with self._lock:
            return dict(self._last_headers)

    @property
    def last_path(self) -> str:
        with self._lock:
            return self._last_path

    def _record(self, path: str, headers: dict[str, str]) -> None:
        with self._lock:
            self._requests += 1
            self._last_headers = headers
            self._last_path = path

    def _opened(self, conn: socket.socket) -> None:
        with self._lock:
            self._connections.add(conn)

    def _closed(self, conn: socket.socket) -> None:
        with self._lock:
            self._connections.discard(conn)
