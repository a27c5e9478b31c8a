"""The translator's version, recorded in everything it outputs.

Bump `TRANSLATOR_VERSION` whenever equal inputs would translate to different Envoy config, so an
operator comparing two proxies' config dumps can tell a translator change from a config change.
Listeners, clusters, virtual hosts and routes carry it in `metadata.filter_metadata["pilotfish"]`
together with the config objects they came from; snapshot versions start with it.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import Any

from google.protobuf.struct_pb2 import Struct, Value

from pilotfish.bounded import Bounded

__all__ = ["METADATA_KEY", "TRANSLATOR_VERSION", "stamp"]

TRANSLATOR_VERSION = "istio-1"
METADATA_KEY = "pilotfish"


def stamp(message: Any, sources: Iterable[str] = ()) -> Any:
    """Record the translator version (and the `kind/namespace/name` of the config objects the
    message came from) in the message's metadata; returns the message."""
    given = tuple(sources)
    info = _STAMPS.get(given)
    if info is None:
        info = _STAMPS.put(given, _stamp(tuple(sorted(set(given)))))
    message.metadata.filter_metadata[METADATA_KEY].CopyFrom(info)
    return message


_STAMPS: Bounded[tuple[str, ...], Struct] = Bounded(4096)
"""Stamps by the sources as given (a service's clusters and routes ask with the same ones)."""


@functools.lru_cache(maxsize=4096)
def _stamp(names: tuple[str, ...]) -> Struct:
    # Built once per set of sources (one service's clusters share one), from constructors:
    # Struct.update is Python code. Callers only copy from it.
    info = Struct()
    info.fields["translator"].string_value = TRANSLATOR_VERSION
    if names:
        values = info.fields["config"].list_value.values
        values.extend(Value(string_value=name) for name in names)
    return info
