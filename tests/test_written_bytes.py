"""What the translators write as wire bytes directly is the bytes of the message it stands for.

Load assignments and metadata stamps are made for every service of a mesh, so they are written
as bytes with no message made. `load_assignment_bytes` is checked against a message built field
by field, over endpoints, localities, weights, failover and `distribute`, the awkward values
included (empty address, port 0, weight 0, empty locality parts); `stamp_bytes` against the
metadata `stamp` gives a message.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping

import pytest
from envoy.config.cluster.v3.cluster_pb2 import Cluster
from envoy.config.endpoint.v3.endpoint_pb2 import ClusterLoadAssignment

from pilotfish.registry import Endpoint
from pilotfish.translators.endpoints import (
    _distributed,
    cluster_load_assignment,
    load_assignment_bytes,
    locality_priority,
)
from pilotfish.translators.version import stamp, stamp_bytes

LOCALITIES = ["", "/", "r1", "r1/z1", "r1/z1/s1", "r2/z1", "r1/z2/s3", "r1//s1", "//s"]
DISTRIBUTIONS = [None, {"r1/*": 70, "r2/*": 30}, {"r1/z1/*": 100}, {"*": 100}]


def reference(
    cluster: str,
    endpoints: Iterable[Endpoint],
    proxy_locality: str,
    failover: bool,
    distribute: Mapping[str, int] | None,
) -> bytes:
    """The message, made the plain way: groups by (priority, locality), sorted."""
    groups: dict[tuple[int, str], list[Endpoint]] = {}
    for endpoint in endpoints:
        priority = locality_priority(endpoint.locality, proxy_locality) if failover else 0
        groups.setdefault((priority, endpoint.locality), []).append(endpoint)
    shares = _distributed({loc for _, loc in groups}, distribute) if distribute else None
    assignment = ClusterLoadAssignment(cluster_name=cluster)
    for (priority, locality), members in sorted(groups.items()):
        weight = shares[locality] if shares is not None else sum(e.weight for e in members)
        if weight == 0:
            continue
        group = assignment.endpoints.add()
        group.locality.region, group.locality.zone, group.locality.sub_zone = [
            *locality.split("/"),
            "",
            "",
        ][:3]
        group.locality.SetInParent()
        group.priority = priority
        group.load_balancing_weight.value = weight
        for endpoint in sorted(members):
            lb_endpoint = group.lb_endpoints.add()
            address = lb_endpoint.endpoint.address.socket_address
            address.address = endpoint.address
            address.port_value = endpoint.port
            lb_endpoint.load_balancing_weight.value = endpoint.weight
    data: bytes = assignment.SerializeToString(deterministic=True)
    return data


@pytest.mark.parametrize("seed", range(4))
def test_bytes_are_the_reference_message(seed: int) -> None:
    rnd = random.Random(seed)
    for _ in range(2000):
        endpoints = [
            Endpoint(
                address=rnd.choice(["10.0.0.1", "10.0.0.2", "", "::1", "h.example"]),
                port=rnd.choice([0, 80, 9080, 70000]),
                locality=rnd.choice(LOCALITIES),
                weight=rnd.choice([0, 1, 2, 300]),
                labels=(("a", str(rnd.randint(0, 2))),),
            )
            for _ in range(rnd.randint(0, 5))
        ]
        name = rnd.choice(["outbound|80||a.b", "", "x" * 200])
        options = {
            "proxy_locality": rnd.choice(LOCALITIES),
            "failover": rnd.random() < 0.5,
            "distribute": rnd.choice(DISTRIBUTIONS),
        }
        want = reference(name, endpoints, **options)  # type: ignore[arg-type]
        assert load_assignment_bytes(name, endpoints, **options) == want  # type: ignore[arg-type]
        message = cluster_load_assignment(name, endpoints, **options)  # type: ignore[arg-type]
        assert message.SerializeToString(deterministic=True) == want


def test_failover_priorities_and_weights_are_written() -> None:
    """The bytes say what they should, not only what the reference says: priorities by
    distance from the proxy, localities weighted by their endpoints' weights."""
    endpoints = [
        Endpoint(address="10.0.0.1", port=80, locality="r1/z1/s1", weight=2),
        Endpoint(address="10.0.0.2", port=80, locality="r1/z1/s1", weight=3),
        Endpoint(address="10.0.0.3", port=80, locality="r2/z9/s9"),
    ]
    data = load_assignment_bytes("c", endpoints, proxy_locality="r1/z1/s1", failover=True)
    assignment = ClusterLoadAssignment.FromString(data)
    assert assignment.cluster_name == "c"
    assert [(g.locality.region, g.priority, g.load_balancing_weight.value) for g in
            assignment.endpoints] == [("r1", 0, 5), ("r2", 3, 1)]  # fmt: skip
    assert [e.endpoint.address.socket_address.address for e in
            assignment.endpoints[0].lb_endpoints] == ["10.0.0.1", "10.0.0.2"]  # fmt: skip


@pytest.mark.parametrize(
    "sources",
    [
        (),
        ("DestinationRule/default/a",),
        ("b", "a", "b"),
        ("VirtualService/ns/" + "x" * 200,) * 3,
        ("ü", ""),
        # One source of each length where a length around it takes a second byte.
        *[("n" * size,) for size in range(100, 140)],
        ("n" * 16_400,),  # and a third
    ],
)
def test_stamp_bytes_are_the_stamped_metadata(sources: tuple[str, ...]) -> None:
    stamped = stamp(Cluster(), sources)
    assert stamp_bytes(sources) == stamped.metadata.SerializeToString(deterministic=True)
