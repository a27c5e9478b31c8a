"""Keep a ConfigStore equal to what etcd holds under a prefix, and keep serving through outages.

Each etcd key is one ConfigStore "file" (`etcd:<key>`), so a bad value written around pilotfish
is refused for that key alone and its last good object stays served. The watcher loads the
whole prefix once, then follows the watch from the next revision. When etcd goes away it
retries (0.1 s doubling to 2 s) and resumes from the last revision it applied, so no change is
missed or applied twice; if etcd has compacted that history meanwhile, it re-reads the prefix
and makes the store match exactly (a resync). It never clears the store on disconnect: serving
the last known config is better than serving nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Self

from pilotfish.errors import ValidationError
from pilotfish.etcd.client import EtcdClient, Event, KeyValue
from pilotfish.etcd.errors import EtcdError, RevisionCompacted
from pilotfish.etcd.keys import file_of, parse_key, single_object
from pilotfish.etcd.url import StoreURL
from pilotfish.sources.manifests import load_documents
from pilotfish.sources.store import ConfigStore

__all__ = ["EtcdWatcher", "WatcherStatus"]

log = logging.getLogger("pilotfish.etcd")


@dataclass(frozen=True)
class WatcherStatus:
    """A consistent snapshot of the watcher's health, for /debug, metrics and readiness.

    `since` (time.time()) is when `connected` last changed; `revision` is the etcd revision
    the store reflects; `last_error` stays after recovery, for the record.
    """

    connected: bool
    synced: bool
    revision: int
    last_error: str | None
    since: float
    resyncs: int
    events: int
    endpoint: str


class EtcdWatcher:
    """Feeds `store` from etcd; `on_change()` is called after each batch of changes applied."""

    def __init__(
        self,
        url: StoreURL | str,
        store: ConfigStore,
        on_change: Callable[[], None] | None = None,
        *,
        timeout: float = 5.0,
        min_backoff: float = 0.1,
        max_backoff: float = 2.0,
    ) -> None:
        self.url = url if isinstance(url, StoreURL) else StoreURL.parse(url)
        self.store = store
        self.on_change = on_change
        self._client = EtcdClient(self.url.endpoints, timeout=timeout)
        self._range = self.url.prefix + "/"
        self._backoff = (min_backoff, max_backoff)
        self._task: asyncio.Task[None] | None = None
        self._synced = asyncio.Event()
        # file -> mod_revision of the value last offered to the store (served or refused)
        self._offered: dict[str, int] = {}
        # file -> why its value was refused before reaching the store (wrong key, not UTF-8...)
        self._refused: dict[str, list[ValidationError]] = {}
        self._connected = False
        self._revision = 0
        self._last_error: str | None = None
        self._since = time.time()
        self._resyncs = 0
        self._events = 0

    # -- control --------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start watching in a task of the running loop (see `synced` to wait for the data)."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name=f"etcd watcher {self.url}"
            )

    async def stop(self) -> None:
        """Stop watching and close the connection; the store keeps what it has. Idempotent;
        `start()` again resumes from the revision reached."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._client.close()
        if self._connected:
            self._connected, self._since = False, time.time()
            log.info("etcd %s: watcher stopped at revision %d", self.url, self._revision)

    async def synced(self, timeout: float | None = None) -> None:
        """Wait until the first full load is in the store (`TimeoutError` after `timeout`)."""
        await asyncio.wait_for(self._synced.wait(), timeout)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # -- state ----------------------------------------------------------------------------------

    @property
    def status(self) -> WatcherStatus:
        return WatcherStatus(
            connected=self._connected,
            synced=self._synced.is_set(),
            revision=self._revision,
            last_error=self._last_error,
            since=self._since,
            resyncs=self._resyncs,
            events=self._events,
            endpoint=self._client.endpoint,
        )

    def errors(self) -> dict[str, list[ValidationError]]:
        """Per key (as `etcd:<key>`), why its current value is not served."""
        prefix = file_of(self._range)
        out = {
            file: errors
            for file, errors in self.store.errors().items()
            if file.startswith(prefix) and file not in self._refused
        }
        out.update(self._refused)
        return dict(sorted(out.items()))

    # -- the loop -------------------------------------------------------------------------------

    async def _run(self) -> None:
        min_delay, max_delay = self._backoff
        delay = 0.0
        need_load = not self._synced.is_set()  # a restarted watcher resumes where it stopped
        while True:
            try:
                if need_load:
                    await self._load()
                    need_load = False
                await self._follow(self._revision + 1)
            except RevisionCompacted as error:
                log.warning("etcd %s: %s; reloading everything", self._client.endpoint, error)
                self._last_error = str(error)
                need_load = True
            except Exception as error:  # never die: keep serving the store, keep retrying
                if not isinstance(error, EtcdError):
                    log.exception("etcd watcher: unexpected error")
                fresh_outage = self._connected
                self._set_connected(False, error)
                delay = min_delay if fresh_outage else min(max(delay * 2, min_delay), max_delay)
                await asyncio.sleep(delay)
                await self._client.reset()

    async def _load(self) -> None:
        """Make the store hold exactly the keys under the prefix, at one revision."""
        resync = self._synced.is_set()
        kvs, revision = await self._client.range_prefix(self._range)
        self._set_connected(True)
        present = {file_of(kv.key): kv for kv in kvs}
        changed = False
        for file in [f for f in self._offered if f not in present]:
            changed |= self._forget(file)
        for file, kv in present.items():
            if self._offered.get(file) != kv.mod_revision:
                changed |= self._offer(kv)
        self._revision = revision
        if resync:
            self._resyncs += 1
            log.info("etcd %s: resynced at revision %d", self._client.endpoint, revision)
        self._synced.set()
        if changed or not resync:
            self._changed()

    async def _follow(self, start_revision: int) -> None:
        """Apply watch batches in order until the stream fails (which raises)."""
        batches = self._client.watch_prefix(self._range, start_revision)
        async with contextlib.aclosing(batches):
            async for batch in batches:
                self._set_connected(True)
                changed = False
                for event in batch.events:
                    changed |= self._apply(event)
                self._events += len(batch.events)
                self._revision = max(self._revision, batch.revision)
                if changed:
                    self._changed()

    def _apply(self, event: Event) -> bool:
        file = file_of(event.kv.key)
        return self._forget(file) if event.kind == "delete" else self._offer(event.kv)

    def _offer(self, kv: KeyValue) -> bool:
        """Offer a key's value to the store; False if it was refused before reaching it."""
        file = file_of(kv.key)
        self._offered[file] = kv.mod_revision
        try:
            key = parse_key(self.url.prefix, kv.key)
            text = kv.value.decode("utf-8")
        except ValueError as error:  # a foreign key, or not UTF-8
            self._refuse(file, ValidationError(str(error), file=file))
            return False
        result = load_documents(text, file=file)
        if not result.errors:
            try:
                single_object(result, file=file, key=key)
            except ValidationError as error:
                self._refuse(file, error)
                return False
        self._refused.pop(file, None)
        if errors := self.store.put(file, result):  # loaded once, above
            log.warning("etcd key %s refused: %s", kv.key, errors[0])
        return not errors

    def _refuse(self, file: str, error: ValidationError) -> None:
        log.warning("etcd key %s refused: %s", file, error)
        self._refused[file] = [error]

    def _forget(self, file: str) -> bool:
        self._offered.pop(file, None)
        self._refused.pop(file, None)
        self.store.remove(file)
        return True

    def _changed(self) -> None:
        if self.on_change is None:
            return
        try:
            self.on_change()
        except Exception:
            log.exception("etcd watcher: on_change failed")

    def _set_connected(self, connected: bool, error: BaseException | None = None) -> None:
        if error is not None:
            self._last_error = str(error) or type(error).__name__
        if connected == self._connected:
            return
        self._connected = connected
        self._since = time.time()
        if connected:
            log.info("etcd %s: connected", self._client.endpoint)
        else:
            log.warning("etcd %s: disconnected: %s", self._client.endpoint, self._last_error)
