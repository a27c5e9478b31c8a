"""The routing steps of Istio's traffic-management tasks, run against `Bookinfo` and judged.

Each `Step` serves the gateway, the DestinationRules and its own routing manifests (package data
under `CONFIG / "routes"`), waits until every Envoy has ACKed them, sends product-page requests
through the ingress gateway as each user (anonymous, and jason via the `end-user` header) and
counts which reviews version answered. `judge` compares the counts with what Istio's rule says:
exact for a rule without weights; for a weighted split, which Envoy draws at random per request,
within `SIGMAS` standard deviations of the binomial expectation.

`run_demo` is `pilotfish demo`: start bookinfo, run the steps, print a table per step, stop
everything it started (also on Ctrl-C).
"""

from __future__ import annotations

import contextlib
import math
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TextIO

from pilotfish.demo.bookinfo import Bookinfo, Page, config_objects
from pilotfish.sources import ConfigObject

__all__ = [
    "BASE",
    "COLUMNS",
    "SIGMAS",
    "STEPS",
    "USERS",
    "Expect",
    "Progress",
    "Step",
    "Tally",
    "format_table",
    "judge",
    "measure",
    "run_demo",
    "step_named",
]

USERS = ("anonymous", "jason")
"""Who sends requests: nobody logged in, and jason (header `end-user: jason`)."""
COLUMNS = ("v1", "v2", "v3", "unavailable")
"""What a product page can show of reviews: a version, or none (reviews unavailable)."""
SIGMAS = 4.0
"""A weighted split passes within this many standard deviations (false FAIL: ~1 in 16,000)."""
BASE = ("gateway.yaml", "destination-rules.yaml")
"""Manifests served in every step: the ingress gateway and one subset per version."""
STARS = {"v1": "no stars", "v2": "black stars", "v3": "red stars"}
TASKS = "https://istio.io/latest/docs/tasks/traffic-management/"


@dataclass(frozen=True)
class Expect:
    """What Istio's rule says one user's product pages show.

    `versions`: the share of each reviews version (they add up to 1); `ratings_fail`: whether
    every page shows "ratings unavailable" (a fault injected into ratings).
    """

    versions: Mapping[str, float]
    ratings_fail: bool = False

    def describe(self) -> str:
        """E.g. `all v2 (black stars)`, `v1 50% / v3 50%`, `all v2, ratings fail`."""
        if len(self.versions) == 1:
            (version,) = self.versions
            text = f"all {version}"
            if not self.ratings_fail:
                text += f" ({STARS.get(version, version)})"
        else:
            text = " / ".join(f"{v} {share:.0%}" for v, share in sorted(self.versions.items()))
        return text + (", ratings fail" if self.ratings_fail else "")

    @property
    def split(self) -> bool:
        """Whether the rule splits by weight (so the counts are random)."""
        return any(0.0 < share < 1.0 for share in self.versions.values())


@dataclass(frozen=True)
class Step:
    """One routing step: manifests under `routes/` and what each user should see."""

    name: str
    title: str
    task: str  # the Istio task it comes from
    files: tuple[str, ...]
    expect: Mapping[str, Expect]

    def objects(self) -> list[ConfigObject]:
        """The gateway, the DestinationRules and this step's routing manifests."""
        return config_objects(*BASE, *(f"routes/{name}" for name in self.files))


_ALL_V1 = Expect({"v1": 1.0})
_HALF_V1_V3 = Expect({"v1": 0.5, "v3": 0.5})

STEPS: tuple[Step, ...] = (
    Step(
        "all-v1",
        "request routing: every request for reviews goes to v1",
        TASKS + "request-routing/",
        ("all-v1.yaml",),
        {"anonymous": _ALL_V1, "jason": _ALL_V1},
    ),
    Step(
        "jason-v2",
        "request routing by user: jason to reviews v2, everyone else to v3",
        TASKS + "request-routing/",
        ("jason-v2.yaml",),
        {"anonymous": Expect({"v3": 1.0}), "jason": Expect({"v2": 1.0})},
    ),
    Step(
        "split-50-v3",
        "traffic shifting: reviews traffic weighted 50% to v1, 50% to v3",
        TASKS + "traffic-shifting/",
        ("split-50-v3.yaml",),
        {"anonymous": _HALF_V1_V3, "jason": _HALF_V1_V3},
    ),
    Step(
        "ratings-abort-jason",
        "fault injection: ratings answers jason with HTTP 500 (jason on reviews v2)",
        TASKS + "fault-injection/",
        ("ratings-abort-jason.yaml",),
        {"anonymous": _ALL_V1, "jason": Expect({"v2": 1.0}, ratings_fail=True)},
    ),
)
"""The steps of Istio's request routing, traffic shifting and fault injection tasks, in order."""


def step_named(name: str) -> Step:
    """The step called `name`; `KeyError` (listing the names) if there is none."""
    for step in STEPS:
        if step.name == name:
            return step
    raise KeyError(f"unknown step {name!r}; the steps are: {', '.join(s.name for s in STEPS)}")


@dataclass
class Tally:
    """What one user's product pages showed during one step."""

    user: str
    requests: int = 0
    versions: Counter[str] = field(default_factory=Counter)  # COLUMNS
    ratings_fail: int = 0

    def add(self, page: Page) -> None:
        self.requests += 1
        self.versions[page.reviews_version or "unavailable"] += 1
        if page.ratings_unavailable:
            self.ratings_fail += 1


def tolerance(requests: int, share: float, sigmas: float = SIGMAS) -> float:
    """How far a count may be from `requests * share` (0 unless the share is a split)."""
    return sigmas * math.sqrt(requests * share * (1.0 - share))


def judge(tally: Tally, expect: Expect, sigmas: float = SIGMAS) -> list[str]:
    """What in `tally` contradicts `expect`; empty if it matches.

    A version with share 0 or 1 must be seen exactly never or always; a weighted share within
    `sigmas` standard deviations. Ratings must fail on every page or on none.
    """
    n = tally.requests
    problems = []
    for version in sorted(set(expect.versions) | set(tally.versions)):
        share = expect.versions.get(version, 0.0)
        seen, want = tally.versions[version], n * share
        slack = tolerance(n, share, sigmas)
        if abs(seen - want) > slack + 1e-9:
            bound = f"{want:g} ± {slack:.1f}" if slack else f"{want:g}"
            problems.append(f"{tally.user}: {version} on {seen} of {n}, expected {bound}")
    want_fail = n if expect.ratings_fail else 0
    if tally.ratings_fail != want_fail:
        problems.append(
            f"{tally.user}: ratings failed on {tally.ratings_fail} of {n}, expected {want_fail}"
        )
    return problems


class Progress:
    """Shows requests being sent on `stream`: on a terminal, one counter redrawn with `\\r`;
    otherwise plain lines (a dot per tenth of the requests, then `done`)."""

    def __init__(self, stream: TextIO, tty: bool | None = None) -> None:
        self.stream = stream
        self.tty = stream.isatty() if tty is None else tty
        self._label = ""
        self._total = 0
        self._dots = 0
        self._drawn = 0.0

    def start(self, label: str, total: int) -> None:
        self._label, self._total, self._dots, self._drawn = label, total, 0, 0.0
        if self.tty:
            self._draw(0)
        else:
            self._write(f"{label}: {total} requests ")

    def update(self, done: int) -> None:
        if self.tty:
            now = time.monotonic()
            if done >= self._total or now - self._drawn >= 0.05:
                self._draw(done)
                self._drawn = now
            return
        dots = done * 10 // max(1, self._total)
        if dots > self._dots:
            self._write("." * (dots - self._dots))
            self._dots = dots

    def finish(self, complete: bool = True) -> None:
        """Clear the counter (terminal) or end the line (`done`, or `stopped` if cut short)."""
        self._write("\r\x1b[K" if self.tty else (" done\n" if complete else " stopped\n"))

    def _draw(self, done: int) -> None:
        self._write(f"\r{self._label}: {done}/{self._total}\x1b[K")

    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()


def measure(
    bookinfo: Bookinfo, user: str, requests: int, progress: Progress | None = None
) -> Tally:
    """Send `requests` product-page requests through the gateway as `user`; count what came."""
    tally = Tally(user)
    if progress is not None:
        progress.start(f"  sending as {user}", requests)
    complete = False
    try:
        for done in range(1, requests + 1):
            tally.add(bookinfo.page(None if user == "anonymous" else user))
            if progress is not None:
                progress.update(done)
        complete = True
    finally:
        if progress is not None:
            progress.finish(complete)
    return tally


def format_table(step: Step, tallies: Sequence[Tally]) -> list[str]:
    """The lines of a step's table: a row per user, counts per reviews version, the expected
    outcome and whether the row matches it."""
    lines = [
        f"  {'user':<10} {'requests':>8} {'v1':>5} {'v2':>5} {'v3':>5} {'unavailable':>11}"
        f" {'ratings fail':>12}  {'expected (Istio rule)':<28} match"
    ]
    for tally in tallies:
        expect = step.expect[tally.user]
        counts = " ".join(f"{tally.versions[c]:>5}" for c in COLUMNS[:3])
        ok = "ok" if not judge(tally, expect) else "NO"
        lines.append(
            f"  {tally.user:<10} {tally.requests:>8} {counts}"
            f" {tally.versions['unavailable']:>11} {tally.ratings_fail:>12}"
            f"  {expect.describe():<28} {ok}"
        )
    return lines


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """Ignore Ctrl-C and SIGTERM while cleaning up, so a second one cannot cut it short."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run_demo(
    steps: Sequence[Step] = STEPS,
    *,
    requests: int = 30,
    out: TextIO | None = None,
    progress: Progress | None = None,
    verbose: bool = False,
) -> bool:
    """Start bookinfo, run `steps` with `requests` per user each, print a table per step on
    `out` (default stdout) and stop everything. True if every step matched its rule."""
    stream = out if out is not None else sys.stdout

    def say(text: str = "") -> None:
        stream.write(text + "\n")
        stream.flush()

    say(
        f"pilotfish demo: Istio's bookinfo, {_plural(len(steps), 'routing step')}, "
        f"{requests} requests per user and step"
    )
    began = time.monotonic()
    bookinfo = Bookinfo()
    passed: list[str] = []
    failed: list[str] = []
    try:
        bookinfo.start()
        envoys = bookinfo.envoys
        host, port = bookinfo.gateway_address
        xds_host, xds_port = bookinfo.mesh.server.address
        say(
            f"bookinfo up in {time.monotonic() - began:.1f} s: pilotfish xDS on "
            f"{xds_host}:{xds_port}, {len(bookinfo.apps)} apps each behind an Envoy sidecar"
        )
        say(f"  ingress gateway (Envoy): http://{host}:{port}/productpage")
        if verbose:
            for name, member in envoys.items():
                say(f"  envoy {name:<22} pid {member.envoy.pid:<8} admin {member.envoy.admin_url}")
        for number, step in enumerate(steps, 1):
            say()
            say(f"step {number}/{len(steps)}  {step.name}: {step.title}")
            say(f"  {step.task}  (routes/{', routes/'.join(step.files)})")
            applied = time.monotonic()
            bookinfo.apply(step.objects())
            say(f"  served; all {len(envoys)} Envoys ACKed in {time.monotonic() - applied:.2f} s")
            tallies = [measure(bookinfo, user, requests, progress) for user in USERS]
            for line in format_table(step, tallies):
                say(line)
            problems = [p for t in tallies for p in judge(t, step.expect[t.user])]
            if any(step.expect[t.user].split for t in tallies):
                slack = tolerance(requests, 0.5)
                say(
                    f"  (weights are drawn per request: a 50% share passes within "
                    f"{SIGMAS:g} standard deviations, {requests * 0.5:g} ± {slack:.1f})"
                )
            if problems:
                failed.append(step.name)
                say("  FAIL: " + "; ".join(problems))
            else:
                passed.append(step.name)
                say("  PASS")
    finally:
        stopping = time.monotonic()
        with _signals_held():
            bookinfo.stop()
        say(
            f"\nstopped pilotfish, {len(bookinfo.envoys)} Envoys and {len(bookinfo.apps)} apps"
            f" in {time.monotonic() - stopping:.1f} s"
        )
    verdict = "PASS" if not failed else "FAIL"
    detail = f" (failed: {', '.join(failed)})" if failed else ""
    say(
        f"result: {verdict}, {len(passed)} of {_plural(len(steps), 'step')} matched Istio's rules"
        f"{detail}"
        f"; {time.monotonic() - began:.1f} s in all"
    )
    return not failed
