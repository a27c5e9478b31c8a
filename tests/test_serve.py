"""`pilotfish serve` as a user runs it: a process serving a directory, real Envoy connected,
real traffic moving when a file changes, bad files reported and not applied, and shutdown."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from pilotfish.bootstrap import envoy_bootstrap
from pilotfish.testing import EnvoyProcess, HttpUpstream, free_port, wait_until
from pilotfish.testing.bluegreen import blue_green_service, route_to

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Running:
    process: subprocess.Popen[str]
    config: Path
    xds_port: int
    admin_port: int
    envoy: EnvoyProcess
    listener_port: int
    log: list[str]

    def admin(self, path: str) -> str:
        url = f"http://127.0.0.1:{self.admin_port}{path}"
        with urllib.request.urlopen(url, timeout=5) as response:
            return str(response.read().decode())

    def colour(self) -> str:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.listener_port}/", headers={"host": "web.example"}
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            return str(response.headers["x-upstream"])

    def counter(self, name: str, **labels: str) -> float:
        total = 0.0
        for family in text_string_to_metric_families(self.admin("/metrics")):
            for sample in family.samples:
                if sample.name == name and all(
                    sample.labels.get(k) == v for k, v in labels.items()
                ):
                    total += sample.value
        return total


def _read_log(process: subprocess.Popen[str], lines: list[str], pattern: str) -> re.Match[str]:
    assert process.stderr is not None
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        if not line:
            break
        lines.append(line)
        if match := re.search(pattern, line):
            return match
    raise AssertionError("serve did not start:\n" + "".join(lines))


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    config = tmp_path_factory.mktemp("config")
    with HttpUpstream("blue") as blue, HttpUpstream("green") as green:
        (config / "web.yaml").write_text(blue_green_service(blue.port, green.port))
        (config / "route.yaml").write_text(route_to("blue"))
        process = subprocess.Popen(
            [sys.executable, "-m", "pilotfish", "serve", "--config", str(config),
             "--xds-address", "127.0.0.1:0", "--admin-address", "127.0.0.1:0"],
            cwd=ROOT, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        log: list[str] = []
        try:
            found = _read_log(
                process, log, r"serving xDS on [\d.]+:(\d+), admin on http://[\d.]+:(\d+)"
            )
            listener_port = free_port()
            bootstrap = envoy_bootstrap(
                node_id="client-1",
                cluster="client",
                xds_address=("127.0.0.1", int(found.group(1))),
                node_metadata={"NAMESPACE": "default", "PORT_MAP": {"80": listener_port}},
            )
            with EnvoyProcess(bootstrap, name="client-1") as envoy:
                envoy.wait_ready()
                state = Running(process, config, int(found.group(1)), int(found.group(2)), envoy,
                                listener_port, log)  # fmt: skip
                wait_until(lambda: state.colour() == "blue", timeout=10)
                yield state
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


def _switch(running: Running, colour: str) -> float:
    started = time.monotonic()
    (running.config / "route.yaml").write_text(route_to(colour))
    wait_until(lambda: running.colour() == colour, timeout=5, interval=0.01)
    return time.monotonic() - started


def test_editing_a_virtual_service_moves_traffic_within_a_second(running: Running) -> None:
    took = [_switch(running, colour) for colour in ("green", "blue", "green", "blue")]
    print(f"file edit to traffic moved: {', '.join(f'{t * 1000:.0f} ms' for t in took)}")
    assert max(took) < 1.0


def test_an_invalid_file_is_reported_and_the_last_good_config_stays(running: Running) -> None:
    assert running.colour() == "blue"
    route = running.config / "route.yaml"
    route.write_text(route_to("green").replace("route: [", "route: [{weight: 150}, "))
    config = wait_until(
        lambda: (c := json.loads(running.admin("/debug/config")))["errors"] and c, timeout=5
    )
    (problems,) = config["errors"].values()
    assert problems[0]["field"].startswith("spec.http[0].route")
    assert problems[0]["kind"] == "VirtualService" and problems[0]["name"] == "web"
    time.sleep(0.5)  # more than the debounce: a translation would have happened by now
    assert all(running.colour() == "blue" for _ in range(10))
    assert _switch(running, "green") < 1.0  # the fixed file applies
    assert json.loads(running.admin("/debug/config"))["errors"] == {}


def test_metrics_and_syncz_follow_pushes_and_acks(running: Running) -> None:
    pushes = running.counter("pilotfish_xds_pushes_total")
    acks = running.counter("pilotfish_xds_acks_total")
    rounds = running.counter("pilotfish_convergence_seconds_count")
    _switch(running, "blue" if running.colour() == "green" else "green")
    wait_until(lambda: running.counter("pilotfish_xds_acks_total") > acks, timeout=5)
    assert running.counter("pilotfish_xds_pushes_total") > pushes
    # The change was translated, pushed and ACKed by the one proxy: one convergence observed.
    wait_until(lambda: running.counter("pilotfish_convergence_seconds_count") == rounds + 1)
    assert 0 < running.counter("pilotfish_convergence_seconds_sum") < 60
    syncz = json.loads(running.admin("/debug/syncz"))
    (entry,) = [e for e in syncz if e["proxy"] == "client-1"]
    assert entry["synced"] is True
    assert all(t["acked"] == t["current"] for t in entry["types"].values())


def test_a_burst_of_changes_is_one_push(running: Running) -> None:
    route = running.config / "route.yaml"
    colour = running.colour()
    other = "green" if colour == "blue" else "blue"
    wait_until(lambda: json.loads(running.admin("/debug/syncz"))[0]["synced"], timeout=5)
    before = running.counter("pilotfish_xds_pushes_total", type="rds")
    started = time.monotonic()
    for n in range(100):
        route.write_text(route_to(other if n % 2 else colour) + f"# edit {n}\n")
    assert time.monotonic() - started < 0.05 * 4  # writes are quick; the point is the burst
    wait_until(lambda: running.colour() == other, timeout=5)
    time.sleep(0.5)
    assert running.counter("pilotfish_xds_pushes_total", type="rds") - before == 1


def test_sigterm_drains_and_exits(running: Running) -> None:
    # Last test of the module: stop the server, Envoy sees its stream end.
    running.process.send_signal(signal.SIGTERM)
    assert running.process.wait(timeout=15) == 0
    rest = running.process.stderr.read() if running.process.stderr else ""
    assert "stopping: draining streams" in rest and "stopped" in rest


def _serve_fails(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pilotfish", "serve", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip


def test_startup_fails_fast_and_clearly(tmp_path: Path) -> None:
    missing = _serve_fails("--config", str(tmp_path / "nope"))
    assert missing.returncode == 2
    assert f"config directory {tmp_path / 'nope'} does not exist" in missing.stderr
    assert "Traceback" not in missing.stderr
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        busy = _serve_fails("--config", str(tmp_path), "--xds-address", f"127.0.0.1:{port}",
                            "--admin-address", "127.0.0.1:0")  # fmt: skip
        assert busy.returncode == 2, busy.stderr
        assert f"cannot serve xDS on 127.0.0.1:{port}" in busy.stderr
        assert "Traceback" not in busy.stderr
        admin_busy = _serve_fails("--config", str(tmp_path), "--xds-address", "127.0.0.1:0",
                                  "--admin-address", f"127.0.0.1:{port}")  # fmt: skip
        assert admin_busy.returncode == 2
        assert f"cannot serve admin on 127.0.0.1:{port}" in admin_busy.stderr


def test_settings_from_environment_and_config_file(tmp_path: Path) -> None:
    import argparse

    from pilotfish.commands import CommandError
    from pilotfish.commands.serve import settings_from

    file = tmp_path / "pilotfish.yaml"
    file.write_text(f"config: {tmp_path}\nxds-address: 127.0.0.1:1\ndebounce: 0.5\n")
    names = ("config", "xds_address", "admin_address", "debounce", "max_delay", "grace")
    blank = argparse.Namespace(**dict.fromkeys(names), log_level=None, config_file=str(file))
    settings = settings_from(blank, {"PILOTFISH_XDS_ADDRESS": "127.0.0.1:2"})
    assert settings.config == tmp_path and settings.debounce == 0.5
    assert settings.xds_address == ("127.0.0.1", 2)  # the environment beats the file
    flags = argparse.Namespace(**{**vars(blank), "xds_address": "127.0.0.1:3"})
    assert settings_from(flags, {"PILOTFISH_XDS_ADDRESS": "127.0.0.1:2"}).xds_address[1] == 3
    with pytest.raises(CommandError, match="PILOTFISH_DEBOUNCE"):
        settings_from(blank, {"PILOTFISH_DEBOUNCE": "soon"})
    file.write_text("colour: blue\n")
    with pytest.raises(CommandError, match="unknown settings"):
        settings_from(blank, {})
