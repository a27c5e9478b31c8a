"""Caches that hold config and answer the xDS server's watches (no grpc, no asyncio).

`SnapshotCache` (a consistent snapshot per node or group), `LinearCache` (one type, fleet-wide,
per-resource versions) and `MuxCache` (several caches behind one watcher, by type).
"""

from __future__ import annotations

from .assembled import Assembled, Messages
from .encoded import Encoded
from .linear import LinearCache
from .mux import MuxCache
from .node_hash import NodeHash, by_cluster, by_id
from .resource import CachedResource, Serialized, WithTtl, content_version
from .snapshot import Consistency, Snapshot, SnapshotStats
from .snapshot_cache import SnapshotCache
from .status import NodeStatus, StatusTable, TypeStatus

__all__ = [
    "Assembled",
    "CachedResource",
    "Consistency",
    "Encoded",
    "LinearCache",
    "Messages",
    "MuxCache",
    "NodeHash",
    "NodeStatus",
    "Serialized",
    "Snapshot",
    "SnapshotCache",
    "SnapshotStats",
    "StatusTable",
    "TypeStatus",
    "WithTtl",
    "by_cluster",
    "by_id",
    "content_version",
]
