"""HTTP/2 frames (RFC 9113 section 4 and 6): the 9-byte header, and the few frames a server
writes, as bytes.

Hand-written rather than hyperframe: a frame object per frame costs more than the whole budget
of a message here (a few µs). Parsing is done in place by `ServerConnection` with `HEAD`.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from enum import IntEnum

__all__ = [
    "ACK",
    "CONTINUATION",
    "DATA",
    "DEFAULT_MAX_FRAME_SIZE",
    "DEFAULT_WINDOW",
    "END_HEADERS",
    "END_STREAM",
    "GOAWAY",
    "HEAD",
    "HEADERS",
    "MAX_WINDOW",
    "PADDED",
    "PING",
    "PREFACE",
    "PRIORITY",
    "PRIORITY_FLAG",
    "PUSH_PROMISE",
    "RST_STREAM",
    "SETTINGS",
    "WINDOW_UPDATE",
    "ErrorCode",
    "Setting",
    "frame",
    "goaway",
    "head",
    "header_frames",
    "parse_settings",
    "rst_stream",
    "settings",
    "window_update",
]

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
"""What a client sends first, before its SETTINGS frame."""

DATA = 0x0
HEADERS = 0x1
PRIORITY = 0x2
RST_STREAM = 0x3
SETTINGS = 0x4
PUSH_PROMISE = 0x5
PING = 0x6
GOAWAY = 0x7
WINDOW_UPDATE = 0x8
CONTINUATION = 0x9

END_STREAM = 0x1
ACK = 0x1
END_HEADERS = 0x4
PADDED = 0x8
PRIORITY_FLAG = 0x20

DEFAULT_WINDOW = 65_535
DEFAULT_MAX_FRAME_SIZE = 16_384
MAX_WINDOW = 2**31 - 1

HEAD = struct.Struct(">BHBBL")
"""Frame header: length (high byte, low 16 bits), type, flags, stream id (R bit must be 0)."""

_U32 = struct.Struct(">L")
_TWO_U32 = struct.Struct(">LL")
_SETTING = struct.Struct(">HL")


class ErrorCode(IntEnum):
    """RST_STREAM and GOAWAY error codes."""

    NO_ERROR = 0x0
    PROTOCOL_ERROR = 0x1
    INTERNAL_ERROR = 0x2
    FLOW_CONTROL_ERROR = 0x3
    SETTINGS_TIMEOUT = 0x4
    STREAM_CLOSED = 0x5
    FRAME_SIZE_ERROR = 0x6
    REFUSED_STREAM = 0x7
    CANCEL = 0x8
    COMPRESSION_ERROR = 0x9
    CONNECT_ERROR = 0xA
    ENHANCE_YOUR_CALM = 0xB
    INADEQUATE_SECURITY = 0xC
    HTTP_1_1_REQUIRED = 0xD


class Setting(IntEnum):
    """SETTINGS parameters."""

    HEADER_TABLE_SIZE = 0x1
    ENABLE_PUSH = 0x2
    MAX_CONCURRENT_STREAMS = 0x3
    INITIAL_WINDOW_SIZE = 0x4
    MAX_FRAME_SIZE = 0x5
    MAX_HEADER_LIST_SIZE = 0x6


def head(length: int, frame_type: int, flags: int, stream_id: int) -> bytes:
    """A frame header for a payload of `length` bytes."""
    return HEAD.pack(length >> 16, length & 0xFFFF, frame_type, flags, stream_id)


def frame(frame_type: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    """A whole frame."""
    return head(len(payload), frame_type, flags, stream_id) + payload


def settings(values: Iterable[tuple[int, int]]) -> bytes:
    """A SETTINGS frame announcing `values`."""
    return frame(SETTINGS, 0, 0, b"".join(_SETTING.pack(key, value) for key, value in values))


def parse_settings(payload: bytes) -> list[tuple[int, int]]:
    """(parameter, value) pairs of a SETTINGS payload (its length is a multiple of 6)."""
    return [_SETTING.unpack_from(payload, offset) for offset in range(0, len(payload), 6)]


def window_update(stream_id: int, increment: int) -> bytes:
    """A WINDOW_UPDATE frame (stream 0: the connection's window)."""
    return frame(WINDOW_UPDATE, 0, stream_id, _U32.pack(increment))


def rst_stream(stream_id: int, code: int) -> bytes:
    """An RST_STREAM frame."""
    return frame(RST_STREAM, 0, stream_id, _U32.pack(code))


def goaway(last_stream_id: int, code: int, debug: bytes = b"") -> bytes:
    """A GOAWAY frame: streams above `last_stream_id` were not (and will not be) processed."""
    return frame(GOAWAY, 0, 0, _TWO_U32.pack(last_stream_id, code) + debug)


def header_frames(stream_id: int, block: bytes, end_stream: bool, max_frame_size: int) -> bytes:
    """A header block as HEADERS, then CONTINUATION frames if it is longer than a frame."""
    flags = END_STREAM if end_stream else 0
    if len(block) <= max_frame_size:
        return frame(HEADERS, flags | END_HEADERS, stream_id, block)
    chunks = [block[i : i + max_frame_size] for i in range(0, len(block), max_frame_size)]
    out = [frame(HEADERS, flags, stream_id, chunks[0])]
    for chunk in chunks[1:-1]:
        out.append(frame(CONTINUATION, 0, stream_id, chunk))
    out.append(frame(CONTINUATION, END_HEADERS, stream_id, chunks[-1]))
    return b"".join(out)
