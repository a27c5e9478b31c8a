"""The etcd config source against a real etcd: keys and values, transactions, the watcher's
resume and resync, and serving the last good config through bad values and outages."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace

import pytest

from pilotfish.etcd import (
    ApplyRefused,
    EtcdStore,
    EtcdWatcher,
    StoreURL,
)
from pilotfish.etcd.client import EtcdClient
from pilotfish.etcd.keys import decode, encode
from pilotfish.sources import ConfigObject, ConfigStore, load_documents
from pilotfish.testing import EtcdServer, free_port

VS = """apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: {name}, namespace: {namespace}, labels: {{app: {name}}}}}
spec:
  hosts: [{name}]
  http:
  - route: [{{destination: {{host: {name}, subset: {subset}}}}}]
    timeout: 1m30s
"""
DR = """apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata: {{name: {name}, namespace: {namespace}}}
spec:
  host: {name}
  subsets: [{{name: v1, labels: {{version: v1}}}}, {{name: v2, labels: {{version: v2}}}}]
"""
SERVICE = """apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: {namespace}}}
spec:
  ports: [{{name: http, port: 9080}}]
"""

Key = tuple[str, str, str]


def one(template: str, name: str, namespace: str = "default", subset: str = "v1") -> ConfigObject:
    result = load_documents(template.format(name=name, namespace=namespace, subset=subset))
    assert not result.errors, result.errors
    (obj,) = result.objects
    return obj


def served(config: ConfigStore) -> dict[Key, object]:
    return {obj.key: obj.spec for obj in config.objects()}


async def eventually(predicate: Callable[[], object], timeout: float = 5.0, what: str = "") -> None:
    """`pilotfish.testing.wait_until` for the event loop: the watcher runs on it too."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what or 'condition'} not met within {timeout:g}s")
        await asyncio.sleep(0.02)


@pytest.fixture
async def store(etcd_server: EtcdServer) -> AsyncIterator[EtcdStore]:
    async with EtcdStore(etcd_server.url("pf")) as etcd_store:
        yield etcd_store


@pytest.fixture
async def raw(etcd_server: EtcdServer) -> AsyncIterator[EtcdClient]:
    """A client writing around pilotfish, as `etcdctl put` would."""
    client = EtcdClient([etcd_server.endpoint])
    yield client
    await client.close()


class Changes:
    def __init__(self) -> None:
        self.count = 0

    def __call__(self) -> None:
        self.count += 1


# -- URLs ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "endpoints", "prefix"),
    [
        ("etcd://127.0.0.1:2379/pf", ("127.0.0.1:2379",), "pf"),
        ("etcd://etcd-0.etcd:2379,etcd-1.etcd:32379", ("etcd-0.etcd:2379", "etcd-1.etcd:32379"),
         "pilotfish"),
        ("etcd://etcd/", ("etcd:2379",), "pilotfish"),
        ("etcd://[::1]:2379/team-a/mesh_1/", ("[::1]:2379",), "team-a/mesh_1"),
    ],
)  # fmt: skip
def test_store_url_parses(url: str, endpoints: tuple[str, ...], prefix: str) -> None:
    parsed = StoreURL.parse(url)
    assert (parsed.endpoints, parsed.prefix) == (endpoints, prefix)
    assert StoreURL.parse(str(parsed)) == parsed


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://127.0.0.1:2379/pf", "starts with etcd://"),
        ("etcd:///pf", "no etcd endpoint"),
        ("etcd://127.0.0.1:0/pf", "bad port"),
        ("etcd://127.0.0.1:http/pf", "bad port"),
        ("etcd://a:1,,b:2/pf", "bad host"),
        ("etcd://a:1,a:1/pf", "listed twice"),
        ("etcd://user:pw@a:1/pf", "credentials"),
        ("etcd://a:1/pf?x=1", "no query"),
        ("etcd://a:1/p f", "bad prefix segment"),
        ("etcd://a:1/a/../b", "bad prefix segment"),
    ],
)
def test_store_url_refuses(url: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        StoreURL.parse(url)


# -- EtcdStore ----------------------------------------------------------------------------------


async def test_apply_writes_one_key_per_object_in_one_revision(store: EtcdStore) -> None:
    objects = [one(VS, "reviews"), one(DR, "reviews", "shop"), one(SERVICE, "ratings", "shop")]
    revision = await store.apply(objects)
    kvs, read_at = await store.list_all()
    assert read_at == revision
    assert [kv.key for kv in kvs] == [
        "pf/DestinationRule/shop/reviews",
        "pf/Service/shop/ratings",
        "pf/VirtualService/default/reviews",
    ]
    assert {kv.mod_revision for kv in kvs} == {revision}  # one transaction
    by_key = {kv.key: kv for kv in kvs}
    for obj in objects:
        kv = by_key[store.key(obj.key)]
        assert kv.text == encode(obj)  # deterministic YAML
        back = decode(kv.text, file="x", key=obj.key)
        assert (back.api_version, back.spec, back.labels) == (obj.api_version, obj.spec, obj.labels)
    assert "timeout: 90s" in by_key["pf/VirtualService/default/reviews"].text


async def test_apply_refuses_duplicates_and_bad_names_and_writes_nothing(store: EtcdStore) -> None:
    reviews = one(VS, "reviews")
    twice = [reviews, one(DR, "reviews"), replace(one(VS, "reviews", subset="v2"), index=3)]
    with pytest.raises(ApplyRefused, match=r"VirtualService default/reviews: defined twice"):
        await store.apply(twice)
    with pytest.raises(ApplyRefused, match="cannot be part of an etcd key") as refused:
        await store.apply([reviews, replace(reviews, name="a/b"), replace(reviews, name="")])
    assert len(refused.value.errors) == 2
    assert (await store.list_all())[0] == []


async def test_get_filters_and_delete_is_one_transaction(store: EtcdStore) -> None:
    objects = [one(VS, "a"), one(VS, "b", "shop"), one(DR, "a", "shop"), one(SERVICE, "a")]
    await store.apply(objects)

    async def keys(**filters: str) -> list[Key]:
        return [obj.key for obj in await store.get(**filters)]

    assert await keys() == sorted(obj.key for obj in objects)
    assert await keys(kind="VirtualService") == [
        ("VirtualService", "default", "a"), ("VirtualService", "shop", "b")
    ]  # fmt: skip
    assert await keys(kind="VirtualService", namespace="shop") == [("VirtualService", "shop", "b")]
    assert await keys(kind="Service", namespace="default", name="a") == [
        ("Service", "default", "a")
    ]
    assert await keys(namespace="shop") == [("DestinationRule", "shop", "a"),
                                            ("VirtualService", "shop", "b")]  # fmt: skip
    assert await keys(name="a") == [
        ("DestinationRule", "shop", "a"), ("Service", "default", "a"),
        ("VirtualService", "default", "a"),
    ]  # fmt: skip
    (got,) = await store.get("DestinationRule", "shop", "a")
    assert (got.spec, got.file) == (objects[2].spec, "etcd:pf/DestinationRule/shop/a")

    revision = await store.delete([("VirtualService", "shop", "b"), ("Service", "default", "a"),
                                   ("Service", "default", "nope")])  # fmt: skip
    kvs, _ = await store.list_all()
    assert [kv.key for kv in kvs] == ["pf/DestinationRule/shop/a", "pf/VirtualService/default/a"]
    assert revision > max(kv.mod_revision for kv in kvs)  # both deletions at one revision


# -- EtcdWatcher --------------------------------------------------------------------------------


async def test_watcher_loads_then_follows_puts_and_deletes(store: EtcdStore) -> None:
    first = await store.apply([one(VS, "reviews"), one(DR, "reviews")])
    config, changes = ConfigStore(), Changes()
    async with EtcdWatcher(store.url, config, changes) as watcher:
        await watcher.synced(timeout=5)
        assert set(served(config)) == {("VirtualService", "default", "reviews"),
                                       ("DestinationRule", "default", "reviews")}  # fmt: skip
        assert (watcher.status.revision, changes.count) == (first, 1)
        assert watcher.status.connected and watcher.status.synced

        v2 = one(VS, "reviews", subset="v2")
        batch = [v2, one(VS, "ratings"), one(SERVICE, "ratings")]
        revision = await store.apply(batch)
        await eventually(lambda: watcher.status.revision == revision, what="the apply")
        assert served(config)[v2.key] == v2.spec
        assert len(config.objects()) == 4
        assert changes.count == 2  # one call for the whole transaction
        assert watcher.status.events == 3

        revision = await store.delete([v2.key, ("Service", "default", "ratings")])
        await eventually(lambda: watcher.status.revision == revision, what="the delete")
        assert set(served(config)) == {("DestinationRule", "default", "reviews"),
                                       ("VirtualService", "default", "ratings")}  # fmt: skip
        assert changes.count == 3
        assert config.errors() == {} and watcher.errors() == {}


async def test_a_bad_value_is_refused_for_its_key_and_the_last_good_stays(
    store: EtcdStore, raw: EtcdClient
) -> None:
    good = one(VS, "reviews")
    await store.apply([good, one(VS, "ratings")])
    key = store.key(good.key)
    file = "etcd:" + key
    config = ConfigStore()
    async with EtcdWatcher(store.url, config) as watcher:
        await watcher.synced(timeout=5)

        # Invalid: a negative weight.
        bad = encode(good).replace("subset: v1", "subset: v1\n      weight: -5")
        revision, _ = await raw.txn({key: bad.encode()})
        await eventually(lambda: watcher.status.revision == revision)
        (error,) = config.errors()[file]
        assert (error.file, error.kind, error.name) == (file, "VirtualService", "reviews")
        assert "weight" in str(error)
        assert served(config)[good.key] == good.spec and len(config.objects()) == 2
        assert list(watcher.errors()) == [file]

        # Valid, but not the object its key names: it would shadow the DestinationRule.
        wrong = encode(one(DR, "reviews"))
        revision, _ = await raw.txn({key: wrong.encode(), "pf/oops": b"kind: Nothing"})
        await eventually(lambda: watcher.status.revision == revision)
        errors = watcher.errors()
        assert list(errors) == ["etcd:pf/VirtualService/default/reviews", "etcd:pf/oops"]
        assert "the key names VirtualService default/reviews" in str(errors[file][0])
        assert "is not pf/<kind>/<namespace>/<name>" in str(errors["etcd:pf/oops"][0])
        assert served(config)[good.key] == good.spec and len(config.objects()) == 2

        fixed = one(VS, "reviews", subset="v3")
        revision = await store.apply([fixed])
        await eventually(lambda: watcher.status.revision == revision)
        assert served(config)[good.key] == fixed.spec
        assert list(watcher.errors()) == ["etcd:pf/oops"] and config.errors() == {}


async def test_an_outage_keeps_serving_and_resumes_without_resync(
    etcd_server: EtcdServer, store: EtcdStore
) -> None:
    await store.apply([one(VS, "reviews")])
    config = ConfigStore()
    async with EtcdWatcher(store.url, config) as watcher:
        await watcher.synced(timeout=5)
        up_since = watcher.status.since

        etcd_server.stop()
        await eventually(lambda: not watcher.status.connected, what="noticing the outage")
        status = watcher.status
        # UNAVAILABLE, or INTERNAL when grpc sees etcd reset the stream while shutting down
        assert status.last_error and etcd_server.endpoint in status.last_error
        assert status.since > up_since
        assert set(served(config)) == {("VirtualService", "default", "reviews")}
        await asyncio.sleep(0.5)  # a few reconnect attempts fail meanwhile
        assert set(served(config)) == {("VirtualService", "default", "reviews")}

        etcd_server.start()  # same data dir, same client port
        change = one(VS, "ratings")
        revision = await store.apply([change])
        await eventually(lambda: change.key in served(config), what="the change after the outage")
        status = watcher.status
        assert status.connected and status.revision == revision
        assert status.resyncs == 0  # resumed from the last revision, nothing reloaded
        assert len(config.objects()) == 2


async def test_compacted_history_forces_a_resync_that_matches_etcd_exactly(
    store: EtcdStore,
) -> None:
    keep, gone, changed = one(VS, "keep"), one(VS, "gone"), one(DR, "changed")
    await store.apply([keep, gone, changed])
    config, changes = ConfigStore(), Changes()
    watcher = EtcdWatcher(store.url, config, changes)
    await watcher.start()
    try:
        await watcher.synced(timeout=5)
        await watcher.stop()  # cut off while history moves on and is compacted away

        await store.delete([gone.key])
        changed_now, added = replace(one(DR, "changed"), labels={"v": "2"}), one(SERVICE, "new")
        revision = await store.apply([changed_now, added])
        await store.compact(revision)
        assert gone.key in served(config)  # still the last known config while cut off

        await watcher.start()
        await eventually(lambda: watcher.status.resyncs == 1, what="the resync")
        assert watcher.status.revision == revision
        in_etcd = {obj.key: obj.spec for obj in await store.get()}
        assert served(config) == in_etcd
        assert set(in_etcd) == {keep.key, changed.key, added.key}
        assert [o.labels for o in config.objects() if o.key == changed.key] == [{"v": "2"}]
        assert changes.count == 2

        later = one(VS, "later")  # and it follows the watch again from there
        revision = await store.apply([later])
        await eventually(lambda: later.key in served(config), what="a change after the resync")
        assert watcher.status.resyncs == 1
    finally:
        await watcher.stop()


async def test_an_unreachable_endpoint_is_skipped_for_the_next(etcd_server: EtcdServer) -> None:
    url = f"etcd://127.0.0.1:{free_port()},{etcd_server.endpoint}/pf"
    obj = one(VS, "reviews")
    async with EtcdStore(url) as etcd_store:
        revision = await etcd_store.apply([obj])
    config = ConfigStore()
    async with EtcdWatcher(url, config) as watcher:
        await watcher.synced(timeout=5)
        assert watcher.status.revision == revision and obj.key in served(config)
        assert watcher.status.endpoint == etcd_server.endpoint
