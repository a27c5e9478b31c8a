"""How a node maps to a snapshot key: one snapshot per proxy, or one per group of proxies."""

from __future__ import annotations

import sys
from collections.abc import Callable

from pilotfish.protos import Node

__all__ = ["NodeHash", "by_cluster", "by_id"]

NodeHash = Callable[[Node], str]


def by_id(node: Node) -> str:
    """One snapshot per proxy (the node id); the default."""
    node_id: str = node.id
    return node_id


def by_cluster(node: Node) -> str:
    """One snapshot per service cluster (`node.cluster`): proxies of a group share responses.

    Interned: each stream keeps its key, and a group's streams then keep one str."""
    return sys.intern(node.cluster)
