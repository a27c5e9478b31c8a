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
from pilotfish.protos.wire import length_delimited as _field

__all__ = ["METADATA_KEY", "TRANSLATOR_VERSION", "stamp", "stamp_bytes"]

TRANSLATOR_VERSION = "istio-1"
METADATA_KEY = "pilotfish"


def stamp(message: Any, sources: Iterable[str] = ()) -> Any:
    """Record the translator version (and the `kind/namespace/name` of the config objects the
    message came from) in the message's metadata; returns the message."""
    message.metadata.filter_metadata[METADATA_KEY].CopyFrom(_info(tuple(sources)))
    return message


def stamp_bytes(sources: Iterable[str] = ()) -> bytes:
    """The serialized `metadata` that `stamp` gives a message: for messages made as bytes.
    Written directly (each service's sources differ, so each asks once; no `Struct` made)."""
    given = tuple(sources)
    data = _STAMP_BYTES.get(given)
    if data is None:
        if not given:
            return _NO_SOURCES
        if len(given) == 1:  # most: one object's
            values = _field(_VALUES, _field(_STRING_VALUE, given[0].encode()))
        else:
            values = b"".join(
                [_field(_VALUES, _field(_STRING_VALUE, n.encode())) for n in sorted(set(given))]
            )
        data = _STAMP_BYTES.put(given, b"".join((_before_values(len(values)), values, _TRANSLATOR)))
    return data


def _stamp_data(values: bytes) -> bytes:
    """The metadata bytes around a ListValue's `values` (b"": no sources). Struct fields are in
    key order ("config", "translator"), as deterministic output writes map entries."""
    struct = _TRANSLATOR
    if values:
        config = _field(2, _field(_LIST_VALUE, values))  # the entry's Value
        struct = _field(1, _CONFIG_KEY + config) + _TRANSLATOR
    entry = _METADATA_KEY + _field(2, struct)  # Metadata.filter_metadata["pilotfish"]
    return _field(1, entry)


@functools.lru_cache(maxsize=1024)
def _before_values(size: int) -> bytes:
    """What `_stamp_data` writes before values of `size` bytes: only lengths, which depend on
    nothing else (the values are followed by the constant `_TRANSLATOR` alone), so kept by size
    and a stamp is one join instead of five nested copies."""
    data = _stamp_data(bytes(size))
    return data[: len(data) - size - len(_TRANSLATOR)]


_STRING_VALUE, _LIST_VALUE, _VALUES = 3, 6, 1  # Value.string_value, .list_value; ListValue.values
_CONFIG_KEY = _field(1, b"config")  # a Struct.fields entry's key
_TRANSLATOR = _field(
    1, _field(1, b"translator") + _field(2, _field(_STRING_VALUE, TRANSLATOR_VERSION.encode()))
)
_METADATA_KEY = _field(1, METADATA_KEY.encode())
_NO_SOURCES = _stamp_data(b"")


def _info(given: tuple[str, ...]) -> Struct:
    info = _STAMPS.get(given)
    if info is None:
        info = _STAMPS.put(given, _stamp(tuple(sorted(set(given)))))
    return info


_STAMPS: Bounded[tuple[str, ...], Struct] = Bounded(4096)
"""Stamps by the sources as given (a service's clusters and routes ask with the same ones)."""
_STAMP_BYTES: Bounded[tuple[str, ...], bytes] = Bounded(4096)


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
