"""bench/plot.py draws the committed benchmark results, and skips what it does not know."""

from __future__ import annotations

import json
import shutil
import struct
import sys
from pathlib import Path
from typing import Any

import pytest
from bench.plot import charts, main, plot

RESULTS = Path(__file__).resolve().parent.parent / "bench" / "results"
COMMITTED = sorted(RESULTS.glob("*.json"))
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def expected_names(document: dict[str, Any]) -> list[str]:
    """The figures a result should give (the file names' suffixes), in order."""
    kind = document.get("benchmark")
    if kind == "ads_push":
        with_bytes = any(r.get("bytes_per_client_push") is not None for r in document["results"])
        return ["init", "push", "cpu", "rss"] + (["bytes"] if with_bytes else [])
    if kind == "translate":
        bookinfo = ["bookinfo"] if document.get("rows") else []
        synthetic = ["full", "change"] if document.get("synthetic", {}).get("rows") else []
        return bookinfo + synthetic
    if kind == "envoys":
        return ["flips", "per-envoy"]
    return []  # summary.json: nothing to plot


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE), path
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


# Drawn for real (about 0.2 s a figure): one of each kind, and one with a single N.
DRAWN = ["ads_push.json", "ads_push_workers.json", "translate.json", "envoys.json"]


@pytest.fixture(scope="module")
def plotted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Path]]:
    """The DRAWN results, copied away and plotted once: {file name: PNGs written}."""
    source = tmp_path_factory.mktemp("json")
    out = tmp_path_factory.mktemp("png")
    written = {}
    for name in DRAWN:
        copy = source / name
        shutil.copyfile(RESULTS / name, copy)
        written[name] = plot(copy, out)
    return written


def test_the_committed_results_are_there() -> None:
    assert set(DRAWN) <= {path.name for path in COMMITTED}


@pytest.mark.parametrize("path", COMMITTED, ids=lambda path: path.name)
def test_each_committed_result_has_its_charts(path: Path) -> None:
    document = json.loads(path.read_text(encoding="utf-8"))
    planned = charts(document, path.name)
    assert [chart.name for chart in planned] == expected_names(document)
    for chart in planned:  # something to draw in each
        assert chart.boxes or chart.lines
        assert all(line.x and len(line.x) == len(line.y) for line in chart.lines)
        assert all(times for _, times in chart.boxes)


@pytest.mark.parametrize("name", DRAWN)
def test_plot_writes_the_pngs(name: str, plotted: dict[str, list[Path]]) -> None:
    document = json.loads((RESULTS / name).read_text(encoding="utf-8"))
    written = plotted[name]
    stem = name.removesuffix(".json")
    assert [png.name for png in written] == [f"{stem}-{n}.png" for n in expected_names(document)]
    for png in written:
        assert png.stat().st_size > 1000
        width, height = png_size(png)
        assert width >= 800 and height == 500  # 8 or 11 by 5 inches at 100 dpi


def test_ads_push_series_and_quantiles() -> None:
    document = json.loads((RESULTS / "ads_push.json").read_text(encoding="utf-8"))
    by_name = {chart.name: chart for chart in charts(document, "ads_push.json")}
    init = by_name["init"]
    assert [line.label for line in init.lines] == [
        "grpc server, h2 client, sotw, 1W",
        "grpc server, h2 client, delta, 1W",
        "native server, h2 client, sotw, 1W",
        "native server, h2 client, delta, 1W",
    ]
    assert all(line.x == [100.0, 1000.0] for line in init.lines)
    native = next(row for row in document["results"] if row["transport"] == "native")
    assert init.lines[2].y[0] == native["initial_s"]
    # Per series: the first, p50, p99 and last proxy, in that series' colour.
    push = by_name["push"]
    assert [line.label.rsplit(": ", 1)[1] for line in push.lines] == [
        "first",
        "p50",
        "p99",
        "last",
    ] * 4
    assert [line.color for line in push.lines] == [
        c for c in ("C0", "C1", "C2", "C3") for _ in range(4)
    ]
    assert not any(chart.goals for chart in by_name.values())  # the JSON holds no reference


def test_ads_push_with_protocols_and_bytes() -> None:
    """Rows of a later run (`--protocol sotw delta`): series of their own, and a bytes figure."""
    document = json.loads((RESULTS / "ads_push.json").read_text(encoding="utf-8"))
    rows = [
        row
        for row in document["results"]
        if row["transport"] == "native" and row.get("protocol", "sotw") == "sotw"
    ]
    document["results"] = [
        row | {"protocol": protocol, "bytes_per_client_push": size}
        for row in rows
        for protocol, size in (("sotw", 9000), ("delta", 300))
    ]
    by_name = {chart.name: chart for chart in charts(document, "x.json")}
    assert list(by_name) == ["init", "push", "cpu", "rss", "bytes"]
    assert [(line.label, line.y) for line in by_name["bytes"].lines] == [
        ("native server, h2 client, sotw, 1W", [9000.0, 9000.0]),
        ("native server, h2 client, delta, 1W", [300.0, 300.0]),
    ]


def test_translate_goals_and_envoy_boxes() -> None:
    translate = json.loads((RESULTS / "translate.json").read_text(encoding="utf-8"))
    by_name = {chart.name: chart for chart in charts(translate, "translate.json")}
    goals = translate["synthetic"]["goals"]
    (full_goal,) = by_name["full"].goals
    assert (full_goal.x, full_goal.y) == (goals["services"], goals["full_translation_s"])
    (change_goal,) = by_name["change"].goals
    assert change_goal.x is None and change_goal.y == pytest.approx(goals["one_change_s"] * 1000)
    assert {line.label for line in by_name["bookinfo"].lines} == {
        "6 shapes: edit",
        "6 shapes: full",
        "a shape per proxy: edit",
        "a shape per proxy: full",
    }

    envoys = json.loads((RESULTS / "envoys.json").read_text(encoding="utf-8"))
    flips, per_envoy = charts(envoys, "envoys.json")
    count, repeat = envoys["args"]["envoys"], envoys["args"]["repeat"]
    assert len(flips.boxes) == repeat and all(len(t) == count for _, t in flips.boxes)
    assert len(per_envoy.boxes) == count and all(len(t) == repeat for _, t in per_envoy.boxes)
    assert flips.boxes[0][0] == f"1 {envoys['result']['flips'][0]['colour']}"


@pytest.mark.parametrize(
    "text",
    [
        '{"benchmark": "something else", "rows": [1, 2]}',
        '{"benchmark": "suite", "benchmarks": {}}',
        '{"benchmark": "ads_push", "results": [{"clients": 5}]}',  # fields missing
        '{"benchmark": "envoys", "result": {"flips": []}}',
        '{"benchmark": "translate"}',
        "[1, 2, 3]",
        "not JSON at all",
    ],
)
def test_unknown_shapes_are_skipped(
    text: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "odd.json"
    path.write_text(text, encoding="utf-8")
    out = tmp_path / "out"
    assert plot(path, out) == []
    assert not out.exists() or not any(out.iterdir())
    assert capsys.readouterr().err.startswith(f"skipped {path}: ")


def test_command_line_writes_next_to_the_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    copy = tmp_path / "envoys.json"
    shutil.copyfile(RESULTS / "envoys.json", copy)
    odd = tmp_path / "odd.json"
    odd.write_text("{}", encoding="utf-8")
    assert main([str(copy), str(odd)]) == 0
    pngs = sorted(path.name for path in tmp_path.glob("*.png"))
    assert pngs == ["envoys-flips.png", "envoys-per-envoy.png"]
    printed = capsys.readouterr()
    assert printed.out.splitlines() == [f"wrote {tmp_path / name}" for name in pngs]
    assert f"skipped {odd}" in printed.err
    assert main([str(tmp_path / "missing.json")]) == 1


def test_without_matplotlib_says_how_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` fail
    with pytest.raises(SystemExit, match=r"pip install -e '\.\[plots\]'"):
        plot(RESULTS / "envoys.json", tmp_path)
    assert not any(tmp_path.iterdir())
