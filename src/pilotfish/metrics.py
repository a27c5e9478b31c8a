"""Prometheus metrics of an xDS server and of the controller that feeds it.

`Metrics` is an xDS `Callbacks`: give it to the server and it counts streams, connected proxies,
pushes, ACKs and NACKs, and times each push until its ACK. The controller side reports
translations (`observe_translation`) and config convergence (`observe_convergence`).

Every `Metrics` has its own `CollectorRegistry` (not prometheus_client's global one), so several
servers, or tests, can live in one process; `exposition()` renders it for `/metrics`.

Callbacks compose by wrapping: `Metrics(inner=controller)` (or setting `metrics.inner` later)
forwards every hook to `inner` after counting, and hands back `inner`'s result, so an `async`
inner hook is still awaited by the server.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from pilotfish.errors import UnknownTypeError
from pilotfish.protos import DeltaDiscoveryRequest, DiscoveryRequest, Node, resource_type
from pilotfish.sources import KINDS
from pilotfish.xds.callbacks import Callbacks, HookResult
from pilotfish.xds.events import Acked, Nacked, Sent

__all__ = ["Metrics"]

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_CONVERGENCE_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


def _type_label(type_url: str | None) -> str:
    """`"ads"` for an aggregated stream, else the type's short name (`"cds"`)."""
    if type_url is None:
        return "ads"
    try:
        return resource_type(type_url).short_name
    except UnknownTypeError:
        return type_url.rsplit(".", 1)[-1] or "unknown"


class Metrics(Callbacks):
    """Prometheus metrics of one xDS server, on a private registry (`self.registry`).

    Hooks run on the server's event loop; they only touch a few dicts under a lock and
    prometheus_client's thread-safe values. Per-stream state goes when the stream closes.
    `clock` (monotonic seconds) times pushes until their ACKs.
    """

    def __init__(
        self,
        inner: Callbacks | None = None,
        *,
        registry: CollectorRegistry | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.inner = inner
        self.registry = registry if registry is not None else CollectorRegistry()
        self._clock = clock
        self._lock = threading.Lock()
        self._stream_urls: dict[int, str | None] = {}  # open stream -> its type URL (None: ADS)
        self._stream_nodes: dict[int, str] = {}  # open stream -> node id (from first request)
        self._node_streams: dict[str, int] = {}  # node id -> open streams
        # open stream -> type URL -> (nonce, when, version) of the last response not yet answered
        self._pending: dict[int, dict[str, tuple[str, float, str]]] = {}
        # the latest push round: (node id, type URL) -> version still to be ACKed, and its start
        self._round: dict[tuple[str, str], str] = {}
        self._round_started: float | None = None
        self._kinds: set[str] = set(KINDS)
        r = self.registry
        self._streams = Gauge(
            "pilotfish_xds_streams", "Open xDS streams, by type (ads: aggregated).", ["type"],
            registry=r,
        )  # fmt: skip
        self._proxies = Gauge(
            "pilotfish_xds_connected_proxies", "Distinct node ids with an open stream.",
            registry=r,
        )  # fmt: skip
        self._pushes = Counter(
            "pilotfish_xds_pushes", "xDS responses sent, by type.", ["type"], registry=r
        )
        self._acks = Counter(
            "pilotfish_xds_acks", "xDS responses ACKed by the client, by type.", ["type"],
            registry=r,
        )  # fmt: skip
        self._nacks = Counter(
            "pilotfish_xds_nacks", "xDS responses rejected by the client, by type.", ["type"],
            registry=r,
        )  # fmt: skip
        self._refused = Counter(
            "pilotfish_xds_refused_streams",
            "Streams refused: no valid identity, or one that may not act as the node it claims.",
            ["code"],
            registry=r,
        )
        self._push_ack = Histogram(
            "pilotfish_xds_push_ack_seconds", "Time from a response being sent to its ACK.",
            ["type"], buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self._translation_seconds = Histogram(
            "pilotfish_translation_seconds", "Time to translate config for every proxy.",
            buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self._translations = Counter(
            "pilotfish_translations", "Translation passes over the connected proxies.",
            registry=r,
        )  # fmt: skip
        self._objects = Gauge(
            "pilotfish_config_objects", "Config objects being served, by kind.", ["kind"],
            registry=r,
        )  # fmt: skip
        self._errors = Gauge(
            "pilotfish_config_errors", "Config files whose latest version was refused.",
            registry=r,
        )  # fmt: skip
        self._convergence = Histogram(
            "pilotfish_convergence_seconds",
            "Time from a config change until every affected proxy ACKed it.",
            buckets=_CONVERGENCE_BUCKETS, registry=r,
        )  # fmt: skip

    # -- the controller side ------------------------------------------------------------------

    def watch_store(self, status: Callable[[], Mapping[str, Any]]) -> None:
        """Export a config store's health: `status()` gives `connected`, `revision` and
        `resyncs` (an `EtcdWatcher.status` as a dict), read at each scrape."""

        def read(field: str) -> Callable[[], float]:
            return lambda: float(status().get(field) or 0)

        r = self.registry
        Gauge(
            "pilotfish_config_store_up",
            "1 while the config store is connected; 0 while serving the last good config",
            registry=r,
        ).set_function(read("connected"))
        Gauge(
            "pilotfish_config_store_revision",
            "The store revision the served config reflects",
            registry=r,
        ).set_function(read("revision"))
        Gauge(
            "pilotfish_config_store_resyncs",
            "Full reloads because the watched revision was compacted away",
            registry=r,
        ).set_function(read("resyncs"))

    def observe_translation(self, seconds: float, counts: Mapping[str, int], errors: int) -> None:
        """A translation pass took `seconds`; `counts` objects of each kind are served and
        `errors` files are refused."""
        self._translation_seconds.observe(seconds)
        self._translations.inc()
        with self._lock:
            self._kinds.update(counts)
            kinds = sorted(self._kinds)
        for kind in kinds:  # kinds that went away read 0 rather than their last count
            self._objects.labels(kind).set(counts.get(kind, 0))
        self._errors.set(errors)

    def observe_convergence(self, seconds: float) -> None:
        """A config change reached (was ACKed by) every affected proxy after `seconds`."""
        self._convergence.observe(seconds)

    def expect(self, started: float, targets: Mapping[str, Mapping[str, str]]) -> None:
        """A push round began at `started` (this clock): convergence is observed once every
        proxy has ACKed the version of each type in `targets` (node id -> type URL -> version).
        A newer round replaces an unfinished one."""
        with self._lock:
            self._round = {(n, t): v for n, types in targets.items() for t, v in types.items()}
            self._round_started = started if self._round else None

    def exposition(self) -> bytes:
        """The metrics in Prometheus text format (`prometheus_client.CONTENT_TYPE_LATEST`)."""
        return generate_latest(self.registry)

    # -- xDS callbacks ------------------------------------------------------------------------

    def on_stream_open(self, stream_id: int, type_url: str | None) -> HookResult:
        with self._lock:
            self._stream_urls[stream_id] = type_url
        self._streams.labels(_type_label(type_url)).inc()
        return self.inner.on_stream_open(stream_id, type_url) if self.inner else None

    def on_stream_close(self, stream_id: int, node: Node | None) -> HookResult:
        with self._lock:
            opened = stream_id in self._stream_urls
            type_url = self._stream_urls.pop(stream_id, None)
            self._pending.pop(stream_id, None)
            node_id = self._stream_nodes.pop(stream_id, None)
            if node_id is not None:
                left = self._node_streams.get(node_id, 1) - 1
                if left > 0:
                    self._node_streams[node_id] = left
                else:
                    self._node_streams.pop(node_id, None)
            proxies = len(self._node_streams)
        if opened:
            self._streams.labels(_type_label(type_url)).dec()
        self._proxies.set(proxies)
        return self.inner.on_stream_close(stream_id, node) if self.inner else None

    @property
    def plain_acks_in_requests(self) -> bool:
        # ACKs are counted in `on_stream_ack`: only an inner hook may want them as requests.
        return self.inner is not None and self.inner.plain_acks_in_requests

    @property
    def node_extensions_in_requests(self) -> bool:
        # Only the node's id is read here: only an inner hook may want its extensions.
        return self.inner is not None and self.inner.node_extensions_in_requests

    def on_stream_request(
        self, stream_id: int, request: DiscoveryRequest | DeltaDiscoveryRequest
    ) -> HookResult:
        with self._lock:
            if stream_id not in self._stream_nodes and request.node.id:
                node_id = request.node.id
                self._stream_nodes[stream_id] = node_id
                self._node_streams[node_id] = self._node_streams.get(node_id, 0) + 1
                self._proxies.set(len(self._node_streams))
        return self.inner.on_stream_request(stream_id, request) if self.inner else None

    def on_stream_ack(self, stream_id: int, node: Node, ack: Acked) -> HookResult:
        converged: float | None = None
        now = self._clock()
        with self._lock:
            answered = self._answered(stream_id, ack.type_url, ack.nonce)
            if answered is not None and self._round:
                key = (node.id, ack.type_url)
                if self._round.get(key) == answered[2]:
                    del self._round[key]
                    if not self._round and self._round_started is not None:
                        converged, self._round_started = now - self._round_started, None
        if converged is not None:
            self._convergence.observe(max(0.0, converged))
        if answered is not None:
            label = _type_label(ack.type_url)
            self._acks.labels(label).inc()
            self._push_ack.labels(label).observe(max(0.0, now - answered[1]))
        return self.inner.on_stream_ack(stream_id, node, ack) if self.inner else None

    def _answered(self, stream_id: int, type_url: str, nonce: str) -> tuple[str, float, str] | None:
        """Lock held. The pending response a client's ACK or NACK of `nonce` answers, taken
        off the table (a repeat of the nonce answers nothing more)."""
        pending = self._pending.get(stream_id)
        if pending is None:
            return None
        last = pending.get(type_url)
        if last is None or last[0] != nonce:
            return None
        del pending[type_url]
        return last

    def on_stream_response(self, stream_id: int, node: Node, sent: Sent) -> HookResult:
        now = self._clock()
        with self._lock:
            if stream_id in self._stream_urls:  # not after close: nothing outlives its stream
                self._pending.setdefault(stream_id, {})[sent.type_url] = (
                    sent.nonce,
                    now,
                    sent.version,
                )
        self._pushes.labels(_type_label(sent.type_url)).inc()
        return self.inner.on_stream_response(stream_id, node, sent) if self.inner else None

    def on_stream_refused(self, stream_id: int, reason: str, code: str) -> HookResult:
        self._refused.labels(code.lower()).inc()
        return self.inner.on_stream_refused(stream_id, reason, code) if self.inner else None

    def on_nack(self, stream_id: int, node: Node, nack: Nacked) -> HookResult:
        with self._lock:
            self._answered(stream_id, nack.type_url, nack.nonce)
        self._nacks.labels(_type_label(nack.type_url)).inc()
        return self.inner.on_nack(stream_id, node, nack) if self.inner else None
