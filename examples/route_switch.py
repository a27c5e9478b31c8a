"""Blue/green route switching: a custom control plane of a few dozen lines, driving real Envoy.

Part 1 is the control plane a user would write: build a snapshot (listener, route, two clusters
and their endpoints) for a colour, hand it to the cache, and let the xDS server push it to Envoy.

Part 2 is a demo driver around it: two local upstreams that answer with their colour, one real
Envoy pointed at the control plane, steady traffic through Envoy's listener, a route switch every
`--interval` seconds and a report of how long each switch took to show up in traffic.

    .venv/bin/python examples/route_switch.py [--duration 12] [--interval 4] [--rate 10]

Exit status: 0 if every switch was seen in traffic and no request failed, 1 otherwise,
130 on Ctrl-C. Everything started here is stopped in every case.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import threading
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from pilotfish.bootstrap import Address, envoy_bootstrap
from pilotfish.cache import Snapshot, SnapshotCache
from pilotfish.testing import EnvoyError, EnvoyProcess, HttpUpstream, free_port
from pilotfish.translators import build
from pilotfish.xds.server import XdsServer

# ===============================================================================================
# Part 1: the control plane
# ===============================================================================================

NODE_ID = "route-switch"  # Envoy's node.id: the SnapshotCache serves snapshots by node id
LISTENER, ROUTE = "listener_0", "local_route"


def snapshot_for(colour: str, upstreams: Mapping[str, Address], listener_port: int) -> Snapshot:
    """Envoy's whole config, with the one route sending all traffic to the `colour` cluster.

    Both clusters are in every snapshot, so a switch changes only the route: versions are
    content hashes, so Envoy is sent just the new RouteConfiguration and keeps its clusters.
    """
    return Snapshot(
        {
            "cds": [build.eds_cluster(name) for name in upstreams],
            "eds": [build.load_assignment(name, [address]) for name, address in upstreams.items()],
            "lds": [build.http_listener(LISTENER, listener_port, ROUTE)],
            "rds": [build.route_config(ROUTE, colour)],
        }
    )


class RouteSwitcher:
    """An xDS server whose one job is to point Envoy's route at one upstream or another."""

    def __init__(self, upstreams: Mapping[str, Address], listener_port: int) -> None:
        self.upstreams = dict(upstreams)
        self.listener_port = listener_port
        self.cache = SnapshotCache()
        self.server = XdsServer(self.cache)

    async def start(self, colour: str, address: str = "127.0.0.1:0") -> int:
        """Serve with the route on `colour`; returns the port Envoy should connect to."""
        self.route_to(colour)  # before Envoy connects, so its first fetch gets everything
        return await self.server.start(address)

    def route_to(self, colour: str) -> None:
        """Switch: Envoy's open watches are answered with whatever changed (the route)."""
        snapshot = snapshot_for(colour, self.upstreams, self.listener_port)
        if not (check := snapshot.consistent()).ok:  # dangling names would stall Envoy
            raise ValueError(f"refusing an inconsistent snapshot: {check}")
        self.cache.set_snapshot(NODE_ID, snapshot)

    async def stop(self) -> None:
        await self.server.stop()


# ===============================================================================================
# Part 2: the demo driver (test harness helpers; not needed by a real control plane)
# ===============================================================================================

COLOURS = ("blue", "green")
PROBE_EVERY = 0.002  # seconds between requests while a switch is not yet seen
PROBE_FOR = 1.0  # seconds of fast probing after a switch before falling back to the steady rate


def say(text: str) -> None:
    """Print at once, so the demo can be watched through a pipe (`| tee`)."""
    print(text, flush=True)


@dataclass
class Switch:
    """One route change: when the driver made it and when traffic first showed it."""

    number: int
    old: str
    new: str
    at_second: int
    made_at: float  # time.monotonic() just before the new snapshot was set
    seen_after: float | None = None  # seconds until the first answer from `new`


class Traffic:
    """Requests through Envoy's listener, sent from a thread of their own.

    HTTP calls block, and the event loop they would block also runs the xDS server: Envoy could
    not get its update while the loop waits for Envoy. Right after a switch the thread probes
    every few milliseconds, so the time until traffic shows it is measured to the millisecond
    rather than to the request interval.
    """

    def __init__(self, envoy: EnvoyProcess, port: int, rate: float) -> None:
        self._envoy, self._port, self._period = envoy, port, 1.0 / rate
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="traffic", daemon=True)
        self._answers: Counter[str] = Counter()  # since the last `take_answers`
        self._pending: Switch | None = None
        self.requests = 0
        self.failures: list[str] = []

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join()

    def expect(self, switch: Switch) -> None:
        """Watch for the first answer from `switch.new`, probing fast until it comes."""
        with self._lock:
            self._pending = switch
        self._wake.set()

    def take_answers(self) -> Counter[str]:
        """Answers (upstream name, or "error") since the previous call."""
        with self._lock:
            answers, self._answers = self._answers, Counter()
        return answers

    def _run(self) -> None:
        due = time.monotonic()  # when this request was meant to go: keeps the rate steady
        while not self._stopping.is_set():
            answer, failure = self._send()
            now = time.monotonic()
            with self._lock:
                self.requests += 1
                self._answers[answer] += 1
                if failure is not None:
                    self.failures.append(failure)
                pending = self._pending
                if pending is not None and answer == pending.new:
                    pending.seen_after = now - pending.made_at
                    self._pending = pending = None
            probing = pending is not None and now - pending.made_at < PROBE_FOR
            due = now + PROBE_EVERY if probing else max(due + self._period, now)
            self._wake.wait(due - now)
            self._wake.clear()

    def _send(self) -> tuple[str, str | None]:
        """One request: (upstream name, None), or ("error", what went wrong)."""
        try:
            reply = self._envoy.request(self._port, "/", timeout=1.0)
        except OSError as error:
            return "error", f"{type(error).__name__}: {error}"
        if reply.status != 200:
            return "error", f"HTTP {reply.status}: {reply.body[:80]!r}"
        return reply.body, None


async def demo(duration: int, interval: int, rate: float) -> bool:
    """Run the demo; True if every switch was seen in traffic and no request failed."""
    switches: list[Switch] = []
    async with contextlib.AsyncExitStack() as stack:
        # Callbacks run in reverse: traffic, Envoy, the xDS server, then the upstreams.
        upstreams = {c: stack.enter_context(HttpUpstream(c)).address for c in COLOURS}
        listener_port = free_port()
        switcher = RouteSwitcher(upstreams, listener_port)
        stack.push_async_callback(switcher.stop)
        xds_port = await switcher.start(COLOURS[0])
        where = " ".join(f"{c}=127.0.0.1:{port}" for c, (_, port) in upstreams.items())
        say(f"xDS server on 127.0.0.1:{xds_port}; upstreams {where}")

        bootstrap = envoy_bootstrap(
            node_id=NODE_ID, cluster="demo", xds_address=("127.0.0.1", xds_port)
        )
        envoy = EnvoyProcess(bootstrap, name="route-switch-envoy")
        stack.push_async_callback(asyncio.to_thread, envoy.stop)
        # Start-up and readiness polling block; off the loop, so the server can answer Envoy.
        await asyncio.to_thread(envoy.start)
        await asyncio.to_thread(envoy.wait_ready)
        say(
            f"envoy pid {envoy.pid} ready: listener http://127.0.0.1:{listener_port}/ "
            f"admin {envoy.admin_url}"
        )

        traffic = Traffic(envoy, listener_port, rate)
        traffic.start()
        stack.push_async_callback(asyncio.to_thread, traffic.stop)
        await drive(switcher, traffic, switches, duration, interval)
    return report(switches, traffic)


async def drive(
    switcher: RouteSwitcher, traffic: Traffic, switches: list[Switch], duration: int, interval: int
) -> None:
    """Print a line per second and switch the route every `interval` seconds."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    colour, width = COLOURS[0], len(str(duration))
    noted: set[int] = set()  # switches whose time-to-seen was already printed
    for second in range(1, duration + 1):
        await asyncio.sleep(started + second - loop.time())
        answers = " ".join(f"{name}={n}" for name, n in sorted(traffic.take_answers().items()))
        seen = [s for s in switches if s.seen_after is not None and s.number not in noted]
        noted.update(s.number for s in seen)
        note = "".join(f"  switch {s.number} seen after {_ms(s.seen_after)}" for s in seen)
        say(f"t={second:>{width}}s  route={colour:<5}  answers: {answers or '-'}{note}")
        if second % interval == 0 and second < duration:
            old, colour = colour, COLOURS[1 - COLOURS.index(colour)]
            switch = Switch(len(switches) + 1, old, colour, second, time.monotonic())
            switches.append(switch)
            switcher.route_to(colour)
            traffic.expect(switch)
            say(f"{'':{width + 5}}switch {switch.number}: route {old} -> {colour}")


def report(switches: Sequence[Switch], traffic: Traffic) -> bool:
    """Print the summary; True if the run is a success."""
    seen = [s for s in switches if s.seen_after is not None]
    say(
        f"summary: {len(switches)} switches made, {len(seen)} seen in traffic; "
        f"{traffic.requests} requests, {len(traffic.failures)} failed"
    )
    for s in switches:
        when = f"seen after {_ms(s.seen_after)}" if s.seen_after is not None else "NOT SEEN"
        say(f"  switch {s.number} at t={s.at_second}s ({s.old} -> {s.new}): {when}")
    for failure in traffic.failures[:5]:
        say(f"  failed request: {failure}")
    ok = len(seen) == len(switches) and not traffic.failures
    say("result: OK" if ok else "result: FAILED")
    return ok


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f} ms"


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Switch a real Envoy's route between two upstreams with a pilotfish "
        "control plane, and show which upstream answers.",
    )
    parser.add_argument(
        "--duration", type=_positive_int, default=12, help="seconds of traffic (default 12)"
    )
    parser.add_argument(
        "--interval", type=_positive_int, default=4, help="seconds between switches (default 4)"
    )
    parser.add_argument(
        "--rate", type=_positive_float, default=10.0, help="requests per second (default 10)"
    )
    args = parser.parse_args(argv)
    if args.interval >= args.duration:
        parser.error("--interval must be shorter than --duration, or nothing is switched")
    try:
        ok = asyncio.run(demo(args.duration, args.interval, args.rate))
    except KeyboardInterrupt:
        say("interrupted; Envoy, the xDS server and the upstreams are stopped")
        return 130
    except (EnvoyError, TimeoutError) as error:  # Envoy did not start or never got ready
        say(f"Envoy failed: {error}")
        return 1
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
