"""Property tests: random request/snapshot sequences against the real session and cache."""

from __future__ import annotations

from dataclasses import dataclass, field
from unittest import mock

from hypothesis import given, settings
from hypothesis import strategies as st

from pilotfish.cache import Snapshot, SnapshotCache
from pilotfish.protos import (
    CLUSTER_TYPE,
    ENDPOINT_TYPE,
    LISTENER_TYPE,
    RESOURCE_TYPES,
    DiscoveryRequest,
    DiscoveryResponse,
    Node,
    wire,
)
from pilotfish.testing.client import InMemoryAdsClient
from pilotfish.xds import PreparedResponse, SotwStream, sotw
from tests.helpers import mesh

NAMES = ("a", "b", "c", "d")
TYPES = (CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE)

snapshots = st.builds(
    lambda ports: mesh({n: [("127.0.0.1", port)] for n, port in ports.items()}, "a"),
    st.dictionaries(st.sampled_from(NAMES), st.integers(1, 3)),  # each name's endpoint
)
steps = st.lists(
    st.one_of(
        st.tuples(st.just("snapshot"), snapshots),
        # Two before the client reads: the second answer replaces the first, unwritten.
        st.tuples(st.just("snapshots"), st.tuples(snapshots, snapshots)),
        st.tuples(st.just("subscribe"), st.sets(st.sampled_from(NAMES))),
        st.tuples(st.just("answer"), st.lists(st.booleans(), max_size=4)),
        st.tuples(st.just("stale"), st.sampled_from(TYPES)),
    ),
    max_size=40,
)


def names_of(response: DiscoveryResponse) -> set[str]:
    row = RESOURCE_TYPES[response.type_url]
    return {row.name_of(row.message.FromString(r.value)) for r in response.resources}


@dataclass
class Model:
    """What a correct server must have done, tracked from the client's side."""

    cache: SnapshotCache = field(default_factory=SnapshotCache)
    snapshot: Snapshot | None = None
    nacked: dict[str, str] = field(default_factory=dict)
    last_nonce: int = 0
    eds_names: set[str] = field(default_factory=set)
    must_send: set[str] = field(default_factory=set)
    endpoints: dict[str, bytes] = field(default_factory=dict)  # what the client applied
    rejected: set[str] = field(default_factory=set)  # types whose last response was NACKed

    def check(self, response: DiscoveryResponse, ads: InMemoryAdsClient) -> None:
        nonce = int(response.nonce)
        assert nonce > self.last_nonce, "nonces unique and increasing"
        self.last_nonce = nonce
        assert response.version_info != self.nacked.get(response.type_url), "NACKed resent"
        assert self.snapshot is not None
        have = set(self.snapshot.resources(response.type_url))
        if response.type_url in (CLUSTER_TYPE, LISTENER_TYPE):
            assert response.version_info == self.snapshot.version(response.type_url)
            assert names_of(response) == have, "full state of LDS/CDS"
        if response.type_url == ENDPOINT_TYPE:
            # Per name (as Envoy applies EDS): subscribed names only, not necessarily all.
            assert names_of(response) <= self.eds_names & have
            self.must_send -= names_of(response)

    def accept(self, response: DiscoveryResponse) -> None:
        """The client applies an EDS response it ACKs to the names it carries."""
        self.rejected.discard(response.type_url)
        if response.type_url == ENDPOINT_TYPE:
            row = RESOURCE_TYPES[ENDPOINT_TYPE]
            for resource in response.resources:
                self.endpoints[row.name_of(row.message.FromString(resource.value))] = resource.value

    def check_endpoints(self) -> None:
        """With nothing in flight and no NACK standing (of any type: a NACKed clusters
        version holds back the endpoints ordered after it), the client holds the current
        endpoints of every name it subscribes to: what a response left out it already had."""
        if self.snapshot is None or self.rejected:
            return
        current = self.snapshot.resources(ENDPOINT_TYPE)
        for name in self.eds_names & set(current):
            assert self.endpoints.get(name) == current[name].data, f"endpoints of {name}"


@settings(max_examples=400, deadline=None)
@given(steps)
def test_protocol_invariants(script: list[tuple[str, object]]) -> None:
    model = Model()
    ads = InMemoryAdsClient(model.cache, node=Node(id="n"))
    for type_url in TYPES:
        ads.subscribe(type_url, [] if type_url != ENDPOINT_TYPE else ["a"])
    model.eds_names = {"a"}
    unanswered: list[DiscoveryResponse] = []
    for op, arg in script:
        if op in ("snapshot", "snapshots"):
            for snapshot in arg if isinstance(arg, tuple) else (arg,):
                assert isinstance(snapshot, Snapshot)
                model.snapshot = snapshot
                model.cache.set_snapshot("n", snapshot)
                # A new version of content is a new chance: it may be sent again.
                model.nacked = {t: v for t, v in model.nacked.items() if v != snapshot.version(t)}
        elif op == "subscribe" and not unanswered:
            assert isinstance(arg, set)
            added, before = arg - model.eds_names, model.eds_names
            model.eds_names = set(arg)
            # Envoy forgets what it unsubscribes (a cluster removed takes its endpoints).
            model.endpoints = {n: e for n, e in model.endpoints.items() if n in arg}
            ads.subscribe(ENDPOINT_TYPE, sorted(arg))
            if added or arg == before:
                model.nacked.pop(ENDPOINT_TYPE, None)  # prompted: new names, or asked again
            if model.snapshot is not None:
                model.must_send = added & set(model.snapshot.resources(ENDPOINT_TYPE))
        elif op == "answer":
            assert isinstance(arg, list)
            for response in ads.poll():
                model.check(response, ads)
                unanswered.append(response)
            for response, accept in zip(unanswered, arg + [True] * len(unanswered), strict=False):
                if accept:
                    ads.ack(response)
                    model.accept(response)
                else:
                    ads.nack(response)
                    model.nacked[response.type_url] = response.version_info
                    model.rejected.add(response.type_url)
            unanswered = []
        elif op == "stale":
            assert isinstance(arg, str)
            stale = ads.send(DiscoveryRequest(type_url=arg, response_nonce="0"))
            assert stale.stale or not any(r.type_url == arg for r in ads.received)
            if not stale.stale and arg == ENDPOINT_TYPE:
                # Before any response a nonce is not stale: a request for no names.
                model.eds_names, model.endpoints = set(), {}
        pending = ads.poll()
        for response in pending:
            model.check(response, ads)
        unanswered.extend(pending)
        if not unanswered:
            assert not model.must_send, "newly subscribed names were sent"
            model.check_endpoints()


POOL = (*(f"cluster-{i}" for i in range(10)), "*", "x*\x011")
requests = st.lists(
    st.tuples(
        st.lists(st.sampled_from(POOL), max_size=14),  # names, duplicates and "*" included
        st.sampled_from(("ack", "stale", "empty")),  # which nonce the request carries
        st.permutations(range(5)),  # the order its fields are written in
        st.booleans(),  # whether a response goes out after it
    ),
    min_size=1,
    max_size=12,
)


@settings(max_examples=300, deadline=None)
@given(requests)
def test_name_lists_compared_as_bytes_decide_as_compared_as_names(
    script: list[tuple[list[str], str, list[int], bool]],
) -> None:
    """Whatever order a client writes its fields in, the byte comparison of long name lists
    (with the request's bytes, or serialized again) decides exactly as comparing the names."""
    streams = [SotwStream(1, ENDPOINT_TYPE) for _ in range(3)]
    for step, (names, which, order, respond) in enumerate(script):
        nonce = streams[0].types[ENDPOINT_TYPE].sent_nonce if streams[0].types else ""
        nonce = {"ack": nonce, "stale": "0", "empty": ""}[which]
        version = f"v{step}"
        fields = [
            wire.length_delimited(1, version.encode()),
            wire.length_delimited(2, Node(id="n").SerializeToString()) if step == 0 else b"",
            b"".join(wire.length_delimited(3, n.encode()) for n in names),
            wire.length_delimited(4, ENDPOINT_TYPE.encode()),
            wire.length_delimited(5, nonce.encode()) if nonce else b"",
        ]
        raw = b"".join(fields[i] for i in order)
        request = DiscoveryRequest.FromString(raw)
        with mock.patch.object(sotw, "_KEYED", 10**6):  # the reference: names compared
            expected = streams[0].receive(request)
        got = [streams[1].receive(request, raw), streams[2].receive(request)]
        for received, stream in zip(got, streams[1:], strict=True):
            assert received == expected
            state, reference = stream.types[ENDPOINT_TYPE], streams[0].types[ENDPOINT_TYPE]
            assert (state.names, state.wildcard) == (reference.names, reference.wildcard)
        if respond and not expected.stale:
            state = streams[0].types[ENDPOINT_TYPE]
            prepared = PreparedResponse(
                ENDPOINT_TYPE, version, state.names, b"", resource_versions={}
            )
            for stream in streams:
                stream.send(prepared)


def test_a_long_name_list_is_parsed_once_for_every_stream_that_sends_it() -> None:
    names = [f"cluster-{i}" for i in range(50)]
    other = [*names[:-1], "cluster-x"]
    turned = [*names[7:], *names[:7]]  # the same set, in another order (as another Envoy's)
    states = []
    sent = (("a", names), ("b", names), ("c", other), ("d", names), ("e", turned))
    for proxy, listed in sent:
        request = DiscoveryRequest(node=Node(id=proxy), type_url=ENDPOINT_TYPE)
        request.resource_names.extend(listed)
        stream = SotwStream(1)
        stream.receive(request, request.SerializeToString())
        states.append(stream.types[ENDPOINT_TYPE])
    assert [s.names for s in states] == [*[set(names)] * 2, set(other), *[set(names)] * 2]
    # Proxies with their own node but the same list share one parsed set (found by bytes),
    # and so does one listing the same names in another order (found by the set).
    assert states[0].names is states[1].names is states[3].names is states[4].names
    assert states[2].names is not states[0].names
    assert states[4].request_key != states[0].request_key  # its own bytes, for its ACKs


mostly = st.sampled_from((True, True, True, False))
acks = st.lists(
    st.tuples(
        st.sampled_from(TYPES[:2]),
        # "a" and "b": lists of one length, told apart by their bytes only
        st.sampled_from((("a",), ("b",), ("a", "b"), tuple(f"c{i}" for i in range(12)), ())),
        st.sampled_from(("ack", "ack", "ack", "stale", "empty")),  # the nonce it carries
        st.booleans(),  # a NACK (error_detail)
        mostly,  # a version field
        mostly.map(lambda envoy: not envoy),  # the node again (Envoy sends it once)
        mostly,  # fields in field order (Envoy's), or the nonce first
        mostly,  # whether a response goes out after it
    ),
    min_size=1,
    max_size=16,
)


@settings(max_examples=300, deadline=None)
@given(acks)
def test_an_ack_taken_from_its_bytes_does_what_the_parsed_request_does(
    script: list[tuple[str, tuple[str, ...], str, bool, bool, bool, bool, bool]],
) -> None:
    """`SotwStream.ack` either declines or does exactly what `receive` does with the parsed
    request: the same outcome, the same state of every type."""
    reference, fast = SotwStream(1), SotwStream(1)
    for step, (type_url, names, which, nack, versioned, node, ordered, respond) in enumerate(
        script
    ):
        state = reference.types.get(type_url)
        nonce = {"ack": state.sent_nonce if state else "", "stale": "0", "empty": ""}[which]
        fields = [
            wire.length_delimited(1, f"v{step}".encode()) if versioned else b"",
            wire.length_delimited(2, Node(id="n").SerializeToString()) if node or not step else b"",
            b"".join(wire.length_delimited(3, n.encode()) for n in names),
            wire.length_delimited(4, type_url.encode()),
            wire.length_delimited(5, nonce.encode()) if nonce else b"",
            wire.length_delimited(6, b"\x10\x03") if nack else b"",  # Status(code=3)
        ]
        raw = b"".join(fields if ordered else [fields[4], *fields[:4], fields[5]])
        request = DiscoveryRequest.FromString(raw)
        expected = reference.receive(request, raw)
        got = fast.ack(raw)
        if got is None:
            got = fast.receive(request, raw)
        else:
            assert not nack and nonce  # only a plain ACK of the response in flight
        assert got == expected
        assert fast.types == reference.types
        if respond and not expected.stale:
            state = reference.types[type_url]
            prepared = PreparedResponse(
                type_url, f"r{step}", state.names, b"", resource_versions={}
            )
            for stream in (reference, fast):
                stream.send(prepared)


def test_an_envoy_ack_is_taken_from_its_bytes() -> None:
    stream, names = SotwStream(1), tuple(f"cluster-{i}" for i in range(20))
    first = DiscoveryRequest(node=Node(id="n"), type_url=ENDPOINT_TYPE, resource_names=names)
    stream.receive(first, first.SerializeToString())
    stream.send(PreparedResponse(ENDPOINT_TYPE, "v1", frozenset(names), b"", resource_versions={}))
    ack = DiscoveryRequest(
        version_info="v1", type_url=ENDPOINT_TYPE, resource_names=names, response_nonce="1"
    )
    received = stream.ack(ack.SerializeToString())
    assert received is not None
    assert [type(event).__name__ for event in received.events] == ["Acked"]
    assert stream.types[ENDPOINT_TYPE].acked_version == "v1"
    assert stream.ack(ack.SerializeToString()) is None  # settled: a second one is no ACK
    # An Envoy whose config source does not set `set_node_on_first_message_only` sends its
    # node on every request (61 KB): its ACKs are still taken from their bytes.
    stream.send(PreparedResponse(ENDPOINT_TYPE, "v2", frozenset(names), b"", resource_versions={}))
    ack.version_info, ack.response_nonce = "v2", "2"
    ack.node.id = "n"
    received = stream.ack(ack.SerializeToString())
    assert received is not None and stream.types[ENDPOINT_TYPE].acked_version == "v2"
    for garbage in (b"\x0a", b"\x0a\xff", b"\x0a\xff" * 11, b""):
        assert stream.ack(garbage) is None  # left to the parser, which reports it


def test_a_request_like_an_ack_but_for_other_names_or_a_nack_is_parsed() -> None:
    stream = SotwStream(1)

    def request(names: tuple[str, ...], nonce: str, nack: bool = False) -> bytes:
        # Written with the nonce last (after error_detail), as a client may.
        message = DiscoveryRequest(version_info="v", type_url=CLUSTER_TYPE, resource_names=names)
        if nack:
            message.error_detail.code = 3
        return bytes(message.SerializeToString()) + wire.length_delimited(5, nonce.encode())

    first = DiscoveryRequest(node=Node(id="n"), type_url=CLUSTER_TYPE, resource_names=["a"])
    stream.receive(first, first.SerializeToString())
    stream.send(PreparedResponse(CLUSTER_TYPE, "v1", frozenset("a"), b"", resource_versions={}))
    assert stream.ack(request(("b",), "1")) is None  # as long as an ACK, but other names
    nack = request(("a",), "1", nack=True)
    assert stream.ack(nack) is None
    stream.receive(DiscoveryRequest.FromString(nack), nack)
    stream.send(PreparedResponse(CLUSTER_TYPE, "v2", frozenset("a"), b"", resource_versions={}))
    assert stream.ack(request(("a",), "2", nack=True)) is None  # the same NACK again
    ack = request(("a",), "2")
    assert stream.ack(ack) is None  # after a NACK, parsed once more
    stream.receive(DiscoveryRequest.FromString(ack), ack)
    stream.send(PreparedResponse(CLUSTER_TYPE, "v3", frozenset("a"), b"", resource_versions={}))
    assert stream.ack(request(("a",), "3")) is not None
