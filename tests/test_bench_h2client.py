"""The benchmark's HTTP/2 client (`bench.h2client`) on hand-made server frames: messages that
span frames come out whole (also in a reused buffer), and a header block after the first one
decodes against the HPACK table the first one left, even when the first came from the cache."""

from __future__ import annotations

import asyncio
import struct

import hpack
import pytest
from bench import h2client

_HEAD = struct.Struct(">BHBBL")
_DATA, _HEADERS, _SETTINGS = 0x0, 0x1, 0x4
_END_STREAM, _END_HEADERS = 0x1, 0x4


def _frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
    size = len(payload)
    return _HEAD.pack(size >> 16, size & 0xFFFF, kind, flags, stream) + payload


def _data_frames(message: bytes, frame: int = 16_384) -> list[bytes]:
    wire = struct.pack(">BL", 0, len(message)) + message
    return [_frame(_DATA, 0, 1, wire[i : i + frame]) for i in range(0, len(wire), frame)]


class _Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written: list[bytes] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written.append(bytes(data))

    def is_closing(self) -> bool:
        return False

    def abort(self) -> None:
        pass

    def close(self) -> None:
        pass


def _feed(stream: h2client.GrpcStream, data: bytes, chunk: int) -> None:
    for start in range(0, len(data), chunk):
        piece = data[start : start + chunk]
        buffer = stream.get_buffer(len(piece))
        buffer[: len(piece)] = piece
        stream.buffer_updated(len(piece))


def _connect() -> tuple[h2client.GrpcStream, list[bytes], list[BaseException]]:
    messages: list[bytes] = []
    closed: list[BaseException] = []
    stream = h2client.GrpcStream(
        h2client.request_headers("x:1", "/m"),
        lambda message: messages.append(bytes(message)),  # reused buffers: copy
        closed.append,
    )
    stream.connection_made(_Transport())
    return stream, messages, closed


@pytest.mark.parametrize("chunk", [7, 16_393, 1 << 20])
def test_messages_spanning_frames_arrive_whole_and_equal_ones_are_shared(chunk: int) -> None:
    first = bytes(range(256)) * 160  # 40,960 bytes: three frames
    tail = first[:-3] + b"end"  # the same length, different in its last frame (a nonce)
    head = b"x" + first[1:]  # different in its first byte
    small = b"tiny"
    order = [first, first, tail, small, first, head, head]
    stream, _, closed = _connect()
    got: list[bytes | bytearray] = []
    stream._on_message = got.append  # the objects themselves
    wire = _frame(_SETTINGS, 0, 0, b"")
    wire += _frame(_HEADERS, _END_HEADERS, 1, hpack.Encoder().encode([(":status", "200")]))
    for message in order:
        wire += b"".join(_data_frames(message))
    _feed(stream, wire, chunk)
    assert not closed
    assert [bytes(message) for message in got] == order
    # Each message equal to the one of its length before is that same object.
    assert got[1] is got[0]
    assert got[6] is got[5]
    assert len({id(message) for message in got}) == 5


def test_trailers_decode_against_the_table_of_a_cached_first_block() -> None:
    encoder = hpack.Encoder()  # indexes what it sends: the trailers refer to the first block
    head = encoder.encode([(":status", "200"), ("x-kind", "sidecar-bench")])
    trailers = encoder.encode(
        [("x-kind", "sidecar-bench"), ("grpc-status", "3"), ("grpc-message", "boom")]
    )
    assert trailers[0] == 0x80 | 62  # the repeated header went by its dynamic table index
    for _ in range(2):  # the second connection's first block comes from the cache
        stream, messages, closed = _connect()
        wire = _frame(_HEADERS, _END_HEADERS, 1, head) + b"".join(_data_frames(b"m"))
        wire += _frame(_HEADERS, _END_HEADERS | _END_STREAM, 1, trailers)
        _feed(stream, wire, 1 << 20)
        assert messages == [b"m"]
        assert len(closed) == 1
        assert "grpc-status 3 'boom'" in str(closed[0])
    assert head in h2client._FIRST_BLOCKS
