"""YAML documents to Python values: PyYAML's safe loading, with its common case done faster.

Why: loading 10,000 services spent half its time in PyYAML's constructor, which is Python code
even with libyaml's parser (generators per mapping, a dispatch per scalar). Manifests are plain
trees of mappings, lists and strings, so those are built here directly from the parsed nodes;
anything else (numbers, booleans, nulls and other tagged scalars) is handed to PyYAML's own
constructor, node by node. A document with merge keys, aliases to an enclosing node, unhashable
keys or non-standard collection tags is built by PyYAML alone, so the result is always what
`yaml.load_all(text, Loader=CSafeLoader)` gives (the tests compare the two).
"""

from __future__ import annotations

from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

__all__ = ["load_all"]

# libyaml's parser (PyYAML's wheels bundle it) reads a 10,000-service mesh ~10x faster than
# the pure-Python one, with the same safe constructors.
_LOADER: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_STR = "tag:yaml.org,2002:str"
_SEQ = "tag:yaml.org,2002:seq"
_MAP = "tag:yaml.org,2002:map"
_MERGE = "tag:yaml.org,2002:merge"


class _Unusual(Exception):
    """The document needs PyYAML's own construction."""


def load_all(text: str) -> list[Any]:
    """Every document of `text`, as `yaml.load_all` with the (libyaml) safe loader gives
    them; raises the `yaml.YAMLError` it raises."""
    loader = _LOADER(text)
    try:
        documents = []
        while loader.check_node():
            node = loader.get_node()
            assert node is not None  # check_node said there is one
            try:
                documents.append(_build(loader, node, {}))
            except _Unusual:
                documents.append(loader.construct_document(node))
        return documents
    finally:
        loader.dispose()


def _build(loader: yaml.SafeLoader, node: Node, made: dict[int, Any]) -> Any:
    known = made.get(id(node), _MISSING)
    if known is not _MISSING:
        if known is _BUILDING:
            raise _Unusual  # an alias to an enclosing node: a recursive structure
        return known
    tag = node.tag
    if isinstance(node, ScalarNode):
        value: Any = node.value if tag == _STR else _scalar(loader, node)
    elif isinstance(node, SequenceNode) and tag == _SEQ:
        made[id(node)] = _BUILDING
        value = [_build(loader, item, made) for item in node.value]
    elif isinstance(node, MappingNode) and tag == _MAP:
        made[id(node)] = _BUILDING
        value = {}
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE:
                raise _Unusual
            key = _build(loader, key_node, made)
            try:
                hash(key)
            except TypeError:
                raise _Unusual from None  # PyYAML says so, with the node's position
            value[key] = _build(loader, value_node, made)
    else:
        raise _Unusual
    made[id(node)] = value
    return value


def _scalar(loader: yaml.SafeLoader, node: ScalarNode) -> Any:
    # PyYAML's constructor for the tag (int, bool, null, float, timestamp, binary...; an
    # unknown tag raises its ConstructorError).
    return loader.construct_object(node, deep=True)


_BUILDING = object()  # a collection whose items are being built
_MISSING = object()
