"""What a stream keeps of its client's node (`pilotfish.xds.node`)."""

from __future__ import annotations

from pilotfish.protos import DeltaDiscoveryRequest, DiscoveryRequest, Node
from pilotfish.xds.delta import DeltaStream
from pilotfish.xds.node import kept_node
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
