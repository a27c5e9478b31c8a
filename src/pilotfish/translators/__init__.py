"""Translators: pure functions from high-level config to Envoy resources.

`translate(proxy, objects, registry)` turns Istio networking objects plus a service registry
into one proxy's listeners, routes, clusters and endpoints (`Translation.snapshot()` plugs into
the cache). `pilotfish.translators.build` holds the small, explicit Envoy resource builders that
custom control planes and tests share.

The names below are imported when first used: a control plane that only builds its own
resources with `build` does not load the Istio translators (about 6 MB of modules and protos).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pilotfish.translators.index import ConfigIndex
    from pilotfish.translators.memo import MemoStats, TranslationMemo
    from pilotfish.translators.outbound import outbound_view
    from pilotfish.translators.proxy import Proxy, ProxyKind
    from pilotfish.translators.shared import SharedParts
    from pilotfish.translators.sidecar import routes_view
    from pilotfish.translators.translation import Translation, translate
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

_HOMES = {
    "TRANSLATOR_VERSION": "version",
    "ConfigIndex": "index",
    "MemoStats": "memo",
    "Proxy": "proxy",
    "ProxyKind": "proxy",
    "SharedParts": "shared",
    "Translation": "translation",
    "TranslationMemo": "memo",
    "outbound_view": "outbound",
    "routes_view": "sidecar",
    "translate": "translation",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value  # once: later lookups find it without this hook
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
