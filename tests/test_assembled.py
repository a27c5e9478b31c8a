"""Assembled messages: joined from their parts' bytes, exactly the message's own serialization."""

from __future__ import annotations

from envoy.config.route.v3.route_components_pb2 import VirtualHost
from envoy.config.route.v3.route_pb2 import RouteConfiguration
from hypothesis import given
from hypothesis import strategies as st

from pilotfish.cache import Assembled, Messages
from pilotfish.protos import wire

HOSTS = RouteConfiguration.DESCRIPTOR.fields_by_name["virtual_hosts"].number
names = st.text(alphabet="abcdefgh.-:", min_size=1, max_size=300)


@given(
    st.lists(st.lists(names, max_size=4), max_size=8),
    st.text(max_size=200),
    st.booleans(),
    st.integers(min_value=0, max_value=2**32 - 1),
)
def test_assembled_bytes_are_the_message_serialized(
    hosts: list[list[str]], name: str, flag: bool, limit: int
) -> None:
    # Head fields before the hosts (name: 1) and after them (a message, a varint, a uint32
    # wrapper), so the head's bytes are cut in the right place.
    head = RouteConfiguration(name=name, most_specific_header_mutations_wins=flag)
    head.validate_clusters.value = flag
    if limit:
        head.max_direct_response_body_size_bytes.value = limit
    parts = [VirtualHost(name=f"h{i}", domains=domains) for i, domains in enumerate(hosts)]
    whole = RouteConfiguration()
    whole.CopyFrom(head)
    whole.virtual_hosts.extend(parts)
    assembled = Assembled(head, HOSTS, parts)
    assert assembled.data == whole.SerializeToString(deterministic=True)
    assert assembled.message() == whole
    # Rebuilt with one part replaced: the others' bytes are taken from the previous one.
    changed = [*parts[:-1], VirtualHost(name="new", domains=["x"])] if parts else parts
    again = Assembled(head, HOSTS, changed, previous=assembled)
    assert again.framed[:-1] == assembled.framed[:-1]
    whole.ClearField("virtual_hosts")
    whole.virtual_hosts.extend(changed)
    assert again.data == whole.SerializeToString(deterministic=True)
    assert list(Messages([again, head])) == [whole, head]
    # Versions come from the pieces: equal pieces, equal version; a changed piece, another.
    assert Assembled(head, HOSTS, changed).version == again.version
    assert (again.version == assembled.version) == (again.data == assembled.data)


def test_split_at_field_finds_the_place_of_a_missing_field() -> None:
    data = RouteConfiguration(name="a", ignore_port_in_host_matching=True).SerializeToString()
    before, after = wire.split_at_field(data, HOSTS)
    assert RouteConfiguration.FromString(before) == RouteConfiguration(name="a")
    assert RouteConfiguration.FromString(after).ignore_port_in_host_matching
    assert wire.split_at_field(before, HOSTS) == (before, b"")
    assert wire.split_at_field(after, 1) == (b"", after)
