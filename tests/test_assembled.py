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


@given(st.lists(st.lists(names, max_size=4), min_size=1, max_size=6))
def test_encoded_messages_serve_as_the_messages_would(hosts: list[list[str]]) -> None:
    """A message kept as its bytes (`Encoded`) reads back equal, is never changed through
    what it gives, and makes the same assembled bytes and snapshot versions as the message."""
    from pilotfish.cache import Encoded, Snapshot

    parts = [VirtualHost(name=f"h{i}", domains=domains) for i, domains in enumerate(hosts)]
    encoded = [Encoded(p, p.name) for p in parts]
    for part, item in zip(parts, encoded, strict=True):
        assert item.data == part.SerializeToString(deterministic=True)
        copy = item.message()
        assert copy == part
        copy.name = "changed"
        assert item.message() == part
    assert list(Messages(encoded)) == parts
    head = RouteConfiguration(name="80")
    assert Assembled(head, HOSTS, encoded).data == Assembled(head, HOSTS, parts).data
    # A snapshot of route configurations, given as messages or as bytes: the same.
    configs = [RouteConfiguration(name=f"r{i}", virtual_hosts=[p]) for i, p in enumerate(parts)]
    given = Messages([Encoded(c, c.name) for c in configs])
    a, b = Snapshot({"rds": configs}), Snapshot({"rds": given})
    assert a.version("rds") == b.version("rds")
    assert {n: r.data for n, r in a.resources("rds").items()} == {
        n: r.data for n, r in b.resources("rds").items()
    }
