"""Real Envoys following a config edit: from a file write to traffic moved, per Envoy.

One `pilotfish serve` process (as a user runs it) watches a config directory: a ServiceEntry
`web.example` with two upstreams, blue and green, a DestinationRule with a subset each, and a
VirtualService routing to one subset. N real Envoys connect to it over ADS (one listener each,
on ports of their own through `PORT_MAP`). Then `--repeat` times the VirtualService file is
replaced atomically to flip blue <-> green, and every Envoy's listener is polled until a request
through it answers with the new colour. Prints a table and writes JSON.

    .venv/bin/python bench/envoys.py [--envoys 20] [--repeat 10]

Each Envoy takes ~66 MB (`--concurrency 1`); 50 Envoys need ~3.3 GB. Every process started here
is stopped by PID, also on Ctrl-C, SIGTERM or an error.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import math
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import Any

from pilotfish.bootstrap import envoy_bootstrap
from pilotfish.testing.bluegreen import COLOURS, HOST, blue_green_service, route_to
from pilotfish.testing.envoy import EnvoyProcess, find_envoy, free_port

if not __package__:  # run as a script (bench/ is sys.path[0]): make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench import machine

__all__ = ["main", "run"]

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "envoys.json"
_READY = re.compile(r"serving xDS on [\d.]+:(\d+), admin on http://[\d.]+:(\d+)")
_REQUEST = f"GET / HTTP/1.1\r\nhost: {HOST}\r\n\r\n".encode()
_TICK = os.sysconf("SC_CLK_TCK")


class BenchError(RuntimeError):
    """A process failed, or something did not happen in time."""


# -- processes ----------------------------------------------------------------------------------


def _proc_cpu_s(pid: int) -> float:
    """User + system CPU of a process (every thread), from /proc (10 ms resolution)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text(encoding="ascii")
    except OSError:
        return 0.0
    fields = text.rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
    return (int(fields[11]) + int(fields[12])) / _TICK


def _proc_rss_mb(pid: int) -> float:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text(encoding="ascii").splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


class _Serve:
    """`python -m pilotfish serve` on the config directory, its log in a file (a pipe nobody
    reads would fill up and stall the server)."""

    def __init__(self, config: Path, debounce: float) -> None:
        self.log_path = config.parent / "serve.log"
        self.xds_port = self.admin_port = 0
        argv = [sys.executable, "-m", "pilotfish", "serve", "--config", str(config),
                "--xds-address", "127.0.0.1:0", "--admin-address", "127.0.0.1:0",
                "--debounce", str(debounce)]  # fmt: skip
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                argv,
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,  # Ctrl-C reaches us, and we stop it
            )

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")[-3000:]
        return ""

    def wait_ready(self, timeout: float) -> None:
        """Until the log says where it serves; raises if it exits or takes too long."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = _READY.search(self.log_tail())
            if found:
                self.xds_port, self.admin_port = int(found.group(1)), int(found.group(2))
                return
            if self.process.poll() is not None:
                raise BenchError(f"pilotfish serve exited:\n{self.log_tail()}")
            time.sleep(0.02)
        raise BenchError(f"pilotfish serve not ready in {timeout:g}s:\n{self.log_tail()}")

    def stop(self) -> None:
        """SIGTERM (it drains its streams), then SIGKILL, by PID."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class _Fleet:
    """Every process this benchmark starts, so one `stop` ends them all, whatever happened."""

    def __init__(self) -> None:
        self.serve: _Serve | None = None
        self.envoys: list[EnvoyProcess] = []
        self.listener_ports: list[int] = []
        self._lock = threading.Lock()

    def add(self, envoy: EnvoyProcess) -> None:
        with self._lock:
            self.envoys.append(envoy)

    def stop(self) -> None:
        with self._lock:
            envoys = list(self.envoys)
        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(lambda e: e.stop(), envoys))
        if self.serve is not None:
            self.serve.stop()


def _start_envoys(fleet: _Fleet, count: int, timeout: float) -> None:
    """N Envoys, started a few at a time; each one's port 80 is a listener port of its own."""
    assert fleet.serve is not None
    xds = ("127.0.0.1", fleet.serve.xds_port)
    ports = fleet.listener_ports = [free_port() for _ in range(count)]

    def start(index: int) -> None:
        bootstrap = envoy_bootstrap(
            node_id=f"bench-envoy-{index}",
            cluster="bench",
            xds_address=xds,
            node_metadata={"NAMESPACE": "default", "PORT_MAP": {"80": ports[index]}},
        )
        envoy = EnvoyProcess(bootstrap, name=f"bench-envoy-{index}")
        fleet.add(envoy)
        envoy.start(timeout=timeout)
        envoy.wait_ready(timeout=timeout)

    with ThreadPoolExecutor(max_workers=min(4, count)) as pool:
        list(pool.map(start, range(count)))


# -- traffic ------------------------------------------------------------------------------------


class _Upstream(asyncio.Protocol):
    """An HTTP/1.1 upstream that answers every request with its colour, on the event loop.

    Cheap on purpose (no header parsing: the requests are bodiless GETs), so polling N Envoys
    costs the machine as little as possible besides the Envoys themselves.
    """

    def __init__(self, colour: str) -> None:
        body = colour.encode()
        self._reply = (
            b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n"
            b"content-length: %d\r\nx-upstream: %s\r\n\r\n%s" % (len(body), body, body)
        )
        self._pending = b""
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        self._pending += data
        requests = self._pending.count(b"\r\n\r\n")
        if requests and self._transport is not None:
            self._pending = self._pending.rsplit(b"\r\n\r\n", 1)[1]
            self._transport.write(self._reply * requests)


class _Poller:
    """Requests through one Envoy's listener on a kept-alive connection (reopened if Envoy
    closes it, e.g. when its listener is replaced)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.requests = 0
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def colour(self) -> str:
        """What the Envoy answers now: the upstream's colour, or `HTTP <status>` / `error`."""
        self.requests += 1
        try:
            return await asyncio.wait_for(self._exchange(), 2.0)
        except (OSError, EOFError, TimeoutError, asyncio.IncompleteReadError, ValueError):
            self.close()
            return "error"

    async def _exchange(self) -> str:
        if self._writer is None:
            self._reader, self._writer = await asyncio.open_connection("127.0.0.1", self.port)
        assert self._reader is not None
        self._writer.write(_REQUEST)
        head = (await self._reader.readuntil(b"\r\n\r\n")).decode("latin-1").lower()
        status = int(head.split(" ", 2)[1])
        length = re.search(r"\r\ncontent-length: *(\d+)", head)
        body = await self._reader.readexactly(int(length.group(1))) if length else b""
        if "\r\nconnection: close" in head or not length:
            self.close()
        return body.decode() if status == 200 else f"HTTP {status}"

    async def wait_for(self, colour: str, since: float, deadline: float, interval: float) -> float:
        """Seconds from `since` until a response carried `colour`; NaN if not by `deadline`."""
        while True:
            seen = await self.colour()
            now = time.monotonic()
            if seen == colour:
                return now - since
            if now >= deadline:
                return math.nan
            await asyncio.sleep(interval)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None


# -- the measurement ----------------------------------------------------------------------------


def _percentile(values: Sequence[float], q: float) -> float:
    """Nearest rank: with 20 Envoys, p99 is the slowest one."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def _finite(value: float) -> float | None:
    """NaN (never happened) as None: JSON has no NaN."""
    return None if math.isnan(value) else value


def _route_updated(envoy: EnvoyProcess) -> float:
    """When Envoy says it took the route configuration (wall clock, ms resolution); NaN if
    it has none."""
    configs = envoy.config_dump("dynamic_route_configs").get("configs", [])
    stamps = [c["last_updated"] for c in configs if "last_updated" in c]
    if not stamps:
        return math.nan
    return max(datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp() for s in stamps)


async def _converge(
    pollers: list[_Poller], colour: str, since: float, timeout: float, interval: float
) -> list[float]:
    deadline = since + timeout
    return list(
        await asyncio.gather(*(p.wait_for(colour, since, deadline, interval) for p in pollers))
    )


async def _flip(
    fleet: _Fleet, pollers: list[_Poller], config: Path, colour: str, args: argparse.Namespace
) -> dict[str, Any]:
    """Replace the VirtualService file once; time every Envoy until it routes to `colour`."""
    assert fleet.serve is not None
    temporary = config / ".route.yaml.tmp"  # a dot file: the watcher ignores it
    temporary.write_text(route_to(colour), encoding="utf-8")
    requests = sum(p.requests for p in pollers)
    server_cpu = _proc_cpu_s(fleet.serve.pid)
    envoys_cpu = sum(_proc_cpu_s(e.pid) for e in fleet.envoys)
    own_cpu = time.process_time()
    wall, started = time.time(), time.monotonic()
    os.replace(temporary, config / "route.yaml")
    took = await _converge(pollers, colour, started, args.timeout, args.poll_interval / 1000)
    converged = [t for t in took if not math.isnan(t)]
    window = time.monotonic() - started
    own_cpu = time.process_time() - own_cpu  # the pollers and upstreams, while polling
    await asyncio.sleep(args.settle)  # ACKs and anything else the change caused
    applied = await asyncio.to_thread(lambda: [_route_updated(e) - wall for e in fleet.envoys])
    result: dict[str, Any] = {
        "colour": colour,
        "converged": len(converged),
        "envoy_ms": [_finite(t * 1000) for t in took],  # None: did not converge in time
        "route_applied_ms": [_finite(a * 1000) for a in applied],
        "server_cpu_ms": (_proc_cpu_s(fleet.serve.pid) - server_cpu) * 1000,
        "envoys_cpu_ms": (sum(_proc_cpu_s(e.pid) for e in fleet.envoys) - envoys_cpu) * 1000,
        "poller_cpu_ms": own_cpu * 1000,
        "poller_busy": own_cpu / window if window > 0 else 0.0,
        "requests": sum(p.requests for p in pollers) - requests,
    }
    if converged:
        ms = [t * 1000 for t in converged]
        result.update(
            first_ms=min(ms), p50_ms=_percentile(ms, 0.5), p99_ms=_percentile(ms, 0.99),
            last_ms=max(ms),
        )  # fmt: skip
    if len(converged) < len(took):
        print(f"flip to {colour}: {len(took) - len(converged)} Envoys did not converge")
    return result


def _why_not(fleet: _Fleet, lagging: list[int]) -> str:
    """What the Envoys that do not route say of their listener (the first few)."""
    by_name = {envoy.name: envoy for envoy in fleet.envoys}
    said = []
    for index in lagging[:5]:
        envoy = by_name.get(f"bench-envoy-{index}")
        port = fleet.listener_ports[index]
        if envoy is None:
            said.append(f"bench-envoy-{index} (port {port}) never started")
            continue
        try:
            stats = envoy.stats(filter="listener_manager")
        except OSError as error:
            said.append(f"{envoy.name} (port {port}): admin unreachable ({error})")
            continue
        failed = {k: v for k, v in stats.items() if v and ("fail" in k or "reject" in k)}
        said.append(f"{envoy.name} (port {port}): {failed or 'no listener failure counted'}")
    return f"{len(lagging)} of them; " + "; ".join(said)


async def _measure(fleet: _Fleet, config: Path, args: argparse.Namespace) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    upstreams = {
        colour: await loop.create_server(functools.partial(_Upstream, colour), "127.0.0.1", 0)
        for colour in COLOURS
    }
    pollers: list[_Poller] = []
    try:
        ports = {c: s.sockets[0].getsockname()[1] for c, s in upstreams.items()}
        (config / "web.yaml").write_text(blue_green_service(**ports), encoding="utf-8")
        (config / "route.yaml").write_text(route_to(COLOURS[0]), encoding="utf-8")
        started = time.monotonic()
        fleet.serve = _Serve(config, args.debounce)
        await asyncio.to_thread(fleet.serve.wait_ready, args.timeout)
        await asyncio.to_thread(_start_envoys, fleet, args.envoys, args.timeout)
        pollers = [_Poller(port) for port in fleet.listener_ports]
        took = await _converge(pollers, COLOURS[0], started, args.timeout, 0.01)
        if any(math.isnan(t) for t in took):
            lagging = [i for i, t in enumerate(took) if math.isnan(t)]
            raise BenchError(
                f"not every Envoy routes to {COLOURS[0]} after {args.timeout:g}s: "
                + await asyncio.to_thread(_why_not, fleet, lagging)
            )
        startup_s = time.monotonic() - started
        flips = []
        for n in range(args.repeat):
            flips.append(await _flip(fleet, pollers, config, COLOURS[(n + 1) % 2], args))
        return {
            "startup_s": startup_s,
            "server_rss_mb": _proc_rss_mb(fleet.serve.pid),
            "envoy_rss_mb": statistics.mean(_proc_rss_mb(e.pid) for e in fleet.envoys),
            "flips": flips,
        }
    finally:
        for poller in pollers:
            poller.close()
        for server in upstreams.values():
            server.close()


# -- the command --------------------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    """Enough to tell whose numbers these are, and which Envoy."""
    envoy_version = ""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        done = subprocess.run(
            [find_envoy(), "--version"], capture_output=True, text=True, timeout=10, check=False
        )
        build = done.stdout.strip().rsplit(" ", 1)[-1]  # commit/1.40.0/Clean/RELEASE/BoringSSL
        envoy_version = build.split("/")[1] if build.count("/") >= 1 else build
    return machine.machine_info(envoy=envoy_version)


@contextlib.contextmanager
def _sigterm_as_exit() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so the `finally` that stops our processes runs."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def exit_now(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, exit_now)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _last_applied(flip: dict[str, Any]) -> float | None:
    known = [a for a in flip["route_applied_ms"] if a is not None]
    return max(known) if known else None


def _summary(flips: list[dict[str, Any]]) -> dict[str, Any]:
    keys = ("first_ms", "p50_ms", "p99_ms", "last_ms", "server_cpu_ms", "envoys_cpu_ms",
            "poller_cpu_ms", "poller_busy", "requests")  # fmt: skip
    done = [f for f in flips if "last_ms" in f]
    out: dict[str, Any] = {k: statistics.median(f[k] for f in done) if done else None for k in keys}
    applied = [_last_applied(f) for f in flips]
    known = [a for a in applied if a is not None]
    out["route_applied_last_ms"] = statistics.median(known) if known else None
    out["all_converged"] = len(done) == len(flips) and all(
        f["converged"] == len(f["envoy_ms"]) for f in flips
    )
    return out


COLUMNS = ("flip", "colour", "converged", "first ms", "p50 ms", "p99 ms", "last ms",
           "applied ms", "srv cpu ms", "envoy cpu ms", "polls", "poll busy")  # fmt: skip


def _cells(label: str, colour: str, converged: str, row: dict[str, Any]) -> list[str]:
    def ms(key: str) -> str:
        value = row.get(key)
        return "-" if value is None else f"{value:.1f}"

    busy = row.get("poller_busy")
    return [label, colour, converged, ms("first_ms"), ms("p50_ms"), ms("p99_ms"), ms("last_ms"),
            ms("route_applied_last_ms"), ms("server_cpu_ms"), ms("envoys_cpu_ms"),
            f"{row['requests']:.0f}" if row.get("requests") is not None else "-",
            "-" if busy is None else f"{busy:.0%}"]  # fmt: skip


def format_table(result: dict[str, Any]) -> str:
    """One row per flip, then the medians over flips."""
    lines = [list(COLUMNS)]
    for n, flip in enumerate(result["flips"], 1):
        row = {**flip, "route_applied_last_ms": _last_applied(flip)}
        lines.append(
            _cells(str(n), flip["colour"], f"{flip['converged']}/{len(flip['envoy_ms'])}", row)
        )
    lines.append(_cells("median", "", "", result["median"]))
    widths = [max(len(line[i]) for line in lines) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(ln, widths, strict=True)) for ln in lines)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Start everything, flip `--repeat` times, stop everything; writes the JSON, returns it."""
    find_envoy()  # fail before starting anything
    fleet = _Fleet()
    with _sigterm_as_exit(), tempfile.TemporaryDirectory(prefix="pilotfish-bench-") as temp:
        config = Path(temp) / "config"
        config.mkdir()
        try:
            result = asyncio.run(_measure(fleet, config, args))
        finally:
            fleet.stop()
    result["median"] = _summary(result["flips"])
    document = {
        "benchmark": "envoys",
        "machine": machine_info(),
        "args": {
            "envoys": args.envoys,
            "repeat": args.repeat,
            "debounce": args.debounce,
            "poll_interval_ms": args.poll_interval,
            "settle": args.settle,
            "timeout": args.timeout,
        },
        "result": result,
    }
    machine.write_result(args.json, document)
    return document


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line options (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument(
        "--envoys", type=int, default=20, help="Envoy processes (~66 MB each; 50 if memory allows)"
    )
    parser.add_argument("--repeat", type=int, default=10, help="blue <-> green flips")
    parser.add_argument(
        "--debounce", type=float, default=0.02, help="the server's --debounce, seconds"
    )
    parser.add_argument(
        "--poll-interval",
        type=float,
        default=1.0,
        metavar="MS",
        help="pause between one Envoy's requests while it has not converged (default 1 ms)",
    )
    parser.add_argument(
        "--settle", type=float, default=0.3, help="seconds after a flip before the next one"
    )
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds for each wait")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help="where to write results")
    args = parser.parse_args(argv)
    if args.envoys < 1 or args.repeat < 1:
        parser.error("--envoys and --repeat must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark, print the table, write the JSON."""
    args = parse_args(argv)
    document = run(args)
    machine, result = document["machine"], document["result"]
    print(
        f"envoys: {args.envoys} Envoys ({machine['envoy']}, {result['envoy_rss_mb']:.0f} MB "
        f"each), {machine['cpu_count']} cpus; file replaced -> request answered by the new "
        f"colour; server debounce {args.debounce:g} s; startup {result['startup_s']:.1f} s"
    )
    print(format_table(result))
    print(f"wrote {args.json}")
    return 0 if result["median"]["all_converged"] else 1


if __name__ == "__main__":
    sys.exit(main())
