"""`pilotfish demo`: bookinfo on real Envoys through Istio's routing steps, measured and judged;
everything it starts is stopped again, also on Ctrl-C."""

from __future__ import annotations

import io
import os
import re
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from pilotfish.demo.steps import STEPS, Expect, Progress, Tally, judge, step_named

ROW = re.compile(
    r"^  (?P<user>anonymous|jason) +(?P<requests>\d+) +(?P<v1>\d+) +(?P<v2>\d+) +(?P<v3>\d+)"
    r" +(?P<unavailable>\d+) +(?P<ratings_fail>\d+)  (?P<expected>.+?) +(?P<match>ok|NO)$"
)
STEP = re.compile(r"^step \d+/\d+  (?P<name>[\w-]+): ")
PIDS = re.compile(r"^  envoy (?P<name>\S+) +pid (?P<pid>\d+) ", re.MULTILINE)


def demo(*args: str) -> list[str]:
    return [sys.executable, "-m", "pilotfish", "demo", *args]


def tables(output: str) -> tuple[dict[str, dict[str, dict[str, int]]], dict[str, str]]:
    """Per step and user, the counts of its table; per step, its verdict line."""
    counts: dict[str, dict[str, dict[str, int]]] = {}
    verdicts: dict[str, str] = {}
    step = ""
    for line in output.splitlines():
        if found := STEP.match(line):
            step = found["name"]
            counts[step] = {}
        elif (row := ROW.match(line)) and step:
            counts[step][row["user"]] = {
                key: int(row[key])
                for key in ("requests", "v1", "v2", "v3", "unavailable", "ratings_fail")
            }
        elif step and line.strip().startswith(("PASS", "FAIL")):
            verdicts[step] = line.strip()
    return counts, verdicts


def envoy_pids(output: str) -> dict[str, int]:
    pids = {m["name"]: int(m["pid"]) for m in PIDS.finditer(output)}
    assert len(pids) == 7, output  # 6 sidecars and the gateway
    return pids


def running(pids: dict[str, int]) -> list[str]:
    alive = []
    for name, pid in pids.items():
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            continue
        alive.append(f"{name} (pid {pid})")
    return alive


def test_demo_shows_each_rule_in_traffic_and_stops_every_envoy(tmp_path: Path) -> None:
    done = subprocess.run(
        demo("--requests", "20", "--no-progress", "--verbose"),
        cwd=tmp_path,  # the installed command: no files from the checkout needed
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "sending as" not in output and "\r" not in output, "--no-progress showed progress"
    counts, verdicts = tables(done.stdout)
    assert list(counts) == ["all-v1", "jason-v2", "split-50-v3", "ratings-abort-jason"], output
    assert verdicts == dict.fromkeys(counts, "PASS"), output
    assert "result: PASS, 4 of 4 steps matched" in done.stdout

    none = {"v1": 0, "v2": 0, "v3": 0, "unavailable": 0, "ratings_fail": 0}
    for user in ("anonymous", "jason"):
        assert counts["all-v1"][user] == {**none, "requests": 20, "v1": 20}, output
    assert counts["jason-v2"]["anonymous"] == {**none, "requests": 20, "v3": 20}, output
    assert counts["jason-v2"]["jason"] == {**none, "requests": 20, "v2": 20}, output
    for user in ("anonymous", "jason"):
        split = counts["split-50-v3"][user]
        assert split["v1"] + split["v3"] == 20 and split["v2"] == split["unavailable"] == 0
    both = Counter[str]()
    for user in ("anonymous", "jason"):
        both.update({k: counts["split-50-v3"][user][k] for k in ("v1", "v3")})
    assert both["v1"] > 0 and both["v3"] > 0, output  # 0 of 40 would be chance 2 x 2**-40
    abort = counts["ratings-abort-jason"]
    assert abort["anonymous"] == {**none, "requests": 20, "v1": 20}, output
    assert abort["jason"] == {**none, "requests": 20, "v2": 20, "ratings_fail": 20}, output

    assert not running(envoy_pids(done.stdout)), "the demo left Envoy running"


def test_ctrl_c_stops_every_envoy_and_exits_130(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        demo("--requests", "1000000", "--step", "all-v1", "-v"),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stderr is not None
    lines: list[str] = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("  served;"):
                break
        # Progress is on stderr, plain lines when it is not a terminal: wait until it shows.
        assert proc.stderr.read(len("  sending as")) == "  sending as"
        proc.send_signal(signal.SIGINT)
        rest, errors = proc.communicate(timeout=30)
    finally:
        proc.kill()
        proc.wait()
    output = "".join(lines) + rest
    assert proc.returncode == 130, output + errors
    assert "interrupted; everything the demo started is stopped" in errors
    assert "stopped pilotfish, 7 Envoys and 6 apps" in output
    assert not running(envoy_pids(output)), "Ctrl-C left Envoy running"


def test_an_unknown_step_is_a_user_error_and_starts_nothing(tmp_path: Path) -> None:
    done = subprocess.run(
        demo("--step", "all-v1", "--step", "all-v7"),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert "pilotfish demo: unknown step 'all-v7'; the steps are: all-v1, jason-v2" in done.stderr
    assert "bookinfo up" not in done.stdout


def tally(user: str, ratings_fail: int = 0, **versions: int) -> Tally:
    return Tally(user, sum(versions.values()), Counter(versions), ratings_fail)


def test_judge_exact_rules_and_weighted_splits() -> None:
    all_v1 = Expect({"v1": 1.0})
    assert judge(tally("jason", v1=20), all_v1) == []
    assert judge(tally("jason", v1=19, unavailable=1), all_v1) == [
        "jason: unavailable on 1 of 20, expected 0",
        "jason: v1 on 19 of 20, expected 20",
    ]
    half = Expect({"v1": 0.5, "v3": 0.5})  # 20 requests: 10 ± 4 sigma (8.9)
    assert judge(tally("anonymous", v1=4, v3=16), half) == []
    assert judge(tally("anonymous", v1=1, v3=19), half) == [
        "anonymous: v1 on 1 of 20, expected 10 ± 8.9",
        "anonymous: v3 on 19 of 20, expected 10 ± 8.9",
    ]
    assert judge(tally("anonymous", v1=10, v2=1, v3=9), half) == [
        "anonymous: v2 on 1 of 20, expected 0"
    ]
    abort = Expect({"v2": 1.0}, ratings_fail=True)
    assert judge(tally("jason", ratings_fail=20, v2=20), abort) == []
    assert judge(tally("jason", ratings_fail=3, v2=20), abort) == [
        "jason: ratings failed on 3 of 20, expected 20"
    ]
    assert [e.describe() for s in STEPS for e in s.expect.values()] == [
        "all v1 (no stars)",
        "all v1 (no stars)",
        "all v3 (red stars)",
        "all v2 (black stars)",
        "v1 50% / v3 50%",
        "v1 50% / v3 50%",
        "all v1 (no stars)",
        "all v2, ratings fail",
    ]
    with pytest.raises(KeyError, match="unknown step 'x'"):
        step_named("x")


def test_progress_is_a_redrawn_counter_on_a_terminal_and_plain_lines_otherwise() -> None:
    terminal = io.StringIO()
    progress = Progress(terminal, tty=True)
    progress.start("jason", 3)
    for done in (1, 2, 3):
        progress.update(done)
    progress.finish()
    text = terminal.getvalue()
    assert text.startswith("\rjason: 0/3") and "\rjason: 3/3" in text
    assert text.endswith("\r\x1b[K") and "\n" not in text

    pipe = io.StringIO()
    progress = Progress(pipe)  # StringIO is not a terminal
    progress.start("jason", 20)
    for done in range(1, 21):
        progress.update(done)
    progress.finish()
    progress.start("anonymous", 20)
    progress.update(5)
    progress.finish(complete=False)
    assert pipe.getvalue() == (
        "jason: 20 requests .......... done\nanonymous: 20 requests .. stopped\n"
    )


def test_every_step_ships_its_manifests() -> None:
    for step in STEPS:
        kinds = Counter(o.kind for o in step.objects())
        assert kinds["Gateway"] == 1 and kinds["DestinationRule"] == 4, step.name
        assert kinds["VirtualService"] >= 2, step.name  # the gateway's and the step's own
