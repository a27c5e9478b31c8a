"""A small sans-IO HTTP/2 server connection for gRPC bidirectional streams.

pilotfish's native xDS transport (`pilotfish.xds.native`) drives it from an asyncio Protocol:
a push to a proxy is a few DATA frames written at once, and ACKs are parsed straight from the
bytes read. HPACK comes from the `hpack` library; frames and stream state are hand-written,
because the general libraries cost more than the whole per-message budget (a few µs): measured
here, h2 takes ~18 µs to receive one small DATA frame and ~8 µs to send one, hyperframe builds
an object per frame.

- `frames`: frame header layout, constants, and the frames a server writes;
- `grpc_messages`: length-prefixed gRPC messages, status codes, ``grpc-message`` encoding;
- `events`: what `ServerConnection.receive` reports;
- `connection`: `ServerConnection`, the state machine (bytes in, events and bytes out).
"""

from __future__ import annotations

from pilotfish.xds.http2.connection import Http2Error, ServerConnection
from pilotfish.xds.http2.events import (
    ConnectionTerminated,
    Event,
    MessageReceived,
    RequestReceived,
    StreamClosed,
    StreamEnded,
)
from pilotfish.xds.http2.frames import ErrorCode
from pilotfish.xds.http2.grpc_messages import GrpcStatus

__all__ = [
    "ConnectionTerminated",
    "ErrorCode",
    "Event",
    "GrpcStatus",
    "Http2Error",
    "MessageReceived",
    "RequestReceived",
    "ServerConnection",
    "StreamClosed",
    "StreamEnded",
]
