"""The xDS protocol core (sans-IO) and the contract to the config caches.

The grpc server lives in `pilotfish.xds.server` and is imported from there, so importing this
package never pulls in grpc or asyncio.
"""

from __future__ import annotations

from pilotfish.xds.events import Acked, Event, Nacked, Sent, Subscribed, Unsubscribed
from pilotfish.xds.session import Dispatch, SotwSession
from pilotfish.xds.sotw import Received, SotwStream, TypeState
from pilotfish.xds.watch import Cancel, ConfigWatcher, PreparedResponse, Respond, WatchRequest

__all__ = [
    "Acked",
    "Cancel",
    "ConfigWatcher",
    "Dispatch",
    "Event",
    "Nacked",
    "PreparedResponse",
    "Received",
    "Respond",
    "Sent",
    "SotwSession",
    "SotwStream",
    "Subscribed",
    "TypeState",
    "Unsubscribed",
    "WatchRequest",
]
