"""An in-memory ADS client for unit tests: the real session and cache, no sockets.

It behaves like a well-mannered Envoy: it remembers per type the last response's nonce and the
last version it accepted, and each request carries them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from pilotfish.protos import (
    DeltaDiscoveryRequest,
    DeltaDiscoveryResponse,
    DiscoveryRequest,
    DiscoveryResponse,
    Node,
    Status,
)
from pilotfish.xds import ConfigWatcher, Received, Session, new_stream_id

__all__ = ["InMemoryAdsClient", "InMemoryDeltaClient"]


@dataclass(slots=True)
class _TypeView:
    names: tuple[str, ...] = ()
    nonce: str = ""
    version: str = ""


@dataclass
class InMemoryAdsClient:
    """Drive a `Session` over `watcher` as a client would, synchronously."""

    watcher: ConfigWatcher
    node: Node = field(default_factory=lambda: Node(id="test-node", cluster="test-cluster"))
    type_url: str | None = None
    ordered: bool = True
    session: Session = field(init=False)
    received: list[DiscoveryResponse] = field(default_factory=list)
    _types: dict[str, _TypeView] = field(default_factory=dict)
    _first: bool = True

    def __post_init__(self) -> None:
        self.session = Session(self.watcher, new_stream_id(), self.type_url, ordered=self.ordered)

    def send(self, request: DiscoveryRequest) -> Received:
        """Send a raw request (the node is added to the first one)."""
        if self._first:
            request.node.CopyFrom(self.node)
            self._first = False
        return self.session.receive(request)

    def subscribe(self, type_url: str, names: Iterable[str] = ()) -> Received:
        """Ask for `names` of a type (empty: wildcard on first request), with current state."""
        view = self._types.setdefault(type_url, _TypeView())
        view.names = tuple(names)
        return self.send(self._request(type_url, view))

    def poll(self) -> list[DiscoveryResponse]:
        """Take every pending response (decoded), in the order the server writes them."""
        out = []
        while (item := self.session.next_response()) is not None:
            response = DiscoveryResponse.FromString(item[0])
            out.append(response)
            self.received.append(response)
        return out

    def ack(self, response: DiscoveryResponse) -> Received:
        """Accept a response."""
        view = self._types.setdefault(response.type_url, _TypeView())
        view.nonce, view.version = response.nonce, response.version_info
        return self.send(self._request(response.type_url, view))

    def nack(self, response: DiscoveryResponse, message: str = "rejected") -> Received:
        """Reject a response: keep the previous version, report `message`."""
        view = self._types.setdefault(response.type_url, _TypeView())
        view.nonce = response.nonce
        request = self._request(response.type_url, view)
        request.error_detail.CopyFrom(Status(code=3, message=message))
        return self.send(request)

    def close(self) -> None:
        """End the stream."""
        self.session.close()

    def _request(self, type_url: str, view: _TypeView) -> DiscoveryRequest:
        return DiscoveryRequest(
            type_url=type_url,
            resource_names=list(view.names),
            version_info=view.version,
            response_nonce=view.nonce,
        )


@dataclass
class InMemoryDeltaClient:
    """Drive a delta `Session` over `watcher` as a client would, synchronously.

    `held` is what the client holds per type (name -> version), updated from every response it
    reads, as Envoy would after applying it.
    """

    watcher: ConfigWatcher
    node: Node = field(default_factory=lambda: Node(id="test-node", cluster="test-cluster"))
    type_url: str | None = None
    session: Session = field(init=False)
    received: list[DeltaDiscoveryResponse] = field(default_factory=list)
    held: dict[str, dict[str, str]] = field(default_factory=dict)
    _first: bool = True

    def __post_init__(self) -> None:
        self.session = Session(self.watcher, new_stream_id(), self.type_url, delta=True)

    def send(self, request: DeltaDiscoveryRequest) -> Received:
        """Send a raw request (the node is added to the first one)."""
        if self._first:
            request.node.CopyFrom(self.node)
            self._first = False
        return self.session.receive(request)

    def subscribe(
        self,
        type_url: str,
        names: Iterable[str] = (),
        *,
        unsubscribe: Iterable[str] = (),
        initial_versions: Mapping[str, str] | None = None,
    ) -> Received:
        """Change the subscription (the first call may carry `initial_versions`)."""
        return self.send(
            DeltaDiscoveryRequest(
                type_url=type_url,
                resource_names_subscribe=list(names),
                resource_names_unsubscribe=list(unsubscribe),
                initial_resource_versions=dict(initial_versions or {}),
            )
        )

    def poll(self) -> list[DeltaDiscoveryResponse]:
        """Take every pending response (decoded) and apply it to `held`."""
        out = []
        while (item := self.session.next_response()) is not None:
            response = DeltaDiscoveryResponse.FromString(item[0])
            held = self.held.setdefault(response.type_url, {})
            held.update({r.name: r.version for r in response.resources})
            for name in response.removed_resources:
                held.pop(name, None)
            out.append(response)
            self.received.append(response)
        return out

    def ack(self, response: DeltaDiscoveryResponse) -> Received:
        """Accept a response."""
        return self.send(
            DeltaDiscoveryRequest(type_url=response.type_url, response_nonce=response.nonce)
        )

    def nack(self, response: DeltaDiscoveryResponse, message: str = "rejected") -> Received:
        """Reject a response."""
        request = DeltaDiscoveryRequest(type_url=response.type_url, response_nonce=response.nonce)
        request.error_detail.CopyFrom(Status(code=3, message=message))
        return self.send(request)

    def close(self) -> None:
        """End the stream."""
        self.session.close()
