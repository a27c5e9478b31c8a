"""Hooks into the server's streams, for logging, metrics and custom control planes.

Subclass `Callbacks` and override what you need. Each hook may be a plain or an `async` method;
awaitable results are awaited in the stream's task, so keep them quick.

The `node` hooks get is the one the stream keeps: as the client sent it on its first request,
without `extensions` (Envoy's list of its compiled-in extensions, 60 KB; see
`pilotfish.xds.node`). `on_stream_request` sees that first request, extensions and all, unless
`node_extensions_in_requests` says it need not.
"""

from __future__ import annotations

from collections.abc import Awaitable

from pilotfish.protos import DeltaDiscoveryRequest, DiscoveryRequest, Node
from pilotfish.xds.events import Acked, Nacked, Sent

__all__ = ["Callbacks", "HookResult"]

HookResult = Awaitable[None] | None


class Callbacks:
    """No-op base: every hook does nothing unless overridden."""

    @property
    def plain_acks_in_requests(self) -> bool:
        """Whether `on_stream_request` must see plain ACKs (requests that only ACK the response
        in flight, the same subscription as before): True here, as it is documented to see
        every request. Callbacks that answer False let the native transport take those from
        their bytes without parsing them, about half of all requests; `on_stream_ack` sees
        every ACK either way."""
        return True

    @property
    def node_extensions_in_requests(self) -> bool:
        """Whether `on_stream_request` must see the first request's node with its
        `extensions`: True here, as it is documented to see every request as sent. Callbacks
        that answer False (and a server without callbacks) let the native transport cut the
        list out of the request's bytes before parsing them: a real Envoy's is 516 messages,
        about 16 us to parse on every connection, and nothing else reads it."""
        return True

    def on_stream_open(self, stream_id: int, type_url: str | None) -> HookResult:
        """A stream opened; `type_url` is None for ADS."""
        return None

    def on_stream_close(self, stream_id: int, node: Node | None) -> HookResult:
        """A stream ended (client gone, error, or server shutdown)."""
        return None

    def on_stream_request(
        self, stream_id: int, request: DiscoveryRequest | DeltaDiscoveryRequest
    ) -> HookResult:
        """A request arrived (SotW or delta), before the protocol core looked at it."""
        return None

    def on_stream_response(self, stream_id: int, node: Node, sent: Sent) -> HookResult:
        """A response is about to be written."""
        return None

    def on_stream_ack(self, stream_id: int, node: Node, ack: Acked) -> HookResult:
        """A client accepted a response (`ack.nonce`; its version is applied)."""
        return None

    def on_nack(self, stream_id: int, node: Node, nack: Nacked) -> HookResult:
        """A client rejected a response; `nack.error_detail` says why."""
        return None

    def on_stream_refused(self, stream_id: int, reason: str, code: str) -> HookResult:
        """The server refused a stream: `code` is the gRPC status name (``UNAUTHENTICATED``:
        no identity, refused before `on_stream_open`; ``PERMISSION_DENIED``: the identity may
        not act as the node of the first request, which no other hook has seen)."""
        return None
