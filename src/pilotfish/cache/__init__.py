"""Caches that hold config and answer the xDS server's watches (no grpc, no asyncio)."""

from __future__ import annotations

from .node_hash import NodeHash, by_cluster, by_id
from .resource import CachedResource, content_version
from .snapshot import Consistency, Snapshot, SnapshotStats
from .snapshot_cache import SnapshotCache
from .status import NodeStatus, TypeStatus

__all__ = [
    "CachedResource",
    "Consistency",
    "NodeHash",
    "NodeStatus",
    "Snapshot",
    "SnapshotCache",
    "SnapshotStats",
    "TypeStatus",
    "by_cluster",
    "by_id",
    "content_version",
]
