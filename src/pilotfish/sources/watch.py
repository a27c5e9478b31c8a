"""Watch a config directory and keep a `ConfigStore` in step with it.

Uses watchfiles (inotify on Linux) rather than polling. Every event for a manifest file is
applied to the store: created or modified files are re-read, deleted ones forgotten; a rename is
a delete and a create, and an editor's atomic replace is a create of the target. Then
`on_change` is called once per batch; debouncing further is the controller's job.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path

import watchfiles

from pilotfish.sources.manifests import SUFFIXES
from pilotfish.sources.store import ConfigStore

__all__ = ["DirectoryWatcher"]

log = logging.getLogger("pilotfish.sources")


def _manifest(change: watchfiles.Change, path: str) -> bool:
    return Path(path).suffix in SUFFIXES and not Path(path).name.startswith(".")


class DirectoryWatcher:
    """A thread applying file changes under `root` to `store`, then calling `on_change`."""

    def __init__(
        self,
        root: str | Path,
        store: ConfigStore,
        on_change: Callable[[], None],
        *,
        batch_ms: int = 20,
    ) -> None:
        self.root = Path(root)
        self.store = store
        self.on_change = on_change
        self.batch_ms = batch_ms
        self.batches = 0
        self._stop = threading.Event()
        self._started = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> DirectoryWatcher:
        """Start watching (returns once the watch is in place)."""
        self._thread = threading.Thread(target=self._run, name="pilotfish-watch", daemon=True)
        self._thread.start()
        self._started.wait(5)
        return self

    def stop(self) -> None:
        """Stop watching."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        changes = watchfiles.watch(
            self.root,
            watch_filter=_manifest,
            debounce=self.batch_ms,
            step=10,
            stop_event=self._stop,
            yield_on_timeout=True,
            rust_timeout=200,
            raise_interrupt=False,
        )
        self._started.set()
        for batch in changes:
            if self._stop.is_set():
                return
            if batch:
                self.apply(batch)

    def apply(self, batch: set[tuple[watchfiles.Change, str]]) -> None:
        """Apply one batch of file events to the store and report it."""
        for change, path in sorted(batch, key=lambda item: (item[1], item[0])):
            file = Path(path)
            if change == watchfiles.Change.deleted and not file.exists():
                self.store.remove(str(file))
                log.info("%s: removed", file)
                continue
            try:
                text = file.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as error:
                log.warning("%s: cannot read (%s); its last good version stays", file, error)
                continue
            errors = self.store.update(str(file), text)
            for problem in errors:
                log.error("%s (the last good version of this file stays in force)", problem)
            if not errors:
                log.info("%s: loaded", file)
        self.batches += 1
        self.on_change()
