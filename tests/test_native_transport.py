"""pilotfish's own HTTP/2 transport (`XdsServer(transport="native")`).

Bottom up: the sans-IO connection fed hand-built frames; then real grpc.aio clients (SotW and
delta ADS, big responses, cancel, shutdown, unknown methods, TLS with tokens and client
certificates); then real Envoy taking config and traffic through it.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import grpc.aio
import hpack
import hypothesis
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from hypothesis import given
from hypothesis import strategies as st

from pilotfish.bootstrap import envoy_bootstrap
from pilotfish.cache import SnapshotCache
from pilotfish.metrics import Metrics
from pilotfish.protos import (
    ADS_SERVICE,
    CLUSTER_TYPE,
    ENDPOINT_TYPE,
    LISTENER_TYPE,
    RESOURCE_TYPES,
    ROUTE_TYPE,
    DeltaDiscoveryRequest,
    DeltaDiscoveryResponse,
    DiscoveryRequest,
    DiscoveryResponse,
    Node,
    wire,
)
from pilotfish.testing import EnvoyProcess, HttpUpstream, ServerThread, free_port, wait_until
from pilotfish.testing.server import RecordingCallbacks
from pilotfish.xds import node as node_module
from pilotfish.xds.auth import Peer, SpiffeAuthenticator
from pilotfish.xds.callbacks import Callbacks
from pilotfish.xds.delta import DeltaStream
from pilotfish.xds.http2 import (
    ConnectionTerminated,
    ErrorCode,
    Event,
    MessageReceived,
    RequestReceived,
    ServerConnection,
    StreamClosed,
    StreamEnded,
    connection,
)
from pilotfish.xds.http2 import frames as f
from pilotfish.xds.http2.connection import MAX_FRAME
from pilotfish.xds.http2.grpc_messages import MessageReader, percent_encode
from pilotfish.xds.native import parse_address
from pilotfish.xds.requests import Received
from pilotfish.xds.server import Transport, XdsServer, native_tls
from pilotfish.xds.sotw import SotwStream
from tests.certs import Pki
from tests.helpers import mesh
from tests.test_admin import value as metrics_value
from tests.test_server import Recorder  # sync and async hooks
from tests.test_xds_auth import REVIEWS

A = {"a": [("127.0.0.1", 1)]}
ADS = ADS_SERVICE.stream or ""
DELTA_ADS = ADS_SERVICE.delta or ""
DENIED = grpc.StatusCode.PERMISSION_DENIED
UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED


# -- sans-IO: the connection fed hand-built bytes ----------------------------------------------


@dataclass(frozen=True)
class Frame:
    type: int
    flags: int
    stream_id: int
    payload: bytes


def parse(data: bytes) -> list[Frame]:
    """Split what the server wrote into frames (it only ever writes whole frames)."""
    out, pos = [], 0
    while pos < len(data):
        high, low, frame_type, flags, stream_id = f.HEAD.unpack_from(data, pos)
        length = high << 16 | low
        out.append(Frame(frame_type, flags, stream_id, data[pos + 9 : pos + 9 + length]))
        pos += 9 + length
    assert pos == len(data)
    return out


def grpc_message(payload: bytes, compressed: bool = False) -> bytes:
    return struct.pack(">BL", int(compressed), len(payload)) + payload


def data_frame(stream_id: int, body: bytes, flags: int = 0) -> bytes:
    return f.frame(f.DATA, flags, stream_id, body)


class Client:
    """The client end, by hand: encodes what it sends, decodes what the server wrote."""

    def __init__(self, conn: ServerConnection | None = None) -> None:
        self.conn = conn or ServerConnection()
        self.encoder = hpack.Encoder()
        self.decoder = hpack.Decoder()
        self.conn.initiate()
        self.greeting = parse(self.conn.data_to_send())

    def send(self, *chunks: bytes) -> list[Event]:
        events: list[Event] = []
        for chunk in chunks:
            events += self.conn.receive(chunk)
        return events

    def start(self, settings: Sequence[tuple[int, int]] = ()) -> list[Frame]:
        assert self.send(f.PREFACE + f.settings(settings)) == []
        return self.written()

    def headers(
        self, stream_id: int, path: str = "/svc/Method", extra: Sequence[tuple[str, str]] = ()
    ) -> bytes:
        block = self.encoder.encode(
            [
                (":method", "POST"),
                (":scheme", "http"),
                (":path", path),
                (":authority", "xds"),
                ("content-type", "application/grpc"),
                ("te", "trailers"),
                *extra,
            ]
        )
        return f.frame(f.HEADERS, f.END_HEADERS, stream_id, block)

    def written(self) -> list[Frame]:
        return parse(self.conn.data_to_send())

    def header_list(self, frame: Frame) -> dict[str, str]:
        return {
            name.decode(): value.decode()
            for name, value in self.decoder.decode(frame.payload, raw=True)
        }


def test_preface_settings_and_window() -> None:
    client = Client()
    settings, window = client.greeting
    assert (settings.type, window.type) == (f.SETTINGS, f.WINDOW_UPDATE)
    assert (f.Setting.INITIAL_WINDOW_SIZE, 4 * 1024 * 1024) in f.parse_settings(settings.payload)
    assert (f.Setting.MAX_FRAME_SIZE, MAX_FRAME) in f.parse_settings(settings.payload)
    assert struct.unpack(">L", window.payload)[0] == 16 * 1024 * 1024 - 65_535
    (ack,) = client.start()
    assert (ack.type, ack.flags, ack.payload) == (f.SETTINGS, f.ACK, b"")
    assert client.send(f.frame(f.SETTINGS, f.ACK, 0)) == []  # our settings, acknowledged


@pytest.mark.parametrize(
    ("first", "why"),
    [
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "not an HTTP/2 preface"),
        (f.PREFACE + f.frame(f.PING, 0, 0, b"12345678"), "expected SETTINGS first"),
    ],
)
def test_bad_start_is_a_connection_error(first: bytes, why: str) -> None:
    client = Client()
    (event,) = client.send(first)
    assert isinstance(event, ConnectionTerminated) and not event.remote
    assert (event.error_code, event.reason) == (ErrorCode.PROTOCOL_ERROR, why)
    (goaway,) = client.written()
    assert goaway.type == f.GOAWAY
    assert struct.unpack(">LL", goaway.payload[:8])[1] == ErrorCode.PROTOCOL_ERROR
    assert client.conn.closed and client.send(f.PREFACE) == []


def test_requests_and_messages_whole_and_split_byte_by_byte() -> None:
    messages = grpc_message(b"one") + grpc_message(b"") + grpc_message(b"three" * 5000)
    client = Client()
    client.start()
    stream = client.headers(1, extra=[("authorization", "Bearer t")])
    # A message split over DATA frames, and two messages in one frame.
    rest = messages[10:]
    wire = stream + data_frame(1, messages[:10]) + data_frame(1, rest[:16_000])
    wire += data_frame(1, rest[16_000:], f.END_STREAM)

    def names(events: list[Event]) -> list[object]:
        out: list[object] = []
        for event in events:
            if isinstance(event, RequestReceived):
                out.append((event.path, dict(event.headers)["authorization"]))
            elif isinstance(event, MessageReceived):
                out.append(event.data)
            else:
                out.append(type(event).__name__)
        return out

    whole = names(client.send(wire))
    assert whole == [("/svc/Method", "Bearer t"), b"one", b"", b"three" * 5000, "StreamEnded"]
    split = Client()
    split.start()
    assert names(split.send(*(wire[i : i + 1] for i in range(len(wire))))) == whole


def test_first_header_blocks_are_decoded_once_per_kind_of_client() -> None:
    def paths(client: Client, wire: bytes) -> list[str]:
        return [e.path for e in client.send(wire) if isinstance(e, RequestReceived)]

    first, second = Client(), Client()
    for client in (first, second):
        client.start()
    one = first.headers(1, "/svc/A")
    # Another connection whose client encodes the same first headers: the same bytes, so the
    # decoded headers are taken from the first connection's (no decoding at all).
    two = second.headers(1, "/svc/A")
    assert one == two
    assert paths(first, one) == paths(second, two) == ["/svc/A"]
    kept, headers = connection._FIRST_BLOCKS[one[9:]]
    assert headers == [
        (n.encode(), v.encode())
        for n, v in [(":method", "POST"), (":scheme", "http"), (":path", "/svc/A"),
                     (":authority", "xds"), ("content-type", "application/grpc"),
                     ("te", "trailers")]
    ]  # fmt: skip
    # The second connection keeps the first's bytes (to catch its decoder up), not its own.
    assert second.conn._undecoded is kept
    # A second stream on that connection refers to the HPACK table the first block filled:
    # the decoder catches up first, so it decodes right.
    again = second.headers(3, "/svc/A")
    assert len(again) < len(two)  # indexed from the dynamic table
    assert paths(second, again) == ["/svc/A"]
    assert paths(second, second.headers(5, "/svc/B")) == ["/svc/B"]
    # Blocks with credentials are never kept.
    third = Client()
    third.start()
    secret = third.headers(1, extra=[("authorization", "Bearer s3cret")])
    assert paths(third, secret) == ["/svc/Method"]
    assert secret[9:] not in connection._FIRST_BLOCKS


def test_continuation_padding_and_priority() -> None:
    client = Client()
    client.start()
    block = client.encoder.encode(
        [(":method", "POST"), (":path", "/svc/Padded"), ("x-big", "v" * 300)]
    )
    padded_priority = bytes((7,)) + b"\x00\x00\x00\x00\x10" + block[:50] + b"\x00" * 7
    flags = f.PADDED | f.PRIORITY_FLAG
    events = client.send(
        f.frame(f.HEADERS, flags, 1, padded_priority),
        f.frame(f.CONTINUATION, 0, 1, block[50:100]),
        f.frame(f.CONTINUATION, f.END_HEADERS, 1, block[100:]),
        f.frame(f.PRIORITY, 0, 1, b"\x00\x00\x00\x00\x10"),
        f.frame(0xEE, 0, 0, b"an extension frame: ignored"),
        f.frame(f.DATA, f.PADDED, 1, bytes((3,)) + grpc_message(b"hi") + b"\x00\x00\x00"),
    )
    request, message = events
    assert isinstance(request, RequestReceived) and request.path == "/svc/Padded"
    assert dict(request.headers)["x-big"] == "v" * 300
    assert isinstance(message, MessageReceived) and message.data == b"hi"

    broken = Client()
    broken.start()
    interleaved = broken.send(
        f.frame(f.HEADERS, 0, 1, block[:50]), f.frame(f.PING, 0, 0, b"12345678")
    )
    assert [(type(e), e.reason) for e in interleaved if isinstance(e, ConnectionTerminated)] == [
        (ConnectionTerminated, "expected CONTINUATION")
    ]
    overpadded = Client()
    overpadded.start()
    overpadded.send(overpadded.headers(1))
    (error,) = overpadded.send(f.frame(f.DATA, f.PADDED, 1, bytes((9,)) + b"ab"))
    assert isinstance(error, ConnectionTerminated)
    assert error.reason == "padding longer than the frame"


def test_send_side_flow_control_waits_for_window_updates() -> None:
    client = Client()
    client.start()
    client.send(client.headers(1))
    payload = bytes(range(256)) * 400  # 102,400 bytes: more than both 65,535 windows
    assert client.conn.send_message(1, payload)
    client.conn.end_stream(1)  # the trailers wait behind the data
    first = client.written()
    headers, *data = first
    assert headers.type == f.HEADERS and not headers.flags & f.END_STREAM
    assert all(frame.type == f.DATA and len(frame.payload) <= 16_384 for frame in data)
    assert sum(len(frame.payload) for frame in data) == 65_535
    assert client.conn.buffered(1) == len(payload) + 5 - 65_535

    client.send(f.window_update(1, 100_000))  # the connection's window is still empty
    assert client.written() == []
    client.send(f.window_update(0, 20_000))
    more = client.written()
    assert [len(frame.payload) for frame in more] == [16_384, 3_616]
    client.send(f.window_update(0, 100_000))
    rest = client.written()
    *tail, trailers = rest
    received = b"".join(frame.payload for frame in [*data, *more, *tail])
    assert received == grpc_message(payload)
    assert trailers.type == f.HEADERS and trailers.flags & f.END_STREAM
    assert client.header_list(headers) == {":status": "200", "content-type": "application/grpc"}
    assert client.header_list(trailers) == {"grpc-status": "0"}
    # The client had not half-closed: what it still sends is ignored until it does.
    assert client.conn.open_streams == 1
    assert client.send(data_frame(1, grpc_message(b"late ack"))) == []
    assert client.send(data_frame(1, b"", f.END_STREAM)) == []
    assert client.conn.open_streams == 0


def test_a_message_in_two_parts_goes_out_as_one() -> None:
    # The prepared body (shared by every stream) and the stream's nonce field are queued as
    # they are: the body is copied once, into the write, and never concatenated per stream.
    client = Client()
    client.start()
    client.send(client.headers(1))
    body, tail = bytes(range(256)) * 40, wire.nonce_field("42")
    assert client.conn.send_message(1, body, tail)
    assert any(chunk is body for chunk in client.conn._out)
    _, data = client.written()
    assert data.payload == grpc_message(body + tail)
    # Through small windows the message is cut anywhere, in the tail too.
    small = Client()
    small.start([(f.Setting.INITIAL_WINDOW_SIZE, 1_000)])
    small.send(small.headers(1), f.window_update(0, 1_000_000))
    body = bytes(range(256)) * 100
    small.conn.send_message(1, body, tail)
    small.conn.end_stream(1)
    frames = small.written()[1:]
    while frames[-1].type == f.DATA:
        small.send(f.window_update(1, 1_000))
        frames += small.written()
    *data_frames, trailers = frames
    assert all(len(frame.payload) <= 1_000 for frame in data_frames)
    assert b"".join(frame.payload for frame in data_frames) == grpc_message(body + tail)
    assert small.header_list(trailers) == {"grpc-status": "0"}


def test_peer_settings_resize_windows_and_frames() -> None:
    client = Client()
    client.start([(f.Setting.INITIAL_WINDOW_SIZE, 1_000)])
    client.send(client.headers(1), f.window_update(0, 1_000_000))
    client.conn.send_message(1, b"x" * 50_000)
    _, data = client.written()
    assert len(data.payload) == 1_000 and client.conn.stream_window(1) == 0
    # A larger initial window opens every stream's window by the difference.
    bigger = [(f.Setting.INITIAL_WINDOW_SIZE, 100_000), (f.Setting.MAX_FRAME_SIZE, 32_768)]
    assert client.send(f.settings(bigger)) == []
    (ack, *frames) = client.written()
    assert ack.type == f.SETTINGS and ack.flags == f.ACK
    assert [len(frame.payload) for frame in frames] == [32_768, 50_005 - 1_000 - 32_768]
    assert client.conn.stream_window(1) == 100_000 - 50_005


def test_receive_windows_are_topped_up_when_half_used() -> None:
    client = Client(ServerConnection(initial_window=100_000, connection_window=300_000))
    client.start()
    client.send(client.headers(1), client.headers(3))

    def frames(stream_id: int, body: bytes) -> list[bytes]:
        return [data_frame(stream_id, body[i : i + 10_000]) for i in range(0, len(body), 10_000)]

    message = client.send(*frames(1, grpc_message(b"a" * 49_995)))
    assert [len(e.data) for e in message if isinstance(e, MessageReceived)] == [49_995]
    (stream_update,) = client.written()
    assert (stream_update.type, stream_update.stream_id) == (f.WINDOW_UPDATE, 1)
    assert struct.unpack(">L", stream_update.payload)[0] == 50_000
    client.send(*frames(3, grpc_message(b"b" * 99_995)))
    updates = [
        (frame.stream_id, struct.unpack(">L", frame.payload)[0]) for frame in client.written()
    ]
    assert sorted(updates) == [(0, 150_000), (3, 50_000), (3, 50_000)]


def test_ping_is_answered_and_its_ack_ignored() -> None:
    client = Client()
    client.start()
    assert client.send(f.frame(f.PING, 0, 0, b"opaque!!")) == []
    (pong,) = client.written()
    assert (pong.type, pong.flags, pong.payload) == (f.PING, f.ACK, b"opaque!!")
    client.send(f.frame(f.PING, f.ACK, 0, b"whatever"))
    assert client.written() == []


def test_reset_by_the_client_and_half_close() -> None:
    client = Client()
    client.start()
    client.send(client.headers(1), client.headers(3))
    (closed,) = client.send(f.rst_stream(1, ErrorCode.CANCEL))
    assert isinstance(closed, StreamClosed) and (closed.stream_id, closed.error_code) == (1, 8)
    assert not client.conn.send_message(1, b"late")
    assert client.send(data_frame(1, grpc_message(b"late"))) == []  # a closed stream: ignored
    (ended,) = client.send(data_frame(3, b"", f.END_STREAM))
    assert isinstance(ended, StreamEnded) and ended.stream_id == 3
    client.conn.end_stream(3, 3, "bad request: 100% wrong")
    (trailers_only,) = client.written()
    assert trailers_only.flags & f.END_STREAM  # no RST: both sides are closed
    assert client.header_list(trailers_only) == {
        ":status": "200",
        "content-type": "application/grpc",
        "grpc-status": "3",
        "grpc-message": "bad request: 100%25 wrong",
    }
    assert client.conn.open_streams == 0
    assert percent_encode("naïve\n") == "na%C3%AFve%0A"


def test_goaway_both_ways() -> None:
    client = Client()
    client.start()
    client.send(client.headers(1))
    client.conn.goaway()
    (goaway,) = client.written()
    assert goaway.type == f.GOAWAY and struct.unpack(">LL", goaway.payload) == (1, 0)
    assert client.send(client.headers(3)) == []  # after GOAWAY, new streams are refused
    (refused,) = client.written()
    assert (refused.type, refused.stream_id) == (f.RST_STREAM, 3)
    assert struct.unpack(">L", refused.payload)[0] == ErrorCode.REFUSED_STREAM
    assert client.conn.send_message(1, b"still served")  # streams open before go on

    (theirs,) = client.send(f.goaway(0, ErrorCode.NO_ERROR, b"bye"))
    assert isinstance(theirs, ConnectionTerminated) and theirs.remote
    assert (theirs.error_code, theirs.reason) == (0, "bye")


def test_a_message_split_over_frames_is_buffered_until_whole_and_then_let_go() -> None:
    reader = MessageReader()
    message = struct.pack(">BI", 0, 10) + b"0123456789"
    assert reader.feed(message, 0, 7) == [] and reader.partial == 7
    two = message[7:] + message  # the rest, then a whole one
    assert reader.feed(two, 0, len(two)) == [b"0123456789", b"0123456789"]
    assert reader.partial == 0 and reader._buffer is None  # an idle stream holds no buffer
    assert reader.feed(message, 0, len(message)) == [b"0123456789"]  # the one-slice case


def test_grpc_framing_errors_end_only_that_stream() -> None:
    client = Client(ServerConnection(max_message_size=100))
    client.start()
    client.send(client.headers(1), client.headers(3), client.headers(5))
    (compressed,) = client.send(data_frame(1, grpc_message(b"zz", compressed=True)))
    (oversized,) = client.send(data_frame(3, grpc_message(b"z" * 101)))
    assert isinstance(compressed, StreamClosed) and isinstance(oversized, StreamClosed)
    assert "compressed" in compressed.reason and "larger than the limit" in oversized.reason
    trailers = [frame for frame in client.written() if frame.type == f.HEADERS]
    statuses = [client.header_list(frame)["grpc-status"] for frame in trailers]
    assert statuses == ["12", "8"]
    (message,) = client.send(data_frame(5, grpc_message(b"fine")))
    assert isinstance(message, MessageReceived) and message.data == b"fine"


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (data_frame(9, grpc_message(b"x")), ErrorCode.PROTOCOL_ERROR),  # an idle stream
        (f.frame(f.DATA, 0, 1, b"x" * (MAX_FRAME + 1)), ErrorCode.FRAME_SIZE_ERROR),
        (f.frame(f.PING, 0, 0, b"short"), ErrorCode.FRAME_SIZE_ERROR),
        (f.frame(f.SETTINGS, 0, 0, b"\x00\x04\xff\xff\xff\xff"), ErrorCode.FLOW_CONTROL_ERROR),
        (f.frame(f.PUSH_PROMISE, f.END_HEADERS, 1, b"\x00\x00\x00\x02"), ErrorCode.PROTOCOL_ERROR),
        (f.frame(f.HEADERS, f.END_HEADERS, 2, b"\x82"), ErrorCode.PROTOCOL_ERROR),
        (f.frame(f.HEADERS, f.END_HEADERS, 7, b"\xff\xff\xff"), ErrorCode.COMPRESSION_ERROR),
        (f.window_update(0, 0), ErrorCode.PROTOCOL_ERROR),
    ],
)
def test_connection_errors_answer_with_goaway(frame: bytes, code: ErrorCode) -> None:
    client = Client()
    client.start()
    client.send(client.headers(1))
    (event,) = client.send(frame)
    assert isinstance(event, ConnectionTerminated) and event.error_code == code
    (goaway,) = client.written()
    assert goaway.type == f.GOAWAY and struct.unpack(">LL", goaway.payload[:8]) == (1, code)


def test_a_smaller_hpack_table_is_signalled_before_our_next_headers() -> None:
    client = Client()
    client.start([(f.Setting.HEADER_TABLE_SIZE, 0)])
    client.send(client.headers(1))
    client.conn.send_message(1, b"m")
    headers, _ = client.written()
    assert headers.payload[0] == 0x20  # dynamic table size update to 0, first
    client.decoder.max_allowed_table_size = 0
    assert client.header_list(headers)[":status"] == "200"


def test_parse_address() -> None:
    assert parse_address("127.0.0.1:0") == ("127.0.0.1", 0)
    assert parse_address("[::1]:18000") == ("::1", 18000)
    assert parse_address("[::]:18000") == (None, 18000)
    assert parse_address(":9") == (None, 9)
    with pytest.raises(ValueError, match="not host:port"):
        parse_address("localhost")


# -- real grpc.aio clients ---------------------------------------------------------------------


class Stream:
    """A raw ADS stream (SotW or delta) over a grpc.aio channel."""

    def __init__(self, channel: grpc.aio.Channel, method: str = ADS, delta: bool = False) -> None:
        self.queue: asyncio.Queue[DiscoveryRequest | DeltaDiscoveryRequest | None] = asyncio.Queue()
        response = DeltaDiscoveryResponse if delta else DiscoveryResponse
        call = channel.stream_stream(
            method, request_serializer=_serialize, response_deserializer=response.FromString
        )
        self.call = call(self._requests())

    async def _requests(self) -> AsyncIterator[DiscoveryRequest | DeltaDiscoveryRequest]:
        while (request := await self.queue.get()) is not None:
            yield request

    async def send(self, request: DiscoveryRequest | DeltaDiscoveryRequest | None) -> None:
        await self.queue.put(request)

    async def read(self, timeout: float = 5.0) -> DiscoveryResponse:
        response = await asyncio.wait_for(self.call.read(), timeout)
        assert isinstance(response, DiscoveryResponse), response
        return response

    async def read_delta(self, timeout: float = 5.0) -> DeltaDiscoveryResponse:
        response = await asyncio.wait_for(self.call.read(), timeout)
        assert isinstance(response, DeltaDiscoveryResponse), response
        return response

    async def ack(self, response: DiscoveryResponse) -> None:
        await self.send(
            DiscoveryRequest(
                type_url=response.type_url,
                version_info=response.version_info,
                response_nonce=response.nonce,
            )
        )


def _serialize(request: DiscoveryRequest | DeltaDiscoveryRequest) -> bytes:
    data: bytes = request.SerializeToString()
    return data


@dataclass
class Served:
    cache: SnapshotCache
    server: XdsServer
    channel: grpc.aio.Channel
    log: list[str]


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    cache, recorder = SnapshotCache(), Recorder()
    server = XdsServer(cache, callbacks=recorder, transport="native")
    port = await server.start()
    channel = grpc.aio.insecure_channel(
        f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)]
    )
    try:
        yield Served(cache, server, channel, recorder.log)
    finally:
        await channel.close()
        await server.stop(0)


async def settle(condition: Callable[[], bool]) -> None:
    for _ in range(250):
        if condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not met in 5 s")


async def test_sotw_ads_subscribe_ack_push_and_nack(served: Served) -> None:
    cache, server = served.cache, served.server
    cache.set_snapshot("n", mesh(A, "a"))
    stream = Stream(served.channel)
    await stream.send(DiscoveryRequest(type_url=CLUSTER_TYPE, node=Node(id="n", cluster="web")))
    clusters = await stream.read()
    assert clusters.version_info == cache.get_snapshot("n").version(CLUSTER_TYPE)
    assert [r.type_url for r in clusters.resources] == [CLUSTER_TYPE]
    await stream.ack(clusters)
    await stream.send(DiscoveryRequest(type_url=ENDPOINT_TYPE, resource_names=["a"]))
    endpoints = await stream.read()
    await stream.ack(endpoints)
    await settle(lambda: bool(server.describe_streams()))
    (view,) = server.describe_streams()
    assert (view["node_id"], view["variant"]) == ("n", "sotw")
    await settle(lambda: server.describe_streams()[0]["types"][ENDPOINT_TYPE]["acked_version"])

    pushed = mesh({"a": [("127.0.0.1", 1)], "b": []}, "a")
    cache.set_snapshot("n", pushed)
    update = await stream.read()
    assert update.version_info == pushed.version(CLUSTER_TYPE)
    assert len(update.resources) == 2
    await stream.ack(update)
    await stream.send(DiscoveryRequest(type_url=LISTENER_TYPE))
    listeners = await stream.read()
    await stream.send(
        DiscoveryRequest(
            type_url=LISTENER_TYPE,
            response_nonce=listeners.nonce,
            error_detail={"message": "no thanks"},
        )
    )
    await settle(lambda: "nack no thanks" in served.log)
    status = cache.status("n")
    assert status is not None and status.types[LISTENER_TYPE].acked_version == ""
    assert served.log[0] == "open None"
    assert served.log.count("sent Cluster") == 2


async def test_delta_ads(served: Served) -> None:
    cache = served.cache
    cache.set_snapshot("n", mesh(A, "a"))
    stream = Stream(served.channel, DELTA_ADS, delta=True)
    await stream.send(
        DeltaDiscoveryRequest(
            type_url=CLUSTER_TYPE, node=Node(id="n"), resource_names_subscribe=["*"]
        )
    )
    first = await stream.read_delta()
    assert [r.name for r in first.resources] == ["a"]
    await stream.send(DeltaDiscoveryRequest(type_url=CLUSTER_TYPE, response_nonce=first.nonce))
    cache.set_snapshot("n", mesh({**A, "b": []}, "a"))
    second = await stream.read_delta()
    assert [r.name for r in second.resources] == ["b"]  # only what changed
    assert served.server.describe_streams()[0]["variant"] == "delta"


async def test_a_response_bigger_than_the_clients_windows(served: Served) -> None:
    # 2,000 clusters: far more than a frame (16 KB) and grpc's initial 64 KB windows.
    clusters = {f"cluster-{i:04d}-{'x' * 40}": [("127.0.0.1", 1)] for i in range(2000)}
    big = mesh(clusters, "cluster-0000-" + "x" * 40)
    served.cache.set_snapshot("n", big)
    streams = [Stream(served.channel) for _ in range(3)]
    for stream in streams:
        await stream.send(DiscoveryRequest(type_url=CLUSTER_TYPE, node=Node(id="n")))
    for stream in streams:
        response = await stream.read(timeout=10)
        assert len(response.resources) == 2000 and response.ByteSize() > 200_000
        await stream.ack(response)
    served.cache.set_snapshot("n", mesh({**clusters, "one-more": []}, "one-more"))
    for stream in streams:
        assert len((await stream.read(timeout=10)).resources) == 2001


async def test_every_per_type_service_answers_its_type(served: Served) -> None:
    served.cache.set_snapshot("n", mesh(A, "a"))
    for row in RESOURCE_TYPES.values():
        if row.service.stream is None:
            continue
        stream = Stream(served.channel, row.service.stream)
        await stream.send(DiscoveryRequest(node=Node(id="n")))
        assert (await stream.read()).type_url == row.type_url
        stream.call.cancel()


async def test_unknown_method_is_unimplemented(served: Served) -> None:
    call: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = served.channel.unary_unary(
        "/no.such.Service/Nothing"
    )
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await asyncio.wait_for(call(b""), 5)
    assert failure.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert served.server.stream_count == 0


async def test_protocol_errors_end_the_stream_with_invalid_argument(served: Served) -> None:
    ads = Stream(served.channel)
    await ads.send(DiscoveryRequest(node=Node(id="n")))
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await ads.read()
    assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "without type_url" in (failure.value.details() or "")
    assert served.server.stream_count == 0


async def test_client_cancel_and_half_close_close_the_session(served: Served) -> None:
    cache, server = served.cache, served.server
    cache.set_snapshot("n", mesh(A, "a"))
    cancelled, half_closed = Stream(served.channel), Stream(served.channel)
    for stream in (cancelled, half_closed):
        await stream.send(DiscoveryRequest(type_url=CLUSTER_TYPE, node=Node(id="n")))
        await stream.ack(await stream.read())
    await settle(lambda: cache.watch_count() == 2)
    assert server.stream_count == 2
    cancelled.call.cancel()
    await settle(lambda: server.stream_count == 1)
    await half_closed.send(None)  # the client ends its side: the server ends the call, OK
    assert await asyncio.wait_for(half_closed.call.read(), 5) is grpc.aio.EOF
    assert await half_closed.call.code() == grpc.StatusCode.OK
    await settle(lambda: server.stream_count == 0)
    assert cache.watch_count() == 0 and cache.status_keys() == []
    assert served.log.count("close n") == 2


async def test_streams_of_one_connection_come_and_go_on_their_own(served: Served) -> None:
    # One channel, one connection: its first stream and the others are kept apart (the first
    # without a table), and any of them may end first.
    cache, server = served.cache, served.server
    version = 0

    def push() -> str:
        nonlocal version
        version += 1
        cache.set_snapshot("n", mesh(A, "a", connect_timeout=version))
        return cache.get_snapshot("n").version(CLUSTER_TYPE)

    async def opened() -> Stream:
        stream = Stream(served.channel)
        await stream.send(DiscoveryRequest(type_url=CLUSTER_TYPE, node=Node(id="n")))
        await stream.ack(await stream.read())
        return stream

    async def all_get(streams: list[Stream], want: str) -> None:
        for stream in streams:
            update = await stream.read()
            assert update.version_info == want
            await stream.ack(update)

    push()
    first, second, third = [await opened() for _ in range(3)]
    assert server.stream_count == 3
    first.call.cancel()
    await settle(lambda: server.stream_count == 2)
    await all_get([second, third], push())
    fourth = await opened()
    third.call.cancel()
    await settle(lambda: server.stream_count == 2)
    last = push()
    await all_get([second, fourth], last)
    # Once the ACKs are in: a client write racing the trailers fails the call in grpc.aio.
    await settle(
        lambda: (
            [v["types"][CLUSTER_TYPE]["acked_version"] for v in server.describe_streams()]
            == [last, last]
        )
    )
    await server.stop(grace=2)
    for stream in (second, fourth):
        assert await asyncio.wait_for(stream.call.read(), 5) is grpc.aio.EOF
        assert await stream.call.code() == grpc.StatusCode.OK
    assert server.stream_count == 0 and cache.watch_count() == 0


async def test_shutdown_ends_streams_politely_and_cleans_up(served: Served) -> None:
    cache, server = served.cache, served.server
    cache.set_snapshot("n", mesh(A, "a"))
    stream = Stream(served.channel)
    await stream.send(DiscoveryRequest(type_url=CLUSTER_TYPE, node=Node(id="n")))
    await stream.ack(await stream.read())
    # Once the ACK is in: a client write racing the trailers fails the call in grpc.aio.
    await settle(lambda: server.describe_streams()[0]["types"][CLUSTER_TYPE]["acked_version"])
    assert server.stream_count == 1
    await server.stop(grace=2)
    assert await asyncio.wait_for(stream.call.read(), 5) is grpc.aio.EOF
    assert await stream.call.code() == grpc.StatusCode.OK
    assert server.stream_count == 0
    assert cache.status_keys() == [] and cache.watch_count() == 0
    assert served.log[-1] == "close n"


async def test_async_context_manager_and_address() -> None:
    cache = SnapshotCache()
    cache.set_snapshot("n", mesh(A, "a"))
    async with XdsServer(cache, transport="native") as server:
        host, port = server.address
        assert host == "127.0.0.1" and port > 0
        async with grpc.aio.insecure_channel(f"{host}:{port}") as channel:
            stream = Stream(channel)
            await stream.send(DiscoveryRequest(type_url=CLUSTER_TYPE, node=Node(id="n")))
            assert (await stream.read()).type_url == CLUSTER_TYPE
            assert server.stream_count == 1
    assert server.stream_count == 0


def test_credentials_must_fit_the_transport() -> None:
    with pytest.raises(TypeError, match=r"ssl\.SSLContext"):
        XdsServer(SnapshotCache(), transport="native", credentials=grpc.local_server_credentials())
    with pytest.raises(ValueError, match="needs ca_pem"):
        native_tls(b"", b"")


@pytest.mark.parametrize("transport", ["native", "grpc"])
async def test_connections_are_recycled_at_their_maximum_age(transport: Transport) -> None:
    # After the age (±10%) a GOAWAY, after the grace the stream ends: with status OK on native
    # (the proxy reconnects at once), UNAVAILABLE on grpc, which closes the connection.
    cache = SnapshotCache()
    cache.set_snapshot("n", mesh(A, "a"))
    age, grace = 0.3, 0.2
    server = XdsServer(
        cache, transport=transport, max_connection_age=age, max_connection_age_grace=grace
    )
    port = await server.start()
    loop = asyncio.get_running_loop()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            for _ in range(2):  # the second stream on a new connection, as a proxy reconnects
                started = loop.time()
                stream = Stream(channel)
                await stream.send(DiscoveryRequest(type_url=CLUSTER_TYPE, node=Node(id="n")))
                await stream.ack(await stream.read())
                if transport == "native":
                    assert await asyncio.wait_for(stream.call.read(), 5) is grpc.aio.EOF
                    assert await stream.call.code() == grpc.StatusCode.OK
                else:
                    with pytest.raises(grpc.aio.AioRpcError) as ended:
                        await asyncio.wait_for(stream.call.read(), 5)
                    assert ended.value.code() == grpc.StatusCode.UNAVAILABLE
                assert 0.9 * age + grace - 0.05 < loop.time() - started < 4.5
                await settle(lambda: server.stream_count == 0)
    finally:
        await server.stop(0)


def test_max_connection_age_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_connection_age must be positive"):
        XdsServer(SnapshotCache(), transport="native", max_connection_age=0)
    with pytest.raises(ValueError, match="grace must not be negative"):
        XdsServer(SnapshotCache(), max_connection_age=1, max_connection_age_grace=-1)


# -- TLS and authentication (tests/test_xds_auth.py runs its tests on both transports) ---------


def native_thread(
    cache: SnapshotCache, address: str = "127.0.0.1:0", **kwargs: object
) -> ServerThread:
    """A `ServerThread` running the native transport."""
    return ServerThread(cache, address=address, transport="native", **kwargs)  # type: ignore[arg-type]


def test_peer_from_tls_reads_the_certificate(pki: Pki) -> None:
    issued = pki.ca.issue(*REVIEWS)
    der = x509.load_pem_x509_certificate(issued.cert_pem).public_bytes(Encoding.DER)
    peer = Peer.from_tls(der, [("authorization", "Bearer t")])
    assert peer.auth_context["peer_spiffe_id"] == (b"spiffe://cluster.local/ns/default/sa/reviews",)
    assert SpiffeAuthenticator().authenticate(peer).service_account == "reviews"
    assert peer.values("Authorization") == ["Bearer t"]
    assert Peer.from_tls(None).auth_context == {"transport_security_type": (b"ssl",)}


# -- real Envoy ---------------------------------------------------------------------------------


@pytest.fixture
def upstreams() -> Iterator[dict[str, list[tuple[str, int]]]]:
    started = [HttpUpstream(name).start() for name in ("blue", "green")]
    try:
        yield {upstream.name: [upstream.address] for upstream in started}
    finally:
        for upstream in started:
            upstream.stop()


@pytest.fixture
def taken(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The type of each request taken as a plain ACK from its bytes (`SotwStream.ack`,
    `DeltaStream.ack`)."""
    types: list[str] = []
    for protocol in (SotwStream, DeltaStream):
        ack = protocol.ack

        def counted(
            self: SotwStream | DeltaStream,
            raw: bytes,
            ack: Callable[[Any, bytes], Received | None] = ack,
        ) -> Received | None:
            received = ack(self, raw)
            if received is not None:
                types.append(received.type_url)
            return received

        monkeypatch.setattr(protocol, "ack", counted)
    return types


@pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])
def test_envoy_takes_config_and_traffic_over_native(
    delta: bool, upstreams: dict[str, list[tuple[str, int]]], taken: list[str]
) -> None:
    # Envoy's ACKs are taken from their bytes (`SotwStream.ack`, `DeltaStream.ack`, with no
    # callbacks), and must still be recorded as ACKs of what was sent. With no callbacks
    # nothing reads the extensions Envoy's node lists either: the transport cuts them out of
    # the first request's bytes before parsing it (`node.without_extensions`).
    node_module._RUNS.clear()
    cache, port = SnapshotCache(), free_port()
    cache.set_snapshot("sidecar", mesh(upstreams, "blue", listener_port=port))
    with native_thread(cache) as thread:
        bootstrap = envoy_bootstrap(
            node_id="sidecar", cluster="test", xds_address=thread.address, delta=delta
        )
        with EnvoyProcess(bootstrap, name="sidecar") as envoy:
            envoy.wait_ready()
            assert envoy.request(port, "/").body == "blue"
            green = mesh(upstreams, "green", listener_port=port)
            cache.set_snapshot("sidecar", green)
            wait_until(lambda: envoy.request(port, "/").body == "green", message="route moved")
            assert envoy.dynamic_route_configs() == {
                "local_route": green.resources(ROUTE_TYPE)["local_route"].version
                if delta
                else green.version(ROUTE_TYPE)
            }
            rejected = envoy.stats(filter="update_rejected")
            assert rejected and not any(rejected.values()), rejected
            updates = envoy.stat("http.ingress_http.rds.local_route.update_success")
            assert updates >= 2
            assert isinstance(thread.server, XdsServer) and thread.server.stream_count == 1
            assert ROUTE_TYPE in taken and CLUSTER_TYPE in taken
            (handler,) = thread.server._streams.live.values()
            assert handler.session is not None
            kept = handler.session.protocol.node
            assert kept is not None and kept.id == "sidecar" and not kept.extensions
            (run,) = node_module._RUNS  # the Envoy's list, learned from its bytes
            assert len(run) > 20_000
            status = cache.status("sidecar")
            assert status is not None
            wait_until(
                lambda: status.types[ROUTE_TYPE].acked_version == green.version(ROUTE_TYPE),
                message="Envoy's ACK of the new routes recorded",
            )


@pytest.mark.parametrize("hooks", ["metrics", "recording"])
def test_callbacks_see_envoys_acks_whether_parsed_or_not(
    hooks: str, upstreams: dict[str, list[tuple[str, int]]], taken: list[str]
) -> None:
    # `pilotfish serve`'s callbacks (Metrics) leave plain ACKs out of on_stream_request: those
    # are taken from their bytes and reach on_stream_ack. Callbacks that want every request
    # (the default) get them parsed, and on_stream_ack as well.
    metrics, recording = Metrics(), RecordingCallbacks()
    callbacks = metrics if hooks == "metrics" else recording
    cache, port = SnapshotCache(), free_port()
    cache.set_snapshot("sidecar", mesh(upstreams, "blue", listener_port=port))
    with native_thread(cache, callbacks=callbacks) as thread:
        bootstrap = envoy_bootstrap(node_id="sidecar", cluster="test", xds_address=thread.address)
        with EnvoyProcess(bootstrap, name="sidecar") as envoy:
            envoy.wait_ready()
            green = mesh(upstreams, "green", listener_port=port)
            cache.set_snapshot("sidecar", green)
            wait_until(lambda: envoy.request(port, "/").body == "green", message="route moved")
            status = cache.status("sidecar")
            assert status is not None
            wait_until(
                lambda: status.types[ROUTE_TYPE].acked_version == green.version(ROUTE_TYPE),
                message="Envoy's ACK of the new routes recorded",
            )
    if hooks == "metrics":
        assert ROUTE_TYPE in taken and CLUSTER_TYPE in taken
        for label in ("cds", "eds", "lds"):
            assert metrics_value(metrics, "pilotfish_xds_acks_total", type=label) >= 1
        # The first routes and the pushed ones (the push changed only the routes).
        assert metrics_value(metrics, "pilotfish_xds_acks_total", type="rds") >= 2
        assert metrics_value(metrics, "pilotfish_xds_connected_proxies") == 0  # gone
    else:
        assert taken == []
        acked = [a.type_url for _, a in recording.acks]
        assert acked.count(ROUTE_TYPE) >= 2 and acked.count(CLUSTER_TYPE) >= 1
        assert recording.requests >= 4 + len(acked)  # four subscriptions, and every ACK


def test_envoys_listing_one_subscription_in_their_own_orders_share_one_parsed_set(
    upstreams: dict[str, list[tuple[str, int]]],
) -> None:
    # Envoy lists a subscription in the order of a hash set seeded per process, so two Envoys
    # subscribing to the same 16 clusters seldom send the same bytes. The server keeps one
    # parsed set of the names for both (`sotw._SETS`), not one each, and both get endpoints.
    extra: dict[str, list[tuple[str, int]]] = {
        f"outbound|80||reviews-{i:02d}.bookinfo.svc.cluster.local": [] for i in range(14)
    }
    cache, ports = SnapshotCache(), {"sidecar-a": free_port(), "sidecar-b": free_port()}
    for node, port in ports.items():
        cache.set_snapshot(node, mesh({**upstreams, **extra}, "blue", listener_port=port))
    with native_thread(cache) as thread, contextlib.ExitStack() as stack:
        for node, port in ports.items():
            bootstrap = envoy_bootstrap(node_id=node, cluster="test", xds_address=thread.address)
            envoy = stack.enter_context(EnvoyProcess(bootstrap, name=node))
            envoy.wait_ready()
            assert envoy.request(port, "/").body == "blue"
            statuses = envoy.clusters()["cluster_statuses"]
            assert {c["name"] for c in statuses} >= {*upstreams, *extra}
        server = thread.server
        assert isinstance(server, XdsServer)
        states = []
        for handler in server._streams.live.values():
            assert handler.session is not None
            protocol = handler.session.protocol
            assert isinstance(protocol, SotwStream)
            states.append(protocol.types[ENDPOINT_TYPE])
        assert len(states) == 2
        assert states[0].names == {*upstreams, *extra}
        assert states[0].names is states[1].names  # one set, whatever order each listed
        # Each stream keeps only a digest of its list's bytes, for its ACKs (the two lists'
        # bytes often differ, not always: two Envoys' hash sets may happen to agree).
        assert all(isinstance(state.request_key, int) for state in states)


@pytest.mark.parametrize("wanted", [True, False])
def test_an_envoy_stream_keeps_its_node_without_the_extension_list(
    upstreams: dict[str, list[tuple[str, int]]], wanted: bool
) -> None:
    # Envoy's node lists every extension compiled into it (516 in 1.40, 61 KB on the wire,
    # some 140 KB parsed): callbacks see them on the first request if they want them (else
    # the transport cuts them out before parsing), and the stream keeps the node without
    # them, or they would be most of what the server holds per proxy.
    sent: list[Node] = []

    class FirstNode(Callbacks):
        @property
        def node_extensions_in_requests(self) -> bool:
            return wanted

        def on_stream_request(
            self, stream_id: int, request: DiscoveryRequest | DeltaDiscoveryRequest
        ) -> None:
            if request.HasField("node"):
                sent.append(Node())
                sent[-1].CopyFrom(request.node)

    cache, port = SnapshotCache(), free_port()
    cache.set_snapshot("sidecar", mesh(upstreams, "blue", listener_port=port))
    with native_thread(cache, callbacks=FirstNode()) as thread:
        bootstrap = envoy_bootstrap(node_id="sidecar", cluster="test", xds_address=thread.address)
        with EnvoyProcess(bootstrap, name="sidecar") as envoy:
            envoy.wait_ready()
            assert envoy.request(port, "/").body == "blue"
            server = thread.server
            assert isinstance(server, XdsServer)
            (handler,) = server._streams.live.values()
            assert handler.session is not None
            kept = handler.session.protocol.node
    assert kept is not None and len(sent) == 1
    if wanted:
        assert len(sent[0].extensions) > 100 and sent[0].ByteSize() > 20_000
    else:
        assert sent[0] == kept
    assert not kept.extensions and kept.ByteSize() < 2_000
    assert (kept.id, kept.cluster, kept.user_agent_name) == ("sidecar", "test", "envoy")
    assert kept.user_agent_build_version == sent[0].user_agent_build_version
    assert list(kept.client_features) == list(sent[0].client_features)


def test_envoy_reconnects_after_a_graceful_stop(
    upstreams: dict[str, list[tuple[str, int]]],
) -> None:
    cache, port = SnapshotCache(), free_port()
    cache.set_snapshot("sidecar", mesh(upstreams, "blue", listener_port=port))
    first = native_thread(cache).start()
    try:
        bootstrap = envoy_bootstrap(node_id="sidecar", cluster="test", xds_address=first.address)
        with EnvoyProcess(bootstrap, name="sidecar") as envoy:
            envoy.wait_ready()
            xds_port = first.port
            first.stop()  # GOAWAY, then status OK on the ADS stream
            wait_until(lambda: envoy.stat("control_plane.connected_state") == 0)
            assert envoy.request(port, "/").body == "blue"  # the last config keeps serving
            with native_thread(cache, f"127.0.0.1:{xds_port}"):  # the port Envoy knows
                cache.set_snapshot("sidecar", mesh(upstreams, "green", listener_port=port))
                wait_until(lambda: envoy.request(port, "/").body == "green")
                assert envoy.stat("control_plane.connected_state") == 1
                rejected = envoy.stats(filter="update_rejected")
                assert not any(rejected.values()), rejected
    finally:
        first.stop()


class Opened(Callbacks):
    def __init__(self) -> None:
        self.streams: list[int] = []

    def on_stream_open(self, stream_id: int, type_url: str | None) -> None:
        self.streams.append(stream_id)


def test_envoy_reconnects_at_the_maximum_connection_age_and_keeps_its_config(
    upstreams: dict[str, list[tuple[str, int]]],
) -> None:
    cache, port, opened = SnapshotCache(), free_port(), Opened()
    blue = mesh(upstreams, "blue", listener_port=port)
    cache.set_snapshot("sidecar", blue)
    thread = native_thread(cache)
    thread.server = XdsServer(
        cache,
        callbacks=opened,
        transport="native",
        max_connection_age=1.0,
        max_connection_age_grace=0.5,
    )
    with thread:
        bootstrap = envoy_bootstrap(node_id="sidecar", cluster="test", xds_address=thread.address)
        with EnvoyProcess(bootstrap, name="sidecar") as envoy:
            envoy.wait_ready()
            wait_until(lambda: len(opened.streams) >= 3, timeout=20, message="reconnected")
            assert envoy.request(port, "/").body == "blue"
            # Reconnecting, Envoy names the versions it holds: nothing is sent again.
            assert envoy.dynamic_route_configs() == {"local_route": blue.version(ROUTE_TYPE)}
            cache.set_snapshot("sidecar", mesh(upstreams, "green", listener_port=port))
            wait_until(lambda: envoy.request(port, "/").body == "green", message="route moved")
            rejected = envoy.stats(filter="update_rejected")
            assert rejected and not any(rejected.values()), rejected
            updates = envoy.stat("http.ingress_http.rds.local_route.update_success")
            assert updates == 2  # the first config and green: no resend on reconnecting


NATIVE_ONLY = """
import asyncio, sys
import pilotfish.commands.serve  # `pilotfish serve` loads grpc only for etcd or --transport grpc
from pilotfish.cache import SnapshotCache
from pilotfish.xds.server import XdsServer

async def main():
    async with XdsServer(SnapshotCache(), transport="native") as server:
        await asyncio.sleep(0)
        print(server.port > 0, server.refused, "grpc" in sys.modules)

asyncio.run(main())
"""


def test_the_native_transport_runs_without_loading_grpc() -> None:
    # grpc costs about 20 MB of memory: a server on the native transport must not load it.
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", NATIVE_ONLY], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.split() == ["True", "{}", "False"]


@given(
    size=st.integers(min_value=0, max_value=300_000),
    window=st.integers(min_value=1, max_value=320_000),
    frame=st.integers(min_value=16_384, max_value=70_000),
    grants=st.lists(st.integers(min_value=1, max_value=90_000), min_size=1, max_size=8),
    opened=st.integers(min_value=0, max_value=300_000),
    tail=st.sampled_from([b"", wire.nonce_field("7"), wire.nonce_field("123456")]),
)
@hypothesis.example(300_000, 320_000, 16_384, [1], 300_000, wire.nonce_field("7"))
@hypothesis.example(262_139, 262_144, 20_000, [5], 200_000, wire.nonce_field("123456"))
@hypothesis.settings(max_examples=100, deadline=None)
def test_a_body_is_cut_into_frames_within_every_window(
    size: int, window: int, frame: int, grants: list[int], opened: int, tail: bytes
) -> None:
    """Whatever the windows and the frame size, the frames carry the message exactly, none
    larger than the peer allows, and never more than the windows granted so far. (With room
    in both windows, a large body's first frames are the ones framed once for all streams.)"""
    client = Client()
    client.start([(f.Setting.INITIAL_WINDOW_SIZE, window), (f.Setting.MAX_FRAME_SIZE, frame)])
    client.send(client.headers(1))
    if opened:
        client.send(f.window_update(0, opened))
    body = bytes(range(256)) * (size // 256 + 1)
    client.conn.send_message(1, body[:size], tail)
    client.conn.end_stream(1)
    stream_room, connection_room = window, 65_535 + opened
    received, done = b"", False
    for grant in [*grants, 10**7, 0]:  # the last read follows the last grant
        for sent in client.written():
            if sent.type == f.DATA:
                assert len(sent.payload) <= frame
                stream_room -= len(sent.payload)
                connection_room -= len(sent.payload)
                assert stream_room >= 0 and connection_room >= 0
                received += sent.payload
            elif sent.type == f.HEADERS and sent.flags & f.END_STREAM:
                done = True
        if done or not grant:
            break
        client.send(f.window_update(1, grant), f.window_update(0, grant))
        stream_room, connection_room = stream_room + grant, connection_room + grant
    assert done and received == grpc_message(body[:size] + tail)


def test_a_large_body_is_framed_once_for_every_stream() -> None:
    """Streams with room for a whole large response get its first frames as one shared bytes
    object, cut exactly where frame-by-frame sending cuts (every full frame, then the rest with
    the stream's nonce); each message length (nonce length) has its own prefix."""
    body = bytes(range(256)) * 800  # 204,800 bytes: 12 full frames and a rest

    def sent(tail: bytes) -> tuple[list[Frame], list[bytes | memoryview]]:
        client = Client()
        client.start([(f.Setting.INITIAL_WINDOW_SIZE, 1 << 20)])
        client.send(client.headers(1), f.window_update(0, 1 << 20))
        client.written()
        assert client.conn.send_message(1, body, tail)
        queued = list(client.conn._out)
        return client.written(), queued

    for tail in (wire.nonce_field("7"), wire.nonce_field("123456")):
        (_headers, *frames), queued = sent(tail)
        message = grpc_message(body + tail)
        cuts = range(0, len(message), 16_384)
        assert [(frame.type, frame.payload) for frame in frames] == [
            (f.DATA, message[start : start + 16_384]) for start in cuts
        ]
        _, again = sent(tail)
        shared = [chunk for chunk in queued if len(chunk) > 100_000]
        assert len(shared) == 1 and any(chunk is shared[0] for chunk in again)


def test_buffers_to_send_hands_over_the_queued_buffers_unjoined() -> None:
    """What a vectored write takes: the same bytes as `data_to_send`, with the shared framed
    body itself among them (not a copy), and nothing the second time."""
    body = bytes(range(256)) * 800

    def client_with_message() -> Client:
        client = Client()
        client.start([(f.Setting.INITIAL_WINDOW_SIZE, 1 << 20)])
        client.send(client.headers(1), f.window_update(0, 1 << 20))
        client.written()
        assert client.conn.send_message(1, body, wire.nonce_field("7"))
        return client

    joined = client_with_message().conn.data_to_send()
    conn = client_with_message().conn
    buffers = conn.buffers_to_send()
    assert b"".join(buffers) == joined
    again = client_with_message().conn.buffers_to_send()
    shared = [chunk for chunk in buffers if len(chunk) > 100_000]
    assert len(shared) == 1 and any(chunk is shared[0] for chunk in again)
    assert conn.buffers_to_send() == [] and conn.data_to_send() == b""
