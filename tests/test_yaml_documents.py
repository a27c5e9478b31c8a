"""`yaml_documents.load_all` gives what PyYAML's safe loader gives: the same values of the same
types (1, True and 1.0 told apart), the same errors, and aliases as shared objects."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from pilotfish.sources.yaml_documents import load_all

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
FILES = sorted(
    {
        *ROOT.glob("tests/**/*.yaml"),
        *ROOT.glob("src/**/*.yaml"),
        *ROOT.glob("examples/**/*.yaml"),
        *SHARED.glob("conformance/**/*.yaml"),
    }
)


def _typed(value: Any) -> Any:
    """`value` with each scalar's type beside it, so 1 == True == 1.0 no longer hold."""
    if isinstance(value, dict):
        return ("dict", [(_typed(k), _typed(v)) for k, v in value.items()])
    if isinstance(value, list):
        return ("list", [_typed(v) for v in value])
    if isinstance(value, float) and math.isnan(value):
        return ("float", "nan")
    return (type(value).__name__, value)


def _reference(text: str) -> list[Any]:
    """What manifests were loaded with before: PyYAML's safe loader on libyaml."""
    return list(yaml.load_all(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)))


def test_every_manifest_in_the_project_loads_the_same() -> None:
    assert len(FILES) > 20
    for path in FILES:
        text = path.read_text(encoding="utf-8")
        assert _typed(load_all(text)) == _typed(_reference(text)), path


CASES = {
    "scalars": "a: 1\nb: 1.5\nc: true\nd: yes\ne: ~\nf: '1'\ng: 0o17\nh: 0x1f\ni: .inf\n"
    "j: 2024-01-02\nk: 2024-01-02T03:04:05Z\nl: !!binary aGk=\nm: 1_000\nn: -.5\no: null\n"
    "p: 'no'\nq: off\nr: .nan\n",
    "several documents": "a: 1\n---\n---\n- x\n- {y: [1, 2]}\n---\nplain\n",
    "aliases": "base: &b {x: 1, y: [a, b]}\nother: *b\nlist: &l [1, 2]\nagain: *l\n",
    "merge keys": "base: &b {x: 1, y: 2}\nderived:\n  <<: *b\n  y: 3\n",
    "merge list": "a: &a {x: 1}\nb: &b {y: 2}\nc:\n  <<: [*a, *b]\n  z: 3\n",
    "duplicate keys": "a: 1\na: 2\n",
    "non-string keys": "1: one\ntrue: yes\n~: nothing\n1.5: x\n",
    "explicit tags": "a: !!str 123\nb: !!int '7'\nc: !!float '1'\nd: !!set {x, y}\n"
    "e: !!omap [x: 1]\n",
    "empty": "",
    "comments only": "# nothing\n",
    "flow and block": "a: {b: [1, {c: d}], e: 'f'}\ng:\n- - h\n  - i\n",
}


@pytest.mark.parametrize("text", CASES.values(), ids=list(CASES))
def test_cases_load_the_same(text: str) -> None:
    assert _typed(load_all(text)) == _typed(_reference(text))


def test_aliases_are_shared_objects_as_in_pyyaml() -> None:
    (document,) = load_all("base: &b {x: [1]}\nother: *b\nlist: &l [1]\nagain: *l\n")
    assert document["other"] is document["base"]
    assert document["again"] is document["list"]


def test_a_recursive_structure_is_left_to_pyyaml() -> None:
    (document,) = load_all("a: &a\n  b: *a\n")
    assert document["a"]["b"] is document["a"]


@pytest.mark.parametrize(
    "text",
    ["a: !!python/object:os.system x\n", "? [1, 2]\n: x\n", "a: [1, 2\n", "a: *missing\n"],
    ids=["unsafe tag", "unhashable key", "unclosed flow", "unknown alias"],
)
def test_errors_are_pyyamls(text: str) -> None:
    with pytest.raises(yaml.YAMLError) as ours:
        load_all(text)
    with pytest.raises(yaml.YAMLError) as theirs:
        _reference(text)
    assert type(ours.value) is type(theirs.value)
    assert str(ours.value) == str(theirs.value)


_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text(max_size=12)
    | st.sampled_from(["yes", "no", "on", "off", "~", "null", "1e3", "0x10", "010", "1:20"])
)
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=8) | st.integers(), inner, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_VALUES, min_size=1, max_size=3), st.booleans())
def test_dumped_values_load_the_same(values: list[Any], flow: bool) -> None:
    text = yaml.safe_dump_all(values, default_flow_style=flow, allow_unicode=True)
    assert _typed(load_all(text)) == _typed(_reference(text))
