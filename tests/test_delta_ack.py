"""`DeltaStream.ack`: a plain delta ACK taken from its bytes does what the parsed one does."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from pilotfish.protos import (
    CLUSTER_TYPE,
    ENDPOINT_TYPE,
    DeltaDiscoveryRequest,
    Node,
    wire,
)
from pilotfish.xds.delta import DeltaStream
from pilotfish.xds.watch import DeltaPreparedResponse

# DeltaDiscoveryRequest: node 1, type_url 2, subscribe 3, unsubscribe 4, response_nonce 6,
# error_detail 7.
mostly = st.sampled_from((True, True, True, False))
requests = st.lists(
    st.tuples(
        st.sampled_from((CLUSTER_TYPE, CLUSTER_TYPE, ENDPOINT_TYPE)),
        st.sampled_from(((), (), (), ("a",), ("b", "c"))),  # names subscribed
        st.sampled_from(((), (), (), ("a",))),  # names unsubscribed
        st.sampled_from(("ack", "ack", "ack", "stale", "empty")),  # the nonce it carries
        st.booleans(),  # a NACK (error_detail)
        mostly,  # the type_url field (a per-type stream's client may leave it out)
        mostly.map(lambda envoy: not envoy),  # the node again (Envoy sends it once)
        mostly,  # fields in field order (Envoy's), or the nonce first
        mostly,  # whether a response goes out after it
    ),
    min_size=1,
    max_size=16,
)


@settings(max_examples=300, deadline=None)
@given(st.booleans(), requests)
def test_an_ack_taken_from_its_bytes_does_what_the_parsed_request_does(
    ads: bool,
    script: list[tuple[str, tuple[str, ...], tuple[str, ...], str, bool, bool, bool, bool, bool]],
) -> None:
    """`DeltaStream.ack` either declines or does exactly what `receive` does with the parsed
    request: the same outcome, the same state of every type."""
    stream_type = None if ads else CLUSTER_TYPE
    reference, fast = DeltaStream(1, stream_type), DeltaStream(1, stream_type)
    for step, (asked, on, off, which, nack, typed, node, ordered, respond) in enumerate(script):
        type_url = asked if ads else CLUSTER_TYPE
        state = reference.types.get(type_url)
        nonce = {"ack": state.sent_nonce if state else "", "stale": "0", "empty": ""}[which]
        fields = [
            wire.length_delimited(1, Node(id="n").SerializeToString()) if node or not step else b"",
            wire.length_delimited(2, type_url.encode()) if typed or ads else b"",
            b"".join(wire.length_delimited(3, n.encode()) for n in on),
            b"".join(wire.length_delimited(4, n.encode()) for n in off),
            wire.length_delimited(6, nonce.encode()) if nonce else b"",
            wire.length_delimited(7, b"\x08\x03") if nack else b"",  # Status(code=3)
        ]
        raw = b"".join(fields if ordered else [fields[4], *fields[:4], fields[5]])
        request = DeltaDiscoveryRequest.FromString(raw)
        expected = reference.receive(request, raw)
        got = fast.ack(raw)
        if got is None:
            got = fast.receive(request, raw)
        else:
            assert not (nack or on or off) and nonce  # only a plain ACK of the one in flight
        assert got == expected
        assert fast.types == reference.types
        if respond and not expected.stale:
            prepared = DeltaPreparedResponse(type_url, f"r{step}", {}, frozenset(), b"")
            for stream in (reference, fast):
                stream.send(prepared)


def test_an_envoy_delta_ack_is_taken_from_its_bytes() -> None:
    stream = DeltaStream(1)
    first = DeltaDiscoveryRequest(node=Node(id="n"), type_url=CLUSTER_TYPE)
    stream.receive(first, first.SerializeToString())
    stream.send(DeltaPreparedResponse(CLUSTER_TYPE, "v1", {"a": "1"}, frozenset(), b""))
    ack = DeltaDiscoveryRequest(type_url=CLUSTER_TYPE, response_nonce="1").SerializeToString()
    received = stream.ack(ack)
    assert received is not None and received.watch is not None
    assert [type(event).__name__ for event in received.events] == ["Acked"]
    assert stream.types[CLUSTER_TYPE].acked_version == "v1"
    assert stream.ack(ack) is None  # settled: a second one is no ACK
    for garbage in (b"\x12", b"\x32\xff", b""):
        assert stream.ack(garbage) is None  # left to the parser, which reports it
    # The fields a stream keeps for its ACKs are shared by every stream at that nonce.
    other = DeltaStream(2)
    other.receive(first, first.SerializeToString())
    other.send(DeltaPreparedResponse(CLUSTER_TYPE, "v1", {"a": "1"}, frozenset(), b""))
    assert other.types[CLUSTER_TYPE].ack_nonce is stream.types[CLUSTER_TYPE].ack_nonce
