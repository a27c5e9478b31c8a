"""The xDS protocol core (sans-IO) and the contract to the config caches.

The grpc server lives in `pilotfish.xds.server` and is imported from there, so importing this
package never pulls in grpc or asyncio.
"""

from __future__ import annotations

from pilotfish.xds.delta import DeltaStream, DeltaTypeState
from pilotfish.xds.events import Acked, Event, Nacked, Sent, Subscribed, Unsubscribed
from pilotfish.xds.requests import Received
from pilotfish.xds.session import Dispatch, Session, new_stream_id
from pilotfish.xds.sotw import SotwStream, TypeState
from pilotfish.xds.watch import (
    Cancel,
    ConfigWatcher,
    DeltaPreparedResponse,
    DeltaRespond,
    DeltaWatchRequest,
    PreparedResponse,
    Respond,
    WatchRequest,
    held_after,
)

__all__ = [
    "Acked",
    "Cancel",
    "ConfigWatcher",
    "DeltaPreparedResponse",
    "DeltaRespond",
    "DeltaStream",
    "DeltaTypeState",
    "DeltaWatchRequest",
    "Dispatch",
    "Event",
    "Nacked",
    "PreparedResponse",
    "Received",
    "Respond",
    "Sent",
    "Session",
    "SotwStream",
    "Subscribed",
    "TypeState",
    "Unsubscribed",
    "WatchRequest",
    "held_after",
    "new_stream_id",
]
