"""The admin HTTP server: health, readiness, Prometheus metrics and debug views.

`AdminServer(source, metrics)` serves, from a daemon thread (stdlib `ThreadingHTTPServer`):

- `GET /healthz` -> `ok`; `GET /readyz` -> `ready` once the config was translated, else 503
  (with a config store, a second line says whether it is connected; a store that is down does
  not make the server unready: it keeps serving the last good config);
- `GET /metrics` -> the `Metrics` registry in Prometheus text format;
- `GET /debug/syncz` -> per connected proxy and type: sent, ACKed and current versions, NACKs;
- `GET /debug/config_dump?proxy=ID` -> what the proxy was last given (secrets redacted);
- `GET /debug/config` -> the objects being served and why refused files were refused;
- `GET /debug/store` -> the config store's status (`store_status`), when there is one.

`source` is anything shaped like `AdminSource`; `pilotfish.controller.Controller` is one.
Bind it to loopback (the default) unless the network in front of it is trusted: the debug views
show the whole mesh config.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import Any, Protocol
from urllib.parse import parse_qs, urlsplit

from google.protobuf.json_format import MessageToDict
from prometheus_client import CONTENT_TYPE_LATEST

from pilotfish.cache import Snapshot, SnapshotCache
from pilotfish.errors import PilotfishError, ValidationError
from pilotfish.httpthread import HttpService, ThreadedHttp
from pilotfish.metrics import Metrics
from pilotfish.protos import RESOURCE_TYPES, Message
from pilotfish.sources import ConfigObject
from pilotfish.translators import Proxy, Translation

__all__ = ["AdminServer", "AdminSource", "ErrorSource"]

log = logging.getLogger("pilotfish.admin")

_JSON = "application/json"
_TEXT = "text/plain; charset=utf-8"
# Secret fields whose values a debug dump must not show.
_REDACTED_FIELDS = frozenset({"private_key", "password", "secret", "secrets", "keys"})
_TRANSLATION_TYPES = ("listeners", "routes", "clusters", "endpoints", "secrets")
_SHORT_NAMES = {"listeners": "lds", "routes": "rds", "clusters": "cds", "endpoints": "eds",
                "secrets": "sds"}  # fmt: skip


class ErrorSource(Protocol):
    """Where refused config is reported (`pilotfish.sources.ConfigStore` is one)."""

    def errors(self) -> dict[str, list[ValidationError]]:
        """Per file, why its latest text was refused."""
        ...


class AdminSource(Protocol):
    """What the admin server reads; `pilotfish.controller.Controller` implements it."""

    @property
    def ready(self) -> bool:
        """True once the config was translated at least once."""
        ...

    @property
    def store(self) -> ErrorSource: ...

    @property
    def cache(self) -> SnapshotCache: ...

    def proxies(self) -> Mapping[str, Proxy]:
        """Connected proxies by id."""
        ...

    def translation(self, proxy_id: str) -> Translation | None:
        """What a proxy was last given."""
        ...

    def objects(self) -> Sequence[ConfigObject]:
        """The objects being served."""
        ...


@dataclass(frozen=True, slots=True)
class _Reply:
    status: int
    content_type: str
    body: bytes


def store_line(status: Mapping[str, Any]) -> str:
    """One line on the config store: up, or down since when and serving what."""
    url, revision = status.get("url", "config store"), status.get("revision", 0)
    if status.get("connected"):
        return f"config store {url}: connected, at revision {revision}"
    since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(float(status.get("since", 0))))
    error = status.get("last_error") or "not connected"
    return (
        f"config store {url}: DOWN since {since} ({error}); "
        f"serving the last good config, revision {revision}"
    )


def _json(value: object, status: int = 200) -> _Reply:
    return _Reply(status, _JSON, json.dumps(value, indent=2).encode() + b"\n")


def _text(value: str, status: int = 200) -> _Reply:
    return _Reply(status, _TEXT, value.encode() + b"\n")


def _type_name(type_url: str) -> str:
    """`Cluster` for `type.googleapis.com/envoy.config.cluster.v3.Cluster`."""
    return type_url.rsplit(".", 1)[-1]


def _type_order(type_url: str) -> tuple[int, str]:
    row = RESOURCE_TYPES.get(type_url)
    return (row.order if row is not None else len(RESOURCE_TYPES), type_url)


def _redact(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: "[redacted]" if k in _REDACTED_FIELDS else _redact(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_redact(v) for v in value]
    return value


def _to_dict(message: Message) -> dict[str, Any]:
    # Envoy's own /config_dump spells fields as in the .proto files; so does this one.
    out: dict[str, Any] = MessageToDict(message, preserving_proto_field_name=True)
    return out


def _error_dict(error: ValidationError) -> dict[str, Any]:
    return {
        "kind": error.kind,
        "namespace": error.namespace,
        "name": error.name,
        "field": error.field,
        "reason": error.reason,
        "index": error.index,
        "message": str(error),
    }


def _snapshot(cache: SnapshotCache, proxy_id: str) -> Snapshot | None:
    try:
        return cache.get_snapshot(proxy_id)
    except KeyError:
        return None


def _version(snapshot: Snapshot | None, type_url: str) -> str | None:
    if snapshot is None:
        return None
    try:
        return snapshot.version(type_url)
    except PilotfishError:  # a type the snapshot does not know
        return None


class _Views:
    """The endpoints, as functions of the source: (query) -> reply."""

    def __init__(
        self,
        source: AdminSource,
        metrics: Metrics | None,
        store_status: Callable[[], Mapping[str, Any]] | None = None,
    ) -> None:
        self.source = source
        self.metrics = metrics
        self.store_status = store_status
        self.routes: dict[str, Callable[[dict[str, list[str]]], _Reply]] = {
            "/healthz": lambda _: _text("ok"),
            "/readyz": self.readyz,
            "/metrics": self.prometheus,
            "/debug/syncz": self.syncz,
            "/debug/config_dump": self.config_dump,
            "/debug/config": self.config,
            "/debug/store": self.store,
        }

    def readyz(self, query: dict[str, list[str]]) -> _Reply:
        if not self.source.ready:
            return _text("not ready", 503)
        if self.store_status is None:
            return _text("ready")
        return _text(f"ready\n{store_line(self.store_status())}")

    def store(self, query: dict[str, list[str]]) -> _Reply:
        if self.store_status is None:
            return _json({"error": "no config store: serving a directory"}, 404)
        return _json(dict(self.store_status()))

    def prometheus(self, query: dict[str, list[str]]) -> _Reply:
        if self.metrics is None:
            return _json({"error": "metrics are not enabled"}, 404)
        return _Reply(200, CONTENT_TYPE_LATEST, self.metrics.exposition())

    def syncz(self, query: dict[str, list[str]]) -> _Reply:
        cache = self.source.cache
        out = []
        for proxy_id, proxy in sorted(self.source.proxies().items()):
            status = cache.status(proxy_id)
            snapshot = _snapshot(cache, proxy_id)
            # The status is updated on the server's loop: copy its table in one step.
            statuses = sorted(
                status.types.items() if status else (), key=lambda i: _type_order(i[0])
            )
            types: dict[str, dict[str, Any]] = {}
            for type_url, type_status in statuses:
                nack = type_status.last_nack
                types[_type_name(type_url)] = {
                    "sent": type_status.sent_version,
                    "acked": type_status.acked_version,
                    "current": _version(snapshot, type_url),
                    "responses": type_status.responses_sent,
                    "acks": type_status.acks,
                    "nacks": type_status.nacks,
                    "last_nack": nack.message if nack is not None else None,
                    "last_nack_version": nack.version if nack is not None else None,
                }
            synced = bool(types) and all(t["acked"] == t["current"] for t in types.values())
            out.append(
                {
                    "proxy": proxy_id,
                    "kind": proxy.kind,
                    "namespace": proxy.namespace,
                    "types": types,
                    "synced": synced,
                }
            )
        return _json(out)

    def config_dump(self, query: dict[str, list[str]]) -> _Reply:
        proxy_id = (query.get("proxy") or [""])[0]
        if not proxy_id:
            return _json({"error": "missing query parameter: proxy"}, 400)
        translation = self.source.translation(proxy_id)
        if translation is None:
            return _json({"error": f"unknown proxy {proxy_id!r}"}, 404)
        snapshot = _snapshot(self.source.cache, proxy_id) or translation.snapshot()
        proxy = translation.proxy
        out: dict[str, Any] = {
            "proxy": proxy_id,
            "kind": proxy.kind,
            "namespace": proxy.namespace,
            "translator": translation.translator_version,
            "versions": {name: _version(snapshot, short) for name, short in _SHORT_NAMES.items()},
            "warnings": list(translation.warnings),
        }
        for name in _TRANSLATION_TYPES:
            messages: tuple[Message, ...] = getattr(translation, name)
            dumped = [_to_dict(m) for m in messages]
            out[name] = _redact(dumped) if name == "secrets" else dumped
        return _json(out)

    def config(self, query: dict[str, list[str]]) -> _Reply:
        objects = [
            {
                "kind": obj.kind,
                "namespace": obj.namespace,
                "name": obj.name,
                "file": obj.file,
                "index": obj.index,
            }
            for obj in self.source.objects()
        ]
        errors = {
            file: [_error_dict(e) for e in problems]
            for file, problems in self.source.store.errors().items()
        }
        return _json({"objects": objects, "errors": errors})


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 60  # seconds an idle keep-alive connection is kept

    def _reply(self, with_body: bool) -> None:
        url = urlsplit(self.path)
        views: _Views = self.server.owner  # type: ignore[attr-defined]
        view = views.routes.get(url.path)
        try:
            reply = (
                view(parse_qs(url.query))
                if view is not None
                else _json({"error": f"not found: {url.path}"}, 404)
            )
        except Exception:
            log.exception("admin %s failed", url.path)
            reply = _json({"error": "internal error"}, 500)
        self.send_response(reply.status)
        self.send_header("content-type", reply.content_type)
        self.send_header("content-length", str(len(reply.body)))
        self.send_header("cache-control", "no-store")
        self.end_headers()
        if with_body:
            self.wfile.write(reply.body)

    def do_GET(self) -> None:
        self._reply(with_body=True)

    def do_HEAD(self) -> None:
        self._reply(with_body=False)

    def log_message(self, format: str, *args: object) -> None:
        log.debug("%s %s", self.address_string(), format % args)


class AdminServer(HttpService):
    """The admin endpoints on `host:port` (port 0: any free port; see `.port` once started)."""

    def __init__(
        self,
        source: AdminSource,
        metrics: Metrics | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        store_status: Callable[[], Mapping[str, Any]] | None = None,
    ) -> None:
        self.host = host
        self._views = _Views(source, metrics, store_status)
        self._http = ThreadedHttp(_Handler, self._views, host=host, port=port,
                                  name="pilotfish-admin", poll_interval=0.1)  # fmt: skip

    def __repr__(self) -> str:
        where = f"{self.host}:{self.port}" if self._http.running else "stopped"
        return f"<AdminServer {where}>"
