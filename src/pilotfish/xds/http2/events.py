"""What `ServerConnection.receive` reports: plain slotted objects, one per happening."""

from __future__ import annotations

__all__ = [
    "ConnectionTerminated",
    "Event",
    "MessageReceived",
    "RequestReceived",
    "StreamClosed",
    "StreamEnded",
]


class RequestReceived:
    """A client opened a stream (a gRPC call) to `path`; `headers` exclude pseudo-headers."""

    __slots__ = ("headers", "path", "stream_id")

    def __init__(self, stream_id: int, path: str, headers: list[tuple[str, str]]) -> None:
        self.stream_id = stream_id
        self.path = path
        self.headers = headers

    def __repr__(self) -> str:
        return f"RequestReceived({self.stream_id}, {self.path!r})"


class MessageReceived:
    """One whole gRPC message arrived on a stream."""

    __slots__ = ("data", "stream_id")

    def __init__(self, stream_id: int, data: bytes) -> None:
        self.stream_id = stream_id
        self.data = data

    def __repr__(self) -> str:
        return f"MessageReceived({self.stream_id}, {len(self.data)} bytes)"


class StreamEnded:
    """The client half-closed a stream (END_STREAM): it sends nothing more, the server ends the
    call (a gRPC server answers with its trailers)."""

    __slots__ = ("stream_id",)

    def __init__(self, stream_id: int) -> None:
        self.stream_id = stream_id

    def __repr__(self) -> str:
        return f"StreamEnded({self.stream_id})"


class StreamClosed:
    """A stream is over without the server ending it: the client reset it (`error_code` is the
    client's, `reason` empty), or the connection ended it because the client's messages broke
    gRPC framing (then `reason` says how; the client got it as ``grpc-message``)."""

    __slots__ = ("error_code", "reason", "stream_id")

    def __init__(self, stream_id: int, error_code: int, reason: str = "") -> None:
        self.stream_id = stream_id
        self.error_code = error_code
        self.reason = reason

    def __repr__(self) -> str:
        return f"StreamClosed({self.stream_id}, {self.error_code}, {self.reason!r})"


class ConnectionTerminated:
    """GOAWAY: the client's (`remote`), or ours after a connection error (then the bytes to
    send end with our GOAWAY and the transport should close once they are written)."""

    __slots__ = ("error_code", "last_stream_id", "reason", "remote")

    def __init__(self, error_code: int, last_stream_id: int, reason: str, remote: bool) -> None:
        self.error_code = error_code
        self.last_stream_id = last_stream_id
        self.reason = reason
        self.remote = remote

    def __repr__(self) -> str:
        who = "remote" if self.remote else "local"
        return f"ConnectionTerminated({who}, {self.error_code}, {self.reason!r})"


Event = RequestReceived | MessageReceived | StreamEnded | StreamClosed | ConnectionTerminated
