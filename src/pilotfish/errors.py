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
    "ValidationError",
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


class ValidationError(PilotfishError):
    """A config object that cannot be used, located for a person: file, document, object, field.

    `str()` reads like
    `vs.yaml[2] VirtualService default/reviews: spec.http[0].route[1].weight: <why>`.
    """

    def __init__(
        self,
        reason: str,
        *,
        file: str = "",
        index: int | None = None,
        kind: str = "",
        namespace: str = "",
        name: str = "",
        field: str = "",
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.file = file
        self.index = index
        self.kind = kind
        self.namespace = namespace
        self.name = name
        self.field = field

    def __str__(self) -> str:
        where = self.file + (f"[{self.index}]" if self.index is not None else "")
        obj = " ".join(
            p for p in (self.kind, "/".join(p for p in (self.namespace, self.name) if p)) if p
        )
        parts = [p for p in (where, obj) if p]
        prefix = " ".join(parts)
        field = f"{self.field}: " if self.field else ""
        return f"{prefix}: {field}{self.reason}" if prefix else f"{field}{self.reason}"
