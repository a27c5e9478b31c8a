"""ConfigStore: a file with any invalid object never replaces its last good version."""

from __future__ import annotations

from pathlib import Path

from pilotfish.sources import ConfigStore

GOOD = """apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http: [{route: [{destination: {host: reviews, subset: v1}}]}]
"""
# Valid first document, invalid second: the whole file is refused, not half-applied.
HALF_BAD = """apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http: [{route: [{destination: {host: reviews, subset: v3}}]}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: ratings}
spec:
  hosts: [ratings]
  http:
  - route:
    - {destination: {host: ratings, subset: v1}, weight: 60}
    - {destination: {host: ratings, subset: v2}, weight: 60}
"""


def _subset(store: ConfigStore) -> str:
    (obj,) = store.objects()
    return str(obj.spec.http[0].route[0].destination.subset)  # type: ignore[attr-defined]


def test_a_bad_file_keeps_its_last_good_objects(tmp_path: Path) -> None:
    file = tmp_path / "reviews.yaml"
    file.write_text(GOOD)
    store = ConfigStore()
    assert store.sync(tmp_path) == {}
    assert _subset(store) == "v1"
    file.write_text(HALF_BAD)
    refused = store.sync(tmp_path)
    (error,) = refused[str(file)]
    assert (error.file, error.index, error.kind, error.name) == (
        str(file), 1, "VirtualService", "ratings"
    )  # fmt: skip
    assert error.field == "spec.http[0].route"
    assert _subset(store) == "v1"  # still the last good text, and nothing of the new one
    assert list(store.errors()) == [str(file)]
    file.write_text(GOOD.replace("subset: v1", "subset: v2"))
    assert store.sync(tmp_path) == {}
    assert _subset(store) == "v2" and store.errors() == {}


def test_removed_files_and_duplicates(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(GOOD)
    (tmp_path / "b.yaml").write_text(GOOD.replace("subset: v1", "subset: v9"))
    store = ConfigStore()
    store.sync(tmp_path)
    assert _subset(store) == "v1"  # a.yaml sorts first
    (duplicate,) = store.duplicates()
    assert duplicate.startswith(f"{tmp_path / 'b.yaml'}[0] VirtualService default/reviews")
    (tmp_path / "a.yaml").unlink()
    store.sync(tmp_path)
    assert _subset(store) == "v9" and store.duplicates() == []
    (tmp_path / "b.yaml").write_text("kind: [")
    refused = store.sync(tmp_path)
    assert "not valid YAML" in refused[str(tmp_path / "b.yaml")][0].reason
    assert _subset(store) == "v9"


def test_the_journal_says_what_changed_since_a_revision(tmp_path: Path) -> None:
    store = ConfigStore()
    assert store.revision == 0
    store.update("b.yaml", GOOD)
    (first,) = store.objects()
    start = store.revision
    assert start == 1
    # A file sorted earlier defining the same key shadows b.yaml's object.
    store.update("a.yaml", GOOD.replace("subset: v1", "subset: v2"))
    (shadow,) = store.objects()
    change = store.changes_since(start)
    assert change is not None
    assert (change.revision, change.removed, change.added) == (2, [first], [shadow])
    store.update("a.yaml", HALF_BAD)  # refused: nothing served changed
    assert store.revision == 2
    store.remove("a.yaml")  # b.yaml's object is served again: no change since `start`
    change = store.changes_since(start)
    assert change is not None
    assert (change.removed, change.added) == ([], [])
    assert store.objects() == [first]
    assert store.changes_since(store.revision + 1) is None  # from the future: start over


def test_a_reader_behind_the_journal_starts_over() -> None:
    store = ConfigStore()
    for n in range(ConfigStore.JOURNAL + 1):
        store.update("a.yaml", GOOD.replace("reviews}", f"reviews-{n}}}"))
    assert store.changes_since(0) is None
    change = store.changes_since(1)
    assert change is not None
    assert [o.name for o in change.added] == [f"reviews-{ConfigStore.JOURNAL}"]
    assert [o.name for o in change.removed] == ["reviews-0"]


def test_kind_counts_follow_what_is_served() -> None:
    store = ConfigStore()
    store.update("b.yaml", GOOD)
    store.update("a.yaml", GOOD)  # the same key: shadows b.yaml's, still one VirtualService
    assert store.kind_counts() == {"VirtualService": 1}
    store.update("c.yaml", HALF_BAD.split("---", maxsplit=1)[0].replace("reviews}", "other}"))
    assert store.kind_counts() == {"VirtualService": 2}
    store.update("c.yaml", HALF_BAD)  # refused: nothing served changes
    assert store.kind_counts() == {"VirtualService": 2}
    for file in ("a.yaml", "b.yaml", "c.yaml"):
        store.remove(file)
    assert store.kind_counts() == {}
