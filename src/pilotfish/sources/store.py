"""Config by file, where a file with any invalid object never replaces its last good version.

Operators edit one file at a time; a typo in it must not withdraw the routes it held, nor
half-apply it. So a file's objects change only when the whole file loads cleanly; otherwise the
errors are kept for the operator (with file, object and field path) and the previous objects
keep being served. A kind/namespace/name defined in two files is served from the first file
(sorted by path) and reported.
"""

from __future__ import annotations

import bisect
import threading
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from pilotfish.errors import ValidationError
from pilotfish.gcpause import gc_paused
from pilotfish.sources.manifests import SUFFIXES, ConfigObject, LoadResult, load_documents

__all__ = ["ConfigStore", "StoreChange"]

_Key = tuple[str, str, str]


@dataclass(frozen=True)
class StoreChange:
    """What changed in the served objects up to `revision`: objects no longer served and
    objects newly served (a replaced object's old version is in `removed`, its new in `added`)."""

    revision: int
    removed: list[ConfigObject]
    added: list[ConfigObject]


class ConfigStore:
    """The last good objects of each file, and the errors of each file's last attempt."""

    JOURNAL = 1024
    """How many changes `changes_since` can replay; a reader further behind starts over."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._objects: dict[str, list[ConfigObject]] = {}
        self._errors: dict[str, list[ValidationError]] = {}
        self._skipped: dict[str, list[str]] = {}
        # What is served, kept current change by change so a reader can ask what changed
        # without comparing every object (a mesh has tens of thousands of them).
        self._first: dict[str, dict[_Key, ConfigObject]] = {}  # per file, first of each key
        self._owners: dict[_Key, list[str]] = {}  # files defining a key, sorted
        self._served: dict[_Key, ConfigObject] = {}
        self._kinds: dict[str, int] = {}  # served objects per kind
        self._revision = 0
        self._journal: deque[tuple[int, list[ConfigObject], list[ConfigObject]]] = deque(
            maxlen=self.JOURNAL
        )
        self._listed: list[ConfigObject] | None = None

    def update(self, file: str, text: str) -> list[ValidationError]:
        """Offer a file's new text; returns its errors (empty: the text is now served)."""
        return self.put(file, load_documents(text, file=file))

    def put(self, file: str, result: LoadResult) -> list[ValidationError]:
        """Offer a file's text already loaded (`load_documents`), for a source that had to
        look at the objects first; returns its errors (empty: the objects are now served)."""
        with self._lock:
            self._skipped[file] = result.skipped
            if result.errors:
                self._errors[file] = list(result.errors)
                return list(result.errors)
            self._errors.pop(file, None)
            self._objects[file] = list(result.objects)
            self._replace(file, result.objects)
            return []

    def remove(self, file: str) -> None:
        """A file is gone: its objects are no longer served."""
        with self._lock:
            self._objects.pop(file, None)
            self._errors.pop(file, None)
            self._skipped.pop(file, None)
            self._replace(file, [])

    def _replace(self, file: str, objects: list[ConfigObject]) -> None:
        """Serve `objects` for `file`; note in the journal what that changed (lock held)."""
        old = self._first.pop(file, {})
        new: dict[_Key, ConfigObject] = {}
        for obj in objects:
            new.setdefault(obj.key, obj)
        if new:
            self._first[file] = new
        removed: list[ConfigObject] = []
        added: list[ConfigObject] = []
        for key in old.keys() | new.keys():
            owners = self._owners.setdefault(key, [])
            if key not in new:
                owners.remove(file)
            elif key not in old:
                bisect.insort(owners, file)
            before = self._served.get(key)
            after = self._first[owners[0]][key] if owners else None
            if not owners:
                del self._owners[key]
            if before is after:
                continue
            if before is not None:
                removed.append(before)
                self._kinds[before.kind] -= 1
                if not self._kinds[before.kind]:
                    del self._kinds[before.kind]
            if after is None:
                del self._served[key]
            else:
                self._served[key] = after
                added.append(after)
                self._kinds[after.kind] = self._kinds.get(after.kind, 0) + 1
        if removed or added:
            self._revision += 1
            self._journal.append((self._revision, removed, added))
            self._listed = None

    @property
    def revision(self) -> int:
        """Counts changes to the served objects (not refused texts, not identical ones)."""
        with self._lock:
            return self._revision

    def changes_since(self, revision: int) -> StoreChange | None:
        """What changed in the served objects after `revision`, or None when the journal no
        longer reaches back that far (read `snapshot()` instead)."""
        with self._lock:
            if revision == self._revision:
                return StoreChange(revision, [], [])
            if revision > self._revision or not self._journal:
                return None
            if self._journal[0][0] > revision + 1:
                return None
            removed: dict[int, ConfigObject] = {}
            added: dict[int, ConfigObject] = {}
            for number, gone, came in self._journal:
                if number <= revision:
                    continue
                for obj in gone:
                    # An object added and removed within the window was never seen.
                    if added.pop(id(obj), None) is None:
                        removed[id(obj)] = obj
                for obj in came:
                    if removed.pop(id(obj), None) is None:  # back as it was: no change
                        added[id(obj)] = obj
            return StoreChange(self._revision, list(removed.values()), list(added.values()))

    def kind_counts(self) -> dict[str, int]:
        """How many objects of each kind are served (kept as they change: no object is read)."""
        with self._lock:
            return dict(self._kinds)

    def __len__(self) -> int:
        """How many objects are served."""
        with self._lock:
            return len(self._served)

    def sync(self, root: str | Path) -> dict[str, list[ValidationError]]:
        """Make the store match a directory (or one file): read every manifest file, forget
        files that are gone. Returns the errors of files whose new text was refused."""
        base = Path(root)
        files = (
            sorted(p for p in base.rglob("*") if p.suffix in SUFFIXES) if base.is_dir() else [base]
        )
        present = {str(p) for p in files}
        for gone in set(self._objects) | set(self._errors):
            if gone not in present and Path(gone).is_relative_to(base):
                self.remove(gone)
        refused: dict[str, list[ValidationError]] = {}
        with gc_paused():  # thousands of files' objects, all kept: nothing for gc to find
            for path in files:
                try:
                    text = path.read_text(encoding="utf-8")
                except (OSError, UnicodeDecodeError) as error:
                    problem = ValidationError(f"cannot read: {error}", file=str(path))
                    with self._lock:
                        self._errors[str(path)] = [problem]
                    refused[str(path)] = [problem]
                    continue
                if errors := self.update(str(path), text):
                    refused[str(path)] = errors
        return refused

    def objects(self) -> list[ConfigObject]:
        """Every served object, by file path then position; the first definition of a key wins."""
        return self.snapshot()[1]

    def snapshot(self) -> tuple[int, list[ConfigObject]]:
        """`revision` and `objects()` read together."""
        with self._lock:
            if self._listed is None:
                served = self._served
                self._listed = [
                    obj
                    for file in sorted(self._first)
                    for key, obj in self._first[file].items()
                    if served[key] is obj
                ]
            return self._revision, list(self._listed)

    def errors(self) -> dict[str, list[ValidationError]]:
        """Per file, why its latest text was refused (files being served from older text)."""
        with self._lock:
            return {f: list(e) for f, e in sorted(self._errors.items())}

    def duplicates(self) -> list[str]:
        """Objects defined in more than one file, and which definition is ignored."""
        with self._lock:
            first: dict[tuple[str, str, str], str] = {}
            out = []
            for file in sorted(self._objects):
                for obj in self._objects[file]:
                    if obj.key in first:
                        out.append(
                            f"{file}[{obj.index}] {obj.kind} {obj.namespace}/{obj.name}: "
                            f"already defined in {first[obj.key]}; ignored"
                        )
                    else:
                        first[obj.key] = file
            return out
