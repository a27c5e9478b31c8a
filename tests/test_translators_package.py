"""`pilotfish.translators` loads its parts when first used: a control plane that builds its own
resources with `pilotfish.translators.build` does not pay for the Istio translators."""

from __future__ import annotations

import subprocess
import sys

import pytest

from pilotfish import translators

BUILD_ONLY = """
import sys
from pilotfish.translators import build
loaded = sorted(m for m in sys.modules if m.startswith("pilotfish"))
print(" ".join(loaded))
from pilotfish.translators import Proxy, translate
print(callable(translate), translate.__name__, Proxy.__name__)
print("pilotfish.translators.translation" in sys.modules)
"""


def test_the_builders_load_without_the_istio_translators() -> None:
    done = subprocess.run(
        [sys.executable, "-c", BUILD_ONLY], capture_output=True, text=True, timeout=60, check=True
    )
    first, second, third = done.stdout.splitlines()
    assert first.split() == ["pilotfish", "pilotfish.translators", "pilotfish.translators.build"]
    assert second == "True translate Proxy"  # the function, not a module of that name
    assert third == "True"


def test_every_public_name_is_there_and_nothing_else() -> None:
    assert set(translators.__all__) <= set(dir(translators))
    for name in translators.__all__:
        assert getattr(translators, name) is not None
    assert translators.translate.__module__ == "pilotfish.translators.translation"
    with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
        _ = translators.nothing_here
