"""`gc_paused`: the cycle collector is off inside, back on after the outermost pause, and left
off if it was off before."""

from __future__ import annotations

import gc
import threading
import weakref
from collections.abc import Iterator

import pytest

from pilotfish.gcpause import SERVING_THRESHOLD, gc_paused, tune_for_serving


@pytest.fixture(autouse=True)
def _collector_on() -> Iterator[None]:
    was = gc.isenabled()
    gc.enable()
    yield
    if not was:
        gc.disable()


def test_nested_pauses_restore_at_the_outermost() -> None:
    with gc_paused():
        assert not gc.isenabled()
        with gc_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()  # the outer pause still holds
    assert gc.isenabled()


def test_an_error_inside_still_restores() -> None:
    with pytest.raises(KeyError), gc_paused():
        raise KeyError("x")
    assert gc.isenabled()


def test_a_collector_turned_off_before_stays_off() -> None:
    gc.disable()
    with gc_paused():
        pass
    assert not gc.isenabled()


def test_overlapping_pauses_in_two_threads() -> None:
    entered, release = threading.Event(), threading.Event()

    def other() -> None:
        with gc_paused():
            entered.set()
            release.wait(5)

    thread = threading.Thread(target=other)
    thread.start()
    assert entered.wait(5)
    with gc_paused():
        pass
    assert not gc.isenabled()  # the other thread's pause is still open
    release.set()
    thread.join(5)
    assert gc.isenabled()


class _Node:
    def __init__(self) -> None:
        self.other: _Node | None = None


def test_what_a_pause_keeps_goes_to_the_oldest_generation() -> None:
    """The objects made in a pause skip the young collections (which would walk them all);
    a cycle among them is still found, by a full collection."""
    with gc_paused():
        kept = [[i] for i in range(1000)]
        a, b = _Node(), _Node()
        a.other, b.other = b, a
        dropped = weakref.ref(a)
        del a, b
    oldest = {id(o) for o in gc.get_objects(generation=2)}
    assert all(id(item) in oldest for item in kept)
    assert gc.get_freeze_count() == 0
    assert dropped() is not None  # a cycle waits for a collection
    gc.collect()
    assert dropped() is None


def test_objects_frozen_by_someone_else_stay_frozen() -> None:
    frozen = [[1], [2]]
    gc.freeze()
    try:
        count = gc.get_freeze_count()
        assert count > 0
        with gc_paused():
            made = [[3]]
        assert gc.get_freeze_count() == count  # not thawed by the pause
        assert id(made[0]) not in {id(o) for o in gc.get_objects(generation=2)}
    finally:
        gc.unfreeze()
    assert frozen


def test_a_controller_round_leaves_no_garbage_cycles() -> None:
    """What a round keeps skips the young collections (above), so garbage cycles it made would
    wait for a full collection: it makes none."""
    from pilotfish.cache import SnapshotCache
    from pilotfish.controller import Controller
    from pilotfish.demo.bookinfo import CONFIG
    from pilotfish.protos import DiscoveryRequest, Node
    from pilotfish.sources import ConfigStore

    store = ConfigStore()
    for path in sorted(CONFIG.rglob("*.yaml")):
        store.update(str(path), path.read_text())
    controller = Controller(SnapshotCache(), store)
    for n, app in enumerate(["productpage", "reviews", "ratings"]):
        node = Node(id=f"{app}-{n}")
        node.metadata.update({"NAMESPACE": "default", "LABELS": {"app": app, "version": "v1"}})
        controller.on_stream_request(n + 1, DiscoveryRequest(node=node))
    gc.collect()
    gc.disable()
    try:
        assert controller.flush(force=True) == 3
        assert gc.collect() == 0
        routes = sorted(CONFIG.rglob("*.yaml"))[-1]
        store.update(str(routes), routes.read_text().replace("v1", "v2"))
        controller.flush()
        assert gc.collect() == 0
    finally:
        gc.enable()


def test_tuned_for_serving_collects_the_young_less_often_and_ages_what_exists() -> None:
    before = gc.get_threshold()
    collections: list[int] = []

    def count(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            collections.append(info["generation"])

    try:
        made = [[n] for n in range(5_000)]  # tracked, in a young generation
        assert not any(item is made[0] for item in gc.get_objects(generation=2))
        tune_for_serving()
        assert gc.get_threshold() == (SERVING_THRESHOLD, *before[1:])
        assert any(item is made[0] for item in gc.get_objects(generation=2))
        assert gc.get_freeze_count() == 0  # not frozen: a later gc_paused still ages its own
        gc.callbacks.append(count)
        more = [[n] for n in range(2_000)]  # > 700: the default would have collected by now
        assert collections == []
        with gc_paused():
            more.append([0])
        assert any(item is more[0] for item in gc.get_objects(generation=2))
    finally:
        if count in gc.callbacks:
            gc.callbacks.remove(count)
        gc.set_threshold(*before)
