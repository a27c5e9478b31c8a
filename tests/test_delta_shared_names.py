"""Delta subscriptions are parsed and applied once per fleet, not per stream (counts, not time).

Every proxy of a kind subscribes EDS to the same long list of names (and a fleet reconnecting
resumes the same versions): the request is parsed once for all the streams that send the same
bytes, whatever their node and nonce, and applying it to a state the streams share gives them
one shared next state (`pilotfish.xds.delta`). A property test holds the result to the
protocol's rules, worked out plainly per stream, on both paths (short lists, long lists).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pilotfish.protos import CLUSTER_TYPE, ENDPOINT_TYPE, DeltaDiscoveryRequest, Node, Status
from pilotfish.xds import DeltaPreparedResponse, DeltaStream, held_after, new_stream_id
from pilotfish.xds import delta as delta_module
from pilotfish.xds.events import Event, Subscribed, Unsubscribed

_unique = itertools.count()


def _names(count: int) -> list[str]:
    """`count` names no other test sends (the parse tables live as long as the process)."""
    tag = next(_unique)
    return [f"outbound|80||svc{i}-{tag}.default.svc.cluster.local" for i in range(count)]


@contextmanager
def _counting_parses() -> Iterator[list[DeltaDiscoveryRequest]]:
    parsed: list[DeltaDiscoveryRequest] = []
    real: Callable[[DeltaDiscoveryRequest], object] = delta_module._parse

    def counted(request: DeltaDiscoveryRequest) -> object:
        parsed.append(request)
        return real(request)

    with mock.patch.object(delta_module, "_parse", counted):
        yield parsed


def _send(stream: DeltaStream, request: DeltaDiscoveryRequest, *, raw: bool = True) -> None:
    stream.receive(request, request.SerializeToString() if raw else None)


def test_streams_sending_one_long_list_parse_it_once_and_share_its_state() -> None:
    names = _names(200)
    streams = [DeltaStream(new_stream_id()) for _ in range(6)]
    with _counting_parses() as parsed:
        for i, stream in enumerate(streams):
            # Each first request carries the proxy's own node, and each its own (stale) nonce;
            # the grpc transport gives no bytes (every other stream here): made from the request.
            request = DeltaDiscoveryRequest(
                node=Node(id=f"proxy-{i}", cluster="fleet"),
                type_url=ENDPOINT_TYPE,
                resource_names_subscribe=names,
                response_nonce=f"n{i}",
            )
            _send(stream, request, raw=i % 2 == 0)
    assert len(parsed) == 1
    states = [stream.types[ENDPOINT_TYPE] for stream in streams]
    assert states[0].names == frozenset(names)
    assert all(state.names is states[0].names for state in states)
    # The names themselves are kept once: the same str objects in every stream's state.
    one = next(iter(states[0].names))
    assert all(next(n for n in s.names if n == one) is one for s in states)


def test_lists_in_other_orders_share_one_set_and_one_with_a_repeat_does_not() -> None:
    # Envoys list a subscription in orders of their own: the bytes differ, the set does not.
    # A list in another order is known by the set last listed at its length, with no set
    # made of it to look up (`_NAMES`, emptied here, would find it by one).
    names = _names(40)
    first = delta_module._listed_names(names)
    delta_module._NAMES.clear()
    assert delta_module._listed_names(names[::-1]) is first
    assert delta_module._listed_names([*names[1:], names[0]]) is first
    # As many names, all among the set's, one twice and another missing: its own set, and
    # a stream subscribing so holds just those.
    repeated = [*names[:-1], names[0]]
    assert delta_module._listed_names(repeated) == frozenset(names[:-1])
    stream = DeltaStream(new_stream_id())
    request = DeltaDiscoveryRequest(
        node=Node(id="proxy"), type_url=ENDPOINT_TYPE, resource_names_subscribe=repeated
    )
    _send(stream, request)
    assert stream.types[ENDPOINT_TYPE].names == frozenset(names[:-1])


def test_a_fleet_resuming_the_same_versions_parses_them_once() -> None:
    names = _names(50)
    held = {name: f"v{i}" for i, name in enumerate(names)}
    streams = [DeltaStream(new_stream_id()) for _ in range(5)]
    with _counting_parses() as parsed:
        for i, stream in enumerate(streams):
            request = DeltaDiscoveryRequest(
                node=Node(id=f"proxy-{i}"),
                type_url=CLUSTER_TYPE,
                initial_resource_versions=held,
            )
            _send(stream, request)
    assert len(parsed) == 1
    states = [stream.types[CLUSTER_TYPE] for stream in streams]
    assert dict(states[0].versions) == held and states[0].wildcard and states[0].resumed
    assert all(state.versions is states[0].versions for state in states)


def test_one_change_to_a_shared_state_makes_one_next_state() -> None:
    names = _names(40)
    streams = [DeltaStream(new_stream_id()) for _ in range(5)]
    subscribe = DeltaDiscoveryRequest(type_url=ENDPOINT_TYPE, resource_names_subscribe=names)
    for stream in streams:
        _send(stream, subscribe)
    state = streams[0].types[ENDPOINT_TYPE]
    sent = dict.fromkeys(names, "1")
    held = held_after(state.versions, state.names, sent, frozenset())
    answer = DeltaPreparedResponse(
        ENDPOINT_TYPE, "1", sent, frozenset(), b"", after=(state.versions, state.names, held)
    )
    for stream in streams:
        stream.send_parts(answer)
    # Every stream subscribes to some names again (they are resent: forgotten as held) and
    # drops others: one parse, one next state, one event's names for all of them.
    change = DeltaDiscoveryRequest(
        type_url=ENDPOINT_TYPE,
        resource_names_subscribe=[*names[:10], "new"],
        resource_names_unsubscribe=names[-10:],
        response_nonce="1",
    )
    events: list[tuple[Event, ...]] = []
    with _counting_parses() as parsed:
        for stream in streams:
            events.append(stream.receive(change, change.SerializeToString()).events)
    assert len(parsed) == 1
    states = [stream.types[ENDPOINT_TYPE] for stream in streams]
    first = states[0]
    assert first.names == frozenset(names[:-10]) | {"new"}
    assert dict(first.versions) == dict.fromkeys(names[10:-10], "1")
    assert all(s.names is first.names and s.versions is first.versions for s in states)
    subscribed = [e for es in events for e in es if isinstance(e, Subscribed)]
    unsubscribed = [e for es in events for e in es if isinstance(e, Unsubscribed)]
    assert len(subscribed) == len(unsubscribed) == len(streams)
    assert subscribed[0].names == {"new"} and unsubscribed[0].names == frozenset(names[-10:])
    assert all(e.names is subscribed[0].names for e in subscribed)
    assert all(e.names is unsubscribed[0].names for e in unsubscribed)


def test_a_short_list_is_parsed_once_too() -> None:
    (name,) = _names(1)
    streams = [DeltaStream(new_stream_id()) for _ in range(4)]
    with _counting_parses() as parsed:
        for stream in streams:
            stream.receive(
                DeltaDiscoveryRequest(type_url=ENDPOINT_TYPE, resource_names_subscribe=[name])
            )
    assert len(parsed) == 1
    states = [stream.types[ENDPOINT_TYPE] for stream in streams]
    assert all(state.names is states[0].names for state in states)


# -- the rules, per stream, without sharing ------------------------------------------------------


@dataclass
class _Model:
    names: set[str] = field(default_factory=set)
    wildcard: bool = False
    versions: dict[str, str] = field(default_factory=dict)


def _model_receive(
    types: dict[str, _Model], request: DeltaDiscoveryRequest
) -> tuple[Event, ...] | None:
    """The subscription events of `request` by the xDS rules (None: an ACK or NACK alone)."""
    type_url = request.type_url
    subscribe = set(request.resource_names_subscribe)
    unsubscribe = set(request.resource_names_unsubscribe)
    state = types.get(type_url)
    first = state is None
    if state is None:
        state = types[type_url] = _Model(versions=dict(request.initial_resource_versions))
    elif not subscribe and not unsubscribe:
        return None
    wildcard_on = "*" in subscribe or (first and not subscribe)
    wildcard_off = "*" in unsubscribe
    subscribe.discard("*")
    unsubscribe.discard("*")
    # Subscribing again resends (what the client holds is forgotten), and the client forgets
    # what it unsubscribes.
    for name in unsubscribe if first else subscribe | unsubscribe:
        state.versions.pop(name, None)
    added, removed = subscribe - state.names, unsubscribe & state.names
    state.names = (state.names | subscribe) - unsubscribe
    was = state.wildcard
    state.wildcard = (state.wildcard or wildcard_on) and not wildcard_off
    events: list[Event] = []
    if first or added or subscribe or (state.wildcard and not was):
        events.append(Subscribed(type_url, frozenset(added), state.wildcard))
    if removed or (was and not state.wildcard):
        events.append(Unsubscribed(type_url, frozenset(removed), was and not state.wildcard))
    return tuple(events)


_POOL = ("a", "b", "c", "d", "*")
_LISTS = st.lists(st.sampled_from(_POOL), max_size=5)
_TYPES = st.sampled_from((CLUSTER_TYPE, ENDPOINT_TYPE))
_REQUESTS = st.tuples(
    st.just("request"),
    st.integers(0, 2),
    st.fixed_dictionaries(
        {
            "type_url": _TYPES,
            "subscribe": _LISTS,
            "unsubscribe": _LISTS,
            "initial": st.dictionaries(st.sampled_from(_POOL[:4]), st.sampled_from("12")),
            "nonce": st.sampled_from(("", "1", "2", "9")),
            "nack": st.booleans(),
            "raw": st.booleans(),
        }
    ),
)
_SENDS = st.tuples(
    st.just("send"),
    st.integers(0, 2),
    st.fixed_dictionaries(
        {
            "type_url": _TYPES,
            "versions": st.dictionaries(st.sampled_from(_POOL[:4]), st.sampled_from("123")),
            "removed": st.frozensets(st.sampled_from(_POOL[:4])),
        }
    ),
)


@pytest.mark.parametrize("keyed", [0, delta_module._KEYED], ids=["by-bytes", "short-lists"])
@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(_REQUESTS, _SENDS), max_size=25))
def test_shared_parsing_keeps_the_subscription_rules(
    keyed: int, script: list[tuple[str, int, dict[str, object]]]
) -> None:
    # Three streams (their first requests each carry their own node) send alike and apart:
    # each ends every step exactly where the rules, applied to it alone, put it.
    streams = [DeltaStream(new_stream_id()) for _ in range(3)]
    models: list[dict[str, _Model]] = [{} for _ in streams]
    with mock.patch.object(delta_module, "_KEYED", keyed):
        for op, who, args in script:
            stream, model = streams[who], models[who]
            type_url = args["type_url"]
            assert isinstance(type_url, str)
            if op == "send":
                state = stream.types.get(type_url)
                if state is None:
                    continue
                versions, removed = args["versions"], args["removed"]
                assert isinstance(versions, dict) and isinstance(removed, frozenset)
                stream.send_parts(DeltaPreparedResponse(type_url, "v", versions, removed, b""))
                mine = model[type_url]
                mine.versions = dict(held_after(mine.versions, mine.names, versions, removed))
                continue
            request = DeltaDiscoveryRequest(
                type_url=type_url,
                resource_names_subscribe=args["subscribe"],
                resource_names_unsubscribe=args["unsubscribe"],
                initial_resource_versions=args["initial"],
                response_nonce=args["nonce"],
            )
            if stream.node is None:
                request.node.CopyFrom(Node(id=f"proxy-{who}", cluster="fleet"))
            if args["nack"]:
                request.error_detail.CopyFrom(Status(code=3, message="rejected"))
            received = stream.receive(request, request.SerializeToString() if args["raw"] else None)
            expected = _model_receive(model, request)
            changes = tuple(e for e in received.events if isinstance(e, Subscribed | Unsubscribed))
            if expected is None:
                assert changes == ()
            else:
                assert changes == expected
                assert received.watch is not None
            for type_url, mine in model.items():
                state = stream.types[type_url]
                assert state.names == mine.names
                assert state.wildcard == mine.wildcard
                assert dict(state.versions) == mine.versions
