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
