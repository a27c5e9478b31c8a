"""What a stream keeps of its client's node (`pilotfish.xds.node`)."""

from __future__ import annotations

import pytest
from google.protobuf.message import DecodeError

from pilotfish.protos import DeltaDiscoveryRequest, DiscoveryRequest, Node, wire
from pilotfish.xds import node as node_module
from pilotfish.xds.delta import DeltaStream
from pilotfish.xds.node import kept_node, without_extensions
from pilotfish.xds.sotw import SotwStream

ENDPOINTS = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"


def _envoy_like() -> Node:
    """A node with every kind of field Node has, and an extension list as Envoy sends."""
    node = Node(id="sidecar~10.0.0.1~reviews.default~default.svc", cluster="reviews")
    node.metadata.fields["ISTIO_VERSION"].string_value = "1.24.0"
    node.locality.region, node.locality.zone = "eu", "eu-1a"
    node.user_agent_name = "envoy"
    node.user_agent_build_version.version.major_number = 1
    node.user_agent_build_version.metadata.fields["build.type"].string_value = "RELEASE"
    node.client_features.extend(
        ["xds.config.supports-resource-ttl", "envoy.lb.does_not_support_overprovisioning"]
    )
    node.listening_addresses.add().socket_address.address = "10.0.0.1"
    node.dynamic_parameters["envoy.config.route.v3.RouteConfiguration"].params["k"] = "v"
    for index in range(500):
        extension = node.extensions.add(
            name=f"envoy.filters.http.filter_{index}", category="envoy.filters.http"
        )
        extension.type_urls.append(f"envoy.extensions.filters.http.filter_{index}.v3.Config")
    return node


def test_a_kept_node_is_the_node_without_its_extensions() -> None:
    sent = _envoy_like()
    kept = kept_node(sent)
    expected = Node()
    expected.CopyFrom(sent)
    expected.ClearField("extensions")
    assert kept == expected  # every other field, messages, maps and repeated ones included
    assert len(sent.extensions) == 500  # the node sent is left as it was
    assert kept.ByteSize() < 600 and sent.ByteSize() > 30_000
    sent.metadata.fields["ISTIO_VERSION"].string_value = "changed"
    assert kept.metadata.fields["ISTIO_VERSION"].string_value == "1.24.0"  # a copy


def test_a_node_without_extensions_is_kept_whole() -> None:
    sent = _envoy_like()
    sent.ClearField("extensions")
    kept = kept_node(sent)
    assert kept == sent and kept is not sent


def test_streams_keep_the_node_without_extensions() -> None:
    sent = _envoy_like()
    sotw = SotwStream(1)
    sotw.receive(DiscoveryRequest(node=sent, type_url=ENDPOINTS, resource_names=["a"]))
    delta = DeltaStream(2)
    delta.receive(DeltaDiscoveryRequest(node=sent, type_url=ENDPOINTS))
    for stream in (sotw, delta):
        assert stream.node is not None
        assert stream.node.id == sent.id and not stream.node.extensions
        assert list(stream.node.client_features) == list(sent.client_features)
    assert sotw.ttl_aware


def _first_requests(node: Node) -> list[tuple[bytes, bool]]:
    """A first request carrying `node` as each protocol writes it, and whether it is delta."""
    return [
        (
            DiscoveryRequest(
                node=node, type_url=ENDPOINTS, resource_names=["a"]
            ).SerializeToString(),
            False,
        ),
        (
            DiscoveryRequest(
                version_info="v1", node=node, type_url=ENDPOINTS, resource_names=["a"]
            ).SerializeToString(),
            False,
        ),  # a client reconnecting says what it holds
        (
            DeltaDiscoveryRequest(
                node=node, type_url=ENDPOINTS, resource_names_subscribe=["a"]
            ).SerializeToString(),
            True,
        ),
    ]


def test_a_request_without_its_node_extensions_parses_as_the_request_without_them() -> None:
    sent = _envoy_like()
    expected_node = kept_node(sent)
    for raw, delta in _first_requests(sent):
        lighter = without_extensions(raw, delta)
        assert len(lighter) < 1_000 and len(raw) > 30_000
        kind = DeltaDiscoveryRequest if delta else DiscoveryRequest
        got, whole = kind.FromString(lighter), kind.FromString(raw)
        assert got.node == expected_node
        whole.node.ClearField("extensions")
        assert got == whole  # every other field as sent


def test_the_extension_list_of_a_build_is_found_again_by_its_bytes() -> None:
    node_module._RUNS.clear()
    first, second = _envoy_like(), _envoy_like()
    second.id = "sidecar~10.0.0.2~ratings.default~default.svc"
    raw = DiscoveryRequest(node=first, type_url=ENDPOINTS).SerializeToString()
    without_extensions(raw, False)
    assert len(node_module._RUNS) == 1  # walked once, kept
    raw = DiscoveryRequest(node=second, type_url=ENDPOINTS).SerializeToString()
    assert DiscoveryRequest.FromString(without_extensions(raw, False)).node.id == second.id
    assert len(node_module._RUNS) == 1  # the same list: found, not walked again
    # A longer list that starts with a known one is walked to its end, not cut short.
    second.extensions.add(name="envoy.filters.http.more", category="envoy.filters.http")
    raw = DiscoveryRequest(node=second, type_url=ENDPOINTS).SerializeToString()
    assert not DiscoveryRequest.FromString(without_extensions(raw, False)).node.extensions
    assert len(node_module._RUNS) == 2


def test_requests_it_cannot_read_as_envoy_writes_them_are_left_as_they_are() -> None:
    plain = _envoy_like()
    plain.ClearField("extensions")
    no_extensions = DiscoveryRequest(node=plain, type_url=ENDPOINTS).SerializeToString()
    no_node = DiscoveryRequest(type_url=ENDPOINTS, response_nonce="1").SerializeToString()
    whole = DiscoveryRequest(node=_envoy_like(), type_url=ENDPOINTS).SerializeToString()
    for raw in (no_extensions, no_node, whole[:500], b"\x12\xff", b""):
        assert without_extensions(raw, False) is raw  # the parser reports what is wrong
    with pytest.raises(DecodeError):  # a whole node and a broken tail: still reported
        DiscoveryRequest.FromString(without_extensions(whole[:-40], False))
    # The node's fields out of Envoy's order (a varint field, then extensions): left whole.
    extension = b"\x4a\x03\x0a\x01x"  # Extension(name="x")
    odd = wire.length_delimited(2, b"\x70\x01" + extension)  # field 14 (a varint) first
    assert DiscoveryRequest.FromString(odd).node.extensions[0].name == "x"
    assert without_extensions(odd, False) is odd
