"""The hand-built response bytes parse exactly as protobuf's own."""

from __future__ import annotations

import pytest
from google.protobuf.wrappers_pb2 import BytesValue, UInt64Value
from hypothesis import given
from hypothesis import strategies as st

from pilotfish.protos import CLUSTER_TYPE, Cluster, DeltaDiscoveryResponse, DiscoveryResponse, wire


@given(st.integers(min_value=0, max_value=2**64 - 1))
def test_varint_parses_as_protobuf_uint64(value: int) -> None:
    # Field 1 of UInt64Value is a varint: tag 0x08, then our encoding.
    assert UInt64Value.FromString(b"\x08" + wire.varint(value)).value == value


@given(st.binary(max_size=400))
def test_length_delimited_parses_as_protobuf_bytes(data: bytes) -> None:
    assert BytesValue.FromString(wire.length_delimited(1, data)).value == data


@pytest.mark.parametrize("field_number", [1, 2, 7, 15, 16, 28])
def test_length_delimited_heads_around_the_one_byte_limits(field_number: int) -> None:
    tag = wire.varint(field_number << 3 | 2)
    for size in (0, 1, 126, 127, 128, 129, 300):
        data = (bytes(range(256)) * 2)[:size]
        expected = tag + wire.varint(size) + data
        assert wire.length_delimited(field_number, data) == expected


def test_varint_rejects_negative() -> None:
    with pytest.raises(ValueError, match="negative"):
        wire.varint(-1)


@given(
    st.text(max_size=40),
    st.lists(st.text(min_size=1, max_size=30), max_size=5, unique=True),
    st.text(max_size=20),
)
def test_response_body_matches_protobuf(version: str, names: list[str], nonce: str) -> None:
    clusters = [Cluster(name=n) for n in names]
    anys = [wire.any_bytes(CLUSTER_TYPE, c.SerializeToString()) for c in clusters]
    data = wire.discovery_response_body(version, CLUSTER_TYPE, anys) + wire.nonce_field(nonce)
    parsed = DiscoveryResponse.FromString(data)
    expected = DiscoveryResponse(version_info=version, type_url=CLUSTER_TYPE, nonce=nonce)
    for cluster in clusters:
        expected.resources.add().Pack(cluster)
    assert parsed == expected
    assert [Cluster.FromString(r.value).name for r in parsed.resources] == names


@given(
    st.text(max_size=20),
    st.lists(st.text(min_size=1, max_size=30), max_size=5, unique=True),
    st.lists(st.text(min_size=1, max_size=30), max_size=3),
)
def test_delta_response_body_matches_protobuf(
    system_version: str, names: list[str], removed: list[str]
) -> None:
    resources = [
        wire.resource_bytes(
            n, f"v-{n}", wire.any_bytes(CLUSTER_TYPE, Cluster(name=n).SerializeToString())
        )
        for n in names
    ]
    data = wire.delta_response_body(system_version, CLUSTER_TYPE, resources, removed)
    parsed = DeltaDiscoveryResponse.FromString(data + wire.nonce_field("7"))
    expected = DeltaDiscoveryResponse(
        system_version_info=system_version,
        type_url=CLUSTER_TYPE,
        removed_resources=removed,
        nonce="7",
    )
    for n in names:
        item = expected.resources.add(name=n, version=f"v-{n}")
        item.resource.Pack(Cluster(name=n))
    assert parsed == expected


@given(st.text(min_size=1, max_size=300))
def test_length_delimited_of_a_high_field_number_is_protobufs(text: str) -> None:
    # Cluster.alt_stat_name is field 28: a tag of two bytes, and a length of one or two.
    expected = Cluster(alt_stat_name=text).SerializeToString()
    assert wire.length_delimited(28, text.encode()) == expected


@pytest.mark.parametrize("number", [1, 9, 10, 1023, 1024, 123_456])
def test_numbered_nonce_is_the_number_and_its_field(number: int) -> None:
    nonce, field = wire.numbered_nonce(number)
    assert nonce == str(number)
    assert field == wire.nonce_field(nonce)
    assert DiscoveryResponse.FromString(field).nonce == nonce


def test_numbered_nonces_of_a_fleet_are_shared_then_made_per_stream() -> None:
    # Every stream counts from 1: what each keeps for its ACKs is one object for all of them.
    first, again = wire.numbered_nonce(7), wire.numbered_nonce(7)
    assert first[0] is again[0] and first[1] is again[1]
    late, later = wire.numbered_nonce(5_000_000), wire.numbered_nonce(5_000_000)
    assert late == later and late[1] is not later[1]  # past the shared ones: not kept
