"""Config by file, where a file with any invalid object never replaces its last good version.

Operators edit one file at a time; a typo in it must not withdraw the routes it held, nor
half-apply it. So a file's objects change only when the whole file loads cleanly; otherwise the
errors are kept for the operator (with file, object and field path) and the previous objects
keep being served. A kind/namespace/name defined in two files is served from the first file
(sorted by path) and reported.
"""

from __future__ import annotations

import threading
from pathlib import Path

from pilotfish.errors import ValidationError
from pilotfish.sources.manifests import SUFFIXES, ConfigObject, LoadResult, load_documents

__all__ = ["ConfigStore"]


class ConfigStore:
    """The last good objects of each file, and the errors of each file's last attempt."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._objects: dict[str, list[ConfigObject]] = {}
        self._errors: dict[str, list[ValidationError]] = {}
        self._skipped: dict[str, list[str]] = {}

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
            return []

    def remove(self, file: str) -> None:
        """A file is gone: its objects are no longer served."""
        with self._lock:
            self._objects.pop(file, None)
            self._errors.pop(file, None)
            self._skipped.pop(file, None)

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
        with self._lock:
            seen: set[tuple[str, str, str]] = set()
            out = []
            for file in sorted(self._objects):
                for obj in self._objects[file]:
                    if obj.key not in seen:
                        seen.add(obj.key)
                        out.append(obj)
            return out

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
