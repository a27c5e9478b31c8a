"""Node hashes: the snapshot key of a node."""

from __future__ import annotations

from pilotfish.cache import by_cluster, by_id
from pilotfish.protos import Node


def test_by_id_and_by_cluster_name_the_node_fields() -> None:
    node = Node(id="sidecar~10.0.0.1~a.ns~ns.svc.cluster.local", cluster="reviews.ns")
    assert by_id(node) == node.id
    assert by_cluster(node) == "reviews.ns"


def test_streams_of_one_cluster_keep_one_key_object() -> None:
    # Each stream keeps its key: a group of a thousand proxies keeps one str, not a thousand.
    first = by_cluster(Node(id="a", cluster="bench-" + "group"))
    second = by_cluster(Node(id="b", cluster="bench-" + "group"))
    assert first == second == "bench-group"
    assert first is second
