"""The protocol core with the snapshot cache, driven in memory (no sockets)."""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

import pytest

from pilotfish.cache import Snapshot, SnapshotCache, by_cluster
from pilotfish.errors import RemoteProtocolError
from pilotfish.protos import (
    CLUSTER_TYPE,
    ENDPOINT_TYPE,
    LISTENER_TYPE,
    ROUTE_TYPE,
    Cluster,
    ClusterLoadAssignment,
    DiscoveryRequest,
    DiscoveryResponse,
    Node,
    wire,
)
from pilotfish.testing.client import InMemoryAdsClient
from pilotfish.translators import build
from pilotfish.xds import Acked, Nacked, Subscribed, Unsubscribed, sotw
from pilotfish.xds.requests import SameSets
from pilotfish.xds.sotw import SotwStream
from tests.helpers import mesh

NODE = Node(id="n1", cluster="c1")
A = {"a": [("127.0.0.1", 1)]}
AB = {"a": [("127.0.0.1", 1)], "b": [("127.0.0.1", 2)]}


def client(cache: SnapshotCache, node: Node = NODE) -> InMemoryAdsClient:
    return InMemoryAdsClient(cache, node=node)


def _names(response: DiscoveryResponse) -> set[str]:
    """The clusters an EDS response carries endpoints for."""
    return {ClusterLoadAssignment.FromString(r.value).cluster_name for r in response.resources}


def test_ads_pushes_in_make_before_break_order() -> None:
    cache = SnapshotCache()
    ads = client(cache)
    for type_url in (ROUTE_TYPE, LISTENER_TYPE, CLUSTER_TYPE):
        ads.subscribe(type_url, ["local_route"] if type_url == ROUTE_TYPE else [])
    ads.subscribe(ENDPOINT_TYPE, ["a"])
    assert ads.poll() == []
    cache.set_snapshot("n1", mesh(A, "a"))
    got = ads.poll()
    assert [r.type_url for r in got] == [CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE]
    nonces = [int(r.nonce) for r in got]
    assert nonces == sorted(nonces) and len(set(nonces)) == 4


def test_ack_opens_a_quiet_watch_and_only_changed_types_are_resent() -> None:
    cache = SnapshotCache()
    cache.set_snapshot("n1", mesh(A, "a"))
    ads = client(cache)
    ads.subscribe(CLUSTER_TYPE)
    (cds,) = ads.poll()
    received = ads.ack(cds)
    assert received.events == (Acked(CLUSTER_TYPE, cds.version_info, cds.nonce),)
    assert ads.poll() == []
    ads.subscribe(ROUTE_TYPE, ["local_route"])
    (rds,) = ads.poll()
    ads.ack(rds)
    cache.set_snapshot("n1", mesh(A, {"a": 50, "a2": 50}))  # only the route changed
    (again,) = ads.poll()
    assert again.type_url == ROUTE_TYPE
    assert again.version_info != rds.version_info


def test_nacked_version_is_not_resent_and_a_newer_one_is() -> None:
    cache = SnapshotCache()
    cache.set_snapshot("n1", mesh(A, "a"))
    ads = client(cache)
    ads.subscribe(CLUSTER_TYPE)
    (good,) = ads.poll()
    ads.ack(good)
    cache.set_snapshot("n1", mesh(A, "a", connect_timeout=-1))
    (bad,) = ads.poll()
    received = ads.nack(bad, "invalid connect_timeout")
    (nack,) = received.events
    assert isinstance(nack, Nacked)
    assert (nack.version, nack.kept_version) == (bad.version_info, good.version_info)
    assert nack.message == "invalid connect_timeout"
    assert ads.poll() == []  # no loop
    cache.set_snapshot("n1", mesh(A, "a", connect_timeout=-1))  # same bad content again
    assert ads.poll() == []
    status = cache.status("n1")
    assert status is not None
    cds_status = status.types[CLUSTER_TYPE]
    assert cds_status.last_nack == nack
    assert cds_status.acked_version == good.version_info
    cache.set_snapshot("n1", mesh(AB, "a"))
    (fixed,) = ads.poll()
    ads.ack(fixed)
    assert cache.status("n1").types[CLUSTER_TYPE].acked_version == fixed.version_info  # type: ignore[union-attr]


@pytest.mark.parametrize("given_version", [None, "v1"], ids=["content-versions", "given"])
def test_newly_subscribed_name_is_sent_at_an_unchanged_version(given_version: str | None) -> None:
    cache = SnapshotCache()
    snapshot = mesh(AB, "a")
    if given_version is not None:
        snapshot = Snapshot({"eds": snapshot.messages(ENDPOINT_TYPE).values()}, version="v1")
    cache.set_snapshot("n1", snapshot)  # set once: no resource changes from here on
    ads = client(cache)
    ads.subscribe(ENDPOINT_TYPE, ["a"])
    (first,) = ads.poll()
    ads.ack(first)
    received = ads.subscribe(ENDPOINT_TYPE, ["a", "b"])
    assert received.events == (Subscribed(ENDPOINT_TYPE, frozenset({"b"}), False),)
    (second,) = ads.poll()
    assert _names(second) == {"b"}  # what the client lacks: it holds a already
    assert second.version_info == first.version_info == (given_version or snapshot.version("eds"))
    ads.ack(second)
    received = ads.subscribe(ENDPOINT_TYPE, ["b"])
    assert received.events == (Unsubscribed(ENDPOINT_TYPE, frozenset({"a"}), False),)
    assert ads.poll() == []  # dropping a name needs no response


def test_a_change_to_other_names_is_not_pushed_to_a_named_subscription() -> None:
    cache = SnapshotCache()
    cache.set_snapshot("n1", mesh(AB, "a"))
    ads = client(cache)
    ads.subscribe(ENDPOINT_TYPE, ["a"])
    ads.ack(ads.poll()[0])
    cache.set_snapshot("n1", mesh({**AB, "b": [("127.0.0.1", 9)]}, "a"))  # only b changed
    assert ads.poll() == []
    cache.set_snapshot("n1", mesh({**AB, "a": [("127.0.0.1", 9)]}, "a"))
    (changed,) = ads.poll()
    assert len(changed.resources) == 1
    ads.ack(changed)
    ads.subscribe(ENDPOINT_TYPE, [])  # and dropping names sends nothing either
    assert ads.poll() == []


def test_absent_names_are_remembered_and_sent_when_they_appear() -> None:
    cache = SnapshotCache()
    cache.set_snapshot("n1", mesh(A, "a"))
    ads = client(cache)
    ads.subscribe(ENDPOINT_TYPE, ["b"])
    (empty,) = ads.poll()  # the first answer says: none of these exist (yet)
    assert list(empty.resources) == []
    ads.ack(empty)
    assert ads.poll() == []
    cache.set_snapshot("n1", mesh(AB, "a"))
    (found,) = ads.poll()
    assert len(found.resources) == 1


def test_stale_nonce_is_ignored() -> None:
    cache = SnapshotCache()
    cache.set_snapshot("n1", mesh(A, "a"))
    ads = client(cache)
    ads.subscribe(CLUSTER_TYPE)
    (first,) = ads.poll()
    ads.ack(first)
    cache.set_snapshot("n1", mesh(AB, "a"))
    (second,) = ads.poll()
    # A late request that still carries the first nonce: stale, no event, no watch.
    stale = ads.send(
        DiscoveryRequest(
            type_url=CLUSTER_TYPE, response_nonce=first.nonce, version_info=first.version_info
        )
    )
    assert stale.stale and stale.events == () and stale.watch is None
    assert ads.ack(second).events[0] == Acked(CLUSTER_TYPE, second.version_info, second.nonce)


def test_latest_pending_response_wins() -> None:
    cache = SnapshotCache()
    cache.set_snapshot("n1", mesh(A, "a"))
    ads = client(cache)
    ads.subscribe(CLUSTER_TYPE)
    (first,) = ads.poll()
    ads.ack(first)
    cache.set_snapshot("n1", mesh(AB, "a"))
    # The client is slow: two more versions arrive before it reads anything.
    cache.set_snapshot("n1", mesh({"c": [("127.0.0.1", 3)]}, "c"))
    got = ads.poll()
    assert len(got) == 1
    assert got[0].version_info == cache.get_snapshot("n1").version(CLUSTER_TYPE)


def test_reconnect_with_current_version_gets_no_resend() -> None:
    cache = SnapshotCache()
    snapshot = mesh(A, "a")
    cache.set_snapshot("n1", snapshot)
    ads = client(cache)
    ads.send(DiscoveryRequest(type_url=CLUSTER_TYPE, version_info=snapshot.version(CLUSTER_TYPE)))
    ads.send(DiscoveryRequest(type_url=ENDPOINT_TYPE, version_info="old", resource_names=["a"]))
    got = ads.poll()
    assert [r.type_url for r in got] == [ENDPOINT_TYPE]


def test_status_and_watches_go_away_with_the_last_stream() -> None:
    cache = SnapshotCache()
    cache.set_snapshot("n1", mesh(A, "a"))
    first, second = client(cache), client(cache)
    for ads in (first, second):
        ads.subscribe(CLUSTER_TYPE)
        ads.ack(ads.poll()[0])
    status = cache.status("n1")
    assert status is not None and len(status.streams) == 2
    assert cache.watch_count("n1") == 2
    first.close()
    assert cache.status_keys() == ["n1"]
    second.close()
    assert cache.status_keys() == []
    assert cache.watch_count() == 0


def test_node_groups_share_one_snapshot_and_its_bytes() -> None:
    cache = SnapshotCache(by_cluster)
    snapshot = mesh(A, "a")
    cache.set_snapshot("c1", snapshot)
    clients = [client(cache, Node(id=f"n{i}", cluster="c1")) for i in range(5)]
    for ads in clients:
        ads.subscribe(CLUSTER_TYPE)
    responses = [ads.poll()[0] for ads in clients]
    assert all(r == responses[0] for r in responses)
    assert snapshot.stats.responses_built == 1


def test_wildcard_rules() -> None:
    cache = SnapshotCache()
    ads = client(cache)
    first = ads.subscribe(CLUSTER_TYPE)  # legacy wildcard: empty list on the first request
    assert first.events == (Subscribed(CLUSTER_TYPE, frozenset(), True),)
    explicit = ads.subscribe(CLUSTER_TYPE, ["*", "x"])
    assert explicit.events == (Subscribed(CLUSTER_TYPE, frozenset({"x"}), True),)
    named = ads.subscribe(CLUSTER_TYPE, ["x"])
    assert named.events == (Unsubscribed(CLUSTER_TYPE, frozenset(), True),)
    # After named subscriptions, an empty list unsubscribes from everything (not wildcard).
    nothing = ads.subscribe(CLUSTER_TYPE, [])
    assert nothing.events == (Unsubscribed(CLUSTER_TYPE, frozenset({"x"}), False),)
    cache.set_snapshot("n1", mesh(A, "a"))
    assert ads.poll() == []


def test_per_type_stream_refuses_other_types() -> None:
    cds = InMemoryAdsClient(SnapshotCache(), node=NODE, type_url=CLUSTER_TYPE)
    cds.send(DiscoveryRequest())  # empty type_url means the stream's type
    with pytest.raises(RemoteProtocolError, match="on the stream for"):
        cds.send(DiscoveryRequest(type_url=LISTENER_TYPE))
    with pytest.raises(RemoteProtocolError, match="without type_url"):
        client(SnapshotCache()).send(DiscoveryRequest())


def test_cluster_removed_and_added_back_resends_its_endpoints() -> None:
    cache = SnapshotCache()
    cache.set_snapshot("n1", mesh(AB, "a"))
    ads = client(cache)
    ads.subscribe(ENDPOINT_TYPE, ["a", "b"])
    ads.ack(ads.poll()[0])
    ads.subscribe(ENDPOINT_TYPE, ["a"])  # b's cluster went away
    cache.set_snapshot("n1", mesh(A, "a"))
    assert ads.poll() == []  # a did not change: nothing to say
    cache.set_snapshot("n1", Snapshot({"eds": [build.load_assignment("a", [("127.0.0.1", 1)])]}))
    ads.subscribe(ENDPOINT_TYPE, ["a", "b"])
    assert ads.poll() == []  # b does not exist (yet)
    cache.set_snapshot("n1", mesh(AB, "a"))
    (back,) = ads.poll()
    assert _names(back) == {"b"}  # a is held, unchanged


def test_repeated_subscription_is_answered_even_at_the_same_version() -> None:
    # Envoy re-requests EDS when an updated cluster warms again, and waits for the answer.
    cache = SnapshotCache()
    cache.set_snapshot("n1", mesh(A, "a"))
    ads = client(cache)
    ads.subscribe(ENDPOINT_TYPE, ["a"])
    (first,) = ads.poll()
    ads.ack(first)
    assert ads.poll() == []
    again = ads.subscribe(ENDPOINT_TYPE, ["a"])  # same names, same nonce, nothing in flight
    assert again.events == () and again.watch is not None
    (resent,) = ads.poll()
    assert resent.version_info == first.version_info
    assert len(resent.resources) == 1


def test_an_updated_cluster_gets_its_unchanged_endpoints_again() -> None:
    # Envoy re-warms an updated cluster and waits for its endpoints, even unchanged ones; its
    # EDS request may change the subscription (here: a removed cluster), so it is no plain
    # "send it again". Seen with real Envoy as clusters stuck warming and CDS never ACKed.
    cache = SnapshotCache()
    cache.set_snapshot("n1", mesh(AB, "a"))
    ads = client(cache)
    ads.subscribe(CLUSTER_TYPE)
    (cds,) = ads.poll()
    ads.ack(cds)
    ads.subscribe(ENDPOINT_TYPE, ["a", "b"])
    (eds,) = ads.poll()
    ads.ack(eds)
    cache.set_snapshot("n1", mesh(A, "a", connect_timeout=2.0))  # a updated, b gone
    written = ads.session.next_response()  # only the CDS response goes out ...
    assert written is not None
    cds = DiscoveryResponse.FromString(written[0])
    assert cds.type_url == CLUSTER_TYPE
    ads.ack(cds)
    ads.subscribe(ENDPOINT_TYPE, ["a"])  # ... before Envoy drops b's endpoints and re-warms a
    (again,) = ads.poll()
    assert again.type_url == ENDPOINT_TYPE
    names = [ClusterLoadAssignment.FromString(r.value).cluster_name for r in again.resources]
    assert names == ["a"]


def test_an_added_cluster_does_not_resend_other_endpoints() -> None:
    cache = SnapshotCache()
    cache.set_snapshot("n1", mesh(A, "a"))
    ads = client(cache)
    ads.subscribe(CLUSTER_TYPE)
    ads.ack(ads.poll()[0])
    ads.subscribe(ENDPOINT_TYPE, ["a"])
    ads.ack(ads.poll()[0])
    cache.set_snapshot("n1", mesh(AB, "a"))  # b added, a unchanged
    got = ads.poll()
    assert [r.type_url for r in got] == [CLUSTER_TYPE]


def test_updated_clusters_endpoints_follow_at_once() -> None:
    cache = SnapshotCache()
    cache.set_snapshot("n1", mesh(AB, "a"))
    ads = client(cache)
    ads.subscribe(CLUSTER_TYPE)
    ads.ack(ads.poll()[0])
    ads.subscribe(ENDPOINT_TYPE, ["a", "b"])
    ads.ack(ads.poll()[0])
    cache.set_snapshot("n1", mesh(AB, "a", connect_timeout=2.0))  # both updated, endpoints not
    got = ads.poll()
    assert [r.type_url for r in got] == [CLUSTER_TYPE, ENDPOINT_TYPE]
    assert len(got[1].resources) == 2


# -- the ACK fast paths: same behaviour, less work ----------------------------------------------

MANY = [f"cluster-{i:02d}" for i in range(12)]  # more than the names compared one by one


def eds_request(names: list[str], version: str = "", nonce: str = "") -> DiscoveryRequest:
    return DiscoveryRequest(
        type_url=ENDPOINT_TYPE, resource_names=names, version_info=version, response_nonce=nonce
    )


def test_an_unchanged_long_name_list_is_recognised_by_its_bytes() -> None:
    cache = SnapshotCache()
    cache.set_snapshot("n1", mesh({n: [("127.0.0.1", 1)] for n in [*MANY, "other"]}, MANY[0]))
    ads = client(cache)
    ads.send(DiscoveryRequest(type_url=CLUSTER_TYPE))
    session = ads.session
    (first,) = (r for r in ads.poll() if r.type_url == CLUSTER_TYPE)
    ads.ack(first)
    request = eds_request(MANY)
    session.receive(request, request.SerializeToString())
    (eds,) = ads.poll()
    state = session.protocol.types[ENDPOINT_TYPE]
    known = state.names
    # The ACK repeats the list: no events but the ACK, and the subscription set is kept.
    ack = eds_request(MANY, eds.version_info, eds.nonce)
    received = session.receive(ack, ack.SerializeToString())
    assert received.events == (Acked(ENDPOINT_TYPE, eds.version_info, eds.nonce),)
    assert state.names is known
    # The same names in another order, or with the node along, change no subscription (a
    # repeated request is answered again: Envoy asks so while a cluster warms).
    shuffled = eds_request(MANY[::-1], eds.version_info, eds.nonce)
    shuffled.node.CopyFrom(NODE)
    assert session.receive(shuffled, shuffled.SerializeToString()).events == ()
    assert state.names == known
    (again,) = ads.poll()
    # One name swapped, same count: noticed, in both directions.
    swapped = eds_request([*MANY[:-1], "other"], again.version_info, again.nonce)
    received = session.receive(swapped, swapped.SerializeToString())
    assert received.events[:2] == (
        Subscribed(ENDPOINT_TYPE, frozenset({"other"}), False),
        Unsubscribed(ENDPOINT_TYPE, frozenset({MANY[-1]}), False),
    )
    assert state.names == {*MANY[:-1], "other"}
    # Without the raw bytes (grpc transport), the request is serialized for the comparison.
    (third,) = ads.poll()
    ack = eds_request([*MANY[:-1], "other"], third.version_info, third.nonce)
    assert session.receive(ack).events == (Acked(ENDPOINT_TYPE, third.version_info, third.nonce),)
    received = session.receive(eds_request(MANY, third.version_info, third.nonce))
    assert [type(e) for e in received.events] == [Subscribed, Unsubscribed]


def test_bytes_that_only_look_like_a_nonce_do_not_fool_the_comparison() -> None:
    # A client may write fields in any order. Here (an EDS stream: no type_url) the nonce comes
    # first and each last name ends in the bytes of the nonce field: what is cut off as "the
    # nonce" is part of a name, and the lists differ only there.
    eds = InMemoryAdsClient(SnapshotCache(), node=NODE, type_url=ENDPOINT_TYPE)
    received = []
    for nonce in ("6", "7"):
        names = [*MANY, f"x*\x01{nonce}"]
        raw = wire.nonce_field(nonce) + DiscoveryRequest(resource_names=names).SerializeToString()
        assert raw.endswith(wire.nonce_field(nonce))
        received.append(eds.session.receive(DiscoveryRequest.FromString(raw), raw))
    assert received[1].events == (
        Subscribed(ENDPOINT_TYPE, frozenset({"x*\x017"}), False),
        Unsubscribed(ENDPOINT_TYPE, frozenset({"x*\x016"}), False),
    )


def test_a_long_list_in_another_order_shares_the_set_and_one_with_a_repeat_does_not() -> None:
    # Envoys list a subscription in orders of their own. The second stream's list is known by
    # its names (`SameSets`), with no set made of them to look up (`_SETS` is emptied here).
    cache = SnapshotCache()
    cache.set_snapshot("n1", mesh({n: [("127.0.0.1", 1)] for n in MANY}, MANY[0]))

    def subscribe(names: list[str]) -> tuple[frozenset[str], list[str]]:
        eds = InMemoryAdsClient(cache, node=NODE, type_url=ENDPOINT_TYPE)
        eds.send(eds_request(names))
        (response,) = eds.poll()
        sent = [ClusterLoadAssignment.FromString(r.value).cluster_name for r in response.resources]
        return eds.session.protocol.types[ENDPOINT_TYPE].names, sent

    first, _ = subscribe(MANY)
    sotw._SETS.clear()
    second, sent = subscribe(MANY[::-1])
    assert second is first and sorted(sent) == MANY
    # As many entries, all among the set's names, but one twice and another missing: not
    # taken for the set.
    repeated, sent = subscribe([*MANY[:-1], MANY[0]])
    assert repeated == frozenset(MANY[:-1]) and sorted(sent) == MANY[:-1]


def test_same_sets_finds_a_kept_set_from_its_names_in_any_order() -> None:
    same: SameSets[str] = SameSets(size=2)
    same.keep(frozenset("abc"), 3, "abc")
    assert same.find("cab", 3) == "abc"
    assert same.find("cax", 3) is None  # another name
    assert same.find("caa", 3) is None  # a repeat, and one missing
    assert same.find("ab", 2) is None  # no set of that size kept
    same.keep(frozenset("ab"), 3, "aba")  # from a list with a repeat: not kept
    assert same.find("cba", 3) == "abc"
    # Another kind of proxy listing as many names: both are kept and told apart, even when
    # one's first name is among the other's.
    same.keep(frozenset("abd"), 3, "abd")
    assert same.find("bca", 3) == "abc" and same.find("dba", 3) == "abd"
    assert same.find("bad", 3) == "abd" and same.find("abx", 3) is None
    same.keep(frozenset("xy"), 2, "xy")
    same.keep(frozenset("wxyz"), 4, "wxyz")  # a third length: the table starts over
    assert same.find("abc", 3) is None and same.find("zyxw", 4) == "wxyz"


def test_a_snapshot_set_before_the_ack_is_sent_once_it_arrives() -> None:
    # The watch is cancelled when a response is written; the ACK re-arms it, and whatever
    # came meanwhile is answered then, while an ACK with nothing new computes no answer.
    cache = SnapshotCache()
    cache.set_snapshot("n1", mesh(A, "a"))
    ads = client(cache)
    ads.subscribe(CLUSTER_TYPE)
    (first,) = ads.poll()
    cache.set_snapshot("n1", mesh(AB, "a"))  # between the response and its ACK
    assert ads.poll() == []
    ads.ack(first)
    (second,) = ads.poll()
    assert second.version_info == cache.get_snapshot("n1").version(CLUSTER_TYPE)
    cache.set_snapshot("n1", mesh(AB, "a"))  # new snapshot object, same content: nothing
    ads.ack(second)
    assert ads.poll() == []
    assert cache.watch_count("n1") == 1


def test_an_ack_of_what_the_watch_answered_computes_no_answer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from pilotfish.cache.answers import sotw_answer as real

    answered: list[str] = []

    def counting(*args: Any, **kwargs: Any) -> Any:
        answered.append(args[1].type_url)
        return real(*args, **kwargs)

    monkeypatch.setattr("pilotfish.cache.snapshot_cache.sotw_answer", counting)
    cache = SnapshotCache()
    cache.set_snapshot("n1", mesh(A, "a"))
    ads = client(cache)
    ads.subscribe(CLUSTER_TYPE)
    (cds,) = ads.poll()
    handle = ads.session._armed
    assert answered == [CLUSTER_TYPE] and handle == {CLUSTER_TYPE: None}  # written: none open
    ads.ack(cds)
    (watch,) = (responder.cancel for responder in handle.values() if responder is not None)
    assert answered == [CLUSTER_TYPE]  # re-armed without an answer: nothing can be new
    assert ads.poll() == []
    cache.set_snapshot("n1", mesh(AB, "a"))
    (again,) = ads.poll()
    ads.ack(again)
    assert answered == [CLUSTER_TYPE, CLUSTER_TYPE]
    # The same watch, re-armed every ACK:
    assert [r.cancel for r in handle.values() if r is not None] == [watch]
    ads.subscribe(CLUSTER_TYPE)  # asked again (a cluster warms): answered, unchanged or not
    (resent,) = ads.poll()
    assert resent.version_info == again.version_info
    ads.nack(resent)
    assert ads.poll() == []


def test_next_parts_writes_the_shared_body_and_the_nonce_apart() -> None:
    cache = SnapshotCache()
    snapshot = mesh(A, "a")
    cache.set_snapshot("n1", snapshot)
    one, two = client(cache, Node(id="n1")), client(cache, Node(id="n1"))
    for ads in (one, two):
        ads.subscribe(CLUSTER_TYPE)
    parts = one.session.next_parts()
    assert parts is not None
    body, nonce, sent = parts
    assert body is snapshot.response(CLUSTER_TYPE, None).body  # shared, never copied
    assert nonce == wire.nonce_field(sent.nonce)
    assert DiscoveryResponse.FromString(body + nonce).nonce == sent.nonce
    written = two.session.next_response()
    assert written is not None and written[0].startswith(body)
    assert one.session.next_parts() is None


def test_streams_keep_one_shared_nonce_object_per_response_number() -> None:
    # A fleet's streams keep their last nonce per type for the ACK: the same objects for all.
    first, second = SotwStream(1), SotwStream(2)
    for stream in (first, second):
        stream.receive(DiscoveryRequest(type_url=CLUSTER_TYPE, node=Node(id="n")))
    snapshot = Snapshot({"cds": [Cluster(name="c")]})
    response = snapshot.response(CLUSTER_TYPE, None)
    sent = [stream.send_parts(response) for stream in (first, second)]
    assert sent[0][1] is sent[1][1]
    assert first.types[CLUSTER_TYPE].sent_nonce is second.types[CLUSTER_TYPE].sent_nonce
    assert first.types[CLUSTER_TYPE].ack_nonce is second.types[CLUSTER_TYPE].ack_nonce


def test_a_watch_replaced_while_it_is_made_is_cancelled_not_left_armed() -> None:
    # A wakeup that writes at once: the first answer, delivered inside create_watch, is written
    # (and the watch cancelled) before create_watch returns the watch's canceller.
    from pilotfish.xds.session import Session

    cache = SnapshotCache()
    cache.set_snapshot("n1", mesh(A, "a"))
    written: list[bytes] = []

    def write_now() -> None:
        while (parts := session.next_parts()) is not None:
            written.append(parts[0] + parts[1])

    session = Session(cache, 1, wakeup=write_now)
    session.receive(DiscoveryRequest(type_url=CLUSTER_TYPE, node=Node(id="n1")))
    assert len(written) == 1
    assert cache.watch_count() == 0  # not left armed with nobody to cancel it
    response = DiscoveryResponse.FromString(written[0])
    session.receive(
        DiscoveryRequest(
            type_url=CLUSTER_TYPE,
            version_info=response.version_info,
            response_nonce=response.nonce,
        )
    )
    assert cache.watch_count() == 1  # the ACK's watch, and only it
    session.close()
    assert cache.watch_count() == 0


def test_streams_dropping_a_name_alike_share_what_they_keep() -> None:
    # A cluster removed: every Envoy asks for the endpoints of the others only. What each
    # stream keeps of its subscription and of what it was sent is worked out once, and
    # shared: per stream, each was a walk over all the names and a dict of its own.
    cache = SnapshotCache()
    cache.set_snapshot("n1", mesh({n: [("127.0.0.1", 1)] for n in MANY}, MANY[0]))
    streams = [InMemoryAdsClient(cache, node=NODE, type_url=ENDPOINT_TYPE) for _ in range(5)]
    for index, eds in enumerate(streams):
        turned = MANY[index:] + MANY[:index]  # each in an order of its own, as Envoys list
        eds.send(eds_request(turned))
        (response,) = eds.poll()
        eds.send(eds_request(turned, response.version_info, response.nonce))  # ACK
    fewer = MANY[1:]
    received = []
    for index, eds in enumerate(streams):
        state = eds.session.protocol.types[ENDPOINT_TYPE]
        turned = fewer[index:] + fewer[:index]
        received.append(eds.send(eds_request(turned, state.sent_version, state.sent_nonce)))
        assert eds.poll() == []  # nothing new to send for a subscription that shrank
    gone = Unsubscribed(ENDPOINT_TYPE, frozenset({MANY[0]}), False)
    assert all(r.events == (gone,) for r in received)
    states = []
    for eds in streams:
        state = eds.session.protocol.types[ENDPOINT_TYPE]
        assert isinstance(state, sotw.TypeState)
        states.append(state)
    first = states[0]
    assert first.names == set(fewer) and first.sent_names is first.names
    assert dict(first.sent_resources or {}).keys() == set(fewer)
    for state in states[1:]:
        assert state.names is first.names
        assert state.sent_names is first.sent_names
        assert state.sent_resources is first.sent_resources
    # Read-only, so a push checks it against its versions once for all of them.
    assert isinstance(first.sent_resources, MappingProxyType)
