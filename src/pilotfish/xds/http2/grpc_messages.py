"""gRPC over HTTP/2: length-prefixed messages, status codes and the ``grpc-message`` encoding.

Each message on a stream is a 1-byte compressed flag, a 4-byte big-endian length and the
message bytes, split over DATA frames however the sender likes. Only uncompressed messages are
accepted: pilotfish never advertises a ``grpc-accept-encoding``, and xDS clients do not compress.
"""

from __future__ import annotations

import struct
from enum import IntEnum

__all__ = [
    "MAX_MESSAGE_SIZE",
    "PREFIX",
    "GrpcStatus",
    "MessageError",
    "MessageReader",
    "percent_encode",
]

MAX_MESSAGE_SIZE = 64 * 1024 * 1024
"""Largest message accepted from a client (Envoy's node alone is ~60 KB)."""

PREFIX = struct.Struct(">BL")
"""The 5-byte message prefix: compressed flag, length."""


class GrpcStatus(IntEnum):
    """The gRPC status codes the server sends (``grpc-status``)."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    UNAUTHENTICATED = 16


class MessageError(Exception):
    """A message the server will not read: the stream ends with `status` and the text."""

    def __init__(self, status: GrpcStatus, message: str) -> None:
        super().__init__(message)
        self.status = status


class MessageReader:
    """Reassembles one stream's messages from its DATA payloads.

    The common case, one whole message in one DATA frame, takes one slice and no buffering;
    the buffer of a message split over frames is let go once it is complete (an idle stream
    holds none).
    """

    __slots__ = ("_buffer", "max_size")

    def __init__(self, max_size: int = MAX_MESSAGE_SIZE) -> None:
        self.max_size = max_size
        self._buffer: bytearray | None = None

    def feed(self, data: bytes, start: int, stop: int) -> list[bytes]:
        """The messages completed by ``data[start:stop]``; raises `MessageError`."""
        buffer = self._buffer
        if buffer is None:
            if stop - start >= 5:
                flag, length = PREFIX.unpack_from(data, start)
                if flag == 0 and start + 5 + length == stop and length <= self.max_size:
                    return [data[start + 5 : stop]]
            buffer = self._buffer = bytearray()
        with memoryview(data) as view:  # one copy, into the buffer (a slice would be two)
            buffer += view[start:stop]
        messages: list[bytes] = []
        offset = 0
        while len(buffer) - offset >= 5:
            flag, length = PREFIX.unpack_from(buffer, offset)
            if flag != 0:
                raise MessageError(
                    GrpcStatus.UNIMPLEMENTED,
                    "compressed messages are not supported (send grpc-encoding identity)",
                )
            if length > self.max_size:
                raise MessageError(
                    GrpcStatus.RESOURCE_EXHAUSTED,
                    f"message of {length} bytes is larger than the limit of {self.max_size}",
                )
            end = offset + 5 + length
            if end > len(buffer):
                break
            with memoryview(buffer) as view:  # released before the buffer is cut below
                messages.append(bytes(view[offset + 5 : end]))
            offset = end
        if offset == len(buffer):
            self._buffer = None
        elif offset:
            del buffer[:offset]
        return messages

    @property
    def partial(self) -> int:
        """Bytes of an incomplete message held back."""
        return 0 if self._buffer is None else len(self._buffer)


_UNRESERVED = frozenset(range(0x20, 0x7F)) - {ord("%")}


def percent_encode(message: str) -> str:
    """``grpc-message`` text: UTF-8, with bytes outside printable ASCII and ``%`` as %XX."""
    data = message.encode()
    if all(byte in _UNRESERVED for byte in data):
        return message
    return "".join(chr(byte) if byte in _UNRESERVED else f"%{byte:02X}" for byte in data)
