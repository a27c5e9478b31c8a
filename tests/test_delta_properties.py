"""Property test: any delta subscription sequence converges to exactly what it should hold."""

from __future__ import annotations

from hypothesis import example, given, settings
from hypothesis import strategies as st

from pilotfish.cache import Snapshot, SnapshotCache
from pilotfish.protos import CLUSTER_TYPE, ENDPOINT_TYPE, DeltaDiscoveryResponse, Node
from pilotfish.testing import InMemoryDeltaClient
from pilotfish.translators import build

NAMES = ("a", "b", "c")

snapshots = st.dictionaries(st.sampled_from(NAMES), st.integers(1, 3)).map(
    lambda ports: Snapshot(
        {
            "cds": [build.eds_cluster(n, connect_timeout=p) for n, p in ports.items()],
            "eds": [build.load_assignment(n, [("127.0.0.1", p)]) for n, p in ports.items()],
        }
    )
)
names = st.sets(st.sampled_from(NAMES), max_size=3)
steps = st.lists(
    st.one_of(
        st.tuples(st.just("snapshot"), snapshots),
        st.tuples(st.just("subscribe"), names),
        st.tuples(st.just("unsubscribe"), names),
        st.tuples(st.just("read"), st.integers(0, 3)),
    ),
    max_size=30,
)


_ONE = Snapshot(
    {"cds": [build.eds_cluster("a")], "eds": [build.load_assignment("a", [("127.0.0.1", 1)])]}
)


@settings(max_examples=300, deadline=None)
@given(snapshots, steps)
@example(_ONE, [("read", 3), ("unsubscribe", {"a"}), ("subscribe", {"a"})])
def test_client_ends_holding_exactly_the_subscribed_existing_resources(
    first: Snapshot, script: list[tuple[str, object]]
) -> None:
    cache = SnapshotCache()
    cache.set_snapshot("n", first)
    current = first
    client = InMemoryDeltaClient(cache, node=Node(id="n"))
    client.subscribe(CLUSTER_TYPE)  # wildcard
    client.subscribe(ENDPOINT_TYPE, ["a"])
    subscribed = {"a"}
    unread: list[DeltaDiscoveryResponse] = []
    for op, arg in script:
        if op == "snapshot":
            assert isinstance(arg, Snapshot)
            current = arg
            cache.set_snapshot("n", arg)
        elif op == "subscribe":
            assert isinstance(arg, set)
            client.subscribe(ENDPOINT_TYPE, sorted(arg))  # may carry a stale nonce: still applies
            subscribed |= arg
        elif op == "unsubscribe":
            assert isinstance(arg, set)
            client.subscribe(ENDPOINT_TYPE, unsubscribe=sorted(arg))
            subscribed -= arg
            for name in arg:  # the client forgets what it unsubscribes
                client.held.get(ENDPOINT_TYPE, {}).pop(name, None)
        elif op == "read":
            assert isinstance(arg, int)
            unread.extend(client.poll())
            for response in unread[:arg]:
                client.ack(response)
            unread = unread[arg:]
    for _ in range(20):  # then the client reads and ACKs everything until quiet
        unread.extend(client.poll())
        if not unread:
            break
        for response in unread:
            client.ack(response)
        unread = []
    latest = {
        type_url: {name: r.version for name, r in current.resources(type_url).items()}
        for type_url in (CLUSTER_TYPE, ENDPOINT_TYPE)
    }
    assert client.held.get(CLUSTER_TYPE, {}) == latest[CLUSTER_TYPE]
    expected_eds = {n: v for n, v in latest[ENDPOINT_TYPE].items() if n in subscribed}
    assert client.held.get(ENDPOINT_TYPE, {}) == expected_eds
