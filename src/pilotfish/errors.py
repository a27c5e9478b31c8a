"""The exceptions pilotfish raises, split by who is at fault.

A NACK from a proxy is not an exception: it is an event (`pilotfish.xds.Nacked`).
"""

from __future__ import annotations

__all__ = [
    "LocalProtocolError",
    "PilotfishError",
    "ProtocolError",
    "RemoteProtocolError",
    "UnknownTypeError",
]


class PilotfishError(Exception):
    """Base of every error pilotfish raises on purpose."""


class UnknownTypeError(PilotfishError, KeyError):
    """A type URL or short type name that pilotfish does not serve."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown resource type"


class ProtocolError(PilotfishError):
    """The xDS protocol was broken."""


class LocalProtocolError(ProtocolError):
    """Our own code misused the protocol core (a bug on this side)."""


class RemoteProtocolError(ProtocolError):
    """The peer broke the protocol; the stream is ended with this message."""
