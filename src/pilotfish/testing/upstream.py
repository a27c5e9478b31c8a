"""A tiny HTTP/1.1 upstream that says who it is, so tests can see where Envoy routed.

Every request gets ``200`` with body = the upstream's name and header ``x-upstream: name``.
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler

from pilotfish.httpthread import HttpService, ThreadedHttp

__all__ = ["HttpUpstream"]


class _Handler(BaseHTTPRequestHandler):
    # Envoy keeps upstream connections alive: speak HTTP/1.1 and always set content-length.
    protocol_version = "HTTP/1.1"

    def _answer(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        if length:
            self.rfile.read(length)
        upstream: HttpUpstream = self.server.owner  # type: ignore[attr-defined]
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


class HttpUpstream(HttpService):
    """An HTTP/1.1 server on 127.0.0.1 (port chosen at bind time) in a daemon thread."""

    def __init__(self, name: str = "upstream", host: str = "127.0.0.1") -> None:
        self.name = name
        self.host = host
        self._lock = threading.Lock()
        self._requests = 0
        self._last_headers: dict[str, str] = {}
        self._last_path = ""
        self._http = ThreadedHttp(_Handler, self, host=host, name=f"HttpUpstream-{name}")

    def __repr__(self) -> str:
        where = f"{self.host}:{self._http.port}" if self._http.running else "stopped"
        return f"<HttpUpstream {self.name} {where}>"

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
