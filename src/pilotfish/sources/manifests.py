"""Load Kubernetes-style manifests (YAML or JSON, many documents per file) into typed objects.

Istio's networking and security kinds are parsed into pilotfish's own Istio-compatible messages
and checked against istiod's rules (`pilotfish.sources.validate`).
Nothing is lost quietly: unknown kinds are reported and skipped, and an invalid object becomes a
`ValidationError` that names the file, the document index, the object and the field path, while
every valid object of the same file still loads.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import yaml
from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from pilotfish.errors import ValidationError
from pilotfish.protos.istio.networking.v1alpha3 import (
    destination_rule_pb2,
    gateway_pb2,
    service_entry_pb2,
    sidecar_pb2,
    virtual_service_pb2,
    workload_entry_pb2,
)
from pilotfish.protos.istio.security.v1beta1 import (
    authorization_policy_pb2,
    peer_authentication_pb2,
)
from pilotfish.protos.k8s import registry_pb2
from pilotfish.sources.validate import validate
from pilotfish.sources.yaml_documents import load_all

__all__ = ["KINDS", "SUFFIXES", "ConfigObject", "LoadResult", "load_documents", "load_path"]

_NETWORKING = ("networking.istio.io", ("v1alpha3", "v1beta1", "v1"))
_SECURITY = ("security.istio.io", ("v1beta1", "v1"))
_CORE = ("", ("v1",))
_DISCOVERY = ("discovery.k8s.io", ("v1",))

KINDS: Mapping[str, tuple[tuple[str, tuple[str, ...]], type[Message]]] = {
    "VirtualService": (_NETWORKING, virtual_service_pb2.VirtualService),
    "DestinationRule": (_NETWORKING, destination_rule_pb2.DestinationRule),
    "Gateway": (_NETWORKING, gateway_pb2.Gateway),
    "ServiceEntry": (_NETWORKING, service_entry_pb2.ServiceEntry),
    "WorkloadEntry": (_NETWORKING, workload_entry_pb2.WorkloadEntry),
    "Sidecar": (_NETWORKING, sidecar_pb2.Sidecar),
    "PeerAuthentication": (_SECURITY, peer_authentication_pb2.PeerAuthentication),
    "AuthorizationPolicy": (_SECURITY, authorization_policy_pb2.AuthorizationPolicy),
    "Service": (_CORE, registry_pb2.ServiceSpec),
    "EndpointSlice": (_DISCOVERY, registry_pb2.EndpointSlice),
    "Pod": (_CORE, registry_pb2.Pod),
}
"""Kinds pilotfish understands: (API group, versions) and the message of their `spec`."""

# Kubernetes kinds: only the registry's fields are declared, the rest is ignored, and for these
# the message is the whole document (less apiVersion, kind, metadata) rather than `spec`.
_KUBERNETES = frozenset({"Service", "EndpointSlice", "Pod"})
_WHOLE_DOCUMENT = frozenset({"EndpointSlice", "Pod"})

SUFFIXES = (".yaml", ".yml", ".json")


@dataclass(frozen=True)
class ConfigObject:
    """One valid object: identity, metadata, typed spec, and where it came from."""

    api_version: str
    kind: str
    namespace: str
    name: str
    spec: Message
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    file: str = ""
    index: int = 0

    @property
    def key(self) -> tuple[str, str, str]:
        """(kind, namespace, name): unique within a config set."""
        return self.kind, self.namespace, self.name


@dataclass
class LoadResult:
    """Objects loaded, objects refused (with why), and documents of kinds not understood."""

    objects: list[ConfigObject] = field(default_factory=list)
    errors: list[ValidationError] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def extend(self, other: LoadResult) -> None:
        """Add another file's results."""
        self.objects.extend(other.objects)
        self.errors.extend(other.errors)
        self.skipped.extend(other.skipped)


def load_path(path: str | Path) -> LoadResult:
    """Load one manifest file, or every .yaml/.yml/.json file under a directory (sorted)."""
    root = Path(path)
    files = sorted(p for p in root.rglob("*") if p.suffix in SUFFIXES) if root.is_dir() else [root]
    result = LoadResult()
    for file in files:
        try:
            text = file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            result.errors.append(ValidationError(f"cannot read: {error}", file=str(file)))
            continue
        result.extend(load_documents(text, file=str(file)))
    return result


def load_documents(text: str, *, file: str = "<string>") -> LoadResult:
    """Load every document of a YAML (or JSON) text."""
    result = LoadResult()
    try:
        documents = load_all(text)
    except yaml.YAMLError as error:
        result.errors.append(ValidationError(f"not valid YAML: {error}", file=file))
        return result
    for index, document in enumerate(documents):
        if document is None:
            continue  # an empty document between '---' separators
        try:
            loaded = _load_one(document, file, index)
        except ValidationError as error:
            result.errors.append(error)
            continue
        if isinstance(loaded, str):
            result.skipped.append(loaded)
        elif problems := validate(loaded):
            result.errors.extend(problems)
        else:
            result.objects.append(loaded)
    return result


def _load_one(document: object, file: str, index: int) -> ConfigObject | str:
    if not isinstance(document, dict):
        raise ValidationError("a manifest must be a mapping", file=file, index=index)
    kind = str(document.get("kind", ""))
    api_version = str(document.get("apiVersion", ""))
    metadata = document.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise ValidationError("must be a mapping", file=file, index=index, kind=kind,
                              field="metadata")  # fmt: skip
    name = str(metadata.get("name", ""))
    namespace = str(metadata.get("namespace") or "default")
    where: dict[str, Any] = {
        "file": file,
        "index": index,
        "kind": kind,
        "namespace": namespace,
        "name": name,
    }
    if kind not in KINDS:
        return f"{file}[{index}] {kind or '(no kind)'} {namespace}/{name}: kind not supported"
    (group, versions), message_type = KINDS[kind]
    group_of, _, version = api_version.rpartition("/")
    if group_of != group or version not in versions:
        allowed = ", ".join(f"{group}/{v}" for v in versions)
        raise ValidationError(f"apiVersion {api_version!r}: expected one of {allowed}",
                              field="apiVersion", **where)  # fmt: skip
    if not name:
        raise ValidationError("is required", field="metadata.name", **where)
    spec: Any
    if kind in _WHOLE_DOCUMENT:
        spec = {k: v for k, v in document.items() if k not in ("apiVersion", "kind", "metadata")}
    else:
        spec = document.get("spec")
    if not isinstance(spec, dict):
        raise ValidationError("must be a mapping", field="spec", **where)
    message = message_type()
    spec = _go_durations(message_type.DESCRIPTOR, spec)
    try:
        json_format.ParseDict(spec, message, ignore_unknown_fields=kind in _KUBERNETES)
    except json_format.ParseError as error:
        root = "" if kind in _WHOLE_DOCUMENT else "spec"
        path, reason = _locate(message_type.DESCRIPTOR, spec, root, kind in _KUBERNETES)
        raise ValidationError(reason or _leaf_reason(str(error)), field=path, **where) from error
    return ConfigObject(
        api_version=api_version,
        kind=kind,
        namespace=namespace,
        name=name,
        spec=message,
        labels=_strings(metadata.get("labels")),
        annotations=_strings(metadata.get("annotations")),
        file=file,
        index=index,
    )


_GO_UNIT = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|µs|ms|s|m|h)")
_GO_SECONDS = {"ns": "1e-9", "us": "1e-6", "µs": "1e-6", "ms": "0.001", "s": "1", "m": "60",
               "h": "3600"}  # fmt: skip


def _go_duration(text: str) -> str:
    """Istio writes durations the Go way (`1m30s`, `500ms`); protobuf's JSON wants seconds
    (`90s`). Anything that is not a Go duration is returned as it is, for the parser to refuse."""
    sign, body = ("-", text[1:]) if text.startswith("-") else ("", text)
    parts = _GO_UNIT.findall(body)
    if not parts or "".join(n + u for n, u in parts) != body:
        return text
    total = sum((Decimal(n) * Decimal(_GO_SECONDS[u]) for n, u in parts), Decimal(0))
    digits = format(total.quantize(Decimal("1e-9")), "f").rstrip("0").rstrip(".")
    return f"{sign}{digits}s"


def _go_durations(descriptor: Any, data: Any) -> Any:
    """`data` with every string in a google.protobuf.Duration field read as a Go duration."""
    if not isinstance(data, dict):
        return data
    fields = _duration_fields(descriptor)
    if not fields:
        return data  # nothing below holds a Duration: not walked
    out = dict(data)
    for key, value in data.items():
        fd = fields.get(key)
        if fd is not None:
            out[key] = _go_durations_in(fd, value)
    return out


@functools.cache
def _duration_fields(descriptor: Any) -> dict[str, Any]:
    """The fields of `descriptor` (by JSON and proto name) that are or hold a Duration: made
    once per message type, and only they are walked (most of a manifest holds none)."""
    found = {}
    for fd in descriptor.fields:
        if fd.type == FieldDescriptor.TYPE_MESSAGE and _reaches_duration(fd.message_type):
            found[fd.json_name] = found[fd.name] = fd
    return found


@functools.cache
def _reaches_duration(descriptor: Any) -> bool:
    """Whether a google.protobuf.Duration is `descriptor` or can be anywhere inside it."""
    seen: set[str] = set()
    stack = [descriptor]
    while stack:
        message = stack.pop()
        if message.full_name == "google.protobuf.Duration":
            return True
        if message.full_name in seen or message.full_name.startswith("google.protobuf."):
            continue
        seen.add(message.full_name)
        stack.extend(
            fd.message_type for fd in message.fields if fd.type == FieldDescriptor.TYPE_MESSAGE
        )
    return False


def _go_durations_in(fd: Any, value: Any) -> Any:
    if fd.type != FieldDescriptor.TYPE_MESSAGE:
        return value
    target = fd.message_type
    if target.GetOptions().map_entry:
        value_fd = target.fields_by_name["value"]
        if value_fd.type == FieldDescriptor.TYPE_MESSAGE and isinstance(value, dict):
            return {k: _go_durations(value_fd.message_type, v) for k, v in value.items()}
        return value
    if target.full_name == "google.protobuf.Duration":
        return _go_duration(value) if isinstance(value, str) else value
    if target.full_name.startswith("google.protobuf."):
        return value
    if isinstance(value, list):
        return [_go_durations(target, v) for v in value]
    return _go_durations(target, value)


def _strings(value: object) -> dict[str, str]:
    return {str(k): str(v) for k, v in value.items()} if isinstance(value, dict) else {}


def _short(message: str) -> str:
    return message.split("\n", 1)[0].rstrip(".")


def _locate(descriptor: Any, data: Any, path: str, ignore_unknown: bool = False) -> tuple[str, str]:
    """The path of the first thing in `data` that does not parse as `descriptor`, and why."""
    if not isinstance(data, dict):
        return path, f"expected an object, got {type(data).__name__}"
    fields = {f.json_name: f for f in descriptor.fields} | {f.name: f for f in descriptor.fields}
    for key, value in data.items():
        here = f"{path}.{key}" if path else key
        fd = fields.get(key)
        if fd is None:
            if ignore_unknown:
                continue
            return here, "unknown field"
        is_message = fd.type == FieldDescriptor.TYPE_MESSAGE
        is_map = is_message and fd.message_type.GetOptions().map_entry
        well_known = is_message and fd.message_type.full_name.startswith("google.protobuf.")
        if is_message and not is_map and not well_known:
            items: Iterable[tuple[str, Any]] = (
                ((f"{here}[{i}]", v) for i, v in enumerate(value))
                if _is_repeated(fd) and isinstance(value, list)
                else [(here, value)]
            )
            for item_path, item in items:
                try:
                    target = _message_class(fd.message_type)()
                    json_format.ParseDict(item, target, ignore_unknown_fields=ignore_unknown)
                except json_format.ParseError:
                    return _locate(fd.message_type, item, item_path, ignore_unknown)
                except (TypeError, AttributeError) as error:
                    return item_path, str(error)
            continue
        try:
            json_format.ParseDict(
                {key: value}, _message_class(descriptor)(), ignore_unknown_fields=ignore_unknown
            )
        except json_format.ParseError as error:
            return here, _leaf_reason(str(error))
    return path, ""


def _is_repeated(fd: Any) -> bool:
    return bool(fd.is_repeated)


def _message_class(descriptor: Any) -> type[Message]:
    from google.protobuf import message_factory

    return message_factory.GetMessageClass(descriptor)


def _leaf_reason(message: str) -> str:
    # protobuf nests "Failed to parse X field: ..." once per level; the innermost part is the why.
    reason = _short(message)
    while reason.startswith("Failed to parse ") and ": " in reason:
        reason = reason.split(": ", 1)[1]
    return reason.rstrip(".")
