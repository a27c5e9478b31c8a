"""Events the protocol core reports about a stream.

A NACK is an event, never an exception: the server records it, tells callbacks and metrics, and
keeps serving the client its last ACKed config.
"""

from __future__ import annotations

from dataclasses import dataclass

from pilotfish.frozen import fast_init
from pilotfish.protos import Status

__all__ = ["Acked", "Event", "Nacked", "Sent", "Subscribed", "Unsubscribed"]


@fast_init
@dataclass(frozen=True, slots=True)
class Subscribed:
    """The client asked for more: new names, or wildcard turned on."""

    type_url: str
    names: frozenset[str]
    wildcard: bool


@fast_init
@dataclass(frozen=True, slots=True)
class Unsubscribed:
    """The client dropped names, or dropped its wildcard subscription (`wildcard` is True)."""

    type_url: str
    names: frozenset[str]
    wildcard: bool


@fast_init
@dataclass(frozen=True, slots=True)
class Acked:
    """The client applied the response with this nonce."""

    type_url: str
    version: str
    nonce: str


@fast_init
@dataclass(frozen=True, slots=True)
class Nacked:
    """The client rejected `version`; it keeps `kept_version`, its last ACKed one."""

    type_url: str
    version: str
    nonce: str
    kept_version: str
    error_detail: Status

    @property
    def message(self) -> str:
        """The client's error text (Envoy puts the reason here)."""
        text: str = self.error_detail.message
        return text


@fast_init
@dataclass(frozen=True, slots=True)
class Sent:
    """A response left for the client."""

    type_url: str
    version: str
    nonce: str
    names: frozenset[str]


Event = Subscribed | Unsubscribed | Acked | Nacked | Sent
