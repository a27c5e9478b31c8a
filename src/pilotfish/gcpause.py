"""Pause Python's cycle collector while a large translation or load allocates.

Why: translating 10,000 services allocates hundreds of thousands of long-lived objects (messages,
bytes, memo entries). Each allocation burst triggers the cyclic collector, and its older
generations scan everything alive, so a full translation spent about a third of its time in
`gc` (17.0 s with it, 10.9 s without, at 10,000 services). Reference counting still frees all
acyclic garbage at once; only cycles wait until the pause ends. Pauses nest and may overlap
across threads: the collector comes back when the last one ends, and only if it was on before.

What the block made and kept then sits in the youngest generation, and the first collection
after it would walk it all (0.5 s for the 1.7 million objects of 10,000 services), then again
when they move to the middle generation. They are long-lived, so they are moved straight to the
oldest generation instead (`gc.freeze()` then `gc.unfreeze()`: two list splices), where only
full collections look, which is also where any cycle among them is found. This is skipped when
something else has frozen objects, which the unfreeze would thaw.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["SERVING_THRESHOLD", "gc_paused", "tune_for_serving"]

SERVING_THRESHOLD = 10_000
"""Allocations between two collections of the youngest generation in a server (Python: 700)."""


class _Pauses:
    """How many pauses are open, and whether the collector was on before the first."""

    lock = threading.Lock()
    depth = 0
    was_enabled = False


@contextmanager
def gc_paused() -> Iterator[None]:
    """Disable the cycle collector for the block (re-enabled when the outermost pause ends)."""
    with _Pauses.lock:
        if _Pauses.depth == 0:
            _Pauses.was_enabled = gc.isenabled()
            gc.disable()
        _Pauses.depth += 1
    try:
        yield
    finally:
        with _Pauses.lock:
            _Pauses.depth -= 1
            if _Pauses.depth == 0 and _Pauses.was_enabled:
                _to_oldest()
                gc.enable()


def _to_oldest() -> None:
    # Lock held. Every tracked object to the permanent generation, and from there to the
    # oldest; skipped when something else froze objects, which the unfreeze would thaw.
    if gc.get_freeze_count() == 0:
        gc.freeze()
        gc.unfreeze()


def tune_for_serving(threshold: int = SERVING_THRESHOLD) -> None:
    """Set the cycle collector up for a long-running server process (`pilotfish serve` calls
    it at start; a program embedding the xDS server may too).

    Why: each proxy that connects leaves a few dozen long-lived objects (its connection,
    stream, session, watches), so a fleet connecting drives the youngest generation's
    collection every 700 allocations, and the older ones' after it, each walking objects that
    live as long as their proxy: about a tenth of the server's time while 1,000 proxies
    connected at once. Collected every `threshold` allocations instead, that is about gone,
    and garbage cycles (rare here: reference counting frees the rest) wait a little longer.
    What exists already (modules, loaded config) goes to the oldest generation, as after a
    `gc_paused` block."""
    _young, middle, old = gc.get_threshold()
    gc.set_threshold(threshold, middle, old)
    with _Pauses.lock:
        _to_oldest()
