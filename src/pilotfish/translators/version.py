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

from google.protobuf.struct_pb2 import Struct

__all__ = ["METADATA_KEY", "TRANSLATOR_VERSION", "stamp"]

TRANSLATOR_VERSION = "istio-1"
METADATA_KEY = "pilotfish"


def stamp(message: Any, sources: Iterable[str] = ()) -> Any:
    """Record the translator version (and the `kind/namespace/name` of the config objects the
    message came from) in the message's metadata; returns the message."""
    message.metadata.filter_metadata[METADATA_KEY].CopyFrom(_stamp(tuple(sorted(set(sources)))))
    return message


@functools.lru_cache(maxsize=4096)
def _stamp(names: tuple[str, ...]) -> Struct:
    # Built once per set of sources: Struct.update is Python code, CopyFrom is not. Callers
    # only copy from it.
    info = Struct()
    info.update({"translator": TRANSLATOR_VERSION})
    if names:
        info.update({"config": list(names)})
    return info
