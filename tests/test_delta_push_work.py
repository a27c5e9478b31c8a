"""Delta pushes cost work per client state, not per stream (counts, not time).

Streams of a fleet that hold the same versions share one state (`pilotfish.xds.delta`), a
snapshot answers each state once (`Snapshot.delta_response`, counted in `SnapshotStats`), and
the ACK of an answer costs no answer at all, as in state-of-the-world.
"""

from __future__ import annotations

import gc
import tracemalloc

from hypothesis import given, settings
from hypothesis import strategies as st

from pilotfish.cache import LinearCache, Snapshot, SnapshotCache
from pilotfish.protos import (
    CLUSTER_TYPE,
    ENDPOINT_TYPE,
    LISTENER_TYPE,
    ROUTE_TYPE,
    DeltaDiscoveryRequest,
    DeltaDiscoveryResponse,
    Node,
)
from pilotfish.testing import InMemoryDeltaClient
from pilotfish.translators import build
from pilotfish.xds import DeltaPreparedResponse, DeltaStream, held_after, new_stream_id
from pilotfish.xds.delta import DeltaTypeState
from tests.helpers import mesh

NAMES = ("a", "b", "c")


def _snapshot(generation: int) -> Snapshot:
    """Every type changes with the generation (ports, timeouts, weights)."""
    clusters = {n: [("127.0.0.1", 1000 * generation + i)] for i, n in enumerate(NAMES)}
    return mesh(
        clusters,
        {n: 1 + (i + generation) % 5 for i, n in enumerate(NAMES)},
        listener_port=10_000 + generation,
        connect_timeout=1.0 + generation,
    )


def _fleet(cache: SnapshotCache, size: int) -> list[InMemoryDeltaClient]:
    """`size` Envoy-like delta clients of one node group, converged on the cache's snapshot."""
    clients = [InMemoryDeltaClient(cache, node=Node(id=f"p{i}", cluster="g")) for i in range(size)]
    for client in clients:
        client.subscribe(CLUSTER_TYPE)  # wildcard
        client.subscribe(ENDPOINT_TYPE, NAMES)
        client.subscribe(LISTENER_TYPE)  # wildcard
        client.subscribe(ROUTE_TYPE, ["local_route"])
    _converge(clients)
    return clients


def _read(clients: list[InMemoryDeltaClient]) -> list[tuple[InMemoryDeltaClient, list[bytes]]]:
    return [(c, [r.SerializeToString() for r in c.poll()]) for c in clients]


def _converge(clients: list[InMemoryDeltaClient]) -> int:
    """Read and ACK until quiet; the number of responses read."""
    count = 0
    for _ in range(10):
        read = _read(clients)
        if not any(responses for _, responses in read):
            return count
        for client, responses in read:
            for data in responses:
                client.ack(DeltaDiscoveryResponse.FromString(data))
                count += 1
    raise AssertionError("delta clients did not converge")


def _holds(client: InMemoryDeltaClient, snapshot: Snapshot) -> bool:
    return all(
        client.held.get(t, {}) == {n: r.version for n, r in snapshot.resources(t).items()}
        for t in (CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE)
    )


def _cache() -> SnapshotCache:
    return SnapshotCache(node_hash=lambda node: node.cluster)


def test_an_ack_costs_no_delta_answer() -> None:
    cache = _cache()
    cache.set_snapshot("g", _snapshot(0))
    clients = _fleet(cache, 3)
    pushed = _snapshot(1)
    cache.set_snapshot("g", pushed)
    read = _read(clients)
    assert all(len(responses) == 4 for _, responses in read)  # CDS, EDS, LDS, RDS
    answered = pushed.stats.delta_answers
    assert answered > 0
    for client, responses in read:
        for data in responses:
            client.ack(DeltaDiscoveryResponse.FromString(data))
    assert pushed.stats.delta_answers == answered  # each ACK found its answer (none) known
    assert _converge(clients) == 0
    assert all(_holds(c, pushed) for c in clients)
    # A NACK still opens a watch that knows the rejected versions are held: nothing resent.
    again = _snapshot(2)
    cache.set_snapshot("g", again)
    for client in clients:
        for response in client.poll():
            client.nack(response)
    assert all(c.poll() == [] for c in clients)


def test_the_work_of_a_push_does_not_grow_with_streams() -> None:
    counts = []
    for size in (1, 8):
        cache = _cache()
        cache.set_snapshot("g", _snapshot(0))
        clients = _fleet(cache, size)
        pushed = _snapshot(1)
        cache.set_snapshot("g", pushed)
        assert _converge(clients) == 4 * size
        assert all(_holds(c, pushed) for c in clients)
        stats = pushed.stats
        counts.append((stats.delta_answers, stats.delta_responses_built))
    # Bodies: CDS, EDS, LDS, RDS, then EDS and RDS again, as the updated clusters and listener
    # re-warm (Envoy waits for their endpoints and route); each once, however many streams.
    assert counts[0] == counts[1]
    assert counts[0][1] == 6


def test_streams_in_one_state_share_it_and_the_bytes_they_are_sent() -> None:
    cache = _cache()
    cache.set_snapshot("g", _snapshot(0))
    clients = _fleet(cache, 4)
    protocols = [c.session.protocol for c in clients]
    assert all(isinstance(p, DeltaStream) for p in protocols)
    for type_url in (CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE):
        states = [p.types[type_url] for p in protocols if isinstance(p, DeltaStream)]
        assert all(s.versions is states[0].versions for s in states)
        assert all(s.names is states[0].names for s in states)
    cache.set_snapshot("g", _snapshot(1))
    sessions = [c.session for c in clients]
    first = [s.next_parts() for s in sessions]
    bodies = [item[0] for item in first if item is not None]
    assert len(bodies) == 4 and all(body is bodies[0] for body in bodies)
    assert len({item[1] for item in first if item is not None}) == 1  # each stream's own nonce 1


def test_resumed_streams_holding_the_same_versions_share_one_answer() -> None:
    cache = _cache()
    snapshot = _snapshot(0)
    cache.set_snapshot("g", snapshot)
    held = {n: r.version for n, r in snapshot.resources(CLUSTER_TYPE).items()}
    held["a"] = "stale"
    clients = [InMemoryDeltaClient(cache, node=Node(id=f"p{i}", cluster="g")) for i in range(5)]
    for client in clients:
        client.subscribe(CLUSTER_TYPE, initial_versions=held)
    responses = [client.poll() for client in clients]
    assert all([r.name for r in rs[0].resources] == ["a"] for rs in responses)
    assert snapshot.stats.delta_responses_built == 1


def test_a_response_made_for_another_state_is_applied_to_the_stream_s_own() -> None:
    stream = DeltaStream(new_stream_id())
    stream.receive(DeltaDiscoveryRequest(type_url=ENDPOINT_TYPE, resource_names_subscribe=["a"]))
    watched = stream.watch_request(ENDPOINT_TYPE)
    response = DeltaPreparedResponse(
        ENDPOINT_TYPE, "v1", {"a": "1", "b": "2"}, frozenset({"ghost"}), b"", names=None
    )
    stream.send_parts(response)
    assert stream.types[ENDPOINT_TYPE].versions == {"a": "1", "b": "2"}
    stream.receive(DeltaDiscoveryRequest(type_url=ENDPOINT_TYPE, resource_names_subscribe=["x"]))
    state: DeltaTypeState = stream.types[ENDPOINT_TYPE]
    made_for = (state.versions, frozenset({"other"}), {"never": "taken"})
    stream.send_parts(
        DeltaPreparedResponse(
            ENDPOINT_TYPE, "v2", {}, frozenset({"a", "b", "x"}), b"", after=made_for
        )
    )
    # Subscribed names told absent are held as "" (said once); others are forgotten.
    assert stream.types[ENDPOINT_TYPE].versions == {"a": "", "x": ""}
    assert dict(watched.versions) == {}  # what a watch was given never changes
    assert held_after({"a": "1"}, frozenset(), {}, frozenset()) == {"a": "1"}


def test_updated_clusters_rewarm_their_endpoints_from_the_shared_state() -> None:
    # The CDS update's refresh forgets the endpoints held (once for every stream in the state):
    # they go out again although unchanged, then are held again by every stream alike.
    cache = _cache()
    cache.set_snapshot("g", _snapshot(0))
    clients = _fleet(cache, 3)
    clusters = {n: [("127.0.0.1", i)] for i, n in enumerate(NAMES)}
    route = {n: 1 + i % 5 for i, n in enumerate(NAMES)}
    cache.set_snapshot("g", mesh(clusters, route, listener_port=10_000, connect_timeout=1.0))
    _converge(clients)
    slower = mesh(clusters, route, listener_port=10_000, connect_timeout=7.0)
    cache.set_snapshot("g", slower)
    for client in clients:
        responses = client.poll()
        assert [(r.type_url, len(r.resources)) for r in responses] == [
            (CLUSTER_TYPE, 3),
            (ENDPOINT_TYPE, 3),
        ]
        for response in responses:
            client.ack(response)
    assert slower.stats.delta_responses_built == 2
    assert _converge(clients) == 0
    assert all(_holds(c, slower) for c in clients)


_SNAPSHOTS = st.dictionaries(st.sampled_from(NAMES), st.integers(1, 3)).map(
    lambda ports: Snapshot(
        {
            "cds": [build.eds_cluster(n, connect_timeout=p) for n, p in ports.items()],
            "eds": [build.load_assignment(n, [("127.0.0.1", p)]) for n, p in ports.items()],
        }
    )
)
_WHO = st.integers(0, 2)
_NAME_SETS = st.sets(st.sampled_from(NAMES), max_size=3)
_STEPS = st.lists(
    st.one_of(
        st.tuples(st.just("snapshot"), _WHO, _SNAPSHOTS),
        st.tuples(st.just("subscribe"), _WHO, _NAME_SETS),
        st.tuples(st.just("unsubscribe"), _WHO, _NAME_SETS),
        st.tuples(st.just("read"), _WHO, st.integers(0, 3)),
        st.tuples(st.just("nack"), _WHO, st.integers(0, 3)),
    ),
    max_size=30,
)


@settings(max_examples=200, deadline=None)
@given(_SNAPSHOTS, _STEPS)
def test_streams_sharing_states_each_end_holding_their_own_subscription(
    first: Snapshot, script: list[tuple[str, int, object]]
) -> None:
    # Three streams start alike (sharing every state) and part ways by the script: whatever
    # one does to a shared state, each ends holding exactly what it subscribed to.
    cache = _cache()
    cache.set_snapshot("g", first)
    current = first
    clients = [InMemoryDeltaClient(cache, node=Node(id=f"p{i}", cluster="g")) for i in range(3)]
    subscribed = [{"a", "b"} for _ in clients]
    unread: list[list[DeltaDiscoveryResponse]] = [[] for _ in clients]
    for client in clients:
        client.subscribe(CLUSTER_TYPE)
        client.subscribe(ENDPOINT_TYPE, ["a", "b"])
    for op, who, arg in script:
        client = clients[who]
        if op == "snapshot":
            assert isinstance(arg, Snapshot)
            current = arg
            cache.set_snapshot("g", arg)
        elif op == "subscribe":
            assert isinstance(arg, set)
            client.subscribe(ENDPOINT_TYPE, sorted(arg))
            subscribed[who] |= arg
        elif op == "unsubscribe":
            assert isinstance(arg, set)
            client.subscribe(ENDPOINT_TYPE, unsubscribe=sorted(arg))
            subscribed[who] -= arg
            for name in arg:
                client.held.get(ENDPOINT_TYPE, {}).pop(name, None)
        else:
            assert isinstance(arg, int)
            unread[who].extend(client.poll())
            for response in unread[who][:arg]:
                if op == "read":
                    client.ack(response)
                else:
                    client.nack(response)
            unread[who] = unread[who][arg:]
    for who, client in enumerate(clients):
        for _ in range(20):
            unread[who].extend(client.poll())
            if not unread[who]:
                break
            for response in unread[who]:
                client.ack(response)
            unread[who] = []
        clusters = {n: r.version for n, r in current.resources(CLUSTER_TYPE).items()}
        endpoints = current.resources(ENDPOINT_TYPE)
        assert client.held.get(CLUSTER_TYPE, {}) == clusters
        assert client.held.get(ENDPOINT_TYPE, {}) == {
            n: r.version for n, r in endpoints.items() if n in subscribed[who]
        }


def test_a_linear_cache_answers_each_delta_state_once() -> None:
    def assignment(name: str, port: int) -> object:
        return build.load_assignment(name, [("127.0.0.1", port)])

    counts = []
    for size in (1, 6):
        linear = LinearCache("eds", [assignment(n, 1) for n in NAMES])
        clients = [InMemoryDeltaClient(linear, node=Node(id=f"p{i}")) for i in range(size)]
        for client in clients:
            client.subscribe(ENDPOINT_TYPE)  # wildcard
            client.subscribe(ENDPOINT_TYPE, ["b", "ghost"])  # and names, one absent
        _converge(clients)
        answered = linear.delta_answers
        linear.update_resources([assignment("a", 2)], ["c"])
        for client in clients:
            (update,) = client.poll()
            assert [r.name for r in update.resources] == ["a"]
            assert list(update.removed_resources) == ["c"]
            client.ack(update)
        assert _converge(clients) == 0
        now = {n: r.version for n, r in linear.resources().items()}
        assert all(c.held[ENDPOINT_TYPE] == now for c in clients)
        counts.append(linear.delta_answers - answered)
    assert counts[0] == counts[1] == 1  # the update, once; the ACKs cost none


def test_what_pushes_make_of_held_versions_goes_with_their_snapshot() -> None:
    # A push that updates every cluster makes each state's endpoints be forgotten (sent again);
    # what that made was kept in a process-wide table and outlived its snapshot: about 0.3 MB
    # a push at 1,000 clusters, for 256 pushes. Kept with the response now, it goes with it.
    names = [f"cluster-{i:03d}" for i in range(300)]

    def generation(g: int) -> Snapshot:
        return mesh({n: [("127.0.0.1", 1000 + g)] for n in names}, names[0], connect_timeout=g)

    cache = SnapshotCache()
    cache.set_snapshot("n", generation(0))
    clients = [InMemoryDeltaClient(cache, node=Node(id="n")) for _ in range(3)]
    for client in clients:
        client.subscribe(CLUSTER_TYPE)
        client.subscribe(ENDPOINT_TYPE, names)
    _converge(clients)

    def push(first: int, last: int) -> int:
        for g in range(first, last):
            cache.set_snapshot("n", generation(g))
            _converge(clients)
        gc.collect()
        return tracemalloc.get_traced_memory()[0]

    tracemalloc.start()
    try:
        settled = push(1, 6)
        later = push(6, 36)
    finally:
        tracemalloc.stop()
    assert later - settled < 100_000, later - settled  # bytes, after 30 more pushes
