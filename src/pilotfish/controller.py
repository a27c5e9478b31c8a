"""The controller: config sources -> translators -> cache, for every connected proxy.

A proxy is known from its first request (its node says who it is, `Proxy.from_node`) and
forgotten when its last stream closes. A config change is debounced: translation runs once the
changes have been quiet for `debounce` seconds, or `max_delay` after the first one at the
latest, so a burst of edits (an editor's atomic save, a `git checkout`) is one translation and
one push per affected proxy. Snapshot versions are content hashes, so a proxy whose config did
not change is not sent anything.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from pilotfish.cache import Snapshot, SnapshotCache
from pilotfish.gcpause import gc_paused
from pilotfish.protos import (
    RESOURCE_TYPES,
    DeltaDiscoveryRequest,
    DiscoveryRequest,
    Node,
    Secret,
)
from pilotfish.registry import Registry
from pilotfish.security import RevokedIdentity, WorkloadSecrets
from pilotfish.sources import ConfigObject, ConfigStore
from pilotfish.translators import (
    ConfigIndex,
    MemoStats,
    Proxy,
    SharedParts,
    Translation,
    TranslationMemo,
    translate,
)
from pilotfish.translators.changes import Changes
from pilotfish.xds.callbacks import Callbacks
from pilotfish.xds.events import Nacked

__all__ = ["Controller", "ControllerStats"]

log = logging.getLogger("pilotfish.controller")


@dataclass
class ControllerStats:
    """Counters for metrics and tests."""

    translations: int = 0  # full passes over the known proxies
    proxies_translated: int = 0
    snapshots_changed: int = 0  # proxies handed a snapshot that differs from their last one
    last_translation_seconds: float = 0.0
    translation_seconds: list[float] = field(default_factory=list)


class Controller(Callbacks):
    """Keeps every connected proxy's snapshot in `cache` current with `store`'s objects.

    Also an xDS `Callbacks`: give it to the server so it learns which proxies connect.
    `services` are registry objects that are not in the store (a platform's Services);
    `on_translated(seconds, objects_by_kind, refused_files)` is called after each translation, and
    `on_pushed(started, {proxy: {type URL: version}})` with what connected proxies must now ACK
    (both for metrics: translation time, convergence time). With `workload_secrets` (a CA),
    every proxy is served its own identity's certificate over SDS (so sidecars speak mutual
    TLS), re-issued at half its lifetime: only the SDS resources change then.
    """

    def __init__(
        self,
        cache: SnapshotCache,
        store: ConfigStore,
        *,
        services: Iterable[ConfigObject] = (),
        secrets: Iterable[Secret] = (),
        debounce: float = 0.1,
        max_delay: float = 10.0,
        placement: Callable[[Node], dict[str, object]] | None = None,
        on_translated: Callable[[float, Mapping[str, int], int], None] | None = None,
        on_pushed: Callable[[float, dict[str, dict[str, str]]], None] | None = None,
        workload_secrets: WorkloadSecrets | None = None,
        rotation_check: float = 1.0,
    ) -> None:
        self.cache = cache
        self.store = store
        self.debounce = debounce
        self.max_delay = max_delay
        self.stats = ControllerStats()
        self._services = list(services)
        self._secrets_given = list(secrets)
        self._placement = placement
        self._on_translated = on_translated
        self._on_pushed = on_pushed
        self._workload_secrets = workload_secrets
        self._rotation_check = rotation_check
        self._lock = threading.RLock()
        self._proxies: dict[str, Proxy] = {}
        self._streams: dict[int, str] = {}
        self._translations: dict[str, Translation] = {}
        self._index: ConfigIndex | None = None
        self._revision = 0  # of the store, as of the last round
        self._shapes: dict[tuple[object, ...], tuple[Translation, Snapshot]] = {}
        self._memos: dict[tuple[object, ...], TranslationMemo] = {}
        # Clusters, load assignments and routes, made once a round for all the shapes that
        # see them alike (one namespace's sidecars): most of a large mesh's resources.
        self._shared = SharedParts()
        self._changes: Changes | None = None  # how the last round's objects differ
        self._registry: Registry | None = None
        self._ready = threading.Event()
        self._wake = threading.Condition()
        self._first_change: float | None = None
        self._last_change = 0.0
        self._closed = False
        self._thread: threading.Thread | None = None

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> Controller:
        """Translate the current config, then debounce later changes on a thread."""
        self.flush()
        self._thread = threading.Thread(target=self._run, name="pilotfish-controller", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the debounce thread."""
        with self._wake:
            self._closed = True
            self._wake.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=5)

    @property
    def ready(self) -> bool:
        """True once the config has been translated at least once."""
        return self._ready.is_set()

    # -- what changed -----------------------------------------------------------------------

    def changed(self) -> None:
        """Config changed: translate after the quiet period (or `max_delay` at the latest)."""
        now = time.monotonic()
        with self._wake:
            if self._first_change is None:
                self._first_change = now
            self._last_change = now
            self._wake.notify_all()

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._closed and self._first_change is None:
                    if not self._wake.wait(self._rotation_check) and self._rotation_due():
                        break
                if self._closed:
                    return
                rotate = self._first_change is None  # woken for certificate rotation
                first = self._first_change
                if first is not None:
                    due = min(self._last_change + self.debounce, first + self.max_delay)
                    wait = due - time.monotonic()
                    if wait > 0:
                        self._wake.wait(wait)
                        continue
                    self._first_change = None
            try:
                self.flush(force=rotate)
            except Exception:  # keep serving the last snapshots; say why
                log.exception("translation failed; proxies keep their last config")

    def _rotation_due(self) -> bool:
        return self._workload_secrets is not None and bool(self._workload_secrets.rotate_due())

    def _secrets(self, proxy: Proxy) -> list[Secret]:
        if self._workload_secrets is None:
            return list(self._secrets_given)
        try:
            issued = self._workload_secrets.secrets_for(proxy.namespace, proxy.service_account)
        except (RevokedIdentity, ValueError) as error:
            log.warning("proxy %s gets no workload certificate: %s", proxy.id, error)
            return list(self._secrets_given)
        return [*issued, *self._secrets_given]

    def flush(self, *, force: bool = False) -> int:
        """Translate for every known proxy now; returns how many got a different snapshot.

        Nothing is translated when the served objects are the same as last time (a file saved
        unchanged, an invalid edit that was refused) unless `force`. Proxies of one shape (same
        namespace, labels, identity and placement) share one translation and one snapshot, so
        the work grows with the kinds of workloads, not with the number of proxies.
        """
        started = time.perf_counter()
        began = time.monotonic()
        with self._lock, gc_paused():
            # What changed since the last round, from the store's journal: a round costs the
            # size of the change, not of the mesh (None: start over from every object).
            delta = self.store.changes_since(self._revision) if self._index is not None else None
            unchanged = delta is not None and _same_content(delta.removed, delta.added)
            if unchanged and not force and self._ready.is_set():
                # Saved unchanged, or nothing new: nothing to translate (the journal is read
                # from the same point next time).
                log.debug("config unchanged: nothing to translate")
                return 0
            changes = None
            if delta is None or self._index is None:
                self._revision, objects = self.store.snapshot()
                self._index = ConfigIndex.build(objects)
                self._registry = Registry.from_objects([*self._services, *objects])
            else:
                self._revision = delta.revision
                self._index.apply(delta.removed, delta.added)
                changes = Changes.of(delta.removed, delta.added, self._index.domain)
                registry = self._registry
                if registry is None or (
                    changes.registry and not registry.apply(delta.removed, delta.added)
                ):
                    revision, objects = self.store.snapshot()
                    if revision != delta.revision:  # the store moved on meanwhile: start over
                        self._revision, changes = revision, None
                        self._index = ConfigIndex.build(objects)
                    self._registry = Registry.from_objects([*self._services, *objects])
            self._changes = changes
            self._shapes = {}
            targets: dict[str, dict[str, str]] = {}
            ready: list[tuple[str, Snapshot]] = []
            self._shared.begin(changes)
            for proxy in list(self._proxies.values()):
                if (prepared := self._translate(proxy)) is not None:
                    snapshot, targets[proxy.id] = prepared
                    ready.append((proxy.id, snapshot))
            self._shared.end()
            changed = len(ready)
            self.stats.translations += 1
            # Say what to expect before pushing: a local proxy ACKs within a millisecond.
            if self._on_pushed is not None:
                self._on_pushed(began, {p: t for p, t in targets.items() if t})
            for proxy_id, snapshot in ready:
                self.cache.set_snapshot(proxy_id, snapshot)
            # A shape nobody has any more takes its memo along.
            self._memos = {s: m for s, m in self._memos.items() if s in self._shapes}
        elapsed = time.perf_counter() - started
        self.stats.last_translation_seconds = elapsed
        self.stats.translation_seconds.append(elapsed)
        del self.stats.translation_seconds[:-1000]
        self._ready.set()
        if self._on_translated is not None:
            self._on_translated(elapsed, self.store.kind_counts(), len(self.store.errors()))
        log.info(
            "translated %d objects for %d proxies in %.1f ms; %d changed",
            len(self.store), len(self._proxies), elapsed * 1000, changed,
        )  # fmt: skip
        return changed

    def _translate(self, proxy: Proxy) -> tuple[Snapshot, dict[str, str]] | None:
        """Translate for one proxy; None if its config is unchanged, else its new snapshot (for
        the caller to set) and the new versions of the changed types it subscribes to (what it
        will ACK)."""
        assert self._index is not None and self._registry is not None
        shape = _shape(proxy)
        shared = self._shapes.get(shape)
        if shared is None:
            secrets = self._secrets(proxy)
            memo = self._memos.setdefault(shape, TranslationMemo())
            translation = translate(
                proxy,
                self._index,
                self._registry,
                secrets=secrets,
                memo=memo,
                changes=self._changes,
                shared=self._shared,
            )
            self.stats.proxies_translated += 1
            shared = self._shapes[shape] = (translation, translation.snapshot(memo))
        translation = dataclasses.replace(shared[0], proxy=proxy)
        snapshot = shared[1]
        self._translations[proxy.id] = translation
        try:
            old = self.cache.get_snapshot(proxy.id)
        except KeyError:
            old = None
        changed = [
            t for t in RESOURCE_TYPES if old is None or old.version(t) != snapshot.version(t)
        ]
        if not changed:
            return None
        self.stats.snapshots_changed += 1
        status = self.cache.status(proxy.id)
        subscribed = status.types if status is not None else {}
        return snapshot, {t: snapshot.version(t) for t in changed if t in subscribed}

    # -- who is connected -------------------------------------------------------------------

    def proxies(self) -> dict[str, Proxy]:
        """Connected proxies by id."""
        with self._lock:
            return dict(self._proxies)

    def translation(self, proxy_id: str) -> Translation | None:
        """What a proxy was last given."""
        with self._lock:
            return self._translations.get(proxy_id)

    def memo_stats(self) -> list[MemoStats]:
        """Per proxy shape, what its last translation reused and redid, then the same for
        each shared view's (`SharedParts.memos`; benchmarks, tests)."""
        with self._lock:
            memos = [*self._memos.values(), *self._shared.memos()]
            return [dataclasses.replace(m.stats) for m in memos]

    def objects(self) -> list[ConfigObject]:
        """The objects being served."""
        return self.store.objects()

    @property
    def plain_acks_in_requests(self) -> bool:
        # Only a request carrying a node is looked at, and a plain ACK carries none.
        return False

    @property
    def node_extensions_in_requests(self) -> bool:
        # A proxy is told by its node's id, metadata and locality (`Proxy.from_node`).
        return False

    def on_stream_request(
        self, stream_id: int, request: DiscoveryRequest | DeltaDiscoveryRequest
    ) -> None:
        if stream_id in self._streams or not request.HasField("node"):
            return
        node = request.node
        placement = self._placement(node) if self._placement else {}
        proxy = Proxy.from_node(node, **placement)
        with self._lock:
            self._streams[stream_id] = proxy.id
            known = proxy.id in self._proxies
            self._proxies[proxy.id] = proxy
            if self._index is not None and not known:
                prepared = self._translate(proxy)
                if prepared is not None:
                    self.cache.set_snapshot(proxy.id, prepared[0])
        if not known:
            log.info("proxy %s connected (%s, namespace %s)", proxy.id, proxy.kind, proxy.namespace)

    def on_stream_close(self, stream_id: int, node: Node | None) -> None:
        with self._lock:
            proxy_id = self._streams.pop(stream_id, None)
            if proxy_id is None or proxy_id in self._streams.values():
                return
            gone = self._proxies.pop(proxy_id, None)
            self._translations.pop(proxy_id, None)
            self.cache.clear_snapshot(proxy_id)
            identity = (gone.namespace, gone.service_account) if gone else None
            in_use = {(p.namespace, p.service_account) for p in self._proxies.values()}
            if self._workload_secrets is not None and identity and identity not in in_use:
                self._workload_secrets.forget(*identity)  # no rotation for nobody
        log.info("proxy %s disconnected", proxy_id)

    def on_nack(self, stream_id: int, node: Node, nack: Nacked) -> None:
        log.warning(
            "proxy %s rejected %s version %s: %s",
            node.id, nack.type_url.rsplit(".", 1)[-1], nack.version, nack.message,
        )  # fmt: skip


def _same_content(removed: Sequence[ConfigObject], added: Sequence[ConfigObject]) -> bool:
    """Whether objects replaced by others say the same (a file saved unchanged)."""
    return sorted(map(_digest, removed)) == sorted(map(_digest, added))


def _digest(obj: ConfigObject) -> bytes:
    """A hash of what an object says (not where it came from)."""
    one = hashlib.blake2b(digest_size=16)
    one.update("\0".join((obj.api_version, *obj.key)).encode())
    one.update(obj.spec.SerializeToString(deterministic=True))
    one.update(repr(sorted(obj.labels.items())).encode())
    return one.digest()


def _shape(proxy: Proxy) -> tuple[object, ...]:
    """Everything about a proxy that translation reads: all its fields but its id (derived from
    the dataclass, so a new field cannot be forgotten here)."""
    return tuple(
        tuple(sorted(value.items())) if isinstance(value, Mapping) else value
        for f in dataclasses.fields(proxy)
        if f.name != "id"
        for value in (getattr(proxy, f.name),)
    )
