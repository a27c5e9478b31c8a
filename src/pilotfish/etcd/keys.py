"""One object per etcd key: `<prefix>/<kind>/<namespace>/<name>`, the value the object as YAML.

One key per object makes a change to one object one small etcd event, lets an operator fix one
object with `etcdctl put`, and lets a bad value be refused alone. The YAML is re-dumped from
the parsed object (sorted keys), so the same object is always the same bytes, and it loads back
through `load_documents` to an equal object (`encode` checks that before anything is written).
"""

from __future__ import annotations

from typing import Any

import yaml
from google.protobuf import json_format

from pilotfish.errors import ValidationError
from pilotfish.sources.manifests import ConfigObject, LoadResult, load_documents

__all__ = [
    "FILE_PREFIX",
    "ObjectKey",
    "decode",
    "encode",
    "file_of",
    "object_key",
    "parse_key",
    "single_object",
]

ObjectKey = tuple[str, str, str]
"""(kind, namespace, name), as `ConfigObject.key`."""

FILE_PREFIX = "etcd:"
"""The ConfigStore "file" of a key is `etcd:<key>`: errors name the key an operator must fix."""

# Kinds whose fields are the whole document rather than `spec` (as pilotfish.sources reads them).
_WHOLE_DOCUMENT = frozenset({"EndpointSlice", "Pod"})


def object_key(prefix: str, key: ObjectKey) -> str:
    """The etcd key of an object."""
    kind, namespace, name = key
    return f"{prefix}/{kind}/{namespace}/{name}"


def parse_key(prefix: str, key: str) -> ObjectKey:
    """(kind, namespace, name) of an etcd key under `prefix`; `ValueError` if not of that shape."""
    head = prefix + "/"
    parts = key[len(head) :].split("/") if key.startswith(head) else []
    if len(parts) != 3 or not all(parts):
        raise ValueError(f"key {key!r} is not {prefix}/<kind>/<namespace>/<name>")
    kind, namespace, name = parts
    return kind, namespace, name


def file_of(key: str) -> str:
    """The ConfigStore file name standing for an etcd key."""
    return FILE_PREFIX + key


def encode(obj: ConfigObject) -> str:
    """The object as deterministic YAML; `ValidationError` if it would not load back equal."""
    for part, value in zip(("kind", "namespace", "name"), obj.key, strict=True):
        if not value or "/" in value:
            raise ValidationError(
                f"{part} {value!r} cannot be part of an etcd key",
                file=obj.file,
                index=obj.index,
                kind=obj.kind,
                namespace=obj.namespace,
                name=obj.name,
            )
    text = yaml.safe_dump(_document(obj), sort_keys=True, allow_unicode=True)
    loaded = decode(text, file=file_of(object_key("<prefix>", obj.key)), key=obj.key)
    if _identity(loaded) != _identity(obj):
        raise ValidationError(
            "does not survive a YAML round trip (a pilotfish bug)",
            file=obj.file,
            index=obj.index,
            kind=obj.kind,
            namespace=obj.namespace,
            name=obj.name,
        )
    return text


def decode(text: str, *, file: str, key: ObjectKey) -> ConfigObject:
    """The one object a key's value holds; `ValidationError` unless it loads cleanly and is
    exactly the object its key names."""
    result = load_documents(text, file=file)
    if result.errors:
        raise result.errors[0]
    return single_object(result, file=file, key=key)


def single_object(result: LoadResult, *, file: str, key: ObjectKey) -> ConfigObject:
    """The object of a cleanly loaded value, if it is the one object its key names; else
    `ValidationError` (a value under the wrong key would shadow or duplicate another)."""
    kind, namespace, name = key
    if result.skipped:
        detail = result.skipped[0].removeprefix(f"{file}[0] ")
        raise ValidationError(detail, file=file)
    if len(result.objects) != 1:
        raise ValidationError(
            f"an etcd key holds exactly one object, found {len(result.objects)}", file=file
        )
    (obj,) = result.objects
    if obj.key != key:
        raise ValidationError(
            f"the key names {kind} {namespace}/{name}: a value may only hold that object",
            file=file,
            index=obj.index,
            kind=obj.kind,
            namespace=obj.namespace,
            name=obj.name,
        )
    return obj


def _document(obj: ConfigObject) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": obj.name, "namespace": obj.namespace}
    if obj.labels:
        metadata["labels"] = dict(obj.labels)
    if obj.annotations:
        metadata["annotations"] = dict(obj.annotations)
    fields = json_format.MessageToDict(obj.spec)
    document: dict[str, Any] = {"apiVersion": obj.api_version, "kind": obj.kind}
    document["metadata"] = metadata
    if obj.kind in _WHOLE_DOCUMENT:
        document.update(fields)
    else:
        document["spec"] = fields
    return document


def _identity(obj: ConfigObject) -> tuple[object, ...]:
    return (
        obj.api_version,
        obj.key,
        obj.spec,
        dict(obj.labels),
        dict(obj.annotations),
    )
