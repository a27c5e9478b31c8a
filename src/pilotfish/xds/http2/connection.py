"""The server side of one HTTP/2 connection carrying gRPC streams, sans-IO (as h11 and h2 are).

Bytes from the socket go in (`receive`), `events` come out; `send_message` and `end_stream`
queue frames, and `data_to_send` hands everything queued since the last call over as one bytes
object, for one ``transport.write`` (or `buffers_to_send` as the buffers queued, for one
vectored ``transport.writelines``). No sockets, no asyncio, no clock.

What it does (RFC 9113, the gRPC-over-HTTP/2 subset a server needs):

- client preface, SETTINGS both ways (ours: a large stream window, and a connection
  WINDOW_UPDATE; the peer's: frame size, initial window, header table size), SETTINGS ACK;
- receive-side flow control: windows are topped up when half used (data is consumed at once);
- send-side flow control per stream and per connection: what does not fit waits per stream
  and goes out when a WINDOW_UPDATE (or a larger initial window) makes room;
- HEADERS + CONTINUATION, padding, PRIORITY (ignored), PING (answered), RST_STREAM,
  GOAWAY both ways; connection errors answer with GOAWAY and report `ConnectionTerminated`;
- gRPC framing (`MessageReader`): compressed or oversized messages end that stream.

What it does not: server push, stream priorities, or sending PINGs (keepalive is the client's).
A stream the server ended (trailers) while the client's side is open is kept, ignoring what
arrives, until the client ends or resets it: an RST_STREAM(NO_ERROR) right after the trailers
would be allowed (RFC 9113 8.1), but grpc clients then fail a write still in flight with
INTERNAL instead of reporting the server's status.
"""

from __future__ import annotations

import struct

import hpack

from pilotfish.bounded import Bounded
from pilotfish.errors import PilotfishError
from pilotfish.xds.http2 import frames as f
from pilotfish.xds.http2.events import (
    ConnectionTerminated,
    Event,
    MessageReceived,
    RequestReceived,
    StreamClosed,
    StreamEnded,
)
from pilotfish.xds.http2.grpc_messages import (
    MAX_MESSAGE_SIZE,
    PREFIX,
    GrpcStatus,
    MessageError,
    MessageReader,
    percent_encode,
)

__all__ = [
    "CONNECTION_WINDOW",
    "INITIAL_WINDOW",
    "MAX_FRAME",
    "MAX_HEADER_BLOCK",
    "Http2Error",
    "ServerConnection",
]

INITIAL_WINDOW = 4 * 1024 * 1024
"""The receive window per stream we advertise (SETTINGS_INITIAL_WINDOW_SIZE)."""
CONNECTION_WINDOW = 16 * 1024 * 1024
"""The connection's receive window we open with a WINDOW_UPDATE right after our SETTINGS."""
MAX_FRAME = 1024 * 1024
"""The largest frame we take (SETTINGS_MAX_FRAME_SIZE): a request listing a thousand names
(every EDS ACK) arrives in one frame, and is handed on without being gathered."""
MAX_HEADER_BLOCK = 256 * 1024
"""Largest compressed header block (HEADERS + CONTINUATION) accepted."""
_MAX_HEADER_LIST = 64 * 1024
_DEFAULT_TABLE_SIZE = 4096

# A DATA frame header and the gRPC message prefix, packed in one go (the per-message path).
_DATA_HEAD = struct.Struct(">BHBBLBL")
_U32 = struct.Struct(">L")
_TWO_U32 = struct.Struct(">LL")

# Our header blocks never touch HPACK's dynamic table (never-indexed literals), so they are
# stateless: computed once, valid on every connection, in any order.
_ENCODER = hpack.Encoder()
# The first header block of a connection, decoded, by its bytes (see ServerConnection._decode).
_FIRST_BLOCKS: dict[bytes, tuple[bytes, list[tuple[bytes, bytes]]]] = {}
_FIRST_BLOCKS_KEPT = 64  # distinct client kinds; blocks carrying unique tokens are not kept


def _block(headers: list[tuple[str, str]]) -> bytes:
    return _ENCODER.encode([hpack.NeverIndexedHeaderTuple(n, v) for n, v in headers])


_RESPONSE_HEADERS = _block([(":status", "200"), ("content-type", "application/grpc")])
_OK_TRAILERS = _block([("grpc-status", "0")])
_SETTINGS_ACK = f.frame(f.SETTINGS, f.ACK, 0)
_NO_EVENTS: list[Event] = []
# Shared by every idle stream and connection, never appended to (56 and 64 B each otherwise):
_NO_PENDING: list[bytes | memoryview] = []
_NONE_BLOCKED: dict[int, _Stream] = {}
_NO_MORE: dict[int, _Stream] = {}


_FRAMED: Bounded[tuple[bytes, int, int, int], tuple[bytes, int]] = Bounded(8)
_FRAMED_FROM = 4
"""Bodies of at least this many frames are framed once (`_framed`), not once per stream."""


def _framed(payload: bytes, stream_id: int, frame_size: int, length: int) -> tuple[bytes, int]:
    """The whole DATA frames a gRPC message of `length` bytes starting with `payload` (a
    shared response body; the stream's nonce follows) begins with, and how much of `payload`
    they carry. The same bytes for every stream with the same id, frame size and message
    length, which is most of a fleet: a body of hundreds of KB is framed once, not cut into
    slices and headers per stream. Exactly what `_flush_stream` would write."""
    key = (payload, stream_id, frame_size, length)
    found = _FRAMED.get(key)
    if found is None:
        count = (PREFIX.size + len(payload)) // frame_size  # frames of prefix and payload only
        with memoryview(PREFIX.pack(0, length) + payload) as wire:
            parts: list[bytes | memoryview] = []
            _full_frames(parts, wire, stream_id, frame_size, count)
            found = _FRAMED.put(key, (b"".join(parts), count * frame_size - PREFIX.size))
    return found


def _full_frames(
    out: list[bytes | memoryview], view: memoryview, stream_id: int, size: int, count: int
) -> None:
    # `count` DATA frames of `size` bytes, cut from the start of `view`: one header (the same
    # bytes) for them all, and no window arithmetic per frame.
    header = f.HEAD.pack(size >> 16, size & 0xFFFF, f.DATA, 0, stream_id)
    for start in range(0, count * size, size):
        out.append(header)
        out.append(view[start : start + size])


def _table_size_update(size: int) -> bytes:
    # HPACK dynamic table size update (RFC 7541 6.3): 001xxxxx with a 5-bit prefix integer.
    if size < 31:
        return bytes((0x20 | size,))
    out = bytearray((0x20 | 31,))
    size -= 31
    while size >= 128:
        out.append(size & 0x7F | 0x80)
        size >>= 7
    out.append(size)
    return bytes(out)


class Http2Error(PilotfishError):
    """The client broke HTTP/2 on the connection: answered with GOAWAY(`code`)."""

    def __init__(self, code: f.ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code


class _Stream:
    __slots__ = (
        "ended",
        "headers_sent",
        "id",
        "pending",
        "reader",
        "received",
        "remote_closed",
        "trailers",
        "window",
    )

    def __init__(self, stream_id: int, window: int, max_message_size: int) -> None:
        self.id = stream_id
        self.window = window  # what we may still send on it
        self.received = 0  # bytes received since our last WINDOW_UPDATE for it
        self.headers_sent = False
        self.ended = False  # the server ended it: trailers queued or sent
        self.remote_closed = False
        self.reader = MessageReader(max_message_size)
        # DATA waiting for window: a few chunks at most (prefix, body, nonce); a list, as a
        # deque would take ~600 bytes per stream up front; none while there are none.
        self.pending = _NO_PENDING
        self.trailers: bytes | None = None  # header block to send once `pending` is out


class _Continuation:
    __slots__ = ("end_stream", "parts", "size", "stream_id")

    def __init__(self, stream_id: int, end_stream: bool, block: bytes) -> None:
        self.stream_id = stream_id
        self.end_stream = end_stream
        self.parts = [block]
        self.size = len(block)


class ServerConnection:
    """One HTTP/2 connection, server side, for gRPC streams (see the module docstring)."""

    __slots__ = (
        "_blocked",
        "_buffer",
        "_connection_window",
        "_continuation",
        "_decoded_any",
        "_decoder",
        "_events",
        "_goaway_sent",
        "_initial_window",
        "_last_stream",
        "_max_message_size",
        "_max_recv_frame",
        "_max_send_frame",
        "_more",
        "_one",
        "_out",
        "_peer_initial_window",
        "_preface",
        "_received",
        "_send_window",
        "_settings_seen",
        "_size_update",
        "_table_size",
        "_undecoded",
        "closed",
    )

    def __init__(
        self,
        *,
        initial_window: int = INITIAL_WINDOW,
        connection_window: int = CONNECTION_WINDOW,
        max_message_size: int = MAX_MESSAGE_SIZE,
        max_frame_size: int = MAX_FRAME,
    ) -> None:
        self._initial_window = initial_window
        self._connection_window = connection_window
        self._max_message_size = max_message_size
        # Made on first use: a connection whose one block is in _FIRST_BLOCKS never needs it.
        self._decoder: hpack.Decoder | None = None
        self._decoded_any = False  # whether a header block arrived yet (see _decode)
        self._undecoded: bytes | None = None  # a first block answered from _FIRST_BLOCKS
        # Open streams: the first in `_one`, others in `_more` (an xDS client's connection
        # carries one stream, and a dict of one is 224 B).
        self._one: _Stream | None = None
        self._more = _NO_MORE
        self._blocked = _NONE_BLOCKED
        self._out: list[bytes | memoryview] = []
        self._events = _NO_EVENTS
        self._buffer = b""
        self._preface = False
        self._settings_seen = False
        self._continuation: _Continuation | None = None
        self._last_stream = 0
        self._goaway_sent = False
        self.closed = False
        """True once a connection error was answered with GOAWAY: nothing more is read."""
        # Sending: the peer's limits.
        self._send_window = f.DEFAULT_WINDOW
        self._peer_initial_window = f.DEFAULT_WINDOW
        self._max_send_frame = f.DEFAULT_MAX_FRAME_SIZE
        self._table_size = _DEFAULT_TABLE_SIZE
        self._size_update = b""
        # Receiving: ours.
        if not f.DEFAULT_MAX_FRAME_SIZE <= max_frame_size <= 2**24 - 1:
            raise ValueError(f"max_frame_size {max_frame_size} is outside 16384..16777215")
        self._max_recv_frame = max_frame_size
        self._received = 0  # connection bytes since our last connection WINDOW_UPDATE

    # -- state ---------------------------------------------------------------------------------

    @property
    def open_streams(self) -> int:
        """Streams not yet over."""
        return (self._one is not None) + len(self._more)

    @property
    def last_stream_id(self) -> int:
        """The highest stream id the client opened."""
        return self._last_stream

    @property
    def send_window(self) -> int:
        """What the connection-level window still lets us send."""
        return self._send_window

    def stream_window(self, stream_id: int) -> int | None:
        """What `stream_id`'s window still lets us send; None if the stream is over."""
        stream = self._stream(stream_id)
        return None if stream is None else stream.window

    def buffered(self, stream_id: int) -> int:
        """Bytes of DATA waiting for flow-control window on `stream_id`."""
        stream = self._stream(stream_id)
        return 0 if stream is None else sum(len(chunk) for chunk in stream.pending)

    # -- output --------------------------------------------------------------------------------

    def initiate(self) -> None:
        """Queue the server preface: our SETTINGS, and the connection's larger window."""
        self._out.append(
            f.settings(
                [
                    (f.Setting.INITIAL_WINDOW_SIZE, self._initial_window),
                    (f.Setting.MAX_HEADER_LIST_SIZE, _MAX_HEADER_LIST),
                    (f.Setting.MAX_FRAME_SIZE, self._max_recv_frame),
                ]
            )
        )
        if self._connection_window > f.DEFAULT_WINDOW:
            self._out.append(f.window_update(0, self._connection_window - f.DEFAULT_WINDOW))

    def data_to_send(self) -> bytes:
        """Everything queued since the last call, as one write."""
        out = self._out
        if not out:
            return b""
        data = b"".join(out)
        out.clear()
        return data

    def buffers_to_send(self) -> list[bytes | memoryview]:
        """`data_to_send` as the buffers queued, in order, not joined: for a vectored write,
        which copies a shared response body of hundreds of KB once (into the socket), where
        joining would copy it once more per stream first. An empty list if nothing is queued."""
        out = self._out
        if out:
            self._out = []
        return out

    def send_message(self, stream_id: int, payload: bytes, tail: bytes = b"") -> bool:
        """Queue one gRPC message, `payload` followed by `tail` (a part to append, queued as
        is: neither is copied before the final write), response headers first if not sent yet;
        False if the stream is over or ending."""
        stream = self._stream(stream_id)
        if stream is None or stream.ended:
            return False
        out = self._out
        if not stream.headers_sent:
            stream.headers_sent = True
            out.append(
                f.header_frames(
                    stream_id, self._header_block(_RESPONSE_HEADERS), False, self._max_send_frame
                )
            )
        size = len(payload) + len(tail) + 5
        if (
            not stream.pending
            and size <= stream.window
            and size <= self._send_window
            and size <= self._max_send_frame
        ):
            out.append(_DATA_HEAD.pack(size >> 16, size & 0xFFFF, 0, 0, stream_id, 0, size - 5))
            out.append(payload)
            if tail:
                out.append(tail)
            stream.window -= size
            self._send_window -= size
            return True
        pending = stream.pending
        if pending is _NO_PENDING:
            pending = stream.pending = []
        if (
            not pending
            and size <= stream.window
            and size <= self._send_window
            and len(payload) >= _FRAMED_FROM * self._max_send_frame
        ):
            # Both windows take the whole message: its first frames are the fleet's.
            frames, used = _framed(payload, stream_id, self._max_send_frame, size - 5)
            out.append(frames)
            stream.window -= used + 5
            self._send_window -= used + 5
            if used < len(payload):
                pending.append(memoryview(payload)[used:])
        else:
            pending.append(PREFIX.pack(0, size - 5))
            pending.append(payload)
        if tail:
            pending.append(tail)
        self._flush_stream(stream)
        return True

    def end_stream(self, stream_id: int, status: int = GrpcStatus.OK, message: str = "") -> None:
        """End a stream with gRPC trailers (after any DATA still waiting for window); a
        trailers-only response if no message was sent. No-op if the stream is over."""
        stream = self._stream(stream_id)
        if stream is None or stream.ended:
            return
        stream.ended = True
        if status == GrpcStatus.OK and not message:
            block = _OK_TRAILERS
        else:
            trailers = [("grpc-status", str(int(status)))]
            if message:
                trailers.append(("grpc-message", percent_encode(message)))
            block = _block(trailers)
        if not stream.headers_sent:
            stream.headers_sent = True
            block = _RESPONSE_HEADERS + block
        stream.trailers = block
        if not stream.pending:
            self._send_trailers(stream)

    def reset_stream(self, stream_id: int, code: int = f.ErrorCode.CANCEL) -> None:
        """Abandon a stream with RST_STREAM. No-op if the stream is over."""
        stream = self._stream(stream_id)
        if stream is not None:
            self._out.append(f.rst_stream(stream_id, code))
            self._forget(stream)

    def goaway(self, code: int = f.ErrorCode.NO_ERROR, reason: str = "") -> None:
        """Tell the client no new stream will be served (streams open now go on). Once."""
        if not self._goaway_sent:
            self._goaway_sent = True
            self._out.append(f.goaway(self._last_stream, code, reason.encode()))

    def stream_ids(self) -> list[int]:
        """Ids of the streams not yet over."""
        return [stream.id for stream in self._all_streams()]

    def _header_block(self, block: bytes) -> bytes:
        if self._size_update:
            block, self._size_update = self._size_update + block, b""
        return block

    def _send_trailers(self, stream: _Stream) -> None:
        # Framed now, not when queued: an HPACK table size update goes in the first block out.
        assert stream.trailers is not None
        block = self._header_block(stream.trailers)
        self._out.append(f.header_frames(stream.id, block, True, self._max_send_frame))
        stream.trailers = None
        if stream.remote_closed:
            self._forget(stream)

    def _remote_end(self, stream: _Stream) -> None:
        # END_STREAM from the client on a stream the server ended: over once trailers are out.
        stream.remote_closed = True
        if stream.trailers is None:
            self._forget(stream)

    def _stream(self, stream_id: int) -> _Stream | None:
        one = self._one
        if one is not None and one.id == stream_id:
            return one
        return self._more.get(stream_id)

    def _all_streams(self) -> list[_Stream]:
        streams = [] if self._one is None else [self._one]
        streams += self._more.values()
        return streams

    def _forget(self, stream: _Stream) -> None:
        if self._one is stream:
            self._one = None
        elif self._more.pop(stream.id, None) is not None and not self._more:
            self._more = _NO_MORE
        self._blocked.pop(stream.id, None)

    def _flush_stream(self, stream: _Stream) -> None:
        pending = stream.pending
        out = self._out
        head = f.HEAD.pack
        max_frame = self._max_send_frame
        while pending:
            budget = min(stream.window, self._send_window, max_frame)
            if budget <= 0:
                break
            chunk = pending[0]
            if len(chunk) > budget:
                # A large body: whole frames cut from it, a slice each (the rest, less than a
                # frame, goes out below with what follows it).
                view = chunk if isinstance(chunk, memoryview) else memoryview(chunk)
                pos, end = 0, len(view)
                if budget == max_frame:
                    # While both windows have room, every frame is a full one.
                    room = min(stream.window, self._send_window)
                    count = min((end - 1) // budget, room // budget)
                    _full_frames(out, view, stream.id, budget, count)
                    pos = count * budget
                    stream.window -= pos
                    self._send_window -= pos
                    budget = min(stream.window, self._send_window, max_frame)
                while end - pos > budget > 0:
                    out.append(head(budget >> 16, budget & 0xFFFF, f.DATA, 0, stream.id))
                    out.append(view[pos : pos + budget])
                    pos += budget
                    stream.window -= budget
                    self._send_window -= budget
                    budget = min(stream.window, self._send_window, max_frame)
                pending[0] = view[pos:]
                continue
            parts: list[bytes | memoryview] = []
            size = 0
            while pending and size < budget:
                chunk = pending[0]
                length = len(chunk)
                if size + length <= budget:
                    parts.append(chunk)
                    size += length
                    del pending[0]
                else:
                    take = budget - size
                    view = chunk if isinstance(chunk, memoryview) else memoryview(chunk)
                    parts.append(view[:take])
                    pending[0] = view[take:]
                    size += take
            out.append(head(size >> 16, size & 0xFFFF, f.DATA, 0, stream.id))
            out.extend(parts)
            stream.window -= size
            self._send_window -= size
        if pending:
            if self._blocked is _NONE_BLOCKED:
                self._blocked = {}
            self._blocked[stream.id] = stream
            return
        stream.pending = _NO_PENDING
        self._blocked.pop(stream.id, None)
        if stream.trailers is not None:
            self._send_trailers(stream)

    def _flush_blocked(self) -> None:
        for stream in list(self._blocked.values()):
            if self._send_window <= 0:
                break
            if stream.window > 0:
                self._flush_stream(stream)

    # -- input ---------------------------------------------------------------------------------

    def receive(self, data: bytes) -> list[Event]:
        """Take bytes from the socket; returns what happened. Frames split across reads are
        kept until whole."""
        if self.closed:
            return []
        events: list[Event] = []
        self._events = events
        if self._buffer:
            data, self._buffer = self._buffer + data, b""
        try:
            pos = 0
            if not self._preface:
                if len(data) < len(f.PREFACE):
                    if not f.PREFACE.startswith(data):
                        raise Http2Error(f.ErrorCode.PROTOCOL_ERROR, "not an HTTP/2 preface")
                    self._buffer = data
                    return events
                if not data.startswith(f.PREFACE):
                    raise Http2Error(f.ErrorCode.PROTOCOL_ERROR, "not an HTTP/2 preface")
                self._preface = True
                pos = len(f.PREFACE)
            end = len(data)
            unpack = f.HEAD.unpack_from
            handlers = _HANDLERS
            while end - pos >= 9:
                high, low, frame_type, flags, stream_id = unpack(data, pos)
                length = high << 16 | low
                if length > self._max_recv_frame:
                    raise Http2Error(
                        f.ErrorCode.FRAME_SIZE_ERROR, f"frame of {length} bytes is too large"
                    )
                start = pos + 9
                stop = start + length
                if stop > end:
                    break
                pos = stop
                stream_id &= 0x7FFFFFFF
                if self._continuation is not None and frame_type != f.CONTINUATION:
                    raise Http2Error(f.ErrorCode.PROTOCOL_ERROR, "expected CONTINUATION")
                if not self._settings_seen:
                    if frame_type != f.SETTINGS or flags & f.ACK:
                        raise Http2Error(f.ErrorCode.PROTOCOL_ERROR, "expected SETTINGS first")
                    self._settings_seen = True
                if frame_type < 10:
                    handlers[frame_type](self, flags, stream_id, data, start, stop)
                # Unknown frame types are ignored (RFC 9113 4.1).
            if pos < end:
                self._buffer = data[pos:]
        except Http2Error as error:
            self._fail(error.code, str(error))
        except hpack.HPACKError as error:
            self._fail(f.ErrorCode.COMPRESSION_ERROR, f"bad header block: {error}")
        self._events = _NO_EVENTS  # the caller owns the list now; keep nothing alive
        return events

    def _fail(self, code: f.ErrorCode, reason: str) -> None:
        self._out.append(f.goaway(self._last_stream, code, reason.encode()[:1024]))
        self._goaway_sent = True
        self.closed = True
        self._buffer = b""
        self._events.append(ConnectionTerminated(code, self._last_stream, reason, remote=False))

    def _reset(self, stream: _Stream, code: f.ErrorCode, reason: str) -> None:
        self._out.append(f.rst_stream(stream.id, code))
        self._forget(stream)
        if not stream.ended:
            self._events.append(StreamClosed(stream.id, code, reason))

    def _unpad(self, data: bytes, start: int, stop: int) -> tuple[int, int]:
        if start >= stop:
            raise Http2Error(f.ErrorCode.FRAME_SIZE_ERROR, "padded frame without pad length")
        pad = data[start]
        start += 1
        if pad > stop - start:
            raise Http2Error(f.ErrorCode.PROTOCOL_ERROR, "padding longer than the frame")
        return start, stop - pad

    def _on_data(self, flags: int, stream_id: int, data: bytes, start: int, stop: int) -> None:
        if stream_id == 0:
            raise Http2Error(f.ErrorCode.PROTOCOL_ERROR, "DATA on stream 0")
        size = stop - start
        self._received += size
        if self._received >= self._connection_window >> 1:
            self._out.append(f.window_update(0, self._received))
            self._received = 0
        if flags & f.PADDED:
            start, stop = self._unpad(data, start, stop)
        stream = self._stream(stream_id)
        if stream is None:
            if stream_id > self._last_stream:
                raise Http2Error(f.ErrorCode.PROTOCOL_ERROR, f"DATA on idle stream {stream_id}")
            return  # a stream that is over (we may have reset it): ignored
        if stream.remote_closed:
            self._reset(stream, f.ErrorCode.STREAM_CLOSED, "DATA after END_STREAM")
            return
        end_stream = flags & f.END_STREAM
        if stream.ended:  # the call is over for the server: what arrives is ignored
            if end_stream:
                self._remote_end(stream)
            return
        if not end_stream:
            stream.received += size
            if stream.received >= self._initial_window >> 1:
                self._out.append(f.window_update(stream_id, stream.received))
                stream.received = 0
        if stop > start:
            try:
                messages = stream.reader.feed(data, start, stop)
            except MessageError as error:
                self.end_stream(stream_id, error.status, str(error))
                self._events.append(StreamClosed(stream_id, f.ErrorCode.CANCEL, str(error)))
                return
            events = self._events
            for message in messages:
                events.append(MessageReceived(stream_id, message))
        if end_stream:
            stream.remote_closed = True
            self._events.append(StreamEnded(stream_id))

    def _on_headers(self, flags: int, stream_id: int, data: bytes, start: int, stop: int) -> None:
        if stream_id == 0 or not stream_id & 1:
            raise Http2Error(f.ErrorCode.PROTOCOL_ERROR, f"HEADERS on stream {stream_id}")
        if flags & f.PADDED:
            start, stop = self._unpad(data, start, stop)
        if flags & f.PRIORITY_FLAG:
            if stop - start < 5:
                raise Http2Error(f.ErrorCode.FRAME_SIZE_ERROR, "HEADERS too short for priority")
            start += 5
        block = data[start:stop]
        end_stream = bool(flags & f.END_STREAM)
        if flags & f.END_HEADERS:
            self._on_header_block(stream_id, end_stream, block)
        else:
            self._continuation = _Continuation(stream_id, end_stream, block)

    def _on_continuation(
        self, flags: int, stream_id: int, data: bytes, start: int, stop: int
    ) -> None:
        pending = self._continuation
        if pending is None or pending.stream_id != stream_id:
            raise Http2Error(f.ErrorCode.PROTOCOL_ERROR, "unexpected CONTINUATION")
        pending.parts.append(data[start:stop])
        pending.size += stop - start
        if pending.size > MAX_HEADER_BLOCK:
            raise Http2Error(f.ErrorCode.ENHANCE_YOUR_CALM, "header block too large")
        if flags & f.END_HEADERS:
            self._continuation = None
            self._on_header_block(stream_id, pending.end_stream, b"".join(pending.parts))

    def _decode(self, block: bytes) -> list[tuple[bytes, bytes]]:
        """Decode a header block. A connection's first block is looked up in `_FIRST_BLOCKS`:
        a fleet's proxies all open with the same bytes, and hpack decodes (Huffman) in Python,
        ~140 us a block. A fresh decoder makes the same headers of the same bytes, so that
        is exact; the decoder is brought up to date (the first block fed to it) only if the
        connection sends another block, which an xDS client (one stream) never does."""
        if not self._decoded_any:
            self._decoded_any = True
            known = _FIRST_BLOCKS.get(block)
            if known is not None:
                # Kept as the one object every such connection keeps, not its own copy.
                self._undecoded, headers = known
                return headers
            headers = [(bytes(n), bytes(v)) for n, v in self._hpack().decode(block, raw=True)]
            # Credentials are not kept beyond their connection.
            if len(_FIRST_BLOCKS) < _FIRST_BLOCKS_KEPT and all(
                n != b"authorization" for n, _ in headers
            ):
                _FIRST_BLOCKS[block] = (block, headers)
            return headers
        decoder = self._hpack()
        if self._undecoded is not None:
            decoder.decode(self._undecoded, raw=True)
            self._undecoded = None
        return list(decoder.decode(block, raw=True))

    def _hpack(self) -> hpack.Decoder:
        if self._decoder is None:
            self._decoder = hpack.Decoder(_MAX_HEADER_LIST)
        return self._decoder

    def _on_header_block(self, stream_id: int, end_stream: bool, block: bytes) -> None:
        # Always decoded, even for a stream we ignore: HPACK state is per connection.
        headers = self._decode(block)
        stream = self._stream(stream_id)
        if stream is not None:  # trailers from the client: only END_STREAM matters
            if not end_stream or stream.remote_closed:
                self._reset(stream, f.ErrorCode.PROTOCOL_ERROR, "HEADERS in the middle of a call")
            elif stream.ended:
                self._remote_end(stream)
            else:
                stream.remote_closed = True
                self._events.append(StreamEnded(stream_id))
            return
        if stream_id <= self._last_stream:
            return  # a stream that is over
        self._last_stream = stream_id
        if self._goaway_sent:
            self._out.append(f.rst_stream(stream_id, f.ErrorCode.REFUSED_STREAM))
            return
        path = ""
        metadata: list[tuple[str, str]] = []
        for raw_name, raw_value in headers:
            name, value = raw_name.decode("latin-1"), raw_value.decode("latin-1")
            if name.startswith(":"):
                if name == ":path":
                    path = value
            else:
                metadata.append((name, value))
        stream = _Stream(stream_id, self._peer_initial_window, self._max_message_size)
        if self._one is None:
            self._one = stream
        else:
            if self._more is _NO_MORE:
                self._more = {}
            self._more[stream_id] = stream
        self._events.append(RequestReceived(stream_id, path, metadata))
        if end_stream:
            stream.remote_closed = True
            self._events.append(StreamEnded(stream_id))

    def _on_priority(self, flags: int, stream_id: int, data: bytes, start: int, stop: int) -> None:
        if stream_id == 0:
            raise Http2Error(f.ErrorCode.PROTOCOL_ERROR, "PRIORITY on stream 0")
        # Priorities are advice; a server with one kind of stream has nothing to order.

    def _on_rst_stream(
        self, flags: int, stream_id: int, data: bytes, start: int, stop: int
    ) -> None:
        if stream_id == 0 or stream_id > self._last_stream:
            raise Http2Error(f.ErrorCode.PROTOCOL_ERROR, f"RST_STREAM on stream {stream_id}")
        if stop - start != 4:
            raise Http2Error(f.ErrorCode.FRAME_SIZE_ERROR, "RST_STREAM of the wrong size")
        stream = self._stream(stream_id)
        if stream is not None:
            self._forget(stream)
            if not stream.ended:
                (code,) = _U32.unpack_from(data, start)
                self._events.append(StreamClosed(stream_id, code))

    def _on_settings(self, flags: int, stream_id: int, data: bytes, start: int, stop: int) -> None:
        if stream_id != 0:
            raise Http2Error(f.ErrorCode.PROTOCOL_ERROR, "SETTINGS on a stream")
        if flags & f.ACK:
            if stop != start:
                raise Http2Error(f.ErrorCode.FRAME_SIZE_ERROR, "SETTINGS ACK with a payload")
            return
        if (stop - start) % 6:
            raise Http2Error(f.ErrorCode.FRAME_SIZE_ERROR, "SETTINGS of the wrong size")
        grew = False
        for key, value in f.parse_settings(data[start:stop]):
            if key == f.Setting.INITIAL_WINDOW_SIZE:
                if value > f.MAX_WINDOW:
                    raise Http2Error(f.ErrorCode.FLOW_CONTROL_ERROR, "initial window too large")
                delta = value - self._peer_initial_window
                self._peer_initial_window = value
                for stream in self._all_streams():
                    stream.window += delta
                    if stream.window > f.MAX_WINDOW:
                        raise Http2Error(f.ErrorCode.FLOW_CONTROL_ERROR, "window overflow")
                grew = grew or delta > 0
            elif key == f.Setting.MAX_FRAME_SIZE:
                if not f.DEFAULT_MAX_FRAME_SIZE <= value <= 2**24 - 1:
                    raise Http2Error(f.ErrorCode.PROTOCOL_ERROR, f"MAX_FRAME_SIZE {value}")
                self._max_send_frame = value
            elif key == f.Setting.HEADER_TABLE_SIZE:
                if value < self._table_size:  # we never index, but must say we shrank
                    self._table_size = value
                    self._size_update = _table_size_update(value)
            elif key == f.Setting.ENABLE_PUSH and value > 1:
                raise Http2Error(f.ErrorCode.PROTOCOL_ERROR, f"ENABLE_PUSH {value}")
        self._out.append(_SETTINGS_ACK)
        if grew and self._blocked:
            self._flush_blocked()

    def _on_push_promise(
        self, flags: int, stream_id: int, data: bytes, start: int, stop: int
    ) -> None:
        raise Http2Error(f.ErrorCode.PROTOCOL_ERROR, "PUSH_PROMISE from a client")

    def _on_ping(self, flags: int, stream_id: int, data: bytes, start: int, stop: int) -> None:
        if stream_id != 0:
            raise Http2Error(f.ErrorCode.PROTOCOL_ERROR, "PING on a stream")
        if stop - start != 8:
            raise Http2Error(f.ErrorCode.FRAME_SIZE_ERROR, "PING of the wrong size")
        if not flags & f.ACK:
            self._out.append(f.head(8, f.PING, f.ACK, 0) + data[start:stop])

    def _on_goaway(self, flags: int, stream_id: int, data: bytes, start: int, stop: int) -> None:
        if stream_id != 0:
            raise Http2Error(f.ErrorCode.PROTOCOL_ERROR, "GOAWAY on a stream")
        if stop - start < 8:
            raise Http2Error(f.ErrorCode.FRAME_SIZE_ERROR, "GOAWAY too short")
        last, code = _TWO_U32.unpack_from(data, start)
        reason = data[start + 8 : stop].decode(errors="replace")
        self._events.append(ConnectionTerminated(code, last & 0x7FFFFFFF, reason, remote=True))

    def _on_window_update(
        self, flags: int, stream_id: int, data: bytes, start: int, stop: int
    ) -> None:
        if stop - start != 4:
            raise Http2Error(f.ErrorCode.FRAME_SIZE_ERROR, "WINDOW_UPDATE of the wrong size")
        (increment,) = _U32.unpack_from(data, start)
        increment &= 0x7FFFFFFF
        if stream_id == 0:
            if increment == 0:
                raise Http2Error(f.ErrorCode.PROTOCOL_ERROR, "connection WINDOW_UPDATE of 0")
            self._send_window += increment
            if self._send_window > f.MAX_WINDOW:
                raise Http2Error(f.ErrorCode.FLOW_CONTROL_ERROR, "connection window overflow")
            if self._blocked:
                self._flush_blocked()
            return
        stream = self._stream(stream_id)
        if stream is None:
            if stream_id > self._last_stream:
                raise Http2Error(f.ErrorCode.PROTOCOL_ERROR, "WINDOW_UPDATE on an idle stream")
            return
        if increment == 0:
            self._reset(stream, f.ErrorCode.PROTOCOL_ERROR, "WINDOW_UPDATE of 0")
            return
        stream.window += increment
        if stream.window > f.MAX_WINDOW:
            self._reset(stream, f.ErrorCode.FLOW_CONTROL_ERROR, "stream window overflow")
            return
        if stream.pending:
            self._flush_stream(stream)


# Frame handlers by frame type (DATA 0 .. CONTINUATION 9), called with the connection: one
# table for all connections, not ten bound methods made per connection.
_HANDLERS = (
    ServerConnection._on_data,
    ServerConnection._on_headers,
    ServerConnection._on_priority,
    ServerConnection._on_rst_stream,
    ServerConnection._on_settings,
    ServerConnection._on_push_promise,
    ServerConnection._on_ping,
    ServerConnection._on_goaway,
    ServerConnection._on_window_update,
    ServerConnection._on_continuation,
)
