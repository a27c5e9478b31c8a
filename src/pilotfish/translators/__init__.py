"""Translators: pure functions from high-level config to Envoy resources.

`translate(proxy, objects, registry)` turns Istio networking objects plus a service registry
into one proxy's listeners, routes, clusters and endpoints (`Translation.snapshot()` plugs into
the cache). `pilotfish.translators.build` holds the small, explicit Envoy resource builders that
custom control planes and tests share.
"""

from __future__ import annotations

from pilotfish.translators.index import ConfigIndex
from pilotfish.translators.memo import MemoStats, TranslationMemo
from pilotfish.translators.outbound import outbound_view
from pilotfish.translators.proxy import Proxy, ProxyKind
from pilotfish.translators.shared import SharedParts
from pilotfish.translators.sidecar import routes_view
from pilotfish.translators.translate import Translation, translate
from pilotfish.translators.version import TRANSLATOR_VERSION

__all__ = [
    "TRANSLATOR_VERSION",
    "ConfigIndex",
    "MemoStats",
    "Proxy",
    "ProxyKind",
    "SharedParts",
    "Translation",
    "TranslationMemo",
    "outbound_view",
    "routes_view",
    "translate",
]
