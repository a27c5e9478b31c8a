"""What both stream variants (SotW and delta) do first with a request: find the type it is for,
and settle (ACK or NACK) the response it answers."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Protocol

from pilotfish.errors import RemoteProtocolError
from pilotfish.protos import DeltaDiscoveryRequest, DiscoveryRequest, Status
from pilotfish.xds.events import Acked, Event, Nacked
from pilotfish.xds.watch import DeltaWatchRequest, WatchRequest

__all__ = ["Received", "request_type_url", "settle"]


@dataclass(frozen=True, slots=True)
class Received:
    """The outcome of one request.

    `watch` is the watch to open for the request's type, replacing any open one; None only
    for a stale request, which changes nothing.
    """

    type_url: str
    events: tuple[Event, ...] = ()
    watch: WatchRequest | DeltaWatchRequest | None = None
    stale: bool = False


class _Settleable(Protocol):
    type_url: str
    sent_version: str
    sent_nonce: str
    awaiting_ack: bool
    acked_version: str
    last_nack: Nacked | None


def request_type_url(stream_type: str | None, request_type: str, variant: str) -> str:
    """The type a request is for: its own on ADS (required), the stream's on a typed service."""
    if stream_type is None:
        if not request_type:
            raise RemoteProtocolError(f"{variant} request without type_url")
        return sys.intern(request_type)  # one str per type for every stream, not per request
    if request_type and request_type != stream_type:
        raise RemoteProtocolError(f"request for {request_type} on the stream for {stream_type}")
    return stream_type


def settle(
    state: _Settleable, nonce: str, request: DiscoveryRequest | DeltaDiscoveryRequest
) -> Acked | Nacked | None:
    """If the request answers the response in flight, record and return the ACK or NACK."""
    if not (state.awaiting_ack and nonce == state.sent_nonce):
        return None
    state.awaiting_ack = False
    if request.HasField("error_detail"):
        detail = Status()
        detail.CopyFrom(request.error_detail)
        nack = Nacked(state.type_url, state.sent_version, nonce, state.acked_version, detail)
        state.last_nack = nack
        return nack
    state.acked_version = state.sent_version
    return Acked(state.type_url, state.sent_version, nonce)
