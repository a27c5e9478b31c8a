"""examples/route_switch.py runs end to end against real Envoy, and cleans up after itself.

The example is what users read first; these tests keep it working as the library changes.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "route_switch.py"


def start(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(EXAMPLE), *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def envoy_pid(output: str) -> int:
    match = re.search(r"^envoy pid (\d+) ready", output, re.MULTILINE)
    assert match, output
    return int(match.group(1))


def is_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_route_switches_are_seen_in_traffic_and_envoy_is_stopped() -> None:
    proc = start("--duration", "5", "--interval", "2")
    try:
        output, _ = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, output
    answered = set(re.findall(r"answers: .*?\b(blue|green)=[1-9]", output))
    assert answered == {"blue", "green"}, output
    summary = re.search(r"^summary: (\d+) switches made, (\d+) seen in traffic", output, re.M)
    assert summary, output
    made, seen = int(summary.group(1)), int(summary.group(2))
    assert made >= 1 and seen == made, output
    assert re.search(r"switch 1 at t=2s \(blue -> green\): seen after [\d.]+ ms", output), output
    assert re.search(r"requests, 0 failed", output), output
    assert not is_running(envoy_pid(output)), "the example left Envoy running"


def test_ctrl_c_stops_envoy_and_exits_130() -> None:
    proc = start("--duration", "30")
    assert proc.stdout is not None
    lines: list[str] = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("t= 1s"):
                proc.send_signal(signal.SIGINT)
                break
        rest, _ = proc.communicate(timeout=20)
    finally:
        proc.kill()
    output = "".join(lines) + rest
    assert proc.returncode == 130, output
    assert "interrupted" in output, output
    assert not is_running(envoy_pid(output)), "Ctrl-C left Envoy running"


def test_bookinfo_demo_walks_through_its_scenarios() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "examples.bookinfo.mesh", "--requests", "6"],
        check=False,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("bookinfo up: 6 sidecars and a gateway")
    after = {line.split(":")[0]: i for i, line in enumerate(lines) if line.endswith(".yaml:")}
    assert lines[after["all-v1.yaml"] + 1].strip() == "anonymous: 6x 200 reviews-v1 (no stars)"
    assert lines[after["jason-v2.yaml"] + 2].strip() == "jason: 6x 200 reviews-v2 (black)"
    assert lines[after["ratings-abort-jason.yaml"] + 2].strip() == (
        "jason: 6x 200 reviews-v2 (unavailable)"
    )
