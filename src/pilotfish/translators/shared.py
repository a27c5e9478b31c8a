"""Parts of a translation made once a round for every proxy shape that sees them alike.

A proxy shape is everything translation reads about a proxy, so sidecars that differ only in
address or workload are shapes of their own, and each used to translate every service again.
Most of the work depends on much less: clusters and load assignments on the proxy's namespace,
locality and address family (`outbound_view`), the sidecar's route configurations on its
namespace, and on its labels only if a VirtualService routes by them (`routes_view`). Each part
sees only its view (the translators apply it themselves), so a view's result is exactly what
any proxy with that view would get: made by the first shape of a round, with a memo of the
view's own, and taken by the others.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any, Generic, TypeVar

from envoy.config.cluster.v3.cluster_pb2 import Cluster
from envoy.config.endpoint.v3.endpoint_pb2 import ClusterLoadAssignment
from envoy.config.route.v3.route_pb2 import RouteConfiguration

from pilotfish.cache import Assembled, Encoded
from pilotfish.registry import Registry
from pilotfish.translators.changes import Changes
from pilotfish.translators.index import ConfigIndex
from pilotfish.translators.memo import TranslationMemo
from pilotfish.translators.outbound import outbound, outbound_view
from pilotfish.translators.proxy import Proxy
from pilotfish.translators.sidecar import outbound_routes, routes_view

__all__ = ["SharedPart", "SharedParts"]

T = TypeVar("T")

_Clusters = tuple[tuple[Encoded[Cluster], ...], tuple[Encoded[ClusterLoadAssignment], ...]]
_Routes = tuple[RouteConfiguration | Assembled[RouteConfiguration], ...]


class SharedPart(Generic[T]):
    """One part, `make(view, index, registry, memo)`, made once a round per view key; views
    no shape asked for in a round are forgotten at its end (the others' results stay, for
    proxies that connect before the next round)."""

    def __init__(self, make: Callable[[Proxy, ConfigIndex, Registry, TranslationMemo], T]) -> None:
        self._make = make
        self._memos: dict[Hashable, TranslationMemo] = {}
        self._results: dict[Hashable, T] = {}
        self._changes: Changes | None = None

    def begin(self, changes: Changes | None) -> None:
        """A round starts; `changes` since the last one (as `TranslationMemo.begin` takes)."""
        self._results, self._changes = {}, changes

    def get(self, key: Hashable, view: Proxy, index: ConfigIndex, registry: Registry) -> T:
        """The part for `view` (whose key is `key`), made by its first shape this round."""
        if key in self._results:
            return self._results[key]
        memo = self._memos.setdefault(key, TranslationMemo())
        memo.begin(self._changes)
        found = self._results[key] = self._make(view, index, registry, memo)
        memo.end()
        return found

    def end(self) -> None:
        """The round is over."""
        self._memos = {k: m for k, m in self._memos.items() if k in self._results}

    def memos(self) -> list[TranslationMemo]:
        """The memo of each view (for their statistics)."""
        return list(self._memos.values())


def _outbound(auto_mtls: bool) -> Callable[..., _Clusters]:
    def make(view: Proxy, index: ConfigIndex, registry: Registry, memo: TranslationMemo) -> Any:
        return outbound(view, index, registry, auto_mtls=auto_mtls, memo=memo)

    return make


def _routes(view: Proxy, index: ConfigIndex, registry: Registry, memo: TranslationMemo) -> Any:
    return tuple(outbound_routes(view, index, registry, memo))


class SharedParts:
    """What a controller keeps across rounds for its proxy shapes to share; it calls `begin`
    and `end` around each round."""

    def __init__(self) -> None:
        # Auto mTLS changes every cluster, so plain and mTLS ones are parts of their own.
        self._clusters = {mtls: SharedPart(_outbound(mtls)) for mtls in (False, True)}
        self._routes: SharedPart[_Routes] = SharedPart(_routes)

    def _parts(self) -> list[SharedPart[Any]]:
        return [*self._clusters.values(), self._routes]

    def begin(self, changes: Changes | None) -> None:
        """A round starts; `changes` since the last one (None: every unit is checked)."""
        for part in self._parts():
            part.begin(changes)

    def end(self) -> None:
        """The round is over: views no shape asked for are forgotten."""
        for part in self._parts():
            part.end()

    def memos(self) -> list[TranslationMemo]:
        """Each view's memo: clusters' first, then routes'."""
        return [memo for part in self._parts() for memo in part.memos()]

    def clusters(
        self, proxy: Proxy, index: ConfigIndex, registry: Registry, auto_mtls: bool
    ) -> _Clusters:
        """`outbound(proxy, ...)`, the same tuples for every shape of the view."""
        view = outbound_view(proxy)
        key = (view.namespace, view.locality, view.address)
        return self._clusters[auto_mtls].get(key, view, index, registry)

    def routes(self, proxy: Proxy, index: ConfigIndex, registry: Registry) -> _Routes:
        """`outbound_routes(proxy, ...)`, the same tuple for every shape of the view."""
        view = routes_view(proxy, index)
        key = (view.namespace, tuple(sorted(view.labels.items())))
        return self._routes.get(key, view, index, registry)
